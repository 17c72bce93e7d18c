// The packed-model runtime behind `bitforge eval` / `bitforge generate`: runs a bitforge.packed file
// (export/packed_format.h, written by export/model_export.h) on the CPU without the trainer.
//
// Quantized projections stay PACKED in memory: 1 bit or 2 bits per weight + fp16 scales + anchors, re-laid out at
// load time for the table-lookup kernels (kernels::RepackedMatrix; the export layout when the group size does not
// allow it), with A16 activations or the layer's per-token int8/int4 quantization exactly as BitLinear does it
// (after its optional input RMSNorm). Dense matrices (embedding / tied head, untied head) stay in the file's bf16
// (widened exactly) or fp32 and run through kernels/dense_gemv.h; norms and biases are fp32.
// The forward pass is plain loops plus those kernels, no LibTorch dispatch per operation (the per-token cost of a
// small model is otherwise dominated by dispatch): embedding (a packed table is dequantized row by row), pre-norm
// layers with RMSNorm (fp32, mean of squares in double), HF rotate-half RoPE (tables built with the same LibTorch
// ops as trainer/model.h), Qwen3 q/k norms, grouped-query causal attention over a KV cache (fp32 softmax), SwiGLU or
// relu2, SubLN, final norm, LM head. It follows trainer/model.h operation for operation; logits match the
// Transformer's forward to fp32 rounding (tests/trainer_export_runtime_test.cpp checks 1e-4 relative, and
// tests/export_runtime_test.cpp an independent LibTorch decoder).
// Products of fewer than 2^18 multiply-adds run on one thread (a fork/join, with its wake-up of sleeping OpenMP
// workers, costs more than they take; measured on the default model: see bench_generate).
// Not thread-safe: one PackedRuntime per thread. `threads` is the packed GEMV's thread count (0 = at::get_num_threads()).
// Errors: open() throws formats::FormatError for a malformed / non-packed file or a config it cannot run;
// logits()/step() throw std::invalid_argument for a token outside [0, V) or a sequence longer than
// max_position_embeddings.
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "export/packed_format.h"
#include "config/model_config.h"

namespace bitforge::runtime {

struct GenerationOptions {
  int64_t max_new_tokens = 64;
  double temperature = 0.0;  ///< <= 0: greedy (argmax, lowest id on ties)
  int64_t top_k = 0;         ///< 0 = no top-k cut
  double top_p = 1.0;        ///< nucleus: smallest set of most likely tokens with mass >= top_p
  uint64_t seed = 0;         ///< std::mt19937_64 seed; same seed + options → same tokens
  int32_t eos_id = -1;       ///< stop after emitting it (-1: never)
  std::function<void(int32_t)> on_token;  ///< called with each token as soon as it is sampled (streaming)
};

/// Timings of one generate() call (seconds, wall clock).
struct GenerationStats {
  int64_t prompt_tokens = 0;
  double prompt_seconds = 0;  ///< prefill of the prompt (PackedRuntime::prefill) and sampling its first token
  int64_t generated_tokens = 0;
  double decode_seconds = 0;  ///< the step() calls for the tokens after the first, with their sampling
  bool stopped_at_context = false;  ///< generation ended because the KV cache reached max_position_embeddings
  double prompt_tokens_per_s() const { return prompt_seconds > 0 ? prompt_tokens / prompt_seconds : 0; }
  /// decode steps per second (generated_tokens − 1 steps: the first token comes from the prefill)
  double decode_tokens_per_s() const { return decode_seconds > 0 ? (generated_tokens - 1) / decode_seconds : 0; }
};

class PackedRuntime {
 public:
  /// activation_bits: 0 runs every layer as exported (A16 layers with fp32 activations, exact to the checkpoint);
  /// 8 quantizes the input of every A16 packed layer per token to int8 (BitNet absmax, as A8 layers do) — the class
  /// of numerics llama.cpp uses for Q1_0/TQ2_0 (it quantizes activations to q8_0), for speed, at a small cost in
  /// fidelity that `bitforge eval --activation-bits 8` measures. Layers exported with A8/A4 keep theirs.
  static std::unique_ptr<PackedRuntime> open(const std::string& path, int threads = 0, int activation_bits = 0);
  /// The same from a packed model held in memory (formats::pack_model of an ExportModel: a checkpoint runs without
  /// a file being written). `label` names it in error messages.
  static std::unique_ptr<PackedRuntime> open(formats::PackedModel model, int threads = 0, int activation_bits = 0,
                                             const std::string& label = "(packed model in memory)");
  ~PackedRuntime();

