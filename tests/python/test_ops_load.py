"""The bitforge ops load from Python (torch.ops.load_library) and agree with formulas written here in PyTorch."""
import os
import sys

import torch

lib = os.path.join(os.environ["BITFORGE_BINARY_DIR"], "kernels", "libbitforge_kernels.so")
torch.ops.load_library(lib)
ops = torch.ops.bitforge

torch.manual_seed(0)
failures = []


def check(name, ok):
    print(("PASS " if ok else "FAIL ") + name)
    if not ok:
        failures.append(name)


w = torch.randn(16, 64)
scale = torch.rand(16, 4) + 0.2
anchors = torch.tensor([3, 70, 500, 1023], dtype=torch.long)
for q in (1, 2):
    u = w / scale.repeat_interleave(16, 1)
    code = torch.where(u >= 0, 1.0, -1.0) if q == 1 else u.round().clamp(-1, 1) + 0.0
    want = scale.repeat_interleave(16, 1) * code
    want.view(-1)[anchors] = w.view(-1)[anchors]
    got = ops.bitlinear_quantize_weight(w, scale, None, anchors, q, 1.0)
    check(f"bitlinear_quantize_weight quantizer={q}", torch.equal(got, want))
    codes = ops.bitlinear_codes(w, scale, None, anchors, q)
    code_want = code.to(torch.int8)
    code_want.view(-1)[anchors] = 0
    check(f"bitlinear_codes quantizer={q}", torch.equal(codes, code_want))
    g = torch.randn(16, 64)
    gw, gs = ops.bitlinear_quantize_weight_backward(g, w, scale, None, anchors, q, 0, 1.0, 1.0, 1.0)
    check(f"backward identity STE quantizer={q}", torch.equal(gw, g))

x = torch.randn(4, 33)
s = 127.0 / x.abs().max(dim=-1, keepdim=True).values.clamp_(min=1e-5)
check("quantize_activation_per_token int8", torch.equal(ops.quantize_activation_per_token(x, 8),
                                                        (x * s).round().clamp_(-128, 127) / s))
try:
    ops.bitlinear_quantize_weight(w, torch.ones(16, 3), None, anchors, 1, 1.0)
    check("bad group count raises", False)
except RuntimeError as e:
    check("bad group count raises", "must divide in_features" in str(e))

print(f"{len(failures)} failed")
sys.exit(1 if failures else 0)
