"""``kdgrid search --workers N``: N trial processes sharing one search, watched by the parent.

Each worker is ``python -m kdgrid.search.worker`` (its own process, so a crash or an
out-of-memory kill loses only its trial, which the others then interrupt and queue again). The
parent holds the search's locks for the whole session, follows the journal to show progress,
and writes each worker's output to ``<db>.optuna/<name>.worker-<k>.log``.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

import optuna
from optuna.trial import TrialState

from kdgrid.errors import KdgridError
from kdgrid.search.journal import ERROR, best_trial, open_search, store_state, used_budget
from kdgrid.search.locks import SearchSession, search_dir
from kdgrid.search.loop import SearchJob
from kdgrid.search.progress import NullSearchReporter, SearchReporter

POLL_S = 1.0


def run_workers(job: SearchJob, n: int, *, reporter: SearchReporter | None = None) -> None:
    """Start N workers and wait for them; raise KdgridError when every worker failed."""
    reporter = reporter or NullSearchReporter()
    with SearchSession(job.db_path):
        ostudy = open_search(job.db_path, job.study, n_trials=job.target)  # created once, checked once
        seen = {t.number for t in ostudy.get_trials(deepcopy=False) if t.state.is_finished()}
        reporter.search_start(job.name, job.target, min(used_budget(ostudy), job.target))
        logs = [search_dir(job.db_path) / f"{job.name}.worker-{k}.log" for k in range(n)]
        handles: list[IO[bytes]] = [log.open("wb") for log in logs]
        cmd = [sys.executable, "-m", "kdgrid.search.worker", str(job.loaded.path), "--db", str(job.db_path),
               "--trials", str(job.target)]
        if job.deadline is not None:
            cmd += ["--deadline", repr(job.deadline)]
        # Own sessions: a Ctrl-C in the terminal reaches only the parent, which forwards exactly one SIGINT.
        procs = [subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True) for fh in handles]
        try:
            while any(p.poll() is None for p in procs):
                time.sleep(POLL_S)
                _show_new(ostudy, seen, reporter)
        except KeyboardInterrupt:
            for p in procs:
                if p.poll() is None:
                    p.send_signal(signal.SIGINT)  # each worker queues its trial again, then exits
            _wait(procs)
            raise
        finally:
            for fh in handles:
                fh.close()
            _show_new(ostudy, seen, reporter)
            reporter.search_end()
    failed = [(k, p.returncode) for k, p in enumerate(procs) if p.returncode not in (0, 130)]
    if failed and len(failed) == len(procs):
        raise KdgridError(f"every search worker failed; first error: {_last_error(logs[failed[0][0]])} "
                          f"(logs: {logs[0].parent})")
    for k, rc in failed:
        print(f"worker {k} exited with {rc}: {_last_error(logs[k])} (log {logs[k]})", file=sys.stderr)


def _show_new(ostudy: optuna.Study, seen: set[int], reporter: SearchReporter) -> None:
    attrs = ostudy.user_attrs
    best = best_trial(ostudy)
    for t in ostudy.get_trials(deepcopy=False):
        if t.number in seen or not t.state.is_finished():
            continue
        seen.add(t.number)
        state = store_state(ostudy, t, attrs)
        if state == "interrupted":
            continue
        reporter.trial_start(t.number, t.params)
        reporter.trial_end(t.number, state, t.value if t.state == TrialState.COMPLETE else None,
                           t.user_attrs.get(ERROR), None if best is None else (best.number, float(best.value or 0.0)))


def _wait(procs: list[subprocess.Popen[bytes]], timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    for p in procs:
        try:
            p.wait(max(0.1, end - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def _last_error(log: Path) -> str:
    try:
        lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "(no log)"
    errors = [ln for ln in lines if ln.startswith("Error:")]
    return (errors or lines or ["(empty log)"])[-1]
