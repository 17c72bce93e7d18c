// CPU packed GEMV kernels (scalar + AVX2 chosen at run time) and their references; contract in packed_gemv.h.
//
// The AVX2 functions carry __attribute__((target("avx2,fma"))) so the library needs no global -mavx2 and runs
// on any x86-64. Everything whose rounding must match bit for bit between implementations (the A8 group
// combination and the anchor correction) lives in generic-ISA helpers shared by all paths: compiled without
// FMA, GCC cannot contract them into fused multiply-adds, so every path performs the same fp32 operations.
#include "kernels/packed_gemv.h"
#include "kernels/packed_gemv_internal.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <mutex>
#include <set>
#include <thread>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define BF_X86 1
#endif

namespace bitforge::kernels {
namespace {

using detail::half_to_float;

inline int code_at(const PackedMatrixView& w, const uint8_t* row, int64_t c) { return detail::code_at(w.quant, row, c); }

/// Row scales as fp32 [n_groups].
void row_scales(const PackedMatrixView& w, int64_t r, float* out) {
  const int64_t ng = w.n_groups();
  const uint16_t* s = w.scales + (w.scale_rows == 1 ? 0 : r) * ng;
  for (int64_t g = 0; g < ng; ++g) out[g] = half_to_float(s[g]);
}

/// First anchor with flat index >= row*in.
int64_t anchor_lower(const PackedMatrixView& w, int64_t row) {
  if (w.n_anchors == 0) return 0;
  return std::lower_bound(w.anchor_index, w.anchor_index + w.n_anchors, row * w.in) - w.anchor_index;
}

/// Adds the anchor correction for rows [r0, r1) (anchors [a0, a1) lie in them). xf (A16) or q/s (A8).
__attribute__((noinline)) void apply_anchors(const PackedMatrixView& w, int64_t a0, int64_t a1, const float* xf,
                                             const int8_t* q, const float* s, int64_t M, float* y) {
  const int64_t ng = w.n_groups(), rb = w.row_bytes();
  for (int64_t k = a0; k < a1; ++k) {
    const int64_t idx = w.anchor_index[k], r = idx / w.in, c = idx % w.in;
    const float sc = half_to_float(w.scales[(w.scale_rows == 1 ? 0 : r) * ng + c / w.group_size]);
    detail::add_anchor(detail::anchor_delta(w.anchor_value[k], sc, code_at(w, w.codes + r * rb, c)), r, c, w.in,
                       w.out, xf, q, s, M, y);
  }
}

/// A8 combination: y = (Σ_g float(isum_g) · scale_g) / s, groups in order.
__attribute__((noinline)) float combine_i8(const int32_t* isum, const float* sc, int64_t ng, float s) {
  float acc = 0.f;
  for (int64_t g = 0; g < ng; ++g) {
    volatile float t = static_cast<float>(isum[g]) * sc[g];  // volatile: never fused into an FMA
    acc = acc + t;
  }
  return acc / s;
}

// ---------------------------------------------------------------------------------------------------------
// scalar paths
// ---------------------------------------------------------------------------------------------------------
void f32_rows_scalar(const PackedMatrixView& w, const float* x, int64_t M, float* y, int64_t r0, int64_t r1) {
  const int64_t ng = w.n_groups(), gs = w.group_size, rb = w.row_bytes(), in = w.in;
  std::vector<float> sc(ng);
  for (int64_t r = r0; r < r1; ++r) {
    row_scales(w, r, sc.data());
    const uint8_t* row = w.codes + r * rb;
    for (int64_t m = 0; m < M; ++m) {
      const float* xm = x + m * in;
      float total = 0.f;
      for (int64_t g = 0; g < ng; ++g) {
        float a = 0.f;
        for (int64_t c = g * gs; c < (g + 1) * gs; ++c) {
          const int code = code_at(w, row, c);
          a += code > 0 ? xm[c] : (code < 0 ? -xm[c] : 0.f);
        }
        total += sc[g] * a;
      }
      y[m * w.out + r] = total;
    }
  }
}

void i8_rows_scalar(const PackedMatrixView& w, const int8_t* q, const float* s, int64_t M, float* y, int64_t r0,
                    int64_t r1) {
  const int64_t ng = w.n_groups(), gs = w.group_size, rb = w.row_bytes(), in = w.in;
  std::vector<float> sc(ng);
  std::vector<int32_t> isum(ng);
  for (int64_t r = r0; r < r1; ++r) {
    row_scales(w, r, sc.data());
    const uint8_t* row = w.codes + r * rb;
    for (int64_t m = 0; m < M; ++m) {
      const int8_t* qm = q + m * in;
      for (int64_t g = 0; g < ng; ++g) {
        int32_t a = 0;
        for (int64_t c = g * gs; c < (g + 1) * gs; ++c) a += code_at(w, row, c) * qm[c];
        isum[g] = a;
      }
      y[m * w.out + r] = combine_i8(isum.data(), sc.data(), ng, s[m]);
    }
  }
}

// ---------------------------------------------------------------------------------------------------------
// AVX2 paths
// ---------------------------------------------------------------------------------------------------------
#ifdef BF_X86
__attribute__((target("avx2,fma"))) inline float hsum_ps(__m256 v) {
  __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
  lo = _mm_add_ps(lo, hi);
  __m128 sh = _mm_movehl_ps(lo, lo);
  lo = _mm_add_ps(lo, sh);
  sh = _mm_shuffle_ps(lo, lo, 0x55);
  return _mm_cvtss_f32(_mm_add_ss(lo, sh));
}

__attribute__((target("avx2,fma"))) inline int32_t hsum_epi32(__m256i v) {
  __m128i a = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  a = _mm_add_epi32(a, _mm_shuffle_epi32(a, 0x4e));
  a = _mm_add_epi32(a, _mm_shuffle_epi32(a, 0xb1));
  return _mm_cvtsi128_si32(a);
}

/// Decode tables for A16 (L1-resident): per sign byte, the 8 fp32 sign-flip masks (0x80000000 where the bit is 0,
/// i.e. code −1); per ternary byte, its 4 codes as fp32 {−1, 0, +1} (code 3 never occurs in valid data).
struct DecodeTables {
  alignas(32) uint32_t sign_flip[256][8];
  alignas(16) float ternary[256][4];
  DecodeTables() {
    for (int b = 0; b < 256; ++b) {
      for (int j = 0; j < 8; ++j) sign_flip[b][j] = ((b >> j) & 1) ? 0u : 0x80000000u;
      for (int j = 0; j < 4; ++j) ternary[b][j] = static_cast<float>(((b >> (2 * j)) & 3) - 1);
    }
  }
};
const DecodeTables& decode_tables() {
  static const DecodeTables t;
  return t;
}

/// One 8-column chunk of A16 into acc[MB].
template <int MB>
__attribute__((target("avx2,fma"), always_inline)) inline void f32_chunk(bool binary, const DecodeTables& t,
                                                                        const uint8_t* row, const float* x,
                                                                        int64_t in, int64_t c, __m256* acc) {
  if (binary) {
    const __m256 flip = _mm256_load_ps(reinterpret_cast<const float*>(t.sign_flip[row[c >> 3]]));
    for (int m = 0; m < MB; ++m) acc[m] = _mm256_add_ps(acc[m], _mm256_xor_ps(_mm256_loadu_ps(x + m * in + c), flip));
  } else {
    const uint8_t* b = row + (c >> 2);
    const __m256 cf = _mm256_loadu2_m128(t.ternary[b[1]], t.ternary[b[0]]);
    for (int m = 0; m < MB; ++m) acc[m] = _mm256_fmadd_ps(cf, _mm256_loadu_ps(x + m * in + c), acc[m]);
  }
}

/// A16, MB rows of x at once. Binary: 8 columns per byte; ternary: 8 columns per 2 bytes. U independent
/// accumulators per row of x (chunk k of a group goes to accumulator k mod U) hide the add latency.
template <int MB>
__attribute__((target("avx2,fma"))) void f32_row_avx2(const PackedMatrixView& w, const uint8_t* row,
                                                       const float* sc, const float* x, float* total) {
  constexpr int U = MB >= 4 ? 1 : (MB >= 2 ? 2 : 4);
  const int64_t ng = w.n_groups(), gs = w.group_size, in = w.in;
  const bool binary = w.quant == WeightQuantizer::binary;
  const DecodeTables& t = decode_tables();
  for (int m = 0; m < MB; ++m) total[m] = 0.f;
  for (int64_t g = 0; g < ng; ++g) {
    __m256 acc[U][MB];
    for (int u = 0; u < U; ++u)
      for (int m = 0; m < MB; ++m) acc[u][m] = _mm256_setzero_ps();
    const int64_t c0 = g * gs, c1 = c0 + gs, cv = c0 + ((c1 - c0) / 8) * 8;
    int64_t c = c0;
    for (; c + 8 * U <= cv; c += 8 * U)
      for (int u = 0; u < U; ++u) f32_chunk<MB>(binary, t, row, x, in, c + 8 * u, acc[u]);
    for (; c < cv; c += 8) f32_chunk<MB>(binary, t, row, x, in, c, acc[0]);
    for (int m = 0; m < MB; ++m) {
      __m256 a8 = acc[0][m];
      for (int u = 1; u < U; ++u) a8 = _mm256_add_ps(a8, acc[u][m]);
      float a = hsum_ps(a8);
      for (int64_t cc = cv; cc < c1; ++cc) {  // tail (only with a single group whose size is not a multiple of 8)
        const int code = code_at(w, row, cc);
        const float xv = x[m * in + cc];
        a += code > 0 ? xv : (code < 0 ? -xv : 0.f);
      }
      total[m] += sc[g] * a;
    }
  }
}

template <int MB>
__attribute__((target("avx2,fma"))) void i8_row_avx2(const PackedMatrixView& w, const uint8_t* row,
                                                      const int8_t* q, int32_t* isum /* [MB, ng] */) {
  const int64_t ng = w.n_groups(), gs = w.group_size, in = w.in;
  const bool binary = w.quant == WeightQuantizer::binary;
  const __m256i bin_idx = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1,  //
                                           2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3);
  const __m256i bin_bits = _mm256_setr_epi8(1, 2, 4, 8, 16, 32, 64, -128, 1, 2, 4, 8, 16, 32, 64, -128,  //
                                            1, 2, 4, 8, 16, 32, 64, -128, 1, 2, 4, 8, 16, 32, 64, -128);
  const __m256i ter_idx = _mm256_setr_epi8(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3,  //
                                           4, 4, 4, 4, 5, 5, 5, 5, 6, 6, 6, 6, 7, 7, 7, 7);
  const __m256i ter_mask = _mm256_setr_epi8(3, 12, 48, -64, 3, 12, 48, -64, 3, 12, 48, -64, 3, 12, 48, -64,  //
                                            3, 12, 48, -64, 3, 12, 48, -64, 3, 12, 48, -64, 3, 12, 48, -64);
  const __m256i ter_pos = _mm256_setr_epi8(2, 8, 32, -128, 2, 8, 32, -128, 2, 8, 32, -128, 2, 8, 32, -128,  //
                                           2, 8, 32, -128, 2, 8, 32, -128, 2, 8, 32, -128, 2, 8, 32, -128);
  const __m256i ones8 = _mm256_set1_epi8(1), ones16 = _mm256_set1_epi16(1), allones = _mm256_set1_epi8(-1);
  const __m256i zero = _mm256_setzero_si256();
  for (int64_t g = 0; g < ng; ++g) {
    __m256i acc[MB], acc16[MB];
    for (int m = 0; m < MB; ++m) acc[m] = acc16[m] = _mm256_setzero_si256();
    int pending = 0;
    const int64_t c0 = g * gs, c1 = c0 + gs, cv = c0 + ((c1 - c0) / 32) * 32;
    for (int64_t c = c0; c < cv; c += 32) {
      __m256i sgn;  // int8 lanes in {−1, 0, +1}
      if (binary) {
        uint32_t v;
        std::memcpy(&v, row + (c >> 3), 4);
        const __m256i rep = _mm256_shuffle_epi8(_mm256_set1_epi32(int32_t(v)), bin_idx);
        const __m256i mask = _mm256_cmpeq_epi8(_mm256_and_si256(rep, bin_bits), bin_bits);
        sgn = _mm256_or_si256(_mm256_xor_si256(mask, allones), ones8);
      } else {
        int64_t v;
        std::memcpy(&v, row + (c >> 2), 8);
        const __m256i rep = _mm256_shuffle_epi8(_mm256_set1_epi64x(v), ter_idx);
        const __m256i mm = _mm256_and_si256(rep, ter_mask);
        const __m256i pos = _mm256_cmpeq_epi8(mm, ter_pos), neg = _mm256_cmpeq_epi8(mm, zero);
        sgn = _mm256_or_si256(_mm256_and_si256(pos, ones8), neg);
      }
      for (int m = 0; m < MB; ++m) {
        const __m256i xq = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q + m * in + c));
        const __m256i p = _mm256_sign_epi8(xq, sgn);
        acc16[m] = _mm256_add_epi16(acc16[m], _mm256_maddubs_epi16(ones8, p));  // |pair sum| <= 256
      }
      if (++pending == 64) {  // 64 * 256 < 32767: widen before int16 could overflow
        for (int m = 0; m < MB; ++m) {
          acc[m] = _mm256_add_epi32(acc[m], _mm256_madd_epi16(acc16[m], ones16));
          acc16[m] = _mm256_setzero_si256();
        }
        pending = 0;
      }
    }
    for (int m = 0; m < MB; ++m) {
      acc[m] = _mm256_add_epi32(acc[m], _mm256_madd_epi16(acc16[m], ones16));
      int32_t a = hsum_epi32(acc[m]);
      for (int64_t c = cv; c < c1; ++c) a += code_at(w, row, c) * q[m * in + c];
      isum[m * ng + g] = a;
    }
  }
}

