// CUDA BitLinear ops against the CPU ops (themselves checked against the plain references): bit-exact on the
// elementwise paths, tolerance on the reduced scale gradient. Skips with a visible reason without a GPU.
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
#define REQUIRE_GPU()                                        \
  do {                                                       \
    const std::string why_ = gpu_unavailable();              \
    if (!why_.empty()) GTEST_SKIP() << why_;                 \
  } while (0)

}  // namespace

TEST(BitLinearCuda, MatchesCpuForEverySetting) {
  REQUIRE_GPU();
  torch::manual_seed(0);
  const int64_t out = 96, in = 384;
  for (int64_t q : {1, 2})
    for (auto shape : std::vector<std::pair<int64_t, int64_t>>{{1, 1}, {out, 1}, {out, in / 128}, {out, in / 32}})
      for (int64_t n_anchors : {0, 37})
        for (bool centered : {false, true}) {
          auto w = torch::randn({out, in});
          auto s = torch::rand({shape.first, shape.second}) + 0.3;
          auto c = centered ? c10::optional<torch::Tensor>(torch::randn({shape.first, shape.second}) * 0.1)
                            : c10::nullopt;
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
          for (int64_t ste : {0, 1, 2}) {
            auto [gw_c, gs_c] = bitforge::ops::bitlinear_quantize_weight_backward(g, w, s, c, a, q, ste, 0.9, 0.7, 0.5);
            auto [gw_g, gs_g] = bitforge::ops::bitlinear_quantize_weight_backward(
                g.to(cuda), w.to(cuda), s.to(cuda), cc, a.to(cuda), q, ste, 0.9, 0.7, 0.5);
            ASSERT_TRUE(torch::equal(gw_c, gw_g.cpu())) << "grad_w q=" << q << " ste=" << ste;
            ASSERT_TRUE(torch::allclose(gs_c, gs_g.cpu(), 1e-4, 1e-4)) << "grad_scale q=" << q;
          }
        }
}

TEST(BitLinearCuda, ActivationQuantMatchesCpu) {
  REQUIRE_GPU();
  torch::manual_seed(1);
  auto x = torch::randn({37, 1000}) * 4;
  x.index_put_({5}, 0.0f);
  for (int64_t bits : {8, 4}) {
    auto cpu = bitforge::ops::quantize_activation_per_token(x, bits);
    auto gpu = bitforge::ops::quantize_activation_per_token(x.cuda(), bits).cpu();
    EXPECT_TRUE(torch::equal(cpu, gpu)) << "bits " << bits;
  }
}
