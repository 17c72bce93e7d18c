// `bitforge inspect` for model files: recognises a bitforge.packed .safetensors, a plain safetensors file, or a
// GGUF file (by content, not by name) and describes it: every tensor with its type/dtype, shape, bytes and bits
// per weight; per quantized layer quantizer, granularity, group size and anchors; totals (parameters, bytes,
// bits per weight) and the file size against FP16 (2 bytes per parameter); the config / key-value summary.
#pragma once

#include <string>

namespace bitforge::formats {

/// Text (a table) or, with json = true, a JSON document:
///   {"path", "kind": "bitforge.packed"|"safetensors"|"gguf", "file_bytes", "total_params", "tensor_bytes",
///    "bits_per_weight", "fp16_bytes", "compression_vs_fp16", "tensors": [{"name", "type", "shape", "params",
///    "bytes", "bits_per_weight", ...}], "metadata": {...}}
/// Integer and boolean tensors (a checkpoint's anchor indices) count in bytes, not in params ("elements" holds their
/// size). GGUF metadata values keep their types in JSON (arrays as {"type", "length", "values" when ≤ 64}); the
/// table prints them as display strings. The table states the file against FP16 as "N.NNx smaller" or "larger".
/// Throws FormatError for a file that is none of the three (or is malformed), std::runtime_error if unreadable.
std::string inspect_file(const std::string& path, bool json = false);

}  // namespace bitforge::formats
