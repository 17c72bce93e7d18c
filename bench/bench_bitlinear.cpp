// BitLinear forward+backward vs torch::nn::Linear, measured in the same process.
//   build/bench/bench_bitlinear [--features 4096] [--tokens 512,2048] [--iters 3] [--threads N]
//   build/bench/bench_bitlinear --device cuda [--shapes 4096x4096,4096x14336,14336x4096] [--tokens 8192]
//                               [--iters 20] [--warmup 3]
// CPU (default): fp32, features x features; per mode ms per forward+backward (best of --iters), the ratio to
// nn::Linear (target ≤ 1.15×) and the time spent in the fused weight quantizer + its STE backward alone.
// CUDA: shapes are in_features x out_features; fp32 master weights with bf16 autocast around the forward, as
// training runs (trainer/train.cpp), timed with CUDA events (median of --iters after --warmup). Baselines:
// nn::Linear with bf16 parameters and input, and nn::Linear with fp32 weights under the same autocast. Then the
// fused weight quantizer alone: forward (reads W, writes W_eff: 8 bytes/weight) and STE backward (reads grad
// and W, writes grad_W: 12 bytes/weight; the anchor mask's bytes are not counted) in GB/s against a
// device-to-device copy (at::Tensor::copy_, bytes read + written) measured in the same run.
#include <ATen/autocast_mode.h>
#include <torch/torch.h>
#include <torch/version.h>

#ifdef BITFORGE_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/CUDAEvent.h>
#endif

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "kernels/bitlinear_ops.h"
#include "trainer/bitlinear.h"
#include "bench/bench_main.h"

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

std::vector<std::string> split(const std::string& str, char sep) {
  std::vector<std::string> v;
  size_t pos = 0;
  while (pos < str.size()) {
    size_t c = str.find(sep, pos);
    v.push_back(str.substr(pos, c - pos));
    pos = c == std::string::npos ? str.size() : c + 1;
  }
  return v;
}

std::vector<int64_t> parse_list(const char* s) {
  std::vector<int64_t> v;
  for (const auto& p : split(s, ',')) v.push_back(std::stoll(p));
  return v;
}

struct Mode {
  const char* name;
  WeightQuantizer q;
  ScaleGranularity g;
  double anchors;
  ActivationQuant act;
};

const std::vector<Mode>& modes() {
  static const std::vector<Mode> m = {
      {"binary group128 anchors0.1%", WeightQuantizer::binary, ScaleGranularity::group, 0.001, ActivationQuant::none},
      {"binary channel", WeightQuantizer::binary, ScaleGranularity::channel, 0.0, ActivationQuant::none},
      {"ternary tensor (b1.58)", WeightQuantizer::ternary, ScaleGranularity::tensor, 0.0, ActivationQuant::none},
      {"ternary tensor + int8 act", WeightQuantizer::ternary, ScaleGranularity::tensor, 0.0, ActivationQuant::int8},
  };
  return m;
}

QuantConfig quant_config(const Mode& m) {
  QuantConfig qc;
  qc.weight = m.q;
  qc.granularity = m.g;
  qc.group_size = 128;
  qc.anchor_fraction = m.anchors;
  qc.activations = m.act;
  return qc;
}

