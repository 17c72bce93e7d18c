// ggml block formats: fp16/bf16 conversions, reference quantizers against their formulas and hand-built
// blocks, and the lossless codes + scales path.
#include "export/ggml_quants.h"

#include <cmath>
#include <cstring>
#include <random>

#include "tests/fixtures/export/test_util.h"

using namespace bitforge::formats;

namespace {
uint32_t bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
float from_bits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
std::vector<float> randn(int64_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 g(seed);
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = d(g);
  return v;
}
// A value exactly representable in fp16 near x.
float fp16_round(float x) { return fp16_to_fp32(fp32_to_fp16(x)); }
}  // namespace

TEST(ExportGgmlQuants, TypeTable) {
  EXPECT_STREQ(ggml_type_traits(41)->name, "Q1_0");
  EXPECT_EQ(ggml_type_traits(41)->block_size, 128);
  EXPECT_EQ(ggml_type_traits(41)->type_size, 18u);
  EXPECT_EQ(ggml_type_traits(42)->block_size, 64);
  EXPECT_EQ(ggml_type_traits(35)->type_size, 66u);
  EXPECT_EQ(ggml_type_traits(34)->type_size, 54u);
  EXPECT_EQ(ggml_type_traits(8)->type_size, 34u);
  EXPECT_EQ(ggml_type_traits(30)->type_size, 2u);
  EXPECT_EQ(ggml_type_traits(4), nullptr);   // removed Q4_2
  EXPECT_EQ(ggml_type_traits(36), nullptr);  // removed IQ4_NL_4_4
  EXPECT_EQ(ggml_type_traits(43), nullptr);
  EXPECT_EQ(ggml_row_size(GgmlType::Q1_0, 256), 36u);
  EXPECT_THROW(ggml_row_size(GgmlType::Q1_0, 100), std::invalid_argument);
}

TEST(ExportGgmlQuants, Fp16AllHalvesRoundTripAndTiesToEven) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const float f = fp16_to_fp32(static_cast<uint16_t>(h));
    if (std::isnan(f)) {
      EXPECT_TRUE(std::isnan(fp16_to_fp32(fp32_to_fp16(f))));
      continue;
    }
    ASSERT_EQ(fp32_to_fp16(f), h) << h;
    // The midpoint to the next half (same sign, finite) rounds to the one with an even mantissa.
    const uint16_t next = static_cast<uint16_t>(h + 1);
    if ((h & 0x7fff) < 0x7bff) {
      const double mid = (static_cast<double>(f) + fp16_to_fp32(next)) / 2;
      const float midf = static_cast<float>(mid);
      ASSERT_EQ(static_cast<double>(midf), mid);  // midpoints are exact in fp32
      ASSERT_EQ(fp32_to_fp16(midf), (h & 1) ? next : h) << h;
      // Just above / below the midpoint rounds away from / toward h.
      ASSERT_EQ(fp32_to_fp16(std::nextafter(midf, 2 * midf)), next) << h;
      ASSERT_EQ(fp32_to_fp16(std::nextafter(midf, 0.0f)), h) << h;
    }
  }
  EXPECT_EQ(fp32_to_fp16(65519.99f), 0x7bff);
  EXPECT_EQ(fp32_to_fp16(65520.0f), 0x7c00);  // ties to even -> infinity
  EXPECT_EQ(fp32_to_fp16(1e-8f), 0x0000);
  EXPECT_EQ(fp32_to_fp16(-std::ldexp(1.0f, -25)), 0x8000);                    // exact tie -> even zero
  EXPECT_EQ(fp32_to_fp16(std::nextafter(std::ldexp(1.0f, -25), 1.0f)), 1);  // just above -> smallest subnormal
  EXPECT_TRUE(fp16_exact(0.5f));
  EXPECT_FALSE(fp16_exact(0.1f));
  EXPECT_FALSE(fp16_exact(NAN));
}

TEST(ExportGgmlQuants, Bf16RoundToNearestEven) {
  EXPECT_EQ(fp32_to_bf16(1.0f), 0x3f80);
  EXPECT_EQ(fp32_to_bf16(from_bits(0x3f808000)), 0x3f80);  // tie, even stays
  EXPECT_EQ(fp32_to_bf16(from_bits(0x3f818000)), 0x3f82);  // tie, odd rounds up
  EXPECT_EQ(fp32_to_bf16(from_bits(0x3f808001)), 0x3f81);
  EXPECT_EQ(fp32_to_bf16(from_bits(0x7f800001)) & 0x7fc0, 0x7fc0);  // NaN stays NaN (quiet)
  for (uint32_t h = 0; h < 65536; h += 7)
    if (!std::isnan(bf16_to_fp32(static_cast<uint16_t>(h)))) {
      ASSERT_EQ(fp32_to_bf16(bf16_to_fp32(static_cast<uint16_t>(h))), h);
    }
}

