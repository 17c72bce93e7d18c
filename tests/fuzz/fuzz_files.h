// Shared by the libFuzzer harnesses that read a directory (checkpoint, HF): a scratch directory in /dev/shm, one per
// process, and a helper that writes one file of it. Nothing here is fuzzed.
#pragma once

#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <string>
#include <vector>

#include "trainer/checkpoint_io.h"

namespace bitforge::fuzz {

/// "/dev/shm/bitforge-fuzz-<tag>-<pid>", emptied and created on first use.
inline const std::string& scratch_dir(const char* tag) {
  static const std::string d = [tag] {
    std::string t = std::string("/dev/shm/bitforge-fuzz-") + tag + "-" + std::to_string(::getpid());
    ckpt::remove_tree(t);
    ::mkdir(t.c_str(), 0700);
    return t;
  }();
  return d;
}

/// Writes `bytes` to `dir`/`name` (best effort: a failed open writes nothing).
inline void put_file(const std::string& dir, const std::string& name, const std::string& bytes) {
  std::FILE* f = std::fopen((dir + "/" + name).c_str(), "wb");
  if (!f) return;
  if (!bytes.empty()) std::fwrite(bytes.data(), 1, bytes.size(), f);
  std::fclose(f);
}

/// The input split at each line "--bitforge-fuzz--" into at most `max_parts` parts (the last takes the rest).
inline std::vector<std::string> split_input(const uint8_t* data, size_t size, size_t max_parts) {
  const std::string in(reinterpret_cast<const char*>(data), size), sep = "\n--bitforge-fuzz--\n";
  std::vector<std::string> parts;
  size_t pos = 0;
  while (parts.size() + 1 < max_parts) {
    const size_t s = in.find(sep, pos);
    if (s == std::string::npos) break;
    parts.push_back(in.substr(pos, s - pos));
    pos = s + sep.size();
  }
  parts.push_back(in.substr(pos));
  return parts;
}

}  // namespace bitforge::fuzz
