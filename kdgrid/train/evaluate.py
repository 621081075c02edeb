"""Evaluation on the dev set and efficiency measurements of a trained student.

One evaluation path for every model kdgrid scores: the teacher after fine-tuning, the student after each
epoch and at the end of a run all go through :func:`eval_batches` (the dev set collated once, longest rows
first, in token-budget batches) and :func:`evaluate`.
"""

from __future__ import annotations

import os
import resource
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from kdgrid.tasks import compute_metrics, get_task
from kdgrid.train.data import Collator, TokenizedSet, length_batches
from kdgrid.train.models import model_inputs

# Token slots per evaluation batch (rows x longest row) by default: the teacher-logit fill's budgets. On a CPU,
# compute grows with padded tokens and 16-32 rows are as fast per row as 128; an accelerator wants big batches.
EVAL_TOKENS = {"cpu": 2048, "accelerator": 32768}


def eval_batches(
    dataset: TokenizedSet,
    pad_token_id: int,
    device: torch.device | str,
    *,
    max_rows: int = 128,
    max_tokens: int | None = None,
    is_regression: bool | None = None,
) -> list[dict[str, torch.Tensor]]:
    """``dataset`` collated once into evaluation batches: longest rows first, at most ``max_rows`` rows and
    ``max_tokens`` token slots each (default :data:`EVAL_TOKENS` for the device), so little is computed on
    padding. Built once per run and reused by every evaluation; rows come out of file order (metrics do not
    care; each batch's ``indices`` says where its rows were)."""
    if is_regression is None:
        is_regression = dataset.labels.dtype.kind == "f"
    budget = max_tokens or EVAL_TOKENS["cpu" if torch.device(device).type == "cpu" else "accelerator"]
    collate = Collator(pad_token_id, is_regression=is_regression)
    return [collate([dataset[int(i)] for i in rows]) for rows in length_batches(dataset.lengths, max_rows, budget)]


@torch.no_grad()
def predict(
    model: nn.Module, loader: Iterable[dict[str, torch.Tensor]], device: torch.device
) -> tuple[np.ndarray, np.ndarray]:
    """Raw outputs (logits, or scores for regression) and labels, in loader order.

    Outputs stay on the device until the end: one transfer instead of a host sync per batch.
    """
    was_training = model.training
    model.eval()
    outs: list[torch.Tensor] = []
    labels: list[torch.Tensor] = []
    try:
        for batch in loader:
            outs.append(model(**model_inputs(batch, device)).logits.float())
            labels.append(batch["labels"])
    finally:
        model.train(was_training)
    return torch.cat(outs).cpu().numpy(), torch.cat(labels).cpu().numpy()


def evaluate(
    model: nn.Module,
    loader: Iterable[dict[str, torch.Tensor]],
    task: str,
    device: torch.device,
    extra_metrics: Sequence[str] = (),
) -> dict[str, float]:
    """The task's official GLUE metrics on a dev loader, then the run's registered ``extra_metrics``."""
    logits, labels = predict(model, loader, device)
    spec = get_task(task)
    preds = logits[:, 0] if spec.is_regression else logits.argmax(-1)
    return compute_metrics(task, preds, labels, extra_metrics)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# Latency probes already run in this process, by what decides the figure (:func:`_speed_key`).
_SPEED_CACHE: dict[tuple[Any, ...], dict[str, float]] = {}
# Config fields that name things without changing the computation.
_NAMING_FIELDS = ("_name_or_path", "id2label", "label2id", "architectures", "finetuning_task", "transformers_version")


def _speed_key(model: nn.Module, device: torch.device, settings: tuple[Any, ...]) -> tuple[Any, ...] | None:
    """What the latency of ``model`` depends on: its class, its config (names and labels aside), the shape,
    dtype and device of every parameter, the device, the probe's settings and the thread count. None for a
    model without a Hugging Face config (a plug-in's student): measured every time."""
    config: Any = getattr(model, "config", None)
    if config is None or not hasattr(config, "to_dict"):
        return None
    fields = {k: v for k, v in config.to_dict().items() if k not in _NAMING_FIELDS}
    shapes = tuple((name, tuple(p.shape), str(p.dtype), str(p.device)) for name, p in model.named_parameters())
    return (
        f"{type(model).__module__}.{type(model).__qualname__}",
        repr(sorted(fields.items())),
        shapes,
        str(device),
        settings,
        torch.get_num_threads(),
    )


