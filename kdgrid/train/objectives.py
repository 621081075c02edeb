"""The distillation objective of one run (or one stage of a two-stage run): a weighted sum of registered terms.

The terms and their weights come from :func:`kdgrid.plugins.terms.resolve_terms`; their implementations
(:mod:`kdgrid.train.terms` for the built-ins, an installed package's for a plug-in) are imported through
the registry. This module owns what terms share: the layer pairs, the W_h projection and the learnable
mapping, and the union of what the terms need (so the loop captures only that).

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

from typing import Any, Literal, cast

import torch
from torch import Tensor, nn

from kdgrid.errors import KdgridError, PlanError
from kdgrid.plugins import Shapes, load_impl
from kdgrid.plugins.terms import TermUse, layer_loss_active, mapping_settings, resolve_terms
from kdgrid.study.schema import Objective
from kdgrid.train.mappings import LearnableMapping, layer_map
from kdgrid.train.terms import Captured, LossTerm, TermContext, TermInputs

Stage = Literal["joint", "intermediate", "prediction"]
STAGES: tuple[str, ...] = ("joint", "intermediate", "prediction")
QKV = tuple[Tensor, Tensor, Tensor]
__all__ = ["STAGES", "Captured", "DistillObjective", "check_compatible"]

_LEGACY_FIELD = {"att_mse": "attention", "att_kl": "attention", "val_kl": "value"}


def _term_field(use: TermUse) -> str:
    """Where a term's settings live in the study file (for error messages)."""
    if use.label != use.name:  # a built-in term set through objective.prediction / objective.intermediate
        return f"objective.intermediate.{_LEGACY_FIELD.get(use.name, use.name)}"
    return f"objective.terms.{use.name}"


def check_compatible(
    objective: Objective,
    teacher_heads: int,
    student_heads: int,
    n_teacher_layers: int,
    n_student_layers: int,
    teacher_hidden: int = 0,
    student_hidden: int = 0,
) -> None:
    """Raise :class:`PlanError` if the objective cannot run between these two shapes.

    Each term's own ``check`` (e.g. one-to-one head comparison with different head counts), then the
    layer map (uniform needs S ≤ T, explicit layers in range and one per student layer, learnable
    'fixed' init needs its map, a plug-in mapping's answer in range).
    """
    shapes = Shapes(n_teacher_layers, teacher_heads, teacher_hidden, n_student_layers, student_heads, student_hidden)
    seen: set[str] = set()
    for use in resolve_terms(objective, "joint"):  # every term of any stage, at its joint weight
        if use.label in seen or use.spec.check is None:
            continue
        seen.add(use.label)
        try:
            use.spec.check(use.settings, shapes)
        except ValueError as exc:
            field = _term_field(use)
            if use.name in _LEGACY_FIELD:
                choice = "'mse'" if use.name == "att_mse" else "'kl'"
                raise PlanError(
                    f"{field} {choice} compares attention heads one to one, but the teacher has {teacher_heads} "
                    f"heads and the student {student_heads}: set objective.intermediate.head_match: mean "
                    "(averages over heads; Val-KL re-splits into relation heads) or give the student the "
                    "teacher's head count"
                ) from None
            raise PlanError(f"{field}: {exc}") from None
    if not layer_loss_active(objective):
        return  # no intermediate loss: the mapping is never used (vanilla KD may have a deeper student)
    mapping = objective.mapping
    if mapping.kind == "learnable":
        LearnableMapping.initial_logits(
            n_teacher_layers, n_student_layers, mapping.init, 0, mapping.init_weight, mapping.layers
        )
    else:
        layer_map(mapping.kind, n_teacher_layers, n_student_layers, mapping.layers, mapping_settings(mapping))


