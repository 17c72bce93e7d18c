// GGUF v3 writer and validating reader (ggml-org/ggml docs/gguf.md; llama.cpp ggml/src/gguf.cpp). No LibTorch.
//
//   u32 magic "GGUF" | u32 version (3) | u64 n_tensors | u64 n_kv
//   n_kv × { string key | u32 value type | value }      string = u64 length + bytes (no NUL)
//                                                       array  = u32 element type + u64 count + elements
//   n_tensors × { string name | u32 n_dims (1..4) | u64 ne[n_dims] (ne[0] = innermost/row length)
//                 | u32 ggml_type | u64 offset (relative to the data section, multiple of the alignment) }
//   padding to `general.alignment` (u32, default 32) | data section (each tensor padded to the alignment)
// Everything little-endian. The writer always writes `general.alignment` = 32 (unless set by the caller)
// and writes via path.tmp + rename.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "export/ggml_quants.h"
#include "export/safetensors.h"  // FormatError, ByteSpan

namespace bitforge::formats {

enum class GgufType : uint32_t {
  UINT8 = 0, INT8 = 1, UINT16 = 2, INT16 = 3, UINT32 = 4, INT32 = 5, FLOAT32 = 6, BOOL = 7,
  STRING = 8, ARRAY = 9, UINT64 = 10, INT64 = 11, FLOAT64 = 12,
};
const char* gguf_type_name(GgufType t);

/// A typed GGUF value. Integers are held in u (unsigned types, bool) or i (signed types), floats in f,
/// strings in s; an array holds its element type and elements (which may themselves be arrays).
struct GgufValue {
  GgufType type = GgufType::UINT32;
  uint64_t u = 0;
  int64_t i = 0;
  double f = 0;
  std::string s;
  GgufType elem_type = GgufType::UINT8;  ///< arrays only
  std::vector<GgufValue> elems;          ///< arrays only

  static GgufValue u8(uint8_t v);
  static GgufValue i8(int8_t v);
  static GgufValue u16(uint16_t v);
  static GgufValue i16(int16_t v);
  static GgufValue u32(uint32_t v);
  static GgufValue i32(int32_t v);
  static GgufValue u64(uint64_t v);
  static GgufValue i64(int64_t v);
  static GgufValue f32(float v);
  static GgufValue f64(double v);
  static GgufValue boolean(bool v);
  static GgufValue str(std::string v);
  /// Throws std::invalid_argument when an element's type differs from elem_type.
  static GgufValue array(GgufType elem_type, std::vector<GgufValue> elems);
  static GgufValue strings(const std::vector<std::string>& v);
  static GgufValue f32s(const std::vector<float>& v);
  static GgufValue i32s(const std::vector<int32_t>& v);

  bool operator==(const GgufValue& o) const;
  bool operator!=(const GgufValue& o) const { return !(*this == o); }
};

struct GgufTensorInfo {
  std::string name;
  std::vector<uint64_t> ne;  ///< ggml order: ne[0] is the row length
  GgmlType type = GgmlType::F32;
  uint64_t offset = 0;  ///< relative to the data section
  uint64_t nbytes = 0;
  uint64_t numel() const;
};

class GgufWriter {
 public:
  /// Replaces an existing key. Throws std::invalid_argument for general.alignment that is not a
  /// u32 power of two.
  void set(const std::string& key, GgufValue v);
  /// `ne` in ggml order (ne[0] = row length). Checks n_dims in 1..4, ne[0] a multiple of the block size and
  /// data.size() == row size × rows; throws std::invalid_argument otherwise (or for a duplicate name).
  void add_tensor(const std::string& name, const std::vector<uint64_t>& ne, GgmlType type, std::vector<uint8_t> data);
  std::vector<uint8_t> serialize() const;
  void write(const std::string& path) const;  ///< atomic (path.tmp + rename)

 private:
  uint32_t alignment() const;
  std::vector<std::pair<std::string, GgufValue>> kv_;
  struct T {
    GgufTensorInfo info;
    std::vector<uint8_t> data;
  };
  std::vector<T> tensors_;
};

/// A validated, memory-mapped GGUF file. Every violation throws FormatError naming the file, the
/// byte offset and what was expected: bad magic, version other than 2/3, counts the file cannot hold,
/// strings/arrays running past the end, unknown value or ggml types, n_dims outside 1..4, dimension
/// products overflowing, rows not a block multiple, misaligned offsets, tensors outside the data section or
/// overlapping, duplicate keys or tensor names, general.alignment not a u32 power of two.
class GgufFile {
 public:
  explicit GgufFile(const std::string& path);
  static GgufFile from_bytes(std::vector<uint8_t> bytes, const std::string& label);

  const std::string& path() const { return path_; }
  uint32_t version() const { return version_; }
  uint32_t alignment() const { return alignment_; }
  const std::vector<std::pair<std::string, GgufValue>>& kv() const { return kv_; }
  const GgufValue* find(const std::string& key) const;
  const std::vector<GgufTensorInfo>& tensors() const { return tensors_; }
  const GgufTensorInfo* find_tensor(const std::string& name) const;
  ByteSpan bytes(const GgufTensorInfo& t) const;
  uint64_t data_offset() const { return data_offset_; }  ///< absolute file offset of the data section

 private:
  GgufFile() = default;
  void parse();
  std::string path_;
  std::shared_ptr<void> holder_;
  const uint8_t* base_ = nullptr;
  uint64_t size_ = 0;
  uint32_t version_ = 0, alignment_ = 32;
  uint64_t data_offset_ = 0;
  std::vector<std::pair<std::string, GgufValue>> kv_;
  std::vector<GgufTensorInfo> tensors_;
};

}  // namespace bitforge::formats
