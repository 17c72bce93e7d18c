// Byte-level BPE from Hugging Face tokenizer.json (see hf_tokenizer.h). Semantics follow the Rust `tokenizers`
// crate (tokenizer/added_vocabulary.rs, pre_tokenizers/{split,byte_level,sequence}.rs, normalizers/unicode.rs,
// models/bpe/{model,word}.rs, decoders/byte_level.rs); regexes run in PCRE2, normalization in utf8proc.
#include "data/hf_tokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <fmt/format.h>
#include <pcre2.h>
#include <utf8proc.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstring>
#include <deque>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <queue>
#include <unordered_map>

#include "data/corpus.h"

namespace bitforge::data {
namespace fs = std::filesystem;
using json = nlohmann::json;

// ---------------------------------------------------------------------------------------------------------
// Byte <-> unicode (GPT-2 bytes_to_unicode)
// ---------------------------------------------------------------------------------------------------------
namespace {

void append_utf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

struct ByteMap {
  std::array<uint32_t, 256> byte_to_cp{};
  std::unordered_map<uint32_t, uint8_t> cp_to_byte;
  std::vector<std::string> utf8;  // by byte
  ByteMap() {
    std::array<bool, 256> direct{};
    for (int b = '!'; b <= '~'; ++b) direct[b] = true;
    for (int b = 0xA1; b <= 0xAC; ++b) direct[b] = true;
    for (int b = 0xAE; b <= 0xFF; ++b) direct[b] = true;
    uint32_t n = 0;
    for (int b = 0; b < 256; ++b) byte_to_cp[b] = direct[b] ? static_cast<uint32_t>(b) : 256 + n++;
    utf8.resize(256);
    for (int b = 0; b < 256; ++b) {
      cp_to_byte[byte_to_cp[b]] = static_cast<uint8_t>(b);
      append_utf8(utf8[b], byte_to_cp[b]);
    }
  }
};

const ByteMap& byte_map() {
  static const ByteMap m;
  return m;
}

// Decodes one code point of valid UTF-8 at s[i]; returns its length (1 for a stray byte, which the callers treat as
// "not in the alphabet").
std::size_t decode_cp(std::string_view s, std::size_t i, uint32_t* cp) {
  const auto c = static_cast<unsigned char>(s[i]);
  std::size_t len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
  if (len == 0 || i + len > s.size()) {
    *cp = 0xFFFFFFFF;
    return 1;
  }
  uint32_t v = len == 1 ? c : len == 2 ? (c & 0x1F) : len == 3 ? (c & 0x0F) : (c & 0x07);
  for (std::size_t k = 1; k < len; ++k) v = (v << 6) | (static_cast<unsigned char>(s[i + k]) & 0x3F);
  *cp = v;
  return len;
}

}  // namespace

const std::vector<std::string>& byte_to_unicode_table() { return byte_map().utf8; }

std::string bytes_to_unicode(std::string_view bytes) {
  const auto& m = byte_map();
  std::string out;
  out.reserve(bytes.size() * 2);
  for (unsigned char b : bytes) out += m.utf8[b];
  return out;
}

bool unicode_to_bytes(std::string_view text, std::string* bytes) {
  const auto& m = byte_map();
  bytes->clear();
  for (std::size_t i = 0; i < text.size();) {
    uint32_t cp;
    i += decode_cp(text, i, &cp);
    auto it = m.cp_to_byte.find(cp);
    if (it == m.cp_to_byte.end()) return false;
    bytes->push_back(static_cast<char>(it->second));
  }
  return true;
}

std::string utf8_lossy(std::string_view s) {
  // Unicode "substitution of maximal subparts" (Table 3-7 well-formed sequences), as Rust's Utf8Chunks.
  std::string out;
  out.reserve(s.size());
  static const char kReplacement[] = "\xEF\xBF\xBD";
  std::size_t i = 0;
  const std::size_t n = s.size();
  while (i < n) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c < 0x80) {
      out.push_back(static_cast<char>(c));
      ++i;
      continue;
    }
    std::size_t need = 0;
    unsigned char lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF) {
      need = 1;
    } else if (c >= 0xE0 && c <= 0xEF) {
      need = 2;
      if (c == 0xE0) lo = 0xA0;
      if (c == 0xED) hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
      need = 3;
      if (c == 0xF0) lo = 0x90;
      if (c == 0xF4) hi = 0x8F;
    } else {
      out += kReplacement;  // C0, C1, F5..FF, or a stray continuation byte
      ++i;
      continue;
    }
    std::size_t k = 1;
    for (; k <= need; ++k) {
      if (i + k >= n) break;
      const auto d = static_cast<unsigned char>(s[i + k]);
      const unsigned char l = k == 1 ? lo : 0x80, h = k == 1 ? hi : 0xBF;
      if (d < l || d > h) break;
    }
    if (k == need + 1) {
      out.append(s.data() + i, need + 1);
      i += need + 1;
    } else {
      out += kReplacement;  // the maximal subpart (lead byte + valid continuations so far) is one U+FFFD
      i += k;
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------------------
// PCRE2 helpers
// ---------------------------------------------------------------------------------------------------------
namespace {

struct Regex {
  pcre2_code* code = nullptr;
  bool jit = false;
  Regex() = default;
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;
  ~Regex() {
    if (code) pcre2_code_free(code);
  }
};

// Compiles `pattern` (UTF + UCP; PCRE2_LITERAL when literal) with JIT. Returns an error message, "" on success.
std::string compile_regex(Regex& re, const std::string& pattern, bool literal) {
  int err = 0;
  PCRE2_SIZE off = 0;
  const uint32_t opts = literal ? PCRE2_UTF | PCRE2_LITERAL : PCRE2_UTF | PCRE2_UCP;  // LITERAL refuses UCP
  re.code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(), opts, &err, &off, nullptr);
  if (!re.code) {
    PCRE2_UCHAR buf[256];
    pcre2_get_error_message(err, buf, sizeof(buf));
    return fmt::format("PCRE2 cannot compile it at pattern offset {}: {}", off, reinterpret_cast<const char*>(buf));
  }
  re.jit = pcre2_jit_compile(re.code, PCRE2_JIT_COMPLETE) == 0;
  return "";
}

// Per-thread match data and JIT stack (matching is thread-safe given separate match data).
struct MatchState {
  pcre2_match_data* md = nullptr;
  pcre2_match_context* mc = nullptr;
  pcre2_jit_stack* stack = nullptr;
  MatchState() {
    md = pcre2_match_data_create(1, nullptr);
    mc = pcre2_match_context_create(nullptr);
    stack = pcre2_jit_stack_create(32 * 1024, 8 * 1024 * 1024, nullptr);
    pcre2_jit_stack_assign(mc, nullptr, stack);
  }
  ~MatchState() {
    pcre2_jit_stack_free(stack);
    pcre2_match_context_free(mc);
    pcre2_match_data_free(md);
  }
};

MatchState& match_state() {
  thread_local MatchState s;
  return s;
}

// Finds the first match of re in s at or after `start`. Returns false when none.
bool regex_find(const Regex& re, std::string_view s, std::size_t start, std::size_t* mstart, std::size_t* mend,
                uint32_t extra_options = 0) {
  MatchState& st = match_state();
  const auto subject = reinterpret_cast<PCRE2_SPTR>(s.data());
  const uint32_t opts = PCRE2_NO_UTF_CHECK | extra_options;
  const int rc = re.jit && !(extra_options & PCRE2_ANCHORED)
                     ? pcre2_jit_match(re.code, subject, s.size(), start, opts, st.md, st.mc)
                     : pcre2_match(re.code, subject, s.size(), start, opts, st.md, st.mc);
  if (rc == PCRE2_ERROR_NOMATCH) return false;
  if (rc < 0) {
    PCRE2_UCHAR buf[256];
    pcre2_get_error_message(rc, buf, sizeof(buf));
    throw DataError(fmt::format("hf tokenizer: regex match failed: {}", reinterpret_cast<const char*>(buf)));
  }
  const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(st.md);
  *mstart = ov[0];
  *mend = ov[1];
  return true;
}

// Offsets of the code point after position i in valid UTF-8.
std::size_t next_cp(std::string_view s, std::size_t i) {
  ++i;
  while (i < s.size() && (static_cast<unsigned char>(s[i]) & 0xC0) == 0x80) ++i;
  return i;
}

// tokenizers' Pattern::find_matches: the whole of s as (begin, end, is_match) pieces; empty matches are skipped.
void find_matches(const Regex& re, std::string_view s, std::vector<std::tuple<std::size_t, std::size_t, bool>>& out) {
  out.clear();
  std::size_t prev = 0, pos = 0;
  while (pos <= s.size()) {
    std::size_t b, e;
    if (!regex_find(re, s, pos, &b, &e)) break;
    if (e == b) {  // empty match: tokenizers drops empty splits; move on one character
      if (b >= s.size()) break;
      pos = next_cp(s, b);
      continue;
    }
    if (prev != b) out.emplace_back(prev, b, false);
    out.emplace_back(b, e, true);
    prev = pos = e;
  }
  if (prev != s.size()) out.emplace_back(prev, s.size(), false);
}

// Regexes of tokenizers' AddedVocabulary (Rust regex crate: Unicode \w, \s).
struct WordRegexes {
  Regex starts_with_word, ends_with_word, trailing_space, leading_space;
  WordRegexes() {
    compile_regex(starts_with_word, R"(\A\w)", false);
    compile_regex(ends_with_word, R"(\w\z)", false);
    compile_regex(trailing_space, R"(\s*\z)", false);
    compile_regex(leading_space, R"(\A\s*)", false);
  }
};
const WordRegexes& word_regexes() {
  static const WordRegexes r;
  return r;
}

const char* kGpt2Regex = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

// llama.cpp pre-tokenizer names (src/llama-vocab.cpp) by the tokenizer.json regex they implement.
struct KnownPre {
  const char* name;
  const char* regex;
};
const KnownPre kKnownPre[] = {
    {"qwen2",
     R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)"},
    {"qwen35",
     R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)"},
    {"llama-bpe",
     R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)"},
};

}  // namespace

