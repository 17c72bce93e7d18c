// The config schema in one place: every key, its type, default (from config.h), range and enum values.
// Reading and writing both go through the same table, so the effective config reloads to the same values.
#include "config/config.h"

#include "data/corpus.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <fstream>
#include <functional>
#include <limits>
#include <set>
#include <sstream>
#include <filesystem>

#include <fmt/format.h>

namespace bitforge {

bool QuantConfig::quantizes(const std::string& part) const {
  return enabled() && std::find(layers.begin(), layers.end(), part) != layers.end();
}

namespace {

constexpr size_t kMaxConfigBytes = 4 << 20;  // 4 MiB: a config is text a person writes

// ---------------------------------------------------------------------------------------------------------
// Enum tables
// ---------------------------------------------------------------------------------------------------------
template <typename E>
struct EnumNames;
#define BF_ENUM(E, ...)                                                      \
  template <>                                                                \
  struct EnumNames<E> {                                                      \
    static const std::vector<std::pair<E, std::string>>& get() {             \
      static const std::vector<std::pair<E, std::string>> v = {__VA_ARGS__}; \
      return v;                                                              \
    }                                                                        \
  };
BF_ENUM(MlpActivation, {MlpActivation::swiglu, "swiglu"}, {MlpActivation::relu2, "relu2"})
BF_ENUM(WeightQuantizer, {WeightQuantizer::none, "none"}, {WeightQuantizer::binary, "binary"},
        {WeightQuantizer::ternary, "ternary"})
BF_ENUM(ScaleGranularity, {ScaleGranularity::tensor, "tensor"}, {ScaleGranularity::channel, "channel"},
        {ScaleGranularity::group, "group"})
BF_ENUM(ScaleMode, {ScaleMode::learned, "learned"}, {ScaleMode::absmean, "absmean"})
BF_ENUM(SteKind, {SteKind::identity, "identity"}, {SteKind::clipped, "clipped"},
        {SteKind::approx_sign, "approx_sign"}, {SteKind::tanh, "tanh"})
BF_ENUM(ActivationQuant, {ActivationQuant::none, "none"}, {ActivationQuant::int8, "int8"},
        {ActivationQuant::int4, "int4"})
BF_ENUM(AnchorSelection, {AnchorSelection::magnitude, "magnitude"}, {AnchorSelection::saliency, "saliency"})
BF_ENUM(CorpusFormat, {CorpusFormat::text_dir, "text_dir"}, {CorpusFormat::jsonl, "jsonl"},
        {CorpusFormat::text_file, "text_file"})
BF_ENUM(TokenizerKind, {TokenizerKind::sentencepiece_bpe, "sentencepiece_bpe"},
        {TokenizerKind::sentencepiece_unigram, "sentencepiece_unigram"}, {TokenizerKind::byte, "byte"},
        {TokenizerKind::pretrained, "pretrained"})
BF_ENUM(LrScheduler, {LrScheduler::cosine, "cosine"}, {LrScheduler::linear, "linear"},
        {LrScheduler::constant, "constant"}, {LrScheduler::two_stage, "two_stage"})
BF_ENUM(NonFinitePolicy, {NonFinitePolicy::stop, "stop"}, {NonFinitePolicy::skip, "skip"})
BF_ENUM(KdLoss, {KdLoss::forward_kl, "forward_kl"}, {KdLoss::reverse_kl, "reverse_kl"}, {KdLoss::jsd, "jsd"})
BF_ENUM(HiddenLoss, {HiddenLoss::mse, "mse"}, {HiddenLoss::cosine, "cosine"})
BF_ENUM(StudentInit, {StudentInit::teacher, "teacher"}, {StudentInit::scratch, "scratch"})
BF_ENUM(GgufTernaryType, {GgufTernaryType::tq2_0, "tq2_0"}, {GgufTernaryType::tq1_0, "tq1_0"},
        {GgufTernaryType::q2_0, "q2_0"})
#undef BF_ENUM

size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> prev(b.size() + 1), cur(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) prev[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    cur[0] = i;
    for (size_t j = 1; j <= b.size(); ++j)
      cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1)});
    std::swap(prev, cur);
  }
  return prev[b.size()];
}

std::string closest(const std::string& key, const std::vector<std::string>& candidates) {
  std::string best;
  size_t best_d = std::numeric_limits<size_t>::max();
  for (const auto& c : candidates) {
    size_t d = edit_distance(key, c);
    if (d < best_d) best_d = d, best = c;
  }
  // Only suggest when it is plausibly a typo.
  if (best_d <= std::max<size_t>(2, key.size() / 3)) return best;
  return "";
}

std::string join(const std::vector<std::string>& v, const char* sep = ", ") {
  std::string s;
  for (size_t i = 0; i < v.size(); ++i) s += (i ? sep : "") + v[i];
  return s;
}

