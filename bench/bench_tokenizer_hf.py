#!/usr/bin/env python3
"""HF `tokenizers` side of bench_tokenizer: encodes every *.rst.txt document of the corpus with
Tokenizer.from_file(TOKENIZER_JSON).encode_batch(docs, add_special_tokens=False), single-threaded (the caller sets
TOKENIZERS_PARALLELISM=false RAYON_NUM_THREADS=1), and prints one line per round:
    round <i> seconds <s> bytes <n> tokens <t>
"""
import glob
import os
import sys
import time

if len(sys.argv) != 4:
    sys.exit("usage: bench_tokenizer_hf.py TOKENIZER_JSON CORPUS_DIR ROUNDS")
from tokenizers import Tokenizer

tok = Tokenizer.from_file(sys.argv[1])
files = sorted(glob.glob(os.path.join(sys.argv[2], "**", "*.rst.txt"), recursive=True))
docs = [open(f, "rb").read().decode("utf-8") for f in files]
nbytes = sum(len(d.encode("utf-8")) for d in docs)
for r in range(int(sys.argv[3])):
    t0 = time.perf_counter()
    enc = tok.encode_batch(docs, add_special_tokens=False)
    dt = time.perf_counter() - t0
    print(f"round {r} seconds {dt:.6f} bytes {nbytes} tokens {sum(len(e.ids) for e in enc)}", flush=True)
