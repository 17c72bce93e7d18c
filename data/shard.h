// Token shards: a flat little-endian array of token ids behind a fixed 64-byte header, memory-mapped for reading.
//
// Layout (all integers little-endian):
//   offset size field
//   0      8    magic             "BFTOKENS"
//   8      4    version           u32 = 1 (kShardVersion)
//   12     4    token_bytes       u32 = 2 (u16 tokens, when vocab_size <= 65536) or 4 (u32 tokens)
//   16     8    token_count       u64
//   24     8    document_count    u64
//   32     4    vocab_size        u32; every token id is < vocab_size
//   36     4    payload_crc32     u32, zlib CRC-32 of the token payload bytes (offset 64 to end of file)
//   40     4    tokenizer_crc32   u32, tokenizer_fingerprint() of the tokenizer that wrote it (0 = not recorded)
//   44     20   reserved          zero
//   64     token_count * token_bytes   tokens
// Documents are stored as  bos t1 … tn eos  one after another (bos omitted when the tokenizer has none), so a
// model sees document boundaries.
//
// The reader validates everything at open (one pass over the payload): file shorter than the header, magic,
// version, token_bytes, file size == 64 + token_count * token_bytes, CRC-32, and every id < vocab_size (unless
// ShardReader::Options::verify_payload is false, which skips the last two for huge shards). Errors are DataError
// and name the file and the field or byte offset.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "data/error.h"

namespace bitforge::data {

inline constexpr char kShardMagic[8] = {'B', 'F', 'T', 'O', 'K', 'E', 'N', 'S'};
inline constexpr uint32_t kShardVersion = 1;
inline constexpr std::size_t kShardHeaderSize = 64;

struct ShardHeader {
  uint32_t version = kShardVersion;
  uint32_t token_bytes = 2;
  uint64_t token_count = 0;
  uint64_t document_count = 0;
  uint32_t vocab_size = 0;
  uint32_t payload_crc32 = 0;
  uint32_t tokenizer_crc32 = 0;
};

// 2 when every id of a vocab_size vocabulary fits in u16 (vocab_size <= 65536), else 4.
uint32_t shard_token_bytes(uint32_t vocab_size);

// Streams documents into `path`: writes `path.tmp`, then finish() fills in the header and renames it to `path`,
// so a reader never sees a half-written shard. Destroying an unfinished writer removes the temporary file.
class ShardWriter {
 public:
  struct Options {
    uint32_t vocab_size = 0;       // required (> 0)
    int32_t bos_id = -1;           // prepended to each document; -1 = none
    int32_t eos_id = -1;           // appended to each document; required (>= 0)
    uint32_t tokenizer_crc32 = 0;  // tokenizer_fingerprint(), recorded in the header
  };
  ShardWriter(std::string path, const Options& options);
  ~ShardWriter();
  ShardWriter(const ShardWriter&) = delete;
  ShardWriter& operator=(const ShardWriter&) = delete;

  // Appends bos, `tokens`, eos. Throws DataError for an id outside [0, vocab_size).
  void add_document(const std::vector<int32_t>& tokens);
  // Appends raw tokens with no bos/eos and no document count (for tests and tools that frame documents themselves).
  void add_tokens(const std::vector<int32_t>& tokens);
  // Writes the header, flushes, renames path.tmp -> path. Returns the header written. Call once.
  ShardHeader finish();

  uint64_t token_count() const { return header_.token_count; }

 private:
  void write_tokens(const int32_t* ids, std::size_t n);
  std::string path_, tmp_path_;
  std::FILE* file_ = nullptr;
  Options options_;
  ShardHeader header_;
  std::vector<unsigned char> buffer_;
};

// One-shot convenience: writes `documents` (each framed by bos/eos) to `path`.
ShardHeader write_shard(const std::string& path, const std::vector<std::vector<int32_t>>& documents,
                        const ShardWriter::Options& options);

// Read-only memory map of a shard (or, from_tokens, the same view of tokens held in memory). Movable, not copyable.
class ShardReader {
 public:
  struct Options {
    bool verify_payload = true;  // CRC-32 and id < vocab_size over the whole payload at open
  };
  explicit ShardReader(const std::string& path) : ShardReader(path, Options{}) {}
  ShardReader(const std::string& path, const Options& options);
  ~ShardReader();
  ShardReader(ShardReader&& other) noexcept;
  ShardReader& operator=(ShardReader&& other) noexcept;
  ShardReader(const ShardReader&) = delete;
  ShardReader& operator=(const ShardReader&) = delete;
  // A reader over tokens held in memory (u32, no file): what a shard written from them would read back as.
  // `label` stands for the path in error messages. Throws DataError for an id outside [0, vocab_size).
  static ShardReader from_tokens(std::vector<int32_t> tokens, uint32_t vocab_size, uint64_t document_count,
                                 const std::string& label);

  const std::string& path() const { return path_; }
  const ShardHeader& header() const { return header_; }
  uint64_t size() const { return header_.token_count; }
  uint32_t vocab_size() const { return header_.vocab_size; }
  uint64_t document_count() const { return header_.document_count; }

  // Token at index i (< size(); unchecked in release, asserted in debug).
  uint32_t operator[](uint64_t i) const;
  // Copies tokens [begin, begin + count) into out (as int32). Throws DataError when the range leaves the shard.
  void copy(uint64_t begin, uint64_t count, int32_t* out) const;
  std::vector<int32_t> slice(uint64_t begin, uint64_t count) const;

  // Throws DataError "shard X has vocab A but the model expects B" unless vocab_size() == expected.
  void expect_vocab_size(uint32_t expected) const;
  // Throws DataError unless the shard was written with the tokenizer whose fingerprint is `expected`
  // (a shard with tokenizer_crc32 == 0 passes).
  void expect_tokenizer(uint32_t expected_fingerprint) const;

 private:
  ShardReader() = default;
  void unmap();
  std::string path_;
  std::vector<uint32_t> owned_;  // from_tokens: the payload (map_ stays null)
  ShardHeader header_;
  void* map_ = nullptr;
  std::size_t map_size_ = 0;
  const unsigned char* payload_ = nullptr;
};

}  // namespace bitforge::data
