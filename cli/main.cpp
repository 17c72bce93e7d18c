// bitforge: train, distill, export and run 1-bit language models. Command-line front end (CLI11).
#include <ATen/Parallel.h>
#include <c10/util/Exception.h>
#include <CLI/CLI.hpp>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <iostream>

#include <unistd.h>

#include "cli/commands.h"
#include "trainer/distributed.h"
#include "trainer/logging.h"
#include "config/memory_estimate.h"

namespace {

/// OpenMP (the libgomp LibTorch's CPU kernels run on) reads its wait policy once, when the library loads, before
/// main(). Its default lets idle workers spin after every parallel region (GOMP_SPINCOUNT 300,000 polls); beside
/// another job on the same cores those spinning threads compete with the ones that have work, and decoding the
/// default model on 2 cores fell from 3,000 to 63 tokens/s (issue #16). Unless the user chose a policy
/// (OMP_WAIT_POLICY or GOMP_SPINCOUNT set), bitforge re-executes itself once with OMP_WAIT_POLICY=passive: idle
/// workers sleep at once, as llama.cpp's threads do after a short poll, so `-t` can stay "all cores" and still
/// degrade gracefully under load (README "Threads" has the measurements). If the re-exec fails, the run goes on
/// with the default policy. Called after parsing, for the commands that compute: the re-exec loads LibTorch a
/// second time (~0.5 s).
void prefer_passive_openmp_wait(char** argv) {
  if (std::getenv("OMP_WAIT_POLICY") || std::getenv("GOMP_SPINCOUNT")) return;
  if (::setenv("OMP_WAIT_POLICY", "passive", 1) != 0) return;
  ::execv("/proc/self/exe", argv);  // returns only on failure
}

struct Common {
  std::string config_path;
  std::vector<std::string> overrides;
  std::string log_level;
  int threads = 0;
};

void add_common(CLI::App* sub, Common& c, bool config_positional = false) {
  if (config_positional)
    sub->add_option("config", c.config_path, "YAML config file (same as --config)")->check(CLI::ExistingFile);
  sub->add_option("-c,--config", c.config_path, "YAML config file (defaults apply to keys it leaves out)");
  sub->add_option("-s,--set", c.overrides, "Override a config key: --set section.key=value (repeatable)")
      ->allow_extra_args(false)
      ->take_all();
  sub->add_option("--log-level", c.log_level, "trace | debug | info | warn | error (default: logging.level)");
  sub->add_option("-t,--threads", c.threads, "CPU threads for training and the packed kernels (same as --set "
                                             "train.threads=N; 0 = all cores, which stays fast beside other jobs: "
                                             "idle OpenMP workers sleep instead of spinning)")
      ->check(CLI::Range(0, 4096));
}

/// --nproc-per-node for the training commands (built-in launcher, trainer/distributed.h).
void add_nproc(CLI::App* sub, int& nproc) {
  sub->add_option("--nproc-per-node", nproc,
                  "data-parallel training: start N local ranks (Gloo on CPU, NCCL on CUDA), like torchrun "
                  "--nproc-per-node N")
      ->check(CLI::Range(1, 1024));
}

/// argv without --nproc-per-node N / --nproc-per-node=N: what each launched rank runs.
std::vector<std::string> args_without_nproc(int argc, char** argv) {
  std::vector<std::string> out;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--nproc-per-node") {
      ++i;
      continue;
    }
    if (a.rfind("--nproc-per-node=", 0) == 0) continue;
    out.push_back(a);
  }
  return out;
}

/// --activation-bits for the packed runtime's int8 speed mode (eval, generate).
void add_activation_bits(CLI::App* sub, int& bits) {
  sub->add_option("--activation-bits", bits,
                  "packed model: 8 = run A16 layers with per-token int8 activations (llama.cpp-like speed mode)")
      ->check(CLI::IsMember({0, 8}));
}

