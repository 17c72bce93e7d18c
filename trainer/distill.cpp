#include "trainer/distill.h"

#include <spdlog/spdlog.h>

#include <filesystem>
#include <fstream>

#include <fmt/format.h>

#include "data/hf_tokenizer.h"
#include "trainer/checkpoint.h"
#include "trainer/distributed.h"
#include "trainer/hf_checkpoint.h"
#include "trainer/losses.h"

namespace fs = std::filesystem;

namespace bitforge {

Comparison compare_models(Transformer& reference, Transformer& model, const data::SequentialLoader& val,
                          int64_t max_batches, const torch::Device& device) {
  torch::NoGradGuard ng;
  reference->eval();
  model->eval();
  double kl_sum = 0, agree = 0;
  int64_t tokens = 0;
  const int64_t n = max_batches > 0 ? std::min<int64_t>(val.num_batches(), max_batches) : val.num_batches();
  for (int64_t i = 0; i < n; ++i) {
    const auto ids = val.batch(i);
    const int64_t rows = val.rows(i), T = val.seq_len();
    auto t = torch::from_blob(const_cast<int32_t*>(ids.data()), {rows, T + 1}, torch::kInt).to(torch::kLong);
    auto input = t.slice(1, 0, T).contiguous().to(device);
    auto lr = torch::log_softmax(reference->forward(input).to(torch::kFloat), -1);
    auto lm = torch::log_softmax(model->forward(input).to(torch::kFloat), -1);
    kl_sum += (lr.exp() * (lr - lm)).sum().item<double>();
    agree += (lr.argmax(-1) == lm.argmax(-1)).sum().item<double>();
    tokens += rows * T;
  }
  Comparison c;
  c.tokens = tokens;
  c.kl = tokens ? kl_sum / static_cast<double>(tokens) : 0.0;
  c.top1 = tokens ? agree / static_cast<double>(tokens) : 0.0;
  return c;
}

namespace {

std::string describe(const data::Tokenizer& t) {
  return fmt::format("{} tokenizer with {} tokens (bos {}, eos {})", t.kind(), t.vocab_size(), t.bos_id(), t.eos_id());
}

/// Throws when the teacher's tokenizer is not the data's (the silent failure of distilling on other ids).
void check_same_tokenizer(const std::string& who, const data::Tokenizer& teacher, const data::Tokenizer& data) {
  const std::string diff = data::compare_vocabularies(teacher, data);
  if (!diff.empty())
    throw std::runtime_error(fmt::format(
        "{} uses a {} but the data was tokenized with a {}: {}. The student must be trained on data tokenized with "
        "the teacher's tokenizer: set data.tokenizer: teacher (or the teacher's directory) and prepare the data again",
        who, describe(teacher), describe(data), diff));
}

}  // namespace

std::string teacher_tokenizer_path(const std::string& teacher) {
  if (teacher.empty())
    throw std::runtime_error("data.tokenizer: teacher, but distill.teacher is empty");
  if (fs::exists(fs::path(teacher) / "config.json")) return teacher;  // Hugging Face directory
  std::optional<std::string> ck =
      fs::exists(fs::path(teacher) / "COMPLETE") ? std::optional<std::string>(teacher) : latest_checkpoint(teacher);
  if (!ck)
    throw std::runtime_error("teacher " + teacher + ": neither a Hugging Face directory (config.json) nor a bitforge "
                             "checkpoint (step-*/ with COMPLETE)");
  for (const char* name : {"tokenizer.model", "tokenizer.bin"})
    if (fs::exists(fs::path(*ck) / name)) return (fs::path(*ck) / name).string();
  throw std::runtime_error("teacher checkpoint " + *ck + " holds no tokenizer file");
}

Transformer load_teacher(const std::string& path, const data::Tokenizer& tokenizer, const torch::Device& device,
                         ModelConfig* teacher_shape) {
  Transformer teacher{nullptr};
  if (fs::exists(fs::path(path) / "config.json")) {
    QuantConfig fp;
    fp.weight = WeightQuantizer::none;
    HfCheckpoint info;
    teacher = load_hf_model(path, fp, &info);
    std::unique_ptr<data::Tokenizer> own;
    try {
      own = data::load_tokenizer(path);
    } catch (const std::exception& e) {
      throw std::runtime_error(fmt::format(
          "teacher {}: cannot read its tokenizer ({}); distillation needs the teacher's own tokenizer to check that the "
          "student's data uses it (data.tokenizer: teacher)", path, e.what()));
    }
    check_same_tokenizer("teacher " + path, *own, tokenizer);
    if (info.model.vocab_size < tokenizer.vocab_size())
      throw std::runtime_error(fmt::format(
          "teacher {} has vocab_size {} but the data's tokenizer has {} tokens: the student must use the teacher's "
          "tokenizer", path, info.model.vocab_size, tokenizer.vocab_size()));
  } else {
    auto lm = load_model(path);
    check_same_tokenizer("teacher " + lm.checkpoint_dir, *lm.tokenizer, tokenizer);
    if (lm.config.quant.enabled())
      spdlog::warn("teacher {} is itself quantized ({}); distilling from it anyway", lm.checkpoint_dir, "quant.weight");
    teacher = lm.model;
  }
  if (teacher_shape) *teacher_shape = teacher->config();
  for (auto& p : teacher->parameters()) p.set_requires_grad(false);
  teacher->eval();
  if (device.is_cuda())
    teacher->to(device, torch::kBFloat16);  // frozen teacher in bf16 on GPU
  else
    teacher->to(device);
  return teacher;
}

DistillResult run_distillation(const Config& cfg_in, const std::string& teacher_path, const std::string& out_dir,
                               const std::string& train_shard, const std::string& val_shard,
                               std::shared_ptr<data::Tokenizer> tokenizer) {
  torch::Device device = select_device(cfg_in.train);
  if (auto dist = Distributed::get(cfg_in.train.distributed_backend, cfg_in.train.distributed_timeout_s, device))
    device = dist->device();  // the teacher on this rank's GPU
  ModelConfig shape;
  Transformer teacher = load_teacher(teacher_path, *tokenizer, device, &shape);
  Config cfg = cfg_in;
  cfg.model = shape;  // the student takes the teacher's shape
  const DistillConfig d = cfg.distill;
  spdlog::info("[distill] teacher {} ({} parameters) → {} student; loss = {}·CE + {}·T²·{}(T={}){}{}", teacher_path,
               teacher->num_parameters(), cfg.quant.weight == WeightQuantizer::binary ? "binary" : "ternary",
               d.alpha_ce, d.alpha_kd,
               d.kd_loss == KdLoss::forward_kl ? "KL" : d.kd_loss == KdLoss::reverse_kl ? "reverse-KL" : "JSD",
               d.temperature, d.alpha_hidden > 0 ? fmt::format(" + {}·hidden", d.alpha_hidden) : "",
               d.alpha_attn > 0 ? fmt::format(" + {}·attention relations", d.alpha_attn) : "");

  ForwardRequest req;
  req.logits = true;
  req.hidden_layers = d.alpha_hidden > 0 ? d.hidden_layers : std::vector<int64_t>{};
  if (d.alpha_attn > 0) req.qkv_layer = d.attn_layer;
  const int64_t rel_heads = d.attn_relation_heads > 0 ? d.attn_relation_heads : shape.num_attention_heads;

  TrainSpec spec;
  spec.stage = "distill";
  spec.output_dir = out_dir;
  spec.train_shard = train_shard;
  spec.val_shard = val_shard;
  spec.tokenizer = tokenizer;
  spec.config = cfg;
  spec.loss = [&](Transformer& student, const torch::Tensor& input, const torch::Tensor& labels,
                  std::map<std::string, double>& parts) {
    ModelOutputs t;
    {
      torch::NoGradGuard ng;
      t = teacher->forward_with(input, req);
    }
    ModelOutputs s = student->forward_with(input, req);
    auto s_logits = s.logits.to(torch::kFloat), t_logits = t.logits.to(torch::kFloat);
    torch::Tensor loss = torch::zeros({}, s_logits.options());
    if (d.alpha_ce > 0) {
      auto ce = token_cross_entropy(s_logits, labels);
      parts["ce"] = ce.item<double>();
      loss = loss + d.alpha_ce * ce;
    }
    if (d.alpha_kd > 0) {
      auto kd = kd_loss(s_logits, t_logits, d.kd_loss, d.temperature, d.beta);
      parts["kd"] = kd.item<double>();
      loss = loss + d.alpha_kd * kd;
    }
    if (d.alpha_hidden > 0) {
      torch::Tensor h = torch::zeros({}, s_logits.options());
      for (size_t i = 0; i < s.hidden.size(); ++i)
        h = h + hidden_state_loss(s.hidden[i].to(torch::kFloat), t.hidden[i].to(torch::kFloat), d.hidden_loss);
      h = h / static_cast<double>(s.hidden.size());
      parts["hidden"] = h.item<double>();
      loss = loss + d.alpha_hidden * h;
    }
    if (d.alpha_attn > 0) {
      auto rel = attention_relation_loss({s.q.to(torch::kFloat), s.k.to(torch::kFloat), s.v.to(torch::kFloat)},
                                         {t.q.to(torch::kFloat), t.k.to(torch::kFloat), t.v.to(torch::kFloat)},
                                         rel_heads);
      parts["attn"] = rel.item<double>();
      loss = loss + d.alpha_attn * rel;
    }
    return loss;
  };
  if (d.student_init == StudentInit::teacher) {
    spec.init = [&](Transformer& student) {
      torch::NoGradGuard ng;
      auto tp = teacher->named_parameters();
      int64_t copied = 0;
      for (auto& p : student->named_parameters()) {
        if (const auto* src = tp.find(p.key())) {
          p.value().copy_(src->to(p.value().device(), p.value().scalar_type()));
          ++copied;
        }
      }
      student->reset_quantizer_state();  // scales from absmean of the teacher's weights, magnitude anchors
      if (cfg.quant.enabled() && cfg.quant.anchor_fraction > 0 &&
          cfg.quant.anchor_selection == AnchorSelection::saliency && d.calibration_batches > 0) {
        data::SequentialLoader calib(train_shard, cfg.train.per_device_train_batch_size, cfg.train.seq_len,
                                     d.calibration_batches);
        auto bls = student->bit_linears();
        for (auto& bl : bls) bl->set_calibrating(true);
        for (int64_t i = 0; i < calib.num_batches(); ++i) {
          const auto ids = calib.batch(i);
          auto tt = torch::from_blob(const_cast<int32_t*>(ids.data()), {calib.rows(i), cfg.train.seq_len + 1},
                                     torch::kInt)
                        .to(torch::kLong);
          student->forward(tt.slice(1, 0, cfg.train.seq_len).contiguous().to(device));
        }
        for (auto& bl : bls) {
          bl->set_calibrating(false);
          bl->select_anchors();
        }
        spdlog::info("[distill] anchors chosen by saliency |w|·‖x‖ on {} calibration batches", calib.num_batches());
      }
      for (auto& bl : student->bit_linears()) bl->restore_step(0);
      spdlog::info("[distill] student initialised from the teacher ({} tensors copied)", copied);
    };
  }

  DistillResult r;
  r.train = train(spec);
  if (auto dist = Distributed::current(); dist && !dist->is_main()) return r;  // rank 0 evaluates and reports
  data::SequentialLoader val = validation_loader(cfg, val_shard);
  auto student = load_model(r.train.checkpoint_dir);
  student.model->to(device);
  r.teacher = evaluate(teacher, val, 0, device);
  r.student = evaluate(student.model, val, 0, device);
  auto cmp = compare_models(teacher, student.model, val, 0, device);
  r.kl = cmp.kl;
  r.top1 = cmp.top1;
  nlohmann::json rep{{"teacher", teacher_path},
                     {"teacher_val_perplexity", r.teacher.perplexity},
                     {"student_val_perplexity", r.student.perplexity},
                     {"kl_teacher_student_per_token", r.kl},
                     {"top1_agreement", r.top1},
                     {"tokens", r.train.tokens},
                     {"steps", r.train.steps},
                     {"student_init", d.student_init == StudentInit::teacher ? "teacher" : "scratch"},
                     {"eval_tokens", r.student.tokens},
                     {"eval_coverage", r.student.coverage},
                     {"eval", val.describe()},
                     {"checkpoint", r.train.checkpoint_dir}};
  std::ofstream((fs::path(out_dir) / "report.json").string()) << rep.dump(2) << "\n";
  spdlog::info("[distill] teacher ppl {:.2f} | student ppl {:.2f} | KL(teacher‖student) {:.4f}/token | top-1 {:.1f}% "
               "({})",
               r.teacher.perplexity, r.student.perplexity, r.kl, 100 * r.top1, val.describe());
  return r;
}

}  // namespace bitforge
