// Model hyperparameters ("hparams", as ggml keeps them apart from run settings): the decoder's shape (ModelConfig)
// and what its BitLinear layers do (QuantConfig). This is what a trained model carries with it — checkpoints,
// packed files and GGUF record it — so every layer that reads a model (export/, trainer/, runtime/) includes this
// header and nothing of the run settings. The YAML sections `model:` and `quant:` map onto these structs in
// config/config.cpp, which also holds their ranges (validate()).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "kernels/quant_types.h"

namespace bitforge {

// ----------------------------------------------------------------------------------------------------------
// model: the decoder's shape (hparams). Llama/Qwen3 family.
// ----------------------------------------------------------------------------------------------------------
enum class MlpActivation { swiglu, relu2 };  // relu2 = squared ReLU (BitNet b1.58 2B4T)

struct ModelConfig {
  std::string arch = "llama";            ///< llama | qwen3 (qwen3 = per-head RMSNorm on q and k)
  int64_t vocab_size = 0;                ///< 0 = take it from the tokenizer
  int64_t hidden_size = 256;             ///< d_model
  int64_t intermediate_size = 768;       ///< MLP width
  int64_t num_hidden_layers = 4;
  int64_t num_attention_heads = 4;
  int64_t num_key_value_heads = 4;       ///< GQA: must divide num_attention_heads
  int64_t head_dim = 0;                  ///< 0 = hidden_size / num_attention_heads
  int64_t max_position_embeddings = 256; ///< context length
  double rope_theta = 10000.0;
  double rms_norm_eps = 1e-6;
  bool tie_word_embeddings = true;
  MlpActivation hidden_act = MlpActivation::swiglu;
  bool subln = false;                    ///< extra RMSNorm before o_proj and down_proj (BitNet 2B4T / BitDistill)
  bool attention_bias = false;

  int64_t resolved_head_dim() const { return head_dim > 0 ? head_dim : hidden_size / num_attention_heads; }
};

// ----------------------------------------------------------------------------------------------------------
// quant: what BitLinear does (trainer/bitlinear.h); WeightQuantizer, ScaleGranularity, SteKind: kernels/quant_types.h. `weight: none` gives the full-precision model.
// ----------------------------------------------------------------------------------------------------------
enum class ScaleMode { learned, absmean };
enum class ActivationQuant { none, int8, int4 };
enum class AnchorSelection { magnitude, saliency };

struct QuantConfig {
  WeightQuantizer weight = WeightQuantizer::binary;
  bool mean_center = false;                       ///< BitNet b1: sign(W - mean(W))
  ScaleGranularity granularity = ScaleGranularity::group;
  int64_t group_size = 128;                       ///< along in_features; 128 = GGUF Q1_0 block
  ScaleMode scale_mode = ScaleMode::learned;
  bool lsq_grad_scale = false;                    ///< multiply scale grad by 1/sqrt(N*Qp) (LSQ, Esser et al. 2019)
  bool fp16_scales = true;                        ///< round α to fp16 in the forward (STE) so export is lossless
  SteKind ste = SteKind::identity;
  double ste_clip = 1.0;                          ///< clipped STE passes where |w| <= ste_clip * alpha
  ActivationQuant activations = ActivationQuant::none;
  bool input_norm = false;                        ///< RMSNorm inside BitLinear before activation quantization
  double norm_eps = 1e-6;                         ///< epsilon of that RMSNorm
  double anchor_fraction = 0.001;                 ///< fraction of each layer's weights kept full precision
  AnchorSelection anchor_selection = AnchorSelection::magnitude;
  int64_t anchor_update_steps = 100;              ///< re-select anchors every N steps ...
  int64_t anchor_freeze_step = 1000;              ///< ... until this step, then keep them fixed
  int64_t warmup_lambda_steps = 0;                ///< λ = min(step / N, 1); 0 = fully quantized from step 0
  /// Which projections are BitLinear: any of attention, mlp, lm_head, embedding.
  std::vector<std::string> layers = {"attention", "mlp"};

  bool enabled() const { return weight != WeightQuantizer::none; }
  bool quantizes(const std::string& part) const;
};

}  // namespace bitforge
