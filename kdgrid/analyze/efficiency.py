"""What each cell costs: parameters, inference latency and throughput, training speed, memory.

A student's cost does not depend on the task it was trained on (only the classifier head
differs, by a few hundred parameters), so every run of a cell counts, over tasks and seeds.
Timings are summarised by the *median* over runs, not the mean: a run that was timed while
the machine was busy with something else is one slow outlier, and it should not move the
summary. ``ratio`` is the cell's median over its baseline cell's median, so the baseline
reads 1 and a student with half the latency reads 0.5 (paper 3's "speed-up" is 1 / ratio).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from kdgrid.analyze.paired import resolve_baseline
from kdgrid.analyze.tidy import Prepared, cell_label, prepare

__all__ = ["EFFICIENCY_COLUMNS", "EFFICIENCY_MEASURES", "efficiency_table"]

#: Measures kdgrid records per run (store split ``efficiency``), in report order.
EFFICIENCY_MEASURES: tuple[str, ...] = ("params", "latency_ms", "throughput_ex_s", "train_ex_per_s", "peak_memory_mb")
EFFICIENCY_COLUMNS: tuple[str, ...] = ("cell", "measure", "n", "median", "min", "max", "baseline", "ratio")


def efficiency_table(
    df: pd.DataFrame,
    *,
    factors: Sequence[str] | None,
    baseline: Mapping[str, object] | None = None,
    measures: Sequence[str] = EFFICIENCY_MEASURES,
) -> tuple[pd.DataFrame, list[str]]:
    """Median, min and max of each measure per cell over all its runs, and its ratio to the baseline.

    Columns :data:`EFFICIENCY_COLUMNS`; one row per (cell, measure present in ``df``), cells in
    the analysis' cell order. ``baseline`` has the meaning of :func:`kdgrid.analyze.paired_tests`
    (a partial baseline compares each cell with the cell that has the baseline's levels for the
    named factors and its own for the others); ``ratio`` is NaN when that cell has no runs or
    its median is 0. Measures missing from the table (a ``--from`` table without them) are skipped.
    """
    rows: list[dict[str, object]] = []
    warnings: list[str] = []
    seeded = df["seed"].notna().to_numpy() if "seed" in df.columns else np.ones(len(df), dtype=bool)
    reuse: tuple[np.ndarray, Prepared] | None = None  # (rows kept, prepare's result) of a measure before
    for measure in measures:
        if measure not in df.columns or pd.to_numeric(df[measure], errors="coerce").notna().sum() == 0:
            continue
        numbers = pd.to_numeric(df[measure], errors="coerce").to_numpy(dtype=float)
        kept = seeded & np.isfinite(numbers)  # the rows prepare keeps: a seed and a finite value
        if reuse is not None and np.array_equal(kept, reuse[0]):
            # The same runs as a measure prepared before (the usual case: every run records every measure):
            # its normalised table (levels, cells, order) with this measure's values, not a fifth prepare.
            prep = reuse[1]
            data = prep.data.assign(value=numbers[kept], metric=measure)
        else:
            table = df.drop(columns=[m for m in measures if m != measure and m in df.columns])
            prep = prepare(table, metric=measure, factors=factors)
            data = prep.data
            if len(data) == int(kept.sum()):
                reuse = (kept, prep)
        if prep.factors:
            base, _ = resolve_baseline(prep, baseline)  # its warnings are the paired tests' to give
        else:
            base = {}
        # Plain dicts, not .at/.iterrows per cell: 22 s for 1,000 cells x 5 measures through pandas.
        stats = data.groupby("cell")["value"].agg(["size", "median", "min", "max"]).to_dict("index")
        firsts = data.drop_duplicates("cell").sort_values("cell_rank")
        for first in firsts[["cell", *prep.factors]].to_dict("records"):
            cell = str(first["cell"])
            target = {**{f: str(first[f]) for f in prep.factors}, **base}
            bcell = cell_label(target, prep.factors, prep.short)
            st = stats[cell]
            med = float(st["median"])
            bmed = float(stats[bcell]["median"]) if bcell in stats else np.nan
            rows.append(
                {
                    "cell": cell,
                    "measure": measure,
                    "n": int(st["size"]),
                    "median": med,
                    "min": float(st["min"]),
                    "max": float(st["max"]),
                    "baseline": bcell,
                    "ratio": med / bmed if np.isfinite(bmed) and bmed != 0 else np.nan,
                }
            )
    frame = pd.DataFrame(rows, columns=list(EFFICIENCY_COLUMNS))
    if not frame.empty and frame["ratio"].isna().any():
        missing = sorted(set(frame.loc[frame["ratio"].isna(), "baseline"]))
        warnings.append(
            "efficiency: no ratio for cells whose baseline cell has no runs or a zero median "
            f"({'; '.join(missing[:5])})"
        )
    return frame, warnings
