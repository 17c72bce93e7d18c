// Autograd and Meta (fake-tensor) kernels of the bitforge ops (schemas in registration.cpp), so that the ops are
// differentiable and traceable from C++ and from Python alike: `y.sum().backward()` fills `weight.grad` and
// `scale.grad`, torch.compile / AOTAutograd trace them on fake tensors, and torch.library.opcheck passes.
//
//   bitlinear_weight             Autograd: the STE / LSQ backward (bitlinear_quantize_weight_backward) with the STE
//                                kind, clip and scale-gradient factor given as arguments — the one autograd
//                                definition the C++ BitLinear module and the Python package both use.
//                                Backends: CompositeExplicitAutograd, i.e. bitlinear_quantize_weight on whatever
//                                backend (CPU, CUDA, Meta) the inputs live.
//   bitlinear_quantize_weight    Autograd: the same backward with the identity STE, λ as given, factor 1.
//   quantize_activation_per_token Autograd: identity STE (BitNet's x + (q(x) − x).detach()).
//   bitlinear_codes, bitlinear_quantize_weight_backward
//                                not differentiable (int8 codes; no double backward): their Autograd kernels run
//                                the op below autograd and return outputs that do not require grad.
// Meta kernels return empty tensors of the output shapes and dtypes without touching data (symbolic shapes work).
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include "kernels/bitlinear_ops.h"

namespace bitforge::ops {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

/// W_eff = α·Q((W − μ)/α) with anchors and warm-up λ; backward: the fused STE/LSQ kernel. μ (center) is treated as
/// a constant (no gradient), as in the C++ module, where it is a detached statistic of W.
struct BitLinearWeightFunction : public torch::autograd::Function<BitLinearWeightFunction> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& weight, const at::Tensor& scale,
                            const c10::optional<at::Tensor>& center, const at::Tensor& anchor_index, int64_t quantizer,
                            double lambda, int64_t ste, double ste_clip, double scale_grad_factor) {
    at::AutoDispatchBelowADInplaceOrView guard;
    at::Tensor y = bitlinear_quantize_weight(weight, scale, center, anchor_index, quantizer, lambda);
    ctx->save_for_backward({weight, scale, anchor_index, center.has_value() ? *center : at::Tensor()});
    ctx->saved_data["has_center"] = center.has_value();
    ctx->saved_data["quantizer"] = quantizer;
    ctx->saved_data["ste"] = ste;
    ctx->saved_data["clip"] = ste_clip;
    ctx->saved_data["lambda"] = lambda;
    ctx->saved_data["factor"] = scale_grad_factor;
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    c10::optional<at::Tensor> mu;
    if (ctx->saved_data["has_center"].toBool()) mu = saved[3];
    auto [gw, gs] = bitlinear_quantize_weight_backward(
        grads[0].to(at::kFloat).contiguous(), saved[0], saved[1], mu, saved[2], ctx->saved_data["quantizer"].toInt(),
        ctx->saved_data["ste"].toInt(), ctx->saved_data["clip"].toDouble(), ctx->saved_data["lambda"].toDouble(),
        ctx->saved_data["factor"].toDouble());
    return {gw, gs, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

/// Per-token absmax fake quantization with the identity STE.
struct ActivationQuantFunction : public torch::autograd::Function<ActivationQuantFunction> {
  static at::Tensor forward(AutogradContext*, const at::Tensor& x, int64_t bits) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return quantize_activation_per_token(x, bits);
  }
  static variable_list backward(AutogradContext*, variable_list grads) { return {grads[0], at::Tensor()}; }
};

at::Tensor bitlinear_weight_autograd(const at::Tensor& weight, const at::Tensor& scale,
                                     const c10::optional<at::Tensor>& center, const at::Tensor& anchor_index,
                                     int64_t quantizer, double lambda, int64_t ste, double ste_clip,
                                     double scale_grad_factor) {
  return BitLinearWeightFunction::apply(weight, scale, center, anchor_index, quantizer, lambda, ste, ste_clip,
                                        scale_grad_factor);
}

at::Tensor bitlinear_weight_backend(const at::Tensor& weight, const at::Tensor& scale,
                                    const c10::optional<at::Tensor>& center, const at::Tensor& anchor_index,
                                    int64_t quantizer, double lambda, int64_t, double, double) {
  return bitlinear_quantize_weight(weight, scale, center, anchor_index, quantizer, lambda);
}

at::Tensor quantize_weight_autograd(const at::Tensor& weight, const at::Tensor& scale,
                                    const c10::optional<at::Tensor>& center, const at::Tensor& anchor_index,
                                    int64_t quantizer, double lambda) {
  return BitLinearWeightFunction::apply(weight, scale, center, anchor_index, quantizer, lambda,
                                        static_cast<int64_t>(SteKind::identity), 1.0, 1.0);
}

at::Tensor quantize_activation_autograd(const at::Tensor& x, int64_t bits) {
  return ActivationQuantFunction::apply(x, bits);
}

// Non-differentiable ops: run below autograd, outputs carry no grad_fn.
at::Tensor codes_autograd(const at::Tensor& weight, const at::Tensor& scale, const c10::optional<at::Tensor>& center,
                          const at::Tensor& anchor_index, int64_t quantizer) {
  at::AutoDispatchBelowADInplaceOrView guard;
  return bitlinear_codes(weight, scale, center, anchor_index, quantizer);
}

std::tuple<at::Tensor, at::Tensor> quantize_weight_backward_autograd(
    const at::Tensor& grad, const at::Tensor& weight, const at::Tensor& scale,
    const c10::optional<at::Tensor>& center, const at::Tensor& anchor_index, int64_t quantizer, int64_t ste,
    double ste_clip, double lambda, double scale_grad_factor) {
  at::AutoDispatchBelowADInplaceOrView guard;
  return bitlinear_quantize_weight_backward(grad, weight, scale, center, anchor_index, quantizer, ste, ste_clip,
                                            lambda, scale_grad_factor);
}

// ---- Meta: shapes and dtypes only --------------------------------------------------------------------------------
void check_weight_meta(const at::Tensor& weight, const at::Tensor& scale) {
  TORCH_CHECK(weight.dim() == 2, "bitforge: weight must be 2-D [out, in], got ", weight.dim(), " dims");
  TORCH_CHECK(scale.dim() == 2, "bitforge: scale must be 2-D [S_r, S_c], got ", scale.dim(), " dims");
  TORCH_CHECK(weight.scalar_type() == at::kFloat && scale.scalar_type() == at::kFloat,
              "bitforge: weight and scale must be float32");
}

at::Tensor quantize_weight_meta(const at::Tensor& weight, const at::Tensor& scale, const c10::optional<at::Tensor>&,
                                const at::Tensor&, int64_t, double) {
  check_weight_meta(weight, scale);
  return at::empty_like(weight, at::MemoryFormat::Contiguous);
}

std::tuple<at::Tensor, at::Tensor> quantize_weight_backward_meta(const at::Tensor& grad, const at::Tensor& weight,
                                                                 const at::Tensor& scale,
                                                                 const c10::optional<at::Tensor>&, const at::Tensor&,
                                                                 int64_t, int64_t, double, double, double) {
  check_weight_meta(weight, scale);
  TORCH_CHECK(grad.dim() == 2, "bitforge: grad must be 2-D like the weight");
  return {at::empty_like(weight, at::MemoryFormat::Contiguous), at::empty_like(scale, at::MemoryFormat::Contiguous)};
}

at::Tensor codes_meta(const at::Tensor& weight, const at::Tensor& scale, const c10::optional<at::Tensor>&,
                      const at::Tensor&, int64_t) {
  check_weight_meta(weight, scale);
  return at::empty_like(weight, weight.options().dtype(at::kChar), at::MemoryFormat::Contiguous);
}

at::Tensor quantize_activation_meta(const at::Tensor& x, int64_t bits) {
  TORCH_CHECK(bits == 8 || bits == 4, "bitforge: activation bits must be 8 or 4, got ", bits);
  TORCH_CHECK(x.scalar_type() == at::kFloat, "bitforge: x must be float32");
  return at::empty_like(x, at::MemoryFormat::Contiguous);
}

}  // namespace

