// Table-lookup (LUT) GEMV/GEMM on a repacked 1-bit / 2-bit layout; contract and layout in packed_gemv.h
// (RepackedMatrix). Method: T-MAC (arXiv:2407.00088) — per activation row, a 16-entry table per group of 4 binary
// (2 ternary) columns; the weights' 4-bit indices select table entries for 32 output rows per instruction.
//
// AVX2 functions carry __attribute__((target(...))) so the library runs on any x86-64; the scalar path performs
// the same fp32 operations in the same order (generic ISA: GCC cannot contract them into FMAs), so both paths are
// bit-identical.
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdlib>
#include <new>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels/packed_gemv.h"
#include "kernels/packed_gemv_internal.h"

#if defined(__linux__)
#include <sys/mman.h>
#endif

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define BF_X86 1
#endif

namespace bitforge::kernels {
namespace {

constexpr int64_t kRows = 32;    // output rows per block
constexpr int64_t kMChunk = 8;   // activation rows whose tables are built together
constexpr int64_t kSegment = 16; // bytes per int16 segment (A8): 16 · 2 · 512 < 2^15
#ifndef BF_LUT_PREFETCH
#define BF_LUT_PREFETCH 1024
#endif
constexpr int64_t kPrefetch = BF_LUT_PREFETCH;  // bytes ahead in the weight stream (software prefetch; DRAM-bound)

/// Everything a block kernel needs, flattened from the RepackedMatrix.
struct Geometry {
  int64_t out, row_bytes, n_groups, bytes_per_group;  // bytes_per_group = group_size / columns per byte
  const uint8_t* codes;
  const uint16_t* scales;
};

/// Columns per 4-bit table index: 4 (binary) or 2 (ternary).
inline int64_t cols_per_index(bool binary) { return binary ? 4 : 2; }

// -------------------------------------------------------------------------------------------------------------
// tables (scalar definitions; the AVX2 builders compute the same values with the same operations)
// -------------------------------------------------------------------------------------------------------------
/// A8: per index group j, 32 bytes: low bytes [16] then high bytes [16] of the int16 T_j[n].
void tables_i8_scalar(bool binary, const int8_t* q, int64_t in, uint8_t* tab) {
  const int64_t cpi = cols_per_index(binary);
  for (int64_t j = 0; j < in / cpi; ++j) {
    const int8_t* qj = q + j * cpi;
    for (int n = 0; n < 16; ++n) {
      int t = 0;
      if (binary) {
        for (int i = 0; i < 4; ++i) t += ((n >> i) & 1) ? qj[i] : -qj[i];
      } else {
        const int c0 = n & 3, c1 = n >> 2;
        if (c0 != 3 && c1 != 3) t = (c0 - 1) * qj[0] + (c1 - 1) * qj[1];
      }
      tab[j * 32 + n] = static_cast<uint8_t>(t & 0xff);
      tab[j * 32 + 16 + n] = static_cast<uint8_t>((t >> 8) & 0xff);
    }
  }
}

/// A16: per index group j, 16 fp32 T_j[n].
void tables_f32_scalar(bool binary, const float* x, int64_t in, float* tab) {
  const int64_t cpi = cols_per_index(binary);
  for (int64_t j = 0; j < in / cpi; ++j) {
    const float* xj = x + j * cpi;
    for (int n = 0; n < 16; ++n) {
      float t;
      if (binary) {
        t = (n & 1) ? xj[0] : -xj[0];
        for (int i = 1; i < 4; ++i) t = t + (((n >> i) & 1) ? xj[i] : -xj[i]);
      } else {
        const int c0 = n & 3, c1 = n >> 2;
        const float v0 = c0 == 0 ? -xj[0] : (c0 == 2 ? xj[0] : 0.f);
        const float v1 = c1 == 0 ? -xj[1] : (c1 == 2 ? xj[1] : 0.f);
        t = v0 + v1;
      }
      tab[j * 16 + n] = t;
    }
  }
}

inline int32_t table_i8(const uint8_t* tab, int64_t j, int n) {
  return static_cast<int16_t>(static_cast<uint16_t>(tab[j * 32 + n] | (tab[j * 32 + 16 + n] << 8)));
}

// -------------------------------------------------------------------------------------------------------------
// scalar block kernels
// -------------------------------------------------------------------------------------------------------------
void block_i8_scalar(const Geometry& G, int64_t b, const uint8_t* tab, float s, float* y) {
  const uint8_t* wb = G.codes + b * G.row_bytes * kRows;
  const uint16_t* sb = G.scales + b * G.n_groups * kRows;
  for (int64_t i = 0; i < kRows && b * kRows + i < G.out; ++i) {
    float acc = 0.f;
    for (int64_t g = 0; g < G.n_groups; ++g) {
      int32_t isum = 0;
      for (int64_t k = g * G.bytes_per_group; k < (g + 1) * G.bytes_per_group; ++k) {
        const int byte = wb[k * kRows + i];
        isum += table_i8(tab, 2 * k, byte & 15) + table_i8(tab, 2 * k + 1, byte >> 4);
      }
      volatile float t = static_cast<float>(isum) * detail::half_to_float(sb[g * kRows + i]);
      acc = acc + t;
    }
    y[b * kRows + i] = acc / s;
  }
}

void block_f32_scalar(const Geometry& G, int64_t b, const float* tab, float* y) {
  const uint8_t* wb = G.codes + b * G.row_bytes * kRows;
  const uint16_t* sb = G.scales + b * G.n_groups * kRows;
  for (int64_t i = 0; i < kRows && b * kRows + i < G.out; ++i) {
    float total = 0.f;
    for (int64_t g = 0; g < G.n_groups; ++g) {
      float a = 0.f, c = 0.f;
      for (int64_t k = g * G.bytes_per_group; k < (g + 1) * G.bytes_per_group; ++k) {
        const int byte = wb[k * kRows + i];
        a = a + tab[(2 * k) * 16 + (byte & 15)];
        c = c + tab[(2 * k + 1) * 16 + (byte >> 4)];
      }
      volatile float t = detail::half_to_float(sb[g * kRows + i]) * (a + c);
      total = total + t;
    }
    y[b * kRows + i] = total;
  }
}

// -------------------------------------------------------------------------------------------------------------
// AVX2 tables and block kernels
// -------------------------------------------------------------------------------------------------------------
#ifdef BF_X86
__attribute__((target("avx2"))) void tables_i8_avx2(bool binary, const int8_t* q, int64_t in, uint8_t* tab) {
  // lane n (int16): the sign (±1, or 0 for "no contribution") each column takes in entry n
  alignas(32) int16_t sg[4][16];
  for (int n = 0; n < 16; ++n)
    for (int i = 0; i < 4; ++i) {
      if (binary) {
        sg[i][n] = ((n >> i) & 1) ? 1 : -1;
      } else {
        const int c = i < 2 ? (n & 3) : (n >> 2);
        sg[i][n] = 0;
        if ((n & 3) != 3 && (n >> 2) != 3) sg[i][n] = static_cast<int16_t>(c - 1);
      }
    }
  const __m256i lowbyte = _mm256_set1_epi16(0xff);
  const int64_t cpi = cols_per_index(binary);
  if (binary) {
    const __m256i s0 = _mm256_load_si256(reinterpret_cast<const __m256i*>(sg[0]));
    const __m256i s1 = _mm256_load_si256(reinterpret_cast<const __m256i*>(sg[1]));
    const __m256i s2 = _mm256_load_si256(reinterpret_cast<const __m256i*>(sg[2]));
    const __m256i s3 = _mm256_load_si256(reinterpret_cast<const __m256i*>(sg[3]));
    for (int64_t j = 0; j < in / cpi; ++j) {
      const int8_t* qj = q + j * 4;
      __m256i t = _mm256_sign_epi16(_mm256_set1_epi16(qj[0]), s0);
      t = _mm256_add_epi16(t, _mm256_sign_epi16(_mm256_set1_epi16(qj[1]), s1));
      t = _mm256_add_epi16(t, _mm256_sign_epi16(_mm256_set1_epi16(qj[2]), s2));
      t = _mm256_add_epi16(t, _mm256_sign_epi16(_mm256_set1_epi16(qj[3]), s3));
      const __m256i lo = _mm256_and_si256(t, lowbyte), hi = _mm256_and_si256(_mm256_srai_epi16(t, 8), lowbyte);
      const __m256i p = _mm256_permute4x64_epi64(_mm256_packus_epi16(lo, hi), _MM_SHUFFLE(3, 1, 2, 0));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(tab + j * 32), p);
    }
  } else {
    // ternary: sign vectors for column 0 (n & 3) and column 1 (n >> 2); sg[0] / sg[2] hold them
    const __m256i s0 = _mm256_load_si256(reinterpret_cast<const __m256i*>(sg[0]));
    const __m256i s1 = _mm256_load_si256(reinterpret_cast<const __m256i*>(sg[2]));
    for (int64_t j = 0; j < in / cpi; ++j) {
      const int8_t* qj = q + j * 2;
      __m256i t = _mm256_sign_epi16(_mm256_set1_epi16(qj[0]), s0);
      t = _mm256_add_epi16(t, _mm256_sign_epi16(_mm256_set1_epi16(qj[1]), s1));
      const __m256i lo = _mm256_and_si256(t, lowbyte), hi = _mm256_and_si256(_mm256_srai_epi16(t, 8), lowbyte);
      const __m256i p = _mm256_permute4x64_epi64(_mm256_packus_epi16(lo, hi), _MM_SHUFFLE(3, 1, 2, 0));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(tab + j * 32), p);
    }
  }
}

