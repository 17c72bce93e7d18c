// Training and distillation losses; formulas and sources in trainer/losses.h.
#include "trainer/losses.h"

#include <c10/core/impl/LocalDispatchKeySet.h>

#include <cmath>
#include <limits>

namespace bitforge {

namespace {

// Losses are computed in fp32 (fp64 stays fp64 for the finite-difference tests).
torch::Tensor to_compute(const torch::Tensor& x) { return x.scalar_type() == torch::kDouble ? x : x.to(torch::kFloat); }

// Mean of per-token values over valid tokens; 0 (with a graph) when none is valid. No host sync.
torch::Tensor masked_token_mean(const torch::Tensor& per_token, const torch::Tensor& mask) {
  if (!mask.defined()) return per_token.mean();
  TORCH_CHECK(mask.sizes() == per_token.sizes(), "loss mask shape ", mask.sizes(), " does not match tokens ",
              per_token.sizes());
  auto m = mask.to(per_token.scalar_type());
  return (per_token * m).sum() / m.sum().clamp_min(1.0);
}

// Switches autocast off for the scope (losses want fp32 softmax/matmul).
struct NoAutocast {
  c10::impl::ExcludeDispatchKeyGuard guard{c10::autocast_dispatch_keyset};
};

// Σ_v p_a (log p_a − log p_b) over the last dim, given log-probabilities.
torch::Tensor kl_from_log_probs(const torch::Tensor& log_a, const torch::Tensor& log_b) {
  return (log_a.exp() * (log_a - log_b)).sum(-1);
}

torch::Tensor as_btd(const torch::Tensor& x) {
  if (x.dim() == 4) return x.transpose(1, 2).flatten(2);  // [B,h,T,d] → [B,T,h·d]
  TORCH_CHECK(x.dim() == 3, "attention relation: states must be [B,T,D] or [B,heads,T,head_dim], got ", x.sizes());
  return x;
}

}  // namespace

torch::Tensor valid_token_mask(const torch::Tensor& labels, int64_t ignore_index) { return labels != ignore_index; }

torch::Tensor token_cross_entropy(const torch::Tensor& logits, const torch::Tensor& labels, int64_t ignore_index) {
  NoAutocast no_autocast;
  TORCH_CHECK(logits.dim() >= 2, "token_cross_entropy: logits must be [..., V], got ", logits.sizes());
  TORCH_CHECK(labels.sizes() == logits.sizes().slice(0, logits.dim() - 1), "token_cross_entropy: labels ",
              labels.sizes(), " do not match logits ", logits.sizes());
  TORCH_CHECK(labels.scalar_type() == torch::kLong, "token_cross_entropy: labels must be int64, got ",
              labels.scalar_type());
  const int64_t V = logits.size(-1);
  auto flat_logits = to_compute(logits).reshape({-1, V});
  auto flat_labels = labels.reshape({-1});
  auto sum = torch::nn::functional::cross_entropy(
      flat_logits, flat_labels,
      torch::nn::functional::CrossEntropyFuncOptions().ignore_index(ignore_index).reduction(torch::kSum));
  auto count = (flat_labels != ignore_index).sum().to(sum.scalar_type());
  return sum / count.clamp_min(1.0);
}

torch::Tensor kd_divergence_per_token(const torch::Tensor& student_logits, const torch::Tensor& teacher_logits,
                                      KdLoss kind, double temperature, double beta) {
  NoAutocast no_autocast;
  TORCH_CHECK(student_logits.sizes() == teacher_logits.sizes(), "kd_loss: student logits ", student_logits.sizes(),
              " and teacher logits ", teacher_logits.sizes(), " differ");
  TORCH_CHECK(temperature > 0.0, "kd_loss: temperature must be > 0, got ", temperature);
  TORCH_CHECK(beta >= 0.0 && beta <= 1.0, "kd_loss: beta must be in [0, 1], got ", beta);
  auto s = to_compute(student_logits);
  auto t = teacher_logits.detach().to(s.scalar_type());
  auto log_ps = torch::log_softmax(s / temperature, -1);
  auto log_pt = torch::log_softmax(t / temperature, -1);
  torch::Tensor div;
  if (kind == KdLoss::forward_kl || (kind == KdLoss::jsd && beta == 0.0)) {
    div = kl_from_log_probs(log_pt, log_ps);
  } else if (kind == KdLoss::reverse_kl || (kind == KdLoss::jsd && beta == 1.0)) {
    div = kl_from_log_probs(log_ps, log_pt);
  } else {
    // TRL GKD: log m = logsumexp(log p_s + log(1−β), log p_t + log β).
    auto log_m = torch::logaddexp(log_ps + std::log1p(-beta), log_pt + std::log(beta));
    div = beta * kl_from_log_probs(log_pt, log_m) + (1.0 - beta) * kl_from_log_probs(log_ps, log_m);
  }
  return div * (temperature * temperature);
}

torch::Tensor kd_loss(const torch::Tensor& student_logits, const torch::Tensor& teacher_logits, KdLoss kind,
                      double temperature, double beta, const torch::Tensor& mask) {
  return masked_token_mean(kd_divergence_per_token(student_logits, teacher_logits, kind, temperature, beta), mask);
}

torch::Tensor hidden_state_loss(const torch::Tensor& student, const torch::Tensor& teacher, HiddenLoss kind,
                                const torch::Tensor& mask) {
  NoAutocast no_autocast;
  TORCH_CHECK(student.sizes() == teacher.sizes(), "hidden_state_loss: student ", student.sizes(), " and teacher ",
              teacher.sizes(), " differ");
  auto s = to_compute(student);
  auto t = teacher.detach().to(s.scalar_type());
  torch::Tensor per_token;
  if (kind == HiddenLoss::mse) {
    per_token = (s - t).square().mean(-1);
  } else {
    per_token = 1.0 - torch::cosine_similarity(s, t, -1, 1e-8);
  }
  return masked_token_mean(per_token, mask);
}

torch::Tensor attention_relation_log_probs(const torch::Tensor& states, int64_t relation_heads,
                                           const torch::Tensor& mask, bool l2_normalize) {
  NoAutocast no_autocast;
  auto x = to_compute(as_btd(states));
  const int64_t B = x.size(0), T = x.size(1), D = x.size(2);
  TORCH_CHECK(relation_heads > 0 && D % relation_heads == 0, "attention relation: relation_heads ", relation_heads,
              " must divide the state width ", D);
  const int64_t dr = D / relation_heads;
  auto xa = x.reshape({B, T, relation_heads, dr}).transpose(1, 2);  // [B,r,T,d_r]
  if (l2_normalize) xa = torch::nn::functional::normalize(xa, torch::nn::functional::NormalizeFuncOptions().dim(-1));
  auto scores = torch::matmul(xa, xa.transpose(-1, -2)) / std::sqrt(static_cast<double>(dr));  // [B,r,T,T]
  if (mask.defined()) {
    TORCH_CHECK(mask.dim() == 2 && mask.size(0) == B && mask.size(1) == T, "attention relation: mask ", mask.sizes(),
                " does not match states [", B, ", ", T, "]");
    // Large finite negative instead of −inf: exp → 0 and p·(log p_t − log p_s) stays 0, never NaN.
    const double lowest = x.scalar_type() == torch::kDouble ? -1e300 : -1e30;
    scores = scores.masked_fill(mask.to(torch::kBool).logical_not().view({B, 1, 1, T}), lowest);
  }
  return torch::log_softmax(scores, -1);
}

torch::Tensor attention_relation_loss(const QkvStates& student, const QkvStates& teacher, int64_t relation_heads,
                                      const torch::Tensor& mask, bool l2_normalize) {
  NoAutocast no_autocast;
  const torch::Tensor* s_states[3] = {&student.q, &student.k, &student.v};
  const torch::Tensor* t_states[3] = {&teacher.q, &teacher.k, &teacher.v};
  torch::Tensor total;
  for (int r = 0; r < 3; ++r) {
    auto s = as_btd(*s_states[r]);
    auto t = as_btd(t_states[r]->detach());
    TORCH_CHECK(s.size(0) == t.size(0) && s.size(1) == t.size(1), "attention relation: student states ", s.sizes(),
                " and teacher states ", t.sizes(), " differ in batch or length");
    auto log_rs = attention_relation_log_probs(s, relation_heads, mask, l2_normalize);
    auto log_rt = attention_relation_log_probs(t, relation_heads, mask, l2_normalize).to(log_rs.scalar_type());
    auto per_token = kl_from_log_probs(log_rt, log_rs).mean(1);  // [B,r,T] → mean over relation heads → [B,T]
    auto term = masked_token_mean(per_token, mask);
    total = total.defined() ? total + term : term;
  }
  return total / 3.0;
}

}  // namespace bitforge