/// Row scales via F16C (exact, like half_to_float).
__attribute__((target("avx2,fma,f16c"))) void row_scales_f16c(const PackedMatrixView& w, int64_t r, float* out) {
  const int64_t ng = w.n_groups();
  const uint16_t* s = w.scales + (w.scale_rows == 1 ? 0 : r) * ng;
  int64_t g = 0;
  for (; g + 8 <= ng; g += 8)
    _mm256_storeu_ps(out + g, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s + g))));
  for (; g < ng; ++g) out[g] = half_to_float(s[g]);
}

template <int MB>
__attribute__((target("avx2,fma"))) void f32_rows_avx2_mb(const PackedMatrixView& w, const float* x, float* y,
                                                           int64_t r0, int64_t r1, float* sc) {
  float total[MB];
  for (int64_t r = r0; r < r1; ++r) {
    row_scales_f16c(w, r, sc);
    f32_row_avx2<MB>(w, w.codes + r * w.row_bytes(), sc, x, total);
    for (int m = 0; m < MB; ++m) y[m * w.out + r] = total[m];
  }
}

template <int MB>
void i8_rows_avx2_mb(const PackedMatrixView& w, const int8_t* q, const float* s, float* y, int64_t r0, int64_t r1,
                     float* sc, int32_t* isum) {
  const int64_t ng = w.n_groups();
  for (int64_t r = r0; r < r1; ++r) {
    row_scales_f16c(w, r, sc);
    i8_row_avx2<MB>(w, w.codes + r * w.row_bytes(), q, isum);
    for (int m = 0; m < MB; ++m) y[m * w.out + r] = combine_i8(isum + m * ng, sc, ng, s[m]);
  }
}

