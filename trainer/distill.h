// Distillation of a 1-bit student from a full-precision teacher (bitforge checkpoint or Hugging Face
// Llama/Qwen3 directory). Loss = alpha_ce·CE + alpha_kd·T²·D_KD(teacher, student) + alpha_hidden·L_hidden
// + alpha_attn·L_relation (DistilBERT / torchtune / TRL GKD conventions; BitDistill arXiv 2510.13998 for the
// MiniLM-v2 attention-relation term). The teacher runs frozen without gradients (bf16 on GPU).
#pragma once

#include <memory>
#include <string>

#include "data/loader.h"
#include "data/tokenizer.h"
#include "config/config.h"
#include "trainer/model.h"
#include "trainer/train.h"

namespace bitforge {

/// Mean per-token KL(reference ‖ model) at temperature 1 (nats) and top-1 agreement (fraction of positions
/// where both argmax agree) over the windows of `val` (max_batches = 0: all of them, as evaluate()).
struct Comparison {
  double kl = 0, top1 = 0;
  int64_t tokens = 0;
};
Comparison compare_models(Transformer& reference, Transformer& model, const data::SequentialLoader& val,
                          int64_t max_batches, const torch::Device& device);

/// Loads a teacher: a bitforge checkpoint (directory with step-*/ or a step directory) or a Hugging Face
/// directory (config.json + safetensors). Checks that its tokenizer is the data's: the same vocabulary (every token
/// string and id, the special ids; data::compare_vocabularies) — a teacher without a tokenizer, or with another one,
/// throws std::runtime_error naming both tokenizers and the first differences. Returns it frozen, in eval mode, on `device`.
Transformer load_teacher(const std::string& path, const data::Tokenizer& tokenizer, const torch::Device& device,
                         ModelConfig* teacher_shape = nullptr);

/// Where a teacher's tokenizer lives, for preparing the student's data with it (data.tokenizer: teacher): a Hugging
/// Face directory itself (data::load_tokenizer reads its tokenizer.json or tokenizer.model), or the tokenizer file of
/// a bitforge checkpoint (the latest complete step of a checkpoints/ directory). Throws std::runtime_error naming
/// the path when it is neither or has no tokenizer.
std::string teacher_tokenizer_path(const std::string& teacher);

struct DistillResult {
  TrainResult train;
  EvalResult teacher, student;
  double kl = 0, top1 = 0;
};

/// Runs the distillation stage into out_dir (checkpoints/, metrics.jsonl, loss.png, report.json).
/// The student takes the teacher's shape; with distill.student_init = teacher its weights start from the
/// teacher's (BitLinear swap, scales from absmean, anchors by saliency on calibration batches when
/// quant.anchor_selection = saliency, λ warm-up per quant.warmup_lambda_steps).
DistillResult run_distillation(const Config& cfg, const std::string& teacher_path, const std::string& out_dir,
                               const std::string& train_shard, const std::string& val_shard,
                               std::shared_ptr<data::Tokenizer> tokenizer);

}  // namespace bitforge
