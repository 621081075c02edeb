"""Layer objectives with stored teacher activations: examples/s vs recomputing the teacher, and vs vanilla KD.

``train.teacher_cache: true`` stores, once per example, what a run's layer objective reads from the frozen
teacher (Q/K, V, hidden states of the mapped layers: ``kdgrid.train.activation_cache``) and its logits, so
that an attention + hidden-state run no longer runs the teacher every step. Compared here, side by side in one
process (MiniLM-L6 teacher -> 2-layer student copied from teacher layers, SST-2 training rows at max length 64,
batch 32, kdgrid's own ``train_stage``, 1 torch thread):

* ``vanilla``: vanilla KD with the cached logit table (how kdgrid runs it);
* ``layers-recomputed``: Att-KL + Hid-Seq (uniform mapping), the teacher run every step (before this cache);
* ``layers-cached``: the same objective reading stored activations and the logit table.

Each variant is one whole ``train_stage`` of ``--epochs`` epochs over ``--examples`` rows with a fresh copy
of the student, taking turns (A B C, B C A, ...) after one uncounted warm-up round; a figure is examples/s
(examples x epochs / wall time of the stage, its last-epoch evaluation on 8 dev rows included). The ratios are
the medians of the per-round ratios, with their range. The caches are filled before the timed rounds (one
fill per grid, reused by every epoch and run; one teacher pass fills the activations and the logit table); the
fill's time and disk size are printed, and from them the ratio of one run that fills its own rows (the worst case:
a grid of one run).

    python bench/activation_cache.py                               # 1000 examples, 2 epochs, 3 rounds
    python bench/activation_cache.py --examples 64 --epochs 1 --rounds 1   # smoke size
"""

from __future__ import annotations

import argparse
import copy
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402

SPECS = {"vanilla": C.OBJECTIVES["vanilla-kd"], "layers": C.OBJECTIVES["att-kl+hid-seq"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--examples", type=int, default=1000, help="SST-2 training rows per run (default 1000)")
    ap.add_argument("--epochs", type=int, default=2, help="epochs per timed stage (default 2)")
    ap.add_argument("--rounds", type=int, default=3, help="timed rounds per variant, after a warm-up round")
    ap.add_argument("--mapping", default="uniform", help="layer mapping of the layer objective (learnable: all layers)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--data-dir", default=None)
    args = ap.parse_args()

    import torch

    from kdgrid.study.schema import Objective
    from kdgrid.train.activation_cache import activation_needs, cached_teacher_activations, disk_bytes, teacher_widths
    from kdgrid.train.data import load_tokenized, subsample_positions
    from kdgrid.train.objectives import DistillObjective
    from kdgrid.train.teacher_cache import cached_teacher_logits

    threads = C.set_threads(args.threads)
    layer_spec = {**SPECS["layers"], "mapping": args.mapping}
    C.header("stored teacher activations: Att-KL + Hid-Seq KD with and without them, and vanilla KD (kdgrid, CPU)",
             threads, examples=args.examples, epochs=args.epochs, rounds=args.rounds, mapping=args.mapping)
    teacher, tok = C.load_minilm_teacher()
    pad = int(tok.pad_token_id or 0)
    device = torch.device("cpu")
    full = load_tokenized("sst2", "train", C.data_dir(args.data_dir), tok, 64, C.REPO / ".kdgrid" / "bench-cache" / "tokenized")
    positions = subsample_positions(len(full), 1.0, args.examples, 0)
    run_set = full.subset(positions)
    pos = torch.as_tensor(positions)
    epochs_batches = []
    for epoch in range(1, args.epochs + 1):
        batches = C.collated_batches(run_set, 32, pad_id=pad, seed=0, epoch=epoch)
        for b in batches:
            b["example_ids"] = pos[b["indices"]]
        epochs_batches.append(batches)
    dev = C.collated_batches(C.sst2_set(tok, 8, glue=args.data_dir, seed=1), 8, pad_id=pad)
    student0 = C.make_student(teacher, 2)
    t, s = teacher.config, student0.config
    objective = DistillObjective(Objective.model_validate(layer_spec), stage="joint", is_regression=False,
                                 n_teacher_layers=t.num_hidden_layers, n_student_layers=s.num_hidden_layers,
                                 teacher_hidden=t.hidden_size, student_hidden=s.hidden_size,
                                 teacher_heads=t.num_attention_heads, student_heads=s.num_attention_heads,
                                 num_train_examples=len(run_set))
    needs = activation_needs(objective)
    tmp = Path(tempfile.mkdtemp(prefix="kdgrid-bench-acts-"))
    try:
        with C.Timer() as fill_acts:  # one teacher pass fills the activations and the logit table
            acts = cached_teacher_activations(teacher, "bench", full, positions, needs, tmp, device, pad, budget=2**40)
        with C.Timer() as fill_logits:
            table = cached_teacher_logits(teacher, "bench", full, positions, tmp, device, pad)
        with C.Timer() as logits_alone:  # what the vanilla run's own fill costs
            cached_teacher_logits(teacher, "bench", full, positions, tmp / "alone", device, pad)
        with C.Timer() as reopen:
            cached_teacher_activations(teacher, "bench", full, positions, needs, tmp, device, pad, budget=2**40)
        assert acts is not None
        size = disk_bytes(full.lengths[positions], needs, teacher_widths(teacher))
        print(f"   stored: {needs} for {len(positions)} rows ({int(full.lengths[positions].sum())} tokens): "
              f"{size / 2**20:.1f} MiB; fill {fill_acts.seconds:.2f} s with the logit table (then read in "
              f"{1000 * fill_logits.seconds:.1f} ms; the logit table alone {logits_alone.seconds:.2f} s), "
              f"reopen when complete {1000 * reopen.seconds:.1f} ms", flush=True)

        n_ex = len(positions) * args.epochs

        def stage(name: str, spec: dict[str, Any], cached: bool) -> float:
            student = copy.deepcopy(student0)
            with C.Timer() as timer:
                C.kdgrid_stage(teacher, student, spec, [], dev, seed=0, source=lambda e: epochs_batches[e - 1],
                               cached_logits=table if cached else None, activations=acts if cached else None,
                               epochs=args.epochs, steps_per_epoch=len(epochs_batches[0]), device=device)
            return n_ex / timer.seconds

        rates = C.alternate({
            "vanilla": lambda: stage("vanilla", SPECS["vanilla"], True),
            "layers-recomputed": lambda: stage("layers-recomputed", layer_spec, False),
            "layers-cached": lambda: stage("layers-cached", layer_spec, True),
        }, repeats=args.rounds)
        med = {k: C.median(v) for k, v in rates.items()}
        print("   examples/s (median): " + ", ".join(f"{k} {v:.1f}" for k, v in med.items()))
        for num, den in (("layers-cached", "layers-recomputed"), ("layers-cached", "vanilla"),
                         ("layers-recomputed", "vanilla")):
            r, lo, hi = C.paired_ratio(rates[num], rates[den])
            print(f"   RATIO {num} / {den}: {r:.2f} [{lo:.2f}-{hi:.2f}]")
        # One run that fills its own rows first: its stage time plus the fill, against recomputing.
        own = n_ex / med["layers-cached"] + fill_acts.seconds + fill_logits.seconds
        print(f"   RATIO one run filling its own rows / layers-recomputed (computed): "
              f"{(n_ex / med['layers-recomputed']) / own:.2f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