void f32_rows_avx2(const PackedMatrixView& w, const float* x, int64_t M, float* y, int64_t r0, int64_t r1) {
  std::vector<float> sc(w.n_groups());
  for (int64_t m0 = 0; m0 < M; m0 += 8) {
    const int64_t mb = std::min<int64_t>(8, M - m0);
    const float* xm = x + m0 * w.in;
    float* ym = y + m0 * w.out;
    switch (mb) {
      case 1: f32_rows_avx2_mb<1>(w, xm, ym, r0, r1, sc.data()); break;
      case 2: f32_rows_avx2_mb<2>(w, xm, ym, r0, r1, sc.data()); break;
      case 3: f32_rows_avx2_mb<3>(w, xm, ym, r0, r1, sc.data()); break;
      case 4: f32_rows_avx2_mb<4>(w, xm, ym, r0, r1, sc.data()); break;
      case 5: f32_rows_avx2_mb<5>(w, xm, ym, r0, r1, sc.data()); break;
      case 6: f32_rows_avx2_mb<6>(w, xm, ym, r0, r1, sc.data()); break;
      case 7: f32_rows_avx2_mb<7>(w, xm, ym, r0, r1, sc.data()); break;
      default: f32_rows_avx2_mb<8>(w, xm, ym, r0, r1, sc.data()); break;
    }
  }
}

