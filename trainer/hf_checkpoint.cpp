// Hugging Face Llama/Qwen3 checkpoint directories; rules in trainer/hf_checkpoint.h.
#include "trainer/hf_checkpoint.h"

#include "data/hf_tokenizer.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "export/safetensors_torch.h"
#include "config/memory_estimate.h"

namespace bitforge {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

std::string shape_str(c10::IntArrayRef s) {
  std::ostringstream o;
  o << '[';
  for (size_t i = 0; i < s.size(); ++i) o << (i ? ", " : "") << s[i];
  o << ']';
  return o.str();
}

std::string read_text(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  if (!in) throw HfCheckpointError(p.string() + ": cannot be read");
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

json parse_json(const std::string& text, const std::string& source) {
  try {
    return json::parse(text);
  } catch (const json::exception& e) {  // parse_error, and out_of_range for 1e9999 (found by fuzz_hf)
    throw HfCheckpointError(source + ": not valid JSON (" + e.what() + ")");
  }
}

// Typed accessors that name the file and key on a type mismatch.
class ConfigReader {
 public:
  ConfigReader(const json& j, std::string source) : j_(j), source_(std::move(source)) {}

  bool has(const std::string& key) const { return j_.contains(key) && !j_.at(key).is_null(); }

  int64_t integer(const std::string& key) const {
    if (!has(key)) fail(key, "missing required key");
    return integer_of(j_.at(key), key);
  }
  int64_t integer(const std::string& key, int64_t def) const { return has(key) ? integer_of(j_.at(key), key) : def; }
  double number(const std::string& key, double def) const { return has(key) ? number_of(j_.at(key), key) : def; }
  bool boolean(const std::string& key, bool def) const {
    if (!has(key)) return def;
    if (!j_.at(key).is_boolean()) fail(key, "expected true or false, got " + j_.at(key).dump());
    return j_.at(key).get<bool>();
  }
  std::string string(const std::string& key, const std::string& def) const {
    if (!has(key)) return def;
    if (!j_.at(key).is_string()) fail(key, "expected a string, got " + j_.at(key).dump());
    return j_.at(key).get<std::string>();
  }

  int64_t integer_of(const json& v, const std::string& key) const {
    if (!v.is_number_integer()) fail(key, "expected an integer, got " + v.dump());
    return v.get<int64_t>();
  }
  double number_of(const json& v, const std::string& key) const {
    if (!v.is_number()) fail(key, "expected a number, got " + v.dump());
    return v.get<double>();
  }
  [[noreturn]] void fail(const std::string& key, const std::string& what) const {
    throw HfCheckpointError(source_ + ": " + key + ": " + what);
  }

 private:
  const json& j_;
  std::string source_;
};

// RoPE parameters: transformers 5 `rope_parameters` (possibly per layer type), 4.x `rope_scaling`.
void read_rope(const json& j, const ConfigReader& r, const std::string& source, ModelConfig& cfg) {
  cfg.rope_theta = r.number("rope_theta", 10000.0);
  for (const char* key : {"rope_scaling", "rope_parameters"}) {
    if (!r.has(key)) continue;
    const json* p = &j.at(key);
    if (!p->is_object()) r.fail(key, "expected an object, got " + p->dump());
    if (!p->contains("rope_type") && !p->contains("type") && !p->contains("rope_theta") &&
        p->contains("full_attention"))
      p = &p->at("full_attention");  // transformers 5 per-layer-type form
    ConfigReader pr(*p, source + ": " + key);
    const std::string type = pr.has("rope_type") ? pr.string("rope_type", "default") : pr.string("type", "default");
    if (type != "default")
      r.fail(std::string(key) + ".rope_type", "'" + type + "' is not supported (only default RoPE)");
    if (pr.has("rope_theta")) cfg.rope_theta = pr.number("rope_theta", cfg.rope_theta);
    if (pr.has("partial_rotary_factor") && pr.number("partial_rotary_factor", 1.0) != 1.0)
      r.fail(std::string(key) + ".partial_rotary_factor", "only 1.0 is supported");
  }
  if (r.has("partial_rotary_factor") && r.number("partial_rotary_factor", 1.0) != 1.0)
    r.fail("partial_rotary_factor", "only 1.0 is supported");
}

// A tensor from the file, checked against the model's parameter and converted to its dtype.
void copy_checked(const std::string& name, const torch::Tensor& src, torch::Tensor& dst, const std::string& file) {
  if (src.sizes() != dst.sizes())
    throw HfCheckpointError(name + ": shape " + shape_str(src.sizes()) + " in " + file + ", expected " +
                            shape_str(dst.sizes()));
  const auto t = src.scalar_type();
  if (t != torch::kFloat && t != torch::kBFloat16 && t != torch::kHalf && t != torch::kDouble)
    throw HfCheckpointError(name + ": dtype " + std::string(c10::toString(t)) + " in " + file +
                            ", expected a floating type (F32, BF16, F16, F64)");
  torch::NoGradGuard no_grad;
  dst.copy_(src.to(dst.scalar_type()));
}

bool ignorable(const std::string& name, bool tied) {
  if (tied && name == "lm_head.weight") return true;  // some tied checkpoints store the copy
  const std::string suffix = "rotary_emb.inv_freq";   // legacy buffer, recomputed from rope_theta
  return name.size() >= suffix.size() && name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0;
}

bool is_sub_norm(const std::string& name) { return name.find(".sub_norm.") != std::string::npos; }

void write_text_atomic(const fs::path& p, const std::string& text) {
  const fs::path tmp = p.string() + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) throw HfCheckpointError(tmp.string() + ": cannot be written");
    out << text;
    if (!out.flush()) throw HfCheckpointError(tmp.string() + ": write failed");
  }
  std::error_code ec;
  fs::rename(tmp, p, ec);
  if (ec) throw HfCheckpointError(p.string() + ": rename failed: " + ec.message());
}

}  // namespace

