#!/usr/bin/env python3
"""Python-trained models through bitforge's exporter, and the Python BitLinear against the C++ one (issue #22).

1. Gradients through the Python BitLinear equal the C++ module's (tests/tools/bitlinear_dump, trainer/bitlinear.cpp)
   for every quantizer mode on the same inputs in float32: binary / ternary × tensor / channel / group ×
   learned / absmean with anchors, the four STE kinds, mean centering, LSQ gradient scaling, warm-up λ, int8 / int4
   activations, the input norm, a bias. Exact (torch.equal) for y, dL/dx, dL/dW, dL/dα and W_eff on the STE paths;
   the input-norm path (the same RMSNorm formula written twice) within float32 rounding.
2. A tiny transformers Llama with a byte-level BPE tokenizer (tests/fixtures/tokenizers, nothing downloaded),
   converted with convert_, fine-tuned 20 AdamW steps in Python, saved with save_for_bitforge, packed with
   `bitforge export` (packed + GGUF): `bitforge eval --text` of the packed file and of the checkpoint equal the Python
   model's NLL on the same tokens and windows (relative 1e-4), with the same token count.
3. save_for_bitforge refuses what bitforge cannot represent (partly converted parts), names the problem, and writes
   nothing under the checkpoint's name; re-saving the same step replaces the checkpoint.
"""
import glob
import json
import os
import subprocess
import sys
import tempfile
import zlib

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from checks import check, finish, hf_window_nll  # noqa: E402

SRC = os.environ.get("BITFORGE_SOURCE_DIR", ".")
BIN = os.environ.get("BITFORGE_BINARY_DIR", "build")
sys.path.insert(0, os.path.join(SRC, "python"))
import bitforge  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

BITFORGE = os.path.join(BIN, "bitforge")
DUMP = os.path.join(BIN, "tests", "bitlinear_dump")
CORPUS = "/usr/share/doc/python3.11/html/_sources"
WORK = tempfile.mkdtemp(prefix="bitforge-py-export-")


def run(args):
    return subprocess.run(args, capture_output=True, text=True)


# ---- 1. Python BitLinear vs the C++ module ---------------------------------------------------------------------------
def compare_with_cpp(tag, cfg, sets, lam=1.0, bias=False, exact=True):
    torch.manual_seed(zlib.crc32(tag.encode()))
    layer = bitforge.BitLinear(64, 24, cfg, bias=bias)
    with torch.no_grad():
        layer.weight_scale.mul_(torch.rand_like(layer.weight_scale) + 0.5)
        if layer.input_norm_weight is not None:
            layer.input_norm_weight.uniform_(0.5, 1.5)
        if layer.bias is not None:
            layer.bias.uniform_(-0.1, 0.1)
    if cfg.scale_mode == "absmean":
        layer.reset_scale_from_weight()
    layer.lam = lam
    x = torch.randn(7, 64) * 2
    gy = torch.randn(7, 24)
    inputs = {"weight": layer.weight.detach().clone(), "weight_scale": layer.weight_scale.detach().clone(),
              "anchor_index": layer.anchor_index.clone(), "x": x, "gy": gy}
    if bias:
        inputs["bias"] = layer.bias.detach().clone()
    if layer.input_norm_weight is not None:
        inputs["input_norm_weight"] = layer.input_norm_weight.detach().clone()
    path_in, path_out = os.path.join(WORK, "in.safetensors"), os.path.join(WORK, "out.safetensors")
    save_file(inputs, path_in)
    args = [DUMP, path_in, path_out, "--lambda", repr(lam)]
    for s in sets:
        args += ["--set", s]
    r = run(args)
    if r.returncode != 0:
        check(f"C++ BitLinear ran {tag}", False, r.stderr[-800:])
        return
    ref = load_file(path_out)
    xg = x.clone().requires_grad_()
    y = layer(xg)
    (y * gy).sum().backward()
    ours = {"y": y.detach(), "grad_x": xg.grad, "w_eff": layer.effective_weight().detach(),
            "grad_weight": layer.weight.grad}
    if cfg.scale_mode == "learned":
        ours["grad_weight_scale"] = layer.weight_scale.grad
    if bias:
        ours["grad_bias"] = layer.bias.grad
    if layer.input_norm_weight is not None:
        ours["grad_input_norm_weight"] = layer.input_norm_weight.grad
    missing = sorted(set(ours) ^ set(ref))
    if missing:
        check(f"same gradients exist {tag}", False, f"only on one side: {missing}")
        return
    worst = max((ours[k] - ref[k]).abs().max().item() / max(ref[k].abs().max().item(), 1e-30) for k in ours)
    if exact:
        ok = all(torch.equal(ours[k], ref[k]) for k in ours)
        check(f"Python = C++ exactly (y, dL/dx, dL/dW, dL/dα, W_eff) {tag}", ok, f"max relative |Δ| {worst:.3e}")
    else:
        check(f"Python = C++ within fp32 rounding {tag}", worst < 1e-5, f"max relative |Δ| {worst:.3e}")


