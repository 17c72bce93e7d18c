// Packed CPU GEMV benchmark (kernels/packed_gemv.h): y = W·x, batch 1, for the 8B-class shapes
// 4096×4096, 14336×4096 (up/gate) and 4096×14336 (down), binary group-128 (Q1_0's layout) and ternary
// group-128, A16 and A8, against (a) fp32 at::mv on the unpacked weight and (b) the scalar reference, all in
// the same run; plus this machine's memory read bandwidth (a plain sum over a 1 GiB buffer with the same
// thread count), so the GB/s column can be read as a fraction of what the memory delivers.
//
//   usage: bench_packed_gemv [--threads N] [--min-ms MS] [--no-reference] [--bw-mib MIB]
// Times are medians over repetitions after a warm-up; "GB/s" is packed weight bytes (codes + scales) / time.
#include <ATen/Parallel.h>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "kernels/packed_gemv.h"

namespace bk = bitforge::kernels;

namespace {

using Clock = std::chrono::steady_clock;

template <class F>
double median_us(F&& f, double min_ms) {
  f();  // warm-up
  std::vector<double> t;
  const auto start = Clock::now();
  while (t.size() < 5 || (std::chrono::duration<double, std::milli>(Clock::now() - start).count() < min_ms && t.size() < 2000)) {
    const auto a = Clock::now();
    f();
    t.push_back(std::chrono::duration<double, std::micro>(Clock::now() - a).count());
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

struct Packed {
  bk::PackedMatrixView v;
  std::vector<uint8_t> codes;
  std::vector<uint16_t> scales;
};

Packed make(bk::PackedQuant q, int64_t out, int64_t in, uint32_t seed) {
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
    if (q == bk::PackedQuant::ternary)  // map any code 3 to 2 (valid codes 0..2)
      for (int s = 0; s < 8; s += 2)
        if (((b >> s) & 3) == 3) b = static_cast<uint8_t>(b & ~(1u << s));
  }
  p.scales.assign(out * (in / 128), 0x2400);  // fp16 0.015625
  p.v.codes = p.codes.data();
  p.v.scales = p.scales.data();
  return p;
}

double read_bandwidth_gbs(int64_t mib, int threads) {
  const int64_t n = mib * 1024 * 1024 / 8;
  std::vector<uint64_t> buf(static_cast<size_t>(n));
  at::parallel_for(0, n, 1 << 16, [&](int64_t a, int64_t b) {
    for (int64_t i = a; i < b; ++i) buf[i] = static_cast<uint64_t>(i);
  });
  double best = 0;
  for (int rep = 0; rep < 5; ++rep) {
    std::vector<uint64_t> part(static_cast<size_t>(threads), 0);
    const auto t0 = Clock::now();
    at::parallel_for(0, threads, 1, [&](int64_t c0, int64_t c1) {
      for (int64_t c = c0; c < c1; ++c) {
        const int64_t a = n * c / threads, b = n * (c + 1) / threads;
        uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
        int64_t i = a;
        for (; i + 4 <= b; i += 4) {
          s0 += buf[i];
          s1 += buf[i + 1];
          s2 += buf[i + 2];
          s3 += buf[i + 3];
        }
        for (; i < b; ++i) s0 += buf[i];
        part[c] = s0 + s1 + s2 + s3;
      }
    });
    const double s = std::chrono::duration<double>(Clock::now() - t0).count();
    uint64_t total = 0;
    for (auto v : part) total += v;
    if (total == 42) std::printf(" ");  // keep the sum alive
    best = std::max(best, double(n) * 8 / s / 1e9);
  }
  return best;
}

}  // namespace

int main(int argc, char** argv) {
  int threads = at::get_num_threads();
  double min_ms = 300;
  bool with_ref = true;
  int64_t bw_mib = 1024;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--threads" && i + 1 < argc) threads = std::atoi(argv[++i]);
    else if (a == "--min-ms" && i + 1 < argc) min_ms = std::atof(argv[++i]);
    else if (a == "--no-reference") with_ref = false;
    else if (a == "--bw-mib" && i + 1 < argc) bw_mib = std::atoll(argv[++i]);
    else {
      std::fprintf(stderr, "usage: %s [--threads N] [--min-ms MS] [--no-reference] [--bw-mib MIB]\n", argv[0]);
      return 2;
    }
  }
  at::set_num_threads(threads);
  std::string cmd;
  for (int i = 0; i < argc; ++i) cmd += std::string(i ? " " : "") + argv[i];
  std::printf("reproduce: cmake --build <build dir> --target bench_packed_gemv -j1 && %s\n", cmd.c_str());
  std::printf("threads %d, AVX2 %s, at::get_num_threads %d\n", threads, bk::cpu_has_avx2() ? "yes" : "no",
              at::get_num_threads());
  const double bw = read_bandwidth_gbs(bw_mib, threads);
  std::printf("memory read bandwidth (sum over %lld MiB, %d threads): %.1f GB/s\n\n", static_cast<long long>(bw_mib),
              threads, bw);

