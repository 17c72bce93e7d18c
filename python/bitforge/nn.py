"""BitLinear for PyTorch: the Python twin of trainer/bitlinear.{h,cpp}, calling the same fused ops.

Weights: W_eff = α·Q((W − μ)/α) on non-anchor weights, W on the anchors (the largest |W|, a fraction of each layer),
Q = sign (binary, BitNet b1 / OneBit) or round-clip to {−1, 0, 1} (ternary, BitNet b1.58); α per tensor, output
channel or group of input columns, learned (LSQ, Esser et al. 2019) or absmean; rounded to fp16 with an identity
gradient so that export is lossless. Gradients: the straight-through estimator of the chosen kind (identity,
clipped, approx_sign, tanh) and the LSQ scale gradient, computed by the fused backward op. Activations: optional
per-token absmax int8/int4 fake quantization (identity STE) after an optional RMSNorm (BitNet's SubLN-style input
norm). Warm-up λ: W_eff = W + λ·(α·Q(u) − W).
"""
from dataclasses import dataclass, field
import math

import torch
from torch import nn

_QUANTIZERS = {"binary": 1, "ternary": 2}
_STE = {"identity": 0, "clipped": 1, "approx_sign": 2, "tanh": 3}


@torch.library.custom_op("bitforge_py::round_to_fp16", mutates_args=())
def round_to_fp16(a: torch.Tensor) -> torch.Tensor:
    """a rounded to the nearest float16 value, returned as float32 (the scales' export rounding). An opaque op, so
    that torch.compile keeps the rounding: inductor drops a fused .half().float() round trip by default
    (torch._inductor.config.emulate_precision_casts), which would train with scales the packed file cannot store."""
    return a.half().float()


@round_to_fp16.register_fake
def _(a):
    return torch.empty_like(a)


@dataclass
class QuantConfig:
    """The quantization settings of bitforge's YAML `quant:` section (config/model_config.h), same defaults."""
    weight: str = "binary"               # binary | ternary
    granularity: str = "group"           # tensor | channel | group
    group_size: int = 128                # input columns per scale (granularity group)
    scale_mode: str = "learned"          # learned | absmean
    mean_center: bool = False            # BitNet b1: Q(W − μ)
    lsq_grad_scale: bool = False         # scale gradient × 1/sqrt(N·Qp)
    fp16_scales: bool = True             # α rounded to fp16 in the forward (identity gradient)
    ste: str = "identity"                # identity | clipped | approx_sign | tanh
    ste_clip: float = 1.0
    activations: str = "none"            # none | int8 | int4
    input_norm: bool = False             # RMSNorm inside BitLinear before activation quantization
    norm_eps: float = 1e-6
    anchor_fraction: float = 0.001       # fraction of each layer's weights kept full precision (largest |W|)
    layers: list = field(default_factory=lambda: ["attention", "mlp"])

    def __post_init__(self):
        if self.weight not in _QUANTIZERS:
            raise ValueError(f"QuantConfig.weight: expected binary or ternary, got {self.weight!r}")
        if self.granularity not in ("tensor", "channel", "group"):
            raise ValueError(f"QuantConfig.granularity: expected tensor, channel or group, got {self.granularity!r}")
        if self.scale_mode not in ("learned", "absmean"):
            raise ValueError(f"QuantConfig.scale_mode: expected learned or absmean, got {self.scale_mode!r}")
        if self.ste not in _STE:
            raise ValueError(f"QuantConfig.ste: expected one of {sorted(_STE)}, got {self.ste!r}")
        if self.activations not in ("none", "int8", "int4"):
            raise ValueError(f"QuantConfig.activations: expected none, int8 or int4, got {self.activations!r}")
        if not 0.0 <= self.anchor_fraction <= 0.5:
            raise ValueError(f"QuantConfig.anchor_fraction: expected [0, 0.5], got {self.anchor_fraction}")