__attribute__((target("avx2"))) void tables_f32_avx2(bool binary, const float* x, int64_t in, float* tab) {
  const int64_t cpi = cols_per_index(binary);
  if (binary) {
    // flip[i][n]: sign bit set where column i takes −x in entry n (bit i of n is 0)
    alignas(32) uint32_t flip[4][16];
    for (int i = 0; i < 4; ++i)
      for (int n = 0; n < 16; ++n) flip[i][n] = ((n >> i) & 1) ? 0u : 0x80000000u;
    __m256 f[4][2];
    for (int i = 0; i < 4; ++i)
      for (int h = 0; h < 2; ++h) f[i][h] = _mm256_load_ps(reinterpret_cast<const float*>(flip[i] + 8 * h));
    for (int64_t j = 0; j < in / cpi; ++j) {
      const float* xj = x + j * 4;
      const __m256 x0 = _mm256_broadcast_ss(xj), x1 = _mm256_broadcast_ss(xj + 1);
      const __m256 x2 = _mm256_broadcast_ss(xj + 2), x3 = _mm256_broadcast_ss(xj + 3);
      for (int h = 0; h < 2; ++h) {
        __m256 t = _mm256_xor_ps(x0, f[0][h]);
        t = _mm256_add_ps(t, _mm256_xor_ps(x1, f[1][h]));
        t = _mm256_add_ps(t, _mm256_xor_ps(x2, f[2][h]));
        t = _mm256_add_ps(t, _mm256_xor_ps(x3, f[3][h]));
        _mm256_storeu_ps(tab + j * 16 + 8 * h, t);
      }
    }
  } else {
    // v = (code − 1) · x for code ∈ {0, 1, 2}: −x, +0, +x (and +0 for the invalid code 3)
    alignas(32) uint32_t neg[2][16], keep[2][16];
    for (int n = 0; n < 16; ++n)
      for (int i = 0; i < 2; ++i) {
        const int c = i == 0 ? (n & 3) : (n >> 2);
        neg[i][n] = c == 0 ? 0x80000000u : 0u;
        keep[i][n] = (c == 0 || c == 2) ? 0xffffffffu : 0u;
      }
    __m256 ng[2][2], kp[2][2];
    for (int i = 0; i < 2; ++i)
      for (int h = 0; h < 2; ++h) {
        ng[i][h] = _mm256_load_ps(reinterpret_cast<const float*>(neg[i] + 8 * h));
        kp[i][h] = _mm256_load_ps(reinterpret_cast<const float*>(keep[i] + 8 * h));
      }
    for (int64_t j = 0; j < in / cpi; ++j) {
      const __m256 x0 = _mm256_broadcast_ss(x + 2 * j), x1 = _mm256_broadcast_ss(x + 2 * j + 1);
      for (int h = 0; h < 2; ++h) {
        const __m256 v0 = _mm256_and_ps(_mm256_xor_ps(x0, ng[0][h]), kp[0][h]);
        const __m256 v1 = _mm256_and_ps(_mm256_xor_ps(x1, ng[1][h]), kp[1][h]);
        _mm256_storeu_ps(tab + j * 16 + 8 * h, _mm256_add_ps(v0, v1));
      }
    }
  }
}

