// Transformer → export → packed runtime parity (the test that matters most for runtime/packed_runtime.h), and GGUF
// export of a real Transformer (lossless Q1_0 with the q/k permutation, anchors reported, refusals).
//
// For small random Transformers (binary and ternary; tensor / channel / group scales; anchors; A16, A8 and A4
// activations; input norm; qwen3 q/k norms; relu2 + SubLN; quantized embedding and lm_head; GQA; biases) the
// packed runtime's logits equal Transformer::forward's within 1e-4 of max|logit|, perplexity within 1e-4
// relative, and step-by-step KV-cache decoding equals the full-sequence logits.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>

#include "export/gguf.h"
#include "export/inspect.h"
#include "export/model_export.h"
#include "runtime/packed_runtime.h"
#include "trainer/export_model.h"
#include "trainer/model.h"
#include "tests/fixtures/export/test_util.h"

using namespace bitforge;

namespace {

/// A file in this test binary's temporary directory (removed, with anything left in it, at exit).
std::string temp_path(const std::string& name) {
  static const test::TempDir dir;
  return dir.file(name);
}

struct Case {
  std::string label;
  ModelConfig model;
  QuantConfig quant;
};

ModelConfig base_model(int64_t V, int64_t H, int64_t I) {
  ModelConfig c;
  c.vocab_size = V;
  c.hidden_size = H;
  c.intermediate_size = I;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.max_position_embeddings = 32;
  c.rope_theta = 10000.0;
  return c;
}

std::vector<Case> cases() {
  std::vector<Case> cs;
  {
    Case c{"binary group128 A16 anchors tied", base_model(67, 128, 256), {}};
    c.quant.weight = WeightQuantizer::binary;
    c.quant.granularity = ScaleGranularity::group;
    c.quant.group_size = 128;
    c.quant.anchor_fraction = 0.01;
    cs.push_back(c);
  }
  {
    Case c{"binary channel A8 anchors, quantized untied lm_head, biases", base_model(67, 128, 256), {}};
    c.model.tie_word_embeddings = false;
    c.model.attention_bias = true;
    c.quant.weight = WeightQuantizer::binary;
    c.quant.granularity = ScaleGranularity::channel;
    c.quant.activations = ActivationQuant::int8;
    c.quant.anchor_fraction = 0.005;
    c.quant.layers = {"attention", "mlp", "lm_head"};
    cs.push_back(c);
  }
  {
    Case c{"ternary tensor A8 anchors, relu2 + subln", base_model(67, 128, 256), {}};
    c.model.hidden_act = MlpActivation::relu2;
    c.model.subln = true;
    c.quant.weight = WeightQuantizer::ternary;
    c.quant.granularity = ScaleGranularity::tensor;
    c.quant.activations = ActivationQuant::int8;
    c.quant.anchor_fraction = 0.01;
    cs.push_back(c);
  }
  {
    Case c{"ternary group32 A4 input-norm anchors, qwen3", base_model(51, 96, 160), {}};
    c.model.arch = "qwen3";
    c.model.num_attention_heads = 3;
    c.model.num_key_value_heads = 1;
    c.quant.weight = WeightQuantizer::ternary;
    c.quant.granularity = ScaleGranularity::group;
    c.quant.group_size = 32;
    c.quant.activations = ActivationQuant::int4;
    c.quant.input_norm = true;
    c.quant.anchor_fraction = 0.01;
    cs.push_back(c);
  }
  {
    Case c{"binary group64 quantized tied embedding, mean-centred, absmean scales", base_model(64, 128, 192), {}};
    c.quant.weight = WeightQuantizer::binary;
    c.quant.granularity = ScaleGranularity::group;
    c.quant.group_size = 64;
    c.quant.mean_center = true;
    c.quant.scale_mode = ScaleMode::absmean;
    c.quant.anchor_fraction = 0.002;
    c.quant.layers = {"attention", "mlp", "embedding"};
    cs.push_back(c);
  }
  {
    Case c{"ternary channel A8 odd shapes", base_model(53, 96, 160), {}};
    c.model.num_attention_heads = 2;
    c.model.num_key_value_heads = 2;
    c.quant.weight = WeightQuantizer::ternary;
    c.quant.granularity = ScaleGranularity::channel;
    c.quant.activations = ActivationQuant::int8;
    c.quant.anchor_fraction = 0.003;
    cs.push_back(c);
    c.label = "ternary channel A16 odd shapes";
    c.quant.activations = ActivationQuant::none;
    cs.push_back(c);
  }
  return cs;
}

Transformer build(const Case& c, uint64_t seed) {
  torch::manual_seed(seed);
  Transformer m(c.model, c.quant);
  {
    torch::NoGradGuard ng;
    for (auto& p : m->parameters())
      if (p.dim() == 2) p.mul_(10.0);  // std 0.2: logits of order 1, so relative checks mean something
      else p.add_(torch::randn_like(p) * 0.1);  // norms/biases away from their init
  }
  m->reset_quantizer_state();
  m->eval();
  return m;
}

std::vector<int32_t> random_tokens(int64_t n, int64_t V, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int32_t> d(0, static_cast<int32_t>(V - 1));
  std::vector<int32_t> t(n);
  for (auto& v : t) v = d(rng);
  return t;
}

torch::Tensor reference_logits(Transformer& m, const std::vector<int32_t>& tokens) {
  torch::NoGradGuard ng;
  std::vector<int64_t> t(tokens.begin(), tokens.end());
  return m->forward(torch::tensor(t, torch::kLong).unsqueeze(0))[0];
}

}  // namespace

