// Shared by the libFuzzer harnesses (tests/fuzz/fuzz_*.cpp, built by scripts/fuzz.sh): an in-memory file with a
// path (memfd), for readers that only take a path. Expected rejections are exceptions of the readers' error types;
// anything else (a sanitizer report, std::bad_alloc, std::length_error, abort) is a finding.
#pragma once

#include <sys/mman.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>

namespace bitforge::fuzz {

/// The input as a file: /proc/self/fd/N of a memfd (mmap-able like a regular file, never touches the disk).
class MemFile {
 public:
  MemFile(const uint8_t* data, size_t size) {
    fd_ = ::memfd_create("bitforge-fuzz", MFD_CLOEXEC);
    if (fd_ < 0) throw std::logic_error("memfd_create failed");
    size_t done = 0;
    while (done < size) {
      const ssize_t w = ::write(fd_, data + done, size - done);
      if (w <= 0) throw std::logic_error("memfd write failed");
      done += static_cast<size_t>(w);
    }
    path_ = "/proc/self/fd/" + std::to_string(fd_);
  }
  ~MemFile() { ::close(fd_); }
  MemFile(const MemFile&) = delete;
  MemFile& operator=(const MemFile&) = delete;
  const std::string& path() const { return path_; }

 private:
  int fd_ = -1;
  std::string path_;
};

}  // namespace bitforge::fuzz