/// A8, NB consecutive blocks of 32 rows (NB = 1 or 2: two blocks share every table load), one activation row.
/// tab: that row's tables. Per row the arithmetic does not depend on NB.
template <int NB>
__attribute__((target("avx2,f16c"))) void block_i8_avx2(const Geometry& G, int64_t b, const uint8_t* tab, float s,
                                                         float* y) {
  const uint8_t* wb[NB];
  const uint16_t* sb[NB];
  for (int j = 0; j < NB; ++j) {
    wb[j] = G.codes + (b + j) * G.row_bytes * kRows;
    sb[j] = G.scales + (b + j) * G.n_groups * kRows;
  }
  const __m256i nib = _mm256_set1_epi8(0x0f);
  __m256 tot[NB][4];
  for (int j = 0; j < NB; ++j)
    for (int q = 0; q < 4; ++q) tot[j][q] = _mm256_setzero_ps();
  for (int64_t g = 0; g < G.n_groups; ++g) {
    __m256i i32[NB][4];
    for (int j = 0; j < NB; ++j)
      for (int q = 0; q < 4; ++q) i32[j][q] = _mm256_setzero_si256();
    const int64_t k0 = g * G.bytes_per_group, k1 = k0 + G.bytes_per_group;
    for (int64_t ks = k0; ks < k1; ks += kSegment) {
      __m256i a0[NB], a1[NB];  // rows [0-7|16-23], [8-15|24-31] of each block
      for (int j = 0; j < NB; ++j) a0[j] = a1[j] = _mm256_setzero_si256();
      const int64_t ke = std::min(ks + kSegment, k1);
      for (int64_t k = ks; k < ke; ++k) {
        const uint8_t* t = tab + k * 64;  // index groups 2k (t) and 2k + 1 (t + 32)
        const __m256i tl0 = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(t)));
        const __m256i th0 = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(t + 16)));
        const __m256i tl1 = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(t + 32)));
        const __m256i th1 = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(t + 48)));
        for (int j = 0; j < NB; ++j) {
          if (!(k & 1)) _mm_prefetch(reinterpret_cast<const char*>(wb[j] + k * kRows + kPrefetch), _MM_HINT_T0);
          const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wb[j] + k * kRows));
          const __m256i lo = _mm256_and_si256(v, nib), hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), nib);
          const __m256i l0 = _mm256_shuffle_epi8(tl0, lo), h0 = _mm256_shuffle_epi8(th0, lo);
          const __m256i l1 = _mm256_shuffle_epi8(tl1, hi), h1 = _mm256_shuffle_epi8(th1, hi);
          a0[j] = _mm256_add_epi16(a0[j], _mm256_add_epi16(_mm256_unpacklo_epi8(l0, h0), _mm256_unpacklo_epi8(l1, h1)));
          a1[j] = _mm256_add_epi16(a1[j], _mm256_add_epi16(_mm256_unpackhi_epi8(l0, h0), _mm256_unpackhi_epi8(l1, h1)));
        }
      }
      for (int j = 0; j < NB; ++j) {
        i32[j][0] = _mm256_add_epi32(i32[j][0], _mm256_cvtepi16_epi32(_mm256_castsi256_si128(a0[j])));
        i32[j][1] = _mm256_add_epi32(i32[j][1], _mm256_cvtepi16_epi32(_mm256_castsi256_si128(a1[j])));
        i32[j][2] = _mm256_add_epi32(i32[j][2], _mm256_cvtepi16_epi32(_mm256_extracti128_si256(a0[j], 1)));
        i32[j][3] = _mm256_add_epi32(i32[j][3], _mm256_cvtepi16_epi32(_mm256_extracti128_si256(a1[j], 1)));
      }
    }
    for (int j = 0; j < NB; ++j)
      for (int q = 0; q < 4; ++q) {
        const __m256 sc =
            _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(sb[j] + g * kRows + 8 * q)));
        tot[j][q] = _mm256_add_ps(tot[j][q], _mm256_mul_ps(_mm256_cvtepi32_ps(i32[j][q]), sc));
      }
  }
  const __m256 sv = _mm256_set1_ps(s);
  for (int j = 0; j < NB; ++j) {
    const int64_t r0 = (b + j) * kRows, n = std::min<int64_t>(kRows, G.out - r0);
    if (n == kRows) {
      for (int q = 0; q < 4; ++q) _mm256_storeu_ps(y + r0 + 8 * q, _mm256_div_ps(tot[j][q], sv));
    } else {
      alignas(32) float tmp[kRows];
      for (int q = 0; q < 4; ++q) _mm256_store_ps(tmp + 8 * q, _mm256_div_ps(tot[j][q], sv));
      std::copy(tmp, tmp + n, y + r0);
    }
  }
}

