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


@pytest.mark.slow
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
        write_json_atomic(
            job_path(wd, held.run_id), {"executor": "local", "job_id": str(job.pid), "folder": str(wd), "attempt": 1}
        )
        with open_store(db) as s:
            s.mark_running(held.run_id, str(wd / "runs" / held.run_id))
        # A local pool leaves it to its job and runs the rest.
        out = go(db, study, execute=Execute(workers=1))
        assert out.elsewhere == 1 and out.done == 1
        assert table(db)[held.run_id][1] == "running"
        status = subprocess.run(
            [sys.executable, "-m", "kdgrid", "status", "--db", str(db)],
            capture_output=True,
            text=True,
            env={**os.environ, "KDGRID_FAULT": ""},
        )
        assert "1 run(s) submitted to a cluster and not finished yet" in status.stdout
        # The job finishes; the cluster coordinator collects its result without submitting anything.
        res = {
            "run_id": held.run_id,
            "task": held.task,
            "seed": held.seed,
            "config": held.config_data(),
            "status": "done",
            "attempt": 1,
            "metrics": [{"stage": "final", "split": "dev", "name": "mcc", "value": 0.5}],
        }
        write_json_atomic(result_path(wd, held.run_id), res)
    finally:
        job.kill()
        job.wait()
    out = go(db, study, execute=slurm(cluster="local"))
    assert out.recovered == 1 and out.done == 0
    assert table(db)[held.run_id][1] == "done"
    calls = (wd / "calls.log").read_text().split()
    assert held.run_id not in calls and calls.count(free.run_id) == 1


def test_a_job_submitted_just_before_the_coordinator_died_is_not_submitted_again(tmp_path: Path) -> None:
    """Killed between sbatch and its store write: the run is still 'pending', but its job.json names a live job."""
    db = tmp_path / "k.duckdb"
    study = fake_study(seeds=1)
    held, free = expand(study)
    go(db, study, execute=Execute(workers=0), max_runs=0)  # registers the study: every run 'pending'
    wd = workdir_for(db)
    job = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "submitit"])
    try:
        write_json_atomic(
            job_path(wd, held.run_id), {"executor": "local", "job_id": str(job.pid), "folder": str(wd), "attempt": 1}
        )
        out = go(db, study, execute=Execute(workers=1))
        assert out.elsewhere == 1 and out.done == 1  # left to its job, not run a second time
        calls = (wd / "calls.log").read_text().split()
        assert held.run_id not in calls and calls.count(free.run_id) == 1
    finally:
        job.kill()
        job.wait()


