#include "pipeline/pipeline.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>

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
#include "trainer/distributed.h"
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
  o.corpus_format = d.format;
  o.corpus_path = d.path;
  o.glob = d.glob;
  o.text_field = d.text_field;
  o.max_documents = static_cast<size_t>(d.max_documents);
  o.tokenizer = d.tokenizer;
  if (d.tokenizer == TokenizerKind::pretrained)
    o.tokenizer_path = d.tokenizer_path == "teacher" ? teacher_tokenizer_path(ctx.config.distill.teacher)
                                                     : d.tokenizer_path;
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
  // Data parallel: rank 0 prepares (or reuses) the data while the other ranks wait, then they reuse it.
  auto dist = distributed_env().present
                  ? Distributed::get(ctx.config.train.distributed_backend, ctx.config.train.distributed_timeout_s,
                                     select_device(ctx.config.train))
                  : nullptr;
  if (dist && !dist->is_main()) dist->barrier();
  p.data = data::prepare_data(prepare_options(ctx));
  if (dist && dist->is_main()) dist->barrier();
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
  if (distributed_env().rank != 0) return;  // rank 0 alone writes files
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
                     {"kl", r.kl >= 0 ? nlohmann::json(r.kl) : nlohmann::json(nullptr)},  // null: not measured
                     {"top1", r.top1 >= 0 ? nlohmann::json(r.top1) : nlohmann::json(nullptr)},
                     {"wall_seconds", r.wall}, {"path", r.path}};
    if (ref) e["reference"] = r.ref, e["ratio_to_reference"] = ratio > 0 ? nlohmann::json(ratio) : nlohmann::json(nullptr);
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

/// Validation tokens for a model whose tokenizer is `tok`, read or built without writing anything.
struct EvalData {
  std::shared_ptr<const data::ShardReader> val;
  std::shared_ptr<const data::ShardReader> train;  ///< for the unigram baseline (null when unknown)
  std::string source;          ///< where the windows come from (the val shard's path or "<corpus> (in memory)")
};

/// eval.seq_len, at most the model's context (a checkpoint or packed file evaluated with default settings may have a
/// shorter one than the default windows).
int64_t eval_window(const RunContext& ctx, int64_t max_position_embeddings) {
  if (ctx.config.eval.seq_len <= max_position_embeddings) return ctx.config.eval.seq_len;
  spdlog::info("eval: windows of {} tokens, the model's context (eval.seq_len {} is longer)", max_position_embeddings,
               ctx.config.eval.seq_len);
  return max_position_embeddings;
}

/// The add-one unigram baseline on exactly the labels `val` scores (as the pipeline's summary computes it).
nlohmann::json unigram_on(const EvalData& ed, const data::SequentialLoader& val) {
  return ed.train && val.num_batches() > 0 ? nlohmann::json(data::unigram_perplexity(*ed.train, val))
                                           : nlohmann::json(nullptr);
}

