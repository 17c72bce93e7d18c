// Tokenizers: byte-level layout and round trip; SentencePiece training on a tiny generated corpus, encode/decode
// round trip, GGUF vocabulary fields, serialize/load round trip.
#include <gtest/gtest.h>
#include <sentencepiece_processor.h>

#include <filesystem>
#include <random>
#include <string>

#include "data/tokenizer.h"

namespace fs = std::filesystem;
using namespace bitforge::data;

namespace {

// ~40 KB of pseudo-English with code-ish lines, deterministic.
std::vector<Document> tiny_corpus() {
  const char* words[] = {"the",  "model",    "weights", "are",     "binary",   "and",     "ternary", "scale",
                         "per",  "group",    "of",      "columns", "training", "loss",    "def",     "return",
                         "x",    "=",        "(",       ")",       "1",        "0.5",     "tokens",  "layer",
                         "norm", "quantize", "sign",    "mean",    "absmean",  "gradient"};
  std::mt19937 rng(7);
  std::vector<Document> docs;
  for (int d = 0; d < 20; ++d) {
    std::string text;
    for (int line = 0; line < 40; ++line) {
      if (line % 5 == 4) text += "    ";
      const int n = 3 + static_cast<int>(rng() % 9);
      for (int w = 0; w < n; ++w) {
        if (w) text += ' ';
        text += words[rng() % (sizeof(words) / sizeof(words[0]))];
      }
      text += '\n';
    }
    docs.push_back({"doc" + std::to_string(d), text});
  }
  return docs;
}

struct TempFile {
  std::string path;
  explicit TempFile(const std::string& name) {
    std::random_device rd;
    path = (fs::temp_directory_path() / ("bitforge_data_tok_" + std::to_string(rd()) + "_" + name)).string();
  }
  ~TempFile() {
    std::error_code ec;
    fs::remove(path, ec);
  }
};

const std::string kSample =
    "def quantize(x):\n    return sign(x) * absmean  # ünïcode 日本 🙂 \t tabs\n\n  two spaces";

}  // namespace

TEST(DataByteTokenizer, LayoutAndRoundTrip) {
  ByteTokenizer tok;
  EXPECT_EQ(tok.vocab_size(), 258);
  EXPECT_EQ(tok.bos_id(), 256);
  EXPECT_EQ(tok.eos_id(), 257);
  EXPECT_EQ(tok.unk_id(), -1);
  EXPECT_EQ(tok.pad_id(), -1);
  const auto ids = tok.encode(kSample);
  EXPECT_EQ(ids.size(), kSample.size());
  EXPECT_EQ(ids[0], 'd');
  EXPECT_EQ(tok.decode(ids), kSample);
  std::vector<int32_t> framed = {tok.bos_id()};
  framed.insert(framed.end(), ids.begin(), ids.end());
  framed.push_back(tok.eos_id());
  EXPECT_EQ(tok.decode(framed), kSample);  // control ids decode to nothing
  EXPECT_EQ(tok.piece(0x0A), "<0x0A>");
  EXPECT_EQ(tok.token_type(0x41), TokenType::byte);
  EXPECT_EQ(tok.piece(256), "<s>");
  EXPECT_EQ(tok.token_type(257), TokenType::control);
  EXPECT_THROW(tok.piece(258), DataError);
  EXPECT_THROW(tok.decode({300}), DataError);

  const auto back = tokenizer_from_bytes(tok.kind(), tok.serialize());
  EXPECT_EQ(back->kind(), "byte");
  TempFile f("tokenizer.bin");
  save_tokenizer(tok, f.path);
  EXPECT_EQ(load_tokenizer(f.path)->vocab_size(), 258);
  EXPECT_THROW(tokenizer_from_bytes("byte", "{\"kind\":\"other\"}"), DataError);
  EXPECT_THROW(tokenizer_from_bytes("wordpiece", ""), DataError);
}

