"""One search process: ask Optuna for a trial, run its runs as ordinary kdgrid runs, tell the value.

Every process of a search (``kdgrid search``, each of its ``--workers``, a second ``kdgrid search``
started by hand) runs this loop against the shared journal until the search has its budget of
trials or the deadline passes. Trial numbers come from the journal, so they never repeat.

A trial's value is the mean over its tasks of the mean over its seeds of the final dev metric.
The pruner sees the per-epoch dev metric of the final stage ('joint' or 'prediction'); run i of
a trial reports epoch e as step ``(sum of earlier runs' epochs) + e``, so every trial reports the
same task and seed at the same step and the pruner compares like with like.
"""

from __future__ import annotations

import datetime
import math
import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from kdgrid.errors import PlanError, StoreError
from kdgrid.execute.rundir import workdir_for
from kdgrid.plan.expand import PlannedRun
from kdgrid.records import RunResult
from kdgrid.search.journal import (
    ERROR,
    OWNER,
    RETRY_OF,
    RUNS,
    best_trial,
    interrupted_key,
    open_search,
    trial_rows,
    used_budget,
)
from kdgrid.search.locks import SearchSession, ask_lock, owner_alive
from kdgrid.search.progress import NullSearchReporter, SearchReporter
from kdgrid.search.space import metric_of, search_tasks, suggest, trial_seeds
from kdgrid.search.storeio import Pruned, StoreBatch, accepts_on_epoch, execute_run, with_store
from kdgrid.search.trialplan import plan_runs, trial_factors
from kdgrid.store.search_queries import add_members, upsert_trials
from kdgrid.study.loader import LoadedStudy
from kdgrid.study.schema import Search, Study

FINAL_STAGES = ("joint", "prediction")  # stages whose dev metric describes the model being tuned
ORPHAN_AFTER_S = 60.0  # a RUNNING trial without an owner this old was asked by a process that died
Runner = Callable[..., RunResult]


@dataclass(frozen=True)
class SearchJob:
    """What one search process does: which study, which store, how many trials in all, until when."""

    db_path: Path
    loaded: LoadedStudy
    target: int  # trials the search should have in all (earlier sessions included)
    deadline: float | None = None  # wall-clock time (time.time()) after which no trial starts

    @property
    def study(self) -> Study:
        return self.loaded.study

    @property
    def search(self) -> Search:
        assert self.loaded.study.search is not None
        return self.loaded.study.search

    @property
    def name(self) -> str:
        return self.loaded.study.name


@dataclass
class SearchOutcome:
    started: int = 0
    complete: int = 0
    pruned: int = 0
    failed: int = 0
    interrupted: bool = False
    errors: list[tuple[int, str]] = field(default_factory=list)


def search_study_name(name: str) -> str:
    """The store study that holds a search's runs (its own, so grids and searches never share membership)."""
    return f"{name}.search"


def default_runner() -> Runner:
    from kdgrid.train.run import run_one  # imported here: planning and reports never pay for torch

    return run_one


def run_search(job: SearchJob, *, runner: Runner | None = None, reporter: SearchReporter | None = None) -> SearchOutcome:
    """Run trials until the search has ``job.target`` of them (or the deadline); resumable, shareable."""
    runner = runner or default_runner()
    reporter = reporter or NullSearchReporter()
    outcome = SearchOutcome()
    with SearchSession(job.db_path) as session:
        ostudy = open_search(job.db_path, job.study, n_trials=job.target)
        with ask_lock(job.db_path, job.name):
            _interrupt_stale(job, ostudy, session.token)
        _sync(job, ostudy)
        reporter.search_start(job.name, job.target, min(used_budget(ostudy), job.target))
        try:
            while job.deadline is None or time.time() < job.deadline:
                session.take_coordinator()  # pick up the grid guard if the search process holding it ended
                with ask_lock(job.db_path, job.name):
                    _interrupt_stale(job, ostudy, session.token)
                    if used_budget(ostudy) >= job.target:
                        break
                    trial = ostudy.ask()
                    trial.set_user_attr(OWNER, session.token)
                outcome.started += 1
                try:
                    state, value, error = _run_trial(job, ostudy, trial, runner, reporter)
                except BaseException:
                    # Ctrl-C, or the store stayed busy: the trial is queued again for the next session.
                    with ask_lock(job.db_path, job.name):
                        _interrupt(job, ostudy, trial.number, trial.params)
                    raise
                setattr(outcome, state, getattr(outcome, state) + 1)
                if error:
                    outcome.errors.append((trial.number, error))
                best = best_trial(ostudy)
                reporter.trial_end(trial.number, state, value, error,
                                   None if best is None else (best.number, float(best.value or 0.0)))
        except KeyboardInterrupt:
            outcome.interrupted = True
        finally:
            reporter.search_end()
    return outcome


