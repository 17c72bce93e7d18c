"""The command line as a user meets it (issue #16), on a tiny model trained here in seconds:

- every program in build/ and build/bench/ (and every bitforge subcommand) exits 0 on --help; `run --help` names
  every stage; --help shows defaults; usage errors exit 2 (README: 0 success, 1 runtime error, 2 config/usage error)
  and `-m /nonexistent` says the path does not exist;
- summary.json writes null (not -1) where a value does not exist;
- distill progress: the logged loss and its ce/kd parts are means over the same steps (loss = ce + kd with unit
  weights);
- eval of a packed file or checkpoint, generate from a checkpoint, inspect: run from another directory, they write
  nothing there, nothing next to the model and nothing into TMPDIR;
- generate -n beyond the context says it stopped there;
- inspect on a checkpoint counts no int64 anchor index as a parameter and says "larger" than FP16.
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile

BIN = os.environ["BITFORGE_BINARY_DIR"]
BITFORGE = os.path.join(BIN, "bitforge")
failures = []


def check(name, ok, detail=""):
    print(("PASS " if ok else "FAIL ") + name + (f": {detail}" if detail and not ok else ""))
    if not ok:
        failures.append(name)


def run(args, cwd=None, env=None, timeout=600):
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def tree(root):
    out = set()
    for d, dirs, files in os.walk(root):
        for n in dirs + files:
            out.add(os.path.relpath(os.path.join(d, n), root))
    return out


# --- --help everywhere, exit codes -------------------------------------------------------------------------------
programs = []
for d in (BIN, os.path.join(BIN, "bench")):
    if os.path.isdir(d):
        for n in sorted(os.listdir(d)):
            p = os.path.join(d, n)
            if os.path.isfile(p) and os.access(p, os.X_OK) and not n.endswith((".so", ".sh", ".py")):
                programs.append(p)
check("bitforge is built", BITFORGE in programs)
for p in programs:
    r = run([p, "--help"], timeout=120)
    check(f"{os.path.relpath(p, BIN)} --help exits 0", r.returncode == 0, f"rc {r.returncode}: {r.stderr[-300:]}")
    check(f"{os.path.relpath(p, BIN)} --help prints a usage", "usage" in (r.stdout + r.stderr).lower())

for sub in ["run", "prepare-data", "train", "distill", "export", "eval", "generate", "inspect"]:
    r = run([BITFORGE, sub, "--help"])
    check(f"bitforge {sub} --help exits 0", r.returncode == 0, r.stderr[-300:])
    if sub == "run":
        for stage in ["prepare-data", "teacher", "train", "distill", "export", "eval"]:
            check(f"run --help names stage {stage}", stage in r.stdout)
    if sub == "generate":
        check("generate --help shows defaults", "=64" in r.stdout and "=1\n" in r.stdout, r.stdout)

r = run([BITFORGE, "eval"])
check("missing required option exits 2", r.returncode == 2, f"rc {r.returncode}")
r = run([BITFORGE, "eval", "-m", "/nonexistent/model.packed.safetensors"])
check("eval -m /nonexistent exits 2", r.returncode == 2, f"rc {r.returncode}")
check("eval -m /nonexistent says the path does not exist", "not exist" in r.stderr, r.stderr)
r = run([BITFORGE, "train", "--set", "train.learnig_rate=1"])
check("unknown config key exits 2", r.returncode == 2, f"rc {r.returncode}: {r.stderr[-300:]}")
r = run([BITFORGE, "no-such-command"])
check("unknown subcommand exits 2", r.returncode == 2, f"rc {r.returncode}")

# --- a tiny pipeline ------------------------------------------------------------------------------------------
work = tempfile.mkdtemp(prefix="bitforge-cli-test-")
try:
    corpus = os.path.join(work, "corpus")
    os.makedirs(corpus)
    import random
    rng = random.Random(0)
    words = ["".join(rng.choice("etaoinshrdlucmfwyp") for _ in range(rng.randint(2, 8))) for _ in range(400)]
    for i in range(40):
        text = " ".join(rng.choice(words) for _ in range(300))
        with open(os.path.join(corpus, f"doc{i:02d}.rst.txt"), "w") as f:
            f.write(text + "\n")
    runs = os.path.join(work, "runs")
    tiny = ["--set", f"data.path={corpus}", "--set", "data.vocab_size=300",
            "--set", "model.hidden_size=32", "--set", "model.intermediate_size=64", "--set", "model.num_hidden_layers=1",
            "--set", "model.num_attention_heads=2", "--set", "model.num_key_value_heads=2",
            "--set", "model.max_position_embeddings=64", "--set", "quant.group_size=32",
            "--set", "train.max_steps=4", "--set", "run.teacher_max_steps=4", "--set", "train.warmup_steps=1",
            "--set", "train.logging_steps=2", "--set", "train.eval_steps=0", "--set", "train.save_steps=0",
            "--set", "train.per_device_train_batch_size=2", "--set", "train.seq_len=32",
            "--set", "eval.batch_size=2", "--set", "eval.seq_len=32", "--set", "eval.max_batches=2",
            "--set", "logging.plot=false", "--set", f"run.output_dir={runs}", "--set", "run.name=t", "-t", "1"]
    r = run([BITFORGE, "run"] + tiny, cwd=work)
    check("tiny bitforge run succeeds", r.returncode == 0, r.stderr[-2000:])
    rd = os.path.join(runs, "t")
    summary = json.load(open(os.path.join(rd, "summary.json")))
    teacher = [m for m in summary["models"] if m["model"].startswith("teacher")][0]
    check("summary.json: the teacher's KL is null", teacher["kl"] is None, teacher)
    check("summary.json: the teacher's top-1 is null", teacher["top1"] is None, teacher)
    check("summary.json: no -1 anywhere", "-1.0" not in json.dumps(summary))

    lines = [json.loads(l) for l in open(os.path.join(rd, "distill", "metrics.jsonl")) if '"ce"' in l]
    check("distill metrics have ce/kd lines", len(lines) >= 2)
    for l in lines:
        check(f"distill step {l['step']}: loss = ce + kd (same steps)",
              abs(l["loss"] - (l["ce"] + l["kd"])) <= 1e-5 * abs(l["loss"]), l)

    packed = os.path.join(rd, "export", "model.packed.safetensors")
    ckpt = os.path.join(rd, "distill", "checkpoints")
    check("export wrote the packed file", os.path.isfile(packed))

    # --- commands that read a model write nothing -------------------------------------------------------------
    elsewhere = os.path.join(work, "elsewhere")
    tmpdir = os.path.join(work, "tmp")
    os.makedirs(elsewhere)
    os.makedirs(tmpdir)
    env = dict(os.environ, TMPDIR=tmpdir)
    before = tree(work)
    small = ["--set", "eval.batch_size=2", "--set", "eval.seq_len=32", "--set", "eval.max_batches=2", "-t", "1"]
    # a packed file, no config: the val split of the corpus built in memory with the model's tokenizer
    r = run([BITFORGE, "eval", "-m", packed, "--json", "--set", f"data.path={corpus}"] + small, cwd=elsewhere, env=env)
    check("eval -m packed (no -c) from another directory succeeds", r.returncode == 0, r.stderr[-1500:])
    if r.returncode == 0:
        j = json.loads(r.stdout)
        check("eval of the packed file reports a finite perplexity", 1 < j["val_perplexity"] < 1e6, j)
        check("eval of the packed file says where its val windows come from", "in memory" in j["val_data"], j)
    # a checkpoint, no config: its own data settings (the run's prepared data, read only)
    # (default eval.seq_len 128 > the model's context 64: the windows shrink to the context)
    r = run([BITFORGE, "eval", "-m", ckpt, "--json", "-t", "1", "--set", "eval.max_batches=2"], cwd=elsewhere, env=env)
    check("eval -m checkpoint (no -c) from another directory succeeds", r.returncode == 0, r.stderr[-1500:])
    if r.returncode == 0:
        check("eval of the checkpoint reads the run's prepared val shard", json.loads(r.stdout)["val_data"].endswith(
            "val.bin"), r.stdout)
    r = run([BITFORGE, "generate", "-m", ckpt, "-p", "the model", "-n", "300", "-t", "1"], cwd=elsewhere, env=env)
    check("generate from a checkpoint succeeds", r.returncode == 0, r.stderr[-1500:])
    check("generate -n 300 says it stopped at the context", "context" in r.stderr and "max_position_embeddings" in
          r.stderr, r.stderr[-800:])
    check("generate prints the prompt and its continuation", r.stdout.startswith("the model") and
          len(r.stdout) > len("the model\n"), r.stdout)
    r = run([BITFORGE, "inspect", ckpt, "--json"], cwd=elsewhere, env=env)
    check("inspect a checkpoint succeeds", r.returncode == 0, r.stderr[-800:])
    if r.returncode == 0:
        j = json.loads(r.stdout)
        ints = [t for t in j["tensors"] if t["type"] in ("I64", "I32")]
        check("inspect: the checkpoint has int64 anchor indices", len(ints) > 0)
        check("inspect: int tensors are not parameters", all(t["params"] == 0 for t in ints), ints[:2])
    r = run([BITFORGE, "inspect", ckpt], cwd=elsewhere, env=env)
    check("inspect: an fp32 checkpoint is 'larger' than FP16", "x larger" in r.stdout, r.stdout[-400:])
    r = run([BITFORGE, "inspect", packed], cwd=elsewhere, env=env)
    check("inspect: the packed file is 'smaller' than FP16", "x smaller" in r.stdout, r.stdout[-400:])
    after = tree(work)
    check("eval / generate / inspect wrote nothing (cwd, run directory, TMPDIR)", after == before,
          f"new: {sorted(after - before)[:10]}, removed: {sorted(before - after)[:10]}")
finally:
    shutil.rmtree(work, ignore_errors=True)

if failures:
    print(f"{len(failures)} failure(s): {failures}")
    sys.exit(1)
print("all passed")
