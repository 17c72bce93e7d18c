// Makes a full-size model for the end-to-end speed comparison (scripts/bench_e2e.sh) without training: a Llama-style
// decoder with random weights (the trainer's own initialisation, seeded), quantized by BitLinear exactly as training
// would (binary or ternary, fp16 group scales of 128 columns, no anchors so that the GGUF holds the same model), and
// a SentencePiece BPE tokenizer trained on a text corpus (GGUF needs one; llama-bench and bench_generate feed random
// token ids). Exported by bitforge's own exporters, as the pipeline's export stage does:
//   OUT/export/model.packed.safetensors   bitforge's packed runtime (bench_generate)
//   OUT/export/model.gguf                 llama.cpp (Q1_0 for binary, TQ2_0 for ternary; llama-bench)
// The weights are random, so the model's text is noise: this is for speed only (both engines run the same layers,
// shapes and bytes). The default shape is the 0.73B-parameter model: hidden 2048, 16 layers, MLP 5632,
// 16 heads (4 KV heads), vocabulary 4096, tied embeddings.
//
//   usage: bench_make_random_model OUT [--quant binary|ternary] [--hidden H] [--layers L] [--intermediate I]
//            [--heads N] [--kv-heads K] [--vocab V] [--ctx C] [--seed S] [--corpus DIR]
#include <torch/torch.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>

#include "data/corpus.h"
#include "data/tokenizer.h"
#include "export/model_export.h"
#include "trainer/export_model.h"
#include "trainer/model.h"
#include "bench/bench_main.h"

namespace fs = std::filesystem;

static int bench_body(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr,
                 "usage: %s OUT [--quant binary|ternary] [--hidden H] [--layers L] [--intermediate I] [--heads N] "
                 "[--kv-heads K] [--vocab V] [--ctx C] [--seed S] [--corpus DIR]\n",
                 argv[0]);
    return 2;
  }
  const std::string out = argv[1];
  std::string quant = "binary", corpus = "/usr/share/doc/python3.11/html/_sources";
  bitforge::ModelConfig cfg;
  cfg.arch = "llama";
  cfg.hidden_size = 2048;
  cfg.num_hidden_layers = 16;
  cfg.intermediate_size = 5632;
  cfg.num_attention_heads = 16;
  cfg.num_key_value_heads = 4;
  cfg.vocab_size = 4096;
  cfg.max_position_embeddings = 1024;
  cfg.tie_word_embeddings = true;
  uint64_t seed = 1;
  for (int i = 2; i + 1 < argc; i += 2) {
    const std::string a = argv[i], v = argv[i + 1];
    if (a == "--quant") quant = v;
    else if (a == "--hidden") cfg.hidden_size = std::atoll(v.c_str());
    else if (a == "--layers") cfg.num_hidden_layers = std::atoll(v.c_str());
    else if (a == "--intermediate") cfg.intermediate_size = std::atoll(v.c_str());
    else if (a == "--heads") cfg.num_attention_heads = std::atoll(v.c_str());
    else if (a == "--kv-heads") cfg.num_key_value_heads = std::atoll(v.c_str());
    else if (a == "--vocab") cfg.vocab_size = std::atoll(v.c_str());
    else if (a == "--ctx") cfg.max_position_embeddings = std::atoll(v.c_str());
    else if (a == "--seed") seed = std::strtoull(v.c_str(), nullptr, 10);
    else if (a == "--corpus") corpus = v;
    else {
      std::fprintf(stderr, "unknown option %s\n", a.c_str());
      return 2;
    }
  }
  if (quant != "binary" && quant != "ternary") {
    std::fprintf(stderr, "--quant must be binary or ternary\n");
    return 2;
  }
  bitforge::QuantConfig q;
  q.weight = quant == "binary" ? bitforge::WeightQuantizer::binary : bitforge::WeightQuantizer::ternary;
  q.granularity = bitforge::ScaleGranularity::group;
  q.group_size = 128;
  q.anchor_fraction = 0.0;  // GGUF cannot hold anchors: both files hold exactly the same weights
  q.activations = bitforge::ActivationQuant::none;

  // tokenizer: SentencePiece BPE of the requested size on the corpus (GGUF's tokenizer.ggml.model "llama")
  std::printf("training a SentencePiece BPE tokenizer (vocab %lld) on %s\n", static_cast<long long>(cfg.vocab_size),
              corpus.c_str());
  auto docs = bitforge::data::read_text_dir(corpus, "**/*.rst.txt", 400);
  bitforge::data::SentencePieceTrainOptions so;
  so.vocab_size = static_cast<int32_t>(cfg.vocab_size);
  so.input_sentence_size = 50000;
  auto tok = bitforge::data::train_sentencepiece(docs, so);
  cfg.vocab_size = tok->vocab_size();

  torch::manual_seed(seed);
  bitforge::Transformer model(cfg, q);
  int64_t params = 0;
  for (const auto& p : model->parameters()) params += p.numel();
  std::printf("model: hidden %lld, %lld layers, MLP %lld, heads %lld/%lld, vocab %lld, %.3fB parameters, %s\n",
              static_cast<long long>(cfg.hidden_size), static_cast<long long>(cfg.num_hidden_layers),
              static_cast<long long>(cfg.intermediate_size), static_cast<long long>(cfg.num_attention_heads),
              static_cast<long long>(cfg.num_key_value_heads), static_cast<long long>(cfg.vocab_size), params / 1e9,
              quant.c_str());

  const std::string quant_text = "weight: " + quant + "\ngranularity: group\ngroup_size: 128\nanchor_fraction: 0\n"
                                 "activations: none\nnote: random weights (bench_make_random_model), not trained\n";
  auto em = bitforge::make_export_model(model, tok.get(), quant_text);
  model = nullptr;  // the fp32 weights are no longer needed
  const fs::path dir = fs::path(out) / "export";
  fs::create_directories(dir);
  const auto rp = bitforge::formats::export_packed(em, (dir / "model.packed.safetensors").string());
  std::printf("wrote %s (%lld bytes)\n", rp.path.c_str(), static_cast<long long>(rp.file_bytes));
  const auto rg = bitforge::formats::export_gguf(em, (dir / "model.gguf").string());
  std::printf("wrote %s (%lld bytes)\n", rg.path.c_str(), static_cast<long long>(rg.file_bytes));
  return 0;
}

int main(int argc, char** argv) {
  return bitforge::bench::guarded_main(argc, argv, "OUT_DIR [--quant binary|ternary]  (a random 0.7B model, packed + GGUF)\n", bench_body);
}
