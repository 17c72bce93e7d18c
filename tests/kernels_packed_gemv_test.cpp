// Packed CPU GEMV (kernels/packed_gemv.h): integer A8 path bit-exact against the unpack reference, A16 within
// 1e-5·Σ|w·x| of a double-precision W_eff matmul, odd shapes, M = 1..9, thread counts 1..4 bit-identical,
// scalar and AVX2 paths agreeing, anchors as exact sparse corrections; RepackedMatrix on every path the CPU has
// (scalar, AVX2, AVX-512; the others skipped visibly), and the BITFORGE_CPU_ISA forced fallback.
#include "kernels/packed_gemv.h"

#include <ATen/Parallel.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <string>

namespace bk = bitforge::kernels;

namespace {

uint16_t to_half(float f) {  // exact for the values used here (normal, few mantissa bits)
  uint32_t b;
  std::memcpy(&b, &f, 4);
  const uint32_t sign = (b >> 16) & 0x8000u;
  const int32_t exp = int32_t((b >> 23) & 0xff) - 127 + 15;
  const uint32_t mant = (b >> 13) & 0x3ffu;
  return static_cast<uint16_t>(sign | (uint32_t(exp) << 10) | mant);
}

struct Packed {
  bk::PackedMatrixView view;
  std::vector<uint8_t> codes;
  std::vector<uint16_t> scales;
  std::vector<int64_t> ai;
  std::vector<float> av;
  std::vector<int8_t> q;  // unpacked integer codes as stored
};

Packed make(bitforge::WeightQuantizer quant, int64_t out, int64_t in, int64_t gs, bool per_row, int64_t n_anchors,
            uint32_t seed) {
  std::mt19937 rng(seed);
  Packed p;
  auto& v = p.view;
  v.quant = quant;
  v.out = out;
  v.in = in;
  v.group_size = gs;
  v.scale_rows = per_row ? out : 1;
  const int64_t rb = v.row_bytes();
  p.codes.assign(out * rb, 0);
  p.q.resize(out * in);
  std::uniform_int_distribution<int> code(quant == bitforge::WeightQuantizer::binary ? 0 : -1, 1);
  for (int64_t r = 0; r < out; ++r)
    for (int64_t c = 0; c < in; ++c) {
      int cv = code(rng);
      if (quant == bitforge::WeightQuantizer::binary) {
        cv = cv == 0 ? -1 : 1;
        if (cv > 0) p.codes[r * rb + c / 8] |= uint8_t(1u << (c % 8));
      } else {
        p.codes[r * rb + c / 4] |= uint8_t((cv + 1) << (2 * (c % 4)));
      }
      p.q[r * in + c] = static_cast<int8_t>(cv);
    }
  std::uniform_int_distribution<int> mant(0, 255);
  p.scales.resize(v.scale_rows * (in / gs));
  for (auto& s : p.scales) s = to_half(std::ldexp(1.0f + mant(rng) / 256.f, -5));
  std::uniform_int_distribution<int64_t> pos(0, out * in - 1);
  std::normal_distribution<float> nv(0.f, 0.2f);
  std::vector<int64_t> idx;
  while (static_cast<int64_t>(idx.size()) < n_anchors) {
    idx.push_back(pos(rng));
    std::sort(idx.begin(), idx.end());
    idx.erase(std::unique(idx.begin(), idx.end()), idx.end());
  }
  p.ai = idx;
  for (int64_t k : idx) {
    p.av.push_back(nv(rng));
    // the packed format stores +1 (binary) / 0 (ternary) at anchors
    const int64_t r = k / in, c = k % in;
    if (quant == bitforge::WeightQuantizer::binary) {
      p.codes[r * rb + c / 8] |= uint8_t(1u << (c % 8));
      p.q[k] = 1;
    } else {
      p.codes[r * rb + c / 4] = uint8_t((p.codes[r * rb + c / 4] & ~(3u << (2 * (c % 4)))) | (1u << (2 * (c % 4))));
      p.q[k] = 0;
    }
  }
  v.codes = p.codes.data();
  v.scales = p.scales.data();
  v.anchor_index = p.ai.data();
  v.anchor_value = p.av.data();
  v.n_anchors = static_cast<int64_t>(p.ai.size());
  return p;
}

std::vector<float> rand_x(int64_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.f, 1.f);
  std::vector<float> x(n);
  for (auto& v : x) v = d(rng);
  return x;
}