TEST(ExportGgmlQuants, Q1_0ReferenceMatchesFormula) {
  const auto x = randn(128 * 3, 1);
  std::vector<block_q1_0> b(3);
  quantize_row_q1_0_ref(x.data(), b.data(), x.size());
  std::vector<float> y(x.size());
  dequantize_row_q1_0(b.data(), y.data(), x.size());
  for (int i = 0; i < 3; ++i) {
    float sum = 0;
    for (int j = 0; j < 128; ++j) sum += std::fabs(x[i * 128 + j]);
    const float d = fp16_round(sum / 128);
    EXPECT_EQ(b[i].d, fp32_to_fp16(sum / 128));
    for (int j = 0; j < 128; ++j) {
      EXPECT_EQ(y[i * 128 + j], x[i * 128 + j] >= 0 ? d : -d);
      EXPECT_EQ((b[i].qs[j / 8] >> (j % 8)) & 1, x[i * 128 + j] >= 0 ? 1 : 0);
    }
  }
  EXPECT_THROW(quantize_row_q1_0_ref(x.data(), b.data(), 100), std::invalid_argument);
}

TEST(ExportGgmlQuants, Tq2_0ReferenceLayoutAndFormula) {
  // Ternary input at a known scale: x = q * 0.25 must come back exactly with d = 0.25.
  std::mt19937 g(2);
  std::vector<int8_t> q(512);
  std::vector<float> x(512);
  for (int i = 0; i < 512; ++i) {
    q[i] = static_cast<int8_t>(int(g() % 3) - 1);
    x[i] = q[i] * 0.25f;
  }
  x[5] = 0.25f;  // make sure each block's amax is 0.25
  q[5] = 1;
  x[300] = -0.25f;
  q[300] = -1;
  std::vector<block_tq2_0> b(2);
  quantize_row_tq2_0_ref(x.data(), b.data(), 512);
  EXPECT_EQ(b[0].d, fp32_to_fp16(0.25f));
  // Layout: element 128h + m + 32l sits in byte 32h + m at shift 2l.
  for (int i = 0; i < 256; ++i) {
    const int h = i / 128, m = i % 32, l = (i % 128) / 32;
    EXPECT_EQ((b[0].qs[32 * h + m] >> (2 * l)) & 3, q[i] + 1) << i;
  }
  std::vector<float> y(512);
  dequantize_row_tq2_0(b.data(), y.data(), 512);
  for (int i = 0; i < 512; ++i) EXPECT_EQ(y[i], x[i]) << i;
  // Random input: dequant = (round(x/amax)) * fp16(amax).
  const auto r = randn(256, 3);
  block_tq2_0 rb;
  quantize_row_tq2_0_ref(r.data(), &rb, 256);
  float amax = 0;
  for (float v : r) amax = std::max(amax, std::fabs(v));
  std::vector<float> ry(256);
  dequantize_row_tq2_0(&rb, ry.data(), 256);
  for (int i = 0; i < 256; ++i) EXPECT_EQ(ry[i], static_cast<float>(std::lround(r[i] * (1.0f / amax))) * fp16_round(amax));
}

TEST(ExportGgmlQuants, Tq1_0MatchesTq2_0) {
  // Both ternary formats of the same input must dequantize identically (same d, same trits).
  for (uint32_t seed = 0; seed < 4; ++seed) {
    const auto x = randn(512, 10 + seed);
    std::vector<block_tq1_0> a(2);
    std::vector<block_tq2_0> b(2);
    quantize_row_tq1_0_ref(x.data(), a.data(), 512);
    quantize_row_tq2_0_ref(x.data(), b.data(), 512);
    std::vector<float> ya(512), yb(512);
    dequantize_row_tq1_0(a.data(), ya.data(), 512);
    dequantize_row_tq2_0(b.data(), yb.data(), 512);
    for (int i = 0; i < 512; ++i) ASSERT_EQ(ya[i], yb[i]) << seed << " " << i;
  }
}

