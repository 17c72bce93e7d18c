// Memory estimate before allocating a model, its optimizer state or a KV cache (issue #21 item 7), compared with
// the memory this process may still use; refused with a clear message when it does not fit.
//
// The estimate (bytes), documented term by term so that a refusal can be checked by hand:
//   parameters P     embeddings V·H, per layer q/k/v/o (H·nh·hd + 2·H·kvh·hd + nh·hd·H, + biases), MLP
//                    (3·H·I SwiGLU, 2·H·I relu2), norms; an untied lm_head V·H
//   weights          4·P (fp32 master weights)
//   gradients        4·P
//   optimizer        8·P (AdamW exp_avg and exp_avg_sq, fp32)
//   quantizer        4·Pq: BitLinear's effective weight, kept for the backward pass (Pq = quantized parameters)
//   activations      training: 4 bytes × B·T·L·(16·H + 4·I) + 4 bytes × 2·B·nh·T²·L (attention scores and
//                    probabilities) + 4 bytes × 3·B·T·V (logits, log-softmax, their gradient); inference: the same
//                    per-layer terms for one layer at a time (no backward), logits once
//   rope tables      4 bytes × 6·max_position_embeddings·hd (cos, sin and their construction temporaries)
//   KV cache         packed runtime only: 4 bytes × 2·L·kvh·max_position_embeddings·hd
// Available memory: /proc/meminfo MemAvailable, lowered to the cgroup limit minus current usage when the process
// runs in a memory-limited cgroup (v2 memory.max / v1 memory.limit_in_bytes).
// Override (experts): config key train.skip_memory_check: true, or BITFORGE_SKIP_MEMORY_CHECK=1.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>

#include "config/config.h"

namespace bitforge {

/// Thrown when an estimate exceeds the available memory: names what, the estimate with its terms, what is
/// available, and the override.
class ResourceError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct MemoryEstimate {
  int64_t parameters = 0;
  double weights = 0, gradients = 0, optimizer = 0, quantizer = 0, activations = 0, rope = 0, kv_cache = 0;
  double total() const { return weights + gradients + optimizer + quantizer + activations + rope + kv_cache; }
  std::string describe() const;  ///< "weights 1.0 GiB + gradients ... = 3.2 GiB"
};

/// Parameters of the decoder the config describes (as TransformerImpl builds it).
int64_t count_parameters(const ModelConfig& m);
/// Parameters inside BitLinear layers (quantized), per quant.layers.
int64_t count_quantized_parameters(const ModelConfig& m, const QuantConfig& q);

/// Training one micro-batch (train.per_device_train_batch_size × train.seq_len) with AdamW.
MemoryEstimate estimate_training_memory(const Config& c);
/// Inference of a checkpoint (fp32 weights) over batch × seq tokens.
MemoryEstimate estimate_checkpoint_inference_memory(const ModelConfig& m, int64_t batch, int64_t seq);
/// The packed runtime: `weight_bytes` (the file's tensors, held in memory), KV cache for max_position_embeddings.
MemoryEstimate estimate_packed_runtime_memory(const ModelConfig& m, double weight_bytes);

struct AvailableMemory {
  double bytes = 0;     ///< < 0 when unknown
  std::string source;   ///< "MemAvailable", "cgroup memory.max", ...
};
AvailableMemory available_memory();

/// Process-wide override (set from train.skip_memory_check by the CLI; BITFORGE_SKIP_MEMORY_CHECK=1 also sets it).
void set_skip_memory_check(bool skip);
bool skip_memory_check();

/// Throws ResourceError when `e.total()` exceeds `available` (default: available_memory()), unless `skip` or the
/// process-wide override is set (then warns). `what` names the allocation ("training stage 'student'").
void check_memory(const MemoryEstimate& e, const std::string& what, bool skip = false,
                  const AvailableMemory* available = nullptr);

std::string format_bytes(double bytes);

}  // namespace bitforge
