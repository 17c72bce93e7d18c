// Bounded, regular-file-only reads for corpus files (issue #21 item 6).
//
// A corpus file must be a regular file (after following symbolic links) of at most max_corpus_file_bytes()
// bytes; anything else (FIFO, device, socket, directory, dangling symlink, symlink loop, a file over the limit) is
// refused with a DataError naming the file and the reason, before a byte is read. The limit defaults to
// kDefaultMaxCorpusFileBytes and can be changed with the environment variable BITFORGE_MAX_CORPUS_FILE_BYTES
// (bytes; read on every call, so tests and users can set it at any time).
#pragma once

#include <cstdint>
#include <optional>
#include <string>

namespace bitforge::data {

inline constexpr uint64_t kDefaultMaxCorpusFileBytes = uint64_t{8} << 30;  // 8 GiB per file

/// The per-file limit in bytes (BITFORGE_MAX_CORPUS_FILE_BYTES, else the default).
uint64_t max_corpus_file_bytes();

/// Why `path` is not a readable regular file ("a FIFO", "a dangling symbolic link", "a symbolic link loop", ...),
/// or nullopt when it is one. Follows symbolic links; never opens the file.
std::optional<std::string> non_regular_reason(const std::string& path);

/// Throws DataError unless `path` is a regular file within the size limit. Returns its size.
uint64_t check_corpus_file(const std::string& path);

/// Reads a whole corpus file: regular files only (opened non-blocking, checked with fstat, so a FIFO or device is
/// refused without blocking), at most max_corpus_file_bytes(), and never more than the size fstat reported plus
/// one byte (a file that grows while read is an error). Throws DataError naming the file.
std::string read_corpus_file(const std::string& path);

}  // namespace bitforge::data
