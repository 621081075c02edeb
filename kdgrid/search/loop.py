"""A search session: ask Optuna for trials, run their runs through the grid scheduler, tell the values.

Optuna's ask and tell stay here; running the runs is :func:`kdgrid.execute.run_grid`'s, with the same
``execute`` settings as ``kdgrid run`` (worker processes, GPU slots, timeout, retries, Slurm). Each round
asks as many trials as fill the slots (``ceil(slots / runs per trial)``), hands all their runs to the
scheduler at once, then tells each trial's outcome. The session holds the store's coordinator lock
throughout (one ``kdgrid run`` or ``kdgrid search`` per store), so a trial still RUNNING in the journal
when a session starts was left by one that stopped: it is marked interrupted and its settings queued again.

A trial's value is the mean over its tasks of the mean over its seeds of the final dev metric.
The pruner sees the per-epoch dev metric of the final stage ('joint' or 'prediction'); run i of
a trial reports epoch e as step ``(sum of earlier runs' epochs) + e``, so every trial reports the
same task and seed at the same step and the pruner compares like with like. Epochs come from the
scheduler's ``Reporter.run_epoch`` while a run trains (in process and from pool workers), else from the
run's result when it ends (Slurm jobs, runs finished earlier); a pruned trial's runs are stopped
through ``Reporter.stop_reason``.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from kdgrid.errors import PlanError, StoreError
from kdgrid.execute.job import Runner
from kdgrid.execute.ledger import NullReporter, Reporter, writable_store
from kdgrid.execute.local import coordinator, run_grid
from kdgrid.plan.expand import PlannedRun
from kdgrid.records import MetricRow, RunResult
from kdgrid.search.journal import (
    ERROR,
    RETRY_OF,
    RUNS,
    best_trial,
    interrupted_key,
    open_search,
    trial_rows,
    used_budget,
)
from kdgrid.search.space import metric_of, search_tasks, suggest, trial_seeds
from kdgrid.search.trialplan import plan_runs, trial_factors
from kdgrid.store.db import open_store
from kdgrid.store.search_queries import dev_epochs, run_states, upsert_trials
from kdgrid.study.loader import LoadedStudy
from kdgrid.study.schema import Epochs, Execute, RunConfig, Search, Study

FINAL_STAGES = ("joint", "prediction")  # stages whose dev metric describes the model being tuned
PRUNED = "pruned by the search"


@dataclass(frozen=True)
class SearchJob:
    """What one search session does: which study, which store, how many trials in all, until when."""

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


@dataclass(frozen=True)
class TrialEnd:
    """A trial that ended (for a display): its state, value, error and the best trial so far."""

    number: int
    params: dict[str, Any]
    state: str  # complete, pruned, failed
    value: float | None
    error: str | None
    best: tuple[int, float] | None


def search_study_name(name: str) -> str:
    """The store study that holds a search's runs (its own, so grids and searches never share membership)."""
    return f"{name}.search"


def slots(ex: Execute) -> int:
    """Runs the scheduler executes at once with these settings."""
    if ex.executor == "slurm":
        return max(1, ex.slurm.array_parallelism)
    return max(1, len(ex.gpus) if ex.gpus else ex.workers)


def final_epochs(config: RunConfig) -> int:
    """Epochs of the run's last stage (the one whose dev scores the pruner reads)."""
    epochs = config.train.epochs
    return epochs.prediction if isinstance(epochs, Epochs) else epochs


