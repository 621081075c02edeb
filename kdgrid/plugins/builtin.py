"""kdgrid's own loss terms, mappings, student builders and metrics, registered like any plug-in.

A study's ``objective.prediction`` / ``objective.intermediate`` blocks are the settings of these terms
(:func:`kdgrid.plugins.terms.resolve_terms` turns them into weighted term uses); ``objective.terms``
names any registered term directly. Implementations live in the training layer (``impl`` strings) and
are imported only when a run trains.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from kdgrid.plugins import LossSpec, MappingSpec, MetricSpec, NoSettings, Settings, Shapes, Spec, StudentSpec

PosFloat = Annotated[float, Field(gt=0.0)]
PosInt = Annotated[int, Field(gt=0)]
Prob = Annotated[float, Field(ge=0.0, le=1.0)]
_TERMS = "kdgrid.train.terms"


class SoftSettings(Settings):
    temperature: PosFloat = 1.0
    t_squared: bool = True  # Hinton's T^2 keeps gradient scale independent of T; TinyBERT omits it


class HeadSettings(Settings):
    head_match: Literal["equal", "mean"] = "equal"


class AttMseSettings(HeadSettings):
    padding: Literal["masked", "tinybert"] = "masked"


class ContrastSettings(Settings):
    temperature: PosFloat = 0.07
    momentum: Prob = 0.5
    negatives: PosInt = 4096


class ExplicitSettings(Settings):
    layers: list[PosInt]


def check_heads(settings: HeadSettings, shapes: Shapes) -> None:
    """One-to-one head comparison needs equal head counts."""
    if settings.head_match == "equal" and shapes.teacher_heads != shapes.student_heads:
        raise ValueError(
            f"compares {shapes.student_heads} student heads with {shapes.teacher_heads} teacher heads one to one; "
            "set head_match: mean (allowed: equal, mean)"
        )


LOSSES: tuple[LossSpec, ...] = (
    LossSpec(
        "kd_hard",
        NoSettings,
        f"{_TERMS}:HardLoss",
        frozenset({"logits", "labels"}),
        "prediction",
        "cross-entropy to the labels (MSE for regression)",
    ),
    LossSpec(
        "kd_soft",
        SoftSettings,
        f"{_TERMS}:SoftLoss",
        frozenset({"logits"}),
        "prediction",
        "Hinton's T^2 KL(p_T || p_S) (MSE to the teacher's output for regression)",
    ),
    LossSpec(
        "att_mse",
        AttMseSettings,
        f"{_TERMS}:AttentionMse",
        frozenset({"qk"}),
        "intermediate",
        "TinyBERT: MSE of pre-softmax attention scores, summed over mapped layers",
        check_heads,
    ),
    LossSpec(
        "att_kl",
        HeadSettings,
        f"{_TERMS}:AttentionKl",
        frozenset({"qk"}),
        "intermediate",
        "MiniLM: KL of attention distributions, summed over mapped layers",
        check_heads,
    ),
    LossSpec(
        "val_kl",
        HeadSettings,
        f"{_TERMS}:ValueKl",
        frozenset({"values"}),
        "intermediate",
        "MiniLM: KL of value relations (head_match mean: MiniLMv2 relation heads)",
        check_heads,
    ),
    LossSpec(
        "hid_cls",
        NoSettings,
        f"{_TERMS}:HiddenCls",
        frozenset({"cls"}),
        "intermediate",
        "MSE of [CLS] hidden states through the shared W_h",
    ),
    LossSpec(
        "hid_seq",
        NoSettings,
        f"{_TERMS}:HiddenSeq",
        frozenset({"hidden"}),
        "intermediate",
        "TinyBERT: MSE of all tokens' hidden states through the shared W_h",
    ),
    LossSpec(
        "hid_contrast",
        ContrastSettings,
        f"{_TERMS}:HiddenContrast",
        frozenset({"cls"}),
        "intermediate",
        "CRD-style contrastive loss on the mapped layers' [CLS] states (memory bank)",
    ),
    LossSpec(
        "emb_mse",
        NoSettings,
        f"{_TERMS}:EmbeddingMse",
        frozenset({"embeddings"}),
        "intermediate",
        "TinyBERT: MSE of the embedding outputs through the shared W_h",
    ),
)

_MAPS = "kdgrid.train.mappings"
MAPPINGS: tuple[MappingSpec, ...] = (
    MappingSpec("uniform", NoSettings, f"{_MAPS}:uniform_map", "student m <- teacher m*k, k = T // S (TinyBERT)"),
    MappingSpec("last", NoSettings, f"{_MAPS}:last_map", "last student layer <- last teacher layer"),
    MappingSpec("first_last", NoSettings, f"{_MAPS}:first_last_map", "first <- first, last <- last, uniform between"),
    MappingSpec("explicit", ExplicitSettings, f"{_MAPS}:explicit_map", "one teacher layer per student layer"),
    MappingSpec("learnable", NoSettings, "", "softmax weights over all teacher layers, trained with the student"),
)

_BUILD = "kdgrid.train.models:build_student"
STUDENTS: tuple[StudentSpec, ...] = (
    StudentSpec("teacher_layers", NoSettings, _BUILD, True, "copy embeddings and chosen teacher layers (equal width)"),
    StudentSpec("width_slice", NoSettings, _BUILD, True, "leading slices of the chosen teacher layers (narrower)"),
    StudentSpec("random", NoSettings, _BUILD, False, "random encoder; embeddings/pooler copied at equal width"),
)

_TASKS = "kdgrid.tasks"
METRICS: tuple[MetricSpec, ...] = (
    MetricSpec("mcc", f"{_TASKS}:matthews_corrcoef", regression=False, description="binary Matthews correlation"),
    MetricSpec("accuracy", f"{_TASKS}:accuracy", regression=False, description="share of correct labels"),
    MetricSpec("f1", f"{_TASKS}:f1_positive", regression=False, description="F1 of class 1"),
    MetricSpec("pearson", f"{_TASKS}:pearson", regression=True, description="Pearson r"),
    MetricSpec("spearman", f"{_TASKS}:spearman", regression=True, description="Spearman rho"),
)

SPECS: tuple[Spec, ...] = (*LOSSES, *MAPPINGS, *STUDENTS, *METRICS)
