"""Teacher shapes without torch, and the checks of a run's student against its teacher.

``kdgrid validate`` must catch impossible students (more layers than the teacher
for teacher-layer init, heads that do not divide the width, attention losses
between different head counts) before any compute, and must start fast.
"""

from __future__ import annotations

from dataclasses import dataclass

from kdgrid import model_names
from kdgrid.errors import PlanError
from kdgrid.study.schema import RunConfig, Student


@dataclass(frozen=True)
class Shape:
    layers: int
    heads: int
    hidden: int
    intermediate: int


def teacher_shape(model: str) -> Shape | None:
    """The teacher's shape, or None when it cannot be known offline (then checks wait for load time)."""
    shape = model_names.teacher_shape(model)
    return None if shape is None else Shape(**shape)


def student_shape(teacher: Shape, student: Student) -> Shape:
    return Shape(
        layers=student.layers,
        heads=student.heads or teacher.heads,
        hidden=student.hidden_size or teacher.hidden,
        intermediate=student.intermediate_size or teacher.intermediate,
    )


def check_run(config: RunConfig, teacher: Shape) -> None:
    """Raise PlanError naming the field when a student cannot be built or compared to its teacher."""
    st = config.student
    s = student_shape(teacher, st)
    if s.hidden % s.heads:
        raise PlanError(f"student.heads: {s.heads} heads do not divide hidden size {s.hidden}")
    if st.init in ("teacher_layers", "width_slice") and s.layers > teacher.layers:
        raise PlanError(
            f"student.layers: {s.layers} layers but the teacher has {teacher.layers}; "
            f"init '{st.init}' copies teacher layers (allowed: 1..{teacher.layers}, or init: random)"
        )
    if st.init == "teacher_layers" and (s.hidden != teacher.hidden or s.intermediate != teacher.intermediate):
        raise PlanError(
            "student.init: 'teacher_layers' needs the teacher's hidden and intermediate size "
            f"({teacher.hidden}, {teacher.intermediate}; allowed for other shapes: width_slice, random)"
        )
    if st.init == "width_slice" and (
        s.hidden > teacher.hidden or s.intermediate > teacher.intermediate or s.heads > teacher.heads
    ):
        raise PlanError(
            "student.init: 'width_slice' needs a student no wider than the teacher (hidden, heads, intermediate)"
        )
    for i, layer in enumerate(st.init_layers or []):
        if layer > teacher.layers:
            raise PlanError(f"student.init_layers[{i}]: layer {layer} out of range (allowed: 1..{teacher.layers})")
    inter = config.objective.intermediate
    if (
        (inter.attention != "none" or inter.value != "none")
        and s.heads != teacher.heads
        and inter.head_match == "equal"
    ):
        raise PlanError(
            f"objective.intermediate.head_match: attention/value losses compare {s.heads} student heads with "
            f"{teacher.heads} teacher heads; set head_match: mean (allowed: equal, mean)"
        )
    for i, layer in enumerate(config.objective.mapping.layers or []):
        if layer > teacher.layers:
            raise PlanError(
                f"objective.mapping.layers[{i}]: teacher layer {layer} out of range (allowed: 1..{teacher.layers})"
            )
    check_plugins(config, teacher, s)


def check_plugins(cfg: RunConfig, teacher: Shape, student: Shape) -> None:
    """Each registered term's own check (e.g. head counts, widths) and a plug-in mapping's map, before compute.

    The built-ins' checks are the explicit ones above; here every term in ``objective.terms``, a plug-in
    mapping and a plug-in student builder answer for themselves.
    """
    from kdgrid.plugins import Shapes, plugin_layer_map, registry
    from kdgrid.plugins.terms import layer_loss_active, mapping_settings, named_terms

    shapes = Shapes(teacher.layers, teacher.heads, teacher.hidden, student.layers, student.heads, student.hidden)
    for term in named_terms(cfg.objective):
        if term.spec.check is not None and term.weight > 0:
            try:
                term.spec.check(term.settings, shapes)
            except ValueError as exc:
                raise PlanError(f"objective.terms.{term.name}: {exc}") from None
    mapping = cfg.objective.mapping
    if layer_loss_active(cfg.objective) and not registry().get("mappings", mapping.kind).source.builtin:
        plugin_layer_map(mapping.kind, teacher.layers, student.layers, mapping_settings(mapping))
    builder = registry().get("students", cfg.student.init)
    if not builder.source.builtin:
        if builder.spec.copies_layers and student.layers > teacher.layers:
            raise PlanError(
                f"student.layers: {student.layers} layers but the teacher has {teacher.layers}; "
                f"init '{cfg.student.init}' copies teacher layers"
            )
        if builder.spec.check is not None:
            try:
                builder.spec.check(builder.spec.settings.model_validate(cfg.student.settings), shapes)
            except ValueError as exc:
                raise PlanError(f"student.init: '{cfg.student.init}': {exc}") from None