def test_status_reports_finished_results_that_are_not_stored_yet(tmp_path: Path) -> None:
    db = tmp_path / "k.duckdb"
    study = fake_study(seeds=1)
    go(db, study, execute=Execute(workers=0), max_runs=0)
    run = expand(study)[0]
    write_json_atomic(
        result_path(workdir_for(db), run.run_id),
        {
            "run_id": run.run_id,
            "task": run.task,
            "seed": run.seed,
            "config": run.config_data(),
            "status": "done",
            "metrics": [],
        },
    )
    out = subprocess.run([sys.executable, "-m", "kdgrid", "status", "--db", str(db)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "1 finished result(s) in run directories are not in the store yet" in out.stdout
    assert table(db)[run.run_id][1] == "pending"  # status only reads
    assert go(db, study, execute=Execute(workers=0)).recovered == 1


def test_no_slurm_here_is_one_clean_error_and_nothing_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no srun/sbatch on it, even where the local test cluster is up
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

    def spy(self: cluster.ClusterRunner, cj: cluster._ClusterJob, *rest: object) -> object:
        p = job_path(self.workdir, cj.run.run_id)
        if p.exists():
            seen.append(json.loads(p.read_text()))
        return original(self, cj, *rest)

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


# -- against a real cluster ---------------------------------------------------------------------
# The single-node cluster of scripts/slurm-local.sh (bash .ci/run starts it as root): real sbatch, job
# arrays, sacct, scancel, drained nodes and requeued jobs, nothing mocked. Each run takes about a second.

REPO = Path(__file__).resolve().parents[1]
FAKES = REPO / "tests" / "pool_fakes.py"
ON_CLUSTER = "gpus_per_run=0,poll_s=0.5"


@pytest.fixture(scope="module")
def cluster() -> None:
    from slurm_local import unavailable

    why = unavailable()  # once per module: a cluster that does not answer takes seconds to say so
    if why is not None:
        pytest.skip(why)


def coordinator(db: Path, name: str, *, delay: float, retries: int = 1, fault: str = "") -> subprocess.Popen[str]:
    """A `kdgrid run`-equivalent coordinator (run_grid, fake runner) submitting the 12-run grid as a job array."""
    env = {**os.environ, "KDGRID_FAULT": fault, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [
            sys.executable,
            str(FAKES),
            str(db),
            "--seeds",
            "6",
            "--delay",
            str(delay),
            "--name",
            name,
            "--retries",
            str(retries),
            "--slurm",
            ON_CLUSTER,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )


def finish(proc: subprocess.Popen[str], timeout: float = 300) -> str:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, f"coordinator exited {proc.returncode}:\n{out}\n{err}"
    return out


def calls(db: Path) -> dict[str, int]:
    """How many times each run's job started the runner (pool_fakes.SleepyRunner logs each call)."""
    from collections import Counter

    log = workdir_for(db) / "calls.log"
    return Counter(line.split()[0] for line in log.read_text().splitlines()) if log.exists() else Counter()


def stored_once(db: Path, runs: int = 12) -> dict[str, tuple]:
    """Every run stored once, done, with each of its metric rows once; returns run_id -> (seed, status, attempt, error)."""
    rows = table(db)
    assert len(rows) == runs and {r[1] for r in rows.values()} == {"done"}, rows
    con = duckdb.connect(str(db), read_only=True)
    try:
        per_run = con.execute(
            "SELECT run_id, count(*), count(DISTINCT (stage, split, name)) FROM metrics GROUP BY run_id"
        ).fetchall()
    finally:
        con.close()
    assert len(per_run) == runs and all(n == distinct == 2 for _, n, distinct in per_run), per_run
    return rows


@pytest.mark.slurm
def test_a_12_run_grid_runs_as_one_job_array_through_the_cli(
    cluster: None, tmp_path: Path, tiny_model_dir: Path
) -> None:
    """The real CLI, the real trainer on a tiny BERT: 12 runs, one sbatch, every run stored once."""
    from conftest import write_cola_dir
    from slurm_local import sacct, wait_for

    data = write_cola_dir(tmp_path / "glue", n_train=32, n_dev=12)
    study = tmp_path / "s.yaml"
    name = f"cli{os.getpid()}"
    study.write_text(f"""
name: {name}
tasks: [cola]
seeds: 6
teacher: {{model: {tiny_model_dir}, finetune: {{epochs: 1, batch_size: 8}}}}
student: {{layers: 2}}
data: {{dir: {data}, max_seq_length: 32}}
train: {{epochs: 1, batch_size: 8, lr: 1.0e-3}}
grid:
  objective.prediction.temperature: [1.0, 4.0]
""")
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONPATH": str(REPO),
        "KDGRID_FAULT": "",
    }
    out = subprocess.run(
        [sys.executable, "-m", "kdgrid", "run", str(study), "--executor", "slurm", "--slurm", ON_CLUSTER],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "12 run(s) done now" in out.stdout
    db = tmp_path / "kdgrid.duckdb"
    rows = table(db)
    assert len(rows) == 12 and {r[1] for r in rows.values()} == {"done"} and {r[2] for r in rows.values()} == {1}
    jobs = sacct(f"kdgrid-{name}")
    assert len(jobs) == 12 and len({j.split("_")[0] for j, _ in jobs}) == 1, jobs  # one array, 12 tasks
    # a task's result is in before its process has exited
    wait_for("every task COMPLETED", lambda: {s for _, s in sacct(f"kdgrid-{name}")} == {"COMPLETED"}, timeout=60)
    con = duckdb.connect(str(db), read_only=True)
    try:
        dup = con.execute(
            "SELECT run_id, stage, epoch, step, split, name, count(*) FROM metrics GROUP BY ALL HAVING count(*) > 1"
        ).fetchall()
        finals = con.execute(
            "SELECT count(DISTINCT run_id) FROM metrics WHERE stage = 'final' AND name = 'mcc'"
        ).fetchone()
    finally:
        con.close()
    assert dup == [] and finals == (12,)


@pytest.mark.slurm
def test_scancelled_array_tasks_are_interruptions_resubmitted_within_retries(cluster: None, tmp_path: Path) -> None:
    from slurm_local import sacct, scancel, squeue, wait_for

    db, name = tmp_path / "k.duckdb", f"scancel{os.getpid()}"
    # scancel sends SIGTERM, SIGKILL KillWait (5 s) later: runs of 7 s cannot finish in between
    proc = coordinator(db, name, delay=7.0, retries=1)
    try:
        wait_for("two runs started", lambda: sum(calls(db).values()) >= 2)
        queue = squeue(f"kdgrid-{name}")
        running = [j for j, s in queue if s == "RUNNING"][:2]
        pending = [j for j, s in queue if s == "PENDING" and "[" not in j][:1]  # a task not yet split off the array
        scancel(*running, *pending)
        out = finish(proc)
    finally:
        proc.kill()
    hit = len(running) + len(pending)
    assert f"done=12 failed=0 retried={hit}" in out, (out, running, pending, table(db), sacct(f"kdgrid-{name}"))
    rows = stored_once(db)
    assert sorted(r[2] for r in rows.values()) == [1] * (12 - hit) + [2] * hit  # the cancelled ones: attempt 2
    n = calls(db)
    # a cancelled running task had usually started its run (it ran twice); a cancelled pending one never did
    assert 12 <= sum(n.values()) <= 12 + len(running) and set(n.values()) <= {1, 2}
    # each run's job completed once; the cancelled running tasks are accounted (a task cancelled while
    # pending, still part of its array, may never get an accounting record in Slurm 22.05)
    states = [s for _, s in sacct(f"kdgrid-{name}")]
    assert states.count("COMPLETED") == 12 and len(running) <= sum(s.startswith("CANCELLED") for s in states) <= hit


@pytest.mark.slurm
def test_a_killed_coordinator_is_replaced_by_one_that_re_attaches_to_the_live_jobs(
    cluster: None, tmp_path: Path
) -> None:
    from slurm_local import sacct, squeue, wait_for

    db, name = tmp_path / "k.duckdb", f"reattach{os.getpid()}"
    first = coordinator(db, name, delay=4.0)
    try:
        # every task submitted and named in its job.json, some running: the coordinator dies (kill -9)
        wait_for("all 12 job.json", lambda: len(list((workdir_for(db) / "runs").glob("*/job.json"))) == 12)
        wait_for("a running task", lambda: any(s == "RUNNING" for _, s in squeue(f"kdgrid-{name}")))
        os.killpg(first.pid, 9)
        first.wait()
        submitted = squeue(f"kdgrid-{name}")  # slurmctld's view: accounting may lag behind a fresh array
        assert submitted, "the jobs outlive their coordinator"
    finally:
        first.kill()
    out = finish(coordinator(db, name, delay=4.0))
    assert "failed=0 retried=0" in out, out
    stored_once(db)
    assert set(calls(db).values()) == {1}  # nothing ran twice
    after = sacct(f"kdgrid-{name}")
    assert {j.split("_")[0] for j, _ in after} == {j.split("_")[0] for j, _ in submitted}  # no new sbatch
    assert len(after) == 12 and {s for _, s in after} == {"COMPLETED"}


@pytest.mark.slurm
def test_a_drained_node_holds_the_array_and_a_requeued_task_is_stored_once(cluster: None, tmp_path: Path) -> None:
    import time

    from slurm_local import node, set_node, squeue, wait_for

    db, name = tmp_path / "k.duckdb", f"drain{os.getpid()}"
    set_node("drain")
    proc = coordinator(db, name, delay=3.0)
    try:
        wait_for("the array queued", lambda: bool(squeue(f"kdgrid-{name}")))
        time.sleep(5)
        assert {s for _, s in squeue(f"kdgrid-{name}")} == {"PENDING"} and not calls(
            db
        )  # nothing runs on a drained node
        set_node("resume")
        wait_for("a running task", lambda: any(s == "RUNNING" for _, s in squeue(f"kdgrid-{name}")))
        victim = next(j for j, s in squeue(f"kdgrid-{name}") if s == "RUNNING")
        subprocess.run(["scontrol", "requeue", victim], check=True)  # as Slurm does for a failed node
        wait_for("the requeued task pending", lambda: dict(squeue(f"kdgrid-{name}")).get(victim) == "PENDING")
        subprocess.run(
            ["scontrol", "update", f"jobid={victim}", "starttime=now"], check=True
        )  # skip the 2 min requeue delay
        out = finish(proc)
    finally:
        proc.kill()
        subprocess.run(["scontrol", "update", f"nodename={node()}", "state=resume"], capture_output=True)
    assert "done=12 failed=0" in out, out
    rows = stored_once(db)
    assert {r[2] for r in rows.values()} == {1}  # the requeued job is the same attempt, not a retry
    assert sorted(calls(db).values()) in ([1] * 12, [1] * 11 + [2])  # it may have started twice, stored once


@pytest.mark.slurm
def test_a_run_failing_inside_its_job_is_stored_failed_with_error_and_traceback(cluster: None, tmp_path: Path) -> None:
    db, name = tmp_path / "k.duckdb", f"fail{os.getpid()}"
    out = finish(coordinator(db, name, delay=0.5, fault="crash:seed=2,nan:seed=3"))
    assert "done=8 failed=4 retried=0" in out, out
    con = duckdb.connect(str(db), read_only=True)
    try:
        rows = con.execute("SELECT seed, status, error, run_dir FROM runs ORDER BY seed").fetchall()
    finally:
        con.close()
    failed = [r for r in rows if r[1] == "failed"]
    assert {r[0] for r in failed} == {2, 3} and len(failed) == 4
    assert {r[1] for r in rows if r[0] not in (2, 3)} == {"done"}
    for seed, _, error, rdir in failed:
        if seed == 2:
            assert "injected crash" in error
            assert "Traceback (most recent call last)" in (Path(rdir) / "error.log").read_text()
        else:
            assert "loss became nan" in error


@pytest.mark.slurm
def test_a_search_runs_its_trials_as_array_tasks_on_the_cluster(cluster: None, tmp_path: Path) -> None:
    """kdgrid search goes through the grid scheduler: its trials' runs are Slurm array tasks, each stored once."""
    from search_fakes import fake_runner
    from slurm_local import sacct, wait_for
    from test_search import SEARCH, job, rows, write_study

    from kdgrid.execute.settings import resolve_execute
    from kdgrid.search.loop import run_search

    name = f"search{os.getpid()}"
    path = write_study(tmp_path, SEARCH.replace("trials: 4", "trials: 3"))
    path.write_text(path.read_text().replace("name: s\n", f"name: {name}\n"))
    ex = resolve_execute(executor="slurm", retries=1, slurm=ON_CLUSTER)
    out = run_search(job(tmp_path), runner=fake_runner, execute=ex)
    assert (out.complete, out.failed, out.interrupted) == (3, 0, False), out.errors
    db = tmp_path / "k.duckdb"
    assert rows(db, "SELECT count(*), count(DISTINCT run_id), max(attempt) FROM runs WHERE status = 'done'") == [
        (6, 6, 1)
    ]
    # 3 trials x 2 seeds fill one round (16 slots): one array of 6 tasks. slurmdbd may record the last task a
    # moment after its result was stored, so the accounting is waited for, not read once.
    wait_for("6 array tasks in sacct", lambda: len(sacct(f"kdgrid-{name}.search")) >= 6, timeout=60)
    jobs = sacct(f"kdgrid-{name}.search")
    assert len(jobs) == 6 and len({j.split("_")[0] for j, _ in jobs}) == 1, jobs
