"""The Python package (python/bitforge, issue #22): BitLinear on the fused ops and convert_ on a Hugging Face model.

- gradients of the Python BitLinear against formulas written here in plain PyTorch, for binary and ternary, tensor /
  channel / group scales, learned and absmean scales, with anchors: dL/dW equals dL/dW_eff exactly on the identity-STE
  path (anchors: the dense gradient), dL/dα equals the LSQ sum Σ G·∂(α·Q(u))/∂α over each group's non-anchor weights
  (binary: sign(u); ternary: Q(u) − u·1[|u| ≤ 1]) to float32 summation order; the forward equals α·Q(u) with anchors;
- the C++ module's configuration defaults are the Python ones (QuantConfig mirrors config/model_config.h);
- convert_ swaps the 7 projections of every layer of a tiny transformers LlamaForCausalLM (random weights) for
  BitLinear, keeps embeddings / norms / lm_head, and the model trains (loss falls over 20 AdamW steps);
- torch.compile(model) (dynamo + AOTAutograd on the ops' fake kernels) gives the same training loss as eager: exactly
  with the aot_eager backend, to float32 rounding with the default inductor backend (loss and gradients).
"""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from checks import check, finish  # noqa: E402

sys.path.insert(0, os.path.join(os.environ.get("BITFORGE_SOURCE_DIR", "."), "python"))
import bitforge  # noqa: E402

torch.manual_seed(0)