/// A16, one block of 32 rows (4 × 8 lanes), one activation row.
__attribute__((target("avx2,f16c"))) void block_f32_avx2(const Geometry& G, int64_t b, const float* tab, float* y) {
  const uint8_t* wb = G.codes + b * G.row_bytes * kRows;
  const uint16_t* sb = G.scales + b * G.n_groups * kRows;
  __m256 tot[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
  for (int64_t g = 0; g < G.n_groups; ++g) {
    __m256 ea[4], oa[4];  // even / odd index groups
    for (int s = 0; s < 4; ++s) ea[s] = oa[s] = _mm256_setzero_ps();
    for (int64_t k = g * G.bytes_per_group; k < (g + 1) * G.bytes_per_group; ++k) {
      const float* t = tab + k * 32;
      const __m256 el = _mm256_loadu_ps(t), eh = _mm256_loadu_ps(t + 8);
      const __m256 ol = _mm256_loadu_ps(t + 16), oh = _mm256_loadu_ps(t + 24);
      const uint8_t* wk = wb + k * kRows;
      for (int s = 0; s < 4; ++s) {
        const __m256i idx = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(wk + 8 * s)));
        // low nibble: entry bits 0-2 index the 8-entry halves, bit 3 (moved to the sign bit) picks the half
        const __m256 ev = _mm256_blendv_ps(_mm256_permutevar8x32_ps(el, idx), _mm256_permutevar8x32_ps(eh, idx),
                                           _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28)));
        const __m256i idx_hi = _mm256_srli_epi32(idx, 4);
        const __m256 ov = _mm256_blendv_ps(_mm256_permutevar8x32_ps(ol, idx_hi), _mm256_permutevar8x32_ps(oh, idx_hi),
                                           _mm256_castsi256_ps(_mm256_slli_epi32(idx, 24)));
        ea[s] = _mm256_add_ps(ea[s], ev);
        oa[s] = _mm256_add_ps(oa[s], ov);
      }
    }
    for (int s = 0; s < 4; ++s) {
      const __m256 sc = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(sb + g * kRows + 8 * s)));
      tot[s] = _mm256_add_ps(tot[s], _mm256_mul_ps(sc, _mm256_add_ps(ea[s], oa[s])));
    }
  }
  const int64_t r0 = b * kRows, n = std::min<int64_t>(kRows, G.out - r0);
  if (n == kRows) {
    for (int s = 0; s < 4; ++s) _mm256_storeu_ps(y + r0 + 8 * s, tot[s]);
  } else {
    alignas(32) float tmp[kRows];
    for (int s = 0; s < 4; ++s) _mm256_store_ps(tmp + 8 * s, tot[s]);
    std::copy(tmp, tmp + n, y + r0);
  }
}
#endif  // BF_X86

