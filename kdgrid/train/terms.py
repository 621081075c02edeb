"""The loss terms kdgrid registers (kdgrid.plugins.builtin), and the interface any term implements.

A term is a ``torch.nn.Module`` built as ``Term(settings, context)`` (:class:`TermContext`: the model
shapes, the mapped layer pairs, the shared W_h projection, the learnable mapping) and called as
``term(inputs)`` (:class:`TermInputs`: the captured student and teacher outputs of one batch) to return
one unweighted scalar; :class:`kdgrid.train.objectives.DistillObjective` weighs and sums them. A term
reads only what its spec's ``needs`` declares: kdgrid captures nothing else.

Per-layer terms are **summed over the mapped (student, teacher) layer pairs**, as in TinyBERT's
task_distill.py; with a learnable mapping the teacher side of student layer m is the mixture
Σ_k w_k(m)·X_T^k (hidden states and Att-MSE scores mix linearly; distributions mix as distributions).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from kdgrid.errors import KdgridError, PlanError
from kdgrid.train.capture import attention_scores
from kdgrid.train.losses import (
    ContrastiveMemory,
    attention_log_probs,
    attention_mse,
    hard_loss,
    hidden_mse,
    kd_soft_loss,
    masked_kl,
    mean_head_log_probs,
    regression_soft_loss,
    relation_heads_for,
    value_relation_log_probs,
)
from kdgrid.train.mappings import LearnableMapping

QKV = tuple[Tensor, Tensor, Tensor]
Pair = tuple[int, int | None]  # (student layer, teacher layer), 1-based; teacher None = learnable mixture


@dataclass
class Captured:
    logits: Tensor  # [B, C]; regression [B, 1]
    hidden_states: tuple[Tensor, ...] | None  # len L+1, index 0 = embeddings, each [B, T, D]
    qkv: dict[
        int, tuple[Tensor, Tensor, Tensor]
    ]  # 1-based layer -> (Q, K, V) each [B, H, T, d_head], pre-softmax inputs
    attention_mask: Tensor  # [B, T] 1 = token, 0 = pad


@dataclass
class TermContext:
    """What a term is built with (fixed for a stage)."""

    is_regression: bool
    n_teacher_layers: int
    n_student_layers: int
    teacher_hidden: int
    student_hidden: int
    teacher_heads: int
    student_heads: int
    num_train_examples: int
    pairs: list[Pair]
    projection: nn.Linear | None  # the shared W_h (d_S -> d_T), built when a term sets uses_projection
    learnable: LearnableMapping | None


@dataclass
class TermInputs:
    """One batch's captured outputs, as a term sees them."""

    student: Captured
    teacher: Captured
    labels: Tensor | None
    indices: Tensor | None
    pairs: list[Pair]
    learnable: LearnableMapping | None
    n_teacher_layers: int

    @property
    def mask(self) -> Tensor:
        return self.student.attention_mask

    def student_qkv(self, layer: int) -> QKV:
        return _qkv(self.student, layer, "student")

    def teacher_qkv(self, layer: int) -> QKV:
        return _qkv(self.teacher, layer, "teacher")

    def student_hidden(self, layer: int) -> Tensor:
        return _layer(_hidden(self.student, "student"), layer, "student")

    def teacher_hidden(self, layer: int) -> Tensor:
        return _layer(_hidden(self.teacher, "teacher"), layer, "teacher")

    def teacher_for(
        self,
        m: int,
        n: int | None,
        per_layer: Callable[[int], Tensor],
        cache: dict[int, Tensor],
        log_probs: bool = False,
    ) -> Tensor:
        """Teacher tensor for student layer m: ``per_layer(n)``, or the learnable mixture over all layers
        (``log_probs``: mix the distributions, for KL terms). ``cache`` holds per-layer tensors of this batch."""

        def get(k: int) -> Tensor:
            if k not in cache:
                cache[k] = per_layer(k)
            return cache[k]

        if n is not None:
            return get(n)
        if self.learnable is None:
            raise KdgridError(f"student layer {m} has no teacher layer and the mapping is not learnable")
        all_layers = range(1, self.n_teacher_layers + 1)
        if not log_probs:
            return self.learnable.mix([get(k) for k in all_layers], m)
        # Distributions: stack the T teacher maps once per batch, not once per student layer
        # (they are the largest tensors here); key 0 is free since teacher layers are 1-based.
        if 0 not in cache:
            cache[0] = torch.stack([per_layer(k) for k in all_layers], dim=0)
        return self.learnable.mix_log_probs(cache[0], m)


