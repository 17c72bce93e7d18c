// Training and distillation losses (research.md §2). All return a scalar tensor (0-dim) with gradients to the
// student inputs; teacher inputs are detached (treated as constants). Every loss is a mean per valid token.
//
// Inputs may be fp32, bf16/fp16 (computed in fp32) or fp64 (kept in fp64; the tests use it for finite
// differences). Autocast is switched off inside, so softmaxes and relation matmuls run in fp32.
//
// Masks: `mask` is an optional [B,T] (or [N]) bool/integer tensor, nonzero = valid token. Undefined = all
// valid. With no valid token a loss is 0 (not NaN), still connected to the graph.
//
// Sources:
//   CE              standard next-token cross-entropy; labels already aligned with logits (caller shifts),
//                   ignore index −100 as HF/PyTorch.
//   forward KL      Hinton et al. 2015 / DistilBERT: T² · KL(p_t ‖ p_s), p = softmax(z / T).
//   reverse KL      T² · KL(p_s ‖ p_t) (MiniLLM; torchtune ReverseKLLoss).
//   generalized JSD TRL GKD `generalized_jsd_loss` (Agarwal et al. 2024, arXiv 2306.13649), then × T²:
//                     β = 0:      KL(p_t ‖ p_s)                       (forward KL, TRL's special case)
//                     β = 1:      KL(p_s ‖ p_t)                       (reverse KL, TRL's special case)
//                     otherwise:  m = (1−β)·p_s + β·p_t  (in log space by logsumexp)
//                                 JSD_β = β·KL(p_t ‖ m) + (1−β)·KL(p_s ‖ m)
//                   (TRL itself does not multiply by T²; we do for every kind so alpha_kd has one meaning.)
//   hidden states   MSE: mean over the hidden dim of (h_s − h_t)²; cosine: 1 − cos(h_s, h_t) per token.
//   attention       MiniLM-v2 (Wang et al. 2021, arXiv 2012.15828) multi-head self-attention relations, as
//   relations       used by BitDistill (arXiv 2510.13998, Eq. 11): for each of Q, K, V states X [B,T,D]
//                   (all heads concatenated), split D into r relation heads of d_r = D/r,
//                   R = softmax(X_a X_aᵀ / √d_r) over keys  [B,r,T,T],
//                   L = mean over {Q,K,V}, relation heads and query tokens of KL(R_teacher ‖ R_student).
//                   Teacher and student may have different D (and attention head counts); r must match.
//                   Neither paper L2-normalises X (research.md mentions it; available as an option).
//                   No causal mask: the relation of token i to a later token j uses states that exist in
//                   teacher-forced training; padding (mask = 0) is excluded as query rows and key columns.
#pragma once

#include <torch/torch.h>

#include <cstdint>

#include "config/config.h"

namespace bitforge {

constexpr int64_t kIgnoreIndex = -100;

/// logits [B,T,V] or [N,V]; labels [B,T] or [N] int64 with values in [0,V) or ignore_index.
/// Mean of −log softmax(logits)[label] over tokens whose label != ignore_index.
/// Throws c10::Error on mismatched shapes or a non-integer label dtype.
torch::Tensor token_cross_entropy(const torch::Tensor& logits, const torch::Tensor& labels,
                                  int64_t ignore_index = kIgnoreIndex);

/// Per-token logit distillation divergence (already × T²), [B,T] or [N]. student/teacher logits [..., V] of
/// the same shape. beta only matters for KdLoss::jsd and must lie in [0, 1]; temperature > 0.
torch::Tensor kd_divergence_per_token(const torch::Tensor& student_logits, const torch::Tensor& teacher_logits,
                                      KdLoss kind, double temperature, double beta = 0.5);

/// Mean of kd_divergence_per_token over valid tokens (see the header for the formulas).
torch::Tensor kd_loss(const torch::Tensor& student_logits, const torch::Tensor& teacher_logits, KdLoss kind,
                      double temperature, double beta = 0.5, const torch::Tensor& mask = {});

/// Valid-token mask from labels: labels != ignore_index (bool, same shape).
torch::Tensor valid_token_mask(const torch::Tensor& labels, int64_t ignore_index = kIgnoreIndex);

/// student/teacher hidden states [B,T,H] (same shape). MSE: mean over H of the squared difference; cosine:
/// 1 − cosine similarity over H (eps 1e-8). Averaged over valid tokens.
torch::Tensor hidden_state_loss(const torch::Tensor& student, const torch::Tensor& teacher, HiddenLoss kind,
                                const torch::Tensor& mask = {});

/// Q, K, V states of one attention layer: each [B,T,D] (heads concatenated) or [B,heads,T,head_dim] as
/// ModelOutputs returns them (converted to [B,T,heads·head_dim]). K/V may have fewer heads than Q (GQA).
struct QkvStates {
  torch::Tensor q, k, v;
};

/// MiniLM-v2 attention-relation loss (see header). relation_heads must divide every state's D; B and T must
/// agree between student and teacher. Throws c10::Error otherwise.
torch::Tensor attention_relation_loss(const QkvStates& student, const QkvStates& teacher, int64_t relation_heads,
                                      const torch::Tensor& mask = {}, bool l2_normalize = false);

/// The relation matrix of one state: X [B,T,D] or [B,h,T,d] → log softmax(X_a X_aᵀ/√d_r) [B,r,T,T] (fp32 or
/// fp64). Columns where mask is 0 are excluded from the softmax (exp → 0).
torch::Tensor attention_relation_log_probs(const torch::Tensor& states, int64_t relation_heads,
                                           const torch::Tensor& mask = {}, bool l2_normalize = false);

}  // namespace bitforge
