// Exporter (export/model_export.h) and inspect (export/inspect.h) on hand-built models: packed round trip,
// report numbers, GGUF keys / names / types, the q/k permutation, lossless vs requantized layers, anchors,
// refusals, qwen3, and inspection of packed / safetensors / GGUF files.
#include "export/model_export.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>

#include "export/gguf.h"
#include "export/inspect.h"
#include "tests/fixtures/export/test_util.h"
#include "tests/fixtures/export/tiny_model.h"

using namespace bitforge;
using namespace bitforge::formats;
using bitforge::ScaleGranularity;
using bitforge::WeightQuantizer;

namespace {

/// A file in this test binary's temporary directory (removed, with anything left in it, at exit).
std::string temp_path(const std::string& name) {
  static const test::TempDir dir;
  return dir.file(name);
}

std::vector<float> effective(const ExportLayer& L) {
  auto P = pack_layer(L.quantizer, L.granularity, L.group_size, L.out, L.in, L.codes.data(), L.scales.data(),
                      L.anchor_index.data(), L.anchor_value.data(), int64_t(L.anchor_index.size()));
  return unpack_layer(P);
}

const ExportLayer& find_layer(const ExportModel& m, const std::string& n) {
  for (const auto& L : m.layers)
    if (L.name == n) return L;
  throw std::runtime_error("no layer " + n);
}

std::vector<float> dequant(const GgufFile& g, const std::string& name) {
  const auto* t = g.find_tensor(name);
  if (!t) throw std::runtime_error("no tensor " + name);
  const int64_t n = int64_t(t->numel());
  std::vector<float> y(n);
  const auto b = g.bytes(*t);
  switch (t->type) {
    case GgmlType::Q1_0: dequantize_row_q1_0(reinterpret_cast<const block_q1_0*>(b.data), y.data(), n); break;
    case GgmlType::TQ2_0: dequantize_row_tq2_0(reinterpret_cast<const block_tq2_0*>(b.data), y.data(), n); break;
    case GgmlType::TQ1_0: dequantize_row_tq1_0(reinterpret_cast<const block_tq1_0*>(b.data), y.data(), n); break;
    case GgmlType::Q2_0: dequantize_row_q2_0(reinterpret_cast<const block_q2_0*>(b.data), y.data(), n); break;
    case GgmlType::F16: convert_f16_to_f32(reinterpret_cast<const uint16_t*>(b.data), y.data(), n); break;
    case GgmlType::F32: std::memcpy(y.data(), b.data, n * 4); break;
    default: throw std::runtime_error("type");
  }
  return y;
}

tiny::TinySpec gguf_spec() {
  auto s = tiny::tiny_spec();
  s.model.hidden_size = 256;
  s.model.intermediate_size = 512;
  s.model.head_dim = 64;
  s.group_size = 128;
  s.anchor_fraction = 0;
  return s;
}

ExportModel gguf_model(const tiny::TinySpec& s, uint32_t seed) {
  auto m = tiny::tiny_model(s, seed);
  m.tokenizer_kind = "sentencepiece";
  m.tokenizer_bytes = "not-a-real-proto";
  m.vocab = tiny::tiny_vocab(s.model.vocab_size - 2);  // padded by the exporter
  return m;
}

}  // namespace

