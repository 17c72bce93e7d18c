// Hugging Face checkpoints: tiny Llama (tied, single file) and Qwen3 (untied, sharded) made by transformers
// (tests/fixtures/hf/make_tiny_hf.py) load in C++ and give transformers' logits within 1e-4 (fp32); broken
// directories fail with errors naming the file and tensor; save_hf_checkpoint round-trips and transformers
// reads what it writes.
#include <gtest/gtest.h>
#include <torch/torch.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "export/safetensors_torch.h"
#include "trainer/hf_checkpoint.h"
#include "trainer/model.h"

namespace fs = std::filesystem;
using namespace bitforge;

namespace {

QuantConfig full_precision() {
  QuantConfig q;
  q.weight = WeightQuantizer::none;
  return q;
}

std::string read_file(const fs::path& p) {
  std::ifstream in(p);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

void write_file(const fs::path& p, const std::string& text) { std::ofstream(p) << text; }

// Runs `fn`, expects HfCheckpointError whose message contains every one of `needles`.
template <typename Fn>
void expect_error(Fn fn, std::initializer_list<std::string> needles) {
  try {
    fn();
    FAIL() << "expected HfCheckpointError";
  } catch (const HfCheckpointError& e) {
    const std::string msg = e.what();
    for (const auto& n : needles) EXPECT_NE(msg.find(n), std::string::npos) << "'" << n << "' not in: " << msg;
  }
}

class HfCheckpointTest : public ::testing::Test {
 protected:
  // The fixtures are generated once and cached under $BITFORGE_BINARY_DIR/test-fixtures/hf (ctest runs every
  // test in its own process), regenerated when the script is newer than the cache; without
  // BITFORGE_BINARY_DIR they go to this process's scratch directory. Broken copies live in the scratch dir.
  static void SetUpTestSuite() {
    const char* py = std::getenv("BITFORGE_PYTHON");
    const char* src = std::getenv("BITFORGE_SOURCE_DIR");
    if (!py || !src) {
      skip_reason_ = "BITFORGE_PYTHON / BITFORGE_SOURCE_DIR not set (run through ctest)";
      return;
    }
    python_ = py;
    script_ = (fs::path(src) / "tests/fixtures/hf/make_tiny_hf.py").string();
    const std::string pid = std::to_string(::getpid());
    root_ = fs::temp_directory_path() / ("bitforge_hf_test_" + pid);
    fs::remove_all(root_);
    fs::create_directories(root_);
    const char* bin = std::getenv("BITFORGE_BINARY_DIR");
    fixtures_ = bin ? fs::path(bin) / "test-fixtures" / "hf" : root_ / "fixtures";
    const fs::path stamp = fixtures_ / "stamp";
    std::error_code ec;
    if (fs::exists(stamp) && fs::last_write_time(stamp) >= fs::last_write_time(script_)) return;

    const std::string log = (root_ / "python.log").string();
    const std::string probe = "\"" + python_ + "\" -c 'import transformers, safetensors' > \"" + log + "\" 2>&1";
    if (std::system(probe.c_str()) != 0) {
      skip_reason_ = "transformers/safetensors not importable by " + python_ + ":\n" + read_file(log);
      return;
    }
    const fs::path tmp = fixtures_.parent_path() / ("hf.tmp." + pid);
    fs::create_directories(tmp.parent_path());
    fs::remove_all(tmp);
    const std::string cmd = "\"" + python_ + "\" \"" + script_ + "\" \"" + tmp.string() + "\" > \"" + log + "\" 2>&1";
    if (std::system(cmd.c_str()) != 0) {
      fail_reason_ = "fixture script failed: " + cmd + "\n" + read_file(log);
      return;
    }
    write_file(tmp / "stamp", "make_tiny_hf.py output\n");
    fs::remove_all(fixtures_, ec);
    fs::rename(tmp, fixtures_, ec);  // another process may have won the race: then use its copy
    if (ec) fs::remove_all(tmp, ec);
  }
  static void TearDownTestSuite() {
    std::error_code ec;
    if (!root_.empty()) fs::remove_all(root_, ec);
  }
  void SetUp() override {
    if (!skip_reason_.empty()) GTEST_SKIP() << skip_reason_;
    if (!fail_reason_.empty()) GTEST_FAIL() << fail_reason_;
  }

  static fs::path fixture(const std::string& name) { return fixtures_ / name; }
  // A private copy of a fixture directory the test may break.
  static fs::path copy_of(const std::string& name, const std::string& as) {
    const fs::path dst = root_ / as;
    fs::remove_all(dst);
    fs::copy(fixture(name), dst, fs::copy_options::recursive);
    return dst;
  }

  // max |C++ logits − transformers logits| for one fixture directory.
  static double max_logit_diff(const fs::path& dir, HfCheckpoint* info) {
    Transformer model = load_hf_model(dir.string(), full_precision(), info);
    model->eval();
    auto ref = safetensors::load((dir / "ref.safetensors").string());
    torch::NoGradGuard no_grad;
    auto logits = model(ref.at("input_ids"));
    EXPECT_EQ(logits.sizes(), ref.at("logits").sizes());
    return (logits - ref.at("logits")).abs().max().item<double>();
  }

  static inline std::string skip_reason_, fail_reason_, python_, script_;
  static inline fs::path root_, fixtures_;
};

}  // namespace

TEST_F(HfCheckpointTest, LlamaTiedMatchesTransformers) {
  HfCheckpoint info;
  const double diff = max_logit_diff(fixture("llama_tied"), &info);
  std::cout << "[ measure ] llama (tied, GQA 4/2): max |logits - transformers| = " << diff << "\n";
  RecordProperty("llama_max_abs_logit_diff", std::to_string(diff));
  EXPECT_LE(diff, 1e-4);
  EXPECT_EQ(info.model_type, "llama");
  EXPECT_TRUE(info.model.tie_word_embeddings);
  EXPECT_EQ(info.model.num_key_value_heads, 2);
  EXPECT_DOUBLE_EQ(info.model.rope_theta, 500000.0);  // transformers 5 writes it under rope_parameters
  EXPECT_EQ(info.weight_files.size(), 1u);
  EXPECT_TRUE(info.weight_map.empty());
  EXPECT_EQ(info.tokenizer_path, "");
}

TEST_F(HfCheckpointTest, Qwen3UntiedShardedMatchesTransformers) {
  HfCheckpoint info;
  const double diff = max_logit_diff(fixture("qwen3_untied"), &info);
  std::cout << "[ measure ] qwen3 (untied, sharded, q/k norm): max |logits - transformers| = " << diff << "\n";
  RecordProperty("qwen3_max_abs_logit_diff", std::to_string(diff));
  EXPECT_LE(diff, 1e-4);
  EXPECT_EQ(info.model.arch, "qwen3");
  EXPECT_FALSE(info.model.tie_word_embeddings);
  EXPECT_DOUBLE_EQ(info.model.rope_theta, 1000000.0);
  EXPECT_GT(info.weight_files.size(), 1u);
  EXPECT_EQ(info.weight_map.size(), 25u);  // 2 × 11 per layer + embed + norm + lm_head
}

TEST_F(HfCheckpointTest, Bf16WeightsConvertToFp32) {
  const fs::path dir = copy_of("llama_tied", "bf16");
  auto t = safetensors::load((dir / "model.safetensors").string());
  std::map<std::string, torch::Tensor> bf;
  for (auto& [n, v] : t) bf[n] = v.to(torch::kBFloat16);
  safetensors::save((dir / "model.safetensors").string(), bf, {{"format", "pt"}});
  Transformer model = load_hf_model(dir.string(), full_precision());
  auto w = model->named_parameters()["model.layers.1.mlp.up_proj.weight"];
  EXPECT_EQ(w.scalar_type(), torch::kFloat);
  EXPECT_TRUE(torch::equal(w, bf.at("model.layers.1.mlp.up_proj.weight").to(torch::kFloat)));
}

TEST_F(HfCheckpointTest, MissingConfigJson) {
  const fs::path dir = copy_of("llama_tied", "no_config");
  fs::remove(dir / "config.json");
  expect_error([&] { read_hf_checkpoint(dir.string()); }, {"config.json", "missing"});
}

TEST_F(HfCheckpointTest, MissingShard) {
  const fs::path dir = copy_of("qwen3_untied", "no_shard");
  fs::remove(dir / "model-00002-of-00007.safetensors");
  expect_error([&] { read_hf_checkpoint(dir.string()); }, {"model-00002-of-00007.safetensors", "missing shard"});
}

TEST_F(HfCheckpointTest, IndexEntryNotInItsShard) {
  const fs::path dir = copy_of("qwen3_untied", "bad_index");
  std::string idx = read_file(dir / "model.safetensors.index.json");
  const std::string key = "\"weight_map\": {";
  idx.replace(idx.find(key), key.size(),
              key + "\n    \"model.layers.0.mlp.extra.weight\": \"model-00001-of-00007.safetensors\",");
  write_file(dir / "model.safetensors.index.json", idx);
  expect_error([&] { load_hf_model(dir.string(), full_precision()); },
               {"model.layers.0.mlp.extra.weight", "model-00001-of-00007.safetensors", "not found"});
}

TEST_F(HfCheckpointTest, WrongTensorShape) {
  const fs::path dir = copy_of("llama_tied", "bad_shape");
  auto t = safetensors::load((dir / "model.safetensors").string());
  t["model.layers.1.mlp.up_proj.weight"] = t["model.layers.1.mlp.up_proj.weight"].t().contiguous();
  safetensors::save((dir / "model.safetensors").string(), t, {{"format", "pt"}});
  expect_error([&] { load_hf_model(dir.string(), full_precision()); },
               {"model.layers.1.mlp.up_proj.weight: shape [64, 96] in", "model.safetensors", "expected [96, 64]"});
}

TEST_F(HfCheckpointTest, MissingAndUnexpectedTensors) {
  const fs::path dir = copy_of("llama_tied", "bad_names");
  auto t = safetensors::load((dir / "model.safetensors").string());
  t.erase("model.norm.weight");
  safetensors::save((dir / "model.safetensors").string(), t, {{"format", "pt"}});
  expect_error([&] { load_hf_model(dir.string(), full_precision()); }, {"missing tensors", "model.norm.weight"});
  t["model.layers.0.self_attn.q_norm.weight"] = torch::ones({16});  // a Qwen3 tensor in a Llama checkpoint
  t["model.norm.weight"] = torch::ones({64});
  safetensors::save((dir / "model.safetensors").string(), t, {{"format", "pt"}});
  expect_error([&] { load_hf_model(dir.string(), full_precision()); },
               {"model.layers.0.self_attn.q_norm.weight", "unexpected tensor"});
}

TEST_F(HfCheckpointTest, UnsupportedModelType) {
  const fs::path dir = copy_of("llama_tied", "gpt2");
  std::string cfg = read_file(dir / "config.json");
  cfg.replace(cfg.find("\"llama\""), 7, "\"gpt2\"");
  write_file(dir / "config.json", cfg);
  expect_error([&] { read_hf_checkpoint(dir.string()); }, {"config.json", "model_type", "gpt2"});
}

TEST(HfConfig, ParsesLegacyAndRejectsUnsupported) {
  const std::string base =
      R"("vocab_size": 32, "hidden_size": 16, "intermediate_size": 24, "num_hidden_layers": 1,
         "num_attention_heads": 2)";
  // transformers 4.x: top-level rope_theta, rope_scaling null, no head_dim / num_key_value_heads.
  ModelConfig c = parse_hf_config(
      R"({"model_type": "llama", "rope_theta": 1234.0, "rope_scaling": null, )" + base + "}", "cfg.json");
  EXPECT_DOUBLE_EQ(c.rope_theta, 1234.0);
  EXPECT_EQ(c.head_dim, 8);
  EXPECT_EQ(c.num_key_value_heads, 2);
  EXPECT_FALSE(c.tie_word_embeddings);
  EXPECT_EQ(c.hidden_act, MlpActivation::swiglu);