/// Random activations for M rows, quantized per token (bits), and the unpack reference's A8 result for them.
struct QuantizedCase {
  std::vector<int8_t> q;
  std::vector<float> s, ref;
};
QuantizedCase quantized_reference(const bk::PackedMatrixView& w, int64_t M, int bits, uint32_t seed) {
  auto x = rand_x(M * w.in, seed);
  QuantizedCase c{std::vector<int8_t>(M * w.in), std::vector<float>(M), std::vector<float>(M * w.out)};
  bk::quantize_activations_per_token(x.data(), M, w.in, bits, c.q.data(), c.s.data());
  bk::packed_gemv_i8_reference(w, c.q.data(), c.s.data(), M, c.ref.data());
  return c;
}

struct Shape {
  bitforge::WeightQuantizer quant;
  int64_t out, in, gs;
  bool per_row;
  int64_t anchors;
};

std::vector<Shape> shapes() {
  using Q = bitforge::WeightQuantizer;
  std::vector<Shape> s;
  for (Q q : {Q::binary, Q::ternary}) {
    s.push_back({q, 37, 256, 128, true, 9});   // group 128
    s.push_back({q, 19, 384, 64, true, 5});    // group 64
    s.push_back({q, 13, 96, 32, true, 0});     // group 32
    s.push_back({q, 11, 48, 8, true, 3});      // group 8: AVX2 A16, scalar A8
    s.push_back({q, 7, 20, 4, true, 2});       // group 4: scalar only
    s.push_back({q, 23, 77, 77, true, 4});     // channel, odd in (byte/ vector tails)
    s.push_back({q, 5, 131, 131, false, 6});   // tensor, odd in
    s.push_back({q, 3, 1, 1, false, 0});       // 1 column
    s.push_back({q, 64, 1000, 1000, true, 40});// channel, long row with tail
  }
  return s;
}

}  // namespace

// The kernels' "every thread count gives identical results" tests below only mean something if the threads are real:
// at::parallel_for runs serially when the library is compiled without OpenMP (as it was before this test).
TEST(PackedGemv, ThreadCountIsReal) {
  const int saved = at::get_num_threads();
  at::set_num_threads(3);
  EXPECT_EQ(bk::parallel_threads_used(1), 1);
  EXPECT_EQ(bk::parallel_threads_used(2), 2);
  EXPECT_EQ(bk::parallel_threads_used(3), 3);
  EXPECT_EQ(bk::parallel_threads_used(0), 3);
  EXPECT_EQ(bk::parallel_threads_used(8), 3);  // capped by the pool
  at::set_num_threads(saved);
}

TEST(PackedGemv, A8BitExactAgainstReferenceAllPathsThreadsAndBatch) {
  uint32_t seed = 1;
  for (const auto& sh : shapes()) {
    auto p = make(sh.quant, sh.out, sh.in, sh.gs, sh.per_row, sh.anchors, seed++);
    for (int bits : {8, 4}) {
      for (int64_t M : {1, 3, 8, 9}) {
        const auto [q, s, ref] = quantized_reference(p.view, M, bits, seed++);
        std::vector<bk::GemvImpl> impls = {bk::GemvImpl::scalar, bk::GemvImpl::automatic};
        for (auto impl : impls)
          for (int threads = 1; threads <= 4; ++threads) {
            std::vector<float> y(M * sh.out, -1.f);
            bk::packed_gemv_i8(p.view, q.data(), s.data(), M, y.data(), threads, impl);
            ASSERT_EQ(0, std::memcmp(y.data(), ref.data(), y.size() * 4))
                << "out=" << sh.out << " in=" << sh.in << " gs=" << sh.gs << " M=" << M << " bits=" << bits
                << " threads=" << threads << " impl=" << int(impl);
          }
        // the integer result equals the real-valued product of W_eff and x̂ = q/s closely
        std::vector<float> xhat(M * sh.in);
        for (int64_t m = 0; m < M; ++m)
          for (int64_t c = 0; c < sh.in; ++c) xhat[m * sh.in + c] = float(q[m * sh.in + c]) / s[m];
        std::vector<double> exact(M * sh.out);
        bk::packed_gemv_f64_reference(p.view, xhat.data(), M, exact.data());
        for (size_t i = 0; i < exact.size(); ++i) ASSERT_NEAR(ref[i], exact[i], 1e-4 * (1 + std::fabs(exact[i])));
      }
    }
  }
}

