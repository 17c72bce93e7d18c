#include "trainer/checkpoint.h"

#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>

#include <fmt/format.h>

#include "export/safetensors_torch.h"
#include "config/memory_estimate.h"

namespace fs = std::filesystem;

namespace bitforge {
namespace {

constexpr const char* kComplete = "COMPLETE";

std::string step_name(int64_t step) { return fmt::format("step-{:07d}", step); }

void remove_tree(const fs::path& p) { ckpt::remove_tree(p.string()); }

void write_text_file(const fs::path& path, const std::string& text) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  if (!f) throw CheckpointError(path.string() + ": cannot open for writing");
  f << text;
  f.flush();
  if (!f) throw CheckpointError(path.string() + ": write failed (disk full?)");
}

std::string read_text_file(const fs::path& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw CheckpointError(path.string() + ": cannot open (missing from the checkpoint?)");
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

/// Model tensors under their checkpoint names: parameters and buffers (BitLinear scales, anchors).
std::map<std::string, torch::Tensor> model_tensors(Transformer& model) {
  std::map<std::string, torch::Tensor> out;
  for (auto& p : model->named_parameters()) out[p.key()] = p.value().detach().to(torch::kCPU).contiguous();
  for (auto& b : model->named_buffers()) out[b.key()] = b.value().detach().to(torch::kCPU).contiguous();
  return out;
}

std::map<const void*, std::string> param_names(Transformer& model) {
  std::map<const void*, std::string> names;
  for (auto& p : model->named_parameters()) names[p.value().unsafeGetTensorImpl()] = p.key();
  return names;
}

}  // namespace

std::string save_checkpoint(const std::string& dir, Transformer& model, torch::optim::Optimizer* optimizer,
                            const CheckpointPayload& payload, int64_t keep_last) {
  fs::create_directories(dir);
  ckpt::clean_stale_temporaries(dir);
  const fs::path final_path = fs::path(dir) / step_name(payload.step);
  const fs::path tmp = fs::path(dir) / fmt::format("{}.tmp-{}", step_name(payload.step), ::getpid());
  remove_tree(tmp);
  fs::create_directories(tmp);
  ckpt::crash_point("checkpoint:begin");
  std::vector<std::string> files = {"model.safetensors"};

  safetensors::save((tmp / "model.safetensors").string(), model_tensors(model),
                    {{"format", "bitforge.checkpoint"}, {"step", std::to_string(payload.step)}});
  if (optimizer) {
    std::map<std::string, torch::Tensor> opt;
    auto names = param_names(model);
    auto& state = optimizer->state();
    for (auto& group : optimizer->param_groups())
      for (auto& p : group.params()) {
        auto it = state.find(p.unsafeGetTensorImpl());
        if (it == state.end()) continue;
        const auto& name = names.at(p.unsafeGetTensorImpl());
        auto& s = static_cast<torch::optim::AdamWParamState&>(*it->second);
        opt[name + ".exp_avg"] = s.exp_avg().detach().to(torch::kCPU).contiguous();
        opt[name + ".exp_avg_sq"] = s.exp_avg_sq().detach().to(torch::kCPU).contiguous();
        opt[name + ".step"] = torch::tensor({s.step()}, torch::kLong);
      }
    opt["__rng_cpu__"] = at::detail::getDefaultCPUGenerator().get_state();
    ckpt::crash_point("checkpoint:after-model");
    safetensors::save((tmp / "optimizer.safetensors").string(), opt, {{"format", "bitforge.optimizer.adamw"}});
    files.push_back("optimizer.safetensors");
  }
  nlohmann::json st = payload.trainer_state;
  st["step"] = payload.step;
  write_text_file(tmp / "trainer_state.json", st.dump(2));
  files.push_back("trainer_state.json");
  if (payload.config) {
    save_config(*payload.config, (tmp / "config.yaml").string());
    files.push_back("config.yaml");
  }
  if (payload.tokenizer) {
    const std::string name = payload.tokenizer->kind() == "byte" ? "tokenizer.bin" : "tokenizer.model";
    data::save_tokenizer(*payload.tokenizer, (tmp / name).string());
    files.push_back(name);
  }
  ckpt::crash_point("checkpoint:before-complete");
  ckpt::write_manifest(tmp.string(), files, payload.step);  // COMPLETE, last
  ckpt::crash_point("checkpoint:before-publish");
  // An older checkpoint of the same step (re-saving a finished run) is swapped out atomically, never deleted first.
  ckpt::publish_directory(tmp.string(), final_path.string());
  ckpt::crash_point("checkpoint:before-prune");

  // Retention: keep the newest keep_last complete checkpoints.
  std::vector<std::pair<int64_t, fs::path>> all;
  static const std::regex re("step-(\\d{7})");
  for (auto& e : fs::directory_iterator(dir)) {
    std::smatch m;
    const std::string n = e.path().filename().string();
    if (std::regex_match(n, m, re) && fs::exists(e.path() / kComplete)) all.emplace_back(std::stoll(m[1]), e.path());
  }
  std::sort(all.begin(), all.end());
  for (size_t i = 0; i + static_cast<size_t>(keep_last) < all.size(); ++i) {
    ckpt::remove_checkpoint_dir(all[i].second.string());  // renamed away first: never half-deleted under its name
    ckpt::crash_point("checkpoint:after-prune-one");
  }
  return final_path.string();
}

std::optional<std::string> latest_checkpoint(const std::string& dir) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return std::nullopt;
  for (const auto& [step, path] : ckpt::list_checkpoints(dir)) {
    try {
      ckpt::verify_checkpoint_files(path, /*hash=*/false);  // cheap: manifest, presence and sizes
      return path;
    } catch (const CheckpointError& e) {
      spdlog::warn("skipping damaged checkpoint {}: {}", path, e.what());
    }
  }
  return std::nullopt;
}

