// Hugging Face checkpoint directories (Llama / Qwen3) read and written in C++, no Python:
//
//   DIR/config.json                     → ModelConfig (below)
//   DIR/model.safetensors               single file, or
//   DIR/model.safetensors.index.json    {"weight_map": {tensor: shard file}} + the shards it names
//   DIR/tokenizer.model | tokenizer.json   path reported (not parsed here)
//
// config.json keys read (transformers 5.x writes RoPE under `rope_parameters`; 4.x wrote a top-level
// `rope_theta` and `rope_scaling`; both are accepted):
//   model_type                 "llama" | "qwen3" (anything else: error)
//   vocab_size, hidden_size, intermediate_size, num_hidden_layers, num_attention_heads    required
//   num_key_value_heads        default num_attention_heads
//   head_dim                   default hidden_size / num_attention_heads (null allowed)
//   rms_norm_eps               default 1e-6
//   rope_theta                 top level, or rope_parameters.rope_theta, or rope_scaling.rope_theta;
//                              default 10000. rope_type other than "default" (llama3, yarn, …) is an error,
//                              as is partial_rotary_factor ≠ 1.
//   max_position_embeddings    default 2048
//   tie_word_embeddings        default false (the Llama/Qwen3 config default)
//   attention_bias             default false; mlp_bias = true is an error
//   hidden_act                 "silu" only (SwiGLU); anything else is an error unless bitforge wrote the file
//   use_sliding_window         (qwen3) must be false
//   bitforge_subln, bitforge_mlp ("relu2")   bitforge extensions written by save_hf_checkpoint for
//                              models transformers cannot represent; they round-trip through this reader.
//
// Weights: names and shapes must match the model's hf_parameters() exactly (strict: a missing, unexpected or
// misshapen tensor is an error naming the tensor and the file). F32/F16/BF16/F64 are converted to fp32;
// other dtypes are errors. A tied checkpoint that still carries `lm_head.weight` is accepted (ignored),
// as are the legacy `…rotary_emb.inv_freq` buffers.
#pragma once

#include <map>
#include <stdexcept>
#include <string>
#include <vector>

#include "config/config.h"
#include "data/tokenizer.h"
#include "trainer/model.h"

namespace bitforge {

/// Any problem with a checkpoint directory: the message names the file and the key or tensor, e.g.
/// `model.layers.3.mlp.up_proj.weight: shape [128, 64] in DIR/model-00002-of-00002.safetensors, expected [64, 128]`.
class HfCheckpointError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// What a checkpoint directory holds, from config.json and the file layout (no tensor data read).
struct HfCheckpoint {
  std::string dir;
  std::string model_type;                         ///< "llama" | "qwen3"
  ModelConfig model;                              ///< arch = model_type
  std::string dtype;                              ///< config "dtype"/"torch_dtype" as written ("" if absent)
  std::vector<std::string> weight_files;          ///< full paths: model.safetensors, or the shards (sorted)
  std::map<std::string, std::string> weight_map;  ///< tensor → full shard path (sharded checkpoints only)
  std::string tokenizer_path;                     ///< DIR/tokenizer.model, else DIR/tokenizer.json, else ""
};

/// config.json text → ModelConfig (rules in the header comment). `source` names the file in errors.
/// Throws HfCheckpointError.
ModelConfig parse_hf_config(const std::string& json_text, const std::string& source, std::string* model_type = nullptr,
                            std::string* dtype = nullptr);

/// Reads DIR/config.json and the weight layout; validates the index (valid JSON, a weight_map object, every
/// shard it names exists). Throws HfCheckpointError (missing config.json, no weights, missing shard, …).
HfCheckpoint read_hf_checkpoint(const std::string& dir);

struct HfLoadOptions {
  /// Keep the (ones-initialised) SubLN norms when the checkpoint has none: BitDistill stage 1 inserts SubLN
  /// into a pretrained model. Other missing tensors are always errors.
  bool allow_missing_sub_norm = false;
};

/// Copies the checkpoint's tensors into `model` (on whatever device it lives) with strict name/shape/dtype
/// checks, every index entry verified against its shard; then model->reset_quantizer_state().
/// Throws HfCheckpointError; the model may be partially written when it throws.
void load_hf_weights(Transformer& model, const HfCheckpoint& checkpoint, const HfLoadOptions& options = {});

/// read_hf_checkpoint + a Transformer of that shape built with `quant` (CPU, fp32) + load_hf_weights.
Transformer load_hf_model(const std::string& dir, const QuantConfig& quant, HfCheckpoint* info = nullptr,
                          const HfLoadOptions& options = {});

struct HfSaveOptions {
  /// Quantized BitLinears write effective_weight() (what the forward pass multiplies by), so transformers
  /// evaluates the quantized weights as a dense model; false writes the fp32 master weights.
  bool effective_weights = true;
  /// A BitLinear with activation quantization or an input RMSNorm cannot be expressed as a HF dense model;
  /// saving one throws std::invalid_argument unless this is set (then those parts are dropped).
  bool allow_lossy = false;
  /// Weights in bf16 (what a Hugging Face model is usually shipped as) instead of fp32.
  bool bf16 = false;
  /// When set, its files go beside the weights (data::save_hf_tokenizer_files) and config.json records its bos /
  /// eos ids, so AutoTokenizer and from_pretrained load the directory as one model.
  const data::Tokenizer* tokenizer = nullptr;
};

/// Writes DIR/config.json (LlamaForCausalLM / Qwen3ForCausalLM) and DIR/model.safetensors (fp32, HF names,
/// metadata {"format": "pt"}), creating DIR. transformers' from_pretrained reads the result (llama/qwen3,
/// SwiGLU, no SubLN); SubLN / relu2 models are written with the bitforge_* keys and only this reader
/// understands them. Throws HfCheckpointError on I/O failure, std::invalid_argument as described above.
void save_hf_checkpoint(Transformer& model, const std::string& dir, const HfSaveOptions& options = {});

}  // namespace bitforge
