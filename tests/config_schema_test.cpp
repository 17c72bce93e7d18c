// Config schema: defaults of every section, malformed configs (each with its specific error), --set parsing,
// and the effective-config round trip.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <random>

#include "config/config.h"

using namespace bitforge;

namespace {

/// Parses text and returns the ConfigError message ("" when it parsed).
std::string error_of(const std::string& yaml, const std::vector<std::string>& overrides = {}) {
  try {
    parse_config(yaml, "test.yaml", overrides);
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "";
}

#define EXPECT_ERROR_HAS(yaml, ...)                                              \
  do {                                                                           \
    const std::string msg_ = error_of(yaml);                                     \
    ASSERT_FALSE(msg_.empty()) << "expected an error for:\n" << yaml;            \
    for (const char* frag : {__VA_ARGS__}) EXPECT_NE(msg_.find(frag), std::string::npos) \
        << "error '" << msg_ << "' lacks '" << frag << "'";                      \
  } while (0)

}  // namespace

TEST(ConfigDefaults, EverySection) {
  Config c = parse_config("", "empty");
  EXPECT_EQ(c.model.arch, "llama");
  EXPECT_EQ(c.model.hidden_size, 256);
  EXPECT_EQ(c.model.resolved_head_dim(), 64);
  EXPECT_TRUE(c.model.tie_word_embeddings);
  EXPECT_EQ(c.quant.weight, WeightQuantizer::binary);
  EXPECT_EQ(c.quant.granularity, ScaleGranularity::group);
  EXPECT_EQ(c.quant.group_size, 128);
  EXPECT_DOUBLE_EQ(c.quant.anchor_fraction, 0.001);
  EXPECT_TRUE(c.quant.quantizes("attention"));
  EXPECT_FALSE(c.quant.quantizes("lm_head"));
  EXPECT_EQ(c.data.tokenizer, TokenizerKind::sentencepiece_bpe);
  EXPECT_EQ(c.data.glob, "**/*.rst.txt");
  EXPECT_DOUBLE_EQ(c.train.learning_rate, 1e-3);
  EXPECT_EQ(c.train.lr_scheduler, LrScheduler::cosine);
  EXPECT_EQ(c.train.gradient_accumulation_steps, 1);
  EXPECT_EQ(c.train.on_nonfinite, NonFinitePolicy::stop);
  EXPECT_EQ(c.distill.kd_loss, KdLoss::forward_kl);
  EXPECT_DOUBLE_EQ(c.distill.temperature, 2.0);
  EXPECT_TRUE(c.export_.gguf);
  EXPECT_EQ(c.export_.gguf_ternary, GgufTernaryType::tq2_0);
  EXPECT_EQ(c.eval.batch_size, 8);
  EXPECT_EQ(c.logging.level, "info");
  EXPECT_EQ(c.run.stages.front(), "prepare-data");
}

TEST(ConfigDefaults, SectionWithNoKeysKeepsDefaults) {
  Config c = parse_config("train:\nmodel:\n", "x");
  EXPECT_EQ(c.train.max_steps, TrainConfig{}.max_steps);
}

TEST(ConfigParse, ReadsValues) {
  Config c = parse_config(R"(
model: {hidden_size: 128, num_attention_heads: 4, num_key_value_heads: 2, arch: qwen3, tie_word_embeddings: false}
quant: {weight: ternary, granularity: channel, layers: [attention, mlp, lm_head]}
train: {learning_rate: 3.0e-4, lr_scheduler: two_stage, seed: 7, resume_from_checkpoint: auto}
distill: {kd_loss: jsd, beta: 0.3, hidden_layers: [0, 2], alpha_hidden: 1.0}
)", "x");
  EXPECT_EQ(c.model.num_key_value_heads, 2);
  EXPECT_EQ(c.model.arch, "qwen3");
  EXPECT_EQ(c.quant.weight, WeightQuantizer::ternary);
  EXPECT_TRUE(c.quant.quantizes("lm_head"));
  EXPECT_DOUBLE_EQ(c.train.learning_rate, 3e-4);
  EXPECT_EQ(c.train.seed, 7u);
  EXPECT_EQ(c.train.resume_from_checkpoint, "auto");
  EXPECT_EQ(c.distill.hidden_layers, (std::vector<int64_t>{0, 2}));
}

// ---- malformed configs: each with its specific error --------------------------------------------------
TEST(ConfigErrors, UnknownTopLevelSectionSuggests) { EXPECT_ERROR_HAS("trian:\n  max_steps: 3\n", "test.yaml:1", "did you mean 'train'"); }
TEST(ConfigErrors, UnknownKeyDepth2Suggests) {
  EXPECT_ERROR_HAS("train:\n  learnig_rate: 0.1\n", "test.yaml:2", "train.learnig_rate", "did you mean 'learning_rate'");
}
TEST(ConfigErrors, UnknownKeyInOtherSection) {
  EXPECT_ERROR_HAS("model:\n  hidden_size: 64\n  num_layers: 2\n", "test.yaml:3", "model.num_layers", "unknown key");
}
TEST(ConfigErrors, UnknownKeyNoCloseMatchListsValid) {
  EXPECT_ERROR_HAS("eval:\n  zzzzzzzzzzzz: 1\n", "eval.zzzzzzzzzzzz", "valid keys", "max_batches");
}
TEST(ConfigErrors, NestedMappingWhereScalarExpected) {
  EXPECT_ERROR_HAS("train:\n  max_steps:\n    value: 3\n", "train.max_steps", "expected an integer");
}
TEST(ConfigErrors, WrongTypeString) { EXPECT_ERROR_HAS("train:\n  max_steps: many\n", "train.max_steps", "expected an integer", "'many'"); }
TEST(ConfigErrors, WrongTypeFloatForInt) { EXPECT_ERROR_HAS("train:\n  max_steps: 1.5\n", "train.max_steps", "expected an integer"); }
TEST(ConfigErrors, WrongTypeBool) { EXPECT_ERROR_HAS("train:\n  bf16: maybe\n", "train.bf16", "expected true or false"); }
TEST(ConfigErrors, WrongTypeListForNumber) { EXPECT_ERROR_HAS("train:\n  learning_rate: [1, 2]\n", "train.learning_rate", "expected a number, got a list"); }
TEST(ConfigErrors, OutOfRange) { EXPECT_ERROR_HAS("quant:\n  anchor_fraction: 0.7\n", "quant.anchor_fraction", "must be in [0, 0.5]"); }
TEST(ConfigErrors, NegativeSteps) { EXPECT_ERROR_HAS("train:\n  max_steps: -3\n", "train.max_steps", "must be >= 1"); }
TEST(ConfigErrors, NonFiniteNumber) { EXPECT_ERROR_HAS("train:\n  learning_rate: .nan\n", "train.learning_rate"); }
TEST(ConfigErrors, BadEnumSuggests) { EXPECT_ERROR_HAS("quant:\n  weight: binray\n", "quant.weight", "not one of", "did you mean 'binary'"); }
TEST(ConfigErrors, BadListItem) { EXPECT_ERROR_HAS("quant:\n  layers: [attention, mpl]\n", "quant.layers[1]", "did you mean 'mlp'"); }
TEST(ConfigErrors, ContradictoryGqa) {
  EXPECT_ERROR_HAS("model:\n  num_attention_heads: 4\n  num_key_value_heads: 3\n", "model.num_key_value_heads", "must divide");
}
TEST(ConfigErrors, ContradictoryGroupSize) {
  EXPECT_ERROR_HAS("model: {hidden_size: 96, num_attention_heads: 4, num_key_value_heads: 4}\nquant: {group_size: 64}\n",
                   "quant.group_size", "hidden_size = 96");
}
TEST(ConfigErrors, ContradictorySeqLen) {
  EXPECT_ERROR_HAS("model: {max_position_embeddings: 64}\ntrain: {seq_len: 128}\n", "train.seq_len", "exceeds");
}
TEST(ConfigErrors, ContradictoryActivationsWithoutWeights) {
  EXPECT_ERROR_HAS("quant: {weight: none, activations: int8}\n", "quant.activations");
}
TEST(ConfigErrors, ContradictoryTiedQuantizedHead) {
  EXPECT_ERROR_HAS("quant: {layers: [attention, lm_head]}\n", "quant.layers", "tie_word_embeddings");
}
TEST(ConfigErrors, DuplicateKey) { EXPECT_ERROR_HAS("train:\n  seed: 1\n  seed: 2\n", "train.seed", "twice"); }
TEST(ConfigErrors, TopLevelNotMapping) { EXPECT_ERROR_HAS("- a\n- b\n", "expected a mapping"); }
TEST(ConfigErrors, SectionNotMapping) { EXPECT_ERROR_HAS("train: 5\n", "train", "expected a mapping"); }
TEST(ConfigErrors, NotYaml) { EXPECT_ERROR_HAS("train: {max_steps: [1, 2\n", "not valid YAML"); }
TEST(ConfigErrors, BinaryGarbage) {
  std::string g;
  std::mt19937 rng(3);
  for (int i = 0; i < 4096; ++i) g.push_back(static_cast<char>(rng() & 0xff));
  const std::string msg = error_of(g);
  EXPECT_FALSE(msg.empty());
  EXPECT_NE(msg.find("test.yaml"), std::string::npos) << msg;
}
TEST(ConfigErrors, PlainScalarDocument) { EXPECT_ERROR_HAS("just some words\n", "expected a mapping"); }
TEST(ConfigErrors, HugeFile) {
  std::string big = "# " + std::string(5 << 20, 'x') + "\n";
  EXPECT_ERROR_HAS(big, "byte limit");
}
TEST(ConfigErrors, EmptyFileOnDiskIsDefaults) {
  auto p = std::filesystem::temp_directory_path() / "bitforge_empty_config.yaml";
  { std::ofstream(p.string()) << ""; }
  Config c = load_config(p.string());
  EXPECT_EQ(c.train.max_steps, TrainConfig{}.max_steps);
  std::filesystem::remove(p);
}
TEST(ConfigErrors, MissingFile) {
  try {
    load_config("/nonexistent/dir/cfg.yaml");
    FAIL();
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("/nonexistent/dir/cfg.yaml: config file not found"), std::string::npos);
  }
}

