#include "kernels/reference.h"

namespace bitforge::ref {

at::Tensor expand_groups(const at::Tensor& scale, int64_t out, int64_t in) {
  const int64_t gsz = in / scale.size(1);
  return scale.repeat_interleave(gsz, 1).expand({out, in});
}

at::Tensor anchor_mask(const at::Tensor& anchor_index, int64_t out, int64_t in) {
  auto m = at::zeros({out * in}, anchor_index.options().dtype(at::kBool));
  if (anchor_index.numel() > 0) m.index_fill_(0, anchor_index, true);
  return m.view({out, in});
}

namespace {
at::Tensor normalized(const at::Tensor& w, const at::Tensor& scale, const at::Tensor& center) {
  const int64_t out = w.size(0), in = w.size(1);
  auto mu = center.defined() ? expand_groups(center, out, in) : at::zeros_like(w);
  return (w - mu) / expand_groups(scale, out, in);
}
at::Tensor code_of(const at::Tensor& u, int64_t quantizer) {
  if (quantizer == 1) return at::where(u >= 0, at::ones_like(u), -at::ones_like(u));
  return at::clamp(at::round(u), -1, 1) + 0.0;  // -0 → +0, as the kernel and the packed format do
}
}  // namespace

at::Tensor quantize_weight(const at::Tensor& weight, const at::Tensor& scale, const at::Tensor& center,
                           const at::Tensor& anchor_index, int64_t quantizer, double lambda) {
  const int64_t out = weight.size(0), in = weight.size(1);
  auto u = normalized(weight, scale, center);
  auto q = expand_groups(scale, out, in) * code_of(u, quantizer);
  if (lambda != 1.0) q = weight + lambda * (q - weight);
  return at::where(anchor_mask(anchor_index, out, in), weight, q);
}

std::tuple<at::Tensor, at::Tensor> quantize_weight_backward(const at::Tensor& grad, const at::Tensor& weight,
                                                            const at::Tensor& scale, const at::Tensor& center,
                                                            const at::Tensor& anchor_index, int64_t quantizer,
                                                            int64_t ste, double ste_clip, double lambda,
                                                            double scale_grad_factor) {
  const int64_t out = weight.size(0), in = weight.size(1);
  auto u = normalized(weight, scale, center);
  auto code = code_of(u, quantizer);
  at::Tensor d;
  switch (ste) {
    case 1: d = (u.abs() <= ste_clip).to(at::kFloat); break;
    case 2: d = at::where(u.abs() < 1, 2 - 2 * u.abs(), at::zeros_like(u)); break;
    case 3: d = 1.001 - at::tanh(u).pow(2); break;
    default: d = at::ones_like(u);
  }
  auto mask = anchor_mask(anchor_index, out, in);
  auto gw = at::where(mask, grad, grad * (lambda * d + (1.0 - lambda)));
  at::Tensor dq = quantizer == 1 ? code : at::where(u.abs() <= 1, code - u, code);
  auto contrib = at::where(mask, at::zeros_like(grad), grad * dq);
  const int64_t sr = scale.size(0), sc = scale.size(1);
  auto gs = contrib.view({out, sc, in / sc}).sum(2);
  if (sr == 1) gs = gs.sum(0, true);
  return {gw, gs * (lambda * scale_grad_factor)};
}

at::Tensor quantize_activation_per_token(const at::Tensor& x, int64_t bits) {
  const double qp = bits == 8 ? 127.0 : 7.0;
  auto s = qp / std::get<0>(x.abs().max(-1, true)).clamp_min(1e-5);
  return (x * s).round().clamp(-qp - 1, qp) / s;
}

}  // namespace bitforge::ref
