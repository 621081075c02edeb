"""Fast CLI: start-up of the torch-free commands against ``python -c "import torch"``.

Commands (the installed ``kdgrid`` console script, as a user types them):
``kdgrid --help``, ``validate studies/demo.yaml``, ``plan studies/demo.yaml``, ``status`` and
``report --no-plots`` on a small store (the demo study with synthetic results, made here through
the store's own API). Each is run ``--rounds`` times, all commands alternating round by round with
the ``import torch`` reference; the figure is each command's median wall time divided by the
reference's median (< 1: starts faster than torch alone imports).

Also checked, in a separate run of each command: which heavy modules it imported (torch,
transformers, scipy.stats, statsmodels, matplotlib, pandas, duckdb); torch and transformers must
not be among them. ``python -X importtime -m kdgrid ...`` shows where the rest goes.

    python bench/cli_startup.py              # ~1 min
    python bench/cli_startup.py --rounds 9
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402

HEAVY = ("torch", "transformers", "scipy.stats", "statsmodels", "matplotlib", "pandas", "duckdb")

PROBE = """
import sys, runpy
sys.argv = ["kdgrid", *{args!r}]
try:
    from kdgrid.cli import main
    main()
except SystemExit:
    pass
finally:
    sys.stderr.write("\\nMODULES " + ",".join(m for m in {heavy!r} if m in sys.modules) + "\\n")
"""


def make_store(path: Path, study_file: Path) -> None:
    """The demo study's plan, with synthetic finished results (3 seeds x 2 cells)."""
    from kdgrid.plan import plan_study
    from kdgrid.store.db import open_store
    from kdgrid.study import load_study

    loaded = load_study(study_file)
    runs = plan_study(loaded.study)
    rng = random.Random(0)
    with open_store(path) as store:
        store.register_study(loaded.study.name, str(study_file), loaded.text, loaded.sha256, runs)
        store.ingest_results([{
            "run_id": r.run_id, "task": r.task, "seed": r.seed, "config": r.config_data(), "status": "done",
            "metrics": [{"stage": "final", "split": "dev", "name": "accuracy", "value": 0.8 + 0.02 * rng.random()},
                        {"stage": "final", "split": "teacher", "name": "accuracy", "value": 0.9}],
        } for r in runs])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--study", default=str(C.REPO / "studies" / "demo.yaml"))
    args = ap.parse_args()

    C.header("CLI start-up vs python -c 'import torch' (wall time of a fresh process)", None, rounds=args.rounds)
    exe = shutil.which("kdgrid", path=str(Path(sys.executable).parent)) or shutil.which("kdgrid")
    if exe is None:
        raise SystemExit("the kdgrid console script is not installed (pip install -e .)")
    tmp = Path(tempfile.mkdtemp(prefix="kdgrid-bench-cli-"))
    try:
        db = tmp / "store.duckdb"
        make_store(db, Path(args.study))
        env = {**os.environ, "KDGRID_DATA_DIR": C.data_dir(), "HF_HUB_OFFLINE": "1"}
        commands = {
            "import torch": [sys.executable, "-c", "import torch"],
            "kdgrid --help": [exe, "--help"],
            "kdgrid validate": [exe, "validate", args.study],
            "kdgrid plan": [exe, "plan", args.study, "--db", str(db)],
            "kdgrid status": [exe, "status", "--db", str(db)],
            "kdgrid report": [exe, "report", "--db", str(db), "--no-plots", "--format", "md", "--out", str(tmp / "rep")],
        }
        # Imports: one probing run per command.
        imported: dict[str, str] = {}
        for name, cmd in commands.items():
            if name == "import torch":
                continue
            probe = PROBE.format(args=cmd[1:], heavy=HEAVY)
            out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, cwd=tmp)
            line = [x for x in out.stderr.splitlines() if x.startswith("MODULES ")]
            imported[name] = line[-1][len("MODULES "):] if line else "?"
        # Timing: every command once per round, the order rotating.
        times: dict[str, list[float]] = {n: [] for n in commands}
        names = list(commands)
        for r in range(args.rounds + 1):
            order = names[r % len(names):] + names[:r % len(names)]
            for name in order:
                t0 = time.perf_counter()
                proc = subprocess.run(commands[name], capture_output=True, env=env, cwd=tmp)
                dt = time.perf_counter() - t0
                if proc.returncode != 0:
                    raise SystemExit(f"{name} failed ({proc.returncode}): {proc.stderr.decode()[-500:]}")
                if r:
                    times[name].append(dt)
        ref = C.median(times["import torch"])
        print(f"\nRESULT median wall time / median of python -c 'import torch' ({ref:.2f} s); heavy modules imported")
        ok = True
        for name in names:
            if name == "import torch":
                continue
            med = C.median(times[name])
            mods = imported[name] or "-"
            bad = any(m in mods.split(",") for m in ("torch", "transformers"))
            ok &= not bad
            print(f"   {name:16s} {med:5.2f} s  x{med / ref:.2f}  imports: {mods}" + ("  <-- imports torch!" if bad else ""))
        print(f"   target (no torch/transformers import in these commands): {'met' if ok else 'NOT met'}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