TEST(ExportGgmlQuants, Q2_0AndQ8_0Reference) {
  const auto x = randn(128, 4);
  std::vector<block_q2_0> b(2);
  quantize_row_q2_0_ref(x.data(), b.data(), 128);
  std::vector<float> y(128);
  dequantize_row_q2_0(b.data(), y.data(), 128);
  for (int i = 0; i < 2; ++i) {
    float amax = 0;
    for (int j = 0; j < 64; ++j) amax = std::max(amax, std::fabs(x[i * 64 + j]));
    for (int j = 0; j < 64; ++j) {
      int q = static_cast<int>(std::round(x[i * 64 + j] * (1.0f / amax))) + 1;
      q = std::min(3, std::max(0, q));
      EXPECT_EQ(y[i * 64 + j], static_cast<float>(q - 1) * fp16_round(amax));
    }
  }
  std::vector<block_q8_0> q8(4);
  quantize_row_q8_0_ref(x.data(), q8.data(), 128);
  dequantize_row_q8_0(q8.data(), y.data(), 128);
  for (int i = 0; i < 128; ++i) {
    float amax = 0;
    for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(x[i / 32 * 32 + j]));
    EXPECT_NEAR(y[i], x[i], amax / 127 * 0.5f + 1e-3f * amax);
  }
}

TEST(ExportGgmlQuants, FromCodesIsLossless) {
  std::mt19937 g(7);
  const int64_t k = 1024;
  std::vector<int8_t> bin(k), ter(k), q2(k);
  for (int64_t i = 0; i < k; ++i) {
    bin[i] = g() & 1 ? 1 : -1;
    ter[i] = static_cast<int8_t>(int(g() % 3) - 1);
    q2[i] = static_cast<int8_t>(int(g() % 4) - 1);
  }
  std::vector<float> s(k / 64);
  for (auto& v : s) v = fp16_round(std::fabs(randn(1, g())[0]) * 0.05f + 1e-3f);

  std::vector<block_q1_0> b1(k / 128);
  q1_0_from_codes(bin.data(), s.data(), k, b1.data());
  std::vector<block_tq2_0> b2(k / 256);
  tq2_0_from_codes(ter.data(), s.data(), k, b2.data());
  std::vector<block_tq1_0> b3(k / 256);
  tq1_0_from_codes(ter.data(), s.data(), k, b3.data());
  std::vector<block_q2_0> b4(k / 64);
  q2_0_from_codes(q2.data(), s.data(), k, b4.data());
  std::vector<float> y1(k), y2(k), y3(k), y4(k);
  dequantize_row_q1_0(b1.data(), y1.data(), k);
  dequantize_row_tq2_0(b2.data(), y2.data(), k);
  dequantize_row_tq1_0(b3.data(), y3.data(), k);
  dequantize_row_q2_0(b4.data(), y4.data(), k);
  for (int64_t i = 0; i < k; ++i) {
    ASSERT_EQ(bits(y1[i]), bits(s[i / 128] * static_cast<float>(bin[i]))) << i;
    ASSERT_EQ(y2[i], s[i / 256] * static_cast<float>(ter[i])) << i;
    ASSERT_EQ(y3[i], s[i / 256] * static_cast<float>(ter[i])) << i;
    ASSERT_EQ(y4[i], s[i / 64] * static_cast<float>(q2[i])) << i;
  }
  // The reference quantizer agrees with the codes path when the input is already ternary·d with d = max|x|.
  std::vector<float> x(256);
  for (int i = 0; i < 256; ++i) x[i] = ter[i] * s[0];
  x[0] = s[0];
  std::vector<int8_t> t0(ter.begin(), ter.begin() + 256);
  t0[0] = 1;
  block_tq1_0 r1, c1;
  quantize_row_tq1_0_ref(x.data(), &r1, 256);
  tq1_0_from_codes(t0.data(), s.data(), 256, &c1);
  EXPECT_EQ(std::memcmp(&r1, &c1, sizeof r1), 0);

  float inexact = 0.1f;
  BF_EXPECT_THROW_MSG(q1_0_from_codes(bin.data(), &inexact, 128, b1.data()), std::invalid_argument,
                      "not exactly representable in fp16");
  std::vector<int8_t> bad(bin.begin(), bin.begin() + 128);
  bad[77] = 0;
  BF_EXPECT_THROW_MSG(q1_0_from_codes(bad.data(), s.data(), 128, b1.data()), std::invalid_argument,
                      "code at element 77 is 0");
  bad[77] = 2;
  std::vector<int8_t> badt(ter.begin(), ter.begin() + 256);
  badt[3] = 2;
  BF_EXPECT_THROW_MSG(tq2_0_from_codes(badt.data(), s.data(), 256, b2.data()), std::invalid_argument,
                      "code at element 3 is 2");
}