/// Where a value came from, for error messages.
struct Origin {
  std::string source;  ///< file path or "--set a.b=c"
  std::string where(const YAML::Node& n) const {
    const auto m = n.Mark();
    if (m.line >= 0 && !source.empty() && source.rfind("--set", 0) != 0)
      return fmt::format("{}:{}:{}", source, m.line + 1, m.column + 1);
    return source;
  }
};

[[noreturn]] void fail(const Origin& o, const YAML::Node& n, const std::string& path, const std::string& msg) {
  throw ConfigError(fmt::format("{}: {}: {}", o.where(n), path, msg));
}

std::string scalar_text(const YAML::Node& n) {
  if (n.IsScalar()) return "'" + n.Scalar() + "'";
  if (n.IsSequence()) return "a list";
  if (n.IsMap()) return "a mapping";
  return "null";
}

// ---------------------------------------------------------------------------------------------------------
// Typed readers/writers
// ---------------------------------------------------------------------------------------------------------
bool looks_bool(const std::string& s) {
  static const std::set<std::string> b = {"true", "false", "True", "False", "TRUE", "FALSE", "yes", "no", "on", "off"};
  return b.count(s) > 0;
}

int64_t read_int(const YAML::Node& n, const Origin& o, const std::string& path) {
  if (!n.IsScalar()) fail(o, n, path, "expected an integer, got " + scalar_text(n));
  const std::string& s = n.Scalar();
  try {
    size_t pos = 0;
    long long v = std::stoll(s, &pos, 10);
    if (pos != s.size()) throw std::invalid_argument("trailing");
    return v;
  } catch (const std::out_of_range&) {
    fail(o, n, path, "integer '" + s + "' is out of the 64-bit range");
  } catch (const std::exception&) {
    fail(o, n, path, "expected an integer, got " + scalar_text(n));
  }
}

double read_double(const YAML::Node& n, const Origin& o, const std::string& path) {
  if (!n.IsScalar() || looks_bool(n.Scalar())) fail(o, n, path, "expected a number, got " + scalar_text(n));
  const std::string& s = n.Scalar();
  try {
    size_t pos = 0;
    double v = std::stod(s, &pos);
    if (pos != s.size()) throw std::invalid_argument("trailing");
    if (!std::isfinite(v)) fail(o, n, path, "expected a finite number, got '" + s + "'");
    return v;
  } catch (const ConfigError&) {
    throw;
  } catch (const std::exception&) {
    fail(o, n, path, "expected a number, got " + scalar_text(n));
  }
}

bool read_bool(const YAML::Node& n, const Origin& o, const std::string& path) {
  if (n.IsScalar()) {
    const std::string& s = n.Scalar();
    if (s == "true" || s == "True" || s == "TRUE") return true;
    if (s == "false" || s == "False" || s == "FALSE") return false;
  }
  fail(o, n, path, "expected true or false, got " + scalar_text(n));
}

std::string read_string(const YAML::Node& n, const Origin& o, const std::string& path) {
  if (n.IsNull()) return "";
  if (!n.IsScalar()) fail(o, n, path, "expected a string, got " + scalar_text(n));
  // Control characters (CR, LF, NUL, ...) have no place in names and paths, and would not survive the effective
  // config's round trip through YAML (found by tests/fuzz/fuzz_config.cpp).
  for (size_t i = 0; i < n.Scalar().size(); ++i) {
    const unsigned char ch = static_cast<unsigned char>(n.Scalar()[i]);
    if (ch < 0x20 || ch == 0x7f)
      fail(o, n, path, fmt::format("contains the control character 0x{:02x} at offset {}; expected printable text", ch, i));
  }
  // Nor do bytes that are not UTF-8 (YAML is Unicode text; yaml-cpp's emitter rewrites them, so the effective
  // config.yaml would not reload to the same value — found by the fuzz campaign).
  if (const auto bad = data::find_invalid_utf8(n.Scalar()))
    fail(o, n, path, fmt::format("is not valid UTF-8 (byte 0x{:02x} at offset {})",
                                 static_cast<unsigned char>(n.Scalar()[*bad]), *bad));
  return n.Scalar();
}

template <typename E>
E read_enum(const YAML::Node& n, const Origin& o, const std::string& path) {
  std::vector<std::string> names;
  for (auto& [v, name] : EnumNames<E>::get()) names.push_back(name);
  if (n.IsScalar()) {
    for (auto& [v, name] : EnumNames<E>::get())
      if (name == n.Scalar()) return v;
    std::string hint = closest(n.Scalar(), names);
    fail(o, n, path,
         fmt::format("'{}' is not one of: {}{}", n.Scalar(), join(names),
                     hint.empty() ? "" : fmt::format(" (did you mean '{}'?)", hint)));
  }
  fail(o, n, path, "expected one of: " + join(names) + ", got " + scalar_text(n));
}

