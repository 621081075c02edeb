"""The local worker pool: one long-lived worker process per slot, one run at a time each.

A slot is a CPU share or a GPU (``CUDA_VISIBLE_DEVICES`` per worker). Each run executes in a
worker process, so a segfault, an out-of-memory kill or a ``kill -9`` loses only that run;
the worker is started again for the next one. Workers write ``result.json``; only this
coordinator writes the store (:class:`~kdgrid.execute.ledger.Ledger`).

What happens on each failure:

- the run raises: the worker writes a failed result with the reason; retried only when the
  failure can pass (out of memory, ``RunFailed(retryable=True)``), never for a bad config or NaN;
- the worker dies (signal, exit): the run fails as "worker process killed by SIGKILL" (or
  crashed, exited) and is retried up to ``retries`` times; a result it wrote before dying counts;
- the run exceeds ``timeout_s``: its worker's process group is killed; failed, not retried;
- Ctrl-C or SIGTERM: workers are stopped, runs in flight are marked ``interrupted``, finished
  results are kept; a second Ctrl-C stops at once;
- the reporter asks to stop a run (``Reporter.stop_reason``: a search pruned its trial): its worker is
  killed and the run is marked ``interrupted`` with that reason; queued runs it names never start.

After any failed attempt the worker is replaced, so no state leaks from a failed run.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kdgrid.execute.job import RunnerRef, failed_record, now
from kdgrid.execute.ledger import Ledger
from kdgrid.execute.rundir import JobInfo, job_path, read_result, remove, result_path, run_dir, write_json_atomic
from kdgrid.plan.expand import PlannedRun
from kdgrid.records import RunResult

BOOT_LIMIT_S = 300.0  # a worker that has not started its run by then (with a timeout set) is stuck


@dataclass
class _Job:
    run: PlannedRun
    attempt: int
    dispatched: float
    started: float | None = None


@dataclass
class _Slot:
    index: int
    gpu: str | None
    proc: subprocess.Popen[bytes] | None = None
    buf: bytes = b""
    job: _Job | None = None
    log: Path | None = None
    eof: bool = False

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None and not self.eof


@dataclass
class StopFlag:
    requested: bool = False
    signals: list[int] = field(default_factory=list)


@contextmanager
def stop_on_signals(stop: StopFlag) -> Iterator[None]:
    """Ctrl-C / SIGTERM ask the pool to stop at its next step; a second Ctrl-C stops at once."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        if stop.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        stop.requested = True
        stop.signals.append(signum)

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "worker process stopped answering"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        if -code == signal.SIGKILL:
            return f"worker process killed by {name} (out of memory, or killed)"
        return f"worker process crashed ({name})"
    return f"worker process exited with code {code}"


