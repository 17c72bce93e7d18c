#include "trainer/zero.h"

#include <spdlog/spdlog.h>

#include <cmath>

namespace bitforge {

ZeroAdamW::ZeroAdamW(torch::optim::AdamW& optimizer, std::shared_ptr<Distributed> dist)
    : opt_(optimizer), dist_(std::move(dist)) {
  if (dist_) world_ = dist_->world_size(), rank_ = dist_->rank();
  for (size_t g = 0; g < opt_.param_groups().size(); ++g)
    for (auto& p : opt_.param_groups()[g].params()) {
      TORCH_CHECK(p.is_contiguous(), "ZeRO-1 needs contiguous parameters");
      offset_.push_back(total_);
      total_ += p.numel();
      params_.push_back(p);
      group_of_.push_back(g);
    }
  steps_.assign(params_.size(), 0);
  chunk_ = (total_ + world_ - 1) / world_;
  lo_ = std::min<int64_t>(total_, rank_ * chunk_);
  hi_ = std::min<int64_t>(total_, lo_ + chunk_);
  mine_ = slices_of_rank(rank_);
  auto opts = torch::TensorOptions().dtype(torch::kFloat).device(params_.empty() ? torch::kCPU : params_[0].device());
  exp_avg_ = torch::zeros({chunk_}, opts);
  exp_avg_sq_ = torch::zeros({chunk_}, opts);
  spdlog::info("ZeRO-1: rank {} owns elements [{}, {}) of {}: optimizer state {:.2f} MiB instead of {:.2f} MiB",
               rank_, lo_, hi_, total_, state_bytes() / 1048576.0, full_state_bytes() / 1048576.0);
}

std::vector<ZeroAdamW::Slice> ZeroAdamW::slices_of_rank(int r) const {
  const int64_t lo = std::min<int64_t>(total_, r * chunk_), hi = std::min<int64_t>(total_, lo + chunk_);
  std::vector<Slice> out;
  for (size_t i = 0; i < params_.size(); ++i) {
    const int64_t a = offset_[i], b = a + params_[i].numel();
    const int64_t s = std::max(a, lo), e = std::min(b, hi);
    if (s < e) out.push_back({i, s - a, e - a, s - lo});
  }
  return out;
}

int64_t ZeroAdamW::state_bytes() const { return 2 * static_cast<int64_t>(sizeof(float)) * (hi_ - lo_); }
int64_t ZeroAdamW::full_state_bytes() const { return 2 * static_cast<int64_t>(sizeof(float)) * total_; }

std::vector<torch::Tensor> ZeroAdamW::gather_chunks(const torch::Tensor& send) {
  if (!dist_ || world_ == 1) return {send};
  std::vector<torch::Tensor> out;
  for (int r = 0; r < world_; ++r) out.push_back(torch::empty_like(send));
  dist_->all_gather(out, send);
  return out;
}

void ZeroAdamW::step() {
  torch::NoGradGuard ng;
  // Step counts advance for every parameter with a gradient (the gradient is global: the same on every rank).
  std::vector<bool> has_grad(params_.size());
  for (size_t i = 0; i < params_.size(); ++i) {
    has_grad[i] = params_[i].grad().defined();
    if (has_grad[i]) ++steps_[i];
  }
  for (const auto& s : mine_) {
    if (!has_grad[s.param]) continue;
    auto& o = static_cast<torch::optim::AdamWOptions&>(opt_.param_groups()[group_of_[s.param]].options());
    const double lr = o.lr(), wd = o.weight_decay(), eps = o.eps();
    const double beta1 = std::get<0>(o.betas()), beta2 = std::get<1>(o.betas());
    auto p = params_[s.param].view({-1}).slice(0, s.begin, s.end);
    auto g = params_[s.param].grad().view({-1}).slice(0, s.begin, s.end);
    auto m = exp_avg_.slice(0, s.local, s.local + (s.end - s.begin));
    auto v = exp_avg_sq_.slice(0, s.local, s.local + (s.end - s.begin));
    // torch::optim::AdamW::step, element for element.
    if (wd != 0) p.mul_(1 - lr * wd);
    const auto step = static_cast<double>(steps_[s.param]);
    const double bias_correction1 = 1 - std::pow(beta1, step), bias_correction2 = 1 - std::pow(beta2, step);
    m.mul_(beta1).add_(g, 1 - beta1);
    v.mul_(beta2).addcmul_(g, g, 1 - beta2);
    auto denom = (v.sqrt() / std::sqrt(bias_correction2)).add_(eps);
    p.addcdiv_(m, denom, -(lr / bias_correction1));
  }
  if (!dist_ || world_ == 1) return;
  // All-gather the updated parameters (each rank's shard → every replica).
  auto send = torch::zeros({chunk_}, exp_avg_.options());
  for (const auto& s : mine_)
    send.slice(0, s.local, s.local + (s.end - s.begin)).copy_(params_[s.param].view({-1}).slice(0, s.begin, s.end));
  auto chunks = gather_chunks(send);
  for (int r = 0; r < world_; ++r) {
    if (r == rank_) continue;
    for (const auto& s : slices_of_rank(r))
      params_[s.param].view({-1}).slice(0, s.begin, s.end).copy_(chunks[r].slice(0, s.local, s.local + (s.end - s.begin)));
  }
}

void ZeroAdamW::gather_state() {
  torch::NoGradGuard ng;
  auto m = gather_chunks(exp_avg_), v = gather_chunks(exp_avg_sq_);
  if (rank_ != 0) return;  // only rank 0 writes checkpoints
  auto& state = opt_.state();
  for (size_t i = 0; i < params_.size(); ++i) {
    if (steps_[i] == 0) continue;
    auto em = torch::empty({params_[i].numel()}, exp_avg_.options()), ev = torch::empty_like(em);
    for (int r = 0; r < world_; ++r)
      for (const auto& s : slices_of_rank(r))
        if (s.param == i) {
          const int64_t n = s.end - s.begin;
          em.slice(0, s.begin, s.end).copy_(m[r].slice(0, s.local, s.local + n));
          ev.slice(0, s.begin, s.end).copy_(v[r].slice(0, s.local, s.local + n));
        }
    auto st = std::make_unique<torch::optim::AdamWParamState>();
    st->exp_avg(em.view(params_[i].sizes()));
    st->exp_avg_sq(ev.view(params_[i].sizes()));
    st->step(steps_[i]);
    state[params_[i].unsafeGetTensorImpl()] = std::move(st);
  }
}

void ZeroAdamW::clear_state() { opt_.state().clear(); }

void ZeroAdamW::load_state() {
  torch::NoGradGuard ng;
  auto& state = opt_.state();
  exp_avg_.zero_();
  exp_avg_sq_.zero_();
  for (size_t i = 0; i < params_.size(); ++i) {
    auto it = state.find(params_[i].unsafeGetTensorImpl());
    if (it == state.end()) {
      steps_[i] = 0;
      continue;
    }
    auto& st = static_cast<torch::optim::AdamWParamState&>(*it->second);
    steps_[i] = st.step();
    for (const auto& s : mine_)
      if (s.param == i) {
        const int64_t n = s.end - s.begin;
        exp_avg_.slice(0, s.local, s.local + n).copy_(st.exp_avg().reshape({-1}).slice(0, s.begin, s.end));
        exp_avg_sq_.slice(0, s.local, s.local + n).copy_(st.exp_avg_sq().reshape({-1}).slice(0, s.begin, s.end));
      }
  }
  state.clear();
}

}  // namespace bitforge