class _Trial:
    """One asked trial: its runs, the pruner's steps, and its state once decided before its runs end."""

    def __init__(self, trial: optuna.Trial, params: dict[str, Any], runs: list[PlannedRun], search: Search) -> None:
        self.trial = trial
        self.params = params
        self.runs = runs
        self.metric = {r.run_id: metric_of(search, r.task) for r in runs}
        self.offset: dict[str, int] = {}
        steps = 0
        for r in runs:
            self.offset.setdefault(r.run_id, steps)
            steps += final_epochs(r.config)
        self.last_step = steps
        self.state: str | None = None  # 'pruned' or 'failed', decided while its runs go on
        self.error: str | None = None
        self.heard: set[str] = set()  # runs whose epochs the pruner has seen

    def epoch(self, run_id: str, stage: str, epoch: int, metrics: Mapping[str, Any]) -> None:
        metric = self.metric[run_id]
        if stage in FINAL_STAGES and metrics.get(metric) is not None:
            self.heard.add(run_id)
            self._report(self.offset[run_id] + epoch, float(metrics[metric]))

    def replay(self, run_id: str, rows: Sequence[MetricRow]) -> None:
        """A finished run's epochs, for a run the pruner did not hear while it trained."""
        if run_id in self.heard:
            return
        for row in rows:
            epoch = row.get("epoch")
            if row["split"] == "dev" and epoch is not None:
                self.epoch(run_id, row["stage"], epoch, {row["name"]: row["value"]})
        self.heard.add(run_id)

    def fail(self, why: str) -> None:
        if self.state is None:
            self.state, self.error = "failed", why

    def _report(self, step: int, value: float) -> None:
        if self.state is not None or not math.isfinite(value):
            return
        self.trial.report(value, step)
        # Pruning the trial's very last epoch would save nothing: let it complete.
        if step != self.last_step and self.trial.should_prune():
            self.state = "pruned"


class _TrialHooks(Reporter):
    """The scheduler's reporter for a round of trials: feeds the pruner and stops runs of decided trials;
    what a display shows is passed on to ``display``."""

    def __init__(self, display: Reporter, trials: list[_Trial]) -> None:
        self.display = display
        self.by_run: dict[str, list[_Trial]] = defaultdict(list)
        for t in trials:
            for run_id in dict.fromkeys(r.run_id for r in t.runs):
                self.by_run[run_id].append(t)

    def grid_start(self, total: int, todo: int) -> None:
        self.display.grid_start(total, todo)

    def run_start(self, index: int, run: PlannedRun) -> None:
        self.display.run_start(index, run)

    def run_progress(self, stage: str, epoch: int, step: int, total_steps: int, run_id: str | None = None) -> None:
        self.display.run_progress(stage, epoch, step, total_steps, run_id)

    def run_retry(self, run: PlannedRun, result: RunResult, attempt: int) -> None:
        self.display.run_retry(run, result, attempt)

    def grid_end(self) -> None:
        self.display.grid_end()

    def run_epoch(self, run: PlannedRun, stage: str, epoch: int, metrics: dict[str, float]) -> None:
        for t in self.by_run.get(run.run_id, []):
            t.epoch(run.run_id, stage, epoch, metrics)

    def run_end(self, run: PlannedRun, result: RunResult) -> None:
        self.display.run_end(run, result)
        for t in self.by_run.get(run.run_id, []):
            if result["status"] == "done":
                t.replay(run.run_id, result.get("metrics") or [])
            else:
                t.fail(f"run {run.run_id} ({run.task}, seed {run.seed}) failed: {result.get('error')}")

    def stop_reason(self, run: PlannedRun) -> str | None:
        trials = self.by_run.get(run.run_id)
        if not trials or any(t.state is None for t in trials):
            return None  # a run shared with a trial still going on is still needed
        return PRUNED if any(t.state == "pruned" for t in trials) else "its search trial failed"


