// Read-only memory mapping of a whole file, shared by the format readers (safetensors, GGUF).
#pragma once

#include <cstdint>
#include <memory>
#include <string>

namespace bitforge::formats {

/// A file mapped read-only. `holder` owns the mapping (munmap when the last owner goes); an empty file maps
/// to data = nullptr, size = 0.
struct MappedFile {
  std::shared_ptr<void> holder;
  const uint8_t* data = nullptr;
  uint64_t size = 0;
};

/// Throws std::runtime_error naming the path and the system error (cannot open / stat / mmap).
MappedFile map_file_readonly(const std::string& path);

}  // namespace bitforge::formats
