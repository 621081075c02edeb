"""Expand a study into resolved runs: grid x variants x tasks x seeds, filtered.

Pure functions only; nothing here touches the store or torch.
"""

from __future__ import annotations

import copy
import gc
import itertools
import json
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError

from kdgrid.errors import PlanError
from kdgrid.plan.canonical import (
    CANONICAL_READS,
    canonical_config,
    canonicalize,
    config_data,
    data_run_id,
    hash_blob,
    identity_part,
    identity_text,
)
from kdgrid.plan.count import check_plan_size
from kdgrid.study.schema import Objective, RunConfig, Study


@dataclass(frozen=True)
class PlannedRun:
    """One run of a study: its cell (factor levels), task, seed and canonical resolved config.

    ``config`` is the study's own :class:`RunConfig`, read-only: runs of one cell share its blocks.
    Its JSON form (a worker's job, the store's ``runs.config``, the run id) is :meth:`config_data`.
    """

    run_id: str
    task: str
    seed: int
    factors: dict[str, str]  # factor name -> level, as strings (variants: the level's name)
    config: RunConfig = field(repr=False)
    # config_data(config), filled by the plan from the dumps it made anyway (dumping a RunConfig costs ~100 us,
    # registering 100,000 runs would pay it per run); None: made on first use.
    _data: dict[str, Any] | None = field(default=None, repr=False, compare=False)

    @property
    def cell(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.factors.items()) or "(base)"

    def config_data(self) -> dict[str, Any]:
        """The config's JSON form, :func:`kdgrid.plan.canonical.config_data` (shared: do not change it)."""
        if self._data is None:
            object.__setattr__(self, "_data", config_data(self.config))
        assert self._data is not None
        return self._data


