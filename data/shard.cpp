#include "data/shard.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <cassert>
#include <cerrno>
#include <cstring>
#include <filesystem>

namespace bitforge::data {

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "shards are little-endian and read in place; a big-endian host needs byte swapping here");

uint32_t shard_token_bytes(uint32_t vocab_size) { return vocab_size <= 65536u ? 2u : 4u; }

namespace {

void put_u32(unsigned char* p, uint32_t v) { std::memcpy(p, &v, 4); }
void put_u64(unsigned char* p, uint64_t v) { std::memcpy(p, &v, 8); }
uint32_t get_u32(const unsigned char* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}
uint64_t get_u64(const unsigned char* p) {
  uint64_t v;
  std::memcpy(&v, p, 8);
  return v;
}

void encode_header(const ShardHeader& h, unsigned char* out) {
  std::memset(out, 0, kShardHeaderSize);
  std::memcpy(out, kShardMagic, 8);
  put_u32(out + 8, h.version);
  put_u32(out + 12, h.token_bytes);
  put_u64(out + 16, h.token_count);
  put_u64(out + 24, h.document_count);
  put_u32(out + 32, h.vocab_size);
  put_u32(out + 36, h.payload_crc32);
  put_u32(out + 40, h.tokenizer_crc32);
}

uint32_t crc32_update(uint32_t crc, const unsigned char* data, std::size_t n) {
  return static_cast<uint32_t>(crc32_z(crc, data, n));
}

}  // namespace

// ---------------------------------------------------------------------------------------------------------
// Writer
// ---------------------------------------------------------------------------------------------------------

ShardWriter::ShardWriter(std::string path, const Options& options)
    : path_(std::move(path)), tmp_path_(path_ + ".tmp"), options_(options) {
  if (options.vocab_size == 0) throw DataError(fmt::format("shard {}: vocab_size must be > 0", path_));
  if (options.eos_id < 0 || static_cast<uint32_t>(options.eos_id) >= options.vocab_size) {
    throw DataError(
        fmt::format("shard {}: eos id {} must be in [0, vocab_size={})", path_, options.eos_id, options.vocab_size));
  }
  if (options.bos_id >= 0 && static_cast<uint32_t>(options.bos_id) >= options.vocab_size) {
    throw DataError(
        fmt::format("shard {}: bos id {} must be < vocab_size={}", path_, options.bos_id, options.vocab_size));
  }
  header_.token_bytes = shard_token_bytes(options.vocab_size);
  header_.vocab_size = options.vocab_size;
  header_.tokenizer_crc32 = options.tokenizer_crc32;
  header_.payload_crc32 = crc32_update(0, nullptr, 0);
  file_ = std::fopen(tmp_path_.c_str(), "wb");
  if (!file_) throw DataError(fmt::format("cannot create {}: {}", tmp_path_, std::strerror(errno)));
  unsigned char zeros[kShardHeaderSize] = {};
  if (std::fwrite(zeros, 1, kShardHeaderSize, file_) != kShardHeaderSize) {
    throw DataError(fmt::format("cannot write {}: {}", tmp_path_, std::strerror(errno)));
  }
}

ShardWriter::~ShardWriter() {
  if (file_) {
    std::fclose(file_);
    std::remove(tmp_path_.c_str());
  }
}

void ShardWriter::write_tokens(const int32_t* ids, std::size_t n) {
  if (!file_) throw DataError(fmt::format("shard {}: write after finish()", path_));
  const std::size_t width = header_.token_bytes;
  buffer_.resize(n * width);
  for (std::size_t i = 0; i < n; ++i) {
    const int32_t id = ids[i];
    if (id < 0 || static_cast<uint32_t>(id) >= header_.vocab_size) {
      throw DataError(fmt::format("shard {}: token id {} (token {} of the shard) is outside [0, vocab_size={})", path_,
                                  id, header_.token_count + i, header_.vocab_size));
    }
    if (width == 2) {
      const uint16_t v = static_cast<uint16_t>(id);
      std::memcpy(&buffer_[i * 2], &v, 2);
    } else {
      const uint32_t v = static_cast<uint32_t>(id);
      std::memcpy(&buffer_[i * 4], &v, 4);
    }
  }
  if (std::fwrite(buffer_.data(), 1, buffer_.size(), file_) != buffer_.size()) {
    throw DataError(fmt::format("cannot write {}: {}", tmp_path_, std::strerror(errno)));
  }
  header_.payload_crc32 = crc32_update(header_.payload_crc32, buffer_.data(), buffer_.size());
  header_.token_count += n;
}

void ShardWriter::add_document(const std::vector<int32_t>& tokens) {
  if (options_.bos_id >= 0) write_tokens(&options_.bos_id, 1);
  write_tokens(tokens.data(), tokens.size());
  write_tokens(&options_.eos_id, 1);
  header_.document_count += 1;
}

