"""Grid reuse: a grid's wall time against a naive execution that rebuilds everything per run.

kdgrid computes once and shares: the fine-tuned teacher (one per task and teacher setting), the tokenized
splits, the teacher-logit table, and stage-1 checkpoints (two-stage runs that differ only in stage 2).
A naive runner repeats teacher fine-tuning, tokenisation and stage 1 in every run.

Studies: studies/demo.yaml, and studies/ablation-cpu.yaml when it exists, else bench/studies/
two-stage-reuse.yaml (a two-stage grid whose temperature cells share stage 1). To stay affordable the
sizes are scaled down (teacher: 1 epoch on --teacher-examples rows; students: 1 epoch per stage on
--examples rows, --eval-examples dev rows); the structure (tasks, seeds, factors) is the study's.
Runs execute in this process through ``kdgrid.train.run.run_one`` (what the coordinator calls per run;
the store's bookkeeping has its own benchmark), on CPU.

Two ways to get the naive time (the output says which one it used):

* ``--mode computed`` (default, ~3 min): the shared artefacts are built first and timed on their own,
  exactly as a run builds them (``finetune_teacher`` in a fresh cache, then the run's own tokenisation with
  the teacher's tokenizer); then every run of every study executes for real in one shared cache, with
  each run's duration recorded. naive = sum over runs of (teacher + tokenisation + the run's duration +
  its stage 1 when it reused a checkpoint: the stage-1 cost of a key is the duration of the run that built
  it minus the median of the runs that reused it). Not counted for naive (so naive is underestimated):
  rebuilding teacher-logit rows that another run had filled. A study with more than ``--max-runs`` unique
  runs executes an evenly spaced sample of them and is also extrapolated to all its runs (mean run duration).
* ``--mode direct`` (slow: one teacher fine-tuning per run): the grid in one cache that starts empty, and
  every run again in its own fresh cache (KDGRID_HOME-like isolation: a new cache root per run), both for
  real, interleaved run by run (shared run j, then naive run j) so that load changes hit both.

Both modes first warm the process up (imports, first model load, file reads) so that neither side pays
the process's one-off costs.

    python bench/grid_reuse.py
    python bench/grid_reuse.py --mode direct --studies studies/demo.yaml
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402


def default_studies() -> list[Path]:
    out = [C.REPO / "studies" / "demo.yaml"]
    ablation = C.REPO / "studies" / "ablation-cpu.yaml"
    if ablation.is_file():
        out.append(ablation)
    # Always: the only one whose cells share stage-1 checkpoints (ablation-cpu varies stage-1 settings only).
    out.append(C.REPO / "bench" / "studies" / "two-stage-reuse.yaml")
    return out


def _scale_levels(levels: list[Any], target: int) -> list[Any]:
    top = max(v for v in levels if isinstance(v, int)) if any(isinstance(v, int) for v in levels) else None
    if not top:
        return levels
    return [max(8, round(v * target / top)) if isinstance(v, int) else v for v in levels]


def scaled_runs(path: Path, args: argparse.Namespace) -> tuple[str, list[Any]]:
    """The study's unique runs, with the sizes scaled down (structure unchanged: grid levels of example
    counts are scaled so the largest is ``--examples``/``--teacher-examples``)."""
    from kdgrid.plan import plan_study
    from kdgrid.study import load_study
    from kdgrid.study.schema import Study

    d = load_study(path).study.model_dump(mode="json")
    d["teacher"]["finetune"]["epochs"] = 1
    d["teacher"]["finetune"]["max_train_examples"] = args.teacher_examples
    d["data"]["max_train_examples"] = args.examples
    d["data"]["max_eval_examples"] = args.eval_examples
    d["train"]["epochs"] = {"intermediate": 1, "prediction": 1} if d["train"]["schedule"] == "two_stage" else 1
    d["train"]["device"] = "cpu"
    for key, target in (("data.max_train_examples", args.examples), ("teacher.finetune.max_train_examples", args.teacher_examples)):
        if key in d.get("grid", {}):
            d["grid"][key] = _scale_levels(d["grid"][key], target)
    study = Study.model_validate(d)
    runs = list({r.run_id: r for r in plan_study(study)}.values())
    return study.name, runs


def run(config: Any, workdir: Path) -> tuple[float, dict[str, Any]]:
    from kdgrid.train.run import run_one

    rid = f"r{time.monotonic_ns()}"
    t0 = time.perf_counter()
    result = run_one(config, workdir / "runs" / rid, workdir=workdir)
    return time.perf_counter() - t0, result


def prebuild(cfg: Any, workdir: Path) -> tuple[str, float, float]:
    """Build what every run of a task shares, as run_one builds it: the teacher, then the run's tokenisation."""
    import torch

    from kdgrid.train.data import load_tokenized
    from kdgrid.train.models import finetune_teacher, load_teacher

    cache = workdir / "cache"
    dev = torch.device("cpu")
    t0 = time.perf_counter()
    rec = finetune_teacher(cfg.task, cfg.teacher, cfg.data.dir, cfg.data.max_seq_length, cache, dev)
    t1 = time.perf_counter()
    _, tok = load_teacher(rec, dev)
    for split in ("train", "dev"):
        load_tokenized(cfg.task, split, cfg.data.dir, tok, cfg.data.max_seq_length, cache / "tokenized")
    return rec.key, t1 - t0, time.perf_counter() - t1


