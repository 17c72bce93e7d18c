// Adapter: trainer Transformer (+ tokenizer) → formats::ExportModel (export/model_export.h), the plain data the
// exporters write. It lives in trainer/ because it reads the trainer's modules; export/ sits below and never sees
// a Transformer.
//
// What it takes from the model (trainer/bitlinear.h, trainer/model.h):
//   quantized BitLinear `<path>` → ExportLayer "<path>.weight": codes() (anchors hold 0), scales() (fp16-exact
//   α, [S_r, S_c]), anchor_index, anchor values = weight.flatten()[anchor_index], quant().activations,
//   input_norm_weight / norm_eps;
//   every other hf_parameters() tensor (norms, full-precision projections, biases, the embedding unless
//   quantized, lm_head unless tied) → ExportModel::tensors as fp32.
// Throws std::invalid_argument for a layer still in quantization warm-up (λ < 1: its effective weight is not
// α·Q(W), so no packed format represents it).
#pragma once

#include <torch/torch.h>

#include <set>
#include <string>

#include "data/hf_tokenizer.h"
#include "data/tokenizer.h"
#include "export/model_export.h"
#include "trainer/model.h"

namespace bitforge {

inline formats::ExportModel make_export_model(const Transformer& model, const data::Tokenizer* tokenizer,
                                              const std::string& quant_config_text) {
  torch::NoGradGuard ng;
  formats::ExportModel m;
  m.config = model->config();
  m.config.head_dim = m.config.resolved_head_dim();
  m.quant_config = quant_config_text;
  std::set<std::string> quantized;
  for (const auto& [path, bl] : model->named_bit_linears()) {
    const QuantConfig& q = bl->quant();
    if (!q.enabled()) continue;
    if (bl->lambda() < 1.0)
      throw std::invalid_argument("export: layer '" + path + "' is in quantization warm-up (lambda " +
                                  std::to_string(bl->lambda()) + " < 1); finish training before exporting");
    formats::ExportLayer L;
    L.name = path + ".weight";
    quantized.insert(L.name);
    L.quantizer = q.weight;
    L.granularity = q.granularity;
    L.group_size = bl->group_size();
    L.out = bl->out_features();
    L.in = bl->in_features();
    auto codes = bl->codes().to(torch::kCPU).to(torch::kInt8).contiguous();
    L.codes.assign(codes.data_ptr<int8_t>(), codes.data_ptr<int8_t>() + codes.numel());
    auto scales = bl->scales().to(torch::kCPU).to(torch::kFloat).contiguous();
    L.scales.assign(scales.data_ptr<float>(), scales.data_ptr<float>() + scales.numel());
    auto ai = bl->anchor_index.to(torch::kCPU).to(torch::kLong).contiguous();
    L.anchor_index.assign(ai.data_ptr<int64_t>(), ai.data_ptr<int64_t>() + ai.numel());
    auto av = bl->weight.detach().to(torch::kCPU).to(torch::kFloat).flatten().index_select(0, ai).contiguous();
    L.anchor_value.assign(av.data_ptr<float>(), av.data_ptr<float>() + av.numel());
    L.activation_bits = q.activations == ActivationQuant::int8 ? 8 : q.activations == ActivationQuant::int4 ? 4 : 0;
    if (bl->norm_weight.defined()) {
      auto nw = bl->norm_weight.detach().to(torch::kCPU).to(torch::kFloat).contiguous();
      L.input_norm_weight.assign(nw.data_ptr<float>(), nw.data_ptr<float>() + nw.numel());
      L.input_norm_eps = q.norm_eps;
    }
    m.layers.push_back(std::move(L));
  }
  for (const auto& [name, t] : model->hf_parameters()) {
    if (quantized.count(name)) continue;
    formats::ExportTensor e;
    e.shape = t.sizes().vec();
    auto c = t.detach().to(torch::kCPU).to(torch::kFloat).contiguous();
    e.data.assign(c.data_ptr<float>(), c.data_ptr<float>() + c.numel());
    m.tensors[name] = std::move(e);
  }
  if (tokenizer) {
    m.tokenizer_kind = tokenizer->kind();
    m.tokenizer_bytes = tokenizer->serialize();
    m.vocab = data::gguf_vocab(*tokenizer);
  }
  return m;
}

}  // namespace bitforge
