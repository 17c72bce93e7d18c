// Model export to the packed native file and to GGUF; contract and sources in export/model_export.h.
#include "export/model_export.h"

#include <sys/stat.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <set>
#include <sstream>

#include "export/gguf.h"

namespace bitforge::formats {
namespace {

int64_t file_size(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 ? static_cast<int64_t>(st.st_size) : -1;
}

int64_t numel(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::string strip_suffix(const std::string& s, const std::string& suf) {
  if (s.size() >= suf.size() && s.compare(s.size() - suf.size(), suf.size(), suf) == 0)
    return s.substr(0, s.size() - suf.size());
  return s;
}

void check_layer(const ExportLayer& L) {
  const std::string w = "export: layer '" + L.name + "': ";
  if (L.out < 1 || L.in < 1) throw std::invalid_argument(w + "out/in must be positive");
  if (static_cast<int64_t>(L.codes.size()) != L.out * L.in)
    throw std::invalid_argument(w + "codes has " + std::to_string(L.codes.size()) + " entries, expected out*in = " +
                                std::to_string(L.out * L.in));
  if (L.anchor_index.size() != L.anchor_value.size())
    throw std::invalid_argument(w + "anchor_index and anchor_value differ in length");
  if (L.activation_bits != 0 && L.activation_bits != 8 && L.activation_bits != 4)
    throw std::invalid_argument(w + "activation_bits must be 0, 8 or 4");
  if (!L.input_norm_weight.empty() && static_cast<int64_t>(L.input_norm_weight.size()) != L.in)
    throw std::invalid_argument(w + "input_norm_weight must have in entries");
}

PackedLayer pack(const ExportLayer& L) {
  check_layer(L);
  try {
    return pack_layer(L.quantizer, L.granularity, L.group_size, L.out, L.in, L.codes.data(), L.scales.data(),
                      L.anchor_index.data(), L.anchor_value.data(), static_cast<int64_t>(L.anchor_index.size()));
  } catch (const std::invalid_argument& e) {
    throw std::invalid_argument("export: layer '" + L.name + "': " + e.what());
  }
}

std::vector<uint8_t> encode_dense(const std::vector<float>& v, Dtype dt) {
  std::vector<uint8_t> out(v.size() * dtype_size(dt));
  if (dt == Dtype::F32) {
    if (!v.empty()) std::memcpy(out.data(), v.data(), out.size());
  } else if (dt == Dtype::F16) {
    convert_f32_to_f16(v.data(), reinterpret_cast<uint16_t*>(out.data()), static_cast<int64_t>(v.size()));
  } else if (dt == Dtype::BF16) {
    convert_f32_to_bf16(v.data(), reinterpret_cast<uint16_t*>(out.data()), static_cast<int64_t>(v.size()));
  } else {
    throw std::invalid_argument(std::string("export: dense dtype ") + dtype_name(dt) + " not supported; use BF16, F16 or F32");
  }
  return out;
}


const char* act_name(MlpActivation a) { return a == MlpActivation::relu2 ? "relu2" : "swiglu"; }

}  // namespace

// ---------------------------------------------------------------------------------------------------------
// config JSON
// ---------------------------------------------------------------------------------------------------------
nlohmann::json model_config_to_json(const ModelConfig& c) {
  return {{"arch", c.arch},
          {"vocab_size", c.vocab_size},
          {"hidden_size", c.hidden_size},
          {"intermediate_size", c.intermediate_size},
          {"num_hidden_layers", c.num_hidden_layers},
          {"num_attention_heads", c.num_attention_heads},
          {"num_key_value_heads", c.num_key_value_heads},
          {"head_dim", c.resolved_head_dim()},
          {"max_position_embeddings", c.max_position_embeddings},
          {"rope_theta", c.rope_theta},
          {"rms_norm_eps", c.rms_norm_eps},
          {"tie_word_embeddings", c.tie_word_embeddings},
          {"hidden_act", act_name(c.hidden_act)},
          {"subln", c.subln},
          {"attention_bias", c.attention_bias}};
}

ModelConfig model_config_from_json(const nlohmann::json& j) {
  auto fail = [](const std::string& k, const char* what) {
    throw FormatError("config.model." + k + ": missing or not " + what);
  };
  if (!j.is_object()) throw FormatError("config.model: not a JSON object");
  auto i64 = [&](const char* k) {
    if (!j.contains(k) || !j[k].is_number_integer()) fail(k, "an integer");
    return j[k].get<int64_t>();
  };
  auto f64 = [&](const char* k) {
    if (!j.contains(k) || !j[k].is_number()) fail(k, "a number");
    return j[k].get<double>();
  };
  auto b = [&](const char* k) {
    if (!j.contains(k) || !j[k].is_boolean()) fail(k, "a boolean");
    return j[k].get<bool>();
  };
  auto s = [&](const char* k) {
    if (!j.contains(k) || !j[k].is_string()) fail(k, "a string");
    return j[k].get<std::string>();
  };
  ModelConfig c;
  c.arch = s("arch");
  c.vocab_size = i64("vocab_size");
  c.hidden_size = i64("hidden_size");
  c.intermediate_size = i64("intermediate_size");
  c.num_hidden_layers = i64("num_hidden_layers");
  c.num_attention_heads = i64("num_attention_heads");
  c.num_key_value_heads = i64("num_key_value_heads");
  c.head_dim = i64("head_dim");
  c.max_position_embeddings = i64("max_position_embeddings");
  c.rope_theta = f64("rope_theta");
  c.rms_norm_eps = f64("rms_norm_eps");
  c.tie_word_embeddings = b("tie_word_embeddings");
  const std::string act = s("hidden_act");
  if (act == "swiglu")
    c.hidden_act = MlpActivation::swiglu;
  else if (act == "relu2")
    c.hidden_act = MlpActivation::relu2;
  else
    throw FormatError("config.model.hidden_act: '" + act + "', expected swiglu or relu2");
  c.subln = b("subln");
  c.attention_bias = b("attention_bias");
  if (c.arch != "llama" && c.arch != "qwen3") throw FormatError("config.model.arch: '" + c.arch + "', expected llama or qwen3");
  // The YAML schema's ranges (rope_theta > 0, rms_norm_eps in (0, 1], max_position_embeddings <= 2^22, ...).
  try {
    validate_model_config(c, "config.model");
  } catch (const ConfigError& e) {
    throw FormatError(std::string(e.what()) + " (model metadata outside the config schema's range)");
  }
  if (c.vocab_size < 1 || c.hidden_size < 1 || c.intermediate_size < 1 || c.num_hidden_layers < 0 ||
      c.num_attention_heads < 1 || c.num_key_value_heads < 1 || c.head_dim < 1 || c.head_dim % 2 != 0 ||
      c.num_attention_heads % c.num_key_value_heads != 0 || c.max_position_embeddings < 1)
    throw FormatError("config.model: inconsistent shape");
  return c;
}

nlohmann::json export_config_json(const ExportModel& m) {
  nlohmann::json layers = nlohmann::json::object();
  for (const auto& L : m.layers)
    layers[L.name] = {{"activation_bits", L.activation_bits},
                      {"input_norm", !L.input_norm_weight.empty()},
                      {"input_norm_eps", L.input_norm_eps}};
  return {{"format", kPackedFormatName},
          {"model", model_config_to_json(m.config)},
          {"quant", m.quant_config},
          {"layers", layers}};
}

// ---------------------------------------------------------------------------------------------------------
// report
// ---------------------------------------------------------------------------------------------------------
nlohmann::json ExportReport::to_json() const {
  nlohmann::json t = nlohmann::json::array();
  for (const auto& r : tensors)
    t.push_back({{"name", r.name}, {"source", r.source}, {"kind", r.kind}, {"stored_as", r.stored_as},
                 {"shape", r.shape}, {"params", r.params}, {"bytes", r.bytes},
                 {"bits_per_weight", r.bits_per_weight}, {"anchors", r.anchors}, {"exact", r.exact},
                 {"max_abs_diff", r.max_abs_diff}, {"rel_rms_diff", r.rel_rms_diff}, {"note", r.note}});
  nlohmann::json j = {{"format", format},
                      {"path", path},
                      {"tensors", t},
                      {"total_params", total_params},
                      {"tensor_bytes", tensor_bytes},
                      {"fp16_bytes", fp16_bytes},
                      {"file_bytes", file_bytes},
                      {"bits_per_weight", total_params ? 8.0 * double(tensor_bytes) / double(total_params) : 0.0},
                      {"compression_vs_fp16", tensor_bytes ? double(fp16_bytes) / double(tensor_bytes) : 0.0},
                      {"notes", notes}};
  if (!measured.is_null()) j["measured"] = measured;
  return j;
}

std::string ExportReport::to_table() const {
  std::ostringstream o;
  char line[512];
  std::snprintf(line, sizeof line, "%-48s %-9s %-12s %12s %12s %7s %7s %-5s %10s\n", "tensor", "kind", "stored as",
                "params", "bytes", "bpw", "anchors", "exact", "max|dW|");
  o << line;
  for (const auto& r : tensors) {
    std::snprintf(line, sizeof line, "%-48s %-9s %-12s %12lld %12lld %7.3f %7lld %-5s %10.3g%s%s\n", r.name.c_str(),
                  r.kind.c_str(), r.stored_as.c_str(), static_cast<long long>(r.params),
                  static_cast<long long>(r.bytes), r.bits_per_weight, static_cast<long long>(r.anchors),
                  r.exact ? "yes" : "no", r.max_abs_diff, r.note.empty() ? "" : "  ", r.note.c_str());
    o << line;
  }
  std::snprintf(line, sizeof line,
                "total: %lld params, %lld bytes of tensors (%.3f bits/weight), file %lld bytes; FP16 %lld bytes: "
                "the file is %.2fx smaller (the tensors alone %.2fx; the rest is header, config and tokenizer)\n",
                static_cast<long long>(total_params), static_cast<long long>(tensor_bytes),
                total_params ? 8.0 * double(tensor_bytes) / double(total_params) : 0.0,
                static_cast<long long>(file_bytes), static_cast<long long>(fp16_bytes),
                file_bytes ? double(fp16_bytes) / double(file_bytes) : 0.0,
                tensor_bytes ? double(fp16_bytes) / double(tensor_bytes) : 0.0);
  o << line;
  for (const auto& n : notes) o << "note: " << n << "\n";
  if (!measured.is_null()) o << "measured: " << measured.dump() << "\n";
  return o.str();
}

// ---------------------------------------------------------------------------------------------------------
// packed
// ---------------------------------------------------------------------------------------------------------
PackedModel pack_model(const ExportModel& m, const PackedExportOptions& opt, ExportReport* report) {
  if (opt.dtype != Dtype::BF16 && opt.dtype != Dtype::F16 && opt.dtype != Dtype::F32)
    throw std::invalid_argument(std::string("export_packed: dtype ") + dtype_name(opt.dtype) + "; expected BF16, F16 or F32");
  PackedModel pm;
  pm.config = export_config_json(m).dump();
  pm.tokenizer_kind = m.tokenizer_kind;
  pm.tokenizer.assign(m.tokenizer_bytes.begin(), m.tokenizer_bytes.end());
  ExportReport local;
  ExportReport& rep = report ? *report : local;
  rep.format = kPackedFormatName;
  for (const auto& L : m.layers) {
    if (pm.layers.count(L.name)) throw std::invalid_argument("export_packed: duplicate layer '" + L.name + "'");
    PackedLayer P = pack(L);
    TensorExportReport r;
    r.name = r.source = L.name;
    r.kind = to_string(L.quantizer);
    r.stored_as = L.quantizer == WeightQuantizer::binary ? "packed-1bit" : "packed-2bit";
    r.shape = {L.out, L.in};
    r.params = L.out * L.in;
    r.bytes = static_cast<int64_t>(P.codes.size() + P.scales.size() * 2 + P.anchor_index.size() * 12);
    r.anchors = static_cast<int64_t>(P.anchor_index.size());
    r.note = std::string(to_string(L.granularity)) +
             (L.granularity == ScaleGranularity::group ? " " + std::to_string(L.group_size) : "") +
             (L.activation_bits ? ", A" + std::to_string(L.activation_bits) : "") +
             (L.input_norm_weight.empty() ? "" : ", input norm");
    pm.layers.emplace(L.name, std::move(P));
    if (!L.input_norm_weight.empty()) {
      const std::string nn = strip_suffix(L.name, ".weight") + ".input_norm_weight";
      PackedTensor t{opt.dtype, {uint64_t(L.in)}, encode_dense(L.input_norm_weight, opt.dtype)};
      r.bytes += static_cast<int64_t>(t.bytes.size());
      pm.tensors[nn] = std::move(t);
    }
    r.bits_per_weight = 8.0 * double(r.bytes) / double(r.params);
    rep.tensors.push_back(r);
  }
  for (const auto& [name, t] : m.tensors) {
    if (numel(t.shape) != static_cast<int64_t>(t.data.size()))
      throw std::invalid_argument("export_packed: tensor '" + name + "' has " + std::to_string(t.data.size()) +
                                  " values for its shape");
    PackedTensor pt;
    pt.dtype = opt.dtype;
    for (int64_t d : t.shape) pt.shape.push_back(static_cast<uint64_t>(d));
    pt.bytes = encode_dense(t.data, opt.dtype);
    TensorExportReport r;
    r.name = r.source = name;
    r.kind = "dense";
    r.stored_as = dtype_name(opt.dtype);
    r.shape = t.shape;
    r.params = numel(t.shape);
    r.bytes = static_cast<int64_t>(pt.bytes.size());
    r.bits_per_weight = r.params ? 8.0 * double(r.bytes) / double(r.params) : 0;
    if (opt.dtype != Dtype::F32) {
      // report the rounding of the dense tensor
      std::vector<float> back(t.data.size());
      if (opt.dtype == Dtype::F16)
        convert_f16_to_f32(reinterpret_cast<const uint16_t*>(pt.bytes.data()), back.data(), int64_t(back.size()));
      else
        convert_bf16_to_f32(reinterpret_cast<const uint16_t*>(pt.bytes.data()), back.data(), int64_t(back.size()));
      double mx = 0, se = 0, sw = 0;
      for (size_t i = 0; i < back.size(); ++i) {
        const double d = double(back[i]) - t.data[i];
        mx = std::max(mx, std::fabs(d));
        se += d * d;
        sw += double(t.data[i]) * t.data[i];
      }
      r.exact = mx == 0;
      r.max_abs_diff = mx;
      r.rel_rms_diff = sw > 0 ? std::sqrt(se / sw) : 0;
    }
    pm.tensors[name] = std::move(pt);
    rep.tensors.push_back(r);
  }
  return pm;
}

ExportReport export_packed(const ExportModel& m, const std::string& path, const PackedExportOptions& opt) {
  ExportReport rep;
  const PackedModel pm = pack_model(m, opt, &rep);
  rep.path = path;
  write_packed(path, pm);
  for (const auto& r : rep.tensors) {
    rep.total_params += r.params;
    rep.tensor_bytes += r.bytes;
  }
  rep.fp16_bytes = rep.total_params * 2;
  rep.file_bytes = file_size(path);
  return rep;
}

// ---------------------------------------------------------------------------------------------------------
// GGUF
// ---------------------------------------------------------------------------------------------------------
std::vector<int64_t> llama_qk_permutation(int64_t n_head, int64_t head_dim) {
  if (n_head < 1 || head_dim < 2 || head_dim % 2) throw std::invalid_argument("llama_qk_permutation: bad shape");
  std::vector<int64_t> perm(static_cast<size_t>(n_head * head_dim));
  const int64_t half = head_dim / 2;
  for (int64_t h = 0; h < n_head; ++h)
    for (int64_t i = 0; i < half; ++i)
      for (int64_t j = 0; j < 2; ++j) perm[h * head_dim + 2 * i + j] = h * head_dim + j * half + i;
  return perm;
}

std::string gguf_tensor_name(const std::string& n) {
  if (n == "model.embed_tokens.weight") return "token_embd.weight";
  if (n == "model.norm.weight") return "output_norm.weight";
  if (n == "lm_head.weight") return "output.weight";
  const std::string pre = "model.layers.";
  if (n.compare(0, pre.size(), pre) != 0) return "";
  const size_t dot = n.find('.', pre.size());
  if (dot == std::string::npos) return "";
  const std::string idx = n.substr(pre.size(), dot - pre.size());
  if (idx.empty() || idx.find_first_not_of("0123456789") != std::string::npos) return "";
  const std::string rest = n.substr(dot + 1);
  static const std::vector<std::pair<std::string, std::string>> map = {
      {"input_layernorm", "attn_norm"},     {"self_attn.q_proj", "attn_q"},   {"self_attn.k_proj", "attn_k"},
      {"self_attn.v_proj", "attn_v"},       {"self_attn.o_proj", "attn_output"},
      {"self_attn.q_norm", "attn_q_norm"},  {"self_attn.k_norm", "attn_k_norm"},
      {"post_attention_layernorm", "ffn_norm"}, {"mlp.gate_proj", "ffn_gate"}, {"mlp.up_proj", "ffn_up"},
      {"mlp.down_proj", "ffn_down"}};
  for (const auto& [hf, gg] : map) {
    for (const char* leaf : {".weight", ".bias"})
      if (rest == hf + leaf) return "blk." + idx + "." + gg + leaf;
  }
  return "";
}

namespace {

struct Target {
  GgmlType type;
  int64_t block;
};

Target target_for(WeightQuantizer q, GgufTernaryType t) {
  if (q == WeightQuantizer::binary) return {GgmlType::Q1_0, QK1_0};
  switch (t) {
    case GgufTernaryType::tq1_0: return {GgmlType::TQ1_0, QK_K};
    case GgufTernaryType::q2_0: return {GgmlType::Q2_0, QK2_0};
    default: return {GgmlType::TQ2_0, QK_K};
  }
}

std::vector<uint8_t> dense_bytes(const std::vector<float>& v, GgmlType t) {
  std::vector<uint8_t> out;
  if (t == GgmlType::F32) {
    out.resize(v.size() * 4);
    if (!v.empty()) std::memcpy(out.data(), v.data(), out.size());
  } else if (t == GgmlType::F16) {
    out.resize(v.size() * 2);
    convert_f32_to_f16(v.data(), reinterpret_cast<uint16_t*>(out.data()), int64_t(v.size()));
  } else if (t == GgmlType::BF16) {
    out.resize(v.size() * 2);
    convert_f32_to_bf16(v.data(), reinterpret_cast<uint16_t*>(out.data()), int64_t(v.size()));
  } else {
    throw std::invalid_argument("export_gguf: dense type must be F16, BF16 or F32");
  }
  return out;
}

std::vector<float> dense_back(const std::vector<uint8_t>& b, GgmlType t, size_t n) {
  std::vector<float> v(n);
  if (t == GgmlType::F32)
    std::memcpy(v.data(), b.data(), n * 4);
  else if (t == GgmlType::F16)
    convert_f16_to_f32(reinterpret_cast<const uint16_t*>(b.data()), v.data(), int64_t(n));
  else
    convert_bf16_to_f32(reinterpret_cast<const uint16_t*>(b.data()), v.data(), int64_t(n));
  return v;
}

void dequantize(GgmlType t, const uint8_t* data, float* y, int64_t k) {
  switch (t) {
    case GgmlType::Q1_0: dequantize_row_q1_0(reinterpret_cast<const block_q1_0*>(data), y, k); break;
    case GgmlType::Q2_0: dequantize_row_q2_0(reinterpret_cast<const block_q2_0*>(data), y, k); break;
    case GgmlType::TQ1_0: dequantize_row_tq1_0(reinterpret_cast<const block_tq1_0*>(data), y, k); break;
    case GgmlType::TQ2_0: dequantize_row_tq2_0(reinterpret_cast<const block_tq2_0*>(data), y, k); break;
    default: throw std::logic_error("dequantize: unexpected type");
  }
}

void diff_stats(const std::vector<float>& ref, const std::vector<float>& got, TensorExportReport& r) {
  double mx = 0, se = 0, sw = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const double d = double(got[i]) - ref[i];
    mx = std::max(mx, std::fabs(d));
    se += d * d;
    sw += double(ref[i]) * ref[i];
  }
  r.max_abs_diff = mx;
  r.rel_rms_diff = sw > 0 ? std::sqrt(se / sw) : 0;
}

template <class T>
std::vector<T> permute_rows(const std::vector<T>& v, int64_t rows, int64_t cols, const std::vector<int64_t>& perm) {
  std::vector<T> out(v.size());
  for (int64_t r = 0; r < rows; ++r)
    std::copy(v.begin() + perm[r] * cols, v.begin() + (perm[r] + 1) * cols, out.begin() + r * cols);
  return out;
}

}  // namespace

ExportReport export_gguf(const ExportModel& m, const std::string& path, const GgufExportOptions& opt) {
  const ModelConfig& c = m.config;
  // ---- what llama.cpp cannot run as trained: refuse, never silently change the model ----
  std::vector<std::string> refuse;
  if (c.arch != "llama" && c.arch != "qwen3") refuse.push_back("arch '" + c.arch + "' (only llama and qwen3)");
  if (c.subln) refuse.push_back("SubLN (extra RMSNorm before o_proj/down_proj) is not in llama.cpp's llama graph");
  if (c.hidden_act == MlpActivation::relu2)
    refuse.push_back("relu2 MLP (llama.cpp's llama graph uses SwiGLU; BitNet issue #588 shows the damage)");
  int64_t act_layers = 0;
  for (const auto& L : m.layers) {
    if (!L.input_norm_weight.empty()) {
      refuse.push_back("BitLinear input RMSNorm in '" + L.name + "' (no such operator in llama.cpp's graph)");
      break;
    }
  }
  for (const auto& L : m.layers) act_layers += L.activation_bits != 0;
  if (act_layers && !opt.allow_activation_mismatch)
    refuse.push_back(std::to_string(act_layers) +
                     " layer(s) quantize activations per token (A8/A4); llama.cpp runs them with float activations "
                     "(set allow_activation_mismatch to export anyway; the report records it)");
  if (m.tokenizer_kind == "byte")
    refuse.push_back("tokenizer kind 'byte': llama.cpp's SentencePiece tokenizer would add a space prefix and "
                     "escape spaces, and a gpt2 vocabulary needs merges the byte tokenizer does not have; use the "
                     "packed format");
  else if (m.vocab.model != "llama" && m.vocab.model != "gpt2")
    refuse.push_back("tokenizer.ggml.model '" + m.vocab.model + "': expected llama (SentencePiece) or gpt2 (byte-level "
                     "BPE)");
  else if (m.vocab.model == "gpt2" && m.vocab.pre.empty())
    refuse.push_back("byte-level BPE tokenizer with a pre-tokenizer llama.cpp has no name for (tokenizer.ggml.pre); "
                     "llama.cpp would split text differently");
  if (m.vocab.tokens.empty()) refuse.push_back("no tokenizer vocabulary given");
  if (!m.vocab.tokens.empty() && static_cast<int64_t>(m.vocab.tokens.size()) > c.vocab_size)
    refuse.push_back("tokenizer has " + std::to_string(m.vocab.tokens.size()) + " tokens but the model only " +
                     std::to_string(c.vocab_size));
  if (!refuse.empty()) {
    std::string msg = "export_gguf: cannot write a GGUF that stock llama.cpp runs as trained:";
    for (const auto& r : refuse) msg += "\n  - " + r;
    throw GgufExportError(msg);
  }
  if (opt.dense != GgmlType::F16 && opt.dense != GgmlType::BF16 && opt.dense != GgmlType::F32)
    throw std::invalid_argument("export_gguf: dense type must be F16, BF16 or F32");

  const std::string arch = c.arch;
  const int64_t hd = c.resolved_head_dim();
  const bool permute = arch == "llama";
  GgufWriter w;
  ExportReport rep;
  rep.format = "gguf";
  rep.path = path;
  std::set<std::string> written;

  auto perm_for = [&](const std::string& hf) -> std::vector<int64_t> {
    if (!permute) return {};
    if (hf.find(".self_attn.q_proj.") != std::string::npos) return llama_qk_permutation(c.num_attention_heads, hd);
    if (hf.find(".self_attn.k_proj.") != std::string::npos) return llama_qk_permutation(c.num_key_value_heads, hd);
    return {};
  };
  auto gname = [&](const std::string& hf) {
    std::string g = gguf_tensor_name(hf);
    if (g.empty()) throw GgufExportError("export_gguf: tensor '" + hf + "' has no GGUF (llama) name");
    if (!written.insert(g).second) throw std::invalid_argument("export_gguf: duplicate tensor '" + g + "'");
    return g;
  };

  int64_t n_binary = 0, n_ternary = 0, anchors_total = 0;
  bool all_exact = true;
  for (const auto& L : m.layers) {
    PackedLayer P = pack(L);  // validates codes/scales/anchors exactly as the packed format does
    const std::vector<float> weff_orig = unpack_layer(P);
    const int64_t out = L.out, in = L.in, ng = P.n_groups(), gs = P.group_size;
    // fold anchors into codes
    std::vector<int8_t> codes = unpack_codes(P);
    auto scale_at = [&](int64_t r, int64_t col) {
      return fp16_to_fp32(P.scales[(P.scale_rows() == 1 ? 0 : r) * ng + col / gs]);
    };
    for (size_t k = 0; k < P.anchor_index.size(); ++k) {
      const int64_t idx = P.anchor_index[k], r = idx / in, col = idx % in;
      codes[idx] = fold_anchor_code(L.quantizer, P.anchor_value[k], scale_at(r, col));
    }
    std::vector<float> row_scale(static_cast<size_t>(out * in));  // per element
    for (int64_t r = 0; r < out; ++r)
      for (int64_t col = 0; col < in; ++col) row_scale[r * in + col] = scale_at(r, col);
    std::vector<float> weff = weff_orig;
    const auto perm = perm_for(L.name);
    if (!perm.empty()) {
      if (static_cast<int64_t>(perm.size()) != out)
        throw std::invalid_argument("export_gguf: '" + L.name + "' has " + std::to_string(out) +
                                    " rows; q/k permutation expects " + std::to_string(perm.size()));
      codes = permute_rows(codes, out, in, perm);
      row_scale = permute_rows(row_scale, out, in, perm);
      weff = permute_rows(weff, out, in, perm);
    }
    const Target tg = target_for(L.quantizer, opt.ternary);
    TensorExportReport r;
    r.source = L.name;
    r.name = gname(L.name);
    r.kind = to_string(L.quantizer);
    r.shape = {out, in};
    r.params = out * in;
    r.anchors = static_cast<int64_t>(P.anchor_index.size());
    anchors_total += r.anchors;
    (L.quantizer == WeightQuantizer::binary ? n_binary : n_ternary)++;
    std::vector<uint8_t> data;
    std::vector<float> back(static_cast<size_t>(out * in));
    if (in % tg.block != 0) {
      data = dense_bytes(weff, opt.dense);
      back = dense_back(data, opt.dense, weff.size());
      r.stored_as = ggml_type_traits(uint32_t(opt.dense))->name;
      r.note = "row length " + std::to_string(in) + " is not a multiple of the " +
               ggml_type_traits(uint32_t(tg.type))->name + " block (" + std::to_string(tg.block) + "): stored dense";
      w.add_tensor(r.name, {uint64_t(in), uint64_t(out)}, opt.dense, data);
    } else {
      const int64_t nb = out * in / tg.block;
      std::vector<float> bscale(static_cast<size_t>(nb));
      bool constant = true;
      for (int64_t b = 0; b < nb; ++b) {
        bscale[b] = row_scale[b * tg.block];
        for (int64_t j = 1; j < tg.block && constant; ++j) constant = row_scale[b * tg.block + j] == bscale[b];
      }
      data.resize(ggml_row_size(tg.type, in) * out);
      if (constant) {
        switch (tg.type) {
          case GgmlType::Q1_0: q1_0_from_codes(codes.data(), bscale.data(), out * in, reinterpret_cast<block_q1_0*>(data.data())); break;
          case GgmlType::TQ2_0: tq2_0_from_codes(codes.data(), bscale.data(), out * in, reinterpret_cast<block_tq2_0*>(data.data())); break;
          case GgmlType::TQ1_0: tq1_0_from_codes(codes.data(), bscale.data(), out * in, reinterpret_cast<block_tq1_0*>(data.data())); break;
          default: q2_0_from_codes(codes.data(), bscale.data(), out * in, reinterpret_cast<block_q2_0*>(data.data())); break;
        }
        r.note = "codes and scales exact";
      } else {
        // requantize the folded effective weight with the ggml reference quantizer
        std::vector<float> folded(static_cast<size_t>(out * in));
        for (size_t i = 0; i < folded.size(); ++i) folded[i] = row_scale[i] * float(codes[i]);
        switch (tg.type) {
          case GgmlType::Q1_0: quantize_row_q1_0_ref(folded.data(), reinterpret_cast<block_q1_0*>(data.data()), out * in); break;
          case GgmlType::TQ2_0: quantize_row_tq2_0_ref(folded.data(), reinterpret_cast<block_tq2_0*>(data.data()), out * in); break;
          case GgmlType::TQ1_0: quantize_row_tq1_0_ref(folded.data(), reinterpret_cast<block_tq1_0*>(data.data()), out * in); break;
          default: quantize_row_q2_0_ref(folded.data(), reinterpret_cast<block_q2_0*>(data.data()), out * in); break;
        }
        r.note = std::string("scales vary inside a ") + std::to_string(tg.block) + "-weight block (" +
                 to_string(L.granularity) +
                 (L.granularity == ScaleGranularity::group ? " " + std::to_string(L.group_size) : "") +
                 "): requantized with the reference quantizer";
      }
      dequantize(tg.type, data.data(), back.data(), out * in);
      r.stored_as = ggml_type_traits(uint32_t(tg.type))->name;
      w.add_tensor(r.name, {uint64_t(in), uint64_t(out)}, tg.type, data);
    }
    diff_stats(weff, back, r);
    if (r.anchors) r.note += "; " + std::to_string(r.anchors) + " anchors folded";
    r.exact = r.max_abs_diff == 0;
    all_exact = all_exact && r.exact;
    r.bytes = static_cast<int64_t>(data.size());
    r.bits_per_weight = 8.0 * double(r.bytes) / double(r.params);
    rep.tensors.push_back(r);
    if (L.activation_bits)
      rep.notes.push_back(r.name + ": trained with A" + std::to_string(L.activation_bits) +
                          " per-token activations; llama.cpp uses float activations");
  }
  for (const auto& [hf, t] : m.tensors) {
    if (numel(t.shape) != static_cast<int64_t>(t.data.size()))
      throw std::invalid_argument("export_gguf: tensor '" + hf + "' has " + std::to_string(t.data.size()) +
                                  " values for its shape");
    if (t.shape.empty() || t.shape.size() > 2)
      throw std::invalid_argument("export_gguf: tensor '" + hf + "' must be 1-D or 2-D");
    TensorExportReport r;
    r.source = hf;
    r.name = gname(hf);
    r.kind = "dense";
    r.shape = t.shape;
    r.params = numel(t.shape);
    std::vector<float> v = t.data;
    const auto perm = perm_for(hf);
    const int64_t rows = t.shape[0], cols = t.shape.size() == 2 ? t.shape[1] : 1;
    if (!perm.empty()) {
      if (static_cast<int64_t>(perm.size()) != rows)
        throw std::invalid_argument("export_gguf: '" + hf + "' rows do not match the q/k permutation");
      v = permute_rows(v, rows, cols, perm);
    }
    const GgmlType ty = t.shape.size() == 1 ? GgmlType::F32 : opt.dense;
    std::vector<uint8_t> data = dense_bytes(v, ty);
    diff_stats(v, dense_back(data, ty, v.size()), r);
    r.exact = r.max_abs_diff == 0;
    r.stored_as = ggml_type_traits(uint32_t(ty))->name;
    r.bytes = static_cast<int64_t>(data.size());
    r.bits_per_weight = 8.0 * double(r.bytes) / double(r.params);
    if (t.shape.size() == 1)
      w.add_tensor(r.name, {uint64_t(rows)}, ty, std::move(data));
    else
      w.add_tensor(r.name, {uint64_t(cols), uint64_t(rows)}, ty, std::move(data));
    rep.tensors.push_back(r);
  }
  if (!written.count("token_embd.weight")) throw std::invalid_argument("export_gguf: no model.embed_tokens.weight");
  if (!c.tie_word_embeddings && !written.count("output.weight"))
    throw std::invalid_argument("export_gguf: untied model without lm_head.weight");

  // ---- KV ----
  auto u32 = [](int64_t v) { return GgufValue::u32(static_cast<uint32_t>(v)); };
  w.set("general.architecture", GgufValue::str(arch));
  w.set("general.name", GgufValue::str(opt.name));
  int64_t ftype = 1;  // LLAMA_FTYPE_MOSTLY_F16
  if (opt.dense == GgmlType::BF16) ftype = 32;
  if (opt.dense == GgmlType::F32) ftype = 0;
  if (n_binary >= n_ternary && n_binary > 0) ftype = 40;  // LLAMA_FTYPE_MOSTLY_Q1_0
  if (n_ternary > n_binary && opt.ternary == GgufTernaryType::tq2_0) ftype = 37;
  if (n_ternary > n_binary && opt.ternary == GgufTernaryType::tq1_0) ftype = 36;
  w.set("general.file_type", u32(ftype));
  w.set("general.quantization_version", u32(2));
  w.set(arch + ".context_length", u32(c.max_position_embeddings));
  w.set(arch + ".embedding_length", u32(c.hidden_size));
  w.set(arch + ".block_count", u32(c.num_hidden_layers));
  w.set(arch + ".feed_forward_length", u32(c.intermediate_size));
  w.set(arch + ".rope.dimension_count", u32(hd));
  w.set(arch + ".rope.freq_base", GgufValue::f32(static_cast<float>(c.rope_theta)));
  w.set(arch + ".attention.head_count", u32(c.num_attention_heads));
  w.set(arch + ".attention.head_count_kv", u32(c.num_key_value_heads));
  w.set(arch + ".attention.layer_norm_rms_epsilon", GgufValue::f32(static_cast<float>(c.rms_norm_eps)));
  w.set(arch + ".attention.key_length", u32(hd));
  w.set(arch + ".attention.value_length", u32(hd));
  w.set(arch + ".vocab_size", u32(c.vocab_size));
  // tokenizer
  const bool spm = m.vocab.model == "llama";
  std::vector<std::string> toks = m.vocab.tokens;
  std::vector<float> scores = m.vocab.scores;
  std::vector<int32_t> types = m.vocab.token_types;
  if ((spm && scores.size() != toks.size()) || types.size() != toks.size())
    throw std::invalid_argument("export_gguf: vocab tokens/scores/token_types differ in length");
  for (int64_t id = static_cast<int64_t>(toks.size()); id < c.vocab_size; ++id) {
    toks.push_back("[PAD" + std::to_string(id) + "]");  // as convert_hf_to_gguf.py pads a larger embedding
    if (spm) scores.push_back(-1000.f);
    types.push_back(5);  // unused
  }
  w.set("tokenizer.ggml.model", GgufValue::str(m.vocab.model));
  if (!m.vocab.pre.empty()) w.set("tokenizer.ggml.pre", GgufValue::str(m.vocab.pre));
  w.set("tokenizer.ggml.tokens", GgufValue::strings(toks));
  if (spm) w.set("tokenizer.ggml.scores", GgufValue::f32s(scores));
  w.set("tokenizer.ggml.token_type", GgufValue::i32s(types));
  if (!spm) w.set("tokenizer.ggml.merges", GgufValue::strings(m.vocab.merges));
  if (m.vocab.bos_id >= 0) w.set("tokenizer.ggml.bos_token_id", u32(m.vocab.bos_id));
  if (m.vocab.eos_id >= 0) w.set("tokenizer.ggml.eos_token_id", u32(m.vocab.eos_id));
  if (m.vocab.unk_id >= 0) w.set("tokenizer.ggml.unknown_token_id", u32(m.vocab.unk_id));
  if (m.vocab.pad_id >= 0) w.set("tokenizer.ggml.padding_token_id", u32(m.vocab.pad_id));
  w.set("tokenizer.ggml.add_bos_token", GgufValue::boolean(m.vocab.add_bos));
  w.set("tokenizer.ggml.add_eos_token", GgufValue::boolean(false));
  w.write(path);

  for (const auto& r : rep.tensors) {
    rep.total_params += r.params;
    rep.tensor_bytes += r.bytes;
  }
  rep.fp16_bytes = rep.total_params * 2;
  rep.file_bytes = file_size(path);
  if (anchors_total)
    rep.notes.push_back(std::to_string(anchors_total) +
                        " full-precision anchors cannot be represented in GGUF and were folded into the codes "
                        "(per-layer counts and weight differences above); compare perplexity of the packed file "
                        "and the GGUF to measure the effect");
  if (!all_exact) rep.notes.push_back("some quantized tensors are not reproduced exactly (see exact / max|dW|)");
  return rep;
}

int8_t fold_anchor_code(WeightQuantizer quantizer, float value, float scale) {
  if (quantizer == WeightQuantizer::binary) return value >= 0 ? 1 : -1;
  const float u = std::nearbyint(value / scale);
  return static_cast<int8_t>(u > 1 ? 1 : (u < -1 ? -1 : u));
}

int64_t fold_anchors(ExportModel& model) {
  int64_t folded = 0;
  for (auto& L : model.layers) {
    if (L.anchor_index.size() != L.anchor_value.size())
      throw std::invalid_argument("fold_anchors: '" + L.name + "': anchor_index and anchor_value differ in length");
    const int64_t n_groups = L.granularity == ScaleGranularity::group ? L.in / L.group_size : 1;
    const int64_t scale_rows = L.granularity == ScaleGranularity::tensor ? 1 : L.out;
    if (static_cast<int64_t>(L.scales.size()) != scale_rows * n_groups)
      throw std::invalid_argument("fold_anchors: '" + L.name + "': " + std::to_string(L.scales.size()) +
                                  " scales, expected " + std::to_string(scale_rows * n_groups));
    for (size_t i = 0; i < L.anchor_index.size(); ++i) {
      const int64_t idx = L.anchor_index[i];
      if (idx < 0 || idx >= L.out * L.in)
        throw std::invalid_argument("fold_anchors: '" + L.name + "': anchor index " + std::to_string(idx) +
                                    " outside [0, " + std::to_string(L.out * L.in) + ")");
      const int64_t r = idx / L.in, c = idx % L.in;
      const float a = L.scales[static_cast<size_t>((scale_rows == 1 ? 0 : r) * n_groups + c / (L.in / n_groups))];
      L.codes[static_cast<size_t>(idx)] = fold_anchor_code(L.quantizer, L.anchor_value[i], a);
    }
    folded += static_cast<int64_t>(L.anchor_index.size());
    L.anchor_index.clear();
    L.anchor_value.clear();
  }
  return folded;
}

}  // namespace bitforge::formats
