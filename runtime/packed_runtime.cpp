// Packed-model CPU runtime; contract in runtime/packed_runtime.h, operations mirror trainer/model.cpp.
#include "runtime/packed_runtime.h"

#include <sys/stat.h>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <memory>
#include <nlohmann/json.hpp>

#include "export/ggml_quants.h"
#include "export/model_export.h"
#include "kernels/dense_gemv.h"
#include "kernels/packed_gemv.h"
#include "config/memory_estimate.h"  // bitforge_config: estimate before allocating the KV cache

namespace bitforge::runtime {

using formats::FormatError;

namespace {

std::vector<float> to_f32(const formats::PackedTensor& t) {
  const int64_t n = static_cast<int64_t>(t.bytes.size() / formats::dtype_size(t.dtype));
  std::vector<float> out(static_cast<size_t>(n));
  if (t.dtype == formats::Dtype::F32)
    std::memcpy(out.data(), t.bytes.data(), t.bytes.size());
  else if (t.dtype == formats::Dtype::F16)
    formats::convert_f16_to_f32(reinterpret_cast<const uint16_t*>(t.bytes.data()), out.data(), n);
  else
    formats::convert_bf16_to_f32(reinterpret_cast<const uint16_t*>(t.bytes.data()), out.data(), n);
  return out;
}

kernels::PackedMatrixView view_of(const formats::PackedLayer& L) {
  kernels::PackedMatrixView v;
  v.quant = L.quantizer == WeightQuantizer::binary ? WeightQuantizer::binary : WeightQuantizer::ternary;
  v.out = L.out;
  v.in = L.in;
  v.group_size = L.granularity == ScaleGranularity::group ? L.group_size : L.in;
  v.scale_rows = L.scale_rows();
  v.codes = L.codes.data();
  v.scales = L.scales.data();
  v.anchor_index = L.anchor_index.data();
  v.anchor_value = L.anchor_value.data();
  v.n_anchors = static_cast<int64_t>(L.anchor_index.size());
  return v;
}

/// Products of fewer multiply-adds than this (rows of x × weights) run on one thread: a fork/join costs more.
/// Measured (bench_generate tg128, default model, 2 threads): 2^16 to 2^18 give the same tokens/s within noise,
/// 2^14 is 25 % slower (fork/joins around tiny products), 2^22 20 % slower (the tied head then runs on one thread).
constexpr int64_t kParallelMinMacs = int64_t(1) << 18;
int threads_for(int64_t macs, int threads) { return macs < kParallelMinMacs ? 1 : threads; }

/// A dense (unquantized) weight matrix [out, in], kept in its file dtype when that is bf16 (exactly widened to fp32
/// by the kernel), else as fp32.
struct Dense {
  int64_t out = 0, in = 0;
  std::shared_ptr<const std::vector<uint16_t>> bf16;  // shared: a tied head reuses the embedding's storage
  std::shared_ptr<const std::vector<float>> f32;
  int64_t bytes() const { return bf16 ? int64_t(bf16->size()) * 2 : (f32 ? int64_t(f32->size()) * 4 : 0); }
  void gemv(const float* x, int64_t M, const float* bias, float* y, int threads) const {
    const int t = threads_for(M * out * in, threads);
    if (bf16)
      kernels::dense_gemv_bf16(bf16->data(), out, in, x, M, bias, y, t);
    else
      kernels::dense_gemv_f32(f32->data(), out, in, x, M, bias, y, t);
  }
  void row(int64_t r, float* dst) const {
    if (bf16)
      formats::convert_bf16_to_f32(bf16->data() + r * in, dst, in);
    else
      std::memcpy(dst, f32->data() + r * in, static_cast<size_t>(in) * 4);
  }
};

/// y = x · rsqrt(mean(x²) + eps) · w over rows of n (in place allowed).
void rms_norm(const float* x, const float* w, int64_t rows, int64_t n, double eps, float* y) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * n;
    float* yr = y + r * n;
    double ss = 0;
    for (int64_t i = 0; i < n; ++i) ss += double(xr[i]) * xr[i];
    const float inv = static_cast<float>(1.0 / std::sqrt(ss / double(n) + eps));
    for (int64_t i = 0; i < n; ++i) yr[i] = xr[i] * inv * w[i];
  }
}