TEST(PackedGemv, A16WithinToleranceThreadsIdentical) {
  uint32_t seed = 100;
  for (const auto& sh : shapes()) {
    auto p = make(sh.quant, sh.out, sh.in, sh.gs, sh.per_row, sh.anchors, seed++);
    const auto W = bk::packed_unpack_reference(p.view);
    for (int64_t M : {1, 2, 8, 11}) {
      auto x = rand_x(M * sh.in, seed++);
      std::vector<double> exact(M * sh.out);
      bk::packed_gemv_f64_reference(p.view, x.data(), M, exact.data());
      std::vector<float> ref(M * sh.out);
      bk::packed_gemv_f32_reference(p.view, x.data(), M, ref.data());
      for (auto impl : {bk::GemvImpl::scalar, bk::GemvImpl::automatic}) {
        std::vector<float> y1;
        for (int threads = 1; threads <= 4; ++threads) {
          std::vector<float> y(M * sh.out);
          bk::packed_gemv_f32(p.view, x.data(), M, y.data(), threads, impl);
          if (threads == 1) {
            y1 = y;
            for (int64_t m = 0; m < M; ++m)
              for (int64_t r = 0; r < sh.out; ++r) {
                double mag = 0;
                for (int64_t c = 0; c < sh.in; ++c) mag += std::fabs(double(W[r * sh.in + c]) * x[m * sh.in + c]);
                ASSERT_NEAR(y[m * sh.out + r], exact[m * sh.out + r], 1e-5 * mag + 1e-30)
                    << "out=" << sh.out << " in=" << sh.in << " gs=" << sh.gs << " impl=" << int(impl);
                ASSERT_NEAR(ref[m * sh.out + r], exact[m * sh.out + r], 1e-5 * mag + 1e-30);
              }
            if (impl == bk::GemvImpl::scalar) {
              ASSERT_EQ(0, std::memcmp(y.data(), ref.data(), y.size() * 4));
            }
          } else {
            ASSERT_EQ(0, std::memcmp(y.data(), y1.data(), y.size() * 4)) << "threads=" << threads;
          }
        }
      }
    }
  }
}

TEST(PackedGemv, ActivationQuantizationMatchesTheScalarDefinitionBitForBit) {
  // the vectorized quantizer (AVX2 unless BITFORGE_CPU_ISA=scalar) against the definition, with exact .5 ties,
  // zeros, tiny rows (scale from the 1e-5 floor) and lengths with vector tails
  std::mt19937 rng(77);
  std::normal_distribution<float> nd(0.f, 2.f);
  for (int64_t in : {1, 7, 31, 32, 33, 100, 2048, 2051}) {
    for (int bits : {8, 4}) {
      const int64_t M = 3;
      std::vector<float> x(M * in);
      for (auto& v : x) v = nd(rng);
      for (int64_t c = 0; c < in; c += 5) x[c] = 0.f;
      if (in >= 4) {  // row 1: values whose products with the scale land on .5 ties (max 127 · 2^-3 → s = 8)
        for (int64_t c = 0; c < in; ++c) x[in + c] = float(int64_t(c % 255) - 127) / 16.f;
        x[in] = 127.f / 8.f;
      }
      for (int64_t c = 0; c < in; ++c) x[2 * in + c] = 1e-7f * float(c % 7);  // below the 1e-5 floor
      std::vector<int8_t> q(M * in);
      std::vector<float> s(M);
      bk::quantize_activations_per_token(x.data(), M, in, bits, q.data(), s.data());
      const float qp = bits == 8 ? 127.f : 7.f;
      for (int64_t r = 0; r < M; ++r) {
        float m = 0.f;
        for (int64_t c = 0; c < in; ++c) m = std::max(m, std::fabs(x[r * in + c]));
        const float sc = qp / std::max(m, 1e-5f);
        ASSERT_EQ(0, std::memcmp(&sc, &s[r], 4)) << "in=" << in << " r=" << r;
        for (int64_t c = 0; c < in; ++c) {
          const float v = std::min(std::max(nearbyintf(x[r * in + c] * sc), -qp - 1.f), qp);
          ASSERT_EQ(int(v), int(q[r * in + c])) << "in=" << in << " bits=" << bits << " r=" << r << " c=" << c;
        }
      }
    }
  }
}

