// Parity with the BitNet b1.58 reference code (FAQ layer: ternary, per-tensor absmean, int8 per token, RMSNorm
// inside). tests/fixtures/bitnet/make_bitnet_reference.py computes outputs and gradients with PyTorch; this
// test runs it and compares bitforge's BitLinear configured the same way.
#include <gtest/gtest.h>

#include <torch/torch.h>

#include <cstdlib>
#include <filesystem>

#include "export/safetensors_torch.h"
#include "trainer/bitlinear.h"

TEST(BitNetParity, OutputsAndGradientsMatchReferenceCode) {
  const char* py = std::getenv("BITFORGE_PYTHON");
  const char* src = std::getenv("BITFORGE_SOURCE_DIR");
  if (!py || !src) GTEST_SKIP() << "BITFORGE_PYTHON / BITFORGE_SOURCE_DIR not set (run through ctest)";
  const std::string out = ::testing::TempDir() + "bitnet_reference.safetensors";
  const std::string cmd = std::string(py) + " " + src + "/tests/fixtures/bitnet/make_bitnet_reference.py " + out;
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  auto ref = bitforge::safetensors::load(out);

  bitforge::QuantConfig q;
  q.weight = bitforge::WeightQuantizer::ternary;
  q.granularity = bitforge::ScaleGranularity::tensor;
  q.scale_mode = bitforge::ScaleMode::absmean;
  q.activations = bitforge::ActivationQuant::int8;
  q.input_norm = true;
  q.norm_eps = 1e-6;
  q.anchor_fraction = 0.0;
  q.fp16_scales = false;  // the reference keeps the fp32 absmean
  bitforge::BitLinear m(64, 48, false, q);
  {
    torch::NoGradGuard ng;
    m->weight.copy_(ref.at("w"));
  }
  auto x = ref.at("x").clone().requires_grad_(true);
  auto y = m->forward(x);
  y.backward(ref.at("gy"));
  // The reference computes round(w·(1/m))/(1/m), bitforge α·round(w/α): equal up to fp32 rounding of the scale.
  EXPECT_TRUE(torch::allclose(y, ref.at("y"), 1e-5, 1e-5)) << (y - ref.at("y")).abs().max();
  EXPECT_TRUE(torch::allclose(m->weight.grad(), ref.at("grad_w"), 1e-5, 1e-5))
      << (m->weight.grad() - ref.at("grad_w")).abs().max();
  EXPECT_TRUE(torch::allclose(x.grad(), ref.at("grad_x"), 1e-4, 1e-5)) << (x.grad() - ref.at("grad_x")).abs().max();
  // The ternary codes themselves agree exactly.
  auto wq_ref = ref.at("w") * (1.0 / ref.at("w").abs().mean());
  EXPECT_TRUE(torch::equal(m->codes().to(torch::kFloat), wq_ref.round().clamp(-1, 1) + 0.0));
}
