// BitLinear: a drop-in for torch::nn::Linear whose weight is binary (±α) or ternary ({-α, 0, +α}) with learned
// or absmean scales per tensor / output channel / group of input columns, a small fraction of full-precision
// anchor weights, and straight-through-estimator (STE) gradients.
//
//   y = x · W_effᵀ + b,   x [*, in] float, W [out, in] fp32 master weight, y [*, out]
//   W_eff = W                       where the anchor mask is set
//         = α_g · Q(W)              elsewhere (Q = sign, sign(0) = +1, or absmean round-clip to {-1,0,+1})
//   with quantization warm-up λ:  W_eff = W + λ · (W_eff − W).detach()-style interpolation (research.md §1)
//
// Sources: BitNet b1 (arXiv 2310.11453) binary with mean-centering; BitNet b1.58 (arXiv 2402.17764) ternary
// absmean and int8 per-token absmax activations; LSQ (Esser et al. 2019) learned-scale gradient; Bi-Real
// (ApproxSign), OneBit/IR-Net (tanh) STE variants; PB-LLM / AWQ saliency |w_ij|·‖x_j‖₂ for anchors.
//
// With quant.weight = none the module is an ordinary Linear (same parameter names), which is how the
// full-precision teacher is built.
#pragma once

#include <torch/torch.h>

#include "config/config.h"

namespace bitforge {

class BitLinearImpl : public torch::nn::Module {
 public:
  /// Throws std::invalid_argument if group_size does not divide in_features (granularity group),
  /// anchor_fraction is outside [0, 0.5], or features are not positive.
  BitLinearImpl(int64_t in_features, int64_t out_features, bool bias, const QuantConfig& quant);

  /// x: [*, in_features], float32 (or bf16 under autocast). Returns [*, out_features].
  /// Throws c10::Error on a wrong last dimension.
  torch::Tensor forward(const torch::Tensor& x);

  /// The single definition of the weight the forward pass uses, checkpoints store and the exporter packs:
  /// [out, in] float32, carries gradients to weight (STE) and scale (LSQ) when they require grad.
  torch::Tensor effective_weight() const;

  /// Per-group scale α as used by the forward pass: [out, n_groups] float32 (tensor: [1,1], channel: [out,1]),
  /// already rounded to fp16-representable values so the packed export is lossless.
  torch::Tensor scales() const;

  /// Integer codes Q(W) in {-1, +1} (binary) or {-1, 0, +1} (ternary): [out, in] int8. Anchors hold 0.
  torch::Tensor codes() const;

  /// Re-selects anchors by |w| (magnitude) or |w_ij|·‖x_j‖₂ (saliency, needs observe_activations first).
  void select_anchors();
  /// Accumulates ‖x_j‖₂² over calibration activations x [*, in] for saliency selection.
  void observe_activations(const torch::Tensor& x);
  /// While on, every forward() also calls observe_activations() on its input (calibration batches).
  void set_calibrating(bool on) { calibrating_ = on; }
  /// Called once per optimizer step; re-selects anchors on the configured schedule, sets λ.
  void on_step(int64_t step);
  /// Restores the step-dependent state (λ) after resuming at `step`, without re-selecting anchors (their
  /// selection is part of the checkpoint).
  void restore_step(int64_t step);
  /// Quantization warm-up λ in [0, 1]; 1 = fully quantized.
  void set_lambda(double lambda) { lambda_ = lambda; }
  double lambda() const { return lambda_; }
  /// Re-initialises a learned scale from absmean of the current weight (after loading teacher weights).
  void reset_scale_from_weight();

  const QuantConfig& quant() const { return quant_; }
  int64_t in_features() const { return in_features_; }
  int64_t out_features() const { return out_features_; }
  int64_t num_groups() const;
  int64_t group_size() const;  ///< effective group size along in_features (in_features for tensor/channel)

  torch::Tensor weight;        ///< parameter [out, in] fp32 master weight
  torch::Tensor bias;          ///< parameter [out] or undefined
  torch::Tensor scale;         ///< parameter (learned) or buffer (absmean) [out or 1, n_groups or 1] fp32
  torch::Tensor anchor_index;  ///< buffer [n_anchors] int64, flat indices row*in + col, sorted
  torch::Tensor norm_weight;   ///< parameter [in] when quant.input_norm, else undefined

 private:
  torch::Tensor center_() const;  ///< per-group mean for mean-centering (detached), or undefined
  torch::Tensor alpha_() const;   ///< α used by the forward: learned parameter or absmean, fp16-rounded (STE)
  torch::Tensor absmean_scale_() const;  ///< mean |W − μ| per scale group, ≥ 1e-5 (no gradient)

  int64_t in_features_, out_features_;
  QuantConfig quant_;
  double lambda_ = 1.0;
  torch::Tensor act_sq_sum_;  ///< [in] accumulated ‖x_j‖² for saliency
  bool saw_activations_ = false;
  bool calibrating_ = false;
};
TORCH_MODULE(BitLinear);

}  // namespace bitforge
