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
// A8 additionally needs group_size % 32 == 0 or one group), else the scalar loop. These row-wise kernels have no
// AVX-512 variant (the runtime uses RepackedMatrix below; GemvImpl::avx512 is rejected here, and an automatic
// choice capped by BITFORGE_CPU_ISA=scalar takes the scalar loop).
//
// CPU dispatch (every kernel here): the best path the running CPU supports (__builtin_cpu_supports), capped by the
// environment variable BITFORGE_CPU_ISA = avx512 | avx2 | scalar (read once per process; unset or "auto" = no cap),
// so the AVX2 and scalar paths stay testable and measurable on an AVX-512 host. best_cpu_isa() says what
// GemvImpl::automatic resolves to; cpu_features() lists what the CPU reported.
// Errors: std::invalid_argument for inconsistent views (sizes, null pointers, M < 1).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "kernels/quant_types.h"

namespace bitforge::kernels {

/// Kernel paths. avx512 = AVX-512F/BW/VL + VNNI + VBMI (+ F16C): the RepackedMatrix tile kernels.
enum class GemvImpl { automatic, scalar, avx2, avx512 };

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
/// True when the running CPU has everything the AVX-512 kernels use: AVX2/FMA/F16C and AVX-512 F, BW, VL, VNNI and
/// VBMI (vpdpbusd, vpermb). Not capped by BITFORGE_CPU_ISA.
bool cpu_has_avx512();
/// What GemvImpl::automatic resolves to on this CPU: avx512, avx2 or scalar, capped by BITFORGE_CPU_ISA.
GemvImpl best_cpu_isa();
/// "scalar", "avx2", "avx512" (and "automatic").
const char* isa_name(GemvImpl isa);
/// The x86 features the CPU reports that matter here, e.g. "avx2 fma f16c avx512f avx512bw avx512vl avx512vnni
/// avx512vbmi avx512vpopcntdq", followed by the BITFORGE_CPU_ISA cap when one is set.
std::string cpu_features();

/// How many distinct OS threads a `threads`-way split of the kernels' work really runs on (the same
/// detail::for_chunks path every kernel here uses, on kernels/thread_pool.h): min(threads, at::get_num_threads()). For diagnostics and the
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
///
/// AVX-512 tile layout (isa() == GemvImpl::avx512; chosen by the constructor when the CPU has cpu_has_avx512(), the
/// BITFORGE_CPU_ISA cap allows it and binary group_size % 32 == 0 / ternary group_size % 16 == 0): rows in tiles of
/// 64, a tile = 4 sub-blocks of 16 rows (the last tile only the ns ≤ 4 it needs, its last rows padded with zero
/// bytes); for dword column d (packed bytes 4d..4d+3 of a row), sub-block j holds 64 bytes: row i's 4 bytes at offset
/// 4i — so one zmm register holds 16 rows × 4 bytes, and each 32-bit lane belongs to one row. Tile t starts at
/// t · row_bytes · 64 and stores [d][sub < ns][16][4]; scales fp16 [tile][group][16 · ns rows].
///   A8 (AVX-512 VNNI + VBMI): per activation row and dword column, the 8 tables T_j (j = 8d..8d+7) are split exactly
///       as T = L + 64·H, L = T & 63 ∈ [0, 63] (u8), H = T >> 6 ∈ [−8, 7] (s8) (|T| ≤ 4·128), and stored as four
///       64-byte tables (low/high nibble × L/H) indexed by (byte position in the lane << 4) | nibble; one `vpermb`
///       looks up 64 nibbles of 16 rows at once and `vpdpbusd` adds L·1 and 64·H into the row's int32 lane. The
///       int32 per-group sum is exactly isum_g, combined as above: bit-identical to every other A8 path.
///   A16 (AVX-512F): per index group j one 16-float table; `vpermps` with the lane's nibble (the lane shifted by 4t)
///       looks up 16 rows at once; the even / odd index-group sums, the group combination and their order are the
///       ones above, so the result is bit-identical to the scalar and AVX2 LUT paths.
/// Method: T-MAC's table lookup (arXiv:2407.00088) and bitnet.cpp's TL kernels, with the int8 table split into
/// byte lookups summed by VNNI dot products in the spirit of ggml's AVX-512 VNNI quant dot products.
///
/// The layout is fixed at construction: gemv_* with impl = automatic runs the matrix's own path (isa()); an explicit
/// impl must be isa() or scalar-on-the-32-row-layout (scalar/avx2 matrices only); anything else throws
/// std::invalid_argument (construct with the wanted isa instead).
/// Threads: activation rows go in chunks of 8 whose tables are built together. With one chunk (decode), its row
/// blocks are split into `threads` contiguous ranges; with several (prefill, batches), the chunks are split across
/// threads, each building its own tables. Results do not depend on the split. threads <= 0: at::get_num_threads().
/// Errors: std::invalid_argument from the constructor for an inconsistent view, an unsupported group size or a
/// ternary code 3 (naming row and column); from gemv_* for M < 1 / null pointers / AVX2 requested but unavailable.
namespace detail {
/// Allocator for the repacked weights: buffers of 2 MiB or more are 2 MiB-aligned and their whole 2 MiB pages marked
/// MADV_HUGEPAGE (Linux transparent huge pages in "madvise" mode; nothing is rounded up), so that streaming the
/// weights from DRAM takes fewer TLB misses and page boundaries; BITFORGE_NO_HUGEPAGES=1 turns the hint off.
/// 64-byte aligned memory otherwise.
template <class T>
struct WeightAllocator {
  using value_type = T;
  WeightAllocator() = default;
  template <class U>
  WeightAllocator(const WeightAllocator<U>&) {}
  T* allocate(std::size_t n) { return static_cast<T*>(allocate_weight_bytes(n * sizeof(T))); }
  void deallocate(T* p, std::size_t) { free_weight_bytes(p); }
  template <class U>
  bool operator==(const WeightAllocator<U>&) const { return true; }
  template <class U>
  bool operator!=(const WeightAllocator<U>&) const { return false; }
  static void* allocate_weight_bytes(std::size_t bytes);
  static void free_weight_bytes(void* p);
};
}  // namespace detail

class RepackedMatrix {
 public:
  /// True when the view's layout can be repacked (see Requirements).
  static bool supports(const PackedMatrixView& w);
  /// True when the view also fits the AVX-512 tile layout (binary group_size % 32 == 0, ternary % 16 == 0); says
  /// nothing about the CPU.
  static bool supports_avx512_layout(const PackedMatrixView& w);
  /// isa: automatic = the best path the CPU (capped by BITFORGE_CPU_ISA) and the layout allow; avx512 / avx2 /
  /// scalar ask for that path (std::invalid_argument when the CPU or the layout cannot run it).
  explicit RepackedMatrix(const PackedMatrixView& w, GemvImpl isa = GemvImpl::automatic);