// With per-token activation quantization (A8/A4) the model is discontinuous: an activation whose x·s lies within
// fp32 rounding (~1e-5) of a .5 boundary rounds to a different integer when the preceding layers sum in another
// order (packed GEMV vs torch::mm), which moves the logits of that position and of later ones by far more than
// 1e-4. For those cases a larger difference is accepted only as such a flip: the distributions must still agree
// (mean KL < 1e-3, top-1 ≥ 90 %, perplexity within 1 %); the test prints when this happens. Float-activation
// (A16) cases must always be within 1e-4.
static bool close_or_flip(const torch::Tensor& ref, const torch::Tensor& ours, double tol, bool act_quant,
                   const std::string& what, int* flips) {
  const double scale = ref.abs().max().item<double>();
  const double diff = (ours - ref).abs().max().item<double>();
  if (diff <= tol * scale) return true;
  auto kt = runtime::kl_and_top1(ref, ours);
  std::printf("  %s: max|diff| %.3g (rel %.3g), KL %.3g, top-1 %.3f%s\n", what.c_str(), diff, diff / scale,
              kt.mean_kl, kt.top1, act_quant ? "  <- activation rounding-boundary flip" : "");
  if (!act_quant) return false;
  ++*flips;
  return kt.mean_kl < 1e-3 && kt.top1 >= 0.9;
}

