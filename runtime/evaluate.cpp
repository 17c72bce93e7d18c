#include "runtime/evaluate.h"

#include <algorithm>
#include <cmath>

namespace bitforge::runtime {

PackedEval evaluate_packed(PackedRuntime& rt, const data::SequentialLoader& val, int64_t max_batches,
                           const ReferenceLogits& reference) {
  torch::NoGradGuard ng;
  PackedEval r;
  double nll = 0, kl = 0, agree = 0;
  const int64_t T = val.seq_len();
  const int64_t n = max_batches > 0 ? std::min<int64_t>(val.num_batches(), max_batches) : val.num_batches();
  for (int64_t i = 0; i < n; ++i) {
    const auto ids = val.batch(i);
    for (int64_t row = 0; row < val.rows(i); ++row) {
      std::vector<int32_t> toks(ids.begin() + row * (T + 1), ids.begin() + row * (T + 1) + T);
      auto labels =
          torch::from_blob(const_cast<int32_t*>(ids.data()) + row * (T + 1) + 1, {T}, torch::kInt).to(torch::kLong);
      rt.reset();
      auto logits = rt.logits(toks).to(torch::kFloat);
      auto lp = torch::log_softmax(logits.to(torch::kDouble), -1);
      nll -= lp.gather(1, labels.unsqueeze(1)).sum().item<double>();
      r.tokens += T;
      if (reference) {
        auto c = kl_and_top1(reference(toks).to(torch::kFloat), logits);
        kl += c.mean_kl * static_cast<double>(c.positions);
        agree += c.top1 * static_cast<double>(c.positions);
      }
    }
  }
  r.loss = r.tokens ? nll / static_cast<double>(r.tokens) : 0;
  r.perplexity = std::exp(r.loss);
  if (reference && r.tokens) {
    r.kl = kl / static_cast<double>(r.tokens);
    r.top1 = agree / static_cast<double>(r.tokens);
  }
  return r;
}

}  // namespace bitforge::runtime
