// AVX-512 tile kernels of RepackedMatrix (kernels/packed_gemv_avx512.cpp). Internal: not part of the public API.
//
// packed_gemv_avx512.cpp is compiled with per-file AVX-512 flags (kernels/CMakeLists.txt), so this header declares
// plain functions and a plain struct only — no inline function or template may be shared with that file, or the
// linker could keep its AVX-512 copy for code that runs on AVX2-only CPUs. Call these only when cpu_has_avx512().
// Layout and arithmetic: RepackedMatrix in kernels/packed_gemv.h.
#pragma once

#include <cstdint>

namespace bitforge::kernels::detail {

constexpr int64_t kTileRows = 64;  ///< rows per tile (4 sub-blocks of 16 rows, one zmm of 32-bit lanes each)

struct TileGeometry {
  int64_t out, dwords, n_groups, dwords_per_group;  ///< dwords = row_bytes / 4
  const uint8_t* codes;                              ///< tile t at t · dwords · 256: [dwords][ns][16][4]
  const uint16_t* scales;                            ///< fp16, tile t at t · n_groups · 64: [n_groups][16 ns]
};

/// A8 tables of one activation row q [in] (in % 32 == 0 binary, % 16 ternary): dwords · 256 bytes at tab.
void tables_i8_avx512(bool binary, const int8_t* q, int64_t in, uint8_t* tab);
/// A16 tables of one activation row x [in]: (in / columns per index) · 16 floats, T_j[n] at tab[16 j + n] (the
/// values and the operations of the scalar / AVX2 LUT tables).
void tables_f32_avx512(bool binary, const float* x, int64_t in, float* tab);
/// Tiles [t0, t1) for one activation row: y[r] (overwritten) for the tiles' rows r < G.out.
void tiles_i8_avx512(const TileGeometry& G, int64_t t0, int64_t t1, const uint8_t* tab, float s, float* y);
void tiles_f32_avx512(const TileGeometry& G, int64_t t0, int64_t t1, const float* tab, float* y);

}  // namespace bitforge::kernels::detail
