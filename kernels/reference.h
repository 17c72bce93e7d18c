// Plain-LibTorch references for the bitforge ops, written as directly from the formulas in
// kernels/bitlinear_ops.h as possible (dense tensors, no fusion). Used only by tests and benchmarks.
#pragma once

#include <ATen/ATen.h>

#include <tuple>

namespace bitforge::ref {

/// Broadcasts a [S_r, S_c] scale to [out, in].
at::Tensor expand_groups(const at::Tensor& scale, int64_t out, int64_t in);
/// Dense anchor mask [out, in] bool from sorted flat indices.
at::Tensor anchor_mask(const at::Tensor& anchor_index, int64_t out, int64_t in);

at::Tensor quantize_weight(const at::Tensor& weight, const at::Tensor& scale, const at::Tensor& center /*or undefined*/,
                           const at::Tensor& anchor_index, int64_t quantizer, double lambda);
std::tuple<at::Tensor, at::Tensor> quantize_weight_backward(const at::Tensor& grad, const at::Tensor& weight,
                                                            const at::Tensor& scale, const at::Tensor& center,
                                                            const at::Tensor& anchor_index, int64_t quantizer,
                                                            int64_t ste, double ste_clip, double lambda,
                                                            double scale_grad_factor);
/// BitNet b1.58 reference activation quantization (microsoft/unilm bitnet FAQ `activation_quant`).
at::Tensor quantize_activation_per_token(const at::Tensor& x, int64_t bits);

}  // namespace bitforge::ref
