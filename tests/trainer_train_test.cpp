// Training loop: exact resume (bit-identical loss sequence), interrupted checkpoints never loaded, corrupt
// checkpoints rejected with a clear error, the non-finite guard, LR schedules. Tiny model, byte tokenizer.
#include <gtest/gtest.h>

#include <torch/torch.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "data/prepare.h"
#include "trainer/checkpoint.h"
#include "trainer/losses.h"
#include "trainer/train.h"
#include "tests/fixtures/trainer/tiny_run.h"

namespace fs = std::filesystem;
using namespace bitforge;

namespace {

std::string temp_dir(const std::string& name) { return bitforge::testing::tiny_temp_dir("train", name); }
const bitforge::testing::TinyData& tiny() { return bitforge::testing::tiny_data("train"); }

Config tiny_config(const std::string& out) {
  Config c = bitforge::testing::tiny_config(tiny(), out, /*steps=*/12, /*layers=*/2);
  c.quant.anchor_freeze_step = 9;
  c.train.gradient_accumulation_steps = 2;
  c.train.warmup_steps = 2;
  return c;
}

TrainSpec tiny_spec(const Config& c, const std::string& out) { return bitforge::testing::tiny_spec(tiny(), c, out); }

}  // namespace

TEST(Train, ResumeGivesBitIdenticalLossSequence) {
  const std::string a = temp_dir("uninterrupted"), b = temp_dir("resumed");
  auto full = train(tiny_spec(tiny_config(a), a));
  ASSERT_EQ(full.losses.size(), 12u);

  // Killed after 6 steps (the last checkpoint is at step 4), then resumed with resume_from_checkpoint: auto.
  auto spec = tiny_spec(tiny_config(b), b);
  spec.on_step_end = [](const StepInfo& s) {  // a kill after 6 steps, through the public callback
    if (s.steps_this_run >= 6) throw std::runtime_error("simulated kill");
  };
  EXPECT_THROW(train(spec), std::runtime_error);
  auto cfg = tiny_config(b);
  cfg.train.resume_from_checkpoint = "auto";
  auto resumed = train(tiny_spec(cfg, b));
  ASSERT_EQ(resumed.losses.size(), 8u);  // steps 5..12
  for (size_t i = 0; i < resumed.losses.size(); ++i)
    EXPECT_EQ(resumed.losses[i], full.losses[4 + i]) << "step " << 5 + i;  // bit-identical, not approximate
  EXPECT_EQ(resumed.val.loss, full.val.loss);
}

TEST(Train, InterruptedCheckpointIsNeverLoaded) {
  const std::string d = temp_dir("interrupted");
  auto cfg = tiny_config(d);
  cfg.train.max_steps = 4;
  train(tiny_spec(cfg, d));
  const auto ck = fs::path(d) / "checkpoints";
  // Simulate a write interrupted after the data but before the COMPLETE marker, at a later step.
  fs::create_directories(ck / "step-0000008");
  fs::copy_file(ck / "step-0000004" / "model.safetensors", ck / "step-0000008" / "model.safetensors");
  fs::create_directories(ck / "step-0000009.tmp-123");
  auto latest = latest_checkpoint(ck.string());
  ASSERT_TRUE(latest.has_value());
  EXPECT_EQ(fs::path(*latest).filename(), "step-0000004");
  Transformer m(cfg.model, cfg.quant);
  try {
    load_checkpoint((ck / "step-0000008").string(), m, nullptr);
    FAIL() << "an incomplete checkpoint was loaded";
  } catch (const CheckpointError& e) {
    EXPECT_NE(std::string(e.what()).find("incomplete checkpoint"), std::string::npos) << e.what();
  }
}

