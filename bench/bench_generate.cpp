// End-to-end speed of the packed CPU runtime (runtime/packed_runtime.h), measured the way llama.cpp's llama-bench measures
// (so scripts/bench_e2e.sh can put both side by side on the same model, machine and thread count):
//   pp<P>: one forward pass over P prompt tokens from an empty KV cache (prompt processing: PackedRuntime::prefill,
//          which computes the last token's logits only, as llama-bench's llama_batch_get_one does), tokens/s = P / time;
//   tg<N>: N single-token decode steps from an empty cache (token generation), tokens/s = N / time.
// Tokens are random ids (seeded), as llama-bench uses; each test runs once as warm-up, then --reps times; the
// mean and standard deviation of tokens/s are printed, and one JSON line per test for scripts.
//
//   usage: bench_generate MODEL.packed.safetensors [-p P] [-n N] [-t THREADS] [-r REPS] [-a ACTIVATION_BITS]
// -a 8 runs A16 layers with per-token int8 activations (PackedRuntime::open's activation_bits), as llama.cpp does.
#include <ATen/Parallel.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "runtime/packed_runtime.h"
#include "kernels/packed_gemv.h"
#include "bench/bench_main.h"

namespace rt = bitforge::runtime;

namespace {
int run_bench(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s MODEL.packed.safetensors [-p P] [-n N] [-t THREADS] [-r REPS] [-a 0|8]\n", argv[0]);
    return 2;
  }
  const std::string path = argv[1];
  int64_t P = 128, N = 128;
  int threads = at::get_num_threads(), reps = 5, act_bits = 0;
  for (int i = 2; i + 1 < argc; i += 2) {
    const std::string a = argv[i];
    if (a == "-p") P = std::atoll(argv[i + 1]);
    else if (a == "-n") N = std::atoll(argv[i + 1]);
    else if (a == "-t") threads = std::atoi(argv[i + 1]);
    else if (a == "-r") reps = std::atoi(argv[i + 1]);
    else if (a == "-a") act_bits = std::atoi(argv[i + 1]);
    else {
      std::fprintf(stderr, "unknown option %s\n", a.c_str());
      return 2;
    }
  }
  at::set_num_threads(threads);
  auto model = rt::PackedRuntime::open(path, threads, act_bits);
  const auto& cfg = model->config();
  if (P + 1 > cfg.max_position_embeddings || N > cfg.max_position_embeddings) {
    std::fprintf(stderr, "P and N must fit max_position_embeddings = %lld\n",
                 static_cast<long long>(cfg.max_position_embeddings));
    return 2;
  }
  std::printf("CPU features: %s; packed kernel path: %s\n", bitforge::kernels::cpu_features().c_str(),
              bitforge::kernels::isa_name(bitforge::kernels::best_cpu_isa()));
  std::mt19937 rng(42);
  std::uniform_int_distribution<int32_t> tok(0, static_cast<int32_t>(cfg.vocab_size - 1));
  std::printf("model %s: %s, hidden %lld, %lld layers, vocab %lld, %lld packed projections, resident weights %lld B\n",
              path.c_str(), cfg.arch.c_str(), static_cast<long long>(cfg.hidden_size),
              static_cast<long long>(cfg.num_hidden_layers), static_cast<long long>(cfg.vocab_size),
              static_cast<long long>(model->packed_layers()), static_cast<long long>(model->resident_weight_bytes()));
  auto run = [&](const std::string& name, int64_t n, const std::function<void()>& f) {
    f();  // warm-up
    std::vector<double> tps;
    for (int r = 0; r < reps; ++r) {
      const auto t0 = std::chrono::steady_clock::now();
      f();
      const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      tps.push_back(double(n) / s);
    }
    double mean = 0, var = 0;
    for (double v : tps) mean += v / tps.size();
    for (double v : tps) var += (v - mean) * (v - mean) / std::max<size_t>(1, tps.size() - 1);
    const double best = *std::max_element(tps.begin(), tps.end());
    std::printf("%-6s %4d threads  %10.1f ± %.1f tokens/s (best %.1f)%s\n", name.c_str(), threads, mean, std::sqrt(var),
                best, act_bits ? "  (int8 activations)" : "");
    std::printf("{\"test\": \"%s\", \"threads\": %d, \"activation_bits\": %d, \"tokens_per_s\": %.3f, \"stddev\": %.3f}\n",
                name.c_str(), threads, act_bits, mean, std::sqrt(var));
  };
  if (P > 0) {
    std::vector<int32_t> prompt(P);
    for (auto& t : prompt) t = tok(rng);
    run("pp" + std::to_string(P), P, [&] {  // like llama-bench: the prompt's last logits only
      model->reset();
      model->prefill(prompt);
    });
  }
  if (N > 0) {
    const int32_t first = tok(rng);
    run("tg" + std::to_string(N), N, [&] {
      model->reset();
      int32_t t = first;
      for (int64_t i = 0; i < N; ++i) {
        auto lg = model->step(t);
        t = static_cast<int32_t>(lg.argmax().item<int64_t>());
      }
    });
  }
  return 0;
}
}  // namespace

int main(int argc, char** argv) {
  return bitforge::bench::guarded_main(
      argc, argv,
      "MODEL.packed.safetensors [-p P] [-n N] [-t THREADS] [-r REPS] [-a 0|8]\nPacked runtime prompt processing (pp) and decode (tg) tokens/s, measured like llama-bench.\n",
      run_bench);
}