// ---- --set --------------------------------------------------------------------------------------------
TEST(ConfigSet, OverridesScalarsListsAndEnums) {
  Config c = parse_config("train: {max_steps: 10}\n", "x",
                          {"train.max_steps=42", "train.learning_rate=3e-4", "quant.layers=[mlp]", "quant.weight=ternary",
                           "train.resume_from_checkpoint=auto"});
  EXPECT_EQ(c.train.max_steps, 42);
  EXPECT_DOUBLE_EQ(c.train.learning_rate, 3e-4);
  EXPECT_EQ(c.quant.layers, std::vector<std::string>{"mlp"});
  EXPECT_EQ(c.quant.weight, WeightQuantizer::ternary);
  EXPECT_EQ(c.train.resume_from_checkpoint, "auto");
}
TEST(ConfigSet, SameValidation) {
  EXPECT_NE(error_of("", {"train.learnig_rate=1"}).find("--set train.learnig_rate=1: train.learnig_rate: unknown key (did you mean 'learning_rate'?)"),
            std::string::npos)
      << error_of("", {"train.learnig_rate=1"});
  EXPECT_NE(error_of("", {"train.max_steps=abc"}).find("expected an integer"), std::string::npos);
  EXPECT_NE(error_of("", {"train.max_steps"}).find("expected section.key=value"), std::string::npos);
  EXPECT_NE(error_of("", {"max_steps=3"}).find("key must be section.key"), std::string::npos);
  EXPECT_NE(error_of("", {"a.b.c=3"}).find("key must be section.key"), std::string::npos);
  EXPECT_NE(error_of("", {"model.num_key_value_heads=3"}).find("must divide"), std::string::npos);
}

