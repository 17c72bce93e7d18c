#include "export/bitpack.h"

#include <stdexcept>
#include <string>

namespace bitforge::formats {

namespace {

void check_dims(int64_t rows, int64_t cols, const char* what) {
  if (rows < 0 || cols < 1)
    throw std::invalid_argument(std::string(what) + ": rows = " + std::to_string(rows) + ", cols = " +
                                std::to_string(cols) + "; expected rows >= 0 and cols >= 1");
}

[[noreturn]] void bad_code(const char* what, int64_t r, int64_t c, int v, const char* expected) {
  throw std::invalid_argument(std::string(what) + ": code at row " + std::to_string(r) + ", col " + std::to_string(c) +
                              " is " + std::to_string(v) + "; expected " + expected);
}

void check_size(const char* what, size_t got, int64_t rows, int64_t row_bytes) {
  if (got != static_cast<size_t>(rows * row_bytes))
    throw std::invalid_argument(std::string(what) + ": packed buffer has " + std::to_string(got) + " bytes; expected " +
                                std::to_string(rows * row_bytes));
}

}  // namespace

int64_t sign_row_bytes(int64_t cols) { return (cols + 7) / 8; }
int64_t ternary2_row_bytes(int64_t cols) { return (cols + 3) / 4; }
int64_t ternary3_row_bytes(int64_t cols) { return (cols + 4) / 5; }

std::vector<uint8_t> pack_signs(const int8_t* codes, int64_t rows, int64_t cols) {
  check_dims(rows, cols, "pack_signs");
  const int64_t rb = sign_row_bytes(cols);
  std::vector<uint8_t> out(static_cast<size_t>(rows * rb), 0);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < cols; ++j) {
      const int v = codes[r * cols + j];
      if (v == 1)
        out[r * rb + j / 8] |= static_cast<uint8_t>(1u << (j % 8));
      else if (v != -1)
        bad_code("pack_signs", r, j, v, "-1 or +1");
    }
  return out;
}

std::vector<int8_t> unpack_signs(const uint8_t* packed, size_t packed_size, int64_t rows, int64_t cols) {
  check_dims(rows, cols, "unpack_signs");
  const int64_t rb = sign_row_bytes(cols);
  check_size("unpack_signs", packed_size, rows, rb);
  std::vector<int8_t> out(static_cast<size_t>(rows * cols));
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < cols; ++j) out[r * cols + j] = ((packed[r * rb + j / 8] >> (j % 8)) & 1) ? 1 : -1;
  return out;
}

std::vector<uint8_t> pack_ternary_2bit(const int8_t* codes, int64_t rows, int64_t cols) {
  check_dims(rows, cols, "pack_ternary_2bit");
  const int64_t rb = ternary2_row_bytes(cols);
  std::vector<uint8_t> out(static_cast<size_t>(rows * rb), 0);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < cols; ++j) {
      const int v = codes[r * cols + j];
      if (v < -1 || v > 1) bad_code("pack_ternary_2bit", r, j, v, "-1, 0 or +1");
      out[r * rb + j / 4] |= static_cast<uint8_t>((v + 1) << (2 * (j % 4)));
    }
  return out;
}

std::vector<int8_t> unpack_ternary_2bit(const uint8_t* packed, size_t packed_size, int64_t rows, int64_t cols) {
  check_dims(rows, cols, "unpack_ternary_2bit");
  const int64_t rb = ternary2_row_bytes(cols);
  check_size("unpack_ternary_2bit", packed_size, rows, rb);
  std::vector<int8_t> out(static_cast<size_t>(rows * cols));
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < cols; ++j) {
      const int code = (packed[r * rb + j / 4] >> (2 * (j % 4))) & 3;
      if (code == 3) bad_code("unpack_ternary_2bit", r, j, code, "a 2-bit code 0, 1 or 2");
      out[r * cols + j] = static_cast<int8_t>(code - 1);
    }
  return out;
}

std::vector<uint8_t> pack_ternary_base3(const int8_t* codes, int64_t rows, int64_t cols) {
  check_dims(rows, cols, "pack_ternary_base3");
  const int64_t rb = ternary3_row_bytes(cols);
  static const int pow3[5] = {1, 3, 9, 27, 81};
  std::vector<uint8_t> out(static_cast<size_t>(rows * rb), 0);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < cols; ++j) {
      const int v = codes[r * cols + j];
      if (v < -1 || v > 1) bad_code("pack_ternary_base3", r, j, v, "-1, 0 or +1");
      out[r * rb + j / 5] = static_cast<uint8_t>(out[r * rb + j / 5] + (v + 1) * pow3[j % 5]);
    }
  return out;
}

std::vector<int8_t> unpack_ternary_base3(const uint8_t* packed, size_t packed_size, int64_t rows, int64_t cols) {
  check_dims(rows, cols, "unpack_ternary_base3");
  const int64_t rb = ternary3_row_bytes(cols);
  check_size("unpack_ternary_base3", packed_size, rows, rb);
  std::vector<int8_t> out(static_cast<size_t>(rows * cols));
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t b = 0; b < rb; ++b) {
      int byte = packed[r * rb + b];
      if (byte > 242) bad_code("unpack_ternary_base3", r, b * 5, byte, "a base-3 byte <= 242");
      for (int k = 0; k < 5; ++k, byte /= 3) {
        const int64_t j = b * 5 + k;
        if (j < cols) out[r * cols + j] = static_cast<int8_t>(byte % 3 - 1);
      }
    }
  return out;
}

}  // namespace bitforge::formats