ModelConfig parse_hf_config(const std::string& json_text, const std::string& source, std::string* model_type,
                            std::string* dtype) {
  const json j = parse_json(json_text, source);
  if (!j.is_object()) throw HfCheckpointError(source + ": expected a JSON object");
  const ConfigReader r(j, source);

  ModelConfig cfg;
  if (!r.has("model_type")) r.fail("model_type", "missing required key (expected llama or qwen3)");
  const std::string type = r.string("model_type", "");
  if (type != "llama" && type != "qwen3")
    r.fail("model_type", "'" + type + "' is not supported (expected llama or qwen3)");
  cfg.arch = type;
  cfg.vocab_size = r.integer("vocab_size");
  cfg.hidden_size = r.integer("hidden_size");
  cfg.intermediate_size = r.integer("intermediate_size");
  cfg.num_hidden_layers = r.integer("num_hidden_layers");
  cfg.num_attention_heads = r.integer("num_attention_heads");
  cfg.num_key_value_heads = r.integer("num_key_value_heads", cfg.num_attention_heads);
  for (const char* key :
       {"vocab_size", "hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads"})
    if (r.integer(key, 1) <= 0) r.fail(key, "must be positive");
  if (cfg.num_hidden_layers < 0) r.fail("num_hidden_layers", "must be >= 0");
  if (cfg.num_attention_heads % cfg.num_key_value_heads != 0)
    r.fail("num_key_value_heads", std::to_string(cfg.num_key_value_heads) + " does not divide num_attention_heads " +
                                      std::to_string(cfg.num_attention_heads));
  if (r.has("head_dim")) {
    cfg.head_dim = r.integer("head_dim");
    if (cfg.head_dim <= 0 || cfg.head_dim % 2 != 0) r.fail("head_dim", "must be positive and even");
  } else {
    if (cfg.hidden_size % cfg.num_attention_heads != 0)
      r.fail("hidden_size", "not divisible by num_attention_heads and no head_dim given");
    cfg.head_dim = cfg.hidden_size / cfg.num_attention_heads;
  }
  cfg.rms_norm_eps = r.number("rms_norm_eps", 1e-6);
  if (!(cfg.rms_norm_eps > 0)) r.fail("rms_norm_eps", "must be positive");
  cfg.max_position_embeddings = r.integer("max_position_embeddings", 2048);
  if (cfg.max_position_embeddings <= 0) r.fail("max_position_embeddings", "must be positive");
  cfg.tie_word_embeddings = r.boolean("tie_word_embeddings", false);
  cfg.attention_bias = r.boolean("attention_bias", false);
  if (r.boolean("mlp_bias", false)) r.fail("mlp_bias", "true is not supported");
  if (type == "qwen3" && r.boolean("use_sliding_window", false)) r.fail("use_sliding_window", "true is not supported");
  read_rope(j, r, source, cfg);
  if (!(cfg.rope_theta > 0)) r.fail("rope_theta", "must be positive");

  const std::string act = r.string("hidden_act", "silu");
  const std::string bf_mlp = r.string("bitforge_mlp", "");
  if (bf_mlp == "relu2") {
    cfg.hidden_act = MlpActivation::relu2;
  } else if (!bf_mlp.empty()) {
    r.fail("bitforge_mlp", "'" + bf_mlp + "' is not supported (expected relu2)");
  } else if (act == "silu") {
    cfg.hidden_act = MlpActivation::swiglu;
  } else {
    r.fail("hidden_act", "'" + act + "' is not supported (expected silu)");
  }
  cfg.subln = r.boolean("bitforge_subln", false);

  try {  // the YAML schema's ranges, as for every other reader of model metadata
    validate_model_config(cfg, source);
  } catch (const ConfigError& e) {
    throw HfCheckpointError(e.what());
  }
  if (model_type) *model_type = type;
  if (dtype) *dtype = r.has("dtype") ? r.string("dtype", "") : r.string("torch_dtype", "");
  return cfg;
}

