"""Optuna searches whose trials are kdgrid runs: fake runners for the bookkeeping, a tiny BERT end to end.

The fake runner (tests/search_fakes.py) is module-level, so the grid scheduler's pool workers unpickle it (the
coordinator ships its ``sys.path``): the ``workers`` tests run the trials' runs in real worker processes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb
import optuna
import pytest
from search_fakes import CALLS, fake_runner

from kdgrid.errors import KdgridError, StudyError
from kdgrid.search import check_search
from kdgrid.search.command import search_main
from kdgrid.search.journal import existing_search, open_search
from kdgrid.search.loop import SearchJob, run_search
from kdgrid.search.report import build_search_report, pick_search, write_search_report
from kdgrid.search.space import apply_params
from kdgrid.study import load_study
from kdgrid.study.schema import Execute, RunConfig

TESTS = Path(__file__).parent
ENV = {
    **os.environ,
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "OMP_NUM_THREADS": "1",
    # the checkout under test first: an installed kdgrid from another tree would sign the search differently
    "TOKENIZERS_PARALLELISM": "false",
    "PYTHONPATH": os.pathsep.join([str(TESTS), str(TESTS.parent)]),
}


def fake_runner_without_hook(
    config: RunConfig, rdir: Path, *, workdir: Path, on_progress: Any = None, on_epoch: Any = None
) -> dict[str, Any]:
    """Reports no epoch while it trains (as a Slurm job): pruning then acts between runs, from the stored epochs."""
    return fake_runner(config, rdir, workdir=workdir, on_progress=on_progress)


def calls(db: Path) -> list[str]:
    """Run ids the fake runner was called for, in any process, in order."""
    log = db.parent / ".kdgrid" / "calls.log"
    return [line.split()[0] for line in log.read_text().splitlines()] if log.is_file() else []


def write_study(root: Path, search: str, *, seeds: int = 4, extra: str = "", data: Path | None = None) -> Path:
    path = root / "s.yaml"
    data_line = f"data: {{dir: {data}}}\n" if data else ""
    path.write_text(f"""name: s
tasks: [cola]
seeds: {seeds}
{data_line}train: {{epochs: 3}}
objective:
  intermediate: {{attention: mse, hidden: seq, alpha: 0.5}}
{extra}search:
{search}""")
    return path


SEARCH = """  params:
    objective.intermediate.alpha: {low: 0.0, high: 0.7}
    objective.prediction.temperature: {low: 1.0, high: 4.0, log: true}
  trials: 4
  seeds_per_trial: 2
  pruner: none