void i8_rows_avx2(const PackedMatrixView& w, const int8_t* q, const float* s, int64_t M, float* y, int64_t r0,
                  int64_t r1) {
  std::vector<float> sc(w.n_groups());
  std::vector<int32_t> isum(8 * w.n_groups());
  for (int64_t m0 = 0; m0 < M; m0 += 8) {
    const int64_t mb = std::min<int64_t>(8, M - m0);
    const int8_t* qm = q + m0 * w.in;
    const float* sm = s + m0;
    float* ym = y + m0 * w.out;
    switch (mb) {
      case 1: i8_rows_avx2_mb<1>(w, qm, sm, ym, r0, r1, sc.data(), isum.data()); break;
      case 2: i8_rows_avx2_mb<2>(w, qm, sm, ym, r0, r1, sc.data(), isum.data()); break;
      case 3: i8_rows_avx2_mb<3>(w, qm, sm, ym, r0, r1, sc.data(), isum.data()); break;
      case 4: i8_rows_avx2_mb<4>(w, qm, sm, ym, r0, r1, sc.data(), isum.data()); break;
      case 5: i8_rows_avx2_mb<5>(w, qm, sm, ym, r0, r1, sc.data(), isum.data()); break;
      case 6: i8_rows_avx2_mb<6>(w, qm, sm, ym, r0, r1, sc.data(), isum.data()); break;
      case 7: i8_rows_avx2_mb<7>(w, qm, sm, ym, r0, r1, sc.data(), isum.data()); break;
      default: i8_rows_avx2_mb<8>(w, qm, sm, ym, r0, r1, sc.data(), isum.data()); break;
    }
  }
}
#endif  // BF_X86

