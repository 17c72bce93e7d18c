// Batches of token windows from a memory-mapped shard, for training (shuffled, resumable) and evaluation
// (sequential).
//
// A window is seq_len + 1 consecutive tokens; a batch is batch_size windows, returned row-major as int32 of shape
// [batch_size, seq_len + 1]: inputs = batch[:, :-1], labels = batch[:, 1:]. Windows do not overlap except for the
// one token that is the last label of a window and the first input of the next:
//   window k of an epoch with start offset o covers tokens [o + k*seq_len, o + k*seq_len + seq_len + 1).
//
// TokenLoader (training): each epoch e draws an offset o_e in [0, seq_len) and a permutation of the
// W_e = (N - 1 - o_e) / seq_len windows from a SplitMix64 stream seeded by (seed, e) — so epochs see different
// cut points and orders, and the sequence of batches depends only on (shard, batch_size, seq_len, seed). Fisher–Yates
// with our own bounded draws (not std::shuffle, whose output differs between standard libraries). A batch that
// runs past the end of an epoch continues with the next epoch. LoaderState is the cursor; restoring it reproduces
// exactly the batches that would have come next.
//
// SequentialLoader (evaluation) — bitforge's one evaluation definition. The split is cut into W = (N - 1) / seq_len
// non-overlapping windows from offset 0 (window w covers tokens [w*seq_len, w*seq_len + seq_len + 1)); each window is
// scored from an empty context, so every one of its seq_len labels is predicted from 0..seq_len-1 tokens of context
// (no striding/overlap). By default (max_batches = 0) all W windows are scored: W*seq_len labels, i.e. every token of
// the split except the first and the < seq_len tail. With max_batches = m > 0 and m*batch_size < W it is an explicit
// subsample of S = m*batch_size windows spread evenly over the whole split (window k of the subsample is
// floor(k*W/S)), never the first S — describe() says which and its coverage. Batch i holds subsample windows
// [i*batch_size, (i+1)*batch_size), never shuffled; the last batch may have fewer rows.
#pragma once

#include <cstdint>
#include <memory>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <vector>

#include "data/error.h"
#include "data/shard.h"

namespace bitforge::data {

struct LoaderState {
  uint64_t epoch = 0;     // epochs completed
  uint64_t position = 0;  // windows of the current epoch already returned
  // What the cursor is only valid for; checked on restore.
  uint64_t seed = 0;
  int64_t batch_size = 0;
  int64_t seq_len = 0;
  uint64_t token_count = 0;     // shard token count
  uint32_t payload_crc32 = 0;   // shard header's payload CRC-32
  uint64_t batches_served = 0;  // informational
};

// JSON object with the fields above (ADL hooks: `nlohmann::json j = state; j.get<LoaderState>()`).
// from_json throws DataError naming a missing or mistyped field.
void to_json(nlohmann::json& j, const LoaderState& state);
void from_json(const nlohmann::json& j, LoaderState& state);

class TokenLoader {
 public:
  // Opens (and validates) the shard. Throws DataError when batch_size/seq_len < 1 or the shard holds fewer than
  // seq_len + 1 tokens.
  TokenLoader(const std::string& shard_path, int64_t batch_size, int64_t seq_len, uint64_t seed);
  TokenLoader(std::shared_ptr<const ShardReader> shard, int64_t batch_size, int64_t seq_len, uint64_t seed);

  // The next batch: batch_size * (seq_len + 1) int32 ids, row-major.
  std::vector<int32_t> next_batch();
  // Same, written to `out` (batch_size * (seq_len + 1) elements).
  void next_batch(int32_t* out);

  LoaderState state() const;
  // Moves the cursor to `state`. Throws DataError when it was taken with another seed, batch_size, seq_len or shard.
  void restore(const LoaderState& state);

  int64_t batch_size() const { return batch_size_; }
  int64_t seq_len() const { return seq_len_; }
  uint64_t epoch() const { return epoch_; }
  uint64_t windows_in_epoch() const { return order_.size(); }  // W_e of the current epoch
  const ShardReader& shard() const { return *shard_; }

 private:
  void start_epoch(uint64_t epoch);
  std::shared_ptr<const ShardReader> shard_;
  int64_t batch_size_, seq_len_;
  uint64_t seed_;
  uint64_t epoch_ = 0, position_ = 0, batches_served_ = 0;
  uint64_t offset_ = 0;          // o_e
  std::vector<uint64_t> order_;  // permutation of the epoch's windows
};

class SequentialLoader {
 public:
  // max_batches = 0: all windows (the whole split); > 0: a subsample of max_batches*batch_size windows spread over
  // the split. Throws DataError like TokenLoader.
  SequentialLoader(const std::string& shard_path, int64_t batch_size, int64_t seq_len, int64_t max_batches = 0);
  SequentialLoader(std::shared_ptr<const ShardReader> shard, int64_t batch_size, int64_t seq_len,
                   int64_t max_batches = 0);

  int64_t num_batches() const { return num_batches_; }
  uint64_t num_windows() const { return windows_; }  // W = (N - 1) / seq_len: windows in the whole split
  uint64_t num_selected() const { return selected_; }  // windows scored: W, or the subsample's S
  // Index (in 0..W) of the k-th scored window, k < num_selected(); its first token is window(k)*seq_len.
  uint64_t window(uint64_t k) const;
  bool whole_split() const { return selected_ == windows_; }
  int64_t tokens_scored() const { return static_cast<int64_t>(selected_) * seq_len_; }  // labels scored
  // tokens_scored() / (N - 1), the predictable tokens of the split.
  double coverage() const;
  // One line for reports, e.g. "whole val split: 1602 windows x 128 = 205056 of 205173 predictable tokens (99.9%)"
  // or "SUBSAMPLE (eval.max_batches = 24): 192 of 1602 windows spread over the split = 24576 tokens (12.0%)".
  std::string describe() const;
  // Rows of batch i: batch_size except possibly the last.
  int64_t rows(int64_t i) const;
  // Batch i < num_batches(): rows(i) * (seq_len + 1) ids, row-major. Throws DataError for i out of range.
  std::vector<int32_t> batch(int64_t i) const;

  int64_t batch_size() const { return batch_size_; }
  int64_t seq_len() const { return seq_len_; }
  const ShardReader& shard() const { return *shard_; }

 private:
  std::shared_ptr<const ShardReader> shard_;
  int64_t batch_size_, seq_len_;
  uint64_t windows_ = 0, selected_ = 0;
  int64_t num_batches_ = 0, max_batches_ = 0;
};

}  // namespace bitforge::data
