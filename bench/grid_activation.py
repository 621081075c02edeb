"""A slice of the ablation-cpu grid end to end with the stored teacher activations on and off (issue 18 item 2).

The slice is ``studies/ablation-cpu.yaml`` with fewer factors, tasks and seeds (flags below; default: 4 cells
x 2 seeds = 8 runs per variant): MiniLM-L6 -> 4 layers, two-stage training (2 intermediate + 3 prediction
epochs, batch 16, lr 3e-4), attention MSE and KL + hidden Seq at the baseline's alpha 0.5, uniform and learnable
mappings, STS-B at 200 examples, dev scored on 500 rows (the full ablation-cpu grid also has alpha 0 and 1,
STS-B at 100, CoLA at 800 and 5 seeds: ``--tasks cola,stsb --alphas 0,0.5,1 --stsb-examples 100,200 --seeds 5``
gives all its cells and seeds, hours here). It runs through kdgrid's own execution, ``python -m kdgrid run
<study> --workers W`` in a fresh process, each variant with its own ``KDGRID_HOME`` and store:

* ``on``: as kdgrid runs it (``train.teacher_cache: true``; activations stored once per example and reused by
  every cell and epoch of the same seed and task that reads those layers);
* ``off``: ``KDGRID_ACTIVATION_CACHE_GB=0``: the teacher runs every step of the layer objectives, as before.

The teachers are fine-tuned once first (a one-run-per-task prep grid, its own timing printed) and their
``cache/teachers`` and ``cache/tokenized`` are copied into both homes, so neither variant pays for them; the
stage-1 checkpoints, logit tables and activations are built inside each variant's own grid. Rounds take one
seed each and alternate the order (round 1: on, off; round 2: off, on; ...): the same grid grows by one seed in
each home per round (finished runs are never redone). The figure is the sum of the rounds' wall times per
variant and RATIO off / on (the speed-up; target >= 1.7 for the ablation-cpu grid), per round too, and with
the prep added to both (a grid that fine-tunes its own teachers). It also checks that every run is done, that
the on runs read stored activations and the off runs did not (metric ``cache/teacher_activations``), and prints
how far the final dev metrics of the same runs moved (fp16 storage rounding).

    python bench/grid_activation.py                  # default slice: 16 runs + prep, ~7 min on a quiet 2-core CPU
    python bench/grid_activation.py --tasks stsb --seeds 2 --stsb-examples 16 --eval-examples 16 \\
        --teacher-examples 32 --mappings uniform --attention mse --workers 1      # smoke, ~3 min
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402

VARIANTS = ("on", "off")


def slice_study(base: dict[str, Any], args: argparse.Namespace, seeds: list[int], name: str) -> dict[str, Any]:
    """The ablation-cpu study cut down to the flags' factors, tasks, sizes and seeds."""
    study = json.loads(json.dumps(base))  # deep copy of plain YAML data
    tasks = args.tasks.split(",")
    sizes = {
        "cola": [int(x) for x in args.cola_examples.split(",")],
        "stsb": [int(x) for x in args.stsb_examples.split(",")],
    }
    study["name"] = name
    study["description"] = "bench/grid_activation.py: a slice of ablation-cpu"
    study["tasks"] = tasks
    study["seeds"] = seeds
    study["teacher"]["finetune"].update(max_train_examples=args.teacher_examples, epochs=args.teacher_epochs)
    study["data"]["max_eval_examples"] = args.eval_examples
    every = sorted({n for t in tasks for n in sizes[t]})
    study["grid"] = {
        "objective.intermediate.attention": args.attention.split(","),
        "objective.mapping.kind": args.mappings.split(","),
        "objective.intermediate.alpha": [float(a) for a in args.alphas.split(",")],
        "data.max_train_examples": every,
    }
    study["exclude"] = [{"task": t, "data.max_train_examples": n} for t in tasks for n in every if n not in sizes[t]]
    if not study["exclude"]:
        del study["exclude"]
    study.pop("analysis", None)  # the baseline cell may not be in the slice; nothing is analysed here
    return study


def kdgrid_run(study: Path, home: Path, workers: int, cache_off: bool, log: Path) -> float:
    env = {k: v for k, v in os.environ.items() if k != "KDGRID_ACTIVATION_CACHE_GB"}
    env.update(KDGRID_HOME=str(home), KDGRID_DB=str(home / "kdgrid.duckdb"), PYTHONPATH=str(C.REPO))
    if cache_off:
        env["KDGRID_ACTIVATION_CACHE_GB"] = "0"
    cmd = [sys.executable, "-m", "kdgrid", "run", str(study), "--workers", str(workers)]
    t0 = time.perf_counter()
    with log.open("a") as out:
        rc = subprocess.run(cmd, env=env, cwd=C.REPO, stdout=out, stderr=subprocess.STDOUT).returncode
    seconds = time.perf_counter() - t0
    if rc != 0:
        raise SystemExit(f"kdgrid run failed (exit {rc}) in {home}: see {log}")
    return seconds


