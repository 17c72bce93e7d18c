// Packed CPU GEMV benchmark (kernels/packed_gemv.h): y = W·x, batch 1, for the 8B-class shapes 4096×4096,
// 14336×4096 (up/gate) and 4096×14336 (down), binary group-128 (Q1_0's layout) and ternary group-128.
//
// Rows, all measured in the same run with the same thread count:
//   LUT A8 / LUT A16   bitforge's table-lookup kernels on the repacked layout (RepackedMatrix; what the runtime uses);
//                      every A8 row includes the per-token int8 quantization of x, as llama.cpp's rows include its
//                      q8_0 / q8_K conversion
//   rowwise A8         the row-wise AVX2 kernel on the export layout (packed_gemv_i8; the previous kernel)
//   llama.cpp          ggml_mul_mat of the same matrix as Q1_0 (binary) / TQ2_0 (ternary) against fp32 x, computed
//                      by ggml's CPU backend (x quantized to q8_0 / q8_K inside, vec_dot per row, ggml threadpool),
//                      when built against scripts/build_llama_cpp.sh's llama.cpp (BITFORGE_WITH_GGML)
//   fp32 at::mv        the unpacked fp32 weight (4 bytes/weight)
//   reference          the scalar unpack reference (single thread, warm cache)
// "cold" times cycle through enough copies of the matrix (≥ --cold-mib MiB, well beyond the last-level cache) that
// every GEMV reads its weights from DRAM, as decoding a real model does; "warm" repeats one matrix (cache-resident
// when it fits). GB/s = packed bytes (codes + fp16 scales; Q1_0 / TQ2_0 block bytes for llama.cpp) per GEMV / cold
// time; %bw = that / this machine's read bandwidth, measured here with the same threads as the larger of an AVX2
// streaming sum (with the kernels' software prefetch: L1 1 KiB and L2 8 KiB ahead) and MKL's fp32 at::mv over
// --bw-mib MiB (the best of 5 passes each).
//
// --rounds R (with llama.cpp) adds a summary: bitforge LUT A8 and llama.cpp cold, measured alternately R times per
// matrix, and the median / min / max of the per-round ratios — steadier than one pair of medians on a machine whose
// speed drifts. Each round also re-measures the streaming-sum bandwidth (best of 3 passes), and "per round" is the
// median (and the minimum) of bitforge's GB/s over that round's bandwidth: on a shared host the bandwidth itself
// moves by ±15 % between minutes, so a share against the one figure taken at the start mixes two moments. "the read
// floor" (median of per-round ratios) is bitforge's time over the time to merely read the same bytes in the same
// GEMV-at-a-time pattern on the same pool (ReadFloor, AVX2 loads with the kernels' prefetch): 1.00x means the
// kernel's arithmetic is hidden entirely and only less data or more bandwidth can make it faster (below 1.00x the
// kernel's own loads out-read that pass, as one AVX2 thread often does not saturate memory).
//
// --cpu-time times the kernels by the process's CPU time instead of wall time: on a machine shared with other jobs
// (time-sliced) it removes the time this process was not running; with N threads it sums the threads' times, so use
// it with --threads 1 only. Idle-machine results are wall time (the default).
//
// --shape OUTxIN and --bits 1|1.58 (each repeatable) restrict the run to those shapes / weight formats; without them
// the run ends with the dense bf16 LM head of a small distilled model (151,936 × 1,024, kernels/dense_gemv.h) against
// its read floor (--shape 151936x1024: that alone).
//
//   usage: bench_packed_gemv [--threads N] [--min-ms MS] [--cold-mib MIB] [--bw-mib MIB] [--no-reference] [--rounds R]
//                            [--cpu-time] [--shape OUTxIN]... [--bits 1|1.58]...
#include <ATen/Parallel.h>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <utility>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "export/ggml_quants.h"
#include "kernels/dense_gemv.h"
#include "kernels/packed_gemv.h"
#include "kernels/thread_pool.h"

#ifdef BITFORGE_WITH_GGML
#include <ggml-cpu.h>
#include <ggml.h>
#include "bench/bench_main.h"
#endif

