#include "data/loader.h"

#include <fmt/format.h>

#include <algorithm>
#include <nlohmann/json.hpp>

namespace bitforge::data {
namespace {

// SplitMix64 (Steele, Lea, Flood 2014): tiny, fully specified, identical on every platform.
struct SplitMix64 {
  uint64_t x;
  uint64_t next() {
    uint64_t z = (x += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  // Uniform in [0, n), n > 0, by rejection (no modulo bias).
  uint64_t below(uint64_t n) {
    const uint64_t threshold = (0 - n) % n;  // 2^64 mod n
    for (;;) {
      const uint64_t r = next();
      if (r >= threshold) return r % n;
    }
  }
};

void check_geometry(const ShardReader& shard, int64_t batch_size, int64_t seq_len) {
  if (batch_size < 1)
    throw DataError(fmt::format("loader for {}: batch_size {} must be >= 1", shard.path(), batch_size));
  if (seq_len < 1) throw DataError(fmt::format("loader for {}: seq_len {} must be >= 1", shard.path(), seq_len));
  if (shard.size() < static_cast<uint64_t>(seq_len) + 1) {
    throw DataError(fmt::format("shard {} holds {} tokens, fewer than one window of seq_len + 1 = {}", shard.path(),
                                shard.size(), seq_len + 1));
  }
}

template <typename T>
T field(const nlohmann::json& j, const char* name) {
  auto it = j.find(name);
  if (it == j.end()) throw DataError(fmt::format("loader state: missing field '{}'", name));
  if (!it->is_number_integer()) {
    throw DataError(fmt::format("loader state: field '{}' is a JSON {}, expected an integer", name, it->type_name()));
  }
  return it->get<T>();
}

}  // namespace

void to_json(nlohmann::json& j, const LoaderState& s) {
  j = nlohmann::json{{"epoch", s.epoch},
                     {"position", s.position},
                     {"seed", s.seed},
                     {"batch_size", s.batch_size},
                     {"seq_len", s.seq_len},
                     {"token_count", s.token_count},
                     {"payload_crc32", s.payload_crc32},
                     {"batches_served", s.batches_served}};
}

void from_json(const nlohmann::json& j, LoaderState& s) {
  if (!j.is_object()) throw DataError(fmt::format("loader state: expected a JSON object, got {}", j.type_name()));
  s.epoch = field<uint64_t>(j, "epoch");
  s.position = field<uint64_t>(j, "position");
  s.seed = field<uint64_t>(j, "seed");
  s.batch_size = field<int64_t>(j, "batch_size");
  s.seq_len = field<int64_t>(j, "seq_len");
  s.token_count = field<uint64_t>(j, "token_count");
  s.payload_crc32 = field<uint32_t>(j, "payload_crc32");
  s.batches_served = j.contains("batches_served") ? field<uint64_t>(j, "batches_served") : 0;
}

// ---------------------------------------------------------------------------------------------------------
// TokenLoader
// ---------------------------------------------------------------------------------------------------------

TokenLoader::TokenLoader(const std::string& shard_path, int64_t batch_size, int64_t seq_len, uint64_t seed)
    : TokenLoader(std::make_shared<const ShardReader>(shard_path), batch_size, seq_len, seed) {}

TokenLoader::TokenLoader(std::shared_ptr<const ShardReader> shard, int64_t batch_size, int64_t seq_len, uint64_t seed)
    : shard_(std::move(shard)), batch_size_(batch_size), seq_len_(seq_len), seed_(seed) {
  check_geometry(*shard_, batch_size_, seq_len_);
  start_epoch(0);
}

void TokenLoader::start_epoch(uint64_t epoch) {
  epoch_ = epoch;
  position_ = 0;
  SplitMix64 rng{seed_ ^ (0xD1B54A32D192ED03ull * (epoch + 1))};
  rng.next();
  const uint64_t n = shard_->size(), t = static_cast<uint64_t>(seq_len_);
  offset_ = rng.below(std::min(t, n - t));  // keeps at least one window: o_e <= N - 1 - seq_len
  const uint64_t windows = (n - 1 - offset_) / t;
  order_.resize(windows);
  for (uint64_t i = 0; i < windows; ++i) order_[i] = i;
  for (uint64_t i = windows; i > 1; --i) std::swap(order_[i - 1], order_[rng.below(i)]);  // Fisher–Yates
}

void TokenLoader::next_batch(int32_t* out) {
  const uint64_t row = static_cast<uint64_t>(seq_len_) + 1;
  for (int64_t b = 0; b < batch_size_; ++b) {
    if (position_ >= order_.size()) start_epoch(epoch_ + 1);
    const uint64_t start = offset_ + order_[position_++] * static_cast<uint64_t>(seq_len_);
    shard_->copy(start, row, out + b * row);
  }
  ++batches_served_;
}

std::vector<int32_t> TokenLoader::next_batch() {
  std::vector<int32_t> out(static_cast<std::size_t>(batch_size_) * static_cast<std::size_t>(seq_len_ + 1));
  next_batch(out.data());
  return out;
}

LoaderState TokenLoader::state() const {
  LoaderState s;
  s.epoch = epoch_;
  s.position = position_;
  s.seed = seed_;
  s.batch_size = batch_size_;
  s.seq_len = seq_len_;
  s.token_count = shard_->size();
  s.payload_crc32 = shard_->header().payload_crc32;
  s.batches_served = batches_served_;
  return s;
}

void TokenLoader::restore(const LoaderState& s) {
  const auto mismatch = [&](const char* what, auto saved, auto now) {
    return DataError(fmt::format("cannot resume the loader on {}: the saved cursor has {} {} but this loader has {}",
                                 shard_->path(), what, saved, now));
  };
  if (s.seed != seed_) throw mismatch("seed", s.seed, seed_);
  if (s.seq_len != seq_len_) throw mismatch("seq_len", s.seq_len, seq_len_);
  if (s.batch_size != batch_size_) throw mismatch("batch_size", s.batch_size, batch_size_);
  if (s.token_count != shard_->size()) throw mismatch("shard token_count", s.token_count, shard_->size());
  if (s.payload_crc32 != shard_->header().payload_crc32) {
    throw mismatch("shard CRC-32", fmt::format("{:08x}", s.payload_crc32),
                   fmt::format("{:08x}", shard_->header().payload_crc32));
  }
  start_epoch(s.epoch);
  if (s.position > order_.size()) {
    throw DataError(fmt::format("loader state for {}: position {} is past the {} windows of epoch {}", shard_->path(),
                                s.position, order_.size(), s.epoch));
  }
  position_ = s.position;
  batches_served_ = s.batches_served;
}

// ---------------------------------------------------------------------------------------------------------
// SequentialLoader
// ---------------------------------------------------------------------------------------------------------

SequentialLoader::SequentialLoader(const std::string& shard_path, int64_t batch_size, int64_t seq_len,
                                   int64_t max_batches)
    : SequentialLoader(std::make_shared<const ShardReader>(shard_path), batch_size, seq_len, max_batches) {}

SequentialLoader::SequentialLoader(std::shared_ptr<const ShardReader> shard, int64_t batch_size, int64_t seq_len,
                                   int64_t max_batches)
    : shard_(std::move(shard)), batch_size_(batch_size), seq_len_(seq_len) {
  check_geometry(*shard_, batch_size_, seq_len_);
  windows_ = (shard_->size() - 1) / static_cast<uint64_t>(seq_len_);
  selected_ = windows_;
  if (max_batches > 0) {
    max_batches_ = max_batches;
    const uint64_t want = static_cast<uint64_t>(max_batches) * static_cast<uint64_t>(batch_size_);
    if (want < windows_) selected_ = want;
  }
  num_batches_ =
      static_cast<int64_t>((selected_ + static_cast<uint64_t>(batch_size_) - 1) / static_cast<uint64_t>(batch_size_));
}

uint64_t SequentialLoader::window(uint64_t k) const {
  if (k >= selected_)
    throw DataError(fmt::format("sequential loader on {}: window {} requested, it scores {}", shard_->path(), k,
                                selected_));
  if (selected_ == windows_) return k;
  // Spread evenly: floor(k * W / S), strictly increasing since S < W. 128-bit product: no overflow.
  return static_cast<uint64_t>((static_cast<unsigned __int128>(k) * windows_) / selected_);
}

double SequentialLoader::coverage() const {
  return static_cast<double>(tokens_scored()) / static_cast<double>(shard_->size() - 1);
}

std::string SequentialLoader::describe() const {
  if (whole_split())
    return fmt::format("whole val split: {} windows x {} = {} of {} predictable tokens ({:.1f}%)", windows_, seq_len_,
                       tokens_scored(), shard_->size() - 1, 100 * coverage());
  return fmt::format("SUBSAMPLE (eval.max_batches = {}): {} of {} windows spread over the split = {} of {} tokens "
                     "({:.1f}%)",
                     max_batches_, selected_, windows_, tokens_scored(), shard_->size() - 1, 100 * coverage());
}

int64_t SequentialLoader::rows(int64_t i) const {
  if (i < 0 || i >= num_batches_) {
    throw DataError(
        fmt::format("sequential loader on {}: batch {} requested, it has {}", shard_->path(), i, num_batches_));
  }
  const uint64_t first = static_cast<uint64_t>(i) * static_cast<uint64_t>(batch_size_);
  return static_cast<int64_t>(std::min<uint64_t>(static_cast<uint64_t>(batch_size_), selected_ - first));
}

std::vector<int32_t> SequentialLoader::batch(int64_t i) const {
  const int64_t n = rows(i);
  const uint64_t row = static_cast<uint64_t>(seq_len_) + 1;
  std::vector<int32_t> out(static_cast<std::size_t>(n) * row);
  for (int64_t r = 0; r < n; ++r) {
    const uint64_t w = window(static_cast<uint64_t>(i * batch_size_ + r));
    shard_->copy(w * static_cast<uint64_t>(seq_len_), row, out.data() + r * row);
  }
  return out;
}

}  // namespace bitforge::data
