"""How long `quantport validate` takes as a whole process, against the model forwards it runs.

    python benchmarks/validate_speed.py ARTIFACT [--against SRC] [--windows 8] [--ctx 512]

Runs ``quantport validate ARTIFACT --json`` in a fresh process, times it from outside (start
of the interpreter to exit), and reads the per-phase seconds the report carries
(``timings``: ``forward_reference``, ``forward_runtime``, ``forward_weights`` are the forward
passes; ``load``, ``load_weights``, ``tokenize``, ``metrics`` the rest). Prints the process's
wall time, the summed forwards and their ratio (the target is at most 1.3).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("artifact")
    ap.add_argument("--against")
    ap.add_argument("--windows", type=int, default=8)
    ap.add_argument("--ctx", type=int, default=512)
    a = ap.parse_args()
    exe = shutil.which("quantport") or str(Path(sys.executable).with_name("quantport"))
    cmd = [exe, "validate", a.artifact, "--json", "--windows", str(a.windows), "--ctx",
           str(a.ctx)]
    if a.against:
        cmd += ["--against", a.against]
    t = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if res.returncode not in (0, 3, 4):
        sys.exit(f"validate failed ({res.returncode}):\n{res.stderr[-2000:]}")
    d = json.loads(res.stdout)
    tm = d["timings"]
    forwards = sum(v for k, v in tm.items() if k.startswith("forward_"))
    print(f"{a.artifact} ({d['runtime']}), {d['n_windows']} windows x {d['window']} tokens")
    for k, v in sorted(tm.items(), key=lambda kv: -kv[1]):
        print(f"  {k:<20} {v:8.2f} s")
    print(f"  process wall time    {wall:8.2f} s")
    print(f"  summed forwards      {forwards:8.2f} s")
    print(f"  wall / forwards      {wall / forwards:8.2f}")
    verdict = "passed" if d["passed"] else "; ".join(d["failures"])
    print(f"  checks: {verdict} (exit {res.returncode})")


if __name__ == "__main__":
    main()
