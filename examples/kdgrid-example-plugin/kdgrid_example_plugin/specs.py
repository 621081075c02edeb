"""What kdgrid reads without torch: names, settings models, needs, checks, and the pure-Python mapping.

Keep this module free of torch: ``kdgrid validate`` imports it to check a study before any compute.
The loss term's torch code lives in :mod:`kdgrid_example_plugin.terms`, named here as a string.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from kdgrid.plugins import LossSpec, MappingSpec, Settings, Shapes


class CosineSettings(Settings):
    tokens: Literal["all", "cls"] = "all"  # average over every real token, or read [CLS] only
    project: bool = False  # compare through kdgrid's shared W_h (d_S -> d_T) instead of needing equal widths


def check_cosine(settings: CosineSettings, shapes: Shapes) -> None:
    """A cosine between vectors of different widths is undefined without a projection."""
    if not settings.project and shapes.student_hidden != shapes.teacher_hidden:
        raise ValueError(
            f"compares hidden states of width {shapes.student_hidden} (student) and {shapes.teacher_hidden} "
            "(teacher); set project: true, or give the student the teacher's hidden size"
        )


COSINE_HIDDEN = LossSpec(
    name="cosine_hidden",
    settings=CosineSettings,
    impl="kdgrid_example_plugin.terms:CosineHidden",
    needs=frozenset({"hidden"}),
    stage="intermediate",
    description="1 - cos(h_S, h_T) of mapped layers' hidden states, mean over real tokens, summed over layers",
    check=check_cosine,
)


class TopSettings(Settings):
    stride: Annotated[int, Field(gt=0)] = 1


def top_map(n_teacher: int, n_student: int, settings: TopSettings) -> list[int | None]:
    """Student layer m <- teacher layer T - (S - m) * stride: the student's top learns from the teacher's top."""
    out = [n_teacher - (n_student - m) * settings.stride for m in range(1, n_student + 1)]
    if out[0] < 1:
        raise ValueError(f"stride {settings.stride} reaches below teacher layer 1 ({out})")
    return out  # type: ignore[return-value]


TOP = MappingSpec(
    name="top",
    settings=TopSettings,
    impl="kdgrid_example_plugin.specs:top_map",
    description="student layer m <- teacher layer T - (S - m) * stride",
)
