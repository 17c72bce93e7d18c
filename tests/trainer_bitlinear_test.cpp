// BitLinear module: forward = reference formula bit for bit, weight gradient = chosen STE formula, scale
// gradient = LSQ formula (and finite differences for binary), anchors get the dense gradient, λ warm-up,
// fp16-representable scales, errors, and a small binary network that learns a real task.
#include <gtest/gtest.h>

#include <torch/torch.h>

#include "kernels/reference.h"
#include "trainer/bitlinear.h"

using namespace bitforge;

namespace {

QuantConfig quant(WeightQuantizer q, ScaleGranularity g, double anchors, ScaleMode mode = ScaleMode::learned) {
  QuantConfig c;
  c.weight = q;
  c.granularity = g;
  c.group_size = 16;
  c.anchor_fraction = anchors;
  c.scale_mode = mode;
  return c;
}

/// The reference W_eff from the module's own state and the formula in bitlinear.h.
torch::Tensor reference_weight(BitLinear& m) {
  auto a = m->scales();  // fp16-rounded α
  const int64_t q = m->quant().weight == WeightQuantizer::binary ? 1 : 2;
  torch::Tensor center;
  return ref::quantize_weight(m->weight.detach(), a, center, m->anchor_index, q, m->lambda());
}

}  // namespace

TEST(BitLinear, ForwardEqualsReferenceFormulaEverySetting) {
  torch::manual_seed(0);
  for (auto q : {WeightQuantizer::binary, WeightQuantizer::ternary})
    for (auto g : {ScaleGranularity::tensor, ScaleGranularity::channel, ScaleGranularity::group})
      for (double af : {0.0, 0.01})
        for (auto mode : {ScaleMode::learned, ScaleMode::absmean}) {
          BitLinear m(64, 24, true, quant(q, g, af, mode));
          auto x = torch::randn({3, 5, 64});
          auto y = m->forward(x);
          auto w = reference_weight(m);
          auto want = torch::nn::functional::linear(x, w, m->bias);
          ASSERT_TRUE(torch::equal(m->effective_weight(), w));
          ASSERT_TRUE(torch::equal(y, want));
          EXPECT_EQ(y.sizes(), (std::vector<int64_t>{3, 5, 24}));
          EXPECT_EQ(m->anchor_index.numel(), static_cast<int64_t>(std::llround(af * 64 * 24)));
        }
}

TEST(BitLinear, ScalesAreFp16RepresentableAndAbsmeanInitialised) {
  torch::manual_seed(1);
  BitLinear m(32, 8, false, quant(WeightQuantizer::binary, ScaleGranularity::group, 0.0));
  auto a = m->scales();
  EXPECT_TRUE(torch::equal(a, a.to(torch::kHalf).to(torch::kFloat)));
  auto absmean = m->weight.detach().abs().view({8, 2, 16}).mean(2);
  EXPECT_TRUE(torch::allclose(a, absmean, 1e-3, 0));
}

TEST(BitLinear, WeightGradientIsTheSteFormulaAndAnchorsGetDenseGradient) {
  torch::manual_seed(2);
  for (auto ste : {SteKind::identity, SteKind::clipped, SteKind::approx_sign, SteKind::tanh}) {
    auto qc = quant(WeightQuantizer::ternary, ScaleGranularity::channel, 0.05);
    qc.ste = ste;
    qc.ste_clip = 0.9;
    BitLinear m(48, 12, false, qc);
    auto x = torch::randn({7, 48});
    auto gy = torch::randn({7, 12});
    m->forward(x).backward(gy);
    // dL/dW_eff for y = x W_effᵀ is gyᵀ x; the STE maps it through ste'(u) with u = W/α.
    auto gweff = gy.t().mm(x);
    auto u = m->weight.detach() / ref::expand_groups(m->scales(), 12, 48);
    torch::Tensor d;
    switch (ste) {
      case SteKind::clipped: d = (u.abs() <= 0.9).to(torch::kFloat); break;
      case SteKind::approx_sign: d = torch::where(u.abs() < 1, 2 - 2 * u.abs(), torch::zeros_like(u)); break;
      case SteKind::tanh: d = 1.001 - torch::tanh(u).pow(2); break;
      default: d = torch::ones_like(u);
    }
    auto mask = ref::anchor_mask(m->anchor_index, 12, 48);
    auto want = torch::where(mask, gweff, gweff * d);
    EXPECT_TRUE(torch::allclose(m->weight.grad(), want, 1e-5, 1e-5)) << "ste " << static_cast<int>(ste);
    EXPECT_TRUE(torch::allclose(m->weight.grad().masked_select(mask), gweff.masked_select(mask), 1e-6, 1e-6));
  }
}

