"""Comparisons over several tasks, without ever adding raw differences of different metrics.

Two questions, two methods:

* **Within one metric** (e.g. accuracy on RTE and on SST-2): does a condition beat its baseline
  on average over the tasks? A stratified model of the paired differences with the task as a
  fixed effect, d_ts = μ + τ_t + ε_ts with Σ_t τ_t = 0 (``statsmodels`` OLS, ``d ~ C(task, Sum)``).
  μ is the unweighted mean of the per-task mean differences, its standard error
  √(s²/T² · Σ_t 1/n_t) uses the pooled within-task variance s² with N − T df, so differences
  between tasks are not mistaken for seed noise. The F test of τ (``heterogeneity_p``) says
  whether the effect differs between tasks; when it does, μ is an average of unlike effects
  and the per-task rows are the answer. One family per metric (every condition vs the
  baseline), Holm by default, with Bonferroni simultaneous intervals and a TOST verdict
  within ±margin, as the per-task tests (:mod:`kdgrid.analyze.paired`).
* **Across tasks with different metrics**: rank-based comparison (Demšar, 2006, *JMLR* 7:1).
  Each block, a (task, seed) pair, ranks the cells on that task's own metric (rank 1 = best,
  mid-ranks for ties), so nothing of one metric is added to another. The Friedman test
  (``scipy.stats.friedmanchisquare``) asks whether the cells' mean ranks differ; the Nemenyi
  post-hoc test (what ``scikit_posthocs.posthoc_nemenyi_friedman`` computes, :func:`nemenyi_p`) compares every pair of cells
  with family-wise error α over all k(k−1)/2 pairs, and two cells whose mean ranks differ by
  less than the critical difference CD = q_α·√(k(k+1)/(6N)) (q_α: the studentized range
  quantile / √2) are not distinguishable: that is what the critical-difference diagram draws.
  Blocks are (task, seed) rather than tasks alone because studies here have 2-3 tasks; the
  null is that within every task and seed the cells are exchangeable, and a rejection says the
  cells differ somewhere, not that the ranking generalises to other tasks. Cells that are the
  same runs (collapsed cells) enter once; only cells with a run in every block, and blocks
  with every such cell, are used.
"""

from __future__ import annotations

import math
import warnings as pywarnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from kdgrid.analyze.tidy import Prepared

__all__ = [
    "NEMENYI_COLUMNS",
    "RANK_COLUMNS",
    "STRATIFIED_COLUMNS",
    "friedman_ranks",
    "stratified_effect",
    "stratified_tests",
]

STRATIFIED_COLUMNS = [
    "metric",
    "condition",
    "baseline",
    "tasks",
    "n",
    "estimate",
    "se",
    "df",
    "ci_low",
    "ci_high",
    "sci_low",
    "sci_high",
    "t",
    "p",
    "p_adj",
    "family",
    "family_size",
    "heterogeneity_F",
    "heterogeneity_p",
    "margin",
    "p_equiv",
    "p_equiv_adj",
    "verdict",
    "note",
]
RANK_COLUMNS = ["cell", "mean_rank", "n_blocks", "same_as"]
NEMENYI_COLUMNS = ["cell_a", "cell_b", "rank_diff", "p"]


