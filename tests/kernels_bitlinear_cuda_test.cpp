// CUDA BitLinear ops against the CPU ops (themselves checked against the plain references). Stated tolerances:
//   bit-exact (torch::equal): the forward W_eff (λ = 1 and λ < 1), the int8 codes, grad_weight for the identity,
//     clipped and approx_sign STEs, the per-token activation quantizer;
//   grad_weight with the tanh STE: |Δ| ≤ 1e-6 + 1e-5·|cpu| (device tanhf vs glibc tanhf, a few ulp);
//   grad_scale (a sum over each scale group in another order): |Δ| ≤ 1e-4 + 1e-4·|cpu|.
// Skips with a visible reason without a GPU.
#include <gtest/gtest.h>

#include <torch/torch.h>

#include "kernels/bitlinear_ops.h"

namespace {

/// Why GPU tests cannot run here, or "" when they can.
std::string gpu_unavailable() {
  if (!bitforge::ops::cuda_kernels_compiled()) return "CUDA kernels not compiled (BITFORGE_CUDA=OFF or no nvcc)";
  if (!torch::cuda::is_available()) return "no CUDA device on this machine: GPU tests skipped";
  return "";
}
#define REQUIRE_GPU()                           \
  do {                                          \
    const std::string why_ = gpu_unavailable(); \
    if (!why_.empty()) GTEST_SKIP() << why_;    \
  } while (0)

/// Compares every CUDA weight op with the CPU op on one weight shape, for both quantizers, every scale layout
/// in `scale_cols` (plus per tensor), with and without anchors and centering, λ ∈ {1, 0.3} forward, every STE.
void expect_weight_ops_match(int64_t out, int64_t in, const std::vector<int64_t>& scale_cols) {
  std::vector<std::pair<int64_t, int64_t>> shapes{{1, 1}};
  for (int64_t sc : scale_cols) shapes.emplace_back(out, sc);
  for (int64_t q : {1, 2})
    for (auto shape : shapes)
      for (int64_t n_anchors : {int64_t{0}, std::min<int64_t>(37, out * in / 3)})
        for (bool centered : {false, true}) {
          SCOPED_TRACE(testing::Message() << out << "x" << in << " q=" << q << " scale " << shape.first << "x"
                                          << shape.second << " anchors=" << n_anchors << " centered=" << centered);
          auto w = torch::randn({out, in});
          auto s = torch::rand({shape.first, shape.second}) + 0.3;
          auto c =
              centered ? c10::optional<torch::Tensor>(torch::randn({shape.first, shape.second}) * 0.1) : c10::nullopt;
          auto a = n_anchors ? std::get<0>(torch::randperm(out * in).slice(0, 0, n_anchors).sort())
                             : torch::empty({0}, torch::kLong);
          auto g = torch::randn({out, in});
          auto cuda = torch::Device(torch::kCUDA);
          c10::optional<torch::Tensor> cc = c ? c10::optional<torch::Tensor>(c->to(cuda)) : c10::nullopt;
          for (double lambda : {1.0, 0.3}) {
            auto y_cpu = bitforge::ops::bitlinear_quantize_weight(w, s, c, a, q, lambda);
            auto y_gpu = bitforge::ops::bitlinear_quantize_weight(w.to(cuda), s.to(cuda), cc, a.to(cuda), q, lambda);
            ASSERT_TRUE(torch::equal(y_cpu, y_gpu.cpu())) << "forward q=" << q;
          }
          auto codes_cpu = bitforge::ops::bitlinear_codes(w, s, c, a, q);
          auto codes_gpu = bitforge::ops::bitlinear_codes(w.to(cuda), s.to(cuda), cc, a.to(cuda), q);
          ASSERT_TRUE(torch::equal(codes_cpu, codes_gpu.cpu()));
          for (int64_t ste : {0, 1, 2, 3}) {
            auto [gw_c, gs_c] = bitforge::ops::bitlinear_quantize_weight_backward(g, w, s, c, a, q, ste, 0.9, 0.7, 0.5);
            auto [gw_g, gs_g] = bitforge::ops::bitlinear_quantize_weight_backward(
                g.to(cuda), w.to(cuda), s.to(cuda), cc, a.to(cuda), q, ste, 0.9, 0.7, 0.5);
            if (ste == 3)
              ASSERT_TRUE(torch::allclose(gw_c, gw_g.cpu(), 1e-5, 1e-6))
                  << "grad_w (tanh) max |diff| " << (gw_c - gw_g.cpu()).abs().max().item<float>();
            else
              ASSERT_TRUE(torch::equal(gw_c, gw_g.cpu())) << "grad_w ste=" << ste;
            ASSERT_TRUE(torch::allclose(gs_c, gs_g.cpu(), 1e-4, 1e-4))
                << "grad_scale ste=" << ste << " max |diff| " << (gs_c - gs_g.cpu()).abs().max().item<float>();
          }
        }
}

}  // namespace

