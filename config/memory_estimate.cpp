// Memory estimates; formulas and sources in config/memory_estimate.h.
#include "config/memory_estimate.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <fstream>
#include <sstream>

#include <fmt/format.h>

namespace bitforge {
namespace {

std::atomic<bool> g_skip{false};

bool env_skip() {
  const char* v = std::getenv("BITFORGE_SKIP_MEMORY_CHECK");
  return v && *v && std::string(v) != "0";
}

/// A number from a one-line file (cgroup), or -1 ("max", missing, garbage).
double read_number_file(const std::string& path) {
  std::ifstream f(path);
  std::string s;
  if (!(f >> s) || s == "max") return -1;
  char* end = nullptr;
  const double v = std::strtod(s.c_str(), &end);
  return end && *end == '\0' && v >= 0 ? v : -1;
}

double layer_params(const ModelConfig& m) {
  const double H = m.hidden_size, I = m.intermediate_size, nh = m.num_attention_heads,
               kvh = m.num_key_value_heads, hd = m.resolved_head_dim();
  double p = H * nh * hd + 2 * H * kvh * hd + nh * hd * H;
  if (m.attention_bias) p += nh * hd + 2 * kvh * hd + H;
  p += (m.hidden_act == MlpActivation::swiglu ? 3 : 2) * H * I;
  p += 2 * H;                                    // input / post-attention norms
  if (m.arch == "qwen3") p += 2 * hd;             // q/k norms
  if (m.subln) p += nh * hd + I;                 // sub-norms
  return p;
}

double rope_bytes(const ModelConfig& m) { return 4.0 * 6 * double(m.max_position_embeddings) * m.resolved_head_dim(); }

}  // namespace

std::string format_bytes(double b) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
  int u = 0;
  while (b >= 1024 && u < 5) b /= 1024, ++u;
  return fmt::format("{:.1f} {}", b, units[u]);
}

std::string MemoryEstimate::describe() const {
  std::string s;
  auto add = [&](const char* name, double v) {
    if (v <= 0) return;
    s += fmt::format("{}{} {}", s.empty() ? "" : " + ", name, format_bytes(v));
  };
  add("weights", weights);
  add("gradients", gradients);
  add("AdamW moments", optimizer);
  add("quantizer", quantizer);
  add("activations", activations);
  add("RoPE tables", rope);
  add("KV cache", kv_cache);
  return fmt::format("{} parameters: {} = {}", parameters, s, format_bytes(total()));
}

int64_t count_parameters(const ModelConfig& m) {
  const double V = m.vocab_size, H = m.hidden_size;
  double p = V * H + layer_params(m) * double(m.num_hidden_layers) + H;  // embeddings, layers, final norm
  if (!m.tie_word_embeddings) p += V * H;
  return p > 9e18 ? int64_t(9e18) : static_cast<int64_t>(p);
}

int64_t count_quantized_parameters(const ModelConfig& m, const QuantConfig& q) {
  if (!q.enabled()) return 0;
  const double H = m.hidden_size, I = m.intermediate_size, nh = m.num_attention_heads,
               kvh = m.num_key_value_heads, hd = m.resolved_head_dim(), V = m.vocab_size, L = m.num_hidden_layers;
  double p = 0;
  if (q.quantizes("attention")) p += L * (2 * H * nh * hd + 2 * H * kvh * hd);
  if (q.quantizes("mlp")) p += L * (m.hidden_act == MlpActivation::swiglu ? 3 : 2) * H * I;
  if (q.quantizes("embedding")) p += V * H;
  if (q.quantizes("lm_head") && !m.tie_word_embeddings) p += V * H;
  return p > 9e18 ? int64_t(9e18) : static_cast<int64_t>(p);
}