// ---------------------------------------------------------------------------------------------------------
// The tokenizer
// ---------------------------------------------------------------------------------------------------------
namespace {

enum class Behavior { removed, isolated, merged_with_previous, merged_with_next, contiguous };

struct PreStep {
  bool byte_level = false;
  // Split
  std::shared_ptr<Regex> re;
  Behavior behavior = Behavior::isolated;
  bool invert = false;
  std::string regex_source;  // Split: the pattern as written (Regex) ; ByteLevel with use_regex: GPT-2's
  // ByteLevel
  bool add_prefix_space = false;
  bool use_regex = true;
};

// Leftmost-longest matcher over a set of added tokens (tokenizers' AddedVocabulary split trie).
struct AddedMatcher {
  std::vector<const HfAddedToken*> tokens;          // content not empty
  std::array<std::vector<uint32_t>, 256> by_first;  // indices into tokens, longest first
  bool empty() const { return tokens.empty(); }
  void build(std::vector<const HfAddedToken*> toks) {
    tokens = std::move(toks);
    for (auto& v : by_first) v.clear();
    for (uint32_t i = 0; i < tokens.size(); ++i)
      by_first[static_cast<unsigned char>(tokens[i]->content[0])].push_back(i);
    for (auto& v : by_first) {
      std::stable_sort(v.begin(), v.end(),
                       [&](uint32_t a, uint32_t b) { return tokens[a]->content.size() > tokens[b]->content.size(); });
    }
  }
  // Splits s into (begin, end, token or nullptr) covering s (tokenizers' find_matches).
  void split(std::string_view s, std::vector<std::tuple<std::size_t, std::size_t, const HfAddedToken*>>& out) const {
    out.clear();
    if (s.empty()) return;
    std::size_t start_offset = 0, i = 0;
    const auto& wr = word_regexes();
    while (i < s.size()) {
      const auto& cands = by_first[static_cast<unsigned char>(s[i])];
      const HfAddedToken* hit = nullptr;
      for (uint32_t c : cands) {
        const std::string& t = tokens[c]->content;
        if (t.size() <= s.size() - i && std::memcmp(t.data(), s.data() + i, t.size()) == 0) {
          hit = tokens[c];
          break;
        }
      }
      if (!hit) {
        ++i;
        continue;
      }
      std::size_t start = i, stop = i + hit->content.size();
      i = stop;  // the automaton resumes after the match
      std::size_t b, e;
      if (hit->single_word) {
        const bool start_space = start == 0 || !regex_find(wr.ends_with_word, s.substr(0, start), 0, &b, &e);
        const bool stop_space = stop == s.size() || !regex_find(wr.starts_with_word, s.substr(stop), 0, &b, &e);
        if (!start_space || !stop_space) continue;
      }
      if (hit->lstrip) {
        std::size_t newstart = start;
        if (regex_find(wr.trailing_space, s.substr(0, start), 0, &b, &e)) newstart = b;
        start = std::max(newstart, start_offset);
      }
      if (hit->rstrip) {
        if (regex_find(wr.leading_space, s.substr(stop), 0, &b, &e)) stop += e;
      }
      if (start_offset < start) out.emplace_back(start_offset, start, nullptr);
      out.emplace_back(start, stop, hit);
      start_offset = stop;
    }
    if (start_offset != s.size()) out.emplace_back(start_offset, s.size(), nullptr);
  }
};

struct PairHash {
  std::size_t operator()(uint64_t k) const { return std::hash<uint64_t>()(k * 0x9E3779B97F4A7C15ull); }
};

std::atomic<uint64_t> g_next_cache_id{1};

}  // namespace

struct HfBpeTokenizer::Impl {
  std::string what;
  std::string tokenizer_text;  // canonical dump of tokenizer.json
  json tokenizer_config = nullptr, config = nullptr;

  // Vocabulary by id.
  std::vector<std::string> id_token;                   // token string ("" = hole)
  std::vector<uint8_t> id_kind;                        // 0 hole, 1 model, 2 added, 3 special added
  std::vector<std::string> id_bytes;                   // what the ByteLevel decoder makes of the token
  std::unordered_map<std::string, int32_t> vocab_raw;  // model token as raw bytes -> id
  std::unordered_map<std::string, int32_t> vocab;      // model token string -> id
  std::array<int32_t, 256> byte_id{};                  // id of the one-byte token, -1 if absent
  std::unordered_map<uint64_t, std::pair<uint32_t, int32_t>, PairHash> merge_map;  // (a,b) -> (rank, new id)
  std::vector<std::string> merges;
  bool ignore_merges = false, fuse_unk = false, byte_fallback = false;
  int32_t model_unk = -1;
  std::array<int32_t, 256> fallback_id{};  // "<0xAB>" tokens for byte_fallback

  int32_t bos = -1, eos = -1, unk = -1, pad = -1;
  int32_t vocab_size = 0;

