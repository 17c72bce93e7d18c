#include "export/safetensors_torch.h"

#include <cstring>
#include <stdexcept>

namespace bitforge::safetensors {

using formats::Dtype;

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "safetensors data is little-endian; so must the host be");

at::ScalarType to_torch_dtype(Dtype d) {
  switch (d) {
    case Dtype::BOOL: return at::kBool;
    case Dtype::U8: return at::kByte;
    case Dtype::I8: return at::kChar;
    case Dtype::F8_E5M2: return at::kFloat8_e5m2;
    case Dtype::F8_E4M3: return at::kFloat8_e4m3fn;
    case Dtype::I16: return at::kShort;
    case Dtype::U16: return at::kUInt16;
    case Dtype::F16: return at::kHalf;
    case Dtype::BF16: return at::kBFloat16;
    case Dtype::I32: return at::kInt;
    case Dtype::U32: return at::kUInt32;
    case Dtype::F32: return at::kFloat;
    case Dtype::F64: return at::kDouble;
    case Dtype::I64: return at::kLong;
    case Dtype::U64: return at::kUInt64;
  }
  throw std::invalid_argument("safetensors: unhandled dtype");
}

Dtype from_torch_dtype(at::ScalarType t) {
  switch (t) {
    case at::kBool: return Dtype::BOOL;
    case at::kByte: return Dtype::U8;
    case at::kChar: return Dtype::I8;
    case at::kFloat8_e5m2: return Dtype::F8_E5M2;
    case at::kFloat8_e4m3fn: return Dtype::F8_E4M3;
    case at::kShort: return Dtype::I16;
    case at::kUInt16: return Dtype::U16;
    case at::kHalf: return Dtype::F16;
    case at::kBFloat16: return Dtype::BF16;
    case at::kInt: return Dtype::I32;
    case at::kUInt32: return Dtype::U32;
    case at::kFloat: return Dtype::F32;
    case at::kDouble: return Dtype::F64;
    case at::kLong: return Dtype::I64;
    case at::kUInt64: return Dtype::U64;
    default: break;
  }
  throw std::invalid_argument(std::string("safetensors: torch dtype ") + c10::toString(t) + " has no safetensors dtype");
}

std::map<std::string, torch::Tensor> load(const std::string& path, std::map<std::string, std::string>* metadata) {
  formats::SafetensorsFile f(path);
  std::map<std::string, torch::Tensor> out;
  for (const auto& info : f.tensors()) {
    std::vector<int64_t> shape;
    for (uint64_t d : info.shape) {
      if (d > static_cast<uint64_t>(INT64_MAX))
        throw formats::FormatError(path + ": tensor '" + info.name + "' dimension " + std::to_string(d) + " exceeds int64");
      shape.push_back(static_cast<int64_t>(d));
    }
    auto t = at::empty(shape, at::TensorOptions().dtype(to_torch_dtype(info.dtype)).device(at::kCPU));
    const auto span = f.bytes(info);
    TORCH_INTERNAL_ASSERT(static_cast<size_t>(t.nbytes()) == span.size);
    if (span.size) std::memcpy(t.data_ptr(), span.data, span.size);
    out.emplace(info.name, std::move(t));
  }
  if (metadata) *metadata = f.metadata();
  return out;
}

void save(const std::string& path, const std::map<std::string, torch::Tensor>& tensors,
          const std::map<std::string, std::string>& metadata) {
  formats::SafetensorsWriter w;
  for (const auto& [name, t0] : tensors) {
    if (!t0.defined()) throw std::invalid_argument("safetensors::save: tensor '" + name + "' is undefined");
    const Dtype d = from_torch_dtype(t0.scalar_type());
    auto t = t0.detach().to(at::kCPU).contiguous();
    std::vector<uint64_t> shape(t.sizes().begin(), t.sizes().end());
    w.add(name, d, shape, t.data_ptr(), static_cast<size_t>(t.nbytes()));
  }
  w.set_metadata(metadata);
  w.write(path);
}

}  // namespace bitforge::safetensors
