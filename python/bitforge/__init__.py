"""bitforge from Python: BitLinear on bitforge's fused, tested C++ ops (libbitforge_kernels.so).

    import bitforge
    layer = bitforge.BitLinear(4096, 4096, bitforge.QuantConfig(weight="binary", group_size=128))
    bitforge.convert_(hf_model, bitforge.QuantConfig())   # nn.Linear -> BitLinear in attention / MLP, in place
    bitforge.save_for_bitforge(hf_model, "ckpt", tokenizer)  # a checkpoint `bitforge export --checkpoint ckpt` packs

The ops (torch.ops.bitforge.*) are differentiable (Autograd kernels) and traceable (Meta kernels), so BitLinear
trains with autograd and under torch.compile. The library is found through $BITFORGE_KERNELS_LIB, else
$BITFORGE_BINARY_DIR/kernels/, else the repository's build/kernels/.
"""
import os

import torch

_LIB_NAME = "libbitforge_kernels.so"


def _find_library():
    env = os.environ.get("BITFORGE_KERNELS_LIB")
    if env:
        return env
    candidates = []
    if os.environ.get("BITFORGE_BINARY_DIR"):
        candidates.append(os.path.join(os.environ["BITFORGE_BINARY_DIR"], "kernels", _LIB_NAME))
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    candidates.append(os.path.join(repo, "build", "kernels", _LIB_NAME))
    for c in candidates:
        if os.path.exists(c):
            return c
    raise ImportError(f"bitforge: {_LIB_NAME} not found (looked in {', '.join(candidates)}); build it with "
                      "scripts/build.sh or set BITFORGE_KERNELS_LIB")


torch.ops.load_library(_find_library())
ops = torch.ops.bitforge

from .nn import BitLinear, QuantConfig, convert_  # noqa: E402
from .checkpoint import save_for_bitforge  # noqa: E402

__all__ = ["BitLinear", "QuantConfig", "convert_", "save_for_bitforge", "ops"]
