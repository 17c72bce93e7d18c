"""Data-parallel training on c10d (Gloo on CPU), end to end through build/bitforge (issue #15):

* equivalence: 2 ranks x batch B == 1 rank x batch 2B, 20 steps of a tiny QAT config in fp32 -- losses within
  1e-5 relative at every step, final weights within 1e-5 -- for train (built-in launcher and torchrun), for
  train.zero_stage 1 and for distill;
* resume across world sizes: 2 -> 1 and 1 -> 2 from the step-10 checkpoint continue the same loss curve;
* fault: kill -9 of rank 1 mid-run makes rank 0 exit non-zero naming rank 1 within the timeout; the last complete
  checkpoint is intact and resumes;
* ZeRO-1 optimizer-state bytes per rank (from the log) are the unsharded bytes / world size;
* NCCL smoke test (world size 1): skipped visibly without a CUDA device.
"""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import torch
from safetensors.torch import load_file

BIN = os.path.join(os.environ["BITFORGE_BINARY_DIR"], "bitforge")
PY_BIN = os.path.dirname(sys.executable)
TMP = tempfile.mkdtemp(prefix="bitforge_dp_")
failures = []
report = {}


def check(name, ok, detail=""):
    print(("PASS " if ok else "FAIL ") + name + (f"  ({detail})" if detail else ""), flush=True)
    if not ok:
        failures.append(name)


CONFIG = """
run: {{name: dp, output_dir: {tmp}}}
data: {{format: jsonl, path: {tmp}/corpus.jsonl, tokenizer: byte, val_fraction: 0.2, output_dir: {tmp}/data}}
model: {{hidden_size: 32, intermediate_size: 64, num_hidden_layers: 2, num_attention_heads: 2,
        num_key_value_heads: 1, max_position_embeddings: 64}}
quant: {{weight: binary, granularity: group, group_size: 32, anchor_fraction: 0.01, anchor_update_steps: 5,
        anchor_freeze_step: 15}}
train: {{max_steps: 20, per_device_train_batch_size: 4, seq_len: 16, gradient_accumulation_steps: 2,
        warmup_steps: 3, learning_rate: 3.0e-3, logging_steps: 1, eval_steps: 0, save_steps: 10,
        save_total_limit: 3, threads: 1, device: cpu, bf16: false, distributed_timeout_s: 20}}
eval: {{max_batches: 2, batch_size: 4, seq_len: 16}}
logging: {{plot: false}}
"""


def setup():
    with open(os.path.join(TMP, "corpus.jsonl"), "w") as f:
        for i in range(60):
            f.write(json.dumps({"text": f"Document {i}: the quick brown fox jumps over the lazy dog {i * 7} times;"
                                        f" binary weights are plus or minus one, ternary ones add zero. {i}"}) + "\n")
    with open(os.path.join(TMP, "tiny.yaml"), "w") as f:
        f.write(CONFIG.format(tmp=TMP))
    r = subprocess.run([BIN, "prepare-data", "-c", os.path.join(TMP, "tiny.yaml")], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def bitforge(cmd, name, sets, nproc=0, torchrun=False, check_rc=True, timeout=300):
    """Runs `bitforge cmd` in run directory TMP/<name>; returns (rc, output)."""
    args = [cmd, "-c", os.path.join(TMP, "tiny.yaml"), "--set", f"run.name={name}"]
    for s in sets:
        args += ["--set", s]
    if torchrun:
        argv = [os.path.join(PY_BIN, "torchrun"), "--no-python", "--standalone", f"--nproc-per-node={nproc}", BIN] + args
    else:
        argv = [BIN] + args + (["--nproc-per-node", str(nproc)] if nproc else [])
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    t0 = time.time()
    r = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=timeout)
    out = r.stdout + r.stderr
    print(f"  ran {' '.join(argv[:1] + args[:1])} {name} (nproc {nproc}{', torchrun' if torchrun else ''}): "
          f"rc {r.returncode}, {time.time() - t0:.1f} s", flush=True)
    if check_rc and r.returncode != 0:
        print(out[-4000:])
    return r.returncode, out


def losses(stage_dir):
    out = {}
    with open(os.path.join(stage_dir, "metrics.jsonl")) as f:
        for line in f:
            j = json.loads(line)
            if "loss" in j:
                out[j["step"]] = j["loss"]
    return out


def weights(ckpt):
    return load_file(os.path.join(ckpt, "model.safetensors"))


