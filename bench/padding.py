"""Padding: dynamic padding + length-grouped batches against fixed-length 64 padding (examples/s).

Three ways ``kdgrid.train.data.make_loader`` can batch the same SST-2 examples (max_seq_length 64):

* fixed-64:        random batches, every row padded to 64 (``group_by_length=False, fixed_length=64``)
* dynamic:         random batches, padded to the longest row of the batch (``group_by_length=False``)
* dynamic+grouped: length-grouped batches, padded to the longest row (kdgrid's default, what runs use)

All three go through one ``kdgrid.train.loop.train_stage`` (MiniLM-L6 teacher -> 2-layer student, batch
32): its batch source hands out one batch of each way in turn and times every step (the time between
two batch requests), so the three are interleaved step by step (A B C A B C ...) and see the same
neighbours. Each round is one epoch of every variant over the same examples; figures are medians
over rounds (the first round is a warm-up, not counted). Vanilla KD by default (the teacher runs
every step: no logit cache here); ``--objectives vanilla-kd,att-kl+hid-seq`` adds layer-wise transfer.

    python bench/padding.py                    # ~2 min on a 2-core CPU (longer when shared)
    python bench/padding.py --examples 512 --rounds 5 --objectives vanilla-kd,att-kl+hid-seq
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402

VARIANTS = {
    "fixed-64": {"group_by_length": False, "fixed_length": 64},
    "dynamic": {"group_by_length": False, "fixed_length": None},
    "dynamic+grouped": {"group_by_length": True, "fixed_length": None},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--examples", type=int, default=256, help="SST-2 training examples per epoch (default 256)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3, help="timed rounds (after one warm-up round of 2 steps each)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--objectives", default="vanilla-kd", help="comma-separated: " + ", ".join(C.OBJECTIVES))
    ap.add_argument("--data-dir", default=None)
    args = ap.parse_args()

    threads = C.set_threads(args.threads)
    C.header("padding: dynamic + length-grouped vs fixed-64 (kdgrid train_stage, examples/s, CPU)", threads,
             examples=args.examples, batch_size=args.batch_size, rounds=args.rounds, objectives=args.objectives)
    teacher, tok = C.load_minilm_teacher()
    pad = int(tok.pad_token_id or 0)
    tset = C.sst2_set(tok, args.examples, max_len=64, glue=args.data_dir)
    dev = C.collated_batches(C.sst2_set(tok, 8, glue=args.data_dir, seed=1), 8, pad_id=pad)
    student0 = C.make_student(teacher, 2)
    lengths = tset.lengths
    print(f"   data: {len(tset)} SST-2 rows, tokens per row mean {lengths.mean():.1f}, median {int(sorted(lengths)[len(lengths) // 2])}, "
          f"max {lengths.max()}")

    results: dict[str, dict[str, list[float]]] = {}
    for name in args.objectives.split(","):
        spec = C.OBJECTIVES[name]
        rates: dict[str, list[float]] = {v: [] for v in VARIANTS}
        for r in range(args.rounds + 1):
            per = {v: C.collated_batches(tset, args.batch_size, pad_id=pad, seed=r, epoch=1, **kw)
                   for v, kw in VARIANTS.items()}
            if r == 0:
                per = {v: b[:2] for v, b in per.items()}
            if r == 1 and name == args.objectives.split(",")[0]:
                for v, bs in per.items():
                    real = sum(int(b["attention_mask"].sum()) for b in bs)
                    cells = sum(b["input_ids"].numel() for b in bs)
                    print(f"   {v:16s} {len(bs)} batches, {cells} token slots, {100 * real / cells:.0f}% real tokens")
            # One stage, the three variants' batches in turn: A B C A B C ...
            order = [(v, b) for i in range(max(len(b) for b in per.values())) for v, bl in per.items()
                     if i < len(bl) for b in [bl[i]]]
            times: dict[str, float] = {v: 0.0 for v in VARIANTS}
            count: dict[str, int] = {v: 0 for v in VARIANTS}
            clock = time.perf_counter

            def source(epoch: int, order: list[tuple[str, dict[str, Any]]] = order,
                       times: dict[str, float] = times, count: dict[str, int] = count) -> Iterator[dict[str, Any]]:
                resumed, last = None, None
                for v, b in order:
                    asked = clock()
                    if resumed is not None:
                        times[last] += asked - resumed
                    count[v] += len(b["labels"])
                    last, resumed = v, clock()
                    yield b
                times[last] += clock() - resumed

            C.kdgrid_stage(teacher, copy.deepcopy(student0), spec, [b for _, b in order], dev, seed=r, source=source)
            line = ", ".join(f"{v} {count[v] / times[v]:.1f} ex/s" for v in VARIANTS)
            print(f"   {name} round {r if r else 'warm-up'}: {line}", flush=True)
            if r:
                for v in VARIANTS:
                    rates[v].append(count[v] / times[v])
        results[name] = rates

    print("\nRESULT examples/s relative to fixed-64 padding (median over rounds [min..max]), same examples, interleaved:")
    for name, rates in results.items():
        base = rates["fixed-64"]
        for v in VARIANTS:
            med, lo, hi = C.paired_ratio(rates[v], base)
            print(f"   {name:16s} {v:16s} {C.median(rates[v]):7.1f} ex/s  x{med:.2f} [{lo:.2f}..{hi:.2f}]")


if __name__ == "__main__":
    main()