  std::printf("%-12s %-16s %10s %10s %8s %10s %10s %10s %10s\n", "shape", "kernel", "us", "GB/s", "%bw", "fp32 us",
              "x fp32", "ref us", "x ref");
  const std::vector<std::pair<int64_t, int64_t>> shapes = {{4096, 4096}, {14336, 4096}, {4096, 14336}};
  for (auto [out, in] : shapes) {
    std::mt19937 rng(1);
    std::normal_distribution<float> nd;
    std::vector<float> x(in);
    for (auto& v : x) v = nd(rng);
    std::vector<float> y(out);
    std::vector<int8_t> q(in);
    float s = 0;
    bk::quantize_activations_per_token(x.data(), 1, in, 8, q.data(), &s);
    auto xt = torch::from_blob(x.data(), {in}, torch::kFloat);
    for (auto quant : {bk::PackedQuant::binary, bk::PackedQuant::ternary}) {
      auto p = make(quant, out, in, 7);
      // baseline (a): fp32 matrix-vector product on the unpacked weight
      auto W = torch::from_blob(bk::packed_unpack_reference(p.v).data(), {out, in}, torch::kFloat).clone();
      const double fp32_us = median_us([&] { auto r = at::mv(W, xt); }, min_ms);
      double ref_us = 0;
      if (with_ref) ref_us = median_us([&] { bk::packed_gemv_f32_reference(p.v, x.data(), 1, y.data()); }, 0);
      const double bytes = double(p.v.packed_bytes());
      const std::string qn = quant == bk::PackedQuant::binary ? "1bit" : "2bit";
      for (bool a8 : {false, true}) {
        const double us = a8 ? median_us([&] { bk::packed_gemv_i8(p.v, q.data(), &s, 1, y.data(), threads); }, min_ms)
                             : median_us([&] { bk::packed_gemv_f32(p.v, x.data(), 1, y.data(), threads); }, min_ms);
        const double gbs = bytes / (us * 1e-6) / 1e9;
        char shape[64];
        std::snprintf(shape, sizeof shape, "%lldx%lld", static_cast<long long>(out), static_cast<long long>(in));
        std::printf("%-12s %-16s %10.1f %10.1f %7.1f%% %10.1f %9.2fx %10.1f %9.1fx\n", shape,
                    (qn + (a8 ? " A8" : " A16")).c_str(), us, gbs, 100 * gbs / bw, fp32_us, fp32_us / us, ref_us,
                    ref_us / us);
      }
    }
  }
  std::printf("\nGB/s = packed bytes (codes + fp16 group-128 scales) per call / time; %%bw = that / read bandwidth.\n"
              "fp32 = at::mv on the unpacked fp32 weight (4 bytes/weight); ref = scalar single-thread reference.\n");
  return 0;
}
