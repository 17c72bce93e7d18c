// Checkpoints (design.md): a directory step-NNNNNNN/ holding
//   model.safetensors      Hugging Face Llama names (model.layers.{i}.self_attn.q_proj.weight, ..., lm_head.weight)
//                          plus each BitLinear's quantizer state beside its weight (…q_proj.weight_scale,
//                          …q_proj.anchor_index, …q_proj.input_norm_weight); fp32
//   optimizer.safetensors  AdamW moments (exp_avg / exp_avg_sq / step per parameter name)
//   trainer_state.json     step, tokens seen, RNG states, data-loader cursor, metrics so far
//   config.yaml            the effective config
//   tokenizer.model|.bin   the tokenizer, so a checkpoint is self-contained
//   COMPLETE               written last; a directory without it is never loaded
// Written into step-NNNNNNN.tmp-<pid>/ and renamed, so an interrupted write leaves no loadable checkpoint.
#pragma once

#include <torch/torch.h>

#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "data/tokenizer.h"
#include "config/config.h"
#include "trainer/model.h"

namespace bitforge {

/// A checkpoint that is missing, incomplete, corrupt or does not match the model. The message names the
/// directory or file and what was expected.
class CheckpointError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct CheckpointPayload {
  int64_t step = 0;
  nlohmann::json trainer_state;  ///< free-form: step, tokens, rng, loader cursor, ...
  const Config* config = nullptr;
  const data::Tokenizer* tokenizer = nullptr;
};

/// Writes a checkpoint atomically into <dir>/step-NNNNNNN and returns its path. `optimizer` may be null.
/// Keeps the newest `keep_last` complete checkpoints in `dir` and deletes older ones.
std::string save_checkpoint(const std::string& dir, Transformer& model, torch::optim::Optimizer* optimizer,
                            const CheckpointPayload& payload, int64_t keep_last);

/// Newest complete checkpoint in `dir` (by step), or nullopt. Incomplete ones (no COMPLETE marker, *.tmp-*)
/// are skipped with a warning.
std::optional<std::string> latest_checkpoint(const std::string& dir);

/// Loads model weights (strict: every tensor present with the right shape) and, if given, the optimizer
/// state. Returns trainer_state.json. Throws CheckpointError.
nlohmann::json load_checkpoint(const std::string& checkpoint_dir, Transformer& model,
                               torch::optim::Optimizer* optimizer);

/// A model ready to run: config, model with weights, tokenizer. `path` is a checkpoint directory (step-*)
/// or a directory holding checkpoints (the newest complete one is used). Throws CheckpointError.
struct LoadedModel {
  Config config;
  Transformer model{nullptr};
  std::shared_ptr<data::Tokenizer> tokenizer;
  std::string checkpoint_dir;
  int64_t step = 0;
};
LoadedModel load_model(const std::string& path);

}  // namespace bitforge