std::optional<std::string> load_latest_intact_checkpoint(const std::string& dir, Transformer& model,
                                                         torch::optim::Optimizer* optimizer, nlohmann::json* state) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return std::nullopt;
  const auto all = ckpt::list_checkpoints(dir);
  for (size_t i = 0; i < all.size(); ++i) {
    const std::string& path = all[i].second;
    try {
      if (optimizer) optimizer->state().clear();  // nothing from a rejected candidate survives
      nlohmann::json st = load_checkpoint(path, model, optimizer);
      if (i > 0)
        spdlog::warn("resuming from {}: the {} newer checkpoint(s) in {} are damaged (see the warnings above)", path, i,
                     dir);
      if (state) *state = std::move(st);
      return path;
    } catch (const CheckpointError& e) {
      spdlog::warn("checkpoint {} is damaged, falling back to the previous one: {}", path, e.what());
    }
  }
  if (optimizer) optimizer->state().clear();
  return std::nullopt;
}

nlohmann::json load_checkpoint(const std::string& checkpoint_dir, Transformer& model,
                               torch::optim::Optimizer* optimizer) {
  const fs::path d(checkpoint_dir);
  if (!fs::is_directory(d)) throw CheckpointError(checkpoint_dir + ": not a checkpoint directory");
  ckpt::verify_checkpoint_files(checkpoint_dir, /*hash=*/true);  // COMPLETE present, every file's size and checksum
  const nlohmann::json state =
      ckpt::parse_trainer_state(read_text_file(d / "trainer_state.json"), (d / "trainer_state.json").string());
  std::map<std::string, torch::Tensor> tensors;
  try {
    tensors = safetensors::load((d / "model.safetensors").string());
  } catch (const std::exception& e) {
    throw CheckpointError(std::string("corrupt checkpoint: ") + e.what());
  }
  const std::string mfile = (d / "model.safetensors").string();
  torch::NoGradGuard ng;
  auto assign = [&](const std::string& name, torch::Tensor& dst, bool resizable) {
    auto it = tensors.find(name);
    if (it == tensors.end()) throw CheckpointError(mfile + ": tensor '" + name + "' is missing");
    auto src = it->second;
    if (resizable && src.dim() == 1 && dst.dim() == 1) {
      dst.resize_({src.numel()});
    } else if (src.sizes() != dst.sizes()) {
      throw CheckpointError(fmt::format("{}: tensor '{}' has shape {} but the model expects {}", mfile, name,
                                        fmt::join(src.sizes(), "x"), fmt::join(dst.sizes(), "x")));
    }
    if (src.scalar_type() != dst.scalar_type())
      throw CheckpointError(fmt::format("{}: tensor '{}' has dtype {} but the model expects {}", mfile, name,
                                        c10::toString(src.scalar_type()), c10::toString(dst.scalar_type())));
    dst.copy_(src);
  };
  for (auto& p : model->named_parameters()) assign(p.key(), p.value(), false);
  for (auto& b : model->named_buffers()) assign(b.key(), b.value(), true);

  if (optimizer) {
    std::map<std::string, torch::Tensor> opt;
    try {
      opt = safetensors::load((d / "optimizer.safetensors").string());
    } catch (const std::exception& e) {
      throw CheckpointError(std::string("corrupt checkpoint optimizer state: ") + e.what());
    }
    auto names = param_names(model);
    auto& state = optimizer->state();
    for (auto& group : optimizer->param_groups())
      for (auto& p : group.params()) {
        const auto& name = names.at(p.unsafeGetTensorImpl());
        auto it = opt.find(name + ".exp_avg");
        if (it == opt.end()) continue;  // parameter had no state yet
        auto s = std::make_unique<torch::optim::AdamWParamState>();
        s->exp_avg(it->second.to(p.device()).clone());
        s->exp_avg_sq(opt.at(name + ".exp_avg_sq").to(p.device()).clone());
        s->step(opt.at(name + ".step").item<int64_t>());
        state[p.unsafeGetTensorImpl()] = std::move(s);
      }
    if (opt.count("__rng_cpu__")) {
      auto gen = at::detail::getDefaultCPUGenerator();
      gen.set_state(opt.at("__rng_cpu__"));
    }
  }
  return state;
}