bool avx2_layout_ok(const PackedMatrixView& w, bool int8) {
  if (w.n_groups() == 1) return true;
  return w.group_size % (int8 ? 32 : 8) == 0;
}

bool use_avx2(const PackedMatrixView& w, bool int8, GemvImpl impl) {
  if (impl == GemvImpl::scalar) return false;
  if (impl == GemvImpl::avx512)
    throw std::invalid_argument("packed_gemv: the row-wise kernels have no AVX-512 path (RepackedMatrix has)");
  if (impl == GemvImpl::automatic && best_cpu_isa() == GemvImpl::scalar) return false;  // BITFORGE_CPU_ISA=scalar
  const bool ok = cpu_has_avx2() && avx2_layout_ok(w, int8);
  if (impl == GemvImpl::avx2 && !ok)
    throw std::invalid_argument("packed_gemv: AVX2 path requested but " +
                                std::string(cpu_has_avx2() ? "the group size does not allow it" : "the CPU lacks AVX2/FMA"));
  return ok;
}

}  // namespace

bool cpu_has_avx2() {
#ifdef BF_X86
  static const bool has =
      __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
  return has;
#else
  return false;
#endif
}

bool cpu_has_avx512() {
#ifdef BF_X86
  static const bool has = cpu_has_avx2() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                          __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni") &&
                          __builtin_cpu_supports("avx512vbmi");
  return has;
#else
  return false;
#endif
}

namespace {
/// BITFORGE_CPU_ISA, read once: the highest path automatic may pick (automatic = no cap).
GemvImpl isa_cap() {
  static const GemvImpl cap = [] {
    const char* e = std::getenv("BITFORGE_CPU_ISA");
    const std::string v = e ? e : "";
    if (v.empty() || v == "auto" || v == "automatic") return GemvImpl::automatic;
    if (v == "avx512") return GemvImpl::avx512;
    if (v == "avx2") return GemvImpl::avx2;
    if (v == "scalar") return GemvImpl::scalar;
    throw std::invalid_argument("BITFORGE_CPU_ISA must be avx512, avx2, scalar or auto, got '" + v + "'");
  }();
  return cap;
}
}  // namespace