TEST(BitLinear, ScaleGradientIsLsqFormulaAndMatchesFiniteDifferencesForBinary) {
  torch::manual_seed(3);
  auto qc = quant(WeightQuantizer::binary, ScaleGranularity::group, 0.02);
  qc.fp16_scales = false;  // finite differences need a scale the forward uses unrounded
  BitLinear m(32, 6, false, qc);
  auto x = torch::randn({9, 32}, torch::kFloat);
  auto gy = torch::randn({9, 6});
  m->forward(x).backward(gy);
  auto gweff = gy.t().mm(x);
  auto mask = ref::anchor_mask(m->anchor_index, 6, 32);
  auto code = torch::where(m->weight.detach() >= 0, torch::ones({6, 32}), -torch::ones({6, 32}));
  auto lsq = torch::where(mask, torch::zeros_like(gweff), gweff * code).view({6, 2, 16}).sum(2);
  EXPECT_TRUE(torch::allclose(m->scale.grad(), lsq, 1e-5, 1e-5));
  // Finite differences of L(α) = Σ gy ⊙ y(α) along each scale.
  torch::NoGradGuard ng;
  const double eps = 1e-3;
  for (int64_t r = 0; r < 6; ++r)
    for (int64_t k = 0; k < 2; ++k) {
      auto loss_at = [&](double delta) {
        auto saved = m->scale.clone();
        m->scale.index_put_({r, k}, m->scale.index({r, k}) + delta);
        auto l = (m->forward(x).to(torch::kDouble) * gy.to(torch::kDouble)).sum().item<double>();
        m->scale.copy_(saved);
        return l;
      };
      const double fd = (loss_at(eps) - loss_at(-eps)) / (2 * eps);
      EXPECT_NEAR(m->scale.grad().index({r, k}).item<double>(), fd, 2e-3 * (1 + std::abs(fd)));
    }
}

TEST(BitLinear, TernaryScaleGradientIsLsqFormulaWithGradScale) {
  torch::manual_seed(4);
  auto qc = quant(WeightQuantizer::ternary, ScaleGranularity::tensor, 0.0);
  qc.lsq_grad_scale = true;
  BitLinear m(16, 4, false, qc);
  auto x = torch::randn({5, 16});
  auto gy = torch::randn({5, 4});
  m->forward(x).backward(gy);
  auto gweff = gy.t().mm(x);
  auto u = m->weight.detach() / m->scales();
  auto code = u.round().clamp(-1, 1);
  auto dq = torch::where(u.abs() <= 1, code - u, code);  // LSQ: -v/s + round(v/s) inside, ±1 outside
  const double g = 1.0 / std::sqrt(64.0 * 1.0);           // 1/sqrt(N·Qp)
  auto want = (gweff * dq).sum() * g;
  EXPECT_NEAR(m->scale.grad().item<double>(), want.item<double>(), 1e-5);
}

TEST(BitLinear, LambdaInterpolatesBetweenFullPrecisionAndQuantized) {
  torch::manual_seed(5);
  auto qc = quant(WeightQuantizer::binary, ScaleGranularity::channel, 0.0);
  qc.warmup_lambda_steps = 10;
  BitLinear m(16, 4, false, qc);
  auto w = m->weight.detach();
  m->on_step(0);
  EXPECT_DOUBLE_EQ(m->lambda(), 0.0);
  EXPECT_TRUE(torch::equal(m->effective_weight(), w));  // λ = 0: W + 0·(Q − W) = W
  m->on_step(4);
  EXPECT_DOUBLE_EQ(m->lambda(), 0.4);
  auto q = ref::expand_groups(m->scales(), 4, 16) * torch::where(w >= 0, torch::ones_like(w), -torch::ones_like(w));
  EXPECT_TRUE(torch::allclose(m->effective_weight(), w + 0.4 * (q - w), 0, 1e-7));
  m->on_step(25);
  EXPECT_DOUBLE_EQ(m->lambda(), 1.0);
  EXPECT_TRUE(torch::equal(m->effective_weight(), q));
}

TEST(BitLinear, ActivationQuantAndInputNorm) {
  torch::manual_seed(6);
  auto qc = quant(WeightQuantizer::ternary, ScaleGranularity::tensor, 0.0);
  qc.activations = ActivationQuant::int8;
  qc.input_norm = true;
  BitLinear m(32, 8, false, qc);
  auto x = torch::randn({4, 32});
  x.index_put_({2}, 0.0f);
  auto xn = x * torch::rsqrt(x.pow(2).mean(-1, true) + qc.norm_eps);
  auto xq = ref::quantize_activation_per_token(xn, 8);
  auto want = torch::nn::functional::linear(xq, reference_weight(m));
  auto y = m->forward(x);
  EXPECT_TRUE(torch::allclose(y, want, 1e-6, 1e-6));
  EXPECT_TRUE(torch::equal(y.index({2}), torch::zeros({8})));
}