def stratified_effect(diffs: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Mean paired difference over tasks with the task as a fixed effect (see the module docstring).

    ``diffs``: task -> that task's paired differences (one metric). Returns estimate, se, df,
    t, p (two-sided), heterogeneity_F, heterogeneity_p and n; NaN where undefined (a single
    task, or no residual df).
    """
    import statsmodels.formula.api as smf

    parts = {t: np.asarray(d, dtype=float) for t, d in diffs.items() if len(d)}
    frame = pd.DataFrame(
        {"d": np.concatenate(list(parts.values())) if parts else [], "task": [t for t, d in parts.items() for _ in d]}
    )
    n, k = len(frame), len(parts)
    out = dict(
        estimate=np.nan,
        se=np.nan,
        df=np.nan,
        t=np.nan,
        p=np.nan,
        heterogeneity_F=np.nan,
        heterogeneity_p=np.nan,
        n=float(n),
    )
    if k < 2 or n - k < 1:
        return out
    fit = smf.ols("d ~ C(task, Sum)", data=frame).fit()
    out.update(estimate=float(fit.params["Intercept"]), se=float(fit.bse["Intercept"]), df=float(fit.df_resid))
    if not (out["se"] > 1e-15 * max(1.0, abs(out["estimate"]))):
        out["se"] = np.nan
        return out
    out["t"] = out["estimate"] / out["se"]
    out["p"] = float(2 * stats.t.sf(abs(out["t"]), out["df"]))
    names = [c for c in fit.params.index if c != "Intercept"]
    with pywarnings.catch_warnings():
        pywarnings.simplefilter("ignore")
        ft = fit.f_test(np.eye(len(fit.params))[1:]) if names else None
    if ft is not None:
        out["heterogeneity_F"] = float(np.squeeze(ft.fvalue))
        out["heterogeneity_p"] = float(np.squeeze(ft.pvalue))
    return out


def _tost_t(estimate: float, se: float, df: float, margin: float) -> float:
    if not (math.isfinite(se) and se > 0 and margin > 0):
        return np.nan
    return float(max(stats.t.sf((estimate + margin) / se, df), stats.t.cdf((estimate - margin) / se, df)))


def stratified_tests(
    paired: pd.DataFrame,
    diffs: Mapping[tuple[str, str], np.ndarray],
    *,
    correction: str,
    alpha: float = 0.05,
) -> pd.DataFrame:
    """One row per (metric, condition) compared on two or more tasks of that metric.

    ``paired``: the per-task rows (with ``_dup_of`` marking repeats of the same runs, which
    are skipped); ``diffs``: (task, condition) -> the paired differences.
    """
    from kdgrid.analyze.paired import adjust_pvalues
    from kdgrid.analyze.verdict import classify

    rows: list[dict[str, Any]] = []
    own = paired[paired["_dup_of"].isna()] if "_dup_of" in paired.columns else paired
    # Only conditions compared on 2+ tasks pool; dropping the others first spares a pandas group per
    # comparison (1,000 single-task comparisons: 0.3 s for nothing).
    own = own[own.groupby(["metric", "condition"], sort=False)["task"].transform("nunique") >= 2]
    for (metric, cond), grp in own.groupby(["metric", "condition"], sort=False):
        if grp["task"].nunique() < 2:
            continue
        parts = {str(r.task): diffs[(str(r.task), str(cond))] for r in grp.itertuples()}
        eff = stratified_effect(parts)
        margin = float(grp["margin"].iloc[0])
        note = "" if math.isfinite(eff["se"]) else "differences constant within every task: no residual variance"
        rows.append(
            {
                "metric": metric,
                "condition": cond,
                "baseline": "; ".join(dict.fromkeys(grp["baseline"].astype(str))),
                "tasks": ", ".join(parts),
                "n": int(eff["n"]),
                "estimate": eff["estimate"],
                "se": eff["se"],
                "df": eff["df"],
                "t": eff["t"],
                "p": eff["p"],
                "heterogeneity_F": eff["heterogeneity_F"],
                "heterogeneity_p": eff["heterogeneity_p"],
                "margin": margin,
                "p_equiv": _tost_t(eff["estimate"], eff["se"], eff["df"], margin),
                "note": note,
            }
        )
    if not rows:
        return pd.DataFrame(columns=STRATIFIED_COLUMNS)
    out = pd.DataFrame(rows)
    out["p_adj"] = np.nan
    out["p_equiv_adj"] = np.nan
    for metric, idx in out.groupby("metric", sort=False).groups.items():
        out.loc[idx, "p_adj"] = adjust_pvalues(out.loc[idx, "p"].to_numpy(dtype=float), correction)
        out.loc[idx, "p_equiv_adj"] = adjust_pvalues(out.loc[idx, "p_equiv"].to_numpy(dtype=float), correction)
        m = int(np.isfinite(out.loc[idx, "p"].to_numpy(dtype=float)).sum())
        out.loc[idx, "family"] = (
            f"{metric}, task as a fixed effect: every condition vs the baseline ({m}, {correction})"
        )
        out.loc[idx, "family_size"] = m
    for lvl, lo, hi in ((1 - alpha, "ci_low", "ci_high"), (None, "sci_low", "sci_high")):
        level = (
            out["family_size"].map(lambda m: 1 - alpha / max(int(m), 1) if correction != "none" else 1 - alpha)
            if lvl is None
            else pd.Series(lvl, index=out.index)
        )
        q = [float(stats.t.ppf(0.5 + lv / 2, df)) if math.isfinite(df) else np.nan for lv, df in zip(level, out["df"])]
        out[lo] = out["estimate"] - np.asarray(q) * out["se"]
        out[hi] = out["estimate"] + np.asarray(q) * out["se"]
    out["verdict"] = [
        classify(float(pa), float(pe), alpha)[0] if math.isfinite(float(p)) else ""
        for p, pa, pe in zip(out["p"], out["p_adj"], out["p_equiv_adj"])
    ]
    out["family_size"] = out["family_size"].astype("int64")
    return out[STRATIFIED_COLUMNS].reset_index(drop=True)


def nemenyi_p(ranks: np.ndarray, ia: np.ndarray, ib: np.ndarray) -> np.ndarray:
    """Nemenyi p of the cell pairs (ia[i], ib[i]) from the [blocks, k] rank matrix: what
    ``scikit_posthocs.posthoc_nemenyi_friedman`` computes (Demšar 2006), P(studentized range(k, ∞) >
    √2·|R̄_a − R̄_b| / √(k(k+1)/(6N))), with its integral evaluated once per distinct rank-sum difference.

    Average ranks are multiples of ½, so twice a rank sum is an integer and a difference takes at most
    2·N·(k − 1) + 1 values: at 1,000 cells × 10 blocks, 499,500 pairs share ~10⁴ integrals (each a numerical
    integration in scipy: scikit-posthocs spent 98 s on one per pair). Equal to scikit-posthocs' p to 1e-12
    (tests/test_analyze_fast.py); its q comes from float mean ranks, which differ in the last bit.
    """
    n, k = ranks.shape
    twice = np.rint(2.0 * ranks.sum(axis=0)).astype(np.int64)
    diffs, where = np.unique(np.abs(twice[ia] - twice[ib]), return_inverse=True)
    q = diffs / (2.0 * n) / math.sqrt(k * (k + 1.0) / (6.0 * n))
    with pywarnings.catch_warnings():
        pywarnings.simplefilter("ignore")  # scipy's integration warnings for p ~ 0: the p is still returned
        p = stats.studentized_range.sf(q * math.sqrt(2.0), k, np.inf)
    return np.asarray(p, dtype=float)[where.reshape(-1)]


def friedman_ranks(
    prep: Prepared,
    run_keys: Mapping[tuple[str, str], tuple[object, ...]],
    *,
    alpha: float = 0.05,
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, object], list[str]]:
    """(ranks, nemenyi, summary, warnings) of every distinct cell over (task, seed) blocks.

    ``ranks``: cell, mean_rank (1 = best), n_blocks, same_as (cells that are the same runs);
    ``nemenyi``: cell_a, cell_b, rank_diff, p (Nemenyi, family-wise over all pairs);
    ``summary``: statistic, p, k, n_blocks, cd, alpha, method, note.
    """
    empty: tuple[pd.DataFrame, pd.DataFrame, dict[str, object]] = (
        pd.DataFrame(columns=RANK_COLUMNS),
        pd.DataFrame(columns=NEMENYI_COLUMNS),
        {},
    )
    if not prep.has_seed or not prep.factors:
        return (*empty, [])
    data = prep.data
    # Collapsed cells: the same runs in every task are one treatment, named by its first cell.
    cells = list(data.drop_duplicates("cell").sort_values("cell_rank")["cell"])
    identity: dict[tuple[object, ...], str] = {}
    same_as: dict[str, list[str]] = {}
    for cell in cells:
        key = tuple(run_keys.get((t, cell), ()) for t in prep.tasks)
        first = identity.setdefault(key, cell)
        if first != cell:
            same_as.setdefault(first, []).append(cell)
    distinct = [c for c in cells if identity[tuple(run_keys.get((t, c), ()) for t in prep.tasks)] == c]
    wide = (
        data[data["cell"].isin(distinct)]
        .groupby(["task", "seed", "cell"])["value"]
        .mean()
        .unstack("cell")
        .reindex(columns=distinct)
    )
    # One count for all columns: a Series per cell cost 1 s at 1,000 cells.
    runs_in = dict(zip(wide.columns, wide.notna().sum().tolist()))
    full_cells = [c for c in distinct if runs_in[c] > 0]
    complete_cells = [c for c in full_cells if runs_in[c] == len(wide)]
    wide = wide[full_cells]
    warnings: list[str] = []
    if len(complete_cells) < len(full_cells):
        warnings.append(
            f"Friedman test: {len(full_cells) - len(complete_cells)} cell(s) without a run in every "
            "(task, seed) block were left out"
        )
    wide = wide[complete_cells].dropna()
    k, nb = wide.shape[1], wide.shape[0]
    if k < 3 or nb < 2:
        return (*empty, warnings)
    # Rank 1 = best: every GLUE score is higher-is-better.
    ranks = wide.rank(axis=1, ascending=False, method="average")
    res = stats.friedmanchisquare(*[wide[c].to_numpy() for c in wide.columns])
    q = float(stats.studentized_range.ppf(1 - alpha, k, np.inf)) / math.sqrt(2)
    cd = q * math.sqrt(k * (k + 1) / (6 * nb))
    mean_rank = ranks.mean()
    rank_frame = (
        pd.DataFrame(
            {
                "cell": list(wide.columns),
                "mean_rank": mean_rank.to_numpy(dtype=float),
                "n_blocks": nb,
                "same_as": ["; ".join(same_as.get(c, [])) for c in wide.columns],
            }
        )
        .sort_values("mean_rank", kind="mergesort")
        .reset_index(drop=True)
    )
    # Every pair a < b in column order, read from arrays: a .loc per pair took 250 s for the 499,500
    # pairs of 1,000 cells.
    # The k names become one string array, indexed per pair (taking from it costs nothing next to
    # building 2 x 499,500 strings one by one at 1,000 cells).
    names = pd.array(list(wide.columns), dtype="str")
    ia, ib = np.triu_indices(k, 1)
    mr = mean_rank.to_numpy(dtype=float)
    pairs = {
        "cell_a": names.take(ia),
        "cell_b": names.take(ib),
        "rank_diff": (mr[ia] - mr[ib]).tolist(),
        "p": nemenyi_p(ranks.to_numpy(dtype=float), ia, ib).tolist(),
    }
    blocks = ", ".join(
        f"{t}: {int((wide.index.get_level_values('task') == t).sum())}"
        for t in dict.fromkeys(wide.index.get_level_values("task"))
    )
    summary: dict[str, object] = {
        "statistic": float(res.statistic),
        "p": float(res.pvalue),
        "k": int(k),
        "n_blocks": int(nb),
        "cd": cd,
        "alpha": alpha,
        "method": "Friedman over (task, seed) blocks, Nemenyi post-hoc (Demšar 2006)",
        "note": f"blocks per task: {blocks}; rank 1 = best on the task's own metric",
    }
    return rank_frame, pd.DataFrame(pairs, columns=NEMENYI_COLUMNS), summary, warnings
