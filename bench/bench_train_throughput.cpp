// Training throughput of a QAT student vs the same model in full precision, measured in one run.
//   build/bench/bench_train_throughput [CONFIG=configs/default.yaml] [--steps N]
// Same shapes, batch and optimizer; random token batches. Prints tokens/s for each and the ratio; on CUDA
// also model FLOP/s utilisation (MFU) against the bf16 dense peak of an H100 SXM (989 TFLOP/s).
#include <ATen/autocast_mode.h>
#include <torch/torch.h>

#include <chrono>
#include <cstdio>
#include <cstring>

#include "trainer/losses.h"
#include "trainer/train.h"
#include "bench/bench_main.h"

using namespace bitforge;

namespace {
int run_bench(int argc, char** argv) {
  std::string config = "configs/default.yaml";
  int steps = 8;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--steps") && i + 1 < argc) steps = std::stoi(argv[++i]);
    else config = argv[i];
  }
  Config cfg = load_config(config);
  if (cfg.model.vocab_size == 0) cfg.model.vocab_size = cfg.data.vocab_size;
  const torch::Device dev = select_device(cfg.train);
  const int64_t B = cfg.train.per_device_train_batch_size, T = cfg.train.seq_len;
  torch::manual_seed(0);
  auto tokens = torch::randint(cfg.model.vocab_size, {B, T + 1}, torch::kLong).to(dev);
  auto input = tokens.slice(1, 0, T).contiguous(), labels = tokens.slice(1, 1, T + 1).contiguous();

  auto run = [&](const QuantConfig& q, int64_t* params) {
    Transformer m(cfg.model, q);
    m->to(dev);
    *params = m->num_parameters();
    torch::optim::AdamW opt(m->parameters(), torch::optim::AdamWOptions(1e-3));
    auto step = [&] {
      opt.zero_grad();
      if (dev.is_cuda() && cfg.train.bf16) {
        at::autocast::set_autocast_dtype(at::kCUDA, at::kBFloat16);
        at::autocast::set_autocast_enabled(at::kCUDA, true);
      }
      auto loss = token_cross_entropy(m->forward(input), labels);
      if (dev.is_cuda()) {
        at::autocast::set_autocast_enabled(at::kCUDA, false);
        at::autocast::clear_cache();
      }
      loss.backward();
      opt.step();
    };
    step();  // warm-up
    if (dev.is_cuda()) torch::cuda::synchronize();
    auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < steps; ++i) step();
    if (dev.is_cuda()) torch::cuda::synchronize();
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  };
  QuantConfig fp = cfg.quant;
  fp.weight = WeightQuantizer::none;
  fp.activations = ActivationQuant::none;
  int64_t p_fp = 0, p_q = 0;
  const double s_fp = run(fp, &p_fp), s_q = run(cfg.quant, &p_q);
  const double tok = static_cast<double>(steps * B * T);
  std::printf("# %s on %s, %d steps of %lld tokens, %d CPU threads\n", config.c_str(), dev.str().c_str(), steps,
              static_cast<long long>(B * T), torch::get_num_threads());
  std::printf("full precision : %10.0f tokens/s (%lld parameters)\n", tok / s_fp, static_cast<long long>(p_fp));
  std::printf("QAT student    : %10.0f tokens/s (%lld parameters)\n", tok / s_q, static_cast<long long>(p_q));
  std::printf("ratio QAT/FP step time: %.3fx\n", s_q / s_fp);
  if (dev.is_cuda()) {
    const double flops_per_token = 6.0 * static_cast<double>(p_fp) +
                                   12.0 * cfg.model.num_hidden_layers * cfg.model.hidden_size * static_cast<double>(T);
    std::printf("MFU (bf16 peak 989 TFLOP/s): FP %.1f%%, QAT %.1f%%\n", 100 * flops_per_token * tok / s_fp / 989e12,
                100 * flops_per_token * tok / s_q / 989e12);
  }
  return 0;
}
}  // namespace

int main(int argc, char** argv) {
  return bitforge::bench::guarded_main(
      argc, argv,
      "[CONFIG=configs/default.yaml] [--steps N]\nTraining tokens/s of the QAT student vs the same model in full precision (MFU on GPU).\n",
      run_bench);
}