"""


def job(root: Path, target: int | None = None, study: Path | None = None) -> SearchJob:
    loaded = load_study(study or root / "s.yaml")
    check_search(loaded)
    assert loaded.study.search is not None
    return SearchJob(root / "k.duckdb", loaded, target or loaded.study.search.trials)


def rows(db: Path, sql: str) -> list[tuple[Any, ...]]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


@pytest.fixture(autouse=True)
def _fresh_calls() -> None:
    CALLS.clear()


# --------------------------------------------------------------------------- the search loop
@pytest.mark.slow
def test_tiny_search_end_to_end_with_report(tmp_path: Path) -> None:
    write_study(tmp_path, SEARCH)
    out = run_search(job(tmp_path), runner=fake_runner)
    assert (out.started, out.complete, out.failed, out.pruned) == (4, 4, 0, 0)
    db = tmp_path / "k.duckdb"
    trials = rows(db, "SELECT number, run_id, params, value, state FROM trials WHERE search = 's' ORDER BY number")
    assert [t[0] for t in trials] == [0, 1, 2, 3] and {t[4] for t in trials} == {"complete"}
    # a trial is ordinary runs: 2 seeds each, done, in the store study 's.search' with the trial's factors
    assert rows(db, "SELECT status, count(*) FROM runs GROUP BY status") == [("done", 8)]
    assert len(CALLS) == 8
    for number, run_id, params, value, _ in trials:
        alpha = json.loads(params)["objective.intermediate.alpha"]
        members = rows(
            db,
            "SELECT r.seed FROM study_runs s JOIN runs r USING (run_id) "
            "JOIN factors f USING (study, cell, run_id) "
            f"WHERE s.study = 's.search' AND f.name = 'trial' AND f.value = '{number}' ORDER BY r.seed",
        )
        assert [m[0] for m in members] == [0, 1]
        # the value is the mean over the trial's seeds of the final dev metric
        assert value == pytest.approx(0.5 - (alpha - 0.3) ** 2 + 0.005)
        assert (tmp_path / ".kdgrid" / "runs" / run_id / "result.json").is_file()
    assert (tmp_path / "k.duckdb.optuna" / "s.journal").is_file()

    assert pick_search(db, search=None, study=None) == "s"  # the store holds only this search
    with pytest.raises(KdgridError, match=r"^--search: no search 'x' in .*k.duckdb \(allowed: s\)$"):
        pick_search(db, search="x", study=None)
    rep = build_search_report(db, "s")
    assert rep.best is not None and rep.best["value"] == max(t[3] for t in trials)
    assert rep.importances is not None
    assert set(rep.importances) == {"objective.intermediate.alpha", "objective.prediction.temperature"}
    files = write_search_report(rep, tmp_path / "rep", plots=True)
    names = {f.name for f in files}
    assert {
        "search.md",
        "trials.csv",
        "search.json",
        "importances.csv",
        "search_history.png",
        "search_slices.png",
    } <= names
    assert "## Best parameters" in (tmp_path / "rep" / "search.md").read_text()


def test_resume_after_ctrl_c_adds_trials_without_repeating(tmp_path: Path) -> None:
    write_study(tmp_path, SEARCH)
    calls = 0

    def interrupting(config: RunConfig, rdir: Path, **kw: Any) -> dict[str, Any]:
        nonlocal calls
        calls += 1
        if calls == 4:  # the second run of trial 1
            raise KeyboardInterrupt
        return fake_runner(config, rdir, **kw)

    first = run_search(job(tmp_path), runner=interrupting)
    assert first.interrupted and first.complete == 1
    db = tmp_path / "k.duckdb"
    assert rows(db, "SELECT number, state FROM trials ORDER BY number") == [(0, "complete"), (1, "interrupted")]
    done_before = {r[0] for r in rows(db, "SELECT run_id FROM runs WHERE status = 'done'")}
    assert len(done_before) == 3

    CALLS.clear()
    second = run_search(job(tmp_path), runner=fake_runner)
    assert second.complete == 3 and not second.interrupted
    states = rows(db, "SELECT number, state FROM trials ORDER BY number")
    assert states == [(0, "complete"), (1, "interrupted"), (2, "complete"), (3, "complete"), (4, "complete")]
    # trial 1's settings were queued again and ran as trial 2, reusing its finished run
    params = dict(rows(db, "SELECT number, params FROM trials"))
    assert json.loads(params[1]) == json.loads(params[2])
    assert not done_before & set(CALLS) and len(CALLS) == 5
    # running again with the budget reached adds nothing
    assert run_search(job(tmp_path), runner=fake_runner).started == 0


def test_trial_of_a_killed_process_is_queued_again(tmp_path: Path) -> None:
    write_study(tmp_path, SEARCH)
    marker = tmp_path / "hanging"
    env = {**ENV, "KDGRID_FAKE_HANG_AT": "3", "KDGRID_FAKE_MARKER": str(marker)}
    # A search session (what 'kdgrid search' runs), killed -9 in trial 1's first run.
    code = (
        "import sys; from pathlib import Path; from test_search import fake_runner, job; "
        "from kdgrid.search.loop import run_search; run_search(job(Path(sys.argv[1])), runner=fake_runner)"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        for _ in range(1200):
            if marker.exists() or proc.poll() is not None:
                break
            time.sleep(0.05)
        assert marker.exists(), proc.stderr.read().decode() if proc.stderr else ""
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    out = run_search(job(tmp_path), runner=fake_runner)
    db = tmp_path / "k.duckdb"
    states = rows(db, "SELECT number, state FROM trials ORDER BY number")
    assert states[:2] == [(0, "complete"), (1, "interrupted")] and len(states) == 5
    assert [s for _, s in states[2:]] == ["complete"] * 3 and out.complete == 3
    # the killed trial's two runs ran again (as trial 2), then trials 3 and 4; trial 0's runs did not
    trial0 = {
        r[0]
        for r in rows(
            db,
            "SELECT run_id FROM study_runs JOIN factors USING (study, cell, run_id) "
            "WHERE name = 'trial' AND value = '0'",
        )
    }
    assert marker.read_text() in CALLS and not trial0 & set(CALLS) and len(CALLS) == 2 + 2 + 2
    assert rows(db, "SELECT count(*), count(DISTINCT run_id) FROM runs WHERE status = 'done'") == [(8, 8)]


def test_two_workers_run_the_trials_and_store_every_trial_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_study(tmp_path, SEARCH)
    loaded = load_study(tmp_path / "s.yaml")
    db = tmp_path / "k.duckdb"
    assert search_main(db, loaded, execute=Execute(workers=2), runner=fake_runner) == 0
    assert "search s: 4 trials (4 complete, 0 pruned, 0 failed)" in capsys.readouterr().out
    assert rows(db, "SELECT number, state FROM trials ORDER BY number") == [(n, "complete") for n in range(4)]
    ostudy = existing_search(db, "s")
    assert ostudy is not None and sorted(t.number for t in ostudy.trials) == list(range(4))
    # the runs ran in the scheduler's two worker processes (none in this one), each once, and are stored once
    assert CALLS == [] and len(calls(db)) == 8 == len(set(calls(db)))
    pids = {line.split()[1] for line in (tmp_path / ".kdgrid" / "calls.log").read_text().splitlines()}
    assert str(os.getpid()) not in pids and len(pids) >= 2
    assert rows(db, "SELECT count(*), count(DISTINCT run_id) FROM runs WHERE status = 'done'") == [(8, 8)]
    assert rows(db, "SELECT count(*) FROM study_runs WHERE study = 's.search'") == [(8,)]  # every round's runs kept


def test_a_killed_worker_is_retried_within_retries_and_its_trial_completes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_study(tmp_path, SEARCH.replace("trials: 4", "trials: 2"))
    monkeypatch.setenv("KDGRID_FAULT", "kill:seed=1@1")  # seed 1's first attempt dies, as under the OOM killer
    out = run_search(job(tmp_path), runner=fake_runner, execute=Execute(workers=2, retries=1))
    assert (out.complete, out.failed) == (2, 0)
    db = tmp_path / "k.duckdb"
    assert sorted(rows(db, "SELECT seed, status, attempt FROM runs")) == [
        (0, "done", 1),
        (0, "done", 1),
        (1, "done", 2),
        (1, "done", 2),
    ]
    # without a retry the trial fails
    j = job(tmp_path, target=3)
    open_search(j.db_path, j.study, n_trials=3).enqueue_trial(
        {"objective.intermediate.alpha": 0.2, "objective.prediction.temperature": 2.0}
    )
    out = run_search(j, runner=fake_runner, execute=Execute(workers=2, retries=0))
    assert out.failed == 1 and "worker process killed by SIGKILL" in out.errors[0][1]


def test_search_and_grid_runs_keep_off_each_others_store(tmp_path: Path) -> None:
    from filelock import FileLock

    from kdgrid.errors import StoreError
    from kdgrid.execute.local import coordinator, run_grid
    from kdgrid.plan import expand

    write_study(tmp_path, SEARCH)
    db = tmp_path / "k.duckdb"
    with FileLock(str(db) + ".lock"):  # what 'kdgrid run' holds for a whole grid
        with pytest.raises(StoreError, match="another 'kdgrid run' is using this store"):
            run_search(job(tmp_path), runner=fake_runner)
    study = load_study(tmp_path / "s.yaml").study
    with coordinator(db), pytest.raises(StoreError, match="another 'kdgrid run' is using this store"):
        # what a search session holds while it searches
        run_grid(
            db,
            study_name="g",
            study_path="s.yaml",
            study_text="",
            study_sha="",
            planned=expand(study),
            runner=fake_runner,
        )


def test_pruned_trial_is_stored_as_pruned(tmp_path: Path) -> None:
    write_study(
        tmp_path, SEARCH.replace("pruner: none", "pruner: median").replace("seeds_per_trial: 2", "seeds_per_trial: 1")
    )
    j = job(tmp_path)
    ostudy = open_search(j.db_path, j.study, n_trials=j.target)
    for alpha in (0.3, 0.31, 0.7):  # the third is worse at every epoch than the median of the first two
        ostudy.enqueue_trial({"objective.intermediate.alpha": alpha, "objective.prediction.temperature": 2.0})
    run_search(SearchJob(j.db_path, j.loaded, 3), runner=fake_runner)
    db = tmp_path / "k.duckdb"
    assert rows(db, "SELECT number, state FROM trials ORDER BY number") == [
        (0, "complete"),
        (1, "complete"),
        (2, "pruned"),
    ]
    pruned_run = rows(db, "SELECT run_id FROM trials WHERE number = 2")[0][0]
    # stopped after its first epoch: the run is 'interrupted' (a later grid or trial runs it again), no result.json
    assert rows(db, f"SELECT status, error FROM runs WHERE run_id = '{pruned_run}'") == [
        ("interrupted", "pruned by the search")
    ]
    assert not (tmp_path / ".kdgrid" / "runs" / pruned_run / "result.json").exists()
    reloaded = existing_search(db, "s")
    assert reloaded is not None and reloaded.trials[2].state == optuna.trial.TrialState.PRUNED
    assert list(reloaded.trials[2].intermediate_values) == [1]


def test_pruning_without_the_epoch_hook_acts_between_runs(tmp_path: Path) -> None:
    write_study(tmp_path, SEARCH.replace("pruner: none", "pruner: median"))
    j = job(tmp_path)
    ostudy = open_search(j.db_path, j.study, n_trials=j.target)
    for alpha in (0.3, 0.31, 0.7):
        ostudy.enqueue_trial({"objective.intermediate.alpha": alpha, "objective.prediction.temperature": 2.0})
    run_search(SearchJob(j.db_path, j.loaded, 3), runner=fake_runner_without_hook)
    db = tmp_path / "k.duckdb"
    assert rows(db, "SELECT number, state FROM trials ORDER BY number") == [
        (0, "complete"),
        (1, "complete"),
        (2, "pruned"),
    ]
    assert len(CALLS) == 2 + 2 + 1  # the pruned trial's second seed never ran


def test_pruning_stops_a_trials_runs_in_the_worker_processes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Epochs reach the pruner from pool workers while they train; a pruned trial's runs in flight are killed."""
    monkeypatch.setenv("KDGRID_FAKE_EPOCH_SLEEP", "3")  # the pruned runs would need 6 s more to finish
    write_study(tmp_path, SEARCH.replace("pruner: none", "pruner: median"))
    j = job(tmp_path)
    ostudy = open_search(j.db_path, j.study, n_trials=j.target)
    for alpha in (0.3, 0.31, 0.7):
        ostudy.enqueue_trial({"objective.intermediate.alpha": alpha, "objective.prediction.temperature": 2.0})
    out = run_search(SearchJob(j.db_path, j.loaded, 3), runner=fake_runner, execute=Execute(workers=2))
    assert (out.complete, out.pruned) == (2, 1)
    db = tmp_path / "k.duckdb"
    pruned = {
        r[0]
        for r in rows(
            db,
            "SELECT run_id FROM study_runs JOIN factors USING (study, cell, run_id) "
            "WHERE name = 'trial' AND value = '2'",
        )
    }
    # both runs of trial 2 were started at once (two slots); each is stopped, with no result kept, unless it
    # finished before the coordinator heard of the pruning (a finished result is never thrown away)
    assert len(pruned) == 2 and set(calls(db)) & pruned
    status = {run_id: rows(db, f"SELECT status, error FROM runs WHERE run_id = '{run_id}'")[0] for run_id in pruned}
    stopped = [r for r, st in status.items() if st == ("interrupted", "pruned by the search")]
    assert stopped and all(st == ("done", None) for r, st in status.items() if r not in stopped), status
    for run_id in stopped:
        assert not (tmp_path / ".kdgrid" / "runs" / run_id / "result.json").exists()
    reloaded = existing_search(db, "s")
    assert reloaded is not None and reloaded.trials[2].state == optuna.trial.TrialState.PRUNED
    assert max(reloaded.trials[2].intermediate_values) < 3 + 3  # stopped before either run's last epoch