Q = bitforge.QuantConfig
if not os.path.exists(DUMP):
    check("tests/bitlinear_dump built", False, DUMP + " missing (cmake --build build --target bitlinear_dump)")
else:
    for weight in ("binary", "ternary"):
        for gran in ("tensor", "channel", "group"):
            for scale in ("learned", "absmean"):
                compare_with_cpp(f"{weight}/{gran}/{scale}",
                                 Q(weight=weight, granularity=gran, group_size=32, scale_mode=scale, anchor_fraction=0.01),
                                 [f"quant.weight={weight}", f"quant.granularity={gran}", "quant.group_size=32",
                                  f"quant.scale_mode={scale}", "quant.anchor_fraction=0.01"])
    for weight in ("binary", "ternary"):
        for ste in ("clipped", "approx_sign", "tanh"):
            compare_with_cpp(f"{weight}/ste={ste}", Q(weight=weight, group_size=32, ste=ste, ste_clip=0.8),
                             [f"quant.weight={weight}", "quant.group_size=32", f"quant.ste={ste}", "quant.ste_clip=0.8"])
    base = ["quant.group_size=32"]
    compare_with_cpp("mean_center", Q(group_size=32, mean_center=True), base + ["quant.mean_center=true"])
    compare_with_cpp("lsq_grad_scale", Q(group_size=32, lsq_grad_scale=True), base + ["quant.lsq_grad_scale=true"])
    compare_with_cpp("fp32 scales", Q(group_size=32, fp16_scales=False), base + ["quant.fp16_scales=false"])
    compare_with_cpp("warm-up λ=0.4", Q(group_size=32), base, lam=0.4)
    compare_with_cpp("int8 activations", Q(group_size=32, activations="int8"), base + ["quant.activations=int8"])
    compare_with_cpp("int4 activations, ternary", Q(weight="ternary", group_size=32, activations="int4"),
                     base + ["quant.activations=int4", "quant.weight=ternary"])
    compare_with_cpp("bias", Q(group_size=32), base, bias=True)
    compare_with_cpp("input norm + int8", Q(group_size=32, input_norm=True, activations="int8"),
                     base + ["quant.input_norm=true", "quant.activations=int8"], exact=False)

# ---- 2. convert_ → fine-tune → save_for_bitforge → bitforge export → packed runtime perplexity ------------------------
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM  # noqa: E402

fixtures = os.path.join(BIN, "tokenizer_fixtures")
r = run([sys.executable, os.path.join(SRC, "tests/fixtures/tokenizers/make_tokenizers.py"), fixtures])
assert r.returncode == 0, r.stderr[-2000:]
tok = AutoTokenizer.from_pretrained(os.path.join(fixtures, "qwen"))
docs = sorted(glob.glob(os.path.join(CORPUS, "**/*.rst.txt"), recursive=True))
train_text = ""
for d in docs[:40]:
    with open(d, encoding="utf-8") as f:
        train_text += f.read() + "\n"
with open(docs[41], encoding="utf-8") as f:
    eval_text = f.read()[:3000]
text_file = os.path.join(WORK, "eval.txt")
with open(text_file, "w", encoding="utf-8") as f:
    f.write(eval_text)
WINDOW, STRIDE = 64, 32

torch.manual_seed(0)
cfg = LlamaConfig(vocab_size=len(tok), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, rope_theta=10000.0,
                  rms_norm_eps=1e-6, tie_word_embeddings=True, bos_token_id=tok.eos_token_id,
                  eos_token_id=tok.eos_token_id)
