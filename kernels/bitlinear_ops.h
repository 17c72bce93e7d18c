// BitLinear compute ops. Schemas are registered once under TORCH_LIBRARY(bitforge, m) (kernels/registration.cpp);
// CPU implementations live in kernels/bitlinear_cpu.cpp, CUDA ones in kernels/cuda/*.cu, and plain-LibTorch
// references (used only by tests) in kernels/reference.h. From Python:
//   torch.ops.load_library("libbitforge_kernels.so"); torch.ops.bitforge.bitlinear_quantize_weight(...)
//
// Conventions shared by the weight ops
//   weight  [out, in] float32, contiguous — the full-precision master weight W.
//   scale   [S_r, S_c] float32 with S_r ∈ {1, out} and S_c dividing in: the scale α of row r and column c is
//           scale[S_r == 1 ? 0 : r][c / (in / S_c)]. [1,1] = per tensor, [out,1] = per output channel,
//           [out, in/g] = per group of g input columns.
//   center  optional, same shape as scale: μ subtracted before quantizing (BitNet b1 mean-centering).
//   anchor_index [n] int64, sorted ascending, unique, flat indices r*in + c of weights kept full precision.
//   quantizer 1 = binary: Q(u) = sign(u) with sign(0) = +1;  2 = ternary: Q(u) = clamp(round(u), -1, 1)
//           with round half to even, identical to torch.round (BitNet b1.58 absmean round-clip).
//   u = (W − μ) / α.  W_eff = α·Q(u) on non-anchors, W on anchors; with warm-up λ < 1:
//   W_eff = W + λ·(α·Q(u) − W) on non-anchors (HF "Fine-tuning LLMs to 1.58bit" warm-up).
#pragma once

#include <ATen/ATen.h>

#include <tuple>

#include "kernels/quant_types.h"

namespace bitforge::ops {

/// STE kinds (SteKind, kernels/quant_types.h; the `ste` argument is its integer value), applied to the normalised variable u = (W − μ)/α; dW_eff/dW (non-anchor, λ = 1) is:
///   identity:    1
///   clipped:     1 if |u| ≤ clip else 0               (Larq SteSign, Bi-Real weights)
///   approx_sign: 2 − 2|u| for |u| < 1, else 0          (Bi-Real Net ApproxSign, Liu et al. 2018)
///   tanh:        1.001 − tanh²(u)                      (OneBit / IR-Net style smooth surrogate)

/// Fused forward: quantize + scale + anchor scatter (+ warm-up interpolation) in one pass, parallel over rows.
/// Returns W_eff [out, in] float32. Throws c10::Error (TORCH_CHECK) on wrong dtype/shape/device, anchors out of
/// range, or a non-finite scale.
at::Tensor bitlinear_quantize_weight(const at::Tensor& weight, const at::Tensor& scale,
                                     const c10::optional<at::Tensor>& center, const at::Tensor& anchor_index,
                                     int64_t quantizer, double lambda);

/// Fused STE backward of bitlinear_quantize_weight. grad: dL/dW_eff [out, in] float32.
/// Returns (grad_weight [out, in], grad_scale [S_r, S_c]):
///   non-anchor: dL/dW = grad·(λ·ste'(u) + (1 − λ));  anchor: dL/dW = grad (ordinary dense gradient)
///   dL/dα = scale_grad_factor · λ · Σ_{non-anchor in α's group} grad · ∂(α·Q(u))/∂α, with the LSQ
///   (Esser et al. 2019, eq. 3) derivative ∂/∂α = Q(u) − u·1[|u| ≤ 1] for ternary (Qn = Qp = 1) and
///   ∂/∂α = sign(u) for binary. scale_grad_factor = 1/sqrt(N·Qp) for LSQ gradient scaling, 1 otherwise.
std::tuple<at::Tensor, at::Tensor> bitlinear_quantize_weight_backward(
    const at::Tensor& grad, const at::Tensor& weight, const at::Tensor& scale,
    const c10::optional<at::Tensor>& center, const at::Tensor& anchor_index, int64_t quantizer, int64_t ste,
    double ste_clip, double lambda, double scale_grad_factor);

/// The differentiable BitLinear weight: forward = bitlinear_quantize_weight (W_eff [out, in] float32); backward (its
/// Autograd kernel, kernels/autograd.cpp) = bitlinear_quantize_weight_backward with this `ste` (SteKind value),
/// `ste_clip` and `scale_grad_factor`, giving dL/dW and dL/dα (μ gets no gradient). What the C++ BitLinear module
/// and the Python package (python/bitforge) both call, so their gradients are one definition. Also traceable
/// (Meta kernels): torch.compile, torch.library.opcheck. Throws c10::Error like bitlinear_quantize_weight.
at::Tensor bitlinear_weight(const at::Tensor& weight, const at::Tensor& scale, const c10::optional<at::Tensor>& center,
                            const at::Tensor& anchor_index, int64_t quantizer, double lambda = 1.0,
                            int64_t ste = 0, double ste_clip = 1.0, double scale_grad_factor = 1.0);

/// Per-token absmax fake quantization (BitNet b1.58): s = Qp / max(|x|, 1e-5) over the last dim,
/// x̂ = clamp(round(x·s), −Qp−1, Qp) / s with Qp = 127 (bits = 8) or 7 (bits = 4). x: [*, in] float32.
/// An all-zero row maps to zeros. Differentiable: backward is the identity STE (Autograd kernel, autograd.cpp).
at::Tensor quantize_activation_per_token(const at::Tensor& x, int64_t bits);

/// Integer codes Q(u) [out, in] int8 (anchors hold 0). Used by the exporter; same rules as the forward.
at::Tensor bitlinear_codes(const at::Tensor& weight, const at::Tensor& scale, const c10::optional<at::Tensor>& center,
                           const at::Tensor& anchor_index, int64_t quantizer);

/// True when the CUDA implementations were compiled in (BITFORGE_WITH_CUDA) — not whether a GPU is present.
bool cuda_kernels_compiled();

}  // namespace bitforge::ops
