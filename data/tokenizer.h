// Tokenizers: text <-> token ids, plus the per-id vocabulary an exporter needs for GGUF
// (`tokenizer.ggml.tokens` = piece(id), `tokenizer.ggml.scores` = score(id), `tokenizer.ggml.token_type` =
// token_type(id)). A tokenizer serialises to bytes (`serialize()`) so it can travel inside checkpoints and packed
// files, and is rebuilt with `tokenizer_from_bytes(kind(), bytes)` or `load_tokenizer(path)`.
//
// Three implementations:
//  * SentencePiece (kind "sentencepiece"): BPE or unigram, trained on a corpus with the Debian libsentencepiece
//    (0.1.97). Llama's conventions: unk = 0 "<unk>", bos = 1 "<s>", eos = 2 "</s>", no pad; byte_fallback (the 256
//    pieces "<0x00>".."<0xFF>" follow the control pieces, ids 3..258), identity normalisation, whitespace kept,
//    digits split — so decode(encode(s)) == s for every valid UTF-8 string s. The serialised form is the
//    SentencePiece ModelProto (the usual `tokenizer.model` file). Any Llama-2 / Mistral style tokenizer.model
//    loads too (load_tokenizer on the file or its HF model directory).
//    Equality with HF `tokenizers` (tests/data_hf_tokenizer_test.cpp, whole default corpus + edge texts):
//    encode(s) == HF encode(s, add_special_tokens=False) and decode(ids) == HF decode(ids,
//    skip_special_tokens=True) for the tokenizer.json Llama-2 / Mistral repositories ship (transformers 4.x
//    "legacy" conversion: normalizer Prepend("▁") + Replace(" ", "▁"): the dummy prefix "▁" is always added,
//    as SentencePiece's add_dummy_prefix and llama.cpp's SPM tokenizer do). Two conventions differ from HF and
//    are kept on purpose: (1) the control pieces' text ("<s>", "</s>", "<unk>") written inside a text is encoded
//    as ordinary text (HF splits it out as the special id; a corpus document that quotes "</s>" must not end the
//    document); (2) against a tokenizer.json freshly converted by transformers 5.x (Metaspace, prepend_scheme
//    "first"), a text that starts with a space differs: HF adds no "▁" there, SentencePiece / Llama-2's file /
//    llama.cpp do. Every other text gives the same ids.
//  * Byte-level (kind "byte"): id b (0..255) is the byte b, bos = 256, eos = 257; no unk, no pad; vocab 258.
//    The serialised form is a small JSON object {"kind":"byte","version":1}.
//  * Hugging Face byte-level BPE (kind "hf_bpe", data/hf_tokenizer.h): tokenizer.json of GPT-2 / Qwen2 / Qwen3 /
//    Llama-3 style models, equal to the Rust `tokenizers` library. May have no bos (bos_id() == -1: Qwen).
//    The serialised form is one JSON object holding tokenizer.json and what tokenizer_config.json adds.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "data/corpus.h"
#include "data/error.h"

namespace bitforge::data {

// GGUF / llama.cpp token types (llama_token_type / gguf-py TokenType).
enum class TokenType : int32_t { normal = 1, unknown = 2, control = 3, user_defined = 4, unused = 5, byte = 6 };

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;

  // "sentencepiece", "byte" or "hf_bpe"; the key for tokenizer_from_bytes.
  virtual std::string kind() const = 0;

  // UTF-8 text -> ids in [0, vocab_size()). No bos/eos are added (the shard writer adds them per document).
  virtual std::vector<int32_t> encode(std::string_view text) const = 0;
  // ids -> text. Control ids (bos/eos/pad) decode to nothing. Throws DataError for an id outside the vocabulary.
  virtual std::string decode(const std::vector<int32_t>& ids) const = 0;

  virtual int32_t vocab_size() const = 0;
  virtual int32_t bos_id() const = 0;  // -1 when the tokenizer has none (Qwen's hf_bpe): callers must cope
  virtual int32_t eos_id() const = 0;
  virtual int32_t unk_id() const = 0;  // -1 when the tokenizer has none (byte)
  virtual int32_t pad_id() const = 0;  // -1 when the tokenizer has none

  // Per-id vocabulary, id in [0, vocab_size()); throws DataError otherwise.
  virtual std::string piece(int32_t id) const = 0;  // SentencePiece piece ("▁the", "<0x0A>", "<s>"), byte: "<0xAB>"
  virtual float score(int32_t id) const = 0;        // SentencePiece score (log-prob for unigram, -rank for BPE)
  virtual TokenType token_type(int32_t id) const = 0;

