// prepare_data end to end on tiny corpora, the by-document split, and the unigram baseline against its formula.
#include <gtest/gtest.h>

#include "tests/fixtures/data/temp_dir.h"

#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <string>

#include "data/baseline.h"
#include "data/prepare.h"
#include "data/shard.h"

namespace fs = std::filesystem;
using namespace bitforge::data;

namespace {

struct TempDir : bitforge::testing::TempDir {
  TempDir() : bitforge::testing::TempDir("bitforge_data_prepare_") {}
};

// Documents "doc NN: ..." of different lengths in nested folders.
std::vector<std::string> make_corpus(const fs::path& dir, int n) {
  std::vector<std::string> texts;
  for (int i = 0; i < n; ++i) {
    std::string text = "doc " + std::to_string(100 + i) + ":";
    for (int k = 0; k <= i % 7; ++k) text += " the binary weights of layer " + std::to_string(k) + " are scaled\n";
    const fs::path p = dir / ("part" + std::to_string(i % 3)) / ("d" + std::to_string(100 + i) + ".rst.txt");
    fs::create_directories(p.parent_path());
    std::ofstream(p, std::ios::binary) << text;
    texts.push_back(text);  // read_text_dir sorts by path: part0/d100, part0/d103, ... — we sort below the same way
  }
  return texts;
}

// Splits a shard's tokens into documents at bos ... eos.
std::vector<std::vector<int32_t>> documents_of(const ShardReader& r, int32_t bos, int32_t eos) {
  std::vector<std::vector<int32_t>> docs;
  std::vector<int32_t> cur;
  for (uint64_t i = 0; i < r.size(); ++i) {
    const auto t = static_cast<int32_t>(r[i]);
    if (t == bos) {
      cur.clear();
    } else if (t == eos) {
      docs.push_back(cur);
    } else {
      cur.push_back(t);
    }
  }
  return docs;
}

}  // namespace

TEST(DataSplit, DeterministicByDocument) {
  const auto a = split_val_documents(100, 0.1, 5);
  EXPECT_EQ(a.size(), 10u);
  EXPECT_TRUE(std::is_sorted(a.begin(), a.end()));
  EXPECT_EQ(split_val_documents(100, 0.1, 5), a);
  EXPECT_NE(split_val_documents(100, 0.1, 6), a);
  EXPECT_EQ(split_val_documents(10, 0.01, 5).size(), 1u);  // at least one val document
  EXPECT_EQ(split_val_documents(2, 0.9, 5).size(), 1u);    // at least one train document
  EXPECT_TRUE(split_val_documents(10, 0.0, 5).empty());
  EXPECT_THROW(split_val_documents(1, 0.1, 5), DataError);
  EXPECT_THROW(split_val_documents(10, 1.0, 5), DataError);
}

TEST(DataPrepare, ByteTokenizerEndToEnd) {
  TempDir d;
  make_corpus(d.path / "corpus", 30);
  PrepareDataOptions o;
  o.corpus_path = (d.path / "corpus").string();
  o.tokenizer = TokenizerKind::byte;
  o.val_fraction = 0.2;
  o.seed = 99;
  o.output_dir = (d.path / "out").string();
  const PreparedData p = prepare_data(o);
  EXPECT_FALSE(p.reused);
  EXPECT_EQ(fs::path(p.tokenizer_path).filename(), "tokenizer.bin");

  // The exact by-document split: val holds the documents split_val_documents picks, in corpus order.
  const auto docs = read_text_dir(o.corpus_path, o.glob);
  const auto val_idx = split_val_documents(docs.size(), o.val_fraction, o.seed);
  ShardReader train(p.train_path), val(p.val_path);
  const auto tok = load_tokenizer(p.tokenizer_path);
  const auto val_docs = documents_of(val, tok->bos_id(), tok->eos_id());
  const auto train_docs = documents_of(train, tok->bos_id(), tok->eos_id());
  ASSERT_EQ(val_docs.size(), val_idx.size());
  EXPECT_EQ(train_docs.size() + val_docs.size(), docs.size());
  uint64_t val_tokens = 0;
  for (std::size_t k = 0; k < val_idx.size(); ++k) {
    EXPECT_EQ(tok->decode(val_docs[k]), docs[val_idx[k]].text);
    val_tokens += docs[val_idx[k]].text.size() + 2;  // bos + bytes + eos
  }
  EXPECT_EQ(val.size(), val_tokens);
  EXPECT_EQ(train.vocab_size(), 258u);

  const auto& m = p.meta;
  EXPECT_EQ(m["train"]["documents"].get<uint64_t>(), train_docs.size());
  EXPECT_EQ(m["val"]["documents"].get<uint64_t>(), val_idx.size());
  EXPECT_EQ(m["val"]["tokens"].get<uint64_t>(), val_tokens);
  EXPECT_EQ(m["train"]["tokens"].get<uint64_t>(), train.size());
  EXPECT_EQ(m["tokenizer"]["kind"], "byte");
  EXPECT_EQ(m["tokenizer"]["vocab_size"], 258);
  EXPECT_EQ(m["options"]["seed"], 99);
  EXPECT_NEAR(m["unigram_perplexity_val"].get<double>(), unigram_perplexity(train, val), 1e-9);
  EXPECT_EQ(read_prepared_data(o.output_dir).meta, m);

  // Same options: reused. Changed options: redone.
  EXPECT_TRUE(prepare_data(o).reused);
  o.seed = 100;
  EXPECT_FALSE(prepare_data(o).reused);
}

