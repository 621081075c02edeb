"""The coordinator's writes to the store, and the grid's running tally.

Every write opens the store, writes, and closes it again (DuckDB allows one writer per file),
so ``kdgrid status`` can read in between; when a reader holds the file at that moment, the
write waits and tries again instead of failing the grid. A write that really fails (a full
disk under the store, say) stops the grid with one clear error: results stay in the run
directories and the next ``kdgrid run`` ingests them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import duckdb

from kdgrid.errors import StoreError
from kdgrid.execute.job import failed_record
from kdgrid.execute.rundir import job_path, read_result, remove, result_path, write_json_atomic
from kdgrid.plan.expand import PlannedRun
from kdgrid.records import RunResult
from kdgrid.store.db import Store, open_store


class Reporter:
    """What the coordinator tells a progress display (the CLI's is rich-based) or a search; every hook is a
    no-op here, so a subclass overrides only what it uses.

    With worker processes several runs are in flight at once: ``run_progress`` then names the run
    (``run_id``); in-process runs leave it None. ``run_epoch`` brings a run's dev metrics after each epoch
    while it runs (in process and from pool workers; Slurm jobs report only their result), and
    ``stop_reason`` is how a listener stops runs: the backends ask it before starting a run and while one
    runs, and stop it (left 'interrupted' with that reason) when it answers.
    """

    def grid_start(self, total: int, todo: int) -> None: ...
    def run_start(self, index: int, run: PlannedRun) -> None: ...
    def run_progress(self, stage: str, epoch: int, step: int, total_steps: int, run_id: str | None = None) -> None: ...
    def run_epoch(self, run: PlannedRun, stage: str, epoch: int, metrics: dict[str, float]) -> None: ...
    def run_end(self, run: PlannedRun, result: RunResult) -> None: ...
    def run_retry(self, run: PlannedRun, result: RunResult, attempt: int) -> None: ...
    def grid_end(self) -> None: ...

    def stop_reason(self, run: PlannedRun) -> str | None:
        """Why ``run`` should not start or go on (a search pruned its trial), or None to let it run."""
        return None


NullReporter = Reporter


@dataclass
class GridOutcome:
    planned: int
    unique: int
    already_done: int = 0
    done: int = 0
    failed: int = 0
    recovered: int = 0
    interrupted: bool = False
    errors: list[tuple[str, str]] = field(default_factory=list)
    durations: dict[str, float] = field(default_factory=dict)
    retried: int = 0  # attempts that failed in a way that can pass and were run again
    elsewhere: int = 0  # runs left alone because a cluster job still holds them
    detached: int = 0  # cluster runs still queued or running when the coordinator stopped waiting
    stopped: int = 0  # runs stopped or never started because the reporter asked (Reporter.stop_reason)


STORE_BUSY_WAIT_S = 60.0


@contextmanager
def writable_store(db_path: Path, wait_s: float = STORE_BUSY_WAIT_S) -> Iterator[Store]:
    """open_store for a write, waiting while a reader (``kdgrid status``) holds the file."""
    with open_store(db_path, wait_s=wait_s) as store:
        try:
            yield store
        except duckdb.Error as exc:
            raise StoreError(
                f"{db_path}: cannot write the store ({str(exc).splitlines()[0]}); finished results stay "
                f"in their run directories and the next 'kdgrid run' stores them"
            ) from None


class Ledger:
    """The one owner of each run's attempts, retry decisions and final outcome, for every backend.

    The backends (in-process, worker pool, Slurm array) only start attempts and report how they ended:
    before an attempt they ask :meth:`claim` (a finished result is ingested, never redone), after it they hand
    the record to :meth:`settle` (retried or final). It also writes the store and keeps the grid's tally.
    """

    def __init__(
        self, db_path: Path, outcome: GridOutcome, reporter: Reporter, workdir: Path, retries: int = 0
    ) -> None:
        self.db_path = db_path
        self.outcome = outcome
        self.reporter = reporter
        self.workdir = workdir
        self.retries = retries

    def claim(self, run: PlannedRun) -> bool:
        """Whether an attempt of ``run`` should start: False when its result.json already says done (then it is
        stored now) or the reporter wants it stopped; a failed earlier attempt's result.json is removed, as the
        new attempt replaces it."""
        rpath = result_path(self.workdir, run.run_id)
        existing = read_result(rpath)
        if existing is not None and existing["status"] == "done":
            self.finish(run, existing)  # finished earlier but never ingested: ingest, never redo
            return False
        if self.reporter.stop_reason(run) is not None:
            self.outcome.stopped += 1  # never started: it stays as it was (pending), for a later grid or trial
            return False
        if existing is not None:
            remove(rpath)
        return True

    def settle(self, run: PlannedRun, record: RunResult, attempt: int, *, may_retry: bool = True) -> bool:
        """An attempt ended with ``record``: True when the run must run again (attempt + 1), else it is final."""
        if record["status"] != "done" and record.get("retryable") and attempt <= self.retries and may_retry:
            self.retry(run, record, attempt + 1)
            return True
        self.finish(run, record)
        remove(job_path(self.workdir, run.run_id))
        return False

    def failure(self, run: PlannedRun, attempt: int, why: str, *, retryable: bool) -> RunResult:
        """The record of an attempt that died without writing its own (a killed worker or job), saved as its result.json."""
        record = failed_record(run.run_id, run.task, run.seed, run.config_data(), why, retryable=retryable)
        record["attempt"] = attempt
        try:
            write_json_atomic(result_path(self.workdir, run.run_id), record)
        except Exception:
            record["unsaved"] = True
        return record

    def mark_running(self, run: PlannedRun, rdir: Path) -> None:
        with writable_store(self.db_path) as store:
            store.mark_running(run.run_id, str(rdir))

    def finish(self, run: PlannedRun, record: RunResult) -> None:
        """Store a run's final record (done or failed) and count it."""
        with writable_store(self.db_path) as store:
            store.ingest_result(record)
        self.outcome.durations[run.run_id] = float(record.get("duration_s") or 0.0)
        if record["status"] == "done":
            self.outcome.done += 1
        else:
            self.outcome.failed += 1
            self.outcome.errors.append((run.run_id, str(record.get("error"))))
        self.reporter.run_end(run, record)

    def interrupted(self, run: PlannedRun, why: str = "interrupted by user") -> None:
        with writable_store(self.db_path) as store:
            store.set_status(run.run_id, "interrupted", why)

    def stop_reason(self, run: PlannedRun) -> str | None:
        return self.reporter.stop_reason(run)

    def stopped(self, run: PlannedRun, why: str) -> None:
        """An attempt stopped on the reporter's request: no result is kept, the run is 'interrupted' with ``why``
        (a later grid or trial runs it again)."""
        remove(job_path(self.workdir, run.run_id))
        self.interrupted(run, why)
        self.outcome.stopped += 1

    def retry(self, run: PlannedRun, record: RunResult, next_attempt: int) -> None:
        """An attempt failed in a way that can pass: the run is 'interrupted' (with why) until it runs again."""
        with writable_store(self.db_path) as store:
            store.set_status(run.run_id, "interrupted", str(record.get("error")))
        self.outcome.retried += 1
        self.reporter.run_retry(run, record, next_attempt)
