"""The runs of a trial and of a confirmation: ordinary planned runs (same ids, caches and checks as a grid)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from kdgrid.plan.expand import PlannedRun, plan_study
from kdgrid.study.schema import Study


def plan_runs(
    study: Study,
    overrides: Mapping[str, Any],
    *,
    tasks: Sequence[str],
    seeds: Sequence[int],
    factors: Mapping[str, str],
) -> list[PlannedRun]:
    """The base run with ``overrides`` for each task and seed, validated and shape-checked like a grid.

    Built as a one-cell study so that expansion, canonical configs and run ids are exactly the
    planner's: a trial whose settings equal a grid cell reuses that cell's runs. Raises PlanError
    when the settings make an invalid run.
    """
    one_cell = study.model_copy(
        update={
            "grid": {path: [value] for path, value in overrides.items()},
            "variants": {},
            "include": [],
            "exclude": [],
            "tasks": list(tasks),
            "seeds": list(seeds),
        }
    )
    return [dataclasses.replace(run, factors=dict(factors)) for run in plan_study(one_cell)]


def trial_factors(number: int, params: Mapping[str, Any]) -> dict[str, str]:
    """Factor columns of a trial's runs in the store: the trial number and each parameter's value."""
    return {"trial": str(number), **{path: str(value) for path, value in params.items()}}
