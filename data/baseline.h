// Baselines that trained models are compared against.
#pragma once

#include <string>

#include "data/error.h"
#include "data/loader.h"
#include "data/shard.h"

namespace bitforge::data {

// Perplexity of an add-one (Laplace) smoothed unigram model fit on the train shard, evaluated on every token of the
// val shard:
//   p(t) = (count_train(t) + 1) / (N_train + V),   PPL = exp( -(1/N_val) Σ_i ln p(val_i) )
// where V is the (shared) vocab size. bos/eos tokens count like any other token. A language model that cannot beat
// this has learned nothing beyond token frequencies. Throws DataError when the vocab sizes differ or val is empty.
double unigram_perplexity(const ShardReader& train, const ShardReader& val);
double unigram_perplexity(const std::string& train_shard, const std::string& val_shard);
// The same model scored on exactly the labels a SequentialLoader's windows score (inputs row[:-1], labels row[1:]
// of every selected window): the baseline on the tokens the models are scored on.
double unigram_perplexity(const ShardReader& train, const SequentialLoader& val);

}  // namespace bitforge::data
