"""The coordinator: runs what is not done yet and ingests results (docs/execution.md).

``run_grid`` takes the coordinator lock beside the store (a second coordinator is refused),
recovers what a crashed coordinator left (results ingested, stale ``running`` rows reset),
registers the study, and runs the missing runs one of three ways (``execute``):

- ``workers: 0``: in this process, one at a time (the library default; debuggers, profilers);
- ``workers: N`` / ``gpus: [...]``: a pool of worker processes (:mod:`kdgrid.execute.pool`);
- ``executor: slurm``: a Slurm job array through submitit (:mod:`kdgrid.execute.cluster`).

Only the coordinator writes the store, and it opens the store for each write only
(DuckDB allows one writer per file), so ``kdgrid status`` can read between writes.
"""

from __future__ import annotations

import contextlib
import json
import signal
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from kdgrid.errors import StoreError
from kdgrid.execute.job import Runner, RunStopped, execute_job, pack_runner
from kdgrid.execute.ledger import GridOutcome, Ledger, NullReporter, Reporter, writable_store
from kdgrid.execute.rundir import (
    JobInfo,
    job_path,
    read_job,
    read_result,
    recoverable,
    result_path,
    run_dir,
    workdir_for,
)
from kdgrid.plan.expand import PlannedRun
from kdgrid.study.schema import Execute

__all__ = [
    "GridOutcome",
    "NullReporter",
    "Reporter",
    "Runner",
    "coordinator",
    "coordinator_lock",
    "recover",
    "run_grid",
]

IN_PROCESS = Execute(workers=0, retries=0)


def _default_runner() -> Runner:
    # Imported here so planning and reporting never pay for torch.
    from kdgrid.train.run import run_one

    return run_one


def coordinator_lock(db_path: Path) -> FileLock:
    return FileLock(str(db_path.resolve()) + ".lock", timeout=0)


def recover(db_path: Path, workdir: Path) -> int:
    """Ingest results a crashed coordinator left behind, then reset stale 'running' rows.

    Call only while holding the coordinator lock. Returns how many results were ingested.
    """
    return _recover(db_path, workdir)[0]


def _recover(db_path: Path, workdir: Path) -> tuple[int, dict[str, JobInfo]]:
    """(results ingested, {run_id: job.json} of runs whose cluster job is still queued or running)."""
    n = 0
    live: dict[str, JobInfo] = {}
    runs_root = workdir / "runs"
    with writable_store(db_path) as store:
        statuses = store.all_run_statuses()
        if runs_root.is_dir():
            for rdir in runs_root.iterdir():
                # A run this store never planned belongs to another store that shares the folder: not ours to ingest.
                if rdir.name not in statuses or statuses[rdir.name] == "done":
                    continue
                res = read_result(rdir / "result.json")
                if recoverable(res) and statuses.get(res["run_id"]) != res["status"]:  # type: ignore[index]
                    assert res is not None
                    store.ingest_result(res)
                    statuses[res["run_id"]] = res["status"]
                    n += 1
        cluster_jobs: dict[str, JobInfo] = {}
        for run_id, status in statuses.items():
            # not only 'running': a coordinator killed between sbatch and its store write left the run 'pending'
            info = read_job(job_path(workdir, run_id)) if status in ("running", "pending", "interrupted") else None
            if info is not None and info["executor"] in ("slurm", "local"):  # cluster jobs outlive their coordinator
                cluster_jobs[run_id] = info
        if cluster_jobs:
            from kdgrid.execute.cluster import live_jobs

            live = live_jobs(cluster_jobs)
        store.reset_stale_running(keep=live)
    return n, live