TEST(PackedGemv, DequantRowMatchesUnpackAndAnchorsAreExact) {
  auto p = make(bitforge::WeightQuantizer::binary, 9, 256, 128, true, 12, 7);
  const auto W = bk::packed_unpack_reference(p.view);
  for (size_t k = 0; k < p.ai.size(); ++k) EXPECT_EQ(W[p.ai[k]], p.av[k]);
  std::vector<float> row(256);
  for (int64_t r = 0; r < 9; ++r) {
    bk::packed_dequant_row(p.view, r, row.data());
    EXPECT_EQ(0, std::memcmp(row.data(), W.data() + r * 256, 256 * 4));
  }
  // x = e_c picks column c exactly: y = W[:, c]
  std::vector<float> x(256, 0.f);
  const int64_t c = p.ai[0] % 256;
  x[c] = 1.f;
  std::vector<float> y(9);
  bk::packed_gemv_f32(p.view, x.data(), 1, y.data());
  // anchors: scale·code + (value − scale·code) = value up to one fp32 rounding
  for (int64_t r = 0; r < 9; ++r) EXPECT_FLOAT_EQ(y[r], W[r * 256 + c]);
}

TEST(PackedGemv, RejectsInconsistentViews) {
  auto p = make(bitforge::WeightQuantizer::ternary, 4, 64, 32, true, 0, 3);
  auto v = p.view;
  v.group_size = 30;
  std::vector<float> x(64), y(4);
  EXPECT_THROW(bk::packed_gemv_f32(v, x.data(), 1, y.data()), std::invalid_argument);
  v = p.view;
  v.scale_rows = 2;
  EXPECT_THROW(bk::packed_gemv_f32(v, x.data(), 1, y.data()), std::invalid_argument);
  EXPECT_THROW(bk::packed_gemv_f32(p.view, x.data(), 0, y.data()), std::invalid_argument);
  std::vector<int8_t> q(64);
  float s = 1.f;
  v = p.view;
  v.group_size = 4;  // 64 % 4 == 0 but A8 AVX2 needs 32-multiples
  if (bk::cpu_has_avx2()) {
    EXPECT_THROW(bk::packed_gemv_i8(v, q.data(), &s, 1, y.data(), 1, bk::GemvImpl::avx2), std::invalid_argument);
  }
  EXPECT_THROW(bk::quantize_activations_per_token(x.data(), 1, 64, 6, q.data(), &s), std::invalid_argument);
}

// ---- RepackedMatrix: table-lookup kernels on the repacked layout ------------------------------------------------

namespace {
std::vector<Shape> lut_shapes() {
  using Q = bitforge::WeightQuantizer;
  std::vector<Shape> s;
  for (const auto& sh : shapes()) {
    bk::PackedMatrixView v;
    v.quant = sh.quant;
    v.out = sh.out;
    v.in = sh.in;
    v.group_size = sh.gs;
    if (bk::RepackedMatrix::supports(v)) s.push_back(sh);
  }
  for (Q q : {Q::binary, Q::ternary}) {
    s.push_back({q, 100, 512, 128, true, 30});   // several 32-row blocks + a partial one
    s.push_back({q, 64, 1024, 1024, true, 20});  // channel: one group spanning many int16 segments
    s.push_back({q, 33, 640, 640, false, 7});    // tensor scale, 32 + 1 rows
  }
  return s;
}
}  // namespace

