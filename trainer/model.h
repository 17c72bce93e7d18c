// The decoder: a Llama / Qwen3-family transformer whose projections are BitLinear (trainer/bitlinear.h).
//
//   tokens [B,T] ─▶ embed_tokens ─▶ L × { h += o_proj(attn(input_layernorm(h)));
//                                         h += down_proj(mlp(post_attention_layernorm(h))) } ─▶ norm ─▶ lm_head
//
// Conventions follow Hugging Face `LlamaForCausalLM` / `Qwen3ForCausalLM` (transformers 5.x) exactly, so that
// a HF checkpoint loads by name and gives the same logits (tests/trainer_hf_test.cpp checks ≤ 1e-4 in fp32):
//   - RMSNorm: y = w ⊙ x / sqrt(mean(x²) + eps), computed in fp32 (LlamaRMSNorm).
//   - RoPE: rotate-half convention (GPT-NeoX layout, HF `rotate_half`), inv_freq_i = θ^(−2i/d), i < d/2,
//     applied to the full head_dim; no rope scaling.
//   - attention: grouped-query (num_key_value_heads divides num_attention_heads), causal, softmax scale
//     1/sqrt(head_dim), through torch::scaled_dot_product_attention (enable_gqa, no K/V copies).
//   - Qwen3 (arch "qwen3"): per-head RMSNorm over head_dim on q and k, after the projection and before RoPE.
//   - MLP: SwiGLU down(silu(gate x) ⊙ up x); `relu2` (BitNet b1.58 2B4T): down(relu(up x)²), no gate_proj.
//   - SubLN (BitNet 2B4T `gpu/model.py`, BitDistill stage 1): an extra RMSNorm on the attention output before
//     o_proj (`self_attn.sub_norm`) and on the MLP inner activation before down_proj (`mlp.sub_norm`).
//
// Parameter names (named_parameters()) are the HF names:
//   model.embed_tokens.weight                         [V, H]
//   model.layers.{i}.input_layernorm.weight           [H]
//   model.layers.{i}.self_attn.q_proj.weight          [heads·head_dim, H]   (+ .bias when attention_bias)
//   model.layers.{i}.self_attn.k_proj.weight          [kv_heads·head_dim, H] (+ .bias)
//   model.layers.{i}.self_attn.v_proj.weight          [kv_heads·head_dim, H] (+ .bias)
//   model.layers.{i}.self_attn.o_proj.weight          [H, heads·head_dim]   (+ .bias)
//   model.layers.{i}.self_attn.{q,k}_norm.weight      [head_dim]            (qwen3 only)
//   model.layers.{i}.self_attn.sub_norm.weight        [heads·head_dim]      (subln only; not a HF name)
//   model.layers.{i}.post_attention_layernorm.weight  [H]
//   model.layers.{i}.mlp.gate_proj.weight             [I, H]                (swiglu only)
//   model.layers.{i}.mlp.up_proj.weight               [I, H]
//   model.layers.{i}.mlp.down_proj.weight             [H, I]
//   model.layers.{i}.mlp.sub_norm.weight              [I]                   (subln only; not a HF name)
//   model.norm.weight                                 [H]
//   lm_head.weight                                    [V, H]                (absent when tie_word_embeddings)
// BitLinear adds its quantizer state beside a quantized projection's weight (`…q_proj.weight_scale`,
// `…q_proj.anchor_index`, `…q_proj.input_norm_weight`, as trainer/bitlinear.cpp names them); hf_parameters()
// lists only the HF-named tensors above (a BitLinear's `weight` and `bias`, every norm, the embedding).
//
// Which projections are quantized: q/k/v/o when quant.quantizes("attention"), gate/up/down for "mlp",
// lm_head for "lm_head", the token embedding for "embedding" (then embed_tokens is a BitLinear(H → V) whose
// effective_weight() [V, H] is the embedding table). A projection that is not quantized is a BitLinear built
// from a copy of the QuantConfig with weight = none, activations = none, input_norm = false, anchors 0 and
// per-tensor granularity, i.e. an ordinary Linear with the same parameter names.
// With tie_word_embeddings the head multiplies by the embedding table (quantized only if the embedding is).
//
// Initialisation (GPT-2 / HF `initializer_range` = 0.02): every projection and the embedding ~ N(0, 0.02²),
// biases 0, every RMSNorm weight 1. Quantized layers then re-derive scales/anchors from the new weight
// (reset_quantizer_state()).
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "trainer/bitlinear.h"
#include "config/config.h"