  /// A16: x fp32 [M, in], y fp32 [M, out] (overwritten).
  void gemv_f32(const float* x, int64_t M, float* y, int threads = 1, GemvImpl impl = GemvImpl::automatic) const;
  /// A8/A4: q int8 [M, in] (from quantize_activations_per_token), s [M]; y fp32 [M, out].
  void gemv_i8(const int8_t* q, const float* s, int64_t M, float* y, int threads = 1,
               GemvImpl impl = GemvImpl::automatic) const;

  WeightQuantizer quant() const { return quant_; }
  /// The path this matrix runs (and whose layout it holds): avx512, avx2 or scalar.
  GemvImpl isa() const { return isa_; }
  int64_t out() const { return out_; }
  int64_t in() const { return in_; }
  /// Bytes held: repacked codes (incl. block padding) + fp16 scales + anchors (index 8 B + δ 4 B).
  int64_t bytes() const;

 private:
  WeightQuantizer quant_ = WeightQuantizer::binary;
  GemvImpl isa_ = GemvImpl::scalar;
  int64_t out_ = 0, in_ = 0, group_size_ = 0, n_groups_ = 0, blocks_ = 0, row_bytes_ = 0;
  std::vector<uint8_t, detail::WeightAllocator<uint8_t>> codes_;  // [blocks][row_bytes][32], or avx512: [tiles][row_bytes/4][ns][16][4]
  std::vector<uint16_t> scales_;   // [blocks][n_groups][32] fp16 bits, or avx512: [tiles][n_groups][16 ns]
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