GemvImpl best_cpu_isa() {
  const GemvImpl cap = isa_cap();
  if (cpu_has_avx512() && (cap == GemvImpl::automatic || cap == GemvImpl::avx512)) return GemvImpl::avx512;
  if (cpu_has_avx2() && cap != GemvImpl::scalar) return GemvImpl::avx2;
  return GemvImpl::scalar;
}

const char* isa_name(GemvImpl isa) {
  switch (isa) {
    case GemvImpl::automatic: return "automatic";
    case GemvImpl::scalar: return "scalar";
    case GemvImpl::avx2: return "avx2";
    case GemvImpl::avx512: return "avx512";
  }
  return "?";
}

std::string cpu_features() {
  std::string f;
#ifdef BF_X86
  auto add = [&](bool has, const char* name) {
    if (has) f += std::string(f.empty() ? "" : " ") + name;
  };
  add(__builtin_cpu_supports("avx2"), "avx2");
  add(__builtin_cpu_supports("fma"), "fma");
  add(__builtin_cpu_supports("f16c"), "f16c");
  add(__builtin_cpu_supports("avx512f"), "avx512f");
  add(__builtin_cpu_supports("avx512bw"), "avx512bw");
  add(__builtin_cpu_supports("avx512vl"), "avx512vl");
  add(__builtin_cpu_supports("avx512dq"), "avx512dq");
  add(__builtin_cpu_supports("avx512vnni"), "avx512vnni");
  add(__builtin_cpu_supports("avx512vbmi"), "avx512vbmi");
  add(__builtin_cpu_supports("avx512vpopcntdq"), "avx512vpopcntdq");
  add(__builtin_cpu_supports("avx512bitalg"), "avx512bitalg");
  add(__builtin_cpu_supports("avx512bf16"), "avx512bf16");
#endif
  if (f.empty()) f = "(no x86 SIMD features)";
  if (const char* e = std::getenv("BITFORGE_CPU_ISA"); e && *e) f += std::string("; BITFORGE_CPU_ISA=") + e;
  return f;
}

int parallel_threads_used(int threads) {
  const int t = threads <= 0 ? at::get_num_threads() : threads;
  std::mutex mu;
  std::set<std::thread::id> ids;
  const int64_t chunks = std::max(std::min(t, at::get_num_threads()), 1);
  std::atomic<int64_t> arrived{0};
  detail::for_chunks(chunks, t, [&](int64_t c0, int64_t c1) {
    {
      std::lock_guard<std::mutex> lock(mu);
      ids.insert(std::this_thread::get_id());
    }
    // Each chunk waits (up to 200 ms) until every chunk has started, so that one fast thread cannot run them all.
    arrived.fetch_add(c1 - c0);
    const auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(200);
    while (arrived.load() < chunks && std::chrono::steady_clock::now() < until) std::this_thread::yield();
  });
  return static_cast<int>(ids.size());
}

void check_view(const PackedMatrixView& w) {
  auto bad = [](const std::string& m) { throw std::invalid_argument("packed_gemv: " + m); };
  if (w.out < 1 || w.in < 1) bad("out and in must be positive, got " + std::to_string(w.out) + "x" + std::to_string(w.in));
  if (w.group_size < 1 || w.in % w.group_size != 0)
    bad("group_size " + std::to_string(w.group_size) + " must divide in = " + std::to_string(w.in));
  if (w.scale_rows != 1 && w.scale_rows != w.out) bad("scale_rows must be 1 or out");
  if (!w.codes || !w.scales) bad("codes/scales pointer is null");
  if (w.n_anchors < 0 || (w.n_anchors > 0 && (!w.anchor_index || !w.anchor_value))) bad("anchor arrays missing");
  if (w.n_anchors > 0 && (w.anchor_index[0] < 0 || w.anchor_index[w.n_anchors - 1] >= w.out * w.in))
    bad("anchor index outside [0, out*in)");
}

