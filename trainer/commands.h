// The subcommands of the `bitforge` executable, one function each; main.cpp only parses the command line.
// Each returns a process exit code and throws on errors (main prints them without a stack trace).
#pragma once

#include <string>
#include <vector>

#include "trainer/config.h"

namespace bitforge {

/// Options common to every subcommand.
struct CommandContext {
  Config config;
  std::string config_path;  ///< "" when the defaults are used
  std::string run_dir;      ///< <run.output_dir>/<run.name>, created on demand
};

int cmd_run(CommandContext& ctx);
int cmd_prepare_data(CommandContext& ctx);
int cmd_train(CommandContext& ctx);
int cmd_distill(CommandContext& ctx);
int cmd_export(CommandContext& ctx, const std::string& checkpoint, const std::string& output);
int cmd_eval(CommandContext& ctx, const std::string& model_path, const std::string& reference, bool json,
             int activation_bits = 0);
int cmd_generate(CommandContext& ctx, const std::string& model_path, const std::string& prompt, int64_t max_new_tokens,
                 double temperature, int64_t top_k, double top_p, uint64_t seed, int activation_bits = 0);
int cmd_inspect(const std::string& path, bool json);

}  // namespace bitforge
