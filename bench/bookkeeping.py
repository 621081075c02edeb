"""Scale of the bookkeeping: planning 1k-100k runs, ingesting and reporting 1k-10k runs.

No training here: the runs are synthetic, the code measured is kdgrid's own.

1. Planning: ``kdgrid.plan.expand`` on a Study whose grid gives 1,000 / 10,000 / 100,000 runs (one task,
   10 seeds, 100 / 1,000 / 10,000 cells of three factors that never collapse); also ``plan_study`` (expand
   + the per-run shape checks that ``kdgrid plan``/``validate`` do) at 1k and 10k.
2. Ingestion into a fresh DuckDB store through the store's own API: ``Store.register_study`` for the
   planned runs, then results of 100 metric rows each (per-epoch loss terms, dev metrics, mapping weights,
   final metrics, efficiency), with ``Store.ingest_results`` (batches of ``--batch`` results) at 1k and
   10k runs (10k = 1,000,000 metric rows). The per-run path the coordinator uses (``Store.ingest_result``,
   one transaction per run) is timed on ``--per-run-sample`` runs, alternating with the batched path on
   the same number of runs, and extrapolated.
3. Reporting on those stores: ``kdgrid.store.queries.tidy_results`` and the whole input of ``kdgrid report``
   (``kdgrid.report.source.from_store``: tidy table, teacher scores, mapping weights), then
   ``kdgrid.analyze.analyze_table`` (descriptives, paired tests, ANOVA, sensitivity, power).

Seconds are printed (single-threaded Python/DuckDB work; on the shared machine expect +-30%), with the
growth exponent b of time ~ n^b between sizes (1.0 = linear).

    python bench/bookkeeping.py                  # ~2 min
    python bench/bookkeeping.py --skip-100k      # planning up to 10k only
    python bench/bookkeeping.py --report-only    # stores of 1k/10k runs and the report, with analyze_table per part
"""

from __future__ import annotations

import argparse
import math
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402

SIZES = {1_000: (10, 10, 1), 10_000: (10, 10, 10), 100_000: (25, 20, 20)}  # cells = a x b x c, x 10 seeds


