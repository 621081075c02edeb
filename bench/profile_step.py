"""Where the milliseconds of a vanilla-KD step go when the teacher is cached (issue 18, item 3; CPU).

MiniLM-L6 teacher -> 2-layer student (teacher layers 3 and 6), SST-2 batches of 32 (kdgrid's length-grouped,
dynamically padded batches), vanilla KD (beta 1, T 2), teacher logits from kdgrid's logit cache
(``cached_teacher_logits``): the teacher never runs in the timed pass. One warm-up pass, then one pass
of ``--batches`` steps of ``kdgrid.train.loop.train_stage`` under ``torch.profiler`` (operators, self
CPU time) and one under cProfile (Python functions, cumulative).

``--compare`` profiles the loop before and after issue 18 item 3 in one command: each variant runs in its
own process (glibc's malloc settings are per process), ``--rounds`` times, alternating (old new, new old,
...), and the ms/step of the un-profiled passes are compared as the median of per-round ratios. ``old``
restores, in this bench only, what the loop did before: glibc's default malloc thresholds (the 47 MB
word-embedding gradient unmapped and faulted in again every step: ``keep_freed_memory`` patched out) and
one float64 cast and add per loss term per step (``_LossSums`` replaced by the old per-term dict).
``--variant old|new`` runs one of them in this process; ``zero-grads`` is the new loop with gradients
zero-filled in place (``zero_grad(set_to_none=False)``), the alternative issue 18 asked to measure
(``--variants old,new,zero-grads``).

    python bench/profile_step.py                 # ~1 min on a 2-core CPU
    python bench/profile_step.py --batches 40 --threads 2
    python bench/profile_step.py --compare       # old vs new, 3 alternated rounds of each, ~8 min
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402
from teacher_cache import full_split, with_ids  # noqa: E402


class OldLossSums:
    """The loop's loss bookkeeping before item 3: a float64 cast of each term on its first step, then one
    mixed-dtype add per term per step (the same numbers as :class:`kdgrid.train.loop._LossSums`)."""

    def __init__(self) -> None:
        self.sums: dict[str, Any] = {}
        self.n_batches = 0

    def add(self, terms: dict[str, Any]) -> None:
        import torch

        for k, v in terms.items():
            v = v.detach()
            self.sums[k] = self.sums[k] + v if k in self.sums else v.to(torch.float64)
        self.n_batches += 1

    def means(self) -> dict[str, float]:
        import torch

        names = list(self.sums)
        values = torch.stack([self.sums[k] for k in names]).tolist() if names else []
        return {k: v / max(1, self.n_batches) for k, v in zip(names, values)}


def use_old_loop() -> None:
    """Put the loop back as it was before item 3, in this process only (the bench's 'old' variant)."""
    from kdgrid.train import loop, optim

    assert not optim._malloc_tuned, "the malloc thresholds were already set in this process"
    loop.keep_freed_memory = lambda: False  # type: ignore[assignment]
    loop._LossSums = OldLossSums  # type: ignore[assignment,misc]


def use_kept_grads() -> None:
    """The 'zero-grads' variant: the new loop, but gradients zero-filled in place (``set_to_none=False``)
    instead of freed, as issue 18 suggested; the word-embedding backward still makes a fresh 47 MB buffer,
    which is then added into the kept one."""
    import torch

    base = torch.optim.Optimizer.zero_grad

    def zero_grad(self: Any, set_to_none: bool = True) -> None:
        base(self, set_to_none=False)

    torch.optim.AdamW.zero_grad = zero_grad  # type: ignore[method-assign]


def embedding_micro(variant: str, steps: int = 30) -> dict[str, float]:
    """The word-embedding gradient alone: ``zero_grad`` + backward of a 30,522 x 384 ``nn.Embedding`` over a
    32 x 40 batch, thread CPU time and minor page faults a step (median / mean of ``steps``)."""
    import torch

    from kdgrid.train import loop

    loop.keep_freed_memory()  # what train_stage does on a CPU (patched out in 'old')
    emb = torch.nn.Embedding(30522, 384)
    ids = torch.randint(0, 30522, (32, 40), generator=torch.Generator().manual_seed(0))
    cpu = []
    faults0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(steps):
        c0 = time.thread_time()
        emb.zero_grad(set_to_none=variant != "zero-grads")
        emb(ids).sum().backward()
        cpu.append(time.thread_time() - c0)
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults0) / steps
    return {"cpu_ms": 1000 * C.median(cpu), "faults": faults}


