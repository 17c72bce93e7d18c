// AVX-512 tile kernels of RepackedMatrix (layout and arithmetic: kernels/packed_gemv.h; declarations:
// kernels/packed_gemv_avx512.h). Method: T-MAC's table lookup (arXiv:2407.00088) / bitnet.cpp's TL kernels, on a
// layout where each 32-bit lane of a zmm register holds 4 packed bytes of one output row:
//   A8:  the int16-range table T_j is split exactly into L = T & 63 (u8) and H = T >> 6 (s8); `vpermb` (AVX-512
//        VBMI) looks up 64 nibbles (16 rows × 4 bytes) in a 64-entry table holding the 4 tables of the lane's 4 byte
//        positions; the L and H lookups of two dword columns are summed exactly in bytes (u8 ≤ 4·63, s8 |·| ≤ 4·8) and
//        `vpdpbusd` (AVX-512 VNNI) adds Σ L · 1 + 64 · Σ H of each lane's 4 bytes into the row's int32 sum — the exact
//        integer Σ code · q, so the result is bit-identical to every other A8 path.
//   A16: `vpermps` looks up the 16-float table of each nibble for 16 rows; the additions are the scalar LUT path's,
//        in its order, so the result is bit-identical to it.
//
// Compiled with per-file flags (-mavx512f -mavx512bw -mavx512vl -mavx512vnni -mavx512vbmi -mavx2 -mfma -mf16c
// -ffp-contract=off; kernels/CMakeLists.txt): called only when cpu_has_avx512(). The file includes no header with
// inline functions or templates shared with the rest of the library (see packed_gemv_avx512.h), and
// -ffp-contract=off keeps every multiply and add separate, as the other paths do.
#include "kernels/packed_gemv_avx512.h"

#include <immintrin.h>

#include <cstring>

namespace bitforge::kernels::detail {
namespace {

// Software prefetch of the weight stream, per 256 bytes consumed: into L1 kNear bytes ahead, into L2 kFar bytes
// ahead (one DRAM stream per thread; measured on Zen 4: ~1.3x the cold throughput of an L1-only prefetch 2 KiB ahead).
#ifndef BF_AVX512_PREFETCH_NEAR
#define BF_AVX512_PREFETCH_NEAR 1024
#endif
#ifndef BF_AVX512_PREFETCH_FAR
#define BF_AVX512_PREFETCH_FAR 8192
#endif
constexpr int64_t kNear = BF_AVX512_PREFETCH_NEAR, kFar = BF_AVX512_PREFETCH_FAR;

inline void prefetch_weights(const uint8_t* wd) {
  for (int i = 0; i < 4; ++i) {
    _mm_prefetch(reinterpret_cast<const char*>(wd + kNear + 64 * i), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(wd + kFar + 64 * i), _MM_HINT_T1);
  }
}

/// Bitwise xor / and on floats (AVX-512F integer ops: vxorps / vandps zmm would need AVX-512DQ).
inline __m512 xor_ps(__m512 a, __m512i b) { return _mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(a), b)); }
inline __m512 and_ps(__m512 a, __m512i b) { return _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(a), b)); }

inline int32_t load_i32(const void* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

/// Stores 16 floats to y[r0 .. r0 + 16) clipped to rows < out.
inline void store_rows(float* y, int64_t r0, int64_t out, __m512 v) {
  if (r0 + 16 <= out) {
    _mm512_storeu_ps(y + r0, v);
  } else if (r0 < out) {
    _mm512_mask_storeu_ps(y + r0, static_cast<__mmask16>((1u << (out - r0)) - 1), v);
  }
}

}  // namespace

