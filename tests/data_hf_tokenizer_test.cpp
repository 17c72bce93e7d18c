// Hugging Face tokenizers: bitforge's HfBpeTokenizer (and its SentencePiece tokenizer) against the Rust
// `tokenizers` library. tests/fixtures/tokenizers/make_tokenizers.py trains the tokenizers on the default corpus and
// writes HF's ids and decoded text for every corpus document and a set of edge texts (cached in the build directory,
// keyed on the script's hash); every expected value here comes from that reference.
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <random>
#include <set>
#include <thread>

#include "data/corpus.h"
#include "data/hf_tokenizer.h"
#include "data/prepare.h"
#include "data/shard.h"
#include "data/tokenizer.h"

namespace fs = std::filesystem;
using json = nlohmann::json;
using namespace bitforge::data;

namespace {

std::string env(const char* name) {
  const char* v = std::getenv(name);
  return v ? v : "";
}

struct Fixtures {
  std::string dir;
  json ref;
};

const Fixtures& fixtures() {
  static const Fixtures f = [] {
    Fixtures out;
    const std::string src = env("BITFORGE_SOURCE_DIR"), bin = env("BITFORGE_BINARY_DIR"), py = env("BITFORGE_PYTHON");
    if (src.empty() || bin.empty() || py.empty()) {
      ADD_FAILURE() << "BITFORGE_SOURCE_DIR / BITFORGE_BINARY_DIR / BITFORGE_PYTHON not set (run through ctest)";
      return out;
    }
    out.dir = bin + "/tokenizer_fixtures";
    const std::string cmd =
        "\"" + py + "\" \"" + src + "/tests/fixtures/tokenizers/make_tokenizers.py\" \"" + out.dir + "\"";
    if (std::system(cmd.c_str()) != 0) {
      ADD_FAILURE() << "fixture script failed: " << cmd;
      return out;
    }
    out.ref = json::parse(read_file_bytes(out.dir + "/reference.json"));
    return out;
  }();
  return f;
}

const json& ref_of(const std::string& name) { return fixtures().ref["tokenizers"][name]; }
std::string fixture_path(const std::string& rel) { return fixtures().dir + "/" + rel; }

std::string hex_bytes(const std::string& hex) {
  std::string out;
  for (std::size_t i = 0; i + 1 < hex.size(); i += 2)
    out.push_back(static_cast<char>(std::stoi(hex.substr(i, 2), nullptr, 16)));
  return out;
}

std::vector<int32_t> ids_of(const json& j) { return j.get<std::vector<int32_t>>(); }

// Compares encode/decode of `tok` with the reference entry: every document listed and every edge text.
// Returns the number of mismatching texts (each reported, the first few in detail).
int compare_with_reference(const Tokenizer& tok, const json& r, bool check_edges = true) {
  int bad = 0;
  const std::string corpus = fixtures().ref["corpus"].get<std::string>();
  for (const auto& d : r["documents"]) {
    const std::string text = read_file_bytes(corpus + "/" + d["file"].get<std::string>());
    const auto expected = ids_of(d["ids"]);
    const auto got = tok.encode(text);
    if (got != expected) {
      std::size_t i = 0;
      while (i < got.size() && i < expected.size() && got[i] == expected[i]) ++i;
      if (++bad <= 5)
        ADD_FAILURE() << d["file"] << ": ids differ at token " << i << " of " << expected.size() << " (got "
                      << (i < got.size() ? got[i] : -1) << ", expected " << (i < expected.size() ? expected[i] : -1)
                      << ")";
      continue;
    }
    const std::string want = d.contains("decoded") ? d["decoded"].get<std::string>() : text;
    if (tok.decode(expected) != want) {
      if (++bad <= 5) ADD_FAILURE() << d["file"] << ": decoded text differs";
    }
  }
  if (!check_edges) return bad;
  for (const auto& e : r["edge"]) {
    const std::string text = e["text"].get<std::string>();
    const auto expected = ids_of(e["ids"]);
    const std::string shown = text.size() > 80 ? e["text"].dump().substr(0, 80) + "..." : e["text"].dump();
    const auto got = tok.encode(text);
    EXPECT_TRUE(got == expected) << "edge text " << shown << ": " << got.size() << " ids vs " << expected.size();
    EXPECT_TRUE(tok.decode(expected) == e["decoded"].get<std::string>()) << "decode of edge text " << shown;
    if (got != expected) ++bad;
  }
  return bad;
}

struct TempDir {
  fs::path path;
  TempDir() {
    std::random_device rd;
    path = fs::temp_directory_path() / ("bitforge_hf_tok_" + std::to_string(rd()));
    fs::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

void write_text(const fs::path& p, const std::string& text) {
  std::ofstream f(p, std::ios::binary);
  f << text;
}

// Expects load of the mutated qwen tokenizer.json to throw a DataError whose message contains every `parts`.
void expect_load_error(const std::function<void(json&)>& mutate, const std::vector<std::string>& parts) {
  json j = json::parse(read_file_bytes(fixture_path("qwen/tokenizer.json")));
  mutate(j);
  TempDir d;
  write_text(d.path / "tokenizer.json", j.dump());
  try {
    load_tokenizer((d.path / "tokenizer.json").string());
    ADD_FAILURE() << "no DataError for " << parts.front();
  } catch (const DataError& e) {
    for (const auto& p : parts) EXPECT_NE(std::string(e.what()).find(p), std::string::npos) << e.what();
  }
}

}  // namespace

// ---------------------------------------------------------------------------------------------------------
// Parts
// ---------------------------------------------------------------------------------------------------------

TEST(DataHfTokenizer, ByteToUnicodeMap) {
  const auto& table = byte_to_unicode_table();
  ASSERT_EQ(table.size(), 256u);
  // The 256 characters are the tokenizers ByteLevel alphabet: the first 256 pieces of the tiny fixture's vocab
  // (sorted alphabet, written by the script from pre_tokenizers.ByteLevel.alphabet()).
  const auto& tiny_vocab = ref_of("tiny")["vocab"];
  std::set<std::string> alphabet, mine(table.begin(), table.end());
  for (int i = 0; i < 256; ++i) alphabet.insert(tiny_vocab[i].get<std::string>());
  EXPECT_EQ(mine, alphabet);
  // GPT-2's rule: printable ASCII stays itself; a bijection; inverse round trip on all bytes.
  EXPECT_EQ(table['A'], "A");
  std::string all;
  for (int b = 0; b < 256; ++b) all.push_back(static_cast<char>(b));
  std::string back;
  ASSERT_TRUE(unicode_to_bytes(bytes_to_unicode(all), &back));
  EXPECT_EQ(back, all);
  EXPECT_FALSE(unicode_to_bytes("\xE2\x82\xAC", &back));  // '€' is not in the alphabet
  // The vocab of the trained tokenizer spells bytes the same way: its piece for "\n" is the table's.
  const auto tok = load_tokenizer(fixture_path("qwen"));
  const auto nl = tok->encode("\n");
  ASSERT_EQ(nl.size(), 1u);
  EXPECT_EQ(tok->piece(nl[0]), table['\n']);
}

TEST(DataHfTokenizer, MergeRanksDecide) {
  // Two tokenizers with the same vocabulary and the merges in different orders; HF's ids for each.
  for (const char* name : {"tiny", "tiny_swapped"}) {
    const auto tok = load_tokenizer(fixture_path(std::string(name) + "/tokenizer.json"));
    EXPECT_EQ(tok->kind(), "hf_bpe");
    EXPECT_EQ(compare_with_reference(*tok, ref_of(name)), 0) << name;
  }
  // The orders really make a difference on these texts (else the test could not fail).
  const auto& a = ref_of("tiny")["edge"];
  const auto& b = ref_of("tiny_swapped")["edge"];
  int differ = 0;
  for (std::size_t i = 0; i < a.size(); ++i) differ += a[i]["ids"] != b[i]["ids"];
  EXPECT_GT(differ, 0);
  // Both merge spellings load: "a b" strings (tiny) and ["a", "b"] pairs (tiny_swapped); merges() gives "a b".
  const auto swapped = load_hf_tokenizer(fixture_path("tiny_swapped/tokenizer.json"));
  const auto* hf = dynamic_cast<const HfBpeTokenizer*>(swapped.get());
  ASSERT_NE(hf, nullptr);
  ASSERT_FALSE(hf->merges().empty());
  EXPECT_EQ(hf->merges()[0], "a b");
}

TEST(DataHfTokenizer, PreTokenizerMatchesReference) {
  const auto tok = load_hf_tokenizer(fixture_path("qwen"));
  const auto* hf = dynamic_cast<const HfBpeTokenizer*>(tok.get());
  ASSERT_NE(hf, nullptr);
  for (const auto& c : ref_of("qwen")["pre_tokens"]) {
    std::vector<std::string> mine;
    for (const auto& p : hf->pre_tokenize(c["text"].get<std::string>())) mine.push_back(bytes_to_unicode(p));
    EXPECT_EQ(mine, c["pieces"].get<std::vector<std::string>>()) << c["text"].dump();
  }
}

TEST(DataHfTokenizer, SpecialTokensSplitBeforePreTokenization) {
  const auto tok = load_hf_tokenizer(fixture_path("qwen"));
  const auto* hf = dynamic_cast<const HfBpeTokenizer*>(tok.get());
  ASSERT_NE(hf, nullptr);
  const auto pieces = hf->pre_tokenize("a<|im_start|>user\n<|endoftext|><|endoftext|>x");
  // The special tokens come out whole, between the pre-tokens of the text around them.
  std::vector<std::string> specials;
  for (const auto& p : pieces)
    if (p.rfind("<|", 0) == 0) specials.push_back(p);
  EXPECT_EQ(specials, (std::vector<std::string>{"<|im_start|>", "<|endoftext|>", "<|endoftext|>"}));
  EXPECT_EQ(hf->token_to_id("no such token"), -1);
  EXPECT_EQ(hf->token_to_id(hf->piece(42)), 42);
  // Their ids are the ones transformers reports for the added tokens.
  for (const auto& a : ref_of("qwen")["added"]) {
    EXPECT_EQ(hf->token_to_id(a["content"].get<std::string>()), a["id"].get<int32_t>());
    const auto ids = tok->encode(a["content"].get<std::string>());
    ASSERT_EQ(ids.size(), 1u) << a["content"];
    EXPECT_EQ(ids[0], a["id"].get<int32_t>());
    EXPECT_EQ(tok->token_type(ids[0]), a["special"].get<bool>() ? TokenType::control : TokenType::user_defined);
  }
}

TEST(DataHfTokenizer, MalformedTokenizerJsonNamesTheKey) {
  expect_load_error([](json& j) { j["model"]["type"] = "WordPiece"; }, {"tokenizer.json", "model.type", "WordPiece"});
  expect_load_error([](json& j) { j["pre_tokenizer"] = {{"type", "Metaspace"}}; }, {"pre_tokenizer.type", "Metaspace"});
  expect_load_error([](json& j) { j["normalizer"] = {{"type", "Lowercase"}}; }, {"normalizer.type", "Lowercase"});
  expect_load_error([](json& j) { j["model"]["merges"][0] = "a b c"; }, {"model.merges[0]"});
  expect_load_error(
      [](json& j) {
        j["model"]["merges"][1] = json::array({"zzz-not-a-token", "b"});
      },
      {"model.merges[1]", "zzz-not-a-token"});
  expect_load_error([](json& j) { j["added_tokens"] = 3; }, {"added_tokens"});
  expect_load_error([](json& j) { j["model"].erase("vocab"); }, {"model.vocab", "missing"});
  expect_load_error(
      [](json& j) {
        j["pre_tokenizer"]["pretokenizers"][0]["pattern"] = {{"Regex", "(unclosed"}};
      },
      {"pre_tokenizer.pretokenizers[0].pattern", "PCRE2"});
  expect_load_error([](json& j) { j["decoder"] = {{"type", "WordPiece"}}; }, {"decoder.type"});
  // Truncated JSON: the parse offset is named.
  TempDir d;
  const std::string text = read_file_bytes(fixture_path("qwen/tokenizer.json"));
  write_text(d.path / "tokenizer.json", text.substr(0, 1000));
  try {
    load_tokenizer((d.path / "tokenizer.json").string());
    ADD_FAILURE() << "no DataError for truncated JSON";
  } catch (const DataError& e) {
    EXPECT_NE(std::string(e.what()).find("byte offset"), std::string::npos) << e.what();
  }
  // A directory with no tokenizer.
  EXPECT_THROW(load_tokenizer(d.path.string() + "/missing_dir/tokenizer.json"), DataError);
  fs::remove(d.path / "tokenizer.json");
  EXPECT_THROW(load_tokenizer(d.path.string()), DataError);
}

TEST(DataHfTokenizer, WrongJsonTypesAnywhereAreDataErrors) {
  // Every listed value replaced by every JSON type: loading either works or throws DataError (never another
  // exception, never a crash).
  json orig = json::parse(read_file_bytes(fixture_path("tiny_swapped/tokenizer.json")));  // small: fast to load
  orig["normalizer"] = {{"type", "NFC"}};
  orig["added_tokens"] = json::array({json{{"id", 400},
                                           {"content", "<x>"},
                                           {"special", true},
                                           {"lstrip", false},
                                           {"rstrip", false},
                                           {"normalized", false},
                                           {"single_word", false}}});
  ASSERT_NO_THROW(HfBpeTokenizer::from_json(orig.dump(), "", "", "fuzz"));
  const std::vector<std::string> paths = {"/model",
                                          "/model/type",
                                          "/model/vocab",
                                          "/model/merges",
                                          "/model/merges/0",
                                          "/model/merges/0/0",
                                          "/model/ignore_merges",
                                          "/model/unk_token",
                                          "/model/dropout",
                                          "/model/byte_fallback",
                                          "/model/fuse_unk",
                                          "/model/continuing_subword_prefix",
                                          "/added_tokens",
                                          "/added_tokens/0",
                                          "/added_tokens/0/id",
                                          "/added_tokens/0/content",
                                          "/added_tokens/0/special",
                                          "/added_tokens/0/lstrip",
                                          "/normalizer",
                                          "/normalizer/type",
                                          "/pre_tokenizer",
                                          "/pre_tokenizer/type",
                                          "/pre_tokenizer/use_regex",
                                          "/pre_tokenizer/add_prefix_space",
                                          "/decoder",
                                          "/decoder/type",
                                          "/model/vocab/a"};
  const std::vector<json> values = {
      nullptr, 1, -7, 1.5, "x", "", true, json::array(), json::array({1, 2}), json::object(), json{{"type", 3}}};
  int loaded = 0, rejected = 0;
  for (const auto& path : paths) {
    for (const auto& v : values) {
      json j = orig;
      j[json::json_pointer(path)] = v;
      try {
        HfBpeTokenizer::from_json(j.dump(), "", "", "fuzz");
        ++loaded;
      } catch (const DataError&) {
        ++rejected;
      } catch (const std::exception& e) {
        ADD_FAILURE() << path << " = " << v.dump() << ": not a DataError: " << e.what();
      }
    }
  }
  EXPECT_GT(rejected, 0);
  EXPECT_GT(loaded, 0);
  // Blobs with wrong types.
  for (const char* blob : {R"({"kind":"hf_bpe","version":"1","tokenizer":{}})", R"({"kind":"hf_bpe","version":1})",
                           R"({"kind":"hf_bpe","version":1,"tokenizer":[]})"}) {
    EXPECT_THROW(tokenizer_from_bytes("hf_bpe", blob), DataError) << blob;
  }
}

// ---------------------------------------------------------------------------------------------------------
// Whole corpus + edge texts against HF tokenizers
// ---------------------------------------------------------------------------------------------------------

TEST(DataHfTokenizer, QwenStyleEqualsHfOnWholeCorpus) {
  const auto tok = load_tokenizer(fixture_path("qwen"));  // directory: tokenizer.json + tokenizer_config.json
  EXPECT_EQ(tok->kind(), "hf_bpe");
  const json& r = ref_of("qwen");
  ASSERT_GT(r["documents"].size(), 400u);
  EXPECT_EQ(compare_with_reference(*tok, r), 0);
  // Vocabulary: every id's piece is HF's id_to_token.
  ASSERT_EQ(tok->vocab_size(), static_cast<int32_t>(r["vocab"].size()));
  for (int32_t id = 0; id < tok->vocab_size(); ++id) ASSERT_EQ(tok->piece(id), r["vocab"][id].get<std::string>()) << id;
  // Special tokens as transformers reports them (Qwen: no bos, although config.json has bos_token_id).
  const auto want = [&](const char* k) { return r["special"][k].is_null() ? -1 : r["special"][k].get<int32_t>(); };
  EXPECT_EQ(tok->bos_id(), want("bos"));
  EXPECT_EQ(tok->eos_id(), want("eos"));
  EXPECT_EQ(tok->pad_id(), want("pad"));
  EXPECT_EQ(tok->unk_id(), want("unk"));
  EXPECT_EQ(r["special"], r["special_reloaded"]);
}

TEST(DataHfTokenizer, DecodeReplacesInvalidUtf8LikeHf) {
  const auto tok = load_tokenizer(fixture_path("qwen"));
  const json& r = ref_of("qwen");
  ASSERT_FALSE(r["decode_cases"].empty());
  for (const auto& c : r["decode_cases"]) {
    EXPECT_EQ(tok->decode(ids_of(c["ids"])), c["decoded"].get<std::string>()) << c["ids"].dump();
  }
  EXPECT_THROW(tok->decode({tok->vocab_size()}), DataError);
  EXPECT_THROW(tok->decode({-1}), DataError);
}

TEST(DataHfTokenizer, EncodeRejectsInvalidUtf8NamingTheOffset) {
  const auto tok = load_tokenizer(fixture_path("qwen"));
  const json& inv = ref_of("qwen")["invalid_utf8"];
  const std::string bad = hex_bytes(inv["hex"].get<std::string>());
  try {
    tok->encode(bad);
    ADD_FAILURE() << "no DataError for invalid UTF-8";
  } catch (const DataError& e) {
    // The offset Python's UnicodeDecodeError reports.
    EXPECT_NE(std::string(e.what()).find("byte offset " + std::to_string(inv["offset"].get<int>())), std::string::npos)
        << e.what();
  }
}

TEST(DataHfTokenizer, Llama3RegexIgnoreMergesStringMergesEqualHf) {
  const auto tok = load_tokenizer(fixture_path("llama3/tokenizer.json"));
  EXPECT_EQ(compare_with_reference(*tok, ref_of("llama3")), 0);
  EXPECT_EQ(tok->bos_id(), -1);  // no tokenizer_config.json, no config.json
}

TEST(DataHfTokenizer, Gpt2ByteLevelNfkcAddedTokenFlagsEqualHf) {
  const auto tok = load_tokenizer(fixture_path("gpt2x/tokenizer.json"));
  EXPECT_EQ(compare_with_reference(*tok, ref_of("gpt2x")), 0);
}

TEST(DataHfTokenizer, AddPrefixSpaceAndStringSplitEqualHf) {
  const auto tok = load_tokenizer(fixture_path("gpt2p/tokenizer.json"));
  EXPECT_EQ(compare_with_reference(*tok, ref_of("gpt2p")), 0);
  EXPECT_EQ(dynamic_cast<const HfBpeTokenizer&>(*tok).llama_cpp_pre(), "");  // no llama.cpp pre type for this
}

TEST(DataHfTokenizer, SentencePieceEqualsHfConvertedLlamaTokenizer) {
  // bitforge's SentencePiece tokenizer (libsentencepiece on tokenizer.model) against HF tokenizers running the
  // same model as converted by transformers' LlamaTokenizerFast (Metaspace prepend_scheme "first", BPE with
  // byte_fallback). Convention: our encode() == HF encode(text, add_special_tokens=False); decode skips control
  // ids like HF's skip_special_tokens=True. Two documented differences, where bitforge keeps libsentencepiece's
  // (and llama.cpp's) answer: (1) HF splits the special-token strings "<unk>", "<s>", "</s>" out of the text;
  // libsentencepiece encodes them as ordinary text; (2) for a text that starts with a space, HF's Metaspace
  // (prepend_scheme "first") adds no dummy "▁" prefix, libsentencepiece (add_dummy_prefix) always does. Those edge
  // texts must give libsentencepiece's ids (recorded by the script with the Python sentencepiece library).
  const auto tok = load_tokenizer(fixture_path("spm"));
  ASSERT_EQ(tok->kind(), "sentencepiece");
  const json& r = ref_of("spm");
  EXPECT_EQ(compare_with_reference(*tok, r, /*check_edges=*/false), 0);
  for (const auto& e : r["edge"]) {
    const std::string text = e["text"].get<std::string>();
    const bool has_special = text.find("<s>") != std::string::npos || text.find("</s>") != std::string::npos ||
                             text.find("<unk>") != std::string::npos;
    if (has_special || (!text.empty() && text[0] == ' ')) {
      EXPECT_EQ(tok->encode(text), ids_of(e["sentencepiece_ids"])) << e["text"].dump();
      continue;
    }
    EXPECT_EQ(tok->encode(text), ids_of(e["ids"])) << e["text"].dump();
    EXPECT_EQ(tok->decode(ids_of(e["ids"])), e["decoded"].get<std::string>()) << e["text"].dump();
  }
  const auto want = [&](const char* k) { return r["special"][k].is_null() ? -1 : r["special"][k].get<int32_t>(); };
  EXPECT_EQ(tok->bos_id(), want("bos"));
  EXPECT_EQ(tok->eos_id(), want("eos"));
  EXPECT_EQ(tok->unk_id(), want("unk"));
  EXPECT_EQ(tok->pad_id(), want("pad"));
  ASSERT_EQ(tok->vocab_size(), static_cast<int32_t>(r["vocab"].size()));
  for (int32_t id = 0; id < tok->vocab_size(); ++id) ASSERT_EQ(tok->piece(id), r["vocab"][id].get<std::string>()) << id;
}

TEST(DataHfTokenizer, SentencePieceEqualsHfLegacyLlamaTokenizerJson) {
  // The tokenizer.json Llama-2 / Mistral repositories ship (normalizer Prepend("▁") + Replace(" ", "▁")): equal to
  // bitforge's SentencePiece on every text, leading spaces included, except special-token strings in the text.
  const auto tok = load_tokenizer(fixture_path("spm/tokenizer.model"));
  const json& r = ref_of("spm_legacy");
  EXPECT_EQ(compare_with_reference(*tok, r, /*check_edges=*/false), 0);
  int compared = 0;
  for (const auto& e : r["edge"]) {
    const std::string text = e["text"].get<std::string>();
    if (text.find("<s>") != std::string::npos || text.find("</s>") != std::string::npos ||
        text.find("<unk>") != std::string::npos)
      continue;
    ++compared;
    EXPECT_EQ(tok->encode(text), ids_of(e["ids"])) << e["text"].dump();
    EXPECT_EQ(tok->decode(ids_of(e["ids"])), e["decoded"].get<std::string>()) << e["text"].dump();
  }
  EXPECT_GT(compared, 50);
}

// ---------------------------------------------------------------------------------------------------------
// Serialisation, loading, vocabulary comparison, GGUF vocabulary
// ---------------------------------------------------------------------------------------------------------

TEST(DataHfTokenizer, SerializeRoundTripAndKindDetection) {
  const auto tok = load_tokenizer(fixture_path("qwen"));
  const std::string blob = tok->serialize();
  EXPECT_EQ(detect_tokenizer_kind(blob), "hf_bpe");
  EXPECT_EQ(detect_tokenizer_kind(read_file_bytes(fixture_path("qwen/tokenizer.json"))), "hf_bpe");
  EXPECT_EQ(detect_tokenizer_kind(ByteTokenizer().serialize()), "byte");
  EXPECT_EQ(detect_tokenizer_kind(read_file_bytes(fixture_path("spm/tokenizer.model"))), "sentencepiece");
  const auto back = tokenizer_from_bytes("hf_bpe", blob);
  EXPECT_EQ(back->serialize(), blob);
  EXPECT_EQ(tokenizer_fingerprint(*back), tokenizer_fingerprint(*tok));
  EXPECT_EQ(compare_vocabularies(*tok, *back), "");
  EXPECT_EQ(back->bos_id(), tok->bos_id());  // tokenizer_config travels in the blob
  EXPECT_EQ(back->eos_id(), tok->eos_id());
  for (const auto& e : ref_of("qwen")["edge"]) EXPECT_EQ(back->encode(e["text"].get<std::string>()), ids_of(e["ids"]));
  // save_tokenizer / load_tokenizer under any file name.
  TempDir d;
  save_tokenizer(*tok, (d.path / "tokenizer.bin").string());
  const auto loaded = load_tokenizer((d.path / "tokenizer.bin").string());
  EXPECT_EQ(loaded->kind(), "hf_bpe");
  EXPECT_EQ(loaded->serialize(), blob);
  // A bare tokenizer.json through tokenizer_from_bytes.
  const auto bare = tokenizer_from_bytes("hf_bpe", read_file_bytes(fixture_path("qwen/tokenizer.json")));
  EXPECT_EQ(bare->encode("hello <|im_end|>"), tok->encode("hello <|im_end|>"));
  EXPECT_THROW(tokenizer_from_bytes("hf_bpe", R"({"kind":"hf_bpe","version":2})"), DataError);
}

TEST(DataHfTokenizer, ThreadsEncodeTheSame) {
  const auto tok = load_tokenizer(fixture_path("qwen"));
  const json& docs = ref_of("qwen")["documents"];
  const std::string corpus = fixtures().ref["corpus"].get<std::string>();
  std::vector<int> bad(2, 0);
  std::vector<std::thread> th;
  for (int t = 0; t < 2; ++t) {
    th.emplace_back([&, t] {
      for (std::size_t i = t; i < 40; i += 2) {
        const std::string text = read_file_bytes(corpus + "/" + docs[i]["file"].get<std::string>());
        bad[t] += tok->encode(text) != ids_of(docs[i]["ids"]);
      }
    });
  }
  for (auto& x : th) x.join();
  EXPECT_EQ(bad[0] + bad[1], 0);
}

TEST(DataHfTokenizer, CompareVocabularies) {
  const auto qwen = load_tokenizer(fixture_path("qwen"));
  const auto qwen_again = load_tokenizer(fixture_path("qwen/tokenizer.json"));
  const auto llama3 = load_tokenizer(fixture_path("llama3/tokenizer.json"));
  const auto spm = load_tokenizer(fixture_path("spm"));
  EXPECT_EQ(compare_vocabularies(*qwen, *qwen_again), "");
  const std::string size_msg = compare_vocabularies(*qwen, *spm);
  EXPECT_NE(
      size_msg.find("vocab size " + std::to_string(qwen->vocab_size()) + " vs " + std::to_string(spm->vocab_size())),
      std::string::npos)
      << size_msg;
  EXPECT_NE(size_msg.find("id 0: '" + qwen->piece(0) + "' vs '" + spm->piece(0) + "'"), std::string::npos) << size_msg;
  // Same vocabulary, no tokenizer_config.json: only the special ids differ.
  const std::string special_msg = compare_vocabularies(*qwen, *llama3);
  EXPECT_EQ(special_msg,
            "eos " + std::to_string(qwen->eos_id()) + " vs -1; pad " + std::to_string(qwen->pad_id()) + " vs -1");
  // One renamed token is found and named.
  json j = json::parse(read_file_bytes(fixture_path("qwen/tokenizer.json")));
  const std::string victim = qwen->piece(300);
  j["model"]["vocab"].erase(victim);
  j["model"]["vocab"]["RENAMED"] = 300;
  // Drop the merges that produced or used the renamed token.
  json merges = json::array();
  for (const auto& m : j["model"]["merges"]) {
    const std::string a =
        m.is_string() ? m.get<std::string>() : m[0].get<std::string>() + " " + m[1].get<std::string>();
    const auto sp = a.find(' ');
    if (a.substr(0, sp) == victim || a.substr(sp + 1) == victim || a.substr(0, sp) + a.substr(sp + 1) == victim)
      continue;
    merges.push_back(m);
  }
  j["model"]["merges"] = merges;
  const auto renamed = HfBpeTokenizer::from_json(j.dump(), read_file_bytes(fixture_path("qwen/tokenizer_config.json")));
  const std::string msg = compare_vocabularies(*qwen, *renamed);
  EXPECT_NE(msg.find("id 300: '" + victim + "' vs 'RENAMED'"), std::string::npos) << msg;
}

TEST(DataHfTokenizer, GgufVocab) {
  const auto qwen = load_tokenizer(fixture_path("qwen"));
  const GgufVocab v = gguf_vocab(*qwen);
  EXPECT_EQ(v.model, "gpt2");
  EXPECT_EQ(v.pre, "qwen2");
  ASSERT_EQ(v.tokens.size(), ref_of("qwen")["vocab"].size());
  for (std::size_t i = 0; i < v.tokens.size(); ++i)
    ASSERT_EQ(v.tokens[i], ref_of("qwen")["vocab"][i].get<std::string>());
  const json tj = json::parse(read_file_bytes(fixture_path("qwen/tokenizer.json")));
  ASSERT_EQ(v.merges.size(), tj["model"]["merges"].size());
  for (std::size_t i = 0; i < v.merges.size(); ++i) {
    const auto& m = tj["model"]["merges"][i];
    ASSERT_EQ(v.merges[i],
              m.is_string() ? m.get<std::string>() : m[0].get<std::string>() + " " + m[1].get<std::string>());
  }
  for (const auto& a : ref_of("qwen")["added"]) {
    EXPECT_EQ(v.token_types[a["id"].get<int>()],
              static_cast<int32_t>(a["special"].get<bool>() ? TokenType::control : TokenType::user_defined));
  }
  EXPECT_EQ(v.token_types[0], static_cast<int32_t>(TokenType::normal));
  EXPECT_TRUE(v.scores.empty());
  EXPECT_EQ(v.bos_id, -1);
  EXPECT_FALSE(v.add_bos);
  EXPECT_EQ(v.eos_id, qwen->eos_id());
  EXPECT_EQ(gguf_vocab(*load_tokenizer(fixture_path("llama3/tokenizer.json"))).pre, "llama-bpe");
  EXPECT_EQ(gguf_vocab(*load_tokenizer(fixture_path("gpt2x/tokenizer.json"))).pre, "gpt-2");
  const GgufVocab s = gguf_vocab(*load_tokenizer(fixture_path("spm")));
  EXPECT_EQ(s.model, "llama");
  EXPECT_EQ(s.pre, "");
  EXPECT_TRUE(s.merges.empty());
  EXPECT_EQ(s.scores.size(), s.tokens.size());
  EXPECT_TRUE(s.add_bos);
  EXPECT_EQ(s.token_types[3], static_cast<int32_t>(TokenType::byte));  // <0x00>
}

TEST(DataHfTokenizer, HfDirectoryPrefersByteLevelJsonElseTokenizerModel) {
  TempDir d;
  // A Llama-2 style directory: tokenizer.model + the converted (Metaspace) tokenizer.json -> SentencePiece.
  fs::copy_file(fixture_path("spm/tokenizer.model"), d.path / "tokenizer.model");
  fs::copy_file(fixture_path("spm/hf/tokenizer.json"), d.path / "tokenizer.json");
  EXPECT_EQ(load_tokenizer(d.path.string())->kind(), "sentencepiece");
  EXPECT_EQ(hf_tokenizer_files(d.path.string()), std::vector<std::string>{(d.path / "tokenizer.model").string()});
  // The converted tokenizer.json alone is not supported (and says why).
  EXPECT_THROW(load_tokenizer(fixture_path("spm/hf/tokenizer.json")), DataError);
  // A byte-level tokenizer.json beside a tokenizer.model wins.
  fs::copy_file(fixture_path("qwen/tokenizer.json"), d.path / "tokenizer.json", fs::copy_options::overwrite_existing);
  EXPECT_EQ(load_tokenizer(d.path.string())->kind(), "hf_bpe");
}

// ---------------------------------------------------------------------------------------------------------
// prepare_data with a pretrained tokenizer
// ---------------------------------------------------------------------------------------------------------

TEST(DataHfTokenizer, PrepareDataWithPretrainedTokenizer) {
  TempDir d;
  PrepareDataOptions o;
  o.tokenizer = TokenizerKind::pretrained;
  o.tokenizer_path = fixture_path("qwen");
  o.max_documents = 12;
  o.val_fraction = 0.25;
  o.output_dir = (d.path / "prepared").string();
  EXPECT_EQ(to_string(tokenizer_kind_from_string("pretrained")), "pretrained");
  const PreparedData p = prepare_data(o);
  EXPECT_FALSE(p.reused);
  EXPECT_EQ(fs::path(p.tokenizer_path).filename(), "tokenizer.json");
  const auto copy = load_tokenizer(p.tokenizer_path);
  const auto orig = load_tokenizer(o.tokenizer_path);
  EXPECT_EQ(compare_vocabularies(*copy, *orig), "");
  EXPECT_EQ(p.meta["tokenizer"]["kind"], "hf_bpe");
  EXPECT_EQ(p.meta["tokenizer"]["bos_id"], -1);
  // Shards: documents framed with eos only (no bos), ids equal to HF's for the same documents.
  ShardReader train(p.train_path);
  EXPECT_EQ(train.header().tokenizer_crc32, tokenizer_fingerprint(*copy));
  const auto all = train.slice(0, train.size());
  std::size_t eos_count = 0;
  for (int32_t t : all) eos_count += t == copy->eos_id();
  EXPECT_EQ(eos_count, train.document_count());
  EXPECT_EQ(all.back(), copy->eos_id());
  // Reused when nothing changed; redone when the tokenizer changes.
  EXPECT_TRUE(prepare_data(o).reused);
  o.tokenizer_path = fixture_path("llama3/tokenizer.json");
  EXPECT_THROW(prepare_data(o), DataError);  // llama3 fixture has no eos: refused, naming the tokenizer
  TempDir alt;
  fs::copy_file(fixture_path("qwen/tokenizer.json"), alt.path / "tokenizer.json");
  json cfg = json::parse(read_file_bytes(fixture_path("qwen/tokenizer_config.json")));
  cfg["eos_token"] = "<|im_end|>";
  write_text(alt.path / "tokenizer_config.json", cfg.dump());
  o.tokenizer_path = alt.path.string();
  const PreparedData p2 = prepare_data(o);
  EXPECT_FALSE(p2.reused);
  int32_t im_end = -1;
  for (const auto& a : ref_of("qwen")["added"])
    if (a["content"] == "<|im_end|>") im_end = a["id"].get<int32_t>();
  EXPECT_EQ(load_tokenizer(p2.tokenizer_path)->eos_id(), im_end);
  EXPECT_EQ(ShardReader(p2.train_path).slice(0, ShardReader(p2.train_path).size()).back(), im_end);
}
