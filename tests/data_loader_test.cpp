// TokenLoader: window geometry, per-epoch coverage, determinism, resume from a JSON cursor; SequentialLoader.
#include <gtest/gtest.h>

#include <filesystem>
#include <nlohmann/json.hpp>
#include <random>
#include <set>
#include <string>

#include "data/baseline.h"
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

// The one evaluation definition (issue #20): max_batches = 0 is the whole split; max_batches > 0 is a subsample spread
// over the whole split (never its start), and both say what they cover.
TEST(DataLoader, EvaluationCoversTheWholeSplitOrASpreadSubsample) {
  TempShard s(1001);  // 1000 predictable tokens, W = 100 windows of 10
  SequentialLoader all(s.path, 8, 10, 0);
  EXPECT_TRUE(all.whole_split());
  EXPECT_EQ(all.num_selected(), 100u);
  EXPECT_EQ(all.tokens_scored(), 1000);
  EXPECT_DOUBLE_EQ(all.coverage(), 1.0);
  EXPECT_NE(all.describe().find("whole val split"), std::string::npos);
  int64_t rows = 0;
  for (int64_t i = 0; i < all.num_batches(); ++i) rows += all.rows(i);
  EXPECT_EQ(rows, 100);

  SequentialLoader sub(s.path, 4, 10, 3);  // S = 12 of 100 windows
  EXPECT_FALSE(sub.whole_split());
  EXPECT_EQ(sub.num_selected(), 12u);
  EXPECT_EQ(sub.num_batches(), 3);
  EXPECT_EQ(sub.tokens_scored(), 120);
  EXPECT_NEAR(sub.coverage(), 0.12, 1e-12);
  EXPECT_NE(sub.describe().find("SUBSAMPLE"), std::string::npos);
  EXPECT_NE(sub.describe().find("12 of 100 windows"), std::string::npos);
  std::set<uint64_t> seen;
  for (uint64_t k = 0; k < sub.num_selected(); ++k) {
    EXPECT_EQ(sub.window(k), k * 100 / 12);
    seen.insert(sub.window(k));
  }
  EXPECT_EQ(seen.size(), 12u);
  EXPECT_EQ(sub.window(0), 0u);
  EXPECT_GE(sub.window(11), 90u);  // reaches the end of the split, not only its start
  const auto b2 = sub.batch(2);    // windows 8..11 of the subsample: 66, 75, 83, 91
  EXPECT_EQ(b2[0], 660);
  EXPECT_EQ(b2[3 * 11], 910);
  EXPECT_EQ(b2[3 * 11 + 10], 920);
  EXPECT_THROW(sub.window(12), DataError);
  // A subsample at least as large as the split is the whole split.
  EXPECT_TRUE(SequentialLoader(s.path, 8, 10, 13).whole_split());
}

TEST(DataLoader, UnigramBaselineScoresTheEvaluatedLabels) {
  TempShard train(64), val(64);  // token i = i; vocab 64
  // Whole split, seq_len 9: W = 7 windows, labels are tokens 1..63 — all but the first token.
  SequentialLoader all(val.path, 4, 9, 0);
  const ShardReader tr(train.path);
  // Each id once in train: p = 2 / (64 + 64) for every id, so every scored label costs ln 64.
  EXPECT_NEAR(unigram_perplexity(tr, all), 64.0, 1e-9);
  EXPECT_NEAR(unigram_perplexity(tr, SequentialLoader(val.path, 1, 9, 2)), 64.0, 1e-9);
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
