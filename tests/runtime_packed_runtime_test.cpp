// Packed runtime (runtime/packed_runtime.h) against an independent plain-LibTorch decoder written here from the
// exporter's data (unpacked weights, explicit softmax attention, rotate-half RoPE written out per pair), plus
// KV-cache decoding, windows for perplexity, KL/top-1, sampling and errors.
// Tolerance: 1e-4 of max|logit| for float activations; 2e-3 with A8/A4 activation quantization, because this
// reference's different fp32 rounding can move an activation across an integer rounding boundary (the exact
// parity with the trainer's own forward is tests/trainer_export_runtime_test.cpp).
#include "runtime/packed_runtime.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>

#include "export/model_export.h"
#include "tests/fixtures/export/test_util.h"
#include "tests/fixtures/export/tiny_model.h"

using namespace bitforge;
using bitforge::tiny::TinySpec;

namespace {

/// A file in this test binary's temporary directory (removed, with anything left in it, at exit).
std::string temp_path(const std::string& name) {
  static const test::TempDir dir;
  return dir.file(name);
}

torch::Tensor vec_tensor(const std::vector<float>& v, std::vector<int64_t> shape) {
  return torch::from_blob(const_cast<float*>(v.data()), shape, torch::kFloat).clone();
}

/// Independent reference decoder over an ExportModel.
struct Reference {
  const formats::ExportModel& m;
  explicit Reference(const formats::ExportModel& mm) : m(mm) {}

  const formats::ExportLayer* layer(const std::string& n) const {
    for (const auto& L : m.layers)
      if (L.name == n) return &L;
    return nullptr;
  }
  torch::Tensor weight(const std::string& n) const {
    if (const auto* L = layer(n)) {
      auto P = formats::pack_layer(L->quantizer, L->granularity, L->group_size, L->out, L->in, L->codes.data(),
                                   L->scales.data(), L->anchor_index.data(), L->anchor_value.data(),
                                   int64_t(L->anchor_index.size()));
      return vec_tensor(formats::unpack_layer(P), {L->out, L->in});
    }
    const auto& t = m.tensors.at(n);
    return vec_tensor(t.data, t.shape);
  }
  torch::Tensor rms(const torch::Tensor& x, const torch::Tensor& w, double eps) const {
    return x * torch::rsqrt(x.pow(2).mean(-1, true) + eps) * w;
  }
  torch::Tensor linear(const torch::Tensor& x0, const std::string& module) const {
    auto x = x0;
    if (const auto* L = layer(module + ".weight")) {
      if (!L->input_norm_weight.empty()) x = rms(x, vec_tensor(L->input_norm_weight, {L->in}), L->input_norm_eps);
      if (L->activation_bits) {
        const double qp = L->activation_bits == 8 ? 127 : 7;
        auto s = qp / x.abs().amax(-1, true).clamp_min(1e-5);
        x = (x * s).round().clamp(-qp - 1, qp) / s;
      }
    }
    auto y = torch::matmul(x, weight(module + ".weight").t());
    if (m.tensors.count(module + ".bias")) y = y + weight(module + ".bias");
    return y;
  }
  torch::Tensor forward(const std::vector<int32_t>& tokens) const {
    const auto& c = m.config;
    const int64_t T = int64_t(tokens.size()), nh = c.num_attention_heads, kvh = c.num_key_value_heads;
    const int64_t hd = c.resolved_head_dim(), half = hd / 2;
    const double eps = c.rms_norm_eps;
    auto table = weight("model.embed_tokens.weight");
    std::vector<int64_t> t64(tokens.begin(), tokens.end());
    auto h = table.index_select(0, torch::tensor(t64, torch::kLong));
    // RoPE, rotate-half, one pair (i, i + d/2) at a time
    auto rope = [&](torch::Tensor x) {  // [T, heads, hd]
      auto y = x.clone();
      for (int64_t p = 0; p < T; ++p)
        for (int64_t i = 0; i < half; ++i) {
          const double f = double(p) * std::pow(c.rope_theta, -2.0 * double(i) / double(hd));
          const float cs = float(std::cos(f)), sn = float(std::sin(f));
          auto a = x.select(0, p).select(-1, i), b = x.select(0, p).select(-1, i + half);
          y.select(0, p).select(-1, i).copy_(a * cs - b * sn);
          y.select(0, p).select(-1, i + half).copy_(b * cs + a * sn);
        }
      return y;
    };
    for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
      const std::string p = "model.layers." + std::to_string(l) + ".";
      auto x = rms(h, weight(p + "input_layernorm.weight"), eps);
      auto q = linear(x, p + "self_attn.q_proj").view({T, nh, hd});
      auto k = linear(x, p + "self_attn.k_proj").view({T, kvh, hd});
      auto v = linear(x, p + "self_attn.v_proj").view({T, kvh, hd});
      if (c.arch == "qwen3") {
        q = rms(q, weight(p + "self_attn.q_norm.weight"), eps);
        k = rms(k, weight(p + "self_attn.k_norm.weight"), eps);
      }
      q = rope(q);
      k = rope(k);
      auto o = torch::zeros({T, nh, hd});
      for (int64_t hh = 0; hh < nh; ++hh) {
        const int64_t g = hh / (nh / kvh);
        auto sc = torch::matmul(q.select(1, hh), k.select(1, g).t()) / std::sqrt(double(hd));  // [T, T]
        auto mask = torch::ones({T, T}, torch::kBool).triu(1);
        sc = sc.masked_fill(mask, -INFINITY);
        o.select(1, hh).copy_(torch::matmul(torch::softmax(sc, -1), v.select(1, g)));
      }
      auto of = o.reshape({T, nh * hd});
      if (c.subln) of = rms(of, weight(p + "self_attn.sub_norm.weight"), eps);
      h = h + linear(of, p + "self_attn.o_proj");
      auto y = rms(h, weight(p + "post_attention_layernorm.weight"), eps);
      torch::Tensor inner = c.hidden_act == MlpActivation::swiglu
                                ? torch::silu(linear(y, p + "mlp.gate_proj")) * linear(y, p + "mlp.up_proj")
                                : torch::relu(linear(y, p + "mlp.up_proj")).square();
      if (c.subln) inner = rms(inner, weight(p + "mlp.sub_norm.weight"), eps);
      h = h + linear(inner, p + "mlp.down_proj");
    }
    h = rms(h, weight("model.norm.weight"), eps);
    if (c.tie_word_embeddings) return torch::matmul(h, table.t());
    return linear(h, "lm_head");
  }
};