// ---- effective config round trip ----------------------------------------------------------------------
TEST(ConfigRoundTrip, ToYamlReloadsToSameConfig) {
  Config c = parse_config(R"(
model: {hidden_size: 192, num_attention_heads: 6, num_key_value_heads: 2, rope_theta: 500000.0, rms_norm_eps: 1.0e-5, tie_word_embeddings: false}
quant: {weight: ternary, group_size: 64, anchor_fraction: 0.0015, ste: approx_sign, layers: [mlp, lm_head]}
train: {learning_rate: 0.00123456789, seed: 18446744073709551615, resume_from_checkpoint: /tmp/x y}
distill: {hidden_layers: [1, 3], alpha_hidden: 0.5, kd_loss: reverse_kl, teacher: ""}
run: {stages: [prepare-data, train, eval]}
)", "x");
  const std::string y = to_yaml(c);
  Config d = parse_config(y, "roundtrip");
  EXPECT_EQ(to_yaml(d), y);
  EXPECT_EQ(d.train.learning_rate, c.train.learning_rate);  // exact, not approximate
  EXPECT_EQ(d.model.rms_norm_eps, c.model.rms_norm_eps);
  EXPECT_EQ(d.train.seed, c.train.seed);
  EXPECT_EQ(d.quant.anchor_fraction, c.quant.anchor_fraction);
  EXPECT_EQ(d.run.stages, c.run.stages);
  EXPECT_EQ(d.distill.hidden_layers, c.distill.hidden_layers);
  EXPECT_EQ(d.train.resume_from_checkpoint, "/tmp/x y");
}