class DistillObjective(nn.Module):
    """L for one stage, from an ``Objective`` and the two model shapes: Σ weight·term over registered terms.

    Owns the learnable parts (shared projection W_h, learnable mapping logits, the terms' own
    parameters such as the contrastive heads and memory): add :meth:`param_groups` to the optimiser.
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
    ) -> None:
        super().__init__()
        if stage not in STAGES:
            raise PlanError(f"unknown stage '{stage}' (allowed: {', '.join(STAGES)})")
        check_compatible(
            objective, teacher_heads, student_heads, n_teacher_layers, n_student_layers, teacher_hidden, student_hidden
        )
        self.objective = objective
        self.stage = stage
        self.is_regression = is_regression
        self.n_teacher_layers = n_teacher_layers
        self.n_student_layers = n_student_layers
        self.uses: list[TermUse] = resolve_terms(objective, stage)
        if stage == "intermediate" and not any(u.spec.stage == "intermediate" for u in self.uses):
            raise PlanError(
                "stage 'intermediate' needs an intermediate loss with non-zero weight "
                "(attention/value with alpha > 0, hidden with alpha < 1, embedding > 0, or a term in objective.terms)"
            )
        self.needs: frozenset[str] = frozenset().union(*(u.spec.needs for u in self.uses))
        self.use_layer = stage == "intermediate" or (stage == "joint" and layer_loss_active(objective))
        mapping = objective.mapping

        # Built in this order (mapping, W_h, terms) so random initialisations draw the same numbers as before
        # the registries. Only a stage with layer terms owns a mapping: stage 2 must not log untrained weights.
        self.learnable: LearnableMapping | None = None
        self.fixed_map: list[int | None] = []
        if self.use_layer and mapping.kind == "learnable":
            self.learnable = LearnableMapping(
                n_teacher_layers,
                n_student_layers,
                mapping.init,
                seed=seed,
                diagonal_weight=mapping.init_weight,
                layers=mapping.layers,
            )
        elif self.use_layer:
            self.fixed_map = layer_map(
                mapping.kind, n_teacher_layers, n_student_layers, mapping.layers, mapping_settings(mapping)
            )

        classes: list[type[LossTerm]] = []
        for use in self.uses:
            cls = load_impl(use.spec.impl)
            if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
                raise KdgridError(f"loss term '{use.name}': {use.spec.impl} is not a torch.nn.Module class")
            classes.append(cast("type[LossTerm]", cls))  # a plug-in's term is duck-typed, not a LossTerm subclass
        self.proj: nn.Linear | None = None
        if any(
            c.wants_projection(u.settings) if hasattr(c, "wants_projection") else getattr(c, "uses_projection", False)
            for c, u in zip(classes, self.uses)
        ):
            # TinyBERT's single fit_dense, shared by every hidden/embedding term; identity at equal widths,
            # so a teacher-initialised student starts at zero hidden loss rather than a random projection's noise.
            self.proj = nn.Linear(student_hidden, teacher_hidden)
            if student_hidden == teacher_hidden:
                with torch.no_grad():
                    self.proj.weight.copy_(torch.eye(teacher_hidden))
                    self.proj.bias.zero_()
        context = TermContext(
            is_regression=is_regression,
            n_teacher_layers=n_teacher_layers,
            n_student_layers=n_student_layers,
            teacher_hidden=teacher_hidden,
            student_hidden=student_hidden,
            teacher_heads=teacher_heads,
            student_heads=student_heads,
            num_train_examples=num_train_examples,
            pairs=self._pairs(),
            projection=self.proj,
            learnable=self.learnable,
        )
        self.terms = nn.ModuleList([cls(use.settings, context) for cls, use in zip(classes, self.uses)])
        self.labels: list[str] = []
        for use in self.uses:  # the metric row of each unweighted term; a clash gets the registry name
            self.labels.append(use.label if use.label not in self.labels else f"{use.name}.{len(self.labels)}")

    # ------------------------------------------------------------------ what the caller must capture

    def _pairs(self) -> list[tuple[int, int | None]]:
        """(student layer, teacher layer) pairs, 1-based; teacher None = learnable mixture."""
        if self.learnable is not None:
            return [(m, None) for m in range(1, self.n_student_layers + 1)]
        return [(m, n) for m, n in enumerate(self.fixed_map, start=1) if n is not None]

    def _layer_terms_on(self) -> bool:
        return bool(self.needs & {"hidden", "cls", "qk", "values"})

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
        return bool(self.needs & {"hidden", "cls", "embeddings"})

    def needs_qkv(self) -> bool:
        return bool(self.needs & {"qk", "values"})

    def reads_teacher_padding(self) -> bool:
        """Whether a term reads teacher layer outputs at padded positions (then they cannot come from the
        activation cache, which stores real tokens only)."""
        return any(
            cast(Any, type(t)).reads_teacher_padding(u.settings)
            for t, u in zip(self.terms, self.uses)
            if hasattr(type(t), "reads_teacher_padding")
        )

    def mapping_weights(self) -> Tensor | None:
        """[S, T] learnable mapping weights (rows sum to 1), detached; None for fixed maps."""
        return None if self.learnable is None else self.learnable.weights().detach()

    def param_groups(self, lr: float) -> list[dict[str, Any]]:
        """Optimiser groups: W_h and the terms' parameters at ``lr``; mapping logits at ``mapping.lr``.

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
        if self.use_layer and teacher.attention_mask.shape != student.attention_mask.shape:
            raise KdgridError(
                f"teacher and student inputs differ in shape ({tuple(teacher.attention_mask.shape)} vs "
                f"{tuple(student.attention_mask.shape)}): intermediate losses need the same tokenisation"
            )
        x = TermInputs(student, teacher, labels, indices, self._pairs(), self.learnable, self.n_teacher_layers)
        total = student.logits.new_zeros((), dtype=torch.float32)
        out: dict[str, Tensor] = {}
        for use, label, term in zip(self.uses, self.labels, self.terms):
            value = term(x)
            out[label] = value.detach()
            total = total + use.weight * value
        return {"loss": total, **out}