def run_search(
    job: SearchJob,
    *,
    runner: Runner | None = None,
    execute: Execute | None = None,
    reporter: Reporter | None = None,
    on_trial: Callable[[TrialEnd], None] | None = None,
) -> SearchOutcome:
    """Run trials until the search has ``job.target`` of them (or the deadline); resumable.

    ``execute`` says how runs execute, as for :func:`kdgrid.execute.run_grid` (None: in this process, no
    retries); ``reporter`` is the grid display for the trials' runs; ``on_trial`` hears each trial's end.
    """
    ex = execute or Execute(workers=0, retries=0)
    display = reporter or NullReporter()
    outcome = SearchOutcome()
    runs_per_trial = len(search_tasks(job.study)) * len(trial_seeds(job.study))
    per_round = max(1, math.ceil(slots(ex) / runs_per_trial))
    with coordinator(job.db_path):
        ostudy = open_search(job.db_path, job.study, n_trials=job.target)
        for t in ostudy.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            _interrupt(job, ostudy, t.number, dict(t.params))  # left by a session that stopped
        with writable_store(job.db_path) as store:
            upsert_trials(store, job.name, trial_rows(ostudy))  # a session killed between the two leaves a gap
        try:
            while job.deadline is None or time.time() < job.deadline:
                n = min(per_round, job.target - used_budget(ostudy))
                if n <= 0:
                    break
                trials = [t for t in (_ask(job, ostudy, outcome, on_trial) for _ in range(n)) if t is not None]
                if trials and not _run_round(job, ostudy, trials, runner, ex, display, outcome, on_trial):
                    outcome.interrupted = True
                    break
        except KeyboardInterrupt:
            outcome.interrupted = True
    return outcome


def _ask(
    job: SearchJob, ostudy: optuna.Study, outcome: SearchOutcome, on_trial: Callable[[TrialEnd], None] | None
) -> _Trial | None:
    """A new trial with its planned runs; None when its settings make an invalid run (then it failed)."""
    trial = ostudy.ask()
    outcome.started += 1
    params = suggest(trial, job.search)
    try:
        runs = plan_runs(
            job.study,
            params,
            tasks=search_tasks(job.study),
            seeds=trial_seeds(job.study),
            factors=trial_factors(trial.number, params),
        )
    except PlanError as exc:
        t = _Trial(trial, params, [], job.search)
        t.fail(f"invalid settings: {exc}")
        _finish(job, ostudy, [t], outcome, on_trial, finals={})
        return None
    trial.set_user_attr(RUNS, [r.run_id for r in runs])
    return _Trial(trial, params, runs, job.search)


def _run_round(
    job: SearchJob,
    ostudy: optuna.Study,
    trials: list[_Trial],
    runner: Runner | None,
    ex: Execute,
    display: Reporter,
    outcome: SearchOutcome,
    on_trial: Callable[[TrialEnd], None] | None,
) -> bool:
    """Run a round of trials through the scheduler and tell their outcomes; False when it was interrupted."""
    runs = [r for t in trials for r in t.runs]
    ids = list(dict.fromkeys(r.run_id for r in runs))
    with writable_store(job.db_path) as store:
        upsert_trials(
            store,
            job.name,
            [
                {
                    "number": t.trial.number,
                    "run_id": t.runs[0].run_id,
                    "params": t.params,
                    "value": None,
                    "state": "running",
                }
                for t in trials
            ],
        )
        states = run_states(store, ids)
        done = [i for i in ids if states.get(i, ("", None))[0] == "done"]
        curves = dev_epochs(store, done)
    for t in trials:  # runs finished earlier (another grid, trial or session) feed the pruner first, in order
        for r in t.runs:
            if r.run_id in done:
                t.replay(r.run_id, curves.get(r.run_id, []))
    loaded = job.loaded
    try:
        grid = run_grid(
            job.db_path,
            study_name=search_study_name(job.name),
            study_path=str(loaded.path),
            study_text=loaded.text,
            study_sha=loaded.sha256,
            planned=runs,
            runner=runner,
            reporter=_TrialHooks(display, trials),
            execute=ex,
            add_members=True,
            locked=True,
        )
    except BaseException:
        for t in trials:  # a store or cluster error, or a second Ctrl-C: the round's trials are queued again
            _interrupt(job, ostudy, t.trial.number, t.params)
        raise
    with open_store(job.db_path, read_only=True) as store:
        states = run_states(store, ids)
        finals = store.final_dev_metrics(ids)
    ended = []
    for t in trials:
        unfinished = [r for r in t.runs if states.get(r.run_id, ("", None))[0] != "done"]
        if t.state is None and unfinished:
            if grid.interrupted:
                _interrupt(job, ostudy, t.trial.number, t.params)
                continue
            r = unfinished[0]
            t.fail(f"run {r.run_id} ({r.task}, seed {r.seed}) failed: {states.get(r.run_id, ('', None))[1]}")
        ended.append(t)
    _finish(job, ostudy, ended, outcome, on_trial, finals)
    return not grid.interrupted