TEST(ModelExport, PackedRoundTripReportAndConfig) {
  auto spec = tiny::tiny_spec();
  spec.model.tie_word_embeddings = false;
  spec.activation_bits = 8;
  spec.input_norm = true;
  const auto m = tiny::tiny_model(spec, 1);
  const std::string path = temp_path("a.safetensors");
  PackedExportOptions po;
  po.dtype = Dtype::F16;
  const auto rep = export_packed(m, path, po);
  const PackedModel pm = read_packed(path);
  ASSERT_EQ(pm.layers.size(), m.layers.size());
  for (const auto& L : m.layers) {
    const auto& P = pm.layers.at(L.name);
    EXPECT_EQ(unpack_layer(P), effective(L)) << L.name;
    EXPECT_TRUE(pm.tensors.count(L.name.substr(0, L.name.size() - 7) + ".input_norm_weight"));
  }
  EXPECT_EQ(pm.tokenizer_kind, "byte");
  const auto cj = nlohmann::json::parse(pm.config);
  EXPECT_EQ(cj["format"], "bitforge.packed");
  EXPECT_EQ(cj["quant"], "weight: test");
  EXPECT_EQ(cj["layers"]["model.layers.0.mlp.up_proj.weight"]["activation_bits"], 8);
  const ModelConfig back = model_config_from_json(cj["model"]);
  EXPECT_EQ(back.hidden_size, spec.model.hidden_size);
  EXPECT_EQ(back.num_key_value_heads, 2);
  EXPECT_EQ(back.head_dim, 16);
  EXPECT_FALSE(back.tie_word_embeddings);
  EXPECT_THROW(model_config_from_json(nlohmann::json{{"arch", "llama"}}), FormatError);

  // report: a binary group-32 layer costs 1 + 16/32 bits/weight plus its anchors (12 B each) and input norm (F16)
  const auto& L = find_layer(m, "model.layers.0.mlp.up_proj.weight");
  bool found = false;
  for (const auto& t : rep.tensors)
    if (t.name == L.name) {
      found = true;
      const int64_t bytes = L.out * L.in / 8 + L.out * (L.in / 32) * 2 + int64_t(L.anchor_index.size()) * 12 + L.in * 2;
      EXPECT_EQ(t.bytes, bytes);
      EXPECT_NEAR(t.bits_per_weight, 8.0 * bytes / double(L.out * L.in), 1e-12);
      EXPECT_EQ(t.anchors, int64_t(L.anchor_index.size()));
      EXPECT_EQ(t.stored_as, "packed-1bit");
    }
  EXPECT_TRUE(found);
  int64_t params = 0;
  for (const auto& t : rep.tensors) params += t.params;
  EXPECT_EQ(rep.total_params, params);
  EXPECT_EQ(rep.fp16_bytes, 2 * params);
  EXPECT_GT(rep.file_bytes, rep.tensor_bytes);
  const auto j = rep.to_json();
  EXPECT_EQ(j["format"], "bitforge.packed");
  EXPECT_GT(j["compression_vs_fp16"].get<double>(), 1.0);
  const std::string table = rep.to_table();
  EXPECT_NE(table.find("total:"), std::string::npos);
  EXPECT_NE(table.find("model.layers.1.self_attn.k_proj.weight"), std::string::npos);

  // bad input names the layer
  auto bad = m;
  bad.layers[3].codes[5] = 3;
  try {
    export_packed(bad, path);
    FAIL();
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find(bad.layers[3].name), std::string::npos) << e.what();
  }
  std::remove(path.c_str());
}

TEST(ModelExport, QkPermutationAndNames) {
  EXPECT_EQ(llama_qk_permutation(2, 4), (std::vector<int64_t>{0, 2, 1, 3, 4, 6, 5, 7}));
  EXPECT_EQ(llama_qk_permutation(1, 6), (std::vector<int64_t>{0, 3, 1, 4, 2, 5}));
  EXPECT_EQ(gguf_tensor_name("model.layers.12.self_attn.o_proj.weight"), "blk.12.attn_output.weight");
  EXPECT_EQ(gguf_tensor_name("model.layers.0.self_attn.q_proj.bias"), "blk.0.attn_q.bias");
  EXPECT_EQ(gguf_tensor_name("model.layers.3.mlp.gate_proj.weight"), "blk.3.ffn_gate.weight");
  EXPECT_EQ(gguf_tensor_name("model.layers.3.post_attention_layernorm.weight"), "blk.3.ffn_norm.weight");
  EXPECT_EQ(gguf_tensor_name("model.layers.3.self_attn.k_norm.weight"), "blk.3.attn_k_norm.weight");
  EXPECT_EQ(gguf_tensor_name("model.embed_tokens.weight"), "token_embd.weight");
  EXPECT_EQ(gguf_tensor_name("model.norm.weight"), "output_norm.weight");
  EXPECT_EQ(gguf_tensor_name("lm_head.weight"), "output.weight");
  EXPECT_EQ(gguf_tensor_name("model.layers.x.mlp.up_proj.weight"), "");
  EXPECT_EQ(gguf_tensor_name("model.layers.0.self_attn.sub_norm.weight"), "");
}