namespace {
#ifdef BF_X86
/// 8 values: clamp(round_half_even(x · s), lo, hi) as int32.
__attribute__((target("avx2"), always_inline)) inline __m256i quant8_avx2(const float* x, __m256 sv, __m256 lo, __m256 hi) {
  const __m256 v = _mm256_round_ps(_mm256_mul_ps(_mm256_loadu_ps(x), sv), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  return _mm256_cvtps_epi32(_mm256_min_ps(_mm256_max_ps(v, lo), hi));
}

/// One row of quantize_activations_per_token with AVX2: the same max, the same scale, the same products, rounding
/// (round-half-even, like nearbyintf in the default mode) and clamps, so the result is bit-identical.
__attribute__((target("avx2"))) void quantize_row_avx2(const float* xr, int64_t in, float qp, int8_t* q, float* s) {
  const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  __m256 mv = _mm256_setzero_ps();
  int64_t c = 0;
  for (; c + 8 <= in; c += 8) mv = _mm256_max_ps(_mm256_and_ps(_mm256_loadu_ps(xr + c), absmask), mv);
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, mv);
  float m = 0.f;
  for (float v : lanes) m = std::max(m, v);
  for (; c < in; ++c) m = std::max(m, std::fabs(xr[c]));
  const float sc = qp / std::max(m, 1e-5f);
  *s = sc;
  const float qn = -qp - 1.f;
  const __m256 sv = _mm256_set1_ps(sc), lo = _mm256_set1_ps(qn), hi = _mm256_set1_ps(qp);
  const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  c = 0;
  for (; c + 32 <= in; c += 32) {
    const __m256i ab = _mm256_packs_epi32(quant8_avx2(xr + c, sv, lo, hi), quant8_avx2(xr + c + 8, sv, lo, hi)), cd = _mm256_packs_epi32(quant8_avx2(xr + c + 16, sv, lo, hi), quant8_avx2(xr + c + 24, sv, lo, hi));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(q + c), _mm256_permutevar8x32_epi32(_mm256_packs_epi16(ab, cd), order));
  }
  for (; c < in; ++c) {
    float v = nearbyintf(xr[c] * sc);
    v = std::min(std::max(v, qn), qp);
    q[c] = static_cast<int8_t>(v);
  }
}
#endif
}  // namespace

void quantize_activations_per_token(const float* x, int64_t M, int64_t in, int bits, int8_t* q, float* s) {
  if (bits != 8 && bits != 4) throw std::invalid_argument("quantize_activations_per_token: bits must be 8 or 4");
  const float qp = bits == 8 ? 127.f : 7.f, qn = -qp - 1.f;
#ifdef BF_X86
  if (cpu_has_avx2() && best_cpu_isa() != GemvImpl::scalar) {
    for (int64_t r = 0; r < M; ++r) quantize_row_avx2(x + r * in, in, qp, q + r * in, s + r);
    return;
  }
#endif
  for (int64_t r = 0; r < M; ++r) {
    const float* xr = x + r * in;
    float m = 0.f;
    for (int64_t c = 0; c < in; ++c) m = std::max(m, std::fabs(xr[c]));
    const float sc = qp / std::max(m, 1e-5f);
    s[r] = sc;
    for (int64_t c = 0; c < in; ++c) {
      float v = nearbyintf(xr[c] * sc);
      v = std::min(std::max(v, qn), qp);
      q[r * in + c] = static_cast<int8_t>(v);
    }
  }
}

void packed_gemv_f32(const PackedMatrixView& w, const float* x, int64_t M, float* y, int threads, GemvImpl impl) {
  check_view(w);
  if (M < 1 || !x || !y) throw std::invalid_argument("packed_gemv_f32: M must be >= 1 and x, y non-null");
  const bool avx = use_avx2(w, false, impl);
  detail::for_chunks(w.out, threads, [&](int64_t r0, int64_t r1) {
#ifdef BF_X86
    if (avx)
      f32_rows_avx2(w, x, M, y, r0, r1);
    else
#endif
      f32_rows_scalar(w, x, M, y, r0, r1);
    apply_anchors(w, anchor_lower(w, r0), anchor_lower(w, r1), x, nullptr, nullptr, M, y);
  });
  (void)avx;
}

