// The decoder (trainer/model.h): HF parameter names and shapes, causality, GQA, tied embeddings, the
// distillation outputs of forward_with, and that a tiny model can overfit a repeated sequence.
#include <ATen/autocast_mode.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <chrono>
#include <cmath>
#include <functional>
#include <map>
#include <numeric>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include "trainer/losses.h"
#include "trainer/model.h"

using namespace bitforge;

namespace {

ModelConfig tiny(const std::string& arch = "llama") {
  ModelConfig c;
  c.arch = arch;
  c.vocab_size = 50;
  c.hidden_size = 32;
  c.intermediate_size = 48;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = 0;  // 8
  c.max_position_embeddings = 32;
  c.tie_word_embeddings = true;
  return c;
}

QuantConfig fp() {
  QuantConfig q;
  q.weight = WeightQuantizer::none;
  return q;
}

std::map<std::string, std::vector<int64_t>> hf_shapes(const TransformerImpl& m) {
  std::map<std::string, std::vector<int64_t>> out;
  for (auto& [n, t] : m.hf_parameters()) out[n] = t.sizes().vec();
  return out;
}

}  // namespace

TEST(Model, LlamaParameterNamesAndShapes) {
  ModelConfig c = tiny();
  c.tie_word_embeddings = false;
  Transformer m(c, fp());
  std::map<std::string, std::vector<int64_t>> want = {
      {"model.embed_tokens.weight", {50, 32}}, {"model.norm.weight", {32}}, {"lm_head.weight", {50, 32}}};
  for (int i = 0; i < 2; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    want[p + "input_layernorm.weight"] = {32};
    want[p + "post_attention_layernorm.weight"] = {32};
    want[p + "self_attn.q_proj.weight"] = {32, 32};
    want[p + "self_attn.k_proj.weight"] = {16, 32};
    want[p + "self_attn.v_proj.weight"] = {16, 32};
    want[p + "self_attn.o_proj.weight"] = {32, 32};
    want[p + "mlp.gate_proj.weight"] = {48, 32};
    want[p + "mlp.up_proj.weight"] = {48, 32};
    want[p + "mlp.down_proj.weight"] = {32, 48};
  }
  EXPECT_EQ(hf_shapes(*m), want);
  // Full precision: named_parameters() is exactly the HF set.
  std::set<std::string> names;
  for (auto& p : m->named_parameters()) names.insert(p.key());
  EXPECT_EQ(names.size(), want.size());
  EXPECT_EQ(m->bit_linears().size(), 2u * 7u + 1u);
  EXPECT_EQ(m->named_bit_linears().back().first, "lm_head");
  int64_t n = 0;
  for (auto& [k, s] : want) n += std::accumulate(s.begin(), s.end(), int64_t{1}, std::multiplies<>());
  EXPECT_EQ(m->num_parameters(), n);
}

TEST(Model, Qwen3SublnRelu2Names) {
  ModelConfig c = tiny("qwen3");
  c.subln = true;
  c.hidden_act = MlpActivation::relu2;
  c.attention_bias = true;
  Transformer m(c, fp());
  auto s = hf_shapes(*m);
  const std::string p = "model.layers.1.";
  EXPECT_EQ(s.at(p + "self_attn.q_norm.weight"), std::vector<int64_t>({8}));
  EXPECT_EQ(s.at(p + "self_attn.k_norm.weight"), std::vector<int64_t>({8}));
  EXPECT_EQ(s.at(p + "self_attn.sub_norm.weight"), std::vector<int64_t>({32}));
  EXPECT_EQ(s.at(p + "mlp.sub_norm.weight"), std::vector<int64_t>({48}));
  EXPECT_EQ(s.at(p + "self_attn.k_proj.bias"), std::vector<int64_t>({16}));
  EXPECT_EQ(s.count(p + "mlp.gate_proj.weight"), 0u);  // relu2 has no gate
  EXPECT_EQ(s.count("lm_head.weight"), 0u);
  auto logits = m(torch::randint(0, 50, {2, 5}, torch::kLong));
  EXPECT_EQ(logits.sizes(), (std::vector<int64_t>{2, 5, 50}));
  EXPECT_TRUE(torch::isfinite(logits).all().item<bool>());
}