TEST(Train, CorruptCheckpointGivesClearError) {
  const std::string d = temp_dir("corrupt");
  auto cfg = tiny_config(d);
  cfg.train.max_steps = 2;
  auto r = train(tiny_spec(cfg, d));
  const auto model_file = fs::path(r.checkpoint_dir) / "model.safetensors";
  fs::resize_file(model_file, fs::file_size(model_file) / 2);  // truncated
  Transformer m(cfg.model, cfg.quant);
  try {
    load_checkpoint(r.checkpoint_dir, m, nullptr);
    FAIL();
  } catch (const CheckpointError& e) {
    EXPECT_NE(std::string(e.what()).find("corrupt checkpoint"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("model.safetensors"), std::string::npos) << e.what();
  }
  // A checkpoint of another model shape: names the tensor and both shapes.
  auto cfg2 = tiny_config(d);
  cfg2.train.max_steps = 2;
  const std::string d2 = temp_dir("corrupt2");
  auto r2 = train(tiny_spec(cfg2, d2));
  auto other = cfg.model;
  other.intermediate_size = 96;
  Transformer m2(other, cfg.quant);
  try {
    load_checkpoint(r2.checkpoint_dir, m2, nullptr);
    FAIL();
  } catch (const CheckpointError& e) {
    EXPECT_NE(std::string(e.what()).find("but the model expects"), std::string::npos) << e.what();
  }
}

TEST(Train, NonFiniteGuardStopsBeforeTheOptimizerStepOrSkips) {
  const std::string d = temp_dir("nan");
  auto cfg = tiny_config(d);
  cfg.train.max_steps = 5;
  cfg.train.save_steps = 0;
  auto spec = tiny_spec(cfg, d);
  // The loss of optimizer step 3 (0-based step 2: all its micro-batches) is NaN, through the public loss hook.
  const int64_t accum = cfg.train.gradient_accumulation_steps;
  auto nan_at_step_2 = [accum]() {
    return LossFn([accum, calls = std::make_shared<int64_t>(0)](Transformer& model, const torch::Tensor& input,
                                                                 const torch::Tensor& labels,
                                                                 std::map<std::string, double>&) {
      auto loss = token_cross_entropy(model->forward(input), labels);
      return (*calls)++ / accum == 2 ? loss * std::numeric_limits<float>::quiet_NaN() : loss;
    });
  };
  spec.loss = nan_at_step_2();
  try {
    train(spec);
    FAIL() << "a NaN loss did not stop training";
  } catch (const NonFiniteError& e) {
    EXPECT_NE(std::string(e.what()).find("step 3: the loss is not finite"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(latest_checkpoint(d + "/checkpoints").has_value());  // nothing was saved from a poisoned state
  spec.config.train.on_nonfinite = NonFinitePolicy::skip;
  spec.loss = nan_at_step_2();
  auto r = train(spec);
  EXPECT_EQ(r.skipped_steps, 1);
  EXPECT_EQ(r.losses.size(), 4u);
  for (double l : r.losses) EXPECT_TRUE(std::isfinite(l));
}

TEST(Train, LrSchedules) {
  TrainConfig t;
  t.max_steps = 100;
  t.warmup_steps = 10;
  t.learning_rate = 1.0;
  t.min_lr_ratio = 0.1;
  EXPECT_DOUBLE_EQ(lr_at(t, 0), 0.1);
  EXPECT_DOUBLE_EQ(lr_at(t, 9), 1.0);
  t.lr_scheduler = LrScheduler::cosine;
  EXPECT_NEAR(lr_at(t, 10), 1.0, 1e-12);
  EXPECT_NEAR(lr_at(t, 55), 0.55, 1e-12);
  EXPECT_NEAR(lr_at(t, 100), 0.1, 1e-12);
  t.lr_scheduler = LrScheduler::linear;
  EXPECT_NEAR(lr_at(t, 55), 0.55, 1e-12);
  t.lr_scheduler = LrScheduler::constant;
  EXPECT_DOUBLE_EQ(lr_at(t, 80), 1.0);
  t.lr_scheduler = LrScheduler::two_stage;
  EXPECT_NEAR(lr_at(t, 49) / lr_at(t, 50), 1.5, 0.05);  // the halfway drop to 2/3 (plus the cosine slope)
  EXPECT_DOUBLE_EQ(weight_decay_at(t, 49), t.weight_decay);
  EXPECT_DOUBLE_EQ(weight_decay_at(t, 50), 0.0);
}