TEST(ModelExport, GgufLlamaBinaryGroup128IsLosslessWithAllKeys) {
  const auto s = gguf_spec();
  const auto m = gguf_model(s, 2);
  const std::string path = temp_path("b.gguf");
  const auto rep = export_gguf(m, path);
  GgufFile g(path);
  auto u = [&](const std::string& k) { return g.find(k) ? g.find(k)->u : 999999u; };
  EXPECT_EQ(g.find("general.architecture")->s, "llama");
  EXPECT_EQ(g.find("general.name")->s, "bitforge");
  EXPECT_EQ(u("general.file_type"), 40u);
  EXPECT_EQ(u("llama.context_length"), 24u);
  EXPECT_EQ(u("llama.embedding_length"), 256u);
  EXPECT_EQ(u("llama.block_count"), 2u);
  EXPECT_EQ(u("llama.feed_forward_length"), 512u);
  EXPECT_EQ(u("llama.rope.dimension_count"), 64u);
  EXPECT_EQ(u("llama.attention.head_count"), 4u);
  EXPECT_EQ(u("llama.attention.head_count_kv"), 2u);
  EXPECT_EQ(u("llama.vocab_size"), 40u);
  EXPECT_FLOAT_EQ(float(g.find("llama.attention.layer_norm_rms_epsilon")->f), 1e-6f);
  EXPECT_FLOAT_EQ(float(g.find("llama.rope.freq_base")->f), 10000.f);
  EXPECT_EQ(g.find("tokenizer.ggml.model")->s, "llama");
  const auto& toks = g.find("tokenizer.ggml.tokens")->elems;
  ASSERT_EQ(toks.size(), 40u);
  EXPECT_EQ(toks[1].s, "<s>");
  EXPECT_EQ(toks[39].s, "[PAD39]");
  EXPECT_EQ(g.find("tokenizer.ggml.token_type")->elems[39].i, 5);
  EXPECT_EQ(g.find("tokenizer.ggml.scores")->elems.size(), 40u);
  EXPECT_EQ(u("tokenizer.ggml.bos_token_id"), 1u);
  EXPECT_EQ(u("tokenizer.ggml.eos_token_id"), 2u);
  EXPECT_EQ(u("tokenizer.ggml.unknown_token_id"), 0u);
  EXPECT_TRUE(g.find("tokenizer.ggml.add_bos_token")->u);
  // tensors
  for (const char* n : {"token_embd.weight", "output_norm.weight", "blk.1.attn_norm.weight", "blk.1.ffn_norm.weight"})
    EXPECT_NE(g.find_tensor(n), nullptr) << n;
  EXPECT_EQ(g.find_tensor("output.weight"), nullptr);
  EXPECT_EQ(g.find_tensor("blk.0.attn_norm.weight")->type, GgmlType::F32);
  EXPECT_EQ(g.find_tensor("token_embd.weight")->type, GgmlType::F16);
  EXPECT_EQ(g.find_tensor("token_embd.weight")->ne, (std::vector<uint64_t>{256, 40}));
  for (const char* n : {"attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"}) {
    const auto* t = g.find_tensor(std::string("blk.0.") + n + ".weight");
    ASSERT_NE(t, nullptr) << n;
    EXPECT_EQ(t->type, GgmlType::Q1_0) << n;
  }
  for (const auto& t : rep.tensors)
    if (t.kind == "binary") {
      EXPECT_TRUE(t.exact) << t.name;
      EXPECT_NEAR(t.bits_per_weight, 1.125, 1e-12);
    }
  // q and k are permuted rows of the effective weight, v is not
  const auto perm_q = llama_qk_permutation(4, 64), perm_k = llama_qk_permutation(2, 64);
  for (auto [hf, gg, perm] : {std::tuple{"model.layers.1.self_attn.q_proj.weight", "blk.1.attn_q.weight", &perm_q},
                              std::tuple{"model.layers.1.self_attn.k_proj.weight", "blk.1.attn_k.weight", &perm_k},
                              std::tuple{"model.layers.1.self_attn.v_proj.weight", "blk.1.attn_v.weight",
                                         static_cast<const std::vector<int64_t>*>(nullptr)}}) {
    const auto& L = find_layer(m, hf);
    const auto W = effective(L);
    const auto D = dequant(g, gg);
    for (int64_t r = 0; r < L.out; ++r) {
      const int64_t src = perm ? (*perm)[r] : r;
      for (int64_t c = 0; c < L.in; ++c) ASSERT_EQ(D[r * L.in + c], W[src * L.in + c]) << gg << " " << r << "," << c;
    }
  }
  std::remove(path.c_str());
}