HfCheckpoint read_hf_checkpoint(const std::string& dir) {
  const fs::path root(dir);
  if (!fs::is_directory(root)) throw HfCheckpointError(dir + ": not a directory");
  const fs::path config_path = root / "config.json";
  if (!fs::is_regular_file(config_path))
    throw HfCheckpointError(config_path.string() + ": missing (not a Hugging Face checkpoint directory)");

  HfCheckpoint ck;
  ck.dir = dir;
  ck.model = parse_hf_config(read_text(config_path), config_path.string(), &ck.model_type, &ck.dtype);

  const fs::path single = root / "model.safetensors";
  const fs::path index_path = root / "model.safetensors.index.json";
  if (fs::is_regular_file(index_path)) {
    const std::string src = index_path.string();
    const json idx = parse_json(read_text(index_path), src);
    if (!idx.is_object() || !idx.contains("weight_map") || !idx.at("weight_map").is_object())
      throw HfCheckpointError(src + ": weight_map: missing or not an object");
    std::set<std::string> shards;
    for (const auto& [name, file] : idx.at("weight_map").items()) {
      if (!file.is_string()) throw HfCheckpointError(src + ": weight_map." + name + ": expected a file name");
      const std::string f = file.get<std::string>();
      if (f.empty() || f.find('/') != std::string::npos || f.find("..") != std::string::npos)
        throw HfCheckpointError(src + ": weight_map." + name + ": '" + f + "' is not a plain file name");
      const std::string full = (root / f).string();
      ck.weight_map[name] = full;
      shards.insert(full);
    }
    if (shards.empty()) throw HfCheckpointError(src + ": weight_map is empty");
    for (const auto& s : shards) {
      if (!fs::is_regular_file(s)) {
        std::string first;
        for (const auto& [n, f] : ck.weight_map)
          if (f == s) {
            first = n;
            break;
          }
        throw HfCheckpointError(s + ": missing shard (named by " + src + " for " + first + ")");
      }
    }
    ck.weight_files.assign(shards.begin(), shards.end());
  } else if (fs::is_regular_file(single)) {
    ck.weight_files = {single.string()};
  } else {
    throw HfCheckpointError(dir + ": no model.safetensors or model.safetensors.index.json");
  }

  for (const char* tok : {"tokenizer.model", "tokenizer.json"}) {
    if (fs::is_regular_file(root / tok)) {
      ck.tokenizer_path = (root / tok).string();
      break;
    }
  }
  return ck;
}

