"""Do learnable layer mappings converge to the same weights whatever their start? (paper 1, §4.2)

The distance between two mappings W, V (student layers × teacher layers, rows summing to 1) is
the mean over student layers of the total-variation distance of their rows,

    d(W, V) = 1/S · Σ_m ½ Σ_k |W[m, k] − V[m, k]|,

the share of each student layer's weight that would have to move to turn one into the other:
0 for the same mapping, 1 for mappings with no teacher layer in common. Comparing d at the
start (epoch 0, the initial weights) with d after the last epoch tells whether different
initialisations ended up in the same place; the distance between seeds of one cell is the
noise floor that "the same place" can be judged against.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import combinations

import numpy as np
import pandas as pd

from kdgrid.analyze.tidy import cell_label, level_key, short_names

__all__ = ["CONVERGENCE_COLUMNS", "as_analysis_cells", "mapping_convergence", "mapping_distance"]

CONVERGENCE_COLUMNS: tuple[str, ...] = (
    "task",
    "cell_a",
    "cell_b",
    "n_a",
    "n_b",
    "start_distance",
    "end_distance",
    "moved",
)


def as_analysis_cells(weights: pd.DataFrame, table: pd.DataFrame, factors: Sequence[str]) -> pd.DataFrame:
    """``weights`` with its cells named as the analysis names them (short factor names, canonical levels).

    The store names a cell by its full factor paths and levels as written (``objective.intermediate.alpha=0.0``);
    the analysis by short names and canonical levels (``alpha=0``). ``table`` is the tidy results table,
    which holds both the store's ``cell`` and the factor columns.
    """
    facs = [f for f in factors if f in table.columns]
    short = short_names(facs)
    names = {
        str(r["cell"]): cell_label({f: level_key(r[f]) for f in facs}, facs, short)
        for _, r in table.drop_duplicates("cell").iterrows()
    }
    return weights.assign(cell=weights["cell"].astype(str).map(lambda c: names.get(c, c)))


def mapping_distance(w: np.ndarray, v: np.ndarray) -> float:
    """Mean over rows of the total-variation distance between ``w`` and ``v`` (same shape, S × T)."""
    w, v = np.asarray(w, dtype=float), np.asarray(v, dtype=float)
    if w.shape != v.shape or w.ndim != 2:
        raise ValueError(f"mappings must be two matrices of one shape, got {w.shape} and {v.shape}")
    return float(0.5 * np.abs(w - v).sum(axis=1).mean())


def _matrices(g: pd.DataFrame, which: str) -> dict[object, np.ndarray]:
    """Seed -> weight matrix at that seed's first (``start``) or last (``end``) recorded epoch."""
    out: dict[object, np.ndarray] = {}
    for seed, s in g.groupby("seed", sort=True):
        epoch = s["epoch"].min() if which == "start" else s["epoch"].max()
        if which == "start" and epoch != 0:
            continue  # runs stored before epoch 0 was recorded have no start
        at = s[s["epoch"] == epoch]
        out[seed] = (
            at.pivot_table(index="student_layer", columns="teacher_layer", values="weight", aggfunc="mean")
            .sort_index()
            .sort_index(axis=1)
            .to_numpy()
        )
    return out


def _between(a: dict[object, np.ndarray], b: dict[object, np.ndarray]) -> float:
    if not a or not b:
        return np.nan
    return mapping_distance(np.mean(list(a.values()), axis=0), np.mean(list(b.values()), axis=0))


def _within(a: dict[object, np.ndarray]) -> float:
    pairs = list(combinations(a.values(), 2))
    return float(np.mean([mapping_distance(x, y) for x, y in pairs])) if pairs else np.nan


def _one_apart(a: Mapping[str, str] | None, b: Mapping[str, str] | None) -> bool:
    if a is None or b is None:
        return True
    return sum(a.get(k) != b.get(k) for k in set(a) | set(b)) == 1


def mapping_convergence(
    weights: pd.DataFrame, cell_levels: Mapping[str, Mapping[str, str]] | None = None
) -> pd.DataFrame:
    """Distances between the learned mappings of pairs of cells of a task, at the start and the end.

    ``weights``: task, cell, seed, epoch, student_layer, teacher_layer, weight (the report's mapping
    weights; epoch 0 = initial weights). Rows :data:`CONVERGENCE_COLUMNS`: for two cells, the distance
    between their seed-mean mappings; for a cell with itself (``cell_a == cell_b``), the mean distance
    between its seeds, and ``moved``, the mean over seeds of the distance from the start to the end (how far
    training took the mapping). ``start_distance`` and ``moved`` are NaN when epoch 0 was not recorded. ``cell_levels`` (cell ->
    factor -> level) keeps only pairs of cells that differ in one factor, the pairs that say what that
    factor does to the mapping; without it every pair is compared.
    """
    levels = cell_levels or {}
    rows: list[dict[str, object]] = []
    for task, tg in weights.groupby(weights["task"].astype(str), sort=False):
        cells = list(dict.fromkeys(tg["cell"].astype(str)))
        by_cell = {c: tg[tg["cell"].astype(str) == c] for c in cells}
        start = {c: _matrices(g, "start") for c, g in by_cell.items()}
        end = {c: _matrices(g, "end") for c, g in by_cell.items()}
        shapes = {m.shape for c in cells for m in end[c].values()}
        for a in cells:
            n_a = len(end[a])
            moved = [mapping_distance(start[a][s], end[a][s]) for s in end[a] if s in start[a]]
            rows.append(
                {
                    "task": task,
                    "cell_a": a,
                    "cell_b": a,
                    "n_a": n_a,
                    "n_b": n_a,
                    "start_distance": _within(start[a]),
                    "end_distance": _within(end[a]),
                    "moved": float(np.mean(moved)) if moved else np.nan,
                }
            )
        if len(shapes) > 1:
            continue  # students of different depths: their mappings cannot be compared entry by entry
        for a, b in combinations(cells, 2):
            if not _one_apart(levels.get(a), levels.get(b)):
                continue
            rows.append(
                {
                    "task": task,
                    "cell_a": a,
                    "cell_b": b,
                    "n_a": len(end[a]),
                    "n_b": len(end[b]),
                    "start_distance": _between(start[a], start[b]),
                    "end_distance": _between(end[a], end[b]),
                    "moved": np.nan,
                }
            )
    return pd.DataFrame(rows, columns=list(CONVERGENCE_COLUMNS))