def compare(args: argparse.Namespace) -> None:
    """Run ``--variant old`` and ``--variant new`` in fresh processes, alternating; print the ratio."""
    C.header(
        "vanilla-KD step with cached teacher logits, before / after issue 18 item 3 (kdgrid, CPU)",
        args.threads,
        batches=args.batches,
        rounds=args.rounds,
        passes=args.passes,
    )
    base = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--batches",
        str(args.batches),
        "--threads",
        str(args.threads),
        "--top",
        str(args.top),
        "--passes",
        str(args.passes),
    ]
    if args.data_dir:
        base += ["--data-dir", args.data_dir]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    names = args.variants.split(",")
    got: dict[str, list[dict[str, float]]] = {v: [] for v in names}
    for r in range(args.rounds):
        for variant in names[r % len(names) :] + names[: r % len(names)]:
            cmd = base + ["--variant", variant] + (["--no-profile"] if r else [])
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
            line = next(x for x in out.splitlines() if x.startswith("JSON "))
            got[variant].append(json.loads(line[5:]))
            if r == 0:  # the profiles of the first round, in full
                print(f"\n######## variant {variant} (round 1)")
                print("\n".join(x for x in out.splitlines() if not x.startswith("JSON ")), flush=True)
            g = got[variant][-1]
            print(
                f"   round {r + 1}: {variant} {g['ms_per_step']:.1f} ms/step wall, {g['cpu_ms_per_step']:.1f} CPU, "
                f"{g['faults_per_step']:.0f} page faults",
                flush=True,
            )
    micro = {}
    for variant in names:  # the embedding gradient alone, one fresh process per variant
        cmd = [sys.executable, str(Path(__file__).resolve()), "--micro", "--variant", variant]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
        micro[variant] = json.loads(next(x for x in out.splitlines() if x.startswith("MICRO "))[6:])
    print(
        "\nRESULT word-embedding gradient alone (zero_grad + backward, 30,522 x 384, median of 30 steps): "
        + ", ".join(f"{v} {m['cpu_ms']:.1f} ms thread CPU / {m['faults']:.0f} page faults" for v, m in micro.items())
    )
    print(f"\nRESULT per step (median of {args.rounds} processes per variant, {args.passes} un-profiled passes each):")
    for key, what in (
        ("ms_per_step", "ms wall"),
        ("cpu_ms_per_step", "ms thread CPU"),
        ("faults_per_step", "minor page faults"),
    ):
        ref = [x[key] for x in got[names[0]]]
        print(f"   {what:18s} " + "  ".join(f"{v} {C.median([x[key] for x in got[v]]):9.1f}" for v in names))
        for v in names[1:]:
            ratio, lo, hi = C.paired_ratio(ref, [max(x[key], 1e-9) for x in got[v]])
            print(f"   {'':18s} RATIO {names[0]} / {v} {ratio:.3f} [{lo:.3f}-{hi:.3f}]")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=int, default=20, help="steps in the profiled pass (default 20)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--top", type=int, default=18, help="rows of each profile printed")
    ap.add_argument("--compare", action="store_true", help="old vs new loop, each in its own processes")
    ap.add_argument(
        "--variant", choices=("old", "new", "zero-grads"), default="new", help="loop of this process (default new)"
    )
    ap.add_argument("--variants", default="old,new", help="--compare: the variants (first = the reference)")
    ap.add_argument("--rounds", type=int, default=3, help="--compare: processes per variant, alternated")
    ap.add_argument("--passes", type=int, default=1, help="un-profiled timed passes per process (median)")
    ap.add_argument("--no-profile", action="store_true", help="time only, print no profile")
    ap.add_argument("--micro", action="store_true", help="only the word-embedding gradient microbenchmark")
    args = ap.parse_args()
    if args.compare:
        compare(args)
        return
    if args.variant == "old":
        use_old_loop()
    elif args.variant == "zero-grads":
        use_kept_grads()
    if args.micro:
        C.set_threads(args.threads)
        print("MICRO " + json.dumps(embedding_micro(args.variant)), flush=True)
        return

    import torch
    from torch.profiler import ProfilerActivity, profile

    from kdgrid.train.data import subsample_positions
    from kdgrid.train.teacher_cache import cached_teacher_logits

    threads = C.set_threads(args.threads)
    C.header(
        "vanilla-KD step with cached teacher logits: where the time goes (kdgrid train_stage, CPU)",
        threads,
        batches=args.batches,
        batch=32,
    )
    teacher, tok = C.load_minilm_teacher()
    pad = int(tok.pad_token_id or 0)
    full = full_split(tok, args.data_dir, C.REPO / ".kdgrid" / "bench-cache" / "tokenized")
    positions = subsample_positions(len(full), 1.0, 32 * args.batches, 0)
    run_set = full.subset(positions)
    device = torch.device("cpu")
    with tempfile.TemporaryDirectory(prefix="kdgrid-profile-") as tmp:
        table = cached_teacher_logits(teacher, "bench-teacher", full, positions, Path(tmp), device, pad)
    student0 = C.make_student(teacher, 2)
    dev = C.collated_batches(C.sst2_set(tok, 8, glue=args.data_dir, seed=1), 8, pad_id=pad)
    spec = C.OBJECTIVES["vanilla-kd"]

    cost: dict[str, list[float]] = {"wall": [], "cpu": [], "faults": []}

    def one_pass(epoch: int) -> float:
        import copy

        batches = with_ids(C.collated_batches(run_set, 32, pad_id=pad, seed=0, epoch=epoch), positions)
        faults0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        c0, t0 = time.thread_time(), time.perf_counter()
        C.kdgrid_stage(teacher, copy.deepcopy(student0), spec, batches, dev, seed=0, cached_logits=table)
        wall = time.perf_counter() - t0
        # Thread CPU time: what other jobs on a shared machine do not change (1 torch thread: all of it here).
        cost["wall"].append(wall)
        cost["cpu"].append(time.thread_time() - c0)
        cost["faults"].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults0)
        return wall

    one_pass(1)  # warm-up
    for key in cost:
        cost[key].clear()
    for i in range(args.passes):
        one_pass(2 + i)
    per = {k: C.median(v) / args.batches for k, v in cost.items()}
    print(
        f"   variant {args.variant}: pass of {args.batches} steps, no profiler: {1000 * per['wall']:.0f} ms/step "
        f"wall, {1000 * per['cpu']:.0f} ms/step thread CPU time, {per['faults']:.0f} minor page faults a step "
        f"(optimiser set-up and an 8-row dev evaluation included)",
        flush=True,
    )
    print(
        "JSON "
        + json.dumps(
            {
                "variant": args.variant,
                "ms_per_step": 1000 * per["wall"],
                "cpu_ms_per_step": 1000 * per["cpu"],
                "faults_per_step": per["faults"],
            }
        ),
        flush=True,
    )
    if args.no_profile:
        return

    with profile(activities=[ProfilerActivity.CPU], record_shapes=False) as prof:
        one_pass(3)
    print("\n-- torch.profiler, operators by self CPU time (the whole pass)")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.top))

    pr = cProfile.Profile()
    pr.enable()
    one_pass(4)
    pr.disable()
    out = io.StringIO()
    pstats.Stats(pr, stream=out).sort_stats("tottime").print_stats(args.top)
    print("\n-- cProfile, Python functions by own time (the whole pass)")
    print(out.getvalue())


if __name__ == "__main__":
    main()
