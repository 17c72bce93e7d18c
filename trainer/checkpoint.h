// Checkpoints (design.md): a directory step-NNNNNNN/ holding
//   model.safetensors      Hugging Face Llama names (model.layers.{i}.self_attn.q_proj.weight, ..., lm_head.weight)
//                          plus each BitLinear's quantizer state beside its weight (…q_proj.weight_scale,
//                          …q_proj.anchor_index, …q_proj.input_norm_weight); fp32
//   optimizer.safetensors  AdamW moments (exp_avg / exp_avg_sq / step per parameter name)
//   trainer_state.json     step, tokens seen, RNG states, data-loader cursor, metrics so far
//   config.yaml            the effective config
//   tokenizer.model|.bin   the tokenizer, so a checkpoint is self-contained
//   COMPLETE               written last: the manifest, every other file's size and XXH3-64 (trainer/checkpoint_io.h);
//                          a directory without it is never loaded, and every file is verified before loading
// Written into step-NNNNNNN.tmp-<pid>/ and published by an atomic swap/rename (trainer/checkpoint_io.h), so an
// interrupted write or replacement always leaves the newest or the previous complete checkpoint intact.
#pragma once

#include <torch/torch.h>

#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "data/tokenizer.h"
#include "config/config.h"
#include "trainer/checkpoint_io.h"  // CheckpointError
#include "trainer/model.h"

namespace bitforge {


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

/// Newest complete checkpoint in `dir` (by step), or nullopt. Incomplete ones (no COMPLETE marker, *.tmp-*) and
/// damaged ones (a file listed in the manifest missing or of another size) are skipped with a warning.
std::optional<std::string> latest_checkpoint(const std::string& dir);

/// Resume with fallback: tries the checkpoints in `dir` newest first (verifying every file's checksum) and loads the
/// first intact one into `model` and `optimizer`; a damaged one is skipped with a warning naming the problem.
/// Returns its path and trainer_state.json in `state`, or nullopt when `dir` holds no loadable checkpoint.
std::optional<std::string> load_latest_intact_checkpoint(const std::string& dir, Transformer& model,
                                                         torch::optim::Optimizer* optimizer, nlohmann::json* state);

/// Loads model weights (strict: every tensor present with the right shape) and, if given, the optimizer
/// state. Returns trainer_state.json. Throws CheckpointError.
nlohmann::json load_checkpoint(const std::string& checkpoint_dir, Transformer& model,
                               torch::optim::Optimizer* optimizer);

/// A model ready to run: config, model with weights, tokenizer. `path` is a checkpoint directory (step-*)
/// or a directory holding checkpoints (the newest intact one is used; damaged newer ones are skipped with a
/// warning). Refuses (ResourceError) a model whose memory estimate exceeds the available memory. Throws
/// CheckpointError.
struct LoadedModel {
  Config config;
  Transformer model{nullptr};
  std::shared_ptr<data::Tokenizer> tokenizer;
  std::string checkpoint_dir;
  int64_t step = 0;
};
LoadedModel load_model(const std::string& path);

}  // namespace bitforge
