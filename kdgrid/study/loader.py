"""Load a study file: safe YAML with line numbers, then Pydantic validation.

Every error becomes one :class:`StudyError` line of the form
``file:line: field: message (allowed: ...)`` so users can jump to the spot.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from kdgrid.errors import StudyError
from kdgrid.study.schema import Study

# Paths are tuples of keys/indices; the value is the 1-based line where that node starts.
LineMap = dict[tuple[Any, ...], int]

# Limits that keep a hostile or damaged study file from hanging or crashing kdgrid (docs/study-file.md,
# "Limits"). Real studies are a few kilobytes, a few hundred values and under ten levels deep.
MAX_FILE_BYTES = 65_536  # 64 KiB: the largest shipped study is 2.4 KB; PyYAML reads ~100 KB/s
MAX_DEPTH = 50  # nested mappings/lists, counted once aliases are expanded
MAX_NODES = 20_000  # keys and values once aliases are expanded
MAX_MESSAGE_CHARS = 2_000
MAX_INT_DIGITS = 4_000  # below Python's own limit on int("...") (4,300 digits)
_INT_TAG = "tag:yaml.org,2002:int"
_STR_TAG = "tag:yaml.org,2002:str"
_FLOAT_TAG = "tag:yaml.org,2002:float"
# Floats YAML 1.2 reads as numbers and YAML 1.1 (PyYAML) as text: an exponent without a dot or without a sign
# (5e-5, 1E-4, 3e+2, 1.0e5). The forms both read as floats, and ints, are resolved before this is tried.
_YAML12_FLOAT = re.compile(r"^[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)[eE][-+]?[0-9]+$")


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


def _is_union_tag(part: Any) -> bool:
    return isinstance(part, str) and (
        "[" in part
        or part.startswith(("constrained-", "function-"))
        or part in {"int", "float", "str", "bool", "Epochs"}
    )


def _allowed_hint(err: Mapping[str, Any]) -> str:  # a pydantic ErrorDetails
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
    more = (
        f" (and {len(unique) - 1} more error{'s' if len(unique) > 2 else ''} in this file)" if len(unique) > 1 else ""
    )
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


def _one_line(message: str) -> str:
    """A message as one printable line: a key or value from the file may hold newlines or control characters."""
    out = "".join(c if c.isprintable() else repr(c)[1:-1] for c in message)
    return out if len(out) <= MAX_MESSAGE_CHARS else out[: MAX_MESSAGE_CHARS - 20] + " ... (message cut)"


class _TooBig(Exception):
    """A limit of :func:`parse_yaml` was crossed at ``line`` (1-based) under key path ``loc``."""

    def __init__(self, line: int, loc: tuple[Any, ...], message: str) -> None:
        super().__init__(message)
        self.line = line
        self.loc = loc


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader with the composer's recursion cut at MAX_DEPTH nested nodes, and YAML 1.2 floats.

    PyYAML composes nested collections recursively, so ``[[[[...`` a few thousand deep ends in a
    RecursionError; counting the depth here stops it with a line number first.

    A plain value such as ``5e-5`` is a float, as in YAML 1.2 (PyYAML keeps YAML 1.1's rule that a float
    needs a dot and a signed exponent, so ``5e-5`` would be the text "5e-5": a cell labelled "5e-5", a level
    that is not the same as ``0.00005``, a filter that misses it). Keys keep YAML 1.1: a variant level may be
    named ``1e-4``.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._path: list[Any] = []
        self._is_key: list[bool] = []

    def resolve(self, kind: type[yaml.Node], value: Any, implicit: Any) -> Any:
        tag = super().resolve(kind, value, implicit)  # type: ignore[no-untyped-call]  # unannotated in types-PyYAML
        if (
            kind is yaml.ScalarNode
            and implicit[0]  # plain, not quoted: a quoted "5e-5" stays text
            and tag == _STR_TAG
            and not (self._is_key and self._is_key[-1])
            and _YAML12_FLOAT.match(value)
        ):
            return _FLOAT_TAG
        return tag

    def compose_node(self, parent: Any, index: Any) -> Any:
        # index: the key node of a mapping value, the position in a list, None for a key or the root.
        part = index.value if isinstance(index, yaml.ScalarNode) else (index if isinstance(index, int) else None)
        self._path.append(part)
        self._is_key.append(index is None and parent is not None)
        try:
            if len(self._path) > MAX_DEPTH:
                line = self.peek_event().start_mark.line + 1  # type: ignore[no-untyped-call]  # unannotated in types-PyYAML
                loc = tuple(p for p in self._path if p is not None)
                raise _TooBig(line, loc, f"nested more than {MAX_DEPTH} levels deep (the limit for a study file)")
            return super().compose_node(parent, index)
        finally:
            self._path.pop()
            self._is_key.pop()


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _measure(root: yaml.Node, memo: dict[int, tuple[int, int]], line: int, loc: tuple[Any, ...]) -> None:
    """Count the nodes and depth ``root`` has once every alias is expanded, without expanding any.

    A node reached through many aliases is measured once (``memo``), so a "billion laughs" file costs
    as little to measure as it is long. Iterative, so a deep document cannot exhaust the stack.
    """
    on_path: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, finished = stack.pop()
        key = id(node)
        if finished:
            on_path.discard(key)
            kids = [memo[id(k)] for k in _children(node)]
            size = min(1 + sum(s for s, _ in kids), MAX_NODES + 1)
            depth = 1 + max((d for _, d in kids), default=0)
            if size > MAX_NODES:
                raise _TooBig(
                    line,
                    loc,
                    f"expands to more than {MAX_NODES} values through YAML aliases "
                    "(&anchor / *alias); write the values out or use fewer aliases",
                )
            if depth > MAX_DEPTH:
                raise _TooBig(line, loc, f"nested more than {MAX_DEPTH} levels deep once YAML aliases are expanded")
            memo[key] = (size, depth)
            continue
        if key in memo:
            continue
        if key in on_path:
            raise _TooBig(
                node.start_mark.line + 1, loc, "a YAML alias refers to the block that contains it (a recursive alias)"
            )
        on_path.add(key)
        stack.append((node, True))
        stack.extend((k, False) for k in _children(node) if id(k) not in memo)


def _check_size(node: yaml.Node) -> None:
    """Refuse alias bombs, recursive aliases and over-deep documents, naming the top-level key at fault."""
    memo: dict[int, tuple[int, int]] = {}
    pairs = node.value if isinstance(node, yaml.MappingNode) else [(None, node)]
    total = 0
    for key_node, value_node in pairs:
        loc = (key_node.value,) if isinstance(key_node, yaml.ScalarNode) else ()
        line = (key_node or value_node).start_mark.line + 1
        _measure(value_node, memo, line, loc)
        total += memo[id(value_node)][0]
        if total > MAX_NODES:
            raise _TooBig(
                line,
                loc,
                f"the file expands to more than {MAX_NODES} values through YAML aliases "
                "(&anchor / *alias); write the values out or use fewer aliases",
            )


def _key_of(loader: yaml.SafeLoader, key_node: yaml.Node) -> Any:
    """The Python key a mapping key node constructs to (``yes`` and ``true`` are the same key), or None."""
    if not isinstance(key_node, yaml.ScalarNode):
        return None
    try:
        key = loader.construct_object(key_node)
        hash(key)
    except (yaml.YAMLError, TypeError, ValueError):
        return None
    return key


def _compose_lines(node: yaml.Node, path: tuple[Any, ...], out: LineMap, loader: yaml.SafeLoader) -> None:
    """Record the line of every key path; a key given twice in one mapping is an error naming both lines
    (YAML loaders keep the last one silently, so a second ``grid:`` would drop the first without a word)."""
    out[path] = node.start_mark.line + 1
    if isinstance(node, yaml.ScalarNode) and node.tag == _INT_TAG and len(node.value) > MAX_INT_DIGITS:
        # Python refuses to convert such a string to int (sys.get_int_max_str_digits): say where it is.
        raise _TooBig(out[path], path, f"an integer of {len(node.value)} digits (at most {MAX_INT_DIGITS})")
    if isinstance(node, yaml.MappingNode):
        first: dict[Any, int] = {}
        for key_node, value_node in node.value:
            # A list or mapping as a key cannot be a study key; construction names it, with its line.
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else f"<{key_node.id}>"
            line = key_node.start_mark.line + 1
            py_key = _key_of(loader, key_node)
            if py_key is not None and key != "<<":
                if py_key in first:
                    raise _TooBig(
                        line,
                        (*path, key),
                        f"duplicate key '{key}' (first at line {first[py_key]}); YAML would keep only the last one",
                    )
                first[py_key] = line
            _compose_lines(value_node, (*path, key), out, loader)
            out[(*path, key)] = line
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _compose_lines(item, (*path, i), out, loader)


def _level_key(loader: yaml.SafeLoader, node: yaml.Node) -> tuple[str, Any] | None:
    """What makes two grid levels the same level: a number's value (``1`` is ``1.0``, ``5e-5`` is ``0.00005``),
    else the value and its type; None for a block or a value that cannot be a key."""
    if not isinstance(node, yaml.ScalarNode):
        return None
    try:
        value = loader.construct_object(node)
        hash(value)
    except (yaml.YAMLError, TypeError, ValueError):
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return ("number", value)
    return (type(value).__name__, value)


def _check_grid_levels(root: yaml.Node, loader: yaml.SafeLoader) -> None:
    """A factor given one level twice, however spelled, is an error naming both spellings: the two would be
    two cells of one run, and a level written ``0.00005`` once and ``5e-5`` once is a slip, not a design."""
    if not isinstance(root, yaml.MappingNode):
        return
    for key_node, grid in root.value:
        if not (
            isinstance(key_node, yaml.ScalarNode) and key_node.value == "grid" and isinstance(grid, yaml.MappingNode)
        ):
            continue
        for factor, levels in grid.value:
            if not (isinstance(factor, yaml.ScalarNode) and isinstance(levels, yaml.SequenceNode)):
                continue
            seen: dict[tuple[str, Any], yaml.ScalarNode] = {}
            for node in levels.value:
                key = _level_key(loader, node)
                if key is None:
                    continue
                first = seen.setdefault(key, node)
                if first is node:
                    continue
                what = "number" if key[0] == "number" else "value"
                msg = (
                    f"level '{node.value}' is given twice"
                    if first.value == node.value
                    else f"levels '{first.value}' and '{node.value}' are the same {what} ({key[1]!r})"
                )
                raise _TooBig(node.start_mark.line + 1, ("grid", factor.value), f"{msg}; keep one")


def parse_yaml(text: str, path: Path) -> tuple[Any, LineMap]:
    """Safe YAML (no tag constructs an object) with every key's line; raise :class:`StudyError` on any problem.

    Bounded: nesting depth, alias expansion and key uniqueness are checked on the composed nodes before
    anything is built from them, so no file can make this hang, exhaust memory or recurse too deep.
    """
    loader: _BoundedLoader | None = None
    try:
        loader = _BoundedLoader(text)  # already reads: refuses control characters with a ReaderError
        node = loader.get_single_node()
        if node is not None:
            _check_size(node)
        lines: LineMap = {}
        if node is not None:
            # Before construction: building a mapping folds merge keys (<<) into it in place.
            _compose_lines(node, (), lines, loader)
            _check_grid_levels(node, loader)
        data = loader.construct_document(node) if node is not None else None
    except _TooBig as exc:
        field = ".".join(str(p) for p in exc.loc[:6]) + (".…" if len(exc.loc) > 6 else "") or "(top level)"
        raise StudyError(_one_line(f"{path}:{exc.line}: {field}: {exc}")) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise StudyError(_one_line(f"{where}: not valid YAML: {problem}")) from None
    except ValueError as exc:  # e.g. an integer of more digits than Python converts (sys.int_info)
        raise StudyError(_one_line(f"{path}: a value cannot be read: {exc}")) from None
    except RecursionError:  # cannot happen below MAX_DEPTH; kept so no input ends in a traceback
        raise StudyError(f"{path}: nested too deep to read") from None
    finally:
        if loader is not None:
            loader.dispose()
    return data, lines


def load_study(path: str | Path) -> LoadedStudy:
    """Read, parse and validate a study file; raise :class:`StudyError` with file:line on any problem."""
    p = Path(path)
    try:
        with p.open("rb") as fh:
            raw = fh.read(MAX_FILE_BYTES + 1)  # never more: a study path may name /dev/zero or a huge file
    except FileNotFoundError:
        raise StudyError(f"{p}: study file not found") from None
    except OSError as exc:
        raise StudyError(_one_line(f"{p}: cannot read study file: {exc}")) from None
    if len(raw) > MAX_FILE_BYTES:
        raise StudyError(f"{p}:1: (file): larger than {MAX_FILE_BYTES} bytes (64 KiB), the limit for a study file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise StudyError(f"{p}: cannot read study file: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    data, lines = parse_yaml(text, p)
    if not isinstance(data, dict):
        raise StudyError(f"{p}:1: a study file must be a YAML mapping (got {type(data).__name__})")
    try:
        study = Study.model_validate(data)
    except ValidationError as exc:
        raise StudyError(
            _one_line(format_validation_error(exc, path=p, line_of=lambda loc: line_of(lines, loc), model=Study))
        ) from None
    return LoadedStudy(study=study, path=p, text=text, lines=lines)
