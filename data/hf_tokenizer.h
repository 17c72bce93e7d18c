// Hugging Face tokenizers in C++: byte-level BPE from `tokenizer.json` (GPT-2 / Qwen2 / Qwen3 / Llama-3 style),
// equal to the Rust `tokenizers` library (PyPI `tokenizers`) for `encode(text, add_special_tokens=False).ids` and
// `decode(ids, skip_special_tokens=True)`; plus loading of HF model directories, a vocabulary comparison for the
// teacher check, and the vocabulary an exporter writes into GGUF.
//
// Pipeline of HfBpeTokenizer::encode (the order and semantics of tokenizers' TokenizerImpl::encode_single_sequence):
//  1. The input must be valid UTF-8 (see "Invalid UTF-8" below).
//  2. added_tokens with normalized=false are split out of the raw text first: leftmost-longest match
//     (tokenizers' AddedVocabulary, an Aho-Corasick automaton with MatchKind::LeftmostLongest); single_word tokens
//     only match when not preceded / followed by a word character (\w); lstrip / rstrip extend the match over
//     the whitespace (\s) before / after it.
//  3. Every remaining segment is normalized (NFC / NFD / NFKC / NFKD through utf8proc, or a Sequence of them, or
//     none); added_tokens with normalized=true are then split out of the normalized segment the same way.
//  4. Pre-tokenization: a `Sequence` of `Split` (Regex or String pattern, every SplitDelimiterBehavior, invert) and
//     `ByteLevel` (add_prefix_space, use_regex with the GPT-2 regex), or one of them alone. Regexes run in PCRE2
//     (JIT, UTF + UCP: \p{L}, \p{N}, \s are Unicode classes, as in tokenizers' Oniguruma). Empty pieces are dropped.
//     Unicode tables are those of the Debian libraries (PCRE2 10.42, utf8proc 2.6: Unicode 14 / 13), tokenizers'
//     Rust crates are newer: characters assigned after Unicode 13 may classify or normalize differently.
//     single_word's \w is PCRE2's (letters, digits, underscore; Rust's also counts marks and connectors).
//  5. Every pre-token is mapped byte -> unicode (GPT-2's bytes_to_unicode) and merged by BPE: with ignore_merges a
//     pre-token that is itself in the vocabulary is one token; otherwise the lowest-rank merge is applied first,
//     leftmost among equal ranks (a min-heap on (rank, position), tokenizers' `Word::merge_all`). Results of
//     pre-tokens shorter than 256 bytes are kept in a bounded per-thread cache (10000 entries, like tokenizers).
// decode(ids) maps ids to token strings, skips special added tokens (skip_special_tokens=True), maps every
// token's characters back to bytes (a token with a character outside the byte alphabet contributes its own UTF-8,
// like tokenizers' ByteLevel decoder) and converts the bytes to text like Rust's String::from_utf8_lossy.
//
// Invalid UTF-8: encode() throws DataError naming the byte offset of the first invalid byte (Python's tokenizers
// cannot receive such input at all: a `str` is always valid; the corpus readers reject it the same way).
// decode() of ids whose bytes are not valid UTF-8 (a split multi-byte character) replaces every maximal invalid
// subsequence with U+FFFD, exactly like tokenizers (String::from_utf8_lossy) and Python's
// bytes.decode('utf-8', 'replace').
//
// Supported tokenizer.json: model.type "BPE" with dropout null, continuing_subword_prefix / end_of_word_suffix
// null or "", merges as "a b" strings or ["a", "b"] pairs; a ByteLevel pre-tokenizer (alone or last in a
// Sequence); a ByteLevel decoder (alone or in a Sequence). Anything else (WordPiece, Unigram, Metaspace, a
// SentencePiece-converted BPE with byte_fallback ...) is a DataError naming the file and the JSON key; for a
// SentencePiece model directory load_hf_tokenizer falls back to its tokenizer.model (see below).
//
// Special tokens: bos / eos / pad / unk come from tokenizer_config.json (`bos_token`, `eos_token`, `pad_token`,
// `unk_token`: a string or an {"content": ...} object, null = none), else from config.json (`bos_token_id`,
// `eos_token_id`; a list takes its first element), else unk from model.unk_token. Qwen2/Qwen3 have no bos:
// bos_id() == -1, and data::prepare_data then frames documents with eos only (as Qwen pretraining does).
// Added tokens from tokenizer_config.json `added_tokens_decoder` that tokenizer.json lacks are added.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "data/error.h"
#include "data/tokenizer.h"

