// Reference bit packers: exact layouts on hand-checked bytes, round trips for widths that are not multiples
// of 8 / 32 / 128, and rejection of invalid codes.
#include "export/bitpack.h"

#include <random>

#include "tests/fixtures/export/test_util.h"

using namespace bitforge::formats;

namespace {
std::vector<int8_t> random_codes(int64_t n, bool ternary, uint32_t seed) {
  std::mt19937 g(seed);
  std::vector<int8_t> c(n);
  for (auto& v : c) v = ternary ? static_cast<int8_t>(int(g() % 3) - 1) : (g() & 1 ? 1 : -1);
  return c;
}
}  // namespace

TEST(ExportBitpack, SignLayoutLsbFirst) {
  // cols = 10: row_bytes 2. Row 0: +1 at j = 0, 3, 9; row 1: all -1.
  std::vector<int8_t> c(20, -1);
  c[0] = c[3] = c[9] = 1;
  const auto p = pack_signs(c.data(), 2, 10);
  EXPECT_EQ(p, (std::vector<uint8_t>{0x09, 0x02, 0x00, 0x00}));
  EXPECT_EQ(unpack_signs(p.data(), p.size(), 2, 10), c);
}

TEST(ExportBitpack, Ternary2bitLayout) {
  // q = [-1, 0, 1, 1, 0] -> codes [0, 1, 2, 2, 1]: byte0 = 0 | 1<<2 | 2<<4 | 2<<6 = 0xA4, byte1 = 1.
  const std::vector<int8_t> c = {-1, 0, 1, 1, 0};
  const auto p = pack_ternary_2bit(c.data(), 1, 5);
  EXPECT_EQ(p, (std::vector<uint8_t>{0xA4, 0x01}));
  EXPECT_EQ(unpack_ternary_2bit(p.data(), p.size(), 1, 5), c);
}

TEST(ExportBitpack, Base3Layout) {
  // trits t = q + 1 = [2, 0, 1, 2, 2, | 1]: byte0 = 2 + 0 + 9 + 54 + 162 = 227, byte1 = 1.
  const std::vector<int8_t> c = {1, -1, 0, 1, 1, 0};
  const auto p = pack_ternary_base3(c.data(), 1, 6);
  EXPECT_EQ(p, (std::vector<uint8_t>{227, 1}));
  EXPECT_EQ(unpack_ternary_base3(p.data(), p.size(), 1, 6), c);
}

TEST(ExportBitpack, RoundTripOddWidths) {
  for (int64_t cols : {1, 7, 8, 9, 33, 127, 130, 257}) {
    for (int64_t rows : {1, 3}) {
      const auto b = random_codes(rows * cols, false, static_cast<uint32_t>(cols * 10 + rows));
      const auto pb = pack_signs(b.data(), rows, cols);
      EXPECT_EQ(static_cast<int64_t>(pb.size()), rows * ((cols + 7) / 8));
      EXPECT_EQ(unpack_signs(pb.data(), pb.size(), rows, cols), b) << cols;
      const auto t = random_codes(rows * cols, true, static_cast<uint32_t>(cols * 10 + rows + 1));
      const auto pt = pack_ternary_2bit(t.data(), rows, cols);
      EXPECT_EQ(static_cast<int64_t>(pt.size()), rows * ((cols + 3) / 4));
      EXPECT_EQ(unpack_ternary_2bit(pt.data(), pt.size(), rows, cols), t) << cols;
      const auto p3 = pack_ternary_base3(t.data(), rows, cols);
      EXPECT_EQ(static_cast<int64_t>(p3.size()), rows * ((cols + 4) / 5));
      EXPECT_EQ(unpack_ternary_base3(p3.data(), p3.size(), rows, cols), t) << cols;
      // Padding bits are zero: the last byte of each row has no bits beyond cols.
      if (cols % 8) {
        EXPECT_EQ(pb[(cols + 7) / 8 - 1] >> (cols % 8), 0);
      }
      if (cols % 4) {
        EXPECT_EQ(pt[(cols + 3) / 4 - 1] >> (2 * (cols % 4)), 0);
      }
    }
  }
}

TEST(ExportBitpack, RejectsInvalidInput) {
  const std::vector<int8_t> zero = {1, 0, -1};
  BF_EXPECT_THROW_MSG(pack_signs(zero.data(), 1, 3), std::invalid_argument, "code at row 0, col 1 is 0; expected -1 or +1");
  const std::vector<int8_t> two = {1, 2};
  BF_EXPECT_THROW_MSG(pack_ternary_2bit(two.data(), 1, 2), std::invalid_argument, "row 0, col 1 is 2");
  BF_EXPECT_THROW_MSG(pack_ternary_base3(two.data(), 1, 2), std::invalid_argument, "row 0, col 1 is 2");
  const uint8_t bad2 = 0x0C;  // element 1 has code 3
  BF_EXPECT_THROW_MSG(unpack_ternary_2bit(&bad2, 1, 1, 4), std::invalid_argument, "col 1 is 3");
  const uint8_t bad3 = 243;
  BF_EXPECT_THROW_MSG(unpack_ternary_base3(&bad3, 1, 1, 5), std::invalid_argument, "base-3 byte <= 242");
  const uint8_t one = 0;
  BF_EXPECT_THROW_MSG(unpack_signs(&one, 1, 2, 8), std::invalid_argument, "packed buffer has 1 bytes; expected 2");
  EXPECT_THROW(pack_signs(zero.data(), 1, 0), std::invalid_argument);
}
