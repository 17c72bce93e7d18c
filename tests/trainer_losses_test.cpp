// Losses (trainer/losses.h): each against its formula written out as explicit loops over small tensors, and
// each gradient w.r.t. the student input against central finite differences in double precision.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <functional>
#include <vector>

#include "trainer/losses.h"

using namespace bitforge;

namespace {

const auto kF64 = torch::TensorOptions().dtype(torch::kDouble);

// log softmax(z / T)[v] of one row, by hand.
std::vector<double> log_softmax_row(const torch::Tensor& z, double T) {
  auto a = z.accessor<double, 1>();
  double mx = -INFINITY;
  for (int64_t v = 0; v < z.size(0); ++v) mx = std::max(mx, a[v] / T);
  double s = 0;
  for (int64_t v = 0; v < z.size(0); ++v) s += std::exp(a[v] / T - mx);
  std::vector<double> out(z.size(0));
  for (int64_t v = 0; v < z.size(0); ++v) out[v] = a[v] / T - mx - std::log(s);
  return out;
}

double kl(const std::vector<double>& log_p, const std::vector<double>& log_q) {
  double s = 0;
  for (size_t i = 0; i < log_p.size(); ++i) s += std::exp(log_p[i]) * (log_p[i] - log_q[i]);
  return s;
}

// Reference per-token divergence (already × T²) straight from the header's formulas, in probability space.
double ref_divergence(const torch::Tensor& s, const torch::Tensor& t, KdLoss kind, double T, double beta) {
  auto ls = log_softmax_row(s, T), lt = log_softmax_row(t, T);
  double d;
  if (kind == KdLoss::forward_kl || (kind == KdLoss::jsd && beta == 0)) {
    d = kl(lt, ls);
  } else if (kind == KdLoss::reverse_kl || (kind == KdLoss::jsd && beta == 1)) {
    d = kl(ls, lt);
  } else {
    std::vector<double> lm(ls.size());
    for (size_t i = 0; i < ls.size(); ++i) lm[i] = std::log((1 - beta) * std::exp(ls[i]) + beta * std::exp(lt[i]));
    d = beta * kl(lt, lm) + (1 - beta) * kl(ls, lm);
  }
  return d * T * T;
}

// Autograd gradient of f at x vs central differences (double), elementwise |diff| ≤ atol + rtol·|fd|.
void expect_grad_matches_fd(const std::function<torch::Tensor(const torch::Tensor&)>& f, torch::Tensor x,
                            double eps = 1e-6, double atol = 1e-7, double rtol = 1e-5) {
  torch::set_num_threads(1);  // hundreds of tiny evaluations: thread hand-offs would dominate
  x = x.detach().clone().set_requires_grad(true);
  f(x).backward();
  auto g = x.grad().contiguous();
  auto flat = x.detach().clone().reshape({-1});
  auto g_flat = g.reshape({-1});
  auto ga = g_flat.accessor<double, 1>();
  for (int64_t i = 0; i < flat.numel(); ++i) {
    auto xp = flat.clone(), xm = flat.clone();
    xp[i] += eps;
    xm[i] -= eps;
    const double fp = f(xp.view(x.sizes())).item<double>(), fm = f(xm.view(x.sizes())).item<double>();
    const double fd = (fp - fm) / (2 * eps);
    ASSERT_NEAR(ga[i], fd, atol + rtol * std::abs(fd)) << "element " << i;
  }
}

}  // namespace

TEST(Loss, CrossEntropyMatchesLoop) {
  torch::manual_seed(0);
  auto logits = torch::randn({2, 5, 7}, kF64) * 3;
  auto labels = torch::randint(0, 7, {2, 5}, torch::kLong);
  labels[0][1] = -100;
  labels[1][4] = -100;
  double sum = 0;
  int n = 0;
  for (int b = 0; b < 2; ++b)
    for (int t = 0; t < 5; ++t) {
      const int64_t y = labels[b][t].item<int64_t>();
      if (y == -100) continue;
      sum -= log_softmax_row(logits[b][t], 1.0)[y];
      ++n;
    }
  EXPECT_NEAR(token_cross_entropy(logits, labels).item<double>(), sum / n, 1e-12);
  // fp32 input computes in fp32 and returns fp32.
  auto l32 = token_cross_entropy(logits.to(torch::kFloat), labels);
  EXPECT_EQ(l32.scalar_type(), torch::kFloat);
  EXPECT_NEAR(l32.item<double>(), sum / n, 1e-5);
  // No valid token: 0, not NaN.
  EXPECT_EQ(token_cross_entropy(logits, torch::full({2, 5}, -100, torch::kLong)).item<double>(), 0.0);
  EXPECT_THROW(token_cross_entropy(logits, labels.to(torch::kInt)), c10::Error);
  expect_grad_matches_fd([&](const torch::Tensor& x) { return token_cross_entropy(x, labels); }, logits);
}