def clear_speed_cache() -> None:
    """Forget the probes run so far: the next :func:`inference_speed` of every shape measures again."""
    _SPEED_CACHE.clear()


@torch.inference_mode()
def inference_speed(
    model: nn.Module,
    *,
    vocab_size: int,
    device: torch.device,
    batch_size: int = 32,
    seq_len: int = 64,
    warmup: int = 2,
    min_repeats: int = 5,
    min_seconds: float = 0.3,
    max_repeats: int = 100,
    reuse: bool = True,
) -> dict[str, float]:
    """Latency of one batch and examples/s at a fixed batch and length, the same protocol for every shape.

    fp32 (no autocast), eval mode, the same token ids for every model; ``warmup`` untimed passes
    (allocations, kernel selection), then timed passes until both ``min_repeats`` passes and
    ``min_seconds`` are reached (at most ``max_repeats``): the median. The thread count it ran
    with is recorded (``bench_threads``), since on a CPU it decides the figure as much as the shape.

    The figure depends on the shape, not on the weights: with ``reuse``, a process measures each shape once
    (per device, probe settings and thread count, :func:`_speed_key`) and later runs of that shape record the
    same figures with ``bench_reused`` = 1 (0 where this call measured).
    """
    settings = (batch_size, seq_len, warmup, min_repeats, min_seconds, max_repeats, vocab_size)
    key = _speed_key(model, device, settings) if reuse else None
    if key is not None and key in _SPEED_CACHE:
        return {**_SPEED_CACHE[key], "bench_reused": 1.0}
    was_training = model.training
    model.eval()
    gen = torch.Generator().manual_seed(0)
    # Skip the low ids where BERT vocabularies keep special and unused tokens.
    ids = torch.randint(min(1000, vocab_size // 2), vocab_size, (batch_size, seq_len), generator=gen).to(device)
    mask = torch.ones_like(ids)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(warmup):
        model(input_ids=ids, attention_mask=mask)
    sync()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < max_repeats and (len(times) < min_repeats or time.perf_counter() - start < min_seconds):
        t0 = time.perf_counter()
        model(input_ids=ids, attention_mask=mask)
        sync()
        times.append(time.perf_counter() - t0)
    model.train(was_training)
    latency = float(np.median(times))
    figures = {
        "latency_ms": 1000 * latency,
        "throughput_ex_s": batch_size / latency,
        "bench_batch_size": float(batch_size),
        "bench_seq_len": float(seq_len),
        "bench_repeats": float(len(times)),
        "bench_threads": float(torch.get_num_threads()),
    }
    if key is not None:
        _SPEED_CACHE[key] = figures
    return {**figures, "bench_reused": 0.0}


def _rss_bytes() -> int | None:
    """This process's resident set size now (Linux /proc), or None where it cannot be read."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError, AttributeError):
        return None


class PeakMemory:
    """Peak memory of one run, never of the process's earlier runs (a worker lives for many runs).

    CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats`` at the start: the
    tensors the run allocated at its peak (the caching allocator's reserve is not counted).
    CPU (Linux): the process's resident set size sampled every ``interval_s`` by a thread while
    the run lasts: the peak RSS during this run, which includes the interpreter and libraries
    (``rss_start_mb``, recorded beside it, is the RSS when the run began; the difference is what
    the run added, less whatever memory earlier runs freed but the allocator kept). Elsewhere:
    the process's lifetime peak (``ru_maxrss``), flagged with ``peak_memory_lifetime`` = 1.
    """

    def __init__(self, device: torch.device, interval_s: float = 0.01) -> None:
        self.device = device
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.start_rss = _rss_bytes()
        self.peak_rss = self.start_rss or 0

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        elif self.start_rss is not None:
            self._thread = threading.Thread(target=self._sample, name="kdgrid-peak-rss", daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            rss = _rss_bytes()
            if rss is not None and rss > self.peak_rss:
                self.peak_rss = rss

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def rows(self) -> dict[str, float]:
        if self.device.type == "cuda":
            return {"peak_memory_mb": torch.cuda.max_memory_allocated(self.device) / 2**20}
        if self.start_rss is not None:
            rss = _rss_bytes()
            peak = max(self.peak_rss, rss or 0)
            return {"peak_memory_mb": peak / 2**20, "rss_start_mb": self.start_rss / 2**20}
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return {"peak_memory_mb": rss / 2**20 if sys.platform == "darwin" else rss / 2**10, "peak_memory_lifetime": 1.0}