def store_facts(home: Path) -> tuple[dict[str, str], dict[str, float], dict[str, float]]:
    """Run status, the cache/teacher_activations flag (any stage) and the final dev metric, per run id."""
    import duckdb

    con = duckdb.connect(str(home / "kdgrid.duckdb"), read_only=True)
    try:
        status = dict(con.execute("SELECT run_id, status FROM runs").fetchall())
        cached = dict(
            con.execute(
                "SELECT run_id, max(value) FROM metrics WHERE split = 'cache' AND "
                "name = 'teacher_activations' GROUP BY run_id"
            ).fetchall()
        )
        final = dict(
            con.execute(
                "SELECT run_id, max(value) FROM metrics WHERE stage = 'final' AND split = 'dev' "
                "AND name IN ('mcc', 'pearson') GROUP BY run_id"
            ).fetchall()
        )
    finally:
        con.close()
    return status, cached, final


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--study", default=str(C.REPO / "studies" / "ablation-cpu.yaml"))
    ap.add_argument("--tasks", default="stsb", help="ablation-cpu: cola,stsb")
    ap.add_argument("--seeds", type=int, default=2, help="seeds = rounds (one seed per round, order alternating)")
    ap.add_argument("--attention", default="mse,kl")
    ap.add_argument("--mappings", default="uniform,learnable")
    ap.add_argument("--alphas", default="0.5", help="ablation-cpu: 0,0.5,1 (0 drops the attention loss)")
    ap.add_argument("--cola-examples", default="800")
    ap.add_argument("--stsb-examples", default="200", help="ablation-cpu: 100,200")
    ap.add_argument("--eval-examples", type=int, default=500)
    ap.add_argument("--teacher-examples", type=int, default=500, help="teacher fine-tuning rows (speed only)")
    ap.add_argument("--teacher-epochs", type=int, default=1)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--keep", action="store_true", help="keep the temporary homes (printed)")
    args = ap.parse_args()

    import yaml

    C.header(
        "ablation-cpu slice end to end: stored teacher activations on / off (kdgrid run, CPU)",
        None,
        tasks=args.tasks,
        seeds=args.seeds,
        attention=args.attention,
        mappings=args.mappings,
        alphas=args.alphas,
        cola=args.cola_examples,
        stsb=args.stsb_examples,
        eval=args.eval_examples,
        workers=args.workers,
    )
    C.data_dir()  # fail early without GLUE data
    base = yaml.safe_load(Path(args.study).read_text())
    root = Path(tempfile.mkdtemp(prefix="kdgrid-grid-acts-"))
    log = root / "kdgrid-run.log"
    try:
        # Teachers and tokenised data once, shared by both variants (a prep grid: one run per task).
        prep_home = root / "prep"
        prep_home.mkdir()
        prep = slice_study(base, args, [1000], "grid-activation-prep")
        prep["grid"] = {k: v[:1] for k, v in prep["grid"].items()}
        prep.pop("exclude", None)
        prep["grid"]["data.max_train_examples"] = [16]
        prep_path = root / "prep.yaml"
        prep_path.write_text(yaml.safe_dump(prep, sort_keys=False))
        prep_s = kdgrid_run(prep_path, prep_home, 1, True, log)
        print(
            f"   prep (teachers fine-tuned on {args.teacher_examples} rows, tokenised, one 16-row run per task): "
            f"{prep_s:.1f} s",
            flush=True,
        )
        homes = {v: root / v for v in VARIANTS}
        for home in homes.values():
            for part in ("teachers", "tokenized"):
                shutil.copytree(prep_home / "cache" / part, home / "cache" / part)

        times: dict[str, list[float]] = {v: [] for v in VARIANTS}
        for r in range(args.seeds):
            study_path = root / f"round{r + 1}.yaml"
            study_path.write_text(
                yaml.safe_dump(slice_study(base, args, list(range(r + 1)), "grid-activation"), sort_keys=False)
            )
            order = VARIANTS if r % 2 == 0 else VARIANTS[::-1]
            row = []
            for v in order:
                times[v].append(kdgrid_run(study_path, homes[v], args.workers, v == "off", log))
                row.append(f"{v} {times[v][-1]:.1f} s")
            print(
                f"   round {r + 1} (seed {r}): "
                + ", ".join(row)
                + f", off / on {times['off'][-1] / times['on'][-1]:.2f}",
                flush=True,
            )

        facts = {v: store_facts(homes[v]) for v in VARIANTS}
        runs = sorted(facts["on"][0])
        for v in VARIANTS:
            status, cached, _ = facts[v]
            bad = {k: s for k, s in status.items() if s != "done"}
            if bad or sorted(status) != runs:
                raise SystemExit(f"variant {v}: runs not done or not the same: {bad}")
            flags = {cached.get(k) for k in runs}
            want = 1.0 if v == "on" else 0.0
            if flags != {want}:
                raise SystemExit(f"variant {v}: cache/teacher_activations {sorted(map(str, flags))}, expected {want}")
        moved = [abs(facts["on"][2][k] - facts["off"][2][k]) for k in runs if k in facts["on"][2]]
        size = sum(f.stat().st_size for f in (homes["on"] / "cache" / "teacher_activations").rglob("*") if f.is_file())
        on, off = sum(times["on"]), sum(times["off"])
        per_round = [b / a for a, b in zip(times["on"], times["off"])]
        print(
            f"   {len(runs)} runs per variant, all done; 'on' runs read stored activations ({size / 2**20:.0f} MiB "
            f"on disk), 'off' runs recomputed the teacher; final dev metric |on - off| max "
            f"{max(moved, default=float('nan')):.4f}, median {C.median(moved) if moved else float('nan'):.4f}"
        )
        print(
            f"RESULT grid wall time: on {on:.1f} s, off {off:.1f} s; RATIO off / on {off / on:.2f} "
            f"(rounds {', '.join(f'{x:.2f}' for x in per_round)}; target >= 1.7)"
        )
        print(f"   with the teachers' prep in both ({prep_s:.1f} s): RATIO {(off + prep_s) / (on + prep_s):.2f}")
    finally:
        if args.keep:
            print(f"   kept: {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