void tables_i8_avx512(bool binary, const int8_t* q, int64_t in, uint8_t* tab) {
  // Per lane n (table entry), the u8 multiplicands of the 4 activation bytes of one dword:
  //   binary (index group j = columns 4j..4j+3): 2·bit_i(n); T = Σ 2·bit_i·q_i − Σ q_i = Σ ±q_i
  //   ternary (j = columns 2j, 2j+1 = bytes 2p, 2p+1 of the dword, p = j & 1): codes c0 = n & 3, c1 = n >> 2;
  //   T = c0·q0 + c1·q1 − (q0 + q1) = (c0 − 1)·q0 + (c1 − 1)·q1, and 0 for an entry with a code 3 (never indexed).
  alignas(64) uint8_t mul[3][64], sub[3][64];
  for (int n = 0; n < 16; ++n)
    for (int i = 0; i < 4; ++i) {
      mul[0][4 * n + i] = static_cast<uint8_t>(2 * ((n >> i) & 1));
      sub[0][4 * n + i] = 1;
      const int c0 = n & 3, c1 = n >> 2;
      const bool valid = c0 != 3 && c1 != 3;
      for (int p = 0; p < 2; ++p) {
        const bool mine = (i >> 1) == p;
        mul[1 + p][4 * n + i] = mine ? static_cast<uint8_t>(valid ? ((i & 1) ? c1 : c0) : 1) : 0;
        sub[1 + p][4 * n + i] = mine ? 1 : 0;
      }
    }
  const __m512i zero = _mm512_setzero_si512(), m63 = _mm512_set1_epi32(63);
  const int64_t dwords = in / (binary ? 32 : 16);
  for (int64_t d = 0; d < dwords; ++d) {
    uint8_t* td = tab + d * 256;
    for (int tt = 0; tt < 8; ++tt) {
      const int64_t j = 8 * d + tt;
      __m512i T;
      if (binary) {
        const __m512i qb = _mm512_set1_epi32(load_i32(q + 4 * j));
        const __m512i mv = _mm512_load_si512(mul[0]), sv = _mm512_load_si512(sub[0]);
        T = _mm512_sub_epi32(_mm512_dpbusd_epi32(zero, mv, qb), _mm512_dpbusd_epi32(zero, sv, qb));
      } else {
        const int p = static_cast<int>(j & 1);
        const __m512i qb = _mm512_set1_epi32(load_i32(q + 4 * (j >> 1)));
        const __m512i mv = _mm512_load_si512(mul[1 + p]), sv = _mm512_load_si512(sub[1 + p]);
        T = _mm512_sub_epi32(_mm512_dpbusd_epi32(zero, mv, qb), _mm512_dpbusd_epi32(zero, sv, qb));
      }
      // T = L + 64·H exactly: L = T & 63 ∈ [0, 63], H = T >> 6 (arithmetic) ∈ [−8, 7] since |T| ≤ 512
      const __m128i L = _mm512_cvtepi32_epi8(_mm512_and_si512(T, m63));
      const __m128i H = _mm512_cvtepi32_epi8(_mm512_srai_epi32(T, 6));
      // nibble tt & 1 (low/high) of byte position tt >> 1 in the lane: table (tt & 1), entries 16·(tt >> 1) + n
      uint8_t* dst = td + (tt & 1) * 128 + 16 * (tt >> 1);
      _mm_storeu_si128(reinterpret_cast<__m128i*>(dst), L);
      _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + 64), H);
    }
  }
}

void tables_f32_avx512(bool binary, const float* x, int64_t in, float* tab) {
  if (binary) {
    // flip[i]: sign bit set where column i takes −x in entry n (bit i of n is 0); the scalar path's
    // t = ((±x0 ± x1) ± x2) ± x3, in that order
    alignas(64) uint32_t flip[4][16];
    for (int i = 0; i < 4; ++i)
      for (int n = 0; n < 16; ++n) flip[i][n] = ((n >> i) & 1) ? 0u : 0x80000000u;
    __m512i f[4];
    for (int i = 0; i < 4; ++i) f[i] = _mm512_load_si512(flip[i]);
    for (int64_t j = 0; j < in / 4; ++j) {
      const float* xj = x + 4 * j;
      __m512 t = xor_ps(_mm512_set1_ps(xj[0]), f[0]);
      t = _mm512_add_ps(t, xor_ps(_mm512_set1_ps(xj[1]), f[1]));
      t = _mm512_add_ps(t, xor_ps(_mm512_set1_ps(xj[2]), f[2]));
      t = _mm512_add_ps(t, xor_ps(_mm512_set1_ps(xj[3]), f[3]));
      _mm512_storeu_ps(tab + 16 * j, t);
    }
  } else {
    // v = (code − 1) · x for code ∈ {0, 1, 2}: −x, +0, +x (and +0 for the invalid code 3); t = v0 + v1
    alignas(64) uint32_t neg[2][16], keep[2][16];
    for (int n = 0; n < 16; ++n)
      for (int i = 0; i < 2; ++i) {
        const int c = i == 0 ? (n & 3) : (n >> 2);
        neg[i][n] = c == 0 ? 0x80000000u : 0u;
        keep[i][n] = (c == 0 || c == 2) ? 0xffffffffu : 0u;
      }
    __m512i ng[2], kp[2];
    for (int i = 0; i < 2; ++i) {
      ng[i] = _mm512_load_si512(neg[i]);
      kp[i] = _mm512_load_si512(keep[i]);
    }
    for (int64_t j = 0; j < in / 2; ++j) {
      const __m512 v0 = and_ps(xor_ps(_mm512_set1_ps(x[2 * j]), ng[0]), kp[0]);
      const __m512 v1 = and_ps(xor_ps(_mm512_set1_ps(x[2 * j + 1]), ng[1]), kp[1]);
      _mm512_storeu_ps(tab + 16 * j, _mm512_add_ps(v0, v1));
    }
  }
}

