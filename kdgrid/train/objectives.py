"""The distillation objective of one run (or one stage of a two-stage run).

Semantics (DESIGN §5, ``kdgrid.study.schema.Objective``):

    L_pred  = (1 − β)·hard + β·soft          soft = T²·KL(p_T ‖ p_S)  (MSE(z_S, z_T) for regression)
    L_layer = α·(L_att + L_val) + (1 − α)·L_hid + embedding·L_emb
              (L_hid is the contrastive loss when hidden = 'cls_contrast')
    stage 'joint':        L = L_pred + weight·L_layer   (L_layer only when intermediate.active)
    stage 'intermediate': L = L_layer                  (stage 1 of TinyBERT's two-stage schedule)
    stage 'prediction':   L = L_pred                   (stage 2)

Per-layer terms are **summed over the mapped (student, teacher) layer pairs**, as in
TinyBERT's task_distill.py (``att_loss += ...; rep_loss += ...``), so a uniform map
over S layers weighs S pairs and a 'last' map one. Terms whose weight is 0 (β, 1−β,
α, 1−α, embedding) are not computed at all.

Decisions (see also :mod:`kdgrid.train.losses`):

* **W_h is shared** (TinyBERT's single ``fit_dense``): one ``Linear(d_S → d_T)`` per
  student width, used for every mapped layer of Hid-CLS/Hid-Seq and for the embedding
  loss. With equal widths it starts as the identity (so a teacher-initialised student
  starts at zero hidden loss rather than at a random projection's noise); otherwise
  PyTorch's default Linear init.
* **head_match='mean'**: Att-KL averages the attention *distributions* over heads, Att-MSE
  the pre-softmax *scores*, Val-KL re-splits the values into R relation heads (MiniLMv2;
  R from :func:`~kdgrid.train.losses.relation_heads_for`). It applies even when head
  counts are equal, so one study cell means one loss whatever the student shape
  (for Val-KL with equal heads the re-split is the identity).
* **Learnable mapping**: student layer m learns from Σ_k w_k(m)·X_T^k over all teacher
  layers: hidden states and Att-MSE scores mix linearly; Att-KL/Val-KL mix the teacher
  *distributions* (a mixture of distributions), then take the KL.
* **Hid-CLS-Contrast**: the [CLS] vectors of all mapped student layers are concatenated
  (likewise the mapped teacher ones) and fed to one :class:`ContrastiveMemory`
  (one memory bank per model instead of one per layer pair: memory is N × 128 floats).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from kdgrid.errors import KdgridError, PlanError
from kdgrid.study.schema import Objective
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
from kdgrid.train.mappings import LearnableMapping, layer_map

Stage = Literal["joint", "intermediate", "prediction"]
STAGES: tuple[str, ...] = ("joint", "intermediate", "prediction")
QKV = tuple[Tensor, Tensor, Tensor]


@dataclass
class Captured:
    logits: Tensor  # [B, C]; regression [B, 1]
    hidden_states: tuple[Tensor, ...] | None  # len L+1, index 0 = embeddings, each [B, T, D]
    qkv: dict[int, tuple[Tensor, Tensor, Tensor]]  # 1-based layer -> (Q, K, V) each [B, H, T, d_head], pre-softmax inputs
    attention_mask: Tensor  # [B, T] 1 = token, 0 = pad


def check_compatible(
    objective: Objective,
    teacher_heads: int,
    student_heads: int,
    n_teacher_layers: int,
    n_student_layers: int,
) -> None:
    """Raise :class:`PlanError` if the objective cannot run between these two shapes.

    Checks: one-to-one head comparison (``head_match='equal'``) with different head
    counts for an attention or value loss that would be computed; the layer map
    (uniform needs S ≤ T, explicit layers in range and one per student layer,
    learnable 'fixed' init needs its map).
    """
    inter = objective.intermediate
    if inter.active and inter.alpha > 0 and inter.head_match == "equal" and teacher_heads != student_heads:
        for name, choice in (("attention", inter.attention), ("value", inter.value)):
            if choice != "none":
                raise PlanError(
                    f"objective.intermediate.{name} '{choice}' compares attention heads one to one, but the "
                    f"teacher has {teacher_heads} heads and the student {student_heads}: set "
                    "objective.intermediate.head_match: mean (averages over heads; Val-KL re-splits into "
                    "relation heads) or give the student the teacher's head count"
                )
    mapping = objective.mapping
    if not inter.active:
        return  # no intermediate loss: the mapping is never used (vanilla KD may have a deeper student)
    if mapping.kind == "learnable":
        LearnableMapping.initial_logits(n_teacher_layers, n_student_layers, mapping.init, 0, mapping.init_weight,
                                        mapping.layers)
    else:
        layer_map(mapping.kind, n_teacher_layers, n_student_layers, mapping.layers)


class DistillObjective(nn.Module):
    """L for one stage, from an ``Objective`` and the two model shapes.

    Owns the learnable parts (shared projection W_h, learnable mapping logits, the
    contrastive heads and memory): add :meth:`param_groups` to the optimiser.
    ``seed`` only seeds a 'random' learnable-mapping init (None: torch's global RNG).
    Keep this module in float32 (autocast is fine): attention terms are computed in float32.
    """

    check_compatible = staticmethod(check_compatible)

    def __init__(
        self,
        objective: Objective,
        *,
        stage: Stage,
        is_regression: bool,
        n_teacher_layers: int,
        n_student_layers: int,
        teacher_hidden: int,
        student_hidden: int,
        teacher_heads: int,
        student_heads: int,
        num_train_examples: int,
        seed: int | None = None,
        contrast_dim: int = 128,
    ) -> None:
        super().__init__()
        if stage not in STAGES:
            raise PlanError(f"unknown stage '{stage}' (allowed: {', '.join(STAGES)})")
        check_compatible(objective, teacher_heads, student_heads, n_teacher_layers, n_student_layers)
        self.objective = objective
        self.stage = stage
        self.is_regression = is_regression
        self.n_teacher_layers = n_teacher_layers
        self.n_student_layers = n_student_layers
        pred, inter, mapping = objective.prediction, objective.intermediate, objective.mapping

        self.use_pred = stage in ("joint", "prediction")
        self.use_layer = stage == "intermediate" or (stage == "joint" and inter.active)
        self.hard_on = self.use_pred and pred.beta < 1.0
        self.soft_on = self.use_pred and pred.beta > 0.0
        self.att_on = self.use_layer and inter.attention != "none" and inter.alpha > 0.0
        self.val_on = self.use_layer and inter.value != "none" and inter.alpha > 0.0
        self.hid_on = self.use_layer and inter.hidden in ("cls", "seq") and inter.alpha < 1.0
        self.contrast_on = self.use_layer and inter.hidden == "cls_contrast" and inter.alpha < 1.0
        self.emb_on = self.use_layer and inter.embedding > 0.0
        if stage == "intermediate" and not (self.att_on or self.val_on or self.hid_on or self.contrast_on or self.emb_on):
            raise PlanError(
                "stage 'intermediate' needs an intermediate loss with non-zero weight "
                "(attention/value with alpha > 0, hidden with alpha < 1, or embedding > 0)"
            )

        # Only a stage with layer terms owns a mapping: stage 2 must not log untrained mapping weights.
        self.learnable: LearnableMapping | None = None
        self.fixed_map: list[int | None] = []
        if self.use_layer and mapping.kind == "learnable":
            self.learnable = LearnableMapping(n_teacher_layers, n_student_layers, mapping.init, seed=seed,
                                              diagonal_weight=mapping.init_weight, layers=mapping.layers)
        elif self.use_layer:
            self.fixed_map = layer_map(mapping.kind, n_teacher_layers, n_student_layers, mapping.layers)

        self.relation_heads: int | None = None
        if self.val_on and inter.head_match == "mean":
            self.relation_heads = relation_heads_for(student_heads, teacher_heads, student_hidden, teacher_hidden)

        self.proj: nn.Linear | None = None
        if self.hid_on or self.emb_on:
            self.proj = nn.Linear(student_hidden, teacher_hidden)
            if student_hidden == teacher_hidden:
                with torch.no_grad():
                    self.proj.weight.copy_(torch.eye(teacher_hidden))
                    self.proj.bias.zero_()

        self.contrast: ContrastiveMemory | None = None
        if self.contrast_on:
            n_pairs = len(self._pairs())
            self.contrast = ContrastiveMemory(
                n_pairs * student_hidden,
                n_pairs * teacher_hidden,
                num_train_examples,
                embed_dim=contrast_dim,
                temperature=inter.contrast_temperature,
                momentum=inter.contrast_momentum,
                negatives=inter.contrast_negatives,
            )

    # ------------------------------------------------------------------ what the caller must capture

    def _pairs(self) -> list[tuple[int, int | None]]:
        """(student layer, teacher layer) pairs, 1-based; teacher None = learnable mixture."""
        if self.learnable is not None:
            return [(m, None) for m in range(1, self.n_student_layers + 1)]
        return [(m, n) for m, n in enumerate(self.fixed_map, start=1) if n is not None]

    def _layer_terms_on(self) -> bool:
        return self.att_on or self.val_on or self.hid_on or self.contrast_on

    def teacher_layers_needed(self) -> set[int]:
        """1-based teacher layers whose hidden states / Q,K,V are read (all of them when learnable)."""
        if not self._layer_terms_on():
            return set()
        if self.learnable is not None:
            return set(range(1, self.n_teacher_layers + 1))
        return {n for _, n in self._pairs() if n is not None}

    def student_layers_needed(self) -> set[int]:
        """1-based student layers whose hidden states / Q,K,V are read."""
        if not self._layer_terms_on():
            return set()
        return {m for m, _ in self._pairs()}

    def needs_hidden_states(self) -> bool:
        return self.hid_on or self.contrast_on or self.emb_on

    def needs_qkv(self) -> bool:
        return self.att_on or self.val_on

    def mapping_weights(self) -> Tensor | None:
        """[S, T] learnable mapping weights (rows sum to 1), detached; None for fixed maps."""
        return None if self.learnable is None else self.learnable.weights().detach()

    def param_groups(self, lr: float) -> list[dict[str, Any]]:
        """Optimiser groups: W_h and contrast heads at ``lr``; mapping logits at ``mapping.lr``.

        The mapping group sets weight_decay 0: decay would pull the logits towards the
        uniform mapping and bias the convergence study of paper 1. Its ``schedule`` key
        gives it its own lr schedule in the loop (never the student's decay).
        """
        groups: list[dict[str, Any]] = []
        main = [p for name, p in self.named_parameters() if not name.startswith("learnable.")]
        if main:
            groups.append({"params": main, "lr": lr})
        if self.learnable is not None:
            m = self.objective.mapping
            groups.append({"params": [self.learnable.logits], "lr": m.lr, "weight_decay": 0.0, "schedule": m.schedule})
        return groups

    # ------------------------------------------------------------------ forward

    def forward(
        self,
        student: Captured,
        teacher: Captured,
        labels: Tensor | None = None,
        indices: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Total loss under 'loss' (with graph) and each active unweighted term, detached, for logging."""
        terms: dict[str, Tensor] = {}
        total = student.logits.new_zeros((), dtype=torch.float32)
        if self.use_pred:
            total = total + self._prediction_loss(student, teacher, labels, terms)
        if self.use_layer:
            layer = self._layer_loss(student, teacher, indices, terms)
            total = total + (layer if self.stage == "intermediate" else self.objective.intermediate.weight * layer)
        out = {"loss": total}
        out.update({k: v.detach() for k, v in terms.items()})
        return out

    def _prediction_loss(
        self, student: Captured, teacher: Captured, labels: Tensor | None, terms: dict[str, Tensor]
    ) -> Tensor:
        pred = self.objective.prediction
        loss = student.logits.new_zeros((), dtype=torch.float32)
        if self.hard_on:
            if labels is None:
                raise KdgridError(f"prediction.beta = {pred.beta} < 1 needs labels for the hard loss")
            terms["hard"] = hard_loss(student.logits, labels, self.is_regression)
            loss = loss + (1.0 - pred.beta) * terms["hard"]
        if self.soft_on:
            if self.is_regression:
                terms["soft"] = regression_soft_loss(student.logits, teacher.logits)
            else:
                terms["soft"] = kd_soft_loss(student.logits, teacher.logits, pred.temperature, pred.t_squared)
            loss = loss + pred.beta * terms["soft"]
        return loss

    def _layer_loss(
        self, student: Captured, teacher: Captured, indices: Tensor | None, terms: dict[str, Tensor]
    ) -> Tensor:
        inter = self.objective.intermediate
        mask = student.attention_mask
        if teacher.attention_mask.shape != mask.shape:
            raise KdgridError(
                f"teacher and student inputs differ in shape ({tuple(teacher.attention_mask.shape)} vs "
                f"{tuple(mask.shape)}): intermediate losses need the same tokenisation"
            )
        pairs = self._pairs()
        loss = mask.new_zeros((), dtype=torch.float32)
        if self.att_on:
            terms["att"] = self._attention_term(student, teacher, pairs)
        if self.val_on:
            terms["val"] = self._value_term(student, teacher, pairs)
        if self.att_on or self.val_on:
            loss = loss + inter.alpha * (terms.get("att", 0.0) + terms.get("val", 0.0))
        if self.hid_on:
            terms["hid"] = self._hidden_term(student, teacher, pairs, cls_only=inter.hidden == "cls")
            loss = loss + (1.0 - inter.alpha) * terms["hid"]
        if self.contrast_on:
            terms["contrast"] = self._contrast_term(student, teacher, pairs, indices)
            loss = loss + (1.0 - inter.alpha) * terms["contrast"]
        if self.emb_on:
            s_h, t_h = _hidden(student, "student"), _hidden(teacher, "teacher")
            terms["emb"] = hidden_mse(s_h[0], t_h[0], self.proj, mask, cls_only=False)
            loss = loss + inter.embedding * terms["emb"]
        return loss

    # ------------------------------------------------------------------ per-term helpers

    def _teacher_for(
        self,
        m: int,
        n: int | None,
        per_layer: Callable[[int], Tensor],
        cache: dict[int, Tensor],
        log_probs: bool,
    ) -> Tensor:
        """Teacher tensor for student layer m: layer n, or the learnable mixture over all layers."""

        def get(k: int) -> Tensor:
            if k not in cache:
                cache[k] = per_layer(k)
            return cache[k]

        if n is not None:
            return get(n)
        assert self.learnable is not None  # n is None only for learnable mappings
        all_layers = range(1, self.n_teacher_layers + 1)
        if not log_probs:
            return self.learnable.mix([get(k) for k in all_layers], m)
        # Distributions: stack the T teacher maps once per batch, not once per student layer
        # (they are the largest tensors here); key 0 is free since teacher layers are 1-based.
        if 0 not in cache:
            cache[0] = torch.stack([per_layer(k) for k in all_layers], dim=0)
        return self.learnable.mix_log_probs(cache[0], m)

    def _attention_term(self, student: Captured, teacher: Captured, pairs: list[tuple[int, int | None]]) -> Tensor:
        inter = self.objective.intermediate
        mask = student.attention_mask
        cache: dict[int, Tensor] = {}
        total = mask.new_zeros((), dtype=torch.float32)
        if inter.attention == "mse":
            for m, n in pairs:
                s_q, s_k, _ = _qkv(student, m, "student")
                t_scores = self._teacher_for(
                    m, n, lambda k: attention_scores(*_qkv(teacher, k, "teacher")[:2]), cache, log_probs=False
                )
                total = total + attention_mse(attention_scores(s_q, s_k), t_scores, mask, inter.head_match,
                                             inter.att_mse_padding)
            return total
        mean = inter.head_match == "mean"

        def teacher_lp(k: int) -> Tensor:
            t_q, t_k, _ = _qkv(teacher, k, "teacher")
            lp = attention_log_probs(t_q, t_k, mask)
            return mean_head_log_probs(lp) if mean else lp

        for m, n in pairs:
            s_q, s_k, _ = _qkv(student, m, "student")
            s_lp = attention_log_probs(s_q, s_k, mask)
            s_lp = mean_head_log_probs(s_lp) if mean else s_lp
            t_lp = self._teacher_for(m, n, teacher_lp, cache, log_probs=True)
            _same_heads(s_lp, t_lp, "attention 'kl'")
            total = total + masked_kl(t_lp, s_lp, mask)
        return total

    def _value_term(self, student: Captured, teacher: Captured, pairs: list[tuple[int, int | None]]) -> Tensor:
        mask = student.attention_mask
        cache: dict[int, Tensor] = {}
        total = mask.new_zeros((), dtype=torch.float32)
        r = self.relation_heads

        def teacher_lp(k: int) -> Tensor:
            return value_relation_log_probs(_qkv(teacher, k, "teacher")[2], mask, r)

        for m, n in pairs:
            s_lp = value_relation_log_probs(_qkv(student, m, "student")[2], mask, r)
            t_lp = self._teacher_for(m, n, teacher_lp, cache, log_probs=True)
            _same_heads(s_lp, t_lp, "value 'kl'")
            total = total + masked_kl(t_lp, s_lp, mask)
        return total

    def _hidden_term(
        self, student: Captured, teacher: Captured, pairs: list[tuple[int, int | None]], cls_only: bool
    ) -> Tensor:
        mask = student.attention_mask
        s_h, t_h = _hidden(student, "student"), _hidden(teacher, "teacher")
        # Hid-CLS reads position 0 only: slice before mixing so a learnable map mixes [B, 1, D], not [B, T, D].
        cut: Callable[[Tensor], Tensor] = (lambda h: h[:, :1]) if cls_only else (lambda h: h)
        cache: dict[int, Tensor] = {}
        total = mask.new_zeros((), dtype=torch.float32)
        for m, n in pairs:
            t = self._teacher_for(m, n, lambda k: cut(_layer(t_h, k, "teacher")), cache, log_probs=False)
            total = total + hidden_mse(cut(_layer(s_h, m, "student")), t, self.proj, mask, cls_only)
        return total

    def _contrast_term(
        self,
        student: Captured,
        teacher: Captured,
        pairs: list[tuple[int, int | None]],
        indices: Tensor | None,
    ) -> Tensor:
        assert self.contrast is not None  # built in __init__ whenever contrast_on
        s_h, t_h = _hidden(student, "student"), _hidden(teacher, "teacher")
        cache: dict[int, Tensor] = {}
        s_cls = [_layer(s_h, m, "student")[:, 0] for m, _ in pairs]
        t_cls = [
            self._teacher_for(m, n, lambda k: _layer(t_h, k, "teacher")[:, 0], cache, log_probs=False)
            for m, n in pairs
        ]
        return self.contrast(torch.cat(s_cls, dim=-1), torch.cat(t_cls, dim=-1), indices)


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
