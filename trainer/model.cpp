// The Llama/Qwen3 decoder; conventions and sources in trainer/model.h.
#include "trainer/model.h"

#include <ATen/autocast_mode.h>

#include <cmath>
#include <set>
#include <stdexcept>

namespace bitforge {

namespace {

constexpr double kInitStd = 0.02;  // HF initializer_range default (GPT-2 init)

void init_linear(BitLinear& l) {
  torch::NoGradGuard no_grad;
  l->weight.normal_(0.0, kInitStd);
  if (l->bias.defined()) l->bias.zero_();
}

[[noreturn]] void bad_config(const std::string& what) { throw std::invalid_argument("model config: " + what); }

void validate_model_config(const ModelConfig& c) {
  if (c.arch != "llama" && c.arch != "qwen3") bad_config("arch '" + c.arch + "': expected llama or qwen3");
  if (c.vocab_size <= 0) bad_config("vocab_size must be positive (got " + std::to_string(c.vocab_size) + ")");
  if (c.hidden_size <= 0 || c.intermediate_size <= 0) bad_config("hidden_size and intermediate_size must be positive");
  if (c.num_hidden_layers < 0) bad_config("num_hidden_layers must be >= 0");
  if (c.num_attention_heads <= 0 || c.num_key_value_heads <= 0) bad_config("head counts must be positive");
  if (c.num_attention_heads % c.num_key_value_heads != 0)
    bad_config("num_key_value_heads (" + std::to_string(c.num_key_value_heads) + ") must divide num_attention_heads (" +
               std::to_string(c.num_attention_heads) + ")");
  const int64_t hd = c.resolved_head_dim();
  if (hd <= 0 || hd % 2 != 0)
    bad_config("head_dim must be positive and even for RoPE (got " + std::to_string(hd) + ")");
  if (c.head_dim <= 0 && c.hidden_size % c.num_attention_heads != 0)
    bad_config("hidden_size must be divisible by num_attention_heads when head_dim is 0");
  if (c.max_position_embeddings <= 0) bad_config("max_position_embeddings must be positive");
  if (!(c.rope_theta > 0.0)) bad_config("rope_theta must be positive");
  if (!(c.rms_norm_eps > 0.0)) bad_config("rms_norm_eps must be positive");
}

// HF rotate-half RoPE with the sign folded into the sin table (sin_signed = [-sin_lo, sin_hi]):
//   x·cos + rotate_half(x)·sin = x·cos + [x_hi, x_lo]·sin_signed,  rotate_half(x) = [-x_hi, x_lo].
torch::Tensor apply_rope(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin_signed) {
  const int64_t half = x.size(-1) / 2;
  auto swapped = torch::cat({x.narrow(-1, half, half), x.narrow(-1, 0, half)}, -1);
  return torch::addcmul(x * cos, swapped, sin_signed);
}

}  // namespace

QuantConfig quant_for(const QuantConfig& quant, const std::string& part) {
  if (quant.quantizes(part)) return quant;
  QuantConfig fp = quant;
  fp.weight = WeightQuantizer::none;
  fp.activations = ActivationQuant::none;
  fp.input_norm = false;
  fp.anchor_fraction = 0.0;
  fp.granularity = ScaleGranularity::tensor;
  fp.scale_mode = ScaleMode::absmean;
  fp.warmup_lambda_steps = 0;
  return fp;
}

// ---------------------------------------------------------------------------------------------------------
// RMSNorm
// ---------------------------------------------------------------------------------------------------------
RMSNormImpl::RMSNormImpl(int64_t dim, double eps) : dim_(dim), eps_(eps) {
  weight = register_parameter("weight", torch::ones({dim}));
}

torch::Tensor RMSNormImpl::forward(const torch::Tensor& x) {
  TORCH_CHECK(x.size(-1) == dim_, "RMSNorm: last dimension ", x.size(-1), ", expected ", dim_);
  // LlamaRMSNorm: statistics in fp32 (fp64 stays fp64, for gradient checks); the fp32 residual stream passes
  // through without a copy.
  const auto compute = x.scalar_type() == torch::kDouble ? torch::kDouble : torch::kFloat;
  auto y = at::rms_norm(x.to(compute), {dim_}, weight.to(compute), eps_);
  return y.to(x.scalar_type());
}

// ---------------------------------------------------------------------------------------------------------
// Attention
// ---------------------------------------------------------------------------------------------------------
AttentionImpl::AttentionImpl(const ModelConfig& cfg, const QuantConfig& quant)
    : heads_(cfg.num_attention_heads), kv_heads_(cfg.num_key_value_heads), head_dim_(cfg.resolved_head_dim()) {
  const QuantConfig q = quant_for(quant, "attention");
  const int64_t H = cfg.hidden_size;
  q_proj = register_module("q_proj", BitLinear(H, heads_ * head_dim_, cfg.attention_bias, q));
  k_proj = register_module("k_proj", BitLinear(H, kv_heads_ * head_dim_, cfg.attention_bias, q));
  v_proj = register_module("v_proj", BitLinear(H, kv_heads_ * head_dim_, cfg.attention_bias, q));
  o_proj = register_module("o_proj", BitLinear(heads_ * head_dim_, H, cfg.attention_bias, q));
  if (cfg.arch == "qwen3") {
    q_norm = register_module("q_norm", RMSNorm(head_dim_, cfg.rms_norm_eps));
    k_norm = register_module("k_norm", RMSNorm(head_dim_, cfg.rms_norm_eps));
  }
  if (cfg.subln) sub_norm = register_module("sub_norm", RMSNorm(heads_ * head_dim_, cfg.rms_norm_eps));
}

torch::Tensor AttentionImpl::forward(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin,
                                     std::vector<torch::Tensor>* qkv) {
  const int64_t B = x.size(0), T = x.size(1);
  auto q = q_proj(x).view({B, T, heads_, head_dim_});
  auto k = k_proj(x).view({B, T, kv_heads_, head_dim_});
  auto v = v_proj(x).view({B, T, kv_heads_, head_dim_}).transpose(1, 2);
  if (qkv) *qkv = {q.transpose(1, 2), k.transpose(1, 2), v};
  if (q_norm) {  // Qwen3: per-head RMSNorm over head_dim, before RoPE
    q = q_norm(q);
    k = k_norm(k);
  }
  q = apply_rope(q.transpose(1, 2), cos, sin);
  k = apply_rope(k.transpose(1, 2), cos, sin);
  if (v.scalar_type() != q.scalar_type()) v = v.to(q.scalar_type());
  auto o = at::scaled_dot_product_attention(q, k, v, /*attn_mask=*/{}, /*dropout_p=*/0.0, /*is_causal=*/true,
                                            /*scale=*/std::nullopt, /*enable_gqa=*/kv_heads_ != heads_);
  o = o.transpose(1, 2).reshape({B, T, heads_ * head_dim_});
  if (sub_norm) o = sub_norm(o);
  return o_proj(o);
}

// ---------------------------------------------------------------------------------------------------------
// MLP
// ---------------------------------------------------------------------------------------------------------
MlpImpl::MlpImpl(const ModelConfig& cfg, const QuantConfig& quant) : act_(cfg.hidden_act) {
  const QuantConfig q = quant_for(quant, "mlp");
  const int64_t H = cfg.hidden_size, I = cfg.intermediate_size;
  if (act_ == MlpActivation::swiglu) gate_proj = register_module("gate_proj", BitLinear(H, I, false, q));
  up_proj = register_module("up_proj", BitLinear(H, I, false, q));
  down_proj = register_module("down_proj", BitLinear(I, H, false, q));
  if (cfg.subln) sub_norm = register_module("sub_norm", RMSNorm(I, cfg.rms_norm_eps));
}

torch::Tensor MlpImpl::forward(const torch::Tensor& x) {
  torch::Tensor inner;
  if (act_ == MlpActivation::swiglu) {
    inner = torch::silu(gate_proj(x)) * up_proj(x);
  } else {
    inner = torch::relu(up_proj(x)).square();  // BitNet b1.58 2B4T squared ReLU
  }
  if (sub_norm) inner = sub_norm(inner);
  return down_proj(inner);
}

// ---------------------------------------------------------------------------------------------------------
// Decoder layer
// ---------------------------------------------------------------------------------------------------------
DecoderLayerImpl::DecoderLayerImpl(const ModelConfig& cfg, const QuantConfig& quant) {
  input_layernorm = register_module("input_layernorm", RMSNorm(cfg.hidden_size, cfg.rms_norm_eps));
  self_attn = register_module("self_attn", Attention(cfg, quant));
  post_attention_layernorm = register_module("post_attention_layernorm", RMSNorm(cfg.hidden_size, cfg.rms_norm_eps));
  mlp = register_module("mlp", Mlp(cfg, quant));
}

torch::Tensor DecoderLayerImpl::forward(const torch::Tensor& h, const torch::Tensor& cos, const torch::Tensor& sin,
                                        std::vector<torch::Tensor>* qkv) {
  auto x = h + self_attn(input_layernorm(h), cos, sin, qkv);
  return x + mlp(post_attention_layernorm(x));
}

// ---------------------------------------------------------------------------------------------------------
// Transformer
// ---------------------------------------------------------------------------------------------------------
TransformerImpl::TransformerImpl(const ModelConfig& cfg, const QuantConfig& quant) : cfg_(cfg), quant_(quant) {
  validate_model_config(cfg_);
  const int64_t V = cfg_.vocab_size, H = cfg_.hidden_size;

  decoder_ = register_module("model", std::make_shared<torch::nn::Module>());
  if (quant_.quantizes("embedding")) {
    // Quantized table [V, H] = effective_weight() of a BitLinear(H → V): groups run along the hidden dim,
    // as in a GGUF Q1_0 token_embd row.
    embed_tokens_q = decoder_->register_module("embed_tokens", BitLinear(H, V, false, quant_));
    init_linear(embed_tokens_q);
  } else {
    embed_tokens = decoder_->register_module("embed_tokens", torch::nn::Embedding(V, H));
    torch::NoGradGuard no_grad;
    embed_tokens->weight.normal_(0.0, kInitStd);
  }
  layers = decoder_->register_module("layers", torch::nn::ModuleList());
  for (int64_t i = 0; i < cfg_.num_hidden_layers; ++i) layers->push_back(DecoderLayer(cfg_, quant_));
  norm = decoder_->register_module("norm", RMSNorm(H, cfg_.rms_norm_eps));
  if (!cfg_.tie_word_embeddings) {
    lm_head = register_module("lm_head", BitLinear(H, V, false, quant_for(quant_, "lm_head")));
  }

  for (auto& [name, l] : named_bit_linears()) init_linear(l);
  reset_quantizer_state();

  // RoPE tables exactly as HF `_compute_default_rope_parameters` + LlamaRotaryEmbedding, in fp32.
  const int64_t hd = cfg_.resolved_head_dim(), half = hd / 2;
  auto exponent = torch::arange(0, hd, 2, torch::kInt64).to(torch::kFloat) / static_cast<double>(hd);
  auto inv_freq = 1.0 / torch::pow(cfg_.rope_theta, exponent);                              // [hd/2]
  auto pos = torch::arange(cfg_.max_position_embeddings, torch::kInt64).to(torch::kFloat);  // [P]
  auto freqs = torch::outer(pos, inv_freq);                                                 // [P, hd/2]
  auto emb = torch::cat({freqs, freqs}, -1);                                                // [P, hd]
  rope_cos_ = emb.cos().contiguous();
  auto sin = emb.sin();
  rope_sin_ = torch::cat({-sin.narrow(-1, 0, half), sin.narrow(-1, half, half)}, -1).contiguous();
}

std::vector<std::pair<std::string, BitLinear>> TransformerImpl::named_bit_linears() const {
  std::vector<std::pair<std::string, BitLinear>> out;
  if (embed_tokens_q) out.emplace_back("model.embed_tokens", embed_tokens_q);
  for (size_t i = 0; i < layers->size(); ++i) {
    const auto& layer = layers->at<DecoderLayerImpl>(i);
    const std::string p = "model.layers." + std::to_string(i) + ".";
    out.emplace_back(p + "self_attn.q_proj", layer.self_attn->q_proj);
    out.emplace_back(p + "self_attn.k_proj", layer.self_attn->k_proj);
    out.emplace_back(p + "self_attn.v_proj", layer.self_attn->v_proj);
    out.emplace_back(p + "self_attn.o_proj", layer.self_attn->o_proj);
    if (layer.mlp->gate_proj) out.emplace_back(p + "mlp.gate_proj", layer.mlp->gate_proj);
    out.emplace_back(p + "mlp.up_proj", layer.mlp->up_proj);
    out.emplace_back(p + "mlp.down_proj", layer.mlp->down_proj);
  }
  if (lm_head) out.emplace_back("lm_head", lm_head);
  return out;
}

std::vector<BitLinear> TransformerImpl::bit_linears() const {
  std::vector<BitLinear> out;
  for (auto& [name, l] : named_bit_linears()) out.push_back(l);
  return out;
}

std::vector<std::pair<std::string, torch::Tensor>> TransformerImpl::hf_parameters() const {
  std::set<std::string> bitlinear_paths;
  for (auto& [name, l] : named_bit_linears()) bitlinear_paths.insert(name);
  std::vector<std::pair<std::string, torch::Tensor>> out;
  for (const auto& item : named_parameters(/*recurse=*/true)) {
    const std::string& name = item.key();
    const auto dot = name.rfind('.');
    const std::string owner = dot == std::string::npos ? "" : name.substr(0, dot);
    const std::string leaf = dot == std::string::npos ? name : name.substr(dot + 1);
    if (bitlinear_paths.count(owner) && leaf != "weight" && leaf != "bias") continue;  // quantizer state
    out.emplace_back(name, item.value());
  }
  return out;
}

int64_t TransformerImpl::num_parameters() const {
  int64_t n = 0;
  for (const auto& p : parameters()) n += p.numel();
  return n;
}

torch::Tensor TransformerImpl::embedding_table() const {
  return embed_tokens_q ? embed_tokens_q->effective_weight() : embed_tokens->weight;
}

torch::Tensor TransformerImpl::lm_head_weight() const {
  if (lm_head) return lm_head->weight;
  return embed_tokens_q ? embed_tokens_q->weight : embed_tokens->weight;
}

void TransformerImpl::reset_quantizer_state() {
  for (auto& [name, l] : named_bit_linears()) {
    const QuantConfig& q = l->quant();
    if (!q.enabled()) continue;
    if (q.scale_mode == ScaleMode::learned) l->reset_scale_from_weight();
    if (q.anchor_fraction > 0.0 && q.anchor_selection == AnchorSelection::magnitude) l->select_anchors();
  }
}

int64_t TransformerImpl::resolve_layer(int64_t index) const {
  const int64_t L = cfg_.num_hidden_layers;
  if (index < -L || index >= L)
    throw std::out_of_range("layer index " + std::to_string(index) + " outside [" + std::to_string(-L) + ", " +
                            std::to_string(L) + ")");
  return index < 0 ? index + L : index;
}

std::pair<torch::Tensor, torch::Tensor> TransformerImpl::rope(int64_t T, const torch::Device& device,
                                                              torch::ScalarType dtype) {
  if (!cached_cos_.defined() || cached_cos_.device() != device || cached_cos_.scalar_type() != dtype) {
    cached_cos_ = rope_cos_.to(device, dtype);
    cached_sin_ = rope_sin_.to(device, dtype);
  }
  return {cached_cos_.narrow(0, 0, T), cached_sin_.narrow(0, 0, T)};
}

torch::Tensor TransformerImpl::forward(const torch::Tensor& tokens) {
  return forward_with(tokens, ForwardRequest{}).logits;
}

ModelOutputs TransformerImpl::forward_with(const torch::Tensor& tokens, const ForwardRequest& request) {
  TORCH_CHECK(tokens.dim() == 2, "Transformer: tokens must be [B, T], got ", tokens.sizes());
  TORCH_CHECK(tokens.scalar_type() == torch::kLong, "Transformer: tokens must be int64, got ", tokens.scalar_type());
  const int64_t T = tokens.size(1);
  TORCH_CHECK(T >= 1 && T <= cfg_.max_position_embeddings, "Transformer: sequence length ", T,
              " outside [1, max_position_embeddings = ", cfg_.max_position_embeddings, "]");

  ModelOutputs out;
  std::vector<int64_t> hidden_idx;
  hidden_idx.reserve(request.hidden_layers.size());
  for (int64_t i : request.hidden_layers) hidden_idx.push_back(resolve_layer(i));
  out.hidden.resize(hidden_idx.size());
  const int64_t qkv_layer = request.qkv_layer ? resolve_layer(*request.qkv_layer) : -1;

  // The table is computed once per step and shared by lookup and tied head (matters when quantized).
  const torch::Tensor table = embedding_table();
  torch::Tensor h = torch::embedding(table, tokens);

  const auto dev_type = h.device().type();
  const torch::ScalarType compute =
      at::autocast::is_autocast_enabled(dev_type) ? at::autocast::get_autocast_dtype(dev_type) : h.scalar_type();
  auto [cos, sin] = rope(T, h.device(), compute);

  std::vector<torch::Tensor> qkv;
  for (int64_t i = 0; i < static_cast<int64_t>(layers->size()); ++i) {
    h = layers->ptr<DecoderLayerImpl>(i)->forward(h, cos, sin, i == qkv_layer ? &qkv : nullptr);
    for (size_t j = 0; j < hidden_idx.size(); ++j)
      if (hidden_idx[j] == i) out.hidden[j] = h;
  }
  if (qkv_layer >= 0) {
    out.q = qkv[0];
    out.k = qkv[1];
    out.v = qkv[2];
  }
  if (request.logits) {
    h = norm(h);
    auto logits = lm_head ? lm_head(h) : torch::linear(h, table);
    out.logits = logits.to(torch::kFloat);
  }
  return out;
}

}  // namespace bitforge
