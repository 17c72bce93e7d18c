"""save_for_bitforge: a Python-trained (converted) Hugging Face model as a bitforge checkpoint, so that
`bitforge export --checkpoint DIR` packs it (packed safetensors, GGUF) and `bitforge eval` / `generate` run it.

The checkpoint is the one trainer/checkpoint.h describes, written the way the C++ trainer writes it:
  DIR/step-NNNNNNN/
    model.safetensors    Hugging Face Llama/Qwen3 names, float32 (+ each BitLinear's weight_scale, anchor_index,
                         input_norm_weight beside its weight; anchor_index int64)
    config.yaml          model: (from model.config) and quant: (from the BitLinear modules); the other sections take
                         bitforge's defaults when loaded
    tokenizer.model      the tokenizer: a byte-level BPE tokenizer.json as bitforge's hf_bpe blob (tokenizer.json +
                         tokenizer_config.json + config.json), or a SentencePiece / bitforge tokenizer file as is
    trainer_state.json   {"step": N, "stage": "python"}
    COMPLETE             written last: the manifest, every other file's size and XXH3-64 (PyPI xxhash), verified by
                         bitforge before it reads anything
It is written into step-NNNNNNN.tmp-<pid>/ and renamed into place; an existing step directory is first renamed to
step-NNNNNNN.old-<pid>/ and deleted after the new one is in (bitforge's clean-up restores it if a kill comes between).
"""
import json
import math
import os
import shutil

import torch

from .nn import BitLinear, _PARTS

_QUANT_KEYS = ("weight", "mean_center", "granularity", "group_size", "scale_mode", "lsq_grad_scale", "fp16_scales",
               "ste", "ste_clip", "activations", "input_norm", "norm_eps", "anchor_fraction")  # + layers: derived


def _yaml_scalar(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        if isinstance(v, float) and not math.isfinite(v):
            raise ValueError(f"save_for_bitforge: non-finite config value {v}")
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_yaml_scalar(x) for x in v) + "]"
    return json.dumps(str(v))  # a JSON string is a valid YAML double-quoted scalar


def _rope_theta(cfg):
    """RoPE base of a transformers 4.x (rope_theta, rope_scaling) or 5.x (rope_parameters) config; plain RoPE only."""
    theta = getattr(cfg, "rope_theta", None)
    for key in ("rope_scaling", "rope_parameters"):
        p = getattr(cfg, key, None)
        if not p:
            continue
        if not isinstance(p, dict):
            raise ValueError(f"save_for_bitforge: config.{key} must be a dict, got {type(p).__name__}")
        kind = p.get("rope_type", p.get("type", "default"))
        if kind != "default":
            raise ValueError(f"save_for_bitforge: config.{key}: rope_type {kind!r} is not supported (plain RoPE only)")
        theta = p.get("rope_theta", theta)
    return float(theta if theta is not None else 10000.0)


def model_section(cfg):
    """bitforge's model: section for a transformers LlamaConfig / Qwen3Config. Raises ValueError on what bitforge's
    Llama cannot run (other model types, activations, biases in the MLP, scaled RoPE)."""
    mt = getattr(cfg, "model_type", None)
    if mt not in ("llama", "qwen3"):
        raise ValueError(f"save_for_bitforge: model_type {mt!r} is not supported (expected llama or qwen3)")
    if getattr(cfg, "hidden_act", "silu") != "silu":
        raise ValueError(f"save_for_bitforge: hidden_act {cfg.hidden_act!r} is not supported (expected silu)")
    if getattr(cfg, "mlp_bias", False):
        raise ValueError("save_for_bitforge: mlp_bias true is not supported")
    heads = cfg.num_attention_heads
    return {
        "arch": mt,
        "vocab_size": int(cfg.vocab_size),
        "hidden_size": int(cfg.hidden_size),
        "intermediate_size": int(cfg.intermediate_size),
        "num_hidden_layers": int(cfg.num_hidden_layers),
        "num_attention_heads": int(heads),
        "num_key_value_heads": int(getattr(cfg, "num_key_value_heads", None) or heads),
        "head_dim": int(getattr(cfg, "head_dim", None) or cfg.hidden_size // heads),
        "max_position_embeddings": int(cfg.max_position_embeddings),
        "rope_theta": _rope_theta(cfg),
        "rms_norm_eps": float(cfg.rms_norm_eps),
        "tie_word_embeddings": bool(getattr(cfg, "tie_word_embeddings", True)),
        "hidden_act": "swiglu",
        "attention_bias": bool(getattr(cfg, "attention_bias", False)),
    }


def quant_section(model):
    """bitforge's quant: section from the model's BitLinear modules (one QuantConfig for all, as bitforge has one), and
    `weight: none` for a model without any. Raises ValueError when the modules disagree."""
    layers = [m for m in model.modules() if isinstance(m, BitLinear)]
    if not layers:
        return {"weight": "none"}
    c = layers[0].config
    for m in layers[1:]:
        if m.config != c:
            raise ValueError("save_for_bitforge: the BitLinear modules have different QuantConfigs; bitforge's "
                             "checkpoint has one quant section")
    if any(m.lam != 1.0 for m in layers):
        raise ValueError("save_for_bitforge: a BitLinear is still in λ warm-up (lam < 1); save the fully quantized "
                         "model")
    converted = {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, BitLinear)}
    parts = [p for p, names in _PARTS.items() if converted & set(names)]
    for p in parts:
        missing = set(_PARTS[p]) - converted
        if missing:
            raise ValueError(f"save_for_bitforge: '{p}' is partly converted ({sorted(missing)} still nn.Linear); "
                             "bitforge quantizes whole parts (quant.layers)")
    q = {k: getattr(c, k) for k in _QUANT_KEYS}
    q["layers"] = parts
    return q


