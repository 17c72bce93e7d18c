// TokenLoader: window geometry, per-epoch coverage, determinism, resume from a JSON cursor; SequentialLoader.
#include <gtest/gtest.h>

#include <filesystem>
#include <nlohmann/json.hpp>
#include <random>
#include <set>
#include <string>

#include "data/loader.h"

namespace fs = std::filesystem;
using namespace bitforge::data;

namespace {

struct TempShard {
  std::string path;
  // A shard whose token i is i (vocab = n), so every row shows where it was cut from.
  explicit TempShard(uint32_t n) {
    std::random_device rd;
    path =
        (fs::temp_directory_path() / ("bitforge_data_loader_" + std::to_string(rd()) + std::to_string(rd()) + ".bin"))
            .string();
    ShardWriter::Options o;
    o.vocab_size = n;
    o.eos_id = 0;
    ShardWriter w(path, o);
    std::vector<int32_t> ids(n);
    for (uint32_t i = 0; i < n; ++i) ids[i] = static_cast<int32_t>(i);
    w.add_tokens(ids);
    w.finish();
  }
  ~TempShard() {
    std::error_code ec;
    fs::remove(path, ec);
  }
};

std::vector<std::vector<int32_t>> take(TokenLoader& l, int n) {
  std::vector<std::vector<int32_t>> out;
  for (int i = 0; i < n; ++i) out.push_back(l.next_batch());
  return out;
}

}  // namespace

TEST(DataLoader, RowsAreContiguousWindowsCoveringTheEpoch) {
  TempShard s(1000);
  const int64_t B = 4, T = 16;
  TokenLoader l(s.path, B, T, 42);
  const uint64_t windows = l.windows_in_epoch();
  EXPECT_GE(windows, (1000 - 1 - (T - 1)) / T);
  EXPECT_LE(windows, (1000 - 1) / T);
  std::set<int32_t> starts;
  int64_t served = 0;
  while (static_cast<uint64_t>(served) + B <= windows) {
    const auto batch = l.next_batch();
    ASSERT_EQ(batch.size(), static_cast<std::size_t>(B * (T + 1)));
    for (int64_t b = 0; b < B; ++b) {
      const int32_t first = batch[b * (T + 1)];
      for (int64_t t = 0; t <= T; ++t) ASSERT_EQ(batch[b * (T + 1) + t], first + t);  // contiguous
      starts.insert(first);
    }
    served += B;
  }
  EXPECT_EQ(starts.size(), static_cast<std::size_t>(served));  // no window twice within an epoch
  const int32_t offset = *starts.begin() % T;
  for (int32_t st : starts) EXPECT_EQ(st % T, offset);  // one cut grid per epoch, non-overlapping windows
  EXPECT_EQ(l.epoch(), 0u);
}

TEST(DataLoader, DeterministicFromSeed) {
  TempShard s(1000);
  TokenLoader a(s.path, 3, 20, 7), b(s.path, 3, 20, 7), c(s.path, 3, 20, 8);
  const auto ba = take(a, 40), bb = take(b, 40), bc = take(c, 40);  // 40*3 windows > 2 epochs of ~49
  EXPECT_EQ(ba, bb);
  EXPECT_NE(ba, bc);
  EXPECT_GE(a.epoch(), 2u);
}

TEST(DataLoader, ResumeFromJsonStateGivesTheSameBatches) {
  TempShard s(1000);
  TokenLoader original(s.path, 5, 12, 123);
  take(original, 13);  // stop mid-epoch (83 windows per epoch at most)
  const std::string saved = nlohmann::json(original.state()).dump();
  const auto expected = take(original, 30);  // crosses at least one epoch boundary

  TokenLoader resumed(s.path, 5, 12, 123);
  resumed.restore(nlohmann::json::parse(saved).get<LoaderState>());
  EXPECT_EQ(take(resumed, 30), expected);
  EXPECT_EQ(resumed.state().batches_served, original.state().batches_served);

  TokenLoader other_seed(s.path, 5, 12, 124);
  EXPECT_THROW(other_seed.restore(nlohmann::json::parse(saved).get<LoaderState>()), DataError);
  TokenLoader other_len(s.path, 5, 13, 123);
  EXPECT_THROW(other_len.restore(nlohmann::json::parse(saved).get<LoaderState>()), DataError);
  EXPECT_THROW(nlohmann::json::parse(R"({"epoch": 1})").get<LoaderState>(), DataError);
}

TEST(DataLoader, SequentialForEvaluation) {
  TempShard s(100);
  SequentialLoader v(s.path, 4, 10, 0);
  EXPECT_EQ(v.num_windows(), 9u);  // (100 - 1) / 10
  EXPECT_EQ(v.num_batches(), 3);   // 4 + 4 + 1
  EXPECT_EQ(v.rows(2), 1);
  const auto b0 = v.batch(0);
  ASSERT_EQ(b0.size(), 4u * 11);
  EXPECT_EQ(b0[0], 0);
  EXPECT_EQ(b0[10], 10);
  EXPECT_EQ(b0[11], 10);  // row 1 starts where row 0's last label is
  const auto b2 = v.batch(2);
  ASSERT_EQ(b2.size(), 11u);
  EXPECT_EQ(b2[0], 80);
  EXPECT_EQ(b2[10], 90);
  EXPECT_EQ(SequentialLoader(s.path, 4, 10, 2).num_batches(), 2);
  EXPECT_THROW(v.batch(3), DataError);
}

TEST(DataLoader, ShardTooShort) {
  TempShard s(10);
  try {
    TokenLoader l(s.path, 1, 10, 0);
    ADD_FAILURE() << "expected DataError";
  } catch (const DataError& e) {
    EXPECT_NE(std::string(e.what()).find("holds 10 tokens, fewer than one window of seq_len + 1 = 11"),
              std::string::npos)
        << e.what();
  }
  TokenLoader ok(s.path, 2, 9, 0);  // exactly one window: every row is the whole shard
  const auto batch = ok.next_batch();
  EXPECT_EQ(batch[0], 0);
  EXPECT_EQ(batch[10], 0);
}
