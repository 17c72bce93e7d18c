// prepare_data: corpus -> train/val split by document -> tokenizer (trained on the train split, or a pretrained one
// loaded from `tokenizer_path`) -> token shards.
//
// Writes into output_dir:
//   tokenizer.model  (SentencePiece ModelProto)  or  tokenizer.bin (byte tokenizer)  — load with load_tokenizer();
//   for TokenizerKind::pretrained: tokenizer/ holding copies of the files load_hf_tokenizer reads
//   (tokenizer.json + tokenizer_config.json + config.json, or tokenizer.model, or the given file), and
//   PreparedData::tokenizer_path = tokenizer/<first of them> (loadable with load_tokenizer())
//   train.bin, val.bin  — token shards (data/shard.h), documents framed as bos … eos; a tokenizer without bos
//                         (bos_id() == -1, e.g. Qwen2/Qwen3) frames documents with eos only: t1 … tn eos, as Qwen
//                         pretraining does
//   meta.json  — {"format_version", "options", "corpus", "tokenizer", "train", "val", "unigram_perplexity_val",
//                 "seconds"}: document/token counts per split, vocab size, tokenizer kind/file/fingerprint, seed;
//                 for a pretrained tokenizer "options" holds tokenizer_path and the CRC-32 of its files, so
//                 changing the tokenizer (path or contents) redoes the preparation.
// The split is deterministic from `seed`: documents are permuted with SplitMix64(seed) and the first
// round(val_fraction × D) (at least 1 when val_fraction > 0, at most D - 1) go to val; each split keeps corpus order.
// When output_dir already holds a meta.json with identical "options" and all its files, nothing is redone
// (unless `force`).
#pragma once

#include <cstddef>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "data/corpus.h"
#include "data/error.h"
#include "data/shard.h"
#include "data/tokenizer.h"

namespace bitforge::data {

// Fraction of documents held out for validation by default (config data.val_fraction).
inline constexpr double kDefaultValFraction = 0.05;

// pretrained: load PrepareDataOptions::tokenizer_path (HF model directory, tokenizer.json, tokenizer.model or a
// file written by save_tokenizer) instead of training one.
enum class TokenizerKind { sentencepiece_bpe, sentencepiece_unigram, byte, pretrained };

// "sentencepiece_bpe" | "sentencepiece_unigram" | "byte" | "pretrained" <-> TokenizerKind; throws DataError naming
// the choices.
TokenizerKind tokenizer_kind_from_string(std::string_view name);
std::string to_string(TokenizerKind kind);

struct PrepareDataOptions {
  CorpusFormat corpus_format = CorpusFormat::text_dir;
  std::string corpus_path = kDefaultCorpusDir;
  std::string glob = kDefaultCorpusGlob;  // text_dir
  std::string text_field = "text";        // jsonl
  std::size_t max_documents = 0;          // 0 = all
  TokenizerKind tokenizer = TokenizerKind::sentencepiece_bpe;
  std::string tokenizer_path;  // pretrained only: HF model directory or tokenizer file (see load_tokenizer)
  int32_t vocab_size = kDefaultVocabSize;     // SentencePiece training only (byte: 258; pretrained: its own)
  double val_fraction = kDefaultValFraction;  // of documents, in [0, 1)
  uint64_t seed = 1234;        // split and SentencePiece sampling
  std::string output_dir = "prepared";
  int32_t num_threads = 2;               // SentencePiece training and encoding
  int64_t input_sentence_size = 200000;  // SentencePiece training sentence cap
  bool force = false;                    // redo even when meta.json matches
};

struct PreparedData {
  std::string dir;
  std::string tokenizer_path, train_path, val_path, meta_path;
  nlohmann::json meta;  // contents of meta.json
  bool reused = false;  // true when prepare_data found the outputs up to date
};

// The options as they are recorded under meta.json "options" (and compared for reuse). For a pretrained tokenizer
// this reads its files (CRC-32 of their names and bytes); throws DataError when tokenizer_path is empty or missing.
nlohmann::json prepare_options_json(const PrepareDataOptions& options);

// Train/val split: indices of the documents that go to val (sorted), for D documents. Deterministic in seed.
// Throws DataError when val_fraction is outside [0, 1) or a non-zero fraction leaves train or val empty.
std::vector<std::size_t> split_val_documents(std::size_t num_documents, double val_fraction, uint64_t seed);

// Runs the whole preparation (see top). Throws DataError from the corpus, tokenizer and shard layers, when
// output_dir cannot be created, or when a pretrained tokenizer has no eos (documents need an end marker).
PreparedData prepare_data(const PrepareDataOptions& options);

// prepare_data's train/val split of the corpus `options` describe (same documents, same order, same bos … eos
// framing), encoded with `tok` and held in memory: readers over what train.bin and val.bin would hold. Writes
// nothing (options.output_dir, tokenizer and vocab_size are ignored): for evaluating a model that carries its own
// tokenizer when no prepared data matches it. Throws DataError from the corpus and tokenizer layers.
struct EncodedSplits {
  ShardReader train, val;
};
EncodedSplits encode_splits(const PrepareDataOptions& options, const Tokenizer& tok);

// Reads output_dir/meta.json and the file names in it. Throws DataError when missing or malformed.
PreparedData read_prepared_data(const std::string& dir);

}  // namespace bitforge::data