  /// Logits [T, V] fp32 for a whole sequence (resets the KV cache first, leaves it holding the sequence).
  torch::Tensor logits(const std::vector<int32_t>& tokens);
  /// Appends one token at the current position, returns its next-token logits [V].
  torch::Tensor step(int32_t token);
  /// Appends several tokens (prefill) and returns their logits [T, V].
  torch::Tensor append(const std::vector<int32_t>& tokens);
  /// Appends several tokens (a prompt) and returns the LAST token's next-token logits [V] only — bit-identical to
  /// append(tokens)[T-1], leaving the same KV cache, with less work: the last layer's query, attention, output
  /// projection and MLP and the head run for the last token alone (llama.cpp computes only the requested logits
  /// the same way). generate() and bench_generate's pp test use it. Throws as append() does.
  torch::Tensor prefill(const std::vector<int32_t>& tokens);
  void reset();
  int64_t position() const;

  const ModelConfig& config() const;
  const std::string& tokenizer_kind() const;
  const std::vector<uint8_t>& tokenizer_bytes() const;
  const std::string& quant_config() const;

  /// Bytes of weights held in memory: packed codes + fp16 scales + anchors of quantized layers, fp32 of the rest.
  int64_t resident_weight_bytes() const;
  /// The same weights as FP16 (2 bytes per parameter).
  int64_t fp16_bytes() const;
  /// Number of quantized (packed) projections.
  int64_t packed_layers() const;

  /// prompt + up to max_new_tokens sampled tokens (returns only the new ones), fewer when eos comes or the context
  /// (max_position_embeddings) is full (stats->stopped_at_context). Resets the cache first.
  /// stats (optional): the prompt-processing and decode times, as llama.cpp prints them.
  std::vector<int32_t> generate(const std::vector<int32_t>& prompt, const GenerationOptions& options,
                                GenerationStats* stats = nullptr);

 private:
  PackedRuntime();
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

/// Mean negative log-likelihood of tokens[1..T) under logits[0..T-1) ([T, V]).
struct NllStats {
  double nll_sum = 0;
  int64_t count = 0;
  double mean() const { return count ? nll_sum / double(count) : 0.0; }
  double perplexity() const;
};
NllStats nll_from_logits(const torch::Tensor& logits, const std::vector<int32_t>& tokens);

/// Next-token logits [T, V] of some model for a window of T tokens, evaluated from an empty context.
using WindowLogits = std::function<torch::Tensor(const std::vector<int32_t>& window)>;

/// Perplexity of a token stream with a sliding window — the method of the Hugging Face guide "Perplexity of
/// fixed-length models" (transformers docs, perplexity.md): window k covers tokens [k·stride, min(k·stride + window,
/// N)) and scores only the labels no earlier window scored (its last end_k − end_{k−1} positions; the window's
/// first token is never a label because nothing in the window predicts it), the rest serving as context. Every
/// token but the stream's first is scored exactly once; with stride < window each scored token sees at least
/// window − stride tokens of context (llama.cpp's llama-perplexity instead scores the second half of disjoint
/// windows, which leaves the first halves unscored). NLL in nats accumulated in double, from fp32 logits.
/// Throws std::invalid_argument unless 1 <= stride <= window and window >= 2.
NllStats sliding_window_perplexity(const std::vector<int32_t>& tokens, int64_t window, int64_t stride,
                                   const WindowLogits& logits);

/// sliding_window_perplexity on the packed runtime with stride = window (disjoint windows, each from an empty cache;
/// a trailing window of one token scores nothing). window <= max_position_embeddings, else std::invalid_argument.
NllStats perplexity(PackedRuntime& rt, const std::vector<int32_t>& tokens, int64_t window);

/// Mean KL(softmax(reference) ‖ softmax(ours)) over positions (nats) and the fraction of positions whose
/// argmax agrees. Both [T, V] (or [V]).
struct KlTop1 {
  double mean_kl = 0;
  double top1 = 0;
  int64_t positions = 0;
};
KlTop1 kl_and_top1(const torch::Tensor& reference_logits, const torch::Tensor& logits);

/// One token from next-token logits [V] under the options (greedy / temperature / top-k / top-p).
int32_t sample_token(const torch::Tensor& logits, const GenerationOptions& options, std::mt19937_64& rng);

}  // namespace bitforge::runtime
