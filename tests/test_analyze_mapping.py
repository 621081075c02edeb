"""Learned-mapping convergence: the distance written out by hand, and the report's table."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kdgrid.analyze import analyze_table
from kdgrid.analyze.mapping import CONVERGENCE_COLUMNS, as_analysis_cells, mapping_convergence, mapping_distance
from kdgrid.report.render import render_many


def test_distance_is_mean_total_variation_of_rows() -> None:
    w = np.array([[1.0, 0.0, 0.0], [0.2, 0.3, 0.5]])
    v = np.array([[0.0, 1.0, 0.0], [0.2, 0.3, 0.5]])
    # Row 1: all mass moves (TV 1); row 2: none (TV 0) -> mean 0.5.
    assert mapping_distance(w, v) == pytest.approx(0.5)
    u = np.full((2, 3), 1 / 3)
    # Row [1, 0, 0] vs uniform: ½(2/3 + 1/3 + 1/3) = 2/3; row 2 vs uniform: ½(|.2-1/3| + |.3-1/3| + |.5-1/3|) = 1/6.
    assert mapping_distance(w, u) == pytest.approx((2 / 3 + 1 / 6) / 2)
    assert mapping_distance(w, w) == 0.0
    with pytest.raises(ValueError):
        mapping_distance(w, w[:1])


def _rows(cell: str, seed: int, epoch: int, w: np.ndarray) -> list[dict[str, object]]:
    return [
        {
            "task": "cola",
            "cell": cell,
            "seed": seed,
            "epoch": epoch,
            "student_layer": m + 1,
            "teacher_layer": k + 1,
            "weight": float(w[m, k]),
        }
        for m in range(w.shape[0])
        for k in range(w.shape[1])
    ]


def weights() -> pd.DataFrame:
    """Two inits (uniform, diagonal) that end on the same mapping up to seed noise."""
    uniform = np.full((2, 2), 0.5)
    diagonal = np.array([[0.9, 0.1], [0.1, 0.9]])
    target = np.array([[0.7, 0.3], [0.2, 0.8]])
    rows = []
    for seed, noise in ((0, 0.02), (1, -0.02)):
        end = target + np.array([[noise, -noise], [-noise, noise]])
        rows += _rows("init=uniform", seed, 0, uniform) + _rows("init=uniform", seed, 3, end)
        rows += _rows("init=diagonal", seed, 0, diagonal) + _rows("init=diagonal", seed, 3, end + 0.0)
    return pd.DataFrame(rows)


def test_convergence_start_end_and_seed_floor() -> None:
    conv = mapping_convergence(weights())
    assert list(conv.columns) == list(CONVERGENCE_COLUMNS)
    pair = conv[(conv["cell_a"] != conv["cell_b"])].iloc[0]
    # Start: rows [.5 .5] vs [.9 .1] and [.5 .5] vs [.1 .9] -> TV 0.4 each.
    assert pair["start_distance"] == pytest.approx(0.4)
    assert pair["end_distance"] == pytest.approx(0.0, abs=1e-12)  # seed means coincide
    own = conv[(conv["cell_a"] == "init=uniform") & (conv["cell_b"] == "init=uniform")].iloc[0]
    assert own["start_distance"] == 0.0  # same init for every seed
    assert own["end_distance"] == pytest.approx(0.04)  # rows differ by ±0.02 per seed -> TV 0.04
    assert own["n_a"] == 2
    # Moved, seed 0: rows [.5 .5] -> [.72 .28] (TV .22) and [.5 .5] -> [.18 .82] (TV .32), mean .27; seed 1: .23.
    assert own["moved"] == pytest.approx(0.25)
    assert np.isnan(pair["moved"])


def test_runs_without_epoch_zero_have_no_start() -> None:
    w = weights()
    conv = mapping_convergence(w[w["epoch"] > 0])
    assert conv["start_distance"].isna().all() and conv["end_distance"].notna().all()


def test_report_shows_convergence_in_md_json_csv(tmp_path: Path) -> None:
    df = pd.DataFrame(
        [{"task": "cola", "seed": s, "init": i, "mcc": 0.3 + 0.01 * s} for i in ("uniform", "diagonal") for s in (0, 1)]
    )
    analysis = analyze_table(df, metric="mcc", factors=["init"])
    analysis.mapping_weights = weights()
    texts = render_many(analysis, fmts=["md", "json", "csv"], out_dir=tmp_path, plots=False)
    assert "distance between learned mappings" in texts["md"]
    assert "| init=uniform | init=diagonal | 2 / 2 | 0.400 | 0.000 | – |" in texts["md"]
    obj = json.loads(texts["json"])
    assert {(r["cell_a"], r["cell_b"]) for r in obj["mapping_convergence"]} >= {("init=uniform", "init=diagonal")}
    back = pd.read_csv(tmp_path / "mapping_convergence.csv")
    assert len(back) == 3


def test_only_cells_one_factor_apart_are_paired() -> None:
    w = weights()
    third = w[w["cell"] == "init=uniform"].assign(cell="init=random")
    w = pd.concat([w.assign(cell=w["cell"] + ", lr=1"), third.assign(cell="init=random, lr=2")])
    levels = {
        "init=uniform, lr=1": {"init": "uniform", "lr": "1"},
        "init=diagonal, lr=1": {"init": "diagonal", "lr": "1"},
        "init=random, lr=2": {"init": "random", "lr": "2"},
    }
    conv = mapping_convergence(w, levels)
    pairs = {(a, b) for a, b in zip(conv["cell_a"], conv["cell_b"]) if a != b}
    assert pairs == {("init=uniform, lr=1", "init=diagonal, lr=1")}  # the random cell differs in two factors
    assert (conv["cell_a"] == conv["cell_b"]).sum() == 3  # every cell still has its seed floor
    assert len(mapping_convergence(w)) == 3 + 3  # without levels, every pair


def test_store_cell_names_become_the_analysis_names() -> None:
    # The store writes full factor paths and levels as in the study file; the analysis short names, canonical levels.
    table = pd.DataFrame(
        {
            "cell": ["objective.mapping.init=uniform, objective.intermediate.alpha=0.0"],
            "objective.mapping.init": ["uniform"],
            "objective.intermediate.alpha": ["0.0"],
        }
    )
    w = pd.DataFrame({"task": ["cola"], "cell": [table["cell"][0]], "weight": [1.0]})
    out = as_analysis_cells(w, table, ["objective.mapping.init", "objective.intermediate.alpha"])
    assert out["cell"].tolist() == ["init=uniform, alpha=0"]
    other = as_analysis_cells(w.assign(cell="not in the table"), table, ["objective.mapping.init"])
    assert other["cell"].tolist() == ["not in the table"]
