"""The distillation loop of one stage: student and objective trained against a frozen teacher."""

from __future__ import annotations

import contextlib
import os
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from kdgrid.errors import RunFailed
from kdgrid.train.capture import capture_qkv
from kdgrid.train.evaluate import evaluate, model_inputs
from kdgrid.train.objectives import Captured, DistillObjective

ProgressFn = Callable[[str, int, int, int], None]


@dataclass
class StageSettings:
    stage: str  # 'joint' | 'intermediate' | 'prediction'
    epochs: int
    lr: float
    weight_decay: float
    warmup_ratio: float
    max_grad_norm: float
    task: str
    evaluate_each_epoch: bool = True


def _fault(kind: str) -> bool:
    """Test-only fault injection: KDGRID_FAULT=nan|crash|hang (see tests and docs)."""
    return os.environ.get("KDGRID_FAULT") == kind


def _optimizer(student: nn.Module, objective: DistillObjective, s: StageSettings) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for name, p in student.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 or "LayerNorm" in name or "bias" in name else decay).append(p)
    groups: list[dict[str, Any]] = [
        {"params": decay, "weight_decay": s.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
        *objective.param_groups(s.lr),
    ]
    groups = [g for g in groups if g["params"]]
    fused = all(p.is_cuda for g in groups for p in g["params"])
    return torch.optim.AdamW(groups, lr=s.lr, fused=fused or None)


def _linear_warmup(opt: torch.optim.Optimizer, total: int, warmup_ratio: float) -> torch.optim.lr_scheduler.LambdaLR:
    warm = int(total * warmup_ratio)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / max(1, warm)
        return max(0.0, (total - step) / max(1, total - warm))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


class TeacherOutputs:
    """Where the teacher's outputs for a batch come from: a precomputed logit table, or a forward pass."""

    def __init__(self, teacher: nn.Module, objective: DistillObjective, device: torch.device,
                 cached_logits: torch.Tensor | None) -> None:
        self.teacher = teacher
        self.objective = objective
        self.device = device
        self.cached_logits = cached_logits
        self.layers = sorted(objective.teacher_layers_needed()) if objective.needs_qkv() else []

    @torch.no_grad()
    def __call__(self, batch: dict[str, torch.Tensor], inputs: dict[str, torch.Tensor]) -> Captured:
        if self.cached_logits is not None:
            logits = self.cached_logits[batch["example_ids"]].to(self.device)
            return Captured(logits=logits, hidden_states=None, qkv={}, attention_mask=inputs["attention_mask"])
        with capture_qkv(self.teacher, self.layers) as qkv:
            out = self.teacher(**inputs, output_hidden_states=self.objective.needs_hidden_states())
        return Captured(logits=out.logits, hidden_states=out.hidden_states, qkv=dict(qkv),
                        attention_mask=inputs["attention_mask"])


def student_forward(student: nn.Module, objective: DistillObjective, inputs: dict[str, torch.Tensor]) -> Captured:
    layers = sorted(objective.student_layers_needed()) if objective.needs_qkv() else []
    with capture_qkv(student, layers) as qkv:
        out = student(**inputs, output_hidden_states=objective.needs_hidden_states())
    return Captured(logits=out.logits, hidden_states=out.hidden_states, qkv=dict(qkv),
                    attention_mask=inputs["attention_mask"])


def train_stage(
    student: nn.Module,
    objective: DistillObjective,
    teacher_outputs: TeacherOutputs,
    train_batches: Callable[[int], Iterable[dict[str, torch.Tensor]]],
    steps_per_epoch: int,
    dev_loader: Iterable[dict[str, torch.Tensor]],
    settings: StageSettings,
    device: torch.device,
    on_progress: ProgressFn | None = None,
    autocast: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext,
) -> tuple[list[dict[str, Any]], float]:
    """Train for ``settings.epochs``; return metric rows (per-epoch loss terms, dev metrics, mapping weights)
    and the training time in seconds (evaluation excluded)."""
    rows: list[dict[str, Any]] = []
    total = settings.epochs * steps_per_epoch
    opt = _optimizer(student, objective, settings)
    sched = _linear_warmup(opt, total, settings.warmup_ratio)
    params = [p for g in opt.param_groups for p in g["params"]]
    train_time = 0.0
    step = 0
    student.train()
    objective.train()
    for epoch in range(1, settings.epochs + 1):
        sums: dict[str, float] = defaultdict(float)
        n_batches = 0
        t0 = time.perf_counter()
        for batch in train_batches(epoch):
            inputs = model_inputs(batch, device)
            labels = batch["labels"].to(device)
            with autocast():
                t_out = teacher_outputs(batch, inputs)
                s_out = student_forward(student, objective, inputs)
                terms = objective(s_out, t_out, labels, batch["indices"].to(device))
            loss = terms["loss"]
            if _fault("nan") and step == 1:
                loss = loss * float("nan")
            if not torch.isfinite(loss):
                raise RunFailed(f"loss became {loss.item()} at stage {settings.stage}, epoch {epoch}, step {step}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, settings.max_grad_norm)
            opt.step()
            sched.step()
            for k, v in terms.items():
                sums[k] += float(v.detach())
            n_batches += 1
            step += 1
            if on_progress is not None:
                on_progress(settings.stage, epoch, step, total)
        train_time += time.perf_counter() - t0
        base = {"stage": settings.stage, "epoch": epoch, "step": step}
        rows += [{**base, "split": "train", "name": f"loss.{k}" if k != "loss" else "loss", "value": v / max(1, n_batches)}
                 for k, v in sums.items()]
        if settings.evaluate_each_epoch or epoch == settings.epochs:
            for k, v in evaluate(student, dev_loader, settings.task, device).items():
                rows.append({**base, "split": "dev", "name": k, "value": v})
        weights = objective.mapping_weights()
        if weights is not None:
            w = weights.detach().cpu()
            rows += [{**base, "split": "mapping", "name": f"s{m + 1}.t{k + 1}", "value": float(w[m, k])}
                     for m in range(w.shape[0]) for k in range(w.shape[1])]
    return rows, train_time
