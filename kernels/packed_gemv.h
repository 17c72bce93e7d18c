// CPU GEMV / small-batch GEMM on bitforge's packed 1-bit and 2-bit weights (export/packed_format.h layout),
// without unpacking: y[m, r] = Σ_c W_eff[r, c] · x[m, c] for m < M rows of x.
//
// Weight layout (a view; the memory belongs to the caller, e.g. a formats::PackedLayer):
//   codes   u8  [out, row_bytes]  binary: sign bits LSB-first, bit 1 = +1, 0 = −1, row_bytes = ceil(in/8);
//                                 ternary: 2-bit codes q+1 LSB-first, row_bytes = ceil(in/4); padding bits 0
//   scales  fp16 bits [scale_rows, in / group_size]  scale_rows = 1 (tensor) or out (channel, group);
//                                 group_size = in for tensor and channel granularity
//   anchors (index, value) n_anchors pairs, flat index r*in + c, strictly increasing. The packed format stores
//                                 +1 (binary) / 0 (ternary) at an anchor position, so the kernels add the sparse
//                                 correction  y[m, r] += (anchor_value − scale(r, c) · code_stored(r, c)) · x̃[m, c]
//                                 (x̃ = x for A16, the dequantized q/s for A8), after the dense sum, in index
//                                 order: W_eff is exactly export/packed_format.h's effective weight.
//
// Activation modes:
//   A16 (packed_gemv_f32): x fp32 [M, in]. Per row and group: acc_g = Σ_{c∈g} code_c · x_c in fp32, then
//     y = Σ_g scale_g · acc_g (groups in order), then anchors. The AVX2 path sums each group in 8 lanes × U
//     accumulators (U = 4, 2, 1 for M = 1, 2-3, ≥4 rows in flight; 8-column chunk k of a group goes to
//     accumulator k mod U, lane l takes columns ≡ l mod 8; then a fixed reduction), the scalar path and the
//     reference sum sequentially, so results differ by fp32 rounding only:
//     |y − y_ref| ≤ 1e-5 · Σ_c |W_eff[r,c] · x_c| (what tests check; typically ~1e-7 relative).
//   A8 / A4 (packed_gemv_i8): x quantized per token exactly as BitLinear's activation quantizer
//     (kernels/bitlinear_cpu.cpp: s = Qp / max(max|x|, 1e-5), q = clamp(round_half_even(x·s), −Qp−1, Qp),
//     Qp = 127 or 7) by quantize_activations_per_token. Per row: isum_g = Σ_{c∈g} code_c · q_c in int32 (exact),
//     acc = Σ_g float(isum_g) · scale_g in fp32 in group order, y = acc / s, then anchors with x̃_c = float(q_c)/s.
//     Every implementation performs these fp32 operations in this order, so the AVX2, scalar and reference
//     results are bit-identical.
//
// Threads: output rows are split into `threads` contiguous chunks run through at::parallel_for (so the real
// parallelism is min(threads, at::get_num_threads())); each row's arithmetic does not depend on the split, so
// any thread count gives bit-identical results. threads <= 0 means at::get_num_threads().
// Implementations: GemvImpl::automatic picks AVX2+FMA+F16C when the CPU has them (__builtin_cpu_supports) and the
// layout allows (binary: group_size % 8 == 0 or a single group; ternary: group_size % 4 == 0 or one group;
// A8 additionally needs group_size % 32 == 0 or one group), else the scalar loop.
// Errors: std::invalid_argument for inconsistent views (sizes, null pointers, M < 1).
#pragma once

#include <cstdint>
#include <vector>

#include "kernels/quant_types.h"

namespace bitforge::kernels {

enum class GemvImpl { automatic, scalar, avx2 };

struct PackedMatrixView {
  WeightQuantizer quant = WeightQuantizer::binary;
  int64_t out = 0, in = 0;
  int64_t group_size = 0;           ///< columns per scale (in for tensor/channel)
  int64_t scale_rows = 1;           ///< 1 or out
  const uint8_t* codes = nullptr;   ///< [out, row_bytes()]
  const uint16_t* scales = nullptr; ///< fp16 bits [scale_rows, in / group_size]
  const int64_t* anchor_index = nullptr;
  const float* anchor_value = nullptr;
  int64_t n_anchors = 0;

