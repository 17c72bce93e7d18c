#include "data/prepare.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <thread>

#include <zlib.h>

#include "data/baseline.h"
#include "data/hf_tokenizer.h"
#include "data/shard.h"

namespace bitforge::data {
namespace fs = std::filesystem;

TokenizerKind tokenizer_kind_from_string(std::string_view name) {
  if (name == "sentencepiece_bpe") return TokenizerKind::sentencepiece_bpe;
  if (name == "sentencepiece_unigram") return TokenizerKind::sentencepiece_unigram;
  if (name == "byte") return TokenizerKind::byte;
  if (name == "pretrained") return TokenizerKind::pretrained;
  throw DataError(fmt::format(
      "unknown tokenizer '{}': expected sentencepiece_bpe, sentencepiece_unigram, byte or pretrained", name));
}

std::string to_string(TokenizerKind kind) {
  switch (kind) {
    case TokenizerKind::sentencepiece_bpe:
      return "sentencepiece_bpe";
    case TokenizerKind::sentencepiece_unigram:
      return "sentencepiece_unigram";
    case TokenizerKind::byte:
      return "byte";
    case TokenizerKind::pretrained:
      return "pretrained";
  }
  return "?";
}

nlohmann::json prepare_options_json(const PrepareDataOptions& o) {
  nlohmann::json j = {{"corpus_format", to_string(o.corpus_format)},
                      {"corpus_path", o.corpus_path},
                      {"max_documents", o.max_documents},
                      {"tokenizer", to_string(o.tokenizer)},
                      {"val_fraction", o.val_fraction},
                      {"seed", o.seed}};
  if (o.corpus_format == CorpusFormat::text_dir) j["glob"] = o.glob;
  if (o.corpus_format == CorpusFormat::jsonl) j["text_field"] = o.text_field;
  if (o.tokenizer == TokenizerKind::pretrained) {
    if (o.tokenizer_path.empty()) throw DataError("prepare-data: tokenizer 'pretrained' needs a tokenizer_path");
    uLong crc = crc32_z(0L, Z_NULL, 0);
    for (const std::string& f : hf_tokenizer_files(o.tokenizer_path)) {
      const std::string name = fs::path(f).filename().string(), bytes = read_file_bytes(f);
      crc = crc32_z(crc, reinterpret_cast<const Bytef*>(name.data()), name.size());
      crc = crc32_z(crc, reinterpret_cast<const Bytef*>(bytes.data()), bytes.size());
    }
    j["tokenizer_path"] = o.tokenizer_path;
    j["tokenizer_files_crc32"] = static_cast<uint32_t>(crc);
  } else if (o.tokenizer != TokenizerKind::byte) {
    j["vocab_size"] = o.vocab_size;
    j["input_sentence_size"] = o.input_sentence_size;
  }
  return j;
}

std::vector<std::size_t> split_val_documents(std::size_t num_documents, double val_fraction, uint64_t seed) {
  if (!(val_fraction >= 0.0 && val_fraction < 1.0)) {
    throw DataError(fmt::format("val_fraction {} must be in [0, 1)", val_fraction));
  }
  if (val_fraction == 0.0) return {};
  if (num_documents < 2) {
    throw DataError(fmt::format("val_fraction {} needs at least 2 documents (one train, one val); the corpus has {}",
                                val_fraction, num_documents));
  }
  auto n_val = static_cast<std::size_t>(std::llround(val_fraction * static_cast<double>(num_documents)));
  n_val = std::clamp<std::size_t>(n_val, 1, num_documents - 1);
  // Fisher–Yates with SplitMix64 (platform-independent, unlike std::shuffle), keep the first n_val.
  std::vector<std::size_t> order(num_documents);
  for (std::size_t i = 0; i < num_documents; ++i) order[i] = i;
  uint64_t x = seed;
  const auto next = [&x]() {
    uint64_t z = (x += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  };
  for (std::size_t i = num_documents; i > 1; --i) {
    const uint64_t n = i, threshold = (0 - n) % n;
    uint64_t r;
    do r = next();
    while (r < threshold);
    std::swap(order[i - 1], order[r % n]);
  }
  order.resize(n_val);
  std::sort(order.begin(), order.end());
  return order;
}

namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

std::string tokenizer_file_name(TokenizerKind kind) {
  return kind == TokenizerKind::byte ? "tokenizer.bin" : "tokenizer.model";
}

// Encodes documents on `threads` threads (SentencePieceProcessor::Encode is const and thread-safe).
std::vector<std::vector<int32_t>> encode_all(const Tokenizer& tok, const std::vector<const Document*>& docs,
                                             int threads) {
  std::vector<std::vector<int32_t>> out(docs.size());
  threads = std::max(1, std::min<int>(threads, static_cast<int>(docs.size())));
  std::vector<std::thread> pool;
  std::vector<std::exception_ptr> errors(threads);
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      try {
        for (std::size_t i = t; i < docs.size(); i += threads) out[i] = tok.encode(docs[i]->text);
      } catch (...) {
        errors[t] = std::current_exception();
      }
    });
  }
  for (auto& th : pool) th.join();
  for (auto& e : errors) {
    if (e) std::rethrow_exception(e);
  }
  return out;
}