std::vector<int32_t> tokens_for(int64_t n, int64_t V, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int32_t> d(0, int32_t(V - 1));
  std::vector<int32_t> t(n);
  for (auto& v : t) v = d(rng);
  return t;
}

std::vector<std::pair<std::string, TinySpec>> specs() {
  std::vector<std::pair<std::string, TinySpec>> out;
  auto s = tiny::tiny_spec();
  out.emplace_back("binary group32 A16", s);
  auto t = s;
  t.quantizer = WeightQuantizer::ternary;
  t.granularity = ScaleGranularity::channel;
  t.activation_bits = 8;
  out.emplace_back("ternary channel A8", t);
  auto q = s;
  q.model.arch = "qwen3";
  q.model.tie_word_embeddings = false;
  q.quantize_lm_head = true;
  q.input_norm = true;
  q.activation_bits = 4;
  q.granularity = ScaleGranularity::tensor;
  out.emplace_back("qwen3 binary tensor A4 input-norm quantized lm_head", q);
  auto r = s;
  r.model.hidden_act = MlpActivation::relu2;
  r.model.subln = true;
  r.model.attention_bias = true;
  r.model.tie_word_embeddings = false;
  r.quantizer = WeightQuantizer::ternary;
  r.group_size = 16;
  out.emplace_back("ternary group16 relu2 subln bias untied", r);
  return out;
}

}  // namespace

TEST(PackedRuntime, MatchesIndependentReference) {
  uint32_t seed = 1;
  for (const auto& [label, spec] : specs()) {
    SCOPED_TRACE(label);
    const auto m = tiny::tiny_model(spec, seed++);
    const std::string path = temp_path("ref" + std::to_string(seed) + ".safetensors");
    formats::PackedExportOptions po;
    po.dtype = formats::Dtype::F32;
    formats::export_packed(m, path, po);
    auto rt = runtime::PackedRuntime::open(path, 2);
    const auto tokens = tokens_for(20, spec.model.vocab_size, seed);
    torch::NoGradGuard ng;
    auto ref = Reference(m).forward(tokens);
    auto ours = rt->logits(tokens);
    const double scale = ref.abs().max().item<double>();
    const double diff = (ours - ref).abs().max().item<double>();
    std::printf("[%s] max|logit| %.3f max|diff| %.3g\n", label.c_str(), scale, diff);
    EXPECT_LE(diff, (spec.activation_bits ? 2e-3 : 1e-4) * scale);
    rt->reset();
    for (size_t i = 0; i < tokens.size(); ++i)
      ASSERT_LE((rt->step(tokens[i]) - ours[int64_t(i)]).abs().max().item<double>(), 1e-5 * scale) << i;
    EXPECT_EQ(rt->position(), int64_t(tokens.size()));
    // prefill: the last token's logits alone, bit-identical to the full pass, and the same KV cache after it
    for (const int64_t n : {int64_t(1), int64_t(9), int64_t(tokens.size())}) {
      rt->reset();
      const auto last = rt->prefill(std::vector<int32_t>(tokens.begin(), tokens.begin() + n));
      EXPECT_EQ(rt->position(), n);
      ASSERT_EQ(last.sizes(), torch::IntArrayRef({spec.model.vocab_size}));
      EXPECT_TRUE(torch::equal(last, ours[n - 1])) << "prefill of " << n << " tokens";
      if (n < int64_t(tokens.size())) {
        EXPECT_TRUE(torch::equal(rt->step(tokens[n]), ours[n])) << "step after " << n;
      }
    }
    std::remove(path.c_str());
  }
}

