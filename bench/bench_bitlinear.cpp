// BitLinear forward+backward vs torch::nn::Linear (fp32, CPU), measured in the same process.
//   build/bench/bench_bitlinear [--features 4096] [--tokens 512,2048] [--iters 3] [--threads N]
// Prints per mode: ms per forward+backward, the ratio to nn::Linear (target ≤ 1.15×), and the time spent in
// the fused weight quantizer + its STE backward alone.
#include <torch/torch.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "kernels/bitlinear_ops.h"
#include "trainer/bitlinear.h"

using namespace bitforge;

namespace {

double time_ms(const std::function<void()>& fn, int iters) {
  fn();  // warm-up
  double best = 1e30;
  for (int i = 0; i < iters; ++i) {
    auto t0 = std::chrono::steady_clock::now();
    fn();
    best = std::min(best, std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  return best;
}

std::vector<int64_t> parse_list(const char* s) {
  std::vector<int64_t> v;
  std::string str(s);
  size_t pos = 0;
  while (pos < str.size()) {
    size_t c = str.find(',', pos);
    v.push_back(std::stoll(str.substr(pos, c - pos)));
    pos = c == std::string::npos ? str.size() : c + 1;
  }
  return v;
}

}  // namespace

int main(int argc, char** argv) {
  int64_t features = 4096;
  std::vector<int64_t> token_counts = {512, 2048};
  int iters = 3;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--features")) features = std::stoll(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--tokens")) token_counts = parse_list(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--iters")) iters = std::stoi(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--threads")) torch::set_num_threads(std::stoi(argv[i + 1]));
  }
  torch::manual_seed(0);
  std::printf("# BitLinear forward+backward vs torch::nn::Linear, fp32 CPU, %lld x %lld, %d threads, best of %d\n",
              static_cast<long long>(features), static_cast<long long>(features), torch::get_num_threads(), iters);
  std::printf("%-8s %-34s %12s %10s %14s\n", "tokens", "mode", "ms fwd+bwd", "ratio", "quantizer ms");

  struct Mode {
    const char* name;
    WeightQuantizer q;
    ScaleGranularity g;
    double anchors;
    ActivationQuant act;
  };
  const std::vector<Mode> modes = {
      {"binary group128 anchors0.1%", WeightQuantizer::binary, ScaleGranularity::group, 0.001, ActivationQuant::none},
      {"binary channel", WeightQuantizer::binary, ScaleGranularity::channel, 0.0, ActivationQuant::none},
      {"ternary tensor (b1.58)", WeightQuantizer::ternary, ScaleGranularity::tensor, 0.0, ActivationQuant::none},
      {"ternary tensor + int8 act", WeightQuantizer::ternary, ScaleGranularity::tensor, 0.0, ActivationQuant::int8},
  };

  for (int64_t tokens : token_counts) {
    auto x = torch::randn({tokens, features});
    auto gy = torch::randn({tokens, features});
    torch::nn::Linear base(torch::nn::LinearOptions(features, features).bias(false));
    auto xb = x.clone().requires_grad_(true);
    const double base_ms = time_ms(
        [&] {
          base->zero_grad();
          base(xb).backward(gy);
        },
        iters);
    std::printf("%-8lld %-34s %12.1f %10s %14s\n", static_cast<long long>(tokens), "torch::nn::Linear (baseline)",
                base_ms, "1.00x", "-");
    for (const auto& m : modes) {
      QuantConfig qc;
      qc.weight = m.q;
      qc.granularity = m.g;
      qc.group_size = 128;
      qc.anchor_fraction = m.anchors;
      qc.activations = m.act;
      BitLinear bl(features, features, false, qc);
      auto xq = x.clone().requires_grad_(true);
      const double ms = time_ms(
          [&] {
            bl->zero_grad();
            bl(xq).backward(gy);
          },
          iters);
      // The quantizer's own share: fused forward + fused STE backward on the weight.
      auto w = bl->weight.detach();
      auto a = bl->scales();
      auto gw = torch::randn_like(w);
      const int64_t qid = m.q == WeightQuantizer::binary ? 1 : 2;
      const double qms = time_ms(
          [&] {
            auto y = ops::bitlinear_quantize_weight(w, a, c10::nullopt, bl->anchor_index, qid, 1.0);
            auto g = ops::bitlinear_quantize_weight_backward(gw, w, a, c10::nullopt, bl->anchor_index, qid, 0, 1.0, 1.0, 1.0);
            (void)y;
            (void)g;
          },
          iters);
      std::printf("%-8lld %-34s %12.1f %9.3fx %14.1f\n", static_cast<long long>(tokens), m.name, ms, ms / base_ms, qms);
    }
  }
  std::printf("# target: ratio <= 1.15x (issue: BitLinear CPU path)\n");
  return 0;
}
