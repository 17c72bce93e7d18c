// Scalar building blocks shared by the CPU and CUDA BitLinear kernels and the argument checks both run.
// Internal header: the public API is kernels/bitlinear_ops.h.
#pragma once

#include <ATen/ATen.h>

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define BF_HD __host__ __device__ __forceinline__
#else
#define BF_HD inline
#endif

namespace bitforge::ops::detail {

/// Q(u): binary sign with sign(0) = +1, or ternary clamp(round_half_even(u), -1, 1).
BF_HD float quantize_code(float u, int64_t quantizer) {
  if (quantizer == 1) return u >= 0.f ? 1.f : -1.f;
  // clamp(round_half_even(u), -1, 1) without a rounding call: ±0.5 round to 0 (half to even, as torch.round),
  // anything beyond is ±1 after the clamp. Branch-free, so the row loops vectorise; a -0 code cannot occur,
  // so W_eff holds +0 exactly as the packed format's unpack does.
  return (u > 0.5f ? 1.f : 0.f) - (u < -0.5f ? 1.f : 0.f);
}

/// Round half to even for |x| < 2^22 (1.5·2^23 trick, exact in the default rounding mode) = nearbyintf(x)
/// there, but vectorisable without SSE4.1. Callers guarantee the range (|x·s| ≤ 128 for activations).
/// IEEE semantics (no -ffast-math) keep the compiler from folding (x + m) - m into x.
BF_HD float round_half_even_small(float x) {
  constexpr float m = 12582912.0f;
  return (x + m) - m;
}

/// STE surrogate derivative dQ/du as documented in bitlinear_ops.h.
BF_HD float ste_grad(float u, int64_t ste, float clip) {
  switch (ste) {
    case 1: return fabsf(u) <= clip ? 1.f : 0.f;
    case 2: { const float a = fabsf(u); return a < 1.f ? 2.f - 2.f * a : 0.f; }
    case 3: { const float t = tanhf(u); return 1.001f - t * t; }
    default: return 1.f;
  }
}

/// LSQ derivative of α·Q(u) with respect to α (Esser et al. 2019 eq. 3 with Qn = Qp = 1).
BF_HD float lsq_scale_grad(float u, float code, int64_t quantizer) {
  if (quantizer == 1) return code;
  return fabsf(u) <= 1.f ? code - u : code;
}

/// Validates the arguments shared by the weight ops; returns {scale rows, scale cols}.
inline std::pair<int64_t, int64_t> check_weight_args(const at::Tensor& weight, const at::Tensor& scale,
                                                     const c10::optional<at::Tensor>& center,
                                                     const at::Tensor& anchor_index, int64_t quantizer) {
  TORCH_CHECK(weight.dim() == 2, "bitforge: weight must be [out, in], got ", weight.sizes());
  TORCH_CHECK(weight.scalar_type() == at::kFloat, "bitforge: weight must be float32, got ", weight.scalar_type());
  TORCH_CHECK(scale.scalar_type() == at::kFloat, "bitforge: scale must be float32, got ", scale.scalar_type());
  TORCH_CHECK(scale.dim() == 2, "bitforge: scale must be [1 or out, n_groups], got ", scale.sizes());
  const int64_t out = weight.size(0), in = weight.size(1);
  const int64_t sr = scale.size(0), sc = scale.size(1);
  TORCH_CHECK(sr == 1 || sr == out, "bitforge: scale rows must be 1 or out=", out, ", got ", sr);
  TORCH_CHECK(sc >= 1 && in % sc == 0, "bitforge: scale columns (", sc, ") must divide in_features=", in);
  TORCH_CHECK(scale.device() == weight.device(), "bitforge: scale on ", scale.device(), ", weight on ",
              weight.device());
  if (center.has_value() && center->defined()) {
    TORCH_CHECK(center->sizes() == scale.sizes() && center->scalar_type() == at::kFloat &&
                    center->device() == weight.device(),
                "bitforge: center must match scale (", scale.sizes(), " float32), got ", center->sizes());
  }
  TORCH_CHECK(anchor_index.scalar_type() == at::kLong && anchor_index.dim() == 1,
              "bitforge: anchor_index must be a 1-D int64 tensor, got ", anchor_index.scalar_type(), " ",
              anchor_index.sizes());
  TORCH_CHECK(anchor_index.device() == weight.device(), "bitforge: anchor_index on ", anchor_index.device(),
              ", weight on ", weight.device());
  TORCH_CHECK(quantizer == 1 || quantizer == 2, "bitforge: quantizer must be 1 (binary) or 2 (ternary), got ",
              quantizer);
  return {sr, sc};
}

/// Validates the per-token activation quantizer's arguments; returns {rows, in}.
inline std::pair<int64_t, int64_t> check_activation_args(const at::Tensor& x, int64_t bits) {
  TORCH_CHECK(bits == 8 || bits == 4, "bitforge: activation bits must be 8 or 4, got ", bits);
  TORCH_CHECK(x.scalar_type() == at::kFloat, "bitforge: activations must be float32, got ", x.scalar_type());
  TORCH_CHECK(x.dim() >= 1 && x.size(-1) > 0, "bitforge: activations must be [*, in] with in > 0");
  return {x.numel() / x.size(-1), x.size(-1)};
}

}  // namespace bitforge::ops::detail
