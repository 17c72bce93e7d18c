#include "trainer/bitlinear.h"

#include <cmath>
#include <stdexcept>

#include "kernels/bitlinear_ops.h"

namespace bitforge {
namespace {

/// Rounds to the nearest fp16-representable float with an identity gradient.
torch::Tensor round_fp16_ste(const torch::Tensor& a) {
  return a + (a.detach().to(torch::kHalf).to(torch::kFloat) - a.detach());
}

int64_t quantizer_id(WeightQuantizer q) { return q == WeightQuantizer::binary ? 1 : 2; }

}  // namespace

BitLinearImpl::BitLinearImpl(int64_t in_features, int64_t out_features, bool with_bias, const QuantConfig& quant)
    : in_features_(in_features), out_features_(out_features), quant_(quant) {
  if (in_features <= 0 || out_features <= 0)
    throw std::invalid_argument("BitLinear: in_features and out_features must be positive, got " +
                                std::to_string(in_features) + "x" + std::to_string(out_features));
  if (quant.anchor_fraction < 0.0 || quant.anchor_fraction > 0.5 || std::isnan(quant.anchor_fraction))
    throw std::invalid_argument("BitLinear: anchor_fraction must be in [0, 0.5], got " +
                                std::to_string(quant.anchor_fraction));
  if (quant.enabled() && quant.granularity == ScaleGranularity::group &&
      (quant.group_size <= 0 || in_features % quant.group_size != 0))
    throw std::invalid_argument("BitLinear: group_size " + std::to_string(quant.group_size) +
                                " must divide in_features " + std::to_string(in_features));

  weight = register_parameter("weight", torch::empty({out_features, in_features}));
  const double bound = 1.0 / std::sqrt(static_cast<double>(in_features));
  torch::NoGradGuard ng;
  weight.uniform_(-bound, bound);  // torch.nn.Linear's default (kaiming_uniform with a = sqrt(5))
  if (with_bias) bias = register_parameter("bias", torch::zeros({out_features}));
  if (quant.input_norm) norm_weight = register_parameter("input_norm_weight", torch::ones({in_features}));
  if (!quant.enabled()) return;

  const int64_t sr = quant.granularity == ScaleGranularity::tensor ? 1 : out_features;
  const int64_t sc = quant.granularity == ScaleGranularity::group ? in_features / quant.group_size : 1;
  scale = torch::ones({sr, sc});
  if (quant.scale_mode == ScaleMode::learned)
    scale = register_parameter("weight_scale", scale);
  else
    scale = register_buffer("weight_scale", scale);
  anchor_index = register_buffer("anchor_index", torch::empty({0}, torch::kLong));
  act_sq_sum_ = torch::zeros({in_features});
  select_anchors();
  reset_scale_from_weight();
}

int64_t BitLinearImpl::num_groups() const { return scale.defined() ? scale.size(1) : 1; }
int64_t BitLinearImpl::group_size() const { return in_features_ / num_groups(); }

namespace {
/// Per-group statistic f over [out, in] viewed as the scale's groups: returns [S_r, S_c].
torch::Tensor group_reduce(const torch::Tensor& w, int64_t sr, int64_t sc, bool abs_mean) {
  const int64_t out = w.size(0), in = w.size(1);
  auto v = abs_mean ? w.abs() : w;
  auto g = v.view({out, sc, in / sc}).mean(2);  // [out, sc]
  if (sr == 1) g = g.mean(0, true);
  return g;
}
}  // namespace

torch::Tensor BitLinearImpl::center_() const {
  if (!quant_.mean_center) return torch::Tensor();
  return group_reduce(weight.detach(), scale.size(0), scale.size(1), false);
}

torch::Tensor BitLinearImpl::absmean_scale_() const {
  auto w = weight.detach();
  auto c = center_();
  if (c.defined()) w = w - c.repeat_interleave(in_features_ / c.size(1), 1).expand_as(w);
  return group_reduce(w, scale.size(0), scale.size(1), true).clamp_min(1e-5);
}

torch::Tensor BitLinearImpl::alpha_() const {
  torch::Tensor a;
  if (quant_.scale_mode == ScaleMode::learned) {
    a = scale;
  } else {
    torch::NoGradGuard ng;
    a = absmean_scale_();
    const_cast<torch::Tensor&>(scale).copy_(a);  // keep the buffer = what the forward used (checkpoint/export)
  }
  return quant_.fp16_scales ? round_fp16_ste(a) : a;
}

void BitLinearImpl::reset_scale_from_weight() {
  if (!quant_.enabled()) return;
  torch::NoGradGuard ng;
  scale.copy_(absmean_scale_());
}

torch::Tensor BitLinearImpl::effective_weight() const {
  if (!quant_.enabled()) return weight;
  const int64_t N = weight.numel() / scale.numel();
  const double factor = quant_.lsq_grad_scale ? 1.0 / std::sqrt(static_cast<double>(N) * 1.0) : 1.0;
  const int64_t ste = static_cast<int64_t>(quant_.ste);
  c10::optional<torch::Tensor> center;
  if (auto c = center_(); c.defined()) center = c;
  // One autograd definition (kernels/autograd.cpp), shared with the Python package.
  return ops::bitlinear_weight(weight, alpha_(), center, anchor_index, quantizer_id(quant_.weight), lambda_, ste,
                               quant_.ste_clip, factor);
}

torch::Tensor BitLinearImpl::scales() const {
  TORCH_CHECK(quant_.enabled(), "BitLinear.scales(): layer is not quantized");
  torch::NoGradGuard ng;
  return alpha_().detach().clone();
}

torch::Tensor BitLinearImpl::codes() const {
  TORCH_CHECK(quant_.enabled(), "BitLinear.codes(): layer is not quantized");
  torch::NoGradGuard ng;
  c10::optional<torch::Tensor> mu;
  auto c = center_();
  if (c.defined()) mu = c;
  return ops::bitlinear_codes(weight.detach().to(torch::kFloat), alpha_().detach(), mu, anchor_index,
                              quantizer_id(quant_.weight));
}

torch::Tensor BitLinearImpl::forward(const torch::Tensor& input) {
  TORCH_CHECK(input.dim() >= 1 && input.size(-1) == in_features_, "BitLinear: input last dimension must be ",
              in_features_, ", got shape ", input.sizes());
  if (calibrating_) observe_activations(input);
  auto x = input;
  if (norm_weight.defined()) {
    auto xf = x.to(torch::kFloat);
    x = xf * torch::rsqrt(xf.pow(2).mean(-1, true) + quant_.norm_eps) * norm_weight;
  }
  if (quant_.enabled() && quant_.activations != ActivationQuant::none)
    x = ops::quantize_activation_per_token(x.to(torch::kFloat).contiguous(),
                                           quant_.activations == ActivationQuant::int8 ? 8 : 4);
  return torch::nn::functional::linear(x, effective_weight(), bias);
}

void BitLinearImpl::observe_activations(const torch::Tensor& x) {
  torch::NoGradGuard ng;
  auto xf = x.detach().to(torch::kFloat).reshape({-1, in_features_});
  act_sq_sum_ = act_sq_sum_.to(xf.device()) + xf.pow(2).sum(0);
  saw_activations_ = true;
}

void BitLinearImpl::select_anchors() {
  if (!quant_.enabled()) return;
  torch::NoGradGuard ng;
  const int64_t n = static_cast<int64_t>(std::llround(quant_.anchor_fraction * static_cast<double>(weight.numel())));
  torch::Tensor idx = torch::empty({0}, torch::TensorOptions().dtype(torch::kLong).device(weight.device()));
  if (n > 0) {
    torch::Tensor score = weight.detach().abs();
    if (quant_.anchor_selection == AnchorSelection::saliency && saw_activations_)
      score = score * act_sq_sum_.to(score.device()).sqrt().unsqueeze(0);  // |w_ij|·‖x_j‖₂ (AWQ/PB-LLM)
    idx = std::get<0>(std::get<1>(score.flatten().topk(n, /*dim=*/0, /*largest=*/true, /*sorted=*/false)).sort());
  }
  // In place, so the registered buffer (checkpoints, .to(device)) is the same tensor.
  anchor_index.resize_({idx.numel()});
  anchor_index.copy_(idx);
}

void BitLinearImpl::restore_step(int64_t step) {
  if (quant_.enabled() && quant_.warmup_lambda_steps > 0)
    lambda_ = std::min(1.0, static_cast<double>(step) / static_cast<double>(quant_.warmup_lambda_steps));
}

void BitLinearImpl::on_step(int64_t step) {
  if (!quant_.enabled()) return;
  restore_step(step);
  if (quant_.anchor_fraction > 0 && step > 0 && step < quant_.anchor_freeze_step && quant_.anchor_update_steps > 0 &&
      step % quant_.anchor_update_steps == 0)
    select_anchors();
}

}  // namespace bitforge