/// Per-call scratch for the tables (grows, never shrinks; one per calling thread).
template <class T>
T* scratch(size_t n) {
  thread_local std::vector<unsigned char> buf;
  if (buf.size() < n * sizeof(T) + 64) buf.resize(n * sizeof(T) + 64);
  auto p = reinterpret_cast<uintptr_t>(buf.data());
  return reinterpret_cast<T*>((p + 63) & ~uintptr_t(63));
}

}  // namespace

template <class T>
void* detail::WeightAllocator<T>::allocate_weight_bytes(std::size_t bytes) {
  constexpr std::size_t kHuge = std::size_t(2) << 20;
  const bool huge = bytes >= kHuge && !std::getenv("BITFORGE_NO_HUGEPAGES");
  const std::size_t align = huge ? kHuge : 64;
  void* p = nullptr;
  if (posix_memalign(&p, align, bytes ? bytes : 1) != 0) throw std::bad_alloc();
#ifdef MADV_HUGEPAGE
  // the whole 2 MiB pages only (a hint: failure is harmless); the tail stays on small pages, nothing is rounded up
  if (huge) madvise(p, bytes / kHuge * kHuge, MADV_HUGEPAGE);
#endif
  return p;
}
template <class T>
void detail::WeightAllocator<T>::free_weight_bytes(void* p) {
  std::free(p);
}
template struct detail::WeightAllocator<uint8_t>;

bool RepackedMatrix::supports(const PackedMatrixView& w) {
  if (w.out < 1 || w.in < 1 || w.group_size < 1 || w.in % w.group_size != 0) return false;
  return w.group_size % (w.quant == WeightQuantizer::binary ? 8 : 4) == 0;
}

bool RepackedMatrix::supports_avx512_layout(const PackedMatrixView& w) {
  return supports(w) && w.group_size % (w.quant == WeightQuantizer::binary ? 32 : 16) == 0;
}

