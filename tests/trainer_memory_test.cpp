// Issue #21 item 7: a memory estimate before allocating a model/optimizer/KV cache; refused with a clear message
// when it exceeds the available memory; train.skip_memory_check overrides.
#include <gtest/gtest.h>

#include "config/config.h"
#include "config/memory_estimate.h"
#include "trainer/train.h"

using namespace bitforge;

TEST(MemoryEstimate, ParameterCountMatchesTheTransformer) {
  Config c;
  c.model.vocab_size = 258;
  c.model.hidden_size = 32;
  c.model.intermediate_size = 64;
  c.model.num_hidden_layers = 2;
  c.model.num_attention_heads = 2;
  c.model.num_key_value_heads = 1;
  c.quant.group_size = 32;
  // Exact up to BitLinear's learned scales (out × in/group_size per layer, ~2 % here), which the estimate leaves out.
  Transformer t(c.model, c.quant);
  EXPECT_LE(count_parameters(c.model), t->num_parameters());
  EXPECT_GE(count_parameters(c.model), t->num_parameters() * 0.97);
  c.quant.weight = WeightQuantizer::none;
  EXPECT_EQ(count_parameters(c.model), Transformer(c.model, c.quant)->num_parameters());
  c.model.tie_word_embeddings = false;
  c.model.subln = true;
  c.model.arch = "qwen3";
  EXPECT_EQ(count_parameters(c.model), Transformer(c.model, c.quant)->num_parameters());
}

TEST(MemoryEstimate, HugeModelIsRefusedBeforeAllocating) {
  Config c;
  c.model.vocab_size = 4096;
  c.model.hidden_size = 16384;
  c.model.num_hidden_layers = 48;
  c.model.num_attention_heads = 128;
  c.model.num_key_value_heads = 128;
  auto e = estimate_training_memory(c);
  EXPECT_GT(e.total(), 500e9);  // 5e10 parameters × 16 bytes, at least
  AvailableMemory a{64e9, "test"};
  try {
    check_memory(e, "training stage 'x'", false, &a);
    FAIL() << "an 800 GB model was not refused against 64 GB";
  } catch (const ResourceError& err) {
    const std::string m = err.what();
    EXPECT_NE(m.find("training stage 'x'"), std::string::npos) << m;
    EXPECT_NE(m.find("exceeds"), std::string::npos) << m;
    EXPECT_NE(m.find("train.skip_memory_check"), std::string::npos) << m;
    EXPECT_NE(m.find("AdamW"), std::string::npos) << m;
  }
  EXPECT_NO_THROW(check_memory(e, "x", /*skip=*/true, &a));
  // A tiny model fits.
  Config tiny;
  tiny.model.vocab_size = 258;
  tiny.model.hidden_size = 32;
  tiny.model.num_hidden_layers = 1;
  tiny.quant.group_size = 32;
  EXPECT_NO_THROW(check_memory(estimate_training_memory(tiny), "tiny", false, &a));
}

TEST(MemoryEstimate, PackedRuntimeKvCacheForAHugeContextIsRefused) {
  ModelConfig m;
  m.vocab_size = 258;
  m.hidden_size = 256;
  m.num_hidden_layers = 4;
  m.max_position_embeddings = 1 << 22;  // the schema's maximum: a 4M-token KV cache
  auto e = estimate_packed_runtime_memory(m, 1e6);
  EXPECT_GT(e.kv_cache, 30e9);
  AvailableMemory a{8e9, "test"};
  EXPECT_THROW(check_memory(e, "packed runtime", false, &a), ResourceError);
}

TEST(MemoryEstimate, TrainRefusesAModelLargerThanThisMachine) {
  TrainSpec s;
  s.config.model.vocab_size = 4096;
  s.config.model.hidden_size = 16384;
  s.config.model.num_hidden_layers = 48;
  s.config.model.num_attention_heads = 128;
  s.config.model.num_key_value_heads = 128;
  s.output_dir = "/tmp/bitforge_memory_test_unused";
  s.train_shard = "/nonexistent/train.bin";
  s.val_shard = "/nonexistent/val.bin";
  try {
    train(s);  // must refuse before allocating (~850 GB) or reading data
    FAIL() << "train() did not refuse";
  } catch (const ResourceError& e) {
    EXPECT_NE(std::string(e.what()).find("exceeds"), std::string::npos) << e.what();
  }
}

TEST(MemoryEstimate, SkipMemoryCheckIsASchemaKey) {
  EXPECT_TRUE(parse_config("train:\n  skip_memory_check: true\n", "t.yaml").train.skip_memory_check);
  EXPECT_FALSE(parse_config("", "t.yaml").train.skip_memory_check);
  EXPECT_THROW(parse_config("train:\n  skip_memory_check: 3\n", "t.yaml"), ConfigError);
  auto c = parse_config("", "t.yaml", {"train.skip_memory_check=true"});
  EXPECT_TRUE(parse_config(to_yaml(c), "again.yaml").train.skip_memory_check);
}
