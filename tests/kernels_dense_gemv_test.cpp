// Dense bf16 / fp32 GEMV (kernels/dense_gemv.h): within 1e-5·Σ|w·x| of a double-precision product, bf16 weights
// widened exactly, AVX2 and scalar paths, bias, M > 1, thread counts 1..4 bit-identical, bad arguments rejected.
#include "kernels/dense_gemv.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

namespace bk = bitforge::kernels;

namespace {
float bf16_to_f32(uint16_t h) {
  const uint32_t b = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &b, 4);
  return f;
}
}  // namespace

TEST(DenseGemv, Bf16AndF32WithinToleranceOfDoubleAllPathsAndThreads) {
  std::mt19937 rng(3);
  std::normal_distribution<float> nd;
  for (auto [out, in] : std::vector<std::pair<int64_t, int64_t>>{{37, 256}, {5, 77}, {64, 1000}, {3, 1}, {130, 40}}) {
    std::vector<uint16_t> wb(out * in);
    std::vector<float> wf(out * in), bias(out);
    for (int64_t i = 0; i < out * in; ++i) {
      float v = nd(rng);
      uint32_t b;
      std::memcpy(&b, &v, 4);
      wb[i] = static_cast<uint16_t>(b >> 16);  // truncation: any bf16 value will do
      wf[i] = bf16_to_f32(wb[i]);
    }
    for (auto& b : bias) b = nd(rng);
    for (int64_t M : {1, 3}) {
      std::vector<float> x(M * in);
      for (auto& v : x) v = nd(rng);
      for (bool with_bias : {false, true}) {
        std::vector<bk::GemvImpl> impls = {bk::GemvImpl::scalar};
        if (bk::cpu_has_avx2()) impls.push_back(bk::GemvImpl::avx2);
        for (auto impl : impls) {
          std::vector<float> y1;
          for (int threads = 1; threads <= 4; ++threads) {
            std::vector<float> yb(M * out, -7.f), yf(M * out, -7.f);
            bk::dense_gemv_bf16(wb.data(), out, in, x.data(), M, with_bias ? bias.data() : nullptr, yb.data(), threads, impl);
            bk::dense_gemv_f32(wf.data(), out, in, x.data(), M, with_bias ? bias.data() : nullptr, yf.data(), threads, impl);
            // the same widened weights: bf16 and fp32 storage give identical results
            ASSERT_EQ(0, std::memcmp(yb.data(), yf.data(), yb.size() * 4));
            if (threads == 1) {
              y1 = yb;
              for (int64_t m = 0; m < M; ++m)
                for (int64_t r = 0; r < out; ++r) {
                  double exact = with_bias ? bias[r] : 0, mag = with_bias ? std::fabs(bias[r]) : 0;
                  for (int64_t c = 0; c < in; ++c) {
                    exact += double(wf[r * in + c]) * x[m * in + c];
                    mag += std::fabs(double(wf[r * in + c]) * x[m * in + c]);
                  }
                  ASSERT_NEAR(yb[m * out + r], exact, 1e-5 * mag + 1e-30) << out << "x" << in << " impl " << int(impl);
                }
            } else {
              ASSERT_EQ(0, std::memcmp(yb.data(), y1.data(), yb.size() * 4)) << "threads " << threads;
            }
            // batch invariance: each row of x alone (the decode kernel) gives the batched result bit for bit
            for (int64_t m = 0; m < M; ++m) {
              std::vector<float> ym(out);
              bk::dense_gemv_bf16(wb.data(), out, in, x.data() + m * in, 1, with_bias ? bias.data() : nullptr,
                                  ym.data(), threads, impl);
              ASSERT_EQ(0, std::memcmp(ym.data(), yb.data() + m * out, out * 4)) << "row " << m << " alone";
            }
          }
        }
      }
    }
  }
}

