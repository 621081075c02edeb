"""A sequential study's comparisons, looks and per-comparison designs (pure; no store)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from kdgrid.analyze.sequential import Design, detectable
from kdgrid.errors import StudyError
from kdgrid.plan.expand import PlannedRun
from kdgrid.study.schema import Sequential, Study
from kdgrid.tasks import TASKS


@dataclass(frozen=True)
class Comparison:
    """One condition cell against its baseline cell on one task, with its own design."""

    task: str
    condition: str  # cell label (PlannedRun.cell)
    baseline: str
    metric: str
    margin: float | None
    design: Design

    @property
    def key(self) -> tuple[str, str]:
        return (self.task, self.condition)


@dataclass(frozen=True)
class SequentialPlan:
    study: str
    settings: Sequential
    seeds: tuple[int, ...]  # the seed pool, in the order looks take them
    looks: tuple[int, ...]  # seeds per cell at each look
    comparisons: tuple[Comparison, ...]
    runs: dict[tuple[str, str, int], PlannedRun] = field(repr=False)  # (task, cell, seed) -> run

    def cell_runs(self, task: str, cell: str, n_seeds: int) -> list[PlannedRun]:
        return [self.runs[(task, cell, s)] for s in self.seeds[:n_seeds] if (task, cell, s) in self.runs]

    def first_look_runs(self) -> list[PlannedRun]:
        return self._runs_through(self.looks[0])

    def max_runs(self) -> list[PlannedRun]:
        return self._runs_through(self.looks[-1])

    def _runs_through(self, n: int) -> list[PlannedRun]:
        out: dict[tuple[str, str, int], PlannedRun] = {}
        for c in self.comparisons:
            for cell in (c.condition, c.baseline):
                for r in self.cell_runs(c.task, cell, n):
                    out[(r.task, r.cell, r.seed)] = r
        return list(out.values())

    def design_lines(self) -> list[str]:
        """The design in words: looks, spending, α split, and what the largest design detects."""
        s = self.settings
        lines = [
            f"group-sequential paired t tests, {s.spending.replace('_', '-')} α-spending (Lan & DeMets 1983), "
            f"looks at {', '.join(map(str, self.looks))} seeds per cell; α = {s.alpha:g} per task "
            + ("split equally (Bonferroni) over its comparisons" if s.correction == "bonferroni" else "per comparison")
            + "; equivalence by repeated TOST at the spent α"
        ]
        seen: set[tuple[float, int]] = set()
        for c in self.comparisons:
            key = (c.design.alpha, len(c.design.looks))
            if key in seen:
                continue
            seen.add(key)
            dz = detectable(c.design, s.power)
            eq = detectable(c.design, s.power, equivalence=True)
            lines.append(
                f"α = {c.design.alpha:.4g} per comparison ({c.task}; spent as α' = {c.design.alpha_different:.4g} "
                f"on the t tests for 'different', calibrated for estimated sd): power {s.power:g} to call |d_z| ≥ {dz:.2f} "
                f"different, and to call a zero difference equivalent when the margin is ≥ {eq:.2f} sd of the "
                "paired differences (σ known; with 2-11 df somewhat less, docs/sequential.md)"
            )
        return lines


def _looks(first: int, step: int, n_max: int) -> tuple[int, ...]:
    looks = list(range(min(first, n_max), n_max, step))
    return tuple(looks + [n_max]) if not looks or looks[-1] != n_max else tuple(looks)


def _resolve_key(key: str, names: Sequence[str], where: str) -> str:
    if key in names:
        return key
    hits = [n for n in names if n.endswith("." + key)]
    if len(hits) == 1:
        return hits[0]
    raise StudyError(f"{where}: '{key}' is not a factor of the study (allowed: {', '.join(names) or '(none)'})")


def _levels(flt: dict[str, Any], names: Sequence[str], where: str) -> dict[str, str]:
    return {_resolve_key(str(k), names, where): str(v) for k, v in flt.items()}


def plan_sequential(study: Study, runs: Sequence[PlannedRun], *, path: str = "study") -> SequentialPlan:
    """Comparisons (every cell vs its baseline per task, or the chosen ones) and looks of a sequential study."""
    s = study.analysis.sequential
    if s is None:
        raise StudyError(f"{path}: analysis.sequential: not a sequential study")
    pool = study.seed_list
    n_max = s.max_seeds or len(pool)
    if n_max > len(pool):
        raise StudyError(
            f"{path}: analysis.sequential.max_seeds: {n_max} but the study lists {len(pool)} seeds "
            f"(allowed: 2 to {len(pool)}; raise 'seeds')"
        )
    if n_max < 2:
        raise StudyError(f"{path}: seeds: a sequential study needs at least 2 seeds (got {n_max})")
    if s.first > n_max:
        raise StudyError(
            f"{path}: analysis.sequential.first: {s.first} seeds but max_seeds is {n_max} (allowed: 2 to {n_max})"
        )
    seeds = tuple(pool[:n_max])
    looks = _looks(s.first, s.step, n_max)
    names = list(runs[0].factors) if runs else []
    if not names:
        raise StudyError(f"{path}: analysis.sequential: the study has no grid or variants, so nothing to compare")
    metrics = sorted({m for t in study.tasks for m in TASKS[t].metrics})
    bad = [m for m in s.margin if m not in metrics]
    if bad:
        raise StudyError(
            f"{path}: analysis.sequential.margin: unknown metric '{bad[0]}' (allowed: {', '.join(metrics)})"
        )
    if study.analysis.baseline:
        base = _levels(study.analysis.baseline, names, f"{path}: analysis.baseline")
    else:  # the first level the study file lists for each factor, as the report does
        base = {n: str(next(iter(study.grid[n] if n in study.grid else study.variants[n]))) for n in names}
    chosen = [_levels(f, names, f"{path}: analysis.sequential.comparisons") for f in s.comparisons or []]
    by_key = {(r.task, r.cell, r.seed): r for r in runs if r.seed in seeds}
    cells: dict[tuple[str, str], dict[str, str]] = {}
    for r in runs:
        cells.setdefault((r.task, r.cell), r.factors)
    per_task: dict[str, list[tuple[str, str]]] = {}
    for (task, cell), levels in cells.items():
        counterpart = {**levels, **{k: v for k, v in base.items() if k in levels}}
        bcell = next((c for (t, c), lv in cells.items() if t == task and lv == counterpart), None)
        if bcell is None or bcell == cell:
            continue
        if chosen and not any(all(levels.get(k) == v for k, v in f.items()) for f in chosen):
            continue
        per_task.setdefault(task, []).append((cell, bcell))
    if not per_task:
        raise StudyError(
            f"{path}: analysis.sequential: no cell to compare with its baseline "
            f"({', '.join(f'{k}={v}' for k, v in base.items())})"
        )
    comparisons = []
    for task, pairs in per_task.items():
        alpha = s.alpha / len(pairs) if s.correction == "bonferroni" else s.alpha
        metric = TASKS[task].official_metric if study.analysis.metric == "auto" else study.analysis.metric
        if metric not in TASKS[task].metrics:
            raise StudyError(
                f"{path}: analysis.metric: '{metric}' is not a metric of task {task} "
                f"(allowed: auto, {', '.join(TASKS[task].metrics)})"
            )
        design = Design(looks, alpha, s.spending)
        comparisons += [Comparison(task, c, b, metric, s.margin.get(metric), design) for c, b in pairs]
    return SequentialPlan(study.name, s, seeds, looks, tuple(comparisons), by_key)


def check_sequential(study: Study, runs: Sequence[PlannedRun], path: str) -> SequentialPlan | None:
    """The plan of a sequential study (its errors as StudyError), or None for a fixed-seed study."""
    if study.analysis.sequential is None:
        return None
    return plan_sequential(study, runs, path=path)