def warm_up(tasks: set[str]) -> None:
    """Pay the process's one-off costs before timing anything (imports, first model load, file reads,
    kernels' first call): otherwise whatever runs first, shared grid or prebuild, is charged for them."""
    import torch

    from kdgrid.model_names import resolve_model_path
    from kdgrid.train.data import load_split, tokenize_examples
    from kdgrid.train.models import _model_identity, load_classifier, load_tokenizer

    path = resolve_model_path("minilm-l6")
    _model_identity(path)
    tok = load_tokenizer(path)
    model = load_classifier(path, 2)
    for task in sorted(tasks):
        rows = load_split(task, "train", None)[:64]
        load_split(task, "dev", None)
        ids = tokenize_examples(rows, tok, 64)
        x = torch.as_tensor(ids.ids[: 8 * 8].astype("int64")).view(8, 8)
        model(input_ids=x, attention_mask=torch.ones_like(x)).logits.sum().backward()


def reused_stage1(result: dict[str, Any]) -> bool:
    return any(m.get("split") == "cache" and m.get("name") == "stage1_reused" for m in result.get("metrics", []))


def teacher_key_of(cfg: Any) -> str:
    from kdgrid.train.models import teacher_cache_key

    return teacher_cache_key(cfg.task, cfg.teacher, cfg.data.dir, cfg.data.max_seq_length)[0]


def computed(studies: list[tuple[str, list[Any]]], tmp: Path, max_runs: int) -> dict[str, Any]:
    from kdgrid.train.run import stage1_key

    shared = tmp / "shared"  # one cache for every study, as one store would have
    built: dict[str, float] = {}  # teacher key -> teacher fine-tuning + tokenisation seconds
    out: dict[str, Any] = {}
    for name, all_runs in studies:
        # A big study: an evenly spaced sample of its runs (plan order: task, cell, seed).
        runs = all_runs if len(all_runs) <= max_runs else [all_runs[round(i * (len(all_runs) - 1) / (max_runs - 1))]
                                                           for i in range(max_runs)]
        keys = [teacher_key_of(r.config) for r in runs]
        for r, key in zip(runs, keys):
            if key not in built:
                _, teacher_s, tok_s = prebuild(r.config, shared)
                built[key] = teacher_s + tok_s
                print(f"   {r.task} teacher built once: fine-tuning {teacher_s:.1f} s (its own tokenisation and dev "
                      f"evaluation included), the runs' tokenisation {tok_s:.1f} s", flush=True)
        durations, results = [], []
        for r in runs:
            sec, res = run(r.config, shared)
            durations.append(sec)
            results.append(res)
            print(f"   {name}: {r.task} {r.cell} seed={r.seed}: {sec:.1f} s"
                  + (" (stage 1 reused)" if reused_stage1(res) else ""), flush=True)
        # Stage-1 cost per key: builder's duration minus the median duration of the runs that reused it.
        by_key: dict[str, dict[str, list[float]]] = {}
        for r, sec, res in zip(runs, durations, results):
            if r.config.train.schedule == "two_stage":
                key = stage1_key(r.config, res["teacher"]["key"])
                by_key.setdefault(key, {"built": [], "reused": []})["reused" if reused_stage1(res) else "built"].append(sec)
        stage1_cost = {k: max(0.0, statistics.median(v["built"]) - statistics.median(v["reused"]))
                       for k, v in by_key.items() if v["built"] and v["reused"]}
        n_reused = sum(len(v["reused"]) for v in by_key.values())
        extra_stage1 = sum(stage1_cost.get(k, 0.0) * len(v["reused"]) for k, v in by_key.items())
        prebuilt = sum(built[k] for k in set(keys))
        o = {
            "runs": len(runs), "unique_runs": len(all_runs), "tasks": len(set(keys)),
            "shared": prebuilt + sum(durations), "stage1_reused": n_reused, "stage1_extra": extra_stage1,
            "naive": sum(built[k] for k in keys) + sum(durations) + extra_stage1,
        }
        if len(runs) < len(all_runs):
            # Extrapolated to the whole study: every run pays its task's teacher once more in the naive case.
            all_tasks = {r.task for r in all_runs}
            per_teacher = prebuilt / len(set(keys))
            mean_run = sum(durations) / len(runs)
            o["full_shared"] = len(all_tasks) * per_teacher + len(all_runs) * mean_run
            o["full_naive"] = len(all_runs) * (per_teacher + mean_run) + extra_stage1 * len(all_runs) / len(runs)
        out[name] = o
    return out