bitforge::cli::RunContext make_context(const Common& c) {
  bitforge::cli::RunContext ctx;
  ctx.config_path = c.config_path;
  auto overrides = c.overrides;
  if (c.threads > 0) overrides.push_back("train.threads=" + std::to_string(c.threads));
  ctx.config = c.config_path.empty() ? bitforge::parse_config("", "(defaults)", overrides)
                                     : bitforge::load_config(c.config_path, overrides);
  if (ctx.config.train.threads > 0) at::set_num_threads(static_cast<int>(ctx.config.train.threads));
  bitforge::set_skip_memory_check(ctx.config.train.skip_memory_check);  // packed runtime, checkpoint loads
  bitforge::set_log_level(c.log_level.empty() ? ctx.config.logging.level : c.log_level);
  ctx.run_dir = (std::filesystem::path(ctx.config.run.output_dir) / ctx.config.run.name).string();
  return ctx;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"bitforge: quantization-aware training, distillation and deployment of 1-bit language models"};
  app.require_subcommand(1);
  app.option_defaults()->always_capture_default();  // --help shows every option's default
  app.set_version_flag("--version", "bitforge 0.1.0");
  Common common;

  auto* run = app.add_subcommand(
      "run", "Run the stages the config lists in run.stages, in order, in the run directory <run.output_dir>/<run.name>."
             " Stages: prepare-data (corpus → tokenizer → train/val token shards), teacher (full-precision model), "
             "train (QAT student from scratch), distill (1-bit student from the teacher), export (packed .safetensors "
             "+ GGUF), eval (every trained model on the same val windows; summary table and summary.json)");
  add_common(run, common, true);
  int nproc = 0;
  add_nproc(run, nproc);

  auto* prep = app.add_subcommand("prepare-data", "Corpus → tokenizer → train/val token shards");
  add_common(prep, common);

  auto* train = app.add_subcommand("train", "Train a model (QAT when quant.weight is binary/ternary, full precision "
                                            "when none)");
  add_common(train, common);
  add_nproc(train, nproc);

  auto* distill = app.add_subcommand("distill", "Distill a 1-bit student from a teacher (bitforge or Hugging Face "
                                                "checkpoint, distill.teacher)");
  add_common(distill, common);
  add_nproc(distill, nproc);

  std::string checkpoint, output;
  auto* exp = app.add_subcommand("export", "Checkpoint → packed native .safetensors and/or GGUF");
  add_common(exp, common);
  exp->add_option("--checkpoint", checkpoint, "checkpoint directory (default: the run's latest student)")
      ->check(CLI::ExistingPath);
  exp->add_option("-o,--output", output, "output directory (default: <run_dir>/export)");
  std::vector<std::string> formats;
  exp->add_option("--format", formats, "what to write besides the packed file: gguf, hf (a Hugging Face directory "
                                       "transformers loads), comma-separated; default: export.gguf / export.hf")
      ->delimiter(',')
      ->check(CLI::IsMember({"packed", "gguf", "hf"}));

  std::string model_path, reference;
  bool json = false;
  auto* ev = app.add_subcommand("eval", "Perplexity of a checkpoint or packed file; KL and top-1 agreement against "
                                        "a reference model");
  add_common(ev, common);
  ev->add_option("-m,--model", model_path,
                 "checkpoint directory, packed .safetensors, or (with --text) a Hugging Face model directory")
      ->required()
      ->check(CLI::ExistingPath);
  std::string text_file;
  int64_t stride = 0;
  ev->add_option("--text", text_file, "perplexity of this text file (tokenized with the model's tokenizer, sliding "
                                      "windows of eval.seq_len) instead of the validation split")
      ->check(CLI::ExistingFile);
  ev->add_option("--stride", stride, "--text: window stride in tokens (default: half of eval.seq_len)")
      ->check(CLI::NonNegativeNumber);
  ev->add_option("--reference", reference, "reference checkpoint for KL / top-1 agreement")->check(CLI::ExistingPath);
  ev->add_flag("--json", json, "print the result as JSON");
  int eval_act_bits = 0;
  add_activation_bits(ev, eval_act_bits);

  std::string prompt;
  int64_t max_new = 64, top_k = 0;
  double temperature = 0.0, top_p = 1.0;
  uint64_t seed = 0;
  auto* gen = app.add_subcommand("generate", "Generate text from a checkpoint or packed file (KV cache)");
  add_common(gen, common);
  gen->add_option("-m,--model", model_path, "checkpoint directory or packed .safetensors")
      ->required()
      ->check(CLI::ExistingPath);
  gen->add_option("-p,--prompt", prompt, "prompt text")->required();
  gen->add_option("-n,--max-new-tokens", max_new,
                  "tokens to generate (at most up to the model's context, max_position_embeddings; says so when it "
                  "stops there)")->check(CLI::Range(1, 1 << 20));
  gen->add_option("--temperature", temperature, "0 = greedy")->check(CLI::Range(0.0, 100.0));
  gen->add_option("--top-k", top_k, "0 = off")->check(CLI::NonNegativeNumber);
  gen->add_option("--top-p", top_p, "nucleus sampling, 1 = off")->check(CLI::Range(0.0, 1.0));
  int gen_act_bits = 0;
  add_activation_bits(gen, gen_act_bits);
  gen->add_option("--seed", seed, "sampling seed");

  std::string inspect_path;
  auto* insp = app.add_subcommand("inspect", "What a checkpoint / packed / GGUF file holds: tensors, types, bits per "
                                             "weight, sizes");
  insp->add_option("path", inspect_path, "file or checkpoint directory")->required()->check(CLI::ExistingPath);
  insp->add_flag("--json", json, "print as JSON");
  insp->add_option("--log-level", common.log_level, "log level");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    // --help / --version exit 0; every usage error exits 2, as the README promises (CLI11's own codes are 100+)
    return app.exit(e) == 0 ? 0 : 2;
  }

  try {
    if (insp->parsed()) {
      bitforge::set_log_level(common.log_level.empty() ? "info" : common.log_level);
      return bitforge::cli::cmd_inspect(inspect_path, json);
    }
    if (exp->parsed() && !formats.empty()) {  // --format replaces export.gguf / export.hf
      auto has = [&](const char* f) { return std::find(formats.begin(), formats.end(), f) != formats.end(); };
      common.overrides.push_back(std::string("export.gguf=") + (has("gguf") ? "true" : "false"));
      common.overrides.push_back(std::string("export.hf=") + (has("hf") ? "true" : "false"));
    }
    prefer_passive_openmp_wait(argv);  // the commands that compute (not --help, --version, inspect: ~0.5 s saved)
    auto ctx = make_context(common);
    if (nproc > 0 && (run->parsed() || train->parsed() || distill->parsed()))
      return bitforge::launch_local_ranks(nproc, args_without_nproc(argc, argv), ctx.config.train.distributed_timeout_s);
    if (run->parsed()) return bitforge::cli::cmd_run(ctx);
    if (prep->parsed()) return bitforge::cli::cmd_prepare_data(ctx);
    if (train->parsed()) return bitforge::cli::cmd_train(ctx);
    if (distill->parsed()) return bitforge::cli::cmd_distill(ctx);
    if (exp->parsed()) return bitforge::cli::cmd_export(ctx, checkpoint, output);
    if (ev->parsed() && !text_file.empty())
      return bitforge::cli::cmd_eval_text(ctx, model_path, text_file, stride, json, eval_act_bits);
    if (ev->parsed()) return bitforge::cli::cmd_eval(ctx, model_path, reference, json, eval_act_bits);
    if (gen->parsed()) {
      bitforge::runtime::GenerationOptions go;
      go.max_new_tokens = max_new;
      go.temperature = temperature;
      go.top_k = top_k;
      go.top_p = top_p;
      go.seed = seed;
      return bitforge::cli::cmd_generate(ctx, model_path, prompt, go, gen_act_bits);
    }
  } catch (const bitforge::ConfigError& e) {
    spdlog::error("config error: {}", e.what());
    return 2;
  } catch (const c10::Error& e) {  // LibTorch's message without its C++ stack trace
    spdlog::error("{}", e.what_without_backtrace());
    return 1;
  } catch (const std::exception& e) {
    spdlog::error("{}", e.what());
    return 1;
  }
  return 0;
}