template <typename E>
std::string enum_name(E v) {
  for (auto& [e, name] : EnumNames<E>::get())
    if (e == v) return name;
  return "?";
}

/// One key of a section: how to read it into the struct and write it back.
struct Field {
  std::string key;
  std::function<void(const YAML::Node&, const Origin&, const std::string&)> read;
  std::function<YAML::Node()> write;
};

struct Section {
  std::string name;
  std::vector<Field> fields;
};

Field int_field(const std::string& key, int64_t& ref, int64_t lo, int64_t hi = std::numeric_limits<int64_t>::max()) {
  return {key,
          [&ref, lo, hi](const YAML::Node& n, const Origin& o, const std::string& p) {
            int64_t v = read_int(n, o, p);
            if (v < lo || v > hi)
              fail(o, n, p,
                   hi == std::numeric_limits<int64_t>::max()
                       ? fmt::format("must be >= {}, got {}", lo, v)
                       : fmt::format("must be in [{}, {}], got {}", lo, hi, v));
            ref = v;
          },
          [&ref]() { return YAML::Node(ref); }};
}

Field uint_field(const std::string& key, uint64_t& ref) {
  return {key,
          [&ref](const YAML::Node& n, const Origin& o, const std::string& p) {
            if (!n.IsScalar()) fail(o, n, p, "expected a non-negative integer, got " + scalar_text(n));
            const std::string& s = n.Scalar();
            if (s.empty() || s[0] == '-' || s[0] == '+')
              fail(o, n, p, "expected a non-negative integer, got " + scalar_text(n));
            try {
              size_t pos = 0;
              unsigned long long v = std::stoull(s, &pos, 10);
              if (pos != s.size()) throw std::invalid_argument("trailing");
              ref = v;
            } catch (const std::out_of_range&) {
              fail(o, n, p, "integer '" + s + "' is out of the unsigned 64-bit range");
            } catch (const std::exception&) {
              fail(o, n, p, "expected a non-negative integer, got " + scalar_text(n));
            }
          },
          [&ref]() { return YAML::Node(ref); }};
}

Field double_field(const std::string& key, double& ref, double lo, double hi, bool lo_open = false) {
  return {key,
          [&ref, lo, hi, lo_open](const YAML::Node& n, const Origin& o, const std::string& p) {
            double v = read_double(n, o, p);
            if ((lo_open ? v <= lo : v < lo) || v > hi)
              fail(o, n, p, fmt::format("must be in {}{}, {}], got {}", lo_open ? "(" : "[", lo, hi, v));
            ref = v;
          },
          [&ref]() {
            // Shortest text that reads back to the same double.
            YAML::Node node;
            node = fmt::format("{}", ref);
            return node;
          }};
}

Field bool_field(const std::string& key, bool& ref) {
  return {key, [&ref](const YAML::Node& n, const Origin& o, const std::string& p) { ref = read_bool(n, o, p); },
          [&ref]() { return YAML::Node(ref); }};
}

Field string_field(const std::string& key, std::string& ref, std::vector<std::string> allowed = {}) {
  return {key,
          [&ref, allowed](const YAML::Node& n, const Origin& o, const std::string& p) {
            std::string v = read_string(n, o, p);
            if (!allowed.empty() && std::find(allowed.begin(), allowed.end(), v) == allowed.end()) {
              std::string hint = closest(v, allowed);
              fail(o, n, p,
                   fmt::format("'{}' is not one of: {}{}", v, join(allowed),
                               hint.empty() ? "" : fmt::format(" (did you mean '{}'?)", hint)));
            }
            ref = v;
          },
          [&ref]() { return YAML::Node(ref); }};
}

/// data.tokenizer: a trained kind, `teacher`, or a path to a pretrained tokenizer (config.h DataConfig).
Field tokenizer_field(const std::string& key, TokenizerKind& kind, std::string& path) {
  return {key,
          [&kind, &path](const YAML::Node& n, const Origin& o, const std::string& p) {
            const std::string v = read_string(n, o, p);
            const std::vector<std::string> kinds = {"sentencepiece_bpe", "sentencepiece_unigram", "byte"};
            if (std::find(kinds.begin(), kinds.end(), v) != kinds.end()) {
              kind = data::tokenizer_kind_from_string(v);
              path.clear();
              return;
            }
            if (v == "teacher" || (!v.empty() && std::filesystem::exists(v))) {
              kind = TokenizerKind::pretrained;
              path = v;
              return;
            }
            std::vector<std::string> names = kinds;
            names.push_back("teacher");
            const std::string hint = closest(v, names);
            fail(o, n, p,
                 fmt::format("'{}' is not one of: {}, nor an existing path (a Hugging Face model directory, "
                             "tokenizer.json or tokenizer.model){}",
                             v, join(names), hint.empty() ? "" : fmt::format(" (did you mean '{}'?)", hint)));
          },
          [&kind, &path]() { return YAML::Node(kind == TokenizerKind::pretrained ? path : enum_name(kind)); }};
}