TEST(BitLinear, AnchorsBySaliencyUseActivationNorms) {
  torch::manual_seed(7);
  auto qc = quant(WeightQuantizer::binary, ScaleGranularity::tensor, 0.05);
  qc.anchor_selection = AnchorSelection::saliency;
  BitLinear m(20, 10, false, qc);
  auto x = torch::randn({64, 20});
  x.index_put_({torch::indexing::Slice(), 3}, x.index({torch::indexing::Slice(), 3}) * 100);  // column 3 salient
  m->observe_activations(x);
  m->select_anchors();
  auto cols = m->anchor_index % 20;
  EXPECT_EQ((cols == 3).sum().item<int64_t>(), 10);  // all 10 = 0.05·200 anchors in the salient column
}

TEST(BitLinear, FullPrecisionModeIsPlainLinear) {
  torch::manual_seed(8);
  BitLinear m(8, 4, true, quant(WeightQuantizer::none, ScaleGranularity::tensor, 0.0));
  auto x = torch::randn({2, 8});
  EXPECT_TRUE(torch::equal(m->forward(x), torch::nn::functional::linear(x, m->weight, m->bias)));
  std::vector<std::string> names;
  for (auto& p : m->named_parameters()) names.push_back(p.key());
  EXPECT_EQ(names, (std::vector<std::string>{"weight", "bias"}));
}

TEST(BitLinear, BadInputGivesClearErrors) {
  EXPECT_THROW(BitLinear(30, 4, false, quant(WeightQuantizer::binary, ScaleGranularity::group, 0.0)), std::invalid_argument);
  try {
    BitLinear(30, 4, false, quant(WeightQuantizer::binary, ScaleGranularity::group, 0.0));
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("group_size 16 must divide in_features 30"), std::string::npos);
  }
  EXPECT_THROW(BitLinear(16, 4, false, quant(WeightQuantizer::binary, ScaleGranularity::tensor, 0.6)), std::invalid_argument);
  EXPECT_THROW(BitLinear(16, 4, false, quant(WeightQuantizer::binary, ScaleGranularity::tensor, -0.1)), std::invalid_argument);
  BitLinear m(16, 4, false, quant(WeightQuantizer::binary, ScaleGranularity::tensor, 0.0));
  try {
    m->forward(torch::randn({2, 15}));
    FAIL();
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find("input last dimension must be 16"), std::string::npos);
  }
  {
    torch::NoGradGuard ng;
    m->weight.index_put_({1, 1}, std::numeric_limits<float>::quiet_NaN());
  }
  EXPECT_THROW(m->forward(torch::randn({2, 16})), c10::Error);
  {
    torch::NoGradGuard ng;
    m->weight.index_put_({1, 1}, 0.1f);
    m->scale.fill_(std::numeric_limits<float>::infinity());
  }
  EXPECT_THROW(m->forward(torch::randn({2, 16})), c10::Error);
}

TEST(BitLinear, SmallBinaryNetworkLearnsARealTask) {
  // Task: classify 32-d Gaussian inputs by a fixed random 2-layer teacher into 8 classes. A 2-layer binary
  // BitLinear student trained with AdamW must cut the validation cross-entropy by at least 3x from its start.
  torch::manual_seed(9);
  auto teacher1 = torch::randn({64, 32}), teacher2 = torch::randn({8, 64});
  auto label_of = [&](const torch::Tensor& x) { return torch::relu(x.mm(teacher1.t())).mm(teacher2.t()).argmax(1); };
  auto qc = quant(WeightQuantizer::binary, ScaleGranularity::channel, 0.001);
  BitLinear l1(32, 128, true, qc), l2(128, 8, true, qc);
  std::vector<torch::Tensor> params;
  for (auto& p : l1->parameters()) params.push_back(p);
  for (auto& p : l2->parameters()) params.push_back(p);
  torch::optim::AdamW opt(params, torch::optim::AdamWOptions(1e-2).weight_decay(0));
  auto xv = torch::randn({512, 32});
  auto yv = label_of(xv);
  auto eval = [&] {
    torch::NoGradGuard ng;
    return torch::nn::functional::cross_entropy(l2(torch::relu(l1(xv))), yv).item<double>();
  };
  const double start = eval();
  for (int step = 0; step < 400; ++step) {
    auto x = torch::randn({128, 32});
    auto loss = torch::nn::functional::cross_entropy(l2(torch::relu(l1(x))), label_of(x));
    opt.zero_grad();
    loss.backward();
    opt.step();
  }
  const double end = eval();
  EXPECT_LT(end, start / 3) << "start " << start << " end " << end;
  RecordProperty("start_loss", std::to_string(start));
  RecordProperty("end_loss", std::to_string(end));
  std::printf("binary BitLinear MLP: val cross-entropy %.3f -> %.3f\n", start, end);
}