/// One projection: packed (with activation mode and optional input norm) or dense.
struct Linear {
  bool packed = false;
  kernels::PackedMatrixView view;                       // layout metadata (codes released once repacked)
  std::shared_ptr<const kernels::RepackedMatrix> lut;   // the table-lookup layout, when the group size allows
  int act_bits = 0;
  std::vector<float> norm_w;  // [in] or empty
  double norm_eps = 1e-6;
  Dense dense;
  std::vector<float> bias;    // [out] or empty
  int64_t out = 0, in = 0;

  /// y [M, out] = this(x [M, in]). scratch: reused buffers.
  void forward(const float* x, int64_t M, float* y, int threads, int force_bits, std::vector<float>& xn,
               std::vector<int8_t>& q, std::vector<float>& s) const {
    if (!norm_w.empty()) {  // BitLinear's input RMSNorm
      xn.resize(static_cast<size_t>(M * in));
      rms_norm(x, norm_w.data(), M, in, norm_eps, xn.data());
      x = xn.data();
    }
    const float* b = bias.empty() ? nullptr : bias.data();
    if (!packed) {
      dense.gemv(x, M, b, y, threads);
      return;
    }
    const int t = threads_for(M * out * in, threads);
    if (const int bits = act_bits ? act_bits : force_bits) {
      q.resize(static_cast<size_t>(M * in));
      s.resize(static_cast<size_t>(M));
      kernels::quantize_activations_per_token(x, M, in, bits, q.data(), s.data());
      if (lut)
        lut->gemv_i8(q.data(), s.data(), M, y, t);
      else
        kernels::packed_gemv_i8(view, q.data(), s.data(), M, y, t);
    } else if (lut) {
      lut->gemv_f32(x, M, y, t);
    } else {
      kernels::packed_gemv_f32(view, x, M, y, t);
    }
    if (b)
      for (int64_t m = 0; m < M; ++m)
        for (int64_t r = 0; r < out; ++r) y[m * out + r] += b[r];
  }
  int64_t resident_bytes() const {
    int64_t n = packed ? (lut ? lut->bytes() : view.packed_bytes()) : dense.bytes();
    return n + static_cast<int64_t>(norm_w.size() + bias.size()) * 4;
  }
  int64_t params() const { return out * in + static_cast<int64_t>(norm_w.size() + bias.size()); }
};

struct Layer {
  std::vector<float> attn_norm, ffn_norm, q_norm, k_norm, attn_sub_norm, mlp_sub_norm;
  Linear q, k, v, o, gate, up, down;
  bool has_gate = false;
  std::vector<float> k_cache, v_cache;  // [kv_heads, P, hd]
};

}  // namespace

struct PackedRuntime::Impl {
  formats::PackedModel model;  // owns the packed layers the views point into
  ModelConfig cfg;
  std::string quant_text;
  nlohmann::json layer_meta;
  int threads = 0;
  int force_act_bits = 0;  // see PackedRuntime::open
  Dense embed;  // [V, H] (dense embedding) or undefined
  bool embed_packed = false;
  kernels::PackedMatrixView embed_view;
  std::vector<Layer> layers;
  std::vector<float> final_norm;
  Linear head;
  std::vector<float> rope_cos, rope_sin;  // [P, hd]; sin signed: −sin on the first half (rotate-half)
  int64_t pos = 0;
  int64_t n_packed = 0;
  int64_t dense_params = 0, dense_bytes = 0;  // embeddings/norms not inside a Linear
  // activations of the current forward (reused across calls)
  std::vector<float> h, xn, qb, kb, vb, att, tmp, gb, ub, lx;
  std::vector<int8_t> lq;
  std::vector<float> ls;

  const formats::PackedTensor& find(const std::string& name, const std::vector<int64_t>& shape) {
    auto it = model.tensors.find(name);
    if (it == model.tensors.end()) throw FormatError("packed runtime: missing tensor '" + name + "'");
    std::vector<int64_t> have(it->second.shape.begin(), it->second.shape.end());
    if (have != shape)
      throw FormatError("packed runtime: tensor '" + name + "' has shape " + c10::str(c10::IntArrayRef(have)) +
                        ", expected " + c10::str(c10::IntArrayRef(shape)));
    return it->second;
  }
  std::vector<float> take(const std::string& name, const std::vector<int64_t>& shape) {
    auto t = to_f32(find(name, shape));
    model.tensors.erase(name);  // the fp32 copy is what stays resident
    return t;
  }
  Dense take_dense(const std::string& name, int64_t out, int64_t in) {
    const auto& t = find(name, {out, in});
    Dense d;
    d.out = out;
    d.in = in;
    if (t.dtype == formats::Dtype::BF16) {
      auto v = std::make_shared<std::vector<uint16_t>>(static_cast<size_t>(out * in));
      std::memcpy(v->data(), t.bytes.data(), v->size() * 2);
      d.bf16 = std::move(v);
    } else {
      d.f32 = std::make_shared<const std::vector<float>>(to_f32(t));
    }
    model.tensors.erase(name);
    return d;
  }
  std::vector<float> norm_tensor(const std::string& name, int64_t dim) {
    auto t = take(name, {dim});
    dense_params += dim;
    dense_bytes += dim * 4;
    return t;
  }

