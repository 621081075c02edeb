"""Sequential studies through the coordinator (a fake runner) and through the real CLI (a tiny BERT)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from conftest import write_cola_dir
from test_cli_e2e import kdgrid, tiny_study

from kdgrid.errors import StudyError
from kdgrid.plan import expand
from kdgrid.plan.canonical import config_data
from kdgrid.sequential import plan_sequential, states_frame, study_states
from kdgrid.sequential.driver import run_sequential
from kdgrid.store import open_store
from kdgrid.study import load_study
from kdgrid.study.schema import RunConfig

STUDY = """
name: seq
tasks: [cola]
seeds: 12
grid:
  objective.prediction.temperature: [1.0, 2.0, 4.0]
analysis:
  baseline: {temperature: 1.0}
  sequential: {first: 3, step: 3, spending: pocock, margin: {mcc: 0.05}}
"""


def _noise(*key: object) -> float:
    h = hashlib.sha256(repr(key).encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64 - 0.5  # uniform(-0.5, 0.5), the same in every process


class SeqRunner:
    """MCC = seed effect + cell effect: T=2 is within 0.01 of T=1 (equivalent), T=4 is 0.1 better (different)."""

    def __init__(self, interrupt_after: int | None = None) -> None:
        self.calls = 0
        self.interrupt_after = interrupt_after

    def __call__(
        self, config: RunConfig, rdir: Path, *, workdir: Path, on_progress: Any = None, on_epoch: Any = None
    ) -> dict[str, Any]:
        if self.interrupt_after is not None and self.calls == self.interrupt_after:
            raise KeyboardInterrupt
        self.calls += 1
        t = config.objective.prediction.temperature
        seed = config.seed
        value = 0.4 + 0.2 * _noise("seed", seed) + {1.0: 0.0, 2.0: 0.0, 4.0: 0.1}[t] + 0.01 * _noise(t, seed)
        return {
            "run_id": rdir.name,
            "task": config.task,
            "seed": seed,
            "config": config_data(config),
            "status": "done",
            "metrics": [{"stage": "final", "split": "dev", "name": "mcc", "value": value}],
        }


def _loaded(tmp_path: Path, text: str = STUDY) -> Any:
    path = tmp_path / "seq.yaml"
    path.write_text(text)
    return load_study(path)


def _run(db: Path, loaded: Any, runner: SeqRunner) -> Any:
    plan = plan_sequential(loaded.study, expand(loaded.study))
    return run_sequential(db, loaded, plan, runner=runner)


def _verdicts(out: Any) -> dict[str, tuple[str, int, int]]:
    return {st.comparison.condition: (st.verdict, len(st.result.looks), st.result.n) for st in out.states}


def test_looks_until_each_comparison_is_decided(tmp_path: Path) -> None:
    loaded = _loaded(tmp_path)
    db = tmp_path / "k.duckdb"
    runner = SeqRunner()
    out = _run(db, loaded, runner)
    got = _verdicts(out)
    assert got["objective.prediction.temperature=4.0"][0] == "different"
    assert got["objective.prediction.temperature=2.0"][0] == "equivalent"
    assert all(v[0] in ("different", "equivalent") for v in got.values())
    # fewer runs than the fixed design at the maximum (3 cells x 12 seeds), and each look ran once
    assert runner.calls < 36 and runner.calls == out.done
    with open_store(db, read_only=True) as store:
        members = store.con.execute("SELECT count(*) FROM study_runs WHERE study = 'seq'").fetchone()[0]
        plan, states = study_states(store, "seq")  # type: ignore[misc]
    assert members == runner.calls  # the study's membership is every look it ran
    assert [(s.comparison.condition, s.verdict, s.result.n) for s in states] == [
        (k, v[0], v[2]) for k, v in got.items()
    ]
    # running again runs nothing and decides the same way
    again = _run(db, loaded, SeqRunner())
    assert again.done == 0 and _verdicts(again) == got
    frame = states_frame(again.states)
    assert list(frame["verdict"]) == [v[0] for v in got.values()]


@pytest.mark.slow
def test_an_interrupted_sequential_run_continues_to_the_same_decisions(tmp_path: Path) -> None:
    loaded = _loaded(tmp_path)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()  # separate run folders: results left in one would be ingested by the other
    reference = _verdicts(_run(tmp_path / "a" / "k.duckdb", loaded, SeqRunner()))
    db = tmp_path / "b" / "k.duckdb"
    for stop in (4, 3):  # killed in the first look, twice
        first = _run(db, loaded, SeqRunner(interrupt_after=stop))
        assert first.interrupted
    assert _verdicts(_run(db, loaded, SeqRunner())) == reference


def test_bad_sequential_settings_are_one_clear_error(tmp_path: Path) -> None:
    bad = _loaded(tmp_path, STUDY.replace("first: 3", "first: 3, max_seeds: 20"))
    with pytest.raises(StudyError, match=r"max_seeds: 20 but the study lists 12 seeds"):
        plan_sequential(bad.study, expand(bad.study))
    bad = _loaded(tmp_path, STUDY.replace("mcc: 0.05", "acc: 0.05"))
    with pytest.raises(StudyError, match=r"margin: unknown metric 'acc' \(allowed: mcc\)"):
        plan_sequential(bad.study, expand(bad.study))


def test_comparisons_choose_the_conditions(tmp_path: Path) -> None:
    loaded = _loaded(
        tmp_path, STUDY.replace("margin: {mcc: 0.05}", "margin: {mcc: 0.05}, comparisons: [{temperature: 4.0}]")
    )
    plan = plan_sequential(loaded.study, expand(loaded.study))
    assert [(c.condition, c.baseline) for c in plan.comparisons] == [
        ("objective.prediction.temperature=4.0", "objective.prediction.temperature=1.0")
    ]
    assert plan.comparisons[0].design.alpha == 0.05  # one comparison in the family: no split
    assert {r.cell for r in plan.first_look_runs()} == {
        c for c in (plan.comparisons[0].condition, plan.comparisons[0].baseline)
    }


@pytest.mark.slow
def test_sequential_study_end_to_end_through_the_cli(tmp_path: Path, tiny_model_dir: Path) -> None:
    data = write_cola_dir(tmp_path / "glue", n_train=48, n_dev=16)
    study = tiny_study(
        tmp_path,
        tiny_model_dir,
        data,
        seeds=6,
        extra="analysis:\n  sequential: {first: 2, step: 2, margin: {mcc: 0.5}}\n",
    )
    plan = kdgrid("plan", str(study), cwd=tmp_path)
    assert "4 runs, 4 unique" in plan.stdout and "at most 12 runs" in plan.stdout
    run = kdgrid("run", str(study), "--workers", "0", cwd=tmp_path)
    assert "study tiny: 4 run(s) done now" in run.stdout
    status = kdgrid("status", cwd=tmp_path)
    assert "sequential comparisons" in status.stdout and "equivalent" in status.stdout
    again = kdgrid("run", str(study), "--workers", "0", cwd=tmp_path)
    assert "0 run(s) done now" in again.stdout
    kdgrid("report", "--format", "json", "--no-plots", cwd=tmp_path)
    section = (tmp_path / "reports" / "tiny" / "sequential.md").read_text()
    assert "Sequential design" in section and "equivalent" in section and "z boundary" in section
    assert "## Sequential design" in (tmp_path / "reports" / "tiny" / "report.md").read_text()
    assert (tmp_path / "reports" / "tiny" / "sequential_looks.csv").is_file()
    refused = kdgrid("run", str(study), "--retry-failed", cwd=tmp_path, check=False)
    assert refused.returncode == 1 and "--retry-failed: not allowed for a sequential study" in refused.stderr
    json.loads(kdgrid("schema", cwd=tmp_path).stdout)["$defs"]["Sequential"]  # documented in the schema
    bad = tiny_study(
        tmp_path, tiny_model_dir, data, seeds=6, extra="analysis:\n  sequential: {first: 2, max_seeds: 8}\n"
    )
    out = kdgrid("validate", str(bad), cwd=tmp_path, check=False)
    assert out.returncode == 1
    assert out.stderr.strip().endswith(
        "analysis.sequential.max_seeds: 8 but the study lists 6 seeds (allowed: 2 to 6; raise 'seeds')"
    )


def test_ablation_seq_cpu_is_ablation_cpu_in_looks() -> None:
    from kdgrid.plan import plan_study

    studies = Path(__file__).parent.parent / "studies"
    seq = load_study(studies / "ablation-seq-cpu.yaml").study
    fixed = load_study(studies / "ablation-cpu.yaml").study
    plan = plan_sequential(seq, plan_study(seq))
    assert plan.looks == (3, 6, 9, 12, 15)
    # 12 cells on CoLA (800 examples only) and 24 on STS-B (100 / 200); each is compared with the baseline
    # cell of its data size: 11 and 22 comparisons, alpha split within each task's family
    assert len(plan.comparisons) == 33
    assert {(c.task, c.design.alpha) for c in plan.comparisons} == {("cola", 0.05 / 11), ("stsb", 0.05 / 22)}
    # the runs of seeds 0-4 are ablation-cpu's runs: a store holding that study reuses them
    five = {r.run_id for r in plan.runs.values() if r.seed < 5}
    assert five == {r.run_id for r in plan_study(fixed)}
    assert len(plan.first_look_runs()) == (12 + 24) * 3
