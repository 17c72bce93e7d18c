// Evaluation of a packed model on token windows: the runtime's side of bitforge's one evaluation definition.
//
// The windows are those of a data::SequentialLoader (data/loader.h): each row is seq_len + 1 consecutive tokens of
// the validation shard, inputs = row[:-1], labels = row[1:], every window scored from an empty KV cache — exactly the
// rows and labels trainer/train.h evaluate() scores for a checkpoint, so the two perplexities of the same model agree
// to fp32 rounding (tests/pipeline_export_runtime_test.cpp).
// Perplexity = exp(mean token NLL in nats), NLL accumulated in double.
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <functional>
#include <vector>

#include "data/loader.h"
#include "runtime/packed_runtime.h"

namespace bitforge::runtime {

/// Result of evaluate_packed. kl / top1 are −1 when no reference was given.
struct PackedEval {
  double loss = 0;        ///< mean token NLL, nats
  double perplexity = 0;  ///< exp(loss)
  double kl = -1;         ///< mean KL(softmax(reference) ‖ softmax(packed)) per token, nats
  double top1 = -1;       ///< fraction of tokens whose argmax agrees with the reference
  int64_t tokens = 0;     ///< tokens scored
};

/// Next-token logits [T, V] float32 of a reference model for a window of T tokens (e.g. the checkpoint the packed
/// file was exported from).
using ReferenceLogits = std::function<torch::Tensor(const std::vector<int32_t>& tokens)>;

/// Scores the first `max_batches` batches of `val` (all when max_batches <= 0 or larger than the loader holds) on the
/// packed runtime, optionally against a reference. Throws what PackedRuntime::logits throws (a token outside the
/// vocabulary, a window longer than max_position_embeddings).
PackedEval evaluate_packed(PackedRuntime& rt, const data::SequentialLoader& val, int64_t max_batches,
                           const ReferenceLogits& reference = nullptr);

}  // namespace bitforge::runtime