TEST(ModelExport, GgufRequantizesAndFoldsAnchorsAndReports) {
  auto s = gguf_spec();
  s.group_size = 32;  // scales vary inside a 128-block → requantized
  s.anchor_fraction = 0.01;
  const auto m = gguf_model(s, 3);
  const std::string path = temp_path("c.gguf");
  const auto rep = export_gguf(m, path);
  GgufFile g(path);
  for (const auto& t : rep.tensors)
    if (t.kind == "binary") {
      EXPECT_FALSE(t.exact);
      EXPECT_GT(t.max_abs_diff, 0);
      EXPECT_GT(t.anchors, 0);
      EXPECT_NE(t.note.find("requantized"), std::string::npos);
      EXPECT_NE(t.note.find("anchors folded"), std::string::npos);
      // the reported difference is the real one
      if (t.name == "blk.0.attn_v.weight") {
        const auto W = effective(find_layer(m, "model.layers.0.self_attn.v_proj.weight"));
        const auto D = dequant(g, t.name);
        double mx = 0;
        for (size_t i = 0; i < W.size(); ++i) mx = std::max(mx, std::fabs(double(D[i]) - W[i]));
        EXPECT_DOUBLE_EQ(mx, t.max_abs_diff);
      }
    }
  EXPECT_FALSE(rep.notes.empty());
  EXPECT_NE(rep.to_table().find("anchors"), std::string::npos);

  // channel granularity: exact apart from the folded anchors; fold rule: binary code = sign(anchor value)
  auto s2 = gguf_spec();
  s2.granularity = ScaleGranularity::channel;
  s2.anchor_fraction = 0.002;
  const auto m2 = gguf_model(s2, 4);
  export_gguf(m2, path);
  GgufFile g2(path);
  const auto& L = find_layer(m2, "model.layers.0.mlp.down_proj.weight");
  const auto D = dequant(g2, "blk.0.ffn_down.weight");
  for (int64_t r = 0; r < L.out; ++r)
    for (int64_t c = 0; c < L.in; ++c) {
      const int64_t i = r * L.in + c;
      auto it = std::lower_bound(L.anchor_index.begin(), L.anchor_index.end(), i);
      const bool anchor = it != L.anchor_index.end() && *it == i;
      const float code = anchor ? (L.anchor_value[it - L.anchor_index.begin()] >= 0 ? 1.f : -1.f) : float(L.codes[i]);
      ASSERT_EQ(D[i], L.scales[r] * code) << r << "," << c;
    }
  std::remove(path.c_str());
}

