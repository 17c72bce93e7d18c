// Dense bf16 / fp32 CPU GEMV; contract in dense_gemv.h.
#include "kernels/dense_gemv.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>

#include "kernels/packed_gemv_internal.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define BF_X86 1
#endif

namespace bitforge::kernels {
namespace {

inline float load_w(const uint16_t* w, int64_t c) {
  const uint32_t b = uint32_t(w[c]) << 16;
  float f;
  std::memcpy(&f, &b, 4);
  return f;
}
inline float load_w(const float* w, int64_t c) { return w[c]; }

template <class T>
void rows_scalar(const T* W, int64_t in, const float* x, const float* bias, float* y, int64_t r0, int64_t r1) {
  for (int64_t r = r0; r < r1; ++r) {
    const T* w = W + r * in;
    float a = 0.f;
    for (int64_t c = 0; c < in; ++c) a += load_w(w, c) * x[c];
    y[r] = bias ? a + bias[r] : a;
  }
}

#ifdef BF_X86
__attribute__((target("avx2,fma"))) inline __m256 load8(const uint16_t* w) {
  return _mm256_castsi256_ps(
      _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w))), 16));
}
__attribute__((target("avx2,fma"))) inline __m256 load8(const float* w) { return _mm256_loadu_ps(w); }

__attribute__((target("avx2,fma"))) inline float hsum(__m256 s) {
  __m128 v = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
  v = _mm_add_ps(v, _mm_movehl_ps(v, v));
  v = _mm_add_ss(v, _mm_shuffle_ps(v, v, 0x55));
  return _mm_cvtss_f32(v);
}

/// RB weight rows × MB activation rows per pass (RB · MB ≤ 4, so the 2 accumulators per pair fit in the 16 ymm
/// registers): MB > 1 loads each weight vector once for all rows of x (a GEMM); RB = 4 with MB = 1 (decode) gives 8
/// independent FMA chains instead of 2, so the loop is bound by loads and FMAs rather than by FMA latency. Per (weight
/// row, row of x) the arithmetic is the same for every RB and MB: 2 × 8 lanes (column c → lane c mod 16), fixed
/// reduction, sequential FMA tail — a row of x gives the same bits alone or in a batch.
template <int MB, int RB, class T>
__attribute__((target("avx2,fma"))) void rows_avx2(const T* W, int64_t in, int64_t out, const float* x,
                                                    const float* bias, float* y, int64_t r0, int64_t r1) {
  static_assert(MB * RB <= 4, "2 accumulators per (weight row, row of x) must fit in the 16 ymm registers");
  const int64_t in16 = in / 16 * 16, in8 = in / 8 * 8;
  int64_t r = r0;
  for (; r + RB <= r1; r += RB) {
    __m256 a[RB][MB][2];
    for (int j = 0; j < RB; ++j)
      for (int m = 0; m < MB; ++m) a[j][m][0] = a[j][m][1] = _mm256_setzero_ps();
    int64_t c = 0;
    for (; c < in16; c += 16)
      for (int j = 0; j < RB; ++j) {
        const T* w = W + (r + j) * in;
        const __m256 w0 = load8(w + c), w1 = load8(w + c + 8);
        for (int m = 0; m < MB; ++m) {
          a[j][m][0] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x + m * in + c), a[j][m][0]);
          a[j][m][1] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x + m * in + c + 8), a[j][m][1]);
        }
      }
    for (; c < in8; c += 8)
      for (int j = 0; j < RB; ++j) {
        const __m256 wv = load8(W + (r + j) * in + c);
        for (int m = 0; m < MB; ++m) a[j][m][0] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x + m * in + c), a[j][m][0]);
      }
    for (int j = 0; j < RB; ++j)
      for (int m = 0; m < MB; ++m) {
        const T* w = W + (r + j) * in;
        float v = hsum(_mm256_add_ps(a[j][m][0], a[j][m][1]));
        for (int64_t cc = c; cc < in; ++cc) v = std::fma(load_w(w, cc), x[m * in + cc], v);
        y[m * out + r + j] = bias ? v + bias[r + j] : v;
      }
  }
  if constexpr (RB > 1)
    if (r < r1) rows_avx2<MB, 1>(W, in, out, x, bias, y, r, r1);
}

__attribute__((target("avx2,fma"))) float dot_avx2(const float* a, const float* b, int64_t n) {
  __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
    s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
    s2 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 16), _mm256_loadu_ps(b + i + 16), s2);
    s3 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 24), _mm256_loadu_ps(b + i + 24), s3);
  }
  for (; i + 8 <= n; i += 8) s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
  float v = hsum(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
  for (; i < n; ++i) v = std::fma(a[i], b[i], v);
  return v;
}

/// e^x for x in [−87.3, 88.3] (callers clamp): Cephes expf's range reduction and polynomial, vectorized.
__attribute__((target("avx2,fma"))) inline __m256 exp_avx2(__m256 x) {
  const __m256 k = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(k, _mm256_set1_ps(0.693359375f), x);  // ln2 = 0.693359375 − 2.12194440e-4
  r = _mm256_fnmadd_ps(k, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.f)));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(k), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

