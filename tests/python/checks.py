"""Shared by the Python checks: PASS/FAIL lines and the exit status, the windowed NLL of a transformers model (not a
test itself: no test_ prefix)."""
import sys

failures = []


def check(name, ok, detail=""):
    """Prints PASS/FAIL for `name` (with `detail` on failure) and records failures."""
    print(("PASS " if ok else "FAIL ") + name + (f": {detail}" if detail and not ok else ""))
    if not ok:
        failures.append(name)


def finish():
    """Prints the failure count and exits 1 when any check failed."""
    print(f"{len(failures)} failed")
    sys.exit(1 if failures else 0)


def hf_window_nll(model, ids, window, stride):
    """The Hugging Face perplexity guide's loop, summing NLL over scored tokens (fp32 model, double sums)."""
    import torch

    ids_t = torch.tensor([ids])
    n = len(ids)
    nll, count, prev_end = 0.0, 0, 0
    for begin in range(0, n, stride):
        end = min(begin + window, n)
        trg = end - prev_end
        inp = ids_t[:, begin:end]
        with torch.no_grad():
            logits = model(inp).logits[0].double()
        first = max(1, (end - begin) - trg)
        lp = torch.log_softmax(logits[first - 1:end - begin - 1], -1)
        tgt = inp[0, first:end - begin]
        nll -= lp.gather(1, tgt.unsqueeze(1)).sum().item()
        count += len(tgt)
        prev_end = end
        if end == n:
            break
    return nll / count, count
