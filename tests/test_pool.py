"""The local worker pool: slots, GPUs, threads, options, and determinism on the tiny BERT."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import duckdb
import pytest
from pool_fakes import fake_study, go

from kdgrid.errors import KdgridError
from kdgrid.execute.rundir import workdir_for
from kdgrid.execute.settings import resolve_execute, threads_per_worker
from kdgrid.plan import expand
from kdgrid.study.schema import Execute, Study


def calls(db: Path) -> list[dict[str, str]]:
    out = []
    for line in (workdir_for(db) / "calls.log").read_text().splitlines():
        run_id, *fields = line.split()
        out.append({"run_id": run_id, **dict(f.split("=", 1) for f in fields)})
    return out


def test_two_workers_share_the_grid_and_are_reused(tmp_path: Path) -> None:
    db = tmp_path / "k.duckdb"
    out = go(db, fake_study(), delay=0.2, execute=Execute(workers=2))
    assert out.done == 6 and out.failed == 0
    seen = calls(db)
    assert sorted(c["run_id"] for c in seen) == sorted(r.run_id for r in expand(fake_study()))
    assert len({c["pid"] for c in seen}) == 2  # one long-lived process per slot, not one per run
    assert go(db, fake_study(), execute=Execute(workers=2)).already_done == 6


def test_gpu_slots_set_cuda_visible_devices_per_worker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    db = tmp_path / "k.duckdb"
    go(db, fake_study(), delay=0.2, execute=resolve_execute(Execute(), gpus="0,1"))
    gpus = {c["pid"]: c["gpu"] for c in calls(db)}
    assert sorted(gpus.values()) == ["0", "1"]
    assert {c["threads"] for c in calls(db)} == {str(threads_per_worker(2))}


def test_cpu_threads_split_the_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("kdgrid.execute.settings.available_cores", lambda: 16)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert [threads_per_worker(n) for n in (1, 2, 3, 16, 32)] == [16, 8, 5, 1, 1]
    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # never more than the user asked for
    assert threads_per_worker(2) == 2


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"workers": 3, "gpus": "0,1"}, "--workers: 3 does not match --gpus 0,1 (one worker per listed GPU)"),
        ({"workers": 0, "timeout_s": 5.0}, "--timeout: needs worker processes (--workers 1 or more)"),
        ({"workers": -1}, "--workers: Input should be greater than or equal to 0"),
        ({"executor": "lsf"}, "--executor: Input should be 'local' or 'slurm'"),
        ({"slurm": "partition"}, "--slurm: 'partition' is not key=value"),
        ({"slurm": "queue=gpu"}, "--slurm: unknown setting 'queue' (allowed: partition, gpus_per_run"),
        ({"slurm": "gpus_per_run=two"}, "--slurm gpus_per_run: Input should be a valid integer"),
        ({"gpus": "0,,1"}, "--gpus: list GPU indices such as [0, 1]"),
    ],
)
def test_bad_execution_options_are_one_clean_error(options: dict[str, Any], message: str) -> None:
    with pytest.raises(KdgridError) as err:
        resolve_execute(Execute(), **options)
    assert str(err.value).startswith(message)


def test_options_override_the_study_block_which_stays_out_of_run_ids() -> None:
    base = {"name": "s", "tasks": ["cola"], "seeds": 1}
    block = {"workers": 4, "timeout_s": 60, "retries": 2, "slurm": {"partition": "gpu", "time_min": 30}}
    with_block = Study.model_validate({**base, "execute": block})
    assert [r.run_id for r in expand(with_block)] == [r.run_id for r in expand(Study.model_validate(base))]
    ex = resolve_execute(with_block.execute, workers=2, slurm="array_parallelism=8")
    assert (ex.workers, ex.timeout_s, ex.retries, ex.slurm.partition, ex.slurm.array_parallelism) == (
        2,
        60,
        2,
        "gpu",
        8,
    )
    assert resolve_execute(Execute(), gpus="0,0,1").workers == 3  # a GPU listed twice gets two slots


def test_cli_rejects_bad_options_before_anything_is_written(
    tmp_path: Path, tiny_model_dir: Path, make_cola_dir: Any
) -> None:
    data = make_cola_dir(tmp_path / "glue")
    study = tmp_path / "s.yaml"
    study.write_text(f"name: s\ntasks: [cola]\nseeds: 1\nteacher: {{model: {tiny_model_dir}}}\ndata: {{dir: {data}}}\n")
    proc = subprocess.run(
        [sys.executable, "-m", "kdgrid", "run", str(study), "--workers", "0", "--timeout", "5"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1
    assert (
        proc.stderr.strip()
        == "Error: --timeout: needs worker processes (--workers 1 or more); an in-process run cannot be stopped"
    )
    assert not (tmp_path / "kdgrid.duckdb").exists()


# -- determinism on the real tiny model -------------------------------------------------------

TIMINGS = {
    "bench_reused",
    "latency_ms",
    "throughput_ex_s",
    "train_time_s",
    "train_ex_per_s",
    "peak_memory_mb",
    "rss_start_mb",
    "bench_repeats",
}


def metric_table(db: Path) -> tuple[dict[tuple[Any, ...], float], int]:
    """Every metric but timings and stage-1 rows (those depend on which run trained the shared checkpoint),
    and how many runs reused a stage-1 checkpoint."""
    con = duckdb.connect(str(db), read_only=True)
    try:
        rows = con.execute("""SELECT r.seed, r.config->>'$.objective.prediction.temperature', m.stage, m.epoch, m.split,
                                     m.name, m.value FROM metrics m JOIN runs r USING (run_id) WHERE r.status = 'done'""").fetchall()
    finally:
        con.close()
    table = {r[:6]: r[6] for r in rows if r[2] != "intermediate" and not (r[4] == "efficiency" and r[5] in TIMINGS)}
    return table, sum(1 for r in rows if r[5] == "stage1_reused")


@pytest.mark.slow
def test_same_runs_give_the_same_metrics_in_workers_and_in_process(
    tmp_path: Path, tiny_model_dir: Path, make_cola_dir: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two workers vs. in process, on two-stage runs that share a stage-1 checkpoint: identical numbers.

    The two seed-0 cells differ only in stage 2, so one trains stage 1 (under its file lock) and the
    other reuses it; seed 1 is hit by an injected NaN in the real training loop.
    """
    data = make_cola_dir(tmp_path / "glue", n_train=32, n_dev=12)
    study = Study.model_validate(
        {
            "name": "det",
            "tasks": ["cola"],
            "seeds": [0, 1],
            "teacher": {"model": str(tiny_model_dir), "finetune": {"epochs": 1, "batch_size": 8}},
            "student": {"layers": 2},
            "data": {"dir": str(data), "max_seq_length": 32},
            "train": {"schedule": "two_stage", "epochs": 1, "batch_size": 8, "lr": 1e-3},
            "objective": {"intermediate": {"attention": "mse", "hidden": "seq"}},
            "grid": {"objective.prediction.temperature": [1.0, 4.0]},
        }
    )
    planned = expand(study)
    kw: dict[str, Any] = dict(study_name="det", study_path="det.yaml", study_text="", study_sha="")
    from kdgrid.execute.local import run_grid

    monkeypatch.setenv("KDGRID_FAULT", "nan:seed=1")
    pooled = run_grid(tmp_path / "a" / "k.duckdb", planned=planned, execute=Execute(workers=2, retries=1), **kw)
    assert pooled.done == 2 and pooled.failed == 2 and pooled.retried == 0
    assert all("loss became nan" in e for _, e in pooled.errors)
    monkeypatch.delenv("KDGRID_FAULT")
    (tmp_path / "b").mkdir()
    alone = run_grid(tmp_path / "b" / "k.duckdb", planned=[r for r in planned if r.seed == 0], **kw)
    assert alone.done == 2
    (a, reused_a), (b, reused_b) = metric_table(tmp_path / "a" / "k.duckdb"), metric_table(tmp_path / "b" / "k.duckdb")
    assert reused_a == reused_b == 1  # stage 1 trained once per checkpoint, also with two workers
    assert len(a) > 20 and a.keys() == b.keys()
    assert a == b  # bit for bit: same seeds, data order, dropout and threads