template <typename E>
Field enum_field(const std::string& key, E& ref) {
  return {key, [&ref](const YAML::Node& n, const Origin& o, const std::string& p) { ref = read_enum<E>(n, o, p); },
          [&ref]() { return YAML::Node(enum_name(ref)); }};
}

Field string_list_field(const std::string& key, std::vector<std::string>& ref, std::vector<std::string> allowed) {
  return {key,
          [&ref, allowed](const YAML::Node& n, const Origin& o, const std::string& p) {
            if (!n.IsSequence()) fail(o, n, p, "expected a list of strings, got " + scalar_text(n));
            std::vector<std::string> out;
            for (size_t i = 0; i < n.size(); ++i) {
              const auto item = n[i];
              const std::string ip = fmt::format("{}[{}]", p, i);
              std::string v = read_string(item, o, ip);
              if (!allowed.empty() && std::find(allowed.begin(), allowed.end(), v) == allowed.end()) {
                std::string hint = closest(v, allowed);
                fail(o, item, ip,
                     fmt::format("'{}' is not one of: {}{}", v, join(allowed),
                                 hint.empty() ? "" : fmt::format(" (did you mean '{}'?)", hint)));
              }
              if (std::find(out.begin(), out.end(), v) != out.end()) fail(o, item, ip, "'" + v + "' is listed twice");
              out.push_back(v);
            }
            ref = out;
          },
          [&ref]() {
            YAML::Node n(YAML::NodeType::Sequence);
            for (auto& s : ref) n.push_back(s);
            return n;
          }};
}

Field int_list_field(const std::string& key, std::vector<int64_t>& ref, int64_t lo) {
  return {key,
          [&ref, lo](const YAML::Node& n, const Origin& o, const std::string& p) {
            if (!n.IsSequence()) fail(o, n, p, "expected a list of integers, got " + scalar_text(n));
            std::vector<int64_t> out;
            for (size_t i = 0; i < n.size(); ++i) {
              const std::string ip = fmt::format("{}[{}]", p, i);
              int64_t v = read_int(n[i], o, ip);
              if (v < lo) fail(o, n[i], ip, fmt::format("must be >= {}, got {}", lo, v));
              out.push_back(v);
            }
            ref = out;
          },
          [&ref]() {
            YAML::Node n(YAML::NodeType::Sequence);
            for (auto v : ref) n.push_back(v);
            return n;
          }};
}

