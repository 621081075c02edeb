"""Descriptive statistics per task and cell."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from kdgrid.analyze.dist import t_ppf
from kdgrid.analyze.tidy import AnalysisError, MetricSpec, Prepared, prepare

__all__ = ["CELL_COLUMNS", "describe_cells", "mean_ci"]

CELL_COLUMNS = ["task", "metric", "cell", "n", "mean", "sd", "ci_low", "ci_high", "seeds", "values", "stands_for"]


def mean_ci(values: Sequence[float] | np.ndarray, *, confidence: float = 0.95) -> tuple[float, float, float, float]:
    """Mean, sd and t-based confidence interval of the mean.

    ``sd`` uses ddof=1; CI = mean ± t_{1-(1-confidence)/2, n-1} · sd / √n (Student, 1908).
    With n < 2 the sd and the interval are NaN.

    Reference (R): ``t.test(x)$conf.int``.
    """
    if not 0 < confidence < 1:
        raise AnalysisError(f"confidence must be in (0, 1), got {confidence}")
    x = np.asarray(values, dtype=float)
    n = x.size
    if n == 0:
        return np.nan, np.nan, np.nan, np.nan
    mean = float(x.mean())
    if n < 2:
        return mean, np.nan, np.nan, np.nan
    sd = float(x.std(ddof=1))
    half = t_ppf(0.5 + confidence / 2, n - 1) * sd / np.sqrt(n)
    return mean, sd, mean - half, mean + half


def _describe(prep: Prepared, *, confidence: float = 0.95) -> pd.DataFrame:
    """One row per task and cell of *runs*: a collapsed cell (runs shared by several cells) once."""
    rows: list[dict[str, object]] = []
    data = prep.runs
    sort_cols = ["task", "cell_rank"] + (["seed"] if prep.has_seed else [])
    data = data.sort_values(sort_cols, kind="mergesort")
    # The sorted rows of one (task, cell) are contiguous: slice plain arrays at the group boundaries
    # instead of a pandas group per cell (1,000 cells: ~1 s of pandas overhead).
    tasks = data["task"].to_numpy(dtype=object)
    ranks = data["cell_rank"].to_numpy()
    starts = np.flatnonzero(np.r_[True, (tasks[1:] != tasks[:-1]) | (ranks[1:] != ranks[:-1])])
    ends = np.r_[starts[1:], len(data)]
    values = data["value"].to_numpy(dtype=float)
    seeds = data["seed"].to_numpy() if prep.has_seed else None
    firsts = data.iloc[starts][["task", "metric", "cell", *prep.factors, "cells"]].to_dict("records")
    for first, a, b in zip(firsts, starts.tolist(), ends.tolist()):
        vals = values[a:b]
        mean, sd, lo, hi = mean_ci(vals, confidence=confidence)
        row: dict[str, object] = {"task": first["task"], "metric": first["metric"], "cell": first["cell"]}
        row.update({f: first[f] for f in prep.factors})
        row.update(
            n=int(vals.size),
            mean=mean,
            sd=sd,
            ci_low=lo,
            ci_high=hi,
            seeds=seeds[a:b].tolist() if seeds is not None else [],
            values=vals.tolist(),
            stands_for=list(first["cells"]),
        )
        rows.append(row)
    cols = CELL_COLUMNS[:3] + prep.factors + CELL_COLUMNS[3:]
    out = pd.DataFrame(rows, columns=cols)
    out["n"] = out["n"].astype("int64")
    return out


def describe_cells(
    df: pd.DataFrame,
    *,
    metric: MetricSpec,
    factors: Sequence[str] | None = None,
    confidence: float = 0.95,
) -> pd.DataFrame:
    """Descriptive statistics of the metric per task and cell.

    Columns: ``task, metric, cell, <factor columns>, n, mean, sd, ci_low, ci_high,
    seeds, values, stands_for``. Each run counts once: cells that share their runs (a
    factor without effect at some level of another, e.g. attention at α = 0) are one row,
    whose ``cell`` joins the collapsed factor's levels with ``|`` (``attention=kl|mse,
    alpha=0``) and whose ``stands_for`` lists the cells it stands for (one cell for the
    others). ``sd`` has ddof=1; the interval is t-based
    (mean ± t_{.975, n-1}·sd/√n for 95%). ``seeds`` and ``values`` are lists in
    seed order (``seeds`` is empty when the table has no ``seed`` column). Factor
    columns hold canonical string levels (see :func:`kdgrid.analyze.tidy.level_key`);
    ``cell`` is ``"k=v, k=v"`` with short factor names. Warnings from reading the
    table are in ``frame.attrs["warnings"]``.
    """
    prep = prepare(df, metric=metric, factors=factors)
    out = _describe(prep, confidence=confidence)
    out.attrs["warnings"] = list(prep.warnings)
    return out