at::Tensor bitlinear_weight(const at::Tensor& weight, const at::Tensor& scale, const c10::optional<at::Tensor>& center,
                            const at::Tensor& anchor_index, int64_t quantizer, double lambda, int64_t ste,
                            double ste_clip, double scale_grad_factor) {
  static auto h = c10::Dispatcher::singleton()
                      .findSchemaOrThrow("bitforge::bitlinear_weight", "")
                      .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const c10::optional<at::Tensor>&,
                                        const at::Tensor&, int64_t, double, int64_t, double, double)>();
  return h.call(weight, scale, center, anchor_index, quantizer, lambda, ste, ste_clip, scale_grad_factor);
}

}  // namespace bitforge::ops

TORCH_LIBRARY_IMPL(bitforge, Autograd, m) {
  m.impl("bitlinear_weight", &bitforge::ops::bitlinear_weight_autograd);
  m.impl("bitlinear_quantize_weight", &bitforge::ops::quantize_weight_autograd);
  m.impl("quantize_activation_per_token", &bitforge::ops::quantize_activation_autograd);
  m.impl("bitlinear_codes", &bitforge::ops::codes_autograd);
  m.impl("bitlinear_quantize_weight_backward", &bitforge::ops::quantize_weight_backward_autograd);
}

TORCH_LIBRARY_IMPL(bitforge, CompositeExplicitAutograd, m) {
  m.impl("bitlinear_weight", &bitforge::ops::bitlinear_weight_backend);
}

TORCH_LIBRARY_IMPL(bitforge, Meta, m) {
  m.impl("bitlinear_quantize_weight", &bitforge::ops::quantize_weight_meta);
  m.impl("bitlinear_quantize_weight_backward", &bitforge::ops::quantize_weight_backward_meta);
  m.impl("bitlinear_codes", &bitforge::ops::codes_meta);
  m.impl("quantize_activation_per_token", &bitforge::ops::quantize_activation_meta);
}
