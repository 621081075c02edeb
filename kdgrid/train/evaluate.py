"""Evaluation on the dev set and efficiency measurements of a trained student."""

from __future__ import annotations

import os
import resource
import sys
import threading
import time
from collections.abc import Iterable, Sequence

import numpy as np
import torch
from torch import nn

from kdgrid.tasks import compute_metrics, get_task
from kdgrid.train.models import model_inputs


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
) -> dict[str, float]:
    """Latency of one batch and examples/s at a fixed batch and length, the same protocol for every shape.

    fp32 (no autocast), eval mode, the same token ids for every model; ``warmup`` untimed passes
    (allocations, kernel selection), then timed passes until both ``min_repeats`` passes and
    ``min_seconds`` are reached (at most ``max_repeats``): the median. The thread count it ran
    with is recorded (``bench_threads``), since on a CPU it decides the figure as much as the shape.
    """
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
    return {
        "latency_ms": 1000 * latency,
        "throughput_ex_s": batch_size / latency,
        "bench_batch_size": float(batch_size),
        "bench_seq_len": float(seq_len),
        "bench_repeats": float(len(times)),
        "bench_threads": float(torch.get_num_threads()),
    }


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