def reference_grads(layer, x, gy):
    """Forward W_eff and the expected (dL/dW, dL/dα) from the formulas, for the identity STE, λ = 1."""
    w = layer.weight.detach()
    a = layer.weight_scale.detach().half().float()  # fp16-rounded α, as the forward uses
    out, inn = w.shape
    a_full = a.repeat_interleave(inn // a.shape[1], 1).expand(out, inn)
    u = w / a_full
    q = torch.where(u >= 0, 1.0, -1.0) if layer.config.weight == "binary" else u.round().clamp(-1, 1)
    w_eff = a_full * q
    anchors = layer.anchor_index
    w_eff.view(-1)[anchors] = w.view(-1)[anchors]
    leaf = w_eff.clone().requires_grad_()
    (torch.nn.functional.linear(x, leaf) * gy).sum().backward()
    g = leaf.grad
    d = q.clone() if layer.config.weight == "binary" else q - u * (u.abs() <= 1)
    d.view(-1)[anchors] = 0
    contrib = (g * d).view(out, a.shape[1], inn // a.shape[1]).sum(2)
    if a.shape[0] == 1:
        contrib = contrib.sum(0, keepdim=True)
    return w_eff, g, contrib


for weight in ("binary", "ternary"):
    for gran in ("tensor", "channel", "group"):
        for scale_mode in ("learned", "absmean"):
            cfg = bitforge.QuantConfig(weight=weight, granularity=gran, group_size=32, scale_mode=scale_mode,
                                       anchor_fraction=0.01)
            layer = bitforge.BitLinear(64, 24, cfg)
            with torch.no_grad():
                layer.weight_scale.mul_(torch.rand_like(layer.weight_scale) + 0.5)  # scales apart from absmean
            if scale_mode == "absmean":
                layer.reset_scale_from_weight()
            x = torch.randn(7, 64)
            gy = torch.randn(7, 24)
            y = layer(x)
            (y * gy).sum().backward()
            w_eff, g_w, g_a = reference_grads(layer, x, gy)
            tag = f"{weight}/{gran}/{scale_mode}"
            check(f"forward = α·Q(u) with anchors {tag}", torch.equal(layer.effective_weight().detach(), w_eff))
            check(f"dL/dW = dL/dW_eff (identity STE) {tag}", torch.equal(layer.weight.grad, g_w))
            if scale_mode == "learned":
                check(f"dL/dα = LSQ formula {tag}", torch.allclose(layer.weight_scale.grad, g_a, rtol=1e-5, atol=1e-6),
                      f"max |Δ| {(layer.weight_scale.grad - g_a).abs().max().item():.3e}")
            check(f"anchors 1 % of the weights {tag}", layer.anchor_index.numel() == round(0.01 * 64 * 24))

# STE kinds and warm-up λ reach the op (the op's own formulas are tested in kernels_bitlinear_ops).
layer = bitforge.BitLinear(64, 8, bitforge.QuantConfig(group_size=32, ste="clipped", ste_clip=0.5))
layer(torch.randn(3, 64)).sum().backward()
u = layer.weight.detach() / layer.weight_scale.detach().half().float().repeat_interleave(32, 1)
zero = (layer.weight.grad == 0).view(-1)
outside = (u.abs() > 0.5).view(-1)
outside[layer.anchor_index] = False  # anchors keep the dense gradient
check("clipped STE: zero gradient exactly where |u| > clip (non-anchors)",
      bool(outside.any()) and bool(zero[outside].all()) and not bool(zero.all()))

# QuantConfig defaults = the C++ schema's (config/model_config.h).
src = open(os.path.join(os.environ.get("BITFORGE_SOURCE_DIR", "."), "config", "model_config.h")).read()
d = bitforge.QuantConfig()
for needle in (f"group_size = {d.group_size};", "anchor_fraction = 0.001;", "fp16_scales = true;",
               "lsq_grad_scale = false;", "ste_clip = 1.0;", "norm_eps = 1e-6;", "input_norm = false;"):
    check(f"default matches C++: {needle}", needle in src)

try:
    bitforge.QuantConfig(weight="quaternary")
    check("bad QuantConfig raises ValueError", False)
except ValueError as e:
    check("bad QuantConfig raises ValueError", "binary or ternary" in str(e))

# convert_ on a tiny transformers Llama.
try:
    import transformers
except ImportError:
    print("SKIP: transformers not installed")
    transformers = None
if transformers is not None:
    cfg = transformers.LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                   tie_word_embeddings=True)
    torch.manual_seed(1)
    model = transformers.LlamaForCausalLM(cfg)
    model, names = bitforge.convert_(model, bitforge.QuantConfig(group_size=32, anchor_fraction=0.001))
    check("convert_: 7 projections per layer", len(names) == 14 and all(
        isinstance(model.get_submodule(n), bitforge.BitLinear) for n in names), f"{len(names)} converted")
    check("convert_: lm_head and embeddings untouched",
          isinstance(model.lm_head, torch.nn.Linear) and not isinstance(model.lm_head, bitforge.BitLinear))
    ids = torch.randint(0, 96, (4, 32), generator=torch.Generator().manual_seed(2))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(20):
        loss = model(input_ids=ids, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    check("20 AdamW steps: the converted model trains", losses[-1] < losses[0] - 0.5,
          f"{losses[0]:.3f} -> {losses[-1]:.3f}")
    check("learned scales receive gradients", model.model.layers[0].self_attn.q_proj.weight_scale.grad is not None)
    eager = model(input_ids=ids, labels=ids).loss
    compiled = torch.compile(model, backend="aot_eager")(input_ids=ids, labels=ids).loss
    compiled.backward()
    check("torch.compile(model, backend='aot_eager'): same training loss", torch.allclose(eager, compiled, rtol=1e-6,
                                                                                          atol=1e-6),
          f"{eager.item()} vs {compiled.item()}")
    # The default backend (inductor: generated C++ around the ops, fused elementwise code): one training step's loss
    # and gradients against eager. Before the scales' fp16 rounding became an opaque op (nn.round_to_fp16), inductor
    # dropped the .half().float() round trip and the gradients differed by ~5e-4 (fp16's epsilon) — this caught it.
    model.zero_grad()
    eager = model(input_ids=ids, labels=ids).loss
    eager.backward()
    g_eager = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    loss = torch.compile(model)(input_ids=ids, labels=ids).loss
    loss.backward()
    worst = max((p.grad - g).abs().max().item() / max(g.abs().max().item(), 1e-12)
                for p, g in zip(model.parameters(), g_eager))
    check("torch.compile(model) (inductor): same loss (rel 1e-6) and gradients (max rel 1e-5) as eager",
          abs(loss.item() - eager.item()) <= 1e-6 * abs(eager.item()) and worst <= 1e-5,
          f"loss {eager.item()} vs {loss.item()}, gradients max relative |Δ| {worst:.2e}")

finish()