class _TrialFailed(Exception):
    """A run of the trial failed or gave no value: the trial fails, the search goes on."""


def _run_trial(job: SearchJob, ostudy: optuna.Study, trial: optuna.Trial, runner: Runner,
               reporter: SearchReporter) -> tuple[str, float | None, str | None]:
    """Run one trial to its end and tell Optuna and the store; returns (state, value, error)."""
    params = suggest(trial, job.search)
    reporter.trial_start(trial.number, params)
    try:
        runs = plan_runs(job.study, params, tasks=search_tasks(job.study), seeds=trial_seeds(job.study),
                         factors=trial_factors(trial.number, params))
    except PlanError as exc:
        return _finish(job, ostudy, trial, params, "failed", None, f"invalid settings: {exc}", None,
                       StoreBatch(job.db_path))
    trial.set_user_attr(RUNS, [r.run_id for r in runs])
    loaded = job.loaded
    batch = StoreBatch(job.db_path)
    batch.add(lambda s: add_members(s, search_study_name(job.name), str(loaded.path), loaded.text, loaded.sha256, runs))
    batch.add(lambda s: upsert_trials(s, job.name, [{"number": trial.number, "run_id": runs[0].run_id, "params": params,
                                                     "value": None, "state": "running"}]))
    try:
        value = _evaluate(job, trial, runs, runner, reporter, batch)
    except Pruned:
        return _finish(job, ostudy, trial, params, "pruned", None, None, runs[0].run_id, batch)
    except _TrialFailed as exc:
        return _finish(job, ostudy, trial, params, "failed", None, str(exc), runs[0].run_id, batch)
    except BaseException:
        batch.flush()  # what finished before Ctrl-C is stored; the caller queues the trial again
        raise
    return _finish(job, ostudy, trial, params, "complete", value, None, runs[0].run_id, batch)


def final_epochs(config: Mapping[str, Any]) -> int:
    epochs = config["train"]["epochs"]
    return int(epochs["prediction"]) if isinstance(epochs, dict) else int(epochs)


def _evaluate(job: SearchJob, trial: optuna.Trial, runs: list[PlannedRun], runner: Runner,
              reporter: SearchReporter, batch: StoreBatch) -> float:
    """Run a trial's runs in order, feeding the pruner; the mean over tasks of the mean over seeds."""
    workdir = workdir_for(job.db_path)
    live = accepts_on_epoch(runner)
    per_task: dict[str, list[float]] = defaultdict(list)
    offset = 0
    for i, run in enumerate(runs):
        metric = metric_of(job.search, run.task)
        n_epochs = final_epochs(run.config)
        last_step = offset + n_epochs if i == len(runs) - 1 else None
        report = _reporter_for(trial, offset, last_step)
        heard: list[int] = []  # epochs the runner reported live

        def on_epoch(stage: str, epoch: int, metrics: dict[str, float], _m: str = metric,
                     _report: Callable[[int, float], None] = report, _heard: list[int] = heard) -> None:
            if stage in FINAL_STAGES and _m in metrics:
                _heard.append(epoch)
                _report(epoch, float(metrics[_m]))

        reporter.run_start(i, len(runs), run)
        result, reused = execute_run(batch, workdir, run, runner, on_progress=reporter.run_progress,
                                     on_epoch=on_epoch if live else None, retries=job.study.execute.retries)
        if result["status"] != "done":
            raise _TrialFailed(f"run {run.run_id} ({run.task}, seed {run.seed}) failed: {result.get('error')}")
        if reused or not heard:
            # The pruner still sees every epoch: replayed from the stored rows, in training order.
            for row in result.get("metrics", []):
                if row.get("split") == "dev" and row.get("stage") in FINAL_STAGES and row.get("name") == metric:
                    report(int(row.get("epoch") or 0), float(row["value"]))  # dev rows of a stage carry their epoch
        final = [r["value"] for r in result.get("metrics", [])
                 if r.get("stage") == "final" and r.get("split") == "dev" and r.get("name") == metric]
        if not final or final[-1] is None or not math.isfinite(float(final[-1])):
            raise _TrialFailed(f"run {run.run_id} ({run.task}, seed {run.seed}) has no final dev '{metric}'")
        per_task[run.task].append(float(final[-1]))
        offset += n_epochs
    return sum(sum(v) / len(v) for v in per_task.values()) / len(per_task)