def test_trials_run_as_a_slurm_array_on_submitits_debug_executor(tmp_path: Path) -> None:
    write_study(tmp_path, SEARCH.replace("trials: 4", "trials: 2"))
    ex = Execute(executor="slurm", retries=1, slurm={"cluster": "debug", "array_parallelism": 2, "poll_s": 0.2})  # type: ignore[arg-type]
    out = run_search(job(tmp_path), runner=fake_runner, execute=ex)
    db = tmp_path / "k.duckdb"
    assert (out.complete, out.failed) == (2, 0)
    assert rows(db, "SELECT count(*), count(DISTINCT run_id) FROM runs WHERE status = 'done'") == [(4, 4)]
    assert len(CALLS) == 4  # the debug executor runs each array task in this process, once


def test_search_takes_runs_execution_options_with_their_checks(tmp_path: Path) -> None:
    write_study(tmp_path, SEARCH)
    proc = subprocess.run(
        [sys.executable, "-m", "kdgrid", "search", "s.yaml", "--workers", "0", "--timeout", "5"],
        cwd=tmp_path,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (proc.returncode, proc.stderr.strip()) == (
        1,
        "Error: --timeout: needs worker processes (--workers 1 or more); an in-process run cannot be stopped",
    )
    assert not (tmp_path / "kdgrid.duckdb").exists()


def test_failed_run_fails_its_trial_and_the_search_goes_on(tmp_path: Path) -> None:
    write_study(tmp_path, SEARCH.replace("trials: 4", "trials: 3").replace("high: 0.7", "high: 0.95"))
    j = job(tmp_path)
    ostudy = open_search(j.db_path, j.study, n_trials=j.target)
    for alpha in (0.2, 0.9, 0.4):  # alpha >= 0.8 makes the fake runner fail
        ostudy.enqueue_trial({"objective.intermediate.alpha": alpha, "objective.prediction.temperature": 2.0})
    out = run_search(j, runner=fake_runner)
    assert (out.complete, out.failed) == (2, 1)
    db = tmp_path / "k.duckdb"
    assert rows(db, "SELECT number, state FROM trials ORDER BY number") == [
        (0, "complete"),
        (1, "failed"),
        (2, "complete"),
    ]
    assert out.errors[0][0] == 1 and "loss became nan" in out.errors[0][1]
    assert rows(db, "SELECT count(*) FROM runs WHERE status = 'failed'") == [(1,)]
    failed = existing_search(db, "s")
    assert failed is not None and "loss became nan" in failed.trials[1].user_attrs["kdgrid_error"]


def test_grid_sampler_stops_at_the_grid_size(tmp_path: Path) -> None:
    write_study(
        tmp_path,
        """  params:
    objective.intermediate.alpha: {low: 0.1, high: 0.3, step: 0.1}
  sampler: grid
  trials: 10
  pruner: none
""",
    )
    j = job(tmp_path)
    assert j.target == 10
    from kdgrid.search.journal import budget

    assert j.search.params["objective.intermediate.alpha"].grid_values() == [0.1, 0.2, 0.3]
    out = run_search(SearchJob(j.db_path, j.loaded, budget(j.search, None)), runner=fake_runner)
    assert out.complete == 3
    params = rows(tmp_path / "k.duckdb", "SELECT params FROM trials")
    alphas = sorted(json.loads(p)["objective.intermediate.alpha"] for (p,) in params)
    assert alphas == [0.1, 0.2, 0.3]


def test_changed_search_block_is_refused(tmp_path: Path) -> None:
    write_study(tmp_path, SEARCH.replace("trials: 4", "trials: 1"))
    run_search(job(tmp_path), runner=fake_runner)
    write_study(tmp_path, SEARCH.replace("trials: 4", "trials: 2").replace("high: 0.7", "high: 0.6"))
    with pytest.raises(KdgridError, match=r"search 's': its parameters, objective, seeds, tasks or base run changed"):
        run_search(job(tmp_path), runner=fake_runner)
    # the budget may change
    write_study(tmp_path, SEARCH.replace("trials: 4", "trials: 2"))
    assert run_search(job(tmp_path), runner=fake_runner).complete == 1


def test_cmaes_without_its_package_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "cmaes" else real(name, *a))
    write_study(tmp_path, SEARCH.replace("pruner: none", "sampler: cmaes"))
    with pytest.raises(KdgridError) as err:
        run_search(job(tmp_path), runner=fake_runner)
    assert str(err.value) == (
        "search.sampler 'cmaes' needs the 'cmaes' package (pip install cmaes), "
        "or choose another sampler (allowed: tpe, random, grid, cmaes)"
    )