/// THE schema. Ranges are the validity domain of each key; cross-key rules live in validate().
std::vector<Section> schema(Config& c) {
  constexpr double kInf = std::numeric_limits<double>::infinity();
  const std::vector<std::string> stages = {"prepare-data", "teacher", "train", "distill", "export", "eval"};
  return {
      {"model",
       {string_field("arch", c.model.arch, {"llama", "qwen3"}),
        int_field("vocab_size", c.model.vocab_size, 0, 1 << 24),
        int_field("hidden_size", c.model.hidden_size, 1, 1 << 20),
        int_field("intermediate_size", c.model.intermediate_size, 1, 1 << 22),
        int_field("num_hidden_layers", c.model.num_hidden_layers, 1, 1024),
        int_field("num_attention_heads", c.model.num_attention_heads, 1, 4096),
        int_field("num_key_value_heads", c.model.num_key_value_heads, 1, 4096),
        int_field("head_dim", c.model.head_dim, 0, 4096),
        int_field("max_position_embeddings", c.model.max_position_embeddings, 1, 1 << 22),
        double_field("rope_theta", c.model.rope_theta, 0, kInf, true),
        double_field("rms_norm_eps", c.model.rms_norm_eps, 0, 1, true),
        bool_field("tie_word_embeddings", c.model.tie_word_embeddings),
        enum_field("hidden_act", c.model.hidden_act), bool_field("subln", c.model.subln),
        bool_field("attention_bias", c.model.attention_bias)}},
      {"quant",
       {enum_field("weight", c.quant.weight), bool_field("mean_center", c.quant.mean_center),
        enum_field("granularity", c.quant.granularity), int_field("group_size", c.quant.group_size, 1, 1 << 20),
        enum_field("scale_mode", c.quant.scale_mode), bool_field("lsq_grad_scale", c.quant.lsq_grad_scale),
        bool_field("fp16_scales", c.quant.fp16_scales), enum_field("ste", c.quant.ste),
        double_field("ste_clip", c.quant.ste_clip, 0, kInf, true), enum_field("activations", c.quant.activations),
        bool_field("input_norm", c.quant.input_norm), double_field("norm_eps", c.quant.norm_eps, 0, 1, true),
        double_field("anchor_fraction", c.quant.anchor_fraction, 0, 0.5),
        enum_field("anchor_selection", c.quant.anchor_selection),
        int_field("anchor_update_steps", c.quant.anchor_update_steps, 0),
        int_field("anchor_freeze_step", c.quant.anchor_freeze_step, 0),
        int_field("warmup_lambda_steps", c.quant.warmup_lambda_steps, 0),
        string_list_field("layers", c.quant.layers, {"attention", "mlp", "lm_head", "embedding"})}},
      {"data",
       {enum_field("format", c.data.format), string_field("path", c.data.path), string_field("glob", c.data.glob),
        string_field("text_field", c.data.text_field), tokenizer_field("tokenizer", c.data.tokenizer, c.data.tokenizer_path),
        int_field("vocab_size", c.data.vocab_size, 16, 1 << 22),
        double_field("val_fraction", c.data.val_fraction, 0, 0.9, true),
        int_field("max_documents", c.data.max_documents, 0), string_field("output_dir", c.data.output_dir),
        uint_field("seed", c.data.seed)}},
      {"train",
       {int_field("max_steps", c.train.max_steps, 1),
        int_field("per_device_train_batch_size", c.train.per_device_train_batch_size, 1, 1 << 20),
        int_field("seq_len", c.train.seq_len, 2, 1 << 22),
        int_field("gradient_accumulation_steps", c.train.gradient_accumulation_steps, 1, 1 << 16),
        double_field("learning_rate", c.train.learning_rate, 0, 10, true),
        double_field("min_lr_ratio", c.train.min_lr_ratio, 0, 1), enum_field("lr_scheduler", c.train.lr_scheduler),
        int_field("warmup_steps", c.train.warmup_steps, 0), double_field("weight_decay", c.train.weight_decay, 0, 10),
        double_field("adam_beta1", c.train.adam_beta1, 0, 1), double_field("adam_beta2", c.train.adam_beta2, 0, 1),
        double_field("adam_epsilon", c.train.adam_epsilon, 0, 1, true),
        double_field("max_grad_norm", c.train.max_grad_norm, 0, kInf), uint_field("seed", c.train.seed),
        bool_field("bf16", c.train.bf16), string_field("device", c.train.device, {"auto", "cpu", "cuda"}),
        int_field("threads", c.train.threads, 0, 4096), int_field("logging_steps", c.train.logging_steps, 1),
        int_field("eval_steps", c.train.eval_steps, 0), int_field("eval_batches", c.train.eval_batches, 1),
        int_field("save_steps", c.train.save_steps, 0), int_field("save_total_limit", c.train.save_total_limit, 1),
        string_field("resume_from_checkpoint", c.train.resume_from_checkpoint),
        enum_field("on_nonfinite", c.train.on_nonfinite),
        string_field("distributed_backend", c.train.distributed_backend, {"auto", "gloo", "nccl"}),
        double_field("distributed_timeout_s", c.train.distributed_timeout_s, 0, kInf, true),
        int_field("zero_stage", c.train.zero_stage, 0, 1), int_field("ddp_bucket_mb", c.train.ddp_bucket_mb, 1, 1 << 16),
        bool_field("skip_memory_check", c.train.skip_memory_check)}},
      {"distill",
       {string_field("teacher", c.distill.teacher), enum_field("student_init", c.distill.student_init),
        double_field("alpha_ce", c.distill.alpha_ce, 0, kInf), double_field("alpha_kd", c.distill.alpha_kd, 0, kInf),
        enum_field("kd_loss", c.distill.kd_loss), double_field("temperature", c.distill.temperature, 0, 100, true),
        double_field("beta", c.distill.beta, 0, 1), double_field("alpha_hidden", c.distill.alpha_hidden, 0, kInf),
        enum_field("hidden_loss", c.distill.hidden_loss), int_list_field("hidden_layers", c.distill.hidden_layers, 0),
        double_field("alpha_attn", c.distill.alpha_attn, 0, kInf),
        int_field("attn_layer", c.distill.attn_layer, -1), int_field("attn_relation_heads", c.distill.attn_relation_heads, 0),
        int_field("calibration_batches", c.distill.calibration_batches, 0)}},
      {"export",
       {bool_field("packed", c.export_.packed), bool_field("gguf", c.export_.gguf), bool_field("hf", c.export_.hf),
        enum_field("gguf_ternary", c.export_.gguf_ternary),
        string_field("dtype", c.export_.dtype, {"bf16", "fp16", "fp32"})}},
      {"eval",
       {int_field("max_batches", c.eval.max_batches, 0), int_field("batch_size", c.eval.batch_size, 1),
        int_field("seq_len", c.eval.seq_len, 2)}},
      {"logging",
       {string_field("level", c.logging.level, {"trace", "debug", "info", "warn", "error"}),
        bool_field("json_metrics", c.logging.json_metrics), bool_field("plot", c.logging.plot)}},
      {"run",
       {string_field("name", c.run.name), string_field("output_dir", c.run.output_dir),
        string_list_field("stages", c.run.stages, stages),
        int_field("teacher_max_steps", c.run.teacher_max_steps, 0), bool_field("fair_teacher", c.run.fair_teacher),
        bool_field("fp_control", c.run.fp_control)}},
  };
}