// Every path is tested on its own layout: RepackedMatrix(view, isa) for isa = scalar, avx2, avx512. A path the CPU
// cannot run is skipped visibly (GTEST_SKIP naming what is missing), never claimed.
class RepackedIsa : public ::testing::TestWithParam<bk::GemvImpl> {
 protected:
  void SetUp() override {
    const auto isa = GetParam();
    if (isa == bk::GemvImpl::avx2 && !bk::cpu_has_avx2())
      GTEST_SKIP() << "CPU lacks AVX2/FMA/F16C (features: " << bk::cpu_features() << ")";
    if (isa == bk::GemvImpl::avx512 && !bk::cpu_has_avx512())
      GTEST_SKIP() << "CPU lacks AVX-512 F/BW/VL/VNNI/VBMI (features: " << bk::cpu_features() << ")";
  }
  /// The matrix for this path, or nullptr when its layout cannot hold the view (AVX-512: group size).
  static std::unique_ptr<bk::RepackedMatrix> build(const bk::PackedMatrixView& v) {
    if (GetParam() == bk::GemvImpl::avx512 && !bk::RepackedMatrix::supports_avx512_layout(v)) return nullptr;
    auto R = std::make_unique<bk::RepackedMatrix>(v, GetParam());
    EXPECT_EQ(R->isa(), GetParam());
    return R;
  }
};

TEST_P(RepackedIsa, A8BitExactAgainstUnpackReferenceThreadsAndBatch) {
  uint32_t seed = 500;
  int tested = 0;
  for (const auto& sh : lut_shapes()) {
    auto p = make(sh.quant, sh.out, sh.in, sh.gs, sh.per_row, sh.anchors, seed++);
    const auto R = build(p.view);
    for (int bits : {8, 4}) {
      for (int64_t M : {1, 3, 9}) {
        const auto [q, s, ref] = quantized_reference(p.view, M, bits, seed++);
        if (!R) continue;
        for (auto impl : {bk::GemvImpl::automatic, GetParam()})
          for (int threads = 1; threads <= 4; ++threads) {
            std::vector<float> y(M * sh.out, -1.f);
            R->gemv_i8(q.data(), s.data(), M, y.data(), threads, impl);
            ASSERT_EQ(0, std::memcmp(y.data(), ref.data(), y.size() * 4))
                << "out=" << sh.out << " in=" << sh.in << " gs=" << sh.gs << " M=" << M << " bits=" << bits
                << " threads=" << threads << " isa=" << bk::isa_name(GetParam());
            ++tested;
          }
      }
    }
  }
  EXPECT_GT(tested, 100);
}

TEST_P(RepackedIsa, A8ExtremeActivationsStayExact) {
  // every code +1 (binary: all bits set; ternary: code 2), every q = −128 or 127: each table entry reaches ±512
  // (binary) / ±256 (ternary), the largest magnitudes the int16 sums (AVX2) and the L + 64·H split (AVX-512) meet;
  // one group spans the whole 4096-column row
  for (auto quant : {bitforge::WeightQuantizer::binary, bitforge::WeightQuantizer::ternary}) {
    auto p = make(quant, 40, 4096, 4096, true, 0, 9);
    std::fill(p.codes.begin(), p.codes.end(), quant == bitforge::WeightQuantizer::binary ? 0xff : 0xaa);
    const auto R = build(p.view);
    ASSERT_TRUE(R);
    for (int8_t v : {int8_t(-128), int8_t(127)}) {
      std::vector<int8_t> q(4096, v);
      float s = 3.f;
      std::vector<float> ref(40), y(40);
      bk::packed_gemv_i8_reference(p.view, q.data(), &s, 1, ref.data());
      R->gemv_i8(q.data(), &s, 1, y.data(), 2);
      ASSERT_EQ(0, std::memcmp(y.data(), ref.data(), y.size() * 4)) << "q=" << int(v);
      // and the value itself: every row is 4096 · q · scale_r / s
      std::vector<float> row(4096);
      for (int64_t r = 0; r < 40; ++r) {
        bk::packed_dequant_row(p.view, r, row.data());
        volatile float t = static_cast<float>(4096 * int(v)) * row[0];
        EXPECT_EQ(y[r], t / s) << "r=" << r;
      }
    }
  }
}