def _tokenizer_bytes(tokenizer, model_config, scratch):
    """The bytes of the checkpoint's tokenizer.model for a transformers tokenizer, a directory or a file. A
    transformers tokenizer is saved into `scratch` (a directory inside the checkpoint's temporary directory, removed
    afterwards: nothing is written outside the path the user gave)."""
    tmp = None
    try:
        path = tokenizer
        if hasattr(tokenizer, "save_pretrained"):
            tmp = scratch
            tokenizer.save_pretrained(tmp)
            path = tmp
        path = os.fspath(path)
        if os.path.isdir(path):
            tj = os.path.join(path, "tokenizer.json")
            if os.path.isfile(tj):
                path = tj
            elif os.path.isfile(os.path.join(path, "tokenizer.model")):
                path = os.path.join(path, "tokenizer.model")
            else:
                raise ValueError(f"save_for_bitforge: {path}: no tokenizer.json or tokenizer.model in this directory")
        if not os.path.isfile(path):
            raise ValueError(f"save_for_bitforge: tokenizer {path} does not exist")
        if os.path.basename(path) != "tokenizer.json":
            with open(path, "rb") as f:
                return f.read()  # SentencePiece model or a bitforge tokenizer file: bitforge detects the kind
        with open(path, encoding="utf-8") as f:
            tok = json.load(f)
        tc_path = os.path.join(os.path.dirname(path), "tokenizer_config.json")
        tc = None
        if os.path.isfile(tc_path):
            with open(tc_path, encoding="utf-8") as f:
                tc = json.load(f)
        blob = {"kind": "hf_bpe", "version": 1, "tokenizer_config": tc,
                "config": json.loads(model_config.to_json_string()) if model_config is not None else None,
                "tokenizer": tok}
        return json.dumps(blob, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


def _fsync_dir(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write(path, data):
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def save_for_bitforge(model, directory, tokenizer, step=0):
    """Writes `model` (a transformers LlamaForCausalLM / Qwen3ForCausalLM, converted with convert_ or not) as the
    bitforge checkpoint DIRECTORY/step-NNNNNNN/ and returns its path (see the module docstring for the files).

    tokenizer: a transformers tokenizer, a directory holding tokenizer.json (byte-level BPE) or tokenizer.model
    (SentencePiece), or a tokenizer file; bitforge checks that it covers the model's vocabulary when it loads.
    Weights are written as float32 (BitLinear's latent weights, scales and anchors; exactly what the Python forward
    uses), so `bitforge eval` on the checkpoint and on its packed export reproduce the Python model's perplexity.
    Raises ValueError for a model bitforge cannot represent (see model_section / quant_section), ImportError when the
    xxhash package (setup.sh installs it) is missing, OSError when DIRECTORY cannot be written.
    """
    import xxhash
    from safetensors.torch import save as st_save

    if int(step) < 0:
        raise ValueError(f"save_for_bitforge: step must be >= 0, got {step}")
    step = int(step)
    msec = model_section(model.config)
    qsec = quant_section(model)
    tensors = {}
    for name, t in model.state_dict().items():
        if name.endswith("rotary_emb.inv_freq"):
            continue
        if name == "lm_head.weight" and msec["tie_word_embeddings"]:
            continue  # tied: bitforge stores the embedding once
        t = t.detach().to("cpu")
        t = t.to(torch.int64) if name.endswith("anchor_index") else t.to(torch.float32)
        tensors[name] = t.contiguous()
    config_yaml = "# written by bitforge.save_for_bitforge (python/bitforge/checkpoint.py)\n"
    for section, values in (("model", msec), ("quant", qsec)):
        config_yaml += f"{section}:\n" + "".join(f"  {k}: {_yaml_scalar(v)}\n" for k, v in values.items())
    files = {
        "model.safetensors": st_save(tensors, metadata={"format": "bitforge.checkpoint", "step": str(step)}),
        "config.yaml": config_yaml.encode("utf-8"),
        "trainer_state.json": json.dumps({"step": step, "stage": "python"}, indent=2).encode("utf-8"),
    }

    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    name = f"step-{step:07d}"
    final = os.path.join(directory, name)
    tmp = os.path.join(directory, f"{name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        files["tokenizer.model"] = _tokenizer_bytes(tokenizer, getattr(model, "config", None),
                                                    os.path.join(tmp, "tokenizer.scratch"))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    manifest = {"files": {}, "format": "bitforge.checkpoint", "hash": "xxh3_64", "step": step, "version": 2}
    for fname, data in files.items():
        _write(os.path.join(tmp, fname), data)
        manifest["files"][fname] = {"bytes": len(data), "xxh3": xxhash.xxh3_64_hexdigest(data)}
    _write(os.path.join(tmp, "COMPLETE"), json.dumps(manifest, indent=2).encode("utf-8"))
    _fsync_dir(tmp)
    if os.path.exists(final):
        old = os.path.join(directory, f"{name}.old-{os.getpid()}")
        os.rename(final, old)
        os.rename(tmp, final)
        _fsync_dir(directory)
        dead = os.path.join(directory, f"{name}.del-{os.getpid()}")
        os.rename(old, dead)
        shutil.rmtree(dead)
    else:
        os.rename(tmp, final)
    _fsync_dir(directory)
    return final
