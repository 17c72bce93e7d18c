// The subcommands of the `bitforge` executable: each parses nothing (main.cpp does), calls one pipeline function
// (pipeline/pipeline.h) and prints its result. Each returns a process exit code and throws on errors (main prints
// them without a stack trace and maps them to exit codes 1 and 2).
#pragma once

#include <cstdint>
#include <string>

#include "pipeline/pipeline.h"

namespace bitforge::cli {

using pipeline::RunContext;

int cmd_run(RunContext& ctx);
int cmd_prepare_data(RunContext& ctx);
int cmd_train(RunContext& ctx);
int cmd_distill(RunContext& ctx);
int cmd_export(RunContext& ctx, const std::string& checkpoint, const std::string& output);
int cmd_eval(RunContext& ctx, const std::string& model_path, const std::string& reference, bool json,
             int activation_bits = 0);
/// eval --text FILE: perplexity of a text file (pipeline::evaluate_text).
int cmd_eval_text(RunContext& ctx, const std::string& model_path, const std::string& text_file, int64_t stride, bool json,
                  int activation_bits = 0);
int cmd_generate(RunContext& ctx, const std::string& model_path, const std::string& prompt,
                 const runtime::GenerationOptions& options, int activation_bits = 0);
int cmd_inspect(const std::string& path, bool json);

}  // namespace bitforge::cli