TEST(PackedRuntime, PerplexityWindowsKlSamplingAndSizes) {
  auto spec = tiny::tiny_spec();
  const auto m = tiny::tiny_model(spec, 77);
  const std::string path = temp_path("ppl.safetensors");
  formats::export_packed(m, path);
  auto rt = runtime::PackedRuntime::open(path, 1);
  EXPECT_EQ(rt->config().hidden_size, 64);
  EXPECT_EQ(rt->tokenizer_kind(), "byte");
  EXPECT_EQ(rt->packed_layers(), 2 * 7);
  // resident = packed layers + dense: matrices stay bf16 (the file's dtype), vectors (norms, biases) become fp32
  int64_t packed = 0, dense = 0, params = 0;
  for (const auto& L : m.layers) {
    packed += L.out * ((L.in + 7) / 8) + int64_t(L.scales.size()) * 2 + int64_t(L.anchor_index.size()) * 12;
    params += L.out * L.in;
  }
  for (const auto& [n, t] : m.tensors) {
    dense += int64_t(t.data.size()) * (t.shape.size() == 2 ? 2 : 4);
    params += int64_t(t.data.size());
  }
  EXPECT_EQ(rt->resident_weight_bytes(), packed + dense);
  EXPECT_EQ(rt->fp16_bytes(), 2 * params);

  const auto tokens = tokens_for(50, 40, 5);
  const auto s = runtime::perplexity(*rt, tokens, 20);  // windows 20, 20, 10
  double nll = 0;
  int64_t count = 0;
  for (size_t b = 0; b < tokens.size(); b += 20) {
    std::vector<int32_t> w(tokens.begin() + b, tokens.begin() + std::min(tokens.size(), b + 20));
    auto st = runtime::nll_from_logits(rt->logits(w), w);
    nll += st.nll_sum;
    count += st.count;
  }
  EXPECT_EQ(s.count, count);
  EXPECT_EQ(s.count, 19 + 19 + 9);
  EXPECT_NEAR(s.nll_sum, nll, 1e-9 * std::fabs(nll));
  EXPECT_NEAR(s.perplexity(), std::exp(nll / count), 1e-9 * s.perplexity());
  EXPECT_THROW(runtime::perplexity(*rt, tokens, 30), std::invalid_argument);

  auto lg = rt->logits(std::vector<int32_t>(tokens.begin(), tokens.begin() + 10));
  auto kt = runtime::kl_and_top1(lg, lg);
  EXPECT_NEAR(kt.mean_kl, 0.0, 1e-12);
  EXPECT_EQ(kt.top1, 1.0);
  EXPECT_EQ(kt.positions, 10);
  auto kt2 = runtime::kl_and_top1(lg, -lg);
  EXPECT_GT(kt2.mean_kl, 0.1);
  EXPECT_LT(kt2.top1, 1.0);

  // generation
  std::vector<int32_t> prompt(tokens.begin(), tokens.begin() + 4);
  runtime::GenerationOptions greedy;
  greedy.max_new_tokens = 8;
  const auto g1 = rt->generate(prompt, greedy);
  ASSERT_EQ(g1.size(), 8u);
  runtime::GenerationStats st;
  EXPECT_EQ(rt->generate(prompt, greedy, &st), g1);
  EXPECT_EQ(st.prompt_tokens, 4);
  EXPECT_EQ(st.generated_tokens, 8);
  EXPECT_GT(st.prompt_seconds, 0.0);
  EXPECT_GT(st.decode_seconds, 0.0);
  EXPECT_NEAR(st.decode_tokens_per_s(), 7 / st.decode_seconds, 1e-9 * st.decode_tokens_per_s());
  {  // greedy = argmax of the logits of prompt + generated prefix
    std::vector<int32_t> seq = prompt;
    for (int32_t t : g1) {
      auto l = rt->logits(seq);
      EXPECT_EQ(l[l.size(0) - 1].argmax().item<int64_t>(), t);
      seq.push_back(t);
    }
  }
  runtime::GenerationOptions topk1 = greedy;
  topk1.temperature = 1.5;
  topk1.top_k = 1;
  EXPECT_EQ(rt->generate(prompt, topk1), g1);
  runtime::GenerationOptions sample = greedy;
  sample.temperature = 1.0;
  sample.top_p = 0.9;
  sample.seed = 42;
  const auto a = rt->generate(prompt, sample);
  EXPECT_EQ(rt->generate(prompt, sample), a);
  bool differs = false;
  for (uint64_t sd = 1; sd < 6 && !differs; ++sd) {
    sample.seed = sd;
    differs = rt->generate(prompt, sample) != a;
  }
  EXPECT_TRUE(differs);
  runtime::GenerationOptions stop = greedy;
  stop.eos_id = g1[2];
  const auto gs = rt->generate(prompt, stop);
  EXPECT_LE(gs.size(), 3u);
  EXPECT_EQ(gs.back(), g1[2]);

  // errors
  EXPECT_THROW(rt->logits({0, 40}), std::invalid_argument);
  EXPECT_THROW(rt->logits(std::vector<int32_t>(25, 1)), std::invalid_argument);
  rt->logits(std::vector<int32_t>(24, 1));
  EXPECT_THROW(rt->step(1), std::invalid_argument);  // cache full
  std::remove(path.c_str());
}