class BitLinear(nn.Module):
    """y = act_quant(norm(x)) @ W_eff.T + b.  x: [*, in] (any float dtype; computed in float32), y: [*, out] float32.

    Parameters: `weight` [out, in] float32 (the latent full-precision master weight), `weight_scale` α [S_r, S_c]
    (parameter when learned, buffer when absmean), optional `bias` [out] and `input_norm_weight` [in]; buffer
    `anchor_index` [n] int64 (sorted flat indices of the anchors). The names match bitforge's checkpoints.
    Raises ValueError on sizes the granularity cannot split (group_size must divide in_features).
    """

    def __init__(self, in_features, out_features, config=None, bias=False):
        super().__init__()
        self.config = config or QuantConfig()
        c = self.config
        if in_features <= 0 or out_features <= 0:
            raise ValueError(f"BitLinear: in/out features must be positive, got {in_features}x{out_features}")
        if c.granularity == "group" and (c.group_size <= 0 or in_features % c.group_size):
            raise ValueError(f"BitLinear: group_size {c.group_size} must divide in_features {in_features}")
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        bound = 1.0 / math.sqrt(in_features)
        nn.init.uniform_(self.weight, -bound, bound)  # nn.Linear's default, as the C++ module
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        self.input_norm_weight = nn.Parameter(torch.ones(in_features)) if c.input_norm else None
        sr = 1 if c.granularity == "tensor" else out_features
        sc = in_features // c.group_size if c.granularity == "group" else 1
        if c.scale_mode == "learned":
            self.weight_scale = nn.Parameter(torch.ones(sr, sc))
        else:
            self.register_buffer("weight_scale", torch.ones(sr, sc))
        self.register_buffer("anchor_index", torch.empty(0, dtype=torch.long))
        self.lam = 1.0  # warm-up λ (set by the training loop; 1 = fully quantized)
        self.select_anchors()
        self.reset_scale_from_weight()

    @classmethod
    def from_linear(cls, linear, config=None):
        """A BitLinear initialised from an nn.Linear's weight (and bias): scales = absmean, anchors = largest |W|."""
        m = cls(linear.in_features, linear.out_features, config, bias=linear.bias is not None)
        with torch.no_grad():
            m.weight.copy_(linear.weight.detach().float())
            if linear.bias is not None:
                m.bias.copy_(linear.bias.detach().float())
        m.to(linear.weight.device)
        m.select_anchors()
        m.reset_scale_from_weight()
        return m

    # ---- scales, centers, anchors (as trainer/bitlinear.cpp) ----
    def _group_reduce(self, w, absolute):
        out, inn = w.shape
        sr, sc = self.weight_scale.shape
        g = (w.abs() if absolute else w).view(out, sc, inn // sc).mean(2)
        return g.mean(0, keepdim=True) if sr == 1 else g

    def _center(self):
        return self._group_reduce(self.weight.detach(), False) if self.config.mean_center else None

    def _absmean_scale(self):
        w = self.weight.detach()
        mu = self._center()
        if mu is not None:
            w = w - mu.repeat_interleave(self.in_features // mu.shape[1], 1).expand_as(w)
        return self._group_reduce(w, True).clamp_min(1e-5)

    @torch.no_grad()
    def reset_scale_from_weight(self):
        self.weight_scale.copy_(self._absmean_scale())

    @torch.no_grad()
    def select_anchors(self):
        n = int(math.floor(self.config.anchor_fraction * self.weight.numel() + 0.5))  # C++ llround
        idx = torch.empty(0, dtype=torch.long, device=self.weight.device)
        if n > 0:
            idx = self.weight.detach().abs().flatten().topk(n, sorted=False).indices.sort().values
        self.anchor_index = idx

    def _alpha(self):
        if self.config.scale_mode == "learned":
            a = self.weight_scale
        else:
            with torch.no_grad():
                self.weight_scale.copy_(self._absmean_scale())
            a = self.weight_scale
        if self.config.fp16_scales:
            a = a + (round_to_fp16(a.detach()) - a.detach())
        return a

    def effective_weight(self):
        """W_eff [out, in] float32 — what the forward uses, checkpoints store (via weight/α/anchors) and export packs."""
        c = self.config
        n = self.weight.numel() // self.weight_scale.numel()
        factor = 1.0 / math.sqrt(n) if c.lsq_grad_scale else 1.0
        return torch.ops.bitforge.bitlinear_weight(self.weight, self._alpha(), self._center(), self.anchor_index,
                                                   _QUANTIZERS[c.weight], float(self.lam), _STE[c.ste],
                                                   float(c.ste_clip), factor)

    def forward(self, x):
        if x.shape[-1] != self.in_features:
            raise ValueError(f"BitLinear: input last dimension must be {self.in_features}, got {tuple(x.shape)}")
        x = x.float()
        if self.input_norm_weight is not None:
            x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.config.norm_eps) * self.input_norm_weight
        if self.config.activations != "none":
            x = torch.ops.bitforge.quantize_activation_per_token(x.contiguous(),
                                                                 8 if self.config.activations == "int8" else 4)
        return nn.functional.linear(x, self.effective_weight(), self.bias)

    def extra_repr(self):
        c = self.config
        return (f"{self.in_features}, {self.out_features}, weight={c.weight}, granularity={c.granularity}"
                f"{'/' + str(c.group_size) if c.granularity == 'group' else ''}, scale={c.scale_mode}, ste={c.ste}, "
                f"anchors={self.anchor_index.numel()}, activations={c.activations}")


_PARTS = {"attention": ("q_proj", "k_proj", "v_proj", "o_proj"), "mlp": ("gate_proj", "up_proj", "down_proj")}


def convert_(model, config=None, dtype=torch.float32):
    """Replaces, in place, the nn.Linear projections of a Hugging Face Llama/Qwen3-style model (attention: q/k/v/o_proj,
    mlp: gate/up/down_proj, as chosen by config.layers) by BitLinear initialised from their weights; the embeddings,
    norms and lm_head stay as they are (cast to `dtype`, default float32: BitLinear computes in float32).
    Returns the model and the list of converted module names. Raises ValueError when nothing matched."""
    config = config or QuantConfig()
    names = tuple(n for part in config.layers for n in _PARTS.get(part, ()))
    if not names:
        raise ValueError(f"convert_: QuantConfig.layers selects no projection: {config.layers}")
    model.to(dtype)
    converted = []
    for parent_name, parent in list(model.named_modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear) and child_name in names:
                setattr(parent, child_name, BitLinear.from_linear(child, config))
                converted.append(f"{parent_name}.{child_name}" if parent_name else child_name)
    if not converted:
        raise ValueError(f"convert_: no nn.Linear named {names} in {type(model).__name__}")
    return model, converted
