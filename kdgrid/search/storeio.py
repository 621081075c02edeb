"""Short store openings that wait their turn, and executing one run for a trial.

DuckDB lets one process write a file at a time. Several search processes share a store by
opening it only for each write (milliseconds) and retrying while another process has it
open; all the slow work (training) happens with the store closed. Each run's result is
written to its ``result.json`` first, exactly as the grid coordinator does, so a result is
never lost between training and ingestion: the next process that needs the run ingests it.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from filelock import FileLock

from kdgrid.execute.job import execute_job
from kdgrid.execute.rundir import read_result, result_path, run_dir
from kdgrid.plan.expand import PlannedRun
from kdgrid.records import RunResult
from kdgrid.store.db import Store, open_store

T = TypeVar("T")
STORE_WAIT_S = 120.0  # a write takes milliseconds; two minutes of contention means something is stuck


@contextmanager
def store_turn(db_path: Path, *, read_only: bool = False, wait_s: float = STORE_WAIT_S) -> Iterator[Store]:
    """Open the store for one short piece of work, waiting while another process has it."""
    with open_store(db_path, read_only=read_only, wait_s=wait_s) as store:
        yield store


def with_store(db_path: Path, fn: Callable[[Store], T]) -> T:
    with store_turn(db_path) as store:
        return fn(store)


class Pruned(Exception):
    """Raised by the per-epoch hook to stop a run whose trial the pruner stops."""


EpochHook = Callable[[str, int, dict[str, float]], None]
ProgressFn = Callable[[str, int, int, int], None]


def accepts_on_epoch(runner: Callable[..., Any]) -> bool:
    """Does the runner report per-epoch dev metrics (``on_epoch``)? Then pruning can stop a run mid-way."""
    try:
        params = inspect.signature(runner).parameters
    except (TypeError, ValueError):
        return False
    # Only a named parameter: a runner taking **kwargs may swallow the hook without calling it.
    return "on_epoch" in params


class StoreBatch:
    """Store writes collected and made in one short opening: opening a DuckDB file costs far more than
    the writes, and every opening is a moment another process must wait."""

    def __init__(self, db_path: Path) -> None:
        self.db_path = db_path
        self._ops: list[Callable[[Store], None]] = []

    def add(self, op: Callable[[Store], None]) -> None:
        self._ops.append(op)

    def flush(self) -> None:
        if not self._ops:
            return
        ops, self._ops = self._ops, []

        def apply(store: Store) -> None:
            for op in ops:
                op(store)

        with_store(self.db_path, apply)


def execute_run(batch: StoreBatch, workdir: Path, run: PlannedRun, runner: Callable[..., RunResult], *,
                on_progress: ProgressFn | None = None, on_epoch: EpochHook | None = None,
                retries: int = 0) -> tuple[RunResult, bool]:
    """Run (or reuse) one run; return (result, reused). Its ingestion is left in ``batch`` (flushed by the caller).

    A run already finished (done, or failed for good) by any earlier grid, trial or process is
    reused, not redone. A file lock per run makes a second process that needs the same run wait
    for the first and reuse its result. Each attempt is the grid's (:func:`kdgrid.execute.job.execute_job`:
    the same failure reasons, traceback in ``error.log``, ``retryable`` flag), and a failure that can pass
    (out of memory) is retried up to ``retries`` times, then stored as retryable, so a later grid or trial
    runs it again instead of reusing it. The result is in ``result.json`` before the store hears of it, so a
    kill before the batch is flushed loses nothing. ``Pruned`` and ``KeyboardInterrupt`` leave the run
    'interrupted' (no result.json), so a later grid or trial runs it again.
    """
    rdir = run_dir(workdir, run.run_id)
    rdir.mkdir(parents=True, exist_ok=True)
    rpath = result_path(workdir, run.run_id)
    with FileLock(str(rdir) + ".lock"):
        existing = read_result(rpath)
        # A failure another attempt could fix (a killed worker, out of memory) is not reused.
        if existing is not None and (existing["status"] == "done"
                                     or (existing["status"] == "failed" and not existing.get("retryable"))):
            batch.add(lambda s: s.ingest_result(existing))
            return existing, True
        attempt = 1
        while True:
            batch.add(lambda s: s.mark_running(run.run_id, str(rdir)))
            batch.flush()  # with the previous run's ingestion: one opening per run
            try:
                result = execute_job(runner, run_id=run.run_id, task=run.task, seed=run.seed, config=run.config,
                                     run_dir=rdir, workdir=workdir, attempt=attempt, on_progress=on_progress,
                                     runner_kwargs={"on_epoch": on_epoch} if on_epoch is not None else None,
                                     passthrough=(Pruned,))
            except (Pruned, KeyboardInterrupt) as exc:
                why = "pruned by the search" if isinstance(exc, Pruned) else "interrupted by user"
                batch.add(lambda s: s.set_status(run.run_id, "interrupted", why))  # noqa: B023 (flushed before the loop moves on)
                raise
            if result["status"] == "done" or not result.get("retryable") or attempt > retries:
                break
            attempt += 1
        final = result
        batch.add(lambda s: s.ingest_result(final))
        return result, False
