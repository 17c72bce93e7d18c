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

namespace fs = std::filesystem;

namespace bitforge {
namespace {

constexpr const char* kComplete = "COMPLETE";

std::string step_name(int64_t step) { return fmt::format("step-{:07d}", step); }

/// Deletes a directory tree without std::filesystem::remove_all (libtorch exports a broken copy of it).
void remove_tree(const fs::path& p) {
  std::error_code ec;
  if (!fs::exists(p, ec)) return;
  if (fs::is_directory(p, ec) && !fs::is_symlink(p, ec)) {
    std::vector<fs::path> children;
    for (auto& e : fs::directory_iterator(p, ec)) children.push_back(e.path());
    for (auto& c : children) remove_tree(c);
  }
  fs::remove(p, ec);
}

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
  const fs::path final_path = fs::path(dir) / step_name(payload.step);
  const fs::path tmp = fs::path(dir) / fmt::format("{}.tmp-{}", step_name(payload.step), ::getpid());
  remove_tree(tmp);
  fs::create_directories(tmp);

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
    safetensors::save((tmp / "optimizer.safetensors").string(), opt, {{"format", "bitforge.optimizer.adamw"}});
  }
  nlohmann::json st = payload.trainer_state;
  st["step"] = payload.step;
  write_text_file(tmp / "trainer_state.json", st.dump(2));
  if (payload.config) save_config(*payload.config, (tmp / "config.yaml").string());
  if (payload.tokenizer)
    data::save_tokenizer(*payload.tokenizer,
                         (tmp / (payload.tokenizer->kind() == "byte" ? "tokenizer.bin" : "tokenizer.model")).string());
  write_text_file(tmp / kComplete, "ok\n");

  remove_tree(final_path);  // an older checkpoint of the same step (re-run) is replaced
  fs::rename(tmp, final_path);

  // Retention: keep the newest keep_last complete checkpoints.
  std::vector<std::pair<int64_t, fs::path>> all;
  static const std::regex re("step-(\\d{7})");
  for (auto& e : fs::directory_iterator(dir)) {
    std::smatch m;
    const std::string n = e.path().filename().string();
    if (std::regex_match(n, m, re) && fs::exists(e.path() / kComplete)) all.emplace_back(std::stoll(m[1]), e.path());
  }
  std::sort(all.begin(), all.end());
  for (size_t i = 0; i + static_cast<size_t>(keep_last) < all.size(); ++i) remove_tree(all[i].second);
  return final_path.string();
}

std::optional<std::string> latest_checkpoint(const std::string& dir) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return std::nullopt;
  static const std::regex re("step-(\\d{7})");
  int64_t best = -1;
  fs::path best_path;
  for (auto& e : fs::directory_iterator(dir, ec)) {
    std::smatch m;
    const std::string n = e.path().filename().string();
    if (!std::regex_match(n, m, re)) {
      if (n.rfind("step-", 0) == 0) spdlog::warn("ignoring incomplete checkpoint {}", e.path().string());
      continue;
    }
    if (!fs::exists(e.path() / kComplete)) {
      spdlog::warn("ignoring checkpoint without its {} marker: {}", kComplete, e.path().string());
      continue;
    }
    const int64_t s = std::stoll(m[1]);
    if (s > best) best = s, best_path = e.path();
  }
  if (best < 0) return std::nullopt;
  return best_path.string();
}

nlohmann::json load_checkpoint(const std::string& checkpoint_dir, Transformer& model,
                               torch::optim::Optimizer* optimizer) {
  const fs::path d(checkpoint_dir);
  if (!fs::is_directory(d)) throw CheckpointError(checkpoint_dir + ": not a checkpoint directory");
  if (!fs::exists(d / kComplete))
    throw CheckpointError(checkpoint_dir + ": incomplete checkpoint (no " + kComplete +
                          " marker: its writing was interrupted); refusing to load it");
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
  try {
    return nlohmann::json::parse(read_text_file(d / "trainer_state.json"));
  } catch (const nlohmann::json::exception& e) {
    throw CheckpointError((d / "trainer_state.json").string() + ": not valid JSON: " + e.what());
  }
}

LoadedModel load_model(const std::string& path) {
  std::string dir = path;
  if (!fs::exists(fs::path(path) / kComplete)) {
    auto latest = latest_checkpoint(path);
    if (!latest) throw CheckpointError(path + ": no complete checkpoint found (expected step-NNNNNNN/ with COMPLETE)");
    dir = *latest;
  }
  LoadedModel lm;
  lm.checkpoint_dir = dir;
  try {
    lm.config = load_config((fs::path(dir) / "config.yaml").string());
  } catch (const ConfigError& e) {
    throw CheckpointError(std::string("checkpoint config: ") + e.what());
  }
  for (const char* name : {"tokenizer.model", "tokenizer.bin"})
    if (fs::exists(fs::path(dir) / name)) lm.tokenizer = data::load_tokenizer((fs::path(dir) / name).string());
  if (!lm.tokenizer) throw CheckpointError(dir + ": no tokenizer.model or tokenizer.bin in the checkpoint");
  lm.model = Transformer(lm.config.model, lm.config.quant);
  auto st = load_checkpoint(dir, lm.model, nullptr);
  lm.step = st.value("step", 0);
  lm.model->eval();
  return lm;
}

}  // namespace bitforge
