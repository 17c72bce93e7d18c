// GGUF v3 writer/reader: round trip of every KV type and tensor types, byte layout checks, hostile files.
#include "export/gguf.h"

#include <cstring>
#include <random>

#include "tests/fixtures/export/test_util.h"

using namespace bitforge::formats;
using bitforge::test::TempDir;

namespace {

struct Bytes {
  std::vector<uint8_t> b;
  template <typename T>
  Bytes& le(T v) {
    const auto* p = reinterpret_cast<const uint8_t*>(&v);
    b.insert(b.end(), p, p + sizeof(T));
    return *this;
  }
  Bytes& str(const std::string& s) {
    le<uint64_t>(s.size());
    b.insert(b.end(), s.begin(), s.end());
    return *this;
  }
  Bytes& raw(const char* s, size_t n) {
    b.insert(b.end(), s, s + n);
    return *this;
  }
  Bytes& pad(size_t a) {
    b.resize((b.size() + a - 1) / a * a, 0);
    return *this;
  }
};

// Header with one tensor info; the caller finishes the file.
Bytes one_tensor(uint32_t type, std::vector<uint64_t> ne, uint64_t offset) {
  Bytes x;
  x.raw("GGUF", 4).le<uint32_t>(3).le<uint64_t>(1).le<uint64_t>(0);
  x.str("w").le<uint32_t>(static_cast<uint32_t>(ne.size()));
  for (auto d : ne) x.le<uint64_t>(d);
  x.le<uint32_t>(type).le<uint64_t>(offset);
  return x;
}

void open_file(const std::vector<uint8_t>& bytes) {
  TempDir d;
  const std::string p = d.file("bad.gguf");
  bitforge::test::write_bytes(p, bytes);
  GgufFile f(p);
}
#define EXPECT_BAD(bytes, fragment) BF_EXPECT_THROW_MSG(open_file(bytes), FormatError, fragment)

}  // namespace