// A decode step on a matrix of kDenseStreamBytes or more takes the one-row-per-pass loop: the same bits as the batched
// (4-row) kernel and every thread count, within tolerance of the exact product.
TEST(DenseGemv, LargeMatrixDecodeLoopMatchesBatchBitForBit) {
  if (!bk::cpu_has_avx2()) GTEST_SKIP() << "no AVX2: only the scalar path exists here";
  const int64_t in = 1000, out = bk::kDenseStreamBytes / (2 * in) + 37;  // bf16 just above the threshold, odd tail
  std::mt19937 rng(11);
  std::normal_distribution<float> nd;
  std::vector<uint16_t> wb(out * in);
  for (auto& w : wb) {
    float v = nd(rng);
    uint32_t b;
    std::memcpy(&b, &v, 4);
    w = static_cast<uint16_t>(b >> 16);
  }
  const int64_t M = 2;
  std::vector<float> x(M * in), bias(out);
  for (auto& v : x) v = nd(rng);
  for (auto& v : bias) v = nd(rng);
  std::vector<float> batch(M * out);
  bk::dense_gemv_bf16(wb.data(), out, in, x.data(), M, bias.data(), batch.data(), 1, bk::GemvImpl::avx2);
  for (int threads : {1, 2, 3}) {
    std::vector<float> y(out, -7.f);
    bk::dense_gemv_bf16(wb.data(), out, in, x.data() + in, 1, bias.data(), y.data(), threads, bk::GemvImpl::avx2);
    ASSERT_EQ(0, std::memcmp(y.data(), batch.data() + out, out * 4)) << "threads " << threads;
  }
  for (int64_t r = 0; r < out; r += 97) {
    double exact = bias[r], mag = std::fabs(bias[r]);
    for (int64_t c = 0; c < in; ++c) {
      exact += double(bf16_to_f32(wb[r * in + c])) * x[in + c];
      mag += std::fabs(double(bf16_to_f32(wb[r * in + c])) * x[in + c]);
    }
    ASSERT_NEAR(batch[out + r], exact, 1e-5 * mag + 1e-30) << "row " << r;
  }
}

TEST(DenseGemv, RejectsBadArguments) {
  std::vector<float> w(8), x(4), y(2);
  EXPECT_THROW(bk::dense_gemv_f32(w.data(), 0, 4, x.data(), 1, nullptr, y.data()), std::invalid_argument);
  EXPECT_THROW(bk::dense_gemv_f32(nullptr, 2, 4, x.data(), 1, nullptr, y.data()), std::invalid_argument);
  EXPECT_THROW(bk::dense_gemv_f32(w.data(), 2, 4, x.data(), 0, nullptr, y.data()), std::invalid_argument);
}

TEST(DenseGemv, DotAndAxpyMatchDouble) {
  std::mt19937 rng(11);
  std::normal_distribution<float> nd;
  for (int64_t n : {1, 7, 8, 31, 64, 100}) {
    std::vector<float> a(n), b(n), y(n);
    for (int64_t i = 0; i < n; ++i) a[i] = nd(rng), b[i] = nd(rng), y[i] = nd(rng);
    double exact = 0, mag = 0;
    for (int64_t i = 0; i < n; ++i) exact += double(a[i]) * b[i], mag += std::fabs(double(a[i]) * b[i]);
    EXPECT_NEAR(bk::dot_f32(a.data(), b.data(), n), exact, 1e-6 * mag + 1e-30) << n;
    auto y0 = y;
    bk::axpy_f32(y.data(), 0.75f, a.data(), n);
    for (int64_t i = 0; i < n; ++i) EXPECT_NEAR(y[i], y0[i] + 0.75 * a[i], 1e-6 * (std::fabs(y0[i]) + std::fabs(a[i])));
  }
}

TEST(DenseGemv, SiluMulMatchesTheFormulaInDouble) {
  std::mt19937 rng(12);
  std::uniform_real_distribution<float> wide(-100.f, 100.f), narrow(-6.f, 6.f);
  std::normal_distribution<float> nd;
  for (int64_t n : {1, 7, 8, 9, 1000, 4099}) {
    std::vector<float> g(n), u(n);
    for (int64_t i = 0; i < n; ++i) g[i] = (i % 3 == 0) ? wide(rng) : narrow(rng), u[i] = nd(rng);
    if (n > 8) g[0] = -87.5f, g[1] = 88.5f, g[2] = 0.f, g[3] = -1e-8f, g[4] = 200.f, g[5] = -200.f;
    for (int threads : {1, 3}) {
      auto out = u;
      bk::silu_mul_f32(g.data(), out.data(), n, threads);
      for (int64_t i = 0; i < n; ++i) {
        const double ref = double(g[i]) / (1.0 + std::exp(-double(g[i]))) * u[i];
        ASSERT_NEAR(out[i], ref, 5e-7 * std::fabs(ref) + 1e-30) << "n " << n << " i " << i << " gate " << g[i];
      }
    }
  }
}
