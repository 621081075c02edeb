"""The Slurm executor through submitit's local and debug executors, on a fake runner.

The local executor runs each array task as its own process, as Slurm would; results come back
through run directories only. Also: re-attaching to jobs that outlived their coordinator,
``kdgrid status`` reporting results not yet ingested, and a clean error where there is no Slurm.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from pool_fakes import fake_study, go
from kdgrid.errors import KdgridError
from kdgrid.execute.rundir import job_path, result_path, workdir_for, write_json_atomic
from kdgrid.plan import expand
from kdgrid.store import open_store
from kdgrid.study.schema import Execute


def slurm(**kw: object) -> Execute:
    return Execute(executor="slurm", retries=1, slurm={"array_parallelism": 4, "poll_s": 0.2, **kw})  # type: ignore[arg-type]


def table(db: Path) -> dict[str, tuple]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return {r[0]: r[1:] for r in con.execute("SELECT run_id, seed, status, attempt, error FROM runs").fetchall()}
    finally:
        con.close()


def test_job_array_on_submitits_local_executor_with_a_retry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "k.duckdb"
    study = fake_study(seeds=3, temperatures=(1.0,))
    monkeypatch.setenv("KDGRID_FAULT", "kill:seed=1@1,crash:seed=2")  # seed 1's job dies once, as on a node failure
    out = go(db, study, execute=slurm(cluster="local"))
    assert out.done == 2 and out.failed == 1 and out.retried == 1
    rows = {r[0]: r[1:] for r in table(db).values()}  # by seed
    assert rows[0][:2] == ("done", 1) and rows[1][:2] == ("done", 2)
    assert rows[2][:2] == ("failed", 1) and "injected crash" in rows[2][2]  # a run's own error: not retried
    with open_store(db, read_only=True) as s:
        assert s.con.execute("SELECT count(*) FROM metrics").fetchone()[0] == 4
    assert not list((workdir_for(db) / "runs").glob("*/job.json"))  # settled jobs leave no claim behind
    monkeypatch.delenv("KDGRID_FAULT")
    again = go(db, study, execute=slurm(cluster="local"), retry_failed=True)
    assert again.done == 1 and again.already_done == 2


def test_debug_executor_runs_the_array_in_process(tmp_path: Path) -> None:
    db = tmp_path / "k.duckdb"
    out = go(db, fake_study(seeds=1), execute=slurm(cluster="debug"))
    assert out.done == 2 and {r[1] for r in table(db).values()} == {"done"}


def test_a_coordinator_re_attaches_to_jobs_still_running(tmp_path: Path) -> None:
    db = tmp_path / "k.duckdb"
    study = fake_study(seeds=1)
    held, free = expand(study)
    go(db, study, execute=Execute(workers=0), max_runs=0)  # registers the study
    wd = workdir_for(db)
    # A job the previous coordinator submitted is still running (a process named like a submitit job).
    job = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "submitit"])
    try:
        write_json_atomic(job_path(wd, held.run_id), {"executor": "local", "job_id": str(job.pid), "folder": str(wd),
                                                      "attempt": 1})
        with open_store(db) as s:
            s.mark_running(held.run_id, str(wd / "runs" / held.run_id))
        # A local pool leaves it to its job and runs the rest.
        out = go(db, study, execute=Execute(workers=1))
        assert out.elsewhere == 1 and out.done == 1
        assert table(db)[held.run_id][1] == "running"
        status = subprocess.run([sys.executable, "-m", "kdgrid", "status", "--db", str(db)], capture_output=True,
                                text=True, env={**os.environ, "KDGRID_FAULT": ""})
        assert "1 run(s) submitted to a cluster and not finished yet" in status.stdout
        # The job finishes; the cluster coordinator collects its result without submitting anything.
        res = {"run_id": held.run_id, "task": held.task, "seed": held.seed, "config": held.config, "status": "done",
               "attempt": 1, "metrics": [{"stage": "final", "split": "dev", "name": "mcc", "value": 0.5}]}
        write_json_atomic(result_path(wd, held.run_id), res)
    finally:
        job.kill()
        job.wait()
    out = go(db, study, execute=slurm(cluster="local"))
    assert out.recovered == 1 and out.done == 0
    assert table(db)[held.run_id][1] == "done"
    calls = (wd / "calls.log").read_text().split()
    assert held.run_id not in calls and calls.count(free.run_id) == 1


def test_status_reports_finished_results_that_are_not_stored_yet(tmp_path: Path) -> None:
    db = tmp_path / "k.duckdb"
    study = fake_study(seeds=1)
    go(db, study, execute=Execute(workers=0), max_runs=0)
    run = expand(study)[0]
    write_json_atomic(result_path(workdir_for(db), run.run_id), {
        "run_id": run.run_id, "task": run.task, "seed": run.seed, "config": run.config, "status": "done", "metrics": []})
    out = subprocess.run([sys.executable, "-m", "kdgrid", "status", "--db", str(db)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "1 finished result(s) in run directories are not in the store yet" in out.stdout
    assert table(db)[run.run_id][1] == "pending"  # status only reads
    assert go(db, study, execute=Execute(workers=0)).recovered == 1


def test_no_slurm_here_is_one_clean_error_and_nothing_written(tmp_path: Path) -> None:
    db = tmp_path / "k.duckdb"
    with pytest.raises(KdgridError, match="executor slurm: cannot use submitit's 'slurm' executor here"):
        go(db, fake_study(seeds=1), execute=slurm())
    assert not db.exists()


def test_job_json_names_the_job(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """While a cluster run is in flight, job.json says which job holds it (operators look there)."""
    from kdgrid.execute import cluster

    db = tmp_path / "k.duckdb"
    seen: list[dict] = []
    original = cluster.ClusterRunner._poll

    def spy(self: cluster.ClusterRunner, cj: cluster._ClusterJob) -> object:
        p = job_path(self.workdir, cj.run.run_id)
        if p.exists():
            seen.append(json.loads(p.read_text()))
        return original(self, cj)

    monkeypatch.setattr(cluster.ClusterRunner, "_poll", spy)
    go(db, fake_study(seeds=1, temperatures=(1.0,)), execute=slurm(cluster="debug"))
    assert seen and seen[0]["executor"] == "debug" and seen[0]["attempt"] == 1 and seen[0]["job_id"]


@pytest.mark.parametrize(
    ("state", "setup_error", "reason", "retryable"),
    [
        ("TIMEOUT", False, "timed out (Slurm time limit 120 min); not retried", False),
        ("OUT_OF_MEMORY", False, "out of memory (Slurm OUT_OF_MEMORY)", True),
        ("NODE_FAIL", False, "the job died without a result (state NODE_FAIL)", True),
        ("PREEMPTED", False, "the job died without a result (state PREEMPTED)", True),
        ("CANCELLED by 1234", False, "interrupted: the job was cancelled (CANCELLED by 1234)", True),
        ("FAILED", True, "the job failed before the run started (state FAILED)", False),
    ],
)
def test_jobs_that_end_without_a_result_are_classified_by_their_slurm_state(
    state: str, setup_error: bool, reason: str, retryable: bool
) -> None:
    from kdgrid.execute.cluster import _state_failure

    assert _state_failure(state, "", 120, setup_error) == (reason, retryable)