void load_hf_weights(Transformer& model, const HfCheckpoint& ck, const HfLoadOptions& options) {
  std::map<std::string, torch::Tensor> expected;
  for (auto& [name, t] : model->hf_parameters()) expected.emplace(name, t);
  const bool tied = model->tied();
  const bool sharded = !ck.weight_map.empty();

  std::set<std::string> loaded;
  for (const auto& file : ck.weight_files) {
    std::map<std::string, torch::Tensor> tensors;
    try {
      tensors = safetensors::load(file);
    } catch (const HfCheckpointError&) {
      throw;
    } catch (const std::exception& e) {
      throw HfCheckpointError(std::string(e.what()).find(file) != std::string::npos ? std::string(e.what())
                                                                                    : file + ": " + e.what());
    }
    for (auto& [name, src] : tensors) {
      if (sharded) {
        auto it = ck.weight_map.find(name);
        if (it == ck.weight_map.end())
          throw HfCheckpointError(name + ": in " + file + " but not in model.safetensors.index.json");
        if (it->second != file) continue;  // the index names another shard as its home
      }
      auto dst = expected.find(name);
      if (dst == expected.end()) {
        if (ignorable(name, tied)) continue;
        throw HfCheckpointError(name + ": unexpected tensor in " + file + " (the " + model->config().arch +
                                " model built from config.json has no such parameter)");
      }
      if (loaded.count(name)) throw HfCheckpointError(name + ": stored twice (again in " + file + ")");
      copy_checked(name, src, dst->second, file);
      loaded.insert(name);
    }
    if (sharded) {  // every index entry for this shard must be in it
      for (const auto& [name, f] : ck.weight_map)
        if (f == file && !tensors.count(name))
          throw HfCheckpointError(name + ": listed in model.safetensors.index.json for " + file +
                                  " but not found there");
    }
  }

  std::vector<std::string> missing;
  for (const auto& [name, t] : expected)
    if (!loaded.count(name) && !(options.allow_missing_sub_norm && is_sub_norm(name))) missing.push_back(name);
  if (!missing.empty()) {
    std::string list;
    for (size_t i = 0; i < missing.size() && i < 5; ++i) list += (i ? ", " : "") + missing[i];
    if (missing.size() > 5) list += ", ... (" + std::to_string(missing.size()) + " in all)";
    throw HfCheckpointError(ck.dir + ": missing tensors: " + list);
  }
  model->reset_quantizer_state();
}

Transformer load_hf_model(const std::string& dir, const QuantConfig& quant, HfCheckpoint* info,
                          const HfLoadOptions& options) {
  HfCheckpoint ck = read_hf_checkpoint(dir);
  // Before allocating: fp32 weights plus RoPE tables (config/memory_estimate.h); a 1-token forward's activations.
  check_memory(estimate_checkpoint_inference_memory(ck.model, 1, 1), "loading Hugging Face checkpoint " + dir);
  Transformer model(ck.model, quant);
  load_hf_weights(model, ck, options);
  if (info) *info = std::move(ck);
  return model;
}

