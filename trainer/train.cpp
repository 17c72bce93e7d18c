#include "trainer/train.h"

#include <ATen/autocast_mode.h>
#include <spdlog/spdlog.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>

#include <fmt/format.h>

#include "trainer/checkpoint.h"
#include "trainer/logging.h"
#include "trainer/losses.h"

namespace fs = std::filesystem;

namespace bitforge {

double lr_at(const TrainConfig& t, int64_t step) {
  const double peak = t.learning_rate, floor = t.min_lr_ratio * peak;
  if (t.warmup_steps > 0 && step < t.warmup_steps)
    return peak * static_cast<double>(step + 1) / static_cast<double>(t.warmup_steps);
  const double span = std::max<int64_t>(1, t.max_steps - t.warmup_steps);
  const double p = std::min(1.0, static_cast<double>(step - t.warmup_steps) / span);
  switch (t.lr_scheduler) {
    case LrScheduler::constant: return peak;
    case LrScheduler::linear: return peak + (floor - peak) * p;
    case LrScheduler::two_stage: {
      const double cosine = floor + (peak - floor) * 0.5 * (1.0 + std::cos(M_PI * p));
      return step < t.max_steps / 2 ? cosine : cosine * (2.0 / 3.0);
    }
    case LrScheduler::cosine:
    default: return floor + (peak - floor) * 0.5 * (1.0 + std::cos(M_PI * p));
  }
}

double weight_decay_at(const TrainConfig& t, int64_t step) {
  if (t.lr_scheduler == LrScheduler::two_stage && step >= t.max_steps / 2) return 0.0;
  return t.weight_decay;
}

torch::Device select_device(const TrainConfig& t) {
  if (t.threads > 0) torch::set_num_threads(static_cast<int>(t.threads));
  if (t.device == "cuda") {
    if (!torch::cuda::is_available()) throw std::runtime_error("train.device is cuda but no CUDA device is available");
    return torch::Device(torch::kCUDA);
  }
  if (t.device == "auto" && torch::cuda::is_available()) return torch::Device(torch::kCUDA);
  return torch::Device(torch::kCPU);
}

namespace {

struct Batch {
  torch::Tensor input, labels;
};

Batch to_batch(const std::vector<int32_t>& ids, int64_t rows, int64_t seq_len, const torch::Device& device) {
  auto t = torch::from_blob(const_cast<int32_t*>(ids.data()), {rows, seq_len + 1}, torch::kInt).to(torch::kLong);
  return {t.slice(1, 0, seq_len).contiguous().to(device), t.slice(1, 1, seq_len + 1).contiguous().to(device)};
}

/// RAII bf16 autocast on CUDA (a no-op on CPU).
struct AutocastGuard {
  bool on;
  AutocastGuard(bool enable, const torch::Device& d) : on(enable && d.is_cuda()) {
    if (on) {
      at::autocast::set_autocast_dtype(at::kCUDA, at::kBFloat16);
      at::autocast::set_autocast_enabled(at::kCUDA, true);
    }
  }
  ~AutocastGuard() {
    if (on) {
      at::autocast::set_autocast_enabled(at::kCUDA, false);
      at::autocast::clear_cache();
    }
  }
};

bool no_decay(const std::string& name, const torch::Tensor& p) {
  return p.dim() < 2 || name.find("norm") != std::string::npos || name.find("weight_scale") != std::string::npos ||
         name.find("bias") != std::string::npos;
}

/// Appends JSON lines to metrics.jsonl; on resume, drops lines past the resumed step (the killed run's tail).
class MetricsLog {
 public:
  MetricsLog(const std::string& path, int64_t resume_step, bool enabled) : path_(path), enabled_(enabled) {
    if (!enabled_) return;
    std::vector<std::string> keep;
    if (resume_step >= 0 && fs::exists(path)) {
      std::ifstream in(path);
      std::string line;
      while (std::getline(in, line)) {
        auto j = nlohmann::json::parse(line, nullptr, false);
        if (!j.is_discarded() && j.value("step", int64_t{0}) <= resume_step) keep.push_back(line);
      }
    }
    std::ofstream out(path, std::ios::trunc);
    for (auto& l : keep) out << l << "\n";
  }
  void write(const nlohmann::json& j) {
    if (!enabled_) return;
    std::ofstream out(path_, std::ios::app);
    out << j.dump() << "\n";
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  bool enabled_;
};

/// Loss curve (train and val) as PNG with gnuplot, from metrics.jsonl.
void plot_loss_curve(const std::string& metrics_path, const std::string& png, const std::string& title) {
  if (std::system("command -v gnuplot >/dev/null 2>&1") != 0) {
    spdlog::warn("gnuplot not found: skipping the loss-curve plot ({}); run scripts/setup.sh", png);
    return;
  }
  const std::string dir = fs::path(png).parent_path().string();
  const std::string train_tsv = dir + "/loss_train.tsv", val_tsv = dir + "/loss_val.tsv";
  std::ifstream in(metrics_path);
  std::ofstream tr(train_tsv), va(val_tsv);
  std::string line;
  int64_t n_val = 0;
  while (std::getline(in, line)) {
    auto j = nlohmann::json::parse(line, nullptr, false);
    if (j.is_discarded()) continue;
    if (j.contains("loss")) tr << j["step"].get<int64_t>() << "\t" << j["loss"].get<double>() << "\n";
    if (j.contains("val_loss")) va << j["step"].get<int64_t>() << "\t" << j["val_loss"].get<double>() << "\n", ++n_val;
  }
  tr.close();
  va.close();
  const std::string script = dir + "/loss.gp";
  {
    std::ofstream gp(script);
    gp << "set terminal pngcairo size 900,540 noenhanced\nset output '" << png << "'\n"
       << "set title '" << title << "'\nset xlabel 'step'\nset ylabel 'cross-entropy (nats)'\nset grid\n"
       << "plot '" << train_tsv << "' using 1:2 with lines lw 2 title 'train'";
    if (n_val > 0) gp << ", '" << val_tsv << "' using 1:2 with linespoints lw 2 pt 7 title 'val'";
    gp << "\n";
  }
  if (std::system(("gnuplot '" + script + "' 2>/dev/null").c_str()) != 0)
    spdlog::warn("gnuplot failed to draw {}", png);
}

}  // namespace

EvalResult evaluate(Transformer& model, const data::SequentialLoader& loader, int64_t max_batches,
                    const torch::Device& device) {
  torch::NoGradGuard ng;
  const bool was_training = model->is_training();
  model->eval();
  double nll = 0;
  int64_t tokens = 0;
  const int64_t n = max_batches > 0 ? std::min<int64_t>(loader.num_batches(), max_batches) : loader.num_batches();
  for (int64_t i = 0; i < n; ++i) {
    auto b = to_batch(loader.batch(i), loader.rows(i), loader.seq_len(), device);
    auto logits = model->forward(b.input).to(torch::kFloat);
    auto loss = torch::nn::functional::cross_entropy(logits.reshape({-1, logits.size(-1)}), b.labels.reshape({-1}),
                                                     torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kSum));
    nll += loss.item<double>();
    tokens += b.labels.numel();
  }
  if (was_training) model->train();
  EvalResult r;
  r.tokens = tokens;
  r.coverage = static_cast<double>(tokens) / static_cast<double>(loader.shard().size() - 1);
  r.loss = tokens ? nll / static_cast<double>(tokens) : 0.0;
  r.perplexity = std::exp(r.loss);
  return r;
}

data::SequentialLoader validation_loader(const Config& cfg, std::shared_ptr<const data::ShardReader> val_shard) {
  return data::SequentialLoader(std::move(val_shard), cfg.eval.batch_size, cfg.eval.seq_len, cfg.eval.max_batches);
}

data::SequentialLoader validation_loader(const Config& cfg, const std::string& val_shard) {
  return validation_loader(cfg, std::make_shared<const data::ShardReader>(val_shard));
}

TrainResult train(const TrainSpec& spec) {
  const Config& cfg = spec.config;
  const TrainConfig& t = cfg.train;
  const auto t_start = std::chrono::steady_clock::now();
  fs::create_directories(spec.output_dir);
  const std::string ckpt_dir = (fs::path(spec.output_dir) / "checkpoints").string();
  torch::Device device = select_device(t);
  torch::manual_seed(t.seed);

  Transformer model(cfg.model, cfg.quant);
  model->to(device);
  model->train();
  const int64_t n_params = model->num_parameters();

  // AdamW parameter groups: no weight decay on norms, biases, scales (HF/torchtitan convention).
  std::vector<torch::Tensor> decay, plain;
  for (auto& p : model->named_parameters()) (no_decay(p.key(), p.value()) ? plain : decay).push_back(p.value());
  auto opts = torch::optim::AdamWOptions(t.learning_rate)
                  .betas({t.adam_beta1, t.adam_beta2})
                  .eps(t.adam_epsilon)
                  .weight_decay(t.weight_decay);
  std::vector<torch::optim::OptimizerParamGroup> groups;
  groups.emplace_back(decay, std::make_unique<torch::optim::AdamWOptions>(opts));
  auto plain_opts = opts;
  plain_opts.weight_decay(0.0);
  groups.emplace_back(plain, std::make_unique<torch::optim::AdamWOptions>(plain_opts));
  torch::optim::AdamW optimizer(groups, opts);

  auto shard = std::make_shared<data::ShardReader>(spec.train_shard);
  shard->expect_vocab_size(cfg.model.vocab_size);
  data::TokenLoader loader(shard, t.per_device_train_batch_size, t.seq_len, t.seed);
  auto val_shard = std::make_shared<data::ShardReader>(spec.val_shard);
  val_shard->expect_vocab_size(cfg.model.vocab_size);
  data::SequentialLoader val_loader = validation_loader(cfg, val_shard);
  // Periodic progress checks: a small subsample spread over the split (train.eval_batches batches), not a report.
  data::SequentialLoader progress_val(val_shard, cfg.eval.batch_size, cfg.eval.seq_len, t.eval_batches);

  // Resume.
  int64_t start_step = 0, tokens_seen = 0;
  std::optional<std::string> resume;
  if (t.resume_from_checkpoint == "auto") {
    resume = latest_checkpoint(ckpt_dir);
    if (!resume) spdlog::info("[{}] resume_from_checkpoint: auto — no checkpoint in {}, starting fresh", spec.stage, ckpt_dir);
  } else if (!t.resume_from_checkpoint.empty()) {
    resume = t.resume_from_checkpoint;
  }
  if (resume) {
    auto st = load_checkpoint(*resume, model, &optimizer);
    start_step = st.at("step").get<int64_t>();
    tokens_seen = st.value("tokens_seen", int64_t{0});
    loader.restore(st.at("loader").get<data::LoaderState>());
    for (auto& bl : model->bit_linears()) bl->restore_step(start_step);
    spdlog::info("[{}] resumed from {} at step {} ({} tokens seen)", spec.stage, *resume, start_step, tokens_seen);
  } else if (spec.init) {
    spec.init(model);
  }

  MetricsLog metrics((fs::path(spec.output_dir) / "metrics.jsonl").string(), resume ? start_step : -1,
                     cfg.logging.json_metrics);
  LossFn loss_fn = spec.loss ? spec.loss
                             : LossFn([](Transformer& m, const torch::Tensor& in, const torch::Tensor& labels,
                                         std::map<std::string, double>&) { return token_cross_entropy(m->forward(in), labels); });

  const int64_t tokens_per_step = t.per_device_train_batch_size * t.seq_len * t.gradient_accumulation_steps;
  spdlog::info("[{}] {} parameters, {} on {}, {} steps × {} tokens, peak lr {}, output {}", spec.stage, n_params,
               cfg.quant.enabled() ? "QAT" : "full precision", device.str(), t.max_steps, tokens_per_step,
               t.learning_rate, spec.output_dir);

  TrainResult result;
  result.parameters = n_params;
  std::vector<int32_t> ids(static_cast<size_t>(t.per_device_train_batch_size * (t.seq_len + 1)));
  auto window_start = std::chrono::steady_clock::now();
  int64_t window_tokens = 0, window_steps = 0, steps_this_run = 0;
  double window_loss = 0;
  std::vector<torch::Tensor> params = model->parameters();

  auto save = [&](int64_t step) {
    nlohmann::json st;
    st["tokens_seen"] = tokens_seen;
    st["loader"] = loader.state();
    st["stage"] = spec.stage;
    CheckpointPayload payload{step, st, &cfg, spec.tokenizer.get()};
    result.checkpoint_dir = save_checkpoint(ckpt_dir, model, &optimizer, payload, t.save_total_limit);
    spdlog::info("[{}] checkpoint {}", spec.stage, result.checkpoint_dir);
  };

  for (int64_t step = start_step; step < t.max_steps; ++step) {
    const double lr = lr_at(t, step);
    for (size_t gi = 0; gi < optimizer.param_groups().size(); ++gi) {
      auto& o = static_cast<torch::optim::AdamWOptions&>(optimizer.param_groups()[gi].options());
      o.lr(lr);
      if (gi == 0) o.weight_decay(weight_decay_at(t, step));  // group 0 decays; group 1 (norms, scales) never
    }
    optimizer.zero_grad();
    double step_loss = 0;
    std::map<std::string, double> parts;
    for (int64_t micro = 0; micro < t.gradient_accumulation_steps; ++micro) {
      loader.next_batch(ids.data());
      auto b = to_batch(ids, t.per_device_train_batch_size, t.seq_len, device);
      torch::Tensor loss;
      {
        AutocastGuard ac(t.bf16, device);
        loss = loss_fn(model, b.input, b.labels, parts);
      }
      (loss / static_cast<double>(t.gradient_accumulation_steps)).backward();
      step_loss += loss.item<double>() / static_cast<double>(t.gradient_accumulation_steps);
    }
    double gnorm = t.max_grad_norm > 0 ? torch::nn::utils::clip_grad_norm_(params, t.max_grad_norm)
                                       : torch::nn::utils::clip_grad_norm_(params, std::numeric_limits<double>::infinity());
    if (!std::isfinite(step_loss) || !std::isfinite(gnorm)) {
      const std::string what = fmt::format("step {}: {} is not finite (loss {}, grad norm {})", step + 1,
                                           !std::isfinite(step_loss) ? "the loss" : "the gradient norm", step_loss, gnorm);
      if (t.on_nonfinite == NonFinitePolicy::stop)
        throw NonFiniteError(what + "; stopped before the optimizer step (train.on_nonfinite: skip to skip such steps)");
      spdlog::warn("[{}] {}; skipping the optimizer step", spec.stage, what);
      optimizer.zero_grad();
      ++result.skipped_steps;
      tokens_seen += tokens_per_step;
      continue;
    }
    optimizer.step();
    for (auto& bl : model->bit_linears()) bl->on_step(step + 1);
    tokens_seen += tokens_per_step;
    window_tokens += tokens_per_step;
    window_loss += step_loss;
    ++window_steps;
    ++steps_this_run;
    result.losses.push_back(step_loss);
    result.final_train_loss = step_loss;
    const int64_t done = step + 1;

    if (done % t.logging_steps == 0 || done == t.max_steps) {
      const double secs =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - window_start).count();
      const double tps = secs > 0 ? window_tokens / secs : 0;
      const double eta = tps > 0 ? static_cast<double>((t.max_steps - done) * tokens_per_step) / tps : 0;
      const double avg = window_loss / std::max<int64_t>(1, window_steps);
      std::string extra;
      for (auto& [k, v] : parts) extra += fmt::format(" {} {:.4f}", k, v);
      spdlog::info("[{}] step {:>5}/{} | loss {:.4f}{} | lr {:.3e} | grad norm {:.3f} | {:.0f} tok/s | ETA {}",
                   spec.stage, done, t.max_steps, avg, extra, lr, gnorm, tps, format_duration(eta));
      nlohmann::json j{{"step", done}, {"loss", avg}, {"lr", lr}, {"grad_norm", gnorm}, {"tokens_per_s", tps},
                       {"tokens", tokens_seen}};
      for (auto& [k, v] : parts) j[k] = v;
      metrics.write(j);
      window_start = std::chrono::steady_clock::now();
      window_tokens = window_steps = 0;
      window_loss = 0;
    }
    if (t.eval_steps > 0 && done % t.eval_steps == 0 && done != t.max_steps) {
      auto ev = evaluate(model, progress_val, 0, device);
      spdlog::info("[{}] step {:>5} | val loss {:.4f} | val perplexity {:.2f} (progress check: {} tokens spread over "
                   "the split)",
                   spec.stage, done, ev.loss, ev.perplexity, ev.tokens);
      metrics.write({{"step", done}, {"val_loss", ev.loss}, {"val_perplexity", ev.perplexity}, {"val_tokens", ev.tokens},
                     {"val_subsample", true}});
    }
    if (t.save_steps > 0 && done % t.save_steps == 0 && done != t.max_steps) save(done);
    if (spec.on_step_end) spec.on_step_end(StepInfo{spec.stage, done, steps_this_run, step_loss, lr, gnorm, tokens_seen});
  }

  result.steps = t.max_steps;
  result.tokens = tokens_seen;
  result.val = evaluate(model, val_loader, 0, device);
  metrics.write({{"step", t.max_steps}, {"val_loss", result.val.loss}, {"val_perplexity", result.val.perplexity},
                 {"val_tokens", result.val.tokens}, {"val_subsample", !val_loader.whole_split()}});
  spdlog::info("[{}] final val loss {:.4f} | val perplexity {:.2f} ({})", spec.stage, result.val.loss,
               result.val.perplexity, val_loader.describe());
  save(t.max_steps);
  result.wall_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
  result.tokens_per_second =
      result.wall_seconds > 0 ? static_cast<double>(steps_this_run * tokens_per_step) / result.wall_seconds : 0;
  if (cfg.logging.plot && cfg.logging.json_metrics)
    plot_loss_curve(metrics.path(), (fs::path(spec.output_dir) / "loss.png").string(), spec.stage + " loss");
  return result;
}

}  // namespace bitforge
