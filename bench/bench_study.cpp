// The recipe study (issue #20): a grid of 1-bit recipes trained on the same data at the same total budget, with N
// seeds, each scored on the one evaluation definition (the whole val split by default), reported as mean ± std per
// row and as the ratio to the fair full-precision teacher of the same seed.
//
//   build/bench/bench_study CONFIG --out DIR [--seeds N] [--rows id,id,...|all] [--set section.key=value]...
//                           [--no-fair] [--report-only]
//
// --no-fair: leave out the fair row (and the teacher, when no distill row needs it): for scratch-only sweeps, e.g.
// a learning-rate sweep with --set train.learning_rate=X --rows scratch,fp_scratch --no-fair (no ratios then).
//
// Per seed s (train.seed = config's train.seed + s; data.seed, hence the split, fixed):
//   teacher        full precision from scratch, run.teacher_max_steps (T) steps
//   fair           the teacher trained on for train.max_steps (D) more steps, full precision, CE only, same schedule
//                  and data order as the distillation: the full-precision model at the students' total budget T + D
//   distill rows   the teacher distilled into a student for D steps (the row's overrides on the config): budget T + D
//   scratch rows   a model trained from scratch for T + D steps (QAT, or full precision for `fp_scratch`)
// ratio = row perplexity / fair-teacher perplexity of the same seed; mean ± std (sample std, n - 1) over seeds.
//
// Resumable: DIR/study.json is rewritten after every finished (row, seed) and finished ones are skipped on a restart;
// an interrupted training resumes from its last checkpoint (train.resume_from_checkpoint = auto, train.save_steps).
// Outputs: DIR/study.json (every run + the table), DIR/study.md (the table), DIR/study.svg (ratios with ±std).
#include <torch/torch.h>

#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "pipeline/pipeline.h"
#include "trainer/checkpoint.h"
#include "trainer/distill.h"
#include "trainer/train.h"
#include "bench/bench_main.h"

namespace fs = std::filesystem;
using namespace bitforge;

namespace {

struct RowSpec {
  std::string id, name, kind;  // kind: fair | distill | scratch
  std::vector<std::string> sets;
};

std::vector<RowSpec> grid() {
  return {
      {"fair", "fp teacher, same budget (fair)", "fair", {}},
      {"distill", "binary distilled (config's recipe)", "distill", {}},
      {"scratch", "binary QAT from scratch", "scratch", {}},
      {"ternary", "ternary distilled", "distill", {"quant.weight=ternary"}},
      {"scratch_absmean", "binary QAT from scratch, absmean scales", "scratch", {"quant.scale_mode=absmean"}},
      {"fp_scratch", "fp from scratch (T+D steps)", "scratch", {"quant.weight=none", "quant.activations=none", "quant.input_norm=false"}},
      {"fp_scratch_norm", "fp from scratch + input norms (T+D steps)", "scratch", {"quant.weight=none", "quant.activations=none", "quant.input_norm=true"}},
      {"ce_only", "binary from teacher, CE only", "distill", {"distill.alpha_kd=0"}},
      {"kd_only", "binary distilled, KD only", "distill", {"distill.alpha_ce=0"}},
      {"anchors0", "binary distilled, no anchors", "distill", {"quant.anchor_fraction=0"}},
      {"anchors1pct", "binary distilled, 1% anchors", "distill", {"quant.anchor_fraction=0.01"}},
      {"saliency", "binary distilled, saliency anchors", "distill", {"quant.anchor_selection=saliency"}},
      {"absmean", "binary distilled, absmean scales", "distill", {"quant.scale_mode=absmean"}},
      {"absmean_anchors0", "binary distilled, absmean scales, no anchors", "distill",
       {"quant.scale_mode=absmean", "quant.anchor_fraction=0"}},
      {"channel", "binary distilled, channel scales", "distill", {"quant.granularity=channel"}},
      {"tensor", "binary distilled, tensor scale", "distill", {"quant.granularity=tensor"}},
      {"ste_clipped", "binary distilled, clipped STE", "distill", {"quant.ste=clipped"}},
      {"ste_tanh", "binary distilled, tanh STE", "distill", {"quant.ste=tanh"}},
      {"hidden_attn", "binary distilled + hidden + attn relations", "distill",
       {"distill.alpha_hidden=1", "distill.alpha_attn=1"}},
      {"lambda_warmup", "binary distilled, λ warm-up (D/3)", "distill", {"quant.warmup_lambda_steps=@D/3"}},
      {"no_input_norm", "binary distilled, no input norm", "distill", {"quant.input_norm=false"}},
  };
}

void write_atomic(const fs::path& p, const std::string& text) {
  const fs::path tmp = p.string() + ".tmp";
  std::ofstream(tmp) << text;
  fs::rename(tmp, p);
}

struct Stat {
  double mean = 0, std = 0;
  int n = 0;
};
Stat stat(const std::vector<double>& v) {
  Stat s;
  s.n = static_cast<int>(v.size());
  if (v.empty()) return s;
  for (double x : v) s.mean += x;
  s.mean /= s.n;
  if (s.n > 1) {
    double ss = 0;
    for (double x : v) ss += (x - s.mean) * (x - s.mean);
    s.std = std::sqrt(ss / (s.n - 1));
  }
  return s;
}

/// Copies every parameter of `from` whose name `to` also has.
void copy_weights(Transformer& from, Transformer& to) {
  torch::NoGradGuard ng;
  auto src = from->named_parameters();
  for (auto& p : to->named_parameters())
    if (const auto* s = src.find(p.key())) p.value().copy_(s->to(p.value().device(), p.value().scalar_type()));
}

}  // namespace