def direct(studies: list[tuple[str, list[Any]]], tmp: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for i, (name, runs) in enumerate(studies):
        # Interleaved at run level, so a change of load on the machine hits both: shared run j, naive run j.
        grid = naive = 0.0
        for j, r in enumerate(runs):
            sec, _ = run(r.config, tmp / f"shared{i}")
            grid += sec
            sec2, _ = run(r.config, tmp / f"naive{i}-{j}")
            naive += sec2
            print(f"   {name}: {r.cell} seed={r.seed}: in the grid's shared cache {sec:.1f} s, in a fresh cache "
                  f"{sec2:.1f} s", flush=True)
        out[name] = {"runs": len(runs), "shared": grid, "naive": naive}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--studies", default=None, help="comma-separated study files (default: see above)")
    ap.add_argument("--mode", choices=("computed", "direct"), default="computed")
    ap.add_argument("--max-runs", type=int, default=6,
                    help="computed mode: execute at most this many unique runs per study (evenly spaced), extrapolate")
    ap.add_argument("--teacher-examples", type=int, default=128)
    ap.add_argument("--examples", type=int, default=64)
    ap.add_argument("--eval-examples", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--json", default=None, help="also write the figures to this file")
    args = ap.parse_args()

    os.environ["KDGRID_DATA_DIR"] = C.data_dir(args.data_dir)
    threads = C.set_threads(args.threads)
    paths = [Path(p) for p in args.studies.split(",")] if args.studies else default_studies()
    C.header("grid reuse: kdgrid's shared teacher/tokenisation/stage-1 vs a naive per-run rebuild (CPU)", threads,
             mode=args.mode, studies=",".join(str(p.relative_to(C.REPO)) if p.is_relative_to(C.REPO) else str(p) for p in paths),
             teacher_examples=args.teacher_examples, examples=args.examples, eval_examples=args.eval_examples)
    studies = [scaled_runs(p, args) for p in paths]
    for name, runs in studies:
        print(f"   study {name}: {len(runs)} unique runs")
    warm_up({r.task for _, runs in studies for r in runs})
    tmp = Path(tempfile.mkdtemp(prefix="kdgrid-bench-grid-"))
    try:
        out = computed(studies, tmp, args.max_runs) if args.mode == "computed" else direct(studies, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    how = ("naive COMPUTED from components timed in this run (see --help)" if args.mode == "computed"
           else "naive TIMED DIRECTLY: every run in its own fresh cache")
    print(f"\nRESULT naive wall time / kdgrid grid wall time ({how}):")
    for name, o in out.items():
        part = f"{o['runs']} runs" if o.get("unique_runs", o["runs"]) == o["runs"] else f"{o['runs']} of {o['unique_runs']} runs"
        line = (f"   {name:24s} {part}: kdgrid {o['shared']:.0f} s, naive {o['naive']:.0f} s, "
                f"x{o['naive'] / o['shared']:.2f}")
        if o.get("stage1_reused"):
            line += f"; {o['stage1_reused']} stage-1 checkpoint(s) reused ({o['stage1_extra']:.0f} s of naive stage 1)"
        print(line)
        if "full_shared" in o:
            print(f"   {'':24s} whole study, {o['unique_runs']} runs, one teacher per task, extrapolated from "
                  f"the runs above: kdgrid {o['full_shared']:.0f} s, naive {o['full_naive']:.0f} s, "
                  f"x{o['full_naive'] / o['full_shared']:.2f}")
    print("   (each study counted from scratch: its teachers' fine-tuning and tokenisation included once in kdgrid's time)")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
