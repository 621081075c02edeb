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
from typing import Any, Literal, NotRequired, TypedDict, cast

from kdgrid.errors import RunFailed
from kdgrid.records import RunResult


class JobInfo(TypedDict):
    """``job.json``: where a run's current attempt runs, so that the next coordinator can tell whether it is alive.

    ``executor``: ``pool`` (a worker of this coordinator: ``job_id`` is its pid, and it dies with it), or a
    submitit executor (``slurm``, ``local``, ``debug``: ``job_id`` is the job's, ``folder`` submitit's).
    """

    executor: Literal["pool", "slurm", "local", "debug"]
    job_id: str
    attempt: int
    submitted: str
    folder: NotRequired[str]  # submitit executors
    host: NotRequired[str]  # pool
    slot: NotRequired[int]  # pool
    gpu: NotRequired[str | None]  # pool


def workdir_for(db_path: Path) -> Path:
    """Run directories and caches live beside the store unless KDGRID_HOME says otherwise."""
    env = os.environ.get("KDGRID_HOME")
    return Path(env) if env else db_path.resolve().parent / ".kdgrid"


def run_dir(workdir: Path, run_id: str) -> Path:
    return workdir / "runs" / run_id


def result_path(workdir: Path, run_id: str) -> Path:
    return run_dir(workdir, run_id) / RESULT_NAME


def job_path(workdir: Path, run_id: str) -> Path:
    return run_dir(workdir, run_id) / "job.json"


def read_job(path: Path) -> JobInfo | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return cast(JobInfo, data) if isinstance(data, dict) and "executor" in data else None


def remove(path: Path) -> None:
    """Delete a file if it is there; a run directory that cannot be written is the run's problem, not ours."""
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass


def write_json_atomic(path: Path, payload: Any) -> None:
    """Write ``payload`` whole or not at all; a result.json is never replaced in a way that loses one.

    A finished (done) result is not replaced by anything but another finished result, and a damaged
    result.json is kept beside as ``result.json.damaged`` rather than overwritten, for inspection.
    """
    tmp: str | None = None
    try:
        if path.name == RESULT_NAME:
            _keep_existing_result(path, payload)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
        with os.fdopen(fd, "w") as fh:
            json.dump(payload, fh, indent=1, default=_jsonable)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        raise RunFailed(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        if tmp is not None:  # a full disk or a failed rename: leave no half-written temp file behind
            remove(Path(tmp))


RESULT_NAME = "result.json"
DAMAGED_SUFFIX = ".damaged"


def _keep_existing_result(path: Path, payload: Any) -> None:
    existing, damage = check_result(path)
    if damage is not None and path.is_file():  # a folder in the way is not a result: the write then fails
        os.replace(path, path.with_name(path.name + DAMAGED_SUFFIX))
    elif (
        existing is not None
        and existing["status"] == "done"
        and not (isinstance(payload, dict) and payload.get("status") == "done")
    ):
        raise RunFailed(f"{path} holds a finished result; it is kept and will be stored by the next 'kdgrid run'")


def check_result(path: Path) -> tuple[RunResult | None, str | None]:
    """(the result in ``path``, None) when it is whole and belongs to its run directory; (None, why) when
    the file is there but damaged; (None, None) when there is none.

    A result is only trusted for the run whose directory holds it: a result.json copied or moved into
    another run's directory would otherwise be stored under the wrong run.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None, None
    except (OSError, UnicodeDecodeError) as exc:
        return None, f"unreadable ({getattr(exc, 'strerror', None) or exc})"
    try:
        data = json.loads(text)
    except ValueError as exc:
        return None, f"not JSON or cut short ({exc})" if text.strip() else "empty"
    if (
        not isinstance(data, dict)
        or not isinstance(data.get("run_id"), str)
        or data.get("status") not in ("done", "failed")
    ):
        return None, "not a kdgrid result (no run_id, or a status other than done/failed)"
    if data["run_id"] != path.parent.name:
        return None, f"names run {data['run_id']}, not the run {path.parent.name} whose directory holds it"
    return cast(RunResult, data), None  # the keys a reader relies on are checked just above


def read_result(path: Path) -> RunResult | None:
    """A finished result, or None when absent or damaged (a crash mid-write leaves only a temp file);
    :func:`check_result` says why a file is damaged."""
    return check_result(path)[0]


def damaged_results(workdir: Path, run_ids: Any) -> list[tuple[str, str]]:
    """(run id, why) for each of ``run_ids`` whose run directory holds a damaged result.json.

    Such a run counts as not finished: the next ``kdgrid run`` runs it again and keeps the damaged file
    as result.json.damaged. Read-only (``kdgrid status`` reports them).
    """
    out: list[tuple[str, str]] = []
    for run_id in run_ids:
        _, damage = check_result(result_path(workdir, run_id))
        if damage is not None:
            out.append((run_id, damage))
    return out


def recoverable(result: RunResult | None) -> bool:
    """A result file that is a run's outcome: done, or failed for a reason another attempt would not fix.

    A failure that can pass (a killed worker, out of memory) is left to the next attempt.
    """
    return result is not None and (
        result["status"] == "done" or (result["status"] == "failed" and not result.get("retryable"))
    )


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
    for run_id, status in store.unfinished_runs().items():
        res = read_result(result_path(workdir, run_id))
        if recoverable(res) and res is not None and res["status"] != status:
            waiting.append(run_id)
        elif status == "running":
            job = read_job(job_path(workdir, run_id))
            if job is not None and job["executor"] in ("slurm", "local"):
                on_cluster.append(run_id)
    return waiting, on_cluster
