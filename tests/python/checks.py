"""Shared by the Python checks: PASS/FAIL lines and the exit status (not a test itself: no test_ prefix)."""
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