  int normalizer_options = 0;  // utf8proc options; 0 = none
  std::vector<int> normalizer_steps;
  std::vector<PreStep> steps;
  std::vector<HfAddedToken> added;  // by id
  AddedMatcher raw_matcher, norm_matcher;
  std::vector<HfAddedToken> norm_added;  // normalized=true tokens with normalized content (matching only)
  uint64_t cache_id = g_next_cache_id.fetch_add(1);

  std::string normalize(std::string_view s) const;
  void pre_tokenize_segment(std::string_view s, std::deque<std::string>& arena,
                            std::vector<std::string_view>& pieces) const;
  void bpe(std::string_view piece, std::vector<int32_t>& out) const;
  void bpe_uncached(std::string_view piece, std::vector<int32_t>& out) const;
  template <typename F>
  void run(std::string_view text, F&& on_segment_or_token) const;
};

namespace {

// Ids index dense tables: a bound keeps a malformed file from asking for gigabytes (real vocabularies: < 300k).
constexpr int64_t kMaxId = int64_t{1} << 22;

[[noreturn]] void fail(const std::string& what, const std::string& key, const std::string& msg) {
  throw DataError(fmt::format("{}: key '{}': {}", what, key, msg));
}

json parse_json(const std::string& text, const std::string& what) {
  try {
    return json::parse(text);
  } catch (const json::parse_error& e) {
    throw DataError(fmt::format("{}: malformed JSON at byte offset {}: {}", what, e.byte, e.what()));
  }
}

const json& need(const json& j, const char* key, const std::string& path, const std::string& what) {
  if (!j.is_object()) fail(what, path, "expected a JSON object");
  auto it = j.find(key);
  if (it == j.end()) fail(what, path.empty() ? key : path + "." + key, "missing");
  return *it;
}

std::string type_of(const json& j, const std::string& path, const std::string& what) {
  if (!j.is_object()) fail(what, path, "expected a JSON object with a \"type\"");
  auto it = j.find("type");
  if (it == j.end() || !it->is_string()) fail(what, path + ".type", "missing or not a string");
  return it->get<std::string>();
}

bool get_bool(const json& j, const char* key, bool dflt, const std::string& path, const std::string& what) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return dflt;
  if (!it->is_boolean()) fail(what, path + "." + key, "expected true or false");
  return it->get<bool>();
}

// A special-token entry of tokenizer_config.json: "str", {"content": "str", ...} or null.
bool token_content(const json& j, std::string* out) {
  if (j.is_string()) return *out = j.get<std::string>(), true;
  if (j.is_object() && j.contains("content") && j["content"].is_string())
    return *out = j["content"].get<std::string>(), true;
  return false;
}

}  // namespace

namespace {

using Impl = HfBpeTokenizer::Impl;

// from_json without the catch-all for nlohmann type errors.
std::unique_ptr<HfBpeTokenizer> build_hf_bpe(const std::string& tokenizer_json,
                                             const std::string& tokenizer_config_json, const std::string& config_json,
                                             const std::string& what) {
  auto impl = std::make_shared<Impl>();
  impl->what = what;
  const json tj = parse_json(tokenizer_json, what);
  if (!tj.is_object()) fail(what, "(top level)", "expected a JSON object (tokenizer.json)");
  impl->tokenizer_text = tj.dump();
  if (!tokenizer_config_json.empty()) {
    impl->tokenizer_config = parse_json(tokenizer_config_json, what + " (tokenizer_config.json)");
    if (!impl->tokenizer_config.is_object())
      fail(what + " (tokenizer_config.json)", "(top level)", "expected an object");
  }
  if (!config_json.empty()) {
    impl->config = parse_json(config_json, what + " (config.json)");
    if (!impl->config.is_object()) fail(what + " (config.json)", "(top level)", "expected an object");
  }

  // --- model ---
  const json& model = need(tj, "model", "", what);
  const std::string model_type = model.is_object() && model.contains("type") ? type_of(model, "model", what) : "BPE";
  if (model_type != "BPE") fail(what, "model.type", fmt::format("unsupported '{}'; expected BPE", model_type));
  if (model.contains("dropout") && !model["dropout"].is_null())
    fail(what, "model.dropout", "BPE dropout is not supported (training-time randomness); expected null");
  for (const char* k : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    if (model.contains(k) && !model[k].is_null() && !(model[k].is_string() && model[k].get<std::string>().empty()))
      fail(what, std::string("model.") + k, "not supported for byte-level BPE; expected null");
  }
  impl->ignore_merges = get_bool(model, "ignore_merges", false, "model", what);
  impl->fuse_unk = get_bool(model, "fuse_unk", false, "model", what);
  impl->byte_fallback = get_bool(model, "byte_fallback", false, "model", what);
  const json& vocab = need(model, "vocab", "model", what);
  if (!vocab.is_object()) fail(what, "model.vocab", "expected an object {token: id}");
  int32_t max_id = -1;
  for (auto it = vocab.begin(); it != vocab.end(); ++it) {
    if (!it.value().is_number_integer() || it.value().get<int64_t>() < 0 || it.value().get<int64_t>() >= kMaxId)
      fail(what, "model.vocab." + it.key(), fmt::format("expected an integer id in [0, {})", kMaxId));
    const auto id = static_cast<int32_t>(it.value().get<int64_t>());
    impl->vocab[it.key()] = id;
    max_id = std::max(max_id, id);
  }
  // --- added tokens ---
  std::map<int32_t, HfAddedToken> added;
  if (tj.contains("added_tokens") && !tj["added_tokens"].is_null()) {
    const json& at = tj["added_tokens"];
    if (!at.is_array()) fail(what, "added_tokens", "expected an array");
    for (std::size_t i = 0; i < at.size(); ++i) {
      const std::string path = fmt::format("added_tokens[{}]", i);
      const json& a = at[i];
      if (!a.is_object() || !a.contains("id") || !a["id"].is_number_integer() || !a.contains("content") ||
          !a["content"].is_string())
        fail(what, path, "expected {\"id\": int, \"content\": string, ...}");
      HfAddedToken t;
      if (a["id"].get<int64_t>() < 0 || a["id"].get<int64_t>() >= kMaxId)
        fail(what, path + ".id", fmt::format("expected an id in [0, {})", kMaxId));
      t.id = a["id"].get<int32_t>();
      t.content = a["content"].get<std::string>();
      t.special = get_bool(a, "special", false, path, what);
      t.lstrip = get_bool(a, "lstrip", false, path, what);
      t.rstrip = get_bool(a, "rstrip", false, path, what);
      t.normalized = get_bool(a, "normalized", !t.special, path, what);
      t.single_word = get_bool(a, "single_word", false, path, what);
      added[t.id] = t;
    }
  }
  if (impl->tokenizer_config.is_object() && impl->tokenizer_config.contains("added_tokens_decoder")) {
    const json& atd = impl->tokenizer_config["added_tokens_decoder"];
    const std::string w = what + " (tokenizer_config.json)";
    if (!atd.is_object()) fail(w, "added_tokens_decoder", "expected an object {id: {content, ...}}");
    for (auto it = atd.begin(); it != atd.end(); ++it) {
      const std::string path = "added_tokens_decoder." + it.key();
      int32_t id = -1;
      std::size_t used = 0;
      try {
        id = std::stoi(it.key(), &used);
      } catch (...) {
        used = 0;
      }
      if (used == 0 || used != it.key().size() || id < 0 || id >= kMaxId)
        fail(w, path, fmt::format("expected an integer id in [0, {}) as the key", kMaxId));
      if (added.count(id)) continue;  // tokenizer.json is authoritative
      std::string content;
      if (!token_content(it.value(), &content)) fail(w, path, "expected {\"content\": string, ...}");
      HfAddedToken t;
      t.id = id;
      t.content = content;
      t.special = get_bool(it.value(), "special", false, path, w);
      t.lstrip = get_bool(it.value(), "lstrip", false, path, w);
      t.rstrip = get_bool(it.value(), "rstrip", false, path, w);
      t.normalized = get_bool(it.value(), "normalized", !t.special, path, w);
      t.single_word = get_bool(it.value(), "single_word", false, path, w);
      added[id] = t;
    }
  }
  for (auto& [id, t] : added) {
    max_id = std::max(max_id, id);
    impl->added.push_back(t);
  }
  impl->vocab_size = max_id + 1;
  if (impl->vocab_size <= 0) fail(what, "model.vocab", "empty vocabulary");

  // id tables
  const auto n = static_cast<std::size_t>(impl->vocab_size);
  impl->id_token.assign(n, "");
  impl->id_kind.assign(n, 0);
  impl->id_bytes.assign(n, "");
  std::string raw;
  for (const auto& [tok, id] : impl->vocab) {
    impl->id_token[id] = tok;
    impl->id_kind[id] = 1;
    if (unicode_to_bytes(tok, &raw)) impl->vocab_raw[raw] = id;
  }
  for (const auto& t : impl->added) {
    impl->id_token[t.id] = t.content;
    impl->id_kind[t.id] = t.special ? 3 : 2;
  }
  for (std::size_t id = 0; id < n; ++id) {
    if (!impl->id_kind[id]) continue;
    impl->id_bytes[id] = unicode_to_bytes(impl->id_token[id], &raw) ? raw : impl->id_token[id];
  }
  impl->byte_id.fill(-1);
  impl->fallback_id.fill(-1);
  for (int b = 0; b < 256; ++b) {
    auto it = impl->vocab_raw.find(std::string(1, static_cast<char>(b)));
    if (it != impl->vocab_raw.end()) impl->byte_id[b] = it->second;
    auto f = impl->vocab.find(fmt::format("<0x{:02X}>", b));
    if (f != impl->vocab.end()) impl->fallback_id[b] = f->second;
  }
  if (model.contains("unk_token") && model["unk_token"].is_string()) {
    auto it = impl->vocab.find(model["unk_token"].get<std::string>());
    if (it == impl->vocab.end()) fail(what, "model.unk_token", "not in model.vocab");
    impl->model_unk = it->second;
  }

  // merges
  const json& merges = need(model, "merges", "model", what);
  if (!merges.is_array()) fail(what, "model.merges", "expected an array of \"a b\" strings or [\"a\", \"b\"] pairs");
  impl->merges.reserve(merges.size());
  impl->merge_map.reserve(merges.size() * 2);
  for (std::size_t r = 0; r < merges.size(); ++r) {
    const json& m = merges[r];
    std::string a, b;
    if (m.is_string()) {
      const std::string s = m.get<std::string>();
      const auto sp = s.find(' ');
      if (sp == std::string::npos || s.find(' ', sp + 1) != std::string::npos)
        fail(what, fmt::format("model.merges[{}]", r), fmt::format("'{}' is not two tokens separated by one space", s));
      a = s.substr(0, sp);
      b = s.substr(sp + 1);
    } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
      a = m[0].get<std::string>();
      b = m[1].get<std::string>();
    } else {
      fail(what, fmt::format("model.merges[{}]", r), "expected \"a b\" or [\"a\", \"b\"]");
    }
    auto ia = impl->vocab.find(a), ib = impl->vocab.find(b), iab = impl->vocab.find(a + b);
    const std::string* missing = ia == impl->vocab.end() ? &a : ib == impl->vocab.end() ? &b : nullptr;
    if (missing || iab == impl->vocab.end())
      fail(what, fmt::format("model.merges[{}]", r),
           fmt::format("token '{}' is not in model.vocab", missing ? *missing : a + b));
    const uint64_t key =
        (static_cast<uint64_t>(static_cast<uint32_t>(ia->second)) << 32) | static_cast<uint32_t>(ib->second);
    impl->merge_map[key] = {static_cast<uint32_t>(r), iab->second};
    impl->merges.push_back(a + " " + b);
  }

