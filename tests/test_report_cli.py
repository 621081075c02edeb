"""`kdgrid report --from`: published R values reproduced through the CLI (to 4 significant digits)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kdgrid.cli import app
from test_analyze_reference import moore_df, sleep_df, tooth_df

runner = CliRunner()


def report_json(tmp_path: Path, df, *args: str) -> dict:
    path = tmp_path / "table.csv"
    df.to_csv(path, index=False)
    res = runner.invoke(app, ["report", "--from", str(path), "--format", "json", "--no-plots", "--out", str(tmp_path / "rep"), *args])
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout[res.stdout.index("{"):res.stdout.rindex("}") + 1])


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
    assert t["supp:dose"]["F"] == pytest.approx(4.107, rel=2e-4) and t["supp:dose"]["p"] == pytest.approx(0.02186, rel=5e-4)
    assert t["Residual"]["df"] == 54 and t["Residual"]["sum_sq"] == pytest.approx(712.11, abs=0.005)


@pytest.mark.parametrize(("typ", "expected"), [
    # R: car::Anova(lm(conformity ~ fcategory * partner.status, data = Moore, contrasts = contr.sum), type = 2 / 3)
    # type II at full precision (the parameters package's tests, same model)
    ("2", {"fcategory": (0.276958464357662, 0.759564473545402), "partner.status": (10.1206921894899, 0.00287422991075648),
           "fcategory:partner.status": (4.18462326063615, 0.0225724417916786)}),
    ("3", {"fcategory": (0.8589, 0.431492), "partner.status": (11.4250, 0.001657), "fcategory:partner.status": (4.1846, 0.022572)}),
])
def test_unbalanced_moore_anova_through_cli(tmp_path: Path, typ: str, expected: dict) -> None:
    data = report_json(tmp_path, moore_df(), "--metric", "conformity", "--factors", "fcategory,partner.status", "--anova-type", typ)
    t = anova_terms(data, "all")
    for term, (f, p) in expected.items():
        # R prints 4-5 significant digits: compare to half a unit in the last printed place
        assert t[term]["F"] == pytest.approx(f, rel=2e-4)
        assert t[term]["p"] == pytest.approx(p, rel=5e-4)


def test_report_files_and_bad_options(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    tooth_df().to_csv(path, index=False)
    res = runner.invoke(app, ["report", "--from", str(path), "--metric", "len", "--format", "md", "--no-plots", "--out", str(tmp_path / "r")])
    assert res.exit_code == 0, res.output
    for name in ("report.md", "report.html", "report.json", "report.tex", "cells.csv", "anova.csv"):
        assert (tmp_path / "r" / name).is_file()
    bad = runner.invoke(app, ["report", "--from", str(path), "--format", "pdf"])
    assert bad.exit_code != 0 and "--format: 'pdf' is not allowed (allowed: table, md, csv, latex, html, json)" in str(bad.exception)