def _value(t: _Trial, finals: Mapping[str, Mapping[str, float]]) -> float:
    """The mean over tasks of the mean over seeds of the final dev metric; the trial fails without one."""
    per_task: dict[str, list[float]] = defaultdict(list)
    for r in t.runs:
        v = finals.get(r.run_id, {}).get(t.metric[r.run_id])
        if v is None or not math.isfinite(v):
            t.fail(f"run {r.run_id} ({r.task}, seed {r.seed}) has no final dev '{t.metric[r.run_id]}'")
            return math.nan
        per_task[r.task].append(v)
    return sum(sum(v) / len(v) for v in per_task.values()) / len(per_task)


def _finish(
    job: SearchJob,
    ostudy: optuna.Study,
    trials: list[_Trial],
    outcome: SearchOutcome,
    on_trial: Callable[[TrialEnd], None] | None,
    finals: Mapping[str, Mapping[str, float]],
) -> None:
    """Tell Optuna each trial's end, mirror it in the store's trials table (one opening), count it."""
    rows = []
    ends = []
    for t in trials:
        value = _value(t, finals) if t.state is None else None
        state = t.state or "complete"
        if t.error:
            t.trial.set_user_attr(ERROR, t.error)
            outcome.errors.append((t.trial.number, t.error))
        optuna_state = {"complete": TrialState.COMPLETE, "pruned": TrialState.PRUNED, "failed": TrialState.FAIL}[state]
        ostudy.tell(t.trial, value if state == "complete" else None, state=optuna_state)
        setattr(outcome, state, getattr(outcome, state) + 1)
        rows.append(
            {
                "number": t.trial.number,
                "run_id": t.runs[0].run_id if t.runs else None,
                "params": t.params,
                "value": value if state == "complete" else None,
                "state": state,
            }
        )
        ends.append(TrialEnd(t.trial.number, t.params, state, value if state == "complete" else None, t.error, None))
    with writable_store(job.db_path) as store:
        upsert_trials(store, job.name, rows)
    best = best_trial(ostudy)
    for end in ends:
        if on_trial is not None:
            on_trial(
                TrialEnd(
                    end.number,
                    end.params,
                    end.state,
                    end.value,
                    end.error,
                    None if best is None else (best.number, float(best.value or 0.0)),
                )
            )


def _interrupt(job: SearchJob, ostudy: optuna.Study, number: int, params: dict[str, Any]) -> None:
    """Mark a trial that could not finish as interrupted and queue its settings again.

    Its finished runs are in the store, so the queued trial only computes what is missing.
    """
    if number not in {t.number for t in ostudy.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}:
        return  # finished after all (e.g. the store write after tell failed): nothing to redo
    ostudy.set_user_attr(interrupted_key(number), True)
    if params:
        ostudy.enqueue_trial(params, user_attrs={RETRY_OF: number})
    ostudy.tell(number, state=TrialState.FAIL, skip_if_finished=True)
    row = {"number": number, "params": params, "value": None, "state": "interrupted"}
    try:
        with writable_store(job.db_path) as store:
            upsert_trials(store, job.name, [row])
    except StoreError:
        pass  # the next session syncs the trials table from the journal