  // --- normalizer ---
  const auto add_norm = [&](const json& nj, const std::string& path) {
    const std::string t = type_of(nj, path, what);
    if (t == "NFC")
      impl->normalizer_steps.push_back(UTF8PROC_STABLE | UTF8PROC_COMPOSE);
    else if (t == "NFD")
      impl->normalizer_steps.push_back(UTF8PROC_STABLE | UTF8PROC_DECOMPOSE);
    else if (t == "NFKC")
      impl->normalizer_steps.push_back(UTF8PROC_STABLE | UTF8PROC_COMPOSE | UTF8PROC_COMPAT);
    else if (t == "NFKD")
      impl->normalizer_steps.push_back(UTF8PROC_STABLE | UTF8PROC_DECOMPOSE | UTF8PROC_COMPAT);
    else
      fail(what, path + ".type",
           fmt::format("unsupported normalizer '{}'; expected NFC, NFD, NFKC, NFKD or Sequence", t));
  };
  if (tj.contains("normalizer") && !tj["normalizer"].is_null()) {
    const json& nj = tj["normalizer"];
    if (type_of(nj, "normalizer", what) == "Sequence") {
      const json& list = need(nj, "normalizers", "normalizer", what);
      if (!list.is_array()) fail(what, "normalizer.normalizers", "expected an array");
      for (std::size_t i = 0; i < list.size(); ++i) add_norm(list[i], fmt::format("normalizer.normalizers[{}]", i));
    } else {
      add_norm(nj, "normalizer");
    }
  }

