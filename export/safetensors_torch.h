// LibTorch adapter over export/safetensors.h: load a safetensors file into CPU tensors and save tensors.
//
// dtype mapping: F64 F32 F16 BF16 I64 I32 I16 I8 U8 BOOL U16 U32 U64 F8_E5M2 F8_E4M3 <-> the torch dtype
// of the same name (kDouble, kFloat, kHalf, kBFloat16, kLong, kInt, kShort, kChar, kByte, kBool, kUInt16,
// kUInt32, kUInt64, kFloat8_e5m2, kFloat8_e4m3fn). Other torch dtypes throw std::invalid_argument on save.
#pragma once

#include <map>
#include <string>

#include <ATen/ATen.h>
#include <torch/types.h>

#include "export/safetensors.h"

namespace bitforge::safetensors {

/// Reads and validates `path` (see formats::SafetensorsFile); returns CPU tensors that own their memory
/// (copies, independent of the file). Fills `metadata` with `__metadata__` when given.
/// Throws formats::FormatError for a malformed file, std::runtime_error when it cannot be read.
std::map<std::string, torch::Tensor> load(const std::string& path, std::map<std::string, std::string>* metadata = nullptr);

/// Writes `tensors` (made contiguous, moved to CPU) and `metadata` atomically (path.tmp, then rename).
/// Throws std::invalid_argument for an undefined tensor or an unsupported dtype.
void save(const std::string& path, const std::map<std::string, torch::Tensor>& tensors,
          const std::map<std::string, std::string>& metadata = {});

/// dtype conversions used by load/save (exposed for the packed format and tests).
at::ScalarType to_torch_dtype(formats::Dtype d);
formats::Dtype from_torch_dtype(at::ScalarType t);  ///< throws std::invalid_argument when unsupported

}  // namespace bitforge::safetensors