EvalData eval_data_for(const RunContext& ctx, const data::Tokenizer& tok) {
  const std::string dir = data_dir(ctx);
  std::string why = "no prepared data in " + dir;
  if (fs::exists(fs::path(dir) / "meta.json")) {
    try {
      auto p = data::read_prepared_data(dir);
      auto t = data::load_tokenizer(p.tokenizer_path);
      if (t->kind() == tok.kind() && t->serialize() == tok.serialize()) {
        EvalData e;
        e.val = std::make_shared<const data::ShardReader>(p.val_path);
        e.train = std::make_shared<const data::ShardReader>(p.train_path);
        e.source = p.val_path;
        return e;
      }
      why = "the prepared data in " + dir + " was tokenized with another tokenizer";
    } catch (const data::DataError& e) {
      why = std::string("the prepared data in ") + dir + " is unreadable (" + e.what() + ")";
    }
  }
  const auto opts = prepare_options(ctx);
  spdlog::info("eval: {}; splitting {} and encoding it with the model's tokenizer in memory (nothing is written)",
               why, opts.corpus_path);
  try {
    auto s = data::encode_splits(opts, tok);
    EvalData e;
    e.train = std::make_shared<const data::ShardReader>(std::move(s.train));
    e.val = std::make_shared<const data::ShardReader>(std::move(s.val));
    e.source = opts.corpus_path + " (val split, encoded in memory)";
    return e;
  } catch (const data::DataError& e) {
    throw std::runtime_error("eval: " + why + ", and the corpus cannot be read: " + e.what() +
                             "; pass -c CONFIG whose data.path is the corpus (or data.output_dir the prepared data)");
  }
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
  spdlog::info("export: {} ({} bytes, {:.3f} bits/weight overall; FP16 would be {} bytes: the file is {:.2f}x "
               "smaller)\n{}",
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
    auto rf = runtime::PackedRuntime::open(formats::pack_model(folded, po), static_cast<int>(ctx.config.train.threads),
                                           0, "anchors folded (in memory)");
    auto fe = runtime::evaluate_packed(*rf, val, 0, reference_logits(lm.model));
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
  if (ctx.config.export_.hf) {
    // A Hugging Face directory for users who continue in Python: the effective weights (what the forward pass
    // multiplies by) as a dense Llama/Qwen3, with the tokenizer files.
    const std::string hf = (fs::path(out) / "hf").string();
    HfSaveOptions ho;
    ho.bf16 = ctx.config.export_.dtype != "fp32";
    ho.tokenizer = lm.tokenizer.get();
    ho.allow_lossy = true;
    save_hf_checkpoint(lm.model, hf, ho);
    report["hf"] = {{"path", hf}, {"dtype", ho.bf16 ? "bfloat16" : "float32"}};
    spdlog::info("export: {} (Hugging Face directory, {} effective weights + tokenizer)", hf,
                 ho.bf16 ? "bf16" : "fp32");
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
  if (distributed_env().rank == 0)
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
  if (distributed_env().rank != 0) return;  // the other ranks only train: rank 0 exports, evaluates, summarises
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
  for (const auto& p : {model_path, reference})
    if (!p.empty() && !fs::exists(p)) throw std::runtime_error("eval: " + p + ": no such file or directory");
  if (activation_bits && !is_packed_file(model_path))
    throw std::runtime_error("eval: --activation-bits applies to a packed .safetensors model, not to " + model_path);
  std::optional<LoadedModel> ref;
  if (!reference.empty()) ref = load_model(reference);
  if (is_packed_file(model_path)) {
    auto rt = runtime::PackedRuntime::open(model_path, static_cast<int>(ctx.config.train.threads), activation_bits);
    auto tok = data::tokenizer_from_bytes(rt->tokenizer_kind(),
                                          std::string(rt->tokenizer_bytes().begin(), rt->tokenizer_bytes().end()));
    if (ref && ref->tokenizer->serialize() != tok->serialize())
      throw std::runtime_error("eval: the reference " + ref->checkpoint_dir + " has another tokenizer than " +
                               model_path);
    const auto ed = eval_data_for(ctx, *tok);
    data::SequentialLoader val(ed.val, ctx.config.eval.batch_size, eval_window(ctx, rt->config().max_position_embeddings),
                               ctx.config.eval.max_batches);
    auto pe = runtime::evaluate_packed(*rt, val, 0,
                                       ref ? reference_logits(ref->model) : runtime::ReferenceLogits{});
    nlohmann::json j{{"model", model_path}, {"packed", true}, {"val_loss", pe.loss}, {"val_perplexity", pe.perplexity},
                     {"tokens", pe.tokens}, {"eval_coverage", val.coverage()}, {"eval", val.describe()},
                     {"unigram_val_perplexity", unigram_on(ed, val)}, {"val_data", ed.source},
                     {"resident_weight_bytes", rt->resident_weight_bytes()}, {"fp16_bytes", rt->fp16_bytes()}};
    if (ref) j["reference"] = ref->checkpoint_dir, j["kl"] = pe.kl, j["top1_agreement"] = pe.top1;
    return j;
  }
  auto lm = load_model(model_path);
  if (ctx.config_path.empty()) {  // no config file: the checkpoint carries the data settings it was trained on
    ctx.config.data = lm.config.data;
    ctx.config.run.output_dir = lm.config.run.output_dir;
    ctx.config.run.name = lm.config.run.name;
    ctx.config.train.seed = lm.config.train.seed;
    ctx.run_dir = (fs::path(ctx.config.run.output_dir) / ctx.config.run.name).string();
  }
  if (ref && ref->tokenizer->serialize() != lm.tokenizer->serialize())
    throw std::runtime_error("eval: the reference " + ref->checkpoint_dir + " has another tokenizer than " +
                             lm.checkpoint_dir);
  const torch::Device dev = select_device(ctx.config.train);
  lm.model->to(dev);
  const auto ed = eval_data_for(ctx, *lm.tokenizer);
  data::SequentialLoader val(ed.val, ctx.config.eval.batch_size,
                             eval_window(ctx, lm.model->config().max_position_embeddings), ctx.config.eval.max_batches);
  auto ev = evaluate(lm.model, val, 0, dev);
  nlohmann::json j{{"model", lm.checkpoint_dir}, {"packed", false}, {"val_loss", ev.loss},
                   {"val_perplexity", ev.perplexity}, {"tokens", ev.tokens}, {"eval_coverage", ev.coverage},
                   {"eval", val.describe()}, {"unigram_val_perplexity", unigram_on(ed, val)},
                   {"val_data", ed.source}};
  if (ref) {
    ref->model->to(dev);
    auto cmp = compare_models(ref->model, lm.model, val, 0, dev);
    j["reference"] = ref->checkpoint_dir;
    j["kl"] = cmp.kl;
    j["top1_agreement"] = cmp.top1;
  }
  return j;
}

nlohmann::json evaluate_text(RunContext& ctx, const std::string& model_path, const std::string& text_file,
                             int64_t stride, int activation_bits) {
  std::ifstream f(text_file, std::ios::binary);
  if (!f) throw std::runtime_error("eval --text: cannot read " + text_file);
  const std::string text((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  if (activation_bits && !is_packed_file(model_path))
    throw std::runtime_error("eval: --activation-bits applies to a packed .safetensors model, not to " + model_path);
  torch::NoGradGuard ng;
  std::shared_ptr<data::Tokenizer> tok;
  std::unique_ptr<runtime::PackedRuntime> rt;
  Transformer model{nullptr};
  int64_t context = 0;
  if (is_packed_file(model_path)) {
    rt = runtime::PackedRuntime::open(model_path, static_cast<int>(ctx.config.train.threads), activation_bits);
    tok = data::tokenizer_from_bytes(rt->tokenizer_kind(),
                                     std::string(rt->tokenizer_bytes().begin(), rt->tokenizer_bytes().end()));
    context = rt->config().max_position_embeddings;
  } else if (fs::exists(fs::path(model_path) / "config.json")) {  // a Hugging Face model directory
    QuantConfig fp;
    fp.weight = WeightQuantizer::none;
    model = load_hf_model(model_path, fp);
    tok = data::load_tokenizer(model_path);
    context = model->config().max_position_embeddings;
  } else {
    auto lm = load_model(model_path);
    model = lm.model;
    tok = lm.tokenizer;
    context = lm.config.model.max_position_embeddings;
  }
  if (model) model->eval();
  std::vector<int32_t> ids;
  const bool add_bos = tok->kind() == "hf_bpe" ? data::gguf_vocab(*tok).add_bos : tok->bos_id() >= 0;
  if (add_bos && tok->bos_id() >= 0) ids.push_back(tok->bos_id());
  const auto enc = tok->encode(text);
  ids.insert(ids.end(), enc.begin(), enc.end());
  const int64_t window = std::min<int64_t>(ctx.config.eval.seq_len, context);
  if (stride <= 0) stride = std::max<int64_t>(1, window / 2);
  if (stride > window)
    throw std::runtime_error(fmt::format("eval --text: --stride {} is larger than the window ({})", stride, window));
  runtime::WindowLogits logits;
  if (rt)
    logits = [&rt](const std::vector<int32_t>& w) { return rt->logits(w); };
  else
    logits = [&model](const std::vector<int32_t>& w) {
      auto in = torch::tensor(std::vector<int64_t>(w.begin(), w.end()), torch::kLong).unsqueeze(0);
      return model->forward(in).squeeze(0).to(torch::kFloat);
    };
  const auto s = runtime::sliding_window_perplexity(ids, window, stride, logits);
  return {{"model", model_path}, {"text", text_file},
          {"method", "sliding window, Hugging Face perplexity guide: every token after the first scored once"},
          {"window", window}, {"stride", stride}, {"text_tokens", static_cast<int64_t>(ids.size())},
          {"tokens", s.count}, {"mean_nll", s.mean()}, {"perplexity", s.perplexity()}};
}

Generated generate_text(RunContext& ctx, const std::string& model_path, const std::string& prompt,
                        const runtime::GenerationOptions& options, int activation_bits,
                        const std::function<void(const std::string&)>& on_text) {
  if (!fs::exists(model_path)) throw std::runtime_error("generate: " + model_path + ": no such file or directory");
  std::unique_ptr<runtime::PackedRuntime> rt;
  if (is_packed_file(model_path)) {
    rt = runtime::PackedRuntime::open(model_path, static_cast<int>(ctx.config.train.threads), activation_bits);
  } else {
    // A checkpoint runs through the same packed runtime (KV cache), packed in memory: no file is written.
    auto lm = load_model(model_path);
    rt = runtime::PackedRuntime::open(
        formats::pack_model(make_export_model(lm.model, lm.tokenizer.get(), to_yaml(lm.config))),
        static_cast<int>(ctx.config.train.threads), activation_bits, lm.checkpoint_dir);
  }
  auto tok = data::tokenizer_from_bytes(rt->tokenizer_kind(),
                                        std::string(rt->tokenizer_bytes().begin(), rt->tokenizer_bytes().end()));
  std::vector<int32_t> ids;
  if (tok->bos_id() >= 0) ids.push_back(tok->bos_id());  // Qwen-style tokenizers have no bos
  auto enc = tok->encode(prompt);
  ids.insert(ids.end(), enc.begin(), enc.end());
  runtime::GenerationOptions go = options;
  go.eos_id = tok->eos_id();
  std::vector<int32_t> so_far;
  std::string shown;  // the text passed to on_text so far
  if (on_text) {
    go.on_token = [&](int32_t t) {
      if (options.on_token) options.on_token(t);
      if (t == go.eos_id) return;
      so_far.push_back(t);
      // Decode everything so far and pass on what is new: a token's text can depend on its neighbours (leading
      // spaces, bytes of one UTF-8 character split over tokens), so the text is held back while it does not
      // extend what was shown or ends in an incomplete character.
      std::string text = tok->decode(so_far);
      while (!text.empty() && text.size() >= 3 && text.compare(text.size() - 3, 3, "\xEF\xBF\xBD") == 0)
        text.resize(text.size() - 3);
      if (text.size() > shown.size() && text.compare(0, shown.size(), shown) == 0) {
        on_text(text.substr(shown.size()));
        shown = std::move(text);
      }
    };
  }
  Generated g;
  auto out = rt->generate(ids, go, &g.stats);
  g.text = tok->decode(out);
  if (on_text && g.text.size() > shown.size() && g.text.compare(0, shown.size(), shown) == 0)
    on_text(g.text.substr(shown.size()));
  g.resident_weight_bytes = rt->resident_weight_bytes();
  g.fp16_bytes = rt->fp16_bytes();
  g.max_position_embeddings = rt->config().max_position_embeddings;
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