namespace bk = bitforge::kernels;
namespace bf = bitforge::formats;

namespace {

using Clock = std::chrono::steady_clock;

bool g_cpu_time = false;  // --cpu-time: process CPU time instead of wall time

double now_us() {
  if (g_cpu_time) {
    timespec t;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
    return t.tv_sec * 1e6 + t.tv_nsec * 1e-3;
  }
  return std::chrono::duration<double, std::micro>(Clock::now().time_since_epoch()).count();
}

/// Median time per call of f() in µs (f runs `per_call` GEMVs; the result is divided by it).
double median_us(const std::function<void()>& f, double min_ms, int per_call = 1) {
  f();  // warm-up
  std::vector<double> t;
  const auto start = Clock::now();
  while (t.size() < 5 || (std::chrono::duration<double, std::milli>(Clock::now() - start).count() < min_ms && t.size() < 2000)) {
    const double a = now_us();
    f();
    t.push_back((now_us() - a) / per_call);
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

struct Packed {
  bk::PackedMatrixView v;
  std::vector<uint8_t> codes;
  std::vector<uint16_t> scales;
};

constexpr uint16_t kScale = 0x2400;  // fp16 0.015625: one scale everywhere, so TQ2_0's 256-blocks hold the same matrix

Packed make(bitforge::WeightQuantizer q, int64_t out, int64_t in, uint32_t seed) {
  Packed p;
  p.v.quant = q;
  p.v.out = out;
  p.v.in = in;
  p.v.group_size = 128;
  p.v.scale_rows = out;
  std::mt19937 rng(seed);
  p.codes.resize(out * p.v.row_bytes());
  for (auto& b : p.codes) {
    b = static_cast<uint8_t>(rng());
    if (q == bitforge::WeightQuantizer::ternary)  // map any code 3 to 2 (valid codes 0..2)
      for (int s = 0; s < 8; s += 2)
        if (((b >> s) & 3) == 3) b = static_cast<uint8_t>(b & ~(1u << s));
  }
  p.scales.assign(out * (in / 128), kScale);
  p.v.codes = p.codes.data();
  p.v.scales = p.scales.data();
  return p;
}

#if defined(__x86_64__)
__attribute__((target("avx2"))) uint64_t sum_avx2(const uint64_t* p, int64_t n) {
  __m256i a[8];
  for (auto& v : a) v = _mm256_setzero_si256();
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {  // 256 bytes per step, prefetched like the kernels (L1 1 KiB, L2 8 KiB ahead)
    const char* c = reinterpret_cast<const char*>(p + i);
    for (int l = 0; l < 4; ++l) {
      _mm_prefetch(c + 1024 + 64 * l, _MM_HINT_T0);
      _mm_prefetch(c + 8192 + 64 * l, _MM_HINT_T1);
    }
    for (int k = 0; k < 8; ++k) a[k] = _mm256_add_epi64(a[k], _mm256_load_si256(reinterpret_cast<const __m256i*>(p + i + 4 * k)));
  }
  for (int k = 1; k < 8; ++k) a[0] = _mm256_add_epi64(a[0], a[k]);
  alignas(32) uint64_t l[4];
  _mm256_store_si256(reinterpret_cast<__m256i*>(l), a[0]);
  uint64_t s = l[0] + l[1] + l[2] + l[3];
  for (; i < n; ++i) s += p[i];
  return s;
}
#endif

uint64_t sum_plain(const uint64_t* p, int64_t n) {
  uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    s0 += p[i];
    s1 += p[i + 1];
    s2 += p[i + 2];
    s3 += p[i + 3];
  }
  for (; i < n; ++i) s0 += p[i];
  return s0 + s1 + s2 + s3;
}

/// Σ p[0..n) with the fastest reader this CPU has (AVX2 with the kernels' prefetch, else plain).
uint64_t sum_words(const uint64_t* p, int64_t n) {
#if defined(__x86_64__)
  if (bk::cpu_has_avx2()) return sum_avx2(p, n);
#endif
  return sum_plain(p, n);
}

/// [lo, hi) of part c of n words split into `parts`, starts rounded down to 32 words (256 bytes).
std::pair<int64_t, int64_t> part_range(int64_t n, int64_t c, int64_t parts) {
  return {(n * c / parts) & ~int64_t(31), c + 1 == parts ? n : (n * (c + 1) / parts) & ~int64_t(31)};
}

/// This machine's read bandwidth: `threads` threads each sum their part of a `mib` MiB buffer (AVX2 when present,
/// with the kernels' software prefetch); measure() returns the best of `passes` passes in GB/s.
class ReadBandwidth {
 public:
  ReadBandwidth(int64_t mib, int threads)
      : n_(mib * 1024 * 1024 / 8), threads_(threads),
        buf_(static_cast<uint64_t*>(std::aligned_alloc(64, n_ * 8)), std::free) {
    at::parallel_for(0, n_, 1 << 16, [&](int64_t a, int64_t b) {
      for (int64_t i = a; i < b; ++i) buf_[i] = static_cast<uint64_t>(i);
    });
  }
  double measure(int passes) const {
    double best = 0;
    for (int rep = 0; rep < passes; ++rep) {
      std::vector<uint64_t> part(static_cast<size_t>(threads_), 0);
      const double t0 = now_us();
      at::parallel_for(0, threads_, 1, [&](int64_t c0, int64_t c1) {
        for (int64_t c = c0; c < c1; ++c) {
          const auto [a, b] = part_range(n_, c, threads_);
          part[c] = sum_words(buf_.get() + a, b - a);
        }
      });
      const double s = (now_us() - t0) * 1e-6;
      uint64_t total = 0;
      for (auto v : part) total += v;
      if (total == 42) std::printf(" ");  // keep the sum alive
      best = std::max(best, double(n_) * 8 / s / 1e9);
    }
    return best;
  }

 private:
  int64_t n_;
  int threads_;
  std::unique_ptr<uint64_t[], void (*)(void*)> buf_;
};

#ifdef BITFORGE_WITH_GGML
/// The same matrix in llama.cpp: `copies` Q1_0/TQ2_0 weight tensors, one graph of `copies` mul_mats against one x.
struct GgmlGemv {
  ggml_context* ctx = nullptr;
  ggml_cgraph* graph = nullptr;
  ggml_threadpool* pool = nullptr;
  std::vector<uint8_t> work;
  ggml_cplan plan{};
  size_t weight_bytes = 0;

  GgmlGemv(const Packed& p, const std::vector<float>& x, int copies, int threads) {
    const int64_t out = p.v.out, in = p.v.in;
    const bool binary = p.v.quant == bitforge::WeightQuantizer::binary;
    const ggml_type type = binary ? GGML_TYPE_Q1_0 : GGML_TYPE_TQ2_0;
    weight_bytes = ggml_row_size(type, in) * out;
    const size_t mem = copies * (weight_bytes + out * 4 + 3 * ggml_tensor_overhead()) + in * 4 +
                       ggml_graph_overhead_custom(copies + 8, false) + (1 << 20);
    ggml_init_params ip{mem, nullptr, false};
    ctx = ggml_init(ip);
    ggml_tensor* xt = ggml_new_tensor_1d(ctx, GGML_TYPE_F32, in);
    std::memcpy(xt->data, x.data(), in * 4);
    graph = ggml_new_graph_custom(ctx, copies + 8, false);
    // one row of codes in {−1, 0, +1}, converted by bitforge's exporter (bit-exact with llama.cpp's layouts)
    std::vector<int8_t> codes(in);
    std::vector<float> scales(in / (binary ? 128 : 256), bf::fp16_to_fp32(kScale));
    std::vector<uint8_t> row(ggml_row_size(type, in));
    ggml_tensor* first = nullptr;
    for (int c = 0; c < copies; ++c) {
      ggml_tensor* w = ggml_new_tensor_2d(ctx, type, in, out);
      if (!first) {
        for (int64_t r = 0; r < out; ++r) {
          for (int64_t k = 0; k < in; ++k) {
            const uint8_t* pr = p.codes.data() + r * p.v.row_bytes();
            codes[k] = static_cast<int8_t>(binary ? (((pr[k >> 3] >> (k & 7)) & 1) ? 1 : -1)
                                                  : int((pr[k >> 2] >> (2 * (k & 3))) & 3) - 1);
          }
          if (binary)
            bf::q1_0_from_codes(codes.data(), scales.data(), in, reinterpret_cast<bf::block_q1_0*>(row.data()));
          else
            bf::tq2_0_from_codes(codes.data(), scales.data(), in, reinterpret_cast<bf::block_tq2_0*>(row.data()));
          std::memcpy(static_cast<uint8_t*>(w->data) + r * row.size(), row.data(), row.size());
        }
        first = w;
      } else {
        std::memcpy(w->data, first->data, weight_bytes);
      }
      ggml_build_forward_expand(graph, ggml_mul_mat(ctx, w, xt));
    }
    ggml_threadpool_params tpp = ggml_threadpool_params_default(threads);
    pool = ggml_threadpool_new(&tpp);
    plan = ggml_graph_plan(graph, threads, pool);
    work.resize(plan.work_size + 64);
    plan.work_data = work.data();
  }
  void run() { ggml_graph_compute(graph, &plan); }
  const float* y(int node) const { return static_cast<const float*>(ggml_graph_node(graph, node)->data); }
  ~GgmlGemv() {
    ggml_threadpool_free(pool);
    ggml_free(ctx);
  }
};
#endif

/// The floor for one GEMV of `bytes` bytes: `copies` buffers of that size (the weights' allocator, so the same huge-page
/// hint), each read once per "GEMV" by min(threads, 64) chunks on the kernels' pool — the kernels' memory traffic and
/// fork/join pattern with no arithmetic. A kernel at this time is limited by memory, not by its instructions.
class ReadFloor {
 public:
  ReadFloor(int64_t bytes, int copies, int threads) : n_((bytes / 256) * 32), threads_(threads) {
    for (int c = 0; c < copies; ++c) {
      bufs_.emplace_back(static_cast<size_t>(n_ * 8), 0);
      for (int64_t i = 0; i < n_ * 8; ++i) bufs_.back()[i] = static_cast<uint8_t>(i * 7 + c);
    }
  }
  /// Reads every buffer once; returns a value that depends on all of them.
  uint64_t read_all() const {
    uint64_t total = 0;
    for (const auto& buf : bufs_) {
      const auto* b = reinterpret_cast<const uint64_t*>(buf.data());  // 64-byte aligned (the weights' allocator)
      uint64_t part[64] = {};
      const int64_t chunks = std::min(64, std::max(threads_, 1));
      bk::run_chunks(chunks, threads_, [&](int64_t c) {
        const auto [lo, hi] = part_range(n_, c, chunks);
        part[c] = sum_words(b + lo, hi - lo);
      });
      for (int64_t c = 0; c < chunks; ++c) total += part[c];
    }
    return total;
  }

 private:
  int64_t n_;
  int threads_;
  std::vector<std::vector<uint8_t, bk::detail::WeightAllocator<uint8_t>>> bufs_;
};

}  // namespace

namespace {
int run_bench(int argc, char** argv) {
  int threads = at::get_num_threads();
  double min_ms = 300;
  bool with_ref = true;
  int64_t bw_mib = 1024, cold_mib = 256;
  int rounds = 0;
  std::vector<std::string> only_shapes, only_bits;  // --shape OUTxIN / --bits 1|1.58 (repeatable): a subset
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--threads" && i + 1 < argc) threads = std::atoi(argv[++i]);
    else if (a == "--min-ms" && i + 1 < argc) min_ms = std::atof(argv[++i]);
    else if (a == "--no-reference") with_ref = false;
    else if (a == "--bw-mib" && i + 1 < argc) bw_mib = std::atoll(argv[++i]);
    else if (a == "--cold-mib" && i + 1 < argc) cold_mib = std::atoll(argv[++i]);
    else if (a == "--rounds" && i + 1 < argc) rounds = std::atoi(argv[++i]);
    else if (a == "--cpu-time") g_cpu_time = true;
    else if (a == "--shape" && i + 1 < argc) only_shapes.push_back(argv[++i]);
    else if (a == "--bits" && i + 1 < argc) only_bits.push_back(argv[++i]);
    else {
      std::fprintf(stderr,
                   "usage: %s [--threads N] [--min-ms MS] [--cold-mib MIB] [--bw-mib MIB] [--no-reference] "
                   "[--rounds R] [--cpu-time] [--shape OUTxIN]... [--bits 1|1.58]...\n",
                   argv[0]);
      return 2;
    }
  }
  at::set_num_threads(threads);
  std::string cmd;
  for (int i = 0; i < argc; ++i) cmd += std::string(i ? " " : "") + argv[i];
  std::printf("reproduce: cmake --build <build dir> --target bench_packed_gemv && %s\n", cmd.c_str());
  std::printf("CPU features: %s\nkernel path: %s (RepackedMatrix on 8B shapes: %s; BITFORGE_CPU_ISA=avx2|scalar forces a "
              "fallback)\n",
              bk::cpu_features().c_str(), bk::isa_name(bk::best_cpu_isa()), [] {
                bk::PackedMatrixView v;
                v.out = 64;
                v.in = 4096;
                v.group_size = 128;
                return bk::RepackedMatrix::supports_avx512_layout(v) && bk::best_cpu_isa() == bk::GemvImpl::avx512
                           ? "avx512 tiles"
                           : (bk::best_cpu_isa() == bk::GemvImpl::scalar ? "scalar" : "avx2 32-row blocks");
              }());
  if (g_cpu_time) std::printf("timing: process CPU time (--cpu-time), not wall time\n");
  std::printf("threads %d, AVX2 %s, llama.cpp baseline %s\n", threads, bk::cpu_has_avx2() ? "yes" : "no",
#ifdef BITFORGE_WITH_GGML
              "yes (ggml CPU backend, " BITFORGE_GGML_DIR ")"
#else
              "no (configure after scripts/build_llama_cpp.sh to get it)"
#endif
  );
  const ReadBandwidth stream(bw_mib, threads);
  const double bw_sum = stream.measure(5);
  double bw_mv = 0;
  {  // MKL's fp32 GEMV streaming a matrix of bw_mib MiB: often the faster reader (it prefetches aggressively)
    const int64_t in = 4096, out = bw_mib * 1048576 / (in * 4);
    auto W = torch::rand({out, in});
    auto xv = torch::rand({in});
    for (int rep = 0; rep < 5; ++rep) {
      const double t0 = now_us();
      auto r = at::mv(W, xv);
      bw_mv = std::max(bw_mv, double(out * in * 4) / ((now_us() - t0) * 1e-6) / 1e9);
    }
  }
  const double bw = std::max(bw_sum, bw_mv);
  std::printf("memory read bandwidth over %lld MiB, %d threads, best of 5: AVX2 streaming sum %.1f GB/s, fp32 at::mv "
              "%.1f GB/s; %%bw below is against the larger, %.1f GB/s\n\n",
              static_cast<long long>(bw_mib), threads, bw_sum, bw_mv, bw);

