"""The distillation loop of one stage: student and objective trained against a frozen teacher."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from kdgrid.errors import RunFailed
from kdgrid.records import MetricRow, metric_row, metric_rows
from kdgrid.train.activation_cache import ActivationCache
from kdgrid.train.capture import QKV, capture_qkv
from kdgrid.train.evaluate import evaluate
from kdgrid.train.models import model_inputs
from kdgrid.train.objectives import Captured, DistillObjective, Stage
from kdgrid.train.optim import adamw, keep_freed_memory
from kdgrid.train.optim import warmup_decay as _linear_warmup

ProgressFn = Callable[[str, int, int, int], None]
EpochFn = Callable[[str, int, dict[str, float]], None]  # (stage, epoch, dev metrics) after each evaluation


@dataclass
class StageSettings:
    stage: Stage
    epochs: int
    lr: float
    weight_decay: float
    warmup_ratio: float
    max_grad_norm: float
    task: str
    evaluate_each_epoch: bool = True
    # Stage 1 of two-stage training leaves the classifier untrained: scoring it on dev costs a pass and says little.
    evaluate_last_epoch: bool = True
    metrics: tuple[str, ...] = ()  # registered metrics scored besides the task's (RunConfig.metrics)


def _optimizer(student: nn.Module, objective: DistillObjective, s: StageSettings) -> torch.optim.Optimizer:
    """The student's AdamW (kdgrid.train.optim: the weight-decay rule shared with teacher fine-tuning), with the
    objective's own parameters (W_h, plug-in terms, the learnable mapping) in their groups."""
    return adamw(student, s.lr, s.weight_decay, objective.param_groups(s.lr))


class TeacherOutputs:
    """Where the teacher's outputs for a batch come from: precomputed tables, or a forward pass.

    ``cached_logits``: the logit table (kdgrid.train.teacher_cache); ``activations``: the stored layer
    activations (kdgrid.train.activation_cache). The teacher is not run when the logits are cached and the
    objective reads no layer, or reads only layers the activation cache holds.
    Inside ``with teacher_outputs.capturing():`` the Q/K/V hooks stay registered for the whole block
    (train_stage: one epoch) instead of being added and removed around every forward.
    """

    def __init__(
        self,
        teacher: nn.Module,
        objective: DistillObjective,
        device: torch.device,
        cached_logits: torch.Tensor | None,
        activations: ActivationCache | None = None,
    ) -> None:
        self.teacher = teacher
        self.objective = objective
        self.device = device
        reads_layers = objective.needs_hidden_states() or objective.needs_qkv()
        self.activations = activations if cached_logits is not None else None
        # The table moves to the device once, not one slice per step; a table without the layers is not used.
        use_table = cached_logits is not None and (not reads_layers or self.activations is not None)
        self.cached_logits = cached_logits.to(device) if use_table and cached_logits is not None else None
        self.layers = sorted(objective.teacher_layers_needed()) if objective.needs_qkv() else []
        self._qkv: dict[int, QKV] | None = None

    @contextlib.contextmanager
    def capturing(self) -> Iterator[None]:
        if self.cached_logits is not None or not self.layers:
            yield
            return
        with capture_qkv(self.teacher, self.layers) as qkv:
            self._qkv = qkv
            try:
                yield
            finally:
                self._qkv = None

    @torch.no_grad()
    def __call__(self, batch: dict[str, torch.Tensor], inputs: dict[str, torch.Tensor]) -> Captured:
        if self.cached_logits is not None:
            ids = batch["example_ids"]
            logits = self.cached_logits[ids.to(self.device, non_blocking=True)]
            if self.activations is not None:
                return self.activations.captured(ids, batch["attention_mask"], inputs["attention_mask"], logits)
            return Captured(logits=logits, hidden_states=None, qkv={}, attention_mask=inputs["attention_mask"])
        with (
            contextlib.nullcontext(self._qkv)
            if self._qkv is not None
            else capture_qkv(self.teacher, self.layers) as qkv
        ):
            out = self.teacher(**inputs, output_hidden_states=self.objective.needs_hidden_states())
            captured = dict(qkv)
            qkv.clear()
        return Captured(
            logits=out.logits, hidden_states=out.hidden_states, qkv=captured, attention_mask=inputs["attention_mask"]
        )


def student_forward(
    student: nn.Module, objective: DistillObjective, inputs: dict[str, torch.Tensor], qkv: dict[int, QKV] | None = None
) -> Captured:
    """The student's outputs; ``qkv``: the dict of hooks already registered by ``capture_qkv`` (else per call)."""
    if qkv is None:
        layers = sorted(objective.student_layers_needed()) if objective.needs_qkv() else []
        with capture_qkv(student, layers) as fresh:
            return student_forward(student, objective, inputs, fresh)
    out = student(**inputs, output_hidden_states=objective.needs_hidden_states())
    captured = dict(qkv)
    qkv.clear()  # the next forward refills it; no reference to this step's tensors stays behind
    return Captured(
        logits=out.logits, hidden_states=out.hidden_states, qkv=captured, attention_mask=inputs["attention_mask"]
    )


