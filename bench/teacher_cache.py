"""Teacher output cache: vanilla-KD throughput with and without the cached teacher logits.

``train.teacher_cache: true`` (the default) makes a vanilla-KD run read the frozen teacher's logits from a
table (``kdgrid.train.teacher_cache.cached_teacher_logits``) instead of running the teacher every step.
The table is filled once per (teacher, tokenized training split), for the rows a run uses, and shared
by every later epoch and every later run with the same teacher.

Measured here (MiniLM-L6 teacher -> 2-layer student, SST-2, batch 32, kdgrid's ``train_stage``):

1. steady state, per epoch: one ``train_stage`` whose ``TeacherOutputs`` alternates step by step between
   kdgrid's cached and uncached ``TeacherOutputs`` on the same batches (A B A B ...), each step timed;
2. the one-off cost of filling the table for a run's rows (``cached_teacher_logits`` in a fresh cache
   folder), and of loading it when every row is there already (a later run);
3. from these, **computed**: one run of E epochs that fills its own rows, and a grid of C cells x S seeds
   (cells of one seed share the rows; seeds draw different subsets of the training split).
   ``--direct`` also times such a grid for real (fresh cache folder, cached grid vs uncached grid, A B).

    python bench/teacher_cache.py                      # ~2 min on a 2-core CPU (longer when shared)
    python bench/teacher_cache.py --direct --examples 128
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402

SPEC = C.OBJECTIVES["vanilla-kd"]


class Alternating:
    """kdgrid's two TeacherOutputs, used in turn: batches tagged 'cached' read the table."""

    def __init__(self, cached: Any, plain: Any) -> None:
        self.cached, self.plain = cached, plain

    def capturing(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    def __call__(self, batch: dict[str, Any], inputs: dict[str, Any]) -> Any:
        return (self.cached if batch["variant"] == "cached" else self.plain)(batch, inputs)


def full_split(tok: Any, glue: str | None, cache_dir: Path) -> Any:
    from kdgrid.train.data import load_tokenized

    return load_tokenized("sst2", "train", C.data_dir(glue), tok, 64, cache_dir)


def with_ids(batches: list[dict[str, Any]], positions: Any) -> list[dict[str, Any]]:
    import torch

    pos = torch.as_tensor(positions)
    for b in batches:
        b["example_ids"] = pos[b["indices"]]
    return batches


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--examples", type=int, default=320, help="training examples per run (default 320 = 10 batches)")
    ap.add_argument("--rounds", type=int, default=3, help="timed epochs per variant in part 1 (after a warm-up)")
    ap.add_argument("--epochs", type=int, default=3, help="epochs per run for the computed figures")
    ap.add_argument("--cells", type=int, default=4, help="grid cells sharing each seed's rows (computed grid)")
    ap.add_argument("--seeds", type=int, default=3, help="seeds of the computed grid")
    ap.add_argument("--direct", action="store_true", help="also time a small grid for real (slow)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--data-dir", default=None)
    args = ap.parse_args()

    import torch

    from kdgrid.study.schema import Objective
    from kdgrid.train.data import subsample_positions
    from kdgrid.train.loop import TeacherOutputs
    from kdgrid.train.objectives import DistillObjective
    from kdgrid.train.teacher_cache import cached_teacher_logits

    threads = C.set_threads(args.threads)
    C.header("teacher logit cache: vanilla KD with and without cached teacher logits (kdgrid, CPU)", threads,
             examples=args.examples, rounds=args.rounds, epochs=args.epochs, cells=args.cells, seeds=args.seeds)
    teacher, tok = C.load_minilm_teacher()
    pad = int(tok.pad_token_id or 0)
    tok_cache = C.REPO / ".kdgrid" / "bench-cache" / "tokenized"
    with C.Timer() as t:
        full = full_split(tok, args.data_dir, tok_cache)
    print(f"   data: SST-2 train, {len(full)} rows tokenized (cache {tok_cache}, {t.seconds:.1f} s)")
    student0 = C.make_student(teacher, 2)
    dev = C.collated_batches(C.sst2_set(tok, 8, glue=args.data_dir, seed=1), 8, pad_id=pad)
    device = torch.device("cpu")
    positions = subsample_positions(len(full), 1.0, args.examples, 0)
    run_set = full.subset(positions)
    tmp = Path(tempfile.mkdtemp(prefix="kdgrid-bench-cache-"))
    try:
        # ---- 2. one-off costs: filling the table for a run's rows, loading it when complete ----------------
        fills, hits, fills128 = [], [], []
        for i in range(3):
            root = tmp / f"fill{i}"
            with C.Timer() as t:
                table = cached_teacher_logits(teacher, "bench-teacher", full, positions, root, device, pad)
            fills.append(t.seconds)
            with C.Timer() as t:
                cached_teacher_logits(teacher, "bench-teacher", full, positions, root, device, pad)
            hits.append(t.seconds)
            # The same fill in plain 128-row batches (longest first): what kdgrid did before its token budget.
            with C.Timer() as t:
                cached_teacher_logits(teacher, "bench-teacher", full, positions, tmp / f"fill128-{i}", device, pad,
                                      batch_size=128, max_tokens=10**9)
            fills128.append(t.seconds)
        fill_s, hit_s = C.median(fills), C.median(hits)
        fill_gain = C.paired_ratio(fills128, fills)
        print(f"   table for {len(positions)} rows: fill {fill_s:.2f} s (median of 3), load when complete {1000 * hit_s:.1f} ms; "
              f"fill in 128-row batches {C.median(fills128):.2f} s")

        # ---- 1. steady state, step by step -------------------------------------------------------------------
        obj = DistillObjective(Objective.model_validate(SPEC), stage="joint", is_regression=False,
                               n_teacher_layers=6, n_student_layers=2, teacher_hidden=384, student_hidden=384,
                               teacher_heads=12, student_heads=12, num_train_examples=len(run_set))
        alt = Alternating(TeacherOutputs(teacher, obj, device, table), TeacherOutputs(teacher, obj, device, None))
        rates: dict[str, list[float]] = {"cached": [], "uncached": []}
        for r in range(args.rounds + 1):
            batches = with_ids(C.collated_batches(run_set, 32, pad_id=pad, seed=0, epoch=r + 1), positions)
            if r == 0:
                batches = batches[:2]
            # Each batch twice, once per variant; which goes first alternates from batch to batch.
            pairs = []
            for i, b in enumerate(batches):
                order = ("cached", "uncached") if i % 2 == 0 else ("uncached", "cached")
                pairs += [dict(b, variant=v) for v in order]
            times = {"cached": 0.0, "uncached": 0.0}
            n = {"cached": 0, "uncached": 0}
            clock = time.perf_counter

            def source(epoch: int, pairs: list[dict[str, Any]] = pairs, times: dict[str, float] = times,
                       n: dict[str, int] = n) -> Iterator[dict[str, Any]]:
                resumed, last = None, None
                for b in pairs:
                    asked = clock()
                    if resumed is not None:
                        times[last] += asked - resumed
                    n[b["variant"]] += len(b["labels"])
                    last, resumed = b["variant"], clock()
                    yield b
                times[last] += clock() - resumed

            stage_with(teacher, copy.deepcopy(student0), pairs, dev, source, alt, seed=r)
            line = ", ".join(f"{v} {n[v] / times[v]:.1f} ex/s" for v in times)
            print(f"   epoch {r if r else 'warm-up'}: {line}", flush=True)
            if r:
                for v in times:
                    rates[v].append(n[v] / times[v])
        speed, lo, hi = C.paired_ratio(rates["cached"], rates["uncached"])
        rc, ru = C.median(rates["cached"]), C.median(rates["uncached"])

        # ---- 3. computed: a run, a grid ---------------------------------------------------------------------
        N, E, G, S = len(positions), args.epochs, args.cells, args.seeds
        union = len(set().union(*[set(subsample_positions(len(full), 1.0, args.examples, s).tolist()) for s in range(S)]))
        per_row_fill = fill_s / N
        run_plain = E * N / ru
        run_cached = fill_s + E * N / rc
        grid_plain = G * S * run_plain
        grid_cached = union * per_row_fill + G * S * (hit_s + E * N / rc)

        direct = None
        if args.direct:
            direct = direct_grid(teacher, student0, full, args, dev, pad, tmp, S, G, E)

        print("\nRESULT vanilla-KD throughput with the teacher logit cache / without (higher is better):")
        print(f"   per epoch, steady state (interleaved steps, median of {args.rounds} epochs): x{speed:.2f} [{lo:.2f}..{hi:.2f}]"
              f"  ({rc:.1f} vs {ru:.1f} ex/s)")
        print(f"   one run of {E} epochs x {N} examples that fills its own table rows first (computed): "
              f"x{run_plain / run_cached:.2f}")
        print(f"   grid of {G} cells x {S} seeds, {E} epochs, {N} examples per run, one teacher "
              f"({union} distinct rows; computed): x{grid_plain / grid_cached:.2f}")
        print("   computed = from the measured per-epoch rates, fill and load times above")
        print(f"   filling the table, token-budget batches / plain 128-row batches (alternating, median of 3): "
              f"x{fill_gain[0]:.2f} faster [{fill_gain[1]:.2f}..{fill_gain[2]:.2f}]")
        if direct is not None:
            print(f"   grid timed directly ({G} cells x {S} seeds, fresh cache folder, A B): x{direct:.2f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def stage_with(teacher: Any, student: Any, batches: list[dict[str, Any]], dev: Any, source: Any, outputs: Any,
               seed: int, epochs: int = 1) -> None:
    """kdgrid's train_stage with a given TeacherOutputs-like object."""
    import torch

    from kdgrid.study.schema import Objective
    from kdgrid.train.loop import StageSettings, train_stage
    from kdgrid.train.objectives import DistillObjective

    obj = DistillObjective(Objective.model_validate(SPEC), stage="joint", is_regression=False,
                           n_teacher_layers=6, n_student_layers=2, teacher_hidden=384, student_hidden=384,
                           teacher_heads=12, student_heads=12, num_train_examples=10**6)
    settings = StageSettings(stage="joint", epochs=epochs, lr=C.LR, weight_decay=C.WD, warmup_ratio=C.WARMUP,
                             max_grad_norm=C.CLIP, task="sst2", evaluate_each_epoch=False)
    torch.manual_seed(seed)
    train_stage(student, obj, outputs, source, len(batches), dev, settings, torch.device("cpu"))


def direct_grid(teacher: Any, student0: Any, full: Any, args: Any, dev: Any, pad: int, tmp: Path,
                S: int, G: int, E: int) -> float:
    """Time G cells x S seeds of E-epoch vanilla-KD runs, cached (fresh cache root) vs uncached, A B A B."""
    import torch

    from kdgrid.study.schema import Objective
    from kdgrid.train.data import subsample_positions
    from kdgrid.train.loop import TeacherOutputs
    from kdgrid.train.objectives import DistillObjective
    from kdgrid.train.teacher_cache import cached_teacher_logits

    device = torch.device("cpu")
    obj = DistillObjective(Objective.model_validate(SPEC), stage="joint", is_regression=False,
                           n_teacher_layers=6, n_student_layers=2, teacher_hidden=384, student_hidden=384,
                           teacher_heads=12, student_heads=12, num_train_examples=10**6)
    counter = [0]

    def grid(cached: bool) -> float:
        counter[0] += 1
        root = tmp / f"grid{counter[0]}"
        t0 = time.perf_counter()
        for seed in range(S):
            pos = subsample_positions(len(full), 1.0, args.examples, seed)
            sub = full.subset(pos)
            for _cell in range(G):
                table = cached_teacher_logits(teacher, "bench-teacher", full, pos, root, device, pad) if cached else None
                outputs = TeacherOutputs(teacher, obj, device, table)

                def source(epoch: int, sub: Any = sub, pos: Any = pos) -> Any:
                    return with_ids(C.collated_batches(sub, 32, pad_id=pad, seed=seed, epoch=epoch), pos)

                n_batches = -(-len(sub) // 32)
                stage_with(teacher, copy.deepcopy(student0), [None] * n_batches, dev, source, outputs, seed, epochs=E)
        return time.perf_counter() - t0

    res = C.alternate({"cached": lambda: grid(True), "uncached": lambda: grid(False)}, repeats=1, warmup=0)
    return res["uncached"][0] / res["cached"][0]


if __name__ == "__main__":
    main()