namespace {

LoadedModel load_model_from(const std::string& dir) {
  LoadedModel lm;
  lm.checkpoint_dir = dir;
  ckpt::verify_checkpoint_files(dir, /*hash=*/false);  // before trusting config.yaml; load_checkpoint hashes all
  try {
    lm.config = load_config((fs::path(dir) / "config.yaml").string());
  } catch (const ConfigError& e) {
    throw CheckpointError(std::string("checkpoint config: ") + e.what());
  }
  for (const char* name : {"tokenizer.model", "tokenizer.bin"})
    if (fs::exists(fs::path(dir) / name)) lm.tokenizer = data::load_tokenizer((fs::path(dir) / name).string());
  if (!lm.tokenizer) throw CheckpointError(dir + ": no tokenizer.model or tokenizer.bin in the checkpoint");
  check_memory(estimate_checkpoint_inference_memory(lm.config.model, lm.config.eval.batch_size, lm.config.eval.seq_len),
               "loading checkpoint " + dir, lm.config.train.skip_memory_check);
  lm.model = Transformer(lm.config.model, lm.config.quant);
  auto st = load_checkpoint(dir, lm.model, nullptr);
  lm.step = st.value("step", int64_t{0});
  lm.model->eval();
  return lm;
}

}  // namespace

LoadedModel load_model(const std::string& path) {
  if (fs::exists(fs::path(path) / kComplete)) return load_model_from(path);  // one named checkpoint: no fallback
  const auto all = ckpt::list_checkpoints(path);
  for (size_t i = 0; i < all.size(); ++i) {
    try {
      LoadedModel lm = load_model_from(all[i].second);
      if (i > 0) spdlog::warn("using {}: the {} newer checkpoint(s) in {} are damaged", all[i].second, i, path);
      return lm;
    } catch (const CheckpointError& e) {
      spdlog::warn("checkpoint {} is damaged, falling back to the previous one: {}", all[i].second, e.what());
    }
  }
  throw CheckpointError(path + ": no complete checkpoint found (expected step-NNNNNNN/ with COMPLETE)" +
                        (all.empty() ? std::string() : " — every candidate is damaged, see the warnings above"));
}

}  // namespace bitforge