TEST_P(RepackedIsa, A8AlternatingExtremesPerColumn) {
  // q alternating between −128 and 127 with random codes: table entries of both signs near the extremes
  for (auto quant : {bitforge::WeightQuantizer::binary, bitforge::WeightQuantizer::ternary}) {
    auto p = make(quant, 70, 1024, 128, true, 5, 21);
    const auto R = build(p.view);
    ASSERT_TRUE(R);
    std::vector<int8_t> q(2 * 1024);
    for (size_t c = 0; c < q.size(); ++c) q[c] = (c % 3 == 0) ? int8_t(-128) : ((c % 3 == 1) ? int8_t(127) : int8_t(-127));
    float s[2] = {2.5f, 0.75f};
    std::vector<float> ref(2 * 70), y(2 * 70);
    bk::packed_gemv_i8_reference(p.view, q.data(), s, 2, ref.data());
    R->gemv_i8(q.data(), s, 2, y.data(), 1);
    ASSERT_EQ(0, std::memcmp(y.data(), ref.data(), y.size() * 4));
  }
}

TEST_P(RepackedIsa, A16EqualsScalarLutBitForBitAndWithinTolerance) {
  uint32_t seed = 900;
  int tested = 0;
  for (const auto& sh : lut_shapes()) {
    auto p = make(sh.quant, sh.out, sh.in, sh.gs, sh.per_row, sh.anchors, seed++);
    const bk::RepackedMatrix S(p.view, bk::GemvImpl::scalar);
    const auto R = build(p.view);
    const auto W = bk::packed_unpack_reference(p.view);
    for (int64_t M : {1, 2, 3, 9}) {
      auto x = rand_x(M * sh.in, seed++);
      if (!R) continue;
      std::vector<double> exact(M * sh.out);
      bk::packed_gemv_f64_reference(p.view, x.data(), M, exact.data());
      std::vector<float> scalar(M * sh.out);
      S.gemv_f32(x.data(), M, scalar.data(), 1);
      for (int64_t m = 0; m < M; ++m)
        for (int64_t r = 0; r < sh.out; ++r) {
          double mag = 0;
          for (int64_t c = 0; c < sh.in; ++c) mag += std::fabs(double(W[r * sh.in + c]) * x[m * sh.in + c]);
          ASSERT_NEAR(scalar[m * sh.out + r], exact[m * sh.out + r], 1e-5 * mag + 1e-30)
              << "out=" << sh.out << " in=" << sh.in << " gs=" << sh.gs << " m=" << m << " r=" << r;
        }
      for (int threads = 1; threads <= 4; ++threads) {
        std::vector<float> y(M * sh.out, -1.f);
        R->gemv_f32(x.data(), M, y.data(), threads);
        ASSERT_EQ(0, std::memcmp(y.data(), scalar.data(), y.size() * 4))
            << "out=" << sh.out << " in=" << sh.in << " gs=" << sh.gs << " M=" << M << " threads=" << threads
            << " isa=" << bk::isa_name(GetParam());
        ++tested;
      }
    }
  }
  EXPECT_GT(tested, 40);
}

INSTANTIATE_TEST_SUITE_P(Isa, RepackedIsa,
                         ::testing::Values(bk::GemvImpl::scalar, bk::GemvImpl::avx2, bk::GemvImpl::avx512),
                         [](const ::testing::TestParamInfo<bk::GemvImpl>& i) { return bk::isa_name(i.param); });