void ShardWriter::add_tokens(const std::vector<int32_t>& tokens) { write_tokens(tokens.data(), tokens.size()); }

ShardHeader ShardWriter::finish() {
  if (!file_) throw DataError(fmt::format("shard {}: finish() called twice", path_));
  unsigned char raw[kShardHeaderSize];
  encode_header(header_, raw);
  bool ok = std::fflush(file_) == 0 && std::fseek(file_, 0, SEEK_SET) == 0 &&
            std::fwrite(raw, 1, kShardHeaderSize, file_) == kShardHeaderSize && std::fflush(file_) == 0 &&
            ::fsync(fileno(file_)) == 0;
  const int err = errno;
  ok = (std::fclose(file_) == 0) && ok;
  file_ = nullptr;
  if (!ok) {
    std::remove(tmp_path_.c_str());
    throw DataError(fmt::format("cannot write {}: {}", tmp_path_, std::strerror(err)));
  }
  std::error_code ec;
  std::filesystem::rename(tmp_path_, path_, ec);
  if (ec) throw DataError(fmt::format("cannot rename {} to {}: {}", tmp_path_, path_, ec.message()));
  return header_;
}

ShardHeader write_shard(const std::string& path, const std::vector<std::vector<int32_t>>& documents,
                        const ShardWriter::Options& options) {
  ShardWriter writer(path, options);
  for (const auto& doc : documents) writer.add_document(doc);
  return writer.finish();
}

// ---------------------------------------------------------------------------------------------------------
// Reader
// ---------------------------------------------------------------------------------------------------------

ShardReader::ShardReader(const std::string& path, const Options& options) : path_(path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw DataError(fmt::format("cannot open shard {}: {}", path, std::strerror(errno)));
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    throw DataError(fmt::format("cannot stat shard {}: {}", path, std::strerror(err)));
  }
  const auto file_size = static_cast<uint64_t>(st.st_size);
  if (file_size < kShardHeaderSize) {
    ::close(fd);
    throw DataError(fmt::format("shard {} is {} bytes, shorter than the {}-byte header (truncated or not a shard)",
                                path, file_size, kShardHeaderSize));
  }
  map_size_ = static_cast<std::size_t>(file_size);
  map_ = ::mmap(nullptr, map_size_, PROT_READ, MAP_PRIVATE, fd, 0);
  const int map_err = errno;
  ::close(fd);
  if (map_ == MAP_FAILED) {
    map_ = nullptr;
    throw DataError(fmt::format("cannot mmap shard {}: {}", path, std::strerror(map_err)));
  }
  try {
    const auto* base = static_cast<const unsigned char*>(map_);
    if (std::memcmp(base, kShardMagic, 8) != 0) {
      throw DataError(fmt::format("{} is not a token shard: bytes 0..7 are not the magic \"BFTOKENS\"", path));
    }
    header_.version = get_u32(base + 8);
    header_.token_bytes = get_u32(base + 12);
    header_.token_count = get_u64(base + 16);
    header_.document_count = get_u64(base + 24);
    header_.vocab_size = get_u32(base + 32);
    header_.payload_crc32 = get_u32(base + 36);
    header_.tokenizer_crc32 = get_u32(base + 40);
    if (header_.version != kShardVersion) {
      throw DataError(fmt::format("shard {}: unsupported version {} at offset 8; this build reads version {}", path,
                                  header_.version, kShardVersion));
    }
    if (header_.token_bytes != 2 && header_.token_bytes != 4) {
      throw DataError(
          fmt::format("shard {}: token_bytes {} at offset 12; expected 2 (u16) or 4 (u32)", path, header_.token_bytes));
    }
    if (header_.vocab_size == 0 || (header_.token_bytes == 2 && header_.vocab_size > 65536u)) {
      throw DataError(fmt::format("shard {}: vocab_size {} at offset 32 does not fit token_bytes {}", path,
                                  header_.vocab_size, header_.token_bytes));
    }
    const uint64_t payload = file_size - kShardHeaderSize;
    if (header_.token_count > payload / header_.token_bytes || payload != header_.token_count * header_.token_bytes) {
      throw DataError(fmt::format(
          "shard {}: file is {} bytes but the header expects {}-byte header + token_count {} (offset 16) × {} "
          "bytes; the shard is truncated or corrupt",
          path, file_size, kShardHeaderSize, header_.token_count, header_.token_bytes));
    }
    payload_ = base + kShardHeaderSize;
    if (options.verify_payload) {
      const uint32_t crc = crc32_update(crc32_update(0, nullptr, 0), payload_, payload);
      if (crc != header_.payload_crc32) {
        throw DataError(
            fmt::format("shard {}: checksum mismatch: payload CRC-32 is {:08x} but the header (offset 36) "
                        "records {:08x}; the file is corrupt",
                        path, crc, header_.payload_crc32));
      }
      for (uint64_t i = 0; i < header_.token_count; ++i) {
        const uint32_t id = (*this)[i];
        if (id >= header_.vocab_size) {
          throw DataError(fmt::format("shard {}: token {} (byte offset {}) is id {}, not below vocab_size {}", path, i,
                                      kShardHeaderSize + i * header_.token_bytes, id, header_.vocab_size));
        }
      }
    }
  } catch (...) {
    unmap();
    throw;
  }
}

