"""Each comparison's state, recomputed from the stored results of its completed looks.

A look is complete for a comparison when every run of both cells for the look's seeds has
finished (done or failed). The verdict is :func:`sequential_test` of the complete looks' paired
differences: a pure function of stored results, so a restarted ``kdgrid run`` (or ``status``,
``report``) reaches the same decision at the same look without storing decisions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from kdgrid.analyze.sequential import SequentialResult, sequential_test
from kdgrid.plan.expand import PlannedRun
from kdgrid.sequential.plan import Comparison, SequentialPlan
from kdgrid.store.db import Store

FINISHED = ("done", "failed")


@dataclass(frozen=True)
class RunOutcome:
    status: str
    metrics: dict[str, float]


@dataclass(frozen=True)
class ComparisonState:
    comparison: Comparison
    result: SequentialResult
    looks_complete: int
    seeds_needed: int  # seeds per cell this comparison needs: its deciding look, else its next look

    @property
    def verdict(self) -> str:
        return self.result.verdict


def read_outcomes(store: Store, run_ids: list[str]) -> dict[str, RunOutcome]:
    """Status and final dev metrics of the given runs (those the store knows)."""
    if not run_ids:
        return {}
    statuses = store.run_statuses(run_ids)
    metrics = store.final_dev_metrics(run_ids)
    return {rid: RunOutcome(st, metrics.get(rid, {})) for rid, st in statuses.items()}


def _value(run: PlannedRun | None, outcomes: dict[str, RunOutcome], metric: str) -> float:
    if run is None:
        return math.nan
    o = outcomes.get(run.run_id)
    return o.metrics.get(metric, math.nan) if o is not None and o.status == "done" else math.nan


def _finished(run: PlannedRun | None, outcomes: dict[str, RunOutcome]) -> bool:
    if run is None:  # a seed excluded from this cell: nothing to wait for
        return True
    o = outcomes.get(run.run_id)
    return o is not None and o.status in FINISHED


def comparison_states(plan: SequentialPlan, outcomes: dict[str, RunOutcome]) -> list[ComparisonState]:
    out = []
    for c in plan.comparisons:
        diffs: list[list[float]] = []
        for n in plan.looks:
            pairs = [
                (plan.runs.get((c.task, c.condition, s)), plan.runs.get((c.task, c.baseline, s)))
                for s in plan.seeds[:n]
            ]
            if not all(_finished(a, outcomes) and _finished(b, outcomes) for a, b in pairs):
                break
            diffs.append([_value(a, outcomes, c.metric) - _value(b, outcomes, c.metric) for a, b in pairs])
        result = sequential_test(diffs, c.design, c.margin)
        if result.verdict == "undecided":
            needed = plan.looks[len(diffs)]
        elif result.looks:
            needed = plan.looks[result.looks[-1].look - 1]
        else:
            needed = plan.looks[-1]
        out.append(ComparisonState(c, result, len(diffs), needed))
    return out


def runs_needed(plan: SequentialPlan, states: list[ComparisonState]) -> list[PlannedRun]:
    """Every run the comparisons need so far: both cells' runs through each one's needed look."""
    out: dict[tuple[str, str, int], PlannedRun] = {}
    for st in states:
        c = st.comparison
        for cell in (c.condition, c.baseline):
            for r in plan.cell_runs(c.task, cell, st.seeds_needed):
                out[(r.task, r.cell, r.seed)] = r
    return list(out.values())


def all_plan_run_ids(plan: SequentialPlan) -> list[str]:
    return sorted({r.run_id for r in plan.runs.values()})


def states_from_store(db: Path, plan: SequentialPlan) -> list[ComparisonState]:
    from kdgrid.store.db import open_store

    if not db.exists():
        return comparison_states(plan, {})
    with open_store(db, read_only=True) as store:
        outcomes = read_outcomes(store, all_plan_run_ids(plan))
    return comparison_states(plan, outcomes)


def study_states(store: Store, name: str) -> tuple[SequentialPlan, list[ComparisonState]] | None:
    """The plan and states of a stored sequential study (its stored file text), or None when it is not one."""
    from pydantic import ValidationError

    from kdgrid.errors import KdgridError
    from kdgrid.plan.expand import expand
    from kdgrid.sequential.plan import plan_sequential
    from kdgrid.study.loader import parse_yaml
    from kdgrid.study.schema import Study

    text = store.study_text(name)
    if text is None:
        return None
    try:
        data, _ = parse_yaml(text, Path(f"<study {name}>"))
        study = Study.model_validate(data)
        if study.analysis.sequential is None:
            return None
        plan = plan_sequential(study, expand(study), path=f"<study {name}>")
    except (KdgridError, ValidationError):
        return None
    return plan, comparison_states(plan, read_outcomes(store, all_plan_run_ids(plan)))


STATE_COLUMNS = [
    "task",
    "condition",
    "baseline",
    "metric",
    "margin",
    "alpha",
    "verdict",
    "looks",
    "seeds",
    "mean_diff",
    "ci_low",
    "ci_high",
    "p",
    "p_bound",
    "z_bound",
    "p_equiv",
    "p_equiv_bound",
    "reason",
]


def states_frame(states: list[ComparisonState]) -> pd.DataFrame:
    """One row per comparison: its verdict, looks taken, seeds used and the last look's numbers."""
    rows = []
    for st in states:
        c, r = st.comparison, st.result
        last = r.looks[-1] if r.looks else None
        rows.append(
            {
                "task": c.task,
                "condition": c.condition,
                "baseline": c.baseline,
                "metric": c.metric,
                "margin": c.margin if c.margin is not None else math.nan,
                "alpha": c.design.alpha,
                "verdict": r.verdict,
                "looks": len(r.looks),
                "seeds": r.n,
                "mean_diff": last.mean_diff if last else math.nan,
                "ci_low": last.ci_low if last else math.nan,
                "ci_high": last.ci_high if last else math.nan,
                "p": last.p if last else math.nan,
                "p_bound": last.p_bound if last else math.nan,
                "z_bound": last.z_bound if last else math.nan,
                "p_equiv": last.p_equiv if last else math.nan,
                "p_equiv_bound": last.p_equiv_bound if last else math.nan,
                "reason": r.reason,
            }
        )
    return pd.DataFrame(rows, columns=STATE_COLUMNS)


LOOK_COLUMNS = [
    "task",
    "condition",
    "look",
    "n",
    "info",
    "mean_diff",
    "sd_diff",
    "t",
    "p",
    "p_bound",
    "z_bound",
    "p_equiv",
    "p_equiv_bound",
    "ci_low",
    "ci_high",
    "decision",
]


def looks_frame(states: list[ComparisonState]) -> pd.DataFrame:
    """One row per comparison and look taken: the look's statistics, boundaries and decision."""
    rows = [
        {
            "task": st.comparison.task,
            "condition": st.comparison.condition,
            "look": r.look,
            "n": r.n,
            "info": r.info,
            "mean_diff": r.mean_diff,
            "sd_diff": r.sd_diff,
            "t": r.t,
            "p": r.p,
            "p_bound": r.p_bound,
            "z_bound": r.z_bound,
            "p_equiv": r.p_equiv,
            "p_equiv_bound": r.p_equiv_bound,
            "ci_low": r.ci_low,
            "ci_high": r.ci_high,
            "decision": r.decision,
        }
        for st in states
        for r in st.result.looks
    ]
    return pd.DataFrame(rows, columns=LOOK_COLUMNS)
