"""Evaluation on the dev set and efficiency measurements of a trained student."""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from torch import nn

from kdgrid.tasks import compute_metrics, get_task
from kdgrid.train.models import model_inputs


@torch.no_grad()
def predict(model: nn.Module, loader: Iterable[dict[str, torch.Tensor]], device: torch.device) -> tuple[np.ndarray, np.ndarray]:
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


def evaluate(model: nn.Module, loader: Iterable[dict[str, torch.Tensor]], task: str, device: torch.device) -> dict[str, float]:
    """The task's official GLUE metrics on a dev loader."""
    logits, labels = predict(model, loader, device)
    spec = get_task(task)
    preds = logits[:, 0] if spec.is_regression else logits.argmax(-1)
    return compute_metrics(task, preds, labels)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def inference_speed(
    model: nn.Module, *, vocab_size: int, device: torch.device, batch_size: int = 32, seq_len: int = 64, repeats: int = 5
) -> dict[str, float]:
    """Latency of one batch and examples/s at a fixed batch and length (median of ``repeats``)."""
    was_training = model.training
    model.eval()
    gen = torch.Generator().manual_seed(0)
    # Skip the low ids where BERT vocabularies keep special and unused tokens.
    ids = torch.randint(min(1000, vocab_size // 2), vocab_size, (batch_size, seq_len), generator=gen).to(device)
    mask = torch.ones_like(ids)
    model(input_ids=ids, attention_mask=mask)  # warm-up (allocations, kernel selection)
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        model(input_ids=ids, attention_mask=mask)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    model.train(was_training)
    latency = float(np.median(times))
    return {"latency_ms": 1000 * latency, "throughput_ex_s": batch_size / latency,
            "bench_batch_size": float(batch_size), "bench_seq_len": float(seq_len)}


def peak_memory_mb(device: torch.device) -> float:
    """Peak GPU memory of this process, or its peak resident set size on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


def metric_rows(values: dict[str, Any], **fields: Any) -> list[dict[str, Any]]:
    return [{**fields, "name": k, "value": float(v)} for k, v in values.items()]
