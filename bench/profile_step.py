"""Where the milliseconds of a vanilla-KD step go when the teacher is cached (issue 18, item 3; CPU).

MiniLM-L6 teacher -> 2-layer student (teacher layers 3 and 6), SST-2 batches of 32 (kdgrid's length-grouped,
dynamically padded batches), vanilla KD (beta 1, T 2), teacher logits from kdgrid's logit cache
(``cached_teacher_logits``): the teacher never runs in the timed pass. One warm-up pass, then one pass
of ``--batches`` steps of ``kdgrid.train.loop.train_stage`` under ``torch.profiler`` (operators, self
CPU time) and one under cProfile (Python functions, cumulative). Measurement only: nothing in
kdgrid/train/ is changed here; bench/README.md lists the avoidable costs found.

    python bench/profile_step.py                 # ~1 min on a 2-core CPU
    python bench/profile_step.py --batches 40 --threads 2
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402
from teacher_cache import full_split, with_ids  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=int, default=20, help="steps in the profiled pass (default 20)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--top", type=int, default=18, help="rows of each profile printed")
    args = ap.parse_args()

    import torch
    from torch.profiler import ProfilerActivity, profile

    from kdgrid.train.data import subsample_positions
    from kdgrid.train.teacher_cache import cached_teacher_logits

    threads = C.set_threads(args.threads)
    C.header("vanilla-KD step with cached teacher logits: where the time goes (kdgrid train_stage, CPU)", threads,
             batches=args.batches, batch=32)
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

    def one_pass(epoch: int) -> float:
        import copy

        batches = with_ids(C.collated_batches(run_set, 32, pad_id=pad, seed=0, epoch=epoch), positions)
        t0 = time.perf_counter()
        C.kdgrid_stage(teacher, copy.deepcopy(student0), spec, batches, dev, seed=0, cached_logits=table)
        return time.perf_counter() - t0

    one_pass(1)  # warm-up
    plain = one_pass(2)
    print(f"   pass of {args.batches} steps, no profiler: {plain:.2f} s = {1000 * plain / args.batches:.0f} ms/step "
          f"(optimiser set-up and an 8-row dev evaluation included)", flush=True)

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