def big_study(n_runs: int, tasks: tuple[str, ...] = ("sst2",)) -> Any:
    from kdgrid.study.schema import Study

    a, b, c = SIZES[n_runs] if len(tasks) == 1 else SIZES[n_runs // len(tasks)]
    return Study.model_validate({
        "name": f"bench-{n_runs}", "tasks": list(tasks), "seeds": 10, "plan_limit": 1_000_000,
        "teacher": {"model": "minilm-l6"},
        "student": {"layers": 2},
        "objective": {"prediction": {"beta": 1.0}, "intermediate": {"attention": "kl", "hidden": "seq", "alpha": 0.5}},
        "grid": {
            "objective.prediction.temperature": [round(1.0 + 0.25 * i, 2) for i in range(a)],
            "train.lr": [round(1e-5 * (i + 1), 8) for i in range(b)],
            "objective.intermediate.weight": [round(0.5 + 0.1 * i, 2) for i in range(c)],
        },
    })


def timed(fn: Any) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def exponent(n1: int, t1: float, n2: int, t2: float) -> float:
    return math.log(t2 / t1) / math.log(n2 / n1) if t1 > 0 and t2 > 0 else float("nan")


def fake_result(run: Any, rng: random.Random) -> dict[str, Any]:
    """100 metric rows, shaped like a real joint run's (3 epochs, learnable 2x6 mapping)."""
    task = run.task
    quality = 0.8 + 0.02 * rng.gauss(0, 1)
    rows: list[dict[str, Any]] = []
    for epoch in (1, 2, 3):
        base = {"stage": "joint", "epoch": epoch, "step": 100 * epoch}
        rows += [{**base, "split": "train", "name": n, "value": rng.random()}
                 for n in ("loss", "loss.soft", "loss.att", "loss.hid", "loss.hard")]
        rows += [{**base, "split": "dev", "name": n, "value": quality} for n in ("accuracy", "mcc", "f1")]
        rows += [{**base, "split": "mapping", "name": f"s{m}.t{t}", "value": rng.random()} for m in (1, 2) for t in range(1, 7)]
        rows += [{**base, "split": "train", "name": f"curve.{i}", "value": rng.random()} for i in range(3)]
    final = {"stage": "final"}
    rows += [{**final, "split": "dev", "name": n, "value": quality + 0.01 * rng.gauss(0, 1)}
             for n in ("accuracy", "mcc", "f1", "pearson", "spearman")]
    rows += [{**final, "split": "teacher", "name": n, "value": 0.9} for n in ("accuracy", "mcc", "f1", "pearson")]
    rows += [{**final, "split": "efficiency", "name": n, "value": rng.random() * 100}
             for n in ("params", "teacher_params", "train_time_s", "train_examples", "train_ex_per_s",
                       "latency_ms", "throughput_ex_s", "bench_batch_size", "bench_seq_len", "peak_memory_mb")]
    rows += [{**final, "split": "dev", "name": f"extra.{i}", "value": rng.random()} for i in range(100 - len(rows))]
    assert len(rows) == 100, len(rows)
    return {
        "run_id": run.run_id, "task": task, "seed": run.seed, "config": run.config_data(), "status": "done", "error": None,
        "started": "2026-01-01 00:00:00", "finished": "2026-01-01 00:01:00", "duration_s": 60.0, "host": "bench",
        "device": "cpu", "versions": {"kdgrid": "bench"}, "metrics": rows,
        "teacher": {"key": f"{task}-bench", "task": task, "model": "minilm-l6", "seed": 0, "path": "/nowhere",
                    "metrics": {"accuracy": 0.9}, "majority": 0.5, "flagged": False},
    }


def ingest_store(path: Path, runs: list[Any], batch: int) -> tuple[float, float]:
    """register_study + batched ingestion of every run; returns (register seconds, ingest seconds)."""
    from kdgrid.store.db import open_store

    rng = random.Random(0)
    results = [fake_result(r, rng) for r in runs]
    with open_store(path) as store:
        reg, _ = timed(lambda: store.register_study(f"bench-{len(runs)}", "bench.yaml", STUDY_TEXT, "0" * 64, runs))
        t0 = time.perf_counter()
        for i in range(0, len(results), batch):
            store.ingest_results(results[i:i + batch])
        ing = time.perf_counter() - t0
    return reg, ing


STUDY_TEXT = "name: bench\ngrid:\n  objective.prediction.temperature: [1.0]\n  train.lr: [1e-5]\n  objective.intermediate.weight: [0.5]\n"


def report(path: Path, study: str) -> tuple[float, float, float, int]:
    from kdgrid.analyze import analyze_table
    from kdgrid.report.source import from_store
    from kdgrid.store.db import open_store
    from kdgrid.store.queries import tidy_results
    from kdgrid.tasks import TASKS

    with open_store(path, read_only=True) as store:
        t_tidy, table = timed(lambda: tidy_results(store, study))
    t_src, src = timed(lambda: from_store(path, study))
    factors = src.factors
    base = {f: str(src.table[f].iloc[0]) for f in factors}
    t_an, _ = timed(lambda: analyze_table(
        src.table, metric="auto", factors=factors, baseline=base, correction="holm", anova_type=2,
        teacher_scores=src.teacher, train_sizes={n: s.train_size for n, s in TASKS.items()}))
    return t_tidy, t_src, t_an, len(table)


def report_parts(path: Path, study: str) -> dict[str, float]:
    """Seconds of each part of ``analyze_table`` on one store, called one by one as ``_analyze`` calls them
    (same arguments as :func:`report`); the sum is about the whole call."""
    import warnings

    from kdgrid.analyze.anova import _anova
    from kdgrid.analyze.describe import _describe
    from kdgrid.analyze.efficiency import efficiency_table
    from kdgrid.analyze.paired import PAIRED_COLUMNS, _paired, run_keys
    from kdgrid.analyze.pooled import friedman_ranks, stratified_tests
    from kdgrid.analyze.power import power_plan, power_table
    from kdgrid.analyze.sensitivity import _sensitivity, sensitivity_summary
    from kdgrid.analyze.tidy import prepare
    from kdgrid.report.source import from_store
    from kdgrid.tasks import TASKS

    src = from_store(path, study)
    df, factors = src.table, src.factors
    base = {f: str(df[f].iloc[0]) for f in factors}
    sizes = {n: s.train_size for n, s in TASKS.items()}
    out: dict[str, float] = {}

    def part(name: str, fn: Any) -> Any:
        t, res = timed(fn)
        out[name] = out.get(name, 0.0) + t
        return res

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prep = part("prepare", lambda: prepare(df, metric="auto", factors=factors))
        part("describe", lambda: _describe(prep))
        keys = part("paired tests", lambda: run_keys(prep, df))
        full, _ = part("paired tests", lambda: _paired(prep, baseline=base, correction="holm", internal=True, keys=keys))
        diffs = {(str(t), str(c)): d for t, c, d in zip(full["task"], full["condition"], full["_diffs"])}
        part("stratified", lambda: stratified_tests(full, diffs, correction="holm", alpha=0.05))
        part("friedman + nemenyi", lambda: friedman_ranks(prep, keys, alpha=0.05))
        part("anova + diagnostics", lambda: _anova(prep, typ=2))
        sens, _ = part("sensitivity", lambda: _sensitivity(prep, src.teacher, sizes))
        part("sensitivity", lambda: sensitivity_summary(sens))
        own = full[full["_dup_of"].isna()][PAIRED_COLUMNS]
        part("power", lambda: power_table(own, target_dz=0.5, alpha=0.05, correction="holm"))
        part("power", lambda: power_plan(full[PAIRED_COLUMNS], alpha=0.05, correction="holm"))
        part("efficiency", lambda: efficiency_table(df, factors=prep.factors, baseline=base))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--skip-100k", action="store_true", help="plan 1k and 10k runs only")
    ap.add_argument("--batch", type=int, default=500, help="results per ingest_results call (default 500)")
    ap.add_argument("--per-run-sample", type=int, default=300, help="runs ingested one by one (per-run path)")
    ap.add_argument("--report-only", action="store_true",
                    help="skip planning 100k and the per-run ingestion comparison: stores of 1k and 10k runs, then "
                         "the report figures and the seconds of each part of analyze_table")
    args = ap.parse_args()
    if args.report_only:
        args.skip_100k = True

    from kdgrid.plan import expand, plan_study
    from kdgrid.store.db import open_store

    C.header("bookkeeping: planning, ingestion and reporting at scale (seconds; synthetic runs)", None,
             batch=args.batch, per_run_sample=args.per_run_sample)
    # ---- 1. planning
    plan_t: dict[int, float] = {}
    planned: dict[int, list[Any]] = {}
    for n in (1_000, 10_000, 100_000):
        if n == 100_000 and args.skip_100k:
            continue
        study = big_study(n)
        plan_t[n], runs = timed(lambda: expand(study))
        assert len(runs) == n, len(runs)
        if n <= 10_000:
            planned[n] = runs
        print(f"   expand {n:>7,} runs: {plan_t[n]:6.2f} s ({1e6 * plan_t[n] / n:.0f} us/run)", flush=True)
    full_t = {}
    for n in (1_000, 10_000):
        full_t[n], _ = timed(lambda: plan_study(big_study(n)))
        print(f"   plan_study {n:>7,} runs (expand + shape checks): {full_t[n]:6.2f} s", flush=True)

    tmp = Path(tempfile.mkdtemp(prefix="kdgrid-bench-store-"))
    try:
        # ---- 2. ingestion: per-run path vs batched, alternating on the same number of runs
        sample = planned[1_000][:args.per_run_sample]
        rng = random.Random(1)
        results = [fake_result(r, rng) for r in sample]

        def per_run() -> float:
            p = tmp / f"per-run-{time.monotonic_ns()}.duckdb"
            with open_store(p) as store:
                t0 = time.perf_counter()
                for res in results:
                    store.ingest_result(res)
                return time.perf_counter() - t0

        def batched() -> float:
            p = tmp / f"batched-{time.monotonic_ns()}.duckdb"
            with open_store(p) as store:
                t0 = time.perf_counter()
                store.ingest_results(results)
                return time.perf_counter() - t0

        per_run_s = batched_s = float("nan")
        if not args.report_only:
            res = C.alternate({"ingest_result x N": per_run, "ingest_results(N)": batched}, repeats=2, verbose=False)
            per_run_s, batched_s = C.median(res["ingest_result x N"]), C.median(res["ingest_results(N)"])
            print(f"   {len(sample)} runs x 100 rows: one ingest_result per run {per_run_s:.2f} s "
                  f"({1000 * per_run_s / len(sample):.1f} ms/run), one ingest_results call {batched_s:.2f} s",
                  flush=True)

        stores: dict[int, Path] = {}
        ingest_t: dict[int, tuple[float, float]] = {}
        for n in (1_000, 10_000):
            stores[n] = tmp / f"store-{n}.duckdb"
            ingest_t[n] = ingest_store(stores[n], planned[n], args.batch)
            print(f"   store of {n:>6,} runs / {100 * n:>9,} metric rows: register_study {ingest_t[n][0]:.2f} s, "
                  f"ingest_results {ingest_t[n][1]:.2f} s", flush=True)

        # ---- 3. reporting (the libraries the analysis imports on first use are imported before the clock)
        t_imp, _ = timed(lambda: [__import__(m) for m in ("statsmodels.api", "statsmodels.formula.api", "patsy",
                                                          "scikit_posthocs", "scipy.stats")])
        print(f"   imports before timing the reports (statsmodels, patsy, scikit-posthocs, scipy.stats): {t_imp:.2f} s")
        rep: dict[int, tuple[float, float, float, int]] = {}
        for n in (1_000, 10_000):
            rep[n] = report(stores[n], f"bench-{n}")
            print(f"   report on {n:>6,} runs: tidy_results {rep[n][0]:.2f} s ({rep[n][3]} rows), "
                  f"report input (from_store) {rep[n][1]:.2f} s, analyze_table {rep[n][2]:.2f} s", flush=True)
        parts = report_parts(stores[10_000], "bench-10000")
        print("   analyze_table on 10,000 runs, part by part: "
              + ", ".join(f"{k} {v:.2f} s" for k, v in parts.items()) + f" (sum {sum(parts.values()):.2f} s)",
              flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print("\nRESULT seconds (growth exponent b: time ~ n^b)")
    ns = sorted(plan_t)
    print("   planning (expand):      " + ", ".join(f"{n:,}: {plan_t[n]:.2f} s" for n in ns)
          + "; b = " + ", ".join(f"{exponent(a, plan_t[a], b, plan_t[b]):.2f}" for a, b in zip(ns, ns[1:])))
    print(f"   planning (plan_study):  1,000: {full_t[1_000]:.2f} s, 10,000: {full_t[10_000]:.2f} s; "
          f"b = {exponent(1_000, full_t[1_000], 10_000, full_t[10_000]):.2f}")
    print(f"   ingestion, batched:     1,000 runs: {sum(ingest_t[1_000]):.2f} s, 10,000 runs / 1,000,000 rows: "
          f"{sum(ingest_t[10_000]):.2f} s (register_study + ingest_results); "
          f"b = {exponent(1_000, sum(ingest_t[1_000]), 10_000, sum(ingest_t[10_000])):.2f}")
    if not args.report_only:
        print(f"   ingestion, per run:     {1000 * per_run_s / len(sample):.1f} ms/run -> 10,000 runs ~ "
              f"{10_000 * per_run_s / len(sample):.0f} s; batched is x{per_run_s / batched_s:.1f} faster "
              "(alternating, same runs)")
    t1 = rep[1_000][1] + rep[1_000][2]
    t10 = rep[10_000][1] + rep[10_000][2]
    print(f"   report (from_store + analyze_table): 1,000 runs: {t1:.2f} s, 10,000 runs: {t10:.2f} s; "
          f"b = {exponent(1_000, t1, 10_000, t10):.2f}")


if __name__ == "__main__":
    main()
