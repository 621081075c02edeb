"""The frozen teacher's logits, computed once per (teacher, task data, max length) and reused.

During distillation the teacher is in eval mode, so its logits for an example are the
same every epoch and in every run that shares the teacher; only the rows a run has not
seen before are computed. What layer objectives read inside the teacher (Q/K, V, hidden states)
is stored separately, per layer, by :mod:`kdgrid.train.activation_cache`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from filelock import FileLock
from torch import nn

from kdgrid.train.data import Collator, TokenizedSet, length_batches
from kdgrid.train.models import model_inputs


def _cache_file(cache_root: Path, teacher_key: str, data: TokenizedSet, precision: str = "fp32") -> Path:
    # The tokenized split is identified by its size and a checksum of its token ids; the precision the
    # teacher ran at is part of the name, so bf16 and fp32 tables never mix.
    digest = f"{len(data)}-{int(np.asarray(data.ids, dtype=np.int64).sum()) % 10**12}"
    suffix = "" if precision == "fp32" else f"-{precision}"
    return cache_root / "teacher_logits" / f"{teacher_key}-{digest}{suffix}.pt"


@torch.no_grad()
def cached_teacher_logits(
    teacher: nn.Module,
    teacher_key: str,
    full: TokenizedSet,
    positions: np.ndarray,
    cache_root: Path,
    device: torch.device,
    pad_id: int,
    batch_size: int = 128,
    max_tokens: int | None = None,
    precision: str = "fp32",
    autocast: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext,
) -> torch.Tensor:
    """A [len(full), C] table of teacher logits, filled at least at ``positions`` (CPU tensor).

    The teacher runs under ``autocast`` (the run's ``train.precision``), as it does uncached in the
    training loop, so a run gets the same teacher logits with or without the cache (stored as fp32).

    Missing rows are computed longest first in batches of at most ``batch_size`` rows and ``max_tokens``
    token slots (default: 2048 on CPU, where compute grows with padded tokens and a batch of 32 rows is
    as fast per row as one of 128; 32768 on an accelerator, where fewer, bigger batches win).
    """
    path = _cache_file(cache_root, teacher_key, full, precision)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        config: Any = cast(Any, teacher).config  # an HF classifier: nn.Module leaves .config untyped
        table, have = _load(path, len(full), int(config.num_labels))
        missing = np.asarray(positions)[~have[torch.as_tensor(positions)].numpy()]
        if len(missing):
            subset = full.subset(missing)
            collate = Collator(pad_id, is_regression=full.labels.dtype.kind == "f")
            budget = max_tokens or (2048 if torch.device(device).type == "cpu" else 32768)
            was_training = teacher.training
            teacher.eval()
            outs: list[torch.Tensor] = []
            order: list[np.ndarray] = []
            for rows in length_batches(subset.lengths, batch_size, budget):
                batch = collate([subset[int(i)] for i in rows])
                with autocast():
                    outs.append(teacher(**model_inputs(batch, device)).logits.float())
                order.append(rows)
            teacher.train(was_training)
            rows_all = torch.as_tensor(missing[np.concatenate(order)])
            table[rows_all] = torch.cat(outs).cpu()
            have[rows_all] = True
            _save(path, table, have)
    return table


def add_teacher_logits(
    teacher_key: str,
    full: TokenizedSet,
    rows: np.ndarray,
    logits: torch.Tensor,
    cache_root: Path,
    precision: str = "fp32",
) -> None:
    """Put logits the caller computed anyway (kdgrid.train.activation_cache's fill runs the same teacher
    under the same autocast) into the table, for the rows it does not hold yet: the table is then filled
    without a second teacher pass."""
    path = _cache_file(cache_root, teacher_key, full, precision)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        table, have = _load(path, len(full), logits.size(-1))
        idx = torch.as_tensor(np.asarray(rows, dtype=np.int64))
        new = ~have[idx]
        if bool(new.any()):
            table[idx[new]] = logits[new].float().cpu()
            have[idx[new]] = True
            _save(path, table, have)


def _load(path: Path, n_rows: int, n_out: int) -> tuple[torch.Tensor, torch.Tensor]:
    if path.is_file():
        table, have = torch.load(path, weights_only=True).values()
        return table, have
    return torch.zeros(n_rows, n_out), torch.zeros(n_rows, dtype=torch.bool)


def _save(path: Path, table: torch.Tensor, have: torch.Tensor) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save({"table": table, "have": have}, tmp)
    os.replace(tmp, path)
