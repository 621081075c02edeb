"""`kdgrid report`: published R values reproduced through the CLI (to 4 significant digits, --from), and
the Reproducibility section of a report made from a store."""

from __future__ import annotations

import datetime as dt
import hashlib
import html
import json
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import pytest
from test_analyze_reference import moore_df, sleep_df, tooth_df
from typer.testing import CliRunner

from kdgrid.cli import app
from kdgrid.plan import expand
from kdgrid.store import open_store
from kdgrid.store.queries import study_reproducibility
from kdgrid.study.schema import Study

runner = CliRunner()


def report_json(tmp_path: Path, df, *args: str) -> dict:
    path = tmp_path / "table.csv"
    df.to_csv(path, index=False)
    res = runner.invoke(
        app, ["report", "--from", str(path), "--format", "json", "--no-plots", "--out", str(tmp_path / "rep"), *args]
    )
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout[res.stdout.index("{") : res.stdout.rindex("}") + 1])


def anova_terms(data: dict, task: str) -> dict[str, dict]:
    return {r["term"]: r for r in data["anova"] if r["task"] == task}


def test_sleep_paired_t_test_through_cli(tmp_path: Path) -> None:
    # R: t.test(extra ~ group, data = sleep, paired = TRUE): t = -4.0621, df = 9, p-value = 0.002833,
    #    95 percent CI -2.4598858 -0.7001142, mean difference -1.58 (group 1 - group 2)
    data = report_json(tmp_path, sleep_df(), "--metric", "extra", "--factors", "group", "--baseline", "group=2")
    row = next(r for r in data["paired_tests"] if r["condition"] == "group=1")
    assert row["t"] == pytest.approx(-4.0621, rel=5e-5)
    assert row["df"] == 9
    assert row["p"] == pytest.approx(0.002833, rel=2e-4)
    assert (row["ci_low"], row["ci_high"]) == (pytest.approx(-2.4598858, rel=1e-6), pytest.approx(-0.7001142, rel=1e-6))
    assert row["mean_diff"] == pytest.approx(-1.58)


def test_toothgrowth_anova_through_cli(tmp_path: Path) -> None:
    # R: anova(lm(len ~ supp * factor(dose), data = ToothGrowth))
    #   supp 1 205.35 F 15.572 p 0.0002312; dose 2 2426.43 F 92.000; supp:dose 2 108.32 F 4.107 p 0.02186; Residuals 54 712.11
    data = report_json(tmp_path, tooth_df(), "--metric", "len", "--factors", "supp,dose")
    t = anova_terms(data, "all")
    assert t["supp"]["F"] == pytest.approx(15.572, rel=5e-5) and t["supp"]["p"] == pytest.approx(0.0002312, rel=5e-4)
    assert t["dose"]["F"] == pytest.approx(92.000, rel=5e-5) and t["dose"]["sum_sq"] == pytest.approx(2426.43, rel=5e-6)
    assert t["supp:dose"]["F"] == pytest.approx(4.107, rel=2e-4) and t["supp:dose"]["p"] == pytest.approx(
        0.02186, rel=5e-4
    )
    assert t["Residual"]["df"] == 54 and t["Residual"]["sum_sq"] == pytest.approx(712.11, abs=0.005)


@pytest.mark.parametrize(
    ("typ", "expected"),
    [
        # R: car::Anova(lm(conformity ~ fcategory * partner.status, data = Moore, contrasts = contr.sum), type = 2 / 3)
        # type II at full precision (the parameters package's tests, same model)
        (
            "2",
            {
                "fcategory": (0.276958464357662, 0.759564473545402),
                "partner.status": (10.1206921894899, 0.00287422991075648),
                "fcategory:partner.status": (4.18462326063615, 0.0225724417916786),
            },
        ),
        (
            "3",
            {
                "fcategory": (0.8589, 0.431492),
                "partner.status": (11.4250, 0.001657),
                "fcategory:partner.status": (4.1846, 0.022572),
            },
        ),
    ],
)
def test_unbalanced_moore_anova_through_cli(tmp_path: Path, typ: str, expected: dict) -> None:
    data = report_json(
        tmp_path, moore_df(), "--metric", "conformity", "--factors", "fcategory,partner.status", "--anova-type", typ
    )
    t = anova_terms(data, "all")
    for term, (f, p) in expected.items():
        # R prints 4-5 significant digits: compare to half a unit in the last printed place
        assert t[term]["F"] == pytest.approx(f, rel=2e-4)
        assert t[term]["p"] == pytest.approx(p, rel=5e-4)