namespace bitforge::data {

inline constexpr const char* kHfBpeKind = "hf_bpe";

// One entry of tokenizer.json "added_tokens" (or tokenizer_config.json "added_tokens_decoder").
struct HfAddedToken {
  int32_t id = -1;
  std::string content;
  bool special = false;
  bool lstrip = false, rstrip = false, normalized = false, single_word = false;
};

// Byte-level BPE tokenizer from tokenizer.json (see top). Immutable after construction; encode/decode are
// thread-safe (the merge cache is per thread). Copies share the loaded tables.
class HfBpeTokenizer final : public Tokenizer {
 public:
  // Builds the tokenizer from the texts of tokenizer.json, tokenizer_config.json ("" = absent) and config.json
  // ("" = absent). `what` names the source in error messages (a file or directory). Throws DataError naming the
  // file, the JSON key (and the parse byte offset for malformed JSON) and what was expected.
  static std::unique_ptr<HfBpeTokenizer> from_json(const std::string& tokenizer_json,
                                                   const std::string& tokenizer_config_json = "",
                                                   const std::string& config_json = "",
                                                   const std::string& what = "tokenizer.json");

  std::string kind() const override { return kHfBpeKind; }
  // Text -> ids as tokenizers' `encode(text, add_special_tokens=False).ids` (no bos/eos; special tokens written
  // in the text ARE recognised, as tokenizers does). Throws DataError for invalid UTF-8 (names the byte offset).
  std::vector<int32_t> encode(std::string_view text) const override;
  // ids -> text as tokenizers' `decode(ids, skip_special_tokens=True)`. Throws DataError for an id outside
  // [0, vocab_size()) or an id no token has (a hole in the id range).
  std::string decode(const std::vector<int32_t>& ids) const override;

  // max id + 1 over the model vocabulary and the added tokens.
  int32_t vocab_size() const override;
  int32_t bos_id() const override;  // -1 when the tokenizer has none (Qwen)
  int32_t eos_id() const override;
  int32_t unk_id() const override;
  int32_t pad_id() const override;
  // The token string as tokenizer.json stores it: byte-to-unicode form for model tokens ("Ġthe", "Ċ"), the
  // content for added tokens ("<|im_end|>"); "[PAD<id>]" for an id no token has (llama.cpp's convention).
  std::string piece(int32_t id) const override;
  float score(int32_t id) const override;  // 0 (byte-level BPE has no scores; GGUF "gpt2" writes none)
  // control for special added tokens, user_defined for other added tokens, unused for holes, normal otherwise
  // (llama.cpp convert_hf_to_gguf.py's get_vocab_base()).
  TokenType token_type(int32_t id) const override;
  // One JSON object: {"kind":"hf_bpe","version":1,"tokenizer_config":{...}|null,"config":{...}|null,
  // "tokenizer":<tokenizer.json verbatim>}. tokenizer_from_bytes("hf_bpe", ...) rebuilds an equal tokenizer.
  std::string serialize() const override;

  // Merges in rank order as "a b" strings (GGUF tokenizer.ggml.merges).
  const std::vector<std::string>& merges() const;
  // The added tokens, by id.
  const std::vector<HfAddedToken>& added_tokens() const;
  // llama.cpp's `tokenizer.ggml.pre` for this pre-tokenizer (src/llama-vocab.cpp): "qwen2" for the Qwen2 regex,
  // "qwen35" for Qwen3.5's, "llama-bpe" for Llama-3's, "gpt-2" for the plain GPT-2 ByteLevel regex; "" when the
  // pre-tokenizer matches none of them (llama.cpp would then need a new pre type).
  std::string llama_cpp_pre() const;
  // The pre-tokens of `text` (after added-token splitting, normalization and pre-tokenization, before the byte
  // mapping), in order; added tokens appear as their text. For tests and debugging.
  std::vector<std::string> pre_tokenize(std::string_view text) const;
  // The id of a token given by its string (an added token's content such as "<|im_start|>", or a model token in
  // byte-to-unicode spelling such as "Ġthe"); -1 when there is none. Added tokens win, as in tokenizers.
  int32_t token_to_id(std::string_view token) const;
  // The raw bytes token `id` decodes to (no skipping, no UTF-8 repair). Throws DataError for a bad id.
  std::string token_bytes(int32_t id) const;

  struct Impl;
  explicit HfBpeTokenizer(std::shared_ptr<const Impl> impl) : impl_(std::move(impl)) {}

