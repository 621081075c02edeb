"""Paired comparisons of every cell against a baseline cell, seeds as pairs.

Every run of a kdgrid study uses its seed for the data order, the initialisation and
dropout, in every cell, so two cells are compared on the *differences* d between runs
with the same seed (and task). For each comparison we report

* the mean difference (condition − baseline), its unadjusted t interval (``ci_low``,
  ``ci_high``) and its simultaneous interval (``sci_low``, ``sci_high``): the Bonferroni
  interval mean(d) ± t_{1−α/(2m), n−1}·sd(d)/√n for a family of m comparisons. It is
  consistent with the correction: a simultaneous interval that excludes 0 means m·p < α,
  so Holm, Bonferroni and BH all reject that hypothesis (Holm can reject more: its later
  steps test at α/(m − j + 1)). With ``correction="none"`` the two intervals are equal and
  the report labels them unadjusted,
* the test of H0: μ_d = 0 behind ``p``: Student's paired t-test (``scipy.stats.ttest_rel``,
  df = n − 1), or, when every difference is the same non-zero number and t is undefined, the
  exact Wilcoxon signed-rank test (``test`` names which; :mod:`kdgrid.analyze.verdict`),
* d_z = mean(d) / sd(d, ddof=1), the standardised mean difference of paired data (Cohen,
  1988, eq. 2.3.5; Lakens, 2013, *Front. Psychol.* 4:863, eq. 6), not pingouin's paired
  ``cohen_d``, which divides by the average sd of the two cells,
* the exact Wilcoxon signed-rank p as a robustness check (:func:`wilcoxon_signed_rank`:
  the exact permutation distribution of the mid-ranks, with ties and zeros, up to 16
  non-zero pairs; with 5 pairs its two-sided floor is 2/2^5 = 0.0625),
* ``p_adj``: p adjusted within the comparison's family (Holm by default; Benjamini-Hochberg,
  Bonferroni or none on request; :func:`adjust_pvalues`), ``family`` naming it,
* the TOST p of equivalence within ±``margin`` (the metric's declared equivalence margin),
  adjusted in the same family (``p_equiv_adj``), and the ``verdict``: *different*
  (p_adj < α), *equivalent* (p_equiv_adj < α) or *inconclusive*,
* ``baseline_at_floor``: the baseline student's t interval over seeds reaches the task's
  floor (majority class or chance): a difference between students at the floor says little
  about the methods.

Families. By default (``family="task"``) each task's comparisons against the baseline form
one family: a reader of a task's table asks "which settings differ from the baseline on this
task?". ``family="all"`` adjusts every row at once (more conservative). A family holds each
comparison once: two conditions that are the same runs (cells collapsed by a setting without
effect) against the same baseline runs are one hypothesis; the second row repeats the first
row's numbers, says so in ``note`` and is not counted in m. A condition that is the same runs
as its own baseline is not a comparison and is left out (a warning lists it).

Comparisons over several tasks are in :mod:`kdgrid.analyze.pooled` (never by pooling raw
differences of different metrics).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal, cast

import numpy as np
import pandas as pd
from scipy import stats

from kdgrid.analyze.dist import t_ppf
from kdgrid.analyze.tidy import AnalysisError, MetricSpec, Prepared, cell_label, level_key, level_keys, prepare
from kdgrid.analyze.verdict import EXACT_MAX_N, classify, difference_p, equivalence_p, exact_wilcoxon

__all__ = [
    "CORRECTIONS",
    "DEFAULT_MARGIN",
    "PAIRED_COLUMNS",
    "adjust_pvalues",
    "family_adjust",
    "margin_of",
    "min_wilcoxon_p",
    "paired_tests",
    "paired_ttest",
    "resolve_baseline",
    "run_keys",
    "wilcoxon_signed_rank",
]

PAIRED_COLUMNS = [
    "task",
    "metric",
    "condition",
    "baseline",
    "n",
    "mean_diff",
    "ci_low",
    "ci_high",
    "sci_low",
    "sci_high",
    "t",
    "df",
    "p",
    "test",
    "p_adj",
    "family",
    "family_size",
    "dz",
    "wilcoxon_p",
    "margin",
    "p_equiv",
    "p_equiv_adj",
    "verdict",
    "baseline_mean",
    "floor",
    "baseline_at_floor",
    "note",
]
#: Allowed ``correction`` names (the statsmodels ``multipletests`` method names).
CORRECTIONS: tuple[str, ...] = ("holm", "fdr_bh", "bonferroni", "none")
#: Default equivalence margin in the metric's own units: 0.01 is one point on the ×100 scale of
#: a GLUE score, about the smallest difference papers on GLUE treat as worth reporting.
DEFAULT_MARGIN = 0.01

Margin = float | Mapping[str, float]


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
    """Two-sided Wilcoxon signed-rank p for paired differences, exact at the seed counts used here.

    Differences are rounded to 12 decimals first, so that floating-point noise does not
    break ties (metric differences are often exact multiples of 1/n_dev). Zeros are dropped
    (Wilcoxon's method, as R), the rest ranked by |d| with mid-ranks for ties, and p taken
    from the exact permutation distribution of those mid-ranks over all 2^n sign flips
    (``scipy.stats.wilcoxon(d, zero_method="wilcox", method=PermutationMethod(n_resamples=inf))``),
    so ties and zeros never switch small samples to the normal approximation. Beyond 16
    non-zero pairs scipy's default (exact without ties, else normal approximation) is used
    and the note says so. Returns ``(p, note)``; p is NaN with a note when n < 2 or every
    difference is 0.

    With n non-zero pairs the smallest two-sided p is 2/2^n (0.0625 for 5 pairs).
    """
    d = np.round(np.asarray(diffs, dtype=float), 12)
    if d.size < 2:
        return np.nan, "Wilcoxon undefined with fewer than 2 pairs"
    nonzero = d[d != 0]
    if nonzero.size == 0:
        return np.nan, "Wilcoxon undefined: all differences are zero"
    note = (
        ""
        if nonzero.size <= EXACT_MAX_N
        else f"Wilcoxon p from scipy's default method (more than {EXACT_MAX_N} non-zero pairs)"
    )
    return exact_wilcoxon(nonzero), note


def _t_defined(d: np.ndarray) -> bool:
    """The t interval and statistic of these differences exist: 2+ pairs and a spread that is not float noise."""
    if d.size < 2:
        return False
    sd = float(d.std(ddof=1))
    return math.isfinite(sd) and sd > 1e-12 * max(1.0, float(np.abs(d).max()))


def _t_interval(d: np.ndarray, level: float) -> tuple[float, float]:
    n = d.size
    if not _t_defined(d):
        return np.nan, np.nan
    sd = float(d.std(ddof=1))
    half = t_ppf(0.5 + level / 2, n - 1) * sd / math.sqrt(n)
    return float(d.mean()) - half, float(d.mean()) + half


def _batched_t(pairs: Sequence[tuple[np.ndarray, np.ndarray]]) -> list[tuple[float | None, float | None, float | None]]:
    """Per comparison (condition, baseline): the one-sample t p of its rounded differences where
    :func:`kdgrid.analyze.verdict.difference_p` takes the t test, ``scipy.stats.ttest_rel``'s statistic where
    :func:`_paired_stats` reports t, and the exact Wilcoxon p where :func:`wilcoxon_signed_rank` computes it by
    sign flips; None where they do not ask for it.

    One scipy call (one matrix product for Wilcoxon) per pair count instead of one per comparison (1,000
    comparisons: ~2 ms each in scipy's argument handling): scipy reduces each row of ``axis=1`` as it reduces
    a 1-D sample, and the Wilcoxon sums are exact, so the numbers are those of the one-by-one calls bit for
    bit (``tests/test_analyze_fast.py``).
    """
    from kdgrid.analyze.verdict import _clean, _constant, sign_flip_p_many

    one: dict[int, list[tuple[int, np.ndarray]]] = {}
    rel: dict[int, list[tuple[int, np.ndarray, np.ndarray]]] = {}
    flips: list[tuple[int, np.ndarray]] = []
    for i, (c, b) in enumerate(pairs):
        d = c - b
        dc = _clean(d)
        if dc.size >= 2 and not _constant(dc):
            one.setdefault(dc.size, []).append((i, dc))
        if _t_defined(d):
            rel.setdefault(d.size, []).append((i, c, b))
        nonzero = np.round(d, 12)
        nonzero = nonzero[nonzero != 0]
        if d.size >= 2 and 2 <= nonzero.size <= EXACT_MAX_N:  # wilcoxon_signed_rank's exact branch
            flips.append((i, nonzero))
    p_of: dict[int, float] = {}
    for group in one.values():
        ps = np.atleast_1d(stats.ttest_1samp(np.vstack([dc for _, dc in group]), 0.0, axis=1).pvalue)
        p_of.update({i: float(p) for (i, _), p in zip(group, ps)})
    t_of: dict[int, float] = {}
    for trio in rel.values():
        ts = stats.ttest_rel(np.vstack([c for _, c, _ in trio]), np.vstack([b for _, _, b in trio]), axis=1)
        t_of.update({i: float(t) for (i, _, _), t in zip(trio, np.atleast_1d(ts.statistic))})
    w_of = dict(zip([i for i, _ in flips], sign_flip_p_many([nz for _, nz in flips])))
    return [(p_of.get(i), t_of.get(i), w_of.get(i)) for i in range(len(pairs))]


def _paired_stats(
    cond: np.ndarray,
    base: np.ndarray,
    confidence: float,
    pre: tuple[float | None, float | None, float | None] = (None, None, None),
) -> dict[str, object]:
    """Statistics of one paired comparison; ``notes`` is a list of strings. ``pre``: :func:`_batched_t`'s
    (t-test p, ttest_rel statistic, exact Wilcoxon p) for this comparison, when computed with others."""
    d = cond - base
    n = int(d.size)
    nan = np.nan
    row: dict[str, object] = dict(
        n=n, mean_diff=nan, ci_low=nan, ci_high=nan, t=nan, df=nan, p=nan, test="", dz=nan, wilcoxon_p=nan
    )
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
    p, test = difference_p(d, t_pvalue=pre[0])
    row.update(p=p, test=test)
    lo, hi = _t_interval(d, confidence)
    if math.isfinite(lo):
        t = float(stats.ttest_rel(cond, base).statistic) if pre[1] is None else pre[1]
        row.update(t=t, ci_low=lo, ci_high=hi, dz=float(d.mean()) / float(d.std(ddof=1)))
    elif np.any(np.round(d, 12) != 0):
        notes.append(
            "differences are constant (sd = 0): t, its interval and d_z undefined; p from the exact "
            "Wilcoxon signed-rank test, the smallest p these pairs allow"
        )
    else:
        notes.append("all differences are zero")
    wp, wnote = wilcoxon_signed_rank(d) if pre[2] is None else (pre[2], "")
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

    One-row frame with ``n, mean_diff, ci_low, ci_high, t, df, p, test, dz, wilcoxon_p,
    note`` where diff = condition − baseline, t = mean(d)/(sd(d)/√n) with n − 1 df
    (``scipy.stats.ttest_rel``), CI = mean(d) ± t_{1-α/2,n-1}·sd(d)/√n,
    d_z = mean(d)/sd(d) (ddof=1), Wilcoxon as :func:`wilcoxon_signed_rank`. Constant
    non-zero differences: p from the exact Wilcoxon test (``test`` says so).

    Reference (R): ``t.test(condition, baseline, paired = TRUE)``.
    """
    x = np.asarray(condition, dtype=float)
    y = np.asarray(baseline, dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise AnalysisError(f"paired samples must be 1-D and equally long, got {x.shape} and {y.shape}")
    ok = np.isfinite(x) & np.isfinite(y)
    row = _paired_stats(x[ok], y[ok], confidence)
    notes = list(cast("list[str]", row.pop("notes")))
    if (~ok).any():
        notes.insert(0, f"dropped {int((~ok).sum())} pair(s) with a missing value")
    row["note"] = "; ".join(notes)
    cols = ["n", "mean_diff", "ci_low", "ci_high", "t", "df", "p", "test", "dz", "wilcoxon_p", "note"]
    return pd.DataFrame([row], columns=cols)


def margin_of(margin: Margin | None, metric: str) -> float:
    """The equivalence margin of a metric: a number for every metric, or a dict metric -> margin."""
    if margin is None:
        return DEFAULT_MARGIN
    if isinstance(margin, Mapping):
        return float(margin.get(metric, DEFAULT_MARGIN))
    return float(margin)


def run_keys(prep: Prepared, df: pd.DataFrame | None = None) -> dict[tuple[str, str], tuple[object, ...]]:
    """(task, cell) -> the identity of its runs: the sorted run ids of that task and cell.

    Two cells with the same key are the same runs (collapsed by a setting without effect). The run ids
    come from ``prep.data`` when it carries them, else from the raw table ``df`` (its ``run_id``
    column, its rows labelled as :func:`kdgrid.analyze.tidy.prepare` labels them). Without run ids every
    cell is its own identity: equal values are never taken for the same runs (two students that
    both collapse to MCC 0 are different runs).
    """
    cells = prep.data[["task", "cell"]].drop_duplicates()
    own: dict[tuple[str, str], tuple[object, ...]] = {
        (str(t), str(c)): (("cell", str(t), str(c)),) for t, c in zip(cells["task"], cells["cell"])
    }
    if "run_id" in prep.data.columns:
        src = prep.data[["task", "cell", "run_id"]]
    elif df is not None and "run_id" in df.columns and all(f in df.columns for f in prep.factors):
        task = df["task"].astype(str) if "task" in df.columns else pd.Series("all", index=df.index)
        if prep.factors:
            levels = zip(*(level_keys(df[f]) for f in prep.factors))
            label = [cell_label(dict(zip(prep.factors, lv)), prep.factors, prep.short) for lv in levels]
        else:
            label = ["all"] * len(df)
        src = pd.DataFrame({"task": task.to_numpy(), "cell": label, "run_id": df["run_id"].to_numpy()}).dropna()
    else:
        return own
    # One groupby call for every cell (a pandas group per cell cost 0.4 s at 1,000 cells).
    ids_of = src.groupby(["task", "cell"], sort=False)["run_id"].unique()
    for key, ids in zip(ids_of.index, ids_of.tolist()):
        t_key, c_key = (str(x) for x in cast("tuple[object, object]", key))
        if (t_key, c_key) in own:
            own[(t_key, c_key)] = tuple(sorted(map(str, ids)))
    return own


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
        row = prep.data.iloc[int(np.argmin(prep.data["cell_rank"].to_numpy()))]
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
            raise AnalysisError(
                f"baseline factor {key!r} is not a factor; factors are: {', '.join(prep.factors) or '(none)'}"
            )
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


def _floor_check(base: np.ndarray, floor: float | None, confidence: float) -> tuple[float, bool]:
    """(floor, baseline at the floor): the baseline's t interval over seeds reaches the floor or lies below it."""
    if floor is None or not math.isfinite(floor) or base.size == 0:
        return np.nan, False
    if base.size < 2 or float(base.std(ddof=1)) == 0:
        return float(floor), bool(float(base.mean()) <= floor)
    half = t_ppf(0.5 + confidence / 2, base.size - 1) * float(base.std(ddof=1)) / math.sqrt(base.size)
    return float(floor), bool(float(base.mean()) - half <= floor)


def _paired(
    prep: Prepared,
    *,
    baseline: Mapping[str, object] | None,
    correction: str = "holm",
    family: Literal["task", "all"] = "task",
    confidence: float = 0.95,
    margin: Margin | None = None,
    floors: Mapping[str, float] | None = None,
    internal: bool = False,
    keys: Mapping[tuple[str, str], tuple[object, ...]] | None = None,
) -> tuple[pd.DataFrame, list[str]]:
    """The paired table and its warnings; ``internal`` keeps ``_dup_of`` and ``_diffs`` for the pooled analyses."""
    if correction not in CORRECTIONS:
        raise AnalysisError(f"unknown correction {correction!r}: use one of {', '.join(CORRECTIONS)}")
    if family not in ("task", "all"):
        raise AnalysisError(f"unknown family {family!r}: use 'task' or 'all'")
    if not 0 < confidence < 1:
        raise AnalysisError(f"confidence must be in (0, 1), got {confidence}")
    alpha = 1.0 - confidence
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
        shown = "; ".join(
            f"{t} / {c} / seed {s}: {k} runs"
            for t, c, s, k in dup.reset_index().head(5).itertuples(index=False, name=None)
        )
        warnings.append(f"{len(dup)} (task, cell, seed) with more than one run were averaged before pairing ({shown})")
    per_seed: dict[
        str, dict[str, dict[Any, float]]
    ] = {}  # seed keys: ints from the store, any sortable value from a table
    means = data.groupby(["task", "cell", "seed"], sort=True)["value"].mean().reset_index()
    for task, cell, seed, v in means.itertuples(index=False, name=None):
        per_seed.setdefault(task, {}).setdefault(cell, {})[seed] = float(v)
    keys = dict(keys) if keys is not None else run_keys(prep)

    cells = data.drop_duplicates("cell").sort_values("cell_rank")
    cell_levels = {r["cell"]: {f: r[f] for f in prep.factors} for _, r in cells.iterrows()}
    counterpart: dict[str, str] = {}
    for cell, lv in cell_levels.items():
        target = {**lv, **base}
        counterpart[cell] = cell_label(target, prep.factors, prep.short)

    rows: list[dict[str, object]] = []
    no_base: list[str] = []
    same_runs: list[str] = []
    seen: dict[tuple[object, ...], int] = {}  # (task, condition runs, baseline runs) -> first row
    pending: list[tuple[str, str, str, str, tuple[object, ...], tuple[object, ...], np.ndarray, np.ndarray, list[str]]]
    pending = []
    for task in prep.tasks:
        if task not in per_seed:
            continue
        task_vals = per_seed[task]
        present = set(task_vals)
        metric = prep.metric_of[task]
        for cell in cell_levels:
            bcell = counterpart[cell]
            if cell not in present or bcell == cell:
                continue
            if bcell not in present:
                no_base.append(f"{task}: {cell} (no {bcell})")
                continue
            ckey, bkey = keys[(task, cell)], keys[(task, bcell)]
            if ckey == bkey:
                same_runs.append(f"{task}: {cell} = {bcell}")
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
            pending.append((task, metric, cell, bcell, ckey, bkey, cv, bv, notes))
    # Second pass, in the same order: the t tests of all comparisons were computed together.
    for (task, metric, cell, bcell, ckey, bkey, cv, bv, notes), pre in zip(
        pending, _batched_t([(cv, bv) for *_, cv, bv, _ in pending])
    ):
        stats_row = _paired_stats(cv, bv, confidence, pre)
        notes += cast("list[str]", stats_row.pop("notes"))
        m = margin_of(margin, metric)
        floor, at_floor = _floor_check(bv, (floors or {}).get(task), confidence)
        if at_floor:
            notes.append(f"baseline student at the floor ({floor:.3g}): the difference says little about the methods")
        key = (task, ckey, bkey)
        dup_of = seen.get(key)
        if dup_of is not None:
            notes.append(f"same runs as the comparison of {rows[dup_of]['condition']}: counted once in the family")
        else:
            seen[key] = len(rows)
        rows.append(
            {
                "task": task,
                "metric": metric,
                "condition": cell,
                "baseline": bcell,
                **stats_row,
                "margin": m,
                "p_equiv": equivalence_p(cv - bv, m),
                "baseline_mean": float(bv.mean()) if bv.size else np.nan,
                "floor": floor,
                "baseline_at_floor": at_floor,
                "note": "; ".join(notes),
                "_dup_of": dup_of,
                "_diffs": cv - bv,
            }
        )
    if no_base:
        warnings.append(
            f"{len(no_base)} comparison(s) skipped because the baseline cell has no runs: " + "; ".join(no_base[:5])
        )
    if same_runs:
        warnings.append(
            f"{len(same_runs)} condition(s) are the same runs as their baseline (collapsed cells) and are not "
            "compared: " + "; ".join(same_runs[:5])
        )

    if not rows:
        warnings.append("no cell other than the baseline has runs: nothing to compare")
        return empty, warnings
    out = pd.DataFrame(rows)
    _adjust_families(out, correction=correction, family=family, alpha=alpha)
    repeated = out["_dup_of"].notna().to_numpy()
    out = out[PAIRED_COLUMNS + (["_dup_of", "_diffs"] if internal else [])]
    out["n"] = out["n"].astype("int64")
    out["df"] = out["df"].astype(float)
    out["baseline_at_floor"] = out["baseline_at_floor"].astype(bool)

    own = out[~repeated]  # a comparison repeated by collapsed cells is counted once in the warnings too
    floor_rows = own[own["baseline_at_floor"]]
    if not floor_rows.empty:
        tasks_at = ", ".join(dict.fromkeys(f"{r.task} ({r.baseline})" for r in floor_rows.itertuples()))
        warnings.append(
            f"{len(floor_rows)} comparison(s) have a baseline student no better than the majority class or chance "
            f"(its {confidence:.0%} interval reaches the floor): {tasks_at}; differences between students at the "
            "floor are not evidence about the methods"
        )
    few = own[(own["n"] >= 1) & (own["n"] <= 5)]
    if not few.empty:
        examples = "; ".join(f"{r.task}: {r.condition} (n={r.n})" for r in few.head(3).itertuples())
        warnings.append(
            f"{len(few)} comparison(s) have 5 or fewer pairs, so their exact Wilcoxon signed-rank p cannot go below "
            f"2/2^n (0.0625 with 5 pairs) and never reaches 0.05: {examples}"
        )
    tiny = own[own["n"] < 3]
    if not tiny.empty:
        examples = "; ".join(f"{r.task}: {r.condition} (n={r.n})" for r in tiny.head(3).itertuples())
        warnings.append(
            f"{len(tiny)} comparison(s) have fewer than 3 pairs: their tests are unreliable or undefined ({examples})"
        )
    return out.reset_index(drop=True), warnings


def family_adjust(
    p: np.ndarray,
    p_equiv: np.ndarray,
    n: np.ndarray,
    mean: np.ndarray,
    ci_low: np.ndarray,
    *,
    correction: str,
    alpha: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One family: (p_adj, p_equiv_adj, sci_low, sci_high) from each comparison's p, TOST p, n, mean and
    unadjusted (1 − α) t interval's lower limit.

    The simultaneous interval is the Bonferroni t interval at level 1 − α/m (m = comparisons with a
    finite p): excluding 0 implies m·p < α, so Holm, Bonferroni and BH reject too. With
    ``correction="none"`` it is the unadjusted interval.
    """
    p = np.asarray(p, dtype=float)
    n = np.asarray(n, dtype=float)
    mean = np.asarray(mean, dtype=float)
    ci_low = np.asarray(ci_low, dtype=float)
    m = int(np.isfinite(p).sum())
    level = 1.0 - alpha / max(m, 1) if correction != "none" else 1.0 - alpha
    sci_low, sci_high = np.full(p.shape, np.nan), np.full(p.shape, np.nan)
    ok = (n >= 2) & np.isfinite(ci_low)
    if ok.any():
        df = n[ok] - 1
        half = (mean[ok] - ci_low[ok]) * stats.t.ppf(0.5 + level / 2, df) / stats.t.ppf(1.0 - alpha / 2, df)
        sci_low[ok], sci_high[ok] = mean[ok] - half, mean[ok] + half
    return adjust_pvalues(p, correction), adjust_pvalues(p_equiv, correction), sci_low, sci_high


def _adjust_families(out: pd.DataFrame, *, correction: str, family: str, alpha: float) -> None:
    """Fill p_adj, p_equiv_adj, family, family_size, sci_low/high and verdict in place.

    Each family counts a comparison once: rows that repeat another row's runs (``_dup_of``)
    take that row's adjusted values.
    """
    nrow = len(out)
    p = out["p"].to_numpy(dtype=float)
    pe = out["p_equiv"].to_numpy(dtype=float)
    n = out["n"].to_numpy(dtype=float)
    mean = out["mean_diff"].to_numpy(dtype=float)
    lo = out["ci_low"].to_numpy(dtype=float)
    dup = out["_dup_of"].to_numpy(dtype=object)
    own = np.array([d is None or (isinstance(d, float) and math.isnan(d)) for d in dup], dtype=bool)
    p_adj, pe_adj = np.full(nrow, np.nan), np.full(nrow, np.nan)
    sci_low, sci_high = np.full(nrow, np.nan), np.full(nrow, np.nan)
    fam_label = np.empty(nrow, dtype=object)
    fam_size = np.zeros(nrow, dtype="int64")
    tasks = out["task"].astype(str).to_numpy()
    keys = ["all"] if family == "all" else list(dict.fromkeys(tasks))
    for name in keys:
        member = np.ones(nrow, dtype=bool) if family == "all" else tasks == name
        sel = member & own
        m = int(np.isfinite(p[sel]).sum())
        label = (
            "all comparisons vs the baseline, every task"
            if family == "all"
            else f"{name}: every condition vs the baseline"
        )
        fam_label[member] = label + f" ({m} comparison{'s' if m != 1 else ''}, {correction})"
        fam_size[member] = m
        p_adj[sel], pe_adj[sel], sci_low[sel], sci_high[sel] = family_adjust(
            p[sel], pe[sel], n[sel], mean[sel], lo[sel], correction=correction, alpha=alpha
        )
    for i in np.flatnonzero(~own):
        j = int(dup[i])
        p_adj[i], pe_adj[i], sci_low[i], sci_high[i] = p_adj[j], pe_adj[j], sci_low[j], sci_high[j]
    out["p_adj"], out["p_equiv_adj"], out["sci_low"], out["sci_high"] = p_adj, pe_adj, sci_low, sci_high
    out["family"], out["family_size"] = fam_label, fam_size
    touches = np.isfinite(sci_low) & (sci_low <= 0) & (sci_high >= 0)
    late = own & (p_adj < alpha) & touches
    if late.any():
        notes = out["note"].astype(str).to_numpy(dtype=object)
        for i in np.flatnonzero(late):
            extra = (
                f"{correction} rejects at a later step (level above α/m) while the Bonferroni interval, which "
                f"covers all {fam_size[i]} comparisons at once, still touches 0"
            )
            notes[i] = f"{notes[i]}; {extra}" if notes[i] else extra
        out["note"] = notes
    out["verdict"] = [
        classify(float(pa), float(pq), alpha)[0] if math.isfinite(float(pv)) else ""
        for pv, pa, pq in zip(p, p_adj, pe_adj)
    ]


def paired_tests(
    df: pd.DataFrame,
    *,
    metric: MetricSpec,
    factors: Sequence[str] | None = None,
    baseline: Mapping[str, object] | None = None,
    correction: str = "holm",
    family: Literal["task", "all"] = "task",
    confidence: float = 0.95,
    margin: Margin | None = None,
    floors: Mapping[str, float] | None = None,
) -> pd.DataFrame:
    """Compare every cell with its baseline cell, paired by seed within each task.

    Returns one row per (task, condition) with the columns of :data:`PAIRED_COLUMNS`
    (see the module docstring for each).

    * diff = condition − baseline; t-test: ``scipy.stats.ttest_rel`` (df = n − 1);
      CI: mean(d) ± t_{1-α/2, n-1}·sd(d)/√n; simultaneous CI with α/m; d_z = mean(d)/sd(d, ddof=1).
    * A seed present in only one of the two cells drops that pair only; ``note``
      names the dropped seeds. Several runs of one (task, cell, seed) are averaged.
    * ``baseline``: dict factor -> level (full or short factor names; values compared
      as strings so ``0.5 == "0.5"``); a partial baseline compares each cell with the
      cell that has the baseline levels for the named factors and its own levels for
      the others. ``None``: first level of every factor (a warning says so).
    * ``correction``: ``holm`` (default), ``fdr_bh``, ``bonferroni`` or ``none``,
      applied within each family (``family="all"`` adjusts all rows together).
    * ``margin``: equivalence margin in the metric's units, one number or a dict
      metric -> margin (default :data:`DEFAULT_MARGIN`). ``floors``: task -> majority-class
      or chance score (for ``baseline_at_floor``).

    Warnings are in ``frame.attrs["warnings"]``.

    Reference (R): ``t.test(extra ~ group, data = sleep, paired = TRUE)``.
    """
    prep = prepare(df, metric=metric, factors=factors)
    out, warnings = _paired(
        prep,
        baseline=baseline,
        correction=correction,
        family=family,
        confidence=confidence,
        margin=margin,
        floors=floors,
        keys=run_keys(prep, df),
    )
    out.attrs["warnings"] = prep.warnings + warnings
    return out