TEST(ModelExport, GgufTernaryTypesAndDenseFallback) {
  auto s = gguf_spec();
  s.quantizer = WeightQuantizer::ternary;
  s.granularity = ScaleGranularity::channel;
  const auto m = gguf_model(s, 5);
  const std::string path = temp_path("d.gguf");
  for (auto [opt, type, bpw] : {std::tuple{GgufTernaryType::tq2_0, GgmlType::TQ2_0, 2.0625},
                                std::tuple{GgufTernaryType::tq1_0, GgmlType::TQ1_0, 1.6875},
                                std::tuple{GgufTernaryType::q2_0, GgmlType::Q2_0, 2.25}}) {
    GgufExportOptions o;
    o.ternary = opt;
    const auto rep = export_gguf(m, path, o);
    GgufFile g(path);
    EXPECT_EQ(g.find_tensor("blk.0.ffn_up.weight")->type, type);
    for (const auto& t : rep.tensors)
      if (t.kind == "ternary") {
        EXPECT_TRUE(t.exact) << t.name;
        EXPECT_NEAR(t.bits_per_weight, bpw, 1e-12);
      }
    const auto& L = find_layer(m, "model.layers.1.mlp.down_proj.weight");
    const auto W = effective(L);
    EXPECT_EQ(dequant(g, "blk.1.ffn_down.weight"), W);
  }
  // a row length that is not a multiple of 256 → dense fallback, reported
  auto s2 = tiny::tiny_spec();  // H = 64
  s2.quantizer = WeightQuantizer::ternary;
  s2.anchor_fraction = 0;
  auto m2 = tiny::tiny_model(s2, 6);
  m2.tokenizer_kind = "sentencepiece";
  m2.vocab = tiny::tiny_vocab(40);
  const auto rep2 = export_gguf(m2, path);
  for (const auto& t : rep2.tensors)
    if (t.kind == "ternary") {
      EXPECT_EQ(t.stored_as, "F16");
      EXPECT_NE(t.note.find("not a multiple"), std::string::npos);
    }
  std::remove(path.c_str());
}

