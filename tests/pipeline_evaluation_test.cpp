// The one evaluation definition (issue #20), end to end on a tiny run: every report of the same model — the
// pipeline's summary, `eval` (evaluate_model) on the checkpoint and on the packed file, the distillation report and
// the export report — gives the same perplexity (relative 1e-4) on the same tokens, the whole val split by default;
// the summary's rows state their budgets and its ratios use the same-budget controls; the unigram baseline scores the
// same labels; an explicit subsample is spread over the split and says so. export.dtype fp32 is avoided:
// on this commit a packed fp32 file intermittently fails its own checksum when reopened (pre-existing, reported).
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <random>

#include "data/baseline.h"
#include "pipeline/pipeline.h"
#include "trainer/train.h"

namespace fs = std::filesystem;
using namespace bitforge;

namespace {

nlohmann::json read_json(const fs::path& p) {
  std::ifstream f(p);
  return nlohmann::json::parse(f);
}

const nlohmann::json& row(const nlohmann::json& summary, const std::string& name) {
  for (auto& r : summary["models"])
    if (r["model"] == name) return r;
  throw std::runtime_error("no row " + name);
}

void expect_rel(double a, double b, double tol = 1e-4) { EXPECT_LE(std::abs(a - b) / b, tol) << a << " vs " << b; }

}  // namespace

TEST(PipelineEvaluation, AllReportsAgreeOnTheWholeSplit) {
  const fs::path dir = fs::temp_directory_path() / ("bitforge_eval_agree_" + std::to_string(std::random_device{}()));
  fs::create_directories(dir);
  {
    std::ofstream f(dir / "corpus.jsonl");
    std::mt19937 rng(5);
    // Random lowercase words: enough distinct pairs for a small SentencePiece BPE vocabulary. (The byte tokenizer
    // would be cheaper but its vocab (258) is refused by the checkpoint config check (>= 259) on this commit.)
    for (int d = 0; d < 60; ++d) {
      std::string text;
      for (int w = 0; w < 40; ++w) {
        const int len = 2 + static_cast<int>(rng() % 5);
        for (int k = 0; k < len; ++k) text += static_cast<char>('a' + rng() % 12);
        text += ' ';
      }
      f << nlohmann::json{{"text", text}}.dump() << "\n";
    }
  }
  pipeline::RunContext ctx;
  ctx.config = parse_config(fmt::format(R"(
run: {{name: t, output_dir: "{}", stages: [prepare-data, teacher, train, distill, export, eval], teacher_max_steps: 6}}
data: {{format: jsonl, path: "{}", tokenizer: sentencepiece_bpe, vocab_size: 320, val_fraction: 0.2}}
model: {{hidden_size: 32, intermediate_size: 64, num_hidden_layers: 1, num_attention_heads: 2, num_key_value_heads: 1,
        max_position_embeddings: 32}}
quant: {{weight: binary, granularity: channel, anchor_fraction: 0}}
train: {{max_steps: 4, per_device_train_batch_size: 2, seq_len: 16, warmup_steps: 1, eval_steps: 0, save_steps: 0,
        logging_steps: 100, threads: 1}}
export: {{gguf: false}}
eval: {{batch_size: 4, seq_len: 16}}
logging: {{plot: false}}
)",
                                        dir.string(), (dir / "corpus.jsonl").string()),
                            "test");
  ctx.run_dir = (dir / "t").string();
  pipeline::run(ctx);

  const auto summary = read_json(dir / "t" / "summary.json");
  const auto prepared = data::read_prepared_data((dir / "t" / "data").string());
  const auto val = validation_loader(ctx.config, prepared.val_path);
  ASSERT_TRUE(val.whole_split());
  EXPECT_GT(val.coverage(), 0.9);
  for (auto& r : summary["models"]) EXPECT_EQ(r["eval_tokens"].get<int64_t>(), val.tokens_scored()) << r["model"];
  EXPECT_NE(summary["eval"].get<std::string>().find("whole val split"), std::string::npos);
  expect_rel(summary["unigram_val_perplexity"].get<double>(),
             data::unigram_perplexity(data::ShardReader(prepared.train_path), val), 1e-12);

  // Budgets: the distilled student and its control have the same total steps; QAT from scratch and its control too.
  const auto& teacher = row(summary, "teacher (full precision)");
  const auto& fair = row(summary, "teacher, same budget (fair)");
  const auto& distilled = row(summary, "student distilled");
  const auto& qat = row(summary, "student QAT from scratch");
  const auto& fp = row(summary, "full precision, same budget");
  EXPECT_EQ(teacher["steps"], 6);
  EXPECT_EQ(fair["total_steps"], 10);
  EXPECT_EQ(distilled["total_steps"], 10);
  EXPECT_EQ(distilled["tokens"], fair["tokens"]);
  EXPECT_EQ(distilled["reference"], "teacher, same budget (fair)");
  expect_rel(distilled["ratio_to_reference"].get<double>(),
             distilled["val_perplexity"].get<double>() / fair["val_perplexity"].get<double>(), 1e-12);
  EXPECT_EQ(qat["total_steps"], fp["total_steps"]);
  EXPECT_EQ(qat["reference"], "full precision, same budget");

  // Agreement: one model, five reports.
  const double ppl = distilled["val_perplexity"].get<double>();
  const auto distill_report = read_json(dir / "t" / "distill" / "report.json");
  expect_rel(distill_report["student_val_perplexity"].get<double>(), ppl);
  expect_rel(distill_report["teacher_val_perplexity"].get<double>(), teacher["val_perplexity"].get<double>());
  EXPECT_EQ(distill_report["eval_tokens"].get<int64_t>(), val.tokens_scored());
  const auto export_report = read_json(dir / "t" / "export" / "export_report.json");
  const auto& measured = export_report["packed"]["measured"];
  expect_rel(measured["checkpoint_perplexity"].get<double>(), ppl);
  // The packed file stores the unquantized tensors (embeddings, norms) in bf16 (export.dtype default): close, not equal.
  expect_rel(measured["packed_perplexity"].get<double>(), ppl, 2e-2);
  EXPECT_EQ(measured["tokens"].get<int64_t>(), val.tokens_scored());
  const auto ev = pipeline::evaluate_model(ctx, distilled["path"].get<std::string>(), "");
  expect_rel(ev["val_perplexity"].get<double>(), ppl);
  EXPECT_EQ(ev["tokens"].get<int64_t>(), val.tokens_scored());
  const auto evp = pipeline::evaluate_model(ctx, (dir / "t" / "export" / "model.packed.safetensors").string(), "");
  expect_rel(evp["val_perplexity"].get<double>(), measured["packed_perplexity"].get<double>());
  expect_rel(ev["unigram_val_perplexity"].get<double>(), summary["unigram_val_perplexity"].get<double>(), 1e-12);

  // An explicit subsample is spread over the split and smaller; eval reports what it scored.
  auto sub = ctx;
  sub.config.eval.max_batches = 1;
  const auto evs = pipeline::evaluate_model(sub, distilled["path"].get<std::string>(), "");
  EXPECT_EQ(evs["tokens"].get<int64_t>(), 4 * 16);
  fs::remove_all(dir);
}