def run_grid(
    db_path: Path,
    *,
    study_name: str,
    study_path: str,
    study_text: str,
    study_sha: str,
    planned: Sequence[PlannedRun],
    runner: Runner | None = None,
    reporter: Reporter | None = None,
    retry_failed: bool = False,
    max_runs: int | None = None,
    execute: Execute | None = None,
    add_members: bool = False,
    locked: bool = False,
) -> GridOutcome:
    """Execute every planned run that is not done; resumable and idempotent.

    ``execute`` says how (workers, GPUs, timeout, retries, Slurm); None runs in this process,
    one run at a time, without retries. ``runner`` (tests, benchmarks) replaces ``run_one``;
    for worker processes and cluster jobs it must be picklable (a module-level class or function).
    ``add_members`` adds the planned runs to the study instead of making them its members (a search adds a
    batch of trials at a time); ``locked``: the caller holds :func:`coordinator` (a search, for its session).
    A run stored as failed is skipped unless ``retry_failed``, or unless its failure could pass (``_may_pass``).
    """
    reporter = reporter or NullReporter()
    ex = execute or IN_PROCESS
    workdir = workdir_for(db_path)
    unique = list({r.run_id: r for r in planned}.values())
    outcome = GridOutcome(planned=len(planned), unique=len(unique))
    cluster_executor = None
    if ex.executor == "slurm":  # a cluster that cannot be used is refused before anything is written
        from kdgrid.execute.cluster import make_executor

        cluster_executor = make_executor(ex, workdir, study_name)
    with contextlib.nullcontext() if locked else coordinator(db_path):
        outcome.recovered, live = _recover(db_path, workdir)
        with writable_store(db_path) as store:
            store.register_study(study_name, study_path, study_text, study_sha, planned, replace=not add_members)
            statuses = store.run_statuses(r.run_id for r in unique)
        todo = [
            r
            for r in unique
            if r.run_id not in live
            and (
                statuses.get(r.run_id) not in ("done", "failed")
                or (statuses.get(r.run_id) == "failed" and (retry_failed or _may_pass(workdir, r.run_id)))
            )
        ]
        reattach = {r.run_id: (r, live[r.run_id]) for r in unique if r.run_id in live}
        outcome.already_done = sum(1 for r in unique if statuses.get(r.run_id) == "done")
        if max_runs is not None:
            todo = todo[:max_runs]
        ledger = Ledger(db_path, outcome, reporter, workdir, retries=ex.retries)
        if ex.executor == "slurm":
            reporter.grid_start(len(unique), len(todo) + len(reattach))
            _run_cluster(
                cluster_executor, workdir, teachers_first(todo), reattach, ex, runner, ledger, reporter, outcome
            )
        else:
            outcome.elsewhere = len(reattach)  # still running as cluster jobs: left to them
            reporter.grid_start(len(unique), len(todo))
            if not todo:
                pass
            elif ex.workers == 0:
                _run_in_process(workdir, todo, runner or _default_runner(), ledger, reporter, outcome)
            else:
                _run_pool(db_path, workdir, todo, ex, runner, ledger, reporter, outcome)
        reporter.grid_end()
    return outcome


@contextmanager
def coordinator(db_path: Path) -> Iterator[None]:
    """Hold the store's coordinator lock (one 'kdgrid run' or 'kdgrid search' per store); refused when held."""
    lock = coordinator_lock(db_path)
    try:
        lock.acquire()
    except Timeout:
        raise StoreError(
            f"{db_path}: another 'kdgrid run' is using this store (lock {lock.lock_file}); wait for it or use another --db"
        ) from None
    try:
        yield
    finally:
        lock.release()


def _may_pass(workdir: Path, run_id: str) -> bool:
    """A stored failure that another attempt could fix (out of memory, a killed worker): not a final outcome,
    so the next grid or trial that needs the run computes it again instead of reusing the failure."""
    res = read_result(result_path(workdir, run_id))
    return res is not None and res["status"] == "failed" and bool(res.get("retryable"))