 private:
  std::shared_ptr<const Impl> impl_;
};

// GPT-2's bytes_to_unicode (openai/gpt-2 encoder.py, tokenizers' `bytes_char`): the UTF-8 of the character byte
// b is written as, for b in 0..255. Printable Latin-1 bytes map to themselves, the rest to U+0100 + n.
const std::vector<std::string>& byte_to_unicode_table();
// bytes -> their byte-to-unicode spelling ("\n" -> "Ċ", " the" -> "Ġthe").
std::string bytes_to_unicode(std::string_view bytes);
// The inverse: false (and `bytes` unspecified) when `text` has a character outside the 256-character alphabet.
bool unicode_to_bytes(std::string_view text, std::string* bytes);
// bytes -> valid UTF-8, every maximal invalid subsequence replaced with U+FFFD (Rust's String::from_utf8_lossy,
// Python's decode('utf-8', 'replace'); Unicode's "substitution of maximal subparts").
std::string utf8_lossy(std::string_view bytes);

// Loads an HF tokenizer from `path`:
//  * a directory: tokenizer.json when it holds a supported byte-level BPE (plus tokenizer_config.json and
//    config.json beside it when present); else tokenizer.model (SentencePiece; Llama-2 / Mistral directories,
//    whose tokenizer.json is the SentencePiece model converted by transformers); else DataError listing what the
//    directory lacks;
//  * a tokenizer.json file (tokenizer_config.json / config.json beside it are read when present);
//  * any other file: as load_tokenizer (kind detected from the bytes: SentencePiece, byte, hf_bpe blob or a
//    tokenizer.json under another name).
// Throws DataError naming the file and JSON key for unsupported or malformed input.
std::unique_ptr<Tokenizer> load_hf_tokenizer(const std::string& path);

// The files load_hf_tokenizer(path) reads (absolute or as given), for copying into a prepared-data directory:
// e.g. {dir/tokenizer.json, dir/tokenizer_config.json, dir/config.json} or {dir/tokenizer.model}.
std::vector<std::string> hf_tokenizer_files(const std::string& path);

// What an exporter writes for GGUF (llama.cpp gguf-py / convert_hf_to_gguf.py conventions).
struct GgufVocab {
  std::string model;                 // tokenizer.ggml.model: "gpt2" (byte-level BPE) | "llama" (SentencePiece)
  std::string pre;                   // tokenizer.ggml.pre: e.g. "qwen2"; "" = do not write (SentencePiece, byte)
  std::vector<std::string> tokens;   // tokenizer.ggml.tokens: piece(id) (byte-to-unicode form for "gpt2")
  std::vector<float> scores;         // tokenizer.ggml.scores (SentencePiece only; empty for "gpt2")
  std::vector<int32_t> token_types;  // tokenizer.ggml.token_type: TokenType values
  std::vector<std::string> merges;   // tokenizer.ggml.merges: "a b" in rank order ("gpt2" only)
  int32_t bos_id = -1, eos_id = -1, unk_id = -1, pad_id = -1;  // -1 = do not write the key
  bool add_bos = false;  // tokenizer.ggml.add_bos_token: true for SentencePiece (Llama), false for Qwen-style BPE
};

// The GGUF vocabulary of any bitforge tokenizer: hf_bpe -> "gpt2"; sentencepiece and byte -> "llama" (byte
// tokens spelt "<0xAB>", which llama.cpp's SPM vocabulary understands as byte tokens).
GgufVocab gguf_vocab(const Tokenizer& tokenizer);

// "" when a and b have the same vocabulary (size, every piece string and token type by id, bos/eos/unk/pad);
// else a short message naming the first differences, e.g.
// "vocab size 151669 vs 4096; id 3: 'abc' vs '<0x00>'; bos 151643 vs 1" (at most 3 differing ids are listed,
// then a count). Used by the teacher check (a distillation teacher must share the student's tokenizer).
std::string compare_vocabularies(const Tokenizer& a, const Tokenizer& b);

// Writes the tokenizer as a Hugging Face model directory holds it, into `dir` (which must exist): hf_bpe →
// tokenizer.json (the canonical JSON it was loaded from) + tokenizer_config.json; sentencepiece → tokenizer.model +
// a tokenizer_config.json for LlamaTokenizer (bos <s>, eos </s>, unk <unk>, add_bos_token, legacy spacing). Returns
// the file names written. Throws DataError for the byte tokenizer (no Hugging Face equivalent) or an I/O failure.
std::vector<std::string> save_hf_tokenizer_files(const Tokenizer& tokenizer, const std::string& dir);

}  // namespace bitforge::data
