"""End to end through the real CLI on a tiny BERT: run, resume after kill -9, status, report, errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest
from conftest import write_cola_dir

ENV = {
    **os.environ,
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "OMP_NUM_THREADS": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


def kdgrid(
    *args: str, cwd: Path, check: bool = True, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "kdgrid", *args], cwd=cwd, capture_output=True, text=True, env=env or ENV, timeout=600
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"kdgrid {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def tiny_study(tmp_path: Path, model: Path, data: Path, seeds: int = 3, extra: str = "") -> Path:
    study = tmp_path / "tiny.yaml"
    study.write_text(f"""
name: tiny
tasks: [cola]
seeds: {seeds}
teacher: {{model: {model}, finetune: {{epochs: 1, batch_size: 8}}}}
student: {{layers: 2}}
data: {{dir: {data}, max_seq_length: 32}}
train: {{epochs: 2, batch_size: 8, lr: 1.0e-3}}
grid:
  objective.prediction.temperature: [1.0, 4.0]
{extra}""")
    return study


@pytest.fixture
def project(tmp_path: Path, tiny_model_dir: Path) -> tuple[Path, Path]:
    data = write_cola_dir(tmp_path / "glue", n_train=48, n_dev=16)
    return tmp_path, tiny_study(tmp_path, tiny_model_dir, data)


def db_rows(db: Path, sql: str) -> list[tuple]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


@pytest.mark.slow
def test_run_status_report_and_rerun(project: tuple[Path, Path]) -> None:
    root, study = project
    out = kdgrid("run", str(study), cwd=root)
    assert "6 run(s) done now" in out.stdout
    db = root / "kdgrid.duckdb"
    assert db_rows(db, "SELECT status, count(*) FROM runs GROUP BY status") == [("done", 6)]
    # per-epoch loss terms and dev metrics, final metrics, efficiency, the teacher
    names = {r[0] for r in db_rows(db, "SELECT DISTINCT split || ':' || name FROM metrics")}
    assert {
        "train:loss",
        "train:loss.soft",
        "dev:mcc",
        "efficiency:params",
        "efficiency:latency_ms",
        "efficiency:train_time_s",
        "teacher:mcc",
    } <= names
    assert db_rows(db, "SELECT count(*) FROM teachers") == [(1,)]
    again = kdgrid("run", str(study), cwd=root)
    assert "0 run(s) done now, 6 were done before" in again.stdout
    status = kdgrid("status", cwd=root)
    assert "tiny" in status.stdout and "6" in status.stdout
    rep = kdgrid("report", "--format", "json", "--no-plots", cwd=root)
    data = json.loads(rep.stdout)
    # analyze writes numeric levels canonically (1.0 -> "1"): tidy.level_key
    assert sorted(c["cell"] for c in data["cells"]) == ["temperature=1", "temperature=4"]
    assert all(c["n"] == 3 for c in data["cells"])
    assert (root / "reports" / "tiny" / "report.md").is_file()
    assert (root / "reports" / "tiny" / "cells.csv").is_file()
    kdgrid("export", "--study", "tiny", "--format", "csv", "--out", "t.csv", cwd=root)
    assert len((root / "t.csv").read_text().strip().splitlines()) == 7


@pytest.mark.slow
def test_kill_mid_grid_then_resume_stores_each_run_once(project: tuple[Path, Path]) -> None:
    root, study = project
    kdgrid("run", str(study), "--max-runs", "1", cwd=root)  # teacher cached, one run done
    db = root / "kdgrid.duckdb"
    proc = subprocess.Popen(
        [sys.executable, "-m", "kdgrid", "run", str(study)],
        cwd=root,
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    runs_dir = root / ".kdgrid" / "runs"
    deadline = time.time() + 300
    while time.time() < deadline and len(list(runs_dir.glob("*/result.json"))) < 3:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished_before = {p.parent.name: p.stat().st_mtime_ns for p in runs_dir.glob("*/result.json")}
    assert 3 <= len(finished_before) < 6
    out = kdgrid("run", str(study), cwd=root)
    assert db_rows(db, "SELECT status, count(*) FROM runs GROUP BY status") == [("done", 6)]
    assert db_rows(db, "SELECT count(DISTINCT run_id), count(*) FROM runs") == [(6, 6)]
    # metrics are not duplicated: one final mcc per run
    assert db_rows(
        db,
        "SELECT max(n) FROM (SELECT count(*) n FROM metrics WHERE stage='final' AND split='dev' AND name='mcc' GROUP BY run_id)",
    ) == [(1,)]
    # nothing that had finished was trained again
    for run_id, mtime in finished_before.items():
        assert (runs_dir / run_id / "result.json").stat().st_mtime_ns == mtime
    assert "done now" in out.stdout


@pytest.mark.slow
def test_nan_loss_fails_one_run_and_is_stored(project: tuple[Path, Path]) -> None:
    root, study = project
    kdgrid("run", str(study), "--max-runs", "1", cwd=root)
    out = kdgrid("run", str(study), "--max-runs", "1", cwd=root, check=False, env={**ENV, "KDGRID_FAULT": "nan"})
    assert out.returncode == 2
    db = root / "kdgrid.duckdb"
    rows = db_rows(db, "SELECT status, error FROM runs WHERE status = 'failed'")
    assert len(rows) == 1 and "loss became nan" in rows[0][1]
    assert db_rows(db, "SELECT count(*) FROM runs WHERE status = 'done'") == [(1,)]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ("data: {dir: /nonexistent/glue}", "Error: data dir /nonexistent/glue does not exist (task cola"),
        (
            "teacher: {model: /nonexistent/model}",
            "Error: teacher.model: /nonexistent/model is not a model directory (no such folder)",
        ),
    ],
)
def test_bad_paths_fail_before_compute_and_write_nothing(
    tmp_path: Path, tiny_model_dir: Path, change: str, expected: str
) -> None:
    data = write_cola_dir(tmp_path / "glue")
    study = tiny_study(tmp_path, tiny_model_dir, data)
    text = study.read_text()
    key = change.split(":")[0]
    text = "\n".join(line for line in text.splitlines() if not line.startswith(key + ":")) + "\n" + change + "\n"
    study.write_text(text)
    out = kdgrid("run", str(study), cwd=tmp_path, check=False)
    assert out.returncode == 1
    assert out.stderr.strip().splitlines()[-1].startswith(expected)
    assert not (tmp_path / "kdgrid.duckdb").exists()


def test_foreign_duckdb_is_refused_by_the_cli(project: tuple[Path, Path]) -> None:
    root, study = project
    other = root / "sales.duckdb"
    con = duckdb.connect(str(other))
    con.execute("CREATE TABLE sales (x INTEGER)")
    con.close()
    out = kdgrid("run", str(study), "--db", str(other), cwd=root, check=False)
    assert out.returncode == 1
    assert (
        out.stderr.strip()
        == f"Error: {other}: a DuckDB file that is not a kdgrid store (no kdgrid_meta table); choose another --db"
    )


def test_cli_commands_import_no_torch() -> None:
    code = (
        "import sys; from kdgrid.cli import app; import kdgrid.analyze, kdgrid.report.render, kdgrid.report.source; "
        "bad = [m for m in ('torch', 'transformers') if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV)
    assert proc.returncode == 0, proc.stdout + proc.stderr