std::vector<std::string> section_names(const std::vector<Section>& s) {
  std::vector<std::string> v;
  for (auto& x : s) v.push_back(x.name);
  return v;
}

void apply_section(Section& sec, const YAML::Node& node, const Origin& o) {
  if (node.IsNull()) return;  // "train:" with nothing under it keeps the defaults
  if (!node.IsMap()) fail(o, node, sec.name, "expected a mapping of keys, got " + scalar_text(node));
  std::vector<std::string> keys;
  for (auto& f : sec.fields) keys.push_back(f.key);
  std::set<std::string> seen;
  for (auto it = node.begin(); it != node.end(); ++it) {
    if (!it->first.IsScalar()) fail(o, it->first, sec.name, "keys must be plain names");
    const std::string key = it->first.Scalar();
    const std::string path = sec.name + "." + key;
    if (!seen.insert(key).second) fail(o, it->first, path, "key appears twice");
    auto f = std::find_if(sec.fields.begin(), sec.fields.end(), [&](const Field& x) { return x.key == key; });
    if (f == sec.fields.end()) {
      std::string hint = closest(key, keys);
      fail(o, it->first, path,
           hint.empty() ? fmt::format("unknown key (valid keys: {})", join(keys))
                        : fmt::format("unknown key (did you mean '{}'?)", hint));
    }
    f->read(it->second, o, path);
  }
}

void apply_root(Config& cfg, const YAML::Node& root, const Origin& o) {
  if (!root.IsDefined() || root.IsNull()) return;
  if (!root.IsMap())
    fail(o, root, "(top level)", "expected a mapping with sections model, quant, data, train, distill, export, "
                                 "eval, logging, run; got " + scalar_text(root));
  auto secs = schema(cfg);
  auto names = section_names(secs);
  std::set<std::string> seen;
  for (auto it = root.begin(); it != root.end(); ++it) {
    if (!it->first.IsScalar()) fail(o, it->first, "(top level)", "section names must be plain names");
    const std::string name = it->first.Scalar();
    if (!seen.insert(name).second) fail(o, it->first, name, "section appears twice");
    auto s = std::find_if(secs.begin(), secs.end(), [&](const Section& x) { return x.name == name; });
    if (s == secs.end()) {
      std::string hint = closest(name, names);
      fail(o, it->first, name,
           hint.empty() ? fmt::format("unknown section (valid: {})", join(names))
                        : fmt::format("unknown section (did you mean '{}'?)", hint));
    }
    apply_section(*s, it->second, o);
  }
}

YAML::Node load_yaml(const std::string& text, const std::string& source) {
  if (text.size() > kMaxConfigBytes)
    throw ConfigError(fmt::format("{}: config is {} bytes, larger than the {} byte limit for a config file", source,
                                  text.size(), kMaxConfigBytes));
  if (text.find('\0') != std::string::npos)
    throw ConfigError(fmt::format("{}: not a YAML text file (contains NUL bytes)", source));
  try {
    return YAML::Load(text);
  } catch (const YAML::Exception& e) {
    throw ConfigError(fmt::format("{}:{}:{}: not valid YAML: {}", source, e.mark.line + 1, e.mark.column + 1, e.msg));
  }
}

/// Cross-key rules of the model section (shared by validate() and validate_model_config()).
template <typename Bad>
void validate_model_rules(const ModelConfig& m, const Bad& bad) {
  if (m.num_attention_heads % m.num_key_value_heads != 0)
    bad("model.num_key_value_heads", fmt::format("must divide num_attention_heads ({}), got {}",
                                                 m.num_attention_heads, m.num_key_value_heads));
  if (m.head_dim == 0 && m.hidden_size % m.num_attention_heads != 0)
    bad("model.hidden_size", fmt::format("must be divisible by num_attention_heads ({}) when head_dim is 0, got {}",
                                         m.num_attention_heads, m.hidden_size));
  if (m.resolved_head_dim() % 2 != 0)
    bad("model.head_dim", fmt::format("RoPE needs an even head dimension, got {}", m.resolved_head_dim()));
}

