"""One attempt of one run, wherever it executes: in the coordinator, in a pool worker, or in a Slurm job.

:func:`execute_job` injects test faults, calls the runner, turns an exception into a failed
record with a reason and a ``retryable`` flag, and writes ``result.json`` atomically (done or
failed). It never raises, except KeyboardInterrupt and :class:`RunStopped`.
"""

from __future__ import annotations

import base64
import datetime as dt
import errno
import os
import socket
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypedDict

from kdgrid.errors import KdgridError, RunFailed
from kdgrid.execute import faults
from kdgrid.execute.rundir import write_json_atomic
from kdgrid.records import ResultStatus, RunResult

if TYPE_CHECKING:
    from kdgrid.study.schema import RunConfig

EpochFn = Callable[[str, int, dict[str, float]], None]
ProgressFn = Callable[[str, int, int, int], None]


class Runner(Protocol):
    """One run of a config (``kdgrid.train.run.run_one``, or a stand-in the tests inject): its result record
    (status 'done' with metrics), or an exception.

    ``on_progress(stage, epoch, step, total_steps)`` and ``on_epoch(stage, epoch, dev_metrics)`` may be None; a
    runner that never calls on_epoch is still pruned, from its stored epochs once it finishes (kdgrid/search).
    """

    def __call__(
        self,
        config: RunConfig,
        run_dir: Path,
        /,
        *,
        workdir: Path,
        on_progress: Any = None,
        on_epoch: Any = None,
    ) -> RunResult: ...


class RunStopped(Exception):
    """Raised by an ``on_epoch`` hook to stop a run the scheduler was asked to stop (a search pruned its
    trial): the attempt ends with no result written, and the run is left 'interrupted' with ``why``."""

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


def now() -> str:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None).isoformat(sep=" ")


def failed_record(
    run_id: str,
    task: str | None,
    seed: int | None,
    config: dict[str, Any] | None,
    error: str,
    *,
    status: ResultStatus = "failed",
    started: str | None = None,
    retryable: bool = False,
) -> RunResult:
    return {
        "run_id": run_id,
        "task": task,
        "seed": seed,
        "config": config,
        "status": status,
        "error": error,
        "retryable": retryable,
        "started": started,
        "finished": now(),
        "host": socket.gethostname(),
        "metrics": [],
    }


def is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":  # torch.OutOfMemoryError (CUDA)
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def classify(exc: BaseException) -> tuple[str, bool]:
    """(reason, retryable): only failures that can pass on another attempt are retryable."""
    if isinstance(exc, RunFailed):
        return str(exc), exc.retryable
    if isinstance(exc, KdgridError):
        return str(exc), False
    if is_out_of_memory(exc):
        return f"out of memory ({type(exc).__name__}: {exc})", True
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return f"disk full ({exc})", False
    return f"{type(exc).__name__}: {exc}", False


def execute_job(
    runner: Runner,
    *,
    run_id: str,
    task: str | None,
    seed: int | None,
    config: dict[str, Any],
    run_dir: Path,
    workdir: Path,
    attempt: int = 1,
    on_progress: ProgressFn | None = None,
    on_epoch: EpochFn | None = None,
) -> RunResult:
    """Run one attempt and write its ``result.json``; return the record written (or that could not be).

    ``config`` is the run config's JSON form (``PlannedRun.config_data()``), as a worker's message and a Slurm
    job's spec carry it: it becomes a :class:`RunConfig` here, inside the attempt, so a config that no longer
    validates (a plug-in changed since the plan) fails this run with its reason, not the worker.
    """
    started = now()
    t0 = time.perf_counter()
    result_file = run_dir / "result.json"
    kind = faults.fault_for(run_id, seed, attempt)
    try:
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RunFailed(f"cannot create the run directory {run_dir}: {exc.strerror or exc}") from None
        faults.inject_before_run(kind)
        from kdgrid.study.schema import RunConfig  # here, not at the top: a Slurm job loads it only to run

        run_config = RunConfig.model_validate(config)
        with faults.loop_fault(kind):
            result = runner(run_config, run_dir, workdir=workdir, on_progress=on_progress, on_epoch=on_epoch)
        result["started"], result["finished"] = started, now()
        result["duration_s"] = time.perf_counter() - t0
    except (KeyboardInterrupt, RunStopped):
        raise
    except Exception as exc:  # one run's error, whatever it is, must not stop the grid
        reason, retryable = classify(exc)
        result = failed_record(run_id, task, seed, config, reason, started=started, retryable=retryable)
        result["duration_s"] = time.perf_counter() - t0
        if not isinstance(exc, KdgridError):
            _write_traceback(run_dir)
    result["attempt"] = attempt
    try:
        faults.check_write(kind, result_file)
        write_json_atomic(result_file, result)
    except OSError as exc:
        result = _unsaved(result, f"cannot write {result_file}: {exc.strerror or exc}")
    except RunFailed as exc:
        result = _unsaved(result, str(exc))
    return result