  Linear linear(const std::string& module, int64_t out, int64_t in, bool with_bias) {
    Linear L;
    L.out = out;
    L.in = in;
    const std::string wname = module + ".weight";
    auto it = model.layers.find(wname);
    if (it != model.layers.end()) {
      auto& P = it->second;
      if (P.out != out || P.in != in)
        throw FormatError("packed runtime: layer '" + wname + "' is " + std::to_string(P.out) + "x" +
                          std::to_string(P.in) + ", expected " + std::to_string(out) + "x" + std::to_string(in));
      L.packed = true;
      L.view = view_of(P);
      if (kernels::RepackedMatrix::supports(L.view)) {
        try {
          L.lut = std::make_shared<const kernels::RepackedMatrix>(L.view);
        } catch (const std::invalid_argument& e) {
          throw FormatError("packed runtime: layer '" + wname + "': " + e.what());
        }
        // the repacked copy is what stays resident
        std::vector<uint8_t>().swap(P.codes);
        std::vector<uint16_t>().swap(P.scales);
        std::vector<int64_t>().swap(P.anchor_index);
        std::vector<float>().swap(P.anchor_value);
        L.view.codes = nullptr;
        L.view.scales = nullptr;
        L.view.anchor_index = nullptr;
        L.view.anchor_value = nullptr;
      }
      ++n_packed;
      if (layer_meta.contains(wname)) {
        const auto& e = layer_meta[wname];
        L.act_bits = e.value("activation_bits", 0);
        if (L.act_bits != 0 && L.act_bits != 8 && L.act_bits != 4)
          throw FormatError("packed runtime: layer '" + wname + "': activation_bits must be 0, 8 or 4");
        if (e.value("input_norm", false)) {
          L.norm_w = take(module + ".input_norm_weight", {in});
          L.norm_eps = e.value("input_norm_eps", 1e-6);
        }
      }
    } else {
      L.dense = take_dense(wname, out, in);
    }
    if (with_bias) L.bias = take(module + ".bias", {out});
    return L;
  }