TEST(CpuDispatch, AutomaticPicksTheBestPathTheCpuAndLayoutAllow) {
  std::printf("[          ] CPU features: %s; automatic = %s\n", bk::cpu_features().c_str(),
              bk::isa_name(bk::best_cpu_isa()));
  const char* cap = std::getenv("BITFORGE_CPU_ISA");
  const std::string c = cap ? cap : "";
  const auto best = bk::best_cpu_isa();
  if (c == "scalar") {
    EXPECT_EQ(best, bk::GemvImpl::scalar);
  }
  if (c == "avx2") {
    EXPECT_NE(best, bk::GemvImpl::avx512);
  }
  if ((c.empty() || c == "auto") && bk::cpu_has_avx512()) {
    EXPECT_EQ(best, bk::GemvImpl::avx512);
  }
  if ((c.empty() || c == "auto") && !bk::cpu_has_avx512()) {
    EXPECT_EQ(best, bk::cpu_has_avx2() ? bk::GemvImpl::avx2 : bk::GemvImpl::scalar);
  }
  auto p = make(bitforge::WeightQuantizer::ternary, 70, 256, 128, true, 3, 11);
  EXPECT_EQ(bk::RepackedMatrix(p.view).isa(), best);
  // a group size the tile layout cannot hold falls back to the 32-row layout's best path
  auto b8 = make(bitforge::WeightQuantizer::binary, 11, 48, 8, true, 0, 12);
  const auto fb = bk::RepackedMatrix(b8.view).isa();
  EXPECT_NE(fb, bk::GemvImpl::avx512);
  EXPECT_EQ(fb, best == bk::GemvImpl::scalar ? bk::GemvImpl::scalar : (bk::cpu_has_avx2() ? bk::GemvImpl::avx2 : bk::GemvImpl::scalar));
  // asking a matrix for a path its layout does not hold is an error, not a silent substitute
  const bk::RepackedMatrix S(p.view, bk::GemvImpl::scalar);
  std::vector<int8_t> q(256, 1);
  float s = 1.f;
  std::vector<float> y(70);
  EXPECT_THROW(S.gemv_i8(q.data(), &s, 1, y.data(), 1, bk::GemvImpl::avx512), std::invalid_argument);
  if (bk::cpu_has_avx512()) {
    const bk::RepackedMatrix Z(p.view, bk::GemvImpl::avx512);
    EXPECT_THROW(Z.gemv_i8(q.data(), &s, 1, y.data(), 1, bk::GemvImpl::scalar), std::invalid_argument);
    EXPECT_THROW(bk::RepackedMatrix(b8.view, bk::GemvImpl::avx512), std::invalid_argument);
  } else {
    EXPECT_THROW(bk::RepackedMatrix(p.view, bk::GemvImpl::avx512), std::invalid_argument);
  }
}

// BITFORGE_CPU_ISA caps what automatic picks (for the runtime and every kernel); the cap is read once per process, so
// the suites run again in child processes of this binary with the cap set, which also keeps the AVX2 and scalar
// paths of every automatic call covered on an AVX-512 host.
TEST(CpuDispatch, ForcedFallbackViaEnvironmentRunsTheSuites) {
  if (std::getenv("BITFORGE_CPU_ISA")) GTEST_SKIP() << "already a forced-fallback child";
  char self[4096];
  const ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
  if (n <= 0) GTEST_SKIP() << "cannot read /proc/self/exe";
  self[n] = 0;
  for (const char* cap : {"avx2", "scalar"}) {
    if (std::string(cap) == "avx2" && !bk::cpu_has_avx2()) {
      std::printf("[  SKIPPED ] BITFORGE_CPU_ISA=avx2: CPU lacks AVX2\n");
      continue;
    }
    const std::string cmd = std::string("BITFORGE_CPU_ISA=") + cap +
                            " '" + std::string(self) + "' --gtest_color=no "
                            "--gtest_filter='CpuDispatch.Automatic*:PackedGemv.*:RepackedMatrix.*' > /dev/null 2>&1";
    EXPECT_EQ(0, std::system(cmd.c_str())) << "the suites failed under BITFORGE_CPU_ISA=" << cap << ": " << cmd;
  }
}

TEST(RepackedMatrix, RejectsWhatItCannotRepack) {
  auto p = make(bitforge::WeightQuantizer::binary, 4, 20, 4, true, 0, 3);  // binary group 4: not a byte of columns
  EXPECT_FALSE(bk::RepackedMatrix::supports(p.view));
  EXPECT_THROW(bk::RepackedMatrix R(p.view), std::invalid_argument);
  auto t = make(bitforge::WeightQuantizer::ternary, 4, 64, 32, true, 0, 4);
  t.codes[5] |= 0x0c;  // a code 3 in row 0, column 4·5 + 1
  try {
    bk::RepackedMatrix R(t.view);
    FAIL() << "code 3 accepted";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("row 0, column 21"), std::string::npos) << e.what();
  }
  auto ok = make(bitforge::WeightQuantizer::ternary, 4, 64, 32, true, 0, 5);
  const bk::RepackedMatrix R(ok.view);
  std::vector<float> x(64), y(4);
  EXPECT_THROW(R.gemv_f32(x.data(), 0, y.data()), std::invalid_argument);
  EXPECT_THROW(R.gemv_f32(nullptr, 1, y.data()), std::invalid_argument);
}
