// Distillation study and step-time ratio on a finished `bitforge run` directory (needs its data/ and teacher/).
//   build/bench/bench_distill RUN_DIR [--steps N] [--config FILE]
// 1. One table, same data, same tokens and steps for every trained row:
//      teacher | student trained with CE only (from the teacher's weights) | distilled student |
//      distilled student without anchors | teacher quantized to signs with absmean scales, no training
//    with val perplexity, mean KL(teacher‖student) per token and top-1 agreement.
// 2. Time of one distillation step vs one plain QAT step of the same student (ratio in one run).
#include <torch/torch.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>

#include "data/prepare.h"
#include "trainer/checkpoint.h"
#include "trainer/distill.h"
#include "trainer/losses.h"
#include "trainer/train.h"
#include "bench/bench_main.h"

namespace fs = std::filesystem;
using namespace bitforge;

namespace {
int run_bench(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s RUN_DIR [--steps N] [--config FILE]\n", argv[0]);
    return 2;
  }
  const std::string run = argv[1];
  std::string config_path = (fs::path(run) / "config.yaml").string();
  int64_t steps = -1;
  for (int i = 2; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--steps")) steps = std::stoll(argv[i + 1]);
    if (!std::strcmp(argv[i], "--config")) config_path = argv[i + 1];
  }
  Config base = load_config(config_path);
  if (steps > 0) base.train.max_steps = steps, base.train.warmup_steps = std::min(base.train.warmup_steps, steps);
  base.logging.plot = false;
  base.train.save_steps = 0;
  auto prepared = data::read_prepared_data((fs::path(run) / "data").string());
  std::shared_ptr<data::Tokenizer> tok = data::load_tokenizer(prepared.tokenizer_path);
  const std::string teacher_path = (fs::path(run) / "teacher" / "checkpoints").string();
  const torch::Device dev = select_device(base.train);
  const std::string out = (fs::path(run) / "distill_study").string();

  struct Row {
    std::string name;
    double ppl, kl, top1, wall;
  };
  std::vector<Row> rows;
  data::SequentialLoader val(prepared.val_path, base.eval.batch_size, base.eval.seq_len, base.eval.max_batches);
  Transformer teacher = load_teacher(teacher_path, *tok, dev);
  rows.push_back({"teacher (full precision)", evaluate(teacher, val, base.eval.max_batches, dev).perplexity, 0, 1, 0});

  auto variant = [&](const std::string& name, Config c) {
    auto t0 = std::chrono::steady_clock::now();
    auto r = run_distillation(c, teacher_path, (fs::path(out) / name).string(), prepared.train_path, prepared.val_path,
                              tok);
    rows.push_back({name, r.student.perplexity, r.kl, r.top1,
                    std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count()});
  };
  Config ce = base;
  ce.distill.alpha_kd = 0.0;
  ce.distill.alpha_ce = 1.0;
  variant("student CE only", ce);
  variant("student distilled", base);
  Config na = base;
  na.quant.anchor_fraction = 0.0;
  variant("distilled, no anchors", na);
  {
    // Teacher → signs with absmean scales, no training: the conversion the student starts from.
    Config c = base;
    c.quant.anchor_fraction = 0.0;
    c.quant.scale_mode = ScaleMode::absmean;
    Transformer s(teacher->config(), c.quant);
    {
      torch::NoGradGuard ng;
      auto tp = teacher->named_parameters();
      for (auto& p : s->named_parameters())
        if (const auto* src = tp.find(p.key())) p.value().copy_(src->to(torch::kFloat));
    }
    s->reset_quantizer_state();
    s->to(dev);
    auto cmp = compare_models(teacher, s, val, base.eval.max_batches, dev);
    rows.push_back({"teacher → signs, no training", evaluate(s, val, base.eval.max_batches, dev).perplexity, cmp.kl,
                    cmp.top1, 0});
  }
  std::printf("\n# distillation study: %lld steps × %lld tokens per row, val windows: %lld × %lld tokens\n",
              static_cast<long long>(base.train.max_steps),
              static_cast<long long>(base.train.per_device_train_batch_size * base.train.seq_len),
              static_cast<long long>(std::min<int64_t>(val.num_batches(), base.eval.max_batches) * base.eval.batch_size),
              static_cast<long long>(base.eval.seq_len));
  std::printf("| %-30s | %12s | %14s | %8s | %8s |\n", "model", "val ppl", "KL(t‖s)/token", "top-1", "wall s");
  std::printf("|%s|%s|%s|%s|%s|\n", std::string(32, '-').c_str(), std::string(14, '-').c_str(),
              std::string(16, '-').c_str(), std::string(10, '-').c_str(), std::string(10, '-').c_str());
  for (auto& r : rows)
    std::printf("| %-30s | %12.2f | %14.4f | %7.1f%% | %8.0f |\n", r.name.c_str(), r.ppl, r.kl, 100 * r.top1, r.wall);

  // Step time: distillation step vs plain QAT step of the same student.
  {
    Transformer s(teacher->config(), base.quant);
    s->to(dev);
    torch::optim::AdamW opt(s->parameters(), torch::optim::AdamWOptions(1e-3));
    data::TokenLoader loader(prepared.train_path, base.train.per_device_train_batch_size, base.train.seq_len, 7);
    auto batch = loader.next_batch();
    auto t = torch::from_blob(batch.data(), {base.train.per_device_train_batch_size, base.train.seq_len + 1},
                              torch::kInt)
                 .to(torch::kLong);
    auto input = t.slice(1, 0, base.train.seq_len).contiguous().to(dev);
    auto labels = t.slice(1, 1, base.train.seq_len + 1).contiguous().to(dev);
    auto time_step = [&](bool distill) {
      double best = 1e30;
      for (int i = 0; i < 6; ++i) {
        auto t0 = std::chrono::steady_clock::now();
        opt.zero_grad();
        auto logits = s->forward(input);
        torch::Tensor loss = token_cross_entropy(logits, labels);
        if (distill) {
          torch::Tensor tl;
          {
            torch::NoGradGuard ng;
            tl = teacher->forward(input);
          }
          loss = loss + kd_loss(logits, tl.to(torch::kFloat), base.distill.kd_loss, base.distill.temperature);
        }
        loss.backward();
        opt.step();
        if (i > 0) best = std::min(best, std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
      }
      return best;
    };
    const double qat = time_step(false), kd = time_step(true);
    std::printf("\n# step time (best of 5, %lld tokens): QAT %.1f ms, distillation %.1f ms, ratio %.3fx\n",
                static_cast<long long>(base.train.per_device_train_batch_size * base.train.seq_len), qat, kd, kd / qat);
  }
  return 0;
}
}  // namespace

int main(int argc, char** argv) {
  return bitforge::bench::guarded_main(
      argc, argv,
      "RUN_DIR [--steps N] [--config FILE]\nDistillation study table and distillation vs QAT step time on a finished `bitforge run` directory.\n",
      run_bench);
}
