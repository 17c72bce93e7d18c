// The one place the bitforge op schemas are declared (their Autograd and Meta kernels: autograd.cpp), and the C++ entry points that call them through the
// dispatcher (so a CUDA tensor reaches the CUDA implementation and a CPU tensor the CPU one).
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include "kernels/bitlinear_ops.h"

TORCH_LIBRARY(bitforge, m) {
  m.def("bitlinear_quantize_weight(Tensor weight, Tensor scale, Tensor? center, Tensor anchor_index, "
        "int quantizer, float warmup_lambda) -> Tensor");
  m.def("bitlinear_quantize_weight_backward(Tensor grad, Tensor weight, Tensor scale, Tensor? center, "
        "Tensor anchor_index, int quantizer, int ste, float ste_clip, float warmup_lambda, float scale_grad_factor) "
        "-> (Tensor, Tensor)");
  m.def("bitlinear_codes(Tensor weight, Tensor scale, Tensor? center, Tensor anchor_index, int quantizer) -> Tensor");
  m.def("quantize_activation_per_token(Tensor x, int bits) -> Tensor");
  // The differentiable weight op (autograd.cpp): W_eff forward, STE/LSQ backward with these settings.
  m.def("bitlinear_weight(Tensor weight, Tensor scale, Tensor? center, Tensor anchor_index, int quantizer, "
        "float warmup_lambda=1., int ste=0, float ste_clip=1., float scale_grad_factor=1.) -> Tensor");
}

namespace bitforge::ops {

namespace {
template <typename Sig>
auto op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Sig>();
}
}  // namespace

at::Tensor bitlinear_quantize_weight(const at::Tensor& weight, const at::Tensor& scale,
                                     const c10::optional<at::Tensor>& center, const at::Tensor& anchor_index,
                                     int64_t quantizer, double lambda) {
  static auto h = op<at::Tensor(const at::Tensor&, const at::Tensor&, const c10::optional<at::Tensor>&,
                                const at::Tensor&, int64_t, double)>("bitforge::bitlinear_quantize_weight");
  return h.call(weight, scale, center, anchor_index, quantizer, lambda);
}

std::tuple<at::Tensor, at::Tensor> bitlinear_quantize_weight_backward(
    const at::Tensor& grad, const at::Tensor& weight, const at::Tensor& scale,
    const c10::optional<at::Tensor>& center, const at::Tensor& anchor_index, int64_t quantizer, int64_t ste,
    double ste_clip, double lambda, double scale_grad_factor) {
  static auto h = op<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                        const c10::optional<at::Tensor>&, const at::Tensor&,
                                                        int64_t, int64_t, double, double, double)>(
      "bitforge::bitlinear_quantize_weight_backward");
  return h.call(grad, weight, scale, center, anchor_index, quantizer, ste, ste_clip, lambda, scale_grad_factor);
}

at::Tensor bitlinear_codes(const at::Tensor& weight, const at::Tensor& scale, const c10::optional<at::Tensor>& center,
                           const at::Tensor& anchor_index, int64_t quantizer) {
  static auto h = op<at::Tensor(const at::Tensor&, const at::Tensor&, const c10::optional<at::Tensor>&,
                                const at::Tensor&, int64_t)>("bitforge::bitlinear_codes");
  return h.call(weight, scale, center, anchor_index, quantizer);
}

at::Tensor quantize_activation_per_token(const at::Tensor& x, int64_t bits) {
  static auto h = op<at::Tensor(const at::Tensor&, int64_t)>("bitforge::quantize_activation_per_token");
  return h.call(x, bits);
}

bool cuda_kernels_compiled() {
#ifdef BITFORGE_WITH_CUDA
  return true;
#else
  return false;
#endif
}

}  // namespace bitforge::ops