TEST(Loss, DistillationDivergencesMatchLoop) {
  torch::manual_seed(1);
  auto s = torch::randn({2, 3, 6}, kF64) * 2, t = torch::randn({2, 3, 6}, kF64) * 2;
  auto mask = torch::tensor({1, 1, 0, 1, 0, 1}, torch::kBool).view({2, 3});
  struct Case {
    KdLoss kind;
    double T, beta;
  };
  for (const Case c : {Case{KdLoss::forward_kl, 2.0, 0.5}, Case{KdLoss::reverse_kl, 1.5, 0.5},
                       Case{KdLoss::jsd, 2.0, 0.3}, Case{KdLoss::jsd, 1.0, 0.0}, Case{KdLoss::jsd, 3.0, 1.0}}) {
    double sum = 0, all = 0;
    int n = 0;
    for (int b = 0; b < 2; ++b)
      for (int i = 0; i < 3; ++i) {
        const double d = ref_divergence(s[b][i], t[b][i], c.kind, c.T, c.beta);
        all += d;
        if (mask[b][i].item<bool>()) {
          sum += d;
          ++n;
        }
      }
    const std::string what = "kind " + std::to_string(static_cast<int>(c.kind)) + " beta " + std::to_string(c.beta);
    EXPECT_NEAR(kd_loss(s, t, c.kind, c.T, c.beta, mask).item<double>(), sum / n, 1e-12) << what;
    EXPECT_NEAR(kd_loss(s, t, c.kind, c.T, c.beta).item<double>(), all / 6, 1e-12) << what;
    expect_grad_matches_fd([&](const torch::Tensor& x) { return kd_loss(x, t, c.kind, c.T, c.beta, mask); }, s);
  }
  // TRL convention at the ends; identical distributions give 0.
  EXPECT_NEAR(kd_loss(s, t, KdLoss::jsd, 2.0, 0.0).item<double>(),
              kd_loss(s, t, KdLoss::forward_kl, 2.0).item<double>(), 1e-15);
  EXPECT_NEAR(kd_loss(s, t, KdLoss::jsd, 2.0, 1.0).item<double>(),
              kd_loss(s, t, KdLoss::reverse_kl, 2.0).item<double>(), 1e-15);
  EXPECT_NEAR(kd_loss(s, s, KdLoss::jsd, 2.0, 0.5).item<double>(), 0.0, 1e-15);
  // The teacher gets no gradient.
  auto tg = t.clone().set_requires_grad(true);
  auto sg = s.clone().set_requires_grad(true);
  kd_loss(sg, tg, KdLoss::forward_kl, 2.0).backward();
  EXPECT_FALSE(tg.grad().defined());
  EXPECT_THROW(kd_loss(s, t, KdLoss::jsd, 2.0, 1.5), c10::Error);
  EXPECT_THROW(kd_loss(s, t, KdLoss::forward_kl, 0.0), c10::Error);
}

TEST(Loss, HiddenStateMatchesLoop) {
  torch::manual_seed(2);
  auto s = torch::randn({2, 3, 5}, kF64), t = torch::randn({2, 3, 5}, kF64);
  double mse = 0, cos = 0;
  for (int b = 0; b < 2; ++b)
    for (int i = 0; i < 3; ++i) {
      double d2 = 0, st = 0, ss = 0, tt = 0;
      for (int h = 0; h < 5; ++h) {
        const double x = s[b][i][h].item<double>(), y = t[b][i][h].item<double>();
        d2 += (x - y) * (x - y);
        st += x * y;
        ss += x * x;
        tt += y * y;
      }
      mse += d2 / 5;
      cos += 1 - st / (std::sqrt(ss) * std::sqrt(tt));
    }
  EXPECT_NEAR(hidden_state_loss(s, t, HiddenLoss::mse).item<double>(), mse / 6, 1e-12);
  EXPECT_NEAR(hidden_state_loss(s, t, HiddenLoss::cosine).item<double>(), cos / 6, 1e-12);
  for (HiddenLoss k : {HiddenLoss::mse, HiddenLoss::cosine})
    expect_grad_matches_fd([&](const torch::Tensor& x) { return hidden_state_loss(x, t, k); }, s);
  EXPECT_THROW(hidden_state_loss(s, t.narrow(2, 0, 4), HiddenLoss::mse), c10::Error);
}