def set_path(tree: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``a.b.c`` in a nested dict; the path must exist in the run schema (checked by the caller)."""
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        nxt = node.get(part)
        if nxt is None:
            nxt = {}
        elif part == "epochs" and isinstance(nxt, int):
            # One integer means the same count for both stages of a two-stage schedule.
            nxt = {"intermediate": nxt, "prediction": nxt}
        if not isinstance(nxt, dict):
            raise PlanError(f"'{dotted}': '{part}' is not a block")
        node[part] = nxt
        node = nxt
    old = node.get(parts[-1])
    # A block given as a value is merged into the block it replaces, so a variant can name just what changes.
    node[parts[-1]] = _merge(old, value) if isinstance(old, dict) and isinstance(value, dict) else value


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in update.items():
        out[k] = _merge(out[k], v) if isinstance(out.get(k), dict) and isinstance(v, dict) else v
    return out


def get_path(tree: dict[str, Any], dotted: str) -> Any:
    node: Any = tree
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(dotted)
        node = node[part]
    return node


# Blocks whose keys are plug-in names or a plug-in's settings, not fields of the schema.
FREE_FORM: tuple[tuple[str, ...], ...] = (
    ("objective", "terms"),
    ("objective", "mapping", "settings"),
    ("student", "settings"),
)


def check_path(dotted: str, base: dict[str, Any], where: str, loc: tuple[Any, ...] = ()) -> None:
    """Reject a dotted path that names no setting, listing the keys allowed at the failing level."""
    parts = tuple(dotted.split("."))
    if any(parts[: len(free)] == free for free in FREE_FORM):
        return  # plug-in names and settings: the registry's settings models check them when runs validate
    node: Any = base
    walked: list[str] = []
    for part in parts:
        if isinstance(node, dict) and part in node:
            node = node[part]
            walked.append(part)
            continue
        allowed = sorted(node) if isinstance(node, dict) else []
        at = ".".join(walked) or "the run config"
        hint = f" (allowed under {at}: {', '.join(allowed)})" if allowed else f" ('{at}' is a value, not a block)"
        raise PlanError(f"{where}: unknown setting '{dotted}'{hint}", loc=loc)


def _full_template() -> dict[str, Any]:
    """A run config with every optional block filled, so dotted paths can be checked."""
    tpl = RunConfig(task="cola", seed=0).model_dump(mode="json")
    tpl["train"]["epochs"] = {"intermediate": 1, "prediction": 1}  # either form is a valid target
    for path in FREE_FORM:  # dropped from a dump when empty (so built-in runs keep their ids)
        node = tpl
        for part in path[:-1]:
            node = node[part]
        node.setdefault(path[-1], {})
    tpl.setdefault("metrics", [])
    return tpl


def _variant_path(group: str, key: str, template: dict[str, Any]) -> str:
    """Keys of a variant group named after a block (``student``) are relative to it;
    any other group name (``method``) takes dotted paths from the run config's root."""
    return f"{group}.{key}" if group in template else key


def _fmt(value: Any) -> str:
    return str(value)


def _matches(flt: dict[str, Any], factors: dict[str, str], config: dict[str, Any]) -> bool:
    for key, want in flt.items():
        if key in factors:
            have: Any = factors[key]
        else:
            try:
                have = get_path(config, key)
            except KeyError:
                return False
        if _fmt(have) != _fmt(want) and not _same_number(have, want):
            return False
    return True


def _same_number(have: Any, want: Any) -> bool:
    """A filter's ``0`` matches the level ``0.0`` (a cell's level is text: ``"0.0"``), ``5e-5`` matches ``0.00005``."""
    a, b = _number(have), _number(want)
    return a is not None and b is not None and a == b


def _number(x: Any) -> float | None:
    if isinstance(x, bool) or not isinstance(x, (int, float, str)):
        return None
    try:
        return float(x)
    except (ValueError, OverflowError):
        return None


def _check_filter_keys(study: Study, template: dict[str, Any]) -> None:
    names = set(study.grid) | set(study.variants) | {"task", "seed"}
    for kind, filters in (("include", study.include), ("exclude", study.exclude)):
        for i, flt in enumerate(filters):
            for key in flt:
                if key not in names:
                    check_path(key, template, f"{kind}[{i}]", (kind, i, key))


def expand(study: Study, *, plan_limit: int | None = None) -> list[PlannedRun]:
    """All runs of a study, validated, in a stable order (task, cell, seed).

    Runs that collapse to the same canonical config (a factor without effect, e.g.
    the attention loss when alpha = 0) keep their own cell but share a run id.
    A plan larger than ``plan_limit`` (else the study's, else the default) is refused before expanding.
    """
    check_plan_size(study, plan_limit)
    template = _full_template()
    for path in study.grid:
        check_path(path, template, f"grid.{path}", ("grid", path))
    for group, levels in study.variants.items():
        for level, overrides in levels.items():
            for key in overrides:
                check_path(
                    _variant_path(group, key, template),
                    template,
                    f"variants.{group}.{level}",
                    ("variants", group, level, key),
                )
    _check_filter_keys(study, template)

    # The cached path shares the five blocks; top-level run fields (metrics, and the plug-ins recorded from
    # them) are the reference path's.
    if not study.metrics and all(path.split(".", 1)[0] in _BLOCKS for path in _touched_paths(study, template)):
        runs = _expand_cached(study, template)
    else:  # a grid or variant over a top-level field (task, seed): no block to cache by
        runs = _expand_reference(study, template)
    if not runs:
        raise PlanError(f"study '{study.name}': the grid expands to no runs (check include/exclude)", loc=("exclude",))
    return runs


# The top-level blocks of a RunConfig, in its field order (the order of a dumped config's keys).
_BLOCKS = ("teacher", "student", "data", "train", "objective")


def _touched_paths(study: Study, template: dict[str, Any]) -> list[str]:
    paths = list(study.grid)
    for group, levels in study.variants.items():
        paths += [_variant_path(group, key, template) for overrides in levels.values() for key in overrides]
    return paths


def _expand_reference(study: Study, template: dict[str, Any]) -> list[PlannedRun]:
    """The straightforward expansion: a deep copy, a validation and a hash per run.

    :func:`_expand_cached` must give exactly these runs (tests/test_plan_fast.py); it is kept as the
    reference and for studies whose grid sets a top-level field.
    """
    base = study.base_config()
    grid_items = list(study.grid.items())
    variant_items = list(study.variants.items())
    runs: list[PlannedRun] = []
    for task in study.tasks:
        for grid_levels in itertools.product(*(levels for _, levels in grid_items)):
            for variant_levels in itertools.product(*(list(levels) for _, levels in variant_items)):
                cfg = copy.deepcopy(base)
                factors: dict[str, str] = {}
                for (path, _), level in zip(grid_items, grid_levels):
                    set_path(cfg, path, level)
                    factors[path] = _fmt(level)
                for (group, levels), level_name in zip(variant_items, variant_levels):
                    for key, value in levels[level_name].items():
                        set_path(cfg, _variant_path(group, key, template), value)
                    factors[group] = level_name
                for seed in study.seed_list:
                    run_cfg = {**cfg, "task": task, "seed": seed}
                    if study.include and not any(
                        _matches(f, {**factors, "task": task, "seed": str(seed)}, run_cfg) for f in study.include
                    ):
                        continue
                    if any(_matches(f, {**factors, "task": task, "seed": str(seed)}, run_cfg) for f in study.exclude):
                        continue
                    runs.append(_planned(_validate(run_cfg, factors, task, seed), task, seed, factors))
    return runs


def _planned(resolved: RunConfig, task: str, seed: int, factors: dict[str, str]) -> PlannedRun:
    """The reference way from a validated run to its planned run: canonical config, its dump, its hash."""
    canon = canonical_config(resolved)
    data = config_data(canon)
    return PlannedRun(data_run_id(data), task, seed, factors, canon, data)


_new_model = BaseModel.__new__
_set_slot = object.__setattr__
# BaseModel's own slots, set through their descriptors: a third of the cost of object.__setattr__ by name.
_set_fields_set = BaseModel.__dict__["__pydantic_fields_set__"].__set__
_set_extra = BaseModel.__dict__["__pydantic_extra__"].__set__
_set_private = BaseModel.__dict__["__pydantic_private__"].__set__


def with_seed(cell: RunConfig, seed: int) -> RunConfig:
    """``cell.model_copy(update={"seed": seed})`` at a third of its cost (what pydantic's ``__copy__`` does, with
    the seed put in): the plan makes one per run, 100,000 in a big plan. ``seed`` must be a non-negative int (the
    caller checked). The blocks, and the set of fields given, are shared with ``cell``: planned configs are
    read-only."""
    run = _new_model(RunConfig)
    _set_slot(run, "__dict__", {**cell.__dict__, "seed": seed})
    _set_fields_set(run, cell.__pydantic_fields_set__)
    _set_extra(run, None)
    _set_private(run, None)
    return run


class _Blocks:
    """Each distinct value of one top-level block, built, validated and dumped once.

    A block's value is fixed by the levels of the factors that set paths inside it, so those levels
    (as indices) are the cache key: 100,000 runs of 10,000 cells may have only a few hundred distinct
    objective blocks and a few dozen train blocks.
    """

    def __init__(self, name: str, base: dict[str, Any]) -> None:
        self.name = name
        self.base = base
        self.model = RunConfig.model_fields[name].annotation
        self.raw: dict[tuple[int, ...], dict[str, Any]] = {}
        self.valid: dict[tuple[int, ...], tuple[Any, dict[str, Any]] | None] = {}
        self.texts: dict[tuple[int, ...], str] = {}

    def build(self, key: tuple[int, ...], sets: list[tuple[str, Any]]) -> dict[str, Any]:
        block = self.raw.get(key)
        if block is None:
            tree = {self.name: copy.deepcopy(self.base)}
            for path, value in sets:
                set_path(tree, path, value)
            block = self.raw[key] = tree[self.name]
        return block

    def validated(self, key: tuple[int, ...]) -> tuple[Any, dict[str, Any]] | None:
        """(model instance, its JSON dump), or None when the block alone is invalid."""
        if key not in self.valid:
            try:
                inst = self.model.model_validate(self.raw[key])  # type: ignore[union-attr]
            except ValidationError:
                self.valid[key] = None
            else:
                self.valid[key] = (inst, inst.model_dump(mode="json"))
        return self.valid[key]

    def text(self, key: tuple[int, ...]) -> str:
        """The dumped block's JSON text in a run's identity view (after :meth:`validated` succeeded)."""
        if key not in self.texts:
            self.texts[key] = identity_part(self.name, self.valid[key][1])  # type: ignore[index]
        return self.texts[key]


def _expand_cached(study: Study, template: dict[str, Any]) -> list[PlannedRun]:
    """:func:`_expand_reference`, with the work done once per distinct block and once per cell, not per run.

    Per run only what differs between seeds is done: the filters, and the hash of the cell's identity
    text with the seed put in. Seeds of one cell share the config's blocks (read-only, like every
    PlannedRun's config). Anything that fails validation goes through the reference path's
    ``_validate`` so the error is word for word the same.
    """
    gc_was_on = gc.isenabled()
    # Nothing expanded here forms a cycle; the collector's passes over a growing list of 10^5 runs'
    # dicts cost a third of the time at that size.
    gc.disable()
    try:
        return _expand_cells(study, template)
    finally:
        if gc_was_on:
            gc.enable()


def _expand_cells(study: Study, template: dict[str, Any]) -> list[PlannedRun]:
    base = study.base_config()
    blocks = {name: _Blocks(name, base[name]) for name in _BLOCKS}
    canon_objectives: dict[tuple[Any, ...], tuple[dict[str, Any], str, Objective]] = {}
    grid_items = list(study.grid.items())
    variant_items = list(study.variants.items())
    grid_block = [path.split(".", 1)[0] for path, _ in grid_items]
    variant_blocks = [
        sorted({_variant_path(g, k, template).split(".", 1)[0] for lv in levels.values() for k in lv})
        for g, levels in variant_items
    ]
    filters = bool(study.include or study.exclude)
    runs: list[PlannedRun] = []
    for task in study.tasks:
        for grid_idx in itertools.product(*(range(len(levels)) for _, levels in grid_items)):
            for var_idx in itertools.product(*(range(len(levels)) for _, levels in variant_items)):
                factors: dict[str, str] = {}
                keys: dict[str, list[int]] = {name: [] for name in _BLOCKS}
                sets: dict[str, list[tuple[str, Any]]] = {name: [] for name in _BLOCKS}
                for (path, levels), i, blk in zip(grid_items, grid_idx, grid_block):
                    keys[blk].append(i)
                    sets[blk].append((path, levels[i]))
                    factors[path] = _fmt(levels[i])
                for (group, named), i, touched in zip(variant_items, var_idx, variant_blocks):
                    level_name = list(named)[i]
                    for blk in touched:
                        keys[blk].append(-1 - i)  # variant indices apart from grid indices
                    for key, value in named[level_name].items():
                        path = _variant_path(group, key, template)
                        sets[path.split(".", 1)[0]].append((path, value))
                    factors[group] = level_name
                bkeys = {name: tuple(keys[name]) for name in _BLOCKS}
                cfg = {name: blocks[name].build(bkeys[name], sets[name]) for name in _BLOCKS}
                cell: tuple[str, str, RunConfig, dict[str, Any]] | None = None
                for seed in study.seed_list:
                    if filters:
                        run_cfg = {**cfg, "task": task, "seed": seed}
                        at = {**factors, "task": task, "seed": str(seed)}
                        if study.include and not any(_matches(f, at, run_cfg) for f in study.include):
                            continue
                        if any(_matches(f, at, run_cfg) for f in study.exclude):
                            continue
                    if (
                        type(seed) is not int
                        or seed < 0
                        or (cell is None and (cell := _cell(task, seed, bkeys, blocks, canon_objectives)) is None)
                    ):
                        resolved = _validate({**cfg, "task": task, "seed": seed}, factors, task, seed)
                        runs.append(_planned(resolved, task, seed, factors))
                        continue
                    head, tail, config, data = cell
                    # json.dumps writes an int seed as str(seed): the text the reference path hashes.
                    runs.append(
                        PlannedRun(
                            hash_blob(f"{head}{seed}{tail}"),
                            task,
                            seed,
                            factors,
                            with_seed(config, seed),
                            {**data, "seed": seed},
                        )
                    )
    return runs


def _cell(
    task: str,
    seed: int,
    bkeys: dict[str, tuple[int, ...]],
    blocks: dict[str, _Blocks],
    canon_objectives: dict[tuple[Any, ...], tuple[dict[str, Any], str, Objective]],
) -> tuple[str, str, RunConfig, dict[str, Any]] | None:
    """The cell's identity text before and after the seed, its canonical config and that config's JSON form
    (seed: the first seed's); None: validate this run the reference way (it fails there, with the reference's
    message)."""
    valid = {name: blocks[name].validated(bkeys[name]) for name in _BLOCKS}
    if any(v is None for v in valid.values()):
        return None
    dumps = {n: v[1] for n, v in valid.items()}  # type: ignore[index]
    try:
        # Validated block instances are taken as they are: what runs here is RunConfig's own cross-checks.
        whole = RunConfig.model_validate({"task": task, "seed": seed, **{n: v[0] for n, v in valid.items()}})  # type: ignore[index]
    except ValidationError:
        return None
    if whole.plugins or whole.metrics:  # top-level fields outside the shared blocks: the reference path keeps them
        return None
    ckey = tuple(bkeys[r] if r in bkeys else json.dumps(get_path(dumps, r)) for r in CANONICAL_READS)
    if ckey not in canon_objectives:
        full = canonicalize({"task": task, "seed": seed, **dumps})
        obj = full["objective"]
        canon_objectives[ckey] = (obj, identity_part("objective", obj), Objective.model_validate(obj))
    obj, obj_text, obj_model = canon_objectives[ckey]
    canon = {"task": task, "seed": seed, **dumps, "objective": obj}
    config = whole.model_copy(update={"objective": obj_model})
    parts = {n: blocks[n].text(bkeys[n]) for n in _BLOCKS if n != "objective"}
    head, tail = identity_text({**parts, "objective": obj_text, "task": json.dumps(task), "seed": "\x00"}).split("\x00")
    return head, tail, config, canon


def _validate(cfg: dict[str, Any], factors: dict[str, str], task: str, seed: int) -> RunConfig:
    try:
        return RunConfig.model_validate(cfg)
    except ValidationError as exc:
        err = exc.errors()[0]
        field_name = ".".join(str(p) for p in err["loc"])
        cell = ", ".join(f"{k}={v}" for k, v in factors.items()) or "base config"
        msg = err["msg"].removeprefix("Value error, ")
        raise PlanError(f"run (task={task}, seed={seed}, {cell}): {field_name}: {msg}") from None


def summarize(runs: list[PlannedRun]) -> dict[str, int]:
    cells = {(r.task, r.cell) for r in runs}
    return {
        "runs": len(runs),
        "unique_runs": len({r.run_id for r in runs}),
        "cells": len(cells),
        "tasks": len({r.task for r in runs}),
        "seeds": len({r.seed for r in runs}),
    }


def plan_study(study: Study, *, plan_limit: int | None = None) -> list[PlannedRun]:
    """Expand and check every run against its teacher's shape (read without torch)."""
    from kdgrid.plan.shapes import check_run, teacher_shape

    runs = expand(study, plan_limit=plan_limit)
    shapes: dict[str, Any] = {}
    seen: set[str] = set()
    for run in runs:
        if run.run_id in seen:
            continue
        seen.add(run.run_id)
        model = run.config.teacher.model
        if model not in shapes:
            shapes[model] = teacher_shape(model)
        if shapes[model] is not None:
            try:
                check_run(run.config, shapes[model])
            except PlanError as exc:
                # check_run messages start with the dotted field at fault; point the CLI at it.
                loc = tuple(str(exc).split(":", 1)[0].split("[")[0].split("."))
                raise PlanError(f"run (task={run.task}, seed={run.seed}, {run.cell}): {exc}", loc=loc) from None
    return runs
