// CUDA implementations of the BitLinear ops (schemas in kernels/registration.cpp, contract in bitlinear_ops.h).
// Same scalar math as the CPU path (kernels/bitlinear_common.h), all launches on the current stream, no host
// synchronisation inside an op (anchor validation is the caller's: the CPU op and BitLinear check them).
//
//   quantize_weight: one thread per weight (grid-stride), then a scatter kernel for the anchors (~0.1 %).
//   backward:        one block per (row, group) for per-group/channel scales: grad_w elementwise and a block
//                    reduction of the LSQ term into grad_scale; per-tensor scales reduce per row, then sum.
//   activation quant: one block per token: absmax reduction, then quantize.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "kernels/bitlinear_common.h"

namespace bitforge::ops {
namespace {

using detail::check_weight_args;
using detail::lsq_scale_grad;
using detail::quantize_code;
using detail::ste_grad;

constexpr int kThreads = 256;

__global__ void quantize_weight_kernel(const float* __restrict__ w, const float* __restrict__ scale,
                                       const float* __restrict__ center, int64_t sr, int64_t sc, int64_t out,
                                       int64_t in, int64_t quantizer, float lambda, float* __restrict__ y) {
  const int64_t n = out * in, gsz = in / sc;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    const int64_t r = i / in, c = i - r * in;
    const int64_t s = (sr == 1 ? 0 : r) * sc + c / gsz;
    const float a = scale[s], mu = center ? center[s] : 0.f;
    const float q = a * quantize_code((w[i] - mu) / a, quantizer);
    y[i] = lambda == 1.f ? q : w[i] + lambda * (q - w[i]);
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

/// grid: (n_groups_per_row, out). Each block owns one (row, group) and writes its partial scale gradient.
__global__ void quantize_weight_backward_kernel(const float* __restrict__ g, const float* __restrict__ w,
                                                const float* __restrict__ scale, const float* __restrict__ center,
                                                const uint8_t* __restrict__ anchor, int64_t sr, int64_t sc,
                                                int64_t in, int64_t quantizer, int64_t ste, float clip, float lambda,
                                                float keep, float* __restrict__ gw, float* __restrict__ gs_partial) {
  const int64_t r = blockIdx.y, grp = blockIdx.x, gsz = in / sc;
  const int64_t s = (sr == 1 ? 0 : r) * sc + grp;
  const float a = scale[s], mu = center ? center[s] : 0.f;
  float acc = 0.f;
  for (int64_t c = grp * gsz + threadIdx.x; c < (grp + 1) * gsz; c += blockDim.x) {
    const int64_t i = r * in + c;
    if (anchor && anchor[i]) {
      gw[i] = g[i];
      continue;
    }
    const float u = (w[i] - mu) / a;
    const float code = quantize_code(u, quantizer);
    gw[i] = g[i] * (lambda * ste_grad(u, ste, clip) + keep);
    acc += g[i] * lsq_scale_grad(u, code, quantizer);
  }
  acc = block_sum<kThreads>(acc);
  if (threadIdx.x == 0) gs_partial[r * sc + grp] = acc;
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
    const float q = fminf(fmaxf(detail::round_half_even_small(xr[c] * s), -qp - 1.f), qp);
    yr[c] = q / s;
  }
}

int blocks_for(int64_t n) { return static_cast<int>(std::min<int64_t>((n + kThreads - 1) / kThreads, 65535 * 8)); }

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
  const int64_t n = w.numel();
  if (n > 0)
    quantize_weight_kernel<<<blocks_for(n), kThreads, 0, stream>>>(w.data_ptr<float>(), s.data_ptr<float>(), cp, sr,
                                                                   sc, w.size(0), w.size(1), quantizer,
                                                                   static_cast<float>(lambda), y.data_ptr<float>());
  if (a.numel() > 0)
    scatter_anchors_kernel<<<blocks_for(a.numel()), kThreads, 0, stream>>>(w.data_ptr<float>(),
                                                                           a.data_ptr<int64_t>(), a.numel(),
                                                                           y.data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return y;
}

std::tuple<at::Tensor, at::Tensor> quantize_weight_backward_cuda(
    const at::Tensor& grad, const at::Tensor& weight, const at::Tensor& scale,
    const c10::optional<at::Tensor>& center, const at::Tensor& anchor_index, int64_t quantizer, int64_t ste,
    double ste_clip, double lambda, double scale_grad_factor) {
  auto [sr, sc] = check_weight_args(weight, scale, center, anchor_index, quantizer);
  TORCH_CHECK(grad.sizes() == weight.sizes() && grad.scalar_type() == at::kFloat,
              "bitforge: grad must match weight ", weight.sizes(), " float32");
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
  auto gsp = at::empty({out, sc}, w.options());
  if (out > 0) {
    dim3 grid(static_cast<unsigned>(sc), static_cast<unsigned>(out));
    quantize_weight_backward_kernel<<<grid, kThreads, 0, stream>>>(
        g.data_ptr<float>(), w.data_ptr<float>(), s.data_ptr<float>(), cp,
        mask.defined() ? mask.data_ptr<uint8_t>() : nullptr, sr, sc, in, quantizer, ste,
        static_cast<float>(ste_clip), static_cast<float>(lambda), static_cast<float>(1.0 - lambda),
        gw.data_ptr<float>(), gsp.data_ptr<float>());
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
    codes_kernel<<<blocks_for(w.numel()), kThreads, 0, stream>>>(w.data_ptr<float>(), s.data_ptr<float>(), cp, sr,
                                                                 sc, w.size(0), w.size(1), quantizer,
                                                                 q.data_ptr<int8_t>());
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
