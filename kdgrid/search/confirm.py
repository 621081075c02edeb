"""Confirmation: the best trial's settings and the baseline re-run on seeds no trial saw, then compared.

A search picks the best of many noisy trials, so the best trial's value is biased upwards on
the seeds it was tuned on (the winner's curse). Confirmation runs the best settings and the
declared baseline (``search.baseline``; by default the study's base run) on K fresh seeds,
starting above the largest trial seed, and compares them paired by seed with
:func:`kdgrid.analyze.paired_tests` (mean difference, CI, t, p, d_z, Wilcoxon).

The confirmation is an ordinary grid (store study ``<name>.confirm``, factor ``config`` with
levels ``best`` and ``baseline``), run by the grid coordinator: resumable, every run stored once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from kdgrid.errors import PlanError
from kdgrid.execute.local import Reporter, Runner, run_grid
from kdgrid.search.journal import SearchError, best_trial, existing_search
from kdgrid.search.space import search_tasks, trial_seeds
from kdgrid.search.trialplan import plan_runs
from kdgrid.store.db import open_store
from kdgrid.study.loader import LoadedStudy
from kdgrid.study.schema import Execute, Study


def confirm_study_name(name: str) -> str:
    return f"{name}.confirm"


def confirm_seeds(study: Study, k: int) -> list[int]:
    """K seeds above every seed a trial used."""
    start = max(trial_seeds(study)) + 1
    return list(range(start, start + k))


@dataclass
class Confirmation:
    best_number: int
    best_params: dict[str, Any]
    baseline: dict[str, Any]
    seeds: list[int]
    done: int = 0
    failed: int = 0
    errors: list[tuple[str, str]] = field(default_factory=list)


def run_confirmation(
    db_path: Path,
    loaded: LoadedStudy,
    k: int,
    *,
    runner: Runner | None = None,
    execute: Execute | None = None,
    reporter: Reporter | None = None,
) -> Confirmation:
    """Run the best trial's settings and the baseline on K fresh seeds (skipping runs already done)."""
    study = loaded.study
    assert study.search is not None
    if k < 2:
        raise SearchError(f"--confirm: {k} seed(s); a paired comparison needs at least 2 (5 or more is better)")
    ostudy = existing_search(db_path, study.name)
    best = None if ostudy is None else best_trial(ostudy)
    if best is None:
        raise SearchError(f"search '{study.name}': no complete trial yet, nothing to confirm")
    seeds = confirm_seeds(study, k)
    tasks = search_tasks(study)
    baseline = dict(study.search.baseline or {})
    try:
        planned = plan_runs(study, best.params, tasks=tasks, seeds=seeds, factors={"config": "best"}) + plan_runs(
            study, baseline, tasks=tasks, seeds=seeds, factors={"config": "baseline"}
        )
    except PlanError as exc:
        raise SearchError(f"search '{study.name}': cannot plan the confirmation: {exc}") from None
    outcome = run_grid(
        db_path,
        study_name=confirm_study_name(study.name),
        study_path=str(loaded.path),
        study_text=loaded.text,
        study_sha=loaded.sha256,
        planned=planned,
        runner=runner,
        reporter=reporter,
        execute=execute,
    )
    if outcome.interrupted:
        raise KeyboardInterrupt
    return Confirmation(
        best.number,
        dict(best.params),
        baseline,
        seeds,
        outcome.done + outcome.already_done,
        outcome.failed,
        list(outcome.errors),
    )


@dataclass
class ConfirmationResult:
    """The paired comparison of a confirmation, read back from the store."""

    means: pd.DataFrame  # task, config, n, mean, sd
    tests: pd.DataFrame  # kdgrid.analyze.PAIRED_COLUMNS
    seeds: list[int]
    note: str = ""


def confirmation_result(db_path: Path, name: str, metric: str) -> ConfirmationResult | None:
    """The comparison of best vs baseline on the confirmation seeds, or None when none was run."""
    from kdgrid.analyze import paired_tests
    from kdgrid.store.queries import tidy_results
    from kdgrid.tasks import TASKS

    with open_store(db_path, read_only=True) as store:
        if confirm_study_name(name) not in store.study_names():
            return None
        df = tidy_results(store, confirm_study_name(name))
    if df.empty or "config" not in df:
        return None
    metric_col = {t: (TASKS[t].official_metric if metric == "auto" else metric) for t in df["task"].unique()}
    values = [
        row[metric_col[row["task"]]] if metric_col[row["task"]] in row else float("nan") for _, row in df.iterrows()
    ]
    long = df.assign(value=values)
    means = long.groupby(["task", "config"])["value"].agg(n="count", mean="mean", sd="std").reset_index()
    seeds = sorted(int(s) for s in df["seed"].unique())
    best_ids = set(df.loc[df["config"] == "best", "run_id"])
    if best_ids and best_ids == set(df.loc[df["config"] == "baseline", "run_id"]):
        return ConfirmationResult(
            means, pd.DataFrame(), seeds, "the best trial's settings are the baseline's: nothing to compare"
        )
    tests = paired_tests(df, metric=metric, factors=["config"], baseline={"config": "baseline"}, correction="holm")
    warnings = tests.attrs.get("warnings") or []
    return ConfirmationResult(means, tests, seeds, "; ".join(str(w) for w in warnings))
