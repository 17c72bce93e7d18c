// Bounded corpus reads; contract in data/file_limits.h.
#include "data/file_limits.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "data/error.h"

namespace bitforge::data {
namespace {

const char* kind_of(mode_t m) {
  if (S_ISFIFO(m)) return "a FIFO (named pipe)";
  if (S_ISCHR(m)) return "a character device";
  if (S_ISBLK(m)) return "a block device";
  if (S_ISSOCK(m)) return "a socket";
  if (S_ISDIR(m)) return "a directory";
  return "not a regular file";
}

std::string limit_hint() {
  return "set BITFORGE_MAX_CORPUS_FILE_BYTES to raise the per-file limit, or split the file";
}

}  // namespace

uint64_t max_corpus_file_bytes() {
  const char* v = std::getenv("BITFORGE_MAX_CORPUS_FILE_BYTES");
  if (v && *v) {
    char* end = nullptr;
    errno = 0;
    const unsigned long long n = std::strtoull(v, &end, 10);
    if (errno == 0 && end && *end == '\0' && n > 0) return n;
  }
  return kDefaultMaxCorpusFileBytes;
}

std::optional<std::string> non_regular_reason(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) {
    const int e = errno;
    struct stat lst {};
    if (e == ELOOP) return std::string("a symbolic link loop");
    if (e == ENOENT && ::lstat(path.c_str(), &lst) == 0 && S_ISLNK(lst.st_mode))
      return std::string("a dangling symbolic link (its target does not exist)");
    return fmt::format("not readable ({})", std::strerror(e));
  }
  if (!S_ISREG(st.st_mode)) return std::string(kind_of(st.st_mode));
  return std::nullopt;
}

uint64_t check_corpus_file(const std::string& path) {
  if (auto why = non_regular_reason(path))
    throw DataError(fmt::format("{} is {}; expected a regular file", path, *why));
  struct stat st {};
  ::stat(path.c_str(), &st);
  const uint64_t size = static_cast<uint64_t>(st.st_size), limit = max_corpus_file_bytes();
  if (size > limit)
    throw DataError(fmt::format("{} is {} bytes, over the per-file limit of {} bytes; {}", path, size,
                                limit, limit_hint()));
  return size;
}

std::string read_corpus_file(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) {
    const int e = errno;
    struct stat lst {};
    if (::lstat(path.c_str(), &lst) == 0 && S_ISLNK(lst.st_mode))  // dangling link, loop
      if (auto why = non_regular_reason(path))
        throw DataError(fmt::format("{} is {}; expected a regular file", path, *why));
    throw DataError(fmt::format("cannot read {}: {}", path, std::strerror(e)));
  }
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};
  struct stat st {};
  if (::fstat(fd, &st) != 0) throw DataError(fmt::format("cannot read {}: {}", path, std::strerror(errno)));
  if (!S_ISREG(st.st_mode))
    throw DataError(fmt::format("{} is {}; expected a regular file", path, kind_of(st.st_mode)));
  const uint64_t size = static_cast<uint64_t>(st.st_size), limit = max_corpus_file_bytes();
  if (size > limit)
    throw DataError(fmt::format("{} is {} bytes, over the per-file limit of {} bytes; {}", path, size,
                                limit, limit_hint()));
  ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) & ~O_NONBLOCK);
  std::string buf(static_cast<size_t>(size) + 1, '\0');  // one byte more: detects a file that grows
  size_t got = 0;
  while (got < buf.size()) {
    const ssize_t r = ::read(fd, buf.data() + got, buf.size() - got);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) throw DataError(fmt::format("error while reading {}: {}", path, std::strerror(errno)));
    if (r == 0) break;
    got += static_cast<size_t>(r);
  }
  if (got > size)
    throw DataError(fmt::format("{} grew while it was read (fstat said {} bytes); expected a file that "
                                "does not change during prepare-data",
                                path, size));
  buf.resize(got);
  return buf;
}

}  // namespace bitforge::data
