// CUDA implementations of the BitLinear ops (schemas in kernels/registration.cpp, contract in bitlinear_ops.h).
// Same scalar math as the CPU path (kernels/bitlinear_common.h), all launches on the current stream, no host
// synchronisation inside an op (anchor validation is the caller's: the CPU op and BitLinear check them).
//
//   quantize_weight: one thread per 4 weights (float4, grid-stride, 32-bit index math), then a scatter kernel
//                    for the anchors (~0.1 %).
//   backward:        one warp per (row, group, chunk of ≤ 1024 columns): grad_w elementwise on float4 and a warp
//                    reduction of the LSQ term into a partial per chunk, summed over chunks (and rows for a
//                    per-tensor scale) afterwards. Anchors through a byte mask.
//   Both fall back to one thread per weight (forward) / one block per (row, group) (backward) when the width or
//   the group width is no multiple of 4, a pointer is not 16-byte aligned, or the sizes need 64-bit indices.
//   activation quant: one block per token: absmax reduction, then quantize.
//
// Bit-exactness with the CPU ops: nvcc contracts a*b + c into one fma by default (the CPU build, plain x86-64
// without -mfma, rounds twice), which changed the λ < 1 forward, the STE backward factor λ·ste' + (1 − λ) and the
// activation rounding x·s + 1.5·2^23. Those products use __fmul_rn/__fadd_rn, which are never contracted.
// ste = tanh stays within a few ulp only (device tanhf vs glibc tanhf); the scale gradient is a reduction in
// another order (tolerance in tests/kernels_bitlinear_cuda_test.cpp).
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <limits>

#include "kernels/bitlinear_common.h"

namespace bitforge::ops {
namespace {

using detail::check_weight_args;
using detail::lsq_scale_grad;
using detail::quantize_code;
using detail::ste_grad;

constexpr int kThreads = 256;
constexpr uint32_t kChunkVecs = 256;  // backward: float4 vectors per warp task (1024 columns, 8 per lane)

/// W_eff of one non-anchor weight (the forward's whole arithmetic, shared by both forward kernels).
__device__ __forceinline__ float quantize_one(float w, float a, float mu, int64_t quantizer, float lambda) {
  const float q = __fmul_rn(a, quantize_code((w - mu) / a, quantizer));
  return lambda == 1.f ? q : __fadd_rn(w, __fmul_rn(lambda, q - w));
}

/// grad_w of one weight into *gw; returns its LSQ term for the scale gradient (0 for an anchor).
__device__ __forceinline__ float backward_one(float g, float w, bool anchor, float a, float mu, int64_t quantizer,
                                              int64_t ste, float clip, float lambda, float keep, float* gw) {
  if (anchor) {
    *gw = g;
    return 0.f;
  }
  const float u = (w - mu) / a;
  const float code = quantize_code(u, quantizer);
  *gw = g * __fadd_rn(__fmul_rn(lambda, ste_grad(u, ste, clip)), keep);
  return g * lsq_scale_grad(u, code, quantizer);
}

__global__ void quantize_weight_kernel(const float* __restrict__ w, const float* __restrict__ scale,
                                       const float* __restrict__ center, int64_t sr, int64_t sc, int64_t out,
                                       int64_t in, int64_t quantizer, float lambda, float* __restrict__ y) {
  const int64_t n = out * in, gsz = in / sc;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    const int64_t r = i / in, c = i - r * in;
    const int64_t s = (sr == 1 ? 0 : r) * sc + c / gsz;
    y[i] = quantize_one(w[i], scale[s], center ? center[s] : 0.f, quantizer, lambda);
  }
}

/// Four weights per thread; in4 = in/4, gsz4 = group width/4, n4 = out·in/4 < 2^31 (so the 32-bit grid stride
/// cannot wrap). The four weights of a vector share one scale because the group width is a multiple of 4.
__global__ void quantize_weight_vec4_kernel(const float4* __restrict__ w, const float* __restrict__ scale,
                                            const float* __restrict__ center, bool per_row, uint32_t sc, uint32_t in4,
                                            uint32_t gsz4, uint32_t n4, int64_t quantizer, float lambda,
                                            float4* __restrict__ y) {
  for (uint32_t i = blockIdx.x * blockDim.x + threadIdx.x; i < n4; i += blockDim.x * gridDim.x) {
    const uint32_t r = i / in4, c4 = i - r * in4;
    const uint32_t s = (per_row ? r * sc : 0) + (sc == 1 ? 0 : c4 / gsz4);
    const float a = scale[s], mu = center ? center[s] : 0.f;
    const float4 v = w[i];
    y[i] = make_float4(quantize_one(v.x, a, mu, quantizer, lambda), quantize_one(v.y, a, mu, quantizer, lambda),
                       quantize_one(v.z, a, mu, quantizer, lambda), quantize_one(v.w, a, mu, quantizer, lambda));
  }
}

__global__ void scatter_anchors_kernel(const float* __restrict__ w, const int64_t* __restrict__ idx, int64_t n,
                                       float* __restrict__ y) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i < n) y[idx[i]] = w[idx[i]];
}