nlohmann::json write_split(const std::string& path, const Tokenizer& tok, const std::vector<const Document*>& docs,
                           int threads) {
  const auto encoded = encode_all(tok, docs, threads);
  ShardWriter::Options wo;
  wo.vocab_size = static_cast<uint32_t>(tok.vocab_size());
  wo.bos_id = tok.bos_id();
  wo.eos_id = tok.eos_id();
  wo.tokenizer_crc32 = tokenizer_fingerprint(tok);
  ShardWriter writer(path, wo);
  uint64_t bytes = 0;
  for (std::size_t i = 0; i < docs.size(); ++i) {
    writer.add_document(encoded[i]);
    bytes += docs[i]->text.size();
  }
  const ShardHeader h = writer.finish();
  return {{"file", fs::path(path).filename().string()},
          {"documents", h.document_count},
          {"tokens", h.token_count},
          {"text_bytes", bytes},
          {"bytes_per_token", h.token_count ? static_cast<double>(bytes) / static_cast<double>(h.token_count) : 0.0}};
}

void write_text_atomic(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out << text;
    out.close();
    if (!out) throw DataError(fmt::format("cannot write {}", tmp));
  }
  std::error_code ec;
  fs::rename(tmp, path, ec);
  if (ec) throw DataError(fmt::format("cannot rename {} to {}: {}", tmp, path, ec.message()));
}

}  // namespace

PreparedData read_prepared_data(const std::string& dir) {
  PreparedData p;
  p.dir = dir;
  p.meta_path = (fs::path(dir) / "meta.json").string();
  const std::string text = read_file_bytes(p.meta_path);
  p.meta = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (p.meta.is_discarded() || !p.meta.is_object()) {
    throw DataError(fmt::format("{}: not a JSON object; re-run prepare-data", p.meta_path));
  }
  const auto file_of = [&](const char* section) {
    const auto it = p.meta.find(section);
    if (it == p.meta.end() || !it->is_object() || !it->contains("file") || !(*it)["file"].is_string()) {
      throw DataError(fmt::format("{}: missing \"{}.file\"; re-run prepare-data", p.meta_path, section));
    }
    return (fs::path(dir) / (*it)["file"].get<std::string>()).string();
  };
  p.tokenizer_path = file_of("tokenizer");
  p.train_path = file_of("train");
  p.val_path = file_of("val");
  return p;
}

namespace {
CorpusOptions corpus_options(const PrepareDataOptions& options) {
  CorpusOptions co;
  co.format = options.corpus_format;
  co.path = options.corpus_path;
  co.glob = options.glob;
  co.text_field = options.text_field;
  co.max_documents = options.max_documents;
  return co;
}
}  // namespace