TEST(ConfigRoundTrip, SaveIsAtomicAndReloads) {
  auto dir = std::filesystem::temp_directory_path() / "bitforge_cfg_rt";
  std::filesystem::create_directories(dir);
  Config c;
  c.train.max_steps = 77;
  save_config(c, (dir / "config.yaml").string());
  EXPECT_FALSE(std::filesystem::exists(dir / "config.yaml.tmp"));
  Config d = load_config((dir / "config.yaml").string());
  EXPECT_EQ(to_yaml(c), to_yaml(d));
  std::filesystem::remove_all(dir);
}

// Data parallelism (issue #15).
TEST(ConfigDistributed, DefaultsAndValues) {
  Config d = parse_config("", "test.yaml", {});
  EXPECT_EQ(d.train.distributed_backend, "auto");
  EXPECT_DOUBLE_EQ(d.train.distributed_timeout_s, 300);
  EXPECT_EQ(d.train.zero_stage, 0);
  EXPECT_EQ(d.train.ddp_bucket_mb, 25);
  Config c = parse_config("train: {distributed_backend: gloo, distributed_timeout_s: 12.5, zero_stage: 1, ddp_bucket_mb: 4}\n",
                          "test.yaml", {});
  EXPECT_EQ(c.train.distributed_backend, "gloo");
  EXPECT_DOUBLE_EQ(c.train.distributed_timeout_s, 12.5);
  EXPECT_EQ(c.train.zero_stage, 1);
  EXPECT_EQ(c.train.ddp_bucket_mb, 4);
}
TEST(ConfigDistributed, Errors) {
  EXPECT_ERROR_HAS("train: {distributed_backend: mpi}\n", "train.distributed_backend");
  EXPECT_ERROR_HAS("train: {zero_stage: 2}\n", "train.zero_stage");
  EXPECT_ERROR_HAS("train: {distributed_timeout_s: 0}\n", "train.distributed_timeout_s");
  EXPECT_ERROR_HAS("train: {distributed_backend: nccl, device: cpu}\n", "train.distributed_backend", "nccl needs");
}
// ---- the evaluation definition and the split seed (issue #20) ------------------------------------------
TEST(ConfigDefaults, EvalIsTheWholeSplitAndTheSplitSeedIsItsOwn) {
  Config c = parse_config("", "x");
  EXPECT_EQ(c.eval.max_batches, 0);  // 0 = whole val split
  EXPECT_EQ(c.data.seed, 1234u);     // the split the pipeline always used
  EXPECT_TRUE(c.run.fair_teacher);
  EXPECT_TRUE(c.run.fp_control);
  Config d = parse_config("train: {seed: 7}\ndata: {seed: 99}\neval: {max_batches: 3}\nrun: {fair_teacher: false}\n",
                          "x");
  EXPECT_EQ(d.train.seed, 7u);
  EXPECT_EQ(d.data.seed, 99u);  // independent keys
  EXPECT_EQ(d.eval.max_batches, 3);
  EXPECT_FALSE(d.run.fair_teacher);
  EXPECT_EQ(to_yaml(parse_config(to_yaml(d), "rt")), to_yaml(d));
  EXPECT_ERROR_HAS("eval:\n  max_batches: -1\n", "eval.max_batches");
}