class LossTerm(nn.Module):
    """Base of a loss term. ``uses_projection``: the term reads ``context.projection`` (the shared W_h)."""

    uses_projection: ClassVar[bool] = False

    def __init__(self, settings: Any, context: TermContext) -> None:
        super().__init__()
        self.settings = settings
        self.context = context

    @classmethod
    def wants_projection(cls, settings: Any) -> bool:
        """Whether the objective must build the shared W_h for this term (override to decide by settings)."""
        return cls.uses_projection

    @classmethod
    def reads_teacher_padding(cls, settings: Any) -> bool:
        """Whether the term reads the teacher's layer outputs at padded positions (the activation cache
        stores real tokens only, so such a run recomputes the teacher; override when it does)."""
        return False

    def forward(self, x: TermInputs) -> Tensor:  # pragma: no cover - every term overrides it
        raise NotImplementedError


# ---------------------------------------------------------------------------------- prediction terms


class HardLoss(LossTerm):
    def forward(self, x: TermInputs) -> Tensor:
        if x.labels is None:
            raise KdgridError("the hard loss (prediction.beta < 1) needs labels")
        return hard_loss(x.student.logits, x.labels, self.context.is_regression)


class SoftLoss(LossTerm):
    def forward(self, x: TermInputs) -> Tensor:
        if self.context.is_regression:
            return regression_soft_loss(x.student.logits, x.teacher.logits)
        return kd_soft_loss(x.student.logits, x.teacher.logits, self.settings.temperature, self.settings.t_squared)


# ---------------------------------------------------------------------------------- layer terms


class AttentionMse(LossTerm):
    @classmethod
    def reads_teacher_padding(cls, settings: Any) -> bool:
        # TinyBERT's original mean keeps padded query rows, whose scores against real keys are not 0.
        return bool(settings.padding == "tinybert")

    def forward(self, x: TermInputs) -> Tensor:
        cache: dict[int, Tensor] = {}
        total = x.mask.new_zeros((), dtype=torch.float32)
        for m, n in x.pairs:
            s_q, s_k, _ = x.student_qkv(m)
            t_scores = x.teacher_for(m, n, lambda k: attention_scores(*x.teacher_qkv(k)[:2]), cache)
            total = total + attention_mse(
                attention_scores(s_q, s_k), t_scores, x.mask, self.settings.head_match, self.settings.padding
            )
        return total


class AttentionKl(LossTerm):
    def forward(self, x: TermInputs) -> Tensor:
        mask = x.mask
        mean = self.settings.head_match == "mean"

        def teacher_lp(k: int) -> Tensor:
            t_q, t_k, _ = x.teacher_qkv(k)
            lp = attention_log_probs(t_q, t_k, mask)
            return mean_head_log_probs(lp) if mean else lp

        cache: dict[int, Tensor] = {}
        total = mask.new_zeros((), dtype=torch.float32)
        for m, n in x.pairs:
            s_q, s_k, _ = x.student_qkv(m)
            s_lp = attention_log_probs(s_q, s_k, mask)
            s_lp = mean_head_log_probs(s_lp) if mean else s_lp
            t_lp = x.teacher_for(m, n, teacher_lp, cache, log_probs=True)
            _same_heads(s_lp, t_lp, "attention 'kl'")
            total = total + masked_kl(t_lp, s_lp, mask)
        return total