def compare_losses(name, a, b, steps):
    worst = 0.0
    for s in steps:
        if s not in a or s not in b:
            check(f"{name}: step {s} logged in both runs", False)
            return
        worst = max(worst, abs(a[s] - b[s]) / max(abs(a[s]), 1e-12))
    report[name + " max rel loss diff"] = worst
    check(f"{name}: losses equal within 1e-5 relative at steps {steps[0]}..{steps[-1]}", worst <= 1e-5,
          f"max rel diff {worst:.2e}")


def compare_weights(name, ca, cb):
    wa, wb = weights(ca), weights(cb)
    worst = 0.0
    for k, ta in wa.items():
        tb = wb[k]
        if ta.dtype in (torch.int64, torch.int32):
            if not torch.equal(ta, tb):
                worst = float("inf")
            continue
        scale = max(1.0, ta.abs().max().item())
        worst = max(worst, (ta.double() - tb.double()).abs().max().item() / scale)
    report[name + " max weight diff"] = worst
    check(f"{name}: final weights within 1e-5 ({len(wa)} tensors)", worst <= 1e-5 and set(wa) == set(wb),
          f"max diff {worst:.2e}")


def ckpt(name, stage, step):
    return os.path.join(TMP, name, stage, "checkpoints", f"step-{step:07d}")