/// run.name is one path component: the run directory is <run.output_dir>/<run.name> and nothing may land outside.
std::string run_name_problem(const std::string& n) {
  if (n.empty()) return "is empty; expected a directory name such as 'default'";
  if (n.find('\0') != std::string::npos) return "contains a NUL byte";
  if (n == "." || n == "..") return fmt::format("'{}' is not a directory name", n);
  if (n.find('/') != std::string::npos)
    return fmt::format("'{}' contains '/'; expected a single directory name (run.output_dir says where)", n);
  for (unsigned char ch : n)
    if (ch < 0x20 || ch == 0x7f) return "contains a control character";
  if (n.size() > 255) return fmt::format("is {} bytes; a directory name has at most 255", n.size());
  return "";
}

}  // namespace

void validate_model_config(const ModelConfig& model, const std::string& source) {
  Config c;
  c.model = model;
  auto secs = schema(c);
  const Origin o{source};
  for (auto& sec : secs) {
    if (sec.name != "model") continue;
    // The schema's reader is the range check: write each value back as YAML and read it through its field.
    for (auto& f : sec.fields) f.read(f.write(), o, "model." + f.key);
  }
  validate_model_rules(c.model, [&](const std::string& path, const std::string& msg) {
    throw ConfigError(fmt::format("{}: {}: {}", source, path, msg));
  });
}

void apply_override(Config& cfg, const std::string& assignment) {
  const std::string src = "--set " + assignment;
  const auto eq = assignment.find('=');
  if (eq == std::string::npos || eq == 0)
    throw ConfigError(src + ": expected section.key=value (e.g. train.learning_rate=3e-4)");
  const std::string path = assignment.substr(0, eq), value = assignment.substr(eq + 1);
  const auto dot = path.find('.');
  if (dot == std::string::npos || dot == 0 || dot + 1 == path.size() || path.find('.', dot + 1) != std::string::npos)
    throw ConfigError(src + ": key must be section.key (e.g. train.learning_rate), got '" + path + "'");
  YAML::Node v = value.empty() ? YAML::Node(YAML::NodeType::Null) : load_yaml(value, src);
  YAML::Node root;
  root[path.substr(0, dot)][path.substr(dot + 1)] = v;
  apply_root(cfg, root, Origin{src});
}

