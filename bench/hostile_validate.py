"""Hostile study files: how long ``kdgrid validate`` takes to refuse each, against ``studies/demo.yaml``.

The files are the issue's cases (a duplicate ``grid:`` block, a YAML alias bomb of 10^10 values, 5,000
nested lists, ``seeds: 100000000``); each must be answered with one ``Error:`` line and exit code 1
within 2 seconds. Commands alternate round by round (demo, then each hostile file); the figure is each
file's median wall time and its ratio to the demo's (the CLI's own start-up is most of both).

    python bench/hostile_validate.py            # ~30 s
    python bench/hostile_validate.py --rounds 7
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEAD = "name: hostile\ntasks: [cola]\n"


def hostile_files(folder: Path) -> dict[str, Path]:
    bomb = [HEAD.rstrip(), "a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    bomb += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 10)]
    texts = {
        "duplicate-keys": HEAD + "grid:\n  train.lr: [1.0e-4]\nseeds: 3\ngrid:\n  data.fraction: [0.5]\n",
        "alias-bomb": "\n".join(bomb) + "\n",
        "deep-nesting": HEAD + "grid:\n  x: " + "[" * 5000 + "]" * 5000 + "\n",
        "seeds-1e8": HEAD + "seeds: 100000000\n",
    }
    out = {}
    for name, text in texts.items():
        out[name] = folder / f"{name}.yaml"
        out[name].write_text(text)
    return out


def validate(path: Path, cwd: Path) -> tuple[float, int, str]:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "kdgrid", "validate", str(path)], cwd=cwd, capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    return time.perf_counter() - t0, proc.returncode, (proc.stderr or proc.stdout).strip()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        files = {"demo (valid)": ROOT / "studies" / "demo.yaml", **hostile_files(folder)}
        times: dict[str, list[float]] = {k: [] for k in files}
        answers: dict[str, tuple[int, str]] = {}
        for _ in range(args.rounds):
            for name, path in files.items():
                wall, rc, text = validate(path, folder)
                times[name].append(wall)
                answers[name] = (rc, text)
        demo = statistics.median(times["demo (valid)"])
        print(f"kdgrid validate, median of {args.rounds} rounds (load average {os.getloadavg()[0]:.1f})")
        for name in files:
            med = statistics.median(times[name])
            rc, text = answers[name]
            lines = len(text.splitlines())
            print(f"  {name:14s} {med:5.2f} s ({med / demo:4.2f}x demo), exit {rc}, {lines} line(s): {text[:160]}")


if __name__ == "__main__":
    main()