TEST(ModelExport, GgufRefusesWhatLlamaCppCannotRun) {
  const std::string path = temp_path("e.gguf");
  auto expect_refused = [&](const ExportModel& m, const std::string& needle, const GgufExportOptions& o = {}) {
    try {
      export_gguf(m, path, o);
      ADD_FAILURE() << "expected GgufExportError mentioning " << needle;
    } catch (const GgufExportError& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  const auto s = gguf_spec();
  auto byte_tok = gguf_model(s, 7);
  byte_tok.tokenizer_kind = "byte";
  expect_refused(byte_tok, "tokenizer kind 'byte'");
  auto a8s = s;
  a8s.activation_bits = 8;
  auto a8 = gguf_model(a8s, 7);
  expect_refused(a8, "A8");
  GgufExportOptions allow;
  allow.allow_activation_mismatch = true;
  const auto rep = export_gguf(a8, path, allow);
  ASSERT_FALSE(rep.notes.empty());
  EXPECT_NE(rep.notes[0].find("float activations"), std::string::npos);
  auto ns = s;
  ns.input_norm = true;
  expect_refused(gguf_model(ns, 7), "input RMSNorm");
  auto rs = s;
  rs.model.hidden_act = MlpActivation::relu2;
  expect_refused(gguf_model(rs, 7), "relu2");
  auto ss = s;
  ss.model.subln = true;
  expect_refused(gguf_model(ss, 7), "SubLN");
  auto big = gguf_model(s, 7);
  big.vocab = tiny::tiny_vocab(41);
  expect_refused(big, "tokenizer has 41 tokens");
  std::remove(path.c_str());
}

TEST(ModelExport, GgufQwen3HasQkNormsAndNoPermutation) {
  auto s = gguf_spec();
  s.model.arch = "qwen3";
  s.model.tie_word_embeddings = false;
  const auto m = gguf_model(s, 8);
  const std::string path = temp_path("f.gguf");
  export_gguf(m, path);
  GgufFile g(path);
  EXPECT_EQ(g.find("general.architecture")->s, "qwen3");
  EXPECT_EQ(g.find("qwen3.attention.key_length")->u, 64u);
  EXPECT_NE(g.find_tensor("blk.0.attn_q_norm.weight"), nullptr);
  EXPECT_NE(g.find_tensor("blk.0.attn_k_norm.weight"), nullptr);
  EXPECT_NE(g.find_tensor("output.weight"), nullptr);
  EXPECT_EQ(dequant(g, "blk.0.attn_q.weight"), effective(find_layer(m, "model.layers.0.self_attn.q_proj.weight")));
  std::remove(path.c_str());
}

TEST(Inspect, PackedSafetensorsGgufAndGarbage) {
  const auto s = gguf_spec();
  const auto m = gguf_model(s, 9);
  const std::string pk = temp_path("g.safetensors"), gg = temp_path("g.gguf"), st = temp_path("plain.safetensors");
  const auto rep = export_packed(m, pk);
  export_gguf(m, gg);
  {
    auto j = nlohmann::json::parse(inspect_file(pk, true));
    EXPECT_EQ(j["kind"], "bitforge.packed");
    EXPECT_EQ(j["total_params"].get<int64_t>(), rep.total_params);
    EXPECT_EQ(j["file_bytes"].get<int64_t>(), rep.file_bytes);
    EXPECT_EQ(j["metadata"]["config"]["model"]["hidden_size"], 256);
    bool saw = false;
    for (const auto& t : j["tensors"])
      if (t["name"] == "model.layers.0.self_attn.q_proj.weight") {
        saw = true;
        EXPECT_EQ(t["granularity"], "group");
        EXPECT_NEAR(t["bits_per_weight"].get<double>(), 1.125, 1e-12);
      }
    EXPECT_TRUE(saw);
    const std::string text = inspect_file(pk, false);
    EXPECT_NE(text.find("bitforge.packed"), std::string::npos);
    EXPECT_NE(text.find("total:"), std::string::npos);
  }
  {
    auto j = nlohmann::json::parse(inspect_file(gg, true));
    EXPECT_EQ(j["kind"], "gguf");
    // metadata values keep their GGUF types: a string, not its display form '"llama"'; numbers as numbers;
    // arrays as {type, length}
    EXPECT_EQ(j["metadata"]["general.architecture"], "llama");
    EXPECT_TRUE(j["metadata"]["llama.block_count"].is_number_integer());
    EXPECT_TRUE(j["metadata"]["llama.attention.layer_norm_rms_epsilon"].is_number_float());
    EXPECT_TRUE(j["metadata"]["tokenizer.ggml.tokens"]["length"].is_number_integer());
    EXPECT_EQ(j["total_params"].get<int64_t>(), rep.total_params);
    EXPECT_GT(j["compression_vs_fp16"].get<double>(), 1.0);
  }
  {
    SafetensorsWriter w;
    std::vector<uint16_t> v(6, 0);
    w.add("a.weight", Dtype::BF16, {2, 3}, v.data(), 12);
    w.write(st);
    auto j = nlohmann::json::parse(inspect_file(st, true));
    EXPECT_EQ(j["kind"], "safetensors");
    EXPECT_EQ(j["tensors"][0]["bits_per_weight"], 16.0);
  }
  {
    std::ofstream(st, std::ios::binary) << "this is not a model file at all";
    EXPECT_THROW(inspect_file(st, false), FormatError);
    EXPECT_THROW(inspect_file(temp_path("missing"), false), std::runtime_error);
  }
  for (const auto& p : {pk, gg, st}) std::remove(p.c_str());
}
