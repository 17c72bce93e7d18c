#include "export/ggml_quants.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>

namespace bitforge::formats {

namespace {

uint32_t f2u(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
float u2f(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

int64_t blocks_of(int64_t k, int64_t qk, const char* fn) {
  if (k < 0 || k % qk != 0)
    throw std::invalid_argument(std::string(fn) + ": k = " + std::to_string(k) + " is not a multiple of the block size " +
                                std::to_string(qk));
  return k / qk;
}

uint16_t exact_scale(float s, int64_t block, const char* fn) {
  if (!fp16_exact(s))
    throw std::invalid_argument(std::string(fn) + ": scale of block " + std::to_string(block) + " (" +
                                std::to_string(s) + ") is not exactly representable in fp16");
  return fp32_to_fp16(s);
}

[[noreturn]] void bad_code(const char* fn, int64_t idx, int v, const char* expected) {
  throw std::invalid_argument(std::string(fn) + ": code at element " + std::to_string(idx) + " is " + std::to_string(v) +
                              "; expected " + expected);
}

// Packs 256 trits t in {0,1,2} (t = q + 1) into a TQ1_0 block, as quantize_row_tq1_0_ref orders them.
void pack_tq1_0(const uint8_t* t, block_tq1_0* y) {
  const size_t nqs = sizeof(y->qs), nqh = sizeof(y->qh);
  const uint8_t* x = t;
  for (size_t j = 0; j < nqs - nqs % 32; j += 32) {
    for (size_t m = 0; m < 32; ++m) {
      uint8_t q = 0;
      for (size_t n = 0; n < 5; ++n) q = static_cast<uint8_t>(q * 3 + x[m + n * 32]);
      y->qs[j + m] = static_cast<uint8_t>((static_cast<uint16_t>(q) * 256 + (243 - 1)) / 243);  // ceil division
    }
    x += 5 * 32;
  }
  for (size_t j = nqs - nqs % 32; j < nqs; j += 16) {
    for (size_t m = 0; m < 16; ++m) {
      uint8_t q = 0;
      for (size_t n = 0; n < 5; ++n) q = static_cast<uint8_t>(q * 3 + x[m + n * 16]);
      y->qs[j + m] = static_cast<uint8_t>((static_cast<uint16_t>(q) * 256 + (243 - 1)) / 243);
    }
    x += 5 * 16;
  }
  for (size_t j = 0; j < nqh; ++j) {
    uint8_t q = 0;
    for (size_t m = 0; m < 4; ++m) q = static_cast<uint8_t>(q * 3 + x[j + m * nqh]);
    q = static_cast<uint8_t>(q * 3);  // the first value becomes the most significant trit
    y->qh[j] = static_cast<uint8_t>((static_cast<uint16_t>(q) * 256 + (243 - 1)) / 243);
  }
}

// Packs 256 codes c in {0,1,2,(3)} into TQ2_0 qs, as quantize_row_tq2_0_ref orders them.
void pack_tq2_0(const uint8_t* c, block_tq2_0* y) {
  const uint8_t* x = c;
  for (size_t j = 0; j < sizeof(y->qs); j += 32) {
    for (size_t m = 0; m < 32; ++m) {
      uint8_t q = 0;
      for (size_t n = 0; n < 4; ++n) q = static_cast<uint8_t>(q + ((x[m + n * 32] & 3) << (2 * n)));
      y->qs[j + m] = q;
    }
    x += 4 * 32;
  }
}

}  // namespace

// ---------------------------------------------------------------------------------------------------------
// Type table (ggml.c type_traits: blck_size, type_size)
// ---------------------------------------------------------------------------------------------------------

const GgmlTypeTraits* ggml_type_traits(uint32_t type) {
  static const GgmlTypeTraits kTable[] = {
      {"F32", 1, 4},        {"F16", 1, 2},       {"Q4_0", 32, 18},    {"Q4_1", 32, 20},   {nullptr, 0, 0},
      {nullptr, 0, 0},      {"Q5_0", 32, 22},    {"Q5_1", 32, 24},    {"Q8_0", 32, 34},   {"Q8_1", 32, 36},
      {"Q2_K", 256, 84},    {"Q3_K", 256, 110},  {"Q4_K", 256, 144},  {"Q5_K", 256, 176}, {"Q6_K", 256, 210},
      {"Q8_K", 256, 292},   {"IQ2_XXS", 256, 66}, {"IQ2_XS", 256, 74}, {"IQ3_XXS", 256, 98}, {"IQ1_S", 256, 50},
      {"IQ4_NL", 32, 18},   {"IQ3_S", 256, 110}, {"IQ2_S", 256, 82},  {"IQ4_XS", 256, 136}, {"I8", 1, 1},
      {"I16", 1, 2},        {"I32", 1, 4},       {"I64", 1, 8},       {"F64", 1, 8},      {"IQ1_M", 256, 56},
      {"BF16", 1, 2},       {nullptr, 0, 0},     {nullptr, 0, 0},     {nullptr, 0, 0},    {"TQ1_0", 256, 54},
      {"TQ2_0", 256, 66},   {nullptr, 0, 0},     {nullptr, 0, 0},     {nullptr, 0, 0},    {"MXFP4", 32, 17},
      {"NVFP4", 64, 36},    {"Q1_0", 128, 18},   {"Q2_0", 64, 18},
  };
  if (type >= sizeof(kTable) / sizeof(kTable[0]) || kTable[type].name == nullptr) return nullptr;
  return &kTable[type];
}

size_t ggml_row_size(GgmlType type, int64_t n) {
  const GgmlTypeTraits* t = ggml_type_traits(static_cast<uint32_t>(type));
  if (!t) throw std::invalid_argument("ggml_row_size: unknown ggml type " + std::to_string(static_cast<uint32_t>(type)));
  if (n < 0 || n % t->block_size != 0)
    throw std::invalid_argument(std::string("ggml_row_size: ") + t->name + " row of " + std::to_string(n) +
                                " is not a multiple of the block size " + std::to_string(t->block_size));
  return static_cast<size_t>(n / t->block_size) * t->type_size;
}

// ---------------------------------------------------------------------------------------------------------
// fp16 / bf16
// ---------------------------------------------------------------------------------------------------------

uint16_t fp32_to_fp16(float f) {
  const uint32_t x = f2u(f);
  const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
  const uint32_t ax = x & 0x7fffffffu;
  if (ax > 0x7f800000u) return static_cast<uint16_t>(sign | 0x7e00u | ((ax >> 13) & 0x3ffu));  // NaN, quiet
  if (ax >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // >= 65520 rounds to infinity
  if (ax < 0x38800000u) {                                                // below 2^-14: subnormal or zero
    if (ax <= 0x33000000u) return sign;                                  // <= 2^-25 rounds to (even) zero
    const uint32_t e = ax >> 23;                                         // 102..112
    const uint32_t m = (ax & 0x7fffffu) | 0x800000u;
    const uint32_t shift = 126 - e;  // value * 2^24 = m * 2^(e - 126)
    uint32_t q = m >> shift;
    const uint32_t rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
    if (rem > half || (rem == half && (q & 1u))) ++q;
    return static_cast<uint16_t>(sign | q);
  }
  uint32_t h = (((ax >> 23) - 112) << 10) | ((ax >> 13) & 0x3ffu);
  const uint32_t rem = ax & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;  // carry into the exponent is correct
  return static_cast<uint16_t>(sign | h);
}

float fp16_to_fp32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
  if (e == 0x1f) return u2f(sign | 0x7f800000u | (m << 13));
  if (e == 0) {
    if (m == 0) return u2f(sign);
    return (sign ? -1.0f : 1.0f) * std::ldexp(static_cast<float>(m), -24);  // exact
  }
  return u2f(sign | ((e + 112) << 23) | (m << 13));
}

uint16_t fp32_to_bf16(float f) {
  const uint32_t u = f2u(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 64);  // NaN: force quiet
  return static_cast<uint16_t>((u + (0x7fffu + ((u >> 16) & 1u))) >> 16);
}

float bf16_to_fp32(uint16_t h) { return u2f(static_cast<uint32_t>(h) << 16); }

bool fp16_exact(float f) {
  if (std::isnan(f)) return false;
  return f2u(fp16_to_fp32(fp32_to_fp16(f))) == f2u(f);
}

void convert_f32_to_f16(const float* x, uint16_t* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = fp32_to_fp16(x[i]);
}
void convert_f16_to_f32(const uint16_t* x, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = fp16_to_fp32(x[i]);
}
void convert_f32_to_bf16(const float* x, uint16_t* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = fp32_to_bf16(x[i]);
}
void convert_bf16_to_f32(const uint16_t* x, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = bf16_to_fp32(x[i]);
}

// ---------------------------------------------------------------------------------------------------------
// Reference quantizers (ggml-quants.c)
// ---------------------------------------------------------------------------------------------------------

void quantize_row_q1_0_ref(const float* x, block_q1_0* y, int64_t k) {
  const int64_t nb = blocks_of(k, QK1_0, "quantize_row_q1_0_ref");
  for (int64_t i = 0; i < nb; ++i) {
    float sum_abs = 0.0f;
    for (int j = 0; j < QK1_0; ++j) sum_abs += std::fabs(x[i * QK1_0 + j]);
    const float d = sum_abs / QK1_0;
    y[i].d = fp32_to_fp16(d);
    std::memset(y[i].qs, 0, sizeof(y[i].qs));
    for (int j = 0; j < QK1_0; ++j)
      if (x[i * QK1_0 + j] >= 0.0f) y[i].qs[j / 8] = static_cast<uint8_t>(y[i].qs[j / 8] | (1u << (j % 8)));
  }
}

void quantize_row_q2_0_ref(const float* x, block_q2_0* y, int64_t k) {
  const int64_t nb = blocks_of(k, QK2_0, "quantize_row_q2_0_ref");
  for (int64_t i = 0; i < nb; ++i) {
    float amax = 0.0f;
    for (int j = 0; j < QK2_0; ++j) {
      const float a = std::fabs(x[i * QK2_0 + j]);
      if (a > amax) amax = a;
    }
    const float d = amax;
    const float id = d > 0.0f ? 1.0f / d : 0.0f;
    y[i].d = fp32_to_fp16(d);
    std::memset(y[i].qs, 0, sizeof(y[i].qs));
    for (int j = 0; j < QK2_0; ++j) {
      int q = static_cast<int>(std::round(x[i * QK2_0 + j] * id)) + 1;
      if (q < 0) q = 0;
      if (q > 3) q = 3;
      y[i].qs[j / 4] = static_cast<uint8_t>(y[i].qs[j / 4] | (q << ((j % 4) * 2)));
    }
  }
}

namespace {
/// The TQ1_0/TQ2_0 reference quantizer (ggml-quants.c): d = max|x| per 256, code = round(x/d) + 1 ∈ {0,1,2};
/// only the packing of the 256 codes differs between the two types.
template <typename Block, typename Pack>
void quantize_row_ternary_ref(const float* x, Block* y, int64_t k, const char* what, Pack pack) {
  const int64_t nb = blocks_of(k, QK_K, what);
  uint8_t c[QK_K];
  for (int64_t i = 0; i < nb; ++i) {
    const float* xb = x + i * QK_K;
    float amax = 0.0f;
    for (int j = 0; j < QK_K; ++j) amax = std::max(amax, std::fabs(xb[j]));
    const float d = amax;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    y[i].d = fp32_to_fp16(d);
    for (int j = 0; j < QK_K; ++j) c[j] = static_cast<uint8_t>(std::lround(xb[j] * id) + 1);
    pack(c, &y[i]);
  }
}
}  // namespace

void quantize_row_tq1_0_ref(const float* x, block_tq1_0* y, int64_t k) {
  quantize_row_ternary_ref(x, y, k, "quantize_row_tq1_0_ref", pack_tq1_0);
}

void quantize_row_tq2_0_ref(const float* x, block_tq2_0* y, int64_t k) {
  quantize_row_ternary_ref(x, y, k, "quantize_row_tq2_0_ref", pack_tq2_0);
}

void quantize_row_q8_0_ref(const float* x, block_q8_0* y, int64_t k) {
  const int64_t nb = blocks_of(k, QK8_0, "quantize_row_q8_0_ref");
  for (int64_t i = 0; i < nb; ++i) {
    float amax = 0.0f;
    for (int j = 0; j < QK8_0; ++j) amax = std::max(amax, std::fabs(x[i * QK8_0 + j]));
    const float d = amax / ((1 << 7) - 1);
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    y[i].d = fp32_to_fp16(d);
    for (int j = 0; j < QK8_0; ++j) y[i].qs[j] = static_cast<int8_t>(std::round(x[i * QK8_0 + j] * id));
  }
}

void dequantize_row_q1_0(const block_q1_0* x, float* y, int64_t k) {
  const int64_t nb = blocks_of(k, QK1_0, "dequantize_row_q1_0");
  for (int64_t i = 0; i < nb; ++i) {
    const float d = fp16_to_fp32(x[i].d), neg_d = -d;
    for (int j = 0; j < QK1_0; ++j) y[i * QK1_0 + j] = ((x[i].qs[j / 8] >> (j % 8)) & 1) ? d : neg_d;
  }
}

void dequantize_row_q2_0(const block_q2_0* x, float* y, int64_t k) {
  const int64_t nb = blocks_of(k, QK2_0, "dequantize_row_q2_0");
  for (int64_t i = 0; i < nb; ++i) {
    const float d = fp16_to_fp32(x[i].d);
    for (int j = 0; j < QK2_0; ++j) {
      const int q = (x[i].qs[j / 4] >> ((j % 4) * 2)) & 3;
      y[i * QK2_0 + j] = static_cast<float>(q - 1) * d;
    }
  }
}

void dequantize_row_tq1_0(const block_tq1_0* x, float* y, int64_t k) {
  const int64_t nb = blocks_of(k, QK_K, "dequantize_row_tq1_0");
  static const uint8_t pow3[6] = {1, 3, 9, 27, 81, 243};
  const size_t nqs = sizeof(x->qs), nqh = sizeof(x->qh);
  for (int64_t i = 0; i < nb; ++i) {
    const float d = fp16_to_fp32(x[i].d);
    for (size_t j = 0; j < nqs - nqs % 32; j += 32)
      for (size_t n = 0; n < 5; ++n)
        for (size_t m = 0; m < 32; ++m) {
          const uint8_t q = static_cast<uint8_t>(x[i].qs[j + m] * pow3[n]);
          const int16_t xi = static_cast<int16_t>((static_cast<uint16_t>(q) * 3) >> 8);
          *y++ = static_cast<float>(xi - 1) * d;
        }
    for (size_t j = nqs - nqs % 32; j < nqs; j += 16)
      for (size_t n = 0; n < 5; ++n)
        for (size_t m = 0; m < 16; ++m) {
          const uint8_t q = static_cast<uint8_t>(x[i].qs[j + m] * pow3[n]);
          const int16_t xi = static_cast<int16_t>((static_cast<uint16_t>(q) * 3) >> 8);
          *y++ = static_cast<float>(xi - 1) * d;
        }
    for (size_t n = 0; n < 4; ++n)
      for (size_t j = 0; j < nqh; ++j) {
        const uint8_t q = static_cast<uint8_t>(x[i].qh[j] * pow3[n]);
        const int16_t xi = static_cast<int16_t>((static_cast<uint16_t>(q) * 3) >> 8);
        *y++ = static_cast<float>(xi - 1) * d;
      }
  }
}

void dequantize_row_tq2_0(const block_tq2_0* x, float* y, int64_t k) {
  const int64_t nb = blocks_of(k, QK_K, "dequantize_row_tq2_0");
  for (int64_t i = 0; i < nb; ++i) {
    const float d = fp16_to_fp32(x[i].d);
    for (size_t j = 0; j < sizeof(x->qs); j += 32)
      for (size_t l = 0; l < 4; ++l)
        for (size_t m = 0; m < 32; ++m) {
          const int8_t q = static_cast<int8_t>((x[i].qs[j + m] >> (l * 2)) & 3);
          *y++ = static_cast<float>(q - 1) * d;
        }
  }
}

void dequantize_row_q8_0(const block_q8_0* x, float* y, int64_t k) {
  const int64_t nb = blocks_of(k, QK8_0, "dequantize_row_q8_0");
  for (int64_t i = 0; i < nb; ++i) {
    const float d = fp16_to_fp32(x[i].d);
    for (int j = 0; j < QK8_0; ++j) y[i * QK8_0 + j] = x[i].qs[j] * d;
  }
}

// ---------------------------------------------------------------------------------------------------------
// From codes + scales
// ---------------------------------------------------------------------------------------------------------

void q1_0_from_codes(const int8_t* codes, const float* scales, int64_t k, block_q1_0* y) {
  const int64_t nb = blocks_of(k, QK1_0, "q1_0_from_codes");
  for (int64_t i = 0; i < nb; ++i) {
    y[i].d = exact_scale(scales[i], i, "q1_0_from_codes");
    std::memset(y[i].qs, 0, sizeof(y[i].qs));
    for (int j = 0; j < QK1_0; ++j) {
      const int c = codes[i * QK1_0 + j];
      if (c == 1)
        y[i].qs[j / 8] = static_cast<uint8_t>(y[i].qs[j / 8] | (1u << (j % 8)));
      else if (c != -1)
        bad_code("q1_0_from_codes", i * QK1_0 + j, c, "-1 or +1");
    }
  }
}

void q2_0_from_codes(const int8_t* codes, const float* scales, int64_t k, block_q2_0* y) {
  const int64_t nb = blocks_of(k, QK2_0, "q2_0_from_codes");
  for (int64_t i = 0; i < nb; ++i) {
    y[i].d = exact_scale(scales[i], i, "q2_0_from_codes");
    std::memset(y[i].qs, 0, sizeof(y[i].qs));
    for (int j = 0; j < QK2_0; ++j) {
      const int c = codes[i * QK2_0 + j];
      if (c < -1 || c > 2) bad_code("q2_0_from_codes", i * QK2_0 + j, c, "-1, 0, +1 or +2");
      y[i].qs[j / 4] = static_cast<uint8_t>(y[i].qs[j / 4] | ((c + 1) << ((j % 4) * 2)));
    }
  }
}

void tq1_0_from_codes(const int8_t* codes, const float* scales, int64_t k, block_tq1_0* y) {
  const int64_t nb = blocks_of(k, QK_K, "tq1_0_from_codes");
  uint8_t t[QK_K];
  for (int64_t i = 0; i < nb; ++i) {
    y[i].d = exact_scale(scales[i], i, "tq1_0_from_codes");
    for (int j = 0; j < QK_K; ++j) {
      const int c = codes[i * QK_K + j];
      if (c < -1 || c > 1) bad_code("tq1_0_from_codes", i * QK_K + j, c, "-1, 0 or +1");
      t[j] = static_cast<uint8_t>(c + 1);
    }
    pack_tq1_0(t, &y[i]);
  }
}

void tq2_0_from_codes(const int8_t* codes, const float* scales, int64_t k, block_tq2_0* y) {
  const int64_t nb = blocks_of(k, QK_K, "tq2_0_from_codes");
  uint8_t c[QK_K];
  for (int64_t i = 0; i < nb; ++i) {
    y[i].d = exact_scale(scales[i], i, "tq2_0_from_codes");
    for (int j = 0; j < QK_K; ++j) {
      const int v = codes[i * QK_K + j];
      if (v < -1 || v > 1) bad_code("tq2_0_from_codes", i * QK_K + j, v, "-1, 0 or +1");
      c[j] = static_cast<uint8_t>(v + 1);
    }
    pack_tq2_0(c, &y[i]);
  }
}

}  // namespace bitforge::formats
