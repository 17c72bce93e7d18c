// Model export: a trained model, given as plain data, → the native packed file (export/packed_format.h) or a
// GGUF file for stock llama.cpp, plus a report (JSON and a human table) of what each tensor became.
//
// The exporter takes plain structs, not a trainer::Transformer (bitforge_export must not call trainer symbols:
// bitforge_trainer links bitforge_export). trainer/export_model.h is the header-only adapter
// Transformer + Tokenizer → ExportModel for code that links bitforge_trainer.
//
// Native packed file (export_packed): quantized layers packed losslessly (codes, fp16 scales, anchors);
// every other tensor (embedding, norms, biases, lm_head, a BitLinear's input-norm weight
// `<module>.input_norm_weight`) stored as BF16 / F16 / F32 (PackedExportOptions::dtype). __metadata__.config is
// the JSON written by export_config_json():
//   {"format": "bitforge.packed", "model": {ModelConfig fields, hidden_act "swiglu"|"relu2"},
//    "quant": "<QuantConfig text as given>", "layers": {"<layer name>": {"activation_bits": 0|8|4,
//    "input_norm": bool, "input_norm_eps": e}}}
// which is what the runtime (runtime/packed_runtime.h) needs to run the file without the trainer.
//
// GGUF (export_gguf), arch `llama` (or `qwen3` when config.arch == "qwen3": attn_q_norm / attn_k_norm, no q/k
// permutation, as llama.cpp's Qwen3Model converter does):
//   KV:      general.architecture/name/file_type/quantization_version; <arch>.context_length,
//            .embedding_length, .block_count, .feed_forward_length, .rope.dimension_count, .rope.freq_base,
//            .attention.head_count, .attention.head_count_kv, .attention.layer_norm_rms_epsilon,
//            .attention.key_length, .attention.value_length, .vocab_size;
//            tokenizer.ggml.model = "llama" (SentencePiece) with .tokens, .scores, .token_type,
//            .bos/.eos/.unknown/.padding_token_id, .add_bos_token = true, .add_eos_token = false; or
//            tokenizer.ggml.model = "gpt2" (byte-level BPE from a Hugging Face tokenizer.json: Qwen2/3, Llama-3)
//            with .pre (llama.cpp's pre-tokenizer name, e.g. "qwen2"), .tokens (byte-to-unicode spelling),
//            .token_type, .merges ("a b" by rank), the special ids the tokenizer has, .add_bos_token as the
//            tokenizer does (false for Qwen) — what convert_hf_to_gguf.py writes; when the model's
//            vocabulary is larger than the tokenizer's, "[PAD<id>]" tokens (type unused, score −1000) fill it
//            (as convert_hf_to_gguf.py does).
//   tensors: token_embd, blk.N.{attn_norm, attn_q, attn_k, attn_v, attn_output, attn_q_norm, attn_k_norm,
//            ffn_norm, ffn_gate, ffn_up, ffn_down}.{weight,bias}, output_norm, output (omitted when tied).
//            llama: q/k rows (and biases) permuted exactly like convert_hf_to_gguf.py LlamaModel.permute
//            (HF rotate-half → llama.cpp's interleaved RoPE): new row h·d + 2i + j ← old row h·d + j·d/2 + i.
//   binary layers → Q1_0; ternary → TQ2_0 (TQ1_0 or Q2_0 by option). The codes and scales go in exactly
//            (q1_0_from_codes etc.) when every block of the target type (128 / 256 / 64 weights of a row) has
//            one scale — group granularity with a group size that is a multiple of the block, or channel /
//            tensor granularity; otherwise the effective weight (anchors folded) is requantized with the ggml
//            reference quantizer and the report gives the difference. A row length that is not a multiple of
//            the block falls back to the dense type (reported). Anchors cannot be represented: they are folded
//            (binary: code = sign(value) (value ≥ 0 → +1); ternary: code = clamp(round(value / scale), −1, 1)) and
//            the report gives their count and the resulting max / RMS weight difference per layer; measured
//            effects (perplexity, KL, top-1) go into ExportReport::measured when the caller has them.
//   dense:   2-D tensors F16 (BF16 / F32 by option), 1-D tensors (norms, biases) F32.
//   Refused with GgufExportError (message lists every reason): SubLN, relu2 MLP, a BitLinear input norm
//   (operators llama.cpp's llama graph does not have: such a file would load and print garbage, BitNet issue
//   #588); int8/int4 activation quantization unless GgufExportOptions::allow_activation_mismatch (llama.cpp
//   runs the weights with float activations; the report then says so); a byte-level tokenizer (kind "byte"):
//   llama.cpp's SentencePiece tokenizer escapes spaces to U+2581 and adds a space prefix, so the byte
//   vocabulary cannot be expressed as tokenizer.ggml.model "llama" without silently changing tokenization, and
//   a gpt2-style BPE vocabulary needs merges the byte tokenizer does not have — export the packed file instead.
#pragma once

