"""Store and coordinator with a fake runner: idempotent ingestion, resume, failures, crash recovery."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import duckdb
import pytest

from kdgrid.errors import RunFailed, StoreError
from kdgrid.execute.local import run_grid
from kdgrid.execute.rundir import result_path, workdir_for, write_json_atomic
from kdgrid.plan import expand
from kdgrid.plan.canonical import config_data
from kdgrid.store import open_store
from kdgrid.store.queries import tidy_results
from kdgrid.study.schema import RunConfig, Study


def grid_study(seeds: int = 3) -> Study:
    return Study.model_validate(
        {
            "name": "g",
            "tasks": ["cola", "stsb"],
            "seeds": seeds,
            "grid": {"objective.prediction.temperature": [1.0, 4.0]},
        }
    )


class FakeRunner:
    """Deterministic metric from the config; can fail chosen runs."""

    def __init__(self, fail: set[tuple[str, int]] = frozenset(), interrupt_after: int | None = None) -> None:
        self.calls: list[str] = []
        self.run_ids: list[str] = []  # calls names task+seed only, which two temperatures share
        self.fail = fail
        self.interrupt_after = interrupt_after

    def __call__(
        self, config: RunConfig, rdir: Path, *, workdir: Path, on_progress: Any, on_epoch: Any = None
    ) -> dict[str, Any]:
        if self.interrupt_after is not None and len(self.calls) == self.interrupt_after:
            raise KeyboardInterrupt
        self.calls.append(config.task + str(config.seed))
        self.run_ids.append(rdir.name)
        if (config.task, config.seed) in self.fail:
            raise RunFailed("loss became nan at epoch 1 step 3")
        t = config.objective.prediction.temperature
        value = 0.5 + 0.01 * config.seed + 0.1 * (t > 1)
        name = "mcc" if config.task == "cola" else "pearson"
        return {
            "run_id": rdir.name,
            "task": config.task,
            "seed": config.seed,
            "config": config_data(config),
            "status": "done",
            "metrics": [
                {"stage": "final", "split": "dev", "name": name, "value": value},
                {"stage": "train", "epoch": 1, "split": "train", "name": "loss", "value": 1.0},
            ],
        }


def go(db: Path, study: Study, runner: FakeRunner, **kw: Any):
    return run_grid(
        db,
        study_name=study.name,
        study_path="g.yaml",
        study_text="text",
        study_sha="sha",
        planned=expand(study),
        runner=runner,
        **kw,
    )


def counts(db: Path) -> dict[str, int]:
    with open_store(db, read_only=True) as s:
        return dict(s.con.execute("SELECT status, count(*) FROM runs GROUP BY status").fetchall())


def test_grid_runs_once_and_resume_redoes_nothing(tmp_path: Path) -> None:
    db = tmp_path / "k.duckdb"
    r1 = FakeRunner()
    out = go(db, grid_study(), r1)
    assert out.done == 12 and out.failed == 0 and len(r1.calls) == 12
    r2 = FakeRunner()
    out2 = go(db, grid_study(), r2)
    assert r2.calls == [] and out2.already_done == 12
    with open_store(db, read_only=True) as s:
        df = tidy_results(s, "g")
        n_metrics = s.con.execute("SELECT count(*) FROM metrics").fetchone()[0]
    assert len(df) == 12 and n_metrics == 24
    assert set(df.columns) >= {"task", "seed", "objective.prediction.temperature", "mcc", "pearson"}


def test_failed_run_is_a_status_row_and_does_not_stop_the_grid(tmp_path: Path) -> None:
    db = tmp_path / "k.duckdb"
    out = go(db, grid_study(), FakeRunner(fail={("cola", 1)}))
    assert out.failed == 2 and out.done == 10
    assert "nan" in out.errors[0][1]
    assert counts(db) == {"done": 10, "failed": 2}
    # failed runs are not retried unless asked, and then only they run
    assert go(db, grid_study(), FakeRunner()).done == 0
    r = FakeRunner()
    assert go(db, grid_study(), r, retry_failed=True).done == 2 and sorted(r.calls) == ["cola1", "cola1"]


def test_interrupt_keeps_finished_runs(tmp_path: Path) -> None:
    db = tmp_path / "k.duckdb"
    out = go(db, grid_study(), FakeRunner(interrupt_after=5))
    assert out.interrupted and out.done == 5
    assert counts(db) == {"done": 5, "interrupted": 1, "pending": 6}
    r = FakeRunner()
    assert go(db, grid_study(), r).done == 7 and len(r.calls) == 7


def test_crashed_coordinator_results_are_recovered_not_redone(tmp_path: Path) -> None:
    db = tmp_path / "k.duckdb"
    study = grid_study(seeds=1)
    go(db, study, FakeRunner(), max_runs=1)
    # A coordinator that died after a worker wrote its result but before ingesting it:
    planned = expand(study)
    victim = planned[1]
    res = FakeRunner()(victim.config, workdir_for(db) / "runs" / victim.run_id, workdir=tmp_path, on_progress=None)
    write_json_atomic(result_path(workdir_for(db), victim.run_id), res)
    with open_store(db) as s:
        s.mark_running(planned[2].run_id, "x")  # stale 'running' row
    r = FakeRunner()
    out = go(db, study, r)
    assert out.recovered == 1
    # the recovered result is ingested, not re-run; the stale 'running' row and the never-started run are run
    assert sorted(r.run_ids) == sorted([planned[2].run_id, planned[3].run_id])
    assert counts(db) == {"done": 4}


def test_ingest_is_idempotent(tmp_path: Path) -> None:
    db = tmp_path / "k.duckdb"
    result = {
        "run_id": "abc",
        "task": "cola",
        "seed": 0,
        "config": {},
        "status": "done",
        "metrics": [{"name": "mcc", "value": 0.3}, {"name": "loss", "epoch": 1, "stage": "train", "value": 2.0}],
    }
    with open_store(db) as s:
        s.ingest_result(result)
        s.ingest_result(result)
        assert s.con.execute("SELECT count(*) FROM metrics").fetchone()[0] == 2
        assert s.con.execute("SELECT count(*) FROM runs").fetchone()[0] == 1


def test_foreign_duckdb_file_is_refused_untouched(tmp_path: Path) -> None:
    db = tmp_path / "other.duckdb"
    con = duckdb.connect(str(db))
    con.execute("CREATE TABLE sales (x INTEGER)")
    con.close()
    with pytest.raises(StoreError, match="not a kdgrid store"), open_store(db):
        pass
    con = duckdb.connect(str(db), read_only=True)
    assert [r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()] == ["sales"]
    con.close()


def test_not_a_database_file(tmp_path: Path) -> None:
    db = tmp_path / "notes.duckdb"
    db.write_text("hello, not a database\n" * 100)
    with pytest.raises(StoreError, match="not a DuckDB database"), open_store(db):
        pass
    assert db.read_text().startswith("hello")


def test_second_coordinator_is_refused(tmp_path: Path) -> None:
    from kdgrid.execute.local import coordinator_lock

    db = tmp_path / "k.duckdb"
    lock = coordinator_lock(db)
    lock.acquire()
    try:
        with pytest.raises(StoreError, match="another 'kdgrid run' is using this store"):
            go(db, grid_study(), FakeRunner())
    finally:
        lock.release()


def test_unwritable_run_dir_fails_the_run_not_the_store(tmp_path: Path) -> None:
    db = tmp_path / "k.duckdb"
    study = grid_study(seeds=1)
    first = expand(study)[0]
    rdir = workdir_for(db) / "runs" / first.run_id
    rdir.mkdir(parents=True)
    (rdir / "result.json").mkdir()  # os.replace onto a directory fails
    out = go(db, study, FakeRunner())
    assert out.failed == 1 and "cannot write" in out.errors[0][1]
    assert counts(db) == {"done": 3, "failed": 1}


def test_data_hashes_are_stored_and_an_older_store_gains_the_column(tmp_path: Path) -> None:
    db = tmp_path / "k.duckdb"
    with open_store(db) as s:
        s.con.execute("ALTER TABLE runs DROP COLUMN data")  # a store written before the column existed
    result = {
        "run_id": "abc",
        "task": "cola",
        "seed": 0,
        "config": {},
        "status": "done",
        "metrics": [],
        "data": {"train": "sha256:aa", "dev": "sha256:bb"},
    }
    with open_store(db) as s:
        s.ingest_result(result)
        s.ingest_result({**result, "run_id": "old", "data": None})
    with open_store(db, read_only=True) as s:
        rows = dict(s.con.execute("SELECT run_id, data FROM runs").fetchall())
    assert json.loads(rows["abc"]) == {"train": "sha256:aa", "dev": "sha256:bb"} and rows["old"] is None


def test_teachers_first_starts_one_run_per_teacher_then_keeps_plan_order() -> None:
    from kdgrid.execute.local import teacher_of, teachers_first

    planned = expand(grid_study(seeds=2))
    assert [r.task for r in planned[:4]] == ["cola"] * 4  # plan order: a task's runs together
    ordered = teachers_first(planned)
    assert sorted(r.run_id for r in ordered) == sorted(r.run_id for r in planned)  # nothing lost or repeated
    assert [r.task for r in ordered[:2]] == ["cola", "stsb"]
    assert ordered[0] is planned[0] and ordered[2:] == [r for r in planned if r not in ordered[:2]]
    # A teacher setting other than the task also makes another teacher.
    other = Study.model_validate(
        {"name": "h", "tasks": ["cola"], "seeds": 2, "grid": {"teacher.finetune.epochs": [1, 2]}}
    )
    runs = expand(other)
    assert len({teacher_of(r) for r in runs}) == 2
    assert len({teacher_of(r) for r in teachers_first(runs)[:2]}) == 2


@pytest.mark.slow
def test_reader_waits_for_a_writer_instead_of_failing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess
    import sys
    import time

    import kdgrid.store.db as db_mod

    db = tmp_path / "k.duckdb"
    go(db, grid_study(seeds=1), FakeRunner())
    # Another process holds the write lock for a moment, as the coordinator does while it ingests a result.
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import duckdb, sys, time; c = duckdb.connect(sys.argv[1]); print('held', flush=True); "
            "time.sleep(1.5); c.close()",
            str(db),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        t0 = time.monotonic()
        with open_store(db, read_only=True) as store:
            assert store.study_names() == ["g"]
        assert time.monotonic() - t0 > 0.5  # it did wait for the lock
        # A lock that outlasts the wait is still the one clear error.
        holder.wait(timeout=30)
        holder = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import duckdb, sys, time; c = duckdb.connect(sys.argv[1]); print('held', flush=True); time.sleep(30)",
                str(db),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        monkeypatch.setattr(db_mod, "READER_WAIT_S", 0.3)
        with pytest.raises(StoreError, match="in use by another kdgrid process"):
            with open_store(db, read_only=True):
                pass
    finally:
        holder.kill()
        holder.wait()


def test_two_stores_in_one_folder_do_not_take_each_others_results(tmp_path: Path) -> None:
    # Both stores keep their runs under tmp_path/.kdgrid/runs; a store recovers only runs it planned.
    a, b = tmp_path / "a.duckdb", tmp_path / "b.duckdb"
    go(a, grid_study(seeds=1), FakeRunner())
    other = Study.model_validate(
        {"name": "h", "tasks": ["cola"], "seeds": 1, "grid": {"objective.prediction.temperature": [2.0]}}
    )
    out = go(b, other, FakeRunner())
    assert out.recovered == 0
    with open_store(b, read_only=True) as s:
        assert s.con.execute("SELECT count(*) FROM runs").fetchone()[0] == 1
    assert counts(a) == {"done": 4}


class MappingRunner(FakeRunner):
    """Also logs two epochs of a 1 x 2 mapping, so the mapping query has rows."""

    def __call__(
        self, config: RunConfig, rdir: Path, *, workdir: Path, on_progress: Any, on_epoch: Any = None
    ) -> dict[str, Any]:
        res = super().__call__(config, rdir, workdir=workdir, on_progress=on_progress)
        res["metrics"] += [
            {"stage": "joint", "epoch": e, "split": "mapping", "name": f"s1.t{k}", "value": 0.5}
            for e in (1, 0)
            for k in (2, 1)
        ]
        return res


def test_mapping_weights_come_back_in_a_fixed_order(tmp_path: Path) -> None:
    from kdgrid.store.queries import mapping_weights

    db = tmp_path / "k.duckdb"
    go(db, grid_study(seeds=2), MappingRunner())
    with open_store(db, read_only=True) as s:
        w = mapping_weights(s, "g")
    keys = list(zip(w["task"], w["cell"], w["seed"], w["epoch"], w["teacher_layer"]))
    assert len(keys) == 2 * 2 * 2 * 2 * 2 and keys == sorted(keys)