void validate(const Config& c, const std::string& src) {
  auto bad = [&](const std::string& path, const std::string& msg) {
    throw ConfigError(fmt::format("{}: {}: {}", src, path, msg));
  };
  const auto& m = c.model;
  validate_model_rules(m, bad);
  const auto& q = c.quant;
  if (q.enabled() && q.granularity == ScaleGranularity::group) {
    const int64_t ins[] = {m.hidden_size, m.intermediate_size, m.num_attention_heads * m.resolved_head_dim()};
    const char* names[] = {"model.hidden_size", "model.intermediate_size", "num_attention_heads*head_dim"};
    for (int i = 0; i < 3; ++i)
      if (ins[i] % q.group_size != 0)
        bad("quant.group_size", fmt::format("must divide every BitLinear input width; {} = {} is not a multiple of {}",
                                            names[i], ins[i], q.group_size));
  }
  if (q.anchor_selection == AnchorSelection::saliency && q.anchor_fraction == 0.0)
    bad("quant.anchor_selection", "saliency selection set but quant.anchor_fraction is 0 (no anchors to select)");
  if (q.enabled() && q.anchor_fraction > 0 && q.anchor_update_steps == 0 && q.anchor_freeze_step > 0)
    bad("quant.anchor_update_steps", "is 0 but anchor_freeze_step > 0: set anchor_freeze_step: 0 to fix anchors at "
                                     "initialisation, or a positive update interval");
  if (q.quantizes("lm_head") && m.tie_word_embeddings && !q.quantizes("embedding"))
    bad("quant.layers", "lm_head is listed but model.tie_word_embeddings is true: the tied head is the embedding "
                        "table, so list 'embedding' too or untie the head");
  if (!q.enabled() && q.activations != ActivationQuant::none)
    bad("quant.activations", "activation quantization needs quantized weights (quant.weight is none)");
  if (c.data.tokenizer == TokenizerKind::byte && m.vocab_size != 0 && m.vocab_size < 258)
    bad("model.vocab_size", fmt::format("a byte tokenizer needs at least 258 ids (256 bytes, bos, eos), got {}",
                                        m.vocab_size));
  if (c.data.tokenizer == TokenizerKind::pretrained && c.data.tokenizer_path == "teacher" && c.distill.teacher.empty())
    bad("data.tokenizer", "'teacher' needs distill.teacher (a Hugging Face model directory or a bitforge checkpoint): "
                          "the run's own teacher stage is trained on a tokenizer bitforge trains");
  if (m.vocab_size != 0 && c.data.tokenizer != TokenizerKind::byte && c.data.tokenizer != TokenizerKind::pretrained &&
      m.vocab_size < c.data.vocab_size)
    bad("model.vocab_size", fmt::format("({}) is smaller than data.vocab_size ({}); set it to 0 to follow the tokenizer",
                                        m.vocab_size, c.data.vocab_size));
  const auto& t = c.train;
  if (t.distributed_backend == "nccl" && t.device == "cpu")
    bad("train.distributed_backend", "nccl needs train.device cuda or auto (train.device is cpu); use gloo or auto");
  if (t.seq_len > m.max_position_embeddings)
    bad("train.seq_len", fmt::format("({}) exceeds model.max_position_embeddings ({})", t.seq_len,
                                     m.max_position_embeddings));
  if (c.eval.seq_len > m.max_position_embeddings)
    bad("eval.seq_len", fmt::format("({}) exceeds model.max_position_embeddings ({})", c.eval.seq_len,
                                    m.max_position_embeddings));
  if (t.warmup_steps > t.max_steps)
    bad("train.warmup_steps", fmt::format("({}) exceeds train.max_steps ({})", t.warmup_steps, t.max_steps));
  if (t.adam_beta1 >= 1.0 || t.adam_beta2 >= 1.0) bad("train.adam_beta", "Adam betas must be < 1");
  const auto& d = c.distill;
  if (d.alpha_ce + d.alpha_kd + d.alpha_hidden + d.alpha_attn == 0.0)
    bad("distill.alpha_ce", "all distillation loss weights are 0; nothing would be trained");
  if (d.alpha_hidden > 0 && d.hidden_layers.empty())
    bad("distill.hidden_layers", "alpha_hidden > 0 needs at least one layer in distill.hidden_layers");
  for (auto l : d.hidden_layers)
    if (l >= m.num_hidden_layers)
      bad("distill.hidden_layers", fmt::format("layer {} does not exist (model has {})", l, m.num_hidden_layers));
  if (d.attn_layer >= m.num_hidden_layers)
    bad("distill.attn_layer", fmt::format("layer {} does not exist (model has {})", d.attn_layer, m.num_hidden_layers));
  if (c.run.stages.empty()) bad("run.stages", "is empty: nothing to run");
  if (const std::string p = run_name_problem(c.run.name); !p.empty()) bad("run.name", p);
  const auto& rs = c.run.stages;
  auto pos = [&](const char* s) { return std::find(rs.begin(), rs.end(), s) - rs.begin(); };
  if (pos("prepare-data") < static_cast<long>(rs.size()) && pos("prepare-data") != 0)
    bad("run.stages", "prepare-data must come first");
}

Config parse_config(const std::string& text, const std::string& source, const std::vector<std::string>& overrides) {
  Config cfg;
  YAML::Node root = load_yaml(text, source);
  apply_root(cfg, root, Origin{source});
  for (const auto& o : overrides) apply_override(cfg, o);
  validate(cfg, overrides.empty() ? source : source + " (with --set overrides)");
  return cfg;
}

Config load_config(const std::string& path, const std::vector<std::string>& overrides) {
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) throw ConfigError(path + ": config file not found");
  if (std::filesystem::is_directory(path, ec)) throw ConfigError(path + ": is a directory, expected a YAML file");
  const auto size = std::filesystem::file_size(path, ec);
  if (ec) throw ConfigError(path + ": cannot read: " + ec.message());
  if (size > kMaxConfigBytes)
    throw ConfigError(fmt::format("{}: config is {} bytes, larger than the {} byte limit for a config file", path, size,
                                  kMaxConfigBytes));
  std::ifstream f(path, std::ios::binary);
  if (!f) throw ConfigError(path + ": cannot open for reading");
  std::stringstream ss;
  ss << f.rdbuf();
  return parse_config(ss.str(), path, overrides);
}

std::string to_yaml(const Config& cfg) {
  Config copy = cfg;
  YAML::Emitter out;
  out << YAML::BeginMap;
  for (auto& sec : schema(copy)) {
    out << YAML::Key << sec.name << YAML::Value << YAML::BeginMap;
    for (auto& f : sec.fields) out << YAML::Key << f.key << YAML::Value << f.write();
    out << YAML::EndMap;
  }
  out << YAML::EndMap;
  return std::string(out.c_str()) + "\n";
}

void save_config(const Config& cfg, const std::string& path) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    if (!f) throw std::runtime_error(path + ": cannot write config");
    f << "# bitforge effective config (all keys, defaults filled in); reload with --config\n" << to_yaml(cfg);
    if (!f.flush()) throw std::runtime_error(path + ": write failed");
  }
  std::filesystem::rename(tmp, path);
}

}  // namespace bitforge