def teacher_of(run: PlannedRun) -> str:
    """What decides which fine-tuned teacher a run needs (the inputs of its teacher cache key)."""
    c = run.config
    return json.dumps(
        [run.task, c.teacher.model_dump(mode="json"), c.data.max_seq_length, c.data.dir], sort_keys=True, default=str
    )


def teachers_first(todo: Sequence[PlannedRun]) -> list[PlannedRun]:
    """The first run of every distinct teacher, then the others, each part in plan order.

    Runs of one task come together in plan order, so with several workers every worker would
    start on the same task and all but one would wait on that teacher's fine-tuning lock.
    Starting one run per teacher first puts the teachers' fine-tuning on all workers at once.
    """
    seen: set[str] = set()
    first: list[PlannedRun] = []
    rest: list[PlannedRun] = []
    for run in todo:
        key = teacher_of(run)
        (rest if key in seen else first).append(run)
        seen.add(key)
    return first + rest


def _run_pool(
    db_path: Path,
    workdir: Path,
    todo: list[PlannedRun],
    ex: Execute,
    runner: Runner | None,
    ledger: Ledger,
    reporter: Any,
    outcome: GridOutcome,
) -> None:
    from kdgrid.execute.pool import Pool
    from kdgrid.execute.settings import threads_per_worker

    slots: list[str | None] = list(ex.gpus) if ex.gpus else [None] * ex.workers
    pool = Pool(
        db_path=db_path,
        workdir=workdir,
        ledger=ledger,
        reporter=reporter,
        runner_ref=pack_runner(runner),
        slots=slots,
        threads=threads_per_worker(len(slots)),
        timeout_s=ex.timeout_s,
    )
    if not pool.run(teachers_first(todo) if len(slots) > 1 else todo):
        outcome.interrupted = True


def _run_cluster(
    executor: Any,
    workdir: Path,
    todo: list[PlannedRun],
    reattach: dict[str, tuple[PlannedRun, JobInfo]],
    ex: Execute,
    runner: Runner | None,
    ledger: Ledger,
    reporter: Any,
    outcome: GridOutcome,
) -> None:
    from kdgrid.execute.cluster import ClusterRunner
    from kdgrid.execute.pool import StopFlag, stop_on_signals

    cr = ClusterRunner(
        executor=executor, workdir=workdir, execute=ex, runner_ref=pack_runner(runner), ledger=ledger, reporter=reporter
    )
    stop = StopFlag()
    with stop_on_signals(stop):
        try:
            finished = cr.run(todo, reattach, stop)
        except KeyboardInterrupt:
            finished = False
    if not finished:
        outcome.interrupted = True
        outcome.detached = len(cr.inflight)


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def _run_in_process(
    workdir: Path, todo: list[PlannedRun], runner: Runner, ledger: Ledger, reporter: Any, outcome: GridOutcome
) -> None:
    with _sigterm_as_interrupt():
        for i, run in enumerate(todo):
            reporter.run_start(i, run)
            attempt = 1
            while ledger.claim(run):
                rdir = run_dir(workdir, run.run_id)
                ledger.mark_running(run, rdir)

                def on_epoch(stage: str, epoch: int, metrics: dict[str, float], _run: PlannedRun = run) -> None:
                    reporter.run_epoch(_run, stage, epoch, metrics)
                    why = ledger.stop_reason(_run)
                    if why is not None:
                        raise RunStopped(why)

                try:
                    result = execute_job(
                        runner,
                        run_id=run.run_id,
                        task=run.task,
                        seed=run.seed,
                        config=run.config_data(),
                        run_dir=rdir,
                        workdir=workdir,
                        attempt=attempt,
                        on_progress=reporter.run_progress,
                        on_epoch=on_epoch,
                    )
                except RunStopped as stop:
                    ledger.stopped(run, stop.why)
                    break
                except KeyboardInterrupt:
                    ledger.interrupted(run)
                    outcome.interrupted = True
                    return
                if not ledger.settle(run, result, attempt):
                    break
                attempt += 1
