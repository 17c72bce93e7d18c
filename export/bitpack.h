// Reference (scalar) packers for the packed native format. Bit-exact; no LibTorch.
//
// Layouts, per row r of a [rows, cols] matrix, rows padded to whole bytes (padding bits are 0):
//   binary signs   row_bytes = ceil(cols/8); element j at byte r*row_bytes + j/8, bit j%8 (LSB first);
//                  bit 1 = +1, bit 0 = -1.
//   ternary 2-bit  row_bytes = ceil(cols/4); element j at byte r*row_bytes + j/4, bits 2*(j%4)..+1 (LSB first);
//                  code = q + 1 in {0, 1, 2} for q in {-1, 0, +1}; code 3 is invalid.
//   ternary base-3 row_bytes = ceil(cols/5); element j at byte r*row_bytes + j/5 as trit t = q + 1 with weight
//                  3^(j%5) (byte = t0 + 3 t1 + 9 t2 + 27 t3 + 81 t4 <= 242); bytes > 242 are invalid.
// Input codes are int8 in {-1, +1} (binary) or {-1, 0, +1} (ternary); any cols >= 1.
// Invalid input (a code outside the set, rows < 0, cols < 1, wrong buffer size on unpack) throws
// std::invalid_argument naming the row and column.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace bitforge::formats {

int64_t sign_row_bytes(int64_t cols);      ///< ceil(cols / 8)
int64_t ternary2_row_bytes(int64_t cols);  ///< ceil(cols / 4)
int64_t ternary3_row_bytes(int64_t cols);  ///< ceil(cols / 5)

std::vector<uint8_t> pack_signs(const int8_t* codes, int64_t rows, int64_t cols);
std::vector<int8_t> unpack_signs(const uint8_t* packed, size_t packed_size, int64_t rows, int64_t cols);

std::vector<uint8_t> pack_ternary_2bit(const int8_t* codes, int64_t rows, int64_t cols);
std::vector<int8_t> unpack_ternary_2bit(const uint8_t* packed, size_t packed_size, int64_t rows, int64_t cols);

std::vector<uint8_t> pack_ternary_base3(const int8_t* codes, int64_t rows, int64_t cols);
std::vector<int8_t> unpack_ternary_base3(const uint8_t* packed, size_t packed_size, int64_t rows, int64_t cols);

}  // namespace bitforge::formats