  // The tokenizer as bytes (SentencePiece ModelProto, or the byte tokenizer's JSON).
  virtual std::string serialize() const = 0;
};

// Byte-level tokenizer (layout above).
class ByteTokenizer final : public Tokenizer {
 public:
  static constexpr int32_t kBos = 256;
  static constexpr int32_t kEos = 257;
  static constexpr int32_t kVocabSize = 258;

  std::string kind() const override { return "byte"; }
  std::vector<int32_t> encode(std::string_view text) const override;
  std::string decode(const std::vector<int32_t>& ids) const override;
  int32_t vocab_size() const override { return kVocabSize; }
  int32_t bos_id() const override { return kBos; }
  int32_t eos_id() const override { return kEos; }
  int32_t unk_id() const override { return -1; }
  int32_t pad_id() const override { return -1; }
  std::string piece(int32_t id) const override;
  float score(int32_t id) const override;
  TokenType token_type(int32_t id) const override;
  std::string serialize() const override;
};

// The default vocabulary size of a tokenizer bitforge trains (SentencePiece); the one default the config schema
// (data.vocab_size), prepare_data and train_sentencepiece all use.
inline constexpr int32_t kDefaultVocabSize = 4096;

enum class SentencePieceModel { bpe, unigram };

struct SentencePieceTrainOptions {
  SentencePieceModel model = SentencePieceModel::bpe;
  int32_t vocab_size = kDefaultVocabSize;  // including the 3 control and 256 byte pieces (so > 259)
  uint32_t seed = 1234;                  // SentencePiece's global RNG (sentence sampling/shuffling)
  int64_t input_sentence_size = 200000;  // cap on training sentences (lines), sampled with `seed`
  int32_t num_threads = 2;
  double character_coverage = 0.9995;   // rarer characters go to byte fallback
  int32_t max_sentence_length = 16384;  // bytes; longer lines are skipped by the trainer
  bool verbose = false;                 // SentencePiece's own INFO log lines
};

// Trains a SentencePiece model on `documents` (each non-empty line is one training sentence) and returns it loaded.
// Deterministic for fixed documents and options. Throws DataError with SentencePiece's status message when
// training fails (typically: vocab_size too large for the corpus, or <= 259).
std::unique_ptr<Tokenizer> train_sentencepiece(const std::vector<Document>& documents,
                                               const SentencePieceTrainOptions& options);

// Loads a SentencePiece tokenizer from its ModelProto bytes. Throws DataError (`what` names the source).
std::unique_ptr<Tokenizer> sentencepiece_from_bytes(const std::string& model_proto, const std::string& what = "bytes");

// Rebuilds a tokenizer from kind() + serialize(). Throws DataError for an unknown kind or malformed bytes.
std::unique_ptr<Tokenizer> tokenizer_from_bytes(std::string_view kind, const std::string& bytes);

// The kind a serialised tokenizer has, from its bytes: "hf_bpe" for an hf_bpe blob (starts with
// {"kind":"hf_bpe") or a bare tokenizer.json (a JSON object with "model" and no "kind"); "byte" for any other JSON
// object (the byte tokenizer's {"kind":"byte",...}); anything else is taken as a SentencePiece ModelProto.
std::string detect_tokenizer_kind(const std::string& bytes);

// Loads a tokenizer from `path`: an HF model directory or a tokenizer.json file (load_hf_tokenizer in
// data/hf_tokenizer.h: tokenizer.json preferred when it is byte-level BPE, else tokenizer.model), or a file written
// by save_tokenizer (tokenizer.model / tokenizer.bin / an hf_bpe blob); the kind is detected from the bytes.
// Throws DataError naming the file (and the JSON key for tokenizer.json problems).
std::unique_ptr<Tokenizer> load_tokenizer(const std::string& path);

// Writes tokenizer.serialize() to `path` (via path.tmp + rename). Throws DataError naming the file.
void save_tokenizer(const Tokenizer& tokenizer, const std::string& path);

// CRC-32 (zlib) of tokenizer.serialize(): the fingerprint shards record so a model can check its tokenizer.
uint32_t tokenizer_fingerprint(const Tokenizer& tokenizer);

}  // namespace bitforge::data