model = LlamaForCausalLM(cfg)
model, names = bitforge.convert_(model, Q(weight="binary", granularity="group", group_size=128,
                                          anchor_fraction=0.001))
train_ids = torch.tensor(tok(train_text).input_ids)
opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
gen = torch.Generator().manual_seed(3)
losses = []
model.train()
for step in range(20):
    starts = torch.randint(0, len(train_ids) - WINDOW - 1, (8,), generator=gen)
    batch = torch.stack([train_ids[s:s + WINDOW] for s in starts])
    loss = model(input_ids=batch, labels=batch).loss
    opt.zero_grad()
    loss.backward()
    opt.step()
    losses.append(loss.item())
model.eval()
check("20 fine-tuning steps in Python lower the loss", losses[-1] < losses[0] - 0.5,
      f"{losses[0]:.3f} -> {losses[-1]:.3f}")

ckpt_root = os.path.join(WORK, "ckpt")
ckpt = bitforge.save_for_bitforge(model, ckpt_root, tok, step=20)
check("save_for_bitforge wrote step-0000020: the checkpoint's files and nothing else (no tokenizer scratch)",
      os.path.basename(ckpt) == "step-0000020" and sorted(os.listdir(ckpt)) == [
          "COMPLETE", "config.yaml", "model.safetensors", "tokenizer.model", "trainer_state.json"],
      str(sorted(os.listdir(ckpt))))
ids = tok(eval_text).input_ids
py_nll, py_count = hf_window_nll(model, ids, WINDOW, STRIDE)

export_dir = os.path.join(WORK, "export")
r = run([BITFORGE, "export", "--checkpoint", ckpt_root, "-o", export_dir, "--format", "gguf",
         "--set", "export.dtype=fp32", "-t", "2"])
check("bitforge export packs the Python checkpoint (packed + GGUF)", r.returncode == 0 and all(
    os.path.isfile(os.path.join(export_dir, f)) for f in ("model.packed.safetensors", "model.gguf")),
      (r.stdout + r.stderr)[-2000:])
set_window = ["--set", f"eval.seq_len={WINDOW}", "--stride", str(STRIDE), "--json", "-t", "2"]
for what, path in (("checkpoint", ckpt_root), ("packed runtime", os.path.join(export_dir, "model.packed.safetensors"))):
    r = run([BITFORGE, "eval", "-m", path, "--text", text_file] + set_window)
    if r.returncode != 0:
        check(f"bitforge eval of the {what}", False, r.stderr[-2000:])
        continue
    ev = json.loads(r.stdout)
    rel = abs(ev["mean_nll"] - py_nll) / abs(py_nll)
    print(f"{what}: bitforge mean NLL {ev['mean_nll']:.7f} over {ev['tokens']} tokens, Python {py_nll:.7f} over "
          f"{py_count}: relative difference {rel:.2e}")
    check(f"{what}: same tokens as the Python tokenizer",
          ev["text_tokens"] == len(ids) and ev["tokens"] == py_count, f"{ev['text_tokens']} vs {len(ids)}")
    check(f"{what}: perplexity equals the Python model's (relative 1e-4)", rel <= 1e-4, f"{rel:.3e}")

# ---- 3. refusals and replacement -------------------------------------------------------------------------------------
partial = LlamaForCausalLM(cfg)
partial.model.layers[0].self_attn.q_proj = bitforge.BitLinear.from_linear(partial.model.layers[0].self_attn.q_proj,
                                                                         Q(group_size=128))
bad_root = os.path.join(WORK, "bad")
try:
    bitforge.save_for_bitforge(partial, bad_root, tok)
    check("a partly converted model is refused", False, "no error")
except ValueError as e:
    check("a partly converted model is refused, naming the part", "attention" in str(e) and "k_proj" in str(e), str(e))
check("nothing is left under the refused checkpoint's name", not os.path.exists(os.path.join(bad_root, "step-0000000")))
with torch.no_grad():
    model.model.norm.weight.mul_(1.5)
again = bitforge.save_for_bitforge(model, ckpt_root, tok, step=20)
left = sorted(os.listdir(ckpt_root))
reloaded = load_file(os.path.join(again, "model.safetensors"))
check("re-saving a step replaces it (no temporaries left)",
      left == ["step-0000020"] and torch.equal(reloaded["model.norm.weight"], model.model.norm.weight), str(left))
finish()
