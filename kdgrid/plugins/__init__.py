"""Registries of loss terms, layer mappings, student builders and task metrics (docs/plugins.md).

Torch-free on purpose: ``kdgrid validate`` and the study schema read names and settings models from
here. A registered thing is a *spec* (:class:`LossSpec`, :class:`MappingSpec`, :class:`StudentSpec`,
:class:`MetricSpec`): its name, its Pydantic settings model, what it needs, and where its implementation
lives as a ``"module:attr"`` string that the training layer imports only when a run uses it.

kdgrid's own built-ins (:mod:`kdgrid.plugins.builtin`) go through :meth:`Registry.add` exactly like a
plug-in; plug-ins come only from installed packages, through the entry-point groups in :data:`GROUPS`
(each entry point loads one spec; its name must equal the spec's). Nothing in a study file is ever
imported or evaluated: a study names a registered key.
"""

from __future__ import annotations

import hashlib
import importlib
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import metadata
from typing import Any, Literal, cast

from pydantic import BaseModel, ConfigDict, ValidationError

from kdgrid.errors import PluginError

Kind = Literal["losses", "mappings", "students", "metrics"]
KINDS: tuple[Kind, ...] = ("losses", "mappings", "students", "metrics")
GROUPS: dict[Kind, str] = {k: f"kdgrid.{k}" for k in KINDS}
_SINGULAR = {"losses": "loss term", "mappings": "mapping", "students": "student builder", "metrics": "metric"}

# What a loss term can read. 'logits': final logits (teacher: a cached table can serve them);
# 'hidden': hidden states of the mapped layers (and index 0, the embeddings); 'cls': position 0 of them;
# 'qk': pre-softmax queries and keys of the mapped layers; 'values': their values.
Need = Literal["logits", "hidden", "cls", "qk", "values", "embeddings", "labels"]
NEEDS: tuple[str, ...] = ("logits", "hidden", "cls", "qk", "values", "embeddings", "labels")