def test_seed_block_through_cli_and_its_switch(tmp_path: Path) -> None:
    # Montgomery, Design and Analysis of Experiments (8th ed.), Example 4.1 (RCBD, batches as blocks), Table 4.4:
    #   pressure SS 178.17 df 3 F0 = 8.11 P = 0.0019; blocks SS 192.25 df 5; error SS 109.89 df 15
    yields = {
        8500: [90.3, 89.2, 98.2, 93.9, 87.4, 97.9],
        8700: [92.5, 89.5, 90.6, 94.7, 87.0, 95.8],
        8900: [85.5, 90.8, 89.6, 86.2, 88.0, 93.4],
        9100: [82.5, 89.5, 85.6, 87.4, 78.9, 90.7],
    }
    df = pd.DataFrame([{"psi": k, "seed": b + 1, "y": v} for k, vs in yields.items() for b, v in enumerate(vs)])
    data = report_json(tmp_path, df, "--metric", "y", "--factors", "psi")
    t = anova_terms(data, "all")
    assert t["psi"]["F"] == pytest.approx(8.11, abs=0.005) and t["seed"]["sum_sq"] == pytest.approx(192.25, abs=0.005)
    assert t["Residual"]["df"] == 15
    assert any(d.startswith("Seed is a block") for d in data["anova_design"])
    # scipy.stats.f_oneway(*yields.values()) -> F = 3.9313, p = 0.023448: the same data without the block
    off = anova_terms(report_json(tmp_path, df, "--metric", "y", "--factors", "psi", "--no-block-seed"), "all")
    assert "seed" not in off and off["Residual"]["df"] == 20 and off["psi"]["F"] == pytest.approx(3.9313, abs=5e-4)


