// bitforge's packed native model file: a safetensors container (any safetensors tool can list it).
//
// __metadata__ (all strings):
//   format          "bitforge.packed"
//   format_version  "1"
//   config          model/quantizer config text as given by the caller (YAML or JSON)
//   tokenizer_kind  e.g. "sentencepiece", "bytes"
//   tokenizer       the tokenizer file, base64 (RFC 4648, padded)
//   layers          JSON object {"<name>": {"quantizer": "binary"|"ternary", "granularity": "tensor"|"channel"|
//                   "group", "group_size": G, "in": I, "out": O}, ...}
//   checksum        "crc32+meta:xxxxxxxx" (zlib crc32, lowercase hex) over the whole data section followed by every
//                   other __metadata__ entry in key order, each as key bytes, a 0 byte, the value's length as u64
//                   little-endian, the value bytes; so the config, tokenizer and layers metadata are covered too.
//                   Files written before this scheme carry "crc32:xxxxxxxx" over the data section only; they are
//                   still read (their metadata is range-checked like any other).
// Tensors per quantized layer <name> (e.g. model.layers.0.mlp.up_proj.weight, W is [out, in]):
//   <name>.codes         U8  [out, row_bytes]  binary: sign bits, row_bytes = ceil(in/8); ternary: 2-bit codes
//                                              q+1, row_bytes = ceil(in/4) (layouts in export/bitpack.h);
//                                              padding bits 0; anchor positions hold +1 (binary) / 0 (ternary)
//   <name>.scales        F16 [S, n_groups]     tensor: [1, 1]; channel: [out, 1]; group: [out, in/G]
//   <name>.anchor_index  I64 [n]               flat row*in + col, strictly increasing, < out*in
//   <name>.anchor_value  F32 [n]               full-precision weights at those positions
// Other tensors are stored unquantized as BF16, F16 or F32.
//
// Effective weight (what BitLinear::effective_weight computes in training, bit for bit):
//   W[r][c] = anchor_value[k]                         if r*in + c == anchor_index[k]
//           = float(scales[S == 1 ? 0 : r][c / G]) * float(code[r][c])   otherwise
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "export/safetensors.h"
#include "kernels/quant_types.h"

namespace bitforge::formats {

constexpr const char* kPackedFormatName = "bitforge.packed";
constexpr const char* kPackedFormatVersion = "1";


struct PackedLayer {
  WeightQuantizer quantizer = WeightQuantizer::binary;
  ScaleGranularity granularity = ScaleGranularity::tensor;
  int64_t group_size = 0;  ///< input columns per scale; == in for tensor and channel granularity
  int64_t out = 0, in = 0;
  std::vector<uint8_t> codes;         ///< [out, row_bytes()]
  std::vector<uint16_t> scales;       ///< fp16 bits, [scale_rows(), n_groups()]
  std::vector<int64_t> anchor_index;  ///< sorted, unique, flat row*in + col
  std::vector<float> anchor_value;    ///< same length as anchor_index

  int64_t row_bytes() const;   ///< ceil(in/8) binary, ceil(in/4) ternary
  int64_t n_groups() const;    ///< in / group_size
  int64_t scale_rows() const;  ///< 1 for tensor granularity, out otherwise
};

/// Packs a trained layer. q_codes: [out*in] int8 in {-1,+1} (binary) or {-1,0,+1} (ternary); at anchor
/// positions any of {-1,0,+1} is accepted and replaced (+1 binary, 0 ternary). scales: [scale_rows*n_groups]
/// fp32, each exactly representable in fp16 (lossless is the contract). group_size is ignored (set to in)
/// for tensor/channel granularity. anchors: n_anchors sorted unique flat indices and their values.
/// Throws std::invalid_argument (naming the element) for anything else.
PackedLayer pack_layer(WeightQuantizer quantizer, ScaleGranularity granularity, int64_t group_size, int64_t out, int64_t in,
                       const int8_t* q_codes, const float* scales, const int64_t* anchor_index = nullptr,
                       const float* anchor_value = nullptr, int64_t n_anchors = 0);

/// The effective weight [out*in] row-major (formula in the file comment). Validates first.
std::vector<float> unpack_layer(const PackedLayer& layer);
/// The integer codes [out*in] (anchor positions as stored).
std::vector<int8_t> unpack_codes(const PackedLayer& layer);

/// Checks every invariant of a layer; throws FormatError("<where>: ...") naming what is wrong.
void validate_layer(const PackedLayer& layer, const std::string& where);

/// An unquantized tensor (embeddings, norms, lm_head, ...): BF16, F16 or F32, little-endian bytes.
struct PackedTensor {
  Dtype dtype = Dtype::F32;
  std::vector<uint64_t> shape;
  std::vector<uint8_t> bytes;
};

struct PackedModel {
  std::string config;
  std::string tokenizer_kind;
  std::vector<uint8_t> tokenizer;
  std::map<std::string, PackedLayer> layers;
  std::map<std::string, PackedTensor> tensors;
};

/// Builds the safetensors container (validating every layer first; throws FormatError / invalid_argument).
SafetensorsWriter make_packed_writer(const PackedModel& model);
/// "crc32+meta:xxxxxxxx" over the data section the writer will produce and its metadata (except "checksum").
std::string packed_checksum(const SafetensorsWriter& w);
/// Atomic write (path.tmp + rename).
void write_packed(const std::string& path, const PackedModel& model);

/// Reads and validates (safetensors rules, format name and version, checksum, layers metadata, every
/// layer's tensors, dtypes, shapes and invariants). Throws FormatError naming the file and what is wrong.
PackedModel read_packed(const std::string& path);
PackedModel read_packed(const SafetensorsFile& file);

std::string base64_encode(const uint8_t* data, size_t n);
/// Throws std::invalid_argument on malformed input (bad length, character or padding).
std::vector<uint8_t> base64_decode(const std::string& s);

}  // namespace bitforge::formats