TEST(BitLinearCuda, MatchesCpuForEverySetting) {
  REQUIRE_GPU();
  torch::manual_seed(0);
  expect_weight_ops_match(96, 384, {1, 384 / 128, 384 / 32});
}

TEST(BitLinearCuda, MatchesCpuOnOddShapes) {
  REQUIRE_GPU();
  torch::manual_seed(2);
  // Widths that are no multiple of the warp, the block or 4 (the one-weight-per-thread kernels); groups of 25 and
  // 5 columns; a group of 1000 columns (float4 kernels, one backward chunk of 250 vectors).
  expect_weight_ops_match(7, 75, {1, 3, 15});
  expect_weight_ops_match(33, 1000, {1, 40});
  // Rows longer than one backward chunk (256 float4 = 1024 columns): 5 chunks, the last one vector wide.
  expect_weight_ops_match(9, 4100, {1, 5});
}

TEST(BitLinearCuda, MoreRowsThanGridY) {
  REQUIRE_GPU();
  torch::manual_seed(3);
  // 70000 output rows (a vocabulary-sized head): more than gridDim.y's 65535, which once held the backward's rows.
  expect_weight_ops_match(70000, 16, {1, 2});  // float4 kernels
  expect_weight_ops_match(70000, 6, {1, 3});   // one weight per thread / one block per (row, group)
}

TEST(BitLinearCuda, MisalignedTensorsMatchCpu) {
  REQUIRE_GPU();
  torch::manual_seed(4);
  // Contiguous tensors that start 4 bytes into their storage: not 16-byte aligned, so no float4 loads.
  const int64_t out = 32, in = 256;
  auto cuda = torch::Device(torch::kCUDA);
  auto shifted = [&](const torch::Tensor& t) {
    auto buf = torch::empty({t.numel() + 1}, t.options().device(cuda));
    auto v = buf.narrow(0, 1, t.numel()).view(t.sizes());
    v.copy_(t);
    return v;
  };
  auto w = torch::randn({out, in}), g = torch::randn({out, in});
  auto s = torch::rand({out, 2}) + 0.3;
  auto a = std::get<0>(torch::randperm(out * in).slice(0, 0, 20).sort());
  auto wg = shifted(w), gg = shifted(g);
  ASSERT_TRUE(wg.is_contiguous());
  ASSERT_NE(reinterpret_cast<uintptr_t>(wg.data_ptr()) % 16, 0u);
  for (int64_t q : {1, 2}) {
    EXPECT_TRUE(
        torch::equal(bitforge::ops::bitlinear_quantize_weight(w, s, c10::nullopt, a, q, 0.3),
                     bitforge::ops::bitlinear_quantize_weight(wg, s.to(cuda), c10::nullopt, a.to(cuda), q, 0.3).cpu()));
    auto [gw_c, gs_c] =
        bitforge::ops::bitlinear_quantize_weight_backward(g, w, s, c10::nullopt, a, q, 1, 0.9, 0.7, 0.5);
    auto [gw_g, gs_g] = bitforge::ops::bitlinear_quantize_weight_backward(gg, wg, s.to(cuda), c10::nullopt, a.to(cuda),
                                                                          q, 1, 0.9, 0.7, 0.5);
    EXPECT_TRUE(torch::equal(gw_c, gw_g.cpu()));
    EXPECT_TRUE(torch::allclose(gs_c, gs_g.cpu(), 1e-4, 1e-4));
  }
}

TEST(BitLinearCuda, ActivationQuantMatchesCpu) {
  REQUIRE_GPU();
  torch::manual_seed(1);
  for (int64_t in : {1000, 4096, 7}) {
    auto x = torch::randn({37, in}) * 4;
    x.index_put_({5}, 0.0f);
    // Values whose product with the row scale lands near k + 0.5, where a fused x·s + 1.5·2^23 rounds otherwise.
    x.index_put_({6}, (torch::randint(-127, 127, {in}).to(torch::kFloat) + 0.5f) / 127.f * 3.f);
    x.index_put_({6, 0}, 3.f);
    for (int64_t bits : {8, 4}) {
      auto cpu = bitforge::ops::quantize_activation_per_token(x, bits);
      auto gpu = bitforge::ops::quantize_activation_per_token(x.cuda(), bits).cpu();
      EXPECT_TRUE(torch::equal(cpu, gpu))
          << "in " << in << " bits " << bits << " differing elements " << (cpu != gpu).sum().item<int64_t>();
    }
  }
}
