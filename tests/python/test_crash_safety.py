#!/usr/bin/env python3
"""Crash-safety test (issue #21): kill -9 a tiny `bitforge train` at many points, resume each time with
train.resume_from_checkpoint=auto, and require

  * every resume to succeed (exit 0) from the newest checkpoint, never falling back past a damaged one
    (a kill must never leave an unloadable newest checkpoint),
  * the final weights and optimizer state bit-identical to an uninterrupted run,
  * no orphaned temporaries (step-*.tmp-*, *.del-*, *.old-*) after the resume.

Kill points: BITFORGE_CRASH_AT=<point>:<n> (trainer/checkpoint_io.h) inside checkpoint saves (before/after each
file, before COMPLETE, before publishing, after the atomic swap, mid-prune, mid-delete), between optimizer steps,
during a re-save of a finished run (with RENAME_EXCHANGE and with the rename-aside fallback), plus SIGKILLs from
outside at random moments. Environment: BITFORGE_BINARY_DIR (the build directory holding `bitforge`).
"""
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

BIN = os.path.join(os.environ.get("BITFORGE_BINARY_DIR", "build"), "bitforge")
STEPS = 12


def config(work):
    return f"""
model: {{hidden_size: 32, intermediate_size: 64, num_hidden_layers: 1, num_attention_heads: 2, num_key_value_heads: 1, max_position_embeddings: 64}}
quant: {{group_size: 32, anchor_fraction: 0.01, anchor_update_steps: 3, anchor_freeze_step: 6}}
data: {{format: jsonl, path: {work}/corpus.jsonl, tokenizer: byte, val_fraction: 0.2, output_dir: {work}/data}}
train: {{max_steps: {STEPS}, per_device_train_batch_size: 2, seq_len: 16, warmup_steps: 1, logging_steps: 4, eval_steps: 0, save_steps: 2, save_total_limit: 2, threads: 1}}
eval: {{seq_len: 16, max_batches: 2, batch_size: 2}}
logging: {{plot: false, level: info}}
run: {{name: ref, output_dir: {work}/runs, stages: [prepare-data, train]}}
"""


class Runner:
    def __init__(self, work):
        self.work = work
        self.cfg = os.path.join(work, "tiny.yaml")
        with open(self.cfg, "w") as f:
            f.write(config(work))
        with open(os.path.join(work, "corpus.jsonl"), "w") as f:
            for i in range(60):
                f.write(json.dumps({"text": f"Document {i}: the quick brown fox jumps over the lazy dog {i * 7} "
                                            "times; binary weights are plus or minus one."}) + "\n")
        self.kills = 0
        self.resumes = 0
        self.failures = []

    def ckdir(self, name):
        return os.path.join(self.work, "runs", name, "student", "checkpoints")

    def cmd(self, name):
        return [BIN, "train", "--config", self.cfg, "--set", f"run.name={name}", "--set",
                "train.resume_from_checkpoint=auto", "--log-level", "info"]

    def env(self, crash=None, no_exchange=False):
        e = dict(os.environ)
        e.pop("BITFORGE_CRASH_AT", None)
        e.pop("BITFORGE_NO_RENAME_EXCHANGE", None)
        if crash:
            e["BITFORGE_CRASH_AT"] = crash
        if no_exchange:
            e["BITFORGE_NO_RENAME_EXCHANGE"] = "1"
        return e

    def run(self, name, crash=None, no_exchange=False):
        return subprocess.run(self.cmd(name), env=self.env(crash, no_exchange), capture_output=True, text=True,
                              timeout=300)

    def fail(self, what):
        print("FAIL:", what, flush=True)
        self.failures.append(what)

    def check_newest_loadable(self, name, label):
        """The newest step-* with COMPLETE lists only files that exist with the recorded sizes."""
        d = self.ckdir(name)
        if not os.path.isdir(d):
            return
        steps = sorted(n for n in os.listdir(d) if n.startswith("step-") and len(n) == 12 and
                       os.path.exists(os.path.join(d, n, "COMPLETE")))
        if not steps:
            return
        newest = os.path.join(d, steps[-1])
        with open(os.path.join(newest, "COMPLETE")) as f:
            m = json.load(f)
        for fn, e in m["files"].items():
            p = os.path.join(newest, fn)
            if not os.path.exists(p) or os.path.getsize(p) != e["bytes"]:
                self.fail(f"{label}: newest checkpoint {newest} is damaged ({fn})")

    def kill(self, name, crash, no_exchange=False):
        r = self.run(name, crash, no_exchange)
        if r.returncode != -signal.SIGKILL:
            self.fail(f"{name}: BITFORGE_CRASH_AT={crash} did not kill (rc {r.returncode}):\n{r.stderr[-2000:]}")
            return
        self.kills += 1
        self.check_newest_loadable(name, f"after kill at {crash}")

    def resume(self, name, label):
        r = self.run(name)
        self.resumes += 1
        out = r.stdout + r.stderr
        if r.returncode != 0:
            self.fail(f"{name}: resume after {label} failed (rc {r.returncode}):\n{out[-3000:]}")
            return False
        if "damaged" in out or "falling back" in out:
            self.fail(f"{name}: resume after {label} had to skip a damaged checkpoint:\n{out[-3000:]}")
        return True

    def final_bytes(self, name):
        d = os.path.join(self.ckdir(name), f"step-{STEPS:07d}")
        with open(os.path.join(d, "model.safetensors"), "rb") as f:
            model = f.read()
        with open(os.path.join(d, "optimizer.safetensors"), "rb") as f:
            opt = f.read()
        return model, opt

    def check_final(self, name, ref):
        try:
            got = self.final_bytes(name)
        except OSError as e:
            self.fail(f"{name}: no final checkpoint: {e}")
            return
        if got[0] != ref[0]:
            self.fail(f"{name}: final model.safetensors differs from the uninterrupted run")
        if got[1] != ref[1]:
            self.fail(f"{name}: final optimizer.safetensors differs from the uninterrupted run")
        left = [n for n in os.listdir(self.ckdir(name)) if ".tmp-" in n or ".del-" in n or ".old-" in n]
        if left:
            self.fail(f"{name}: orphaned temporaries {left}")


