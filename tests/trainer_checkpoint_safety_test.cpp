// Issue #21 items 1, 5 and 8 (checkpoint side): a damaged newest checkpoint never blocks a resume or an eval
// (fallback to the previous intact one), stale temporaries are removed, every checkpoint file is checksummed and
// verified on load, and a trainer_state.json that is not an object is reported with its file name.
#include <gtest/gtest.h>

#include <signal.h>
#include <sys/wait.h>
#include <torch/torch.h>
#include <unistd.h>

#define XXH_INLINE_ALL
#include <xxhash.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "data/prepare.h"
#include "trainer/checkpoint.h"
#include "trainer/train.h"
#include "tests/fixtures/trainer/tiny_run.h"

namespace fs = std::filesystem;
using namespace bitforge;

namespace {

std::string temp_dir(const std::string& name) { return bitforge::testing::tiny_temp_dir("ckptsafe", name); }
const bitforge::testing::TinyData& tiny() { return bitforge::testing::tiny_data("ckptsafe"); }

Config tiny_config(const std::string& out, int64_t steps) {
  Config c = bitforge::testing::tiny_config(tiny(), out, steps, /*layers=*/1);
  c.quant.anchor_freeze_step = 6;
  c.train.warmup_steps = 1;
  c.train.save_total_limit = 2;
  return c;
}

TrainSpec tiny_spec(const Config& c, const std::string& out) { return bitforge::testing::tiny_spec(tiny(), c, out); }

std::string slurp(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

/// After editing a file inside a checkpoint on purpose, records its new size and hash in the manifest (when the
/// checkpoint has one), so that the test reaches the check behind the checksum.
void reseal(const fs::path& ckpt, const std::string& file) {
  nlohmann::json m = nlohmann::json::parse(slurp(ckpt / "COMPLETE"), nullptr, false);
  if (m.is_discarded() || !m.is_object() || !m.contains("files")) return;
  const std::string bytes = slurp(ckpt / file);
  char hex[17];
  std::snprintf(hex, sizeof hex, "%016llx", static_cast<unsigned long long>(XXH3_64bits(bytes.data(), bytes.size())));
  m["files"][file]["bytes"] = bytes.size();
  m["files"][file]["xxh3"] = hex;
  std::ofstream(ckpt / "COMPLETE", std::ios::trunc) << m.dump(2);
}

std::vector<std::string> entries(const fs::path& d) {
  std::vector<std::string> v;
  for (auto& e : fs::directory_iterator(d)) v.push_back(e.path().filename().string());
  std::sort(v.begin(), v.end());
  return v;
}

}  // namespace

// Item 1: a kill while the old code re-saved step N (or pruned) left step-N/ with COMPLETE but without
// optimizer.safetensors; `auto` resume must fall back to the previous intact checkpoint instead of failing.
TEST(CheckpointSafety, AutoResumeFallsBackPastADamagedNewestCheckpoint) {
  const std::string d = temp_dir("fallback");
  auto full = train(tiny_spec(tiny_config(d, 8), d));
  const fs::path ck = fs::path(d) / "checkpoints";
  ASSERT_TRUE(fs::exists(ck / "step-0000004"));
  ASSERT_TRUE(fs::exists(ck / "step-0000008"));
  fs::remove(ck / "step-0000008" / "optimizer.safetensors");  // what the kill left behind
  auto cfg = tiny_config(d, 8);
  cfg.train.resume_from_checkpoint = "auto";
  TrainResult r;
  ASSERT_NO_THROW(r = train(tiny_spec(cfg, d)));
  EXPECT_EQ(r.losses.size(), 4u);  // resumed at step 4, re-ran 5..8
  for (size_t i = 0; i < r.losses.size(); ++i) EXPECT_EQ(r.losses[i], full.losses[4 + i]);
  EXPECT_EQ(r.val.loss, full.val.loss);
  // The damaged step-8 has been replaced by an intact one.
  Transformer m(cfg.model, cfg.quant);
  EXPECT_NO_THROW(load_checkpoint((ck / "step-0000008").string(), m, nullptr));
}

// Item 1: eval -m <checkpoints dir> falls back too.
TEST(CheckpointSafety, LoadModelFallsBackPastADamagedNewestCheckpoint) {
  const std::string d = temp_dir("fallback_eval");
  train(tiny_spec(tiny_config(d, 8), d));
  const fs::path ck = fs::path(d) / "checkpoints";
  fs::remove(ck / "step-0000008" / "tokenizer.bin");
  LoadedModel lm;
  ASSERT_NO_THROW(lm = load_model(ck.string()));
  EXPECT_EQ(lm.step, 4);
}

// Item 1: temporaries left by killed writers (step-N.tmp-PID/, 38 MB each in the report) are removed at start.
TEST(CheckpointSafety, StaleTemporariesAreRemovedAtStart) {
  const std::string d = temp_dir("stale");
  train(tiny_spec(tiny_config(d, 4), d));
  const fs::path ck = fs::path(d) / "checkpoints";
  pid_t dead = fork();
  if (dead == 0) _exit(0);
  ASSERT_GT(dead, 0);
  waitpid(dead, nullptr, 0);  // a process id that no longer runs
  const std::string stale = "step-0000008.tmp-" + std::to_string(dead);
  fs::create_directories(ck / stale);
  std::ofstream(ck / stale / "model.safetensors") << std::string(1 << 20, 'x');
  auto cfg = tiny_config(d, 8);
  cfg.train.resume_from_checkpoint = "auto";
  train(tiny_spec(cfg, d));
  for (const auto& n : entries(ck)) EXPECT_EQ(n.find(".tmp-"), std::string::npos) << n << " was left behind";
  EXPECT_EQ(entries(ck), (std::vector<std::string>{"step-0000004", "step-0000008"}));
}

// Item 5: flipped bytes in model.safetensors are detected on load (they evaluated with exit 0 before).
TEST(CheckpointSafety, FlippedBytesInAnyCheckpointFileAreDetected) {
  const std::string d = temp_dir("flip");
  auto r = train(tiny_spec(tiny_config(d, 2), d));
  for (const char* file : {"model.safetensors", "optimizer.safetensors"}) {
    const fs::path f = fs::path(r.checkpoint_dir) / file;
    const std::string orig = slurp(f);
    std::string bytes = orig;
    bytes[bytes.size() - 100] ^= 0x01;
    bytes[bytes.size() - 37] ^= 0x40;
    std::ofstream(f, std::ios::binary | std::ios::trunc) << bytes;
    Transformer m(tiny_config(d, 2).model, tiny_config(d, 2).quant);
    try {
      load_checkpoint(r.checkpoint_dir, m, nullptr);
      if (std::string(file) == "model.safetensors") ADD_FAILURE() << "corrupt " << file << " was loaded";
      else {
        LoadedModel lm = load_model(r.checkpoint_dir);
        ADD_FAILURE() << "corrupt " << file << " was loaded";
      }
    } catch (const CheckpointError& e) {
      EXPECT_NE(std::string(e.what()).find(file), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("checksum"), std::string::npos) << e.what();
    }
    std::ofstream(f, std::ios::binary | std::ios::trunc) << orig;
  }
  Transformer m(tiny_config(d, 2).model, tiny_config(d, 2).quant);
  EXPECT_NO_THROW(load_checkpoint(r.checkpoint_dir, m, nullptr));
}

// Item 8: trainer_state.json that is valid JSON but not an object: a CheckpointError naming the file (was a bare
// json.exception.type_error.306).
TEST(CheckpointSafety, TrainerStateThatIsNotAnObjectNamesTheFile) {
  const std::string d = temp_dir("state");
  auto r = train(tiny_spec(tiny_config(d, 2), d));
  std::ofstream(fs::path(r.checkpoint_dir) / "trainer_state.json", std::ios::trunc) << "[1, 2, 3]\n";
  reseal(r.checkpoint_dir, "trainer_state.json");
  try {
    load_model(r.checkpoint_dir);
    FAIL() << "a trainer_state.json array was accepted";
  } catch (const CheckpointError& e) {
    EXPECT_NE(std::string(e.what()).find("trainer_state.json"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("object"), std::string::npos) << e.what();
  }
}

// Item 8: a byte-tokenizer checkpoint (vocab 258) loads for eval/export (its config.yaml failed the >= 259 check).
TEST(CheckpointSafety, ByteTokenizerCheckpointLoads) {
  const std::string d = temp_dir("byte");
  auto r = train(tiny_spec(tiny_config(d, 2), d));
  LoadedModel lm;
  ASSERT_NO_THROW(lm = load_model(r.checkpoint_dir));
  EXPECT_EQ(lm.config.model.vocab_size, 258);
  EXPECT_EQ(lm.tokenizer->vocab_size(), 258);
}

namespace {
pid_t dead_pid() {
  pid_t p = fork();
  if (p == 0) _exit(0);
  waitpid(p, nullptr, 0);
  return p;
}
void make_ckpt(const fs::path& d, const std::string& payload) {
  fs::create_directories(d);
  std::ofstream(d / "model.safetensors", std::ios::binary) << payload;
  ckpt::write_manifest(d.string(), {"model.safetensors"}, 4);
}
}  // namespace

// Item 1, the replacement itself: re-saving a step swaps directories (RENAME_EXCHANGE, or the rename-aside
// fallback), never deleting the old copy before the new one is in place; leftovers of a kill are cleaned or restored.
TEST(CheckpointSafety, ReplacementIsAtomicAndInterruptedOnesAreRepaired) {
  for (const char* no_exchange : {"0", "1"}) {
    ::setenv("BITFORGE_NO_RENAME_EXCHANGE", no_exchange, 1);
    const fs::path d = temp_dir(std::string("publish") + no_exchange);
    make_ckpt(d / "step-0000004", "old");
    make_ckpt(d / "step-0000004.tmp-1", "new");
    ckpt::publish_directory((d / "step-0000004.tmp-1").string(), (d / "step-0000004").string());
    EXPECT_EQ(slurp(d / "step-0000004" / "model.safetensors"), "new");
    EXPECT_NO_THROW(ckpt::verify_checkpoint_files((d / "step-0000004").string()));
    EXPECT_EQ(entries(d), (std::vector<std::string>{"step-0000004"}));
  }
  ::unsetenv("BITFORGE_NO_RENAME_EXCHANGE");
  // A kill between "old aside" and "new in": the old copy is put back under its name; other leftovers removed.
  const fs::path d = temp_dir("repair");
  const pid_t dead = dead_pid();
  make_ckpt(d / ("step-0000004.old-" + std::to_string(dead)), "old");
  make_ckpt(d / ("step-0000006.tmp-" + std::to_string(dead)), "partial");
  make_ckpt(d / ("step-0000002.del-" + std::to_string(dead)), "doomed");
  EXPECT_EQ(ckpt::clean_stale_temporaries(d.string()), 3);
  EXPECT_EQ(entries(d), (std::vector<std::string>{"step-0000004"}));
  EXPECT_EQ(slurp(d / "step-0000004" / "model.safetensors"), "old");
  // A writer that still runs (this process's parent) keeps its temporary.
  make_ckpt(d / ("step-0000008.tmp-" + std::to_string(::getppid())), "busy");
  EXPECT_EQ(ckpt::clean_stale_temporaries(d.string()), 0);
}

// Item 1/5: when every checkpoint is damaged, `auto` does not silently start over (and later prune them).
TEST(CheckpointSafety, AutoResumeRefusesToStartFreshOverDamagedCheckpoints) {
  const std::string d = temp_dir("alldamaged");
  auto r = train(tiny_spec(tiny_config(d, 4), d));
  const fs::path f = fs::path(r.checkpoint_dir) / "model.safetensors";
  std::string bytes = slurp(f);
  bytes[bytes.size() - 5] ^= 0x7f;
  std::ofstream(f, std::ios::binary | std::ios::trunc) << bytes;
  auto cfg = tiny_config(d, 8);
  cfg.train.resume_from_checkpoint = "auto";
  try {
    train(tiny_spec(cfg, d));
    FAIL() << "started fresh over a damaged checkpoint";
  } catch (const CheckpointError& e) {
    EXPECT_NE(std::string(e.what()).find("every checkpoint is damaged"), std::string::npos) << e.what();
  }
  EXPECT_TRUE(fs::exists(r.checkpoint_dir));  // left for the user to inspect
}