  // --- pre-tokenizer ---
  const auto add_pre = [&](const json& pj, const std::string& path) {
    const std::string t = type_of(pj, path, what);
    PreStep st;
    if (t == "ByteLevel") {
      st.byte_level = true;
      st.add_prefix_space = get_bool(pj, "add_prefix_space", true, path, what);
      st.use_regex = get_bool(pj, "use_regex", true, path, what);
      if (st.use_regex) {
        st.re = std::make_shared<Regex>();
        st.regex_source = kGpt2Regex;
        compile_regex(*st.re, kGpt2Regex, false);
      }
    } else if (t == "Split") {
      const json& pat = need(pj, "pattern", path, what);
      std::string src;
      bool literal = false;
      if (pat.is_object() && pat.contains("Regex") && pat["Regex"].is_string()) {
        src = pat["Regex"].get<std::string>();
      } else if (pat.is_object() && pat.contains("String") && pat["String"].is_string()) {
        src = pat["String"].get<std::string>();
        literal = true;
      } else {
        fail(what, path + ".pattern", "expected {\"Regex\": string} or {\"String\": string}");
      }
      st.re = std::make_shared<Regex>();
      const std::string err = compile_regex(*st.re, src, literal);
      if (!err.empty()) fail(what, path + ".pattern", err);
      st.regex_source = literal ? "" : src;
      const json& beh = need(pj, "behavior", path, what);
      const std::string b = beh.is_string() ? beh.get<std::string>() : "";
      if (b == "Removed")
        st.behavior = Behavior::removed;
      else if (b == "Isolated")
        st.behavior = Behavior::isolated;
      else if (b == "MergedWithPrevious")
        st.behavior = Behavior::merged_with_previous;
      else if (b == "MergedWithNext")
        st.behavior = Behavior::merged_with_next;
      else if (b == "Contiguous")
        st.behavior = Behavior::contiguous;
      else
        fail(what, path + ".behavior",
             fmt::format("'{}'; expected Removed, Isolated, MergedWithPrevious, MergedWithNext or Contiguous",
                         beh.dump()));
      st.invert = get_bool(pj, "invert", false, path, what);
    } else {
      fail(what, path + ".type",
           fmt::format("unsupported pre-tokenizer '{}'; expected ByteLevel, Split or a Sequence of them (byte-level "
                       "BPE; a SentencePiece model's Metaspace is loaded from tokenizer.model instead)",
                       t));
    }
    impl->steps.push_back(std::move(st));
  };
  if (!tj.contains("pre_tokenizer") || tj["pre_tokenizer"].is_null())
    fail(what, "pre_tokenizer", "missing; a byte-level BPE needs a ByteLevel pre-tokenizer");
  {
    const json& pj = tj["pre_tokenizer"];
    if (type_of(pj, "pre_tokenizer", what) == "Sequence") {
      const json& list = need(pj, "pretokenizers", "pre_tokenizer", what);
      if (!list.is_array()) fail(what, "pre_tokenizer.pretokenizers", "expected an array");
      for (std::size_t i = 0; i < list.size(); ++i) add_pre(list[i], fmt::format("pre_tokenizer.pretokenizers[{}]", i));
    } else {
      add_pre(pj, "pre_tokenizer");
    }
    if (impl->steps.empty() || !impl->steps.back().byte_level)
      fail(what, "pre_tokenizer",
           "expected a ByteLevel pre-tokenizer (alone or last in a Sequence): only byte-level BPE is supported");
    for (std::size_t i = 0; i + 1 < impl->steps.size(); ++i)
      if (impl->steps[i].byte_level) fail(what, "pre_tokenizer", "ByteLevel must be the last pre-tokenizer");
  }
  // --- decoder ---
  {
    if (!tj.contains("decoder") || tj["decoder"].is_null()) fail(what, "decoder", "missing; expected ByteLevel");
    const json& dj = tj["decoder"];
    const std::string t = type_of(dj, "decoder", what);
    bool ok = t == "ByteLevel";
    if (t == "Sequence") {
      const json& list = need(dj, "decoders", "decoder", what);
      ok = list.is_array() && list.size() == 1 && type_of(list[0], "decoder.decoders[0]", what) == "ByteLevel";
    }
    if (!ok) fail(what, "decoder.type", fmt::format("unsupported decoder '{}'; expected ByteLevel", t));
  }

  // --- added-token matchers ---
  std::vector<const HfAddedToken*> raw_tokens, norm_tokens;
  for (const auto& t : impl->added) {
    if (t.content.empty()) continue;
    (t.normalized ? norm_tokens : raw_tokens).push_back(&t);
  }
  impl->raw_matcher.build(raw_tokens);
  // Normalized tokens are matched by their normalized content (tokenizers' normalized_cache): matching copies.
  impl->norm_added.reserve(norm_tokens.size());
  for (const HfAddedToken* t : norm_tokens) {
    HfAddedToken c = *t;
    c.content = impl->normalize(t->content);
    if (!c.content.empty()) impl->norm_added.push_back(std::move(c));
  }
  std::vector<const HfAddedToken*> norm_ptrs;
  for (const auto& t : impl->norm_added) norm_ptrs.push_back(&t);
  impl->norm_matcher.build(norm_ptrs);
  // tokenizers decodes (and id_to_token spells) a normalized added token by its normalized form
  // (AddedVocabulary::simple_id_to_token uses normalized_cache).
  for (const auto& t : impl->norm_added) {
    impl->id_token[t.id] = t.content;
    impl->id_bytes[t.id] = unicode_to_bytes(t.content, &raw) ? raw : t.content;
  }

  // --- special tokens ---
  const auto id_of = [&](const std::string& content) -> int32_t {
    for (const auto& t : impl->added)
      if (impl->id_token[t.id] == content) return t.id;
    auto it = impl->vocab.find(content);
    return it == impl->vocab.end() ? -1 : it->second;
  };
  const auto from_config = [&](const char* key, const char* id_key, int32_t dflt) -> int32_t {
    const json& tc = impl->tokenizer_config;
    if (tc.is_object() && tc.contains(key)) {
      if (tc[key].is_null()) return -1;
      std::string content;
      if (!token_content(tc[key], &content))
        fail(what + " (tokenizer_config.json)", key, "expected a string, {\"content\": string} or null");
      const int32_t id = id_of(content);
      if (id < 0)
        fail(what + " (tokenizer_config.json)", key, fmt::format("token '{}' is not in the vocabulary", content));
      return id;
    }
    const json& c = impl->config;
    if (id_key && c.is_object() && c.contains(id_key) && !c[id_key].is_null()) {
      const json& v = c[id_key].is_array() && !c[id_key].empty() ? c[id_key][0] : c[id_key];
      if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() >= impl->vocab_size)
        fail(what + " (config.json)", id_key, fmt::format("expected an id in [0, {})", impl->vocab_size));
      return v.get<int32_t>();
    }
    return dflt;
  };
  impl->bos = from_config("bos_token", "bos_token_id", -1);
  impl->eos = from_config("eos_token", "eos_token_id", -1);
  impl->pad = from_config("pad_token", "pad_token_id", -1);
  impl->unk = from_config("unk_token", nullptr, impl->model_unk);
  return std::make_unique<HfBpeTokenizer>(std::shared_ptr<const Impl>(std::move(impl)));
}

}  // namespace

std::unique_ptr<HfBpeTokenizer> HfBpeTokenizer::from_json(const std::string& tokenizer_json,
                                                          const std::string& tokenizer_config_json,
                                                          const std::string& config_json, const std::string& what) {
  try {
    return build_hf_bpe(tokenizer_json, tokenizer_config_json, config_json, what);
  } catch (const json::exception& e) {
    // A value of an unexpected JSON type somewhere the checks above do not name: still a DataError.
    throw DataError(fmt::format("{}: unexpected JSON structure: {}", what, e.what()));
  }
}

// ---- encode pipeline ----

std::string HfBpeTokenizer::Impl::normalize(std::string_view s) const {
  if (normalizer_steps.empty()) return std::string(s);
  bool ascii = true;
  for (unsigned char c : s) {
    if (c >= 0x80) {
      ascii = false;
      break;
    }
  }
  if (ascii) return std::string(s);  // ASCII is invariant under NFC/NFD/NFKC/NFKD
  std::string cur(s);
  for (int opts : normalizer_steps) {
    utf8proc_uint8_t* dst = nullptr;
    const utf8proc_ssize_t len =
        utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(cur.data()), static_cast<utf8proc_ssize_t>(cur.size()),
                     &dst, static_cast<utf8proc_option_t>(opts));
    if (len < 0) {
      throw DataError(fmt::format("{}: normalization failed: {}", what, utf8proc_errmsg(len)));
    }
    cur.assign(reinterpret_cast<const char*>(dst), static_cast<std::size_t>(len));
    std::free(dst);
  }
  return cur;
}