MemoryEstimate estimate_training_memory(const Config& c) {
  const auto& m = c.model;
  MemoryEstimate e;
  e.parameters = count_parameters(m);
  const double P = double(e.parameters), Pq = double(count_quantized_parameters(m, c.quant));
  e.weights = 4 * P;
  e.gradients = 4 * P;
  e.optimizer = 8 * P;
  e.quantizer = 4 * Pq;
  const double B = c.train.per_device_train_batch_size, T = c.train.seq_len, L = m.num_hidden_layers,
               H = m.hidden_size, I = m.intermediate_size, nh = m.num_attention_heads, V = m.vocab_size;
  e.activations = 4 * (B * T * L * (16 * H + 4 * I) + 2 * B * nh * T * T * L + 3 * B * T * V);
  e.rope = rope_bytes(m);
  return e;
}

MemoryEstimate estimate_checkpoint_inference_memory(const ModelConfig& m, int64_t batch, int64_t seq) {
  MemoryEstimate e;
  e.parameters = count_parameters(m);
  e.weights = 4 * double(e.parameters);
  const double B = batch, T = seq, H = m.hidden_size, I = m.intermediate_size, nh = m.num_attention_heads,
               V = m.vocab_size;
  e.activations = 4 * (B * T * (16 * H + 4 * I) + 2 * B * nh * T * T + 3 * B * T * V);
  e.rope = rope_bytes(m);
  return e;
}

MemoryEstimate estimate_packed_runtime_memory(const ModelConfig& m, double weight_bytes) {
  MemoryEstimate e;
  e.parameters = count_parameters(m);
  e.weights = weight_bytes;
  e.rope = rope_bytes(m);
  e.kv_cache = 4.0 * 2 * double(m.num_hidden_layers) * double(m.num_key_value_heads) *
               double(m.max_position_embeddings) * double(m.resolved_head_dim());
  e.activations = 4.0 * (16 * double(m.hidden_size) + 4 * double(m.intermediate_size) + 3 * double(m.vocab_size)) *
                  std::min<double>(512, double(m.max_position_embeddings));  // a prompt chunk
  return e;
}

AvailableMemory available_memory() {
  AvailableMemory a{-1, ""};
  {
    std::ifstream f("/proc/meminfo");
    std::string key, unit;
    double kb = 0;
    while (f >> key >> kb) {
      std::getline(f, unit);
      if (key == "MemAvailable:") {
        a = {kb * 1024, "MemAvailable in /proc/meminfo"};
        break;
      }
    }
  }
  // cgroup v2, then v1: the limit minus what the group already uses.
  struct Pair {
    const char *limit, *usage, *name;
  };
  const Pair cgroups[] = {{"/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current", "cgroup memory.max"},
                          {"/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes",
                           "cgroup memory.limit_in_bytes"}};
  for (const auto& g : cgroups) {
    const double limit = read_number_file(g.limit), usage = read_number_file(g.usage);
    if (limit <= 0 || limit > 1e18 || usage < 0) continue;
    const double left = std::max(0.0, limit - usage);
    if (a.bytes < 0 || left < a.bytes) a = {left, g.name};
    break;
  }
  return a;
}

void set_skip_memory_check(bool skip) { g_skip = skip; }
bool skip_memory_check() { return g_skip || env_skip(); }

void check_memory(const MemoryEstimate& e, const std::string& what, bool skip, const AvailableMemory* available) {
  const AvailableMemory a = available ? *available : available_memory();
  if (a.bytes < 0) return;  // unknown: nothing to compare with
  const double need = e.total();
  if (need <= a.bytes) {
    if (need > 0.8 * a.bytes)
      spdlog::warn("{}: needs about {} of the {} available ({}); close to the limit", what, format_bytes(need),
                   format_bytes(a.bytes), a.source);
    return;
  }
  const std::string msg =
      fmt::format("{}: estimated memory {} exceeds the {} available ({}). Estimate: {}. Reduce the model "
                  "(model.hidden_size, num_hidden_layers, intermediate_size, vocab_size, max_position_embeddings) or "
                  "the batch (train.per_device_train_batch_size, train.seq_len), or set train.skip_memory_check: true "
                  "(or BITFORGE_SKIP_MEMORY_CHECK=1) to try anyway",
                  what, format_bytes(need), format_bytes(a.bytes), a.source, e.describe());
  if (skip || skip_memory_check()) {
    spdlog::warn("{} (check skipped on request)", msg);
    return;
  }
  throw ResourceError(msg);
}

}  // namespace bitforge
