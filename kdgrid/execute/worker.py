"""A pool worker: a long-lived process that runs one job at a time for the coordinator.

Started as ``python -m kdgrid.execute.worker`` by :mod:`kdgrid.execute.pool`, in its own session,
with ``CUDA_VISIBLE_DEVICES`` set to its GPU (if any) and its share of the CPU threads. It never
opens the store: a finished run is a ``result.json`` in its run directory.

Protocol, one JSON object per line. The coordinator writes to the worker's stdin::

    {"op": "init", "runner": REF, "threads": N, "parent": PID}
    {"op": "run", "run_id": ..., "task": ..., "seed": ..., "config": {...}, "run_dir": ..., "workdir": ..., "attempt": N}
    {"op": "exit"}

and reads from the worker's original stdout (fd 1 then points at the log, so a stray print
cannot corrupt the protocol)::

    {"ev": "ready", "pid": PID}
    {"ev": "start", "run_id": ...}
    {"ev": "progress", "run_id": ..., "stage": ..., "epoch": E, "step": S, "total": T}
    {"ev": "epoch", "run_id": ..., "stage": ..., "epoch": E, "metrics": {name: value}}   (dev metrics, each epoch)
    {"ev": "end", "run_id": ..., "status": "done"|"failed", "error": ..., "retryable": B, "record": {...}|null}

``record`` is the whole result only when ``result.json`` could not be written. The worker dies
with its coordinator (PR_SET_PDEATHSIG on Linux, a watchdog thread elsewhere).
"""

from __future__ import annotations

import faulthandler
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

from kdgrid.execute.job import execute_job, unpack_runner


def _die_with_parent(parent: int) -> None:
    armed = False
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            armed = libc.prctl(1, signal.SIGKILL, 0, 0, 0) == 0  # PR_SET_PDEATHSIG: SIGKILL when the parent dies
        except (OSError, AttributeError):
            armed = False
    if os.getppid() != parent:  # the coordinator died before prctl took effect
        os._exit(1)
    if armed:
        return

    def watch() -> None:
        while True:
            time.sleep(0.5)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, name="kdgrid-parent-watch", daemon=True).start()


class _Channel:
    def __init__(self, out: IO[str]) -> None:
        self.out = out
        self.last_progress = 0.0

    def send(self, msg: dict[str, Any]) -> None:
        try:
            self.out.write(json.dumps(msg, default=str) + "\n")
            self.out.flush()
        except (BrokenPipeError, OSError):
            os._exit(1)  # the coordinator is gone

    def progress(self, run_id: str, stage: str, epoch: int, step: int, total: int) -> None:
        t = time.monotonic()
        if step < total and t - self.last_progress < 0.5:
            return
        self.last_progress = t
        self.send({"ev": "progress", "run_id": run_id, "stage": stage, "epoch": epoch, "step": step, "total": total})


def _redirect_output(path: Path | None, fallback_fd: int) -> None:
    """Point fds 1 and 2 at a run's log file (or back at the worker's own stderr)."""
    fd = fallback_fd
    if path is not None:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        except OSError:
            fd = fallback_fd
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    if fd != fallback_fd:
        os.close(fd)


def main() -> None:
    channel = _Channel(os.fdopen(os.dup(1), "w", buffering=1))
    own_stderr = os.dup(2)
    os.dup2(2, 1)  # prints go to the log, not into the protocol
    faulthandler.enable()  # a segfault leaves a Python traceback in the run's log
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the coordinator decides what Ctrl-C stops
    init = json.loads(sys.stdin.readline() or "{}")
    if init.get("op") != "init":
        sys.exit(2)
    _die_with_parent(int(init["parent"]))
    runner = unpack_runner(init.get("runner"))
    threads = int(init.get("threads") or 0)
    if threads and "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)
    channel.send({"ev": "ready", "pid": os.getpid()})
    for line in sys.stdin:
        msg = json.loads(line)
        if msg.get("op") != "run":
            break
        run_id = msg["run_id"]
        run_dir = Path(msg["run_dir"])
        channel.send({"ev": "start", "run_id": run_id})
        _redirect_output(run_dir / "run.log" if run_dir.is_dir() else None, own_stderr)

        def on_progress(stage: str, epoch: int, step: int, total: int, _rid: str = run_id) -> None:
            channel.progress(_rid, stage, epoch, step, total)

        def on_epoch(stage: str, epoch: int, metrics: dict[str, float], _rid: str = run_id) -> None:
            # The coordinator decides whether the run goes on (a search's pruner); it kills this worker if not.
            channel.send(
                {
                    "ev": "epoch",
                    "run_id": _rid,
                    "stage": stage,
                    "epoch": epoch,
                    "metrics": {k: float(v) for k, v in metrics.items()},
                }
            )

        try:
            result = execute_job(
                runner,
                run_id=run_id,
                task=msg.get("task"),
                seed=msg.get("seed"),
                config=msg["config"],
                run_dir=run_dir,
                workdir=Path(msg["workdir"]),
                attempt=int(msg.get("attempt", 1)),
                on_progress=on_progress,
                on_epoch=on_epoch,
            )
        finally:
            _redirect_output(None, own_stderr)
        channel.send(
            {
                "ev": "end",
                "run_id": run_id,
                "status": result["status"],
                "error": result.get("error"),
                "retryable": bool(result.get("retryable")),
                "record": result if result.get("unsaved") else None,
            }
        )


if __name__ == "__main__":
    main()
