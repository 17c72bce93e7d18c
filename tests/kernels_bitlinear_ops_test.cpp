// Every BitLinear op against its plain-LibTorch reference (kernels/reference.h): bit for bit in fp32 for the
// forward paths, for every quantizer × granularity × anchor setting; STE/LSQ backward against the formulas.
#include <gtest/gtest.h>

#include <torch/torch.h>

#include "kernels/bitlinear_ops.h"
#include "kernels/reference.h"

namespace {

using bitforge::ops::bitlinear_codes;
using bitforge::ops::bitlinear_quantize_weight;
using bitforge::ops::bitlinear_quantize_weight_backward;
using bitforge::ops::quantize_activation_per_token;

struct Case {
  int64_t quantizer;  // 1 binary, 2 ternary
  int64_t sr, sc;     // scale shape
  double anchor_frac;
  bool center;
};

std::string name(const Case& c) {
  return std::string(c.quantizer == 1 ? "binary" : "ternary") + " scale[" + std::to_string(c.sr) + "," +
         std::to_string(c.sc) + "] anchors=" + std::to_string(c.anchor_frac) + (c.center ? " centered" : "");
}

std::vector<Case> all_cases(int64_t out, int64_t in) {
  std::vector<Case> v;
  for (int64_t q : {1, 2})
    for (auto [sr, sc] : std::vector<std::pair<int64_t, int64_t>>{{1, 1}, {out, 1}, {out, in / 16}, {out, 2}})
      for (double af : {0.0, 0.01, 0.2})
        for (bool c : {false, true}) v.push_back({q, sr, sc, af, c});
  return v;
}

struct Inputs {
  torch::Tensor w, scale, center, anchors;
};

Inputs make_inputs(const Case& c, int64_t out, int64_t in, uint64_t seed) {
  torch::manual_seed(seed);
  Inputs x;
  x.w = torch::randn({out, in});
  // Put some weights exactly on rounding boundaries and at zero to exercise sign(0) = +1 and ties.
  x.w.index_put_({0, 0}, 0.0f);
  x.scale = torch::rand({c.sr, c.sc}) * 0.9 + 0.3;
  x.w.index_put_({0, 1}, 0.5f * x.scale.index({0, 0}).item<float>());
  x.center = c.center ? torch::randn({c.sr, c.sc}) * 0.1 : torch::Tensor();
  const int64_t n = static_cast<int64_t>(c.anchor_frac * out * in);
  x.anchors = n ? std::get<0>(torch::randperm(out * in).slice(0, 0, n).sort()) : torch::empty({0}, torch::kLong);
  return x;
}

c10::optional<torch::Tensor> opt(const torch::Tensor& t) {
  return t.defined() ? c10::optional<torch::Tensor>(t) : c10::nullopt;
}

}  // namespace

TEST(BitLinearOps, ForwardBitExactAgainstReferenceEverySetting) {
  const int64_t out = 24, in = 96;
  for (const auto& c : all_cases(out, in)) {
    auto x = make_inputs(c, out, in, 1);
    for (double lambda : {1.0, 0.25}) {
      auto got = bitlinear_quantize_weight(x.w, x.scale, opt(x.center), x.anchors, c.quantizer, lambda);
      auto want = bitforge::ref::quantize_weight(x.w, x.scale, x.center, x.anchors, c.quantizer, lambda);
      ASSERT_TRUE(torch::equal(got, want)) << name(c) << " lambda=" << lambda << " max diff "
                                           << (got - want).abs().max().item<float>();
    }
  }
}

TEST(BitLinearOps, ForwardValuesAreScaledCodes) {
  const int64_t out = 8, in = 32;
  for (const auto& c : all_cases(out, in)) {
    auto x = make_inputs(c, out, in, 2);
    auto y = bitlinear_quantize_weight(x.w, x.scale, opt(x.center), x.anchors, c.quantizer, 1.0);
    auto codes = bitlinear_codes(x.w, x.scale, opt(x.center), x.anchors, c.quantizer);
    auto mask = bitforge::ref::anchor_mask(x.anchors, out, in);
    auto scaled = bitforge::ref::expand_groups(x.scale, out, in) * codes.to(torch::kFloat);
    EXPECT_TRUE(torch::equal(torch::where(mask, x.w, scaled), y)) << name(c);
    EXPECT_TRUE(torch::equal(codes.masked_select(mask), torch::zeros({mask.sum().item<int64_t>()}, torch::kChar)));
    auto nz = codes.masked_select(mask.logical_not());
    if (c.quantizer == 1) EXPECT_TRUE((nz.abs() == 1).all().item<bool>()) << "binary codes must be ±1";
    else EXPECT_TRUE((nz.abs() <= 1).all().item<bool>());
  }
  // sign(0) = +1 for binary
  auto w = torch::zeros({1, 4});
  auto y = bitlinear_quantize_weight(w, torch::full({1, 1}, 0.5f), c10::nullopt, torch::empty({0}, torch::kLong), 1, 1.0);
  EXPECT_TRUE(torch::equal(y, torch::full({1, 4}, 0.5f)));
}

