#include "data/corpus.h"

#include <spdlog/spdlog.h>

#include <fmt/format.h>
#include <fnmatch.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "data/file_limits.h"

namespace bitforge::data {
namespace fs = std::filesystem;

CorpusFormat corpus_format_from_string(std::string_view name) {
  if (name == "text_dir") return CorpusFormat::text_dir;
  if (name == "jsonl") return CorpusFormat::jsonl;
  if (name == "text_file") return CorpusFormat::text_file;
  throw DataError(fmt::format("unknown corpus format '{}': expected text_dir, jsonl or text_file", name));
}

std::string to_string(CorpusFormat format) {
  switch (format) {
    case CorpusFormat::text_dir:
      return "text_dir";
    case CorpusFormat::jsonl:
      return "jsonl";
    case CorpusFormat::text_file:
      return "text_file";
  }
  return "?";
}

std::optional<std::size_t> find_invalid_utf8(std::string_view text) {
  const auto* s = reinterpret_cast<const unsigned char*>(text.data());
  const std::size_t n = text.size();
  std::size_t i = 0;
  while (i < n) {
    const unsigned char c = s[i];
    if (c < 0x80) {
      ++i;
      continue;
    }
    // Table 3-7 of the Unicode standard ("Well-Formed UTF-8 Byte Sequences").
    std::size_t len = 0;
    unsigned char lo = 0x80, hi = 0xBF;  // allowed range of the second byte
    if (c >= 0xC2 && c <= 0xDF) {
      len = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
      len = 3;
      if (c == 0xE0) lo = 0xA0;  // no overlongs
      if (c == 0xED) hi = 0x9F;  // no surrogates
    } else if (c >= 0xF0 && c <= 0xF4) {
      len = 4;
      if (c == 0xF0) lo = 0x90;  // no overlongs
      if (c == 0xF4) hi = 0x8F;  // nothing above U+10FFFF
    } else {
      return i;
    }
    if (i + len > n) return i;
    if (s[i + 1] < lo || s[i + 1] > hi) return i;
    for (std::size_t k = 2; k < len; ++k) {
      if (s[i + k] < 0x80 || s[i + k] > 0xBF) return i;
    }
    i += len;
  }
  return std::nullopt;
}

static void check_utf8(std::string_view text, const std::string& file, std::size_t base_offset = 0) {
  if (auto bad = find_invalid_utf8(text)) {
    throw DataError(fmt::format("{}: invalid UTF-8 at byte offset {} (byte 0x{:02X}); the corpus must be UTF-8 text",
                                file, base_offset + *bad, static_cast<unsigned char>(text[*bad])));
  }
}

std::string read_file_bytes(const std::string& path) {
  std::error_code ec;
  if (fs::is_directory(path, ec))
    throw DataError(fmt::format("cannot read {}: it is a directory, expected a file", path));
  return read_corpus_file(path);  // regular files only, at most BITFORGE_MAX_CORPUS_FILE_BYTES
}

static std::vector<std::string_view> split_components(std::string_view p) {
  std::vector<std::string_view> parts;
  std::size_t start = 0;
  while (start <= p.size()) {
    const std::size_t slash = p.find('/', start);
    const std::size_t end = slash == std::string_view::npos ? p.size() : slash;
    if (end > start) parts.push_back(p.substr(start, end - start));  // empty components ("a//b") are dropped
    if (slash == std::string_view::npos) break;
    start = slash + 1;
  }
  return parts;
}

static bool match_components(const std::vector<std::string>& pat, std::size_t pi, const std::vector<std::string>& path,
                             std::size_t si) {
  while (pi < pat.size()) {
    if (pat[pi] == "**") {
      // Collapse runs of "**", then try every number of skipped components (zero first).
      while (pi + 1 < pat.size() && pat[pi + 1] == "**") ++pi;
      for (std::size_t skip = si; skip <= path.size(); ++skip) {
        if (match_components(pat, pi + 1, path, skip)) return true;
      }
      return false;
    }
    if (si >= path.size()) return false;
    if (fnmatch(pat[pi].c_str(), path[si].c_str(), 0) != 0) return false;
    ++pi;
    ++si;
  }
  return si == path.size();
}

bool glob_match(std::string_view pattern, std::string_view relative_path) {
  std::vector<std::string> pat, path;
  for (auto c : split_components(pattern)) pat.emplace_back(c);
  for (auto c : split_components(relative_path)) path.emplace_back(c);
  return match_components(pat, 0, path, 0);
}

std::vector<Document> read_text_dir(const std::string& dir, const std::string& glob, std::size_t max_documents) {
  std::error_code ec;
  if (!fs::exists(dir, ec)) throw DataError(fmt::format("corpus directory {} does not exist", dir));
  if (!fs::is_directory(dir, ec))
    throw DataError(fmt::format("corpus path {} is not a directory (format text_dir)", dir));

  std::vector<std::pair<std::string, fs::path>> files;  // (relative generic path, full path)
  fs::recursive_directory_iterator it(dir, fs::directory_options::none, ec), end;
  if (ec) throw DataError(fmt::format("cannot list corpus directory {}: {}", dir, ec.message()));
  for (; it != end; it.increment(ec)) {
    if (ec) throw DataError(fmt::format("cannot list corpus directory {}: {}", dir, ec.message()));
    std::error_code dec;
    if (it->is_directory(dec)) continue;
    std::string rel = it->path().lexically_relative(dir).generic_string();
    if (!glob_match(glob, rel)) continue;
    // Regular files only: a FIFO would block, a device never ends; dangling links and loops are reported by name.
    if (auto why = non_regular_reason(it->path().string())) {
      spdlog::warn("corpus directory {}: skipping {}: it is {}; only regular files are read", dir, it->path().string(),
                   *why);
      continue;
    }
    files.emplace_back(std::move(rel), it->path());
  }
  if (files.empty()) throw DataError(fmt::format("corpus directory {}: no file matches glob '{}'", dir, glob));
  std::sort(files.begin(), files.end(), [](const auto& a, const auto& b) { return a.first < b.first; });

  std::vector<Document> docs;
  for (const auto& [rel, full] : files) {
    if (max_documents != 0 && docs.size() >= max_documents) break;
    std::string text = read_corpus_file(full.string());  // bounded: BITFORGE_MAX_CORPUS_FILE_BYTES
    check_utf8(text, full.string());
    if (text.empty()) continue;
    docs.push_back({full.string(), std::move(text)});
  }
  if (docs.empty()) {
    throw DataError(fmt::format("corpus directory {}: all {} files matching '{}' are empty; expected text", dir,
                                files.size(), glob));
  }
  return docs;
}

std::vector<Document> read_jsonl(const std::string& path, const std::string& text_field, std::size_t max_documents) {
  std::error_code ec;
  if (!fs::exists(path, ec) && !fs::is_symlink(path, ec))
    throw DataError(fmt::format("corpus file {} does not exist", path));
  const uint64_t limit = max_corpus_file_bytes();
  check_corpus_file(path);  // a regular file within the per-file limit (a FIFO would block, a device never ends)
  std::ifstream in(path, std::ios::binary);
  if (!in) throw DataError(fmt::format("cannot read {}: {}", path, std::strerror(errno)));

  std::vector<Document> docs;
  std::string line;
  std::size_t line_no = 0, offset = 0, lines_with_content = 0;
  while (std::getline(in, line)) {
    ++line_no;
    const std::size_t line_offset = offset;
    offset += line.size() + 1;
    if (offset > limit + 1)
      throw DataError(fmt::format("corpus file {} grew past the per-file limit of {} bytes while it was read", path,
                                  limit));
    if (!line.empty() && line.back() == '\r') line.pop_back();  // tolerate CRLF files
    if (line.find_first_not_of(" \t") == std::string::npos) continue;
    ++lines_with_content;
    check_utf8(line, fmt::format("{}:{}", path, line_no), line_offset);
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(line);
    } catch (const nlohmann::json::parse_error& e) {
      throw DataError(
          fmt::format("{}:{}: not valid JSON ({}); expected one JSON object per line", path, line_no, e.what()));
    }
    if (!j.is_object()) {
      throw DataError(fmt::format("{}:{}: expected a JSON object with a string field '{}', got a JSON {}", path,
                                  line_no, text_field, j.type_name()));
    }
    auto field = j.find(text_field);
    if (field == j.end()) {
      throw DataError(
          fmt::format("{}:{}: the object has no field '{}' (the configured text field)", path, line_no, text_field));
    }
    if (!field->is_string()) {
      throw DataError(fmt::format("{}:{}: field '{}' is a JSON {}, expected a string", path, line_no, text_field,
                                  field->type_name()));
    }
    std::string text = field->get<std::string>();
    if (text.empty()) continue;
    docs.push_back({fmt::format("{}:{}", path, line_no), std::move(text)});
    if (max_documents != 0 && docs.size() >= max_documents) break;
  }
  if (in.bad()) throw DataError(fmt::format("error while reading {}: {}", path, std::strerror(errno)));
  if (docs.empty()) {
    throw DataError(fmt::format("corpus file {}: no non-empty '{}' field in {} non-blank lines; expected text", path,
                                text_field, lines_with_content));
  }
  return docs;
}

std::vector<Document> read_text_file(const std::string& path) {
  std::error_code ec;
  if (!fs::exists(path, ec) && !fs::is_symlink(path, ec))
    throw DataError(fmt::format("corpus file {} does not exist", path));
  if (fs::is_directory(path, ec))
    throw DataError(fmt::format("corpus path {} is a directory; format text_file expects a file", path));
  std::string text = read_corpus_file(path);  // regular files only, bounded
  check_utf8(text, path);
  if (text.empty()) throw DataError(fmt::format("corpus file {} is empty; expected text", path));
  return {Document{path, std::move(text)}};
}

std::vector<Document> read_corpus(const CorpusOptions& options) {
  switch (options.format) {
    case CorpusFormat::text_dir:
      return read_text_dir(options.path, options.glob, options.max_documents);
    case CorpusFormat::jsonl:
      return read_jsonl(options.path, options.text_field, options.max_documents);
    case CorpusFormat::text_file:
      return read_text_file(options.path);
  }
  throw DataError("unknown corpus format");
}

}  // namespace bitforge::data