TEST(Model, InitStatistics) {
  ModelConfig c = tiny();
  c.hidden_size = 128;
  c.intermediate_size = 256;
  Transformer m(c, fp());
  auto params = m->named_parameters();
  const auto w = params["model.layers.0.mlp.up_proj.weight"];
  EXPECT_NEAR(w.std().item<double>(), 0.02, 0.002);
  EXPECT_NEAR(w.mean().item<double>(), 0.0, 0.002);
  EXPECT_NEAR(params["model.embed_tokens.weight"].std().item<double>(), 0.02, 0.003);
  EXPECT_TRUE(torch::equal(params["model.norm.weight"], torch::ones({128})));
}

TEST(Model, QuantizedProjectionsFollowQuantLayers) {
  QuantConfig q;
  q.weight = WeightQuantizer::binary;
  q.group_size = 16;
  q.layers = {"mlp"};
  Transformer m(tiny(), q);
  for (auto& [name, l] : m->named_bit_linears())
    EXPECT_EQ(l->quant().enabled(), name.find(".mlp.") != std::string::npos) << name;
  // HF names stay exactly the HF set even with quantizer state beside the weights.
  EXPECT_EQ(hf_shapes(*m).count("model.layers.0.mlp.up_proj.weight"), 1u);
  for (auto& [n, t] : m->hf_parameters()) {
    const bool hf_leaf = n.size() > 7 && (n.substr(n.size() - 7) == ".weight" || n.substr(n.size() - 5) == ".bias");
    EXPECT_TRUE(hf_leaf) << n;
  }
  auto logits = m(torch::randint(0, 50, {1, 6}, torch::kLong));
  EXPECT_TRUE(torch::isfinite(logits).all().item<bool>());
}

TEST(Model, CausalAndGqa) {
  for (const std::string arch : {"llama", "qwen3"}) {
    torch::manual_seed(0);
    Transformer m(tiny(arch), fp());  // 4 heads, 2 KV heads
    torch::NoGradGuard no_grad;
    auto a = torch::randint(0, 50, {2, 12}, torch::kLong);
    auto b = a.clone();
    const int64_t t = 7;
    b.index_put_({torch::indexing::Slice(), t}, (a.index({torch::indexing::Slice(), t}) + 1) % 50);
    auto la = m(a), lb = m(b);
    EXPECT_EQ(la.scalar_type(), torch::kFloat);
    using torch::indexing::Slice;
    EXPECT_TRUE(torch::allclose(la.index({Slice(), Slice(0, t)}), lb.index({Slice(), Slice(0, t)}), 0, 1e-6)) << arch;
    EXPECT_GT((la.index({Slice(), Slice(t)}) - lb.index({Slice(), Slice(t)})).abs().max().item<double>(), 1e-4);
  }
}

TEST(Model, GqaEqualsRepeatedKvHeads) {
  // A GQA model equals an MHA model whose K/V projections repeat each KV head for its query group.
  torch::manual_seed(1);
  ModelConfig g = tiny();
  ModelConfig h = g;
  h.num_key_value_heads = 4;
  Transformer mg(g, fp()), mh(h, fp());
  torch::NoGradGuard no_grad;
  auto pg = mg->named_parameters(), ph = mh->named_parameters();
  for (auto& item : ph) {
    const auto& n = item.key();
    if (n.find("k_proj") != std::string::npos || n.find("v_proj") != std::string::npos) {
      auto w = pg[n].view({2, 8, 32}).repeat_interleave(2, 0).reshape({32, 32});
      item.value().copy_(w);
    } else {
      item.value().copy_(pg[n]);
    }
  }
  auto tokens = torch::randint(0, 50, {2, 9}, torch::kLong);
  EXPECT_TRUE(torch::allclose(mg(tokens), mh(tokens), 1e-5, 1e-6));
}

TEST(Model, TiedEmbeddingSharesStorage) {
  Transformer m(tiny(), fp());
  EXPECT_EQ(m->lm_head_weight().data_ptr(), m->named_parameters()["model.embed_tokens.weight"].data_ptr());
  EXPECT_EQ(m->named_parameters().find("lm_head.weight"), nullptr);
  // The head gradient lands in the embedding table even for tokens never fed in.
  auto tokens = torch::zeros({1, 4}, torch::kLong);
  m(tokens).sum().backward();
  auto g = m->named_parameters()["model.embed_tokens.weight"].grad();
  EXPECT_GT(g.index({5}).abs().sum().item<double>(), 0.0);
}