RepackedMatrix::RepackedMatrix(const PackedMatrixView& w, GemvImpl isa) {
  check_view(w);
  if (!supports(w))
    throw std::invalid_argument("RepackedMatrix: group_size " + std::to_string(w.group_size) + " of a " +
                                (w.quant == WeightQuantizer::binary ? "binary" : "ternary") +
                                " matrix is not a multiple of " + (w.quant == WeightQuantizer::binary ? "8" : "4"));
  if (isa == GemvImpl::automatic) {
    isa = best_cpu_isa();
    if (isa == GemvImpl::avx512 && !supports_avx512_layout(w)) isa = cpu_has_avx2() ? GemvImpl::avx2 : GemvImpl::scalar;
  } else if (isa == GemvImpl::avx512) {
    if (!cpu_has_avx512())
      throw std::invalid_argument("RepackedMatrix: AVX-512 path requested but the CPU lacks AVX-512 F/BW/VL/VNNI/VBMI");
    if (!supports_avx512_layout(w))
      throw std::invalid_argument("RepackedMatrix: the AVX-512 layout needs group_size % " +
                                  std::string(w.quant == WeightQuantizer::binary ? "32" : "16") + " == 0, got " +
                                  std::to_string(w.group_size));
  } else if (isa == GemvImpl::avx2 && !cpu_has_avx2()) {
    throw std::invalid_argument("RepackedMatrix: AVX2 path requested but the CPU lacks AVX2/FMA/F16C");
  }
  isa_ = isa;
  quant_ = w.quant;
  out_ = w.out;
  in_ = w.in;
  group_size_ = w.group_size;
  n_groups_ = w.n_groups();
  row_bytes_ = w.row_bytes();
  const bool tiles = isa_ == GemvImpl::avx512;
  const int64_t rows = tiles ? detail::kTileRows : kRows;
  blocks_ = (out_ + rows - 1) / rows;
  // tiles: the last one holds only the 16-row sub-blocks it needs
  const int64_t padded = tiles ? (out_ + 15) / 16 * 16 : blocks_ * rows;
  codes_.assign(static_cast<size_t>(padded * row_bytes_), 0);
  scales_.assign(static_cast<size_t>(padded * n_groups_), 0);
  for (int64_t r = 0; r < out_; ++r) {
    const int64_t b = r / rows, i = r % rows;
    const int64_t ns = std::min<int64_t>(4, (out_ - b * rows + 15) / 16);  // tiles: sub-blocks in tile b
    const uint8_t* row = w.codes + r * row_bytes_;
    // 32-row blocks: byte k of row i at [b][k][i]; tiles: byte k = 4d + e of row i = 16·sub + l at
    // [b][d][sub < ns][l][e] (tile b starts at b · row_bytes · 64)
    auto dst_of = [&](int64_t k) -> uint8_t& {
      if (!tiles) return codes_[(b * row_bytes_ + k) * kRows + i];
      return codes_[b * row_bytes_ * rows + ((k / 4) * ns + i / 16) * 64 + (i % 16) * 4 + k % 4];
    };
    for (int64_t k = 0; k < row_bytes_; ++k) {
      const uint8_t byte = row[k];
      if (quant_ == WeightQuantizer::ternary)
        for (int l = 0; l < 4; ++l)
          if (((byte >> (2 * l)) & 3) == 3)
            throw std::invalid_argument("RepackedMatrix: ternary code 3 (not in {0, 1, 2}) at row " + std::to_string(r) +
                                        ", column " + std::to_string(4 * k + l));
      dst_of(k) = byte;
    }
    const uint16_t* s = w.scales + (w.scale_rows == 1 ? 0 : r) * n_groups_;
    for (int64_t g = 0; g < n_groups_; ++g)
      scales_[tiles ? b * n_groups_ * rows + g * ns * 16 + i : (b * n_groups_ + g) * rows + i] = s[g];
  }
  anchor_index_.assign(w.anchor_index, w.anchor_index + w.n_anchors);
  anchor_delta_.resize(static_cast<size_t>(w.n_anchors));
  for (int64_t k = 0; k < w.n_anchors; ++k) {
    const int64_t r = anchor_index_[k] / in_, c = anchor_index_[k] % in_;
    if (k > 0 && anchor_index_[k] <= anchor_index_[k - 1])
      throw std::invalid_argument("RepackedMatrix: anchor indices must be strictly increasing (entry " +
                                  std::to_string(k) + ")");
    const float sc = detail::half_to_float(w.scales[(w.scale_rows == 1 ? 0 : r) * n_groups_ + c / group_size_]);
    anchor_delta_[k] = detail::anchor_delta(w.anchor_value[k], sc, detail::code_at(quant_, w.codes + r * row_bytes_, c));
  }
}

int64_t RepackedMatrix::bytes() const {
  return static_cast<int64_t>(codes_.size() + scales_.size() * 2 + anchor_index_.size() * 12);
}