TEST(PackedRuntime, RejectsFilesItCannotRun) {
  const std::string path = temp_path("bad.safetensors");
  {  // a packed file whose config is not the exporter's JSON
    formats::PackedModel pm;
    pm.config = "model: {hidden_size: 4}";
    formats::write_packed(path, pm);
    EXPECT_THROW(runtime::PackedRuntime::open(path), formats::FormatError);
  }
  {  // a plain safetensors file
    formats::SafetensorsWriter w;
    std::vector<float> v(4, 1.f);
    w.add("x", formats::Dtype::F32, {4}, v.data(), 16);
    w.write(path);
    EXPECT_THROW(runtime::PackedRuntime::open(path), formats::FormatError);
  }
  {  // a tensor missing
    auto m = tiny::tiny_model(tiny::tiny_spec(), 3);
    m.tensors.erase("model.norm.weight");
    formats::export_packed(m, path);
    try {
      runtime::PackedRuntime::open(path);
      FAIL();
    } catch (const formats::FormatError& e) {
      EXPECT_NE(std::string(e.what()).find("model.norm.weight"), std::string::npos);
    }
  }
  {  // an extra tensor is not silently ignored
    auto m = tiny::tiny_model(tiny::tiny_spec(), 3);
    m.tensors["model.layers.0.mystery.weight"] = {{2}, {1.f, 2.f}};
    formats::export_packed(m, path);
    EXPECT_THROW(runtime::PackedRuntime::open(path), formats::FormatError);
  }
  std::remove(path.c_str());
}

TEST(PackedRuntime, Int8ActivationModeEqualsAnA8ExportAndStaysClose) {
  // The same weights exported A16 and A8 (the head stays dense): opening the A16 file with activation_bits = 8 must
  // compute exactly what the A8 file computes, and stay close to the exact A16 logits.
  auto s16 = tiny::tiny_spec();
  auto s8 = s16;
  s8.activation_bits = 8;
  const auto m16 = tiny::tiny_model(s16, 21);
  const auto m8 = tiny::tiny_model(s8, 21);
  const std::string p16 = temp_path("a16.safetensors"), p8 = temp_path("a8.safetensors");
  formats::export_packed(m16, p16);
  formats::export_packed(m8, p8);
  const auto tokens = tokens_for(24, s16.model.vocab_size, 3);
  auto exact = runtime::PackedRuntime::open(p16, 1)->logits(tokens);
  auto forced = runtime::PackedRuntime::open(p16, 1, 8)->logits(tokens);
  auto a8 = runtime::PackedRuntime::open(p8, 1)->logits(tokens);
  EXPECT_TRUE(torch::equal(forced, a8));
  EXPECT_FALSE(torch::equal(forced, exact));
  const auto kt = runtime::kl_and_top1(exact, forced);
  std::printf("int8 activations vs exact: KL %.3g, top-1 %.3f\n", kt.mean_kl, kt.top1);
  EXPECT_LT(kt.mean_kl, 1e-2);
  EXPECT_THROW(runtime::PackedRuntime::open(p16, 1, 4), std::invalid_argument);
  std::remove(p16.c_str());
  std::remove(p8.c_str());
}