def main():
    setup()
    steps = list(range(1, 21))
    one = ["train.per_device_train_batch_size=8"]

    # --- train: 1 x 2B vs 2 x B (built-in launcher, torchrun), zero_stage 1 ------------------------------------
    rc, _ = bitforge("train", "one", one)
    check("train 1 rank x 2B runs", rc == 0)
    rc, out2 = bitforge("train", "two", [], nproc=2)
    check("train 2 ranks x B (--nproc-per-node 2) runs", rc == 0)
    if rc == 0:
        compare_losses("train 2x B vs 1x 2B", losses(f"{TMP}/one/student"), losses(f"{TMP}/two/student"), steps)
        compare_weights("train 2x B vs 1x 2B", ckpt("one", "student", 20), ckpt("two", "student", 20))
        check("rank 1 wrote no files (one metrics.jsonl line per step)",
              sum(1 for _ in open(f"{TMP}/two/student/metrics.jsonl")) == 21)
    rc, outz = bitforge("train", "zero", ["train.zero_stage=1"], nproc=2)
    check("train 2 ranks zero_stage 1 runs", rc == 0)
    if rc == 0:
        compare_losses("zero1 2x B vs 1x 2B", losses(f"{TMP}/one/student"), losses(f"{TMP}/zero/student"), steps)
        compare_weights("zero1 2x B vs 1x 2B", ckpt("one", "student", 20), ckpt("zero", "student", 20))
        m = re.findall(r"ZeRO-1: rank (\d+) owns elements \[(\d+), (\d+)\) of (\d+)", outz)
        if m:
            total = int(m[0][3])
            per_rank = max(int(b) - int(a) for _, a, b, _ in m)
            report["zero1 optimizer state bytes per rank"] = 8 * per_rank
            report["zero0 optimizer state bytes per rank"] = 8 * total
            check("ZeRO-1 optimizer state per rank = full / world size", per_rank == (total + 1) // 2,
                  f"{8 * per_rank} vs {8 * total} bytes")
    if shutil.which(os.path.join(PY_BIN, "torchrun")):
        rc, _ = bitforge("train", "trun", [], nproc=2, torchrun=True)
        check("train under torchrun --no-python --nproc-per-node 2 runs", rc == 0)
        if rc == 0:
            compare_losses("torchrun 2x B vs 1x 2B", losses(f"{TMP}/one/student"), losses(f"{TMP}/trun/student"),
                           steps)
    else:
        print("SKIP torchrun: not found next to", sys.executable)

    # --- resume across world sizes -----------------------------------------------------------------------------
    rc, _ = bitforge("train", "r21", one + [f"train.resume_from_checkpoint={ckpt('two', 'student', 10)}"])
    check("resume 2 -> 1 runs", rc == 0)
    if rc == 0:
        compare_losses("resume 2->1", losses(f"{TMP}/one/student"), losses(f"{TMP}/r21/student"), steps[10:])
        compare_weights("resume 2->1", ckpt("one", "student", 20), ckpt("r21", "student", 20))
    rc, _ = bitforge("train", "r12", [f"train.resume_from_checkpoint={ckpt('one', 'student', 10)}"], nproc=2)
    check("resume 1 -> 2 runs", rc == 0)
    if rc == 0:
        compare_losses("resume 1->2", losses(f"{TMP}/one/student"), losses(f"{TMP}/r12/student"), steps[10:])
        compare_weights("resume 1->2", ckpt("one", "student", 20), ckpt("r12", "student", 20))
    rc, _ = bitforge("train", "rz", [f"train.resume_from_checkpoint={ckpt('zero', 'student', 10)}"] + one)
    check("resume zero_stage 1 (2 ranks) -> zero_stage 0 (1 rank) runs", rc == 0)
    if rc == 0:
        compare_losses("resume zero1 2->1", losses(f"{TMP}/one/student"), losses(f"{TMP}/rz/student"), steps[10:])

    # --- distill ---------------------------------------------------------------------------------------------
    teacher = ["distill.teacher=" + os.path.join(TMP, "one", "student", "checkpoints"), "distill.student_init=scratch",
               "distill.alpha_ce=0.5", "distill.alpha_kd=0.5"]
    rc, _ = bitforge("distill", "d1", teacher + one)
    check("distill 1 rank x 2B runs", rc == 0)
    rc2, _ = bitforge("distill", "d2", teacher, nproc=2)
    check("distill 2 ranks x B runs", rc2 == 0)
    if rc == 0 and rc2 == 0:
        compare_losses("distill 2x B vs 1x 2B", losses(f"{TMP}/d1/distill"), losses(f"{TMP}/d2/distill"), steps)
        compare_weights("distill 2x B vs 1x 2B", ckpt("d1", "distill", 20), ckpt("d2", "distill", 20))

    # --- fault: kill -9 one rank mid-run ------------------------------------------------------------------------
    argv = [BIN, "train", "-c", os.path.join(TMP, "tiny.yaml"), "--set", "run.name=fault", "--set",
            "train.max_steps=100000", "--set", "train.save_steps=5", "--set", "train.logging_steps=50",
            "--nproc-per-node", "2"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines, pid1 = [], None
    deadline = time.time() + 120
    while pid1 is None and time.time() < deadline:
        line = p.stdout.readline()
        if not line:
            break
        lines.append(line)
        m = re.search(r"launcher: rank 1 is pid (\d+)", line)
        if m:
            pid1 = int(m.group(1))
    ck = os.path.join(TMP, "fault", "student", "checkpoints")
    while time.time() < deadline and not any(os.path.exists(os.path.join(ck, d, "COMPLETE"))
                                             for d in (os.listdir(ck) if os.path.isdir(ck) else [])):
        time.sleep(0.2)
    time.sleep(1.0)
    t_kill = time.time()
    os.kill(pid1, signal.SIGKILL)
    try:
        rest, _ = p.communicate(timeout=20 + 30)
    except subprocess.TimeoutExpired:
        p.kill()
        rest, _ = p.communicate()
    out = "".join(lines) + rest
    elapsed = time.time() - t_kill
    report["fault: seconds from kill -9 to exit"] = elapsed
    msg = [l for l in out.splitlines() if "lost rank 1" in l]
    check("fault: the run exits non-zero after kill -9 of rank 1", p.returncode not in (0, None), f"rc {p.returncode}")
    check("fault: rank 0 names the lost rank", bool(msg), msg[0].strip()[:300] if msg else out[-1500:])
    check("fault: stopped within the timeout (20 s)", elapsed < 20, f"{elapsed:.1f} s")
    from_ = subprocess.run([BIN, "inspect", ck], capture_output=True, text=True)
    latest = sorted(d for d in os.listdir(ck) if re.fullmatch(r"step-\d{7}", d)) if os.path.isdir(ck) else []
    ok = bool(latest) and os.path.exists(os.path.join(ck, latest[-1], "COMPLETE"))
    check("fault: the last checkpoint is complete", ok, latest[-1] if latest else "none")
    if ok:
        step = int(latest[-1][5:])
        rc, _ = bitforge("train", "fault", [f"train.max_steps={step + 3}", "train.resume_from_checkpoint=auto",
                                            "train.save_steps=5"], nproc=2)
        check("fault: the last checkpoint resumes (2 ranks)", rc == 0)

    # --- NCCL smoke test ----------------------------------------------------------------------------------------
    if torch.cuda.is_available():
        rc, out = bitforge("train", "nccl", ["train.device=cuda", "train.distributed_backend=nccl"], nproc=1)
        check("NCCL world size 1 smoke test", rc == 0)
    else:
        print("SKIP NCCL smoke test (world size 1): no CUDA device on this machine", flush=True)

    print("REPORT " + json.dumps(report, sort_keys=True))
    if failures:
        print("FAILED:", failures)
        sys.exit(1)
    shutil.rmtree(TMP, ignore_errors=True)


if __name__ == "__main__":
    main()
