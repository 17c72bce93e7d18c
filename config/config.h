// bitforge configuration: the one schema. Plain structs with defaults; config/config.cpp maps YAML onto them
// (strict: unknown keys, wrong types, out-of-range values and contradictions are errors naming file:line and
// the key path). Names follow Hugging Face TrainingArguments where one exists.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "config/model_config.h"
#include "data/corpus.h"
#include "data/prepare.h"

namespace bitforge {

/// Thrown for any invalid configuration: message names the file (or `--set`), line, key path and what was
/// expected, e.g. `configs/x.yaml:12: train.learnig_rate: unknown key (did you mean 'learning_rate'?)`.
class ConfigError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// ----------------------------------------------------------------------------------------------------------
// data
// ----------------------------------------------------------------------------------------------------------
using data::CorpusFormat;   // data/corpus.h
using data::TokenizerKind;  // data/prepare.h

struct DataConfig {
  CorpusFormat format = CorpusFormat::text_dir;
  std::string path = data::kDefaultCorpusDir;
  std::string glob = data::kDefaultCorpusGlob;  ///< for text_dir
  std::string text_field = "text";     ///< for jsonl
  /// YAML `data.tokenizer`: a kind bitforge trains on the corpus (sentencepiece_bpe | sentencepiece_unigram | byte),
  /// `teacher` (the distillation teacher's own tokenizer: distill.teacher's tokenizer.json / tokenizer.model), or a
  /// path (a Hugging Face model directory, tokenizer.json or tokenizer.model). The last two read as
  /// tokenizer = pretrained with tokenizer_path = "teacher" or the path.
  TokenizerKind tokenizer = TokenizerKind::sentencepiece_bpe;
  std::string tokenizer_path;          ///< "" | "teacher" | path (pretrained only; set through data.tokenizer)
  int64_t vocab_size = data::kDefaultVocabSize;  ///< SentencePiece vocabulary (byte: fixed 256 + specials)
  double val_fraction = data::kDefaultValFraction;  ///< fraction of documents held out, split by document
  int64_t max_documents = 0;           ///< 0 = all
  std::string output_dir = "";         ///< "" = <run_dir>/data
  uint64_t seed = 1234;                ///< train/val split (and tokenizer sampling); independent of train.seed
};

// ----------------------------------------------------------------------------------------------------------
// train (HF TrainingArguments names)
// ----------------------------------------------------------------------------------------------------------
enum class LrScheduler { cosine, linear, constant, two_stage };
enum class NonFinitePolicy { stop, skip };

struct TrainConfig {
  int64_t max_steps = 200;
  int64_t per_device_train_batch_size = 8;
  int64_t seq_len = 128;
  int64_t gradient_accumulation_steps = 1;
  double learning_rate = 1e-3;
  double min_lr_ratio = 0.1;           ///< final LR as a fraction of the peak (cosine/linear)
  LrScheduler lr_scheduler = LrScheduler::cosine;
  int64_t warmup_steps = 20;
  double weight_decay = 0.1;
  double adam_beta1 = 0.9;
  double adam_beta2 = 0.95;
  double adam_epsilon = 1e-8;
  double max_grad_norm = 1.0;          ///< 0 = no clipping
  uint64_t seed = 1234;
  bool bf16 = true;                    ///< bf16 autocast on CUDA (ignored on CPU)
  std::string device = "auto";         ///< auto | cpu | cuda
  int64_t threads = 0;                 ///< CPU threads, 0 = all cores
  int64_t logging_steps = 10;
  int64_t eval_steps = 100;
  int64_t eval_batches = 8;
  int64_t save_steps = 100;            ///< 0 = only at the end
  int64_t save_total_limit = 2;        ///< keep the last k checkpoints
  std::string resume_from_checkpoint;  ///< "" | auto | PATH
  NonFinitePolicy on_nonfinite = NonFinitePolicy::stop;
  bool skip_memory_check = false;      ///< experts: allocate even when the estimate exceeds available memory
  // Data parallelism (trainer/distributed.h): the world comes from the launcher's environment (RANK,
  // WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT: torchrun or `--nproc-per-node N`).
  std::string distributed_backend = "auto";  ///< auto (NCCL on CUDA, Gloo on CPU) | gloo | nccl
  double distributed_timeout_s = 300;        ///< a collective waiting longer fails, naming the missing rank
  int64_t zero_stage = 0;                    ///< 0: replicated AdamW; 1: AdamW moments sharded across ranks
  int64_t ddp_bucket_mb = 25;                ///< gradient all-reduce bucket size (MiB), like DDP's bucket_cap_mb
};

// ----------------------------------------------------------------------------------------------------------
// distill (research.md §2 conventions)
// ----------------------------------------------------------------------------------------------------------
enum class KdLoss { forward_kl, reverse_kl, jsd };
enum class HiddenLoss { mse, cosine };
enum class StudentInit { teacher, scratch };

struct DistillConfig {
  std::string teacher;                 ///< bitforge checkpoint dir or HF directory; "" = the run's teacher stage
  StudentInit student_init = StudentInit::teacher;
  double alpha_ce = 1.0;               ///< weight of CE on labels
  double alpha_kd = 1.0;               ///< weight of logit distillation (already multiplied by T^2)
  KdLoss kd_loss = KdLoss::forward_kl;
  double temperature = 2.0;
  double beta = 0.5;                   ///< generalized JSD mixing (0 = forward KL, 1 = reverse KL)
  double alpha_hidden = 0.0;
  HiddenLoss hidden_loss = HiddenLoss::mse;
  std::vector<int64_t> hidden_layers;  ///< layers whose hidden states are matched
  double alpha_attn = 0.0;             ///< MiniLM-v2 attention relations (BitDistill gamma)
  int64_t attn_layer = -1;             ///< -1 = last layer
  int64_t attn_relation_heads = 0;     ///< 0 = model's heads
  int64_t calibration_batches = 4;     ///< saliency anchors from teacher activations
};

// ----------------------------------------------------------------------------------------------------------
// export / eval / logging / run
// ----------------------------------------------------------------------------------------------------------
enum class GgufTernaryType { tq2_0, tq1_0, q2_0 };

struct ExportConfig {
  bool packed = true;                  ///< native packed .safetensors
  bool gguf = true;
  bool hf = false;                     ///< Hugging Face directory <export>/hf: effective weights + tokenizer files
  GgufTernaryType gguf_ternary = GgufTernaryType::tq2_0;
  std::string dtype = "bf16";          ///< unquantized tensors (packed), all weights (hf): bf16 | fp16 | fp32
};

/// The one evaluation definition (data/loader.h SequentialLoader): non-overlapping seq_len windows of the val split,
/// each scored from an empty context.
struct EvalConfig {
  int64_t max_batches = 0;             ///< 0 = the whole val split; > 0 = a subsample of that many batches spread over it
  int64_t batch_size = 8;
  int64_t seq_len = 128;
};

struct LoggingConfig {
  std::string level = "info";          ///< trace | debug | info | warn | error
  bool json_metrics = true;            ///< metrics.jsonl in the run directory
  bool plot = true;                    ///< loss-curve PNG via gnuplot at the end
};

/// Stages `bitforge run` executes in order.
struct RunConfig {
  std::string name = "default";
  std::string output_dir = "runs";     ///< run directory = <output_dir>/<name>
  std::vector<std::string> stages = {"prepare-data", "teacher", "distill", "export", "eval"};
  int64_t teacher_max_steps = 0;       ///< 0 = train.max_steps
  /// With stages teacher + distill (student_init teacher): also continue the teacher in full precision for the
  /// distillation's steps (CE only, same schedule) — the teacher at the distilled student's total budget, the row
  /// the summary's ratios use.
  bool fair_teacher = true;
  /// With stage train: also train a full-precision model from scratch at the QAT student's budget (train.max_steps),
  /// the reference for the QAT-from-scratch row.
  bool fp_control = true;
};

struct Config {
  ModelConfig model;
  QuantConfig quant;
  DataConfig data;
  TrainConfig train;
  DistillConfig distill;
  ExportConfig export_;  ///< YAML key `export`
  EvalConfig eval;
  LoggingConfig logging;
  RunConfig run;
};

/// Loads a YAML config file, applies `--set section.key=value` overrides (same validation), validates the
/// whole. Throws ConfigError (file:line, key path, expected form) on any problem; never crashes on garbage.
Config load_config(const std::string& path, const std::vector<std::string>& overrides = {});

/// Parses YAML text (`source` names it in errors). Empty text gives the defaults.
Config parse_config(const std::string& yaml_text, const std::string& source,
                    const std::vector<std::string>& overrides = {});

/// Applies one `section.key=value` override to a config. Throws ConfigError.
void apply_override(Config& cfg, const std::string& assignment);

/// Cross-field checks (GQA divisibility, group size, contradictory pairs). Throws ConfigError.
void validate(const Config& cfg, const std::string& source);

/// Range-checks a model section that did not come from YAML (a packed file's or checkpoint's metadata) with the
/// schema's per-key ranges and the model's cross-key rules. `source` names it in errors. Throws ConfigError.
void validate_model_config(const ModelConfig& model, const std::string& source);

/// The effective config as YAML; `parse_config(to_yaml(c))` gives back `c`.
std::string to_yaml(const Config& cfg);

/// Writes the effective config atomically (temp file + rename).
void save_config(const Config& cfg, const std::string& path);

}  // namespace bitforge