#include <cstdint>
#include <map>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>
#include <vector>

#include "export/ggml_quants.h"
#include "data/hf_tokenizer.h"
#include "export/packed_format.h"
#include "config/config.h"  // ModelConfig (config/model_config.h), GgufTernaryType (export.gguf_ternary)

namespace bitforge::formats {

/// A model that cannot be written as GGUF for stock llama.cpp; what() lists every reason.
class GgufExportError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// One quantized projection (a BitLinear with quant.weight binary|ternary).
struct ExportLayer {
  std::string name;  ///< HF weight name, e.g. "model.layers.0.self_attn.q_proj.weight" ("lm_head.weight")
  WeightQuantizer quantizer = WeightQuantizer::binary;
  ScaleGranularity granularity = ScaleGranularity::group;
  int64_t group_size = 0;  ///< ignored for tensor/channel
  int64_t out = 0, in = 0;
  std::vector<int8_t> codes;          ///< [out*in] in {-1,+1} / {-1,0,+1}; anything at anchors
  std::vector<float> scales;          ///< [scale_rows*n_groups], fp16-representable
  std::vector<int64_t> anchor_index;  ///< sorted unique flat indices
  std::vector<float> anchor_value;    ///< full-precision weights there
  int activation_bits = 0;            ///< 0 (none, A16), 8 or 4: per-token absmax before the matmul
  std::vector<float> input_norm_weight;  ///< [in] when the BitLinear has an input RMSNorm, else empty
  double input_norm_eps = 1e-6;
};

/// An unquantized tensor (fp32 values) by HF name.
struct ExportTensor {
  std::vector<int64_t> shape;
  std::vector<float> data;
};

struct ExportModel {
  ModelConfig config;
  std::string quant_config;  ///< QuantConfig as text (YAML/JSON), recorded verbatim
  std::vector<ExportLayer> layers;
  std::map<std::string, ExportTensor> tensors;  ///< every other HF tensor (norms, embedding, biases, lm_head)
  std::string tokenizer_kind;                   ///< Tokenizer::kind(): "sentencepiece" | "hf_bpe" | "byte"
  std::string tokenizer_bytes;                  ///< Tokenizer::serialize()
  data::GgufVocab vocab;                        ///< the tokenizer as GGUF holds it (data::gguf_vocab)
};

/// What one tensor became.
struct TensorExportReport {
  std::string name;         ///< name in the written file
  std::string source;       ///< HF name
  std::string kind;         ///< "binary" | "ternary" | "dense"
  std::string stored_as;    ///< "packed-1bit", "packed-2bit", "Q1_0", "TQ2_0", "F16", "BF16", "F32", ...
  std::vector<int64_t> shape;
  int64_t params = 0;
  int64_t bytes = 0;        ///< bytes this tensor occupies in the file (all its parts)
  double bits_per_weight = 0;
  int64_t anchors = 0;      ///< anchors stored (packed) or folded (GGUF)
  bool exact = true;        ///< values reproduced exactly (GGUF: apart from folded anchors)
  double max_abs_diff = 0;  ///< vs the effective weight (GGUF), 0 for exact
  double rel_rms_diff = 0;  ///< ‖ΔW‖₂ / ‖W‖₂
  std::string note;
};

struct ExportReport {
  std::string format;  ///< "bitforge.packed" | "gguf"
  std::string path;
  std::vector<TensorExportReport> tensors;
  int64_t total_params = 0;
  int64_t tensor_bytes = 0;  ///< Σ tensors[].bytes
  int64_t fp16_bytes = 0;    ///< total_params · 2
  int64_t file_bytes = 0;    ///< size of the written file
  std::vector<std::string> notes;  ///< model-level caveats (activation mismatch, anchors folded, ...)
  nlohmann::json measured;         ///< caller-provided measured effect, e.g. {"ppl_packed":…, "ppl_gguf":…}