TEST(TrainerExportRuntime, PackedRuntimeMatchesTransformer) {
  uint64_t seed = 11;
  double worst_a16 = 0;
  int flips = 0;
  for (const auto& c : cases()) {
    SCOPED_TRACE(c.label);
    const bool aq = c.quant.activations != ActivationQuant::none;
    auto model = build(c, seed++);
    const auto em = make_export_model(model, nullptr, "quant: test");
    const std::string path = temp_path("m" + std::to_string(seed) + ".safetensors");
    formats::PackedExportOptions po;
    po.dtype = formats::Dtype::F32;
    const auto rep = formats::export_packed(em, path, po);
    ASSERT_GT(rep.file_bytes, 0);

    const auto tokens = random_tokens(24, c.model.vocab_size, static_cast<uint32_t>(seed));
    auto ref = reference_logits(model, tokens);
    for (int threads : {1, 3}) {
      auto rt = runtime::PackedRuntime::open(path, threads);
      EXPECT_GT(rt->packed_layers(), 0);
      EXPECT_LT(rt->resident_weight_bytes(), rt->fp16_bytes() * 2);
      auto ours = rt->logits(tokens);
      ASSERT_EQ(ours.sizes(), ref.sizes());
      const double scale = ref.abs().max().item<double>();
      const double diff = (ours - ref).abs().max().item<double>();
      if (!aq) worst_a16 = std::max(worst_a16, diff / scale);
      std::printf("[%s] threads=%d max|logit|=%.4f max|diff|=%.3g (rel %.3g)\n", c.label.c_str(), threads, scale,
                  diff, diff / scale);
      const bool exact = close_or_flip(ref, ours, 1e-4, aq, "logits vs Transformer", &flips);
      EXPECT_TRUE(exact);

      const double ppl_ref = runtime::nll_from_logits(ref, tokens).perplexity();
      const double ppl = runtime::perplexity(*rt, tokens, 24).perplexity();
      std::printf("    perplexity: Transformer %.6f packed runtime %.6f (rel %.2g)\n", ppl_ref, ppl,
                  std::fabs(ppl - ppl_ref) / ppl_ref);
      const bool flipped = diff > 1e-4 * scale;
      EXPECT_NEAR(ppl, ppl_ref, (flipped ? 1e-2 : 1e-4) * ppl_ref);
      if (!flipped) {
        auto kt = runtime::kl_and_top1(ref, ours);
        EXPECT_LT(kt.mean_kl, 1e-8);
        EXPECT_EQ(kt.top1, 1.0);
      }

      rt->reset();
      std::vector<torch::Tensor> steps;
      for (size_t i = 0; i < tokens.size(); ++i) steps.push_back(rt->step(tokens[i]));
      EXPECT_TRUE(close_or_flip(ours, torch::stack(steps), 1e-5, aq, "KV-cache steps vs prefill", &flips));
      // prefill a prefix then continue with a multi-token chunk (masked attention over the cache)
      rt->reset();
      std::vector<int32_t> a(tokens.begin(), tokens.begin() + 10), b(tokens.begin() + 10, tokens.end());
      rt->append(a);
      auto tail = rt->append(b);
      EXPECT_TRUE(close_or_flip(ours.narrow(0, 10, 14), tail, 1e-5, aq, "chunked prefill vs prefill", &flips));
    }
    std::remove(path.c_str());
  }
  std::printf("worst relative logit difference over the A16 cases: %.3g; A8/A4 rounding-boundary flips: %d\n",
              worst_a16, flips);
}

TEST(TrainerExportRuntime, Bf16ExportStaysCloseAndReportsRounding) {
  auto c = cases()[0];
  auto model = build(c, 5);
  const auto em = make_export_model(model, nullptr, "");
  const std::string path = temp_path("bf16.safetensors");
  const auto rep = formats::export_packed(em, path);  // BF16 default
  bool some_inexact = false;
  for (const auto& t : rep.tensors)
    if (t.kind == "dense" && !t.exact) some_inexact = true;
  EXPECT_TRUE(some_inexact);
  const auto tokens = random_tokens(16, c.model.vocab_size, 3);
  auto ref = reference_logits(model, tokens);
  auto rt = runtime::PackedRuntime::open(path, 2);
  auto kt = runtime::kl_and_top1(ref, rt->logits(tokens));
  std::printf("bf16 dense tensors: KL %.3g top-1 %.3f\n", kt.mean_kl, kt.top1);
  EXPECT_LT(kt.mean_kl, 1e-2);
  std::remove(path.c_str());
}