def _last_line(path: Path | None) -> str:
    if path is None:
        return ""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 4096))
            lines = [ln.strip() for ln in fh.read().decode(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1][:300] if lines else ""


class Pool:
    def __init__(
        self,
        *,
        db_path: Path,
        workdir: Path,
        ledger: Ledger,
        reporter: Any,
        runner_ref: RunnerRef | None,
        slots: Sequence[str | None],
        threads: int,
        timeout_s: float | None,
    ) -> None:
        self.db_path = db_path
        self.workdir = workdir
        self.ledger = ledger
        self.reporter = reporter
        self.runner_ref = runner_ref
        self.slots = [_Slot(i, gpu) for i, gpu in enumerate(slots)]
        self.threads = threads
        self.timeout_s = timeout_s
        self.queue: deque[tuple[PlannedRun, int]] = deque()
        self.sel = selectors.DefaultSelector()
        self.dispatched = 0
        self.stop = StopFlag()

    # -- public ------------------------------------------------------------------------------
    def run(self, todo: Sequence[PlannedRun]) -> bool:
        """Run every planned run; False when stopped by Ctrl-C / SIGTERM (in-flight runs interrupted)."""
        self.queue.extend((r, 1) for r in todo)
        try:
            with stop_on_signals(self.stop):
                try:
                    while not self.stop.requested and (self.queue or any(s.job for s in self.slots)):
                        self._dispatch()
                        self._wait(0.25)
                        self._check_slots()
                except KeyboardInterrupt:
                    self.stop.requested = True
                if self.stop.requested:
                    self._interrupt_in_flight()
                    return False
                return True
        finally:
            self._shutdown()

    # -- dispatching -------------------------------------------------------------------------
    def _dispatch(self) -> None:
        for slot in self.slots:
            while slot.job is None and self.queue and not self.stop.requested:
                run, attempt = self.queue.popleft()
                self._start(slot, run, attempt)

    def _start(self, slot: _Slot, run: PlannedRun, attempt: int) -> None:
        if not self.ledger.claim(run):
            return
        rdir = run_dir(self.workdir, run.run_id)
        if not slot.alive:
            self._spawn(slot)
        assert slot.proc is not None
        try:  # best effort: an unwritable run directory is the worker's to report
            rdir.mkdir(parents=True, exist_ok=True)
            info: JobInfo = {
                "executor": "pool",
                "job_id": str(slot.proc.pid),
                "host": os.uname().nodename,
                "slot": slot.index,
                "gpu": slot.gpu,
                "attempt": attempt,
                "submitted": now(),
            }
            write_json_atomic(job_path(self.workdir, run.run_id), info)
        except Exception:
            pass
        slot.job = _Job(run, attempt, time.monotonic())
        self.reporter.run_start(self.dispatched, run)
        self.dispatched += 1
        self._send(
            slot,
            {
                "op": "run",
                "run_id": run.run_id,
                "task": run.task,
                "seed": run.seed,
                "config": run.config_data(),
                "run_dir": str(rdir),
                "workdir": str(self.workdir),
                "attempt": attempt,
            },
        )
        self.ledger.mark_running(run, rdir)  # after the send: the worker starts while the store is written

    def _spawn(self, slot: _Slot) -> None:
        self._forget(slot)
        env = dict(os.environ)
        env.update(OMP_NUM_THREADS=str(self.threads), MKL_NUM_THREADS=str(self.threads), TOKENIZERS_PARALLELISM="false")
        if slot.gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = slot.gpu
        logs = self.workdir / "logs"
        slot.log = logs / f"worker-{slot.index}.log"
        try:
            logs.mkdir(parents=True, exist_ok=True)
            log_fh: Any = open(slot.log, "ab")  # noqa: SIM115 (the worker's stderr for its whole life)
        except OSError:
            slot.log, log_fh = None, subprocess.DEVNULL
        try:
            slot.proc = subprocess.Popen(
                [sys.executable, "-m", "kdgrid.execute.worker"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log_fh,
                env=env,
                start_new_session=True,
            )
        finally:
            if log_fh is not subprocess.DEVNULL:
                log_fh.close()
        slot.buf, slot.eof = b"", False
        assert slot.proc.stdout is not None
        self.sel.register(slot.proc.stdout, selectors.EVENT_READ, slot)
        self._send(slot, {"op": "init", "runner": self.runner_ref, "threads": self.threads, "parent": os.getpid()})

    def _send(self, slot: _Slot, msg: dict[str, Any]) -> None:
        assert slot.proc is not None and slot.proc.stdin is not None
        try:
            slot.proc.stdin.write((json.dumps(msg, default=str) + "\n").encode())
            slot.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            slot.eof = True  # it died; _check_slots settles its run

    # -- waiting -----------------------------------------------------------------------------
    def _wait(self, timeout: float) -> None:
        if not self.sel.get_map():
            time.sleep(timeout)
            return
        for key, _ in self.sel.select(timeout):
            slot: _Slot = key.data
            try:
                data = os.read(key.fd, 1 << 16)
            except OSError:
                data = b""
            if not data:
                slot.eof = True
                self._unregister(slot)
                continue
            slot.buf += data
            while b"\n" in slot.buf:
                line, slot.buf = slot.buf.split(b"\n", 1)
                try:
                    msg = json.loads(line)
                except ValueError:
                    continue
                self._on_message(slot, msg)

    def _on_message(self, slot: _Slot, msg: dict[str, Any]) -> None:
        job = slot.job
        ev = msg.get("ev")
        if job is None or msg.get("run_id") not in (None, job.run.run_id):
            return
        if ev == "start":
            job.started = time.monotonic()
        elif ev == "progress":
            self.reporter.run_progress(msg["stage"], msg["epoch"], msg["step"], msg["total"], run_id=job.run.run_id)
        elif ev == "epoch":
            self.reporter.run_epoch(job.run, msg["stage"], int(msg["epoch"]), dict(msg.get("metrics") or {}))
            self._stop_if_asked(slot)
        elif ev == "end":
            slot.job = None
            record = msg.get("record") or read_result(result_path(self.workdir, job.run.run_id))
            if record is None or record.get("status") != msg["status"]:
                record = failed_record(
                    job.run.run_id,
                    job.run.task,
                    job.run.seed,
                    job.run.config_data(),
                    msg.get("error") or "the run ended without a readable result.json",
                    retryable=bool(msg.get("retryable")),
                )
            if record["status"] != "done":
                self._retire(slot)  # a failed run may leave the process in a bad state
            self._dispatch()  # the freed slot starts its next run while the store is written
            self._settle(job, record)

    def _check_slots(self) -> None:
        t = time.monotonic()
        for slot in self.slots:
            if slot.proc is None:
                continue
            if slot.eof or slot.proc.poll() is not None:
                code = self._reap(slot)
                if slot.job is not None:
                    self._died(slot, slot.job, code)
                continue
            if self._stop_if_asked(slot):
                continue
            job = slot.job
            if job is None or self.timeout_s is None:
                continue
            if job.started is not None and t - job.started > self.timeout_s:
                self._kill(slot)
                slot.job = None
                why = f"timed out after {self.timeout_s:g} s (execute.timeout_s / --timeout); not retried"
                self._settle(job, self._failure(job, why, retryable=False))
            elif job.started is None and t - job.dispatched > max(BOOT_LIMIT_S, self.timeout_s):
                self._kill(slot)
                slot.job = None
                self._settle(job, self._failure(job, "worker process did not start the run", retryable=True))

    def _stop_if_asked(self, slot: _Slot) -> bool:
        """Kill the slot's run when the reporter wants it stopped; True when it did."""
        job = slot.job
        why = None if job is None else self.ledger.stop_reason(job.run)
        if job is None or why is None:
            return False
        self._kill(slot)
        slot.job = None
        written = read_result(result_path(self.workdir, job.run.run_id))
        if written is not None and written["status"] == "done" and written.get("attempt", job.attempt) == job.attempt:
            self._settle(job, written)  # it finished before the kill: a result is never thrown away
        else:
            self.ledger.stopped(job.run, why)
        return True

    def _died(self, slot: _Slot, job: _Job, code: int | None) -> None:
        slot.job = None
        # Drain what it said before dying: an 'end' it sent settles the run normally.
        rid = job.run.run_id
        written = read_result(result_path(self.workdir, rid))
        if written is not None and written.get("attempt", job.attempt) == job.attempt:
            self._settle(job, written)
            return
        why = _describe_exit(code)
        run_log = run_dir(self.workdir, rid) / "run.log"
        tail = _last_line(run_log) or _last_line(slot.log)
        if tail and code is not None and code > 0:
            why += f": {tail}"
        elif tail:
            why += f"; its log: {run_log if _last_line(run_log) else slot.log}"
        self._settle(job, self._failure(job, why, retryable=True))

    def _failure(self, job: _Job, why: str, *, retryable: bool) -> RunResult:
        return self.ledger.failure(job.run, job.attempt, why, retryable=retryable)

    def _settle(self, job: _Job, record: RunResult) -> None:
        """The ledger decides: a final record is stored, a failure that can pass comes back to the queue."""
        if self.ledger.settle(job.run, record, job.attempt, may_retry=not self.stop.requested):
            self.queue.appendleft((job.run, job.attempt + 1))

    # -- stopping ----------------------------------------------------------------------------
    def _interrupt_in_flight(self) -> None:
        for slot in self.slots:
            if slot.proc is not None:
                self._kill(slot)
            job, slot.job = slot.job, None
            if job is None:
                continue
            written = read_result(result_path(self.workdir, job.run.run_id))
            if written is not None and written["status"] == "done":
                self.ledger.finish(job.run, written)
            else:
                self.ledger.interrupted(job.run)
            remove(job_path(self.workdir, job.run.run_id))

    def _retire(self, slot: _Slot) -> None:
        """Ask a worker to exit after its run; the next run starts a fresh one."""
        if slot.proc is None:
            return
        self._send(slot, {"op": "exit"})
        self._unregister(slot)
        proc, slot.proc = slot.proc, None
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            _killpg(proc)
        _close(proc)

    def _kill(self, slot: _Slot) -> None:
        if slot.proc is not None:
            _killpg(slot.proc)
            self._reap(slot)

    def _reap(self, slot: _Slot) -> int | None:
        proc = slot.proc
        self._forget(slot)
        if proc is None:
            return None
        try:
            code = proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            _killpg(proc)
            code = proc.wait()
        _close(proc)
        return code

    def _forget(self, slot: _Slot) -> None:
        self._unregister(slot)
        slot.proc = None

    def _unregister(self, slot: _Slot) -> None:
        if slot.proc is not None and slot.proc.stdout is not None:
            try:
                self.sel.unregister(slot.proc.stdout)
            except (KeyError, ValueError):
                pass

    def _shutdown(self) -> None:
        for slot in self.slots:
            if slot.proc is not None and slot.proc.poll() is None:
                self._send(slot, {"op": "exit"})
        deadline = time.monotonic() + 5
        for slot in self.slots:
            if slot.proc is None:
                continue
            try:
                slot.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _killpg(slot.proc)
                slot.proc.wait()
            self._unregister(slot)
            _close(slot.proc)
            slot.proc = None
        self.sel.close()


def _killpg(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the worker leads its own session: its children go too
    except (ProcessLookupError, PermissionError):
        try:
            proc.kill()
        except ProcessLookupError:
            pass


def _close(proc: subprocess.Popen[bytes]) -> None:
    for fh in (proc.stdin, proc.stdout):
        try:
            if fh is not None:
                fh.close()
        except OSError:
            pass