class _LossSums:
    """Per-epoch sums of the loss terms on the device, in float64: the same numbers as summing Python
    floats, with no host-device sync per step. One stack and one in-place add per step (not a cast and an
    add per term: fewer kernel launches on an accelerator); read once per epoch."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.total: torch.Tensor | None = None
        self.n_batches = 0

    def add(self, terms: dict[str, torch.Tensor]) -> None:
        # torch.stack promotes mixed dtypes (bf16/fp16 terms under autocast) exactly to the widest one.
        step = torch.stack([v.detach() for v in terms.values()])
        if self.total is None:
            self.names = list(terms)
            self.total = step.to(torch.float64)
        else:
            if list(terms) != self.names:  # an objective returns the same terms every step
                raise RuntimeError(f"loss terms changed within an epoch: {self.names} -> {list(terms)}")
            self.total.add_(step)
        self.n_batches += 1

    def means(self) -> dict[str, float]:
        values = self.total.tolist() if self.total is not None else []
        return {k: v / max(1, self.n_batches) for k, v in zip(self.names, values)}


class _FiniteCheck:
    """Stop at the first non-finite loss, without a host-device sync per step on an accelerator.

    CPU: checked at once. CUDA: the loss is copied to pinned host memory without blocking and checked
    one step later (its copy is done by then, and the GPU is already busy with the next step), so the
    run stops one optimiser step later with the same message and step number.
    """

    def __init__(self, device: torch.device, stage: str) -> None:
        self.stage = stage
        self.lagged = device.type == "cuda"
        self.pending: tuple[int, int] | None = None
        if self.lagged:
            self.host = torch.empty((), dtype=torch.float32, pin_memory=True)
            self.event = torch.cuda.Event()

    def __call__(self, loss: torch.Tensor, epoch: int, step: int) -> None:
        if not self.lagged:
            value = float(loss.detach())
            if not math.isfinite(value):
                self._fail(value, epoch, step)
            return
        self.flush()  # the previous step's copy: done long ago on the device
        self.host.copy_(loss.detach(), non_blocking=True)
        self.event.record()
        self.pending = (epoch, step)

    def flush(self) -> None:
        if self.pending is None:
            return
        epoch, step = self.pending
        self.pending = None
        self.event.synchronize()
        value = float(self.host)
        if not math.isfinite(value):
            self._fail(value, epoch, step)

    def _fail(self, value: float, epoch: int, step: int) -> None:
        raise RunFailed(f"loss became {value} at stage {self.stage}, epoch {epoch}, step {step}")


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
    on_epoch: EpochFn | None = None,
) -> tuple[list[MetricRow], float]:
    """Train for ``settings.epochs``; return metric rows (per-epoch loss terms, dev metrics, mapping weights)
    and the training time in seconds (evaluation excluded).

    The step does no host-device synchronisation: loss terms are summed on the device and read once per
    epoch; the finiteness check is lagged by one step on CUDA (:class:`_FiniteCheck`).
    """
    rows: list[MetricRow] = []
    if device.type == "cpu":
        keep_freed_memory()
    total = settings.epochs * steps_per_epoch
    opt = _optimizer(student, objective, settings)
    sched = _linear_warmup(opt, total, settings.warmup_ratio)
    # The mapping's logits are not clipped with the student: a large student gradient must not shrink their steps.
    params = [p for g in opt.param_groups if "schedule" not in g for p in g["params"]]
    check = _FiniteCheck(device, settings.stage)
    s_layers = sorted(objective.student_layers_needed()) if objective.needs_qkv() else []
    train_time = 0.0
    step = 0
    student.train()
    objective.train()
    rows += _mapping_rows(objective, settings.stage, 0, 0)  # the start, to see how far it moved
    for epoch in range(1, settings.epochs + 1):
        sums = _LossSums()
        t0 = time.perf_counter()
        with capture_qkv(student, s_layers) as s_qkv, teacher_outputs.capturing():
            for batch in train_batches(epoch):
                inputs = model_inputs(batch, device)
                labels = batch["labels"].to(device, non_blocking=True)
                with autocast():
                    t_out = teacher_outputs(batch, inputs)
                    s_out = student_forward(student, objective, inputs, s_qkv)
                    # Indices stay where the loader made them: only the contrastive loss reads them (and moves them).
                    terms = objective(s_out, t_out, labels, batch["indices"])
                loss = terms["loss"]
                check(loss, epoch, step)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, settings.max_grad_norm)
                opt.step()
                sched.step()
                sums.add(terms)
                step += 1
                if on_progress is not None:
                    on_progress(settings.stage, epoch, step, total)
            check.flush()
        means = sums.means()
        train_time += time.perf_counter() - t0
        rows += [
            metric_row(settings.stage, "train", f"loss.{k}" if k != "loss" else "loss", v, epoch=epoch, step=step)
            for k, v in means.items()
        ]
        if settings.evaluate_each_epoch or (settings.evaluate_last_epoch and epoch == settings.epochs):
            dev = evaluate(student, dev_loader, settings.task, device, settings.metrics)
            rows += metric_rows(dev, settings.stage, "dev", epoch=epoch, step=step)
            if on_epoch is not None:
                # A search prunes a trial by raising here: the exception must reach the caller unchanged.
                on_epoch(settings.stage, epoch, dict(dev))
        rows += _mapping_rows(objective, settings.stage, epoch, step)
    return rows, train_time


def _mapping_rows(objective: Any, stage: Stage, epoch: int, step: int) -> list[MetricRow]:
    """The learnable mapping's weights w[m, k] as metric rows ``sM.tK`` (none for a fixed mapping)."""
    weights = objective.mapping_weights()
    if weights is None:
        return []
    w = weights.detach().cpu()
    return [
        metric_row(stage, "mapping", f"s{m + 1}.t{k + 1}", float(w[m, k]), epoch=epoch, step=step)
        for m in range(w.shape[0])
        for k in range(w.shape[1])
    ]