class Settings(BaseModel):
    """Base of every settings model: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


class NoSettings(Settings):
    """A registered thing without settings."""


@dataclass(frozen=True)
class Shapes:
    """Teacher and student shapes a compatibility check sees (no torch, known at ``validate``)."""

    teacher_layers: int
    teacher_heads: int
    teacher_hidden: int
    student_layers: int
    student_heads: int
    student_hidden: int


@dataclass(frozen=True)
class Source:
    """Where a registered thing came from: a package and its version (kdgrid itself for built-ins)."""

    package: str
    version: str
    entry_point: str = ""  # 'group:name = module:attr', empty for built-ins

    @property
    def builtin(self) -> bool:
        return self.package == "kdgrid"

    def __str__(self) -> str:
        return f"{self.package} {self.version}" + (f" ({self.entry_point})" if self.entry_point else "")


@dataclass(frozen=True)
class LossSpec:
    """A loss term: ``impl`` is a ``torch.nn.Module`` class ``(settings, context)``; see kdgrid.train.terms.

    ``stage``: 'prediction' terms train in the joint and the prediction stage, 'intermediate' terms in
    the joint and the intermediate stage (TinyBERT's stage 1). ``needs`` decides what kdgrid captures.
    ``check(settings, shapes)`` raises ValueError when the term cannot work between these shapes.
    """

    name: str
    settings: type[BaseModel]
    impl: str
    needs: frozenset[str]
    stage: Literal["prediction", "intermediate"]
    description: str = ""
    check: Callable[[Any, Shapes], None] | None = None
    kind: Kind = field(default="losses", init=False)

    def __post_init__(self) -> None:
        unknown = set(self.needs) - set(NEEDS)
        if unknown:
            raise PluginError(f"loss term '{self.name}' needs {sorted(unknown)} (allowed: {', '.join(NEEDS)})")
        if "weight" in self.settings.model_fields:  # objective.terms.NAME.weight is kdgrid's, not the term's
            raise PluginError(f"loss term '{self.name}': its settings may not define 'weight' (kdgrid weighs terms)")

    @property
    def layered(self) -> bool:
        """Whether the term reads per-layer states, i.e. uses the layer mapping."""
        return bool(self.needs & {"hidden", "cls", "qk", "values"})


@dataclass(frozen=True)
class MappingSpec:
    """A fixed layer mapping: ``impl(n_teacher, n_student, settings) -> [teacher layer | None per student layer]``.

    Pure Python (no torch), so ``validate`` can compute it. The built-in 'learnable' mapping has ``impl``
    empty: the objective owns its trainable weights.
    """

    name: str
    settings: type[BaseModel]
    impl: str
    description: str = ""
    kind: Kind = field(default="mappings", init=False)


@dataclass(frozen=True)
class StudentSpec:
    """A student builder: ``impl(teacher_model, student_cfg, seed, pointed, settings) -> model``.

    ``copies_layers``: it copies teacher layers (so its layer count must not exceed the teacher's).
    """

    name: str
    settings: type[BaseModel]
    impl: str
    copies_layers: bool = False
    description: str = ""
    check: Callable[[Any, Shapes], None] | None = None
    kind: Kind = field(default="students", init=False)


@dataclass(frozen=True)
class MetricSpec:
    """A task metric: ``impl(predictions, labels) -> float`` over numpy arrays (label ids; STS-B scores)."""

    name: str
    impl: str
    higher_is_better: bool = True
    regression: bool | None = None  # True: scores only; False: label ids only; None: both
    description: str = ""
    settings: type[BaseModel] = NoSettings
    kind: Kind = field(default="metrics", init=False)


Spec = LossSpec | MappingSpec | StudentSpec | MetricSpec
_SPEC_TYPE: dict[Kind, type] = {
    "losses": LossSpec,
    "mappings": MappingSpec,
    "students": StudentSpec,
    "metrics": MetricSpec,
}


@dataclass(frozen=True)
class Entry:
    spec: Any
    source: Source


class Registry:
    """Name -> spec per kind, with where each came from. Duplicate names are refused, both sources named."""

    def __init__(self) -> None:
        self._entries: dict[Kind, dict[str, Entry]] = {k: {} for k in KINDS}

    def add(self, spec: Spec, source: Source) -> None:
        kind = spec.kind
        if not isinstance(spec, _SPEC_TYPE[kind]):
            raise PluginError(f"{source}: {spec!r} is not a {_SPEC_TYPE[kind].__name__}")
        if not spec.name or not spec.name.replace("_", "").replace("-", "").isalnum():
            raise PluginError(f"{source}: {_SINGULAR[kind]} name {spec.name!r} must be letters, digits, '_' or '-'")
        old = self._entries[kind].get(spec.name)
        if old is not None:
            raise PluginError(
                f"{_SINGULAR[kind]} '{spec.name}' is registered twice: by {old.source} and by {source} "
                "(uninstall one, or rename its entry point)"
            )
        self._entries[kind][spec.name] = Entry(spec, source)

    def get(self, kind: Kind, name: str) -> Entry:
        try:
            return self._entries[kind][name]
        except KeyError:
            raise PluginError(f"unknown {_SINGULAR[kind]} '{name}' ({self.names_hint(kind)})") from None

    def spec(self, kind: Kind, name: str) -> Any:
        return self.get(kind, name).spec

    def has(self, kind: Kind, name: str) -> bool:
        return name in self._entries[kind]

    def names(self, kind: Kind) -> list[str]:
        return list(self._entries[kind])

    def names_hint(self, kind: Kind) -> str:
        """'allowed: a, b, c': the registered names (`kdgrid plugins` says where each comes from)."""
        return f"allowed: {', '.join(self.names(kind))}; registered {kind}, see `kdgrid plugins`"

    def entries(self, kind: Kind) -> list[Entry]:
        return list(self._entries[kind].values())


def _distribution_of(ep: metadata.EntryPoint) -> tuple[str, str]:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return "unknown", "unknown"
    return dist.metadata["Name"], dist.version


def _load_entry_points(reg: Registry, entry_points: Iterable[metadata.EntryPoint] | None = None) -> None:
    eps = (
        list(entry_points)
        if entry_points is not None
        else [ep for kind in KINDS for ep in metadata.entry_points(group=GROUPS[kind])]
    )
    kind_of = {g: k for k, g in GROUPS.items()}
    for ep in sorted(eps, key=lambda e: (e.group, e.name, _distribution_of(e))):
        package, version = _distribution_of(ep)
        source = Source(package, version, f"{ep.group}:{ep.name} = {ep.value}")
        try:
            spec = ep.load()
        except Exception as exc:  # a broken plug-in must say which one, in one line
            raise PluginError(f"plug-in {source} cannot be loaded: {type(exc).__name__}: {exc}") from None
        kind = kind_of[ep.group]
        if not isinstance(spec, _SPEC_TYPE[kind]):
            raise PluginError(f"plug-in {source} loads {type(spec).__name__}, not a {_SPEC_TYPE[kind].__name__}")
        spec = cast(Spec, spec)  # checked just above against the group's spec class
        if spec.name != ep.name:
            raise PluginError(f"plug-in {source}: entry point name '{ep.name}' differs from the spec's '{spec.name}'")
        reg.add(spec, source)


def build_registry(entry_points: Iterable[metadata.EntryPoint] | None = None) -> Registry:
    """Built-ins first, then every installed plug-in (or the given entry points, for tests)."""
    from kdgrid import __version__
    from kdgrid.plugins import builtin

    reg = Registry()
    for spec in builtin.SPECS:
        reg.add(spec, Source("kdgrid", __version__))
    _load_entry_points(reg, entry_points)
    return reg


@lru_cache(maxsize=1)
def registry() -> Registry:
    """The process's registry, built once (entry points are read at first use, not at import)."""
    return build_registry()


def load_impl(ref: str) -> Any:
    """Import ``module:attr`` (an implementation named by a spec)."""
    module, _, attr = ref.partition(":")
    try:
        obj: Any = importlib.import_module(module)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise PluginError(f"cannot import '{ref}': {exc}") from None
    return obj


def validate_settings(spec: Any, values: dict[str, Any] | None, where: str) -> BaseModel:
    """The spec's settings model filled from ``values``; ValueError listing the allowed keys otherwise."""
    try:
        settings: type[BaseModel] = spec.settings
        return settings.model_validate(values or {})
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"])
        allowed = ", ".join(spec.settings.model_fields) or "none"
        if err["type"] == "extra_forbidden":
            msg = f"{where}.{key}: unknown key (allowed: {allowed})"
        else:
            msg = f"{where}.{key}: {err['msg'].removeprefix('Value error, ')} (allowed keys: {allowed})"
        raise ValueError(msg) from None


def settings_hash(settings: BaseModel) -> str:
    """A short hash of validated settings (defaults filled), recorded with a run that uses a plug-in."""
    blob = json.dumps(settings.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def plugin_layer_map(kind: str, n_teacher: int, n_student: int, settings: Any = None) -> list[int | None]:
    """A registered mapping's layer map, checked: one entry per student layer, each None or in 1..T."""
    from kdgrid.errors import PlanError

    spec = registry().spec("mappings", kind)
    if not spec.impl:
        raise PlanError(f"mapping '{kind}' has no fixed layer map")
    if not isinstance(settings, BaseModel):
        try:
            settings = validate_settings(spec, settings, "objective.mapping.settings")
        except ValueError as exc:
            raise PlanError(str(exc)) from None
    try:
        out = list(load_impl(spec.impl)(n_teacher, n_student, settings))
    except ValueError as exc:  # a mapping says why it cannot map these shapes
        raise PlanError(
            f"objective.mapping.kind: mapping '{kind}' cannot map {n_student} student onto "
            f"{n_teacher} teacher layers: {exc}"
        ) from None
    bad = [n for n in out if n is not None and not (isinstance(n, int) and 1 <= n <= n_teacher)]
    if len(out) != n_student or bad:
        raise PlanError(
            f"objective.mapping.kind: mapping '{kind}' ({registry().get('mappings', kind).source}) returned {out}: "
            f"it must give one teacher layer in 1..{n_teacher} (or None) per student layer ({n_student})"
        )
    return out