  auto expect_bad = [&](const std::string& extra, const std::string& needle) {
    try {
      parse_hf_config("{" + extra + ", " + base + "}", "cfg.json");
      ADD_FAILURE() << "accepted: " << extra;
    } catch (const HfCheckpointError& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  expect_bad(R"("model_type": "llama", "hidden_act": "gelu")", "hidden_act");
  expect_bad(R"("model_type": "llama", "rope_parameters": {"rope_type": "llama3", "rope_theta": 5e5})", "llama3");
  expect_bad(R"("model_type": "llama", "num_key_value_heads": 3)", "num_key_value_heads");
  expect_bad(R"("model_type": "llama", "head_dim": "16")", "head_dim: expected an integer");
  expect_bad(R"("model_type": "qwen3", "use_sliding_window": true)", "use_sliding_window");
  expect_bad(R"("model_type": "mistral")", "mistral");
  EXPECT_THROW(parse_hf_config("{not json", "cfg.json"), HfCheckpointError);
  EXPECT_THROW(parse_hf_config(R"({"model_type": "llama"})", "cfg.json"), HfCheckpointError);  // no sizes
}

// save_hf_checkpoint → load_hf_model gives identical logits, and transformers reads the directory.
TEST_F(HfCheckpointTest, SaveRoundTripsAndTransformersReadsIt) {
  std::string cmd = "\"" + python_ + "\" \"" + script_ + "\" --eval";
  std::vector<std::pair<std::string, torch::Tensor>> ours;  // (arch, logits)
  std::vector<fs::path> outs;
  for (const bool qwen : {false, true}) {
    torch::manual_seed(7);
    ModelConfig cfg;
    cfg.arch = qwen ? "qwen3" : "llama";
    cfg.vocab_size = 96;
    cfg.hidden_size = 32;
    cfg.intermediate_size = 48;
    cfg.num_hidden_layers = 2;
    cfg.num_attention_heads = 4;
    cfg.num_key_value_heads = 2;
    cfg.max_position_embeddings = 32;
    cfg.rope_theta = 20000.0;
    cfg.tie_word_embeddings = !qwen;
    Transformer model(cfg, full_precision());
    {
      torch::NoGradGuard g;  // non-trivial norms
      for (auto& [n, p] : model->hf_parameters())
        if (n.find("norm") != std::string::npos) p.uniform_(0.5, 1.5);
    }
    const fs::path dir = root_ / (qwen ? "saved_qwen3" : "saved_llama");
    save_hf_checkpoint(model, dir.string());
    auto tokens = torch::randint(0, cfg.vocab_size, {2, 10}, torch::kLong);
    torch::NoGradGuard no_grad;
    auto logits = model(tokens);
    Transformer back = load_hf_model(dir.string(), full_precision());
    EXPECT_TRUE(torch::equal(back(tokens), logits)) << cfg.arch;

    const fs::path ids = dir / "ids.safetensors", out = dir / "hf_logits.safetensors";
    safetensors::save(ids.string(), {{"input_ids", tokens}});
    cmd += " \"" + dir.string() + "\" \"" + ids.string() + "\" \"" + out.string() + "\"";
    ours.emplace_back(cfg.arch, logits);
    outs.push_back(out);
  }
  const fs::path log = root_ / "eval.log";
  cmd += " > \"" + log.string() + "\" 2>&1";
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd << "\n" << read_file(log);
  for (size_t i = 0; i < ours.size(); ++i) {
    auto hf = safetensors::load(outs[i].string()).at("logits");
    const double diff = (hf - ours[i].second).abs().max().item<double>();
    std::cout << "[ measure ] " << ours[i].first << " saved by bitforge, run by transformers: max diff = " << diff
              << "\n";
    EXPECT_LE(diff, 1e-4) << ours[i].first;
  }
}

// A quantized model saved with effective weights is the same function as a dense model with those weights.
TEST_F(HfCheckpointTest, QuantizedModelSavesEffectiveWeights) {
  torch::manual_seed(3);
  ModelConfig cfg;
  cfg.vocab_size = 64;
  cfg.hidden_size = 32;
  cfg.intermediate_size = 64;
  cfg.num_hidden_layers = 1;
  cfg.num_attention_heads = 2;
  cfg.num_key_value_heads = 2;
  cfg.max_position_embeddings = 16;
  QuantConfig q;
  q.weight = WeightQuantizer::binary;
  q.granularity = ScaleGranularity::group;
  q.group_size = 16;
  Transformer model(cfg, q);
  const fs::path dir = root_ / "saved_binary";
  save_hf_checkpoint(model, dir.string());
  Transformer dense = load_hf_model(dir.string(), full_precision());
  auto tokens = torch::randint(0, cfg.vocab_size, {1, 8}, torch::kLong);
  torch::NoGradGuard no_grad;
  EXPECT_LE((dense(tokens) - model(tokens)).abs().max().item<double>(), 1e-5);
}