namespace {
/// Sub-blocks (of 16 rows) of tile t: 4, or fewer in the last tile.
inline int subs_of(const TileGeometry& G, int64_t t) {
  const int64_t rest = (G.out - t * kTileRows + 15) / 16;
  return rest >= 4 ? 4 : static_cast<int>(rest);
}

template <int NS>
void tile_i8(const TileGeometry& G, int64_t t, const uint8_t* tab, float s, float* y) {
  const __m512i m0f = _mm512_set1_epi8(0x0f);
  const __m512i pos = _mm512_set1_epi32(0x30201000);  // byte b of a lane indexes table entries 16·b + nibble
  const __m512i ones = _mm512_set1_epi8(1), c64 = _mm512_set1_epi8(64);
  const __m512 sv = _mm512_set1_ps(s);
  constexpr int kOr = 0xEA;  // ternary logic (A & B) | C
  {
    const uint8_t* wt = G.codes + t * G.dwords * 256;
    const uint16_t* st = G.scales + t * G.n_groups * kTileRows;
    __m512 tot[NS];
    for (int j = 0; j < NS; ++j) tot[j] = _mm512_setzero_ps();
    for (int64_t g = 0; g < G.n_groups; ++g) {
      __m512i acc[NS];
      for (int j = 0; j < NS; ++j) acc[j] = _mm512_setzero_si512();
      const int64_t d0 = g * G.dwords_per_group, d1 = d0 + G.dwords_per_group;
      // Pairs of dword columns: the lane's 4 L lookups of a pair (each ≤ 63) are summed in u8 (≤ 252) and its 4 H
      // lookups (each in [−8, 8]) in s8 (|sum| ≤ 32), exactly; then one vpdpbusd each adds Σ L · 1 and 64 · Σ H.
      for (int64_t d = d0; d < d1; d += 2) {
        const int64_t de = d + 2 <= d1 ? d + 2 : d1;
        __m512i ls[NS], hs[NS];
        for (int j = 0; j < NS; ++j) ls[j] = hs[j] = _mm512_setzero_si512();
        for (int64_t e = d; e < de; ++e) {
          const uint8_t* td = tab + e * 256;
          const __m512i tll = _mm512_load_si512(td), thl = _mm512_load_si512(td + 64);
          const __m512i tlh = _mm512_load_si512(td + 128), thh = _mm512_load_si512(td + 192);
          const uint8_t* wd = wt + e * (64 * NS);
          prefetch_weights(wd);
          for (int j = 0; j < NS; ++j) {
            const __m512i v = _mm512_loadu_si512(wd + 64 * j);
            const __m512i il = _mm512_ternarylogic_epi32(v, m0f, pos, kOr);
            const __m512i ih = _mm512_ternarylogic_epi32(_mm512_srli_epi16(v, 4), m0f, pos, kOr);
            ls[j] = _mm512_add_epi8(ls[j], _mm512_add_epi8(_mm512_permutexvar_epi8(il, tll), _mm512_permutexvar_epi8(ih, tlh)));
            hs[j] = _mm512_add_epi8(hs[j], _mm512_add_epi8(_mm512_permutexvar_epi8(il, thl), _mm512_permutexvar_epi8(ih, thh)));
          }
        }
        for (int j = 0; j < NS; ++j) acc[j] = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(acc[j], ls[j], ones), c64, hs[j]);
      }
      for (int j = 0; j < NS; ++j) {
        const __m512 sc =
            _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(st + g * (16 * NS) + 16 * j)));
        const __m512 v = _mm512_mul_ps(_mm512_cvtepi32_ps(acc[j]), sc);
        tot[j] = _mm512_add_ps(tot[j], v);
      }
    }
    for (int j = 0; j < NS; ++j) store_rows(y, t * kTileRows + 16 * j, G.out, _mm512_div_ps(tot[j], sv));
  }
}
}  // namespace