static int bench_body(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr,
                 "usage: %s CONFIG --out DIR [--seeds N] [--rows id,...|all] [--set section.key=value]... "
                 "[--no-fair] [--report-only]\nrows:",
                 argv[0]);
    for (auto& r : grid()) std::fprintf(stderr, " %s", r.id.c_str());
    std::fprintf(stderr, "\n");
    return 2;
  }
  std::string config_path = argv[1], out;
  int seeds = 3;
  bool report_only = false, no_fair = false;
  std::string rows_arg = "fair,distill,scratch,ternary";
  std::vector<std::string> sets;
  for (int i = 2; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) throw std::runtime_error(a + " needs a value");
      return argv[++i];
    };
    if (a == "--out") out = next();
    else if (a == "--seeds") seeds = std::stoi(next());
    else if (a == "--rows") rows_arg = next();
    else if (a == "--set") sets.push_back(next());
    else if (a == "--report-only") report_only = true;
    else if (a == "--no-fair") no_fair = true;
    else throw std::runtime_error("unknown argument " + a);
  }
  if (out.empty()) throw std::runtime_error("--out DIR is required");
  std::vector<RowSpec> rows;
  for (auto& r : grid())
    if (rows_arg == "all" || ("," + rows_arg + ",").find("," + r.id + ",") != std::string::npos) rows.push_back(r);
  if (!no_fair && std::none_of(rows.begin(), rows.end(), [](auto& r) { return r.kind == "fair"; }))
    rows.insert(rows.begin(), grid().front());  // the ratios need it

  pipeline::RunContext ctx;
  ctx.config = load_config(config_path, sets);
  ctx.config_path = config_path;
  ctx.config.logging.plot = false;
  ctx.config.train.resume_from_checkpoint = "auto";
  ctx.run_dir = out;
  fs::create_directories(out);
  const int64_t D = ctx.config.train.max_steps;
  const int64_t T = ctx.config.run.teacher_max_steps > 0 ? ctx.config.run.teacher_max_steps : D;
  const uint64_t seed0 = ctx.config.train.seed;

  const fs::path json_path = fs::path(out) / "study.json";
  nlohmann::json study;
  if (fs::exists(json_path)) {
    std::ifstream f(json_path);
    study = nlohmann::json::parse(f);
  }
  if (!study.contains("runs")) study["runs"] = nlohmann::json::array();
  const std::string base_yaml = to_yaml(ctx.config);
  if (study.contains("config") && study["config"] != base_yaml)
    throw std::runtime_error(json_path.string() + " was written for another config; use another --out");
  study["config"] = base_yaml;
  study["budget"] = {{"teacher_steps", T}, {"student_steps", D}, {"total_steps", T + D},
                     {"tokens_per_step", ctx.config.train.per_device_train_batch_size * ctx.config.train.seq_len *
                                             ctx.config.train.gradient_accumulation_steps}};
  auto find_run = [&](const std::string& id, int seed) -> const nlohmann::json* {
    for (auto& r : study["runs"])
      if (r["row"] == id && r["seed"] == seed) return &r;
    return nullptr;
  };
  auto save = [&] { write_atomic(json_path, study.dump(2) + "\n"); };

  auto p = pipeline::ensure_data(ctx);
  const auto val = validation_loader(ctx.config, p.data.val_path);
  study["eval"] = val.describe();
  study["eval_tokens"] = val.tokens_scored();
  study["unigram_val_perplexity"] = p.unigram_ppl;
  spdlog::info("study: {} rows x {} seeds; budget: teacher {} + student {} steps; evaluation: {}", rows.size(), seeds,
               T, D, val.describe());

  auto spec_for = [&](const std::string& stage, const fs::path& dir, const Config& c) {
    TrainSpec s;
    s.stage = stage;
    s.output_dir = dir.string();
    s.train_shard = p.data.train_path;
    s.val_shard = p.data.val_path;
    s.tokenizer = p.tokenizer;
    s.config = c;
    return s;
  };
  auto record = [&](const std::string& id, int seed, double ppl, int64_t eval_tokens, int64_t total_steps,
                    int64_t tokens, double wall, const std::string& path) {
    study["runs"].push_back({{"row", id}, {"seed", seed}, {"train_seed", seed0 + seed}, {"val_perplexity", ppl},
                             {"eval_tokens", eval_tokens}, {"total_steps", total_steps}, {"tokens", tokens},
                             {"wall_seconds", wall}, {"checkpoint", path}});
    save();
    spdlog::info("study: {} seed {}: val perplexity {:.3f} ({} tokens), {} steps in total", id, seed, ppl, eval_tokens,
                 total_steps);
  };

  const bool needs_teacher =
      std::any_of(rows.begin(), rows.end(), [](auto& r) { return r.kind == "fair" || r.kind == "distill"; });
  for (int s = 0; s < seeds && !report_only; ++s) {
    Config base = ctx.config;
    base.train.seed = seed0 + static_cast<uint64_t>(s);
    const fs::path sd = fs::path(out) / fmt::format("seed-{}", s);
    // The teacher of this seed.
    std::string teacher_ckpt;
    int64_t teacher_tokens = 0;
    if (!needs_teacher) {
      // scratch rows only (--no-fair): no teacher to train
    } else if (const auto* r = find_run("teacher", s)) {
      teacher_ckpt = (*r)["checkpoint"].get<std::string>();
      teacher_tokens = (*r)["tokens"].get<int64_t>();
    } else {
      auto tr = train(spec_for("teacher", sd / "teacher", pipeline::teacher_config(base)));
      teacher_ckpt = tr.checkpoint_dir, teacher_tokens = tr.tokens;
      record("teacher", s, tr.val.perplexity, tr.val.tokens, tr.steps, tr.tokens, tr.wall_seconds, tr.checkpoint_dir);
    }
    for (auto& row : rows) {
      if (find_run(row.id, s)) continue;
      Config c = base;
      for (auto set : row.sets) {
        const auto at = set.find("@D/3");
        if (at != std::string::npos) set = set.substr(0, at) + std::to_string(D / 3);
        apply_override(c, set);
      }
      validate(c, "study row " + row.id);
      const fs::path dir = sd / row.id;
      if (row.kind == "fair") {
        Config fc = pipeline::teacher_config(c);
        fc.train.max_steps = D;
        fc.train.warmup_steps = c.train.warmup_steps;
        auto spec = spec_for("fair", dir, fc);
        spec.init = [&](Transformer& m) {
          auto t = load_model(teacher_ckpt);
          copy_weights(t.model, m);
        };
        auto r = train(spec);
        record(row.id, s, r.val.perplexity, r.val.tokens, T + r.steps, teacher_tokens + r.tokens, r.wall_seconds,
               r.checkpoint_dir);
      } else if (row.kind == "distill") {
        c.distill.student_init = StudentInit::teacher;
        auto r = run_distillation(c, teacher_ckpt, dir.string(), p.data.train_path, p.data.val_path, p.tokenizer);
        record(row.id, s, r.student.perplexity, r.student.tokens, T + r.train.steps, teacher_tokens + r.train.tokens,
               r.train.wall_seconds, r.train.checkpoint_dir);
      } else {  // scratch: T + D steps from random init
        c.train.max_steps = T + D;
        c.train.warmup_steps = pipeline::teacher_config(base).train.warmup_steps;
        auto r = train(spec_for(row.id, dir, c));
        record(row.id, s, r.val.perplexity, r.val.tokens, r.steps, r.tokens, r.wall_seconds, r.checkpoint_dir);
      }
    }
  }

  // The table: mean ± std of perplexity and of the per-seed ratio to the fair teacher.
  std::vector<RowSpec> all = rows;
  all.insert(all.begin(), RowSpec{"teacher", fmt::format("fp teacher ({} steps only)", T), "teacher", {}});
  nlohmann::json table = nlohmann::json::array();
  std::string md = fmt::format(
      "Budget: teacher {} steps, students {} steps from it ({} in total; scratch rows {} steps from random init); {} "
      "tokens/step. Evaluation: {}. Unigram baseline {:.2f}. ratio = perplexity / fair teacher's (same seed); "
      "mean ± sample std over seeds.\n\n| row | seeds | total steps | val ppl | ratio to fair teacher | overrides |\n"
      "|---|---|---|---|---|---|\n",
      T, D, T + D, T + D, study["budget"]["tokens_per_step"].get<int64_t>(), val.describe(), p.unigram_ppl);
  for (auto& row : all) {
    std::vector<double> ppl, ratio;
    int64_t steps = 0;
    for (int s = 0; s < seeds; ++s) {
      const auto* r = find_run(row.id, s);
      const auto* f = find_run("fair", s);
      if (!r) continue;
      ppl.push_back((*r)["val_perplexity"].get<double>());
      steps = (*r)["total_steps"].get<int64_t>();
      if (f) ratio.push_back(ppl.back() / (*f)["val_perplexity"].get<double>());
    }
    if (ppl.empty()) continue;
    const Stat a = stat(ppl), b = stat(ratio);
    std::string sets;
    for (auto& x : row.sets) sets += (sets.empty() ? "" : ", ") + x;
    table.push_back({{"row", row.id}, {"name", row.name}, {"seeds", a.n}, {"total_steps", steps},
                     {"val_perplexity_mean", a.mean}, {"val_perplexity_std", a.std}, {"ratio_mean", b.mean},
                     {"ratio_std", b.std}, {"ratio_seeds", b.n}, {"overrides", row.sets}});
    md += fmt::format("| {} | {} | {} | {:.2f} ± {:.2f} | {} | {} |\n", row.name, a.n, steps, a.mean, a.std,
                      b.n ? fmt::format("{:.3f} ± {:.3f}", b.mean, b.std) : "-", sets.empty() ? "-" : sets);
  }
  study["table"] = table;
  save();
  write_atomic(fs::path(out) / "study.md", md);
  std::printf("%s", md.c_str());

  // Plot: ratio to the fair teacher per row, mean ± std, with the issue's targets (1.10 binary, 1.05 ternary).
  {
    const int W = 900, rowh = 28, left = 330, top = 40;
    const int H = top + rowh * static_cast<int>(table.size()) + 50;
    double hi = 1.2;
    for (auto& r : table) hi = std::max(hi, r["ratio_mean"].get<double>() + r["ratio_std"].get<double>() + 0.05);
    const double lo = 0.8;
    auto X = [&](double v) { return left + (W - left - 30) * (v - lo) / (hi - lo); };
    std::ostringstream svg;
    svg << fmt::format(R"(<svg xmlns="http://www.w3.org/2000/svg" width="{}" height="{}" font-family="sans-serif" )"
                       R"(font-size="12"><rect width="100%" height="100%" fill="white"/>)",
                       W, H);
    svg << fmt::format(R"(<text x="10" y="20" font-size="14">Perplexity / fair fp teacher's (same seed), mean ± std )"
                       R"(over {} seeds; budget {} steps; {} val tokens scored</text>)",
                       seeds, T + D, study["eval_tokens"].get<int64_t>());
    for (double v : {1.0, 1.05, 1.10}) {
      svg << fmt::format(R"(<line x1="{0:.1f}" y1="{1}" x2="{0:.1f}" y2="{2}" stroke="{3}" stroke-dasharray="4"/>)"
                         R"(<text x="{0:.1f}" y="{4}" text-anchor="middle">{5:.2f}</text>)",
                         X(v), top - 5, H - 40, v == 1.0 ? "black" : "gray", H - 25, v);
    }
    int i = 0;
    for (auto& r : table) {
      const double y = top + rowh * i++ + rowh / 2.0;
      svg << fmt::format(R"(<text x="{}" y="{:.1f}" text-anchor="end">{}</text>)", left - 8, y + 4,
                         r["name"].get<std::string>());
      if (r["ratio_seeds"].get<int>() == 0) continue;
      const double m = r["ratio_mean"].get<double>(), sd = r["ratio_std"].get<double>();
      svg << fmt::format(R"(<rect x="{0:.1f}" y="{1:.1f}" width="{2:.1f}" height="{3}" fill="#4a7bd0"/>)", X(lo),
                         y - 8, X(m) - X(lo), 16);
      svg << fmt::format(R"(<line x1="{:.1f}" y1="{:.1f}" x2="{:.1f}" y2="{:.1f}" stroke="black" stroke-width="2"/>)",
                         X(m - sd), y, X(m + sd), y);
      svg << fmt::format(R"(<text x="{:.1f}" y="{:.1f}">{:.3f}</text>)", X(m + sd) + 4, y + 4, m);
    }
    svg << "</svg>\n";
    write_atomic(fs::path(out) / "study.svg", svg.str());
  }
  spdlog::info("study: {} , {} , {}", json_path.string(), (fs::path(out) / "study.md").string(),
               (fs::path(out) / "study.svg").string());
  return 0;
}

int main(int argc, char** argv) {
  return bitforge::bench::guarded_main(argc, argv, "CONFIG --out DIR [--seeds 3] [--rows id,...|all] [--set k=v]... [--report-only]\n", bench_body);
}