namespace bitforge {

/// RMSNorm (Zhang & Sennrich 2019) exactly as LlamaRMSNorm: fp32 statistics, result cast back to the input
/// dtype, then scaled by `weight` [dim] (init ones). x: [*, dim] → [*, dim].
class RMSNormImpl : public torch::nn::Module {
 public:
  RMSNormImpl(int64_t dim, double eps);
  torch::Tensor forward(const torch::Tensor& x);
  torch::Tensor weight;  ///< parameter [dim] fp32
  double eps() const { return eps_; }

 private:
  int64_t dim_;
  double eps_;
};
TORCH_MODULE(RMSNorm);

/// Self-attention block (`model.layers.{i}.self_attn`).
class AttentionImpl : public torch::nn::Module {
 public:
  AttentionImpl(const ModelConfig& cfg, const QuantConfig& quant);
  /// x [B,T,H]; cos/sin [T, head_dim] in x's compute dtype. Returns [B,T,H]. When `qkv` is given, it receives
  /// the q/k/v projection outputs split into heads, [B, heads or kv_heads, T, head_dim], BEFORE the Qwen3
  /// q/k norm and before RoPE (MiniLM-v2 / BitDistill take the projections' outputs).
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin,
                        std::vector<torch::Tensor>* qkv = nullptr);

  BitLinear q_proj{nullptr}, k_proj{nullptr}, v_proj{nullptr}, o_proj{nullptr};
  RMSNorm q_norm{nullptr}, k_norm{nullptr};  ///< qwen3 only
  RMSNorm sub_norm{nullptr};                 ///< subln only

 private:
  int64_t heads_, kv_heads_, head_dim_;
};
TORCH_MODULE(Attention);

/// Feed-forward block (`model.layers.{i}.mlp`): SwiGLU or squared ReLU.
class MlpImpl : public torch::nn::Module {
 public:
  MlpImpl(const ModelConfig& cfg, const QuantConfig& quant);
  torch::Tensor forward(const torch::Tensor& x);  ///< [*, H] → [*, H]

  BitLinear gate_proj{nullptr}, up_proj{nullptr}, down_proj{nullptr};  ///< gate_proj null for relu2
  RMSNorm sub_norm{nullptr};                                           ///< subln only

 private:
  MlpActivation act_;
};
TORCH_MODULE(Mlp);

/// One pre-norm decoder layer (`model.layers.{i}`).
class DecoderLayerImpl : public torch::nn::Module {
 public:
  DecoderLayerImpl(const ModelConfig& cfg, const QuantConfig& quant);
  torch::Tensor forward(const torch::Tensor& h, const torch::Tensor& cos, const torch::Tensor& sin,
                        std::vector<torch::Tensor>* qkv = nullptr);

  RMSNorm input_layernorm{nullptr};
  Attention self_attn{nullptr};
  RMSNorm post_attention_layernorm{nullptr};
  Mlp mlp{nullptr};
};
TORCH_MODULE(DecoderLayer);

/// What forward_with() should return besides the logits.
struct ForwardRequest {
  bool logits = true;  ///< false skips the LM head (e.g. hidden-state-only distillation)
  /// Layers whose output hidden states to return: index i ∈ [0, L) is the residual stream after decoder layer
  /// i (before the final norm; HF `hidden_states[i+1]`); negative counts from the end (−1 = last layer).
  std::vector<int64_t> hidden_layers;
  /// Layer whose Q, K, V projection states to return (same indexing; −1 = last); nullopt = none.
  std::optional<int64_t> qkv_layer;
};

struct ModelOutputs {
  torch::Tensor logits;               ///< [B,T,V] fp32 (undefined when request.logits is false)
  std::vector<torch::Tensor> hidden;  ///< one [B,T,H] per request.hidden_layers entry, in request order
  torch::Tensor q, k, v;              ///< [B,heads,T,head_dim], [B,kv_heads,T,head_dim] ×2; before q/k norm
                                      ///< and RoPE; undefined unless request.qkv_layer is set
};

