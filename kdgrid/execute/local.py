"""The coordinator: runs what is not done yet, one run at a time, and ingests results.

Only the coordinator writes the store, and it opens the store for each write only
(DuckDB allows one writer per file), so ``kdgrid status`` can read between writes.
A file lock beside the store keeps a second coordinator out.
"""

from __future__ import annotations

import datetime as dt
import socket
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from filelock import FileLock, Timeout

from kdgrid.errors import KdgridError, RunFailed, StoreError
from kdgrid.execute.rundir import read_result, result_path, run_dir, workdir_for, write_json_atomic
from kdgrid.plan.expand import PlannedRun
from kdgrid.store.db import open_store


class Reporter(Protocol):
    """What the coordinator tells a progress display (the CLI's is rich-based)."""

    def grid_start(self, total: int, todo: int) -> None: ...
    def run_start(self, index: int, run: PlannedRun) -> None: ...
    def run_progress(self, stage: str, epoch: int, step: int, total_steps: int) -> None: ...
    def run_end(self, run: PlannedRun, result: dict[str, Any]) -> None: ...
    def grid_end(self) -> None: ...


class NullReporter:
    def grid_start(self, total: int, todo: int) -> None: ...
    def run_start(self, index: int, run: PlannedRun) -> None: ...
    def run_progress(self, stage: str, epoch: int, step: int, total_steps: int) -> None: ...
    def run_end(self, run: PlannedRun, result: dict[str, Any]) -> None: ...
    def grid_end(self) -> None: ...


# runner(config, run_dir, workdir, on_progress) -> result dict (status 'done' with metrics) or raises.
Runner = Callable[..., dict[str, Any]]


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


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None).isoformat(sep=" ")


def failed_result(run: PlannedRun, error: str, *, status: str = "failed", started: str | None = None) -> dict[str, Any]:
    return {
        "run_id": run.run_id, "task": run.task, "seed": run.seed, "config": run.config,
        "status": status, "error": error, "started": started, "finished": _now(),
        "host": socket.gethostname(), "metrics": [],
    }


def _default_runner() -> Runner:
    # Imported here so planning and reporting never pay for torch.
    from kdgrid.train.run import run_one

    return run_one


def coordinator_lock(db_path: Path) -> FileLock:
    return FileLock(str(db_path.resolve()) + ".lock", timeout=0)


def recover(db_path: Path, workdir: Path) -> int:
    """Ingest results a crashed coordinator left behind, then reset stale 'running' rows.

    Call only while holding the coordinator lock: then no run can really be running.
    """
    n = 0
    runs_root = workdir / "runs"
    with open_store(db_path) as store:
        if runs_root.is_dir():
            statuses = dict(store.con.execute("SELECT run_id, status FROM runs").fetchall())
            for rdir in runs_root.iterdir():
                res = read_result(rdir / "result.json")
                if res is not None and statuses.get(res["run_id"]) != res["status"]:
                    store.ingest_result(res)
                    n += 1
        store.reset_stale_running()
    return n


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
) -> GridOutcome:
    """Execute every planned run that is not done; resumable and idempotent."""
    reporter = reporter or NullReporter()
    workdir = workdir_for(db_path)
    unique = list({r.run_id: r for r in planned}.values())
    outcome = GridOutcome(planned=len(planned), unique=len(unique))
    lock = coordinator_lock(db_path)
    try:
        lock.acquire()
    except Timeout:
        raise StoreError(f"{db_path}: another 'kdgrid run' is using this store (lock {lock.lock_file}); wait for it or use another --db") from None
    try:
        outcome.recovered = recover(db_path, workdir)
        with open_store(db_path) as store:
            store.register_study(study_name, study_path, study_text, study_sha, planned)
            statuses = store.run_statuses(r.run_id for r in unique)
        skip = {"done"} | (set() if retry_failed else {"failed"})
        todo = [r for r in unique if statuses.get(r.run_id) not in skip]
        outcome.already_done = sum(1 for r in unique if statuses.get(r.run_id) == "done")
        if max_runs is not None:
            todo = todo[:max_runs]
        runner = runner or _default_runner()
        reporter.grid_start(len(unique), len(todo))
        for i, run in enumerate(todo):
            reporter.run_start(i, run)
            result = _execute_one(db_path, workdir, run, runner, reporter)
            outcome.durations[run.run_id] = float(result.get("duration_s") or 0.0)
            if result["status"] == "done":
                outcome.done += 1
            elif result["status"] == "interrupted":
                outcome.interrupted = True
                break
            else:
                outcome.failed += 1
                outcome.errors.append((run.run_id, str(result.get("error"))))
            reporter.run_end(run, result)
        reporter.grid_end()
    finally:
        lock.release()
    return outcome


def _execute_one(db_path: Path, workdir: Path, run: PlannedRun, runner: Runner, reporter: Reporter) -> dict[str, Any]:
    rdir = run_dir(workdir, run.run_id)
    rpath = result_path(workdir, run.run_id)
    existing = read_result(rpath)
    if existing is not None and existing["status"] == "done":
        # Finished earlier but never ingested: ingest, never redo.
        with open_store(db_path) as store:
            store.ingest_result(existing)
        return existing
    with open_store(db_path) as store:
        store.mark_running(run.run_id, str(rdir))
    started = _now()
    t0 = time.perf_counter()
    try:
        rdir.mkdir(parents=True, exist_ok=True)
        result = runner(run.config, rdir, workdir=workdir, on_progress=reporter.run_progress)
        result.update(started=started, finished=_now(), duration_s=time.perf_counter() - t0)
    except KeyboardInterrupt:
        result = failed_result(run, "interrupted by user", status="interrupted", started=started)
    except RunFailed as exc:
        result = failed_result(run, str(exc), started=started)
    except KdgridError as exc:
        result = failed_result(run, str(exc), started=started)
    except Exception as exc:  # a bug or a library error in one run must not stop the grid
        result = failed_result(run, f"{type(exc).__name__}: {exc}", started=started)
        _write_traceback(rdir)
    result.setdefault("duration_s", time.perf_counter() - t0)
    if result["status"] != "interrupted":
        try:
            write_json_atomic(rpath, result)
        except RunFailed as exc:
            result = failed_result(run, str(exc), started=started)
    with open_store(db_path) as store:
        if result["status"] == "interrupted":
            store.set_status(run.run_id, "interrupted", result["error"])
        else:
            store.ingest_result(result)
    return result


def _write_traceback(rdir: Path) -> None:
    try:
        (rdir / "error.log").write_text(traceback.format_exc())
    except OSError:
        pass
