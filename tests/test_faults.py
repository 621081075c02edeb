"""Faults under the worker pool, on a fake runner (no torch): every finished run is stored exactly once.

Each test breaks something on a 6-run grid run by 2 workers -- kills a worker, kills the
coordinator, injects NaN, a hang past the timeout, a segfault, out of memory, a full disk, an
unwritable run directory, a second coordinator, Ctrl-C, a reader holding the store -- and then
checks the store and that a rerun completes the grid. ``KDGRID_FAULT`` picks the victims
(kdgrid/execute/faults.py).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb
import pytest
from pool_fakes import fake_study, go

from kdgrid.execute.rundir import workdir_for
from kdgrid.plan import expand
from kdgrid.study.schema import Execute

FAKES = Path(__file__).with_name("pool_fakes.py")
N_RUNS = 6  # fake_study(): 3 seeds x 2 temperatures


def env(fault: str | None = None) -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if k != "KDGRID_FAULT"}
    e["OMP_NUM_THREADS"] = "1"
    if fault:
        e["KDGRID_FAULT"] = fault
    return e


def coordinator(db: Path, *args: str, fault: str | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(FAKES), str(db), *args],
        env=env(fault),
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def finish(proc: subprocess.Popen[str], timeout: float = 60) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def wait_for(cond: Callable[[], Any], timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("timed out waiting")


def runs_dir(db: Path) -> Path:
    return workdir_for(db) / "runs"


def in_flight(db: Path) -> dict[str, int]:
    """run_id -> worker pid of the runs a worker is busy with (from job.json)."""
    out = {}
    for p in runs_dir(db).glob("*/job.json"):
        try:
            out[p.parent.name] = int(json.loads(p.read_text())["job_id"])
        except (OSError, ValueError, KeyError):
            pass
    return out


def finished(db: Path) -> dict[str, int]:
    return {p.parent.name: p.stat().st_mtime_ns for p in runs_dir(db).glob("*/result.json")}


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"  # zombies of a killed parent are dead
    except OSError:
        return False


def rows(db: Path) -> dict[str, tuple[int, str, int, str | None]]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return {r[0]: r[1:] for r in con.execute("SELECT run_id, seed, status, attempt, error FROM runs").fetchall()}
    finally:
        con.close()


def statuses(db: Path) -> Counter[str]:
    return Counter(r[1] for r in rows(db).values())


def calls(db: Path) -> Counter[str]:
    log = workdir_for(db) / "calls.log"
    return Counter(line.split()[0] for line in log.read_text().splitlines()) if log.exists() else Counter()


def assert_stored_once(db: Path, done: int = N_RUNS) -> None:
    """Each run one row; each done run exactly its own 2 metric rows (nothing ingested twice)."""
    con = duckdb.connect(str(db), read_only=True)
    try:
        n, distinct = con.execute("SELECT count(*), count(DISTINCT run_id) FROM runs").fetchone()
        per_run = con.execute("""SELECT r.run_id, count(m.run_id) FROM runs r LEFT JOIN metrics m USING (run_id)
                                 WHERE r.status = 'done' GROUP BY r.run_id""").fetchall()
    finally:
        con.close()
    assert n == distinct == N_RUNS
    assert len(per_run) == done and all(c == 2 for _, c in per_run), per_run


def rerun_completes(db: Path) -> None:
    """Without the fault, a rerun (asked to retry failed runs) completes the grid and redoes nothing."""
    before = finished(db)
    done_before = {rid for rid, r in rows(db).items() if r[1] == "done"}
    fault = os.environ.pop("KDGRID_FAULT", None)
    try:
        go(db, fake_study(), execute=Execute(workers=2), retry_failed=True)
    finally:
        if fault is not None:
            os.environ["KDGRID_FAULT"] = fault
    assert statuses(db) == {"done": N_RUNS}
    assert_stored_once(db)
    for rid in done_before:  # finished runs were not run again
        assert finished(db)[rid] == before[rid]


def kill_a_worker_soon(db: Path) -> dict[str, str]:
    """From a thread: wait until a worker holds a run, then kill -9 it; fills in {'run_id': ...}."""
    victim: dict[str, str] = {}

    def kill() -> None:  # once the runner is really running, not while the worker boots
        run_id, pid = wait_for(lambda: next(((r, p) for r, p in in_flight(db).items() if calls(db)[r]), None))
        victim["run_id"] = run_id
        os.kill(pid, signal.SIGKILL)

    threading.Thread(target=kill, daemon=True).start()
    return victim


@pytest.mark.slow
def test_killed_worker_is_retried_and_the_grid_completes(tmp_path: Path) -> None:
    db = tmp_path / "k.duckdb"
    victim = kill_a_worker_soon(db)
    out = go(db, fake_study(), delay=0.6, execute=Execute(workers=2, retries=1))
    rid = victim["run_id"]
    assert out.done == N_RUNS and out.retried == 1
    assert rows(db)[rid][2] == 2  # attempt 2 finished it
    assert calls(db)[rid] == 2
    assert_stored_once(db)


@pytest.mark.slow
def test_killed_worker_without_retries_fails_the_run_only(tmp_path: Path) -> None:
    db = tmp_path / "k.duckdb"
    victim = kill_a_worker_soon(db)
    out = go(db, fake_study(), delay=0.6, execute=Execute(workers=2, retries=0))
    assert out.done == N_RUNS - 1 and out.failed == 1
    assert "worker process killed by SIGKILL" in rows(db)[victim["run_id"]][3]
    assert_stored_once(db, done=N_RUNS - 1)
    rerun_completes(db)


@pytest.mark.slow
def test_coordinator_kill_9_then_restart_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    db = tmp_path / "k.duckdb"
    proc = coordinator(db, "--delay", "0.8")
    wait_for(lambda: len(finished(db)) >= 2 and len(in_flight(db)) >= 1)
    workers = list(in_flight(db).values())
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    wait_for(lambda: not any(alive(p) for p in workers), timeout=5)  # workers die with their coordinator
    before = finished(db)
    assert 2 <= len(before) < N_RUNS
    rc, out, err = finish(coordinator(db))
    assert rc == 0, err
    assert statuses(db) == {"done": N_RUNS}
    assert_stored_once(db)
    for rid, mtime in before.items():  # results left behind were ingested, not recomputed
        assert finished(db)[rid] == mtime and calls(db)[rid] == 1


def test_nan_fails_only_its_run_and_is_not_retried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "k.duckdb"
    monkeypatch.setenv("KDGRID_FAULT", "nan:seed=1")
    out = go(db, fake_study(), execute=Execute(workers=2, retries=2))
    assert out.retried == 0
    failed = {rid: r for rid, r in rows(db).items() if r[1] == "failed"}
    assert len(failed) == 2 and all(r[0] == 1 and r[2] == 1 and "loss became nan" in r[3] for r in failed.values())
    assert_stored_once(db, done=N_RUNS - 2)
    rerun_completes(db)


@pytest.mark.slow
def test_hang_past_the_timeout_fails_the_run_and_kills_its_worker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "k.duckdb"
    monkeypatch.setenv("KDGRID_FAULT", "hang:seed=0")
    hung_ids = {r.run_id for r in expand(fake_study()) if r.seed == 0}
    hung: dict[str, int] = {}  # run_id -> the worker that hangs on it

    def watch() -> bool:
        hung.update({rid: pid for rid, pid in in_flight(db).items() if rid in hung_ids})
        return len(hung) == 2

    watcher = threading.Thread(target=wait_for, args=(watch,), daemon=True)
    watcher.start()
    out = go(db, fake_study(), execute=Execute(workers=2, retries=2, timeout_s=1.0))
    watcher.join()
    failed = [r for r in rows(db).values() if r[1] == "failed"]
    assert out.retried == 0 and len(failed) == 2
    assert all(r[0] == 0 and r[2] == 1 and "timed out after 1 s" in r[3] for r in failed)
    assert not any(alive(pid) for pid in hung.values())
    assert_stored_once(db, done=N_RUNS - 2)
    rerun_completes(db)


def test_unwritable_run_directory_fails_the_run_and_leaves_the_store_intact(tmp_path: Path) -> None:
    db = tmp_path / "k.duckdb"
    victim = next(r.run_id for r in expand(fake_study()) if r.seed == 1)
    rdir = runs_dir(db) / victim
    rdir.parent.mkdir(parents=True)
    if os.geteuid() == 0:  # root writes through permission bits: a file where the directory goes
        rdir.write_text("not a directory\n")
    else:
        rdir.mkdir()
        rdir.chmod(0o555)
    go(db, fake_study(), execute=Execute(workers=2))
    r = rows(db)[victim]
    assert r[1] == "failed" and ("cannot create the run directory" in r[3] or "cannot write" in r[3]), r
    assert_stored_once(db, done=N_RUNS - 1)
    if rdir.is_dir():
        rdir.chmod(0o755)
    else:
        rdir.unlink()
    rerun_completes(db)


def test_full_disk_fails_the_run_with_the_reason(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "k.duckdb"
    monkeypatch.setenv("KDGRID_FAULT", "nospace:seed=2")
    go(db, fake_study(), execute=Execute(workers=2))
    failed = [r for r in rows(db).values() if r[1] == "failed"]
    assert len(failed) == 2 and all("No space left on device" in r[3] and "could not be saved" in r[3] for r in failed)
    assert_stored_once(db, done=N_RUNS - 2)
    rerun_completes(db)


@pytest.mark.slow
def test_second_coordinator_is_refused_while_the_first_runs(tmp_path: Path) -> None:
    db = tmp_path / "k.duckdb"
    first = coordinator(db, "--delay", "0.5")
    wait_for(lambda: in_flight(db))
    rc, out, err = finish(coordinator(db))
    assert rc == 1
    assert err.strip().startswith(f"Error: {db}: another 'kdgrid run' is using this store")
    assert finish(first)[0] == 0
    assert statuses(db) == {"done": N_RUNS}
    assert_stored_once(db)
    assert max(calls(db).values()) == 1


@pytest.mark.slow
def test_ctrl_c_interrupts_in_flight_runs_and_keeps_finished_ones(tmp_path: Path) -> None:
    db = tmp_path / "k.duckdb"
    proc = coordinator(db, "--delay", "1.2")
    # one run settled, two runs in flight that have not finished
    wait_for(lambda: len(in_flight(db)) == 2 and len(finished(db)) >= 1 and not set(in_flight(db)) & set(finished(db)))
    workers = list(in_flight(db).values())
    proc.send_signal(signal.SIGINT)
    rc, out, err = finish(proc, timeout=30)
    assert rc == 130 and "interrupted=True" in out
    s = statuses(db)
    assert s["interrupted"] >= 1 and s["done"] >= 1 and s["running"] == 0
    assert not any(alive(p) for p in workers)
    assert_stored_once(db, done=s["done"])
    rerun_completes(db)


def test_crashes_that_can_pass_are_retried_a_bad_run_is_not(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "k.duckdb"
    monkeypatch.setenv("KDGRID_FAULT", "segfault:seed=0@1,oom:seed=1@1,crash:seed=2")
    out = go(db, fake_study(), execute=Execute(workers=2, retries=1))
    r = {rid: v for rid, v in rows(db).items()}
    by_seed = {s: [v for v in r.values() if v[0] == s] for s in (0, 1, 2)}
    assert all(v[1] == "done" and v[2] == 2 for s in (0, 1) for v in by_seed[s])  # passed on attempt 2
    assert all(v[1] == "failed" and v[2] == 1 and "injected crash" in v[3] for v in by_seed[2])
    assert out.retried == 4 and out.done == 4 and out.failed == 2
    assert_stored_once(db, done=4)
    traceback_log = (runs_dir(db) / next(rid for rid, v in r.items() if v[0] == 2) / "error.log").read_text()
    assert "RuntimeError: injected crash" in traceback_log


@pytest.mark.slow
def test_a_reader_holding_the_store_makes_writes_wait_not_fail(tmp_path: Path) -> None:
    db = tmp_path / "k.duckdb"
    go(db, fake_study(), execute=Execute(workers=1), max_runs=1)
    # another process reads the store for 1.5 s, as 'kdgrid status' does for a moment
    code = "import duckdb, sys, time; c = duckdb.connect(sys.argv[1], read_only=True); print('open', flush=True); time.sleep(1.5)"
    reader = subprocess.Popen([sys.executable, "-c", code, str(db)], stdout=subprocess.PIPE, text=True)
    assert reader.stdout is not None and reader.stdout.readline().strip() == "open"
    out = go(db, fake_study(), execute=Execute(workers=2))
    reader.wait()
    assert out.done == N_RUNS - 1
    assert_stored_once(db)


def test_the_nan_fault_poisons_the_objective_of_its_run_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """The training loop holds no test hook: execute/faults.py wraps the objective around one run."""
    import math
    from types import SimpleNamespace

    import torch

    from kdgrid.execute import faults
    from kdgrid.train.objectives import DistillObjective

    monkeypatch.setattr(DistillObjective, "forward", lambda self, *a, **k: {"loss": torch.tensor(1.0)})
    training, scoring = SimpleNamespace(training=True), SimpleNamespace(training=False)
    with faults.loop_fault("nan"):
        losses = [DistillObjective.forward(training)["loss"].item() for _ in range(3)]
        assert DistillObjective.forward(scoring)["loss"].item() == 1.0  # evaluation is left alone
    assert losses[0] == 1.0 and all(math.isnan(x) for x in losses[1:])
    assert DistillObjective.forward(training)["loss"].item() == 1.0  # restored after the run
    with faults.loop_fault(None):
        assert DistillObjective.forward(training)["loss"].item() == 1.0