void save_hf_checkpoint(Transformer& model, const std::string& dir, const HfSaveOptions& options) {
  const ModelConfig& c = model->config();
  std::set<std::string> quantized;
  for (auto& [name, l] : model->named_bit_linears()) {
    const QuantConfig& q = l->quant();
    if (!options.allow_lossy && (q.input_norm || (q.enabled() && q.activations != ActivationQuant::none)))
      throw std::invalid_argument("save_hf_checkpoint: " + name +
                                  " quantizes activations or has an input RMSNorm, which a Hugging Face dense "
                                  "model cannot express (set allow_lossy to drop them)");
    if (q.enabled() && options.effective_weights) quantized.insert(name);
  }

  std::map<std::string, torch::Tensor> tensors;
  {
    torch::NoGradGuard no_grad;
    std::map<std::string, BitLinear> by_name;
    for (auto& [name, l] : model->named_bit_linears()) by_name.emplace(name, l);
    for (auto& [name, t] : model->hf_parameters()) {
      const auto dot = name.rfind('.');
      const std::string owner = name.substr(0, dot);
      torch::Tensor v = t;
      if (quantized.count(owner) && name.compare(dot + 1, std::string::npos, "weight") == 0)
        v = by_name.at(owner)->effective_weight();
      tensors.emplace(name, v.detach().to(torch::kCPU, options.bf16 ? torch::kBFloat16 : torch::kFloat).contiguous());
    }
  }

  json j;
  j["architectures"] = {c.arch == "qwen3" ? "Qwen3ForCausalLM" : "LlamaForCausalLM"};
  j["model_type"] = c.arch;
  j["vocab_size"] = c.vocab_size;
  j["hidden_size"] = c.hidden_size;
  j["intermediate_size"] = c.intermediate_size;
  j["num_hidden_layers"] = c.num_hidden_layers;
  j["num_attention_heads"] = c.num_attention_heads;
  j["num_key_value_heads"] = c.num_key_value_heads;
  j["head_dim"] = c.resolved_head_dim();
  j["max_position_embeddings"] = c.max_position_embeddings;
  j["rms_norm_eps"] = c.rms_norm_eps;
  j["rope_theta"] = c.rope_theta;                                                   // transformers 4.x
  j["rope_parameters"] = {{"rope_type", "default"}, {"rope_theta", c.rope_theta}};  // transformers 5.x
  j["tie_word_embeddings"] = c.tie_word_embeddings;
  j["attention_bias"] = c.attention_bias;
  j["attention_dropout"] = 0.0;
  j["mlp_bias"] = false;
  j["hidden_act"] = c.hidden_act == MlpActivation::relu2 ? "relu2" : "silu";
  if (c.hidden_act == MlpActivation::relu2) j["bitforge_mlp"] = "relu2";
  if (c.subln) j["bitforge_subln"] = true;
  j["initializer_range"] = 0.02;
  j["use_cache"] = true;
  j["dtype"] = options.bf16 ? "bfloat16" : "float32";
  if (options.tokenizer) {
    if (options.tokenizer->bos_id() >= 0) j["bos_token_id"] = options.tokenizer->bos_id();
    if (options.tokenizer->eos_id() >= 0) j["eos_token_id"] = options.tokenizer->eos_id();
  }
  if (c.arch == "qwen3") j["use_sliding_window"] = false;

  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) throw HfCheckpointError(dir + ": cannot create directory: " + ec.message());
  try {
    safetensors::save((fs::path(dir) / "model.safetensors").string(), tensors, {{"format", "pt"}});
  } catch (const std::exception& e) {
    throw HfCheckpointError(dir + "/model.safetensors: " + e.what());
  }
  write_text_atomic(fs::path(dir) / "config.json", j.dump(2) + "\n");
  if (options.tokenizer) {
    try {
      data::save_hf_tokenizer_files(*options.tokenizer, dir);
    } catch (const std::exception& e) {
      throw HfCheckpointError(dir + ": " + e.what());
    }
  }
}

}  // namespace bitforge