  int64_t row_bytes() const { return quant == WeightQuantizer::binary ? (in + 7) / 8 : (in + 3) / 4; }
  int64_t n_groups() const { return in / group_size; }
  /// Bytes the view's data occupies (codes + scales + anchor index/value).
  int64_t packed_bytes() const { return out * row_bytes() + scale_rows * n_groups() * 2 + n_anchors * 12; }
};

/// Throws std::invalid_argument naming what is inconsistent.
void check_view(const PackedMatrixView& w);

/// True when the running CPU has AVX2, FMA and F16C.
bool cpu_has_avx2();

/// How many distinct OS threads a `threads`-way split of the kernels' work really runs on (the same
/// detail::for_chunks / at::parallel_for path every kernel here uses): min(threads, at::get_num_threads()) when the
/// library was built with OpenMP as it must be, 1 when at::parallel_for was compiled serial. For diagnostics and the
/// test that guards the build. threads <= 0 means at::get_num_threads().
int parallel_threads_used(int threads);

/// A16: x fp32 [M, in] row-major, y fp32 [M, out] (overwritten).
void packed_gemv_f32(const PackedMatrixView& w, const float* x, int64_t M, float* y, int threads = 1,
                     GemvImpl impl = GemvImpl::automatic);

/// Per-token absmax quantization (bits 8 → Qp 127, 4 → Qp 7) of x [M, in]: q [M, in] int8, s [M] with
/// x̂ = q / s. Bit-identical to ops::quantize_activation_per_token.
void quantize_activations_per_token(const float* x, int64_t M, int64_t in, int bits, int8_t* q, float* s);

/// A8/A4: q [M, in] int8 in [−Qp, Qp] (−Qp−1 is not produced by quantize_activations_per_token), s [M].
void packed_gemv_i8(const PackedMatrixView& w, const int8_t* q, const float* s, int64_t M, float* y,
                    int threads = 1, GemvImpl impl = GemvImpl::automatic);

/// Row r of W_eff (fp32 [in]) — for an embedding lookup in a packed table.
void packed_dequant_row(const PackedMatrixView& w, int64_t r, float* out);

// ---- table-lookup (LUT) kernels on a repacked layout ------------------------------------------------------
/// A packed matrix re-laid out once (at load time) for table-lookup GEMV/GEMM, the method of T-MAC (Wei et al.,
/// "T-MAC: CPU Renaissance via Table Lookup for Low-Bit LLM Deployment on Edge", arXiv:2407.00088) and of
/// bitnet.cpp's TL kernels: instead of decoding every weight, each run of 4 binary (or 2 ternary) columns forms a
/// 4-bit index n into a 16-entry table T_j[n] = Σ_i code_i(n) · x_{j,i}, built once per activation row and shared by
/// all output rows; one AVX2 `vpshufb` (A8) or `vpermps` pair (A16) then looks up 32 (A8) / 8 (A16) rows at a time.
///
/// Layout (owned, independent of the view's memory once constructed): rows in blocks of 32 (the last block padded
/// with zero bytes; padded rows are never written); block b holds, for byte column k = 0..row_bytes−1, the 32 bytes
/// codes[(32b + i) · row_bytes + k], i = 0..31 — a byte transpose of the packed rows, so the low nibble of a byte is
/// column group j = 2k and the high nibble j = 2k + 1 (binary: 4 columns per group, ternary: 2). Scales are fp16
/// [block][group][32 rows]; anchors keep their flat index and hold the precomputed correction
/// δ = value − scale · code_stored (the same fp32 operations as the row-wise kernels).
///
/// Arithmetic (all implementations — AVX2 and the scalar fallback — perform the same fp32 operations in the same
/// order, so their results are bit-identical; tests check this):
///   A8: T_j[n] in int16 (exact), per-row sums in int16 over at most 16 bytes (≤ 16 · 2 · 512 < 2^15), widened to
///       int32 per group: isum_g is exactly Σ_{c∈g} code_c · q_c, and y = (Σ_g float(isum_g) · scale_g) / s in group
///       order, then anchors — bit-identical to packed_gemv_i8 and packed_gemv_i8_reference.
///   A16: binary T_j[n] = ((±x_0 ± x_1) ± x_2) ± x_3, ternary T_j[n] = v_0 + v_1 with v = (code − 1) · x, in fp32;
///       per row and group a = Σ_{even j} T_j, b = Σ_{odd j} T_j (each sequential in j), y = Σ_g scale_g · (a + b)
///       (product, then sum, never fused), then anchors. Against the exact (double) product the error is fp32
///       rounding: |y − y_ref| ≤ 1e-5 · Σ_c |W_eff[r,c] · x_c| (tests check it).
/// Requirements (supports()): binary group_size % 8 == 0, ternary group_size % 4 == 0; ternary codes ≤ 2.
/// Threads: activation rows go in chunks of 8 whose tables are built together. With one chunk (decode), its row
/// blocks are split into `threads` contiguous ranges; with several (prefill, batches), the chunks are split across
/// threads, each building its own tables. Results do not depend on the split. threads <= 0: at::get_num_threads().
/// Errors: std::invalid_argument from the constructor for an inconsistent view, an unsupported group size or a
/// ternary code 3 (naming row and column); from gemv_* for M < 1 / null pointers / AVX2 requested but unavailable.
class RepackedMatrix {
 public:
  /// True when the view's layout can be repacked (see Requirements).
  static bool supports(const PackedMatrixView& w);
  explicit RepackedMatrix(const PackedMatrixView& w);