/// The whole causal LM (HF `…ForCausalLM`). Registers `model` (embed_tokens, layers, norm) and `lm_head`.
class TransformerImpl : public torch::nn::Module {
 public:
  /// Throws std::invalid_argument on an inconsistent shape (vocab_size ≤ 0, kv heads not dividing heads,
  /// odd head_dim, arch other than llama|qwen3, …). BitLinear may throw std::invalid_argument too (group size).
  TransformerImpl(const ModelConfig& cfg, const QuantConfig& quant);

  /// tokens [B,T] int64 with 0 ≤ id < vocab_size and T ≤ max_position_embeddings → logits [B,T,V] fp32.
  /// Throws c10::Error on a wrong dtype/rank/length.
  torch::Tensor forward(const torch::Tensor& tokens);
  /// Logits plus the intermediate states a distillation loss needs (see ForwardRequest). Throws
  /// std::out_of_range on a layer index outside [−L, L).
  ModelOutputs forward_with(const torch::Tensor& tokens, const ForwardRequest& request);

  /// Every BitLinear with its module path (`model.layers.0.self_attn.q_proj`, …, `lm_head`,
  /// `model.embed_tokens` when the embedding is quantized), including the full-precision ones
  /// (check quant().enabled()). Order: embedding, layers in order (q,k,v,o,gate,up,down), lm_head.
  std::vector<std::pair<std::string, BitLinear>> named_bit_linears() const;
  std::vector<BitLinear> bit_linears() const;

  /// The HF-named tensors (see the header comment) in named_parameters() order: what a HF checkpoint holds.
  /// BitLinear quantizer state (scale, anchor_index, norm_weight) is left out.
  std::vector<std::pair<std::string, torch::Tensor>> hf_parameters() const;

  /// Number of scalars in parameters() (tied embedding counted once; learned BitLinear scales included).
  int64_t num_parameters() const;

  /// The embedding table [V,H] as the forward pass uses it (effective_weight() of a quantized embedding).
  torch::Tensor embedding_table() const;
  /// The LM head weight [V,H] as stored: the embedding's `weight` parameter itself when tied.
  torch::Tensor lm_head_weight() const;

  /// After weights changed outside training (init, checkpoint load): each quantized BitLinear re-derives its
  /// learned scale from absmean and, with magnitude anchors, re-selects anchors.
  void reset_quantizer_state();

  const ModelConfig& config() const { return cfg_; }
  const QuantConfig& quant() const { return quant_; }
  bool tied() const { return cfg_.tie_word_embeddings; }

  // Submodules, registered under HF names ("model.embed_tokens" etc.).
  torch::nn::Embedding embed_tokens{nullptr};  ///< when the embedding is not quantized
  BitLinear embed_tokens_q{nullptr};           ///< when quant.quantizes("embedding")
  torch::nn::ModuleList layers{nullptr};       ///< DecoderLayer × num_hidden_layers
  RMSNorm norm{nullptr};
  BitLinear lm_head{nullptr};  ///< null when tied

 private:
  /// cos/sin [T, head_dim] on `device` in `dtype`, sliced from the fp32 tables; cached per device/dtype
  /// (not registered as buffers, so the state dict holds exactly the HF tensors).
  std::pair<torch::Tensor, torch::Tensor> rope(int64_t T, const torch::Device& device, torch::ScalarType dtype);
  int64_t resolve_layer(int64_t index) const;

  ModelConfig cfg_;
  QuantConfig quant_;
  std::shared_ptr<torch::nn::Module> decoder_;  ///< the `model` container (embed_tokens, layers, norm)
  torch::Tensor rope_cos_, rope_sin_;           ///< [max_position_embeddings, head_dim] fp32 (CPU master)
  torch::Tensor cached_cos_, cached_sin_;
};
TORCH_MODULE(Transformer);

/// The QuantConfig a projection of `part` ("attention", "mlp", "lm_head", "embedding") is built with:
/// `quant` itself when quant.quantizes(part), else the full-precision copy described in the header comment.
QuantConfig quant_for(const QuantConfig& quant, const std::string& part);

}  // namespace bitforge
