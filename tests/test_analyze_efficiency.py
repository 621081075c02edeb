"""Efficiency per cell: medians over runs, ratios to the baseline, and the report section."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kdgrid.analyze import analyze_table
from kdgrid.analyze.efficiency import EFFICIENCY_COLUMNS, efficiency_table
from kdgrid.report.render import render_many

STUDENT = "student"


def runs() -> pd.DataFrame:
    """Two tasks x 3 seeds x students 3L (baseline) and 2L; one 2L run timed on a busy machine."""
    rows = []
    for task in ("cola", "sst2"):
        for seed in range(3):
            for student, params, latency in (("3L", 30e6, 20.0), ("2L", 20e6, 10.0)):
                slow = task == "sst2" and seed == 2 and student == "2L"
                rows.append(
                    {
                        "run_id": f"{task}-{student}-{seed}",
                        "task": task,
                        "seed": seed,
                        STUDENT: student,
                        "mcc" if task == "cola" else "accuracy": 0.5 + 0.01 * seed,
                        "params": params + (1 if task == "cola" else 2),
                        "latency_ms": 100.0 if slow else latency + seed * 0.1,
                    }
                )
    return pd.DataFrame(rows)


def test_median_over_tasks_and_seeds_and_ratio_to_baseline() -> None:
    eff, warnings = efficiency_table(runs(), factors=[STUDENT], baseline={STUDENT: "3L"})
    assert list(eff.columns) == list(EFFICIENCY_COLUMNS)
    assert warnings == []
    lat = eff[eff["measure"] == "latency_ms"].set_index("cell")
    # 2L latencies over both tasks: 10.0, 10.1, 10.2, 10.0, 10.1, 100 -> median (10.1 + 10.1) / 2.
    assert lat.at["student=2L", "n"] == 6
    assert lat.at["student=2L", "median"] == pytest.approx(10.1)
    assert lat.at["student=2L", "max"] == pytest.approx(100.0)  # the outlier is kept in the range, not the median
    assert lat.at["student=3L", "median"] == pytest.approx(20.1)
    assert lat.at["student=2L", "ratio"] == pytest.approx(10.1 / 20.1)
    assert lat.at["student=3L", "ratio"] == pytest.approx(1.0)
    assert lat.at["student=2L", "baseline"] == "student=3L"
    params = eff[eff["measure"] == "params"].set_index("cell")
    assert params.at["student=2L", "median"] == pytest.approx(20e6 + 1.5)
    # Measures the table lacks are not invented.
    assert set(eff["measure"]) == {"params", "latency_ms"}


def test_missing_baseline_cell_gives_nan_ratio_and_a_warning() -> None:
    # Two factors, baseline fixes only the student: (2L, T=2) compares with (3L, T=2), which has no runs.
    df = runs().assign(T="1")
    df = pd.concat([df, df[df[STUDENT] == "2L"].assign(T="2", run_id=lambda d: d["run_id"] + "-T2")])
    eff, warnings = efficiency_table(df, factors=[STUDENT, "T"], baseline={STUDENT: "3L"})
    lat = eff[eff["measure"] == "latency_ms"].set_index("cell")
    assert lat.at["student=2L, T=1", "ratio"] == pytest.approx(10.1 / 20.1)
    assert np.isnan(lat.at["student=2L, T=2", "ratio"])
    assert len(warnings) == 1 and "student=3L, T=2" in warnings[0]


def test_table_without_efficiency_columns_is_empty() -> None:
    df = runs().drop(columns=["params", "latency_ms"])
    eff, warnings = efficiency_table(df, factors=[STUDENT])
    assert eff.empty and list(eff.columns) == list(EFFICIENCY_COLUMNS) and warnings == []


def test_analysis_carries_efficiency_and_every_format_shows_it(tmp_path: Path) -> None:
    analysis = analyze_table(runs(), metric="auto", factors=[STUDENT], baseline={STUDENT: "3L"})
    assert set(analysis.efficiency["measure"]) == {"params", "latency_ms"}
    texts = render_many(analysis, fmts=["md", "json", "csv", "html", "table"], out_dir=tmp_path, plots=False)
    md = texts["md"]
    assert "## Efficiency" in md
    # Params in millions, latency with its ratio to the 3L baseline.
    row = next(line for line in md.splitlines() if line.startswith("| 2L |") and "(M)" not in line and "×" in line)
    assert "20.00 (0.67×)" in row and "10.1 (0.50×)" in row
    assert "Efficiency" in texts["table"]
    obj = json.loads(texts["json"])
    got = {(r["cell"], r["measure"]): r["ratio"] for r in obj["efficiency"]}
    assert got[("student=2L", "latency_ms")] == pytest.approx(10.1 / 20.1)
    back = pd.read_csv(tmp_path / "efficiency.csv")
    lat = back[back["measure"] == "latency_ms"].set_index("cell")["median"]
    assert lat.to_dict() == pytest.approx({"student=3L": 20.1, "student=2L": 10.1})


def test_report_without_efficiency_has_no_section(tmp_path: Path) -> None:
    analysis = analyze_table(runs().drop(columns=["params", "latency_ms"]), metric="auto", factors=[STUDENT])
    md = render_many(analysis, fmts=["md", "csv"], out_dir=tmp_path, plots=False)["md"]
    assert "Efficiency" not in md
    assert not (tmp_path / "efficiency.csv").exists()
