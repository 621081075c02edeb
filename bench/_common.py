"""Shared helpers of the benchmarks in bench/ (not part of the library).

Every benchmark prints ratios measured side by side in one process: the compared
variants run alternately (A B A B ...), after one warm-up round that is not counted,
and each variant's figure is the median over its repetitions. Absolute times are
printed for orientation only; on a shared machine they are noise, the ratios are not
(both variants see the same neighbours, interleaved).
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import socket
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def data_dir(explicit: str | None = None) -> str:
    """GLUE folder: --data-dir, else $KDGRID_DATA_DIR, else ../shared/data/glue beside the repo (as scripts/demo.sh)."""
    for cand in (explicit, os.environ.get("KDGRID_DATA_DIR"), str(REPO.parent / "shared" / "data" / "glue")):
        if cand and Path(cand).is_dir():
            return str(cand)
    raise SystemExit("no GLUE data: pass --data-dir or set KDGRID_DATA_DIR (original GLUE layout)")


def set_threads(n: int | None) -> int:
    """torch intra-op threads (default 1: torch with 2 threads degrades badly when the cores are shared)."""
    import torch

    torch.set_num_threads(n or 1)
    return torch.get_num_threads()


def machine_note(threads: int | None = None) -> str:
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    parts = [
        f"{dt.date.today().isoformat()}",
        f"host {socket.gethostname()}",
        f"{os.cpu_count()} CPU cores ({platform.processor() or platform.machine()})",
        f"load avg {load[0]:.2f}/{load[1]:.2f}/{load[2]:.2f} at start",
        "SHARED machine: other jobs ran at the same time, absolute times are noisy; ratios are side by side",
    ]
    if threads is not None:
        parts.append(f"torch threads {threads}")
    return "; ".join(parts)


def header(title: str, threads: int | None = None, **settings: Any) -> None:
    print(f"== {title}")
    print(f"   machine: {machine_note(threads)}")
    print(f"   command: python {' '.join(sys.argv)}")
    if settings:
        print("   settings: " + ", ".join(f"{k}={v}" for k, v in settings.items()))


def alternate(variants: dict[str, Callable[[], float]], repeats: int, warmup: int = 1,
              verbose: bool = True) -> dict[str, list[float]]:
    """Call each variant in turn (A B A B ...), ``warmup`` uncounted rounds first; each call returns a figure
    (e.g. examples/s). The starting variant rotates every round so neither always runs first."""
    names = list(variants)
    out: dict[str, list[float]] = {n: [] for n in names}
    for r in range(warmup + repeats):
        order = names[r % len(names):] + names[:r % len(names)]
        row = []
        for n in order:
            v = variants[n]()
            if r >= warmup:
                out[n].append(v)
            row.append(f"{n}={v:.4g}")
        if verbose:
            print(f"   round {r + 1 - warmup if r >= warmup else 'warm-up'}: " + "  ".join(row), flush=True)
    return out


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs))


def paired_ratio(num: Sequence[float], den: Sequence[float]) -> tuple[float, float, float]:
    """Median of the per-round ratios num[i]/den[i] (rounds are adjacent in time), with min and max."""
    rs = [a / b for a, b in zip(num, den)]
    return median(rs), min(rs), max(rs)


class Timer:
    def __enter__(self) -> Timer:
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.seconds = time.perf_counter() - self.t0


# --- the real teacher, student and SST-2 batches ------------------------------------------------

def load_minilm_teacher(num_labels: int = 2, device: str = "cpu", attn: str = "sdpa") -> tuple[Any, Any]:
    """MiniLM-L6 (the study's teacher) with a fresh classification head, eval mode, no grads.

    Speed does not depend on whether the head was fine-tuned, so the benchmarks skip fine-tuning.
    """
    import torch

    from kdgrid.model_names import resolve_model_path
    from kdgrid.tasks import get_task
    from kdgrid.train.models import load_classifier, load_tokenizer

    path = resolve_model_path("minilm-l6")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        teacher = load_classifier(path, num_labels, attn, label_list=get_task("sst2").label_list)
    teacher.to(device).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher, load_tokenizer(path)


def make_student(teacher: Any, layers: int = 2, seed: int = 0) -> Any:
    from kdgrid.study.schema import Student
    from kdgrid.train.models import build_student

    return build_student(teacher, Student(layers=layers, init="teacher_layers"), seed)


def sst2_set(tokenizer: Any, n: int, max_len: int = 64, glue: str | None = None, seed: int = 0) -> Any:
    """A TokenizedSet of ``n`` SST-2 training rows (a seeded random subset, file order)."""
    from kdgrid.train.data import load_split, subsample, tokenize_examples

    examples = load_split("sst2", "train", data_dir(glue))
    return tokenize_examples(subsample(examples, 1.0, n, seed), tokenizer, max_len, is_regression=False)


def collated_batches(tset: Any, batch_size: int = 32, *, pad_id: int = 0, group_by_length: bool = True,
                     fixed_length: int | None = None, seed: int = 0, epoch: int = 1) -> list[dict[str, Any]]:
    """One epoch of kdgrid's own batches (make_loader), collated up front."""
    from kdgrid.train.data import make_loader

    loader = make_loader(tset, batch_size, pad_token_id=pad_id, shuffle=True, seed=seed,
                         group_by_length=group_by_length, fixed_length=fixed_length, is_regression=False)
    loader.batch_sampler.set_epoch(epoch)
    return list(loader)


# --- kdgrid's own stage loop, as run.py calls it --------------------------------------------------

LR, WD, WARMUP, CLIP = 1e-4, 0.01, 0.1, 1.0

OBJECTIVES: dict[str, dict[str, Any]] = {
    "vanilla-kd": {"prediction": {"beta": 1.0, "temperature": 2.0}},
    "att-kl+hid-seq": {"prediction": {"beta": 1.0, "temperature": 2.0},
                       "intermediate": {"attention": "kl", "hidden": "seq", "alpha": 0.5, "weight": 1.0},
                       "mapping": "uniform"},
}


def kdgrid_stage(teacher: Any, student: Any, spec: dict[str, Any], batches: list[dict[str, Any]],
                 dev: list[dict[str, Any]], seed: int, source: Any = None, cached_logits: Any = None,
                 epochs: int = 1, steps_per_epoch: int | None = None, device: Any = "cpu",
                 autocast: Any = None, activations: Any = None) -> list[dict[str, Any]]:
    """One joint stage of ``kdgrid.train.loop.train_stage`` (DistillObjective, TeacherOutputs) on CPU.

    ``source(epoch)`` yields the batches (default: ``batches`` every epoch); ``cached_logits``: the teacher
    logit table (batches then need ``example_ids``); ``activations``: the stored teacher activations
    (kdgrid.train.activation_cache), used with ``cached_logits``."""
    import torch

    from kdgrid.study.schema import Objective
    from kdgrid.train.loop import StageSettings, TeacherOutputs, train_stage
    from kdgrid.train.objectives import DistillObjective

    t, s = teacher.config, student.config
    objective = DistillObjective(
        Objective.model_validate(spec), stage="joint", is_regression=False,
        n_teacher_layers=t.num_hidden_layers, n_student_layers=s.num_hidden_layers,
        teacher_hidden=t.hidden_size, student_hidden=s.hidden_size,
        teacher_heads=t.num_attention_heads, student_heads=s.num_attention_heads,
        num_train_examples=10**6,
    )
    settings = StageSettings(stage="joint", epochs=epochs, lr=LR, weight_decay=WD, warmup_ratio=WARMUP,
                             max_grad_norm=CLIP, task="sst2", evaluate_each_epoch=False)
    device = torch.device(device)
    objective.to(device)
    torch.manual_seed(seed)
    extra = {"autocast": autocast} if autocast is not None else {}
    rows, _ = train_stage(student, objective, TeacherOutputs(teacher, objective, device, cached_logits, activations),
                          source or (lambda epoch: batches), steps_per_epoch or len(batches), dev, settings, device,
                          **extra)
    return rows
