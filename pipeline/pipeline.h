// The pipeline: bitforge's stages glued into one run — prepare data → teacher → QAT student → distill → export →
// eval — each a library function the command line (cli/), the tests and the benchmarks call alike. A run writes into
// its run directory <run.output_dir>/<run.name> (README "What the main job prints and writes").
//
// Layer: the top library. It may include runtime/, trainer/, export/, config/, data/, kernels/; only cli/ sits above.
// Errors: ConfigError (config/config.h) for invalid settings, data::DataError, formats::FormatError,
// CheckpointError and std::runtime_error naming the file or stage otherwise.
#pragma once

#include <nlohmann/json.hpp>

#include <functional>
#include <memory>
#include <string>

#include "config/config.h"
#include "data/prepare.h"
#include "data/tokenizer.h"
#include "runtime/packed_runtime.h"
#include "trainer/distill.h"
#include "trainer/train.h"

namespace bitforge::pipeline {

/// What every stage needs: the effective config and where the run lives.
struct RunContext {
  Config config;
  std::string config_path;  ///< "" when the defaults are used
  std::string run_dir;      ///< <run.output_dir>/<run.name>, created on demand
};

/// Prepared data of a run: token shards, the tokenizer, and the unigram baseline on the val split.
struct Prepared {
  data::PreparedData data;
  std::shared_ptr<data::Tokenizer> tokenizer;
  double unigram_ppl = 0;  ///< add-one unigram perplexity of the val split (data/baseline.h)
};

/// Creates the run directory, adds its log file and writes the effective config.yaml.
void begin_run(RunContext& ctx);

/// The run's prepared data (prepares it when missing or stale; prepare_data reuses up-to-date outputs). Fills
/// model.vocab_size from the tokenizer when it is 0; throws ConfigError when it is smaller than the tokenizer's.
Prepared ensure_data(RunContext& ctx);

/// The full-precision teacher's config derived from the student's: quant.weight none, no activation quantization,
/// run.teacher_max_steps steps when set.
Config teacher_config(const Config& c);

/// Stage `prepare-data` (begin_run + ensure_data, logged).
Prepared prepare_data_stage(RunContext& ctx);
/// Stage `train`: the config's model — QAT student (quant.weight binary/ternary, into <run>/student) or the
/// full-precision teacher (none, into <run>/teacher).
TrainResult train_stage(RunContext& ctx);
/// Stage `distill` into <run>/distill, teacher = distill.teacher or the run's teacher checkpoints.
DistillResult distill_stage(RunContext& ctx);
/// `bitforge run`: the stages in run.stages, in order, then the summary table and summary.json.
void run(RunContext& ctx);

/// Exports a checkpoint (directory) to <out>/model.packed.safetensors and, when configured and possible,
/// <out>/model.gguf; measures the packed runtime against the checkpoint on the val windows (and what folding the
/// anchors for GGUF costs) and writes <out>/export_report.json. Returns the packed file's path.
std::string export_checkpoint(const RunContext& ctx, const std::string& checkpoint, const std::string& out,
                              const std::string& val_shard);
/// Stage `export`: export_checkpoint of `checkpoint` (default: the run's latest distilled or QAT student) into
/// `output` (default <run>/export).
std::string export_stage(RunContext& ctx, const std::string& checkpoint, const std::string& output);

/// `bitforge eval`: validation loss/perplexity of a checkpoint or packed file (and KL / top-1 against `reference`
/// when given) as JSON: {model, packed, val_loss, val_perplexity, tokens, unigram_val_perplexity, val_data,
/// [reference, kl, top1_agreement], [resident_weight_bytes, fp16_bytes]}.
/// Writes nothing. The model carries its tokenizer: the val windows come from the config's prepared data when its
/// tokenizer is the model's, else from the config's corpus split and encoded in memory with the model's tokenizer
/// (val_data says which). Without a config file (ctx.config_path empty) a checkpoint's own data settings (corpus,
/// split, run directory) are used. Throws std::runtime_error naming the path when the model or reference does not exist, and when
/// neither prepared data nor the corpus is available.
nlohmann::json evaluate_model(RunContext& ctx, const std::string& model_path, const std::string& reference,
                              int activation_bits = 0);

/// `bitforge eval --text FILE`: perplexity of a text file under any model bitforge loads — a packed file, a bitforge
/// checkpoint, or a Hugging Face model directory — tokenized with the model's own tokenizer (a bos first when the
/// tokenizer adds one, as Hugging Face's tokenizer(text) does), scored with runtime::sliding_window_perplexity in
/// windows of eval.seq_len (capped at the model's context) moved by `stride` (0 = half a window). JSON: {model,
/// text, method, window, stride, text_tokens, tokens (scored), mean_nll, perplexity}. Writes nothing.
/// Throws std::runtime_error naming the file when it cannot be read or the model not loaded.
nlohmann::json evaluate_text(RunContext& ctx, const std::string& model_path, const std::string& text_file,
                             int64_t stride = 0, int activation_bits = 0);

/// Result of generate_text.
struct Generated {
  std::string text;  ///< the decoded new tokens (without the prompt)
  runtime::GenerationStats stats;
  int64_t resident_weight_bytes = 0, fp16_bytes = 0;
  int64_t max_position_embeddings = 0;  ///< the model's context (stats.stopped_at_context: generation ended there)
};
/// `bitforge generate`: continues `prompt` with a packed file or a checkpoint on the packed runtime (eos_id is the
/// model tokenizer's; the other options as given). A checkpoint is packed in memory (nothing is written).
/// on_text (optional) receives the decoded text as it grows, piece by piece (streaming); the pieces concatenate to
/// Generated::text.
Generated generate_text(RunContext& ctx, const std::string& model_path, const std::string& prompt,
                        const runtime::GenerationOptions& options, int activation_bits = 0,
                        const std::function<void(const std::string&)>& on_text = nullptr);

/// `bitforge inspect`: the table (or JSON) formats::inspect_file prints for a file or a checkpoint directory.
std::string inspect_path(const std::string& path, bool json);

}  // namespace bitforge::pipeline