class ValueKl(LossTerm):
    def __init__(self, settings: Any, context: TermContext) -> None:
        super().__init__(settings, context)
        # head_match 'mean': MiniLMv2 relation heads (the re-split is the identity when head counts are equal).
        self.relation_heads: int | None = None
        if settings.head_match == "mean":
            self.relation_heads = relation_heads_for(
                context.student_heads, context.teacher_heads, context.student_hidden, context.teacher_hidden
            )

    def forward(self, x: TermInputs) -> Tensor:
        mask = x.mask
        r = self.relation_heads
        cache: dict[int, Tensor] = {}
        total = mask.new_zeros((), dtype=torch.float32)
        for m, n in x.pairs:
            s_lp = value_relation_log_probs(x.student_qkv(m)[2], mask, r)
            t_lp = x.teacher_for(
                m, n, lambda k: value_relation_log_probs(x.teacher_qkv(k)[2], mask, r), cache, log_probs=True
            )
            _same_heads(s_lp, t_lp, "value 'kl'")
            total = total + masked_kl(t_lp, s_lp, mask)
        return total


class _HiddenMse(LossTerm):
    uses_projection = True
    cls_only: ClassVar[bool] = False

    def forward(self, x: TermInputs) -> Tensor:
        # Hid-CLS reads position 0 only: slice before mixing so a learnable map mixes [B, 1, D], not [B, T, D].
        cut: Callable[[Tensor], Tensor] = (lambda h: h[:, :1]) if self.cls_only else (lambda h: h)
        cache: dict[int, Tensor] = {}
        total = x.mask.new_zeros((), dtype=torch.float32)
        for m, n in x.pairs:
            t = x.teacher_for(m, n, lambda k: cut(x.teacher_hidden(k)), cache)
            total = total + hidden_mse(cut(x.student_hidden(m)), t, self.context.projection, x.mask, self.cls_only)
        return total


class HiddenCls(_HiddenMse):
    cls_only = True


class HiddenSeq(_HiddenMse):
    cls_only = False


class HiddenContrast(LossTerm):
    """The [CLS] vectors of all mapped student layers concatenated (likewise the teacher's) into one
    :class:`ContrastiveMemory`: one memory bank per model instead of one per layer pair."""

    def __init__(self, settings: Any, context: TermContext, contrast_dim: int = 128) -> None:
        super().__init__(settings, context)
        n_pairs = len(context.pairs)
        self.contrast = ContrastiveMemory(
            n_pairs * context.student_hidden,
            n_pairs * context.teacher_hidden,
            context.num_train_examples,
            embed_dim=contrast_dim,
            temperature=settings.temperature,
            momentum=settings.momentum,
            negatives=settings.negatives,
        )

    def forward(self, x: TermInputs) -> Tensor:
        cache: dict[int, Tensor] = {}
        s_cls = [x.student_hidden(m)[:, 0] for m, _ in x.pairs]
        t_cls = [x.teacher_for(m, n, lambda k: x.teacher_hidden(k)[:, 0], cache) for m, n in x.pairs]
        loss: Tensor = self.contrast(torch.cat(s_cls, dim=-1), torch.cat(t_cls, dim=-1), x.indices)
        return loss


class EmbeddingMse(LossTerm):
    uses_projection = True

    def forward(self, x: TermInputs) -> Tensor:
        return hidden_mse(x.student_hidden(0), x.teacher_hidden(0), self.context.projection, x.mask, cls_only=False)


# ---------------------------------------------------------------------------------- helpers


def _qkv(c: Captured, layer: int, who: str) -> QKV:
    if layer not in c.qkv:
        raise KdgridError(f"{who} Q/K/V of layer {layer} were not captured (captured: {sorted(c.qkv)})")
    return c.qkv[layer]


def _hidden(c: Captured, who: str) -> tuple[Tensor, ...]:
    if c.hidden_states is None:
        raise KdgridError(f"the objective needs the {who}'s hidden states (output_hidden_states=True)")
    return c.hidden_states


def _layer(hidden_states: tuple[Tensor, ...], layer: int, who: str) -> Tensor:
    if not 0 <= layer < len(hidden_states):
        raise KdgridError(f"{who} has no hidden state for layer {layer} (has 0..{len(hidden_states) - 1})")
    return hidden_states[layer]


def _same_heads(s: Tensor, t: Tensor, what: str) -> None:
    if s.size(1) != t.size(1):
        raise PlanError(
            f"{what} compares heads one to one but the student has {s.size(1)} heads and the teacher "
            f"{t.size(1)}: set objective.intermediate.head_match: mean"
        )