  /// Takes `m` (read_packed of a file, or pack_model in memory); `path` names it in error messages.
  void load(formats::PackedModel m, const std::string& path) {
    model = std::move(m);
    nlohmann::json cj;
    try {
      cj = nlohmann::json::parse(model.config);
    } catch (const nlohmann::json::exception& e) {
      throw FormatError(path + ": __metadata__.config is not the exporter's JSON: " + e.what());
    }
    if (!cj.is_object() || !cj.contains("model"))
      throw FormatError(path + ": __metadata__.config has no 'model' object (not written by export_packed)");
    try {
      cfg = formats::model_config_from_json(cj["model"]);
    } catch (const FormatError& e) {
      throw FormatError(path + ": " + e.what());
    }
    {  // before the RoPE tables and the KV cache for max_position_embeddings are allocated
      struct stat st {};
      const double file_bytes = ::stat(path.c_str(), &st) == 0 ? static_cast<double>(st.st_size) : 0.0;
      check_memory(estimate_packed_runtime_memory(cfg, file_bytes), "packed runtime for " + path);
    }
    quant_text = cj.value("quant", std::string());
    layer_meta = cj.contains("layers") ? cj["layers"] : nlohmann::json::object();

    const int64_t V = cfg.vocab_size, H = cfg.hidden_size, I = cfg.intermediate_size;
    const int64_t nh = cfg.num_attention_heads, kvh = cfg.num_key_value_heads, hd = cfg.head_dim;
    if (auto it = model.layers.find("model.embed_tokens.weight"); it != model.layers.end()) {
      embed_packed = true;
      embed_view = view_of(it->second);
      if (embed_view.out != V || embed_view.in != H) throw FormatError(path + ": embedding layer shape mismatch");
      ++n_packed;
    } else {
      embed = take_dense("model.embed_tokens.weight", V, H);
      dense_params += V * H;
      dense_bytes += embed.bytes();
    }
    for (int64_t i = 0; i < cfg.num_hidden_layers; ++i) {
      const std::string p = "model.layers." + std::to_string(i) + ".";
      Layer l;
      l.attn_norm = norm_tensor(p + "input_layernorm.weight", H);
      l.ffn_norm = norm_tensor(p + "post_attention_layernorm.weight", H);
      l.q = linear(p + "self_attn.q_proj", nh * hd, H, cfg.attention_bias);
      l.k = linear(p + "self_attn.k_proj", kvh * hd, H, cfg.attention_bias);
      l.v = linear(p + "self_attn.v_proj", kvh * hd, H, cfg.attention_bias);
      l.o = linear(p + "self_attn.o_proj", H, nh * hd, cfg.attention_bias);
      if (cfg.arch == "qwen3") {
        l.q_norm = norm_tensor(p + "self_attn.q_norm.weight", hd);
        l.k_norm = norm_tensor(p + "self_attn.k_norm.weight", hd);
      }
      if (cfg.subln) {
        l.attn_sub_norm = norm_tensor(p + "self_attn.sub_norm.weight", nh * hd);
        l.mlp_sub_norm = norm_tensor(p + "mlp.sub_norm.weight", I);
      }
      l.has_gate = cfg.hidden_act == MlpActivation::swiglu;
      if (l.has_gate) l.gate = linear(p + "mlp.gate_proj", I, H, false);
      l.up = linear(p + "mlp.up_proj", I, H, false);
      l.down = linear(p + "mlp.down_proj", H, I, false);
      layers.push_back(std::move(l));
    }
    final_norm = norm_tensor("model.norm.weight", H);
    if (cfg.tie_word_embeddings) {
      head.out = V;
      head.in = H;
      if (embed_packed) {
        head.packed = true;  // training: torch::linear(h, effective table): float activations
        head.view = embed_view;
        if (kernels::RepackedMatrix::supports(embed_view))  // the table stays for row lookups; the head gets a copy
          head.lut = std::make_shared<const kernels::RepackedMatrix>(embed_view);
      } else {
        head.dense = embed;  // shares the table; counted once (in dense_bytes)
      }
    } else {
      head = linear("lm_head", V, H, false);
    }
    if (!model.tensors.empty())
      throw FormatError(path + ": tensor '" + model.tensors.begin()->first + "' is not used by a " + cfg.arch +
                        " decoder with this config");
    for (const auto& [name, L] : model.layers) {
      (void)L;
      if (name != "model.embed_tokens.weight" && name.find("model.layers.") != 0 && name != "lm_head.weight")
        throw FormatError(path + ": quantized layer '" + name + "' is not part of the decoder");
    }
    // RoPE tables: the same LibTorch ops as TransformerImpl's constructor (rotate-half, signed sin).
    const int64_t half = hd / 2;
    auto exponent = torch::arange(0, hd, 2, torch::kInt64).to(torch::kFloat) / static_cast<double>(hd);
    auto inv_freq = 1.0 / torch::pow(cfg.rope_theta, exponent);
    auto positions = torch::arange(cfg.max_position_embeddings, torch::kInt64).to(torch::kFloat);
    auto freqs = torch::outer(positions, inv_freq);
    auto emb = torch::cat({freqs, freqs}, -1);
    auto cos = emb.cos().contiguous();
    auto sin = emb.sin();
    auto sin_signed = torch::cat({-sin.narrow(-1, 0, half), sin.narrow(-1, half, half)}, -1).contiguous();
    rope_cos.assign(cos.data_ptr<float>(), cos.data_ptr<float>() + cos.numel());
    rope_sin.assign(sin_signed.data_ptr<float>(), sin_signed.data_ptr<float>() + sin_signed.numel());
    for (auto& l : layers) {
      l.k_cache.assign(static_cast<size_t>(kvh * cfg.max_position_embeddings * hd), 0.f);
      l.v_cache.assign(l.k_cache.size(), 0.f);
    }
    reset();
  }

  void reset() { pos = 0; }  // cache entries at or beyond pos are never read

  void lin(const Linear& L, const float* x, int64_t M, float* y) {
    L.forward(x, M, y, threads, L.packed ? force_act_bits : 0, lx, lq, ls);
  }

