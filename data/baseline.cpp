#include "data/baseline.h"

#include <fmt/format.h>

#include <cmath>
#include <vector>

namespace bitforge::data {

namespace {
// ln p(t) of the add-one unigram model fit on `train`.
std::vector<double> unigram_log_probs(const ShardReader& train, uint32_t vocab) {
  std::vector<uint64_t> counts(vocab, 0);
  for (uint64_t i = 0; i < train.size(); ++i) {
    const uint32_t t = train[i];
    if (t >= vocab)
      throw DataError(fmt::format("shard {}: token {} is id {}, not below vocab_size {}", train.path(), i, t, vocab));
    ++counts[t];
  }
  const double log_denominator = std::log(static_cast<double>(train.size()) + static_cast<double>(vocab));
  std::vector<double> log_p(vocab);
  for (uint32_t t = 0; t < vocab; ++t) log_p[t] = std::log(static_cast<double>(counts[t]) + 1.0) - log_denominator;
  return log_p;
}
}  // namespace

double unigram_perplexity(const ShardReader& train, const SequentialLoader& val) {
  const ShardReader& v = val.shard();
  if (train.vocab_size() != v.vocab_size())
    throw DataError(fmt::format("unigram perplexity: train shard {} has vocab {} but val shard {} has vocab {}",
                                train.path(), train.vocab_size(), v.path(), v.vocab_size()));
  const uint32_t vocab = train.vocab_size();
  const auto log_p = unigram_log_probs(train, vocab);
  const uint64_t T = static_cast<uint64_t>(val.seq_len());
  long double nll = 0;
  uint64_t n = 0;
  for (uint64_t k = 0; k < val.num_selected(); ++k) {
    const uint64_t start = val.window(k) * T;
    for (uint64_t i = start + 1; i <= start + T; ++i, ++n) {
      const uint32_t t = v[i];
      if (t >= vocab)
        throw DataError(fmt::format("shard {}: token {} is id {}, not below vocab_size {}", v.path(), i, t, vocab));
      nll -= log_p[t];
    }
  }
  return std::exp(static_cast<double>(nll / static_cast<long double>(n)));
}

double unigram_perplexity(const ShardReader& train, const ShardReader& val) {
  if (train.vocab_size() != val.vocab_size()) {
    throw DataError(fmt::format("unigram perplexity: train shard {} has vocab {} but val shard {} has vocab {}",
                                train.path(), train.vocab_size(), val.path(), val.vocab_size()));
  }
  if (val.size() == 0) throw DataError(fmt::format("unigram perplexity: val shard {} holds no tokens", val.path()));
  const uint32_t vocab = train.vocab_size();
  std::vector<uint64_t> counts(vocab, 0);
  // Ids are range-checked here too: a reader opened with verify_payload = false has not checked them.
  const auto check = [&](const ShardReader& shard, uint64_t i) {
    const uint32_t t = shard[i];
    if (t >= vocab) {
      throw DataError(fmt::format("shard {}: token {} is id {}, not below vocab_size {}", shard.path(), i, t, vocab));
    }
    return t;
  };
  for (uint64_t i = 0; i < train.size(); ++i) ++counts[check(train, i)];
  // ln p(t) per id once, then a sum over val in long double to keep millions of terms accurate.
  const double log_denominator = std::log(static_cast<double>(train.size()) + static_cast<double>(vocab));
  std::vector<double> log_p(vocab);
  for (uint32_t t = 0; t < vocab; ++t) log_p[t] = std::log(static_cast<double>(counts[t]) + 1.0) - log_denominator;
  long double nll = 0;
  for (uint64_t i = 0; i < val.size(); ++i) nll -= log_p[check(val, i)];
  return std::exp(static_cast<double>(nll / static_cast<long double>(val.size())));
}

double unigram_perplexity(const std::string& train_shard, const std::string& val_shard) {
  return unigram_perplexity(ShardReader(train_shard), ShardReader(val_shard));
}

}  // namespace bitforge::data
