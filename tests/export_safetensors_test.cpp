// safetensors reader/writer (no LibTorch): round trip, byte-exact agreement with the reference serializer's
// documented output, and hostile files that must be rejected with a specific message.
#include "export/safetensors.h"

#include <cstring>

#include "tests/fixtures/export/test_util.h"

using bitforge::formats::Dtype;
using bitforge::formats::FormatError;
using bitforge::formats::SafetensorsFile;
using bitforge::formats::SafetensorsWriter;
using bitforge::test::TempDir;

namespace {

// A file image from a header string and data bytes; `len` overrides the u64 header length.
std::vector<uint8_t> raw(const std::string& header, const std::vector<uint8_t>& data, int64_t len = -1) {
  std::vector<uint8_t> b(8);
  const uint64_t n = len < 0 ? header.size() : static_cast<uint64_t>(len);
  for (int i = 0; i < 8; ++i) b[i] = static_cast<uint8_t>(n >> (8 * i));
  b.insert(b.end(), header.begin(), header.end());
  b.insert(b.end(), data.begin(), data.end());
  return b;
}

// Writes the image to a file and opens it with the mmap reader (the path the product uses).
void open_file(const std::vector<uint8_t>& bytes) {
  TempDir d;
  const std::string p = d.file("bad.safetensors");
  bitforge::test::write_bytes(p, bytes);
  SafetensorsFile f(p);
}

#define EXPECT_BAD(bytes, fragment) BF_EXPECT_THROW_MSG(open_file(bytes), FormatError, fragment)

}  // namespace

TEST(ExportSafetensors, ReferenceSerializationBytes) {
  // safetensors tensor.rs test_serialization: "attn.0" F32 [1,2,3] = 0..5 serializes to exactly these bytes.
  SafetensorsWriter w;
  const float v[6] = {0, 1, 2, 3, 4, 5};
  w.add("attn.0", Dtype::F32, {1, 2, 3}, v, sizeof v);
  const std::vector<uint8_t> expected = {
      64, 0, 0, 0, 0, 0, 0, 0, 123, 34, 97, 116, 116, 110, 46, 48, 34, 58, 123, 34, 100, 116, 121, 112, 101, 34, 58,
      34, 70, 51, 50, 34, 44, 34, 115, 104, 97, 112, 101, 34, 58, 91, 49, 44, 50, 44, 51, 93, 44, 34, 100, 97, 116,
      97, 95, 111, 102, 102, 115, 101, 116, 115, 34, 58, 91, 48, 44, 50, 52, 93, 125, 125, 0, 0, 0, 0, 0, 0, 128, 63,
      0, 0, 0, 64, 0, 0, 64, 64, 0, 0, 128, 64, 0, 0, 160, 64};
  EXPECT_EQ(w.serialize(), expected);
  // test_empty with metadata {"framework": "pt"}: header padded with spaces to a multiple of 8.
  SafetensorsWriter e;
  e.set_metadata("framework", "pt");
  const std::vector<uint8_t> expected_md = {40,  0,   0,   0,   0,   0,   0,   0,   123, 34,  95,  95,  109, 101, 116, 97,
                                            100, 97,  116, 97,  95,  95,  34,  58,  123, 34,  102, 114, 97,  109, 101, 119,
                                            111, 114, 107, 34,  58,  34,  112, 116, 34,  125, 125, 32,  32,  32,  32,  32};
  EXPECT_EQ(e.serialize(), expected_md);
}

