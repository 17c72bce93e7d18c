#include "export/mapped_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>

namespace bitforge::formats {

namespace {
struct Mapping {
  void* addr = nullptr;
  size_t len = 0;
  ~Mapping() {
    if (addr) munmap(addr, len);
  }
};
}  // namespace

MappedFile map_file_readonly(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw std::runtime_error(path + ": cannot open: " + std::strerror(errno));
  struct stat st {};
  if (fstat(fd, &st) != 0) {
    int e = errno;
    ::close(fd);
    throw std::runtime_error(path + ": cannot stat: " + std::strerror(e));
  }
  MappedFile f;
  f.size = static_cast<uint64_t>(st.st_size);
  if (f.size > 0) {
    void* addr = mmap(nullptr, f.size, PROT_READ, MAP_PRIVATE, fd, 0);
    int e = errno;
    ::close(fd);
    if (addr == MAP_FAILED) throw std::runtime_error(path + ": cannot mmap: " + std::strerror(e));
    auto m = std::make_shared<Mapping>();
    m->addr = addr;
    m->len = f.size;
    f.holder = m;
    f.data = static_cast<const uint8_t*>(addr);
  } else {
    ::close(fd);
  }
  return f;
}

}  // namespace bitforge::formats