  /// RoPE (rotate-half) on rows of heads × hd at position p: x' = x·cos + swap(x)·sin_signed.
  void rope(float* x, int64_t heads, int64_t p) const {
    const int64_t hd = cfg.head_dim, half = hd / 2;
    const float* c = rope_cos.data() + p * hd;
    const float* s = rope_sin.data() + p * hd;
    for (int64_t h = 0; h < heads; ++h) {
      float* v = x + h * hd;
      for (int64_t i = 0; i < half; ++i) {
        const float a = v[i], b = v[i + half];
        v[i] = a * c[i] + b * s[i];
        v[i + half] = b * c[i + half] + a * s[i + half];
      }
    }
  }

  /// Logits for tokens appended at positions pos..pos+T-1 (plain loops + the packed/dense GEMV kernels): [T, V], or
  /// with last_only [1, V] for the last token alone. last_only does what llama.cpp does for a prompt whose earlier
  /// logits are not wanted (and a little more): the last layer computes K and V for every token (the cache needs
  /// them) but its query, attention, output projection and MLP only for the last token, and the final norm and head
  /// run on one row. Every per-row operation is the same as in the full pass, so the logits are bit-identical.
  torch::Tensor forward(const std::vector<int32_t>& tokens, bool last_only = false) {
    const int64_t T = static_cast<int64_t>(tokens.size());
    const int64_t V = cfg.vocab_size, H = cfg.hidden_size, I = cfg.intermediate_size;
    if (T < 1) throw std::invalid_argument("packed runtime: empty token sequence");
    if (pos + T > cfg.max_position_embeddings)
      throw std::invalid_argument("packed runtime: position " + std::to_string(pos + T) +
                                  " exceeds max_position_embeddings = " + std::to_string(cfg.max_position_embeddings));
    for (int32_t t : tokens)
      if (t < 0 || t >= V)
        throw std::invalid_argument("packed runtime: token " + std::to_string(t) + " outside [0, " + std::to_string(V) + ")");
    const int64_t nh = cfg.num_attention_heads, kvh = cfg.num_key_value_heads, hd = cfg.head_dim;
    const int64_t Pmax = cfg.max_position_embeddings, group = nh / kvh;
    const double eps = cfg.rms_norm_eps;
    auto grow = [](std::vector<float>& v, int64_t n) {
      if (static_cast<int64_t>(v.size()) < n) v.resize(static_cast<size_t>(n));
    };
    grow(h, T * H), grow(xn, T * std::max(H, I)), grow(qb, T * nh * hd), grow(kb, T * kvh * hd);
    grow(vb, T * kvh * hd), grow(att, T * nh * hd), grow(tmp, T * H), grow(gb, T * I), grow(ub, T * I);
    for (int64_t i = 0; i < T; ++i) {
      if (embed_packed)
        kernels::packed_dequant_row(embed_view, tokens[i], h.data() + i * H);
      else
        embed.row(tokens[i], h.data() + i * H);
    }
    const float scale = static_cast<float>(1.0 / std::sqrt(double(hd)));
    int64_t t0 = 0;  // first token whose output this layer computes (T - 1 in the last layer under last_only)
    for (size_t li = 0; li < layers.size(); ++li) {
      auto& l = layers[li];
      if (last_only && li + 1 == layers.size()) t0 = T - 1;
      const int64_t R = T - t0;  // rows of output
      rms_norm(h.data(), l.attn_norm.data(), T, H, eps, xn.data());
      lin(l.q, xn.data() + t0 * H, R, qb.data() + t0 * nh * hd);
      lin(l.k, xn.data(), T, kb.data());
      lin(l.v, xn.data(), T, vb.data());
      for (int64_t t = 0; t < T; ++t) {
        float* q = qb.data() + t * nh * hd;
        float* k = kb.data() + t * kvh * hd;
        if (!l.q_norm.empty()) {
          if (t >= t0) rms_norm(q, l.q_norm.data(), nh, hd, eps, q);
          rms_norm(k, l.k_norm.data(), kvh, hd, eps, k);
        }
        if (t >= t0) rope(q, nh, pos + t);
        rope(k, kvh, pos + t);
        for (int64_t g = 0; g < kvh; ++g) {
          std::memcpy(l.k_cache.data() + (g * Pmax + pos + t) * hd, k + g * hd, static_cast<size_t>(hd) * 4);
          std::memcpy(l.v_cache.data() + (g * Pmax + pos + t) * hd, vb.data() + (t * kvh + g) * hd,
                      static_cast<size_t>(hd) * 4);
        }
      }
      // causal attention: token t (position pos + t) sees positions 0..pos + t; (token, head) pairs in parallel
      // when the prompt is long enough to pay for the fork/join
      auto attend = [&](int64_t i0, int64_t i1) {
        thread_local std::vector<float> sc;
        if (static_cast<int64_t>(sc.size()) < pos + T) sc.resize(static_cast<size_t>(pos + T));
        for (int64_t i = i0; i < i1; ++i) {
          const int64_t t = i / nh, hh = i % nh, n = pos + t + 1;
          const float* q = qb.data() + (t * nh + hh) * hd;
          const float* kc = l.k_cache.data() + (hh / group) * Pmax * hd;
          const float* vc = l.v_cache.data() + (hh / group) * Pmax * hd;
          float mx = -INFINITY;
          for (int64_t j = 0; j < n; ++j) {
            sc[j] = kernels::dot_f32(q, kc + j * hd, hd) * scale;
            mx = std::max(mx, sc[j]);
          }
          float z = 0.f;
          for (int64_t j = 0; j < n; ++j) z += sc[j] = std::exp(sc[j] - mx);
          const float inv = 1.f / z;
          float* o = att.data() + (t * nh + hh) * hd;
          std::fill(o, o + hd, 0.f);
          for (int64_t j = 0; j < n; ++j) kernels::axpy_f32(o, sc[j] * inv, vc + j * hd, hd);
        }
      };
      const int64_t attn_macs = R * nh * (pos + t0 + (R + 1) / 2) * hd * 2;
      if (const int64_t nt = std::min<int64_t>(threads_for(attn_macs, threads), R * nh); nt > 1) {
        // causal: later tokens see more positions, so contiguous ranges would be unbalanced; worker c takes every
        // nt-th (token, head) pair instead
        at::parallel_for(0, nt, 1, [&](int64_t c0, int64_t c1) {
          for (int64_t c = c0; c < c1; ++c)
            for (int64_t i = t0 * nh + c; i < T * nh; i += nt) attend(i, i + 1);
        });
      } else {
        attend(t0 * nh, T * nh);
      }
      if (t0 > 0) {  // from here on only the output rows: move them to the front of the activations
        std::memmove(att.data(), att.data() + t0 * nh * hd, static_cast<size_t>(R * nh * hd) * 4);
        std::memmove(h.data(), h.data() + t0 * H, static_cast<size_t>(R * H) * 4);
      }
      if (!l.attn_sub_norm.empty()) rms_norm(att.data(), l.attn_sub_norm.data(), R, nh * hd, eps, att.data());
      lin(l.o, att.data(), R, tmp.data());
      for (int64_t i = 0; i < R * H; ++i) h[i] += tmp[i];
      rms_norm(h.data(), l.ffn_norm.data(), R, H, eps, xn.data());
      if (l.has_gate) {
        lin(l.gate, xn.data(), R, gb.data());
        lin(l.up, xn.data(), R, ub.data());
        kernels::silu_mul_f32(gb.data(), ub.data(), R * I, threads_for(R * I * 16, threads));
      } else {
        lin(l.up, xn.data(), R, ub.data());
        for (int64_t i = 0; i < R * I; ++i) {
          const float r = std::max(ub[i], 0.f);
          ub[i] = r * r;
        }
      }
      if (!l.mlp_sub_norm.empty()) rms_norm(ub.data(), l.mlp_sub_norm.data(), R, I, eps, ub.data());
      lin(l.down, ub.data(), R, tmp.data());
      for (int64_t i = 0; i < R * H; ++i) h[i] += tmp[i];
    }
    pos += T;
    const int64_t R = T - t0;
    rms_norm(h.data(), final_norm.data(), R, H, eps, xn.data());
    auto logits = torch::empty({R, V}, torch::kFloat);
    lin(head, xn.data(), R, logits.data_ptr<float>());
    return logits;
  }

