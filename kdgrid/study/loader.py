"""Load a study file: safe YAML with line numbers, then Pydantic validation.

Every error becomes one :class:`StudyError` line of the form
``file:line: field: message (allowed: ...)`` so users can jump to the spot.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from kdgrid.errors import StudyError
from kdgrid.study.schema import Study

# Paths are tuples of keys/indices; the value is the 1-based line where that node starts.
LineMap = dict[tuple[Any, ...], int]


@dataclass(frozen=True)
class LoadedStudy:
    study: Study
    path: Path
    text: str
    lines: LineMap

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()

    def line_of(self, loc: tuple[Any, ...]) -> int | None:
        return line_of(self.lines, loc)


def line_of(lines: LineMap, loc: tuple[Any, ...]) -> int | None:
    """Line of the deepest known prefix of ``loc`` (Pydantic locs can go deeper than YAML nodes)."""
    for n in range(len(loc), -1, -1):
        if loc[:n] in lines:
            return lines[loc[:n]]
    return None


def _compose_lines(node: yaml.Node, path: tuple[Any, ...], out: LineMap) -> None:
    out[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = key_node.value
            out[(*path, key)] = key_node.start_mark.line + 1
            _compose_lines(value_node, (*path, key), out)
            out[(*path, key)] = key_node.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _compose_lines(item, (*path, i), out)


def _is_union_tag(part: Any) -> bool:
    return isinstance(part, str) and (
        "[" in part or part.startswith(("constrained-", "function-")) or part in {"int", "float", "str", "bool", "Epochs"}
    )


def _allowed_hint(err: dict[str, Any]) -> str:
    ctx = err.get("ctx") or {}
    if "expected" in ctx:
        allowed = str(ctx["expected"]).replace("'", "").replace(" or ", ", ")
        return f" (allowed: {allowed})"
    return ""


def format_validation_error(exc: ValidationError, *, path: Path, line_of: Any, model: type | None = None) -> str:
    """Pydantic errors as ``file:line: a.b.c: message (allowed: ...)``, one per line."""
    out: list[str] = []
    for err in exc.errors():
        # Pydantic adds union-branch tags ('int', 'constrained-int', 'list[...]') to the loc; they are no keys.
        loc = tuple(p for p in err["loc"] if not _is_union_tag(p))
        field = ".".join(str(p) for p in loc) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        # A plug-in's settings error names its key path first ('cosine_hidden.tokens: ...'): point at that line.
        head = msg.split(": ", 1)[0] if ": " in msg else ""
        deeper = (*loc, *head.split(".")) if head and " " not in head else loc
        line = line_of(deeper)
        where = f"{path}:{line}" if line else str(path)
        if err.get("type") == "extra_forbidden":
            msg = "unknown key" + _allowed_keys(model, loc)
        elif err.get("type") in ("literal_error", "enum"):
            msg = f"{err.get('input')!r} is not allowed"
        out.append(f"{where}: {field}: {msg}{_allowed_hint(err)}")
    # Unions report each branch; keep the first error per field so the line stays readable.
    seen: set[str] = set()
    unique = []
    for line in out:
        key = line.split(": ", 2)[1] if ": " in line else line
        if key not in seen:
            seen.add(key)
            unique.append(line)
    # One line for the user; the count says there is more to fix.
    more = f" (and {len(unique) - 1} more error{'s' if len(unique) > 2 else ''} in this file)" if len(unique) > 1 else ""
    return unique[0] + more


def _allowed_keys(model: type | None, loc: tuple[Any, ...]) -> str:
    """Name the keys that are allowed where an unknown key was found."""
    if model is None:
        return ""
    current: Any = model
    for part in loc[:-1]:
        fields = getattr(current, "model_fields", None)
        if not fields or part not in fields:
            return ""
        ann = fields[part].annotation
        current = next((a for a in getattr(ann, "__args__", (ann,)) if hasattr(a, "model_fields")), ann)
    fields = getattr(current, "model_fields", None)
    return f" (allowed: {', '.join(fields)})" if fields else ""


def parse_yaml(text: str, path: Path) -> tuple[Any, LineMap]:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise StudyError(f"{where}: not valid YAML: {problem}") from None
    lines: LineMap = {}
    if node is not None:
        _compose_lines(node, (), lines)
    return data, lines


def load_study(path: str | Path) -> LoadedStudy:
    """Read, parse and validate a study file; raise :class:`StudyError` with file:line on any problem."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise StudyError(f"{p}: study file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise StudyError(f"{p}: cannot read study file: {exc}") from None
    data, lines = parse_yaml(text, p)
    if not isinstance(data, dict):
        raise StudyError(f"{p}:1: a study file must be a YAML mapping (got {type(data).__name__})")
    try:
        study = Study.model_validate(data)
    except ValidationError as exc:
        raise StudyError(
            format_validation_error(exc, path=p, line_of=lambda loc: line_of(lines, loc), model=Study)
        ) from None
    return LoadedStudy(study=study, path=p, text=text, lines=lines)
