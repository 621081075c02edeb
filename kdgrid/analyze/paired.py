"""Paired comparisons of every cell against a baseline cell, seeds as pairs.

Every run of a kdgrid study uses its seed for the data order, the initialisation and
dropout, in every cell, so two cells are compared on the *differences* between runs
with the same seed (and task). For each comparison we report

* the mean difference (condition − baseline) and its t-based confidence interval,
* Student's paired t-test (``scipy.stats.ttest_rel``): t, df = n − 1, two-sided p,
* d_z = mean(diff) / sd(diff, ddof=1), the standardised mean difference of paired
  data (Cohen, 1988, eq. 2.3.5; Lakens, 2013, *Front. Psychol.* 4:863, eq. 6). It is
  not pingouin's paired ``cohen_d``, which divides by the average sd of the two cells,
* the Wilcoxon signed-rank p as a robustness check, computed as R's ``wilcox.test``:
  exact when there are fewer than 50 pairs, no zero and no tied difference, else the
  normal approximation with continuity and tie correction (zeros dropped),
* the p value adjusted for the family of comparisons (Holm by default; Benjamini-
  Hochberg, Bonferroni or none on request; :func:`adjust_pvalues`).

Families. By default (``family="task"``) each task's comparisons against the
baseline form one family, and the ``pooled`` rows form one more family: a reader of a
task's table asks "which settings differ from the baseline on this task?", and the
pooled table answers a separate question. ``family="all"`` adjusts every row at once
(more conservative).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
import pandas as pd
from scipy import stats

from kdgrid.analyze.tidy import AnalysisError, MetricSpec, Prepared, cell_label, level_key, prepare

__all__ = [
    "CORRECTIONS",
    "PAIRED_COLUMNS",
    "adjust_pvalues",
    "min_wilcoxon_p",
    "paired_tests",
    "paired_ttest",
    "resolve_baseline",
    "wilcoxon_signed_rank",
]

PAIRED_COLUMNS = [
    "task", "condition", "baseline", "n", "mean_diff", "ci_low", "ci_high",
    "t", "df", "p", "p_adj", "dz", "wilcoxon_p", "note",
]
#: Allowed ``correction`` names (the statsmodels ``multipletests`` method names).
CORRECTIONS: tuple[str, ...] = ("holm", "fdr_bh", "bonferroni", "none")
POOLED = "pooled"
_WILCOXON_EXACT_MAX_N = 50  # R: exact <- n < 50 (and no ties, no zeros)


# --------------------------------------------------------------------------- building blocks
def adjust_pvalues(pvalues: Sequence[float] | np.ndarray, method: str = "holm") -> np.ndarray:
    """Adjust a family of m p values for multiple comparisons.

    With p sorted ascending, p_(1) ≤ … ≤ p_(m):

    * ``holm`` (Holm, 1979, step-down): p̃_(i) = max_{j ≤ i} min(1, (m − j + 1)·p_(j))
    * ``fdr_bh`` (Benjamini & Hochberg, 1995): p̃_(i) = min_{j ≥ i} min(1, m·p_(j)/j)
    * ``bonferroni``: min(1, m·p); ``none``: p unchanged.

    NaN p values stay NaN and do not count in m. Computed here with numpy and tested
    against statsmodels ``multipletests(p, method=...)`` (same values): that
    function's Holm branch runs ``gc.collect()`` on every call, which costs about 0.1 s
    per family in a process holding pandas, scipy and statsmodels; note also that its
    *default* method is Holm-Šidák, not Holm.

    Reference (R): ``p.adjust(p, method = "holm" | "BH" | "bonferroni")``.
    """
    if method not in CORRECTIONS:
        raise AnalysisError(f"unknown correction {method!r}: use one of {', '.join(CORRECTIONS)}")
    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = np.isfinite(p)
    m = int(ok.sum())
    if m == 0:
        return out
    if np.any((p[ok] < 0) | (p[ok] > 1)):
        raise AnalysisError("p values must lie in [0, 1]")
    vals = p[ok]
    if method == "none":
        adj = vals
    elif method == "bonferroni":
        adj = np.minimum(1.0, m * vals)
    else:
        order = np.argsort(vals, kind="mergesort")
        ps = vals[order]
        i = np.arange(1, m + 1)
        if method == "holm":
            adj_sorted = np.minimum(1.0, np.maximum.accumulate((m - i + 1) * ps))
        else:  # fdr_bh
            adj_sorted = np.minimum(1.0, np.minimum.accumulate((m * ps / i)[::-1])[::-1])
        adj = np.empty(m)
        adj[order] = adj_sorted
    out[ok] = adj
    return out


def min_wilcoxon_p(n: int) -> float:
    """Smallest exact two-sided Wilcoxon signed-rank p with ``n`` non-zero pairs: 2 / 2^n.

    With 5 pairs this is 0.0625, so the test can never reach p < 0.05.
    """
    return min(1.0, 2.0 / 2.0**n) if n > 0 else 1.0


def wilcoxon_signed_rank(diffs: Sequence[float] | np.ndarray) -> tuple[float, str]:
    """Two-sided Wilcoxon signed-rank p for paired differences, as R's ``wilcox.test``.

    Differences are rounded to 12 decimals first, so that floating-point noise does
    not break ties (metric differences are often exact multiples of 1/n_dev).
    Exact null distribution when n < 50 with no zero and no tied |difference|;
    otherwise zeros are dropped (Wilcoxon's method) and the normal approximation with
    tie-corrected variance and continuity correction is used (R: ``correct = TRUE``).
    Returns ``(p, note)``; p is NaN with a note when n < 2 or every difference is 0.

    Reference (R): ``wilcox.test(x, y, paired = TRUE)``.
    """
    d = np.round(np.asarray(diffs, dtype=float), 12)
    if d.size < 2:
        return np.nan, "Wilcoxon undefined with fewer than 2 pairs"
    nonzero = d[d != 0]
    if nonzero.size == 0:
        return np.nan, "Wilcoxon undefined: all differences are zero"
    has_zero = nonzero.size < d.size
    has_ties = np.unique(np.abs(nonzero)).size < nonzero.size
    if nonzero.size < _WILCOXON_EXACT_MAX_N and not has_zero and not has_ties:
        return float(stats.wilcoxon(d, method="exact").pvalue), ""
    res = stats.wilcoxon(d, zero_method="wilcox", correction=True, method="approx")
    why = " and ".join(w for w, on in (("zero differences", has_zero), ("ties", has_ties)) if on) or "n >= 50"
    return float(res.pvalue), f"Wilcoxon p from the normal approximation ({why})"


def _paired_stats(cond: np.ndarray, base: np.ndarray, confidence: float) -> dict[str, object]:
    """Statistics of one paired comparison; ``notes`` is a list of strings."""
    d = cond - base
    n = int(d.size)
    nan = np.nan
    row: dict[str, object] = dict(n=n, mean_diff=nan, ci_low=nan, ci_high=nan, t=nan, df=nan, p=nan, dz=nan, wilcoxon_p=nan)
    notes: list[str] = []
    if n == 0:
        notes.append("no seed present in both cells")
        row["notes"] = notes
        return row
    row["mean_diff"] = float(d.mean())
    if n < 2:
        notes.append("1 pair: no test")
        row["notes"] = notes
        return row
    row["df"] = n - 1
    sd = float(d.std(ddof=1))
    if sd <= 1e-12 * max(1.0, float(np.abs(d).max())):
        notes.append("differences are constant (sd = 0): t and d_z undefined")
    else:
        res = stats.ttest_rel(cond, base)
        half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * sd / np.sqrt(n)
        mean = float(d.mean())
        row.update(t=float(res.statistic), p=float(res.pvalue), ci_low=mean - half, ci_high=mean + half)
        row["dz"] = mean / sd
    wp, wnote = wilcoxon_signed_rank(d)
    row["wilcoxon_p"] = wp
    if wnote:
        notes.append(wnote)
    row["notes"] = notes
    return row


def paired_ttest(
    condition: Sequence[float] | np.ndarray,
    baseline: Sequence[float] | np.ndarray,
    *,
    confidence: float = 0.95,
) -> pd.DataFrame:
    """Paired comparison of two equally long, aligned samples (pair i = position i).

    One-row frame with ``n, mean_diff, ci_low, ci_high, t, df, p, dz, wilcoxon_p,
    note`` where diff = condition − baseline, t = mean(d)/(sd(d)/√n) with n − 1 df
    (``scipy.stats.ttest_rel``), CI = mean(d) ± t_{1-α/2,n-1}·sd(d)/√n,
    d_z = mean(d)/sd(d) (ddof=1), Wilcoxon as :func:`wilcoxon_signed_rank`.

    Reference (R): ``t.test(condition, baseline, paired = TRUE)``.
    """
    x = np.asarray(condition, dtype=float)
    y = np.asarray(baseline, dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise AnalysisError(f"paired samples must be 1-D and equally long, got {x.shape} and {y.shape}")
    ok = np.isfinite(x) & np.isfinite(y)
    row = _paired_stats(x[ok], y[ok], confidence)
    notes = list(row.pop("notes"))  # type: ignore[arg-type]
    if (~ok).any():
        notes.insert(0, f"dropped {int((~ok).sum())} pair(s) with a missing value")
    row["note"] = "; ".join(notes)
    cols = [c for c in PAIRED_COLUMNS if c not in ("task", "condition", "baseline", "p_adj")]
    return pd.DataFrame([row], columns=cols)


# --------------------------------------------------------------------------- baseline
def resolve_baseline(prep: Prepared, baseline: Mapping[str, object] | None) -> tuple[dict[str, str], list[str]]:
    """Baseline as factor column -> canonical level, plus warnings.

    Keys may be full or short factor names. Values are compared as canonical strings
    (``0.5 == "0.5"``). ``None`` means the first level of every factor
    (:func:`kdgrid.analyze.tidy.level_order`), or, when that combination has no runs
    (an excluded cell), the first cell in cell order that has runs. A baseline that fixes only some
    factors defines, for every cell, the cell with those factors set to the baseline
    levels and the other factors unchanged (a simple-effect comparison).
    """
    warnings: list[str] = []
    if baseline is None:
        first = {f: prep.levels[f][0] for f in prep.factors}
        if not first:
            return first, warnings
        row = prep.data.loc[prep.data["cell_rank"].idxmin()]
        base = {f: str(row[f]) for f in prep.factors}
        shown = ", ".join(f"{prep.short[f]}={v}" for f, v in base.items())
        if base == first:
            warnings.append(f"no baseline given: using the first level of every factor ({shown})")
        else:
            warnings.append(
                f"no baseline given and the cell of first levels has no runs: using the first cell with runs ({shown})"
            )
        return base, warnings
    if not isinstance(baseline, Mapping):
        raise AnalysisError(f"baseline must be a dict factor -> level, got {type(baseline).__name__}")
    by_short = {s: f for f, s in prep.short.items()}
    base = {}
    for key, value in baseline.items():
        name = key if key in prep.factors else by_short.get(str(key))
        if name is None:
            raise AnalysisError(f"baseline factor {key!r} is not a factor; factors are: {', '.join(prep.factors) or '(none)'}")
        lv = level_key(value)
        if lv not in prep.levels[name]:
            raise AnalysisError(
                f"baseline level {value!r} of {name} not in the data; levels are: {', '.join(prep.levels[name])}"
            )
        base[name] = lv
    return base, warnings


# --------------------------------------------------------------------------- the table
def _seeds_text(seeds: Sequence[object]) -> str:
    return ", ".join(str(s) for s in seeds)


def _paired(
    prep: Prepared,
    *,
    baseline: Mapping[str, object] | None,
    correction: str = "holm",
    family: Literal["task", "all"] = "task",
    confidence: float = 0.95,
) -> tuple[pd.DataFrame, list[str]]:
    if correction not in CORRECTIONS:
        raise AnalysisError(f"unknown correction {correction!r}: use one of {', '.join(CORRECTIONS)}")
    if family not in ("task", "all"):
        raise AnalysisError(f"unknown family {family!r}: use 'task' or 'all'")
    empty = pd.DataFrame(columns=PAIRED_COLUMNS)
    if not prep.has_seed:
        return empty, ["no seed column: runs cannot be paired, so the paired tests are skipped (rows are replicates)"]
    if not prep.factors:
        return empty, ["no factor columns: nothing to compare, paired tests skipped"]
    base, warnings = resolve_baseline(prep, baseline)

    data = prep.data
    dup = data.groupby(["task", "cell", "seed"]).size()
    dup = dup[dup > 1]
    if not dup.empty:
        shown = "; ".join(f"{t} / {c} / seed {s}: {k} runs" for (t, c, s), k in list(dup.items())[:5])
        warnings.append(f"{len(dup)} (task, cell, seed) with more than one run were averaged before pairing ({shown})")
    per_seed: dict[str, dict[str, dict[object, float]]] = {}
    for (task, cell, seed), v in data.groupby(["task", "cell", "seed"], sort=True)["value"].mean().items():
        per_seed.setdefault(task, {}).setdefault(cell, {})[seed] = float(v)

    cells = data.drop_duplicates("cell").sort_values("cell_rank")
    cell_levels = {r["cell"]: {f: r[f] for f in prep.factors} for _, r in cells.iterrows()}
    counterpart: dict[str, str] = {}
    for cell, lv in cell_levels.items():
        target = {**lv, **base}
        counterpart[cell] = cell_label(target, prep.factors, prep.short)

    rows: list[dict[str, object]] = []
    no_base: list[str] = []
    pooled: dict[str, list[tuple[str, np.ndarray, np.ndarray, list[str]]]] = {}
    for task in prep.tasks:
        if task not in per_seed:
            continue
        task_vals = per_seed[task]
        present = set(task_vals)
        for cell in cell_levels:
            bcell = counterpart[cell]
            if cell not in present or bcell == cell:
                continue
            if bcell not in present:
                no_base.append(f"{task}: {cell} (no {bcell})")
                continue
            c = task_vals[cell]
            b = task_vals[bcell]
            common = sorted(set(c) & set(b))
            only_c = sorted(set(c) - set(b))
            only_b = sorted(set(b) - set(c))
            notes: list[str] = []
            if only_c:
                notes.append(f"dropped seed(s) {_seeds_text(only_c)}: missing in baseline")
            if only_b:
                notes.append(f"dropped seed(s) {_seeds_text(only_b)}: missing in condition")
            cv = np.array([c[k] for k in common], dtype=float)
            bv = np.array([b[k] for k in common], dtype=float)
            stats_row = _paired_stats(cv, bv, confidence)
            notes += list(stats_row.pop("notes"))  # type: ignore[arg-type]
            rows.append({"task": task, "condition": cell, "baseline": bcell, **stats_row, "note": "; ".join(notes)})
            dropped = [f"{task} seed(s) {_seeds_text(only_c + only_b)}"] if (only_c or only_b) else []
            pooled.setdefault(cell, []).append((task, cv, bv, dropped))
    if no_base:
        warnings.append(
            f"{len(no_base)} comparison(s) skipped because the baseline cell has no runs: " + "; ".join(no_base[:5])
        )

    if len(prep.tasks) > 1:
        for cell in cell_levels:
            parts = pooled.get(cell, [])
            if len(parts) < 2:  # a "pooled" row over one task would repeat that task's row
                continue
            cv = np.concatenate([p[1] for p in parts])
            bv = np.concatenate([p[2] for p in parts])
            stats_row = _paired_stats(cv, bv, confidence)
            tasks_in = [p[0] for p in parts]
            notes = [f"pooled over {len(tasks_in)} task(s) ({', '.join(tasks_in)}); pairs are (task, seed)"]
            metrics = sorted({prep.metric_of[t] for t in tasks_in})
            if len(metrics) > 1:
                notes.append(f"differences mix metrics ({', '.join(metrics)})")
            dropped = [d for p in parts for d in p[3]]
            if dropped:
                notes.append("dropped " + "; ".join(dropped))
            notes += list(stats_row.pop("notes"))  # type: ignore[arg-type]
            rows.append({"task": POOLED, "condition": cell, "baseline": counterpart[cell], **stats_row, "note": "; ".join(notes)})

    if not rows:
        warnings.append("no cell other than the baseline has runs: nothing to compare")
        return empty, warnings
    out = pd.DataFrame(rows)
    out["p_adj"] = np.nan
    if family == "all":
        out["p_adj"] = adjust_pvalues(out["p"].to_numpy(dtype=float), correction)
    else:
        for _task, idx in out.groupby("task", sort=False).groups.items():
            out.loc[idx, "p_adj"] = adjust_pvalues(out.loc[idx, "p"].to_numpy(dtype=float), correction)
    out = out[PAIRED_COLUMNS]
    out["n"] = out["n"].astype("int64")
    out["df"] = out["df"].astype(float)

    few = out[(out["n"] >= 1) & (out["n"] <= 5)]
    if not few.empty:
        examples = "; ".join(f"{r.task}: {r.condition} (n={r.n})" for r in few.head(3).itertuples())
        warnings.append(
            f"{len(few)} comparison(s) have 5 or fewer pairs, so their exact Wilcoxon signed-rank p cannot go below "
            f"2/2^n (0.0625 with 5 pairs) and never reaches 0.05: {examples}"
        )
    tiny = out[out["n"] < 3]
    if not tiny.empty:
        examples = "; ".join(f"{r.task}: {r.condition} (n={r.n})" for r in tiny.head(3).itertuples())
        warnings.append(f"{len(tiny)} comparison(s) have fewer than 3 pairs: their tests are unreliable or undefined ({examples})")
    return out.reset_index(drop=True), warnings


def paired_tests(
    df: pd.DataFrame,
    *,
    metric: MetricSpec,
    factors: Sequence[str] | None = None,
    baseline: Mapping[str, object] | None = None,
    correction: str = "holm",
    family: Literal["task", "all"] = "task",
    confidence: float = 0.95,
) -> pd.DataFrame:
    """Compare every cell with its baseline cell, paired by seed within each task.

    Returns one row per (task, condition) plus ``task == "pooled"`` rows (pairs =
    (task, seed), for conditions compared in two or more tasks), with columns ``task, condition,
    baseline, n, mean_diff, ci_low, ci_high, t, df, p, p_adj, dz, wilcoxon_p, note``.

    * diff = condition − baseline; t-test: ``scipy.stats.ttest_rel`` (df = n − 1);
      CI: mean(d) ± t_{1-α/2, n-1}·sd(d)/√n; d_z = mean(d)/sd(d, ddof=1).
    * A seed present in only one of the two cells drops that pair only; ``note``
      names the dropped seeds. Several runs of one (task, cell, seed) are averaged.
    * ``baseline``: dict factor -> level (full or short factor names; values compared
      as strings so ``0.5 == "0.5"``); a partial baseline compares each cell with the
      cell that has the baseline levels for the named factors and its own levels for
      the others. ``None``: first level of every factor (a warning says so).
    * ``correction``: ``holm`` (default), ``fdr_bh``, ``bonferroni`` or ``none``,
      applied within each family (see the module docstring; ``family="all"`` adjusts
      all rows together).

    Warnings are in ``frame.attrs["warnings"]``: comparisons with ≤ 5 pairs (the
    exact two-sided Wilcoxon p is at least 2/2^n = 0.0625 at n = 5) and with < 3 pairs.

    Reference (R): ``t.test(extra ~ group, data = sleep, paired = TRUE)``.
    """
    prep = prepare(df, metric=metric, factors=factors)
    out, warnings = _paired(prep, baseline=baseline, correction=correction, family=family, confidence=confidence)
    out.attrs["warnings"] = prep.warnings + warnings
    return out