void tiles_i8_avx512(const TileGeometry& G, int64_t t0, int64_t t1, const uint8_t* tab, float s, float* y) {
  for (int64_t t = t0; t < t1; ++t) {
    switch (subs_of(G, t)) {
      case 4: tile_i8<4>(G, t, tab, s, y); break;
      case 3: tile_i8<3>(G, t, tab, s, y); break;
      case 2: tile_i8<2>(G, t, tab, s, y); break;
      default: tile_i8<1>(G, t, tab, s, y); break;
    }
  }
}

namespace {
template <int NS>
void tile_f32(const TileGeometry& G, int64_t t, const float* tab, float* y) {
  {
    const uint8_t* wt = G.codes + t * G.dwords * 256;
    const uint16_t* st = G.scales + t * G.n_groups * kTileRows;
    __m512 tot[NS];
    for (int j = 0; j < NS; ++j) tot[j] = _mm512_setzero_ps();
    for (int64_t g = 0; g < G.n_groups; ++g) {
      __m512 ea[NS], oa[NS];  // even / odd index groups, each summed in index order
      for (int j = 0; j < NS; ++j) ea[j] = oa[j] = _mm512_setzero_ps();
      const int64_t d1 = (g + 1) * G.dwords_per_group;
      for (int64_t d = g * G.dwords_per_group; d < d1; ++d) {
        const uint8_t* wd = wt + d * (64 * NS);
        prefetch_weights(wd);
        __m512i v[NS];
        for (int j = 0; j < NS; ++j) v[j] = _mm512_loadu_si512(wd + 64 * j);
        const float* td = tab + d * 128;  // index groups 8d .. 8d + 7
        for (int tt = 0; tt < 8; tt += 2) {
          const __m512 te = _mm512_loadu_ps(td + 16 * tt), to = _mm512_loadu_ps(td + 16 * tt + 16);
          for (int j = 0; j < NS; ++j) {  // vpermps reads the low 4 bits of each lane: nibble tt, then tt + 1
            ea[j] = _mm512_add_ps(ea[j], _mm512_permutexvar_ps(v[j], te));
            v[j] = _mm512_srli_epi32(v[j], 4);
            oa[j] = _mm512_add_ps(oa[j], _mm512_permutexvar_ps(v[j], to));
            v[j] = _mm512_srli_epi32(v[j], 4);
          }
        }
      }
      for (int j = 0; j < NS; ++j) {
        const __m512 sc =
            _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(st + g * (16 * NS) + 16 * j)));
        tot[j] = _mm512_add_ps(tot[j], _mm512_mul_ps(sc, _mm512_add_ps(ea[j], oa[j])));
      }
    }
    for (int j = 0; j < NS; ++j) store_rows(y, t * kTileRows + 16 * j, G.out, tot[j]);
  }
}
}  // namespace

void tiles_f32_avx512(const TileGeometry& G, int64_t t0, int64_t t1, const float* tab, float* y) {
  for (int64_t t = t0; t < t1; ++t) {
    switch (subs_of(G, t)) {
      case 4: tile_f32<4>(G, t, tab, y); break;
      case 3: tile_f32<3>(G, t, tab, y); break;
      case 2: tile_f32<2>(G, t, tab, y); break;
      default: tile_f32<1>(G, t, tab, y); break;
    }
  }
}

}  // namespace bitforge::kernels::detail