  nlohmann::json to_json() const;
  std::string to_table() const;  ///< human-readable, one line per tensor plus totals
};

struct PackedExportOptions {
  Dtype dtype = Dtype::BF16;  ///< unquantized tensors: BF16 | F16 | F32
};

struct GgufExportOptions {
  GgufTernaryType ternary = GgufTernaryType::tq2_0;
  GgmlType dense = GgmlType::F16;  ///< 2-D unquantized tensors: F16 | BF16 | F32
  bool allow_activation_mismatch = false;
  std::string name = "bitforge";   ///< general.name
};

/// The packed model export_packed writes, in memory (nothing is written; `report`, when given, receives the
/// per-tensor part of export_packed's report). Throws as export_packed does.
PackedModel pack_model(const ExportModel& model, const PackedExportOptions& options = {}, ExportReport* report = nullptr);

/// Writes the packed native file (atomically). Throws std::invalid_argument (bad layer data, naming the
/// layer), FormatError, std::runtime_error (I/O).
ExportReport export_packed(const ExportModel& model, const std::string& path, const PackedExportOptions& options = {});

/// Writes a GGUF file (atomically). Throws GgufExportError for a model GGUF cannot express (see above),
/// std::invalid_argument for inconsistent data.
ExportReport export_gguf(const ExportModel& model, const std::string& path, const GgufExportOptions& options = {});

/// The packed file's __metadata__.config JSON (layout in the file comment).
nlohmann::json export_config_json(const ExportModel& model);
nlohmann::json model_config_to_json(const ModelConfig& c);
/// Throws FormatError naming the missing/ill-typed field.
ModelConfig model_config_from_json(const nlohmann::json& j);

/// The code a full-precision anchor weight `value` becomes when a format cannot hold anchors (GGUF): binary
/// sign(value) with value ≥ 0 → +1; ternary clamp(round(value / scale), −1, 1) (round half to even, as the
/// BitNet b1.58 round-clip), `scale` being the α that covers the weight. One definition for the GGUF writer and for
/// measuring what folding costs (fold_anchors).
int8_t fold_anchor_code(WeightQuantizer quantizer, float value, float scale);

/// Folds every anchor of every quantized layer into its code with fold_anchor_code and clears the anchors: the
/// model GGUF holds, for measuring (perplexity, KL, top-1) what dropping the anchors costs. Returns the number of
/// anchors folded. Throws std::invalid_argument for a layer whose scales or anchors do not fit its shape.
int64_t fold_anchors(ExportModel& model);

/// llama.cpp's LlamaModel.permute as a row map: result[new_row] = old_row, for a [n_head·head_dim, *] matrix.
std::vector<int64_t> llama_qk_permutation(int64_t n_head, int64_t head_dim);

/// HF tensor name → GGUF tensor name ("" when it has none).
std::string gguf_tensor_name(const std::string& hf_name);

}  // namespace bitforge::formats
