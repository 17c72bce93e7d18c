#!/usr/bin/env python3
"""A Python training step with bitforge's BitLinear vs the same model with an HF-style pure-PyTorch BitLinear (the
BitNet b1.58 "Training Tips, Code and FAQ" formulas), same threads (issue #22).

    bench_python_bitlinear.py [--threads N] [--steps N] [--rounds N] [--hidden H] [--layers L] [--seq S] [--batch B]
                              [--json OUT]

Model: a transformers LlamaForCausalLM (random init) whose 7 projections per layer are replaced by
  faq       FAQ BitLinear: x_n = RMSNorm(x) (no weight), x_q = x_n + (absmax_int8(x_n) − x_n).detach(),
            w_q = w + (absmean_ternary(w) − w).detach(), y = x_q @ w_qᵀ  (per-tensor absmean scale, per-token int8)
  bitforge  bitforge.convert_ with the same recipe: ternary, tensor scale, absmean, int8 activations, input norm,
            no anchors, fp32 scales (plus a learned RMSNorm weight, which the FAQ version lacks)
  default   bitforge.convert_ with bitforge's default recipe (binary, groups of 128, learned scales, 0.1 % anchors)
A step = forward + loss + backward + AdamW step. Rounds alternate between the variants; the figure per variant is
the median over rounds of the mean step time in a round; ratio = faq time / variant time (> 1: bitforge faster).
"""
import argparse
import json
import os
import statistics
import sys
import time

import torch
from torch import nn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "python"))
import bitforge  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "fixtures",
                                "bitnet"))
import make_bitnet_reference as bitnet_reference  # noqa: E402


class FaqBitLinear(nn.Linear):
    """The BitNet b1.58 FAQ's BitLinear (training-time fake quantization with STE via detach): the formulas of
    tests/fixtures/bitnet/make_bitnet_reference.py, the reference trainer_bitnet_parity_test checks bitforge against."""

    def forward(self, x):
        return bitnet_reference.bitlinear_forward(x, self.weight)


def faq_convert(model):
    names = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    for _, parent in list(model.named_modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear) and child_name in names:
                m = FaqBitLinear(child.in_features, child.out_features, bias=False)
                with torch.no_grad():
                    m.weight.copy_(child.weight)
                setattr(parent, child_name, m)
    return model


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = all cores)")
    ap.add_argument("--steps", type=int, default=3, help="steps per round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--json", default="")
    a = ap.parse_args()
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=8192, hidden_size=a.hidden, intermediate_size=3 * a.hidden,
                      num_hidden_layers=a.layers, num_attention_heads=a.hidden // 64,
                      num_key_value_heads=a.hidden // 128, max_position_embeddings=a.seq, tie_word_embeddings=True)
    matched = bitforge.QuantConfig(weight="ternary", granularity="tensor", scale_mode="absmean", activations="int8",
                                   input_norm=True, anchor_fraction=0.0, fp16_scales=False)
    variants = {}
    for name in ("faq", "bitforge", "default"):
        torch.manual_seed(0)
        m = LlamaForCausalLM(cfg).float()
        if name == "faq":
            faq_convert(m)
        else:
            bitforge.convert_(m, matched if name == "bitforge" else bitforge.QuantConfig(group_size=128))
        variants[name] = (m, torch.optim.AdamW(m.parameters(), lr=1e-3))
    ids = torch.randint(0, 8192, (a.batch, a.seq), generator=torch.Generator().manual_seed(1))

    def step(name):
        m, opt = variants[name]
        loss = m(input_ids=ids, labels=ids).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.item()

    first = {n: step(n) for n in variants}  # warm-up (allocations, the first AdamW state)
    times = {n: [] for n in variants}
    for r in range(a.rounds):
        order = list(variants) if r % 2 == 0 else list(reversed(list(variants)))
        for n in order:
            t = time.perf_counter()
            for _ in range(a.steps):
                step(n)
            times[n].append((time.perf_counter() - t) / a.steps)
    med = {n: statistics.median(v) for n, v in times.items()}
    tokens = a.batch * a.seq
    params = sum(p.numel() for p in variants["faq"][0].parameters())
    print(f"model: Llama hidden {a.hidden}, {a.layers} layers, {params / 1e6:.1f}M parameters; batch {a.batch} x seq "
          f"{a.seq}; torch threads {torch.get_num_threads()}; {a.rounds} alternated rounds of {a.steps} steps")
    print(f"first-step loss: faq {first['faq']:.5f}, bitforge (same recipe) {first['bitforge']:.5f}, "
          f"bitforge default {first['default']:.5f}")
    print("| variant | ms / step (median of rounds) | tokens/s | faq time / variant time |")
    print("|---|---|---|---|")
    for n in variants:
        print(f"| {n} | {med[n] * 1e3:.1f} | {tokens / med[n]:.0f} | {med['faq'] / med[n]:.2f}x |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"threads": torch.get_num_threads(), "hidden": a.hidden, "layers": a.layers, "seq": a.seq,
                       "batch": a.batch, "rounds": a.rounds, "steps": a.steps, "parameters": params,
                       "first_loss": first, "seconds_per_step": med, "round_seconds": times,
                       "ratio_faq_over": {n: med["faq"] / med[n] for n in variants}}, f, indent=2)


if __name__ == "__main__":
    main()