TEST(ExportGguf, RoundTripAllValueTypesAndTensors) {
  GgufWriter w;
  w.set("general.architecture", GgufValue::str("llama"));
  w.set("a.u8", GgufValue::u8(200));
  w.set("a.i8", GgufValue::i8(-100));
  w.set("a.u16", GgufValue::u16(60000));
  w.set("a.i16", GgufValue::i16(-30000));
  w.set("a.u32", GgufValue::u32(4000000000u));
  w.set("a.i32", GgufValue::i32(-2000000000));
  w.set("a.u64", GgufValue::u64(1ull << 60));
  w.set("a.i64", GgufValue::i64(-(1ll << 60)));
  w.set("a.f32", GgufValue::f32(1.5f));
  w.set("a.f64", GgufValue::f64(-2.25));
  w.set("a.bool", GgufValue::boolean(true));
  w.set("tokenizer.ggml.tokens", GgufValue::strings({"<unk>", "<s>", "</s>", "héllo", ""}));
  w.set("tokenizer.ggml.scores", GgufValue::f32s({0.0f, -1.0f, -2.5f, 3.0f, 0.5f}));
  w.set("tokenizer.ggml.token_type", GgufValue::i32s({2, 3, 3, 1, 1}));
  w.set("nested", GgufValue::array(GgufType::ARRAY, {GgufValue::i32s({1, 2}), GgufValue::i32s({})}));

  std::mt19937 g(1);
  std::vector<uint8_t> q1(2 * 3 * 18), f16(2 * 5 * 2), tq2(66);
  for (auto& b : q1) b = static_cast<uint8_t>(g());
  for (auto& b : f16) b = static_cast<uint8_t>(g());
  for (auto& b : tq2) b = static_cast<uint8_t>(g());
  w.add_tensor("blk.0.attn_q.weight", {384, 2}, GgmlType::Q1_0, q1);
  w.add_tensor("output_norm.weight", {5, 2}, GgmlType::F16, f16);
  w.add_tensor("blk.0.ffn_up.weight", {256}, GgmlType::TQ2_0, tq2);

  TempDir d;
  const std::string p = d.file("m.gguf");
  w.write(p);
  EXPECT_FALSE(bitforge::test::file_exists(p + ".tmp"));
  GgufFile f(p);
  EXPECT_EQ(f.version(), 3u);
  EXPECT_EQ(f.alignment(), 32u);
  EXPECT_EQ(f.data_offset() % 32, 0u);
  ASSERT_NE(f.find("general.alignment"), nullptr);
  EXPECT_EQ(f.find("general.alignment")->type, GgufType::UINT32);
  for (const char* k : {"general.architecture", "a.u8", "a.i8", "a.u16", "a.i16", "a.u32", "a.i32", "a.u64", "a.i64",
                        "a.f32", "a.f64", "a.bool", "tokenizer.ggml.tokens", "tokenizer.ggml.scores",
                        "tokenizer.ggml.token_type", "nested"}) {
    ASSERT_NE(f.find(k), nullptr) << k;
  }
  EXPECT_EQ(*f.find("a.i64"), GgufValue::i64(-(1ll << 60)));
  EXPECT_EQ(*f.find("a.u32"), GgufValue::u32(4000000000u));
  EXPECT_EQ(*f.find("tokenizer.ggml.tokens"), GgufValue::strings({"<unk>", "<s>", "</s>", "héllo", ""}));
  EXPECT_EQ(*f.find("nested"), GgufValue::array(GgufType::ARRAY, {GgufValue::i32s({1, 2}), GgufValue::i32s({})}));
  EXPECT_EQ(f.find("a.f32")->f, 1.5);
  ASSERT_EQ(f.tensors().size(), 3u);
  const auto* t = f.find_tensor("blk.0.attn_q.weight");
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->type, GgmlType::Q1_0);
  EXPECT_EQ(t->ne, (std::vector<uint64_t>{384, 2}));
  EXPECT_EQ(t->nbytes, q1.size());
  for (const auto& ti : f.tensors()) EXPECT_EQ(ti.offset % 32, 0u);
  auto span = f.bytes(*t);
  EXPECT_EQ(std::vector<uint8_t>(span.data, span.data + span.size), q1);
  span = f.bytes(*f.find_tensor("blk.0.ffn_up.weight"));
  EXPECT_EQ(std::vector<uint8_t>(span.data, span.data + span.size), tq2);
  // Canonical layout: tensors back to back, padded to the alignment; file ends after the last one's padding.
  EXPECT_EQ(f.find_tensor("output_norm.weight")->offset, 128u);  // 108 bytes of Q1_0 padded to 128
  EXPECT_EQ(bitforge::test::read_bytes(p).size() % 32, 0u);
}

TEST(ExportGguf, HeaderBytes) {
  GgufWriter w;
  const auto b = w.serialize();
  // "GGUF", version 3, 0 tensors, 1 kv (general.alignment u32 32), padded to 32.
  ASSERT_GE(b.size(), 24u);
  EXPECT_EQ(std::memcmp(b.data(), "GGUF", 4), 0);
  EXPECT_EQ(b[4], 3);
  EXPECT_EQ(b[16], 1);
  EXPECT_EQ(b.size() % 32, 0u);
  GgufFile f = GgufFile::from_bytes(b, "mem");
  EXPECT_EQ(f.kv().size(), 1u);
}

TEST(ExportGguf, WriterRejectsBadTensors) {
  GgufWriter w;
  EXPECT_THROW(w.add_tensor("a", {100}, GgmlType::Q1_0, std::vector<uint8_t>(18)), std::invalid_argument);
  EXPECT_THROW(w.add_tensor("a", {128}, GgmlType::Q1_0, std::vector<uint8_t>(17)), std::invalid_argument);
  EXPECT_THROW(w.add_tensor("a", {1, 1, 1, 1, 1}, GgmlType::F32, std::vector<uint8_t>(4)), std::invalid_argument);
  EXPECT_THROW(w.set("general.alignment", GgufValue::u32(24)), std::invalid_argument);
  w.add_tensor("a", {128}, GgmlType::Q1_0, std::vector<uint8_t>(18));
  EXPECT_THROW(w.add_tensor("a", {128}, GgmlType::Q1_0, std::vector<uint8_t>(18)), std::invalid_argument);
}