  int64_t resident() const {
    int64_t b = dense_bytes + (embed_packed ? embed_view.packed_bytes() : 0);
    for (const auto& l : layers)
      for (const Linear* L : {&l.q, &l.k, &l.v, &l.o, &l.gate, &l.up, &l.down})
        if (L->out) b += L->resident_bytes();
    if (!cfg.tie_word_embeddings) b += head.resident_bytes();
    if (cfg.tie_word_embeddings && embed_packed && head.lut) b += head.lut->bytes();  // the head's repacked copy
    return b;
  }
  int64_t params() const {
    int64_t n = dense_params + (embed_packed ? embed_view.out * embed_view.in : 0);
    for (const auto& l : layers)
      for (const Linear* L : {&l.q, &l.k, &l.v, &l.o, &l.gate, &l.up, &l.down})
        if (L->out) n += L->params();
    if (!cfg.tie_word_embeddings) n += head.params();
    return n;
  }
};

PackedRuntime::PackedRuntime() : impl_(std::make_unique<Impl>()) {}
PackedRuntime::~PackedRuntime() = default;

std::unique_ptr<PackedRuntime> PackedRuntime::open(const std::string& path, int threads, int activation_bits) {
  return open(formats::read_packed(path), threads, activation_bits, path);
}

std::unique_ptr<PackedRuntime> PackedRuntime::open(formats::PackedModel model, int threads, int activation_bits,
                                                   const std::string& label) {
  if (activation_bits != 0 && activation_bits != 8)
    throw std::invalid_argument("packed runtime: activation_bits must be 0 (as exported) or 8, got " +
                                std::to_string(activation_bits));
  std::unique_ptr<PackedRuntime> rt(new PackedRuntime());
  rt->impl_->threads = threads;
  rt->impl_->force_act_bits = activation_bits;
  rt->impl_->load(std::move(model), label);
  return rt;
}