def test_report_files_and_bad_options(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    tooth_df().to_csv(path, index=False)
    res = runner.invoke(
        app,
        [
            "report",
            "--from",
            str(path),
            "--metric",
            "len",
            "--format",
            "md",
            "--no-plots",
            "--out",
            str(tmp_path / "r"),
        ],
    )
    assert res.exit_code == 0, res.output
    for name in ("report.md", "report.html", "report.json", "report.tex", "cells.csv", "anova.csv"):
        assert (tmp_path / "r" / name).is_file()
    bad = runner.invoke(app, ["report", "--from", str(path), "--format", "pdf"])
    assert bad.exit_code != 0 and "--format: 'pdf' is not allowed (allowed: table, md, csv, latex, html, json)" in str(
        bad.exception
    )


# --------------------------------------------------------------------------- reproducibility (from a store)

STUDY_TEXT = "name: g\ntasks: [cola, stsb]\nseeds: 2\ngrid:\n  objective.prediction.temperature: [1.0, 4.0]\n"
STUDY_SHA = hashlib.sha256(STUDY_TEXT.encode()).hexdigest()
START = dt.datetime(2026, 1, 5, 10, 0, 0)
VERSIONS = {
    "python": "3.12.3",
    "kdgrid": "0.1.0",
    "torch": "2.13.0",
    "transformers": "4.56.1",
    "kdgrid_git": "c0ffee" * 6 + "ab",
}
DATA = {
    "cola": {"train": "sha256:" + "a" * 64, "dev": "sha256:" + "b" * 64},
    "stsb": {"train": "sha256:" + "c" * 64, "dev": "sha256:" + "d" * 64},
}


def _teacher(task: str, model: str = "minilm-l6", key: str | None = None) -> dict[str, Any]:
    return {
        "key": key or f"{task}-0123456789abcdef0123",
        "task": task,
        "model": model,
        "seed": 0,
        "path": f"/cache/teachers/{task}",
        "metrics": {"mcc": 0.5},
        "majority": 0.691,
        "flagged": False,
    }


def _result(run: Any, i: int, *, status: str = "done", **extra: Any) -> dict[str, Any]:
    """Run i of the grid: started i minutes after START, 50 s long, with everything a real run records."""
    started = START + dt.timedelta(minutes=i)
    name = "mcc" if run.task == "cola" else "pearson"
    return {
        "run_id": run.run_id,
        "task": run.task,
        "seed": run.seed,
        "config": run.config_data(),
        "status": status,
        "started": started.isoformat(sep=" "),
        "finished": (started + dt.timedelta(seconds=50)).isoformat(sep=" "),
        "duration_s": 50.0,
        "host": "node1",
        "device": "cpu (x86_64)",
        "versions": VERSIONS,
        "data": DATA.get(run.task),
        "teacher": _teacher(run.task),
        "metrics": [{"stage": "final", "split": "dev", "name": name, "value": 0.4 + 0.01 * i}],
        **extra,
    }


def build_store(root: Path) -> tuple[Path, list[Any]]:
    """Study g: 8 planned runs, 6 done (4 cola, 2 stsb; one with other library versions, one without data
    hashes), 1 failed, 1 pending. Study h in the same store (and a run of no study) have runs, a host and
    teachers that g's report must not show."""
    db = root / "k.duckdb"
    planned = expand(
        Study.model_validate(
            {
                "name": "g",
                "tasks": ["cola", "stsb"],
                "seeds": 2,
                "grid": {"objective.prediction.temperature": [1.0, 4.0]},
            }
        )
    )
    other = expand(Study.model_validate({"name": "h", "tasks": ["sst2"], "seeds": 1}))
    stsb = [i for i, r in enumerate(planned) if r.task == "stsb"]
    assert stsb == [4, 5, 6, 7]  # expand's order: the counts below rest on it
    results = [_result(r, i) for i, r in enumerate(planned[:7])]
    results[6] = {**results[6], "status": "failed", "error": "loss became nan", "data": None, "versions": {}}
    results[1] = {**results[1], "versions": {**VERSIONS, "torch": "2.12.0"}}
    results[stsb[0]] = {**results[stsb[0]], "data": None}
    early, late = START - dt.timedelta(hours=1), START + dt.timedelta(hours=4)
    results += [
        {
            **_result(r, 0),
            "started": early.isoformat(sep=" "),
            "finished": late.isoformat(sep=" "),
            "host": "other-host",
            "teacher": _teacher("sst2"),
        }
        for r in other
    ]
    stray_teacher = _teacher("cola", "bert-base", "cola-bert")
    results.append({**_result(planned[0], 0), "run_id": "stray", "teacher": stray_teacher})
    with open_store(db) as s:
        s.register_study("g", str(root / "studies" / "g.yaml"), STUDY_TEXT, STUDY_SHA, planned)
        s.register_study("h", "h.yaml", "name: h\n", "0" * 64, other)
        s.ingest_results(results)
    return db, planned


def test_study_reproducibility_counts_only_this_study(tmp_path: Path) -> None:
    db, _ = build_store(tmp_path)
    with open_store(db, read_only=True) as s:
        info = study_reproducibility(s, "g")
    assert (info.path, info.sha256, info.text) == (str(tmp_path / "studies" / "g.yaml"), STUDY_SHA, STUDY_TEXT)
    assert info.status_counts == {"done": 6, "failed": 1, "pending": 1}
    # 7 runs started 1 min apart, 50 s each: 10:00:00 to 10:06:50; study h's runs (09:00 to 14:00) do not count.
    assert (info.first_started, info.last_finished) == (START, START + dt.timedelta(minutes=6, seconds=50))
    assert info.wall_s == 410.0 and info.run_time_s == 350.0
    assert [(c.version, c.commit, c.runs) for c in info.code] == [("0.1.0", VERSIONS["kdgrid_git"], 6)]
    assert sorted((s.versions["torch"], s.runs) for s in info.libraries) == [("2.12.0", 1), ("2.13.0", 5)]
    assert "kdgrid" not in info.libraries[0].versions and "kdgrid_git" not in info.libraries[0].versions
    assert [(m.host, m.device, m.runs) for m in info.machines] == [("node1", "cpu (x86_64)", 6)]
    assert [(d.task, d.split, d.hash, d.runs) for d in info.data] == [
        ("cola", "train", DATA["cola"]["train"], 4),
        ("cola", "dev", DATA["cola"]["dev"], 4),
        ("stsb", "train", DATA["stsb"]["train"], 1),
        ("stsb", "dev", DATA["stsb"]["dev"], 1),
        ("stsb", None, None, 1),
    ]
    assert [(t.key, t.task, t.runs) for t in info.teachers] == [
        ("cola-0123456789abcdef0123", "cola", 4),
        ("stsb-0123456789abcdef0123", "stsb", 2),
    ]


def report_files(tmp_path: Path, db: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    monkeypatch.chdir(tmp_path)  # commands then show paths relative to here
    res = runner.invoke(app, ["report", "--study", "g", "--db", str(db), "--no-plots", "--out", "rep"])
    assert res.exit_code == 0, res.output
    assert "Reproducibility" in res.stdout and "kdgrid run studies/g.yaml --db k.duckdb" in res.stdout
    return {name: (tmp_path / "rep" / f"report.{name}").read_text(encoding="utf-8") for name in ("md", "html", "json")}


def test_report_has_reproducibility_section_in_md_html_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db, _ = build_store(tmp_path)
    files = report_files(tmp_path, db, monkeypatch)
    run_cmd, report_cmd = "kdgrid run studies/g.yaml --db k.duckdb", "kdgrid report --study g --db k.duckdb"
    for fmt in ("md", "html"):
        text = files[fmt]
        assert text.count("Reproducibility") >= 1 and STUDY_SHA in text
        assert run_cmd in text and report_cmd in text and f"sha256sum studies/g.yaml  # expect {STUDY_SHA}" in text
        assert all(h in text for d in DATA.values() for h in d.values())
        assert VERSIONS["kdgrid_git"] in text and "2.12.0" in text and "node1" in text
        assert "cola-0123456789abcdef0123" in text
        assert "other-host" not in text and "sst2-" not in text and "cola-bert" not in text  # study h, stray run
        assert "not recorded for 1 of 6 done runs" in text
        assert "8: 6 done, 1 failed, 1 pending" in text
        assert "2026-01-05 10:00:00 to 2026-01-05 10:06:50 UTC (6 min 50 s)" in text
        assert "5 min 50 s (sum of the runs" in text
    md = files["md"]
    assert "## Reproducibility" in md and f"```yaml\n{STUDY_TEXT}```" in md
    assert "```bash\n" in md and "matches the stored study text" in md
    html_text = files["html"]
    assert "<details><summary>Study file studies/g.yaml" in html_text
    assert html.escape(STUDY_TEXT) in html_text and 'href="#reproducibility"' in html_text
    rep = json.loads(files["json"])["reproducibility"]
    assert rep["study_file"] == {
        "path": str(tmp_path / "studies" / "g.yaml"),
        "sha256": STUDY_SHA,
        "sha256_matches_text": True,
        "text": STUDY_TEXT,
    }
    assert rep["commands"] == {
        "check": f"sha256sum studies/g.yaml  # expect {STUDY_SHA}",
        "run": run_cmd,
        "report": report_cmd,
    }
    assert rep["runs"] == {"total": 8, "by_status": {"done": 6, "failed": 1, "pending": 1}}
    assert rep["time"] == {
        "first_started_utc": "2026-01-05T10:00:00",
        "last_finished_utc": "2026-01-05T10:06:50",
        "wall_s": 410.0,
        "run_time_s": 350.0,
    }
    assert rep["data"]["recorded"] is True and rep["data"]["not_recorded"] == [{"task": "stsb", "runs": 1}]
    assert {"task": "cola", "split": "train", "hash": DATA["cola"]["train"], "runs": 4} in rep["data"]["files"]
    assert rep["kdgrid"] == [{"version": "0.1.0", "commit": VERSIONS["kdgrid_git"], "runs": 6}]
    assert [t["task"] for t in rep["teachers"]] == ["cola", "stsb"]


def test_store_without_data_column_says_not_recorded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db, _ = build_store(tmp_path)
    with duckdb.connect(str(db)) as con:
        con.execute("ALTER TABLE runs DROP COLUMN data")  # as a store written before runs.data existed
    files = report_files(tmp_path, db, monkeypatch)
    for fmt in ("md", "html"):
        assert "not recorded (the store predates data hashes)" in files[fmt]
        assert "sha256:" + "a" * 64 not in files[fmt]
    rep = json.loads(files["json"])["reproducibility"]
    assert rep["data"] == {
        "recorded": False,
        "files": [],
        "not_recorded": [{"task": "cola", "runs": 4}, {"task": "stsb", "runs": 2}],
    }
    with duckdb.connect(str(db), read_only=True) as con:  # a report never migrates the store
        assert "data" not in [r[0] for r in con.execute("DESCRIBE runs").fetchall()]


def test_report_all_writes_every_study_and_the_index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db, _ = build_store(tmp_path)
    monkeypatch.chdir(tmp_path)
    res = runner.invoke(app, ["report", "--all", "--db", str(db), "--no-plots", "--out", "rep"])
    # Study h's only run has no sst2 accuracy: it gets no report, g still does, and the exit says so.
    assert res.exit_code != 0 and "no report for h" in str(res.exception)
    assert "study h: metric column 'accuracy'" in res.output
    assert (tmp_path / "rep" / "g" / "report.html").is_file() and not (tmp_path / "rep" / "h").exists()
    assert json.loads((tmp_path / "rep" / "g" / "report.json").read_text(encoding="utf-8"))["summary"]["headline"]
    page = (tmp_path / "rep" / "index.html").read_text(encoding="utf-8")
    assert 'href="g/report.html"' in page and "h/report" not in page
    assert "1 undecided of 1 comparisons" in page  # g's headline


def _two_method_table() -> pd.DataFrame:
    # RTE accuracy, two methods, 5 seeds; the baseline sits on 0.53, so only a floor of 0.53 or more marks it.
    base = [0.52, 0.53, 0.53, 0.54, 0.53]
    rows = [{"task": "rte", "seed": s, "method": "a", "accuracy": v} for s, v in enumerate(base)]
    rows += [{"task": "rte", "seed": s, "method": "b", "accuracy": v + 0.02 + 0.001 * s} for s, v in enumerate(base)]
    return pd.DataFrame(rows)


@pytest.mark.parametrize("floor", [0.2, 0.6])
def test_teachers_file_gives_sensitivity_and_floors(tmp_path: Path, floor: float) -> None:
    teachers = tmp_path / "teachers.csv"
    teachers.write_text(f"# from an old report\ntask,teacher,floor\nrte,0.567,{floor}\n", encoding="utf-8")
    rep = report_json(
        tmp_path, _two_method_table(), "--factors", "method", "--baseline", "method=a", "--teachers", str(teachers)
    )
    assert {r["task"] for r in rep["sensitivity"]} == {"rte"}
    assert {r["teacher"] for r in rep["sensitivity"]} == {0.567}
    (row,) = rep["paired_tests"]
    assert row["floor"] == floor and row["baseline_at_floor"] is (floor == 0.6)
    without = report_json(tmp_path, _two_method_table(), "--factors", "method", "--baseline", "method=a")
    assert not without["sensitivity"] and without["paired_tests"][0]["floor"] is None


def test_teachers_needs_from_and_raw_units(tmp_path: Path) -> None:
    teachers = tmp_path / "teachers.csv"
    teachers.write_text("task,teacher\nrte,56.7\n", encoding="utf-8")
    res = runner.invoke(app, ["report", "--teachers", str(teachers)])
    assert res.exit_code != 0 and "only with --from" in str(res.exception)
    table = tmp_path / "t.csv"
    _two_method_table().to_csv(table, index=False)
    res = runner.invoke(
        app, ["report", "--from", str(table), "--teachers", str(teachers), "--no-plots", "--out", str(tmp_path / "rep")]
    )
    assert res.exit_code != 0 and "raw units" in str(res.exception)
    assert not (tmp_path / "rep").exists()


def test_exported_results_table_is_titled_by_its_folder(tmp_path: Path) -> None:
    folder = tmp_path / "my-study"
    folder.mkdir()
    _two_method_table().to_csv(folder / "results.csv", index=False)
    res = runner.invoke(
        app,
        [
            "report",
            "--from",
            str(folder / "results.csv"),
            "--format",
            "md",
            "--no-plots",
            "--factors",
            "method",
            "--out",
            str(tmp_path / "rep"),
        ],
    )
    assert res.exit_code == 0, res.output
    assert res.stdout.startswith("# kdgrid report: my-study")
