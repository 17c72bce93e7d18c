#!/usr/bin/env python3
"""Compare stock llama.cpp on bitforge's GGUF export with bitforge's packed runtime (driver for
scripts/check_gguf_llama_cpp.sh; needs numpy).

For each (gguf, packed) pair it evaluates the same validation windows (token ids straight from data/val.bin,
each window starting at a document's BOS, so both sides see exactly the same ids; no tokenizer involved) with
  llama_logits              (scripts/llama_logits.cpp against the built libllama)
  bench_dump_packed_logits  (bitforge's PackedRuntime)
and prints mean KL(bitforge || llama.cpp) in nats (softmax of the packed runtime's logits as the reference)
and the top-1 agreement over all positions. Exit status 1 if llama.cpp fails to load/run a file, 3 if a
pair misses --max-kl / --min-top1 (only checked when those are given).
"""
import argparse
import os
import struct
import subprocess
import sys
import tempfile

import numpy as np


def read_val_tokens(path):
    with open(path, "rb") as f:
        header = f.read(64)
        if len(header) < 64 or header[:8] != b"BFTOKENS":
            sys.exit(f"{path}: not a bitforge token shard (magic)")
        _version, token_bytes, count = struct.unpack_from("<IIQ", header, 8)
        dtype = {2: "<u2", 4: "<u4"}.get(token_bytes)
        if dtype is None:
            sys.exit(f"{path}: token_bytes {token_bytes}")
        return np.fromfile(f, dtype=dtype, count=count).astype(np.int64)


def pick_windows(tokens, bos, window, count):
    """`count` windows of `window` ids, each starting at a BOS, spread over the shard."""
    starts = np.flatnonzero(tokens == bos) if bos >= 0 else np.arange(0, len(tokens) - window, window)
    starts = starts[starts + window <= len(tokens)]
    if len(starts) == 0:
        starts = np.arange(0, max(1, len(tokens) - window + 1), window)
    idx = np.linspace(0, len(starts) - 1, num=min(count, len(starts))).round().astype(int)
    return [tokens[s:s + window] for s in starts[np.unique(idx)]]


def run(cmd, what):
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        sys.stderr.write(f"--- {what} failed (exit {p.returncode}): {' '.join(cmd)}\n")
        tail = (p.stderr or "").splitlines()[-40:]
        sys.stderr.write("\n".join(tail) + "\n")
        return None
    return p


def load_logits(path, T):
    a = np.fromfile(path, dtype=np.float32)
    if a.size % T:
        sys.exit(f"{path}: {a.size} floats is not a multiple of T={T}")
    return a.reshape(T, -1).astype(np.float64)


def log_softmax(x):
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--val", required=True, help="data/val.bin (bitforge token shard)")
    ap.add_argument("--pair", action="append", nargs=2, metavar=("GGUF", "PACKED"), required=True)
    ap.add_argument("--llama-logits", required=True)
    ap.add_argument("--dump-packed", required=True)
    ap.add_argument("--bos", type=int, default=1)
    ap.add_argument("--window", type=int, default=128)
    ap.add_argument("--windows", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--kv-f16", action="store_true", help="llama.cpp's default F16 KV cache (default: F32)")
    ap.add_argument("--max-kl", type=float, default=None)
    ap.add_argument("--min-top1", type=float, default=None)
    args = ap.parse_args()

    tokens = read_val_tokens(args.val)
    windows = pick_windows(tokens, args.bos, args.window, args.windows)
    n_pos = sum(len(w) for w in windows)
    print(f"validation: {len(tokens)} tokens; comparing {len(windows)} windows x {args.window} = {n_pos} positions "
          f"(each window starts at BOS id {args.bos}; same ids to both runtimes)")

    status = 0
    with tempfile.TemporaryDirectory(prefix="bf_llama_check.") as tmp:
        for gguf, packed in args.pair:
            print(f"\n== {gguf}\n   vs {packed}")
            kls, agree, maxdiff, total = [], 0, 0.0, 0
            failed = False
            for i, w in enumerate(windows):
                tok = os.path.join(tmp, f"tok{i}.txt")
                with open(tok, "w") as f:
                    f.write(" ".join(str(int(t)) for t in w) + "\n")
                lf, pf = os.path.join(tmp, f"llama{i}.f32"), os.path.join(tmp, f"packed{i}.f32")
                cmd = [args.llama_logits, gguf, tok, lf, "--threads", str(args.threads)]
                if args.kv_f16:
                    cmd.append("--kv-f16")
                if run(cmd, "llama.cpp") is None:
                    failed = True
                    break
                if run([args.dump_packed, packed, tok, pf, "--threads", str(args.threads)], "bitforge packed runtime") is None:
                    failed = True
                    break
                L, P = load_logits(lf, len(w)), load_logits(pf, len(w))
                if L.shape != P.shape:
                    sys.stderr.write(f"shape mismatch: llama.cpp {L.shape} vs packed {P.shape}\n")
                    failed = True
                    break
                lp, lq = log_softmax(P), log_softmax(L)
                kls.append((np.exp(lp) * (lp - lq)).sum(axis=-1))
                agree += int((P.argmax(-1) == L.argmax(-1)).sum())
                maxdiff = max(maxdiff, float(np.abs(L - P).max()))
                total += len(w)
            if failed:
                print("   FAILED (see stderr)")
                status = 1
                continue
            kl = np.concatenate(kls)
            top1 = agree / total
            print(f"   positions {total} | mean KL(bitforge||llama.cpp) {kl.mean():.3e} nats "
                  f"(median {np.median(kl):.3e}, max {kl.max():.3e}) | top-1 agreement {100 * top1:.2f}% | "
                  f"max |logit diff| {maxdiff:.3e}")
            if args.max_kl is not None and kl.mean() > args.max_kl:
                print(f"   MISS: mean KL {kl.mean():.3e} > {args.max_kl:g}")
                status = status or 3
            if args.min_top1 is not None and 100 * top1 < args.min_top1:
                print(f"   MISS: top-1 {100 * top1:.2f}% < {args.min_top1:g}%")
                status = status or 3
    return status


if __name__ == "__main__":
    sys.exit(main())