TEST(ExportSafetensors, RoundTripAllDtypesAndAlignment) {
  TempDir d;
  SafetensorsWriter w;
  const Dtype all[] = {Dtype::BOOL, Dtype::U8,  Dtype::I8,  Dtype::F8_E5M2, Dtype::F8_E4M3, Dtype::I16, Dtype::U16, Dtype::F16,
                       Dtype::BF16, Dtype::I32, Dtype::U32, Dtype::F32,     Dtype::F64,     Dtype::I64, Dtype::U64};
  std::map<std::string, std::vector<uint8_t>> want;
  int k = 0;
  for (Dtype dt : all) {
    const uint64_t n = 3 + k;
    std::vector<uint8_t> b(n * bitforge::formats::dtype_size(dt));
    for (size_t i = 0; i < b.size(); ++i) b[i] = static_cast<uint8_t>((dt == Dtype::BOOL ? (i & 1) : i * 7 + k));
    const std::string name = std::string("t.") + bitforge::formats::dtype_name(dt);
    w.add(name, dt, {1, n}, b);
    want[name] = b;
    ++k;
  }
  w.add("empty", Dtype::F32, {0, 4}, nullptr, 0);
  w.set_metadata("note", "ünïcödé \"quoted\"\n");
  const std::string p = d.file("all.safetensors");
  w.write(p);
  EXPECT_FALSE(bitforge::test::file_exists(p + ".tmp"));
  SafetensorsFile f(p);
  EXPECT_EQ(f.header_length() % 8, 0u);
  EXPECT_EQ(f.metadata().at("note"), "ünïcödé \"quoted\"\n");
  EXPECT_EQ(f.tensors().size(), want.size() + 1);
  for (const auto& [name, b] : want) {
    const auto& t = f.at(name);
    const auto s = f.bytes(t);
    ASSERT_EQ(s.size, b.size()) << name;
    EXPECT_EQ(std::memcmp(s.data, b.data(), b.size()), 0) << name;
    // Descending-alignment order keeps every tensor aligned to its element size within the data section.
    EXPECT_EQ(t.data_begin % bitforge::formats::dtype_size(t.dtype), 0u) << name;
  }
  EXPECT_EQ(f.at("empty").shape, (std::vector<uint64_t>{0, 4}));
  EXPECT_EQ(f.find("nope"), nullptr);
  BF_EXPECT_THROW_MSG(f.at("nope"), FormatError, "no tensor 'nope'");
}

TEST(ExportSafetensors, WriterRejectsBadInput) {
  SafetensorsWriter w;
  const float v[2] = {1, 2};
  EXPECT_THROW(w.add("a", Dtype::F32, {3}, v, sizeof v), std::invalid_argument);
  w.add("a", Dtype::F32, {2}, v, sizeof v);
  EXPECT_THROW(w.add("a", Dtype::F32, {2}, v, sizeof v), std::invalid_argument);
  EXPECT_THROW(w.add("__metadata__", Dtype::F32, {2}, v, sizeof v), std::invalid_argument);
  EXPECT_THROW(w.add("b", Dtype::F32, {1ull << 62, 1ull << 62}, v, sizeof v), std::invalid_argument);
}

// ---- hostile files ----

TEST(ExportSafetensorsHostile, EmptyFile) { EXPECT_BAD({}, "file is 0 bytes; expected at least 8"); }

TEST(ExportSafetensorsHostile, SevenByteFile) {
  EXPECT_BAD(std::vector<uint8_t>(7, 0), "file is 7 bytes; expected at least 8");
}

TEST(ExportSafetensorsHostile, HeaderLengthPastEndOfFile) {
  EXPECT_BAD(raw("{}", {}, 4096), "header length 4096 at byte 0 runs past the end of the file");
}

TEST(ExportSafetensorsHostile, HeaderLengthHuge) {
  EXPECT_BAD(raw("{}", {}, 100'000'001), "exceeds the 100000000-byte limit");
  EXPECT_BAD(raw("{}", {}, INT64_MAX), "exceeds the 100000000-byte limit");
}

TEST(ExportSafetensorsHostile, HeaderNotJson) { EXPECT_BAD(raw("{\"a\": [1, 2", {}), "is not valid UTF-8 JSON"); }

TEST(ExportSafetensorsHostile, HeaderNotUtf8) {
  EXPECT_BAD(raw(std::string("{\"a\xff\": 1}"), {}), "is not valid UTF-8 JSON");
}

TEST(ExportSafetensorsHostile, HeaderJsonNotObject) {
  EXPECT_BAD(raw("[1, 2, 3]", {}), "header is a JSON array; expected a JSON object");
}

TEST(ExportSafetensorsHostile, MetadataValueNotString) {
  EXPECT_BAD(raw(R"({"__metadata__": {"step": 5}})", {}), "__metadata__['step'] is a JSON number; expected a string");
}

TEST(ExportSafetensorsHostile, UnknownDtype) {
  EXPECT_BAD(raw(R"({"w": {"dtype": "F4", "shape": [2], "data_offsets": [0, 2]}})", {0, 0}),
             "tensor 'w': unknown dtype 'F4'");
}

TEST(ExportSafetensorsHostile, NegativeShape) {
  EXPECT_BAD(raw(R"({"w": {"dtype": "U8", "shape": [2, -1], "data_offsets": [0, 2]}})", {0, 0}),
             "tensor 'w': shape[1] = -1; expected a non-negative integer");
}

