// ggml block layouts, type table and scalar reference quantizers for the GGUF export. No LibTorch.
//
// Layouts copied from llama.cpp ggml/src/ggml-common.h (ggml-org/llama.cpp), quantizers from
// ggml/src/ggml-quants.c (`quantize_row_*_ref`, `dequantize_row_*`), reproduced operation for operation so
// the bytes match what llama.cpp writes:
//   Q1_0  (type 41) 128 weights, 18 B: { fp16 d; u8 qs[16] }   bit j at qs[j/8] bit j%8; 1 -> +d, 0 -> -d;
//                   reference: d = (sum |x|)/128, bit = x >= 0.
//   Q2_0  (type 42)  64 weights, 18 B: { fp16 d; u8 qs[16] }   code j at qs[j/4] bits 2*(j%4); value (code-1)*d,
//                   codes {-1,0,+1,+2}; reference: d = max|x|, code = clamp(round(x/d)+1, 0, 3).
//   TQ1_0 (type 34) 256 weights, 54 B: { u8 qs[48]; u8 qh[4]; fp16 d }  base-3, 5 trits per byte
//                   (first trit most significant, byte stored as ceil(v*256/243)); qs[0..31] hold elements
//                   m + 32n (n = 0..4), qs[32..47] hold 160 + m + 16n, qh[j] holds 240 + j + 4n (n = 0..3).
//   TQ2_0 (type 35) 256 weights, 66 B: { u8 qs[64]; fp16 d }    in each 32-byte half h, byte m holds elements
//                   128h + m + 32l at shift 2l (l = 0..3); value (code-1)*d; reference: d = max|x|.
//   Q8_0  (type 8)   32 weights, 34 B: { fp16 d; i8 qs[32] }    d = max|x|/127, q = round(x/d).
// fp16 conversions are exact IEEE round-to-nearest-even (what ggml's F16C/`_cvtss_sh` path does);
// bf16 is round-to-nearest-even with NaN kept quiet (ggml_compute_fp32_to_bf16).
// Functions taking k (number of weights) throw std::invalid_argument unless k is a multiple of the block.
#pragma once

#include <cstddef>
#include <cstdint>

namespace bitforge::formats {

/// ggml_type ids as stored in GGUF tensor infos (ggml/include/ggml.h). Removed ids (4, 5, 31-33, 36-38)
/// are not listed.
enum class GgmlType : uint32_t {
  F32 = 0, F16 = 1, Q4_0 = 2, Q4_1 = 3, Q5_0 = 6, Q5_1 = 7, Q8_0 = 8, Q8_1 = 9,
  Q2_K = 10, Q3_K = 11, Q4_K = 12, Q5_K = 13, Q6_K = 14, Q8_K = 15,
  IQ2_XXS = 16, IQ2_XS = 17, IQ3_XXS = 18, IQ1_S = 19, IQ4_NL = 20, IQ3_S = 21, IQ2_S = 22, IQ4_XS = 23,
  I8 = 24, I16 = 25, I32 = 26, I64 = 27, F64 = 28, IQ1_M = 29, BF16 = 30,
  TQ1_0 = 34, TQ2_0 = 35, MXFP4 = 39, NVFP4 = 40, Q1_0 = 41, Q2_0 = 42,
};

struct GgmlTypeTraits {
  const char* name;
  int64_t block_size;  ///< weights per block
  size_t type_size;    ///< bytes per block
};
/// nullptr for an id ggml does not know.
const GgmlTypeTraits* ggml_type_traits(uint32_t type);
/// Bytes of a row of n weights; throws std::invalid_argument for an unknown type or n not a block multiple.
size_t ggml_row_size(GgmlType type, int64_t n);

constexpr int QK1_0 = 128;
constexpr int QK2_0 = 64;
constexpr int QK_K = 256;
constexpr int QK8_0 = 32;

struct block_q1_0 {
  uint16_t d;             // fp16 delta
  uint8_t qs[QK1_0 / 8];  // sign bits, LSB first
};
struct block_q2_0 {
  uint16_t d;             // fp16 delta
  uint8_t qs[QK2_0 / 4];  // 2-bit codes
};
struct block_tq1_0 {
  uint8_t qs[(QK_K - 4 * QK_K / 64) / 5];  // 5 trits per byte
  uint8_t qh[QK_K / 64];                   // 4 trits per byte
  uint16_t d;
};
struct block_tq2_0 {
  uint8_t qs[QK_K / 4];  // 2-bit codes
  uint16_t d;
};
struct block_q8_0 {
  uint16_t d;
  int8_t qs[QK8_0];
};
static_assert(sizeof(block_q1_0) == 18, "block_q1_0 must be 18 bytes");
static_assert(sizeof(block_q2_0) == 18, "block_q2_0 must be 18 bytes");
static_assert(sizeof(block_tq1_0) == 54, "block_tq1_0 must be 54 bytes");
static_assert(sizeof(block_tq2_0) == 66, "block_tq2_0 must be 66 bytes");
static_assert(sizeof(block_q8_0) == 34, "block_q8_0 must be 34 bytes");

uint16_t fp32_to_fp16(float f);
float fp16_to_fp32(uint16_t h);
uint16_t fp32_to_bf16(float f);
float bf16_to_fp32(uint16_t h);
/// True when f survives fp32 -> fp16 -> fp32 unchanged (bit for bit; NaN is never exact).
bool fp16_exact(float f);

void convert_f32_to_f16(const float* x, uint16_t* y, int64_t n);
void convert_f16_to_f32(const uint16_t* x, float* y, int64_t n);
void convert_f32_to_bf16(const float* x, uint16_t* y, int64_t n);
void convert_bf16_to_f32(const uint16_t* x, float* y, int64_t n);

// Reference quantizers (x: k floats, y: k / block_size blocks) and dequantizers.
void quantize_row_q1_0_ref(const float* x, block_q1_0* y, int64_t k);
void quantize_row_q2_0_ref(const float* x, block_q2_0* y, int64_t k);
void quantize_row_tq1_0_ref(const float* x, block_tq1_0* y, int64_t k);
void quantize_row_tq2_0_ref(const float* x, block_tq2_0* y, int64_t k);
void quantize_row_q8_0_ref(const float* x, block_q8_0* y, int64_t k);
void dequantize_row_q1_0(const block_q1_0* x, float* y, int64_t k);
void dequantize_row_q2_0(const block_q2_0* x, float* y, int64_t k);
void dequantize_row_tq1_0(const block_tq1_0* x, float* y, int64_t k);
void dequantize_row_tq2_0(const block_tq2_0* x, float* y, int64_t k);
void dequantize_row_q8_0(const block_q8_0* x, float* y, int64_t k);

// Blocks built from integer codes and one scale per block (the trainer's codes and fp16-representable
// scales when its group size equals the block size): dequantize(from_codes(c, s)) == s[block] * c exactly.
// codes: k int8 values; scales: k / block_size floats, each exactly representable in fp16 (checked).
// Throws std::invalid_argument naming the element/block for a code outside the set or an inexact scale.
void q1_0_from_codes(const int8_t* codes, const float* scales, int64_t k, block_q1_0* y);    ///< codes in {-1,+1}
void q2_0_from_codes(const int8_t* codes, const float* scales, int64_t k, block_q2_0* y);    ///< codes in {-1,0,1,2}
void tq1_0_from_codes(const int8_t* codes, const float* scales, int64_t k, block_tq1_0* y);  ///< codes in {-1,0,1}
void tq2_0_from_codes(const int8_t* codes, const float* scales, int64_t k, block_tq2_0* y);  ///< codes in {-1,0,1}

}  // namespace bitforge::formats