TEST(Model, ForwardWithReturnsStates) {
  torch::manual_seed(2);
  Transformer m(tiny("qwen3"), fp());
  auto tokens = torch::randint(0, 50, {2, 6}, torch::kLong);
  ForwardRequest r;
  r.hidden_layers = {0, -1};
  r.qkv_layer = -1;
  auto out = m->forward_with(tokens, r);
  ASSERT_EQ(out.hidden.size(), 2u);
  EXPECT_EQ(out.hidden[0].sizes(), (std::vector<int64_t>{2, 6, 32}));
  EXPECT_EQ(out.q.sizes(), (std::vector<int64_t>{2, 4, 6, 8}));
  EXPECT_EQ(out.k.sizes(), (std::vector<int64_t>{2, 2, 6, 8}));
  EXPECT_EQ(out.v.sizes(), (std::vector<int64_t>{2, 2, 6, 8}));
  EXPECT_TRUE(torch::allclose(out.logits, m(tokens)));
  // Q is the q_proj output of the last layer's normed input, split into heads (before q_norm and RoPE).
  auto& last = m->layers->at<DecoderLayerImpl>(1);
  auto hin = m->forward_with(tokens, ForwardRequest{false, {0}, std::nullopt}).hidden[0];
  auto q_ref = last.self_attn->q_proj(last.input_layernorm(hin)).view({2, 6, 4, 8}).transpose(1, 2);
  EXPECT_TRUE(torch::allclose(out.q, q_ref, 1e-5, 1e-6));
  EXPECT_THROW(m->forward_with(tokens, ForwardRequest{true, {2}, std::nullopt}), std::out_of_range);
  EXPECT_THROW(m(torch::zeros({1, 33}, torch::kLong)), c10::Error);  // longer than max_position_embeddings
  EXPECT_THROW(m(torch::zeros({1, 3}, torch::kInt)), c10::Error);
}

TEST(Model, RejectsBadShape) {
  ModelConfig c = tiny();
  c.num_key_value_heads = 3;
  EXPECT_THROW(Transformer(c, fp()), std::invalid_argument);
  c = tiny();
  c.vocab_size = 0;
  EXPECT_THROW(Transformer(c, fp()), std::invalid_argument);
  c = tiny();
  c.arch = "gpt2";
  EXPECT_THROW(Transformer(c, fp()), std::invalid_argument);
}

namespace {
// Trains on one repeated sequence with AdamW until CE falls below first/factor; returns {first, last, steps}.
std::tuple<double, double, int> overfit(Transformer& m, double lr, double factor, int max_steps) {
  torch::set_num_threads(1);  // a tiny model: thread hand-offs would dominate (and the CI box is shared)
  auto seq = torch::randint(0, 50, {1, 17}, torch::kLong).repeat({4, 1});
  using torch::indexing::Slice;
  auto input = seq.index({Slice(), Slice(0, 16)}), labels = seq.index({Slice(), Slice(1, 17)});
  torch::optim::AdamW opt(m->parameters(), torch::optim::AdamWOptions(lr).weight_decay(0.0));
  double first = 0, last = 0;
  int steps = 0;
  while (steps < max_steps) {
    opt.zero_grad();
    auto loss = token_cross_entropy(m(input), labels);
    loss.backward();
    opt.step();
    last = loss.item<double>();
    if (steps++ == 0) first = last;
    if (last < first / factor) break;
  }
  return {first, last, steps};
}
}  // namespace

// A 2-layer model memorises one repeated sequence: CE falls by ≥ 4× in ≤ 100 AdamW steps. The wall time is printed,
// not asserted: timings belong in benchmarks (bench/), not in tests that run on loaded machines.
TEST(Model, OverfitsRepeatedSequence) {
  torch::manual_seed(0);
  const auto t0 = std::chrono::steady_clock::now();
  Transformer m(tiny(), fp());
  auto [first, last, steps] = overfit(m, 3e-3, 4.0, 100);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::cout << "[ measure ] overfit fp32: CE " << first << " -> " << last << " in " << steps << " steps, " << secs
            << " s\n";
  EXPECT_LT(last, first / 4);
}