namespace {

/// The driver shared by gemv_i8 and gemv_f32. Activation rows go in chunks of kMChunk whose tables are built together.
/// Decode (fewer than 2 chunks or one thread): tables built once, row blocks split across threads. Prefill / batch:
/// chunks split across threads, each thread building its own chunks' tables and running every row block — one
/// fork/join per call and parallel table building. Per (m, r) the operations are the same either way.
template <class Tab, class BuildTables, class Block, class Anchors>
void lut_driver(int64_t M, int64_t blocks, int64_t rows, int64_t out, int64_t tab_len, int threads,
                const BuildTables& build, const Block& block, const Anchors& anchors) {
  auto chunk = [&](int64_t m0, int64_t b0, int64_t b1, Tab* tabs, bool build_tables) {
    const int64_t mb = std::min(kMChunk, M - m0);
    if (build_tables)
      for (int64_t m = 0; m < mb; ++m) build(m0 + m, tabs + m * tab_len);
    for (int64_t b = b0; b < b1; b += 2)
      for (int64_t m = 0; m < mb; ++m) block(b, std::min<int64_t>(2, b1 - b), m0 + m, tabs + m * tab_len);
    anchors(m0, mb, b0 * rows, std::min(b1 * rows, out));
  };
  const int64_t n_chunks = (M + kMChunk - 1) / kMChunk;
  const int t = threads <= 0 ? at::get_num_threads() : threads;
  if (n_chunks >= 2 && t > 1) {
    detail::for_chunks(n_chunks, t, [&](int64_t c0, int64_t c1) {
      Tab* tabs = scratch<Tab>(static_cast<size_t>(kMChunk * tab_len));  // this worker's own scratch
      for (int64_t c = c0; c < c1; ++c) chunk(c * kMChunk, 0, blocks, tabs, true);
    });
    return;
  }
  Tab* tabs = scratch<Tab>(static_cast<size_t>(kMChunk * tab_len));
  for (int64_t m0 = 0; m0 < M; m0 += kMChunk) {
    const int64_t mb = std::min(kMChunk, M - m0);
    for (int64_t m = 0; m < mb; ++m) build(m0 + m, tabs + m * tab_len);
    detail::for_chunks(blocks, t, [&](int64_t b0, int64_t b1) { chunk(m0, b0, b1, tabs, false); });
  }
}

/// The anchor corrections of rows [r0, r1) for mb activation rows (xf for A16, q/s for A8), in index order.
void add_anchors(const std::vector<int64_t>& index, const std::vector<float>& delta, int64_t in, int64_t out,
                 int64_t r0, int64_t r1, const float* xf, const int8_t* q, const float* s, int64_t mb, float* y) {
  const auto lo = std::lower_bound(index.begin(), index.end(), r0 * in);
  const auto hi = std::lower_bound(index.begin(), index.end(), r1 * in);
  for (auto it = lo; it != hi; ++it)
    detail::add_anchor(delta[it - index.begin()], *it / in, *it % in, in, out, xf, q, s, mb, y);
}

}  // namespace

namespace {

enum class Path { scalar, avx2, avx512 };

/// The path a gemv call runs on a matrix built for `isa` (see RepackedMatrix in packed_gemv.h).
Path pick_path(GemvImpl isa, GemvImpl impl) {
  if (impl == GemvImpl::automatic) impl = isa;
  if (isa == GemvImpl::avx512) {
    if (impl != GemvImpl::avx512)
      throw std::invalid_argument(std::string("RepackedMatrix: this matrix holds the AVX-512 tile layout; the ") +
                                  isa_name(impl) + " path needs a matrix constructed with GemvImpl::" + isa_name(impl));
    return Path::avx512;
  }
  if (impl == GemvImpl::avx512)
    throw std::invalid_argument(std::string("RepackedMatrix: this matrix was built for the ") + isa_name(isa) +
                                " path; construct it with GemvImpl::avx512 for the AVX-512 kernels");
  if (impl == GemvImpl::avx2) {
    if (!cpu_has_avx2()) throw std::invalid_argument("RepackedMatrix: AVX2 path requested but the CPU lacks AVX2/FMA/F16C");
    return Path::avx2;
  }
  return Path::scalar;
}

}  // namespace