void HfBpeTokenizer::Impl::pre_tokenize_segment(std::string_view s, std::deque<std::string>& arena,
                                                std::vector<std::string_view>& pieces) const {
  pieces.clear();
  if (s.empty()) return;
  pieces.push_back(s);
  std::vector<std::string_view> next;
  std::vector<std::tuple<std::size_t, std::size_t, bool>> m;
  std::vector<std::pair<std::size_t, std::size_t>> keep;
  for (const PreStep& st : steps) {
    next.clear();
    for (std::string_view p : pieces) {
      if (st.byte_level) {
        if (st.add_prefix_space && p[0] != ' ') {
          arena.push_back(" ");
          arena.back().append(p);
          p = arena.back();
        }
        if (!st.use_regex) {
          next.push_back(p);
          continue;
        }
        find_matches(*st.re, p, m);
        for (auto& [b, e, is] : m) next.push_back(p.substr(b, e - b));
        continue;
      }
      find_matches(*st.re, p, m);
      if (st.invert)
        for (auto& t : m) std::get<2>(t) = !std::get<2>(t);
      keep.clear();
      switch (st.behavior) {
        case Behavior::isolated:
          for (auto& [b, e, is] : m) keep.emplace_back(b, e);
          break;
        case Behavior::removed:
          for (auto& [b, e, is] : m)
            if (!is) keep.emplace_back(b, e);
          break;
        case Behavior::contiguous: {
          bool prev = false;
          for (auto& [b, e, is] : m) {
            if (is == prev && !keep.empty())
              keep.back().second = e;
            else
              keep.emplace_back(b, e);
            prev = is;
          }
          break;
        }
        case Behavior::merged_with_previous: {
          bool prev = false;
          for (auto& [b, e, is] : m) {
            if (is && !prev && !keep.empty())
              keep.back().second = e;
            else
              keep.emplace_back(b, e);
            prev = is;
          }
          break;
        }
        case Behavior::merged_with_next: {
          bool prev = false;
          for (auto it = m.rbegin(); it != m.rend(); ++it) {
            auto& [b, e, is] = *it;
            if (is && !prev && !keep.empty())
              keep.back().first = b;
            else
              keep.emplace_back(b, e);
            prev = is;
          }
          std::reverse(keep.begin(), keep.end());
          break;
        }
      }
      for (auto& [b, e] : keep)
        if (e > b) next.push_back(p.substr(b, e - b));
    }
    pieces.swap(next);
  }
}

namespace {

struct Symbol {
  int32_t id;
  int32_t prev, next;
  uint32_t len;
};
struct MergeItem {
  uint32_t rank;
  uint32_t pos;
  int32_t new_id;
  bool operator<(const MergeItem& o) const {  // min-heap on (rank, pos) via std::priority_queue's max-heap
    return rank != o.rank ? rank > o.rank : pos > o.pos;
  }
};

struct BpeCache {
  uint64_t owner = 0;
  std::unordered_map<std::string, std::vector<int32_t>> map;
};
constexpr std::size_t kCacheCapacity = 65536;
constexpr std::size_t kCacheMaxLength = 256;  // tokenizers' MAX_LENGTH: longer pre-tokens are not cached

}  // namespace

void HfBpeTokenizer::Impl::bpe_uncached(std::string_view w, std::vector<int32_t>& out) const {
  if (ignore_merges) {
    auto it = vocab_raw.find(std::string(w));
    if (it != vocab_raw.end()) {
      out.push_back(it->second);
      return;
    }
  }
  thread_local std::vector<Symbol> sym;
  sym.clear();
  // Symbols: one per byte (one byte-level character each); missing ones -> byte fallback / unk / dropped.
  int32_t pending_unk_len = 0;
  const auto add = [&](int32_t id, uint32_t len) {
    const auto k = static_cast<int32_t>(sym.size());
    if (!sym.empty()) sym.back().next = k;
    sym.push_back({id, k - 1, -1, len});
  };
  for (unsigned char b : w) {
    const int32_t id = byte_id[b];
    if (id >= 0) {
      if (pending_unk_len) add(model_unk, static_cast<uint32_t>(pending_unk_len)), pending_unk_len = 0;
      add(id, 1);
      continue;
    }
    if (byte_fallback) {
      const std::string& ch = byte_map().utf8[b];
      bool all = true;
      for (unsigned char c : ch) all = all && fallback_id[c] >= 0;
      if (all) {
        for (unsigned char c : ch) add(fallback_id[c], 1);
        continue;
      }
    }
    if (model_unk >= 0) {
      if (pending_unk_len && !fuse_unk) add(model_unk, static_cast<uint32_t>(pending_unk_len)), pending_unk_len = 0;
      pending_unk_len += 1;
    }
  }
  if (pending_unk_len) add(model_unk, static_cast<uint32_t>(pending_unk_len));
  if (sym.size() > 1) {
    thread_local std::vector<MergeItem> heap_storage;
    heap_storage.clear();
    std::priority_queue<MergeItem, std::vector<MergeItem>> q(std::less<MergeItem>(), std::move(heap_storage));
    const auto lookup = [&](int32_t a, int32_t b) -> const std::pair<uint32_t, int32_t>* {
      auto it = merge_map.find((static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b));
      return it == merge_map.end() ? nullptr : &it->second;
    };
    for (std::size_t i = 0; i + 1 < sym.size(); ++i) {
      if (auto m = lookup(sym[i].id, sym[i + 1].id)) q.push({m->first, static_cast<uint32_t>(i), m->second});
    }
    while (!q.empty()) {
      const MergeItem top = q.top();
      q.pop();
      Symbol& s = sym[top.pos];
      if (s.len == 0 || s.next == -1) continue;
      Symbol& right = sym[s.next];
      auto m = lookup(s.id, right.id);
      if (!m || m->second != top.new_id) continue;  // stale entry
      s.id = top.new_id;
      s.len += right.len;
      const int32_t right_next = right.next;
      right.len = 0;
      s.next = right_next;
      if (right_next >= 0) sym[right_next].prev = static_cast<int32_t>(top.pos);
      if (s.prev >= 0) {
        if (auto pm = lookup(sym[s.prev].id, s.id)) q.push({pm->first, static_cast<uint32_t>(s.prev), pm->second});
      }
      if (s.next >= 0) {
        if (auto nm = lookup(s.id, sym[s.next].id)) q.push({nm->first, top.pos, nm->second});
      }
    }
  }
  for (const Symbol& s : sym)
    if (s.len) out.push_back(s.id);
}

void HfBpeTokenizer::Impl::bpe(std::string_view w, std::vector<int32_t>& out) const {
  if (w.size() >= kCacheMaxLength) return bpe_uncached(w, out);
  thread_local BpeCache cache;
  if (cache.owner != cache_id) {
    cache.map.clear();
    cache.owner = cache_id;
  }
  std::string key(w);
  auto it = cache.map.find(key);
  if (it != cache.map.end()) {
    out.insert(out.end(), it->second.begin(), it->second.end());
    return;
  }
  const std::size_t before = out.size();
  bpe_uncached(w, out);
  if (cache.map.size() < kCacheCapacity)
    cache.map.emplace(std::move(key),
                      std::vector<int32_t>(out.begin() + static_cast<std::ptrdiff_t>(before), out.end()));
}