int run_cpu(int64_t features, const std::vector<int64_t>& token_counts, int iters) {
  std::printf("# BitLinear forward+backward vs torch::nn::Linear, fp32 CPU, %lld x %lld, %d threads, best of %d\n",
              static_cast<long long>(features), static_cast<long long>(features), torch::get_num_threads(), iters);
  std::printf("%-8s %-34s %12s %10s %14s\n", "tokens", "mode", "ms fwd+bwd", "ratio", "quantizer ms");

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
    for (const auto& m : modes()) {
      BitLinear bl(features, features, false, quant_config(m));
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
            auto g = ops::bitlinear_quantize_weight_backward(gw, w, a, c10::nullopt, bl->anchor_index, qid, 0, 1.0, 1.0,
                                                             1.0);
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

#ifdef BITFORGE_WITH_CUDA
/// Median over `iters` runs of fn, each timed with CUDA events on the current stream, after `warmup` runs.
double time_cuda_ms(const std::function<void()>& fn, int iters, int warmup) {
  for (int i = 0; i < warmup; ++i) fn();
  torch::cuda::synchronize();
  std::vector<double> t;
  for (int i = 0; i < iters; ++i) {
    at::cuda::CUDAEvent start(cudaEventDefault), stop(cudaEventDefault);
    start.record();
    fn();
    stop.record();
    stop.synchronize();
    t.push_back(start.elapsed_time(stop));
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

/// bf16 autocast around the forward only, cache cleared after it: what one training micro-step does.
struct Autocast {
  Autocast() {
    at::autocast::set_autocast_dtype(at::kCUDA, at::kBFloat16);
    at::autocast::set_autocast_enabled(at::kCUDA, true);
  }
  ~Autocast() {
    at::autocast::set_autocast_enabled(at::kCUDA, false);
    at::autocast::clear_cache();
  }
};

int run_cuda(const std::vector<std::pair<int64_t, int64_t>>& shapes, int64_t tokens, int iters, int warmup) {
  if (!torch::cuda::is_available()) {
    std::fprintf(stderr, "bench_bitlinear: --device cuda but no CUDA device is available\n");
    return 1;
  }
  const torch::Device dev(torch::kCUDA);
  const auto* prop = at::cuda::getCurrentDeviceProperties();
  std::printf(
      "# device: %s, %d SMs, L2 %.0f MB, %.1f GiB; torch %s; %lld tokens; median of %d (CUDA events), "
      "%d warm-up\n",
      prop->name, prop->multiProcessorCount, prop->l2CacheSize / 1e6,
      static_cast<double>(prop->totalGlobalMem) / (1 << 30), TORCH_VERSION, static_cast<long long>(tokens), iters,
      warmup);

  // Device-to-device copy bandwidth, counting bytes read + written: the ceiling for the quantizer's GB/s.
  double copy_gbs = 0;
  {
    const int64_t n = int64_t{1} << 28;  // 1 GiB of fp32
    auto src = torch::rand({n}, torch::TensorOptions().device(dev));
    auto dst = torch::empty_like(src);
    const double ms = time_cuda_ms([&] { dst.copy_(src); }, iters, warmup);
    copy_gbs = 2.0 * 4.0 * static_cast<double>(n) / (ms * 1e-3) / 1e9;
    std::printf("# device-to-device copy (at::Tensor::copy_, 1 GiB fp32, read + write): %.3f ms, %.0f GB/s\n", ms,
                copy_gbs);
  }

  struct Row {
    std::string shape, mode;
    double ms, vs_bf16, vs_autocast, qf_ms, qf_gbs, qb_ms, qb_gbs, share;
  };
  std::vector<Row> rows;
  for (const auto& [in, out] : shapes) {
    const std::string shape = std::to_string(in) + "x" + std::to_string(out);
    torch::manual_seed(0);
    auto x = torch::randn({tokens, in}, torch::TensorOptions().device(dev).dtype(torch::kBFloat16));
    auto gy = torch::randn({tokens, out}, torch::TensorOptions().device(dev).dtype(torch::kBFloat16));
    const double flop = 6.0 * static_cast<double>(tokens) * static_cast<double>(in) * static_cast<double>(out);

    // forward + backward of module m on a fresh leaf copy of x, the forward under bf16 autocast
    auto time_autocast = [&](auto& m) {
      auto xa = x.clone().requires_grad_(true);
      return time_cuda_ms(
          [&] {
            m->zero_grad();
            xa.mutable_grad() = torch::Tensor();
            torch::Tensor y;
            {
              Autocast ac;
              y = m(xa);
            }
            y.backward(gy);
          },
          iters, warmup);
    };
    double bf16_ms = 0, ac_ms = 0;
    {
      torch::nn::Linear lin(torch::nn::LinearOptions(in, out).bias(false));
      lin->to(dev, torch::kBFloat16);
      auto xb = x.clone().requires_grad_(true);
      bf16_ms = time_cuda_ms(
          [&] {
            lin->zero_grad();
            xb.mutable_grad() = torch::Tensor();
            lin(xb).backward(gy);
          },
          iters, warmup);
    }
    {
      torch::nn::Linear lin(torch::nn::LinearOptions(in, out).bias(false));
      lin->to(dev);
      ac_ms = time_autocast(lin);
    }
    rows.push_back({shape, "nn::Linear bf16 params", bf16_ms, 1.0, bf16_ms / ac_ms, 0, 0, 0, 0, 0});
    rows.push_back({shape, "nn::Linear fp32 + autocast", ac_ms, ac_ms / bf16_ms, 1.0, 0, 0, 0, 0, 0});
    std::printf("# %s: nn::Linear bf16 %.3f ms (%.0f TFLOP/s), fp32 + autocast %.3f ms (%.0f TFLOP/s)\n", shape.c_str(),
                bf16_ms, flop / (bf16_ms * 1e-3) / 1e12, ac_ms, flop / (ac_ms * 1e-3) / 1e12);

    for (const auto& m : modes()) {
      BitLinear bl(in, out, false, quant_config(m));  // anchors are selected on the CPU, then moved
      bl->to(dev);
      const double ms = time_autocast(bl);
      // The fused quantizer alone, forward and STE backward separately.
      auto w = bl->weight.detach();
      auto a = bl->scales();
      auto gw = torch::randn_like(w);
      const int64_t qid = m.q == WeightQuantizer::binary ? 1 : 2;
      const double qf = time_cuda_ms(
          [&] { (void)ops::bitlinear_quantize_weight(w, a, c10::nullopt, bl->anchor_index, qid, 1.0); }, iters, warmup);
      const double qb = time_cuda_ms(
          [&] {
            (void)ops::bitlinear_quantize_weight_backward(gw, w, a, c10::nullopt, bl->anchor_index, qid, 0, 1.0, 1.0,
                                                          1.0);
          },
          iters, warmup);
      const double nw = static_cast<double>(w.numel());
      rows.push_back({shape, m.name, ms, ms / bf16_ms, ms / ac_ms, qf, 8.0 * nw / (qf * 1e-3) / 1e9, qb,
                      12.0 * nw / (qb * 1e-3) / 1e9, (qf + qb) / ms});
    }
  }

  std::printf("\n%-12s %-30s %10s %9s %9s %9s %7s %6s %9s %7s %6s %7s\n", "in x out", "mode", "ms fwd+bwd", "vs bf16",
              "vs autoc", "qfwd ms", "GB/s", "%copy", "qbwd ms", "GB/s", "%copy", "q share");
  for (const auto& r : rows) {
    std::printf("%-12s %-30s %10.3f %8.3fx %8.3fx", r.shape.c_str(), r.mode.c_str(), r.ms, r.vs_bf16, r.vs_autocast);
    if (r.qf_ms > 0)
      std::printf(" %9.3f %7.0f %5.0f%% %9.3f %7.0f %5.0f%% %6.1f%%\n", r.qf_ms, r.qf_gbs, 100 * r.qf_gbs / copy_gbs,
                  r.qb_ms, r.qb_gbs, 100 * r.qb_gbs / copy_gbs, 100 * r.share);
    else
      std::printf(" %9s %7s %6s %9s %7s %6s %7s\n", "-", "-", "-", "-", "-", "-", "-");
  }
  std::printf(
      "# vs bf16 = ms / nn::Linear(bf16 params); vs autoc = ms / nn::Linear(fp32 weights, bf16 autocast);\n"
      "# quantizer bytes: forward 8 B/weight, backward 12 B/weight; %%copy against %.0f GB/s; q share = "
      "(qfwd + qbwd) / fwd+bwd\n",
      copy_gbs);
  return 0;
}
#endif

}  // namespace

namespace {
int run_bench(int argc, char** argv) {
  int64_t features = 4096;
  std::vector<int64_t> token_counts;
  std::vector<std::pair<int64_t, int64_t>> shapes;
  std::string device = "cpu";
  int iters = -1, warmup = 3;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--features"))
      features = std::stoll(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--tokens"))
      token_counts = parse_list(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--iters"))
      iters = std::stoi(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--warmup"))
      warmup = std::stoi(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--threads"))
      torch::set_num_threads(std::stoi(argv[i + 1]));
    else if (!std::strcmp(argv[i], "--device"))
      device = argv[i + 1];
    else if (!std::strcmp(argv[i], "--shapes")) {
      for (const auto& s : split(argv[i + 1], ',')) {
        const auto d = split(s, 'x');
        if (d.size() != 2) {
          std::fprintf(stderr, "bench_bitlinear: --shapes wants INxOUT[,INxOUT...], got '%s'\n", s.c_str());
          return 2;
        }
        shapes.emplace_back(std::stoll(d[0]), std::stoll(d[1]));
      }
    } else {
      std::fprintf(stderr, "bench_bitlinear: unknown option %s\n", argv[i]);
      return 2;
    }
  }
  torch::manual_seed(0);
  if (device == "cpu") {
    if (token_counts.empty()) token_counts = {512, 2048};
    return run_cpu(features, token_counts, iters < 0 ? 3 : iters);
  }
  if (device != "cuda") {
    std::fprintf(stderr, "bench_bitlinear: --device must be cpu or cuda, got %s\n", device.c_str());
    return 2;
  }
#ifdef BITFORGE_WITH_CUDA
  if (shapes.empty()) shapes = {{4096, 4096}, {4096, 14336}, {14336, 4096}};
  return run_cuda(shapes, token_counts.empty() ? 8192 : token_counts.front(), iters < 0 ? 20 : iters, warmup);
#else
  std::fprintf(stderr, "bench_bitlinear: built without the CUDA kernels (BITFORGE_CUDA=OFF or no nvcc)\n");
  return 1;
#endif
}
}  // namespace

int main(int argc, char** argv) {
  return bitforge::bench::guarded_main(
      argc, argv,
      "[--features 4096] [--tokens 512,2048] [--iters 3] [--threads N]\n       [--device cuda] [--shapes 4096x4096,...] [--tokens 8192] [--iters 20] [--warmup 3]\nBitLinear forward+backward vs torch::nn::Linear, measured in the same process (see bench/bench_bitlinear.cpp).\n",
      run_bench);
}