torch::Tensor PackedRuntime::logits(const std::vector<int32_t>& tokens) {
  impl_->reset();
  return impl_->forward(tokens);
}
torch::Tensor PackedRuntime::append(const std::vector<int32_t>& tokens) { return impl_->forward(tokens); }
torch::Tensor PackedRuntime::prefill(const std::vector<int32_t>& tokens) {
  return impl_->forward(tokens, /*last_only=*/true).squeeze(0);
}
torch::Tensor PackedRuntime::step(int32_t token) { return impl_->forward({token}).squeeze(0); }
void PackedRuntime::reset() { impl_->reset(); }
int64_t PackedRuntime::position() const { return impl_->pos; }
const ModelConfig& PackedRuntime::config() const { return impl_->cfg; }
const std::string& PackedRuntime::tokenizer_kind() const { return impl_->model.tokenizer_kind; }
const std::vector<uint8_t>& PackedRuntime::tokenizer_bytes() const { return impl_->model.tokenizer; }
const std::string& PackedRuntime::quant_config() const { return impl_->quant_text; }
int64_t PackedRuntime::resident_weight_bytes() const { return impl_->resident(); }
int64_t PackedRuntime::fp16_bytes() const { return impl_->params() * 2; }
int64_t PackedRuntime::packed_layers() const { return impl_->n_packed; }

std::vector<int32_t> PackedRuntime::generate(const std::vector<int32_t>& prompt, const GenerationOptions& o,
                                             GenerationStats* stats) {
  if (prompt.empty()) throw std::invalid_argument("generate: empty prompt");
  using clock = std::chrono::steady_clock;
  const auto t0 = clock::now();
  auto t1 = t0;
  std::mt19937_64 rng(o.seed);
  reset();
  torch::Tensor next = prefill(prompt);
  std::vector<int32_t> out;
  bool at_context = false;
  for (int64_t i = 0; i < o.max_new_tokens; ++i) {
    const int32_t t = sample_token(next, o, rng);
    out.push_back(t);
    if (i == 0) t1 = clock::now();
    if (o.on_token) o.on_token(t);
    if (t == o.eos_id || i + 1 == o.max_new_tokens) break;
    if (impl_->pos >= impl_->cfg.max_position_embeddings) {  // no room in the cache for the token just sampled
      at_context = true;
      break;
    }
    next = step(t);
  }
  if (stats) {
    stats->prompt_tokens = static_cast<int64_t>(prompt.size());
    stats->prompt_seconds = std::chrono::duration<double>(t1 - t0).count();
    stats->generated_tokens = static_cast<int64_t>(out.size());
    stats->decode_seconds = std::chrono::duration<double>(clock::now() - t1).count();
    stats->stopped_at_context = at_context;
  }
  return out;
}

double NllStats::perplexity() const { return std::exp(mean()); }

NllStats nll_from_logits(const torch::Tensor& logits, const std::vector<int32_t>& tokens) {
  TORCH_CHECK(logits.dim() == 2 && logits.size(0) == static_cast<int64_t>(tokens.size()),
              "nll_from_logits: logits must be [T, V] with T = tokens.size()");
  NllStats s;
  const int64_t T = logits.size(0);
  if (T < 2) return s;
  auto lp = torch::log_softmax(logits.narrow(0, 0, T - 1).to(torch::kDouble), -1);
  std::vector<int64_t> tgt(tokens.begin() + 1, tokens.end());
  auto idx = torch::tensor(tgt, torch::kLong).unsqueeze(1);
  s.nll_sum = -lp.gather(1, idx).sum().item<double>();
  s.count = T - 1;
  return s;
}

