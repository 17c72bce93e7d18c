// safetensors reader and writer without LibTorch (the torch adapter lives in export/safetensors_torch.h).
//
// File layout (huggingface/safetensors, docs and src/tensor.rs):
//   u64 little-endian N                     header length in bytes, N <= 100'000'000
//   N bytes of UTF-8 JSON                   {"__metadata__": {str: str}?, name: {"dtype": D, "shape": [u64...],
//                                            "data_offsets": [begin, end]}, ...}, padded with spaces
//   data section                            little-endian, row-major; offsets are relative to its start
//
// The reader validates as the reference implementation does, and a little more (unique names):
//   header length within the file and <= 100 MB; header is a JSON object; `__metadata__` maps strings to
//   strings; every tensor has a known dtype, a shape of non-negative integers and two offsets; shape products
//   and byte sizes are computed with overflow checks; byte size == dtype size × numel; sorted by offset the
//   tensors are contiguous from 0 (no holes, no overlaps) and the last one ends exactly at the end of file.
// Every violation throws FormatError naming the file, the tensor or byte offset, and what was expected.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace bitforge::formats {

/// A file that does not follow its format. what() = "<path>: <where>: <what was found>, expected <...>".
class FormatError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// safetensors dtypes, in the reference's order of increasing alignment (the writer sorts by it).
enum class Dtype : uint8_t { BOOL, U8, I8, F8_E5M2, F8_E4M3, I16, U16, F16, BF16, I32, U32, F32, F64, I64, U64 };

size_t dtype_size(Dtype d);                ///< bytes per element
const char* dtype_name(Dtype d);           ///< "F32", "BF16", ...
bool parse_dtype(const std::string& s, Dtype* out);  ///< false when unknown

/// A read-only view of bytes inside a mapped file (or any buffer).
struct ByteSpan {
  const uint8_t* data = nullptr;
  size_t size = 0;
};

/// One tensor entry of a header. data_begin/data_end are relative to the data section.
struct TensorInfo {
  std::string name;
  Dtype dtype = Dtype::F32;
  std::vector<uint64_t> shape;
  uint64_t data_begin = 0, data_end = 0;
  uint64_t numel() const;  ///< product of shape (validated not to overflow)
};

/// A validated, memory-mapped safetensors file. Move-only; the mapping lives as long as the object (and
/// any copies of the shared mapping it hands out through spans — spans are invalid after destruction).
class SafetensorsFile {
 public:
  /// Maps and validates `path`. Throws FormatError for a malformed file, std::runtime_error if it cannot
  /// be opened or mapped.
  explicit SafetensorsFile(const std::string& path);
  /// Validates an in-memory file image (copied). `label` names it in error messages.
  static SafetensorsFile from_bytes(std::vector<uint8_t> bytes, const std::string& label);

  SafetensorsFile(SafetensorsFile&&) noexcept;
  SafetensorsFile& operator=(SafetensorsFile&&) noexcept;
  ~SafetensorsFile();

  const std::string& path() const { return path_; }
  /// Tensors sorted by data offset.
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  /// `__metadata__` (empty when absent).
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  /// nullptr when there is no tensor of that name.
  const TensorInfo* find(const std::string& name) const;
  /// Throws FormatError "<path>: no tensor '<name>'" when absent.
  const TensorInfo& at(const std::string& name) const;
  /// The bytes of one tensor.
  ByteSpan bytes(const TensorInfo& t) const;
  /// Everything after the header (what the packed format's checksum covers).
  ByteSpan data_section() const;
  uint64_t header_length() const { return header_len_; }
  uint64_t file_size() const { return size_; }

 private:
  SafetensorsFile() = default;
  void parse();
  std::string path_;
  std::shared_ptr<void> holder_;  // mapping or owned buffer
  const uint8_t* base_ = nullptr;
  uint64_t size_ = 0;
  uint64_t header_len_ = 0;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, size_t> index_;
  std::map<std::string, std::string> metadata_;
};

/// Collects tensors and metadata, then writes a file the reference reader accepts: tensors ordered by
/// descending dtype alignment then name (as the reference does, so every tensor is aligned to its element
/// size), compact JSON with `__metadata__` first, header padded with spaces to a multiple of 8. write() goes
/// to `path + ".tmp"`, flushes and renames, so a reader never sees a half-written file.
class SafetensorsWriter {
 public:
  /// Copies `size` bytes. Throws std::invalid_argument on a duplicate or empty name, the reserved name
  /// `__metadata__`, or size != dtype_size × numel (checked arithmetic).
  void add(const std::string& name, Dtype dtype, const std::vector<uint64_t>& shape, const void* bytes, size_t size);
  void add(const std::string& name, Dtype dtype, const std::vector<uint64_t>& shape, std::vector<uint8_t> bytes);
  void set_metadata(const std::string& key, const std::string& value) { metadata_[key] = value; }
  void set_metadata(const std::map<std::string, std::string>& md) { metadata_ = md; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

  /// Calls `fn(bytes, size)` for each tensor's data in file order: together they are the data section.
  void for_each_data_chunk(const std::function<void(const uint8_t*, size_t)>& fn) const;
  /// The complete file image (header + data).
  std::vector<uint8_t> serialize() const;
  /// Atomic write. Throws std::runtime_error on I/O failure (the temporary file is removed).
  void write(const std::string& path) const;

 private:
  struct Entry {
    std::string name;
    Dtype dtype;
    std::vector<uint64_t> shape;
    std::vector<uint8_t> bytes;
  };
  std::vector<const Entry*> ordered() const;
  std::string header_json() const;
  std::vector<Entry> entries_;
  std::map<std::string, std::string> metadata_;
};

/// Writes `bytes` to `path + ".tmp"`, fsyncs, renames onto `path`. Shared by the writers in export/.
void write_file_atomic(const std::string& path, const std::function<void(std::FILE*)>& body);

}  // namespace bitforge::formats