TEST(DataSentencePiece, TrainEncodeDecodeSerialize) {
  const auto docs = tiny_corpus();
  for (SentencePieceModel model : {SentencePieceModel::bpe, SentencePieceModel::unigram}) {
    SCOPED_TRACE(model == SentencePieceModel::bpe ? "bpe" : "unigram");
    SentencePieceTrainOptions o;
    o.model = model;
    o.vocab_size = 340;
    const auto tok = train_sentencepiece(docs, o);
    EXPECT_EQ(tok->kind(), "sentencepiece");
    EXPECT_EQ(tok->vocab_size(), 340);
    EXPECT_EQ(tok->unk_id(), 0);
    EXPECT_EQ(tok->bos_id(), 1);
    EXPECT_EQ(tok->eos_id(), 2);
    EXPECT_EQ(tok->pad_id(), -1);
    EXPECT_EQ(tok->piece(1), "<s>");
    EXPECT_EQ(tok->token_type(0), TokenType::unknown);
    EXPECT_EQ(tok->token_type(2), TokenType::control);
    EXPECT_EQ(tok->piece(3), "<0x00>");
    EXPECT_EQ(tok->token_type(3 + 0x41), TokenType::byte);
    EXPECT_EQ(tok->token_type(339), TokenType::normal);

    // Exact round trip, including characters never seen in training (byte fallback) and whitespace runs.
    const auto ids = tok->encode(kSample);
    for (int32_t id : ids) {
      EXPECT_GE(id, 0);
      EXPECT_LT(id, 340);
    }
    EXPECT_EQ(tok->decode(ids), kSample);
    // Merges learned beyond the ~40 single characters (only ~80 ids are free): clearly fewer ids than bytes.
    const auto common = tok->encode(docs[0].text);
    EXPECT_LT(common.size() * 4, docs[0].text.size() * 3);
    EXPECT_EQ(tok->decode(common), docs[0].text);

    // Long documents are encoded in newline-aligned chunks: identical to SentencePiece on the whole text.
    std::string long_text;
    for (const auto& doc : docs) long_text += doc.text + "  \n\n " + kSample;
    ASSERT_GT(long_text.size(), 30000u);  // several chunks
    sentencepiece::SentencePieceProcessor sp;
    ASSERT_TRUE(sp.LoadFromSerializedProto(tok->serialize()).ok());
    std::vector<int> whole;
    ASSERT_TRUE(sp.Encode(long_text, &whole).ok());
    EXPECT_EQ(tok->encode(long_text), std::vector<int32_t>(whole.begin(), whole.end()));
    EXPECT_EQ(tok->decode(tok->encode(long_text)), long_text);

    // Deterministic training.
    EXPECT_EQ(train_sentencepiece(docs, o)->serialize(), tok->serialize());

    // serialize -> bytes -> tokenizer, and file save/load with kind detection.
    const auto back = tokenizer_from_bytes(tok->kind(), tok->serialize());
    EXPECT_EQ(back->encode(kSample), ids);
    TempFile f("tokenizer.model");
    save_tokenizer(*tok, f.path);
    const auto loaded = load_tokenizer(f.path);
    EXPECT_EQ(loaded->kind(), "sentencepiece");
    EXPECT_EQ(loaded->encode(kSample), ids);
    for (int32_t id = 0; id < 340; id += 37) {
      EXPECT_EQ(loaded->piece(id), tok->piece(id));
      EXPECT_EQ(loaded->score(id), tok->score(id));
    }
    EXPECT_EQ(tokenizer_fingerprint(*loaded), tokenizer_fingerprint(*tok));
  }
}

TEST(DataSentencePiece, Errors) {
  SentencePieceTrainOptions o;
  o.vocab_size = 200;
  try {
    train_sentencepiece(tiny_corpus(), o);
    ADD_FAILURE() << "expected DataError";
  } catch (const DataError& e) {
    EXPECT_NE(std::string(e.what()).find("259"), std::string::npos) << e.what();
  }
  try {
    tokenizer_from_bytes("sentencepiece", "\x0A\x03not a model");
    ADD_FAILURE() << "expected DataError";
  } catch (const DataError& e) {
    EXPECT_NE(std::string(e.what()).find("not a SentencePiece model"), std::string::npos) << e.what();
  }
}
