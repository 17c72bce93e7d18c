// Token shards: round trip in u16 and u32, and one specific error per kind of damage.
#include <gtest/gtest.h>

#include "tests/fixtures/data/temp_dir.h"

#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>

#include "data/shard.h"

namespace fs = std::filesystem;
using namespace bitforge::data;

namespace {

struct TempDir : bitforge::testing::TempDir {
  TempDir() : bitforge::testing::TempDir("bitforge_data_shard_") {}
};

std::string slurp(const std::string& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}
void spit(const std::string& p, const std::string& bytes) {
  std::ofstream(p, std::ios::binary | std::ios::trunc) << bytes;
}

template <typename Fn>
void expect_data_error(Fn fn, std::initializer_list<std::string> parts) {
  try {
    fn();
    ADD_FAILURE() << "expected DataError";
  } catch (const DataError& e) {
    for (const auto& p : parts)
      EXPECT_NE(std::string(e.what()).find(p), std::string::npos) << e.what() << "\n  lacks: " << p;
  }
}

// Writes three documents with ids near the top of the vocabulary.
std::string write_sample(const TempDir& d, const std::string& name, uint32_t vocab) {
  ShardWriter::Options o;
  o.vocab_size = vocab;
  o.bos_id = 1;
  o.eos_id = 2;
  o.tokenizer_crc32 = 0xABCD1234;
  const int32_t top = static_cast<int32_t>(vocab - 1);
  write_shard(d.file(name), {{5, top, 7}, {}, {top - 1}}, o);
  return d.file(name);
}

}  // namespace

TEST(DataShard, RoundTripU16AndU32) {
  TempDir d;
  for (uint32_t vocab : {4096u, 65536u, 70000u}) {
    SCOPED_TRACE(vocab);
    const std::string p = write_sample(d, "s" + std::to_string(vocab) + ".bin", vocab);
    EXPECT_FALSE(fs::exists(p + ".tmp"));
    ShardReader r(p);
    const uint32_t width = vocab <= 65536 ? 2 : 4;
    EXPECT_EQ(r.header().token_bytes, width);
    EXPECT_EQ(fs::file_size(p), kShardHeaderSize + 10 * width);
    EXPECT_EQ(r.size(), 10u);  // (1+3+1) + (1+0+1) + (1+1+1)
    EXPECT_EQ(r.document_count(), 3u);
    EXPECT_EQ(r.vocab_size(), vocab);
    EXPECT_EQ(r.header().tokenizer_crc32, 0xABCD1234u);
    const int32_t top = static_cast<int32_t>(vocab - 1);
    const std::vector<int32_t> expected = {1, 5, top, 7, 2, 1, 2, 1, top - 1, 2};
    EXPECT_EQ(r.slice(0, 10), expected);
    EXPECT_EQ(r[2], static_cast<uint32_t>(top));
    EXPECT_EQ(r.slice(8, 2), (std::vector<int32_t>{top - 1, 2}));
    EXPECT_THROW(r.slice(9, 2), DataError);
    r.expect_vocab_size(vocab);
    r.expect_tokenizer(0xABCD1234);
    EXPECT_THROW(r.expect_tokenizer(0x1), DataError);
  }
  // Little-endian u16 on disk: token 0 (bos = 1) is bytes 01 00 at offset 64.
  const std::string bytes = slurp(d.file("s4096.bin"));
  EXPECT_EQ(bytes.substr(0, 8), "BFTOKENS");
  EXPECT_EQ(static_cast<unsigned char>(bytes[64]), 1);
  EXPECT_EQ(static_cast<unsigned char>(bytes[65]), 0);
}

TEST(DataShard, WriterRejectsOutOfVocabAndCleansUp) {
  TempDir d;
  ShardWriter::Options o;
  o.vocab_size = 10;
  o.eos_id = 2;
  {
    ShardWriter w(d.file("x.bin"), o);
    expect_data_error([&] { w.add_document({3, 10}); }, {"x.bin", "token id 10", "vocab_size=10"});
  }
  EXPECT_FALSE(fs::exists(d.file("x.bin.tmp")));
  EXPECT_FALSE(fs::exists(d.file("x.bin")));
}

TEST(DataShard, Truncated) {
  TempDir d;
  const std::string p = write_sample(d, "t.bin", 4096);
  std::string bytes = slurp(p);
  spit(p, bytes.substr(0, bytes.size() - 1));
  expect_data_error([&] { ShardReader r(p); }, {p, "truncated", "token_count 10"});
  spit(p, bytes.substr(0, 20));
  expect_data_error([&] { ShardReader r(p); }, {p, "20 bytes", "shorter than the 64-byte header"});
}

TEST(DataShard, BadMagicAndVersion) {
  TempDir d;
  const std::string p = write_sample(d, "m.bin", 4096);
  std::string bytes = slurp(p);
  std::string bad = bytes;
  bad[0] = 'X';
  spit(p, bad);
  expect_data_error([&] { ShardReader r(p); }, {p, "not a token shard", "magic"});
  bad = bytes;
  bad[8] = 9;
  spit(p, bad);
  expect_data_error([&] { ShardReader r(p); }, {p, "unsupported version 9", "offset 8"});
}

TEST(DataShard, ChecksumMismatch) {
  TempDir d;
  const std::string p = write_sample(d, "c.bin", 4096);
  std::string bytes = slurp(p);
  bytes[kShardHeaderSize + 2] ^= 0x01;  // flip one bit of token 1 (5 -> 4: still in vocab)
  spit(p, bytes);
  expect_data_error([&] { ShardReader r(p); }, {p, "checksum mismatch"});
  // Unverified open skips the payload pass (for huge shards) and reads the damaged value.
  ShardReader unverified(p, ShardReader::Options{false});
  EXPECT_EQ(unverified[1], 4u);
}

TEST(DataShard, TokenOutsideVocab) {
  TempDir d;
  // A shard written for vocab 4096, relabelled as vocab 100 (header edited, CRC still matches the payload).
  const std::string p = write_sample(d, "v.bin", 4096);
  std::string bytes = slurp(p);
  const uint32_t small = 100;
  std::memcpy(&bytes[32], &small, 4);
  spit(p, bytes);
  expect_data_error([&] { ShardReader r(p); }, {p, "token 2", "byte offset 68", "id 4095", "vocab_size 100"});
}

TEST(DataShard, VocabMismatchIsClear) {
  TempDir d;
  const std::string p = write_sample(d, "vm.bin", 4096);
  ShardReader r(p);
  expect_data_error([&] { r.expect_vocab_size(8000); }, {"shard " + p + " has vocab 4096 but the model expects 8000"});
}
