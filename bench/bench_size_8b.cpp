// Packed-file size of an 8B-shaped model (Qwen3-8B dimensions, random binary weights, no training), next to
// Bonsai 8B's Q1_0 GGUF (1,151,820,864 bytes). Writes a real file and reports its bytes and bits per weight.
//   build/bench/bench_size_8b [OUT=/tmp/bitforge-8b.packed.safetensors] [--layers N (default 36)]
// Like Bonsai, every projection, the embedding and the LM head are binary with one fp16 scale per 128 weights;
// norms stay full precision (stored BF16). Needs ~11 GB of RAM (codes are held as int8 before packing).
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <random>

#include "data/tokenizer.h"
#include "export/model_export.h"
#include "bench/bench_main.h"

using namespace bitforge;

namespace {
int run_bench(int argc, char** argv) {
  std::string out = "/tmp/bitforge-8b.packed.safetensors";
  int64_t layers = 36;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--layers") && i + 1 < argc) layers = std::stoll(argv[++i]);
    else out = argv[i];
  }
  formats::ExportModel m;
  ModelConfig& c = m.config;  // Qwen3-8B (config.json of Qwen/Qwen3-8B)
  c.arch = "qwen3";
  c.vocab_size = 151936;
  c.hidden_size = 4096;
  c.intermediate_size = 12288;
  c.num_hidden_layers = layers;
  c.num_attention_heads = 32;
  c.num_key_value_heads = 8;
  c.head_dim = 128;
  c.max_position_embeddings = 40960;
  c.rope_theta = 1000000;
  c.tie_word_embeddings = false;
  m.quant_config = "weight: binary\ngranularity: group\ngroup_size: 128\nlayers: [attention, mlp, embedding, lm_head]\n";
  data::ByteTokenizer tok;
  m.tokenizer_kind = tok.kind();
  m.tokenizer_bytes = tok.serialize();

  std::mt19937_64 rng(42);
  auto binary = [&](const std::string& name, int64_t out_f, int64_t in_f) {
    formats::ExportLayer L;
    L.name = name;
    L.quantizer = WeightQuantizer::binary;
    L.granularity = ScaleGranularity::group;
    L.group_size = 128;
    L.out = out_f;
    L.in = in_f;
    L.codes.resize(static_cast<size_t>(out_f * in_f));
    for (size_t i = 0; i < L.codes.size(); i += 64) {
      uint64_t bits = rng();
      for (size_t j = 0; j < 64 && i + j < L.codes.size(); ++j) L.codes[i + j] = (bits >> j) & 1 ? 1 : -1;
    }
    L.scales.assign(static_cast<size_t>(out_f * (in_f / 128)), 0.015625f);  // fp16-exact
    m.layers.push_back(std::move(L));
  };
  auto dense = [&](const std::string& name, int64_t n) {
    m.tensors[name] = formats::ExportTensor{{n}, std::vector<float>(static_cast<size_t>(n), 1.0f)};
  };
  const int64_t H = c.hidden_size, I = c.intermediate_size, D = c.head_dim;
  binary("model.embed_tokens.weight", c.vocab_size, H);
  for (int64_t l = 0; l < layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    binary(p + "self_attn.q_proj.weight", c.num_attention_heads * D, H);
    binary(p + "self_attn.k_proj.weight", c.num_key_value_heads * D, H);
    binary(p + "self_attn.v_proj.weight", c.num_key_value_heads * D, H);
    binary(p + "self_attn.o_proj.weight", H, c.num_attention_heads * D);
    binary(p + "mlp.gate_proj.weight", I, H);
    binary(p + "mlp.up_proj.weight", I, H);
    binary(p + "mlp.down_proj.weight", H, I);
    dense(p + "input_layernorm.weight", H);
    dense(p + "post_attention_layernorm.weight", H);
    dense(p + "self_attn.q_norm.weight", D);
    dense(p + "self_attn.k_norm.weight", D);
  }
  dense("model.norm.weight", H);
  binary("lm_head.weight", c.vocab_size, H);

  const auto t0 = std::chrono::steady_clock::now();
  auto rep = formats::export_packed(m, out);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const int64_t bonsai = 1151820864;
  std::printf("# 8B-shaped (Qwen3-8B dims, %lld layers), binary group-128 everywhere incl. embedding and LM head\n",
              static_cast<long long>(layers));
  std::printf("parameters          : %lld\n", static_cast<long long>(rep.total_params));
  std::printf("packed file         : %lld bytes (%.4f bits/weight), written in %.1f s -> %s\n",
              static_cast<long long>(rep.file_bytes), 8.0 * rep.file_bytes / rep.total_params, secs, out.c_str());
  std::printf("FP16                : %lld bytes (%.1fx larger)\n", static_cast<long long>(rep.fp16_bytes),
              static_cast<double>(rep.fp16_bytes) / rep.file_bytes);
  if (layers == 36)
    std::printf("Bonsai 8B (Q1_0)    : %lld bytes (%.4f bits/weight); bitforge / Bonsai = %.4f\n",
                static_cast<long long>(bonsai), 8.0 * bonsai / rep.total_params,
                static_cast<double>(rep.file_bytes) / bonsai);
  return 0;
}
}  // namespace

int main(int argc, char** argv) {
  return bitforge::bench::guarded_main(
      argc, argv,
      "[OUT=/tmp/bitforge-8b.packed.safetensors] [--layers N (default 36)]\nWrites a packed file of a Qwen3-8B-shaped binary model (random weights) and reports its size vs FP16 and Bonsai 8B.\n",
      run_bench);
}