def main():
    if not os.path.exists(BIN):
        print(f"SKIP: {BIN} not built")
        return 0
    work = tempfile.mkdtemp(prefix="bitforge_crash_")
    t0 = time.time()
    R = Runner(work)
    r = R.run("ref")
    if r.returncode != 0:
        print(r.stdout[-3000:], r.stderr[-3000:])
        return 1
    ref = R.final_bytes("ref")

    # 1. One kill per run at a point of the first pass, then one resume.
    single = ["train:after-step:1", "train:after-step:3", "train:after-step:7", "checkpoint:begin:1",
              "checkpoint:after-model:2", "checkpoint:before-complete:3", "checkpoint:before-publish:2",
              "checkpoint:before-prune:3", "checkpoint:after-delete-rename:1", "checkpoint:mid-delete:2",
              "checkpoint:after-prune-one:2", "checkpoint:before-publish:6", "train:after-step:11",
              "checkpoint:after-model:6"]
    for i, point in enumerate(single):
        name = f"k{i:02d}"
        R.kill(name, point)
        if R.resume(name, point):
            R.check_final(name, ref)

    # 2. Re-save of a finished run (the scenario), atomic swap and the rename-aside fallback.
    resave = [("checkpoint:begin:1", False), ("checkpoint:before-publish:1", False),
              ("checkpoint:after-exchange:1", False), ("checkpoint:mid-delete:1", False),
              ("checkpoint:after-aside:1", True), ("checkpoint:after-publish:1", True),
              ("checkpoint:after-delete-rename:1", True)]
    for i, (point, noex) in enumerate(resave):
        name = f"r{i:02d}"
        shutil.copytree(os.path.join(work, "runs", "ref"), os.path.join(work, "runs", name))
        R.kill(name, point, noex)
        if R.resume(name, f"re-save kill at {point}"):
            R.check_final(name, ref)

    # 3. Several kills in one run, each resume killed again at the next point.
    name = "chain"
    for point in ["checkpoint:after-model:1", "train:after-step:2", "checkpoint:before-publish:1",
                  "checkpoint:mid-delete:1"]:
        R.kill(name, point)  # each run after the first resumes, then dies at the next point
    if R.resume(name, "chain"):
        R.check_final(name, ref)

    # 4. SIGKILL from outside at random moments until the run completes.
    rng = random.Random(21)
    name = "random"
    for attempt in range(12):
        p = subprocess.Popen(R.cmd(name), env=R.env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.8, 2.5))
        if p.poll() is not None:
            break
        p.send_signal(signal.SIGKILL)
        p.wait()
        R.kills += 1
        R.check_newest_loadable(name, f"random kill {attempt}")
    if R.resume(name, "random kills"):
        R.check_final(name, ref)

    print(f"crash-safety: {R.kills} kills, {R.resumes} resumes, {len(R.failures)} failures, "
          f"{time.time() - t0:.0f} s; final weights and optimizer state bit-identical: {not R.failures}")
    if not R.failures:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if R.failures else 0


if __name__ == "__main__":
    sys.exit(main())
