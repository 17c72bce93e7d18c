#include "trainer/commands.h"

#include <spdlog/spdlog.h>

#include <chrono>
#include <filesystem>
#include <fstream>

#include <fmt/format.h>

#include "data/baseline.h"
#include "data/prepare.h"
#include "trainer/checkpoint.h"
#include "trainer/distill.h"
#include "trainer/hf_checkpoint.h"
#include "trainer/logging.h"
#include "trainer/train.h"

namespace fs = std::filesystem;

namespace bitforge {
namespace {

std::string data_dir(const CommandContext& ctx) {
  return ctx.config.data.output_dir.empty() ? (fs::path(ctx.run_dir) / "data").string() : ctx.config.data.output_dir;
}

data::PrepareDataOptions prepare_options(const CommandContext& ctx) {
  const auto& d = ctx.config.data;
  data::PrepareDataOptions o;
  o.corpus_format = d.format == CorpusFormat::text_dir  ? data::CorpusFormat::text_dir
                    : d.format == CorpusFormat::jsonl   ? data::CorpusFormat::jsonl
                                                        : data::CorpusFormat::text_file;
  o.corpus_path = d.path;
  o.glob = d.glob;
  o.text_field = d.text_field;
  o.max_documents = static_cast<size_t>(d.max_documents);
  o.tokenizer = d.tokenizer == TokenizerKind::byte                    ? data::TokenizerKind::byte
                : d.tokenizer == TokenizerKind::sentencepiece_unigram ? data::TokenizerKind::sentencepiece_unigram
                                                                      : data::TokenizerKind::sentencepiece_bpe;
  o.vocab_size = static_cast<int32_t>(d.vocab_size);
  o.val_fraction = d.val_fraction;
  o.seed = ctx.config.train.seed;
  o.output_dir = data_dir(ctx);
  return o;
}

struct Prepared {
  data::PreparedData data;
  std::shared_ptr<data::Tokenizer> tokenizer;
  double unigram_ppl = 0;
};

/// Prepared data for this run (prepares it when missing or stale; prepare_data reuses up-to-date outputs).
Prepared ensure_data(CommandContext& ctx) {
  Prepared p;
  p.data = data::prepare_data(prepare_options(ctx));
  p.tokenizer = data::load_tokenizer(p.data.tokenizer_path);
  if (ctx.config.model.vocab_size == 0) ctx.config.model.vocab_size = p.tokenizer->vocab_size();
  if (ctx.config.model.vocab_size < p.tokenizer->vocab_size())
    throw ConfigError(fmt::format("model.vocab_size ({}) is smaller than the tokenizer's vocabulary ({}) in {}",
                                  ctx.config.model.vocab_size, p.tokenizer->vocab_size(), p.data.tokenizer_path));
  p.unigram_ppl = p.data.meta.value("unigram_perplexity_val", 0.0);
  if (p.unigram_ppl == 0.0) p.unigram_ppl = data::unigram_perplexity(p.data.train_path, p.data.val_path);
  return p;
}

void begin_run(CommandContext& ctx) {
  fs::create_directories(ctx.run_dir);
  add_log_file(ctx.run_dir);
  save_config(ctx.config, (fs::path(ctx.run_dir) / "config.yaml").string());
}

Config teacher_config(const Config& c) {
  Config t = c;
  t.quant.weight = WeightQuantizer::none;
  t.quant.activations = ActivationQuant::none;
  t.quant.input_norm = false;
  if (c.run.teacher_max_steps > 0) {
    t.train.max_steps = c.run.teacher_max_steps;
    t.train.warmup_steps = std::min(t.train.warmup_steps, t.train.max_steps);
  }
  return t;
}

TrainSpec spec_for(const std::string& stage, const std::string& dir, const Config& cfg, const Prepared& p) {
  TrainSpec s;
  s.stage = stage;
  s.output_dir = dir;
  s.train_shard = p.data.train_path;
  s.val_shard = p.data.val_path;
  s.tokenizer = p.tokenizer;
  s.config = cfg;
  return s;
}

struct Row {
  std::string name;
  int64_t params = 0, tokens = 0;
  double ppl = 0, kl = -1, top1 = -1, wall = 0;
  std::string path;
};

void print_summary(const std::vector<Row>& rows, double unigram, const std::string& run_dir) {
  std::string out = fmt::format("\n{:<26} {:>10} {:>10} {:>12} {:>10} {:>8} {:>9}  {}\n", "model", "params", "tokens",
                                "val ppl", "KL(t‖s)", "top-1", "wall", "output");
  for (auto& r : rows)
    out += fmt::format("{:<26} {:>10} {:>10} {:>12.2f} {:>10} {:>8} {:>9}  {}\n", r.name, r.params, r.tokens, r.ppl,
                       r.kl >= 0 ? fmt::format("{:.4f}", r.kl) : "-",
                       r.top1 >= 0 ? fmt::format("{:.1f}%", 100 * r.top1) : "-", format_duration(r.wall), r.path);
  out += fmt::format("{:<26} {:>10} {:>10} {:>12.2f}   (add-one unigram model of the same tokenizer, same val split)\n",
                     "unigram baseline", "-", "-", unigram);
  spdlog::info("summary{}", out);
  nlohmann::json j = nlohmann::json::array();
  for (auto& r : rows)
    j.push_back({{"model", r.name}, {"parameters", r.params}, {"tokens", r.tokens}, {"val_perplexity", r.ppl},
                 {"kl", r.kl}, {"top1", r.top1}, {"wall_seconds", r.wall}, {"path", r.path}});
  nlohmann::json s{{"models", j}, {"unigram_val_perplexity", unigram}};
  std::ofstream((fs::path(run_dir) / "summary.json").string()) << s.dump(2) << "\n";
}

}  // namespace

int cmd_prepare_data(CommandContext& ctx) {
  begin_run(ctx);
  auto p = ensure_data(ctx);
  spdlog::info("data ready in {}: tokenizer {} (vocab {}), train {}, val {}; val unigram perplexity {:.2f}",
               p.data.dir, p.tokenizer->kind(), p.tokenizer->vocab_size(), p.data.train_path, p.data.val_path,
               p.unigram_ppl);
  return 0;
}

int cmd_train(CommandContext& ctx) {
  begin_run(ctx);
  auto p = ensure_data(ctx);
  const std::string stage = ctx.config.quant.enabled() ? "student" : "teacher";
  auto r = train(spec_for(stage, (fs::path(ctx.run_dir) / stage).string(), ctx.config, p));
  spdlog::info("{} done: val perplexity {:.2f} (unigram {:.2f}), {:.0f} tok/s, checkpoint {}", stage,
               r.val.perplexity, p.unigram_ppl, r.tokens_per_second, r.checkpoint_dir);
  return 0;
}

int cmd_distill(CommandContext& ctx) {
  begin_run(ctx);
  auto p = ensure_data(ctx);
  std::string teacher = ctx.config.distill.teacher;
  if (teacher.empty()) teacher = (fs::path(ctx.run_dir) / "teacher" / "checkpoints").string();
  auto r = run_distillation(ctx.config, teacher, (fs::path(ctx.run_dir) / "distill").string(), p.data.train_path,
                            p.data.val_path, p.tokenizer);
  spdlog::info("distilled student: val perplexity {:.2f} (teacher {:.2f}), KL {:.4f}, top-1 {:.1f}%, checkpoint {}",
               r.student.perplexity, r.teacher.perplexity, r.kl, 100 * r.top1, r.train.checkpoint_dir);
  return 0;
}

int cmd_run(CommandContext& ctx) {
  const auto t0 = std::chrono::steady_clock::now();
  begin_run(ctx);
  spdlog::info("bitforge run '{}' → {} (stages: {})", ctx.config.run.name, ctx.run_dir,
               fmt::join(ctx.config.run.stages, " → "));
  auto has = [&](const char* s) {
    return std::find(ctx.config.run.stages.begin(), ctx.config.run.stages.end(), s) != ctx.config.run.stages.end();
  };
  auto p = ensure_data(ctx);
  save_config(ctx.config, (fs::path(ctx.run_dir) / "config.yaml").string());  // with the resolved vocab
  std::vector<Row> rows;
  const fs::path teacher_dir = fs::path(ctx.run_dir) / "teacher";
  if (has("teacher")) {
    auto r = train(spec_for("teacher", teacher_dir.string(), teacher_config(ctx.config), p));
    rows.push_back({"teacher (full precision)", r.parameters, r.tokens, r.val.perplexity, -1, -1, r.wall_seconds,
                    r.checkpoint_dir});
  }
  if (has("train")) {
    auto r = train(spec_for("student", (fs::path(ctx.run_dir) / "student").string(), ctx.config, p));
    rows.push_back({"student QAT from scratch", r.parameters, r.tokens, r.val.perplexity, -1, -1, r.wall_seconds,
                    r.checkpoint_dir});
  }
  if (has("distill")) {
    std::string teacher = ctx.config.distill.teacher.empty() ? (teacher_dir / "checkpoints").string()
                                                             : ctx.config.distill.teacher;
    auto r = run_distillation(ctx.config, teacher, (fs::path(ctx.run_dir) / "distill").string(), p.data.train_path,
                              p.data.val_path, p.tokenizer);
    rows.push_back({"student distilled", r.train.parameters, r.train.tokens, r.student.perplexity, r.kl, r.top1,
                    r.train.wall_seconds, r.train.checkpoint_dir});
  }
  if (has("export")) spdlog::warn("stage 'export': the packed/GGUF exporter is not wired into `run` yet; skipped");
  if (has("eval") && !rows.empty()) {
    // Re-evaluate every trained model from its checkpoint on the same val windows (what a user would get
    // loading the files), and compare students with the teacher when there is one.
    const torch::Device dev = select_device(ctx.config.train);
    data::SequentialLoader val(p.data.val_path, ctx.config.eval.batch_size, ctx.config.eval.seq_len,
                               ctx.config.eval.max_batches);
    std::optional<LoadedModel> teacher;
    for (auto& r : rows) {
      auto lm = load_model(r.path);
      lm.model->to(dev);
      r.ppl = evaluate(lm.model, val, ctx.config.eval.max_batches, dev).perplexity;
      if (r.name.rfind("teacher", 0) == 0) {
        teacher = std::move(lm);
      } else if (teacher) {
        auto cmp = compare_models(teacher->model, lm.model, val, ctx.config.eval.max_batches, dev);
        r.kl = cmp.kl;
        r.top1 = cmp.top1;
      }
    }
  }
  print_summary(rows, p.unigram_ppl, ctx.run_dir);
  spdlog::info("run finished in {}; outputs in {}", format_duration(std::chrono::duration<double>(
                                                        std::chrono::steady_clock::now() - t0).count()),
               ctx.run_dir);
  return 0;
}

int cmd_export(CommandContext&, const std::string&, const std::string&) {
  throw NotImplemented("bitforge export: the packed/GGUF exporter lands with the export issue");
}

int cmd_eval(CommandContext& ctx, const std::string& model_path, const std::string& reference, bool json) {
  auto lm = load_model(model_path);
  const torch::Device dev = select_device(ctx.config.train);
  lm.model->to(dev);
  // Data: the prepared val shard of this config's run, tokenized with the model's own tokenizer.
  auto p = ensure_data(ctx);
  if (p.tokenizer->serialize() != lm.tokenizer->serialize())
    throw std::runtime_error("eval: the model's tokenizer differs from the data's tokenizer (" + p.data.tokenizer_path +
                             "); evaluate on data prepared with the model's tokenizer");
  data::SequentialLoader val(p.data.val_path, ctx.config.eval.batch_size, ctx.config.eval.seq_len,
                             ctx.config.eval.max_batches);
  auto ev = evaluate(lm.model, val, ctx.config.eval.max_batches, dev);
  nlohmann::json j{{"model", lm.checkpoint_dir}, {"val_loss", ev.loss}, {"val_perplexity", ev.perplexity},
                   {"tokens", ev.tokens}, {"unigram_val_perplexity", p.unigram_ppl}};
  if (!reference.empty()) {
    auto ref = load_model(reference);
    ref.model->to(dev);
    auto cmp = compare_models(ref.model, lm.model, val, ctx.config.eval.max_batches, dev);
    j["reference"] = ref.checkpoint_dir;
    j["kl"] = cmp.kl;
    j["top1_agreement"] = cmp.top1;
  }
  if (json) {
    std::printf("%s\n", j.dump(2).c_str());
  } else {
    spdlog::info("{}: val loss {:.4f}, perplexity {:.3f} over {} tokens (unigram {:.2f}){}", lm.checkpoint_dir,
                 ev.loss, ev.perplexity, ev.tokens, p.unigram_ppl,
                 j.contains("kl") ? fmt::format("; KL(ref‖model) {:.5f}, top-1 agreement {:.2f}%", j["kl"].get<double>(),
                                                100 * j["top1_agreement"].get<double>())
                                  : "");
  }
  return 0;
}

int cmd_generate(CommandContext&, const std::string&, const std::string&, int64_t, double, int64_t, double, uint64_t) {
  throw NotImplemented("bitforge generate: the packed runtime lands with the export issue");
}

int cmd_inspect(const std::string&, bool) {
  throw NotImplemented("bitforge inspect: lands with the export issue");
}

}  // namespace bitforge
