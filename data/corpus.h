// Corpus readers: turn text on disk into a list of UTF-8 documents.
//
// Three formats (CorpusFormat):
//   text_dir  — every regular file under a directory whose path relative to it matches a glob (`**` = any number
//               of directories, `*`/`?`/`[...]` within one path component, as fnmatch(3)); one file = one document;
//               files are visited in byte-wise order of their relative path, so the result is deterministic.
//   jsonl     — one JSON object per line; the document is the string under `text_field`; blank lines are skipped.
//   text_file — the whole file is one document.
// Every document is validated as UTF-8. Empty documents are skipped (not an error on their own); a corpus with no
// non-empty document is. All errors are DataError with the file (and line or byte offset) named.
#pragma once

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "data/error.h"

namespace bitforge::data {

struct Document {
  std::string source;  // where it came from: the file path, or "path:LINE" for JSONL
  std::string text;    // valid UTF-8, not empty
};

enum class CorpusFormat { text_dir, jsonl, text_file };

// "text_dir" | "jsonl" | "text_file" <-> CorpusFormat. Throws DataError naming the accepted values.
CorpusFormat corpus_format_from_string(std::string_view name);
std::string to_string(CorpusFormat format);

// The corpus used when a config names none: Python 3.11's documentation sources, installed by Debian's
// python3.11-doc (≈500 reStructuredText files, ≈11 MB).
inline constexpr const char* kDefaultCorpusDir = "/usr/share/doc/python3.11/html/_sources";
inline constexpr const char* kDefaultCorpusGlob = "**/*.rst.txt";

struct CorpusOptions {
  CorpusFormat format = CorpusFormat::text_dir;
  std::string path = kDefaultCorpusDir;   // directory (text_dir) or file (jsonl, text_file)
  std::string glob = kDefaultCorpusGlob;  // text_dir only; relative to `path`, '/'-separated
  std::string text_field = "text";        // jsonl only
  std::size_t max_documents = 0;          // keep the first N non-empty documents; 0 = all
};

// Reads the corpus `options` describes. Throws DataError: directory/file missing or unreadable, a JSONL line that
// is not a JSON object or whose `text_field` is missing or not a string (names file:line), invalid UTF-8 (names
// file and byte offset), or no non-empty document at all.
std::vector<Document> read_corpus(const CorpusOptions& options);

// The format-specific readers behind read_corpus (same errors).
std::vector<Document> read_text_dir(const std::string& dir, const std::string& glob, std::size_t max_documents = 0);
std::vector<Document> read_jsonl(const std::string& path, const std::string& text_field = "text",
                                 std::size_t max_documents = 0);
std::vector<Document> read_text_file(const std::string& path);

// Whether a '/'-separated relative path matches a glob pattern: `**` as a whole component matches zero or more
// components; other components are matched with fnmatch(3) (`*`, `?`, `[...]`, never crossing '/').
bool glob_match(std::string_view pattern, std::string_view relative_path);

// Byte offset of the first byte that does not start a valid UTF-8 sequence (RFC 3629: no overlongs, no
// surrogates, nothing above U+10FFFF), or nullopt when `text` is valid UTF-8.
std::optional<std::size_t> find_invalid_utf8(std::string_view text);

// Reads a whole file as bytes. Throws DataError naming the file and the OS error when it cannot be read.
std::string read_file_bytes(const std::string& path);

}  // namespace bitforge::data