def test_confirmation_uses_fresh_seeds_and_compares_paired(tmp_path: Path) -> None:
    write_study(
        tmp_path,
        SEARCH.replace("trials: 4", "trials: 2") + "  baseline: {objective.intermediate.alpha: 0.7}\n",
        seeds=2,
    )
    loaded = load_study(tmp_path / "s.yaml")
    check_search(loaded)
    code = search_main(tmp_path / "k.duckdb", loaded, confirm=3, runner=fake_runner)
    assert code == 0
    db = tmp_path / "k.duckdb"
    seeds = rows(
        db, "SELECT DISTINCT r.seed FROM study_runs s JOIN runs r USING (run_id) WHERE s.study = 's.confirm' ORDER BY 1"
    )
    assert [s[0] for s in seeds] == [2, 3, 4]  # the trials used seeds 0 and 1
    rep = build_search_report(db, "s")
    conf = rep.confirmation
    assert conf is not None and conf.seeds == [2, 3, 4]
    assert list(conf.means["config"]) == ["baseline", "best"] and list(conf.means["n"]) == [3, 3]
    test = conf.tests.iloc[0]
    best_alpha = rep.best["params"]["objective.intermediate.alpha"] if rep.best else None
    assert test["n"] == 3 and test["mean_diff"] == pytest.approx(fake_value_alpha(best_alpha) - fake_value_alpha(0.7))