ShardReader::~ShardReader() { unmap(); }

ShardReader ShardReader::from_tokens(std::vector<int32_t> tokens, uint32_t vocab_size, uint64_t document_count,
                                     const std::string& label) {
  if (vocab_size == 0) throw DataError(fmt::format("{}: vocab_size must be > 0", label));
  ShardReader r;
  r.path_ = label;
  r.owned_.resize(tokens.size());
  for (std::size_t i = 0; i < tokens.size(); ++i) {
    if (tokens[i] < 0 || static_cast<uint32_t>(tokens[i]) >= vocab_size)
      throw DataError(fmt::format("{}: token {} is id {}, not in [0, {})", label, i, tokens[i], vocab_size));
    r.owned_[i] = static_cast<uint32_t>(tokens[i]);
  }
  r.header_.token_bytes = 4;
  r.header_.token_count = tokens.size();
  r.header_.document_count = document_count;
  r.header_.vocab_size = vocab_size;
  r.payload_ = reinterpret_cast<const unsigned char*>(r.owned_.data());
  return r;
}

void ShardReader::unmap() {
  if (map_) ::munmap(map_, map_size_);
  map_ = nullptr;
  payload_ = nullptr;
  map_size_ = 0;
}

ShardReader::ShardReader(ShardReader&& other) noexcept
    : path_(std::move(other.path_)),
      header_(other.header_),
      map_(other.map_),
      map_size_(other.map_size_),
      payload_(other.payload_) {
  owned_ = std::move(other.owned_);  // a vector's move keeps its buffer, so payload_ stays valid
  other.map_ = nullptr;
  other.payload_ = nullptr;
  other.map_size_ = 0;
}

ShardReader& ShardReader::operator=(ShardReader&& other) noexcept {
  if (this != &other) {
    unmap();
    path_ = std::move(other.path_);
    header_ = other.header_;
    map_ = other.map_;
    map_size_ = other.map_size_;
    payload_ = other.payload_;
    owned_ = std::move(other.owned_);
    other.map_ = nullptr;
    other.payload_ = nullptr;
    other.map_size_ = 0;
  }
  return *this;
}

uint32_t ShardReader::operator[](uint64_t i) const {
  assert(i < header_.token_count);
  if (header_.token_bytes == 2) {
    uint16_t v;
    std::memcpy(&v, payload_ + i * 2, 2);
    return v;
  }
  uint32_t v;
  std::memcpy(&v, payload_ + i * 4, 4);
  return v;
}

void ShardReader::copy(uint64_t begin, uint64_t count, int32_t* out) const {
  if (begin > header_.token_count || count > header_.token_count - begin) {
    throw DataError(fmt::format("shard {}: tokens [{}, {}) requested but it holds {}", path_, begin, begin + count,
                                header_.token_count));
  }
  if (header_.token_bytes == 2) {
    const unsigned char* p = payload_ + begin * 2;
    for (uint64_t i = 0; i < count; ++i) {
      uint16_t v;
      std::memcpy(&v, p + i * 2, 2);
      out[i] = v;
    }
  } else {
    std::memcpy(out, payload_ + begin * 4, count * 4);
  }
}

std::vector<int32_t> ShardReader::slice(uint64_t begin, uint64_t count) const {
  std::vector<int32_t> out(count);
  copy(begin, count, out.data());
  return out;
}

void ShardReader::expect_vocab_size(uint32_t expected) const {
  if (header_.vocab_size != expected) {
    throw DataError(fmt::format("shard {} has vocab {} but the model expects {}", path_, header_.vocab_size, expected));
  }
}

void ShardReader::expect_tokenizer(uint32_t expected_fingerprint) const {
  if (header_.tokenizer_crc32 != 0 && header_.tokenizer_crc32 != expected_fingerprint) {
    throw DataError(
        fmt::format("shard {} was written with tokenizer {:08x} but the model's tokenizer is {:08x}; "
                    "re-run prepare-data or use the matching tokenizer",
                    path_, header_.tokenizer_crc32, expected_fingerprint));
  }
}

}  // namespace bitforge::data
