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
#include "trainer/distributed.h"
#include "trainer/logging.h"
#include "config/memory_estimate.h"
#include "trainer/losses.h"
#include "trainer/zero.h"

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

/// Rows [first, first + rows) of a global batch of windows (this rank's share).
Batch rank_rows(const std::vector<int32_t>& ids, int64_t first, int64_t rows, int64_t seq_len,
                const torch::Device& device) {
  auto t = torch::from_blob(const_cast<int32_t*>(ids.data()) + first * (seq_len + 1), {rows, seq_len + 1}, torch::kInt)
               .to(torch::kLong);
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
  bool has_ce = false;  // distillation: the train loss is a mix (CE + KD, ...); its "ce" part is plotted beside it
  while (std::getline(in, line)) {
    auto j = nlohmann::json::parse(line, nullptr, false);
    if (j.is_discarded()) continue;
    if (j.contains("loss")) {
      tr << j["step"].get<int64_t>() << "\t" << j["loss"].get<double>();
      if (j.contains("ce")) tr << "\t" << j["ce"].get<double>(), has_ce = true;
      tr << "\n";
    }
    if (j.contains("val_loss")) va << j["step"].get<int64_t>() << "\t" << j["val_loss"].get<double>() << "\n", ++n_val;
  }
  tr.close();
  va.close();
  const std::string script = dir + "/loss.gp";
  {
    std::ofstream gp(script);
    gp << "set terminal pngcairo size 900,540 noenhanced\nset output '" << png << "'\n"
       << "set title '" << title << "'\nset xlabel 'step'\nset ylabel '" << (has_ce ? "nats" : "cross-entropy (nats)")
       << "'\nset grid\n"
       << "plot '" << train_tsv << "' using 1:2 with lines lw 2 title '"
       << (has_ce ? "train loss (weighted CE + KD, ...)" : "train cross-entropy") << "'";
    if (has_ce) gp << ", '" << train_tsv << "' using 1:3 with lines lw 2 title 'train cross-entropy'";
    if (n_val > 0) gp << ", '" << val_tsv << "' using 1:2 with linespoints lw 2 pt 7 title 'val cross-entropy'";
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
  const std::string ckpt_dir = (fs::path(spec.output_dir) / "checkpoints").string();
  torch::Device device = select_device(t);
  // Data parallelism (trainer/distributed.h): a process group when a launcher started this process.
  std::shared_ptr<Distributed> dist = Distributed::get(t.distributed_backend, t.distributed_timeout_s, device);
  const int64_t world = dist ? dist->world_size() : 1, rank = dist ? dist->rank() : 0;
  if (dist) device = dist->device();  // cuda:LOCAL_RANK on a multi-GPU machine
  const bool is_main = rank == 0;  // rank 0 alone writes files
  if (is_main) fs::create_directories(spec.output_dir);
  torch::manual_seed(t.seed);
  // Before allocating: the model, gradients, AdamW moments and activations must fit (config/memory_estimate.h).
  check_memory(estimate_training_memory(cfg), "training stage '" + spec.stage + "'", t.skip_memory_check);
  ckpt::clean_stale_temporaries(ckpt_dir);  // temporaries of killed writers; an interrupted replacement restored

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
  std::unique_ptr<ZeroAdamW> zero;
  if (t.zero_stage == 1) zero = std::make_unique<ZeroAdamW>(optimizer, dist);

  auto shard = std::make_shared<data::ShardReader>(spec.train_shard);
  shard->expect_vocab_size(cfg.model.vocab_size);
  // One loader over the global batch (world × per-device rows); rank r takes rows [r·B, (r+1)·B) of every
  // micro-batch, so the shares are disjoint and the cursor is the global position, the same at any world size.
  data::TokenLoader loader(shard, t.per_device_train_batch_size * world, t.seq_len, t.seed);
  auto val_shard = std::make_shared<data::ShardReader>(spec.val_shard);
  val_shard->expect_vocab_size(cfg.model.vocab_size);
  data::SequentialLoader val_loader = validation_loader(cfg, val_shard);
  // Periodic progress checks: a small subsample spread over the split (train.eval_batches batches), not a report.
  data::SequentialLoader progress_val(val_shard, cfg.eval.batch_size, cfg.eval.seq_len, t.eval_batches);

  // Resume.
  int64_t start_step = 0, tokens_seen = 0;
  std::optional<std::string> resume;
  nlohmann::json st;
  if (t.resume_from_checkpoint == "auto") {
    // Newest intact checkpoint; a damaged newer one (killed mid-write by an older bitforge, flipped bytes) is
    // skipped with a warning.
    resume = load_latest_intact_checkpoint(ckpt_dir, model, &optimizer, &st);
    if (!resume && !ckpt::list_checkpoints(ckpt_dir).empty())
      throw CheckpointError(ckpt_dir + ": every checkpoint is damaged (see the warnings above); refusing to start "
                                       "fresh over them: move them away, or set train.resume_from_checkpoint to \"\"");
    if (!resume) spdlog::info("[{}] resume_from_checkpoint: auto — no checkpoint in {}, starting fresh", spec.stage, ckpt_dir);
  } else if (!t.resume_from_checkpoint.empty()) {
    resume = t.resume_from_checkpoint;
    st = load_checkpoint(*resume, model, &optimizer);
  }
  if (resume) {
    start_step = st.at("step").get<int64_t>();
    tokens_seen = st.value("tokens_seen", int64_t{0});
    try {
      auto cursor = st.at("loader").get<data::LoaderState>();
      cursor.batch_size = loader.batch_size();  // windows are the unit: resumes at another world size too
      loader.restore(cursor);
    } catch (const nlohmann::json::exception& e) {
      throw CheckpointError(*resume + "/trainer_state.json: \"loader\" is missing or malformed: " + e.what());
    }
    if (zero) zero->load_state();
    for (auto& bl : model->bit_linears()) bl->restore_step(start_step);
    spdlog::info("[{}] resumed from {} at step {} ({} tokens seen)", spec.stage, *resume, start_step, tokens_seen);
  } else if (spec.init) {
    spec.init(model);
  }

  if (dist) {  // every replica starts from rank 0's weights and quantizer state (DDP's initial broadcast)
    torch::NoGradGuard ng;
    std::vector<torch::Tensor> state;
    for (auto& p : model->parameters()) state.push_back(p.detach());
    for (auto& b : model->buffers()) state.push_back(b);
    dist->broadcast(state);
  }
  MetricsLog metrics((fs::path(spec.output_dir) / "metrics.jsonl").string(), resume ? start_step : -1,
                     cfg.logging.json_metrics && is_main);
  LossFn loss_fn = spec.loss ? spec.loss
                             : LossFn([](Transformer& m, const torch::Tensor& in, const torch::Tensor& labels,
                                         std::map<std::string, double>&) { return token_cross_entropy(m->forward(in), labels); });

  const int64_t tokens_per_step = t.per_device_train_batch_size * t.seq_len * t.gradient_accumulation_steps * world;
  spdlog::info("[{}] {} parameters, {} on {}, {} steps × {} tokens, peak lr {}, output {}", spec.stage, n_params,
               cfg.quant.enabled() ? "QAT" : "full precision", device.str(), t.max_steps, tokens_per_step,
               t.learning_rate, spec.output_dir);
  if (dist)
    spdlog::info("[{}] data parallel: {} ranks ({}) × {} rows × {} accumulation steps = global batch {}, zero_stage {}",
                 spec.stage, world, dist->backend_name(), t.per_device_train_batch_size, t.gradient_accumulation_steps,
                 t.per_device_train_batch_size * world * t.gradient_accumulation_steps, t.zero_stage);

  TrainResult result;
  result.parameters = n_params;
  std::vector<int32_t> ids(static_cast<size_t>(t.per_device_train_batch_size * world * (t.seq_len + 1)));
  auto window_start = std::chrono::steady_clock::now();
  int64_t window_tokens = 0, window_steps = 0, steps_this_run = 0;
  double window_loss = 0;
  std::map<std::string, double> window_parts;  // loss parts (distillation: ce, kd, ...) summed like window_loss
  std::vector<torch::Tensor> params = model->parameters();
  // Gradient all-reduce: c10d's Reducer, bucketed and overlapped with the backward pass of the last micro-step.
  std::unique_ptr<Distributed::GradSync> grad_sync;
  if (dist) {
    std::vector<std::string> names;
    for (auto& p : model->named_parameters()) names.push_back(p.key());
    grad_sync = dist->make_grad_sync(params, names, t.ddp_bucket_mb);
  }

  auto save = [&](int64_t step) {
    nlohmann::json st;
    st["tokens_seen"] = tokens_seen;
    st["loader"] = loader.state();
    st["stage"] = spec.stage;
    CheckpointPayload payload{step, st, &cfg, spec.tokenizer.get()};
    if (zero) zero->gather_state();  // collective: the full moments, written in the zero_stage 0 format
    if (is_main) {
      result.checkpoint_dir = save_checkpoint(ckpt_dir, model, &optimizer, payload, t.save_total_limit);
      spdlog::info("[{}] checkpoint {}", spec.stage, result.checkpoint_dir);
    }
    if (zero) zero->clear_state();
  };

  // With a process group, a failure inside a step (a lost or hung rank) becomes a DistributedError naming the rank.
  int64_t step_now = start_step;
  try {
  for (int64_t step = start_step; step < t.max_steps; ++step) {
    step_now = step;
    const double lr = lr_at(t, step);
    for (size_t gi = 0; gi < optimizer.param_groups().size(); ++gi) {
      auto& o = static_cast<torch::optim::AdamWOptions&>(optimizer.param_groups()[gi].options());
      o.lr(lr);
      if (gi == 0) o.weight_decay(weight_decay_at(t, step));  // group 0 decays; group 1 (norms, scales) never
    }
    optimizer.zero_grad();
    double step_loss = 0;
    std::map<std::string, double> parts, step_parts;
    for (int64_t micro = 0; micro < t.gradient_accumulation_steps; ++micro) {
      loader.next_batch(ids.data());
      auto b = rank_rows(ids, rank * t.per_device_train_batch_size, t.per_device_train_batch_size, t.seq_len, device);
      torch::Tensor loss;
      {
        AutocastGuard ac(t.bf16, device);
        loss = loss_fn(model, b.input, b.labels, parts);
      }
      if (grad_sync && micro == t.gradient_accumulation_steps - 1) grad_sync->arm();  // all-reduce on the last only
      (loss / static_cast<double>(t.gradient_accumulation_steps)).backward();
      step_loss += loss.item<double>() / static_cast<double>(t.gradient_accumulation_steps);
      for (const auto& [k, v] : parts) step_parts[k] += v / static_cast<double>(t.gradient_accumulation_steps);
    }
    if (dist) {  // the global loss (mean of the ranks' means: equal rows per rank) and loss parts, for logs and guard
      std::vector<double> v{step_loss};
      for (auto& [k, x] : parts) v.push_back(x);
      v = dist->all_reduce_mean(v);
      step_loss = v[0];
      size_t i = 1;
      for (auto& [k, x] : parts) x = v[i++];
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
    if (zero)
      zero->step();
    else
      optimizer.step();
    for (auto& bl : model->bit_linears()) bl->on_step(step + 1);
    if (dist && cfg.quant.enabled() && cfg.quant.anchor_fraction > 0 && cfg.quant.anchor_update_steps > 0 &&
        (step + 1) % cfg.quant.anchor_update_steps == 0) {
      // Anchors re-selected on this step: rank 0's choice everywhere (saliency statistics are per-rank data).
      std::vector<torch::Tensor> anchors;
      for (auto& bl : model->bit_linears())
        if (bl->anchor_index.defined() && bl->anchor_index.numel() > 0) anchors.push_back(bl->anchor_index);
      dist->broadcast(anchors);
    }
    ckpt::crash_point("train:after-step");  // testing: BITFORGE_CRASH_AT=train:after-step:N
    tokens_seen += tokens_per_step;
    window_tokens += tokens_per_step;
    window_loss += step_loss;
    for (const auto& [k, v] : step_parts) window_parts[k] += v;
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
      // the loss and its parts are all means over the same steps (the logging_steps since the last line)
      std::string extra;
      for (auto& [k, v] : window_parts)
        extra += fmt::format("{}{} {:.4f}", extra.empty() ? " (" : ", ", k, v / std::max<int64_t>(1, window_steps));
      if (!extra.empty()) extra += ")";
      spdlog::info("[{}] step {:>5}/{} | loss {:.4f}{} | lr {:.3e} | grad norm {:.3f} | {:.0f} tok/s | ETA {}",
                   spec.stage, done, t.max_steps, avg, extra, lr, gnorm, tps, format_duration(eta));
      nlohmann::json j{{"step", done}, {"loss", avg}, {"lr", lr}, {"grad_norm", gnorm}, {"tokens_per_s", tps},
                       {"tokens", tokens_seen}};
      for (auto& [k, v] : window_parts) j[k] = v / std::max<int64_t>(1, window_steps);
      metrics.write(j);
      window_start = std::chrono::steady_clock::now();
      window_tokens = window_steps = 0;
      window_loss = 0;
      window_parts.clear();
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
  if (dist) dist->barrier();  // the final checkpoint exists before any rank moves on
  } catch (const DistributedError&) {
    throw;
  } catch (const NonFiniteError&) {
    throw;
  } catch (const std::exception& e) {
    if (!dist) throw;
    dist->rethrow_naming_peers(e, fmt::format("[{}] step {}", spec.stage, step_now + 1));
  }
  if (dist && std::getenv("BITFORGE_DDP_PROFILE")) {
    // What the gradient all-reduce costs: one all-reduce of the whole gradient, timed alone, vs the mean step.
    const double ar = dist->time_all_reduce(n_params, 10);
    const double step_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count() /
                          std::max<int64_t>(1, steps_this_run);
    spdlog::info("[{}] all-reduce of the {:.1f} MiB gradient: {:.2f} ms ({} ranks, {}); mean step {:.1f} ms; "
                 "all-reduce share of a step <= {:.1f}%", spec.stage, n_params * 4 / 1048576.0, ar * 1e3, world,
                 dist->backend_name(), step_s * 1e3, 100 * ar / step_s);
  }
  result.wall_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
  result.tokens_per_second =
      result.wall_seconds > 0 ? static_cast<double>(steps_this_run * tokens_per_step) / result.wall_seconds : 0;
  if (cfg.logging.plot && cfg.logging.json_metrics && is_main)
    plot_loss_curve(metrics.path(), (fs::path(spec.output_dir) / "loss.png").string(), spec.stage + " loss");
  return result;
}

}  // namespace bitforge