NllStats sliding_window_perplexity(const std::vector<int32_t>& tokens, int64_t window, int64_t stride,
                                   const WindowLogits& logits) {
  if (window < 2 || stride < 1 || stride > window)
    throw std::invalid_argument("sliding_window_perplexity: need window >= 2 and 1 <= stride <= window, got window " +
                                std::to_string(window) + ", stride " + std::to_string(stride));
  NllStats total;
  const int64_t n = static_cast<int64_t>(tokens.size());
  int64_t prev_end = 0;
  for (int64_t begin = 0; begin < n; begin += stride) {
    const int64_t end = std::min(begin + window, n);
    const int64_t first_label = std::max<int64_t>(1, (end - begin) - (end - prev_end));  // window-relative
    if (end - begin >= 2 && first_label < end - begin) {
      std::vector<int32_t> w(tokens.begin() + begin, tokens.begin() + end);
      const int64_t T = end - begin;
      auto lp = torch::log_softmax(logits(w).to(torch::kFloat).narrow(0, first_label - 1, T - first_label)
                                       .to(torch::kDouble), -1);
      std::vector<int64_t> tgt(w.begin() + first_label, w.end());
      total.nll_sum -= lp.gather(1, torch::tensor(tgt, torch::kLong).unsqueeze(1)).sum().item<double>();
      total.count += T - first_label;
    }
    prev_end = end;
    if (end == n) break;
  }
  return total;
}

NllStats perplexity(PackedRuntime& rt, const std::vector<int32_t>& tokens, int64_t window) {
  if (window < 2 || window > rt.config().max_position_embeddings)
    throw std::invalid_argument("perplexity: window must be in [2, max_position_embeddings]");
  return sliding_window_perplexity(tokens, window, window,
                                   [&rt](const std::vector<int32_t>& w) { return rt.logits(w); });
}

KlTop1 kl_and_top1(const torch::Tensor& reference_logits, const torch::Tensor& logits) {
  TORCH_CHECK(reference_logits.sizes() == logits.sizes(), "kl_and_top1: shapes differ: ", reference_logits.sizes(),
              " vs ", logits.sizes());
  auto r = reference_logits.to(torch::kDouble).reshape({-1, reference_logits.size(-1)});
  auto l = logits.to(torch::kDouble).reshape({-1, logits.size(-1)});
  auto lpr = torch::log_softmax(r, -1), lpl = torch::log_softmax(l, -1);
  auto kl = (lpr.exp() * (lpr - lpl)).sum(-1);
  KlTop1 out;
  out.positions = r.size(0);
  out.mean_kl = kl.mean().item<double>();
  out.top1 = (r.argmax(-1) == l.argmax(-1)).to(torch::kDouble).mean().item<double>();
  return out;
}

int32_t sample_token(const torch::Tensor& logits, const GenerationOptions& o, std::mt19937_64& rng) {
  auto l = logits.to(torch::kDouble).contiguous().reshape({-1});
  const int64_t V = l.size(0);
  const double* p = l.data_ptr<double>();
  if (o.temperature <= 0) return static_cast<int32_t>(std::max_element(p, p + V) - p);
  std::vector<int64_t> order(static_cast<size_t>(V));
  for (int64_t i = 0; i < V; ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return p[a] > p[b]; });
  int64_t keep = V;
  if (o.top_k > 0) keep = std::min(keep, o.top_k);
  std::vector<double> prob(static_cast<size_t>(keep));
  const double mx = p[order[0]] / o.temperature;
  double z = 0;
  for (int64_t i = 0; i < keep; ++i) z += prob[i] = std::exp(p[order[i]] / o.temperature - mx);
  for (auto& v : prob) v /= z;
  if (o.top_p < 1.0) {
    double c = 0;
    int64_t k = 0;
    while (k < keep) {
      c += prob[k++];
      if (c >= o.top_p) break;
    }
    keep = std::max<int64_t>(k, 1);
    z = 0;
    for (int64_t i = 0; i < keep; ++i) z += prob[i];
    for (int64_t i = 0; i < keep; ++i) prob[i] /= z;
  }
  const double u = std::uniform_real_distribution<double>(0.0, 1.0)(rng);
  double c = 0;
  for (int64_t i = 0; i < keep; ++i) {
    c += prob[i];
    if (u < c) return static_cast<int32_t>(order[i]);
  }
  return static_cast<int32_t>(order[keep - 1]);
}

}  // namespace bitforge::runtime