TEST(BitLinearOps, BackwardMatchesFormulaEverySteAndSetting) {
  const int64_t out = 16, in = 64;
  for (const auto& c : all_cases(out, in)) {
    auto x = make_inputs(c, out, in, 3);
    auto g = torch::randn({out, in});
    for (int64_t ste : {0, 1, 2, 3})
      for (double lambda : {1.0, 0.6}) {
        auto [gw, gs] = bitlinear_quantize_weight_backward(g, x.w, x.scale, opt(x.center), x.anchors, c.quantizer,
                                                           ste, 0.8, lambda, 0.5);
        auto [rw, rs] = bitforge::ref::quantize_weight_backward(g, x.w, x.scale, x.center, x.anchors, c.quantizer,
                                                                ste, 0.8, lambda, 0.5);
        // Weight gradient is elementwise: exact, except tanh whose libm and SLEEF (torch) versions differ by
        // an ulp. The scale gradient is a sum: order-dependent rounding only.
        if (ste == 3) {
          ASSERT_TRUE(torch::allclose(gw, rw, 1e-5, 1e-5)) << name(c);
          continue;
        }
        ASSERT_TRUE(torch::equal(gw, rw)) << name(c) << " ste=" << ste << " mismatches "
                                          << (gw != rw).sum().item<int64_t>() << " max "
                                          << (gw - rw).abs().max().item<float>();
        ASSERT_TRUE(torch::allclose(gs, rs, 1e-5, 1e-5)) << name(c) << " ste=" << ste << "\n" << gs << rs;
      }
  }
}

TEST(BitLinearOps, AnchorsGetTheDenseGradient) {
  auto c = Case{1, 8, 1, 0.2, false};
  auto x = make_inputs(c, 8, 16, 4);
  auto g = torch::randn({8, 16});
  auto [gw, gs] = bitlinear_quantize_weight_backward(g, x.w, x.scale, c10::nullopt, x.anchors, 1, 1, 0.01, 1.0, 1.0);
  auto mask = bitforge::ref::anchor_mask(x.anchors, 8, 16);
  EXPECT_TRUE(torch::equal(gw.masked_select(mask), g.masked_select(mask)));
  // clipped STE with a tiny clip blocks almost all non-anchor gradient
  EXPECT_LT(gw.masked_select(mask.logical_not()).abs().sum().item<float>(), g.abs().sum().item<float>() * 0.2);
}

TEST(BitLinearOps, BinaryScaleGradientAgreesWithFiniteDifferences) {
  // For binary weights W_eff is linear in α, so dL/dα from the kernel must match central differences of
  // L(α) = Σ G ⊙ W_eff(α) exactly up to rounding.
  auto c = Case{1, 6, 2, 0.05, false};
  auto x = make_inputs(c, 6, 32, 5);
  auto g = torch::randn({6, 32}, torch::kDouble).to(torch::kFloat);
  auto [gw, gs] = bitlinear_quantize_weight_backward(g, x.w, x.scale, c10::nullopt, x.anchors, 1, 0, 1.0, 1.0, 1.0);
  const float eps = 1e-2f;
  for (int64_t r = 0; r < 6; ++r)
    for (int64_t k = 0; k < 2; ++k) {
      auto sp = x.scale.clone(), sm = x.scale.clone();
      sp.index_put_({r, k}, sp.index({r, k}).item<float>() + eps);
      sm.index_put_({r, k}, sm.index({r, k}).item<float>() - eps);
      auto lp = (g.to(torch::kDouble) * bitlinear_quantize_weight(x.w, sp, c10::nullopt, x.anchors, 1, 1.0).to(torch::kDouble)).sum();
      auto lm = (g.to(torch::kDouble) * bitlinear_quantize_weight(x.w, sm, c10::nullopt, x.anchors, 1, 1.0).to(torch::kDouble)).sum();
      const double fd = (lp - lm).item<double>() / (2.0 * eps);
      EXPECT_NEAR(gs.index({r, k}).item<float>(), fd, 1e-3 * (1 + std::abs(fd))) << "r=" << r << " k=" << k;
    }
}

