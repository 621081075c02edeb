"""The coordinator's writes to the store, and the grid's running tally.

Every write opens the store, writes, and closes it again (DuckDB allows one writer per file),
so ``kdgrid status`` can read in between; when a reader holds the file at that moment, the
write waits and tries again instead of failing the grid. A write that really fails (a full
disk under the store, say) stops the grid with one clear error: results stay in the run
directories and the next ``kdgrid run`` ingests them.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import duckdb

from kdgrid.errors import StoreError
from kdgrid.plan.expand import PlannedRun
from kdgrid.store.db import Store, open_store


class Reporter(Protocol):
    """What the coordinator tells a progress display (the CLI's is rich-based).

    With worker processes several runs are in flight at once: ``run_progress`` then gets the
    run's id as ``run_id``. Reporters may also define ``run_retry(run, result, attempt)``.
    """

    def grid_start(self, total: int, todo: int) -> None: ...
    def run_start(self, index: int, run: PlannedRun) -> None: ...
    def run_progress(self, stage: str, epoch: int, step: int, total_steps: int) -> None: ...
    def run_end(self, run: PlannedRun, result: dict[str, Any]) -> None: ...
    def grid_end(self) -> None: ...


class NullReporter:
    def grid_start(self, total: int, todo: int) -> None: ...
    def run_start(self, index: int, run: PlannedRun) -> None: ...
    def run_progress(self, stage: str, epoch: int, step: int, total_steps: int, run_id: str | None = None) -> None: ...
    def run_end(self, run: PlannedRun, result: dict[str, Any]) -> None: ...
    def run_retry(self, run: PlannedRun, result: dict[str, Any], attempt: int) -> None: ...
    def grid_end(self) -> None: ...


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


STORE_BUSY_WAIT_S = 60.0


@contextmanager
def writable_store(db_path: Path, wait_s: float = STORE_BUSY_WAIT_S) -> Iterator[Store]:
    """open_store for a write, waiting while a reader (``kdgrid status``) holds the file."""
    deadline = time.monotonic() + wait_s
    delay = 0.05
    while True:
        entered = False
        try:
            with open_store(db_path) as store:
                entered = True
                try:
                    yield store
                except duckdb.Error as exc:
                    raise StoreError(
                        f"{db_path}: cannot write the store ({str(exc).splitlines()[0]}); finished results stay "
                        f"in their run directories and the next 'kdgrid run' stores them"
                    ) from None
            return
        except StoreError as exc:
            if entered or "in use" not in str(exc) or time.monotonic() > deadline:
                raise
        time.sleep(delay)
        delay = min(1.0, delay * 2)


class Ledger:
    """Store writes for runs, plus the outcome tally and the reporter calls that go with them."""

    def __init__(self, db_path: Path, outcome: GridOutcome, reporter: Any) -> None:
        self.db_path = db_path
        self.outcome = outcome
        self.reporter = reporter

    def mark_running(self, run: PlannedRun, rdir: Path) -> None:
        with writable_store(self.db_path) as store:
            store.mark_running(run.run_id, str(rdir))

    def finish(self, run: PlannedRun, record: dict[str, Any]) -> None:
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

    def retry(self, run: PlannedRun, record: dict[str, Any], next_attempt: int) -> None:
        """An attempt failed in a way that can pass: the run is 'interrupted' (with why) until it runs again."""
        with writable_store(self.db_path) as store:
            store.set_status(run.run_id, "interrupted", str(record.get("error")))
        self.outcome.retried += 1
        hook = getattr(self.reporter, "run_retry", None)
        if hook is not None:
            hook(run, record, next_attempt)
