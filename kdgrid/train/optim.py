"""The one optimiser and learning-rate schedule of kdgrid: teacher fine-tuning and student distillation share them.

Weight decay (BERT's recipe, one rule for every model kdgrid trains): AdamW decays every parameter **except**
biases, LayerNorm weights (named ``LayerNorm`` in BERT-style models, ``layer_norm`` in others) and any parameter
with fewer than two dimensions. The rule is :func:`decays`.

Schedule: linear warm-up over the first ``int(total * warmup_ratio)`` steps (the first step already uses
``lr / warm``, never 0), then linear decay to 0 at ``total``. A group with a ``schedule`` key (the learnable
mapping's) follows its own: ``constant`` or ``warmup`` (then constant).

AdamW is torch's fused kernel wherever torch has one (CUDA; CPU since torch 2.4): the same update as the
default per-tensor loop up to rounding in the last bit, and 5-6x faster per step on CPU, where updating BERT's
30k-row embedding matrix was a third of a student's step (bench/step_efficiency.py).

On a CPU both trainers also call :func:`keep_freed_memory` (glibc keeps the 47 MB embedding gradient it would
otherwise unmap and page-fault in again every step): part of the step recipe, not of the maths.

Teachers cached by kdgrid 0.2 (``TEACHER_RECIPE`` 1 in :mod:`kdgrid.train.models`) were fine-tuned with their
own copy of this code: non-fused AdamW and a warm-up of ``ceil(total * warmup_ratio)`` steps.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

NO_DECAY_NAMES = ("bias", "LayerNorm", "layer_norm")


def decays(name: str, param: torch.Tensor) -> bool:
    """Whether AdamW's weight decay applies to this parameter (the module docstring's rule)."""
    return param.ndim >= 2 and not any(part in name for part in NO_DECAY_NAMES)


def decay_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """The trainable parameters of ``model`` in two AdamW groups: with ``weight_decay``, and without."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (decay if decays(name, p) else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def fused_supported(params: list[nn.Parameter]) -> bool:
    """Fused AdamW (one kernel over all tensors) where torch has it: CUDA, and CPU since torch 2.4."""
    try:
        from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

        supported = set(_get_fused_kernels_supported_devices())
    except Exception:  # a private helper: fall back to what has always been fused
        supported = {"cuda"}
    kinds = {p.device.type for p in params}
    return len(kinds) == 1 and kinds <= supported and all(p.is_floating_point() for p in params)


def adamw(
    model: nn.Module, lr: float, weight_decay: float, extra_groups: Iterable[dict[str, Any]] = ()
) -> torch.optim.Optimizer:
    """AdamW over ``model``'s trainable parameters (:func:`decay_groups`), then ``extra_groups`` as given
    (e.g. a distillation objective's own parameters); empty groups are dropped. Fused where supported."""
    groups = [g for g in [*decay_groups(model, weight_decay), *extra_groups] if g["params"]]
    if fused_supported([p for g in groups for p in g["params"]]):
        try:
            return torch.optim.AdamW(groups, lr=lr, fused=True)
        except (RuntimeError, ValueError):
            pass
    return torch.optim.AdamW(groups, lr=lr)


def warmup_decay_factor(total: int, warmup_ratio: float) -> Callable[[int], float]:
    """The lr multiplier at optimiser step ``step`` (0-based): linear warm-up, then linear decay to 0."""
    warm = int(total * warmup_ratio)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / max(1, warm)
        return max(0.0, (total - step) / max(1, total - warm))

    return factor


def warmup_decay(opt: torch.optim.Optimizer, total: int, warmup_ratio: float) -> torch.optim.lr_scheduler.LambdaLR:
    """:func:`warmup_decay_factor` for every group, except a group with a ``schedule`` key, which follows its
    own: 'constant' (its lr throughout) or 'warmup' (the same warm-up, then constant), so the learnable
    mapping can still move in the last steps of a stage, when the student's lr is near 0."""
    warm = int(total * warmup_ratio)
    factor = warmup_decay_factor(total, warmup_ratio)

    def warmup_only(step: int) -> float:
        return (step + 1) / max(1, warm) if step < warm else 1.0

    def constant(step: int) -> float:
        return 1.0

    own = {"constant": constant, "warmup": warmup_only}
    return torch.optim.lr_scheduler.LambdaLR(
        opt, [own[g["schedule"]] if "schedule" in g else factor for g in opt.param_groups]
    )


# glibc's mallopt parameters (malloc.h) and the values set by keep_freed_memory.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD, _TRIM_THRESHOLD = 256 << 20, 1 << 30
_malloc_tuned = False


def keep_freed_memory() -> bool:
    """Let glibc keep large freed blocks in the process instead of unmapping them (once per process, Linux).

    Why: glibc serves a block above its mmap threshold (at most 32 MiB by default) with a fresh mmap and
    unmaps it on free. A CPU training step frees and reallocates the student's dense word-embedding gradient
    (30,522 x 384 floats, 47 MB: ``embedding_dense_backward`` makes a new one every step), so every step
    page-faulted and zeroed 47 MB in the kernel: ~26 ms of CPU a step, 8% of a vanilla-KD step's CPU time
    on a loaded 2-core VM (bench/profile_step.py --compare; bench/README.md section 9). With
    the thresholds raised (256 MiB, 1 GiB) the block is reused from the heap. The maths is untouched; the
    process keeps up to its peak memory. Explicit ``MALLOC_MMAP_THRESHOLD_``/``MALLOC_TRIM_THRESHOLD_``
    settings win; elsewhere than glibc this does nothing. Returns whether the thresholds were set.
    """
    global _malloc_tuned
    if _malloc_tuned:
        return True
    if not sys.platform.startswith("linux") or any(
        k in os.environ for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")
    ):
        return False
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):  # no C library by that name, or one without mallopt (not glibc)
        return False
    _malloc_tuned = bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)) & bool(
        mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)
    )
    return _malloc_tuned