TEST(BitLinearOps, ActivationQuantMatchesBitNetFormulaIncludingZeroRow) {
  torch::manual_seed(6);
  auto x = torch::randn({5, 7, 33}) * 3;
  x.index_put_({1, 2}, 0.0f);  // an all-zero token
  for (int64_t bits : {8, 4}) {
    auto got = quantize_activation_per_token(x, bits);
    auto want = bitforge::ref::quantize_activation_per_token(x, bits);
    ASSERT_TRUE(torch::equal(got, want)) << "bits=" << bits;
    EXPECT_TRUE(torch::equal(got.index({1, 2}), torch::zeros({33})));
    // Every value is an integer multiple of max|x|/Qp per token.
    const double qp = bits == 8 ? 127 : 7;
    auto s = qp / std::get<0>(x.abs().max(-1, true)).clamp_min(1e-5);
    auto k = got * s;
    EXPECT_TRUE(torch::allclose(k, k.round(), 0, 1e-3));
    EXPECT_LE(k.abs().max().item<float>(), qp + 1 + 1e-3);
  }
}

TEST(BitLinearOps, BadInputGivesClearErrors) {
  auto w = torch::randn({4, 8});
  auto s = torch::ones({4, 2});
  auto none = torch::empty({0}, torch::kLong);
  auto expect_msg = [](auto&& fn, const std::string& frag) {
    try {
      fn();
      ADD_FAILURE() << "expected an error containing '" << frag << "'";
    } catch (const c10::Error& e) {
      EXPECT_NE(std::string(e.what()).find(frag), std::string::npos) << e.what();
    }
  };
  expect_msg([&] { bitlinear_quantize_weight(w.to(torch::kDouble), s, c10::nullopt, none, 1, 1.0); }, "weight must be float32");
  expect_msg([&] { bitlinear_quantize_weight(w, torch::ones({4, 3}), c10::nullopt, none, 1, 1.0); }, "must divide in_features=8");
  expect_msg([&] { bitlinear_quantize_weight(w, torch::ones({3, 1}), c10::nullopt, none, 1, 1.0); }, "scale rows must be 1 or out=4");
  expect_msg([&] { bitlinear_quantize_weight(w.view({32}), s, c10::nullopt, none, 1, 1.0); }, "weight must be [out, in]");
  expect_msg([&] { bitlinear_quantize_weight(w, s, c10::nullopt, torch::tensor({40}, torch::kLong), 1, 1.0); }, "out of range");
  expect_msg([&] { bitlinear_quantize_weight(w, s, c10::nullopt, torch::tensor({5, 3}, torch::kLong), 1, 1.0); }, "sorted");
  expect_msg([&] { bitlinear_quantize_weight(w, s, c10::nullopt, none, 3, 1.0); }, "quantizer must be 1");
  auto wn = w.clone();
  wn.index_put_({2, 3}, std::numeric_limits<float>::quiet_NaN());
  expect_msg([&] { bitlinear_quantize_weight(wn, s, c10::nullopt, none, 1, 1.0); }, "weight row 2 contains non-finite");
  auto sn = s.clone();
  sn.index_put_({1, 1}, std::numeric_limits<float>::infinity());
  expect_msg([&] { bitlinear_quantize_weight(w, sn, c10::nullopt, none, 1, 1.0); }, "scale contains non-finite");
  expect_msg([&] { quantize_activation_per_token(torch::randn({2, 3}), 3); }, "bits must be 8 or 4");
}

TEST(BitLinearOps, ThreadCountDoesNotChangeResults) {
  auto c = Case{2, 64, 4, 0.01, true};
  auto x = make_inputs(c, 64, 256, 7);
  auto g = torch::randn({64, 256});
  const int saved = at::get_num_threads();
  at::set_num_threads(1);
  auto y1 = bitlinear_quantize_weight(x.w, x.scale, opt(x.center), x.anchors, 2, 1.0);
  auto [w1, s1] = bitlinear_quantize_weight_backward(g, x.w, x.scale, opt(x.center), x.anchors, 2, 2, 1.0, 1.0, 1.0);
  at::set_num_threads(std::max(2, saved));
  auto y2 = bitlinear_quantize_weight(x.w, x.scale, opt(x.center), x.anchors, 2, 1.0);
  auto [w2, s2] = bitlinear_quantize_weight_backward(g, x.w, x.scale, opt(x.center), x.anchors, 2, 2, 1.0, 1.0, 1.0);
  at::set_num_threads(saved);
  EXPECT_TRUE(torch::equal(y1, y2));
  EXPECT_TRUE(torch::equal(w1, w2));
  EXPECT_TRUE(torch::equal(s1, s2));  // per-row partial sums, reduced in a fixed order
}
