"""Reports a reader understands at a glance: pivot tables, summary, 80-column terminal, plot legends, index.

Most tests run the real analysis on the committed ablation-cpu results (4 factors, 2 tasks, 5 seeds):
the layout a paper would print is the thing under test, and it needs a design of that size.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from kdgrid.cli import app
from kdgrid.errors import KdgridError
from kdgrid.report import render_many
from kdgrid.report.index import write_index
from kdgrid.report.pivot import choose_layout, headline
from kdgrid.report.plots import MAX_LEGEND_ENTRIES, MAX_LINES, build_figures
from kdgrid.report.render import abbreviate
from kdgrid.report.tables import DisplayTable

ROOT = Path(__file__).resolve().parents[1]
# The first ablation-cpu results (kdgrid 0.1 runs, 3-layer students), frozen here: reports/ holds the rerun.
PARQUET = ROOT / "tests" / "data" / "ablation-cpu-0.1.parquet"
ATT, SIZE, KIND, ALPHA = (
    "objective.intermediate.attention",
    "data.max_train_examples",
    "objective.mapping.kind",
    "objective.intermediate.alpha",
)
BASELINE = {ATT: "mse", KIND: "uniform", ALPHA: "0.5"}
pytestmark = pytest.mark.skipif(not PARQUET.is_file(), reason="tests/data/ablation-cpu-0.1.parquet not present")


@pytest.fixture(scope="module")
def ablation():
    from kdgrid.analyze import analyze_table, load_table

    table = load_table(PARQUET)
    return analyze_table(table, metric="auto", factors=[ATT, SIZE, KIND, ALPHA], baseline=BASELINE)


def test_default_layout_puts_the_setting_factors_in_the_columns(ablation) -> None:
    layout = choose_layout(ablation.cells)
    assert layout.cols == ("task", SIZE)  # data.* describes the problem, not the method
    assert layout.rows == (ATT, KIND, ALPHA)


def test_layout_accepts_short_names_and_rejects_unknown_ones(ablation) -> None:
    layout = choose_layout(ablation.cells, rows=["attention", "kind"], cols=None)
    assert layout.rows == (ATT, KIND) and layout.cols == ("task", SIZE, ALPHA)
    with pytest.raises(KdgridError, match=r"analysis.table.rows: 'nope' is not a factor .*allowed: task, attention"):
        choose_layout(ablation.cells, rows=["nope"])
    with pytest.raises(KdgridError, match="both a row and a column"):
        choose_layout(ablation.cells, rows=["kind"], cols=["kind"])


def test_pivot_table_labels_are_levels_alone_with_marks_and_one_baseline(ablation, tmp_path: Path) -> None:
    texts = render_many(ablation, fmts=["md", "json"], out_dir=None, plots=False, question="Which loss?")
    md = texts["md"]
    cells = md.split("## Cells")[1].split("## ")[0]
    header = next(line for line in cells.splitlines() if line.startswith("| attention"))
    assert [c.strip() for c in header.strip("|").split("|")] == [
        "attention",
        "kind",
        "alpha",
        "cola 200",
        "cola 400",
        "stsb 200",
        "stsb 400",
    ]
    rows = [line for line in cells.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert rows[0].startswith("| mse | uniform | 0.5 |") and rows[0].count("ᵇ") == 4  # baseline first, marked
    assert not any("=" in r for r in rows)  # never name=value chains
    assert "Baseline ᵇ: attention = mse, kind = uniform, alpha = 0.5 (at each max_train_examples)" in cells
    # '*' exactly where the paired test says "different" (stsb 400, kl learnable 1: Δ −36, p_adj < 0.001).
    kl_learn_1 = next(r for r in rows if "| 1 |" in r and rows.index(r) > 0 and "learnable" in rows[rows.index(r) - 1])
    assert kl_learn_1.rstrip(" |").endswith("*")
    summary = json.loads(texts["json"])["summary"]
    assert summary["question"] == "Which loss?"
    assert summary["decisive"] and all(
        " is worse than the baseline (Δ " in d or "better" in d or "equivalent" in d
        for d in summary["decisive"]
        if not d.startswith("…")
    )
    assert re.match(
        r"\d+ different, \d+ equivalent, \d+ undecided of \d+ comparisons; largest: stsb", summary["headline"]
    )


def test_terminal_fits_80_columns_and_brief_shows_only_the_decisive(ablation) -> None:
    from kdgrid.report.render import _console_text, rich_report

    full = _console_text(rich_report(ablation, question="Q?"), 80)
    assert max(len(line) for line in full.splitlines()) <= 80
    assert "• Task:" not in full  # the paired tests stay a table, not one bullet list per row
    assert "Key: " in full and "mte = max_train_examples" in full
    brief = _console_text(rich_report(ablation, question="Q?", brief=True), 80)
    assert max(len(line) for line in brief.splitlines()) <= 80
    assert "Summary" in brief and "Decisive comparisons" in brief and "ANOVA" not in brief
    assert "inconclusive" not in brief.split("Decisive comparisons")[1]
    assert brief.split("Decisive comparisons")[1].count("different") >= 8


def test_every_figure_is_one_or_two_columns_wide_with_short_legends(ablation) -> None:
    from test_report import make_analysis  # mapping weights and sensitivity, which --from tables lack

    plots = build_figures(ablation) + build_figures(make_analysis())
    names = {p.name for p in plots}
    assert {
        "interaction_cola",
        "interaction_stsb",
        "forest_cola",
        "forest_stsb",
        "delta_heatmap",
        "critical_difference",
        "mapping_cola",
        "sensitivity_retention",
    } <= names
    for p in plots:
        width = p.figure.get_figwidth()
        assert width <= 2 * 3.4 + 0.01, (p.name, width)  # one or two paper columns
        legends = [*p.figure.legends, *(ax.get_legend() for ax in p.figure.axes if ax.get_legend())]
        for leg in legends:
            assert len(leg.get_texts()) <= MAX_LEGEND_ENTRIES, (p.name, [t.get_text() for t in leg.get_texts()])
        if p.name.startswith("interaction"):
            for ax in p.figure.axes:
                assert len(ax.lines) <= MAX_LINES * 4 + 2  # errorbar artists per line, plus the reference lines
            if p.name == "interaction_stsb":  # one panel per (data size, mapping); alpha on x, attention as lines
                assert len(p.figure.axes) == 4


def test_abbreviations_come_with_a_key() -> None:
    frame = pd.DataFrame({"max_train_examples": ["200"], "kind": ["learnable"], "Δ": ["1.0"]}, dtype=object)
    short, key = abbreviate(DisplayTable("t", "c", frame, left=("max_train_examples", "kind")))
    assert list(short.frame.columns) == ["mte", "kind", "Δ"]
    assert short.frame["kind"].tolist() == ["learn"]
    assert key == {"mte": "max_train_examples", "learn": "learnable"}


def test_index_links_every_report_with_its_headline(ablation, tmp_path: Path) -> None:
    for name in ("ablation-cpu", "other"):
        render_many(ablation, fmts=["json", "html"], out_dir=tmp_path / name, plots=False, question=f"{name}?")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "report.json").write_text("{", encoding="utf-8")  # a half-written file is skipped
    page = write_index(tmp_path).read_text(encoding="utf-8")
    assert page.count('<a href="ablation-cpu/report.html">') == 1 and 'href="other/report.html"' in page
    assert headline(ablation.paired_tests, ablation.cells).split(";")[0] in page
    assert "broken" not in page


@pytest.mark.slow
def test_cli_brief_rows_cols_and_index(tmp_path: Path) -> None:
    runner = CliRunner()
    args = [
        "report",
        "--from",
        str(PARQUET),
        "--factors",
        ",".join([ATT, SIZE, KIND, ALPHA]),
        "--baseline",
        ",".join(f"{k}={v}" for k, v in BASELINE.items()),
        "--no-plots",
        "--out",
        str(tmp_path / "ablation"),
        "--brief",
        "--rows",
        "attention,kind",
        "--cols",
        "task,alpha",
    ]
    res = runner.invoke(app, args, env={"COLUMNS": "80"})
    assert res.exit_code == 0, res.output
    assert "Decisive comparisons" in res.output and "ANOVA" not in res.output
    md = (tmp_path / "ablation" / "report.md").read_text(encoding="utf-8")
    assert "Rows: attention × kind × max_train_examples; columns: task × alpha" in md
    bad = runner.invoke(app, [*args[:-4], "--rows", "nope"])
    assert bad.exit_code != 0 and "'nope' is not a factor" in str(bad.exception)
    res = runner.invoke(app, ["report", "--index", "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert 'href="ablation/report.html"' in (tmp_path / "index.html").read_text(encoding="utf-8")