TEST(DataPrepare, SentencePieceEndToEnd) {
  TempDir d;
  make_corpus(d.path / "corpus", 40);
  PrepareDataOptions o;
  o.corpus_path = (d.path / "corpus").string();
  o.tokenizer = tokenizer_kind_from_string("sentencepiece_bpe");
  o.vocab_size = 300;
  o.val_fraction = 0.1;
  o.output_dir = (d.path / "out").string();
  const PreparedData p = prepare_data(o);
  EXPECT_EQ(fs::path(p.tokenizer_path).filename(), "tokenizer.model");
  const auto tok = load_tokenizer(p.tokenizer_path);
  EXPECT_EQ(tok->vocab_size(), 300);
  ShardReader train(p.train_path);
  train.expect_vocab_size(300);
  train.expect_tokenizer(tokenizer_fingerprint(*tok));
  EXPECT_EQ(p.meta["train"]["documents"].get<uint64_t>() + p.meta["val"]["documents"].get<uint64_t>(), 40u);
  const auto docs = documents_of(train, tok->bos_id(), tok->eos_id());
  ASSERT_FALSE(docs.empty());
  EXPECT_EQ(tok->decode(docs[0]).rfind("doc 1", 0), 0u);
}

TEST(DataBaseline, UnigramPerplexityMatchesFormula) {
  TempDir d;
  const uint32_t V = 6;
  const std::vector<int32_t> train_tokens = {1, 1, 1, 2, 3, 3, 0, 5};
  const std::vector<int32_t> val_tokens = {1, 3, 4, 4, 2};
  ShardWriter::Options o;
  o.vocab_size = V;
  o.eos_id = 0;
  const std::string tp = (d.path / "train.bin").string(), vp = (d.path / "val.bin").string();
  {
    ShardWriter w(tp, o);
    w.add_tokens(train_tokens);
    w.finish();
  }
  {
    ShardWriter w(vp, o);
    w.add_tokens(val_tokens);
    w.finish();
  }
  // p(t) = (c(t) + 1) / (N + V); PPL = exp(-mean ln p(val)).
  std::map<int32_t, double> count;
  for (int32_t t : train_tokens) count[t] += 1;
  double nll = 0;
  for (int32_t t : val_tokens) nll -= std::log((count[t] + 1) / (static_cast<double>(train_tokens.size()) + V));
  const double expected = std::exp(nll / static_cast<double>(val_tokens.size()));
  EXPECT_NEAR(unigram_perplexity(tp, vp), expected, 1e-12 * expected);

  o.vocab_size = 7;
  const std::string other = (d.path / "other.bin").string();
  ShardWriter w(other, o);
  w.add_tokens(val_tokens);
  w.finish();
  EXPECT_THROW(unigram_perplexity(tp, other), DataError);
}