// Runs added-token splitting and normalization; calls f(added token or nullptr, normalized text) per segment.
template <typename F>
void HfBpeTokenizer::Impl::run(std::string_view text, F&& f) const {
  if (auto bad = find_invalid_utf8(text)) {
    throw DataError(fmt::format("{}: encode: invalid UTF-8 at byte offset {} (byte 0x{:02X}); expected UTF-8 text",
                                what, *bad, static_cast<unsigned char>(text[*bad])));
  }
  std::vector<std::tuple<std::size_t, std::size_t, const HfAddedToken*>> raw_splits, norm_splits;
  if (raw_matcher.empty()) {
    raw_splits.emplace_back(0, text.size(), nullptr);
  } else {
    raw_matcher.split(text, raw_splits);
  }
  for (auto& [b, e, tok] : raw_splits) {
    if (tok) {
      f(tok, std::string_view());
      continue;
    }
    const std::string normalized = normalize(text.substr(b, e - b));
    if (norm_matcher.empty()) {
      f(nullptr, std::string_view(normalized));
      continue;
    }
    norm_matcher.split(normalized, norm_splits);
    for (auto& [nb, ne, ntok] : norm_splits) {
      f(ntok, ntok ? std::string_view() : std::string_view(normalized).substr(nb, ne - nb));
    }
  }
}

std::vector<int32_t> HfBpeTokenizer::encode(std::string_view text) const {
  std::vector<int32_t> out;
  out.reserve(text.size() / 3 + 4);
  std::deque<std::string> arena;
  std::vector<std::string_view> pieces;
  impl_->run(text, [&](const HfAddedToken* tok, std::string_view seg) {
    if (tok) {
      out.push_back(tok->id);
      return;
    }
    impl_->pre_tokenize_segment(seg, arena, pieces);
    for (std::string_view p : pieces) impl_->bpe(p, out);
    arena.clear();
  });
  return out;
}

std::vector<std::string> HfBpeTokenizer::pre_tokenize(std::string_view text) const {
  std::vector<std::string> out;
  std::deque<std::string> arena;
  std::vector<std::string_view> pieces;
  impl_->run(text, [&](const HfAddedToken* tok, std::string_view seg) {
    if (tok) {
      out.push_back(impl_->id_token[tok->id]);
      return;
    }
    impl_->pre_tokenize_segment(seg, arena, pieces);
    for (std::string_view p : pieces) out.emplace_back(p);
    arena.clear();
  });
  return out;
}

static void check_hf_id(int32_t id, int32_t n) {
  if (id < 0 || id >= n) {
    throw DataError(fmt::format("token id {} is outside the hf_bpe tokenizer's vocabulary [0, {})", id, n));
  }
}

std::string HfBpeTokenizer::decode(const std::vector<int32_t>& ids) const {
  std::string bytes;
  for (int32_t id : ids) {
    check_hf_id(id, impl_->vocab_size);
    const uint8_t k = impl_->id_kind[id];
    if (k == 0) throw DataError(fmt::format("token id {} has no token in the hf_bpe vocabulary (a hole)", id));
    if (k == 3) continue;  // skip_special_tokens=True
    bytes += impl_->id_bytes[id];
  }
  return utf8_lossy(bytes);
}

int32_t HfBpeTokenizer::token_to_id(std::string_view token) const {
  for (const auto& t : impl_->added)
    if (impl_->id_token[t.id] == token) return t.id;
  auto it = impl_->vocab.find(std::string(token));
  return it == impl_->vocab.end() ? -1 : it->second;
}

std::string HfBpeTokenizer::token_bytes(int32_t id) const {
  check_hf_id(id, impl_->vocab_size);
  return impl_->id_bytes[id];
}

int32_t HfBpeTokenizer::vocab_size() const { return impl_->vocab_size; }
int32_t HfBpeTokenizer::bos_id() const { return impl_->bos; }
int32_t HfBpeTokenizer::eos_id() const { return impl_->eos; }
int32_t HfBpeTokenizer::unk_id() const { return impl_->unk; }
int32_t HfBpeTokenizer::pad_id() const { return impl_->pad; }

std::string HfBpeTokenizer::piece(int32_t id) const {
  check_hf_id(id, impl_->vocab_size);
  if (!impl_->id_kind[id]) return fmt::format("[PAD{}]", id);
  return impl_->id_token[id];
}

float HfBpeTokenizer::score(int32_t id) const {
  check_hf_id(id, impl_->vocab_size);
  return 0.0f;
}

TokenType HfBpeTokenizer::token_type(int32_t id) const {
  check_hf_id(id, impl_->vocab_size);
  switch (impl_->id_kind[id]) {
    case 0:
      return TokenType::unused;
    case 2:
      return TokenType::user_defined;
    case 3:
      return TokenType::control;
    default:
      return TokenType::normal;
  }
}

std::string HfBpeTokenizer::serialize() const {
  return std::string(R"({"kind":"hf_bpe","version":1,"tokenizer_config":)") + impl_->tokenizer_config.dump() +
         R"(,"config":)" + impl_->config.dump() + R"(,"tokenizer":)" + impl_->tokenizer_text + "}";
}

const std::vector<std::string>& HfBpeTokenizer::merges() const { return impl_->merges; }
const std::vector<HfAddedToken>& HfBpeTokenizer::added_tokens() const { return impl_->added; }

std::string HfBpeTokenizer::llama_cpp_pre() const {
  const auto& steps = impl_->steps;
  // Plain GPT-2: ByteLevel with its own regex and nothing else.
  if (steps.size() == 1 && steps[0].use_regex && !steps[0].add_prefix_space) return "gpt-2";
  if (steps.size() == 2 && !steps[0].byte_level && !steps[0].invert && steps[0].behavior == Behavior::isolated &&
      !steps[1].use_regex && !steps[1].add_prefix_space) {
    for (const auto& k : kKnownPre)
      if (steps[0].regex_source == k.regex) return k.name;
  }
  return "";
}

// ---------------------------------------------------------------------------------------------------------
// Loading
// ---------------------------------------------------------------------------------------------------------
namespace {

std::string read_if_exists(const fs::path& p) {
  std::error_code ec;
  return fs::is_regular_file(p, ec) ? read_file_bytes(p.string()) : std::string();
}

constexpr const char* kBlobPrefix = R"({"kind":"hf_bpe")";

std::unique_ptr<Tokenizer> hf_from_blob(const std::string& bytes, const std::string& what) {
  const json j = parse_json(bytes, what);
  if (!j.is_object() || !j.contains("kind") || j["kind"] != kHfBpeKind || !j.contains("version") || j["version"] != 1 ||
      !j.contains("tokenizer"))
    fail(what, "kind",
         "not an hf_bpe tokenizer blob; expected {\"kind\":\"hf_bpe\",\"version\":1,...,\"tokenizer\":{...}}");
  const json& tc = j.contains("tokenizer_config") ? j["tokenizer_config"] : json(nullptr);
  const json& c = j.contains("config") ? j["config"] : json(nullptr);
  return HfBpeTokenizer::from_json(j["tokenizer"].dump(), tc.is_null() ? "" : tc.dump(), c.is_null() ? "" : c.dump(),
                                   what);
}

// Whether a tokenizer.json holds a byte-level BPE this code supports (cheap structural check, no full load).
bool is_byte_level_json(const json& tj) {
  if (!tj.is_object() || !tj.contains("pre_tokenizer")) return false;
  const json& p = tj["pre_tokenizer"];
  const auto type_is = [](const json& x, const char* t) {
    return x.is_object() && x.contains("type") && x["type"] == t;
  };
  const auto is_bl = [&](const json& x) { return type_is(x, "ByteLevel"); };
  if (is_bl(p)) return true;
  if (type_is(p, "Sequence") && p.contains("pretokenizers") && p["pretokenizers"].is_array())
    for (const auto& x : p["pretokenizers"])
      if (is_bl(x)) return true;
  return false;
}

}  // namespace