def _reporter_for(trial: optuna.Trial, offset: int, last_step: int | None) -> Callable[[int, float], None]:
    def report(epoch: int, value: float) -> None:
        step = offset + epoch
        trial.report(value, step)
        # Pruning the trial's very last epoch would save nothing: let it complete.
        if step != last_step and trial.should_prune():
            raise Pruned(f"trial {trial.number} pruned at step {step}")

    return report


def _finish(job: SearchJob, ostudy: optuna.Study, trial: optuna.Trial, params: dict[str, Any], state: str,
            value: float | None, error: str | None, run_id: str | None,
            batch: StoreBatch) -> tuple[str, float | None, str | None]:
    if error:
        trial.set_user_attr(ERROR, error)
    optuna_state = {"complete": TrialState.COMPLETE, "pruned": TrialState.PRUNED, "failed": TrialState.FAIL}[state]
    ostudy.tell(trial, value if state == "complete" else None, state=optuna_state)
    row = {"number": trial.number, "run_id": run_id, "params": params, "value": value, "state": state}
    batch.add(lambda s: upsert_trials(s, job.name, [row]))
    batch.flush()
    return state, value, error


def _interrupt(job: SearchJob, ostudy: optuna.Study, number: int, params: dict[str, Any]) -> None:
    """Mark a trial that could not finish as interrupted and queue its settings again.

    Its finished runs are in the store, so the queued trial only computes what is missing.
    Call while holding the ask lock, so no process counts the budget in between.
    """
    if number not in {t.number for t in ostudy.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}:
        return  # finished after all (e.g. the store write after tell failed): nothing to redo
    ostudy.set_user_attr(interrupted_key(number), True)
    if params:
        ostudy.enqueue_trial(params, user_attrs={RETRY_OF: number})
    ostudy.tell(number, state=TrialState.FAIL, skip_if_finished=True)
    row = {"number": number, "params": params, "value": None, "state": "interrupted"}
    try:
        with_store(job.db_path, lambda s: upsert_trials(s, job.name, [row]))
    except StoreError:
        pass  # the next session syncs the trials table from the journal


def _interrupt_stale(job: SearchJob, ostudy: optuna.Study, token: str) -> None:
    """RUNNING trials whose process died (its owner lock is free) are interrupted and queued again."""
    for t in ostudy.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner = t.user_attrs.get(OWNER)
        if owner is None:
            # Killed between ask and naming its owner (milliseconds, under the ask lock): old means orphaned.
            started = t.datetime_start
            age = 0.0 if started is None else (datetime.datetime.now(started.tzinfo) - started).total_seconds()
            if age < ORPHAN_AFTER_S:
                continue
        elif owner == token or owner_alive(job.db_path, owner):
            continue
        _interrupt(job, ostudy, t.number, dict(t.params))


def _sync(job: SearchJob, ostudy: optuna.Study) -> None:
    """Bring the store's trials table up to the journal (a process killed between the two leaves a gap)."""
    with_store(job.db_path, lambda s: upsert_trials(s, job.name, trial_rows(ostudy)))