__global__ void anchor_mark_kernel(const int64_t* __restrict__ idx, int64_t n, uint8_t* __restrict__ mask) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i < n) mask[idx[i]] = 1;
}

template <int Threads>
__device__ float block_sum(float v) {
  __shared__ float warp_sums[Threads / 32];
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  if ((threadIdx.x & 31) == 0) warp_sums[threadIdx.x >> 5] = v;
  __syncthreads();
  v = threadIdx.x < Threads / 32 ? warp_sums[threadIdx.x] : 0.f;
  if (threadIdx.x < 32)
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  return v;  // valid in thread 0
}

/// 1-D grid of out·sc blocks (gridDim.y would cap rows at 65535: a vocabulary-sized lm_head has more). Each
/// block owns one (row, group) and writes its partial scale gradient.
__global__ void quantize_weight_backward_kernel(const float* __restrict__ g, const float* __restrict__ w,
                                                const float* __restrict__ scale, const float* __restrict__ center,
                                                const uint8_t* __restrict__ anchor, int64_t sr, int64_t sc, int64_t in,
                                                int64_t quantizer, int64_t ste, float clip, float lambda, float keep,
                                                float* __restrict__ gw, float* __restrict__ gs_partial) {
  const int64_t r = blockIdx.x / sc, grp = blockIdx.x - r * sc, gsz = in / sc;
  const int64_t s = (sr == 1 ? 0 : r) * sc + grp;
  const float a = scale[s], mu = center ? center[s] : 0.f;
  float acc = 0.f;
  for (int64_t c = grp * gsz + threadIdx.x; c < (grp + 1) * gsz; c += blockDim.x) {
    const int64_t i = r * in + c;
    acc += backward_one(g[i], w[i], anchor && anchor[i], a, mu, quantizer, ste, clip, lambda, keep, &gw[i]);
  }
  acc = block_sum<kThreads>(acc);
  if (threadIdx.x == 0) gs_partial[r * sc + grp] = acc;
}

/// One warp per task = (row r, group grp, chunk ch) with task = (r·sc + grp)·nchunks + ch; the chunk covers
/// float4 vectors [ch·kChunkVecs, min((ch+1)·kChunkVecs, gsz4)) of the group. Writes its partial LSQ sum to
/// gs_partial[task]. Requires tasks·32 < 2^32 and n/4 < 2^32.
__global__ void quantize_weight_backward_vec4_kernel(const float4* __restrict__ g, const float4* __restrict__ w,
                                                     const float* __restrict__ scale, const float* __restrict__ center,
                                                     const uchar4* __restrict__ anchor, bool per_row, uint32_t sc,
                                                     uint32_t in4, uint32_t gsz4, uint32_t nchunks, uint32_t tasks,
                                                     int64_t quantizer, int64_t ste, float clip, float lambda,
                                                     float keep, float4* __restrict__ gw,
                                                     float* __restrict__ gs_partial) {
  const uint32_t task = (blockIdx.x * blockDim.x + threadIdx.x) >> 5, lane = threadIdx.x & 31;
  if (task >= tasks) return;  // uniform across the warp
  const uint32_t rg = task / nchunks, ch = task - rg * nchunks;
  const uint32_t r = rg / sc, grp = rg - r * sc;
  const uint32_t s = (per_row ? r * sc : 0) + grp;
  const float a = scale[s], mu = center ? center[s] : 0.f;
  const uint32_t base = r * in4 + grp * gsz4;
  const uint32_t end = min((ch + 1) * kChunkVecs, gsz4);
  float acc = 0.f;
  for (uint32_t k = ch * kChunkVecs + lane; k < end; k += 32) {
    const uint32_t i = base + k;
    const float4 gv = g[i], wv = w[i];
    const uchar4 m = anchor ? anchor[i] : make_uchar4(0, 0, 0, 0);
    float4 o;
    acc += backward_one(gv.x, wv.x, m.x, a, mu, quantizer, ste, clip, lambda, keep, &o.x);
    acc += backward_one(gv.y, wv.y, m.y, a, mu, quantizer, ste, clip, lambda, keep, &o.y);
    acc += backward_one(gv.z, wv.z, m.z, a, mu, quantizer, ste, clip, lambda, keep, &o.z);
    acc += backward_one(gv.w, wv.w, m.w, a, mu, quantizer, ste, clip, lambda, keep, &o.w);
    gw[i] = o;
  }
  for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
  if (lane == 0) gs_partial[task] = acc;
}

