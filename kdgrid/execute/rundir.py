"""Run directories: where a run writes its result before the coordinator ingests it.

``<workdir>/runs/<run_id>/result.json`` is written atomically (temp file + ``os.replace``),
so a reader sees either no result or a whole one, never half of one. ``job.json`` beside it
says where the current attempt runs (a local worker's pid, or a Slurm job id), and
``run.log`` holds what the run printed.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from kdgrid.errors import RunFailed


def workdir_for(db_path: Path) -> Path:
    """Run directories and caches live beside the store unless KDGRID_HOME says otherwise."""
    env = os.environ.get("KDGRID_HOME")
    return Path(env) if env else db_path.resolve().parent / ".kdgrid"


def run_dir(workdir: Path, run_id: str) -> Path:
    return workdir / "runs" / run_id


def result_path(workdir: Path, run_id: str) -> Path:
    return run_dir(workdir, run_id) / "result.json"


def job_path(workdir: Path, run_id: str) -> Path:
    return run_dir(workdir, run_id) / "job.json"


def read_job(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and "executor" in data else None


def remove(path: Path) -> None:
    """Delete a file if it is there; a run directory that cannot be written is the run's problem, not ours."""
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass


def write_json_atomic(path: Path, payload: Any) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
        with os.fdopen(fd, "w") as fh:
            json.dump(payload, fh, indent=1, default=_jsonable)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        raise RunFailed(f"cannot write {path}: {exc.strerror or exc}") from None


def read_result(path: Path) -> dict[str, Any] | None:
    """A finished result, or None when absent or unreadable (a crash mid-write leaves only a temp file)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and "run_id" in data and "status" in data else None


def recoverable(result: dict[str, Any] | None) -> bool:
    """A result file that is a run's outcome: done, or failed for a reason another attempt would not fix.

    A failure that can pass (a killed worker, out of memory) is left to the next attempt.
    """
    return result is not None and (result["status"] == "done" or (result["status"] == "failed" and not result.get("retryable")))


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def waiting_results(store: Any, workdir: Path) -> tuple[list[str], list[str]]:
    """(runs whose finished result.json is not in the store yet, runs held by a cluster job).

    Read-only: ``kdgrid status`` reports them; the next ``kdgrid run`` ingests the first and
    re-attaches to the second.
    """
    waiting: list[str] = []
    on_cluster: list[str] = []
    for run_id, status in store.con.execute("SELECT run_id, status FROM runs WHERE status <> 'done'").fetchall():
        res = read_result(result_path(workdir, run_id))
        if recoverable(res) and res is not None and res["status"] != status:
            waiting.append(run_id)
        elif status == "running":
            job = read_job(job_path(workdir, run_id))
            if job is not None and job["executor"] in ("slurm", "local"):
                on_cluster.append(run_id)
    return waiting, on_cluster