__attribute__((target("avx2,fma"))) int64_t silu_mul_avx2(const float* g, float* u, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 gv = _mm256_loadu_ps(g + i);
    const __m256 neg = _mm256_min_ps(_mm256_max_ps(_mm256_sub_ps(_mm256_setzero_ps(), gv), _mm256_set1_ps(-87.3f)),
                                     _mm256_set1_ps(88.3f));
    const __m256 den = _mm256_add_ps(_mm256_set1_ps(1.f), exp_avx2(neg));
    _mm256_storeu_ps(u + i, _mm256_mul_ps(_mm256_div_ps(gv, den), _mm256_loadu_ps(u + i)));
  }
  return i;
}

__attribute__((target("avx2,fma"))) void axpy_avx2(float* y, float alpha, const float* x, int64_t n) {
  const __m256 av = _mm256_set1_ps(alpha);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_fmadd_ps(av, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
  for (; i < n; ++i) y[i] = std::fma(alpha, x[i], y[i]);
}
#endif

template <class T>
void gemv(const T* W, int64_t out, int64_t in, const float* x, int64_t M, const float* bias, float* y, int threads,
          GemvImpl impl) {
  if (out < 1 || in < 1 || M < 1 || !W || !x || !y)
    throw std::invalid_argument("dense_gemv: sizes must be positive and W, x, y non-null");
  if (impl == GemvImpl::avx2 && !cpu_has_avx2())
    throw std::invalid_argument("dense_gemv: AVX2 path requested but the CPU lacks AVX2/FMA");
  const bool avx = impl != GemvImpl::scalar && cpu_has_avx2() &&
                   !(impl == GemvImpl::automatic && best_cpu_isa() == GemvImpl::scalar);  // BITFORGE_CPU_ISA cap
  // Tiles of rows small enough to stay in L1/L2 while every row of x streams past them (a GEMM for M > 1).
  const int64_t tile = std::max<int64_t>(8, (int64_t(32) << 10) / (in * int64_t(sizeof(T))));
  // One row of x against a matrix larger than L2 (a decode step's LM head or tied embedding): one weight row at a
  // time, so the weights stream from DRAM in address order. Four interleaved short rows (2 KB at in = 1024 bf16)
  // defeat the hardware prefetcher (at 151,936 × 1,024 bf16, a Qwen3-0.6B head, 1 thread: 6.5 GB/s with 4 rows,
  // 18.2 with one, against a 16.8 GB/s plain read — measured once with a harness when this was changed; the one-row
  // figure is `bench_packed_gemv --shape 151936x1024`). Smaller, cache-resident matrices keep 4 rows per pass (8 FMA
  // chains). Same bits either way (rows_avx2: the arithmetic per row does not depend on RB).
  const bool stream_rows = M == 1 && out * in * int64_t(sizeof(T)) >= kDenseStreamBytes;
  detail::for_chunks(out, threads, [&](int64_t r0, int64_t r1) {
    for (int64_t t0 = r0; t0 < r1; t0 += tile) {
      const int64_t t1 = std::min(r1, t0 + tile);
      for (int64_t m = 0; m < M; ++m) {
#ifdef BF_X86
        if (avx) {
          const int64_t mb = std::min<int64_t>(4, M - m);
          const float* xm = x + m * in;
          float* ym = y + m * out;
          switch (mb) {
            case 1:
              if (stream_rows)
                rows_avx2<1, 1>(W, in, out, xm, bias, ym, t0, t1);
              else
                rows_avx2<1, 4>(W, in, out, xm, bias, ym, t0, t1);
              break;
            case 2: rows_avx2<2, 1>(W, in, out, xm, bias, ym, t0, t1); break;
            case 3: rows_avx2<3, 1>(W, in, out, xm, bias, ym, t0, t1); break;
            default: rows_avx2<4, 1>(W, in, out, xm, bias, ym, t0, t1); break;
          }
          m += mb - 1;
          continue;
        }
#endif
        rows_scalar(W, in, x + m * in, bias, y + m * out, t0, t1);
      }
    }
  });
  (void)avx;
  (void)stream_rows;
}

}  // namespace

float dot_f32(const float* a, const float* b, int64_t n) {
#ifdef BF_X86
  if (cpu_has_avx2()) return dot_avx2(a, b, n);
#endif
  float v = 0.f;
  for (int64_t i = 0; i < n; ++i) v += a[i] * b[i];
  return v;
}

void axpy_f32(float* y, float alpha, const float* x, int64_t n) {
#ifdef BF_X86
  if (cpu_has_avx2()) return axpy_avx2(y, alpha, x, n);
#endif
  for (int64_t i = 0; i < n; ++i) y[i] += alpha * x[i];
}

void silu_mul_f32(const float* gate, float* up, int64_t n, int threads) {
  detail::for_chunks(n, threads, [&](int64_t i0, int64_t i1) {
    int64_t i = i0;
#ifdef BF_X86
    if (cpu_has_avx2()) i += silu_mul_avx2(gate + i0, up + i0, i1 - i0);
#endif
    for (; i < i1; ++i) up[i] = gate[i] / (1.f + std::exp(-gate[i])) * up[i];
  });
}

void dense_gemv_bf16(const uint16_t* W, int64_t out, int64_t in, const float* x, int64_t M, const float* bias,
                     float* y, int threads, GemvImpl impl) {
  gemv(W, out, in, x, M, bias, y, threads, impl);
}
void dense_gemv_f32(const float* W, int64_t out, int64_t in, const float* x, int64_t M, const float* bias, float* y,
                    int threads, GemvImpl impl) {
  gemv(W, out, in, x, M, bias, y, threads, impl);
}

}  // namespace bitforge::kernels