class JobSpec(TypedDict):
    """One attempt of one run as a Slurm array task receives it (a pool worker's ``run`` message has the same fields)."""

    run_id: str
    task: str
    seed: int
    config: dict[str, Any]  # the run config's JSON form, PlannedRun.config_data()
    attempt: int
    run_dir: str
    workdir: str


class RunnerRef(TypedDict):
    """An injected runner on its way to another process (:func:`pack_runner`)."""

    pickle: str  # cloudpickle, base64
    sys_path: list[str]  # the coordinator's, so a module-level runner's module imports there


def cluster_task(runner_ref: RunnerRef | None, spec: JobSpec) -> str:
    """One Slurm array task: one attempt of one run (kdgrid/execute/cluster.py submits it).

    It lives here, in a module without DuckDB or Pydantic, so a job starts fast.
    """
    runner = unpack_runner(runner_ref)
    cpus = os.environ.get("SLURM_CPUS_PER_TASK", "")
    if cpus.isdigit() and "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(int(cpus))
    result = execute_job(
        runner,
        run_id=spec["run_id"],
        task=spec["task"],
        seed=spec["seed"],
        config=spec["config"],
        run_dir=Path(spec["run_dir"]),
        workdir=Path(spec["workdir"]),
        attempt=spec["attempt"],
    )
    return str(result["status"])


def _unsaved(result: RunResult, why: str) -> RunResult:
    """The record for the store when result.json cannot be written (full disk, read-only run directory)."""
    out = result.copy()
    if result["status"] == "done":
        out["status"] = "failed"
        out["error"] = f"{why} (the run finished but its result could not be saved)"
        out["metrics"] = []
        out["retryable"] = False
    else:
        out["error"] = f"{result.get('error')}; also {why}"
    out["unsaved"] = True
    return out


def _write_traceback(rdir: Path) -> None:
    try:
        (rdir / "error.log").write_text(traceback.format_exc())
    except OSError:
        pass


# -- shipping a runner to another process ------------------------------------------------------


def pack_runner(runner: Runner | None) -> RunnerRef | None:
    """A JSON-able reference to an injected runner (None: kdgrid's own ``run_one``).

    Module-level runners are pickled by reference, so their module must be importable in the
    worker; the coordinator's ``sys.path`` travels with the reference for that.
    """
    if runner is None:
        return None
    import cloudpickle

    return {"pickle": base64.b64encode(cloudpickle.dumps(runner)).decode("ascii"), "sys_path": list(sys.path)}


def unpack_runner(ref: RunnerRef | None) -> Runner:
    if ref is None:
        from kdgrid.train.run import run_one

        return run_one
    sys.path.extend(entry for entry in ref.get("sys_path", []) if entry not in sys.path)
    import cloudpickle

    runner: Runner = cloudpickle.loads(base64.b64decode(ref["pickle"]))
    return runner