def fake_value_alpha(alpha: float | None) -> float:
    """The fake's value without its seed term (which cancels in a paired difference)."""
    assert alpha is not None
    return -((alpha - 0.3) ** 2)


# --------------------------------------------------------------------------- bad search blocks
BASE = """name: s
tasks: [cola]
seeds: 2
objective:
  intermediate: {attention: mse, hidden: seq}
search:
  params:
"""


@pytest.mark.parametrize(
    "block, message",
    [
        (
            "    objective.prediction.temprature: {low: 1.0, high: 4.0}\n",
            "s.yaml:8: search.params.objective.prediction.temprature: unknown setting 'objective.prediction.temprature' "
            "(allowed under objective.prediction: beta, t_squared, temperature)",
        ),
        (
            "    objective.intermediate.alpha: {low: 0.9, high: 0.1}\n",
            "s.yaml:8: search.params.objective.intermediate.alpha: low 0.9 is greater than high 0.1",
        ),
        (
            "    objective.prediction.temperature: {low: 0.0, high: 8.0, log: true}\n",
            "s.yaml:8: search.params.objective.prediction.temperature: log scale needs low > 0 (got 0.0)",
        ),
        (
            "    objective.intermediate.alpha: {low: 0.0, high: 1.0}\n  sampler: bayes\n",
            "s.yaml:9: search.sampler: 'bayes' is not allowed (allowed: tpe, random, grid, cmaes)",
        ),
        (
            "    objective.intermediate.alpha: {low: 0.0, high: 1.0}\n  pruner: hyperband\n",
            "s.yaml:9: search.pruner: 'hyperband' is not allowed (allowed: median, successive_halving, none)",
        ),
        (
            "    objective.intermediate.alpha: {low: 0.0, high: 1.0}\n  sampler: grid\n",
            "s.yaml:6: search: sampler 'grid' needs 'choices' or a 'step' for every parameter; "
            "objective.intermediate.alpha is a float without step",
        ),
        (
            "    objective.intermediate.alpha: {low: 0.0, high: 1.5}\n",
            "s.yaml:8: search.params.objective.intermediate.alpha: objective.intermediate.alpha=1.5 makes an invalid run: "
            "objective.intermediate.alpha: Input should be less than or equal to 1",
        ),
        (
            "    objective.intermediate.attention: {type: categorical, choices: [mse, cosine]}\n",
            "s.yaml:8: search.params.objective.intermediate.attention: objective.intermediate.attention='cosine' makes an "
            "invalid run: objective.intermediate.attention: 'cosine' is not allowed (allowed: none, mse, kl)",
        ),
        (
            "    seed: {type: int, low: 0, high: 3}\n",
            "s.yaml:8: search.params.seed: 'seed' cannot be searched (trials use the study's tasks and the first "
            "seeds_per_trial seeds)",
        ),
        (
            "    train.epochs: {type: int, low: 1, high: 3.5}\n",
            "s.yaml:8: search.params.train.epochs: int parameter needs an integer high (got 3.5)",
        ),
        (
            "    objective.intermediate.alpha: {low: 0.0, high: 1.0}\n  task: rte\n",
            "s.yaml:9: search.task: 'rte' is not a task of this study (allowed: mean, cola)",
        ),
        (
            "    objective.intermediate.alpha: {low: 0.0, high: 1.0}\n  metric: f1\n",
            "s.yaml:9: search.metric: 'f1' is not a dev metric of cola (allowed: auto, mcc)",
        ),
        (
            "    objective.intermediate.alpha: {low: 0.0, high: 1.0}\n  seeds_per_trial: 3\n",
            "s.yaml:9: search.seeds_per_trial: 3 but the study has only 2 seed(s) (raise 'seeds')",
        ),
        (
            "    objective.intermediate.alpha: {low: 0.0, high: 1.0}\n  baseline: {objective.intermediate.alfa: 0.5}\n",
            "s.yaml:9: search.baseline: unknown setting 'objective.intermediate.alfa' (allowed under objective.intermediate: "
            "alpha, att_mse_padding, attention, contrast_momentum, contrast_negatives, contrast_temperature, embedding, head_match, hidden, "
            "value, weight)",
        ),
    ],
)
def test_bad_search_block_gives_one_clear_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, block: str, message: str
) -> None:
    monkeypatch.chdir(tmp_path)
    Path("s.yaml").write_text(BASE + block)
    with pytest.raises(StudyError) as err:
        check_search(load_study("s.yaml"))
    assert str(err.value) == message