__global__ void codes_kernel(const float* __restrict__ w, const float* __restrict__ scale,
                             const float* __restrict__ center, int64_t sr, int64_t sc, int64_t out, int64_t in,
                             int64_t quantizer, int8_t* __restrict__ q) {
  const int64_t n = out * in, gsz = in / sc;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    const int64_t r = i / in, c = i - r * in;
    const int64_t s = (sr == 1 ? 0 : r) * sc + c / gsz;
    q[i] = static_cast<int8_t>(quantize_code((w[i] - (center ? center[s] : 0.f)) / scale[s], quantizer));
  }
}

__global__ void zero_anchor_codes_kernel(const int64_t* __restrict__ idx, int64_t n, int8_t* __restrict__ q) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i < n) q[idx[i]] = 0;
}

/// One block per token row: absmax, then x̂ = clamp(round(x·s), −Qp−1, Qp)/s with s = Qp / max(|x|, 1e-5).
__global__ void quantize_activation_kernel(const float* __restrict__ x, int64_t in, float qp, float* __restrict__ y) {
  const float* xr = x + blockIdx.x * in;
  float* yr = y + blockIdx.x * in;
  float m = 0.f;
  for (int64_t c = threadIdx.x; c < in; c += blockDim.x) m = fmaxf(m, fabsf(xr[c]));
  __shared__ float warp_max[kThreads / 32];
  for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_down_sync(0xffffffffu, m, o));
  if ((threadIdx.x & 31) == 0) warp_max[threadIdx.x >> 5] = m;
  __syncthreads();
  __shared__ float row_max;
  if (threadIdx.x < 32) {
    float v = threadIdx.x < kThreads / 32 ? warp_max[threadIdx.x] : 0.f;
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_down_sync(0xffffffffu, v, o));
    if (threadIdx.x == 0) row_max = v;
  }
  __syncthreads();
  const float s = qp / fmaxf(row_max, 1e-5f);
  for (int64_t c = threadIdx.x; c < in; c += blockDim.x) {
    const float q = fminf(fmaxf(detail::round_half_even_small(__fmul_rn(xr[c], s)), -qp - 1.f), qp);
    yr[c] = q / s;
  }
}

int blocks_for(int64_t n) { return static_cast<int>(std::min<int64_t>((n + kThreads - 1) / kThreads, 65535 * 8)); }

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

/// Whether the float4 kernels apply: widths divisible by 4 (so a vector never straddles a row or a group),
/// 16-byte aligned data, and 32-bit indices with room for the grid stride.
bool vec4_ok(int64_t n, int64_t in, int64_t sc, std::initializer_list<const void*> ptrs) {
  if (in % 4 != 0 || (in / sc) % 4 != 0 || n / 4 >= (int64_t{1} << 31) - int64_t{65535} * 8 * kThreads) return false;
  for (const void* p : ptrs)
    if (!aligned16(p)) return false;
  return true;
}

const float* center_ptr(const c10::optional<at::Tensor>& c, c10::optional<at::Tensor>& keep) {
  if (!c.has_value() || !c->defined()) return nullptr;
  keep = c->contiguous();
  return keep->data_ptr<float>();
}

