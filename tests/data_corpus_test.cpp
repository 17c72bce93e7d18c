// Corpus readers: each format, glob with **, UTF-8 validation, empty corpora, malformed JSONL.
#include <gtest/gtest.h>

#include "tests/fixtures/data/temp_dir.h"

#include <filesystem>
#include <fstream>
#include <random>
#include <string>

#include "data/corpus.h"

namespace fs = std::filesystem;
using namespace bitforge::data;

namespace {

struct TempDir : bitforge::testing::TempDir {
  TempDir() : bitforge::testing::TempDir("bitforge_data_corpus_") {}
};

// Expects `fn` to throw DataError whose message contains every one of `parts`.
template <typename Fn>
void expect_data_error(Fn fn, std::initializer_list<std::string> parts) {
  try {
    fn();
    ADD_FAILURE() << "expected DataError";
  } catch (const DataError& e) {
    for (const auto& p : parts)
      EXPECT_NE(std::string(e.what()).find(p), std::string::npos) << e.what() << "\n  lacks: " << p;
  }
}

}  // namespace

TEST(DataGlob, DoubleStarMatchesAnyDepth) {
  EXPECT_TRUE(glob_match("**/*.rst.txt", "a.rst.txt"));
  EXPECT_TRUE(glob_match("**/*.rst.txt", "x/y/z/a.rst.txt"));
  EXPECT_FALSE(glob_match("**/*.rst.txt", "x/a.rst"));
  EXPECT_TRUE(glob_match("lib/**/t?st.txt", "lib/test.txt"));
  EXPECT_TRUE(glob_match("lib/**/t?st.txt", "lib/a/b/tost.txt"));
  EXPECT_FALSE(glob_match("lib/**/t?st.txt", "src/a/test.txt"));
  EXPECT_FALSE(glob_match("*.txt", "sub/a.txt"));  // * never crosses '/'
  EXPECT_TRUE(glob_match("**", "any/thing"));
}

TEST(DataCorpus, TextDirWithGlobSortedByPath) {
  TempDir d;
  d.write("b/z.rst.txt", "zed");
  d.write("a.rst.txt", "alpha");
  d.write("b/c/deep.rst.txt", "deep");
  d.write("b/skip.txt", "not matched");
  d.write("empty.rst.txt", "");
  const auto docs = read_text_dir(d.path.string(), "**/*.rst.txt");
  ASSERT_EQ(docs.size(), 3u);  // the empty file is skipped
  EXPECT_EQ(docs[0].text, "alpha");
  EXPECT_EQ(docs[1].text, "deep");  // "b/c/deep" < "b/z"
  EXPECT_EQ(docs[2].text, "zed");
  EXPECT_EQ(docs[1].source, (d.path / "b/c/deep.rst.txt").string());
  EXPECT_EQ(read_text_dir(d.path.string(), "**/*.rst.txt", 2).size(), 2u);
}

TEST(DataCorpus, TextDirErrors) {
  TempDir d;
  expect_data_error([&] { read_text_dir((d.path / "missing").string(), "**/*"); }, {"missing", "does not exist"});
  d.write("a.md", "x");
  expect_data_error([&] { read_text_dir(d.path.string(), "**/*.txt"); },
                    {d.path.string(), "no file matches", "**/*.txt"});
  d.write("e1.txt", "");
  d.write("sub/e2.txt", "");
  expect_data_error([&] { read_text_dir(d.path.string(), "**/*.txt"); }, {"all 2 files", "empty"});
}

TEST(DataCorpus, InvalidUtf8NamesFileAndOffset) {
  TempDir d;
  const std::string bad = d.write("bad.txt", std::string("hello \xC3\x28 world"));
  expect_data_error([&] { read_text_file(bad); }, {bad, "invalid UTF-8", "byte offset 6"});
  EXPECT_EQ(find_invalid_utf8("ok ü 日本 🙂"), std::nullopt);
  EXPECT_EQ(find_invalid_utf8("\xED\xA0\x80"), std::optional<std::size_t>(0));  // surrogate U+D800
  EXPECT_EQ(find_invalid_utf8("ab\xC0\xAF"), std::optional<std::size_t>(2));    // overlong '/'
  EXPECT_EQ(find_invalid_utf8("abc\xE6\x97"), std::optional<std::size_t>(3));   // truncated sequence
}

TEST(DataCorpus, Jsonl) {
  TempDir d;
  const std::string p = d.write("c.jsonl",
                                "{\"content\": \"first doc\", \"id\": 1}\n\n{\"content\": \"second\\ndoc\"}\r\n"
                                "{\"content\": \"\"}\n{\"content\": \"third\"}\n");
  const auto docs = read_jsonl(p, "content");
  ASSERT_EQ(docs.size(), 3u);
  EXPECT_EQ(docs[0].text, "first doc");
  EXPECT_EQ(docs[1].text, "second\ndoc");
  EXPECT_EQ(docs[1].source, p + ":3");
  EXPECT_EQ(docs[2].source, p + ":5");
  EXPECT_EQ(read_jsonl(p, "content", 1).size(), 1u);

  CorpusOptions o;
  o.format = corpus_format_from_string("jsonl");
  o.path = p;
  o.text_field = "content";
  EXPECT_EQ(read_corpus(o).size(), 3u);
}

TEST(DataCorpus, MalformedJsonlNamesLine) {
  TempDir d;
  const std::string not_json = d.write("a.jsonl", "{\"text\": \"ok\"}\n{\"text\": oops}\n");
  expect_data_error([&] { read_jsonl(not_json); }, {not_json + ":2", "not valid JSON"});
  const std::string missing = d.write("b.jsonl", "{\"text\": \"ok\"}\n{\"body\": \"x\"}\n");
  expect_data_error([&] { read_jsonl(missing); }, {missing + ":2", "no field 'text'"});
  const std::string not_string = d.write("c.jsonl", "{\"text\": 42}\n");
  expect_data_error([&] { read_jsonl(not_string); }, {not_string + ":1", "'text'", "expected a string"});
  const std::string not_object = d.write("d.jsonl", "[1, 2]\n");
  expect_data_error([&] { read_jsonl(not_object); }, {not_object + ":1", "expected a JSON object"});
  const std::string bad_utf8 = d.write("e.jsonl", "{\"text\": \"ok\"}\n{\"text\": \"\xFF\"}\n");
  // Line 2 starts at byte 15; the bad byte is 10 bytes into it.
  expect_data_error([&] { read_jsonl(bad_utf8); }, {bad_utf8 + ":2", "byte offset 25"});
  const std::string empty = d.write("f.jsonl", "\n{\"text\": \"\"}\n");
  expect_data_error([&] { read_jsonl(empty); }, {empty, "no non-empty"});
}

TEST(DataCorpus, TextFile) {
  TempDir d;
  const std::string p = d.write("one.txt", "line one\nline two\n");
  const auto docs = read_text_file(p);
  ASSERT_EQ(docs.size(), 1u);
  EXPECT_EQ(docs[0].text, "line one\nline two\n");
  expect_data_error([&] { read_text_file(d.write("empty.txt", "")); }, {"empty.txt", "is empty"});
  expect_data_error([&] { read_text_file((d.path / "nope.txt").string()); }, {"nope.txt", "does not exist"});
  expect_data_error([&] { read_text_file(d.path.string()); }, {d.path.string(), "is a directory"});
  expect_data_error([&] { read_file_bytes(d.path.string()); }, {"cannot read", d.path.string()});
  expect_data_error([] { corpus_format_from_string("csv"); }, {"csv", "text_dir, jsonl or text_file"});
}
