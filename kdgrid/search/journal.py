"""The Optuna side of a search: the journal beside the store, sampler, pruner and trial bookkeeping.

The Optuna study lives in a JournalStorage file (``<db>.optuna/<name>.journal``): an append-only
log guarded by a file lock, which survives a kill (a search resumes from it); one search session
writes it at a time (the session holds the store's coordinator lock). It is the source of truth for trials; the store's
``trials`` table mirrors it for SQL users and reports.
"""

from __future__ import annotations

import importlib.util
import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna
from optuna.samplers import BaseSampler, CmaEsSampler, GridSampler, RandomSampler, TPESampler
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState

from kdgrid.errors import KdgridError
from kdgrid.search.space import fingerprint, grid_size, grid_space
from kdgrid.study.schema import Search, Study

optuna.logging.set_verbosity(optuna.logging.WARNING)  # kdgrid prints its own line per trial
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

ERROR = "kdgrid_error"  # trial user attr: why a trial failed
RETRY_OF = "kdgrid_retry_of"  # user attr of a trial queued again after an interruption
RUNS = "kdgrid_runs"  # trial user attr: the run ids of the trial, in order


def search_dir(db_path: Path) -> Path:
    """Optuna journals live beside the store: ``<db>.optuna/``."""
    return Path(str(db_path.resolve()) + ".optuna")


def journal_path(db_path: Path, name: str) -> Path:
    return search_dir(db_path) / f"{name}.journal"


class SearchError(KdgridError):
    """A search cannot start or continue as asked (changed search block, missing sampler package, ...)."""


class _GridSampler(GridSampler):
    """Optuna's grid sampler without its stop(): that only works inside ``optimize``, and kdgrid
    caps the budget at the grid size itself."""

    def after_trial(
        self, study: optuna.Study, trial: FrozenTrial, state: TrialState, values: Sequence[float] | None
    ) -> None:
        return None


def budget(search: Search, trials: int | None = None) -> int:
    """How many trials the search should have in all (a grid has no more points than its size)."""
    n = trials if trials is not None else search.trials
    return min(n, grid_size(search)) if search.sampler == "grid" else n


def make_sampler(search: Search, n_trials: int) -> BaseSampler:
    if search.sampler == "random":
        return RandomSampler()
    if search.sampler == "grid":
        return _GridSampler(grid_space(search))
    if search.sampler == "cmaes":
        if importlib.util.find_spec("cmaes") is None:
            raise SearchError(
                "search.sampler 'cmaes' needs the 'cmaes' package (pip install cmaes), "
                "or choose another sampler (allowed: tpe, random, grid, cmaes)"
            )
        return CmaEsSampler(n_startup_trials=_startup(n_trials), warn_independent_sampling=False)
    # TPE's default 10 random start-up trials would make a 10-trial search a random search.
    return TPESampler(n_startup_trials=_startup(n_trials))


def _startup(n_trials: int) -> int:
    return max(2, min(10, n_trials // 3))


def make_pruner(search: Search, n_trials: int) -> optuna.pruners.BasePruner:
    if search.pruner == "median":
        # A median of one or two finished trials is noise; wait for a few, at most Optuna's default 5.
        return optuna.pruners.MedianPruner(n_startup_trials=max(2, min(5, n_trials // 4)), n_warmup_steps=0)
    if search.pruner == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner()
    return optuna.pruners.NopPruner()


def storage_for(db_path: Path, name: str) -> JournalStorage:
    path = journal_path(db_path, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(path)))


def open_search(db_path: Path, study: Study, *, n_trials: int) -> optuna.Study:
    """Create or resume the Optuna study of a kdgrid study's search; refuse one whose meaning changed."""
    assert study.search is not None
    search = study.search
    ostudy = optuna.create_study(
        storage=storage_for(db_path, study.name),
        study_name=study.name,
        direction=search.direction,
        sampler=make_sampler(search, n_trials),
        pruner=make_pruner(search, n_trials),
        load_if_exists=True,
    )
    fp = fingerprint(study)
    have = ostudy.user_attrs.get("kdgrid_fingerprint")
    if have is None:
        ostudy.set_user_attr("kdgrid_fingerprint", fp)
    elif have != fp:
        raise SearchError(
            f"search '{study.name}': its parameters, objective, seeds, tasks or base run changed since its trials "
            f"ran ({journal_path(db_path, study.name)}); old trial values would mean something else. Restore the "
            "study file, or rename the study to start a new search"
        )
    return ostudy


def existing_search(db_path: Path, name: str) -> optuna.Study | None:
    """The Optuna study of a search, or None when it never started."""
    path = journal_path(db_path, name)
    if not path.is_file():
        return None
    try:
        return optuna.load_study(study_name=name, storage=storage_for(db_path, name))
    except KeyError:
        return None


def interrupted_key(number: int) -> str:
    # A study-level attr per trial: set by any process without a read-modify-write race.
    return f"kdgrid_interrupted_{number}"


def is_interrupted(ostudy: optuna.Study, trial: FrozenTrial, attrs: dict[str, Any] | None = None) -> bool:
    attrs = ostudy.user_attrs if attrs is None else attrs
    return trial.state == TrialState.FAIL and bool(attrs.get(interrupted_key(trial.number)))


def store_state(ostudy: optuna.Study, trial: FrozenTrial, attrs: dict[str, Any] | None = None) -> str:
    """The trials-table state of an Optuna trial (running, complete, pruned, failed, interrupted)."""
    if is_interrupted(ostudy, trial, attrs):
        return "interrupted"
    return {
        TrialState.COMPLETE: "complete",
        TrialState.PRUNED: "pruned",
        TrialState.FAIL: "failed",
        TrialState.RUNNING: "running",
        TrialState.WAITING: "waiting",
    }[trial.state]


def used_budget(ostudy: optuna.Study) -> int:
    """Trials that count against the budget: all but queued ones and interrupted ones (queued again)."""
    attrs = ostudy.user_attrs
    return sum(
        1
        for t in ostudy.get_trials(deepcopy=False)
        if t.state != TrialState.WAITING and not is_interrupted(ostudy, t, attrs)
    )


def trial_rows(ostudy: optuna.Study) -> list[dict[str, Any]]:
    """Rows for the store's ``trials`` table (queued trials have no row until they start)."""
    attrs = ostudy.user_attrs
    rows = []
    for t in ostudy.get_trials(deepcopy=False):
        if t.state == TrialState.WAITING:
            continue
        runs = t.user_attrs.get(RUNS) or [None]
        value = t.value if t.state == TrialState.COMPLETE and t.value is not None and math.isfinite(t.value) else None
        rows.append(
            {
                "number": t.number,
                "run_id": runs[0],
                "params": t.params,
                "value": value,
                "state": store_state(ostudy, t, attrs),
            }
        )
    return rows


def best_trial(ostudy: optuna.Study) -> FrozenTrial | None:
    complete = [
        t
        for t in ostudy.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if t.value is not None and math.isfinite(t.value)
    ]
    if not complete:
        return None
    sign = 1.0 if ostudy.direction == optuna.study.StudyDirection.MAXIMIZE else -1.0
    return max(complete, key=lambda t: sign * float(t.value or 0.0))
