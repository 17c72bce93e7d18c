#!/usr/bin/env python3
"""Fails when a lower layer includes a higher one, so bitforge's layering cannot drift back.

Layers, bottom to top (README "Layout"):  kernels, data -> config -> export -> trainer, runtime -> pipeline -> cli.
A folder may include its own headers and those of the layers below it; trainer and runtime are siblings (neither
includes the other); kernels and data are siblings at the bottom. bench/ and tests/ may include anything.

  check_layering.py [SOURCE_DIR]     check the tree (default: the repository this script lives in)
  check_layering.py --self-test      prove the check fails on a violating include and passes on a clean tree
"""
import os
import re
import sys
import tempfile

ALLOWED = {
    "kernels": {"kernels"},
    "data": {"data"},
    "config": {"config", "data", "kernels"},
    "export": {"export", "config", "data", "kernels"},
    "trainer": {"trainer", "export", "config", "data", "kernels"},
    "runtime": {"runtime", "export", "config", "data", "kernels"},
    "pipeline": {"pipeline", "runtime", "trainer", "export", "config", "data", "kernels"},
    "cli": {"cli", "pipeline", "runtime", "trainer", "export", "config", "data", "kernels"},
}
INCLUDE = re.compile(r'^\s*#\s*include\s*"([A-Za-z0-9_]+)/')
SOURCE_EXT = (".h", ".hpp", ".cpp", ".cc", ".cu", ".cuh")


def violations(root):
    found = []
    for layer, allowed in ALLOWED.items():
        top = os.path.join(root, layer)
        for dirpath, _, files in os.walk(top):
            for name in sorted(files):
                if not name.endswith(SOURCE_EXT):
                    continue
                path = os.path.join(dirpath, name)
                with open(path, encoding="utf-8", errors="replace") as f:
                    for lineno, line in enumerate(f, 1):
                        m = INCLUDE.match(line)
                        if m and m.group(1) in ALLOWED and m.group(1) not in allowed:
                            found.append(f"{os.path.relpath(path, root)}:{lineno}: {layer}/ includes "
                                         f"{m.group(1)}/ (a {layer}/ file may include only "
                                         f"{', '.join(sorted(allowed))})")
    return found


def self_test():
    with tempfile.TemporaryDirectory() as d:
        os.makedirs(os.path.join(d, "export"))
        os.makedirs(os.path.join(d, "trainer"))
        with open(os.path.join(d, "trainer", "model.h"), "w") as f:
            f.write('#include "export/safetensors.h"\n#include "trainer/bitlinear.h"\n')
        if violations(d):
            print("self-test: a clean tree was reported", file=sys.stderr)
            return 1
        with open(os.path.join(d, "export", "writer.cpp"), "w") as f:
            f.write('#include <vector>\n  #include "trainer/model.h"\n')
        v = violations(d)
        if len(v) != 1 or "export/writer.cpp:2" not in v[0]:
            print(f"self-test: expected one violation at export/writer.cpp:2, got {v}", file=sys.stderr)
            return 1
    print("self-test: ok")
    return 0


def main(argv):
    if len(argv) > 1 and argv[1] == "--self-test":
        return self_test()
    root = argv[1] if len(argv) > 1 else os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    v = violations(root)
    for line in v:
        print(line, file=sys.stderr)
    if v:
        print(f"{len(v)} include(s) point up the layers", file=sys.stderr)
        return 1
    print("layering: every include points down (" + " -> ".join(
        ["kernels, data", "config", "export", "trainer, runtime", "pipeline", "cli"]) + ")")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
