// Dumps the packed runtime's logits for one token-id sequence, for comparisons with other runtimes
// (scripts/check_gguf_llama_cpp.sh compares them with stock llama.cpp on the GGUF export).
//
//   usage: bench_dump_packed_logits MODEL.packed.safetensors TOKENS.txt OUT.f32 [--threads N]
//
// TOKENS.txt: whitespace-separated token ids, evaluated as one sequence from an empty cache
// (PackedRuntime::logits). OUT.f32: raw little-endian float32, row-major [T, V]. Prints "T V" on stdout.
#include <torch/torch.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <fstream>
#include <string>
#include <vector>

#include "runtime/packed_runtime.h"
#include "bench/bench_main.h"

namespace {
int run_bench(int argc, char** argv) {
  if (argc < 4) {
    std::fprintf(stderr, "usage: bench_dump_packed_logits MODEL.packed.safetensors TOKENS.txt OUT.f32 [--threads N]\n");
    return 2;
  }
  int threads = 0;
  for (int i = 4; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--threads") && i + 1 < argc) {
      threads = std::atoi(argv[++i]);
    } else {
      std::fprintf(stderr, "bench_dump_packed_logits: unknown argument %s\n", argv[i]);
      return 2;
    }
  }
  try {
    std::vector<int32_t> tokens;
    {
      std::ifstream in(argv[2]);
      if (!in) throw std::runtime_error(std::string("cannot open ") + argv[2]);
      long long t = 0;
      while (in >> t) tokens.push_back(static_cast<int32_t>(t));
      if (!in.eof()) throw std::runtime_error(std::string(argv[2]) + ": not a list of integers");
    }
    if (tokens.empty()) throw std::runtime_error(std::string("no tokens in ") + argv[2]);
    if (threads > 0) torch::set_num_threads(threads);
    auto rt = bitforge::runtime::PackedRuntime::open(argv[1], threads);
    torch::Tensor logits = rt->logits(tokens).to(torch::kFloat32).contiguous();
    const int64_t T = logits.size(0), V = logits.size(1);
    std::FILE* out = std::fopen(argv[3], "wb");
    if (!out) throw std::runtime_error(std::string("cannot write ") + argv[3]);
    const size_t n = static_cast<size_t>(T * V);
    const bool ok = std::fwrite(logits.data_ptr<float>(), sizeof(float), n, out) == n;
    std::fclose(out);
    if (!ok) throw std::runtime_error(std::string("short write to ") + argv[3]);
    std::printf("%lld %lld\n", static_cast<long long>(T), static_cast<long long>(V));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_dump_packed_logits: %s\n", e.what());
    return 1;
  }
  return 0;
}
}  // namespace

int main(int argc, char** argv) {
  return bitforge::bench::guarded_main(
      argc, argv,
      "MODEL.packed.safetensors TOKENS.txt OUT.f32 [--threads N]\nWrites the packed runtime's logits [T, V] (raw float32) for one token-id sequence; prints \"T V\".\n",
      run_bench);
}