std::vector<std::string> hf_tokenizer_files(const std::string& path) {
  std::error_code ec;
  const fs::path p(path);
  if (fs::is_directory(p, ec)) {
    const fs::path tj = p / "tokenizer.json", tm = p / "tokenizer.model";
    bool use_json = fs::is_regular_file(tj, ec);
    if (use_json && fs::is_regular_file(tm, ec)) {
      // Both: the JSON wins only when it is byte-level BPE (else it is the SentencePiece model converted).
      const std::string text = read_file_bytes(tj.string());
      json j = json::parse(text, nullptr, false);
      use_json = !j.is_discarded() && is_byte_level_json(j);
    }
    if (use_json) {
      std::vector<std::string> out{tj.string()};
      for (const char* f : {"tokenizer_config.json", "config.json"})
        if (fs::is_regular_file(p / f, ec)) out.push_back((p / f).string());
      return out;
    }
    if (fs::is_regular_file(tm, ec)) return {tm.string()};
    throw DataError(fmt::format("{}: no tokenizer.json or tokenizer.model in this directory", path));
  }
  if (!fs::exists(p, ec)) throw DataError(fmt::format("tokenizer {} does not exist", path));
  if (p.filename() == "tokenizer.json") {
    std::vector<std::string> out{p.string()};
    for (const char* f : {"tokenizer_config.json", "config.json"})
      if (fs::is_regular_file(p.parent_path() / f, ec)) out.push_back((p.parent_path() / f).string());
    return out;
  }
  return {p.string()};
}

std::unique_ptr<Tokenizer> load_hf_tokenizer(const std::string& path) {
  const auto files = hf_tokenizer_files(path);
  const fs::path first(files[0]);
  if (first.filename() != "tokenizer.json") {
    // tokenizer.model (SentencePiece, or what save_tokenizer wrote under that name) or any other tokenizer file:
    // the kind is detected from the bytes.
    return load_tokenizer(first.string());
  }
  const std::string text = read_file_bytes(first.string());
  if (text.compare(0, std::strlen(kBlobPrefix), kBlobPrefix) == 0) return hf_from_blob(text, first.string());
  const fs::path dir = first.parent_path();
  const std::string tc = read_if_exists(dir / "tokenizer_config.json");
  const std::string c = read_if_exists(dir / "config.json");
  return HfBpeTokenizer::from_json(text, tc, c, first.string());
}

// Hook for tokenizer.cpp's tokenizer_from_bytes / load_tokenizer.
std::unique_ptr<Tokenizer> hf_bpe_from_bytes(const std::string& bytes, const std::string& what) {
  if (bytes.compare(0, std::strlen(kBlobPrefix), kBlobPrefix) == 0) return hf_from_blob(bytes, what);
  return HfBpeTokenizer::from_json(bytes, "", "", what);  // a bare tokenizer.json
}

// ---------------------------------------------------------------------------------------------------------
// GGUF vocabulary, comparison
// ---------------------------------------------------------------------------------------------------------

GgufVocab gguf_vocab(const Tokenizer& tok) {
  GgufVocab v;
  const int32_t n = tok.vocab_size();
  v.tokens.reserve(n);
  v.token_types.reserve(n);
  const auto* hf = dynamic_cast<const HfBpeTokenizer*>(&tok);
  for (int32_t id = 0; id < n; ++id) {
    v.tokens.push_back(tok.piece(id));
    v.token_types.push_back(static_cast<int32_t>(tok.token_type(id)));
  }
  if (hf) {
    v.model = "gpt2";
    v.pre = hf->llama_cpp_pre();
    v.merges = hf->merges();
    v.add_bos = false;
  } else {
    v.model = "llama";
    v.scores.reserve(n);
    for (int32_t id = 0; id < n; ++id) v.scores.push_back(tok.score(id));
    v.add_bos = true;
  }
  v.bos_id = tok.bos_id();
  v.eos_id = tok.eos_id();
  v.unk_id = tok.unk_id();
  v.pad_id = tok.pad_id();
  if (v.bos_id < 0) v.add_bos = false;
  return v;
}

std::string compare_vocabularies(const Tokenizer& a, const Tokenizer& b) {
  std::vector<std::string> diffs;
  if (a.vocab_size() != b.vocab_size())
    diffs.push_back(fmt::format("vocab size {} vs {}", a.vocab_size(), b.vocab_size()));
  const int32_t n = std::min(a.vocab_size(), b.vocab_size());
  int listed = 0, more = 0;
  for (int32_t id = 0; id < n; ++id) {
    const std::string pa = a.piece(id), pb = b.piece(id);
    const TokenType ta = a.token_type(id), tb = b.token_type(id);
    if (pa == pb && ta == tb) continue;
    if (listed < 3) {
      if (pa != pb)
        diffs.push_back(fmt::format("id {}: '{}' vs '{}'", id, pa, pb));
      else
        diffs.push_back(fmt::format("id {} '{}': type {} vs {}", id, pa, static_cast<int>(ta), static_cast<int>(tb)));
      ++listed;
    } else {
      ++more;
    }
  }
  if (more) diffs.push_back(fmt::format("{} more ids differ", more));
  const auto cmp = [&](const char* name, int32_t x, int32_t y) {
    if (x != y) diffs.push_back(fmt::format("{} {} vs {}", name, x, y));
  };
  cmp("bos", a.bos_id(), b.bos_id());
  cmp("eos", a.eos_id(), b.eos_id());
  cmp("unk", a.unk_id(), b.unk_id());
  cmp("pad", a.pad_id(), b.pad_id());
  std::string out;
  for (const auto& d : diffs) out += (out.empty() ? "" : "; ") + d;
  return out;
}

namespace {
void write_file_atomic(const std::filesystem::path& path, const std::string& bytes) {
  const std::string tmp = path.string() + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    out.close();
    if (!out) throw DataError(fmt::format("cannot write {}", tmp));
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) throw DataError(fmt::format("cannot rename {} to {}: {}", tmp, path.string(), ec.message()));
}
}  // namespace

std::vector<std::string> save_hf_tokenizer_files(const Tokenizer& tokenizer, const std::string& dir) {
  const std::filesystem::path d(dir);
  if (tokenizer.kind() == "hf_bpe") {
    const nlohmann::json blob = nlohmann::json::parse(tokenizer.serialize());
    write_file_atomic(d / "tokenizer.json", blob.at("tokenizer").dump(2) + "\n");
    nlohmann::json tc = blob.value("tokenizer_config", nlohmann::json(nullptr));
    if (!tc.is_object()) tc = nlohmann::json{{"tokenizer_class", "PreTrainedTokenizerFast"}};
    write_file_atomic(d / "tokenizer_config.json", tc.dump(2) + "\n");
    return {"tokenizer.json", "tokenizer_config.json"};
  }
  if (tokenizer.kind() == "sentencepiece") {
    write_file_atomic(d / "tokenizer.model", tokenizer.serialize());
    const nlohmann::json tc{{"tokenizer_class", "LlamaTokenizer"}, {"bos_token", "<s>"}, {"eos_token", "</s>"},
                            {"unk_token", "<unk>"}, {"add_bos_token", true}, {"add_eos_token", false},
                            {"legacy", true}, {"model_max_length", 1000000}};
    write_file_atomic(d / "tokenizer_config.json", tc.dump(2) + "\n");
    return {"tokenizer.model", "tokenizer_config.json"};
  }
  throw DataError("save_hf_tokenizer_files: a '" + tokenizer.kind() +
                  "' tokenizer has no Hugging Face equivalent (use SentencePiece or a tokenizer.json tokenizer)");
}

}  // namespace bitforge::data
