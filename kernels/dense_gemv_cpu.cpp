// Dense bf16 / fp32 CPU GEMV; contract in dense_gemv.h.
#include "kernels/dense_gemv.h"

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

template <class T>
__attribute__((target("avx2,fma"))) void rows_avx2(const T* W, int64_t in, const float* x, const float* bias, float* y,
                                                    int64_t r0, int64_t r1) {
  const int64_t in32 = in / 32 * 32, in8 = in / 8 * 8;
  for (int64_t r = r0; r < r1; ++r) {
    const T* w = W + r * in;
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    int64_t c = 0;
    for (; c < in32; c += 32) {
      a0 = _mm256_fmadd_ps(load8(w + c), _mm256_loadu_ps(x + c), a0);
      a1 = _mm256_fmadd_ps(load8(w + c + 8), _mm256_loadu_ps(x + c + 8), a1);
      a2 = _mm256_fmadd_ps(load8(w + c + 16), _mm256_loadu_ps(x + c + 16), a2);
      a3 = _mm256_fmadd_ps(load8(w + c + 24), _mm256_loadu_ps(x + c + 24), a3);
    }
    for (; c < in8; c += 8) a0 = _mm256_fmadd_ps(load8(w + c), _mm256_loadu_ps(x + c), a0);
    const __m256 s = _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3));
    __m128 v = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
    v = _mm_add_ps(v, _mm_movehl_ps(v, v));
    v = _mm_add_ss(v, _mm_shuffle_ps(v, v, 0x55));
    float a = _mm_cvtss_f32(v);
    for (; c < in; ++c) a = std::fma(load_w(w, c), x[c], a);
    y[r] = bias ? a + bias[r] : a;
  }
}
#endif

template <class T>
void gemv(const T* W, int64_t out, int64_t in, const float* x, int64_t M, const float* bias, float* y, int threads,
          GemvImpl impl) {
  if (out < 1 || in < 1 || M < 1 || !W || !x || !y)
    throw std::invalid_argument("dense_gemv: sizes must be positive and W, x, y non-null");
  if (impl == GemvImpl::avx2 && !cpu_has_avx2())
    throw std::invalid_argument("dense_gemv: AVX2 path requested but the CPU lacks AVX2/FMA");
  const bool avx = impl != GemvImpl::scalar && cpu_has_avx2();
  detail::for_chunks(out, threads, [&](int64_t r0, int64_t r1) {
    for (int64_t m = 0; m < M; ++m) {
#ifdef BF_X86
      if (avx) {
        rows_avx2(W, in, x + m * in, bias, y + m * out, r0, r1);
        continue;
      }
#endif
      rows_scalar(W, in, x + m * in, bias, y + m * out, r0, r1);
    }
  });
  (void)avx;
}

}  // namespace

void dense_gemv_bf16(const uint16_t* W, int64_t out, int64_t in, const float* x, int64_t M, const float* bias,
                     float* y, int threads, GemvImpl impl) {
  gemv(W, out, in, x, M, bias, y, threads, impl);
}
void dense_gemv_f32(const float* W, int64_t out, int64_t in, const float* x, int64_t M, const float* bias, float* y,
                    int threads, GemvImpl impl) {
  gemv(W, out, in, x, M, bias, y, threads, impl);
}

}  // namespace bitforge::kernels