at::Tensor quantize_weight_cuda(const at::Tensor& weight, const at::Tensor& scale,
                                const c10::optional<at::Tensor>& center, const at::Tensor& anchor_index,
                                int64_t quantizer, double lambda) {
  auto [sr, sc] = check_weight_args(weight, scale, center, anchor_index, quantizer);
  TORCH_CHECK(lambda >= 0.0 && lambda <= 1.0, "bitforge: lambda must be in [0, 1], got ", lambda);
  const c10::cuda::CUDAGuard guard(weight.device());
  auto w = weight.contiguous();
  auto s = scale.contiguous();
  auto a = anchor_index.contiguous();
  c10::optional<at::Tensor> mu;
  const float* cp = center_ptr(center, mu);
  auto y = at::empty_like(w);
  auto stream = at::cuda::getCurrentCUDAStream();
  const int64_t n = w.numel(), in = w.size(1);
  if (n > 0 && vec4_ok(n, in, sc, {w.data_ptr<float>(), y.data_ptr<float>()}))
    quantize_weight_vec4_kernel<<<blocks_for(n / 4), kThreads, 0, stream>>>(
        reinterpret_cast<const float4*>(w.data_ptr<float>()), s.data_ptr<float>(), cp, sr != 1,
        static_cast<uint32_t>(sc), static_cast<uint32_t>(in / 4), static_cast<uint32_t>(in / sc / 4),
        static_cast<uint32_t>(n / 4), quantizer, static_cast<float>(lambda),
        reinterpret_cast<float4*>(y.data_ptr<float>()));
  else if (n > 0)
    quantize_weight_kernel<<<blocks_for(n), kThreads, 0, stream>>>(w.data_ptr<float>(), s.data_ptr<float>(), cp, sr, sc,
                                                                   w.size(0), in, quantizer, static_cast<float>(lambda),
                                                                   y.data_ptr<float>());
  if (a.numel() > 0)
    scatter_anchors_kernel<<<blocks_for(a.numel()), kThreads, 0, stream>>>(w.data_ptr<float>(), a.data_ptr<int64_t>(),
                                                                           a.numel(), y.data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return y;
}

std::tuple<at::Tensor, at::Tensor> quantize_weight_backward_cuda(const at::Tensor& grad, const at::Tensor& weight,
                                                                 const at::Tensor& scale,
                                                                 const c10::optional<at::Tensor>& center,
                                                                 const at::Tensor& anchor_index, int64_t quantizer,
                                                                 int64_t ste, double ste_clip, double lambda,
                                                                 double scale_grad_factor) {
  auto [sr, sc] = check_weight_args(weight, scale, center, anchor_index, quantizer);
  TORCH_CHECK(grad.sizes() == weight.sizes() && grad.scalar_type() == at::kFloat, "bitforge: grad must match weight ",
              weight.sizes(), " float32");
  TORCH_CHECK(ste >= 0 && ste <= 3, "bitforge: unknown STE kind ", ste);
  const c10::cuda::CUDAGuard guard(weight.device());
  auto g = grad.contiguous();
  auto w = weight.contiguous();
  auto s = scale.contiguous();
  auto a = anchor_index.contiguous();
  c10::optional<at::Tensor> mu;
  const float* cp = center_ptr(center, mu);
  const int64_t out = w.size(0), in = w.size(1);
  auto stream = at::cuda::getCurrentCUDAStream();
  at::Tensor mask;
  if (a.numel() > 0) {
    mask = at::zeros({out * in}, w.options().dtype(at::kByte));
    anchor_mark_kernel<<<blocks_for(a.numel()), kThreads, 0, stream>>>(a.data_ptr<int64_t>(), a.numel(),
                                                                       mask.data_ptr<uint8_t>());
  }
  auto gw = at::empty_like(w);
  const float clip = static_cast<float>(ste_clip), lam = static_cast<float>(lambda);
  const float keep = static_cast<float>(1.0 - lambda);  // rounded once, as the CPU op does
  const uint8_t* mp = mask.defined() ? mask.data_ptr<uint8_t>() : nullptr;
  const int64_t gsz4 = in / sc / 4, nchunks = std::max<int64_t>(1, (gsz4 + kChunkVecs - 1) / kChunkVecs);
  const int64_t tasks = out * sc * nchunks;
  at::Tensor gsp;  // [out, sc] partial LSQ sums per row and group
  if (out > 0 && tasks < (int64_t{1} << 26) &&
      vec4_ok(out * in, in, sc, {g.data_ptr<float>(), w.data_ptr<float>(), gw.data_ptr<float>()})) {
    auto part = at::empty({out, sc, nchunks}, w.options());
    quantize_weight_backward_vec4_kernel<<<static_cast<unsigned>((tasks * 32 + kThreads - 1) / kThreads), kThreads, 0,
                                           stream>>>(
        reinterpret_cast<const float4*>(g.data_ptr<float>()), reinterpret_cast<const float4*>(w.data_ptr<float>()),
        s.data_ptr<float>(), cp, reinterpret_cast<const uchar4*>(mp), sr != 1, static_cast<uint32_t>(sc),
        static_cast<uint32_t>(in / 4), static_cast<uint32_t>(gsz4), static_cast<uint32_t>(nchunks),
        static_cast<uint32_t>(tasks), quantizer, ste, clip, lam, keep, reinterpret_cast<float4*>(gw.data_ptr<float>()),
        part.data_ptr<float>());
    gsp = nchunks == 1 ? part.view({out, sc}) : part.sum(2);
  } else {
    gsp = at::empty({out, sc}, w.options());
    if (out > 0) {
      TORCH_CHECK(out * sc <= std::numeric_limits<int32_t>::max(), "bitforge: too many scale groups (", out * sc, ")");
      quantize_weight_backward_kernel<<<static_cast<unsigned>(out * sc), kThreads, 0, stream>>>(
          g.data_ptr<float>(), w.data_ptr<float>(), s.data_ptr<float>(), cp, mp, sr, sc, in, quantizer, ste, clip, lam,
          keep, gw.data_ptr<float>(), gsp.data_ptr<float>());
    }
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  at::Tensor gs = sr == 1 ? gsp.sum(0, true) : gsp;
  gs.mul_(lambda * scale_grad_factor);
  return {gw, gs};
}

at::Tensor codes_cuda(const at::Tensor& weight, const at::Tensor& scale, const c10::optional<at::Tensor>& center,
                      const at::Tensor& anchor_index, int64_t quantizer) {
  auto [sr, sc] = check_weight_args(weight, scale, center, anchor_index, quantizer);
  const c10::cuda::CUDAGuard guard(weight.device());
  auto w = weight.contiguous();
  auto s = scale.contiguous();
  auto a = anchor_index.contiguous();
  c10::optional<at::Tensor> mu;
  const float* cp = center_ptr(center, mu);
  auto q = at::empty(w.sizes(), w.options().dtype(at::kChar));
  auto stream = at::cuda::getCurrentCUDAStream();
  if (w.numel() > 0)
    codes_kernel<<<blocks_for(w.numel()), kThreads, 0, stream>>>(w.data_ptr<float>(), s.data_ptr<float>(), cp, sr, sc,
                                                                 w.size(0), w.size(1), quantizer, q.data_ptr<int8_t>());
  if (a.numel() > 0)
    zero_anchor_codes_kernel<<<blocks_for(a.numel()), kThreads, 0, stream>>>(a.data_ptr<int64_t>(), a.numel(),
                                                                             q.data_ptr<int8_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return q;
}

at::Tensor quantize_activation_cuda(const at::Tensor& x, int64_t bits) {
  const auto dims = detail::check_activation_args(x, bits);
  const int64_t rows = dims.first, in = dims.second;
  const c10::cuda::CUDAGuard guard(x.device());
  auto xc = x.contiguous();
  auto y = at::empty_like(xc);
  if (rows > 0)
    quantize_activation_kernel<<<static_cast<unsigned>(rows), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        xc.data_ptr<float>(), in, bits == 8 ? 127.f : 7.f, y.data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return y;
}

}  // namespace

TORCH_LIBRARY_IMPL(bitforge, CUDA, m) {
  m.impl("bitlinear_quantize_weight", &quantize_weight_cuda);
  m.impl("bitlinear_quantize_weight_backward", &quantize_weight_backward_cuda);
  m.impl("bitlinear_codes", &codes_cuda);
  m.impl("quantize_activation_per_token", &quantize_activation_cuda);
}

}  // namespace bitforge::ops