  /// A16: x fp32 [M, in], y fp32 [M, out] (overwritten).
  void gemv_f32(const float* x, int64_t M, float* y, int threads = 1, GemvImpl impl = GemvImpl::automatic) const;
  /// A8/A4: q int8 [M, in] (from quantize_activations_per_token), s [M]; y fp32 [M, out].
  void gemv_i8(const int8_t* q, const float* s, int64_t M, float* y, int threads = 1,
               GemvImpl impl = GemvImpl::automatic) const;

  WeightQuantizer quant() const { return quant_; }
  int64_t out() const { return out_; }
  int64_t in() const { return in_; }
  /// Bytes held: repacked codes (incl. block padding) + fp16 scales + anchors (index 8 B + δ 4 B).
  int64_t bytes() const;

 private:
  WeightQuantizer quant_ = WeightQuantizer::binary;
  int64_t out_ = 0, in_ = 0, group_size_ = 0, n_groups_ = 0, blocks_ = 0, row_bytes_ = 0;
  std::vector<uint8_t> codes_;     // [blocks][row_bytes][32]
  std::vector<uint16_t> scales_;   // [blocks][n_groups][32] fp16 bits
  std::vector<int64_t> anchor_index_;
  std::vector<float> anchor_delta_;
};

// ---- plain references (unpack → float / integer matmul), used by tests -------------------------------------
/// W_eff [out*in] fp32 exactly as export/packed_format.h defines it.
std::vector<float> packed_unpack_reference(const PackedMatrixView& w);
/// A16 reference: unpacks the codes, sums each group sequentially in fp32, combines as documented.
void packed_gemv_f32_reference(const PackedMatrixView& w, const float* x, int64_t M, float* y);
/// A16 reference in double over W_eff (the "true" value the tolerance is stated against).
void packed_gemv_f64_reference(const PackedMatrixView& w, const float* x, int64_t M, double* y);
/// A8 reference: unpack → int32 dot per group → the documented fp32 combination. Bit-exact target.
void packed_gemv_i8_reference(const PackedMatrixView& w, const int8_t* q, const float* s, int64_t M, float* y);

}  // namespace bitforge::kernels
