// Helpers shared by the packed GEMV implementations (packed_gemv_cpu.cpp: row-wise kernels,
// packed_gemv_lut.cpp: table-lookup kernels). Internal: not part of the public kernels API.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "kernels/packed_gemv.h"
#include "kernels/packed_gemv_avx512.h"
#include "kernels/thread_pool.h"

namespace bitforge::kernels::detail {

/// IEEE fp16 bits → fp32, exact (subnormals, inf, NaN included); what F16C's vcvtph2ps computes.
inline float half_to_float(uint16_t h) {
  const uint32_t sign = (h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1f, mant = h & 0x3ffu, bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {  // subnormal: normalise
      int e = -1;
      do {
        ++e;
        mant <<= 1;
      } while (!(mant & 0x400u));
      bits = sign | ((127 - 15 - e) << 23) | ((mant & 0x3ffu) << 13);
    }
  } else if (exp == 31) {
    bits = sign | 0x7f800000u | (mant << 13);
  } else {
    bits = sign | ((exp + 112) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

/// Stored integer code of column c of a packed row: binary ±1, ternary code − 1 (∈ {−1, 0, 1, 2}).
inline int code_at(WeightQuantizer quant, const uint8_t* row, int64_t c) {
  if (quant == WeightQuantizer::binary) return ((row[c >> 3] >> (c & 7)) & 1) ? 1 : -1;
  return static_cast<int>((row[c >> 2] >> (2 * (c & 3))) & 3) - 1;
}

/// Anchor correction δ = value − scale · code_stored, in the fp32 operations every kernel uses (never fused).
inline float anchor_delta(float value, float scale, int code) {
  volatile float stored = scale * static_cast<float>(code);
  volatile float delta = value - stored;
  return delta;
}

/// y[m, r] += δ · x̃[m, c] (x̃ = x for A16, float(q)/s for A8), product then sum, never fused.
inline void add_anchor(float delta, int64_t r, int64_t c, int64_t in, int64_t out, const float* xf, const int8_t* q,
                       const float* s, int64_t M, float* y) {
  for (int64_t m = 0; m < M; ++m) {
    const float xt = xf ? xf[m * in + c] : static_cast<float>(q[m * in + c]) / s[m];
    volatile float corr = delta * xt;
    y[m * out + r] = y[m * out + r] + corr;
  }
}

/// Splits [0, n) into min(threads, n) contiguous chunks run on the kernels' pool (kernels/thread_pool.h: workers
/// poll briefly before sleeping, so back-to-back products need no wake-up); threads <= 0: at::get_num_threads().
template <class F>
void for_chunks(int64_t n, int threads, const F& f) {
  if (threads <= 0) threads = at::get_num_threads();
  const int64_t chunks = std::min<int64_t>(std::max(threads, 1), n);
  if (chunks <= 1) {
    f(0, n);
    return;
  }
  run_chunks(chunks, threads, [&](int64_t c) { f(n * c / chunks, n * (c + 1) / chunks); });
}

}  // namespace bitforge::kernels::detail