namespace {
// MiniLM-v2 relation KL for one state pair by loops: X [B,T,D] (D may differ), r relation heads.
// Returns the per-token sums averaged over heads: out[b][i] = mean_a KL(R_t[b,a,i,:] ‖ R_s[b,a,i,:]).
std::vector<std::vector<double>> ref_relation_kl(const torch::Tensor& xs, const torch::Tensor& xt, int64_t r) {
  const int64_t B = xs.size(0), T = xs.size(1);
  std::vector<std::vector<double>> out(B, std::vector<double>(T, 0.0));
  auto rel_row = [&](const torch::Tensor& x, int64_t b, int64_t a, int64_t i) {
    const int64_t dr = x.size(2) / r;
    auto acc = x.accessor<double, 3>();
    std::vector<double> sc(T);
    for (int64_t j = 0; j < T; ++j) {
      double dot = 0;
      for (int64_t d = 0; d < dr; ++d) dot += acc[b][i][a * dr + d] * acc[b][j][a * dr + d];
      sc[j] = dot / std::sqrt(static_cast<double>(dr));
    }
    return log_softmax_row(torch::tensor(sc, kF64), 1.0);
  };
  for (int64_t b = 0; b < B; ++b)
    for (int64_t i = 0; i < T; ++i) {
      for (int64_t a = 0; a < r; ++a) out[b][i] += kl(rel_row(xt, b, a, i), rel_row(xs, b, a, i));
      out[b][i] /= r;
    }
  return out;
}
}  // namespace

TEST(Loss, AttentionRelationMatchesLoop) {
  torch::manual_seed(3);
  const int64_t B = 2, T = 4, r = 2;
  // Student: 4 query heads of 4, GQA 2 KV heads of 4, given as [B,h,T,d]; teacher: [B,T,D] with wider D.
  QkvStates s{torch::randn({B, 4, T, 4}, kF64), torch::randn({B, 2, T, 4}, kF64), torch::randn({B, 2, T, 4}, kF64)};
  QkvStates t{torch::randn({B, T, 24}, kF64), torch::randn({B, T, 12}, kF64), torch::randn({B, T, 12}, kF64)};
  double want = 0;
  const torch::Tensor* ss[3] = {&s.q, &s.k, &s.v};
  const torch::Tensor* ts[3] = {&t.q, &t.k, &t.v};
  for (int k = 0; k < 3; ++k) {
    auto xs = ss[k]->transpose(1, 2).reshape({B, T, -1}).contiguous();
    auto per = ref_relation_kl(xs, *ts[k], r);
    double sum = 0;
    for (auto& row : per)
      for (double v : row) sum += v;
    want += sum / (B * T);
  }
  want /= 3;
  EXPECT_NEAR(attention_relation_loss(s, t, r).item<double>(), want, 1e-12);
  EXPECT_NEAR(attention_relation_loss(t, t, r).item<double>(), 0.0, 1e-14);

  // Gradient w.r.t. each student state.
  for (int k = 0; k < 3; ++k) {
    expect_grad_matches_fd(
        [&](const torch::Tensor& x) {
          QkvStates v = s;
          (k == 0 ? v.q : k == 1 ? v.k : v.v) = x;
          return attention_relation_loss(v, t, r);
        },
        *ss[k]);
  }
  EXPECT_THROW(attention_relation_loss(s, t, 5), c10::Error);  // 5 does not divide 16
}

TEST(Loss, AttentionRelationMaskDropsPadding) {
  torch::manual_seed(4);
  // With the last token masked, the loss equals the loss on the first T-1 tokens alone.
  QkvStates s{torch::randn({1, 5, 8}, kF64), torch::randn({1, 5, 8}, kF64), torch::randn({1, 5, 8}, kF64)};
  QkvStates t{torch::randn({1, 5, 8}, kF64), torch::randn({1, 5, 8}, kF64), torch::randn({1, 5, 8}, kF64)};
  auto mask = torch::tensor({1, 1, 1, 1, 0}, torch::kBool).view({1, 5});
  auto cut = [](const QkvStates& x) {
    return QkvStates{x.q.narrow(1, 0, 4), x.k.narrow(1, 0, 4), x.v.narrow(1, 0, 4)};
  };
  EXPECT_NEAR(attention_relation_loss(s, t, 2, mask).item<double>(),
              attention_relation_loss(cut(s), cut(t), 2).item<double>(), 1e-12);
  expect_grad_matches_fd(
      [&](const torch::Tensor& x) {
        QkvStates v = s;
        v.q = x;
        return attention_relation_loss(v, t, 2, mask);
      },
      s.q);
}
