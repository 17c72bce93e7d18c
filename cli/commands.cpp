#include "cli/commands.h"

#include <spdlog/spdlog.h>

#include <cstdio>

#include <fmt/format.h>

namespace bitforge::cli {

int cmd_run(RunContext& ctx) {
  pipeline::run(ctx);
  return 0;
}

int cmd_prepare_data(RunContext& ctx) {
  pipeline::prepare_data_stage(ctx);
  return 0;
}

int cmd_train(RunContext& ctx) {
  pipeline::train_stage(ctx);
  return 0;
}

int cmd_distill(RunContext& ctx) {
  pipeline::distill_stage(ctx);
  return 0;
}

int cmd_export(RunContext& ctx, const std::string& checkpoint, const std::string& output) {
  pipeline::export_stage(ctx, checkpoint, output);
  return 0;
}

int cmd_eval(RunContext& ctx, const std::string& model_path, const std::string& reference, bool json,
             int activation_bits) {
  const auto j = pipeline::evaluate_model(ctx, model_path, reference, activation_bits);
  if (json) {
    std::printf("%s\n", j.dump(2).c_str());
    return 0;
  }
  const bool packed = j.value("packed", false);
  std::string extra;
  if (j.contains("kl"))
    extra = fmt::format("; KL(ref‖{}) {:.5f}, top-1 agreement {:.2f}%", packed ? "packed" : "model",
                        j["kl"].get<double>(), 100 * j["top1_agreement"].get<double>());
  if (packed)
    extra += fmt::format("; resident weights {} bytes (FP16 {})", j["resident_weight_bytes"].get<int64_t>(),
                         j["fp16_bytes"].get<int64_t>());
  const auto& u = j["unigram_val_perplexity"];
  spdlog::info("{}: val loss {:.4f}, perplexity {:.3f} over {} tokens (unigram {}){}; {}; val windows from {}",
               j["model"].get<std::string>(), j["val_loss"].get<double>(), j["val_perplexity"].get<double>(),
               j["tokens"].get<int64_t>(), u.is_number() ? fmt::format("{:.2f}", u.get<double>()) : "n/a", extra,
               j.value("eval", std::string()), j.value("val_data", std::string("?")));
  return 0;
}

int cmd_eval_text(RunContext& ctx, const std::string& model_path, const std::string& text_file, int64_t stride, bool json,
                  int activation_bits) {
  const auto j = pipeline::evaluate_text(ctx, model_path, text_file, stride, activation_bits);
  if (json) {
    std::printf("%s\n", j.dump(2).c_str());
    return 0;
  }
  spdlog::info("{} on {}: mean NLL {:.5f} nats, perplexity {:.4f} over {} tokens (window {}, stride {})",
               j["model"].get<std::string>(), j["text"].get<std::string>(), j["mean_nll"].get<double>(),
               j["perplexity"].get<double>(), j["tokens"].get<int64_t>(), j["window"].get<int64_t>(),
               j["stride"].get<int64_t>());
  return 0;
}

int cmd_generate(RunContext& ctx, const std::string& model_path, const std::string& prompt,
                 const runtime::GenerationOptions& options, int activation_bits) {
  // The prompt, then each piece of text as soon as its token is sampled (streaming), then a newline.
  std::printf("%s", prompt.c_str());
  std::fflush(stdout);
  const auto g = pipeline::generate_text(ctx, model_path, prompt, options, activation_bits, [](const std::string& piece) {
    std::fwrite(piece.data(), 1, piece.size(), stdout);
    std::fflush(stdout);
  });
  std::printf("\n");
  std::fflush(stdout);
  const auto& st = g.stats;
  if (st.stopped_at_context)
    spdlog::warn("generate: stopped after {} of the {} tokens asked for: the model's context "
                 "(max_position_embeddings = {} tokens) is full after the {}-token prompt",
                 st.generated_tokens, options.max_new_tokens, g.max_position_embeddings, st.prompt_tokens);
  spdlog::info("generate: prompt {} tokens in {:.1f} ms ({:.1f} tokens/s), decode {} tokens in {:.1f} ms ({:.1f} "
               "tokens/s){}; resident weights {} bytes (FP16 {})",
               st.prompt_tokens, st.prompt_seconds * 1e3, st.prompt_tokens_per_s(), st.generated_tokens - 1,
               st.decode_seconds * 1e3, st.decode_tokens_per_s(), activation_bits ? ", int8 activations" : "",
               g.resident_weight_bytes, g.fp16_bytes);
  return 0;
}

int cmd_inspect(const std::string& path, bool json) {
  std::printf("%s", pipeline::inspect_path(path, json).c_str());
  return 0;
}

}  // namespace bitforge::cli