  std::printf("%-11s %-5s %-17s %10s %7s %7s %10s %11s %9s\n", "shape", "bits", "kernel", "cold us", "GB/s", "%bw",
              "warm us", "vs llama", "max|dy|");
  const std::vector<std::pair<int64_t, int64_t>> shapes = {{4096, 4096}, {14336, 4096}, {4096, 14336}};
  std::vector<std::string> round_lines;  // --rounds: bitforge LUT A8 vs llama.cpp, cold, alternated
  for (auto [out, in] : shapes) {
    std::mt19937 rng(1);
    std::normal_distribution<float> nd;
    std::vector<float> x(in);
    for (auto& v : x) v = nd(rng);
    std::vector<int8_t> q(in);
    float s = 0;
    bk::quantize_activations_per_token(x.data(), 1, in, 8, q.data(), &s);
    char shape[64];
    std::snprintf(shape, sizeof shape, "%lldx%lld", static_cast<long long>(out), static_cast<long long>(in));
    if (!only_shapes.empty() && std::find(only_shapes.begin(), only_shapes.end(), shape) == only_shapes.end()) continue;
    for (auto quant : {bitforge::WeightQuantizer::binary, bitforge::WeightQuantizer::ternary}) {
      const bool binary = quant == bitforge::WeightQuantizer::binary;
      if (!only_bits.empty() &&
          std::find(only_bits.begin(), only_bits.end(), binary ? "1" : "1.58") == only_bits.end())
        continue;
      auto p = make(quant, out, in, 7);
      const double bytes = double(p.v.packed_bytes());
      const int copies = static_cast<int>(std::max<double>(2, std::ceil(cold_mib * 1048576.0 / bytes)));
      std::vector<std::unique_ptr<bk::RepackedMatrix>> R;
      for (int c = 0; c < copies; ++c) R.push_back(std::make_unique<bk::RepackedMatrix>(p.v));
      // exact A16 result in double for the error column
      std::vector<double> exact(out);
      bk::packed_gemv_f64_reference(p.v, x.data(), 1, exact.data());
      std::vector<float> y(out);
      auto maxdiff = [&](const float* v) {
        double m = 0;
        for (int64_t r = 0; r < out; ++r) m = std::max(m, std::fabs(double(v[r]) - exact[r]));
        return m;
      };
      struct Row {
        std::string name;
        double cold, warm, bytes, err;
      };
      std::vector<Row> rows;
      // A8 rows time what a decode step pays per product, as llama.cpp's do (ggml quantizes x inside each mul_mat):
      // per-token absmax quantization of x to int8, then the GEMV
      auto quantize_x = [&] { bk::quantize_activations_per_token(x.data(), 1, in, 8, q.data(), &s); };
      auto a8_cold = [&] {
        for (auto& r : R) {
          quantize_x();
          r->gemv_i8(q.data(), &s, 1, y.data(), threads);
        }
      };
      {  // bitforge LUT A8 / A16 on the best path (named), and the AVX2 layout next to it when AVX-512 ran
        const std::string isa = bk::isa_name(R[0]->isa());
        const double a8c = median_us(a8_cold, min_ms, copies);
        const double a8w = median_us([&] {
          quantize_x();
          R[0]->gemv_i8(q.data(), &s, 1, y.data(), threads);
        }, min_ms);
        rows.push_back({"LUT A8 " + isa, a8c, a8w, bytes, maxdiff(y.data())});
        const double a16c = median_us([&] { for (auto& r : R) r->gemv_f32(x.data(), 1, y.data(), threads); }, min_ms, copies);
        const double a16w = median_us([&] { R[0]->gemv_f32(x.data(), 1, y.data(), threads); }, min_ms);
        rows.push_back({"LUT A16 " + isa, a16c, a16w, bytes, maxdiff(y.data())});
        if (R[0]->isa() == bk::GemvImpl::avx512) {
          std::vector<std::unique_ptr<bk::RepackedMatrix>> R2;
          for (int c = 0; c < copies; ++c) R2.push_back(std::make_unique<bk::RepackedMatrix>(p.v, bk::GemvImpl::avx2));
          const double c8 = median_us([&] {
            for (auto& r : R2) {
              quantize_x();
              r->gemv_i8(q.data(), &s, 1, y.data(), threads);
            }
          }, min_ms, copies);
          const double w8 = median_us([&] {
            quantize_x();
            R2[0]->gemv_i8(q.data(), &s, 1, y.data(), threads);
          }, min_ms);
          rows.push_back({"LUT A8 avx2", c8, w8, bytes, maxdiff(y.data())});
          const double c16 = median_us([&] { for (auto& r : R2) r->gemv_f32(x.data(), 1, y.data(), threads); }, min_ms, copies);
          const double w16 = median_us([&] { R2[0]->gemv_f32(x.data(), 1, y.data(), threads); }, min_ms);
          rows.push_back({"LUT A16 avx2", c16, w16, bytes, maxdiff(y.data())});
        }
        std::vector<Packed> views(copies, p);  // row-wise layout copies
        for (auto& v : views) {
          v.v.codes = v.codes.data();
          v.v.scales = v.scales.data();
        }
        const double rc = median_us([&] {
          for (auto& v : views) {
            quantize_x();
            bk::packed_gemv_i8(v.v, q.data(), &s, 1, y.data(), threads);
          }
        }, min_ms, copies);
        const double rw = median_us([&] {
          quantize_x();
          bk::packed_gemv_i8(p.v, q.data(), &s, 1, y.data(), threads);
        }, min_ms);
        rows.push_back({"rowwise A8", rc, rw, bytes, maxdiff(y.data())});
      }
      double llama_cold = 0;
#ifdef BITFORGE_WITH_GGML
      {
        GgmlGemv g(p, x, copies, threads);
        const double gc = median_us([&] { g.run(); }, min_ms, copies);
        GgmlGemv g1(p, x, 1, threads);
        const double gw = median_us([&] { g1.run(); }, min_ms);
        rows.push_back({binary ? "llama.cpp Q1_0" : "llama.cpp TQ2_0", gc, gw, double(g.weight_bytes), maxdiff(g1.y(0))});
        llama_cold = gc;
      }
#endif
      {  // fp32 at::mv on unpacked copies (4 bytes/weight)
        auto W = torch::from_blob(bk::packed_unpack_reference(p.v).data(), {out, in}, torch::kFloat).clone();
        const int fcopies = static_cast<int>(std::max<double>(2, std::ceil(cold_mib * 1048576.0 / (out * in * 4.0))));
        std::vector<torch::Tensor> Ws(fcopies, W);
        for (int c = 1; c < fcopies; ++c) Ws[c] = W.clone();
        auto xt = torch::from_blob(x.data(), {in}, torch::kFloat);
        torch::Tensor r;
        const double fc = median_us([&] { for (auto& w : Ws) r = at::mv(w, xt); }, min_ms, fcopies);
        const double fw = median_us([&] { r = at::mv(W, xt); }, min_ms);
        rows.push_back({"fp32 at::mv", fc, fw, double(out * in * 4), maxdiff(r.data_ptr<float>())});
      }
      if (with_ref) {
        const double ru = median_us([&] { bk::packed_gemv_f32_reference(p.v, x.data(), 1, y.data()); }, 0);
        rows.push_back({"reference (1 thr)", ru, ru, bytes, maxdiff(y.data())});
      }
#ifdef BITFORGE_WITH_GGML
      if (rounds > 0) {  // the same cold measurements alternated, so drifts of a noisy machine hit them alike
        GgmlGemv g(p, x, copies, threads);
        const ReadFloor floor(static_cast<int64_t>(bytes), copies, threads);
        std::vector<double> ratio, ours, share, over_floor;
        uint64_t sink = 0;
        for (int r = 0; r < rounds; ++r) {
          const double a = median_us(a8_cold, min_ms, copies);
          const double l = median_us([&] { g.run(); }, min_ms, copies);
          const double f = median_us([&] { sink += floor.read_all(); }, min_ms, copies);
          const double round_bw = std::max(stream.measure(3), 1e-9);  // the bandwidth of this round
          ratio.push_back(l / a);
          ours.push_back(a);
          share.push_back(bytes / (a * 1e-6) / 1e9 / round_bw);
          over_floor.push_back(a / f);
        }
        if (sink == 42) std::printf(" ");  // keep the reads alive
        std::sort(ratio.begin(), ratio.end());
        std::sort(ours.begin(), ours.end());
        std::sort(share.begin(), share.end());
        std::sort(over_floor.begin(), over_floor.end());
        const double gbs = bytes / (ours[ours.size() / 2] * 1e-6) / 1e9;
        char line[280];
        std::snprintf(line, sizeof line,
                      "%-11s %-5s %-12s median %.2fx  min %.2fx  max %.2fx  (%d rounds); bitforge median %.1f us, "
                      "%.1f GB/s, %.1f%% bw; per round %.1f%% (min %.1f%%); %.2fx the read floor",
                      shape, binary ? "1" : "1.58", binary ? "A8 vs Q1_0" : "A8 vs TQ2_0", ratio[ratio.size() / 2],
                      ratio.front(), ratio.back(), rounds, ours[ours.size() / 2], gbs, 100 * gbs / bw,
                      100 * share[share.size() / 2], 100 * share.front(), over_floor[over_floor.size() / 2]);
        round_lines.push_back(line);
      }
#endif
      for (const auto& r : rows) {
        const double gbs = r.bytes / (r.cold * 1e-6) / 1e9;
        char vs[32] = "-";
        if (llama_cold > 0) std::snprintf(vs, sizeof vs, "%.2fx", llama_cold / r.cold);
        std::printf("%-11s %-5s %-17s %10.1f %7.1f %6.1f%% %10.1f %11s %9.2e\n", shape, binary ? "1" : "1.58",
                    r.name.c_str(), r.cold, gbs, 100 * gbs / bw, r.warm, vs, r.err);
      }
      std::fflush(stdout);
    }
  }
  if (!round_lines.empty()) {
    std::printf("\nbitforge LUT A8 vs llama.cpp, DRAM-cold, alternated rounds (llama.cpp time / bitforge time per round):\n");
    for (const auto& l : round_lines) std::printf("%s\n", l.c_str());
  }
  if ((only_shapes.empty() && only_bits.empty()) ||
      std::find(only_shapes.begin(), only_shapes.end(), "151936x1024") != only_shapes.end()) {
    // The dense bf16 LM head a distilled small model keeps (Qwen3-0.6B: 151,936 × 1,024; too large for any cache),
    // one decode step, against a plain read of the same bytes in the same fork/join pattern.
    const int64_t out = 151936, in = 1024;
    std::vector<uint16_t> W(static_cast<size_t>(out * in));
    std::mt19937 rng(5);
    for (auto& w : W) w = static_cast<uint16_t>(0x3c00 + rng() % 512);  // bf16 values in [1, 4)
    std::vector<float> x(in, 0.01f), y(out);
    const ReadFloor floor(out * in * 2, 1, threads);
    uint64_t sink = 0;
    std::vector<double> ratio, ours;
    for (int r = 0; r < std::max(rounds, 3); ++r) {
      const double a = median_us([&] { bk::dense_gemv_bf16(W.data(), out, in, x.data(), 1, nullptr, y.data(), threads); },
                                 min_ms);
      const double f = median_us([&] { sink += floor.read_all(); }, min_ms);
      ours.push_back(a);
      ratio.push_back(a / f);
    }
    if (sink == 42) std::printf(" ");
    std::sort(ours.begin(), ours.end());
    std::sort(ratio.begin(), ratio.end());
    const double a = ours[ours.size() / 2];
    std::printf("\ndense bf16 LM head 151936x1024 (decode, M = 1): median %.0f us, %.1f GB/s, %.2fx the read floor (%zu "
                "rounds)\n",
                a, out * in * 2 / (a * 1e-6) / 1e9, ratio[ratio.size() / 2], ours.size());
  }
  std::printf("\nvs llama = llama.cpp cold time / this row's cold time (> 1: faster than llama.cpp).\n"
              "max|dy| = largest |y − exact| over the rows (exact: double-precision product with fp32 x; A8 rows and\n"
              "llama.cpp quantize x to 8 bits, so their error includes activation quantization).\n");
  return 0;
}
}  // namespace

int main(int argc, char** argv) {
  return bitforge::bench::guarded_main(
      argc, argv,
      "[--threads N] [--min-ms MS] [--cold-mib MIB] [--bw-mib MIB] [--no-reference] [--rounds R]\nPacked 1-bit/2-bit GEMV at 8B shapes vs llama.cpp, fp32 at::mv and the reference.\n",
      run_bench);
}