void packed_gemv_i8(const PackedMatrixView& w, const int8_t* q, const float* s, int64_t M, float* y, int threads,
                    GemvImpl impl) {
  check_view(w);
  if (M < 1 || !q || !s || !y) throw std::invalid_argument("packed_gemv_i8: M must be >= 1 and q, s, y non-null");
  const bool avx = use_avx2(w, true, impl);
  detail::for_chunks(w.out, threads, [&](int64_t r0, int64_t r1) {
#ifdef BF_X86
    if (avx)
      i8_rows_avx2(w, q, s, M, y, r0, r1);
    else
#endif
      i8_rows_scalar(w, q, s, M, y, r0, r1);
    apply_anchors(w, anchor_lower(w, r0), anchor_lower(w, r1), nullptr, q, s, M, y);
  });
  (void)avx;
}

void packed_dequant_row(const PackedMatrixView& w, int64_t r, float* out) {
  if (r < 0 || r >= w.out) throw std::invalid_argument("packed_dequant_row: row " + std::to_string(r) + " out of range");
  std::vector<float> sc(w.n_groups());
  row_scales(w, r, sc.data());
  const uint8_t* row = w.codes + r * w.row_bytes();
  for (int64_t c = 0; c < w.in; ++c) out[c] = sc[c / w.group_size] * static_cast<float>(code_at(w, row, c));
  for (int64_t k = anchor_lower(w, r); k < w.n_anchors && w.anchor_index[k] < (r + 1) * w.in; ++k)
    out[w.anchor_index[k] - r * w.in] = w.anchor_value[k];
}

std::vector<float> packed_unpack_reference(const PackedMatrixView& w) {
  check_view(w);
  std::vector<float> W(static_cast<size_t>(w.out * w.in));
  for (int64_t r = 0; r < w.out; ++r) packed_dequant_row(w, r, W.data() + r * w.in);
  return W;
}

void packed_gemv_f32_reference(const PackedMatrixView& w, const float* x, int64_t M, float* y) {
  check_view(w);
  f32_rows_scalar(w, x, M, y, 0, w.out);
  apply_anchors(w, 0, w.n_anchors, x, nullptr, nullptr, M, y);
}

void packed_gemv_f64_reference(const PackedMatrixView& w, const float* x, int64_t M, double* y) {
  const auto W = packed_unpack_reference(w);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t r = 0; r < w.out; ++r) {
      double a = 0;
      for (int64_t c = 0; c < w.in; ++c) a += double(W[r * w.in + c]) * double(x[m * w.in + c]);
      y[m * w.out + r] = a;
    }
}

void packed_gemv_i8_reference(const PackedMatrixView& w, const int8_t* q, const float* s, int64_t M, float* y) {
  check_view(w);
  // Unpack the integer codes first (the "plain" reference), then integer dot products per group.
  const int64_t ng = w.n_groups(), gs = w.group_size, in = w.in, rb = w.row_bytes();
  std::vector<int8_t> codes(static_cast<size_t>(w.out * in));
  for (int64_t r = 0; r < w.out; ++r)
    for (int64_t c = 0; c < in; ++c) codes[r * in + c] = static_cast<int8_t>(code_at(w, w.codes + r * rb, c));
  std::vector<float> sc(ng);
  std::vector<int32_t> isum(ng);
  for (int64_t r = 0; r < w.out; ++r) {
    row_scales(w, r, sc.data());
    for (int64_t m = 0; m < M; ++m) {
      for (int64_t g = 0; g < ng; ++g) {
        int64_t a = 0;
        for (int64_t c = g * gs; c < (g + 1) * gs; ++c) a += int64_t(codes[r * in + c]) * q[m * in + c];
        isum[g] = static_cast<int32_t>(a);
      }
      y[m * w.out + r] = combine_i8(isum.data(), sc.data(), ng, s[m]);
    }
  }
  apply_anchors(w, 0, w.n_anchors, nullptr, q, s, M, y);
}

}  // namespace bitforge::kernels