void RepackedMatrix::gemv_i8(const int8_t* q, const float* s, int64_t M, float* y, int threads, GemvImpl impl) const {
  if (M < 1 || !q || !s || !y) throw std::invalid_argument("RepackedMatrix::gemv_i8: M must be >= 1 and q, s, y non-null");
  const Path path = pick_path(isa_, impl);
  const bool binary = quant_ == WeightQuantizer::binary;
  const int64_t in = in_, out = out_;
  auto anchors = [&](int64_t m0, int64_t mb, int64_t r0, int64_t r1) {
    add_anchors(anchor_index_, anchor_delta_, in, out, r0, r1, nullptr, q + m0 * in, s + m0, mb, y + m0 * out);
  };
#ifdef BF_X86
  if (path == Path::avx512) {
    const detail::TileGeometry T{out_, row_bytes_ / 4, n_groups_, group_size_ / (binary ? 32 : 16), codes_.data(),
                                 scales_.data()};
    lut_driver<uint8_t>(
        M, blocks_, detail::kTileRows, out_, row_bytes_ * 64, threads,
        [&](int64_t m, uint8_t* tab) { detail::tables_i8_avx512(binary, q + m * in, in, tab); },
        [&](int64_t b, int64_t nb, int64_t m, const uint8_t* tab) {
          detail::tiles_i8_avx512(T, b, b + nb, tab, s[m], y + m * out);
        },
        anchors);
    return;
  }
#endif
  const bool avx = path == Path::avx2;
  const Geometry G{out_, row_bytes_, n_groups_, group_size_ / (binary ? 8 : 4), codes_.data(), scales_.data()};
  lut_driver<uint8_t>(
      M, blocks_, kRows, out_, in_ / cols_per_index(binary) * 32, threads,
      [&](int64_t m, uint8_t* tab) {
#ifdef BF_X86
        if (avx) return tables_i8_avx2(binary, q + m * in, in, tab);
#endif
        tables_i8_scalar(binary, q + m * in, in, tab);
      },
      [&](int64_t b, int64_t nb, int64_t m, const uint8_t* tab) {
#ifdef BF_X86
        if (avx) return nb == 2 ? block_i8_avx2<2>(G, b, tab, s[m], y + m * out) : block_i8_avx2<1>(G, b, tab, s[m], y + m * out);
#endif
        for (int64_t j = 0; j < nb; ++j) block_i8_scalar(G, b + j, tab, s[m], y + m * out);
      },
      anchors);
  (void)avx;
}

void RepackedMatrix::gemv_f32(const float* x, int64_t M, float* y, int threads, GemvImpl impl) const {
  if (M < 1 || !x || !y) throw std::invalid_argument("RepackedMatrix::gemv_f32: M must be >= 1 and x, y non-null");
  const Path path = pick_path(isa_, impl);
  const bool binary = quant_ == WeightQuantizer::binary;
  const int64_t in = in_, out = out_;
  auto anchors = [&](int64_t m0, int64_t mb, int64_t r0, int64_t r1) {
    add_anchors(anchor_index_, anchor_delta_, in, out, r0, r1, x + m0 * in, nullptr, nullptr, mb, y + m0 * out);
  };
#ifdef BF_X86
  if (path == Path::avx512) {
    const detail::TileGeometry T{out_, row_bytes_ / 4, n_groups_, group_size_ / (binary ? 32 : 16), codes_.data(),
                                 scales_.data()};
    lut_driver<float>(
        M, blocks_, detail::kTileRows, out_, in_ / cols_per_index(binary) * 16, threads,
        [&](int64_t m, float* tab) { detail::tables_f32_avx512(binary, x + m * in, in, tab); },
        [&](int64_t b, int64_t nb, int64_t m, const float* tab) {
          detail::tiles_f32_avx512(T, b, b + nb, tab, y + m * out);
        },
        anchors);
    return;
  }
#endif
  const bool avx = path == Path::avx2;
  const Geometry G{out_, row_bytes_, n_groups_, group_size_ / (binary ? 8 : 4), codes_.data(), scales_.data()};
  lut_driver<float>(
      M, blocks_, kRows, out_, in_ / cols_per_index(binary) * 16, threads,
      [&](int64_t m, float* tab) {
#ifdef BF_X86
        if (avx) return tables_f32_avx2(binary, x + m * in, in, tab);
#endif
        tables_f32_scalar(binary, x + m * in, in, tab);
      },
      [&](int64_t b, int64_t nb, int64_t m, const float* tab) {
        for (int64_t j = 0; j < nb; ++j) {
#ifdef BF_X86
          if (avx) {
            block_f32_avx2(G, b + j, tab, y + m * out);
            continue;
          }
#endif
          block_f32_scalar(G, b + j, tab, y + m * out);
        }
      },
      anchors);
  (void)avx;
}

}  // namespace bitforge::kernels