// The same with binary attention/MLP weights (learned group scales, STE): QAT wiring carries gradients.
TEST(Model, BinaryModelOverfitsRepeatedSequence) {
  torch::manual_seed(0);
  QuantConfig q;
  q.weight = WeightQuantizer::binary;
  q.group_size = 16;
  Transformer m(tiny(), q);
  auto [first, last, steps] = overfit(m, 3e-3, 4.0, 100);
  std::cout << "[ measure ] overfit binary: CE " << first << " -> " << last << " in " << steps << " steps\n";
  EXPECT_LT(last, first / 4);
}

// bf16 autocast (the CUDA training mode) also runs on CPU: mixed dtypes meet in RoPE, q/k norm and SDPA.
TEST(Model, RunsUnderBf16Autocast) {
  torch::manual_seed(5);
  Transformer m(tiny("qwen3"), fp());
  auto tokens = torch::randint(0, 50, {2, 8}, torch::kLong);
  torch::NoGradGuard no_grad;
  auto ref = m(tokens);
  at::autocast::set_autocast_dtype(at::kCPU, at::kBFloat16);
  at::autocast::set_autocast_enabled(at::kCPU, true);
  torch::Tensor low;
  try {
    low = m(tokens);
  } catch (...) {
    at::autocast::set_autocast_enabled(at::kCPU, false);
    throw;
  }
  at::autocast::set_autocast_enabled(at::kCPU, false);
  at::autocast::clear_cache();
  EXPECT_EQ(low.scalar_type(), torch::kFloat);
  EXPECT_LT((low - ref).abs().max().item<double>(), 0.05);
  EXPECT_TRUE(torch::allclose(m(tokens), ref));  // fp32 again afterwards (RoPE cache switches back)
}

// RMSNorm against its formula by loops, and its gradients (input and weight) against central differences.
TEST(Model, RmsNormFormulaAndGradient) {
  torch::manual_seed(6);
  RMSNorm norm(5, 1e-6);
  norm->to(torch::kDouble);
  {
    torch::NoGradGuard g;
    norm->weight.uniform_(0.5, 1.5);
  }
  auto x = torch::randn({3, 5}, torch::kDouble);
  auto y = norm(x);
  for (int r = 0; r < 3; ++r) {
    double ms = 0;
    for (int i = 0; i < 5; ++i) ms += x[r][i].item<double>() * x[r][i].item<double>() / 5;
    for (int i = 0; i < 5; ++i)
      EXPECT_NEAR(y[r][i].item<double>(),
                  norm->weight[i].item<double>() * x[r][i].item<double>() / std::sqrt(ms + 1e-6), 1e-12);
  }
  auto xg = x.clone().set_requires_grad(true);
  auto proj = torch::randn({3, 5}, torch::kDouble);  // a random linear functional of the output
  (norm(xg) * proj).sum().backward();
  const double eps = 1e-6;
  for (int64_t k = 0; k < 15; ++k) {
    auto xp = x.clone(), xm = x.clone();
    xp.view({-1})[k] += eps;
    xm.view({-1})[k] -= eps;
    torch::NoGradGuard g;
    const double fd = ((norm(xp) * proj).sum() - (norm(xm) * proj).sum()).item<double>() / (2 * eps);
    EXPECT_NEAR(xg.grad().view({-1})[k].item<double>(), fd, 1e-7) << "x element " << k;
  }
  for (int64_t k = 0; k < 5; ++k) {
    const double w0 = norm->weight[k].item<double>();
    torch::NoGradGuard g;
    norm->weight[k] = w0 + eps;
    const double fp = (norm(x) * proj).sum().item<double>();
    norm->weight[k] = w0 - eps;
    const double fm = (norm(x) * proj).sum().item<double>();
    norm->weight[k] = w0;
    EXPECT_NEAR(norm->weight.grad()[k].item<double>(), (fp - fm) / (2 * eps), 1e-7) << "weight element " << k;
  }
}
