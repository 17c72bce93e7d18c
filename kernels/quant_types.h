// The quantization vocabulary every layer above shares: one definition each, here at the bottom (kernels/), used by
// the config schema (config/), the formats (export/), the trainer's BitLinear and the packed runtime alike.
//
//   WeightQuantizer  what a BitLinear weight becomes: none (full precision), binary Q(u) = sign(u) with sign(0) = +1
//                    (BitNet, Wang et al. 2023, eq. 2), ternary Q(u) = clamp(round(u), −1, 1) with round half to even
//                    (BitNet b1.58 absmean round-clip, Ma et al. 2024, eq. 1–3). The integer values are the op
//                    schemas' `quantizer` argument (kernels/bitlinear_ops.h): 1 = binary, 2 = ternary.
//   ScaleGranularity how many scales α a weight [out, in] has: one (tensor), one per output row (channel), or one per
//                    `group_size` input columns of each row (group; 128 = the GGUF Q1_0 block).
//   SteKind          the straight-through estimator's dW_eff/dW surrogate (kernels/bitlinear_ops.h gives each formula);
//                    the integer values are the op schemas' `ste` argument.
#pragma once

#include <cstdint>
#include <optional>
#include <string_view>

namespace bitforge {

enum class WeightQuantizer : int64_t { none = 0, binary = 1, ternary = 2 };
enum class ScaleGranularity { tensor, channel, group };
enum class SteKind : int64_t { identity = 0, clipped = 1, approx_sign = 2, tanh = 3 };

/// "none" | "binary" | "ternary".
constexpr const char* to_string(WeightQuantizer q) {
  return q == WeightQuantizer::binary ? "binary" : q == WeightQuantizer::ternary ? "ternary" : "none";
}
/// "tensor" | "channel" | "group".
constexpr const char* to_string(ScaleGranularity g) {
  return g == ScaleGranularity::tensor ? "tensor" : g == ScaleGranularity::channel ? "channel" : "group";
}
/// "identity" | "clipped" | "approx_sign" | "tanh".
constexpr const char* to_string(SteKind s) {
  return s == SteKind::identity ? "identity" : s == SteKind::clipped ? "clipped" : s == SteKind::approx_sign ? "approx_sign" : "tanh";
}
/// Inverse of to_string; std::nullopt for any other name (callers say where the name came from in their error).
inline std::optional<WeightQuantizer> weight_quantizer_from_string(std::string_view s) {
  if (s == "none") return WeightQuantizer::none;
  if (s == "binary") return WeightQuantizer::binary;
  if (s == "ternary") return WeightQuantizer::ternary;
  return std::nullopt;
}
inline std::optional<ScaleGranularity> scale_granularity_from_string(std::string_view s) {
  if (s == "tensor") return ScaleGranularity::tensor;
  if (s == "channel") return ScaleGranularity::channel;
  if (s == "group") return ScaleGranularity::group;
  return std::nullopt;
}

/// Bits of one packed code: 1 for binary, 2 for ternary (the 2-bit export layout).
constexpr int code_bits(WeightQuantizer q) { return q == WeightQuantizer::binary ? 1 : 2; }

}  // namespace bitforge