TEST(TrainerExportRuntime, GgufFromTransformerIsLosslessForGroup128Binary) {
  auto c = cases()[0];
  c.quant.anchor_fraction = 0.0;
  auto model = build(c, 21);
  auto em = make_export_model(model, nullptr, "");
  em.tokenizer_kind = "sentencepiece";
  em.vocab.model = "llama";
  em.vocab.add_bos = true;
  for (int64_t i = 0; i < c.model.vocab_size - 3; ++i) {  // a SentencePiece-like vocabulary, 3 short of V
    em.vocab.tokens.push_back(i == 0 ? "<unk>" : i == 1 ? "<s>" : i == 2 ? "</s>" : "p" + std::to_string(i));
    em.vocab.scores.push_back(-float(i));
    em.vocab.token_types.push_back(i < 3 ? (i == 0 ? 2 : 3) : 1);
  }
  em.vocab.unk_id = 0;
  em.vocab.bos_id = 1;
  em.vocab.eos_id = 2;
  const std::string path = temp_path("m.gguf");
  const auto rep = formats::export_gguf(em, path);
  for (const auto& t : rep.tensors)
    if (t.kind == "binary") {
      EXPECT_EQ(t.stored_as, "Q1_0") << t.name;
      EXPECT_TRUE(t.exact) << t.name;
    }
  formats::GgufFile g(path);
  EXPECT_EQ(g.find("general.architecture")->s, "llama");
  EXPECT_EQ(g.find("tokenizer.ggml.tokens")->elems.size(), size_t(c.model.vocab_size));
  EXPECT_EQ(g.find("llama.attention.head_count_kv")->u, 2u);
  EXPECT_EQ(g.find_tensor("output.weight"), nullptr);  // tied
  // attn_q: dequantized Q1_0 rows == permuted effective weight rows, exactly
  auto layer0 = model->layers->ptr<DecoderLayerImpl>(0);
  torch::NoGradGuard ng;
  auto weff = layer0->self_attn->q_proj->effective_weight().contiguous();
  const auto* ti = g.find_tensor("blk.0.attn_q.weight");
  ASSERT_NE(ti, nullptr);
  ASSERT_EQ(ti->type, formats::GgmlType::Q1_0);
  const int64_t out = weff.size(0), in = weff.size(1);
  std::vector<float> deq(out * in);
  formats::dequantize_row_q1_0(reinterpret_cast<const formats::block_q1_0*>(g.bytes(*ti).data), deq.data(), out * in);
  const auto perm = formats::llama_qk_permutation(c.model.num_attention_heads, c.model.resolved_head_dim());
  for (int64_t r = 0; r < out; ++r)
    for (int64_t col = 0; col < in; ++col)
      ASSERT_EQ(deq[r * in + col], weff[perm[r]][col].item<float>()) << r << "," << col;
  const std::string table = formats::inspect_file(path, false);
  EXPECT_NE(table.find("blk.0.attn_q.weight"), std::string::npos);
  std::remove(path.c_str());

  // with anchors: folded, counted, not exact
  auto c2 = cases()[0];
  auto model2 = build(c2, 22);
  auto em2 = make_export_model(model2, nullptr, "");
  em2.tokenizer_kind = "sentencepiece";
  em2.vocab = em.vocab;
  const auto rep2 = formats::export_gguf(em2, path);
  int64_t anchors = 0;
  for (const auto& t : rep2.tensors)
    if (t.kind == "binary") {
      anchors += t.anchors;
      EXPECT_GT(t.anchors, 0);
      EXPECT_FALSE(t.exact);
      EXPECT_NE(t.note.find("anchors folded"), std::string::npos);
    }
  EXPECT_GT(anchors, 0);
  EXPECT_FALSE(rep2.notes.empty());
  std::remove(path.c_str());

  // relu2 + subln (case 2) is refused
  auto c3 = cases()[2];
  auto model3 = build(c3, 23);
  auto em3 = make_export_model(model3, nullptr, "");
  em3.tokenizer_kind = "sentencepiece";
  em3.vocab = em.vocab;
  try {
    formats::export_gguf(em3, path);
    FAIL() << "expected GgufExportError";
  } catch (const formats::GgufExportError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("relu2"), std::string::npos);
    EXPECT_NE(msg.find("SubLN"), std::string::npos);
    EXPECT_NE(msg.find("A8"), std::string::npos);
  }
}

TEST(TrainerExportRuntime, WarmupLayersAreRefused) {
  auto c = cases()[0];
  auto model = build(c, 3);
  model->named_bit_linears()[0].second->set_lambda(0.5);
  EXPECT_THROW(make_export_model(model, nullptr, ""), std::invalid_argument);
}
