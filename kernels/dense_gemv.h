// CPU GEMV / small-batch GEMM for the dense (unquantized) weights the packed runtime keeps: the embedding table used
// as a tied LM head, an untied head, and any projection left in full precision. y[m, r] = Σ_c W[r, c] · x[m, c] + b[r].
//
// Weights stay in the dtype they were exported in: bf16 (the packed file's embedding; widening to fp32 is exact,
// so the products equal the fp32 model's) or fp32. Activations and accumulation are fp32.
//   W  bf16 bits (uint16) or fp32, [out, in] row-major;  x fp32 [M, in];  y fp32 [M, out] (overwritten);
//   bias fp32 [out] or nullptr.
// Summation: the AVX2 path keeps 2 × 8 fp32 FMA accumulators per row (column c goes to lane c mod 16), reduced in
// a fixed order, for up to 4 rows of x per pass over W (one row of x: 4 weight rows per pass, for 8 independent FMA
// chains; each row of x gives the same bits alone or in a batch); the scalar path sums sequentially. Both are within fp32 rounding of the exact product:
// |y − y_exact| ≤ 1e-5 · Σ_c |W[r,c] · x[m,c]| (tests check it). Results do not depend on the thread count.
// Decode (M = 1) on a matrix of kDenseStreamBytes or more: one weight row per pass, so the weights stream in
// address order (same bits as the 4-row pass; `bench_packed_gemv --shape 151936x1024` measures it against a plain
// read of the same bytes).
// Threads: output rows split into `threads` contiguous chunks (the kernels' pool); threads <= 0 = all.
// Errors: std::invalid_argument for non-positive sizes or null pointers.
#pragma once

#include <cstdint>

#include "kernels/packed_gemv.h"  // GemvImpl

namespace bitforge::kernels {

/// Matrices of at least this many bytes take the one-row-per-pass decode loop (beyond a 2 MiB L2).
constexpr int64_t kDenseStreamBytes = int64_t(4) << 20;

void dense_gemv_bf16(const uint16_t* W, int64_t out, int64_t in, const float* x, int64_t M, const float* bias,
                     float* y, int threads = 1, GemvImpl impl = GemvImpl::automatic);
void dense_gemv_f32(const float* W, int64_t out, int64_t in, const float* x, int64_t M, const float* bias, float* y,
                    int threads = 1, GemvImpl impl = GemvImpl::automatic);

/// Σ_i a[i] · b[i] over n fp32 values (AVX2: 4 × 8 FMA lanes, fixed reduction; scalar: sequential). Attention's
/// q·k in the packed runtime. Within fp32 rounding of the exact dot product.
float dot_f32(const float* a, const float* b, int64_t n);
/// y[i] += alpha · x[i] over n fp32 values (AVX2: FMA). Attention's Σ p_j · v_j in the packed runtime.
void axpy_f32(float* y, float alpha, const float* x, int64_t n);

/// SwiGLU's gating (Shazeer 2020, arXiv:2002.05202): up[i] = silu(gate[i]) · up[i] = gate[i] / (1 + e^−gate[i]) ·
/// up[i] over n fp32 values, in place. AVX2 path: e^x by range reduction x = k·ln2 + r (Cody–Waite, two-part ln2)
/// and a degree-6 polynomial for e^r (Cephes expf's), scaled by 2^k through the exponent bits; −gate is clamped to
/// [−87.3, 88.3] (beyond it silu is 0 or the identity to fp32 precision). Within 4 ulp (tests: 2e-7 relative plus
/// 1e-30 absolute) of the std::exp formula, which the scalar path uses. Elements split across `threads` (<= 0: all).
void silu_mul_f32(const float* gate, float* up, int64_t n, int threads = 1);

}  // namespace bitforge::kernels