TEST(ExportGguf, CustomAlignment) {
  GgufWriter w;
  w.set("general.alignment", GgufValue::u32(64));
  w.add_tensor("a", {3}, GgmlType::F32, std::vector<uint8_t>(12, 1));
  w.add_tensor("b", {3}, GgmlType::F32, std::vector<uint8_t>(12, 2));
  GgufFile f = GgufFile::from_bytes(w.serialize(), "mem");
  EXPECT_EQ(f.alignment(), 64u);
  EXPECT_EQ(f.data_offset() % 64, 0u);
  EXPECT_EQ(f.find_tensor("b")->offset, 64u);
}

// ---- hostile files ----

TEST(ExportGgufHostile, BadMagic) {
  Bytes x;
  x.raw("GGML", 4).le<uint32_t>(3).le<uint64_t>(0).le<uint64_t>(0);
  EXPECT_BAD(x.b, "at byte 0: bad magic 'GGML'; expected 'GGUF'");
  EXPECT_BAD({}, "bad magic");
}

TEST(ExportGgufHostile, BadVersion) {
  Bytes x;
  x.raw("GGUF", 4).le<uint32_t>(1).le<uint64_t>(0).le<uint64_t>(0);
  EXPECT_BAD(x.b, "at byte 4: unsupported GGUF version 1; expected 3");
  Bytes y;
  y.raw("GGUF", 4).le<uint32_t>(99).le<uint64_t>(0).le<uint64_t>(0);
  EXPECT_BAD(y.b, "unsupported GGUF version 99");
}

TEST(ExportGgufHostile, TruncatedHeader) {
  Bytes x;
  x.raw("GGUF", 4).le<uint32_t>(3).le<uint32_t>(0);
  EXPECT_BAD(x.b, "at byte 8: tensor count needs 8 bytes but only 4 remain");
}

TEST(ExportGgufHostile, TensorCountLargerThanFile) {
  Bytes x;
  x.raw("GGUF", 4).le<uint32_t>(3).le<uint64_t>(1ull << 40).le<uint64_t>(0);
  EXPECT_BAD(x.b, "tensor count 1099511627776 is more than the remaining");
  Bytes y;
  y.raw("GGUF", 4).le<uint32_t>(3).le<uint64_t>(0).le<uint64_t>(~0ull);
  EXPECT_BAD(y.b, "kv count 18446744073709551615 is more than the remaining");
}

TEST(ExportGgufHostile, StringLengthPastEof) {
  Bytes x;
  x.raw("GGUF", 4).le<uint32_t>(3).le<uint64_t>(0).le<uint64_t>(1);
  x.le<uint64_t>(1000).raw("abcdefghijklmnopqrst", 20);
  EXPECT_BAD(x.b, "at byte 24: key string length 1000 runs past the end of the file");
  Bytes y;
  y.raw("GGUF", 4).le<uint32_t>(3).le<uint64_t>(0).le<uint64_t>(1);
  y.str("k").le<uint32_t>(8).le<uint64_t>(~0ull);
  EXPECT_BAD(y.b, "string value string length 18446744073709551615 runs past the end");
}

TEST(ExportGgufHostile, ArrayLengthOverflow) {
  Bytes x;
  x.raw("GGUF", 4).le<uint32_t>(3).le<uint64_t>(0).le<uint64_t>(1);
  x.str("k").le<uint32_t>(9).le<uint32_t>(10).le<uint64_t>(1ull << 62);  // u64 array: 2^62 × 8 overflows
  EXPECT_BAD(x.b, "array 'k' of 4611686018427387904 UINT64 elements runs past the end");
}

TEST(ExportGgufHostile, UnknownValueType) {
  Bytes x;
  x.raw("GGUF", 4).le<uint32_t>(3).le<uint64_t>(0).le<uint64_t>(1);
  x.str("k").le<uint32_t>(13).le<uint32_t>(0);
  EXPECT_BAD(x.b, "key 'k' has unknown value type 13; expected 0..12");
}

