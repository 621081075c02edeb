"""Which teacher layer each student layer learns from.

Layers are 1-based: student layer m (1..S) and teacher layer n (1..T) are the outputs
of the m-th / n-th transformer block, i.e. ``hidden_states[m]`` in HF's tuple whose
index 0 is the embedding output. Embeddings always map to embeddings (index 0).
A fixed map is a list with one entry per student layer: the teacher layer, or
``None`` when that student layer is not distilled.

TinyBERT index check (task_distill.py, k = T // S, loops over i = 0..S−1 / 0..S):

* hidden states: ``teacher_reps[i * k]`` over a list whose index 0 is the embeddings,
  so student layer m = i ← teacher layer m·k (1-based);
* attentions: ``teacher_atts[i * k + k − 1]`` over a 0-based list of layers, so
  student layer m = i + 1 ← 0-based teacher index m·k − 1 = teacher layer m·k (1-based).

Both are the same 1-based map m ← m·k, so :func:`attention_layer_map` equals
:func:`uniform_layer_map` (kept as a separate name so callers say what they mean).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn

from kdgrid.errors import PlanError

FixedKind = Literal["uniform", "last", "first_last", "explicit"]
LayerMap = list[int | None]


def _check_counts(n_teacher: int, n_student: int) -> None:
    if n_teacher < 1 or n_student < 1:
        raise PlanError(f"layer counts must be >= 1 (teacher {n_teacher}, student {n_student})")


def uniform_layer_map(n_teacher: int, n_student: int) -> LayerMap:
    """Uniform/skip map (TinyBERT; BERT-PKD 'skip'): student m ← teacher m·k, k = T // S.

    When S does not divide T the map uses the floor k (the top teacher layers go
    unused), exactly like TinyBERT's ``int(T / S)``.
    """
    _check_counts(n_teacher, n_student)
    if n_student > n_teacher:
        raise PlanError(
            f"mapping 'uniform' needs a student with at most as many layers as the teacher "
            f"(student {n_student}, teacher {n_teacher})"
        )
    k = n_teacher // n_student
    return [m * k for m in range(1, n_student + 1)]


def attention_layer_map(n_teacher: int, n_student: int) -> LayerMap:
    """TinyBERT's attention map: 0-based ``m·k + k − 1`` for m = 0..S−1, i.e. 1-based m ← m·k.

    Identical to :func:`uniform_layer_map` (see the module docstring); tested against the
    0-based formula.
    """
    return uniform_layer_map(n_teacher, n_student)


def last_layer_map(n_teacher: int, n_student: int) -> LayerMap:
    """Last-layer transfer: the student's last layer ← the teacher's last layer; others unmapped."""
    _check_counts(n_teacher, n_student)
    return [None] * (n_student - 1) + [n_teacher]


def first_last_layer_map(n_teacher: int, n_student: int) -> LayerMap:
    """Paper 3 (arXiv 2311.04142): first ← first, last ← last, the middle uniform in between.

    teacher(m) = ⌊1 + (m−1)·(T−1)/(S−1) + ½⌋  (round half up), m = 1..S;
    a 1-layer student maps to the teacher's last layer.
    E.g. 12→4: [1, 5, 8, 12]; 12→3: [1, 7, 12] (6.5 rounds up); 12→6: [1, 3, 5, 8, 10, 12].
    """
    _check_counts(n_teacher, n_student)
    if n_student == 1:
        return [n_teacher]
    # Integer arithmetic so ties (x.5) always round up, never by float noise or banker's
    # rounding: ⌊x + ½⌋ with x = (m−1)(T−1)/(S−1) is ⌊(2(m−1)(T−1) + (S−1)) / (2(S−1))⌋.
    den = n_student - 1
    return [1 + (2 * (m - 1) * (n_teacher - 1) + den) // (2 * den) for m in range(1, n_student + 1)]


def explicit_layer_map(n_teacher: int, n_student: int, layers: Sequence[int] | None) -> LayerMap:
    """A user-given list: one 1-based teacher layer per student layer, each in 1..T."""
    _check_counts(n_teacher, n_student)
    if not layers:
        raise PlanError("mapping 'explicit' needs 'layers' (one teacher layer per student layer)")
    if len(layers) != n_student:
        raise PlanError(f"mapping 'explicit' has {len(layers)} layers but the student has {n_student} layers")
    bad = [n for n in layers if not 1 <= int(n) <= n_teacher]
    if bad:
        raise PlanError(f"mapping 'explicit' teacher layers {bad} are out of range (allowed: 1..{n_teacher})")
    return [int(n) for n in layers]


def layer_map(
    kind: str, n_teacher: int, n_student: int, layers: Sequence[int] | None = None, settings: Any = None
) -> LayerMap:
    """Dispatch on ``objective.mapping.kind``; 'learnable' has no fixed map (use :class:`LearnableMapping`).

    A kind that is not built in is looked up in the registry (kdgrid.plugins) and called with its
    ``settings`` (a dict or the validated model); its answer is checked like a user's explicit list.
    """
    if kind == "uniform":
        return uniform_layer_map(n_teacher, n_student)
    if kind == "last":
        return last_layer_map(n_teacher, n_student)
    if kind == "first_last":
        return first_last_layer_map(n_teacher, n_student)
    if kind == "explicit":
        return explicit_layer_map(n_teacher, n_student, layers)
    if kind == "learnable":
        raise PlanError("mapping 'learnable' has no fixed layer map: use LearnableMapping")
    from kdgrid.plugins import plugin_layer_map

    _check_counts(n_teacher, n_student)
    return plugin_layer_map(kind, n_teacher, n_student, settings)


def pointed_layers(
    kind: str, n_teacher: int, n_student: int, layers: Sequence[int] | None = None, settings: Any = None
) -> LayerMap:
    """The teacher layer each student layer is trained towards at the start of distillation.

    A fixed map is itself; a learnable map points where its 'fixed' start puts its peaks
    (``layers``, else the uniform map), whatever its actual init.
    """
    if kind == "learnable":
        return explicit_layer_map(n_teacher, n_student, layers) if layers else uniform_layer_map(n_teacher, n_student)
    return layer_map(kind, n_teacher, n_student, layers, settings)


# The built-in mappings' registered implementations (kdgrid.plugins.builtin): impl(n_teacher, n_student, settings).
def uniform_map(n_teacher: int, n_student: int, settings: Any = None) -> LayerMap:
    return uniform_layer_map(n_teacher, n_student)


def last_map(n_teacher: int, n_student: int, settings: Any = None) -> LayerMap:
    return last_layer_map(n_teacher, n_student)


def first_last_map(n_teacher: int, n_student: int, settings: Any = None) -> LayerMap:
    return first_last_layer_map(n_teacher, n_student)


def explicit_map(n_teacher: int, n_student: int, settings: Any) -> LayerMap:
    return explicit_layer_map(n_teacher, n_student, settings.layers)


def copied_layers(
    n_teacher: int, n_student: int, init_layers: Sequence[int] | None, pointed: LayerMap | None
) -> list[int]:
    """The rule that makes initialisation and mapping agree (docs/study-file.md, "Layers copied and mapped").

    ``init_layers`` when the study gives it (then copy and map may differ on purpose); else each student
    layer copies the teacher layer its mapping points to (``pointed``), and a student layer the mapping
    leaves out (``None``; or no layer loss at all: ``pointed`` None) copies every k-th teacher layer,
    k = T // S (TinyBERT / PKD-skip).
    """
    if init_layers is not None:
        return [int(n) for n in init_layers]
    skip = uniform_layer_map(n_teacher, n_student)
    if pointed is None:
        return [int(n) for n in skip]  # type: ignore[arg-type]
    return [int(p if p is not None else k) for p, k in zip(pointed, skip)]  # type: ignore[arg-type]


class LearnableMapping(nn.Module):
    """Learnable layer mapping (paper 1, arXiv 2308.13958 'LearnableMap').

    Student layer m learns from the mixture Σ_k w_k(m) · X_T^k over all teacher layers
    k = 1..T, with w(m) = softmax(v(m)) and learnable logits v ∈ R^{S×T}.

    Initial logits: ``'uniform'`` all zero (equal weights); ``'fixed'`` (alias ``'diagonal'``) a
    peak on the fixed map ``layers`` (default: the uniform map m·k) holding ``diagonal_weight`` of
    the mass (rest spread evenly); ``'random'`` N(0, 1), from ``seed`` when given, else from
    torch's global RNG (so the run seed decides it).
    """

    def __init__(
        self,
        n_teacher: int,
        n_student: int,
        init: Literal["uniform", "fixed", "diagonal", "random"] = "uniform",
        *,
        seed: int | None = None,
        diagonal_weight: float = 0.9,
        layers: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        _check_counts(n_teacher, n_student)
        self.n_teacher = n_teacher
        self.n_student = n_student
        self.logits = nn.Parameter(self.initial_logits(n_teacher, n_student, init, seed, diagonal_weight, layers))

    @staticmethod
    def initial_logits(
        n_teacher: int,
        n_student: int,
        init: str,
        seed: int | None,
        diagonal_weight: float,
        layers: Sequence[int] | None = None,
    ) -> Tensor:
        logits = torch.zeros(n_student, n_teacher)
        if init == "uniform":
            return logits
        if init == "random":
            gen = torch.Generator().manual_seed(seed) if seed is not None else None
            return torch.randn(n_student, n_teacher, generator=gen)
        if init in ("fixed", "diagonal"):
            if not 0.0 < diagonal_weight < 1.0:
                raise PlanError(f"diagonal_weight must lie in (0, 1), got {diagonal_weight}")
            if n_teacher == 1:
                return logits
            # softmax puts p on the peak when peak − rest = log(p·(T−1)/(1−p)).
            peak = math.log(diagonal_weight * (n_teacher - 1) / (1.0 - diagonal_weight))
            for m, n in enumerate(pointed_layers("learnable", n_teacher, n_student, layers)):
                logits[m, int(n) - 1] = peak  # type: ignore[arg-type]
            return logits
        raise PlanError(f"unknown learnable mapping init '{init}' (allowed: uniform, fixed, diagonal, random)")

    def weights(self) -> Tensor:
        """w = softmax(v) over teacher layers, [S, T]; every row sums to 1."""
        return torch.softmax(self.logits, dim=-1)

    def _row(self, m: int, n_items: int) -> Tensor:
        if not 1 <= m <= self.n_student:
            raise PlanError(f"student layer {m} out of range (allowed: 1..{self.n_student})")
        if n_items != self.n_teacher:
            raise PlanError(f"got {n_items} teacher tensors, the mapping has {self.n_teacher} teacher layers")
        return self.weights()[m - 1]

    def mix(self, teacher: Sequence[Tensor], m: int) -> Tensor:
        """Σ_k w_k(m) · X_T^k for 1-based student layer m; ``teacher[k-1]`` is teacher layer k.

        For hidden states and attention scores (linear mixtures).
        """
        w = self._row(m, len(teacher))
        out = w[0].to(teacher[0].dtype) * teacher[0]
        for k in range(1, len(teacher)):
            out = out + w[k].to(teacher[k].dtype) * teacher[k]
        return out

    def mix_log_probs(self, teacher_log_probs: Sequence[Tensor] | Tensor, m: int) -> Tensor:
        """log Σ_k w_k(m) · p_T^k for distributions given as log-probabilities (stable logsumexp).

        The mixture of attention distributions is itself a distribution, so Att-KL/Val-KL
        against a learnable mapping stay proper KL divergences. Pass a pre-stacked [T, ...]
        tensor to avoid re-stacking for every student layer.
        """
        w = self._row(m, len(teacher_log_probs))
        if isinstance(teacher_log_probs, Tensor):
            stacked = teacher_log_probs
        else:
            stacked = torch.stack(list(teacher_log_probs), dim=0)  # [T, ...]
        log_w = torch.log(w).view(-1, *([1] * (stacked.dim() - 1))).to(stacked.dtype)
        return torch.logsumexp(stacked + log_w, dim=0)
