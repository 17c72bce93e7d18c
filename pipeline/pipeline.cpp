#include "pipeline/pipeline.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <unistd.h>

#include <fmt/format.h>

#include "data/baseline.h"
#include "export/inspect.h"
#include "export/model_export.h"
#include "runtime/evaluate.h"
#include "runtime/packed_runtime.h"
#include "trainer/export_model.h"
#include "data/prepare.h"
#include "trainer/checkpoint.h"
#include "trainer/distill.h"
#include "trainer/hf_checkpoint.h"
#include "trainer/logging.h"
#include "trainer/train.h"

namespace fs = std::filesystem;

namespace bitforge::pipeline {

namespace {

std::string data_dir(const RunContext& ctx) {
  return ctx.config.data.output_dir.empty() ? (fs::path(ctx.run_dir) / "data").string() : ctx.config.data.output_dir;
}

data::PrepareDataOptions prepare_options(const RunContext& ctx) {
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
  o.seed = ctx.config.data.seed;  // the split does not move with train.seed
  o.output_dir = data_dir(ctx);
  return o;
}


/// Prepared data for this run (prepares it when missing or stale; prepare_data reuses up-to-date outputs).
}  // namespace

Prepared ensure_data(RunContext& ctx) {
  Prepared p;
  p.data = data::prepare_data(prepare_options(ctx));
  p.tokenizer = data::load_tokenizer(p.data.tokenizer_path);
  if (ctx.config.model.vocab_size == 0) ctx.config.model.vocab_size = p.tokenizer->vocab_size();
  if (ctx.config.model.vocab_size < p.tokenizer->vocab_size())
    throw ConfigError(fmt::format("model.vocab_size ({}) is smaller than the tokenizer's vocabulary ({}) in {}",
                                  ctx.config.model.vocab_size, p.tokenizer->vocab_size(), p.data.tokenizer_path));
  // The baseline on exactly the labels the models are scored on (the evaluation windows of this config).
  p.unigram_ppl = data::unigram_perplexity(data::ShardReader(p.data.train_path),
                                           validation_loader(ctx.config, p.data.val_path));
  return p;
}

void begin_run(RunContext& ctx) {
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

namespace {

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
  int64_t params = 0;
  int64_t steps = 0;        ///< optimizer steps of this stage
  int64_t total_steps = 0;  ///< including the steps of the model it started from (distillation: the teacher's)
  int64_t tokens = 0;       ///< training tokens seen, including the starting model's
  double ppl = 0, kl = -1, top1 = -1, wall = 0;
  int64_t eval_tokens = 0;
  std::string path;
  std::string ref;          ///< name of the row this one's perplexity is divided by ("" = none)
};

void print_summary(std::vector<Row>& rows, double unigram, const std::string& eval_desc, const std::string& run_dir) {
  auto find = [&](const std::string& name) -> const Row* {
    for (auto& r : rows)
      if (r.name == name) return &r;
    return nullptr;
  };
  std::string out = fmt::format("\n{:<30} {:>9} {:>7} {:>10} {:>10} {:>8} {:>10} {:>9} {:>7} {:>9}  {}\n", "model",
                                "params", "steps", "tot.steps", "tok.seen", "val ppl", "÷ ref", "KL(t‖s)", "top-1",
                                "wall", "output");
  nlohmann::json j = nlohmann::json::array();
  for (auto& r : rows) {
    const Row* ref = r.ref.empty() ? nullptr : find(r.ref);
    const double ratio = ref && ref->ppl > 0 ? r.ppl / ref->ppl : -1;
    out += fmt::format("{:<30} {:>9} {:>7} {:>10} {:>10} {:>8.2f} {:>10} {:>9} {:>7} {:>9}  {}\n", r.name, r.params,
                       r.steps, r.total_steps, r.tokens, r.ppl, ratio > 0 ? fmt::format("{:.3f}x", ratio) : "-",
                       r.kl >= 0 ? fmt::format("{:.4f}", r.kl) : "-",
                       r.top1 >= 0 ? fmt::format("{:.1f}%", 100 * r.top1) : "-", format_duration(r.wall), r.path);
    nlohmann::json e{{"model", r.name}, {"parameters", r.params}, {"steps", r.steps}, {"total_steps", r.total_steps},
                     {"tokens", r.tokens}, {"val_perplexity", r.ppl}, {"eval_tokens", r.eval_tokens},
                     {"kl", r.kl}, {"top1", r.top1}, {"wall_seconds", r.wall}, {"path", r.path}};
    if (ref) e["reference"] = r.ref, e["ratio_to_reference"] = ratio;
    j.push_back(e);
  }
  out += fmt::format("{:<30} {:>9} {:>7} {:>10} {:>10} {:>8.2f}   (add-one unigram model of the same tokenizer, on the "
                     "same tokens)\n",
                     "unigram baseline", "-", "-", "-", "-", unigram);
  out += fmt::format("evaluation: {}; ÷ ref = perplexity / that of the row trained at the same total budget:\n", eval_desc);
  for (auto& r : rows)
    if (!r.ref.empty()) out += fmt::format("  {} ÷ {}\n", r.name, r.ref);
  spdlog::info("summary{}", out);
  nlohmann::json s{{"models", j}, {"unigram_val_perplexity", unigram}, {"eval", eval_desc}};
  std::ofstream((fs::path(run_dir) / "summary.json").string()) << s.dump(2) << "\n";
}

bool is_packed_file(const std::string& path) {
  return fs::is_regular_file(path) && path.size() > 12 && path.substr(path.size() - 12) == ".safetensors";
}

/// The reference model's logits [T, V] for one window, on the CPU in fp32 (what runtime::evaluate_packed compares).
runtime::ReferenceLogits reference_logits(Transformer& model) {
  return [&model](const std::vector<int32_t>& toks) {
    torch::NoGradGuard ng;
    auto in = torch::tensor(std::vector<int64_t>(toks.begin(), toks.end()), torch::kLong).unsqueeze(0);
    return model->forward(in).squeeze(0).to(torch::kFloat);
  };
}

}  // namespace

/// Exports a checkpoint (directory) to <out>/model.packed.safetensors and, when configured and possible,
/// <out>/model.gguf; measures what the packed file and GGUF lose against the checkpoint on the val windows and
/// writes <out>/export_report.json. Returns the packed file's path.
std::string export_checkpoint(const RunContext& ctx, const std::string& checkpoint, const std::string& out,
                              const std::string& val_shard) {
  auto lm = load_model(checkpoint);
  fs::create_directories(out);
  auto em = make_export_model(lm.model, lm.tokenizer.get(), to_yaml(lm.config));
  nlohmann::json report;
  const std::string packed = (fs::path(out) / "model.packed.safetensors").string();
  formats::PackedExportOptions po;
  po.dtype = ctx.config.export_.dtype == "fp32"   ? formats::Dtype::F32
             : ctx.config.export_.dtype == "fp16" ? formats::Dtype::F16
                                                  : formats::Dtype::BF16;
  auto rp = formats::export_packed(em, packed, po);
  spdlog::info("export: {} ({} bytes, {:.3f} bits/weight overall; FP16 would be {} bytes, {:.1f}x smaller)\n{}",
               packed, rp.file_bytes, 8.0 * rp.tensor_bytes / std::max<int64_t>(1, rp.total_params), rp.fp16_bytes,
               static_cast<double>(rp.fp16_bytes) / std::max<int64_t>(1, rp.file_bytes), rp.to_table());
  // Measured effect: packed runtime vs the checkpoint on the same val windows.
  // On the run's evaluation windows (validation_loader: the whole val split by default), like every other report.
  data::SequentialLoader val = validation_loader(ctx.config, val_shard);
  const torch::Device cpu(torch::kCPU);
  auto ck = evaluate(lm.model, val, 0, cpu);
  auto rt = runtime::PackedRuntime::open(packed, static_cast<int>(ctx.config.train.threads));
  auto pe = runtime::evaluate_packed(*rt, val, 0, reference_logits(lm.model));
  spdlog::info("export: measured on {}", val.describe());
  rp.measured = {{"checkpoint_perplexity", ck.perplexity}, {"packed_perplexity", pe.perplexity},
                 {"relative_difference", std::abs(pe.perplexity - ck.perplexity) / ck.perplexity},
                 {"kl_checkpoint_packed", pe.kl}, {"top1_agreement", pe.top1}, {"tokens", pe.tokens},
                 {"eval_coverage", val.coverage()}, {"eval", val.describe()},
                 {"resident_weight_bytes", rt->resident_weight_bytes()}, {"fp16_bytes", rt->fp16_bytes()}};
  spdlog::info("export: packed runtime perplexity {:.4f} vs checkpoint {:.4f} (relative difference {:.2e}), KL {:.2e}, "
               "top-1 {:.2f}%; resident weights {} bytes vs FP16 {}",
               pe.perplexity, ck.perplexity, rp.measured["relative_difference"].get<double>(), pe.kl, 100 * pe.top1,
               rt->resident_weight_bytes(), rt->fp16_bytes());
  // What GGUF cannot hold, measured: the same model with every anchor folded into its code (as the GGUF writer
  // does: binary sign, ternary round-clip at the layer's scale), run by the packed runtime on the same windows.
  auto folded = em;
  const int64_t n_anchors = formats::fold_anchors(folded);
  if (n_anchors > 0) {
    const std::string tmp = (fs::path(out) / "anchors-folded.tmp.safetensors").string();
    formats::export_packed(folded, tmp, po);
    auto rf = runtime::PackedRuntime::open(tmp, static_cast<int>(ctx.config.train.threads));
    auto fe = runtime::evaluate_packed(*rf, val, 0, reference_logits(lm.model));
    fs::remove(tmp);
    rp.measured["anchors_folded"] = {{"anchors", n_anchors}, {"perplexity", fe.perplexity},
                                     {"kl_checkpoint_folded", fe.kl}, {"top1_agreement", fe.top1}};
    spdlog::info("export: GGUF cannot hold the {} anchors; folding them into the codes (what the GGUF holds) gives "
                 "perplexity {:.4f} vs {:.4f} with anchors, KL(checkpoint‖folded) {:.2e}, top-1 {:.2f}%",
                 n_anchors, fe.perplexity, ck.perplexity, fe.kl, 100 * fe.top1);
  }
  report["packed"] = rp.to_json();
  if (ctx.config.export_.gguf) {
    const std::string gguf = (fs::path(out) / "model.gguf").string();
    try {
      formats::GgufExportOptions go;
      go.ternary = ctx.config.export_.gguf_ternary;
      go.name = ctx.config.run.name;
      auto rg = formats::export_gguf(em, gguf, go);
      if (rp.measured.contains("anchors_folded")) rg.measured = rp.measured["anchors_folded"];
      spdlog::info("export: {} ({} bytes){}", gguf, rg.file_bytes,
                   rg.notes.empty() ? "" : fmt::format("; notes: {}", fmt::join(rg.notes, "; ")));
      report["gguf"] = rg.to_json();
    } catch (const formats::GgufExportError& e) {
      spdlog::warn("export: no GGUF written: {}", e.what());
      report["gguf"] = {{"error", e.what()}};
    }
  }
  std::ofstream((fs::path(out) / "export_report.json").string()) << report.dump(2) << "\n";
  return packed;
}

Prepared prepare_data_stage(RunContext& ctx) {
  begin_run(ctx);
  auto p = ensure_data(ctx);
  spdlog::info("data ready in {}: tokenizer {} (vocab {}), train {}, val {}; val unigram perplexity {:.2f}",
               p.data.dir, p.tokenizer->kind(), p.tokenizer->vocab_size(), p.data.train_path, p.data.val_path,
               p.unigram_ppl);
  return p;
}

TrainResult train_stage(RunContext& ctx) {
  begin_run(ctx);
  auto p = ensure_data(ctx);
  const std::string stage = ctx.config.quant.enabled() ? "student" : "teacher";
  auto r = train(spec_for(stage, (fs::path(ctx.run_dir) / stage).string(), ctx.config, p));
  spdlog::info("{} done: val perplexity {:.2f} (unigram {:.2f}), {:.0f} tok/s, checkpoint {}", stage,
               r.val.perplexity, p.unigram_ppl, r.tokens_per_second, r.checkpoint_dir);
  return r;
}

DistillResult distill_stage(RunContext& ctx) {
  begin_run(ctx);
  auto p = ensure_data(ctx);
  std::string teacher = ctx.config.distill.teacher;
  if (teacher.empty()) teacher = (fs::path(ctx.run_dir) / "teacher" / "checkpoints").string();
  auto r = run_distillation(ctx.config, teacher, (fs::path(ctx.run_dir) / "distill").string(), p.data.train_path,
                            p.data.val_path, p.tokenizer);
  spdlog::info("distilled student: val perplexity {:.2f} (teacher {:.2f}), KL {:.4f}, top-1 {:.1f}%, checkpoint {}",
               r.student.perplexity, r.teacher.perplexity, r.kl, 100 * r.top1, r.train.checkpoint_dir);
  return r;
}

void run(RunContext& ctx) {
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
  const bool distill_from_teacher = has("distill") && ctx.config.distill.student_init == StudentInit::teacher;
  int64_t teacher_steps = 0, teacher_tokens = 0;
  std::string teacher_row;
  if (has("teacher")) {
    auto r = train(spec_for("teacher", teacher_dir.string(), teacher_config(ctx.config), p));
    teacher_steps = r.steps, teacher_tokens = r.tokens;
    teacher_row = "teacher (full precision)";
    rows.push_back({teacher_row, r.parameters, r.steps, r.steps, r.tokens, r.val.perplexity, -1, -1, r.wall_seconds,
                    r.val.tokens, r.checkpoint_dir, ""});
    if (distill_from_teacher && ctx.config.run.fair_teacher && ctx.config.distill.teacher.empty()) {
      // The control for the distilled student: the same teacher trained on, in full precision with plain CE, for the
      // distillation's steps (same LR schedule, same data order) — the teacher at the student's total budget.
      Config fc = teacher_config(ctx.config);
      fc.train.max_steps = ctx.config.train.max_steps;
      fc.train.warmup_steps = ctx.config.train.warmup_steps;
      auto spec = spec_for("teacher-fair", (fs::path(ctx.run_dir) / "teacher-fair").string(), fc, p);
      const std::string from = r.checkpoint_dir;
      spec.init = [from](Transformer& m) {
        auto t = load_model(from);
        torch::NoGradGuard ng;
        auto tp = t.model->named_parameters();
        for (auto& q : m->named_parameters())
          if (const auto* src = tp.find(q.key())) q.value().copy_(src->to(q.value().device(), q.value().scalar_type()));
        spdlog::info("[teacher-fair] continuing the teacher {} in full precision", from);
      };
      auto f = train(spec);
      teacher_row = "teacher, same budget (fair)";
      rows.push_back({teacher_row, f.parameters, f.steps, teacher_steps + f.steps, teacher_tokens + f.tokens,
                      f.val.perplexity, -1, -1, f.wall_seconds, f.val.tokens, f.checkpoint_dir, ""});
    }
  }
  if (has("train")) {
    std::string ref;
    if (ctx.config.run.fp_control && ctx.config.quant.enabled()) {
      // Reference for QAT from scratch: full precision from scratch at exactly the student's budget.
      Config fc = teacher_config(ctx.config);
      fc.train = ctx.config.train;
      auto r = train(spec_for("fp-control", (fs::path(ctx.run_dir) / "fp-control").string(), fc, p));
      ref = "full precision, same budget";
      rows.push_back({ref, r.parameters, r.steps, r.steps, r.tokens, r.val.perplexity, -1, -1, r.wall_seconds,
                      r.val.tokens, r.checkpoint_dir, ""});
    }
    auto r = train(spec_for("student", (fs::path(ctx.run_dir) / "student").string(), ctx.config, p));
    rows.push_back({"student QAT from scratch", r.parameters, r.steps, r.steps, r.tokens, r.val.perplexity, -1, -1,
                    r.wall_seconds, r.val.tokens, r.checkpoint_dir, ref});
  }
  if (has("distill")) {
    std::string teacher = ctx.config.distill.teacher.empty() ? (teacher_dir / "checkpoints").string()
                                                             : ctx.config.distill.teacher;
    auto r = run_distillation(ctx.config, teacher, (fs::path(ctx.run_dir) / "distill").string(), p.data.train_path,
                              p.data.val_path, p.tokenizer);
    const bool from_ours = distill_from_teacher && has("teacher");
    rows.push_back({"student distilled", r.train.parameters, r.train.steps,
                    r.train.steps + (from_ours ? teacher_steps : 0), r.train.tokens + (from_ours ? teacher_tokens : 0),
                    r.student.perplexity, r.kl, r.top1, r.train.wall_seconds, r.student.tokens, r.train.checkpoint_dir,
                    teacher_row});
  }
  // The model exported: the distilled student when there is one, else the last trained model.
  const Row* exported = nullptr;
  for (auto& r : rows)
    if (r.name == "student distilled" || r.name == "student QAT from scratch") exported = &r;
  if (!exported && !rows.empty()) exported = &rows.back();
  if (has("export") && exported)
    export_checkpoint(ctx, exported->path, (fs::path(ctx.run_dir) / "export").string(), p.data.val_path);
  data::SequentialLoader val = validation_loader(ctx.config, p.data.val_path);
  if (has("eval") && !rows.empty()) {
    // Re-evaluate every trained model from its checkpoint on the same val windows (what a user would get
    // loading the files), and compare students with the teacher they were distilled from when there is one.
    const torch::Device dev = select_device(ctx.config.train);
    std::optional<LoadedModel> teacher;
    for (auto& r : rows) {
      auto lm = load_model(r.path);
      lm.model->to(dev);
      auto ev = evaluate(lm.model, val, 0, dev);
      r.ppl = ev.perplexity;
      r.eval_tokens = ev.tokens;
      if (r.name == "teacher (full precision)") {
        teacher = std::move(lm);
      } else if (teacher && r.name.rfind("student", 0) == 0) {
        auto cmp = compare_models(teacher->model, lm.model, val, 0, dev);
        r.kl = cmp.kl;
        r.top1 = cmp.top1;
      }
    }
  }
  print_summary(rows, p.unigram_ppl, val.describe(), ctx.run_dir);
  spdlog::info("run finished in {}; outputs in {}", format_duration(std::chrono::duration<double>(
                                                        std::chrono::steady_clock::now() - t0).count()),
               ctx.run_dir);
}

std::string export_stage(RunContext& ctx, const std::string& checkpoint, const std::string& output) {
  begin_run(ctx);
  auto p = ensure_data(ctx);
  std::string src = checkpoint;
  if (src.empty()) {
    for (const char* stage : {"distill", "student"})
      if (latest_checkpoint((fs::path(ctx.run_dir) / stage / "checkpoints").string())) {
        src = (fs::path(ctx.run_dir) / stage / "checkpoints").string();
        break;
      }
    if (src.empty()) throw std::runtime_error("export: no --checkpoint given and no student checkpoint in " + ctx.run_dir);
  }
  return export_checkpoint(ctx, src, output.empty() ? (fs::path(ctx.run_dir) / "export").string() : output,
                           p.data.val_path);
}

nlohmann::json evaluate_model(RunContext& ctx, const std::string& model_path, const std::string& reference,
                              int activation_bits) {
  if (activation_bits && !is_packed_file(model_path))
    throw std::runtime_error("eval: --activation-bits applies to a packed .safetensors model, not to " + model_path);
  if (is_packed_file(model_path)) {
    auto rt = runtime::PackedRuntime::open(model_path, static_cast<int>(ctx.config.train.threads), activation_bits);
    auto p = ensure_data(ctx);
    if (rt->tokenizer_kind() != p.tokenizer->kind() ||
        std::string(rt->tokenizer_bytes().begin(), rt->tokenizer_bytes().end()) != p.tokenizer->serialize())
      throw std::runtime_error("eval: the packed model's tokenizer differs from the data's tokenizer (" +
                               p.data.tokenizer_path + ")");
    data::SequentialLoader val = validation_loader(ctx.config, p.data.val_path);
    std::optional<LoadedModel> ref;
    if (!reference.empty()) ref = load_model(reference);
    auto pe = runtime::evaluate_packed(*rt, val, 0,
                                       ref ? reference_logits(ref->model) : runtime::ReferenceLogits{});
    nlohmann::json j{{"model", model_path}, {"packed", true}, {"val_loss", pe.loss}, {"val_perplexity", pe.perplexity},
                     {"tokens", pe.tokens}, {"eval_coverage", val.coverage()}, {"eval", val.describe()},
                     {"unigram_val_perplexity", p.unigram_ppl},
                     {"resident_weight_bytes", rt->resident_weight_bytes()}, {"fp16_bytes", rt->fp16_bytes()}};
    if (ref) j["reference"] = ref->checkpoint_dir, j["kl"] = pe.kl, j["top1_agreement"] = pe.top1;
    return j;
  }
  auto lm = load_model(model_path);
  const torch::Device dev = select_device(ctx.config.train);
  lm.model->to(dev);
  // Data: the prepared val shard of this config's run, tokenized with the model's own tokenizer.
  auto p = ensure_data(ctx);
  if (p.tokenizer->serialize() != lm.tokenizer->serialize())
    throw std::runtime_error("eval: the model's tokenizer differs from the data's tokenizer (" + p.data.tokenizer_path +
                             "); evaluate on data prepared with the model's tokenizer");
  data::SequentialLoader val = validation_loader(ctx.config, p.data.val_path);
  auto ev = evaluate(lm.model, val, 0, dev);
  nlohmann::json j{{"model", lm.checkpoint_dir}, {"packed", false}, {"val_loss", ev.loss},
                   {"val_perplexity", ev.perplexity}, {"tokens", ev.tokens}, {"eval_coverage", ev.coverage},
                   {"eval", val.describe()}, {"unigram_val_perplexity", p.unigram_ppl}};
  if (!reference.empty()) {
    auto ref = load_model(reference);
    ref.model->to(dev);
    auto cmp = compare_models(ref.model, lm.model, val, 0, dev);
    j["reference"] = ref.checkpoint_dir;
    j["kl"] = cmp.kl;
    j["top1_agreement"] = cmp.top1;
  }
  return j;
}

Generated generate_text(RunContext& ctx, const std::string& model_path, const std::string& prompt,
                        const runtime::GenerationOptions& options, int activation_bits) {
  std::string packed = model_path;
  if (!is_packed_file(model_path)) {
    // A checkpoint runs through the same packed runtime (KV cache): export it to a temporary packed file.
    auto lm = load_model(model_path);
    packed = (fs::temp_directory_path() / fmt::format("bitforge-generate-{}.safetensors", ::getpid())).string();
    formats::export_packed(make_export_model(lm.model, lm.tokenizer.get(), to_yaml(lm.config)), packed);
  }
  auto rt = runtime::PackedRuntime::open(packed, static_cast<int>(ctx.config.train.threads), activation_bits);
  if (packed != model_path) fs::remove(packed);
  auto tok = data::tokenizer_from_bytes(rt->tokenizer_kind(),
                                        std::string(rt->tokenizer_bytes().begin(), rt->tokenizer_bytes().end()));
  std::vector<int32_t> ids{tok->bos_id()};
  auto enc = tok->encode(prompt);
  ids.insert(ids.end(), enc.begin(), enc.end());
  runtime::GenerationOptions go = options;
  go.eos_id = tok->eos_id();
  Generated g;
  auto out = rt->generate(ids, go, &g.stats);
  g.text = tok->decode(out);
  g.resident_weight_bytes = rt->resident_weight_bytes();
  g.fp16_bytes = rt->fp16_bytes();
  return g;
}

std::string inspect_path(const std::string& path, bool json) {
  std::string target = path;
  if (fs::is_directory(path)) {
    auto ck = fs::exists(fs::path(path) / "COMPLETE") ? std::optional<std::string>(path) : latest_checkpoint(path);
    if (!ck) throw std::runtime_error(path + ": no checkpoint (step-*/ with COMPLETE) here");
    target = (fs::path(*ck) / "model.safetensors").string();
  }
  return formats::inspect_file(target, json);
}

}  // namespace bitforge::pipeline