def test_a_search_may_switch_a_two_stage_base_to_joint(tmp_path: Path) -> None:
    # The joint trials train the base's prediction-stage epochs (docs/study-file.md, "Switching the schedule").
    path = tmp_path / "s.yaml"
    path.write_text(
        BASE.replace("seeds: 2\n", "seeds: 2\ntrain: {schedule: two_stage, epochs: {intermediate: 2, prediction: 4}}\n")
        + "    train.schedule: {type: categorical, choices: [joint, two_stage]}\n"
    )
    loaded = load_study(path)
    check_search(loaded)
    cfg = apply_params(loaded.study.base_config(), {"train.schedule": "joint"})
    assert RunConfig.model_validate({**cfg, "task": "cola", "seed": 0}).train.epochs == 4


def test_cli_validate_rejects_a_bad_search_block_and_search_needs_one(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text(BASE + "    objective.intermediate.alpha: {low: 0.9, high: 0.1}\n")
    proc = subprocess.run(
        [sys.executable, "-m", "kdgrid", "validate", "bad.yaml"],
        cwd=tmp_path,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip() == (
        "Error: bad.yaml:8: search.params.objective.intermediate.alpha: low 0.9 is greater than high 0.1"
    )


def test_shipped_search_study_validates() -> None:
    loaded = load_study(TESTS.parent / "studies" / "search_alpha_temperature.yaml")
    check_search(loaded)
    s = loaded.study.search
    assert s is not None and set(s.params) == {"objective.intermediate.alpha", "objective.prediction.temperature"}
    assert loaded.study.teacher.model == "minilm-l6" and loaded.study.student.layers == 2
    assert len(loaded.study.tasks) == 1 and s.task in (loaded.study.tasks[0], "mean")


# --------------------------------------------------------------------------- a tiny real model, end to end
@pytest.mark.slow
def test_real_search_and_confirmation_on_a_tiny_bert(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch, make_cola_dir: Callable[..., Path]
) -> None:
    data = make_cola_dir(tmp_path / "glue", n_train=32, n_dev=12)
    study = tmp_path / "tiny.yaml"
    study.write_text(f"""name: tiny
tasks: [cola]
seeds: 3
teacher: {{model: {tiny_model_dir}, finetune: {{epochs: 1, batch_size: 8}}}}
student: {{layers: 2}}
data: {{dir: {data}, max_seq_length: 32}}
train: {{epochs: 2, batch_size: 8, lr: 1.0e-3}}
objective:
  intermediate: {{attention: mse, hidden: seq, alpha: 0.5}}
search:
  params:
    objective.intermediate.alpha: {{low: 0.0, high: 1.0}}
    objective.prediction.temperature: {{low: 1.0, high: 4.0, log: true}}
  trials: 2
  seeds_per_trial: 1
""")
    from typer.testing import CliRunner

    from kdgrid.cli import app

    monkeypatch.chdir(tmp_path)
    cli = CliRunner()
    # In this process (the real runner, torch already imported by the suite): the same code as the command line.
    out = cli.invoke(app, ["search", str(study), "--confirm", "2"])
    assert out.exit_code == 0, out.output
    assert "search tiny: 2 trials (2 complete, 0 pruned, 0 failed)" in out.output
    assert "fresh seeds [1, 2]" in out.output
    db = tmp_path / "kdgrid.duckdb"
    assert rows(db, "SELECT count(*) FROM trials WHERE state = 'complete' AND value IS NOT NULL") == [(2,)]
    # trial runs are ordinary runs: per-epoch dev metrics and efficiency rows, one teacher
    names = {r[0] for r in rows(db, "SELECT DISTINCT split || ':' || name FROM metrics")}
    assert {"dev:mcc", "train:loss", "efficiency:params"} <= names
    assert rows(db, "SELECT count(*) FROM teachers") == [(1,)]
    rep = cli.invoke(app, ["report", "--format", "json", "--no-plots"])
    assert rep.exit_code == 0, rep.output
    data_out = json.loads(rep.stdout)
    assert data_out["search"] == "tiny" and data_out["counts"]["complete"] == 2
    assert data_out["confirmation"]["seeds"] == [1, 2] and len(data_out["confirmation"]["paired_tests"]) == 1
    assert (tmp_path / "reports" / "tiny.search" / "search.md").is_file()


def test_an_out_of_memory_trial_run_is_retried_like_any_run_and_never_reused_as_failed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A trial's run goes through the grid's scheduler: out of memory is retryable, within --retries."""
    search = SEARCH.replace("trials: 4", "trials: 1").replace("seeds_per_trial: 2", "seeds_per_trial: 1")
    write_study(tmp_path, search)
    db = tmp_path / "k.duckdb"
    settings = {"objective.intermediate.alpha": 0.2, "objective.prediction.temperature": 2.0}
    j = job(tmp_path)
    open_search(j.db_path, j.study, n_trials=j.target).enqueue_trial(settings)
    monkeypatch.setenv("KDGRID_FAULT", "oom")  # every attempt runs out of memory
    out = run_search(j, runner=fake_runner, execute=Execute(workers=0, retries=0))
    assert out.failed == 1 and "out of memory" in out.errors[0][1]
    ((run_id, status),) = rows(db, "SELECT run_id, status FROM runs")
    assert status == "failed"
    from kdgrid.execute.rundir import result_path, workdir_for

    assert json.loads(result_path(workdir_for(db), run_id).read_text())["retryable"] is True
    # the same settings in a later trial, with a retry and memory enough for its second attempt: computed again
    write_study(tmp_path, search.replace("trials: 1", "trials: 2"))
    j = job(tmp_path)
    open_search(j.db_path, j.study, n_trials=j.target).enqueue_trial(settings)
    monkeypatch.setenv("KDGRID_FAULT", "oom@1")
    out = run_search(j, runner=fake_runner, execute=Execute(workers=0, retries=1))
    assert out.complete == 1 and out.failed == 0
    assert rows(db, "SELECT status, attempt FROM runs") == [("done", 3)]  # attempts 1 (first trial), 2 and 3