TEST(ExportGgufHostile, DuplicateKey) {
  Bytes x;
  x.raw("GGUF", 4).le<uint32_t>(3).le<uint64_t>(0).le<uint64_t>(2);
  x.str("k").le<uint32_t>(4).le<uint32_t>(1);
  x.str("k").le<uint32_t>(4).le<uint32_t>(2);
  EXPECT_BAD(x.b, "duplicate key 'k'");
}

TEST(ExportGgufHostile, UnknownGgmlType) {
  auto x = one_tensor(36, {32}, 0);
  x.pad(32).b.resize(x.b.size() + 64);
  EXPECT_BAD(x.b, "tensor 'w' has unknown ggml type 36");
  auto y = one_tensor(1000, {32}, 0);
  y.pad(32).b.resize(y.b.size() + 64);
  EXPECT_BAD(y.b, "unknown ggml type 1000");
}

TEST(ExportGgufHostile, DimsOverflow) {
  auto x = one_tensor(0, {1ull << 32, 1ull << 32}, 0);
  x.pad(32);
  EXPECT_BAD(x.b, "tensor 'w' dims overflow");
  auto y = one_tensor(0, {1ull << 63}, 0);
  EXPECT_BAD(y.b, "dims overflow");
}

TEST(ExportGgufHostile, TooManyDims) {
  auto x = one_tensor(0, {1, 1, 1, 1, 1}, 0);
  EXPECT_BAD(x.b, "tensor 'w' has n_dims 5; expected 1..4");
}

TEST(ExportGgufHostile, RowNotBlockMultiple) {
  auto x = one_tensor(41, {100}, 0);
  x.pad(32).b.resize(x.b.size() + 32);
  EXPECT_BAD(x.b, "row length 100 is not a multiple of the Q1_0 block size 128");
}

TEST(ExportGgufHostile, TensorOffsetMisaligned) {
  auto x = one_tensor(0, {4}, 8);
  x.pad(32).b.resize(x.b.size() + 64);
  EXPECT_BAD(x.b, "tensor 'w' offset 8 is not a multiple of the alignment 32");
}

TEST(ExportGgufHostile, TensorOffsetOutOfRange) {
  auto x = one_tensor(0, {4}, 64);
  x.pad(32).b.resize(x.b.size() + 32);
  EXPECT_BAD(x.b, "tensor 'w' data [64, +16) is out of range of the 32-byte data section");
  auto y = one_tensor(0, {16}, 0);  // 64 bytes needed, file ends right after the header
  EXPECT_BAD(y.b, "is out of range");
}

TEST(ExportGgufHostile, OverlappingTensors) {
  Bytes x;
  x.raw("GGUF", 4).le<uint32_t>(3).le<uint64_t>(2).le<uint64_t>(0);
  x.str("a").le<uint32_t>(1).le<uint64_t>(16).le<uint32_t>(0).le<uint64_t>(0);   // 64 bytes at 0
  x.str("b").le<uint32_t>(1).le<uint64_t>(16).le<uint32_t>(0).le<uint64_t>(32);  // 64 bytes at 32
  x.pad(32).b.resize(x.b.size() + 96);
  EXPECT_BAD(x.b, "tensor 'b' at data offset 32 overlaps tensor 'a' ending at 64");
}

TEST(ExportGgufHostile, BadAlignmentValue) {
  Bytes x;
  x.raw("GGUF", 4).le<uint32_t>(3).le<uint64_t>(0).le<uint64_t>(1);
  x.str("general.alignment").le<uint32_t>(4).le<uint32_t>(24);
  EXPECT_BAD(x.b, "general.alignment must be a non-zero power of two");
}

TEST(ExportGgufHostile, BoolNotZeroOrOne) {
  Bytes x;
  x.raw("GGUF", 4).le<uint32_t>(3).le<uint64_t>(0).le<uint64_t>(1);
  x.str("flag").le<uint32_t>(7).le<uint8_t>(2);
  EXPECT_BAD(x.b, "bool value of 'flag' is 2; expected 0 or 1");
}
