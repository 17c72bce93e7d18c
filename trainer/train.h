// The training loop: AdamW with parameter groups, LR schedules, gradient accumulation and clipping, the
// non-finite guard, periodic validation, atomic checkpoints with exact resume, progress lines with tokens/s
// and ETA, metrics.jsonl and a loss-curve PNG. Used for full-precision teachers, QAT students and (with a
// custom loss) distillation.
#pragma once

#include <torch/torch.h>

#include <functional>
#include <memory>
#include <string>

#include "data/loader.h"
#include "data/tokenizer.h"
#include "config/config.h"
#include "trainer/model.h"

namespace bitforge {

/// Thrown by the non-finite guard (train.on_nonfinite = stop): names the step and what was not finite.
class NonFiniteError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// Learning rate at optimizer step `step` (0-based) for the configured schedule:
///   warm-up: linear from lr/warmup to lr over warmup_steps;
///   cosine / linear: from lr down to min_lr_ratio·lr at max_steps; constant: lr;
///   two_stage (BitNet b1.58 FAQ): cosine from lr towards min_lr_ratio·lr whose first half runs at full peak and
///   whose second half starts at 2/3 of it (the "LR drop halfway"); weight decay is 0 in the second half.
double lr_at(const TrainConfig& t, int64_t step);
/// Weight decay at `step` (two_stage: 0 from the halfway point on).
double weight_decay_at(const TrainConfig& t, int64_t step);

/// Validation loss (mean token cross-entropy, nats) and perplexity = exp(loss) over the windows of `loader` — the
/// one evaluation definition (data/loader.h SequentialLoader): build the loader with validation_loader() and pass
/// max_batches = 0 to score every window it selects (the whole split by default); max_batches > 0 scores only its
/// first max_batches batches (progress checks only, never a reported figure).
struct EvalResult {
  double loss = 0, perplexity = 0;
  int64_t tokens = 0;     ///< labels scored
  double coverage = 0;    ///< tokens / predictable tokens of the split
};
EvalResult evaluate(Transformer& model, const data::SequentialLoader& loader, int64_t max_batches,
                    const torch::Device& device);

/// The validation windows every stage and command scores: eval.batch_size x eval.seq_len windows of `val_shard`,
/// the whole split when eval.max_batches = 0 (default), else a subsample of eval.max_batches batches spread over it.
data::SequentialLoader validation_loader(const Config& cfg, const std::string& val_shard);
data::SequentialLoader validation_loader(const Config& cfg, std::shared_ptr<const data::ShardReader> val_shard);

/// Loss of one micro-batch: input [B,T] int64, labels [B,T] int64 → scalar. `parts` receives named
/// components for logging (e.g. "ce", "kd").
using LossFn = std::function<torch::Tensor(Transformer& model, const torch::Tensor& input, const torch::Tensor& labels,
                                           std::map<std::string, double>& parts)>;

/// What on_step_end sees of one finished optimizer step.
struct StepInfo {
  std::string stage;
  int64_t step = 0;            ///< optimizer steps done (1-based)
  int64_t steps_this_run = 0;  ///< steps executed by this train() call (excludes those restored by a resume)
  double loss = 0;             ///< train loss of the step (mean over its micro-batches)
  double lr = 0, grad_norm = 0;
  int64_t tokens = 0;          ///< tokens seen so far
};

struct TrainSpec {
  std::string stage = "train";       ///< name in logs
  std::string output_dir;            ///< stage directory: checkpoints/, metrics.jsonl, loss.png
  std::string train_shard, val_shard;
  std::shared_ptr<data::Tokenizer> tokenizer;
  Config config;                     ///< effective config of this stage (quant.weight none = full precision)
  LossFn loss;                       ///< default: token cross-entropy
  std::function<void(Transformer&)> init;  ///< called on a fresh (not resumed) model, e.g. copy teacher weights
  /// Called after every optimizer step (after its logging, evaluation and checkpoint), like HF TrainerCallback's
  /// on_step_end: progress reporting, early stopping (throw to stop; a checkpoint already saved stays), custom
  /// metrics. Not called for a step the non-finite guard skipped.
  std::function<void(const StepInfo&)> on_step_end;
};

struct TrainResult {
  std::string checkpoint_dir;
  int64_t steps = 0, tokens = 0, parameters = 0, skipped_steps = 0;
  double final_train_loss = 0, wall_seconds = 0, tokens_per_second = 0;
  EvalResult val;
  std::vector<double> losses;  ///< train loss per optimizer step, from the first step this run executed
};

/// Runs (or resumes, per train.resume_from_checkpoint) a training stage. Throws NonFiniteError,
/// CheckpointError, data::DataError.
TrainResult train(const TrainSpec& spec);

/// "cuda" when requested/available, else "cpu". Sets the CPU thread count from train.threads.
torch::Device select_device(const TrainConfig& t);

}  // namespace bitforge
