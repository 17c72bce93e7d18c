// Issue #21 items 4, 7 and 8 at the config level: run.name is one path component, the byte tokenizer's 258 ids
// are a valid model.vocab_size, train.skip_memory_check is a validated key.
#include <gtest/gtest.h>

#include "config/config.h"

using namespace bitforge;

namespace {
std::string run_name_yaml(const std::string& quoted) { return "run:\n  name: " + quoted + "\n"; }
}  // namespace

// Item 4: ../x, .., absolute paths, slashes and NUL bytes escape run.output_dir or truncate the name.
TEST(ConfigSafety, RunNameIsASinglePathComponent) {
  for (const char* bad : {"\"../x\"", "\"..\"", "\".\"", "\"/tmp/elsewhere\"", "\"a/b\"", "\"a\\0b\"", "\"\"",
                          "\"x/..\""}) {
    try {
      parse_config(run_name_yaml(bad), "t.yaml");
      FAIL() << "run.name " << bad << " was accepted";
    } catch (const ConfigError& e) {
      EXPECT_NE(std::string(e.what()).find("run.name"), std::string::npos) << e.what();
    }
  }
  EXPECT_THROW(parse_config("", "t.yaml", {"run.name=../../etc"}), ConfigError);
  for (const char* ok : {"default", "my-run_2.v1", "..hidden-ok", "a..b"})
    EXPECT_EQ(parse_config(run_name_yaml(ok), "t.yaml").run.name, ok);
}

// Item 8: the byte tokenizer has 258 ids (256 bytes + bos + eos); a checkpoint's config with vocab_size 258 reloads.
TEST(ConfigSafety, ByteTokenizerVocabularyOf258IsValid) {
  auto c = parse_config("data:\n  tokenizer: byte\nmodel:\n  vocab_size: 258\n", "t.yaml");
  EXPECT_EQ(c.model.vocab_size, 258);
  EXPECT_EQ(parse_config(to_yaml(c), "again.yaml").model.vocab_size, 258);
  EXPECT_THROW(parse_config("data:\n  tokenizer: byte\nmodel:\n  vocab_size: 257\n", "t.yaml"), ConfigError);
}

// Found by tests/fuzz/fuzz_config.cpp: a string value holding a control character (here CR) was accepted, and the
// effective config written by to_yaml() reloaded to a different value ("" instead of "\r").
TEST(ConfigSafety, StringValuesWithControlCharactersAreRejected) {
  for (const char* yaml : {"data:\n  output_dir: \"\\r\"\n", "data:\n  path: \"a\\nb\"\n", "run:\n  output_dir: \"x\\ty\"\n"}) {
    try {
      parse_config(yaml, "t.yaml");
      ADD_FAILURE() << yaml << " was accepted";
    } catch (const ConfigError& e) {
      EXPECT_NE(std::string(e.what()).find("control character"), std::string::npos) << e.what();
    }
  }
  auto c = parse_config("data:\n  output_dir: \"/tmp/a b/ü\"\n", "t.yaml");
  EXPECT_EQ(parse_config(to_yaml(c), "again.yaml").data.output_dir, "/tmp/a b/ü");
}

// Found by the fuzz campaign (bench/fuzz_campaign.sh, fuzz_config after 228,681 executions): a run.name of bytes that
// are not UTF-8 was accepted, yaml-cpp's emitter rewrote them in the effective config, and the reload failed (the
// rewritten name was 680 bytes) — a run whose config.yaml cannot be read back. Such strings are rejected up front.
TEST(ConfigSafety, StringValuesThatAreNotUtf8AreRejected) {
  for (const std::string yaml : {std::string("run:\n  name: \xc2\x90\x94\x9a\n"), std::string("data:\n  path: a\xffb\n"),
                                 std::string("data:\n  glob: \xe2\x82\n")}) {
    try {
      parse_config(yaml, "t.yaml");
      ADD_FAILURE() << yaml << " was accepted";
    } catch (const ConfigError& e) {
      EXPECT_NE(std::string(e.what()).find("not valid UTF-8"), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("t.yaml"), std::string::npos) << e.what();
    }
  }
  auto c = parse_config("run:\n  name: \"r\xc3\xa9sum\xc3\xa9-\xe6\xb8\xac\xe8\xa9\xa6\"\n", "t.yaml");
  EXPECT_EQ(to_yaml(parse_config(to_yaml(c), "again.yaml")), to_yaml(c));
}

#include "trainer/hf_checkpoint.h"

// Found by tests/fuzz/fuzz_hf.cpp: a number too large for a double in config.json ended the process with an
// uncaught json out_of_range instead of an HfCheckpointError naming the file.
TEST(ConfigSafety, HfConfigWithAnOverflowingNumberIsAnHfCheckpointError) {
  try {
    parse_hf_config("{\"model_type\": \"llama\", \"rms_norm_eps\": 1e2222622223}", "x/config.json");
    FAIL() << "accepted";
  } catch (const HfCheckpointError& e) {
    EXPECT_NE(std::string(e.what()).find("x/config.json"), std::string::npos) << e.what();
  }
  // And the schema's ranges apply to HF metadata too.
  EXPECT_THROW(parse_hf_config("{\"model_type\": \"llama\", \"vocab_size\": 258, \"hidden_size\": 32, "
                               "\"intermediate_size\": 64, \"num_hidden_layers\": 1, \"num_attention_heads\": 2, "
                               "\"max_position_embeddings\": 50000000}",
                               "x/config.json"),
               HfCheckpointError);
}
