"""kdgrid.report: every format from a hand-built Analysis, plots, and empty sections; and from real analyze output.

Most tests use a stand-in with the contract's attribute names (docs/CONTRACTS.md), not
``kdgrid.analyze.Analysis``: the report must accept any object shaped like it, and those tests must not
depend on the statistics being right (test_analyze_* pins those). ``test_real_analysis_renders`` and
``test_collapsed_cells_and_the_anova_model_reach_every_format`` render what ``analyze_table`` returns.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import html
import json
import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from conftest import PAIRED_TEST_COLUMNS
from scipy import stats

from kdgrid import analyze
from kdgrid.errors import KdgridError
from kdgrid.report import (
    FORMATS,
    JSON_ANOVA_KEYS,
    JSON_PAIRED_KEYS,
    REPORT_FILES,
    make_plots,
    paper_table,
    read_section_csv,
    render,
    render_many,
    search_plots,
)
from kdgrid.report.plots import sensitivity_figure
from kdgrid.report.tables import condition_labels, fmt_mean_sd, fmt_metric, fmt_p
from kdgrid.store.queries import CodeVersion, DataFile, LibrarySet, Machine, Reproducibility, TeacherUsed

ATT = "objective.intermediate.attention"
MAP = "objective.mapping.kind"
TASKS = {"cola": "mcc", "sst2": "accuracy"}
SEEDS = [1, 2, 3]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
T_975_DF2 = 4.302652729911275  # scipy.stats.t.ppf(0.975, 2): 95% CI half-width factor for 3 seeds


@dataclass
class FakeAnalysis:
    """Same attribute names as kdgrid.analyze.Analysis; nothing else."""

    cells: pd.DataFrame
    paired_tests: pd.DataFrame
    anova: pd.DataFrame
    diagnostics: pd.DataFrame
    sensitivity: pd.DataFrame
    sensitivity_summary: dict[str, object]
    power: pd.DataFrame
    warnings: list[str] = field(default_factory=list)
    mapping_weights: pd.DataFrame | None = None


def cell_name(att: str, kind: str) -> str:
    return f"{ATT}={att}, {MAP}={kind}"


def make_analysis() -> FakeAnalysis:
    """2 factors (2 × 2 cells) × 2 tasks × 3 seeds, with numbers that hang together (the CI
    contains the mean, dz = mean/sd of the differences); p values are made up."""
    rng = np.random.default_rng(0)
    base = {"cola": 0.42, "sst2": 0.90}
    effect = {("mse", "uniform"): 0.0, ("kl", "uniform"): 0.03, ("mse", "learnable"): 0.01, ("kl", "learnable"): 0.05}
    runs: dict[tuple[str, str], np.ndarray] = {}
    cell_rows: list[dict[str, Any]] = []
    for task, metric in TASKS.items():
        for (att, kind), eff in effect.items():
            vals = base[task] + eff + rng.normal(0, 0.01, len(SEEDS))
            runs[(task, cell_name(att, kind))] = vals
            m, sd = float(vals.mean()), float(vals.std(ddof=1))
            half = T_975_DF2 * sd / math.sqrt(len(vals))
            cell_rows.append(
                {
                    "task": task,
                    "metric": metric,
                    "cell": cell_name(att, kind),
                    ATT: att,
                    MAP: kind,
                    "n": len(vals),
                    "mean": m,
                    "sd": sd,
                    "ci_low": m - half,
                    "ci_high": m + half,
                    "seeds": list(SEEDS),
                    "values": [float(v) for v in vals],
                }
            )
    baseline = cell_name("mse", "uniform")
    paired_rows, power_rows = [], []
    for task in TASKS:
        for att, kind in effect:
            cond = cell_name(att, kind)
            if cond == baseline:
                continue
            d = runs[(task, cond)] - runs[(task, baseline)]
            half = T_975_DF2 * d.std(ddof=1) / math.sqrt(3)
            dz = d.mean() / d.std(ddof=1)
            t, p = dz * math.sqrt(3), 0.004 if att == "kl" else 0.3
            shalf = stats.t.ppf(1 - 0.05 / 6, 2) * d.std(ddof=1) / math.sqrt(3)  # Bonferroni over m = 3
            paired_rows.append(
                {
                    "task": task,
                    "metric": TASKS[task],
                    "condition": cond,
                    "baseline": baseline,
                    "n": 3,
                    "mean_diff": d.mean(),
                    "ci_low": d.mean() - half,
                    "ci_high": d.mean() + half,
                    "sci_low": d.mean() - shalf,
                    "sci_high": d.mean() + shalf,
                    "t": t,
                    "df": 2,
                    "p": p,
                    "test": "paired t",
                    "p_adj": min(1.0, p * 3),
                    "family": f"{task}: every condition vs the baseline (3, holm)",
                    "family_size": 3,
                    "dz": dz,
                    "wilcoxon_p": 0.25,
                    "margin": 0.01,
                    "p_equiv": 0.5,
                    "p_equiv_adj": 1.0,
                    "verdict": "different" if p * 3 < 0.05 else "inconclusive",
                    "baseline_mean": base[task],
                    "floor": 0.0,
                    "baseline_at_floor": False,
                    "note": "Wilcoxon skipped: ties" if (task, att, kind) == ("sst2", "kl", "learnable") else "",
                }
            )
            power_rows.append(
                {
                    "task": task,
                    "condition": cond,
                    "n": 3,
                    "dz": dz,
                    "dz_ci_low": dz - 2,
                    "dz_ci_high": dz + 2,
                    "family_size": 3,
                    "alpha_used": 0.05 / 3,
                    "target_dz": 0.5,
                    "n_for_target": 45,
                }
            )
    anova_rows = []
    for task in TASKS:
        anova_rows += [
            {"task": task, "term": ATT, "df": 1.0, "sum_sq": 3e-3, "F": 25.0, "p": 0.001, "partial_eta2": 0.76},
            {"task": task, "term": MAP, "df": 1.0, "sum_sq": 4e-4, "F": 3.1, "p": 0.12, "partial_eta2": 0.28},
            {
                "task": task,
                "term": f"{ATT}:{MAP}",
                "df": 1.0,
                "sum_sq": 1e-5,
                "F": 0.1,
                "p": 0.76,
                "partial_eta2": 0.01,
            },
            {
                "task": task,
                "term": "Residual",
                "df": 8.0,
                "sum_sq": 8e-4,
                "F": float("nan"),
                "p": float("nan"),
                "partial_eta2": float("nan"),
            },
        ]
    diagnostics = pd.DataFrame(
        [
            {"task": t, "check": c, "value": v, "note": n}
            for t in TASKS
            for c, v, n in [
                ("balance", "balanced", ""),
                ("missing_cells", 0, ""),
                ("shapiro_p", 0.41, "residuals look normal"),
                ("levene_p", 0.77, ""),
            ]
        ]
    )
    teacher = {"cola": 0.55, "sst2": 0.92}
    sens_rows = []
    for r in cell_rows:
        gap = teacher[r["task"]] - r["mean"]
        floor = {"cola": 0.0, "sst2": 0.5}[r["task"]]
        ret = (r["mean"] - floor) / (teacher[r["task"]] - floor)
        sens_rows.append(
            {
                "task": r["task"],
                "metric": r["metric"],
                "cell": r["cell"],
                "teacher": teacher[r["task"]],
                "floor": floor,
                "student_mean": r["mean"],
                "student_sd": r["sd"],
                "gap": gap,
                "gap_ci_low": gap - 0.02,
                "gap_ci_high": gap + 0.02,
                "retention": ret,
                "retention_ci_low": ret - 0.05,
                "retention_ci_high": ret + 0.05,
                "n": 3,
                "rank": 1,
                "train_size": {"cola": 8551, "sst2": 67349}[r["task"]],
            }
        )
    mw = []
    for task in ("cola",):  # one task keeps the test plots few (drawing is the slow part)
        for att in ("mse", "kl"):
            for seed in SEEDS:
                for epoch in (0, 1):
                    for s in (1, 2):
                        w = rng.dirichlet(np.ones(6) * (1 + 5 * epoch))
                        mw += [
                            {
                                "task": task,
                                "cell": cell_name(att, "learnable"),
                                "seed": seed,
                                "epoch": epoch,
                                "student_layer": s,
                                "teacher_layer": t + 1,
                                "weight": float(w[t]),
                            }
                            for t in range(6)
                        ]
    return FakeAnalysis(
        cells=pd.DataFrame(cell_rows),
        paired_tests=pd.DataFrame(paired_rows),
        anova=pd.DataFrame(anova_rows),
        diagnostics=diagnostics,
        sensitivity=pd.DataFrame(sens_rows),
        sensitivity_summary={"spearman_rho": -1.0, "spearman_p": 1.0, "n_tasks": 2, "method": "exact", "note": ""},
        power=pd.DataFrame(power_rows),
        warnings=["baseline chosen as the first level of every factor", "only 3 seeds: power is low"],
        mapping_weights=pd.DataFrame(mw),
    )


def empty_analysis() -> FakeAnalysis:
    a = make_analysis()
    return FakeAnalysis(
        cells=a.cells.iloc[0:0],
        paired_tests=pd.DataFrame(),
        anova=pd.DataFrame(),
        diagnostics=pd.DataFrame(),
        sensitivity=pd.DataFrame(),
        sensitivity_summary={},
        power=pd.DataFrame(),
        warnings=[],
        mapping_weights=None,
    )


def only(**frames: Any) -> FakeAnalysis:
    """An analysis with just the given attributes filled, the rest empty."""
    return replace(empty_analysis(), **frames)


META = {"study": "tinybert-ablation", "metric": "auto", "correction": "holm", "seeds": [1, 2, 3]}


@pytest.fixture(scope="module")
def analysis() -> FakeAnalysis:
    return make_analysis()


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory: pytest.TempPathFactory, analysis: FakeAnalysis) -> Path:
    """Every format rendered once into one directory, drawing the plots once."""
    d = tmp_path_factory.mktemp("report")
    texts = render_many(analysis, fmts=FORMATS, out_dir=d, title="Ablation", meta=META)
    assert set(texts) == set(FORMATS)
    return d


@pytest.fixture(scope="module")
def reports(report_dir: Path) -> dict[str, tuple[Path, str]]:
    """format -> (directory, text) as written."""
    return {
        fmt: (report_dir, (report_dir / REPORT_FILES.get(fmt, "cells.csv")).read_text(encoding="utf-8"))
        for fmt in FORMATS
    }


# --------------------------------------------------------------------------- formatting


def test_number_formatting() -> None:
    assert fmt_metric(0.8534) == "85.3"
    assert fmt_metric(0.8534, scale=1.0, decimals=3) == "0.853"
    assert fmt_mean_sd(0.8534, 0.0123) == "85.3 ± 1.2"
    assert fmt_mean_sd(0.8534, float("nan")) == "85.3"  # one seed: no sd
    assert fmt_p(0.0004) == "<0.001"
    assert fmt_p(0.001) == "0.001"
    assert fmt_p(0.04567) == "0.046"
    assert fmt_p(float("nan")) == "–"


def test_paper_table_shape_values_and_caption(analysis: FakeAnalysis) -> None:
    t = paper_table(analysis.cells, "official metric")
    assert list(t.columns) == ["cola (mcc)", "sst2 (accuracy)", "Avg"]
    assert list(t.index) == [
        "attention=mse, kind=uniform",
        "attention=kl, kind=uniform",
        "attention=mse, kind=learnable",
        "attention=kl, kind=learnable",
    ]
    r = analysis.cells.iloc[0]
    assert t.iloc[0, 0] == f"{100 * r['mean']:.1f} ± {100 * r['sd']:.1f}"
    m = analysis.cells.groupby("cell", sort=False)["mean"].mean()  # mean of the two task means
    assert t.iloc[0]["Avg"] == f"{100 * m.iloc[0]:.1f}"
    assert "×100" in t.attrs["caption"] and "n = 3" in t.attrs["caption"]


def test_paper_table_without_scaling_and_baseline_first(analysis: FakeAnalysis) -> None:
    cola = analysis.cells[analysis.cells["task"] == "cola"]
    t = paper_table(cola, "MCC", scale100=False, decimals=3, baseline=cell_name("kl", "learnable"))
    assert list(t.columns) == ["cola", "Avg"]
    assert t.index[0] == "attention=kl, kind=learnable (baseline)"
    assert t.iloc[0, 0].startswith("0.")
    assert "not rescaled" in t.attrs["caption"]


def test_paper_table_keeps_percent_data_and_blank_avg_for_missing_task(analysis: FakeAnalysis) -> None:
    # A column that already holds percentages is not a GLUE metric name: it is shown as stored.
    pct = analysis.cells.assign(
        mean=analysis.cells["mean"] * 100,
        sd=analysis.cells["sd"] * 100,
        ci_low=analysis.cells["ci_low"] * 100,
        ci_high=analysis.cells["ci_high"] * 100,
        metric="accuracy_pct",
    )
    pct = pct.drop(index=pct.index[-1])  # one condition lacks sst2
    t = paper_table(pct, "accuracy (%)")
    assert t.iloc[0, 1] == f"{pct.iloc[4]['mean']:.1f} ± {pct.iloc[4]['sd']:.1f}"  # not ×100 again
    assert t.loc["attention=kl, kind=learnable", "Avg"] == "–"
    assert "blank where" in t.attrs["caption"]


def test_short_labels_disambiguate_clashing_factor_names() -> None:
    cells = pd.DataFrame(
        {
            "task": ["a", "a"],
            "metric": ["m", "m"],
            "cell": ["x", "y"],
            "student.init": ["rand", "teacher"],
            "teacher.init": ["ft", "ft"],
            "n": [1, 1],
            "mean": [0.1, 0.2],
            "sd": [np.nan, np.nan],
        }
    )
    assert condition_labels(cells) == {
        "x": "student.init=rand, teacher.init=ft",
        "y": "student.init=teacher, teacher.init=ft",
    }


# --------------------------------------------------------------------------- formats


def test_every_format_writes_its_files(report_dir: Path) -> None:
    assert sorted(p.name for p in report_dir.iterdir()) == sorted(
        [
            "report.txt",
            "report.md",
            "report.tex",
            "report.html",
            "report.json",
            "cells.csv",
            "paired_tests.csv",
            "anova.csv",
            "sensitivity.csv",
            "power.csv",
            "diagnostics.csv",
            "mapping_weights.csv",
            "mapping_convergence.csv",
            "warnings.txt",
            "plots",
        ]
    )
    stems = [
        "forest_cola",
        "forest_sst2",
        "interaction_cola",
        "interaction_sst2",
        "mapping_cola",
        "sensitivity_retention",
    ]
    plots = sorted((report_dir / "plots").iterdir())
    assert [p.name for p in plots] == sorted(f"{s}.{ext}" for s in stems for ext in ("png", "svg"))
    assert_images(plots)


def test_render_returns_what_it_writes(tmp_path: Path, analysis: FakeAnalysis) -> None:
    text = render(analysis, fmt="table", out_dir=tmp_path, title="t", meta={}, plots=False)
    assert (tmp_path / "report.txt").read_text(encoding="utf-8") == text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.txt"]  # no plots asked, none drawn


def test_unknown_format_is_a_user_error(analysis: FakeAnalysis) -> None:
    with pytest.raises(KdgridError, match="unknown report format 'pdf'; choose one of: table, md"):
        render(analysis, fmt="pdf", out_dir=None, title="x", meta={})


def test_table_has_every_section_and_marks_significance(reports: dict[str, tuple[Path, str]]) -> None:
    text = reports["table"][1]
    for heading in (
        "Cells",
        "Paired tests vs baseline",
        "ANOVA per task",
        "Diagnostics",
        "Sensitivity (tasks ranked within their metric)",
        "Power (prospective)",
        "Learned mapping weights",
        "Warnings",
    ):
        assert heading in text
    assert "p_adj" in text and "dz" in text and "partial η²" in text
    assert "different" in text and "inconclusive" in text  # the verdicts
    assert "sst2: every condition vs the baseline (3, holm)" in text  # the family is named
    assert "only 3 seeds: power is low" in text
    assert "study: tinybert-ablation" in text
    assert "spearman_rho = -1" in text


def test_table_never_crops_columns(analysis: FakeAnalysis) -> None:
    wide = render(analysis, fmt="table", out_dir=None, title="t", meta={}, plots=False, width=120)
    assert max(len(line) for line in wide.splitlines()) <= 120
    assert "Verdict" in wide
    narrow = render(analysis, fmt="table", out_dir=None, title="t", meta={}, plots=False, width=70)
    # Too narrow for the whole paired table: labels abbreviated (with a key), optional columns left
    # out and named, never cropped; the files keep every column.
    assert max(len(line) for line in narrow.splitlines()) <= 70
    assert "Left out at this width: Wilcoxon p" in narrow
    assert "0.012" in narrow and "Verdict" in narrow
    tiny = render(analysis, fmt="table", out_dir=None, title="t", meta={}, plots=False, width=40)
    # Narrower still: rows become wrapped "column: value" lines, pairs never split.
    assert "p_adj: 0.012" in tiny and "95% CI (unadj.):" in tiny


def test_json_is_valid_with_exact_keys(reports: dict[str, tuple[Path, str]], analysis: FakeAnalysis) -> None:
    obj = json.loads(reports["json"][1])
    for key in ("cells", "paired_tests", "anova", "sensitivity", "power", "warnings", "meta"):
        assert key in obj
    # report.json moves the notes to their own list ("paired_test_notes"): every other column, in order.
    assert tuple(c for c in PAIRED_TEST_COLUMNS if c != "note") == JSON_PAIRED_KEYS
    assert JSON_ANOVA_KEYS == ("task", "term", "df", "sum_sq", "F", "p", "partial_eta2")
    assert all(list(r) == list(JSON_PAIRED_KEYS) for r in obj["paired_tests"])
    assert all(list(r) == list(JSON_ANOVA_KEYS) for r in obj["anova"])
    assert len(obj["cells"]) == 8 and obj["cells"][0]["seeds"] == SEEDS
    assert obj["cells"][0]["values"] == analysis.cells.iloc[0]["values"]
    assert obj["paired_tests"][-1]["verdict"] == "different"
    assert obj["anova"][3]["F"] is None
    assert obj["paired_test_notes"] == [
        {"task": "sst2", "condition": cell_name("kl", "learnable"), "note": "Wilcoxon skipped: ties"}
    ]
    assert obj["meta"] == META and obj["warnings"] == analysis.warnings
    assert "NaN" not in reports["json"][1]


def test_csv_round_trip(reports: dict[str, tuple[Path, str]], analysis: FakeAnalysis) -> None:
    d = reports["csv"][0]
    for name in ("cells", "paired_tests", "anova", "sensitivity", "power", "mapping_weights"):
        back = read_section_csv(d / f"{name}.csv")
        orig = getattr(analysis, name)
        pd.testing.assert_frame_equal(back, orig.fillna({"note": ""}) if "note" in orig else orig, check_dtype=False)
    diag = read_section_csv(d / "diagnostics.csv")
    assert list(diag["value"][:3]) == ["balanced", "0", "0.41"]  # mixed values stay text
    assert (d / "warnings.txt").read_text().splitlines() == analysis.warnings


def md_tables(text: str) -> list[list[list[str]]]:
    """Every pipe table in a Markdown text, as rows of cells (separator rows dropped)."""
    tables, cur = [], []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            if not set(line) <= set("|:- "):
                cur.append([c.strip() for c in line.strip("|").split(" | ")])
        elif cur:
            tables.append(cur)
            cur = []
    return tables


def test_markdown_cells_table_shape_and_plots(reports: dict[str, tuple[Path, str]], analysis: FakeAnalysis) -> None:
    d, text = reports["md"]
    first = md_tables(text)[0]
    # Pivot: factors' levels alone as row labels, tasks as columns, the teacher row last.
    assert first[0] == ["attention", "kind", "cola", "sst2"]
    assert len(first) - 1 == analysis.cells["cell"].nunique() + 2  # conditions + teacher + floor
    assert first[1][:2] == ["mse", "uniform"] and first[1][2].endswith("ᵇ")  # baseline first, marked
    assert first[-2][0] == "teacher" and first[-1][0] == "floor"
    assert not any("=" in c for row in first for c in row)  # never name=value chains
    assert "attention = mse, kind = uniform" in text  # the baseline named once, in the caption
    assert "![cola (mcc): cell means with 95% CI, a panel per level" in text
    for link in [line[line.index("](") + 2 : -1] for line in text.splitlines() if line.startswith("![")]:
        assert (d / link).stat().st_size > 0
    assert "**kl**" in text  # a significant paired row is marked


def test_latex_is_booktabs_and_escaped(reports: dict[str, tuple[Path, str]]) -> None:
    text = reports["latex"][1]
    assert text.startswith("\\documentclass") and text.rstrip().endswith("\\end{document}")
    assert text.count("\\toprule") == text.count("\\bottomrule") >= 7
    assert "$\\pm$" in text and "$p_{\\mathrm{adj}}$" in text and "partial $\\eta^2$" in text
    assert "objective.intermediate.attention" not in text.split("\\section*{Cells}")[1].split("\\end{table}")[0]
    body = text.split("\\begin{document}")[1]
    assert "±" not in body and "η" not in body and "ᵇ" not in body and "\\_" in body  # every special escaped
    assert "$^{b}$" in body  # the baseline mark of the pivot table


def test_html_is_self_contained_with_embedded_plots(reports: dict[str, tuple[Path, str]]) -> None:
    d, text = reports["html"]
    assert text.count('src="data:image/png;base64,') == 6  # 2 interaction, 2 forest, sensitivity, mapping
    assert text.count("<img") == 6
    assert "http://" not in text and "https://" not in text and "<script" not in text
    assert '<tr class="sig">' in text and "<table" in text
    assert (d / "plots" / "forest_cola.svg").stat().st_size > 0


def test_html_without_out_dir_still_embeds_plots(analysis: FakeAnalysis) -> None:
    cola_only = only(cells=analysis.cells[analysis.cells["task"] == "cola"])
    text = render(cola_only, fmt="html", out_dir=None, title="t", meta={})
    assert text.count("data:image/png;base64,") == 1
    assert "data:image" not in render(cola_only, fmt="html", out_dir=None, title="t", meta={}, plots=False)


@pytest.mark.parametrize("fmt", FORMATS)
def test_empty_sections_are_notes_not_crashes(tmp_path: Path, fmt: str) -> None:
    text = render(empty_analysis(), fmt=fmt, out_dir=tmp_path, title="Empty", meta={})
    assert text
    if fmt != "csv":
        assert (tmp_path / REPORT_FILES[fmt]).read_text(encoding="utf-8") == text
    if fmt == "json":
        obj = json.loads(text)
        assert obj["cells"] == obj["paired_tests"] == obj["anova"] == obj["power"] == []
    elif fmt == "csv":
        assert read_section_csv(tmp_path / "paired_tests.csv").empty
        assert list(pd.read_csv(tmp_path / "anova.csv").columns) == list(JSON_ANOVA_KEYS)
    else:
        assert "No paired tests" in text and "No ANOVA" in text and "No warnings" in text
        assert "Learned mapping weights" not in text  # optional and absent: no section at all
    assert not (tmp_path / "plots").exists()


def test_missing_attributes_and_missing_contract_columns(tmp_path: Path, analysis: FakeAnalysis) -> None:
    class Bare:
        cells = analysis.cells

    assert "No diagnostics" in render(Bare(), fmt="md", out_dir=None, title="t", meta={})
    broken = replace(analysis, anova=analysis.anova.drop(columns="partial_eta2"))
    with pytest.raises(ValueError, match=r"analysis.anova lacks contract columns \['partial_eta2'\]"):
        render(broken, fmt="json", out_dir=None, title="t", meta={})


def test_real_analysis_renders(tmp_path: Path) -> None:
    a = make_analysis()
    tidy = pd.DataFrame(
        [
            {"task": r["task"], "seed": s, ATT: r[ATT], MAP: r[MAP], "mcc" if r["task"] == "cola" else "accuracy": v}
            for r in a.cells.to_dict("records")
            for s, v in zip(r["seeds"], r["values"])
        ]
    )
    real = analyze.analyze_table(
        tidy,
        metric="auto",
        factors=[ATT, MAP],
        teacher_scores={"cola": 0.55, "sst2": 0.92},
        train_sizes={"cola": 8551, "sst2": 67349},
    )
    texts = render_many(real, fmts=FORMATS, out_dir=tmp_path, title="real", meta={}, plots=False)
    obj = json.loads(texts["json"])
    # The report carries analyze's numbers row for row, in every file, and they are the right ones: each
    # comparison's p is scipy's paired t test on the seeds the hand-built cells hold.
    values = {(r["task"], f"attention={r[ATT]}, kind={r[MAP]}"): r["values"] for r in a.cells.to_dict("records")}
    rows = obj["paired_tests"]
    assert len(rows) == len(real.paired_tests) == 6  # 3 conditions vs the baseline, per task
    for row, ref in zip(rows, real.paired_tests.to_dict("records")):
        assert [row[k] for k in ("task", "condition", "baseline", "verdict")] == [
            ref[k] for k in ("task", "condition", "baseline", "verdict")
        ]
        assert (row["mean_diff"], row["p"], row["p_adj"]) == pytest.approx((ref["mean_diff"], ref["p"], ref["p_adj"]))
        cond, base = values[(row["task"], row["condition"])], values[(row["task"], row["baseline"])]
        assert row["p"] == pytest.approx(stats.ttest_rel(cond, base).pvalue)  # scipy.stats.ttest_rel(cond, base)
        assert row["mean_diff"] == pytest.approx(np.mean(np.subtract(cond, base)))
    assert [(c["task"], c["cell"]) for c in obj["cells"]] == list(zip(real.cells["task"], real.cells["cell"]))
    assert [c["mean"] for c in obj["cells"]] == pytest.approx(list(real.cells["mean"]))
    # sensitivity from the teacher scores: the gap, and the retention where the floor is known (MCC's is 0; no
    # majority-class score was given for sst2's accuracy)
    assert len(obj["sensitivity"]) == len(real.cells) == 8
    for r in obj["sensitivity"]:
        teacher = {"cola": 0.55, "sst2": 0.92}[r["task"]]
        assert r["gap"] == pytest.approx(teacher - r["student_mean"])
        assert r["floor"] == (0.0 if r["task"] == "cola" else None)
        if r["floor"] is None:
            assert r["retention"] is None
        else:
            assert r["retention"] == pytest.approx(r["student_mean"] / teacher)
    back = read_section_csv(tmp_path / "paired_tests.csv")
    assert list(back["verdict"]) == list(real.paired_tests["verdict"])
    assert list(back["p_adj"]) == pytest.approx(list(real.paired_tests["p_adj"]))
    # each comparison's row in the Markdown table: its levels, Δ on the ×100 scale, its verdict
    for row in rows:
        att, kind = (part.split("=")[1] for part in row["condition"].split(", "))
        pattern = rf"\| \**{att}\** \| \**{kind}\** \| 3 \| {100 * row['mean_diff']:.1f} \|.*\| {row['verdict']} \|"
        assert re.search(pattern, texts["md"]), pattern


def test_collapsed_cells_and_the_anova_model_reach_every_format(tmp_path: Path) -> None:
    alpha = "objective.intermediate.alpha"
    rng = np.random.default_rng(1)
    rows = []
    for att in ("mse", "kl"):
        for a in (0.0, 1.0):
            for s in SEEDS:
                # at alpha = 0 the attention loss is never computed: one run, listed in both attention cells
                rid = f"{a}-{s}" + (f"-{att}" if a else "")
                rows.append(
                    {"run_id": rid, "task": "cola", "seed": s, ATT: att, alpha: a, "mcc": 0.3 + rng.normal(0, 0.01)}
                )
    tidy = pd.DataFrame(rows)
    tidy["mcc"] = tidy.groupby("run_id")["mcc"].transform("first")
    real = analyze.analyze_table(tidy, metric="auto", factors=[ATT, alpha], baseline={ATT: "mse", alpha: 1})
    texts = render_many(real, fmts=FORMATS, out_dir=tmp_path, title="collapsed", meta={}, plots=False)
    data = json.loads(texts["json"])
    assert [c["cell"] for c in data["cells"]][0] == "attention=kl|mse, alpha=0"
    assert data["cells"][0]["stands_for"] == ["attention=kl, alpha=0", "attention=mse, alpha=0"]
    assert any("merged factor attention×alpha" in d for d in data["anova_design"])
    assert any("crossed part plus a contrast" in d for d in data["anova_design"])
    assert [r["term"] for r in data["anova"]] == ["seed", f"{alpha}=0 vs rest", ATT, "Residual"]
    for fmt in ("md", "html", "latex", "table"):
        text = texts[fmt].replace("\\", "")
        assert "merged factor attention" in text and "Seed is a block" in text, fmt
        assert "kl|mse" in text, fmt  # the collapsed row, shown once
    assert "alpha=0 vs rest" in texts["md"]
    assert read_section_csv(tmp_path / "cells.csv")["stands_for"][0] == [
        "attention=kl, alpha=0",
        "attention=mse, alpha=0",
    ]


# --------------------------------------------------------------------------- plots


def assert_images(paths: list[Path]) -> None:
    assert paths
    for p in paths:
        data = p.read_bytes()
        assert len(data) > 1000, p
        if p.suffix == ".png":
            assert data.startswith(PNG_MAGIC), p
        else:
            assert p.suffix == ".svg" and b"<svg" in data[:2000], p


def test_make_plots_writes_png_and_svg(tmp_path: Path, analysis: FakeAnalysis) -> None:
    forest_only = only(paired_tests=analysis.paired_tests)
    paths = make_plots(forest_only, tmp_path)
    assert paths == [tmp_path / "plots" / f"forest_{t}.{e}" for t in ("cola", "sst2") for e in ("png", "svg")]
    assert_images(paths)


def test_sensitivity_heatmap_of_gap(analysis: FakeAnalysis) -> None:
    fig = sensitivity_figure(analysis.sensitivity, analysis.cells, value="gap")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["cola", "sst2"]  # larger gap on top
    assert "gap (teacher − student) ×100" in ax.get_title()
    assert ax.texts[0].get_text() == f"{100 * analysis.sensitivity['gap'][0]:.1f}"


def test_plots_with_one_factor_and_no_factor(tmp_path: Path, analysis: FakeAnalysis) -> None:
    cola = analysis.cells[analysis.cells["task"] == "cola"]
    one = cola.drop(columns=MAP).drop_duplicates(ATT)
    assert_images(make_plots(only(cells=one), tmp_path / "one", formats=("png",)))
    none = cola.drop(columns=[ATT, MAP])
    assert_images(make_plots(only(cells=none), tmp_path / "none", formats=("png",)))
    assert make_plots(empty_analysis(), tmp_path / "empty") == []


def search_frames() -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(1)
    n = 20
    alpha = rng.uniform(0, 1, n)
    temp = np.exp(rng.uniform(0, np.log(200), n))
    value = 0.8 - (alpha - 0.6) ** 2 - 0.01 * np.log(temp) + rng.normal(0, 0.005, n)
    state = ["COMPLETE"] * n
    state[5], state[9] = "PRUNED", "FAIL"
    history = pd.DataFrame({"number": range(n), "value": value, "state": state})
    history.loc[9, "value"] = np.nan
    params = pd.DataFrame(
        {"number": range(n), "alpha": alpha, "temperature": temp, "attention": rng.choice(["mse", "kl"], n)}
    )
    return history, params


def test_search_plots(tmp_path: Path) -> None:
    history, params = search_frames()
    paths = search_plots(
        history,
        {"alpha": 0.7, "temperature": 0.2, "attention": 0.1},
        params,
        out_dir=tmp_path,
        params=["alpha", "attention"],
        formats=("png",),
    )
    assert_images(paths)
    assert sorted({p.stem for p in paths}) == ["search_history", "search_importances", "search_slices"]
    # optuna's trials_dataframe() layout: params_<name> columns, TrialState-like states, no importances.
    optuna_like = history.assign(
        **{f"params_{c}": params[c] for c in ("alpha", "temperature")},
        state=[f"TrialState.{s}" for s in history["state"]],
    )
    # No importances: every parameter gets a slice (temperature spans > 2 decades: log axis).
    paths = search_plots(optuna_like, None, out_dir=tmp_path / "o", formats=("svg",))
    assert sorted(p.name for p in paths) == ["search_history.svg", "search_slices.svg"]
    assert_images(paths)
    with pytest.raises(KdgridError, match=r"^no search parameter\(s\) beta; allowed: alpha, temperature, attention$"):
        search_plots(history, {}, params, out_dir=tmp_path, params=["beta"])
    assert search_plots(history.iloc[0:0], {}, params.iloc[0:0], out_dir=tmp_path / "none") == []


def test_report_imports_no_torch_and_no_upper_layer() -> None:
    """Static check of every module in kdgrid/report (a fresh-interpreter import would cost
    seconds): no torch, transformers or optuna, and nothing from kdgrid.train or the CLI."""
    import ast

    import kdgrid.report

    for path in Path(kdgrid.report.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else ([node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            )
            for name in names:
                assert name.split(".")[0] not in ("torch", "transformers", "optuna"), (path.name, name)
                assert not name.startswith(("kdgrid.train", "kdgrid.cli")), (path.name, name)


def test_odd_inputs_do_not_crash(tmp_path: Path, analysis: FakeAnalysis) -> None:
    """One seed (sd and CI NaN), a factor that does not apply to a cell (NaN level), an
    infinite seed count, non-numeric diagnostics, no train sizes, no teacher scores."""
    cells = analysis.cells[analysis.cells["task"] == "cola"].head(3).copy()
    cells["sd"] = cells["ci_low"] = cells["ci_high"] = np.nan
    cells["n"] = 1
    cells[MAP] = [np.nan, "uniform", "learnable"]
    power = analysis.power.head(2).assign(n_for_target=[np.inf, np.nan])
    odd = only(
        cells=cells,
        paired_tests=analysis.paired_tests.head(2).assign(note=[None, np.nan]),
        power=power,
        diagnostics=pd.DataFrame({"task": ["cola"], "check": ["x"], "value": [None], "note": [None]}),
        sensitivity=analysis.sensitivity.head(2).drop(columns="train_size").assign(teacher=np.nan, retention=np.nan),
        warnings=["a | pipe, an *asterisk*, 50% & a_b $x$ {y} <tag>"],
    )
    texts = render_many(
        odd, fmts=FORMATS, out_dir=tmp_path, title="odd & <title>", meta={"nested": {"a": [1, None]}}, plots=False
    )
    assert "42." in texts["md"] and "∞" in texts["md"] and "$\\infty$" in texts["latex"]
    assert "a \\| pipe, an \\*asterisk\\*" in texts["md"]
    assert "50\\% \\& a\\_b \\$x\\$ \\{y\\} $<$tag$>$" in texts["latex"]
    assert "&lt;tag&gt;" in texts["html"] and "<tag>" not in texts["html"]
    assert json.loads(texts["json"])["power"][0]["n_for_target"] is None  # inf -> null
    from kdgrid.report import build_figures

    figs = build_figures(odd)
    assert [p.name for p in figs] == ["interaction_cola", "forest_cola"]  # all-NaN retention: no heatmap
    assert_images(make_plots(only(cells=cells), tmp_path, formats=("png",)))


# --------------------------------------------------------------------------- reproducibility


def make_provenance(root: Path, **changes: Any) -> Reproducibility:
    """A hand-built store read-out; the store queries themselves are tested in test_report_cli.py."""
    text = "name: tinybert-ablation\n# a ``` fence inside the file must not close the block\nseeds: 3\n"
    info = Reproducibility(
        study="tinybert-ablation",
        db=str(root / "x" / "k.duckdb"),
        path=str(root / "x" / "studies" / "a b.yaml"),
        sha256=hashlib.sha256(text.encode()).hexdigest(),
        text=text,
        status_counts={"done": 12, "failed": 1},
        first_started=dt.datetime(2026, 1, 5, 10, 0),
        last_finished=dt.datetime(2026, 1, 5, 12, 3, 20),
        run_time_s=4000.0,
        code=(CodeVersion("0.1.0", "f" * 40, 12),),
        libraries=(LibrarySet({"torch": "2.13.0", "python": "3.12.3"}, 12),),
        machines=(Machine("node1", "NVIDIA H100", 12),),
        data_recorded=True,
        data=(DataFile("cola", "train", "hub:nyu-mll/glue/cola/train", 12), DataFile("cola", "dev", "sha256:bb", 12)),
        teachers=(TeacherUsed("cola-abc", "cola", "minilm-l6", 0, 0.0, True, 12),),
    )
    return replace(info, **changes)


def test_reproducibility_in_every_display_format(
    tmp_path: Path, analysis: FakeAnalysis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    info = make_provenance(tmp_path)
    texts = render_many(analysis, fmts=FORMATS, out_dir=tmp_path, title="t", meta={}, plots=False, reproducibility=info)
    run = "kdgrid run 'x/studies/a b.yaml' --db x/k.duckdb"  # relative to the cwd, quoted for the shell
    for fmt in ("md", "html", "table", "latex"):
        assert "Reproducibility" in texts[fmt] and info.sha256 in texts[fmt], fmt
        assert "kdgrid report --study tinybert-ablation --db x/k.duckdb" in texts[fmt], fmt
        assert run in (html.unescape(texts[fmt]) if fmt == "html" else texts[fmt]), fmt
        assert "2 h 03 min" in texts[fmt] and "1 h 07 min" in texts[fmt], fmt
    # Full in Markdown and HTML: tables and the study file; short on the terminal and in LaTeX.
    for fmt in ("md", "html"):
        assert "NVIDIA H100" in texts[fmt] and "cola-abc" in texts[fmt] and "without a revision" in texts[fmt]
    for fmt in ("table", "latex"):
        assert "NVIDIA H100" not in texts[fmt] and "seeds: 3" not in texts[fmt] and "report.md" in texts[fmt]
    assert f"````yaml\n{info.text}````" in texts["md"]  # a longer fence than the ``` inside the file
    assert "<details><summary>Study file x/studies/a b.yaml" in texts["html"]
    assert "\\begin{verbatim}" in texts["latex"]
    assert texts["md"].index("## Reproducibility") > texts["md"].index("## Warnings")
    rep = json.loads(texts["json"])["reproducibility"]
    assert rep["study_file"]["sha256_matches_text"] is True and rep["commands"]["run"] == run
    assert rep["time"]["wall_s"] == 7400.0 and rep["data"]["files"][0]["hash"] == "hub:nyu-mll/glue/cola/train"


def test_reproducibility_missing_facts_and_mixtures(tmp_path: Path, analysis: FakeAnalysis) -> None:
    info = make_provenance(
        tmp_path,
        sha256="0" * 64,
        path=None,
        first_started=None,
        last_finished=None,
        run_time_s=None,
        code=(CodeVersion("0.1.0", "a" * 40, 6), CodeVersion(None, None, 6)),
        data=(
            DataFile("cola", "dev", "sha256:aa", 6),
            DataFile("cola", "dev", "sha256:bb", 5),
            DataFile("cola", None, None, 1),
        ),
        teachers=(
            TeacherUsed("cola-1", "cola", "m", 0, 0.5, False, 12),
            TeacherUsed("cola-2", "cola", "m", 0, 0.5, False, 12),
        ),
    )
    md = render(analysis, fmt="md", out_dir=None, title="t", meta={}, plots=False, reproducibility=info)
    assert "does NOT match the stored study text" in md
    assert "kdgrid run STUDY.yaml --db" in md and "sha256sum" not in md  # no stored path: nothing to check
    assert "| Wall time | – |" in md and "not recorded for 1 of 12 done runs" in md
    assert "2 kdgrid versions or commits" in md and "Runs read different files for cola dev" in md
    assert "Several cached teachers match cola (m, seed 0)" in md
    assert "not recorded @ commit not recorded (6 runs)" in md


def test_report_without_store_has_no_reproducibility(analysis: FakeAnalysis) -> None:
    texts = render_many(analysis, fmts=["md", "json"], out_dir=None, title="t", meta={}, plots=False)
    assert "Reproducibility" not in texts["md"] and json.loads(texts["json"])["reproducibility"] is None