TEST(ExportSafetensorsHostile, NonIntegerShape) {
  EXPECT_BAD(raw(R"({"w": {"dtype": "U8", "shape": [2.5], "data_offsets": [0, 2]}})", {0, 0}),
             "shape[0] = 2.5; expected a non-negative integer");
  EXPECT_BAD(raw(R"({"w": {"dtype": "U8", "shape": ["2"], "data_offsets": [0, 2]}})", {0, 0}),
             "expected a non-negative integer");
}

TEST(ExportSafetensorsHostile, ShapeProductOverflow) {
  EXPECT_BAD(raw(R"({"w": {"dtype": "U8", "shape": [4294967296, 4294967296], "data_offsets": [0, 0]}})", {}),
             "element count overflows 64 bits");
  // numel fits but numel × 8 does not.
  EXPECT_BAD(raw(R"({"w": {"dtype": "F64", "shape": [4611686018427387904], "data_offsets": [0, 0]}})", {}),
             "byte size overflows 64 bits");
}

TEST(ExportSafetensorsHostile, ByteSizeMismatch) {
  EXPECT_BAD(raw(R"({"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 12]}})", std::vector<uint8_t>(12)),
             "span 12 bytes; expected 16 (byte size mismatch");
}

TEST(ExportSafetensorsHostile, OffsetsOutOfRange) {
  EXPECT_BAD(raw(R"({"w": {"dtype": "U8", "shape": [1000], "data_offsets": [0, 1000]}})", std::vector<uint8_t>(8)),
             "run past the end of the data section (8 bytes");
}

TEST(ExportSafetensorsHostile, EndBeforeBegin) {
  EXPECT_BAD(raw(R"({"w": {"dtype": "U8", "shape": [0], "data_offsets": [4, 0]}})", std::vector<uint8_t>(4)),
             "end < begin");
}

TEST(ExportSafetensorsHostile, OverlappingOffsets) {
  EXPECT_BAD(raw(R"({"a": {"dtype": "U8", "shape": [8], "data_offsets": [0, 8]},
                     "b": {"dtype": "U8", "shape": [8], "data_offsets": [4, 12]}})",
                 std::vector<uint8_t>(12)),
             "tensor 'b' data_offsets [4, 12] overlap the previous tensor, which ends at 8");
}

TEST(ExportSafetensorsHostile, HoleBetweenTensors) {
  EXPECT_BAD(raw(R"({"a": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]},
                     "b": {"dtype": "U8", "shape": [4], "data_offsets": [8, 12]}})",
                 std::vector<uint8_t>(12)),
             "leave a hole: data bytes [4, 8) belong to no tensor");
  EXPECT_BAD(raw(R"({"a": {"dtype": "U8", "shape": [4], "data_offsets": [4, 8]}})", std::vector<uint8_t>(8)),
             "leave a hole: data bytes [0, 4)");
}

TEST(ExportSafetensorsHostile, TrailingBytesNotCovered) {
  const std::string h = R"({"a": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]}})";
  EXPECT_BAD(raw(h, std::vector<uint8_t>(9)),
             "tensors cover 4 of 9 data bytes; trailing bytes from file offset " + std::to_string(8 + h.size() + 4));
}

TEST(ExportSafetensorsHostile, TruncatedData) {
  SafetensorsWriter w;
  std::vector<uint8_t> b(64, 1);
  w.add("a", Dtype::F32, {16}, b);
  auto img = w.serialize();
  img.resize(img.size() - 5);
  EXPECT_BAD(img, "run past the end of the data section");
}

TEST(ExportSafetensorsHostile, DuplicateName) {
  EXPECT_BAD(raw(R"({"a": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]},
                     "a": {"dtype": "U8", "shape": [4], "data_offsets": [4, 8]}})",
                 std::vector<uint8_t>(8)),
             "tensor name 'a' appears twice in the header");
}

TEST(ExportSafetensorsHostile, MissingFields) {
  EXPECT_BAD(raw(R"({"a": {"dtype": "U8", "shape": [4]}})", std::vector<uint8_t>(4)),
             "\"data_offsets\" = <missing>; expected [begin, end]");
  EXPECT_BAD(raw(R"({"a": {"shape": [4], "data_offsets": [0, 4]}})", std::vector<uint8_t>(4)),
             "missing or non-string \"dtype\"");
  EXPECT_BAD(raw(R"({"a": 7})", {}), "tensor 'a' is a JSON number");
}

TEST(ExportSafetensorsHostile, ErrorNamesTheFile) {
  BF_EXPECT_THROW_MSG(SafetensorsFile::from_bytes(std::vector<uint8_t>(3), "my/file.safetensors"), FormatError,
                      "my/file.safetensors: file is 3 bytes");
}