EncodedSplits encode_splits(const PrepareDataOptions& options, const Tokenizer& tok) {
  const std::vector<Document> docs = read_corpus(corpus_options(options));
  const auto val_idx = split_val_documents(docs.size(), options.val_fraction, options.seed);
  std::vector<const Document*> split[2];  // 0 train, 1 val
  for (std::size_t i = 0, k = 0; i < docs.size(); ++i) {
    const bool is_val = k < val_idx.size() && val_idx[k] == i;
    if (is_val) ++k;
    split[is_val].push_back(&docs[i]);
  }
  auto frame = [&](const std::vector<const Document*>& part, const char* name) {
    std::vector<int32_t> ids;
    for (auto& enc : encode_all(tok, part, options.num_threads)) {
      if (tok.bos_id() >= 0) ids.push_back(tok.bos_id());
      ids.insert(ids.end(), enc.begin(), enc.end());
      ids.push_back(tok.eos_id());
    }
    return ShardReader::from_tokens(std::move(ids), static_cast<uint32_t>(tok.vocab_size()), part.size(),
                                    fmt::format("{} split of {} (in memory)", name, options.corpus_path));
  };
  return {frame(split[0], "train"), frame(split[1], "val")};
}

PreparedData prepare_data(const PrepareDataOptions& options) {
  const auto t_all = Clock::now();
  const nlohmann::json options_json = prepare_options_json(options);
  const fs::path out_dir(options.output_dir);

  if (!options.force && fs::exists(out_dir / "meta.json")) {
    try {
      PreparedData existing = read_prepared_data(options.output_dir);
      if (existing.meta.value("options", nlohmann::json()) == options_json && fs::exists(existing.tokenizer_path) &&
          fs::exists(existing.train_path) && fs::exists(existing.val_path)) {
        spdlog::info("prepare-data: {} is up to date (same options in meta.json); skipping", options.output_dir);
        existing.reused = true;
        return existing;
      }
    } catch (const DataError&) {
      // Unreadable or partial previous output: prepare again.
    }
  }

  std::error_code ec;
  fs::create_directories(out_dir, ec);
  if (ec) throw DataError(fmt::format("cannot create output directory {}: {}", options.output_dir, ec.message()));

  // 1. Corpus.
  auto t0 = Clock::now();
  const std::vector<Document> docs = read_corpus(corpus_options(options));
  uint64_t corpus_bytes = 0;
  for (const auto& d : docs) corpus_bytes += d.text.size();
  const double t_read = seconds_since(t0);
  spdlog::info("prepare-data: read {} documents ({:.1f} MB) from {} in {:.2f} s", docs.size(), corpus_bytes / 1e6,
               options.corpus_path, t_read);

  // 2. Split by document.
  const auto val_idx = split_val_documents(docs.size(), options.val_fraction, options.seed);
  std::vector<const Document*> train_docs, val_docs;
  {
    std::size_t k = 0;
    for (std::size_t i = 0; i < docs.size(); ++i) {
      if (k < val_idx.size() && val_idx[k] == i) {
        val_docs.push_back(&docs[i]);
        ++k;
      } else {
        train_docs.push_back(&docs[i]);
      }
    }
  }
  spdlog::info("prepare-data: split {} train / {} val documents (val_fraction {}, seed {})", train_docs.size(),
               val_docs.size(), options.val_fraction, options.seed);

  // 3. Tokenizer, trained on the train split only (val text never shapes the vocabulary).
  t0 = Clock::now();
  std::unique_ptr<Tokenizer> tok;
  std::string tok_file = tokenizer_file_name(options.tokenizer);
  if (options.tokenizer == TokenizerKind::pretrained) {
    // Copy the files the tokenizer is loaded from into output_dir/tokenizer/ and load the copy, so the shards'
    // fingerprint and PreparedData::tokenizer_path describe the tokenizer that travels with the data.
    const fs::path tok_dir = out_dir / "tokenizer";
    fs::remove_all(tok_dir, ec);
    fs::create_directories(tok_dir, ec);
    if (ec) throw DataError(fmt::format("cannot create {}: {}", tok_dir.string(), ec.message()));
    const auto files = hf_tokenizer_files(options.tokenizer_path);
    for (const std::string& f : files) {
      fs::copy_file(f, tok_dir / fs::path(f).filename(), fs::copy_options::overwrite_existing, ec);
      if (ec) throw DataError(fmt::format("cannot copy {} to {}: {}", f, tok_dir.string(), ec.message()));
    }
    tok_file = (fs::path("tokenizer") / fs::path(files.front()).filename()).string();
    tok = load_tokenizer((out_dir / tok_file).string());
    if (tok->eos_id() < 0) {
      throw DataError(
          fmt::format("tokenizer {} has no eos token; documents need one (set eos_token in its "
                      "tokenizer_config.json)",
                      options.tokenizer_path));
    }
    spdlog::info("prepare-data: pretrained tokenizer {} (kind {}, vocab {}, bos {}, eos {})", options.tokenizer_path,
                 tok->kind(), tok->vocab_size(), tok->bos_id(), tok->eos_id());
  } else if (options.tokenizer == TokenizerKind::byte) {
    tok = std::make_unique<ByteTokenizer>();
  } else {
    std::vector<Document> train_copy;  // train_sentencepiece takes a document list (a copy of ≈11 MB)
    train_copy.reserve(train_docs.size());
    for (const Document* d : train_docs) train_copy.push_back(*d);
    SentencePieceTrainOptions so;
    so.model =
        options.tokenizer == TokenizerKind::sentencepiece_bpe ? SentencePieceModel::bpe : SentencePieceModel::unigram;
    so.vocab_size = options.vocab_size;
    so.seed = static_cast<uint32_t>(options.seed);
    so.input_sentence_size = options.input_sentence_size;
    so.num_threads = options.num_threads;
    spdlog::info("prepare-data: training {} tokenizer, vocab {} ...", to_string(options.tokenizer), options.vocab_size);
    tok = train_sentencepiece(train_copy, so);
  }
  const double t_tok = seconds_since(t0);
  if (options.tokenizer != TokenizerKind::pretrained) save_tokenizer(*tok, (out_dir / tok_file).string());
  spdlog::info("prepare-data: tokenizer {} (kind {}, vocab {}) ready in {:.2f} s", (out_dir / tok_file).string(),
               tok->kind(), tok->vocab_size(), t_tok);

  // 4. Shards.
  t0 = Clock::now();
  const std::string train_path = (out_dir / "train.bin").string(), val_path = (out_dir / "val.bin").string();
  nlohmann::json train_meta = write_split(train_path, *tok, train_docs, options.num_threads);
  nlohmann::json val_meta = write_split(val_path, *tok, val_docs, options.num_threads);
  const double t_enc = seconds_since(t0);
  spdlog::info("prepare-data: wrote {} ({} tokens) and {} ({} tokens) in {:.2f} s", train_path,
               train_meta["tokens"].get<uint64_t>(), val_path, val_meta["tokens"].get<uint64_t>(), t_enc);

  // 5. Baseline and meta.json (written last: its presence means the rest is complete).
  nlohmann::json baseline = nullptr;
  if (val_meta["tokens"].get<uint64_t>() > 0) {
    const double ppl = unigram_perplexity(train_path, val_path);
    baseline = ppl;
    spdlog::info("prepare-data: unigram (add-one) perplexity on val = {:.2f}", ppl);
  }
  PreparedData result;
  result.dir = options.output_dir;
  result.tokenizer_path = (out_dir / tok_file).string();
  result.train_path = train_path;
  result.val_path = val_path;
  result.meta_path = (out_dir / "meta.json").string();
  result.meta = {
      {"format_version", 1},
      {"options", options_json},
      {"corpus", {{"documents", docs.size()}, {"text_bytes", corpus_bytes}}},
      {"tokenizer",
       {{"file", tok_file},
        {"kind", tok->kind()},
        {"type", to_string(options.tokenizer)},
        {"vocab_size", tok->vocab_size()},
        {"bos_id", tok->bos_id()},
        {"eos_id", tok->eos_id()},
        {"unk_id", tok->unk_id()},
        {"pad_id", tok->pad_id()},
        {"source", options.tokenizer == TokenizerKind::pretrained ? nlohmann::json(options.tokenizer_path)
                                                                  : nlohmann::json(nullptr)},
        {"fingerprint_crc32", tokenizer_fingerprint(*tok)}}},
      {"train", train_meta},
      {"val", val_meta},
      {"unigram_perplexity_val", baseline},
      {"seconds", {{"read", t_read}, {"tokenizer", t_tok}, {"encode_write", t_enc}, {"total", seconds_since(t_all)}}}};
  write_text_atomic(result.meta_path, result.meta.dump(2) + "\n");
  spdlog::info("prepare-data: done in {:.2f} s -> {}", seconds_since(t_all), result.meta_path);
  return result;
}

}  // namespace bitforge::data
