"""The frozen teacher's logits, computed once per (teacher, task data, max length) and reused.

During distillation the teacher is in eval mode, so its logits for an example are the
same every epoch and in every run that shares the teacher; only the rows a run has not
seen before are computed. Attention maps are far too large to cache (about 4.7 MB per
example at length 128) and are always recomputed.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from filelock import FileLock
from torch import nn

from kdgrid.train.data import TokenizedSet, make_loader
from kdgrid.train.evaluate import model_inputs


def _cache_file(cache_root: Path, teacher_key: str, data: TokenizedSet) -> Path:
    # The tokenized split is identified by its size and a checksum of its token ids.
    digest = f"{len(data)}-{int(np.asarray(data.ids, dtype=np.int64).sum()) % 10**12}"
    return cache_root / "teacher_logits" / f"{teacher_key}-{digest}.pt"


@torch.no_grad()
def cached_teacher_logits(
    teacher: nn.Module, teacher_key: str, full: TokenizedSet, positions: np.ndarray,
    cache_root: Path, device: torch.device, pad_id: int, batch_size: int = 128,
) -> torch.Tensor:
    """A [len(full), C] table of teacher logits, filled at least at ``positions`` (CPU tensor)."""
    path = _cache_file(cache_root, teacher_key, full)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        if path.is_file():
            table, have = torch.load(path, weights_only=True).values()
        else:
            n_out = teacher.config.num_labels
            table = torch.zeros(len(full), n_out)
            have = torch.zeros(len(full), dtype=torch.bool)
        missing = np.asarray(positions)[~have[torch.as_tensor(positions)].numpy()]
        if len(missing):
            subset = full.subset(missing)
            loader = make_loader(subset, batch_size, pad_token_id=pad_id, shuffle=False,
                                 is_regression=full.labels.dtype.kind == "f")
            teacher.eval()
            for batch in loader:
                logits = teacher(**model_inputs(batch, device)).logits.float().cpu()
                rows = torch.as_tensor(missing)[batch["indices"]]
                table[rows] = logits
                have[rows] = True
            tmp = path.with_suffix(".tmp")
            torch.save({"table": table, "have": have}, tmp)
            os.replace(tmp, path)
    return table
