"""Factorial ANOVA of the metric on the grid factors, its diagnostics, and a mixed model.

**The unit is the run.** Every fit here reads :attr:`Prepared.runs` (one row per run,
:func:`kdgrid.analyze.tidy.run_level`), never the (cell, run) rows a store lists: a run
shared by several cells (α = 0 makes the attention loss irrelevant) is one observation.
Such a partly crossed design is modelled with the merged factor of
:class:`kdgrid.analyze.tidy.Collapse` (its distinct settings, crossed with the other factors),
which the ANOVA splits into the fully crossed part plus a contrast for the shared runs
(``collapsed="contrast"``, default) or keeps as one factor (``collapsed="merged"``).

**The model.** Per task: y = μ + block(seed) + Σ factor effects and their interactions up to
``order`` + ε, ε iid N(0, σ²), every factor categorical with sum-to-zero contrasts (R's
``contr.sum``; patsy ``C(x, Sum)``). The seed block is on by default (``block_seed``): runs
with one seed share their data subset, order and initialisation (a randomised complete block
design). Pooled over tasks (``'all'``): task is a factor crossed with the others and the
seed block is nested in task (``task:seed``; a seed means a different run in every task). Only tasks
of one metric are pooled: when tasks use several metrics, each metric with two or more tasks gets its
own pooled fit (``'all accuracy'``), and none mixes MCC, F1, accuracy and Pearson points.

**The sums of squares** come from statsmodels:

* full-rank design (every combination of levels has runs, the usual case):
  ``statsmodels.stats.anova.anova_lm(ols(formula).fit(), typ=2 | 3)``. Type II (default;
  Fox 2016 §8.2.5, R ``car::Anova(type = 2)``): each term adjusted for every term that does
  not contain it. Type III: each term adjusted for all others, meaningful only with
  sum-to-zero contrasts, which are always used;
* collapsed cells: the merged factor is split into the fully crossed part (each member a
  factor of its own where the members are crossed, e.g. attention and α at α > 0) plus one
  contrast for the shared runs (``alpha=0 vs rest``), coded as numeric columns; these span
  the merged factor, so the fit is the same and each member gets its own test. Its sums of
  squares come from the nested fits below (equal to ``anova_lm`` on a full-rank design);
* complete, balanced design (every combination of the factors' and seeds' levels with the same number of
  runs; not pooled over tasks, no merged factor): from the cell means (:func:`_balanced_fit`). The terms
  are orthogonal there, so types I, II and III agree and each SS is the cell-level sequential SS
  (``anova_lm(typ=1)``'s formula) times the runs per cell; equal to ``anova_lm`` of the full fit to 1e-12
  in the tests, without fitting the 10,000 × 1,010 design of a 1,000-cell grid;
* rank-deficient design (empty cells) or no residual df: type II from nested statsmodels OLS fits on the
  same design's columns, SS(T) = RSS(M₋T) − RSS(M₋T + T), df = rank gained (R's
  ``anova(lm(M₋T), lm(M₋T + T))``), so a term is tested on its estimable contrasts (a
  warning names the reduced df); type III needs a full-rank factor design, so the
  interaction order is lowered until it is (with a warning).

F = (SS(T)/df(T)) / (RSS/df_res) of the full model, partial η² = SS(T)/(SS(T) + RSS).
Balanced designs give identical type I, II and III tables.
"""

from __future__ import annotations

import itertools
import warnings as pywarnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, cast

import numpy as np
import pandas as pd
from scipy import stats

from kdgrid.analyze.tidy import AnalysisError, Collapse, MetricSpec, Prepared, group_rows, prepare

if TYPE_CHECKING:
    import patsy

__all__ = [
    "ANOVA_COLUMNS",
    "DIAGNOSTIC_COLUMNS",
    "MIXED_COLUMNS",
    "AnovaResult",
    "anova_diagnostics",
    "anova_table",
    "mixed_model",
]

ANOVA_COLUMNS = ["task", "term", "df", "sum_sq", "F", "p", "partial_eta2"]
DIAGNOSTIC_COLUMNS = ["task", "check", "value", "note"]
MIXED_COLUMNS = ["task", "term", "level", "coef", "se", "z", "p", "ci_low", "ci_high"]
ALL_TASKS = "all"
RESIDUAL = "Residual"
SEED = "seed"

Term = tuple[str, ...]


def _terms_up_to(factors: Sequence[str], order: int) -> list[Term]:
    return [t for k in range(1, order + 1) for t in itertools.combinations(factors, k)]


# --------------------------------------------------------------------------- one fit
@dataclass
class _Fit:
    table: pd.DataFrame
    residuals: np.ndarray
    order: int
    factors: list[str]
    contrast: str | None = None  # the contrast term's name when a merged factor was fitted as crossed part + contrast


@dataclass
class _Formula:
    """A patsy formula over safe column aliases (factor names hold dots, '×' and '|')."""

    frame: dict[str, object]  # y, one categorical per factor alias, one numeric matrix per contrast alias
    code: dict[str, str]  # factor -> "C(aN, Sum)" (categorical) or "nN" (numeric contrast columns)
    expand: dict[str, list[Term]]  # a merged factor fitted as the crossed part plus a contrast -> its sub-terms
    contrast_name: str | None = None

    def term(self, t: Term) -> str:
        return ":".join(self.code[f] for f in t)

    def rhs(self, terms: Sequence[Term]) -> str:
        return " + ".join(["1", *(self.term(t) for t in terms)])

    def expand_terms(self, terms: Sequence[Term]) -> list[Term]:
        """Terms over model factors -> terms over the fitted ones (a merged factor becomes its sub-terms)."""
        out: list[Term] = []
        for t in terms:
            parts: list[list[Term]] = [self.expand.get(f, [(f,)]) for f in t]
            out += [tuple(x for p in combo for x in p) for combo in itertools.product(*parts)]
        return out


def _sum_columns(codes: np.ndarray, k: int, rows: np.ndarray) -> np.ndarray:
    """R's contr.sum for ``k`` levels on ``rows`` (level k−1 is −1 everywhere), zero on the other rows."""
    out = np.zeros((codes.size, k - 1))
    for j in range(k - 1):
        out[:, j] = (codes == j) & rows
    out[(codes == k - 1) & rows, :] = -1.0
    return out


def _contrast_coding(
    data: pd.DataFrame, collapse: Collapse, orders: Mapping[str, Sequence[str]]
) -> tuple[dict[str, np.ndarray], list[Term], str] | None:
    """The merged factor as the fully crossed part plus a contrast for the collapsed settings.

    Rows at the levels that make the factors collapse (α = 0) are the *shared* part; the others
    the *crossed* part, where every member is a factor of its own (sum-coded there, 0 on the
    shared rows). One contrast term sets each shared setting against the crossed part (sum
    coding with the crossed part as the last level). Together they span exactly the merged
    factor's columns, so the fit and its residuals are the same; the terms say which member
    matters where it has an effect. None when there is no crossed or no shared part.
    """
    shared = np.ones(len(data), dtype=bool)
    for d, lv in collapse.given.items():
        shared &= data[d].astype(str).isin(lv).to_numpy()
    crossed = ~shared
    if not shared.any() or not crossed.any() or not collapse.given:
        return None
    cols: dict[str, np.ndarray] = {}
    members: list[str] = []
    for f in collapse.members:
        present = set(data.loc[crossed, f].astype(str))
        levels = [lv for lv in orders[f] if lv in present]
        if len(levels) < 2:
            continue
        codes = data[f].astype(str).map({lv: i for i, lv in enumerate(levels)}).fillna(-1).to_numpy(dtype=int)
        cols[f] = _sum_columns(codes, len(levels), crossed)
        members.append(f)
    merged = data[collapse.name].astype(str)
    groups = [lv for lv in collapse.levels if lv in set(merged[shared])]
    codes = np.where(shared, merged.map({lv: i for i, lv in enumerate(groups)}).fillna(-1).to_numpy(), len(groups))
    name = " and ".join(f"{d}={'|'.join(lv)}" for d, lv in collapse.given.items()) + " vs rest"
    cols[name] = _sum_columns(codes.astype(int), len(groups) + 1, np.ones(len(data), dtype=bool))
    subsets = [t for k in range(1, len(members) + 1) for t in itertools.combinations(members, k)]
    return cols, [(name,), *subsets], name


def _formula(
    data: pd.DataFrame, factors: Sequence[str], orders: Mapping[str, Sequence[str]], collapse: Collapse | None = None
) -> _Formula:
    frame: dict[str, object] = {"y": data["value"].to_numpy(dtype=float)}
    code: dict[str, str] = {}
    expand: dict[str, list[Term]] = {}
    contrast_name = None
    for i, f in enumerate(factors):
        coding = _contrast_coding(data, collapse, orders) if collapse is not None and f == collapse.name else None
        if coding is not None:
            cols, subterms, contrast_name = coding
            for j, (g, mat) in enumerate(cols.items()):
                frame[f"n{i}_{j}"] = mat
                code[g] = f"n{i}_{j}"
            expand[f] = subterms
            continue
        alias = f"a{i}"
        present = set(data[f].astype(str))
        cats = [lv for lv in orders[f] if lv in present]
        frame[alias] = pd.Categorical(data[f].astype(str).to_numpy(), categories=cats)
        code[f] = f"C({alias}, Sum)"
    return _Formula(frame=frame, code=code, expand=expand, contrast_name=contrast_name)


def _ols(y: np.ndarray, x: np.ndarray) -> tuple[float, float, np.ndarray]:
    """(RSS, residual df, residuals) of a statsmodels OLS fit; its df is n − rank, so aliased columns cost nothing."""
    import statsmodels.api as sm

    fit = sm.OLS(y, x).fit()
    return float(fit.ssr), float(fit.df_resid), np.asarray(fit.resid, dtype=float)


@dataclass
class _FullFit:
    ssr: float
    df_resid: float
    resid: np.ndarray
    rank: int
    fit: object | None  # the statsmodels results, carrying the design's patsy terms for ``anova_lm``


def _fit_full(y: np.ndarray, x: patsy.DesignMatrix) -> _FullFit:
    """statsmodels OLS of the full model, once: RSS, residual df, residuals, the rank and the fit for ``anova_lm``.

    The fit is ``sm.OLS(y, x)`` (as :func:`_ols`), given the design's patsy terms (``model_spec``) so that
    ``anova_lm`` reads them as from a formula fit. The rank is ``np.linalg.matrix_rank(x)``'s rule
    (singular values above ``s.max() * max(x.shape) * eps``) applied to the singular values the fit
    already computed, instead of a second decomposition.
    """
    import statsmodels.api as sm
    import statsmodels.formula

    xa = np.asarray(x)
    patsy_terms = statsmodels.formula.options.formula_engine == "patsy"
    fit = sm.OLS(y, xa, model_spec=x.design_info).fit() if patsy_terms else sm.OLS(y, xa).fit()
    s = np.asarray(fit.model.wexog_singular_values, dtype=float)
    rank = int(np.count_nonzero(s > s.max() * max(xa.shape) * np.finfo(s.dtype).eps)) if s.size else 0
    return _FullFit(
        float(fit.ssr), float(fit.df_resid), np.asarray(fit.resid, dtype=float), rank, fit if patsy_terms else None
    )


def _balanced_fit(
    data: pd.DataFrame,
    used: list[str],
    block_factors: list[str],
    orders: Mapping[str, Sequence[str]],
    terms: list[Term],
) -> tuple[list[dict[str, object]], float, float, np.ndarray] | None:
    """The ANOVA of a complete, balanced design from its cell means: (rows, RSS, residual df, residuals), else None.

    Complete and balanced: every combination of the factors' levels (and of the seed block's) has the same
    number of runs. Then, with sum-to-zero contrasts, the columns of different terms and of the block are
    orthogonal, so type I, II and III sums of squares are equal and need no fit of the 10,000-row design: a
    term's SS is k times the sequential SS of the cell means (k runs per cell), which is statsmodels'
    ``anova_lm(typ=1)`` formula (squared QR effects of the term's columns) on the m-cell design; the block's
    is Σ over runs of (seed mean − grand mean)²; the fitted value of a run is its cell's fitted mean plus its
    seed's deviation. ``tests/test_analyze_fast.py`` checks the result against ``anova_lm`` of the full
    statsmodels fit, type II and III, with and without the block and with interactions left out.
    """
    import patsy

    keys = used + block_factors
    n_levels = [data[f].astype(str).nunique() for f in keys]
    counts = data.groupby(keys, sort=False).size()
    if len(counts) != int(np.prod(n_levels)) or counts.min() != counts.max():
        return None
    y = data["value"].to_numpy(dtype=float)
    cell = data.groupby(used, sort=False).ngroup().to_numpy()
    per_cell = np.bincount(cell)
    cell_mean = np.bincount(cell, weights=y) / per_cell
    cells = data.drop_duplicates(used)[used].assign(value=cell_mean)
    form = _formula(cells, used, orders)
    x = patsy.dmatrix(form.rhs(terms), form.frame, return_type="matrix")
    xa = np.asarray(x)
    q, r = np.linalg.qr(xa)
    diag = np.abs(np.diag(r))
    if diag.min() <= 1e-9 * diag.max():  # cannot happen in a complete design; the general path decides then
        return None
    effects = q.T @ cell_mean
    fitted = (q @ effects)[cell]
    slices = {frozenset(f.name() for f in term.factors): sl for term, sl in x.design_info.term_slices.items()}
    k = float(per_cell[0])
    rows: list[dict[str, object]] = []
    rank = xa.shape[1]
    if block_factors:
        block = data.groupby(block_factors, sort=False).ngroup().to_numpy()
        dev = np.bincount(block, weights=y) / np.bincount(block) - y.mean()
        rows.append({"term": ":".join(block_factors), "df": dev.size - 1, "sum_sq": float(np.sum(dev[block] ** 2))})
        fitted = fitted + dev[block]
        rank += dev.size - 1
    for t in terms:
        sl = slices[frozenset(form.code[f] for f in t)]
        rows.append({"term": ":".join(t), "df": sl.stop - sl.start, "sum_sq": k * float(np.sum(effects[sl] ** 2))})
    resid = y - fitted
    df_res = float(y.size - rank)
    if df_res <= 0:
        return None
    return rows, float(resid @ resid), df_res, resid


def _fit_one(
    data: pd.DataFrame,
    factors: list[str],
    orders: Mapping[str, Sequence[str]],
    *,
    typ: int,
    order: int | None,
    block: Term | None,
    label: str,
    collapse: Collapse | None = None,
) -> tuple[_Fit | None, list[str]]:
    """ANOVA table of ``value`` on ``factors`` (+ ``block``) for one slice of runs (None if nothing to fit), warnings."""
    import patsy
    import statsmodels.formula.api as smf
    from statsmodels.stats.anova import anova_lm

    warnings: list[str] = []
    used: list[str] = []
    for f in factors:
        lv = data[f].unique()
        if lv.size < 2:
            warnings.append(
                f"ANOVA {label}: factor {f} has a single level ({lv[0] if lv.size else 'none'}) and was dropped"
            )
        else:
            used.append(f)
    if not used:
        warnings.append(f"ANOVA {label}: no factor with two or more levels, no ANOVA")
        return None, warnings
    block_factors = [f for f in (block or ()) if f not in used]
    form = _formula(data, used + block_factors, orders, collapse)
    blocks: list[Term] = [block] if block else []
    max_order = len(used) if order is None else max(1, min(order, len(used)))

    def design(terms: Sequence[Term]) -> patsy.DesignMatrix:
        return patsy.dmatrix(form.rhs(terms), form.frame, return_type="matrix")

    if not form.expand and block in (None, (SEED,)):
        fast = _balanced_fit(data, used, block_factors, orders, _terms_up_to(used, max_order))
        if fast is not None:
            rows_b, rss_b, df_b, resid_b = fast
            table = _finish(rows_b, rss_b, df_b, warnings, label)
            return _Fit(table=table, residuals=resid_b, order=max_order, factors=used), warnings

    eff_order = max_order
    terms = form.expand_terms(_terms_up_to(used, eff_order))
    x_full = design(blocks + terms)
    if typ == 3:
        # Empty cells alias interaction columns; type III has no meaning then, so lower the order.
        def factor_rank_ok(ts: Sequence[Term]) -> bool:
            x: np.ndarray = np.asarray(design(ts))
            return int(np.linalg.matrix_rank(x)) == int(x.shape[1])

        while not factor_rank_ok(terms) and eff_order > 1:
            eff_order -= 1
            terms = form.expand_terms(_terms_up_to(used, eff_order))
        if eff_order < max_order:
            warnings.append(
                f"ANOVA {label}: empty cells make the order-{max_order} model rank-deficient; type III needs a full-rank "
                f"design, so interactions were fitted up to order {eff_order} only"
            )
        if not factor_rank_ok(terms):
            warnings.append(
                f"ANOVA {label}: design is rank-deficient even with main effects only (confounded factors); no ANOVA"
            )
            return None, warnings
        x_full = design(blocks + terms)
    all_terms = blocks + terms
    y = np.asarray(form.frame["y"], dtype=float)
    # One fit of the full model gives its rank, RSS, residuals and the type II / III table: at 10,000 runs
    # and 1,000 cells each decomposition of the design costs seconds (bench/README.md, section 6).
    full = _fit_full(y, x_full)
    rss_full, df_res, resid, rank_full = full.ssr, full.df_resid, full.resid, full.rank

    rows: list[dict[str, object]] = []
    if rank_full == x_full.shape[1] and df_res > 0 and not form.expand:
        # The usual case: statsmodels' own type II / III table. (Contrast columns are matrices, which
        # statsmodels' formulas no longer take: those designs go through the nested fits below, which
        # give the same numbers on a full-rank design; the tests check both against anova_lm.)
        if full.fit is not None:
            ref = anova_lm(full.fit, typ=typ)
        else:  # statsmodels set to formulaic: the fit carries no patsy terms, so let the formula build them
            fit = smf.ols("y ~ " + form.rhs(all_terms), data=pd.DataFrame(form.frame)).fit()
            ref = anova_lm(fit, typ=typ)
            rss_full, df_res, resid = float(fit.ssr), float(fit.df_resid), np.asarray(fit.resid, dtype=float)
        for t in all_terms:
            r = ref.loc[form.term(t)]
            rows.append({"term": ":".join(t), "df": int(round(float(r["df"]))), "sum_sq": float(r["sum_sq"])})
    else:
        slices = {frozenset(f.name() for f in term.factors): sl for term, sl in x_full.design_info.term_slices.items()}
        xa = np.asarray(x_full)

        def cols(ts: Sequence[Term]) -> np.ndarray:
            idx = [0] + [i for t in ts for i in range(*slices[frozenset(form.code[f] for f in t)].indices(xa.shape[1]))]
            return xa[:, idx]

        reduced: list[str] = []
        for t in all_terms:
            if typ == 2:
                base = [s for s in all_terms if not set(t) <= set(s)]
                rss0, df0, _ = _ols(y, cols(base))
                rss1, df1, _ = _ols(y, cols(base + [t]))
                ss, df_t = rss0 - rss1, int(round(df0 - df1))
            else:
                rss0, df0, _ = _ols(y, cols([s for s in all_terms if s != t]))
                ss, df_t = rss0 - rss_full, int(round(df0 - df_res))
            nominal = slices[frozenset(form.code[f] for f in t)].stop - slices[frozenset(form.code[f] for f in t)].start
            if 0 < df_t < nominal and t != block:
                reduced.append(f"{':'.join(t)} ({df_t} of {nominal})")
            if df_t == 0:
                warnings.append(
                    f"ANOVA {label}: term {':'.join(t)} is not estimable (no data in the cells it needs) and is left out"
                )
                continue
            rows.append({"term": ":".join(t), "df": df_t, "sum_sq": max(ss, 0.0)})
        if reduced:
            warnings.append(
                f"ANOVA {label}: empty cells leave fewer estimable contrasts, df reduced for " + ", ".join(reduced)
            )
    table = _finish(rows, rss_full, df_res, warnings, label)
    return _Fit(table=table, residuals=resid, order=eff_order, factors=used, contrast=form.contrast_name), warnings


def _finish(
    rows: list[dict[str, object]], rss_full: float, df_res: float, warnings: list[str], label: str
) -> pd.DataFrame:
    """F, p and partial η² of each term from its SS and df and the full model's RSS; the residual row."""
    df_res_i = int(round(df_res))
    ms_res = rss_full / df_res_i if df_res_i > 0 else np.nan
    if df_res_i <= 0:
        warnings.append(
            f"ANOVA {label}: no residual degrees of freedom (one run per cell?): F and p undefined; lower the order"
        )
    for r in rows:
        ss_t, df_t = float(cast(float, r["sum_sq"])), int(cast(int, r["df"]))
        f_val = (ss_t / df_t) / ms_res if df_res_i > 0 and ms_res > 0 else np.nan
        r["F"] = f_val
        r["p"] = float(stats.f.sf(f_val, df_t, df_res_i)) if np.isfinite(f_val) else np.nan
        denom = ss_t + rss_full
        r["partial_eta2"] = ss_t / denom if denom > 0 else np.nan
    rows.append(
        {"term": RESIDUAL, "df": df_res_i, "sum_sq": rss_full, "F": np.nan, "p": np.nan, "partial_eta2": np.nan}
    )
    table = pd.DataFrame(rows, columns=ANOVA_COLUMNS[1:])
    table["df"] = table["df"].astype("int64")
    return table


# --------------------------------------------------------------------------- diagnostics
def _shapiro(r: np.ndarray) -> tuple[float, str]:
    """Shapiro-Wilk p of the residuals, the case scipy warns about stated in the note instead."""
    with pywarnings.catch_warnings(record=True) as caught:
        pywarnings.simplefilter("always")
        p = float(stats.shapiro(r).pvalue)
    note = f"Shapiro-Wilk on {r.size} OLS residuals (small p: non-normal residuals)"
    if r.size > 5000 or caught:
        # scipy: "For N > 5000, computed p-value may not be accurate."
        note += (
            "; with more than 5000 residuals the p value is approximate (scipy) and any test rejects small departures"
        )
    return p, note


def _diagnostics(
    data: pd.DataFrame, fit: _Fit | None, factors: list[str], orders: Mapping[str, Sequence[str]], label: str
) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    used = fit.factors if fit is not None else [f for f in factors if data[f].nunique() > 1]
    n_shared = int((data["cells"].map(len) > 1).sum()) if "cells" in data.columns else 0
    rows.append(
        {
            "task": label,
            "check": "runs",
            "value": float(len(data)),
            "note": f"{len(data)} runs, each counted once"
            + (f" ({n_shared} shared by several cells)" if n_shared else ""),
        }
    )
    if not used:
        return rows
    counts = data.groupby(used, sort=True).size()
    lo, hi = int(counts.min()), int(counts.max())
    rows.append(
        {
            "task": label,
            "check": "balance",
            "value": lo / hi,
            "note": (
                f"balanced: every cell has {lo} run(s)" if lo == hi else f"unbalanced: cells have {lo} to {hi} runs"
            )
            + f" ({len(counts)} cells)",
        }
    )
    levels = [[lv for lv in orders[f] if lv in set(data[f])] for f in used]
    observed = set(counts.index if len(used) > 1 else [(i,) for i in counts.index])
    missing = [c for c in itertools.product(*levels) if c not in observed]
    shown = "; ".join(", ".join(f"{f}={v}" for f, v in zip(used, c)) for c in missing[:5])
    rows.append(
        {
            "task": label,
            "check": "missing_cells",
            "value": float(len(missing)),
            "note": "every combination of levels has runs"
            if not missing
            else f"{len(missing)} of {len(observed) + len(missing)} combinations have no runs: {shown}"
            + (" ..." if len(missing) > 5 else ""),
        }
    )
    if fit is not None:
        rows.append(
            {
                "task": label,
                "check": "anova_order",
                "value": float(fit.order),
                "note": f"interactions up to order {fit.order} among {len(fit.factors)} factor(s)",
            }
        )
        r = fit.residuals
        if r.size >= 3 and np.ptp(r) > 1e-12 * max(1.0, float(np.abs(data["value"]).max())):
            p, note = _shapiro(r)
        else:
            p, note = np.nan, "Shapiro-Wilk needs at least 3 residuals that are not all equal"
        rows.append({"task": label, "check": "residual_shapiro_p", "value": p, "note": note})
    values = data["value"].to_numpy(dtype=float)
    groups = [values[rows] for rows in group_rows(data, used, sort=True)]
    groups = [g for g in groups if g.size >= 2]
    if len(groups) >= 2 and any(np.ptp(g) > 0 for g in groups):
        with pywarnings.catch_warnings():
            pywarnings.simplefilter("ignore")  # cells with zero spread: Levene is still defined on the others
            p = float(stats.levene(*groups, center="median").pvalue)
        note = f"Levene (median-centred, Brown-Forsythe) across {len(groups)} cells with 2+ runs (small p: unequal variances)"
    else:
        p, note = np.nan, "Levene needs 2+ cells with 2+ runs and some spread"
    rows.append({"task": label, "check": "levene_p", "value": p, "note": note})
    return rows


def _check_args(typ: int, order: int | None) -> None:
    if typ not in (2, 3):
        raise AnalysisError(f"anova type must be 2 or 3 (type 3 always uses sum-to-zero contrasts), got {typ!r}")
    if order is not None and (not isinstance(order, int) or order < 1):
        raise AnalysisError(f"anova order must be a positive integer or None (all interactions), got {order!r}")


@dataclass
class AnovaResult:
    """The ANOVA of a prepared table: ``table`` (:data:`ANOVA_COLUMNS`), ``diagnostics``
    (:data:`DIAGNOSTIC_COLUMNS`), ``warnings``, and ``design``: sentences saying which model
    was fitted (runs counted once, merged factors, seed block, sums of squares)."""

    table: pd.DataFrame
    diagnostics: pd.DataFrame
    warnings: list[str] = field(default_factory=list)
    design: list[str] = field(default_factory=list)


def _design_notes(prep: Prepared, *, typ: int, block_seed: bool, blocked: bool, contrast: str | None) -> list[str]:
    runs = prep.runs
    n_shared = int((runs["cells"].map(len) > 1).sum())
    notes = [
        f"One row per run: {len(runs)} runs"
        + (f", {n_shared} of them shared by several cells and counted once" if n_shared else "")
        + "."
    ]
    col = prep.collapse
    if col is not None:
        text = col.describe(prep.short)
        notes.append(text[0].upper() + text[1:] + ".")
        if contrast is not None:
            members = " and ".join(prep.short.get(f, f) for f in col.members)
            shown = "; ".join(f"{prep.short.get(d, d)}={'|'.join(lv)}" for d, lv in col.given.items())
            notes.append(
                f"The ANOVA splits that merged factor into the fully crossed part plus a contrast: {members} and their "
                f"interaction are tested on the runs where they are crossed (all but {shown}), and the term "
                f"'{prep.short.get(contrast.split('=')[0], contrast.split('=')[0])}={contrast.split('=', 1)[1]}' sets "
                f"the shared runs at {shown} against the mean of the crossed part; together these terms span the "
                "merged factor, so the residuals and their df are those of the merged model."
            )
    if blocked:
        notes.append(
            "Seed is a block: an additive seed term per task, nested in task (task:seed) when pooled, since runs with "
            "one seed share their data subset, order and initialisation (turn off with analysis.block_seed: false "
            "or --no-block-seed)."
        )
    elif not prep.has_seed:
        notes.append("No seed column: runs are treated as independent replicates (no block).")
    elif not block_seed:
        notes.append(
            "Seed block off (analysis.block_seed: false or --no-block-seed): runs are treated as independent "
            "replicates within each cell."
        )
    else:
        notes.append("Every task has a single seed: no seed block.")
    notes.append(
        "Type II sums of squares (each term adjusted for the terms that do not contain it)"
        if typ == 2
        else "Type III sums of squares with sum-to-zero contrasts (each term adjusted for all others)"
    )
    notes[-1] += (
        "; OLS with categorical factors, errors assumed independent, normal, of equal variance (see Diagnostics)."
    )
    return notes


def _anova(
    prep: Prepared,
    *,
    typ: int = 2,
    order: int | None = None,
    block_seed: bool = True,
    pooled: bool = True,
    collapsed: str = "contrast",
) -> AnovaResult:
    """The ANOVA per task and, with 2+ tasks, pooled with task as a factor, on one row per run."""
    _check_args(typ, order)
    if collapsed not in ("contrast", "merged"):
        raise AnalysisError(f"collapsed cells are modelled as 'contrast' or 'merged', got {collapsed!r}")
    warnings: list[str] = []
    contrast: str | None = None
    tables: list[pd.DataFrame] = []
    diag: list[dict[str, object]] = []
    data = prep.runs.copy()
    facs = prep.model_factors
    orders: dict[str, list[str]] = {f: prep.model_levels(f) for f in facs}
    orders.update({f: list(prep.levels[f]) for f in prep.factors if f not in orders})
    orders["task"] = list(prep.tasks)
    if prep.has_seed:
        data[SEED] = data[SEED].astype(str)
        orders[SEED] = sorted(data[SEED].unique(), key=lambda s: (len(s), s))
    slices: list[tuple[str, pd.DataFrame, list[str], Term | None]] = []
    blocked = False
    for t in prep.tasks:
        part = data.loc[data["task"] == t]
        use = block_seed and prep.has_seed and part[SEED].nunique() > 1
        blocked |= use
        slices.append((t, part, list(facs), (SEED,) if use else None))
    if pooled and len(prep.tasks) > 1:
        # Pooled only within a metric: an F test on MCC and Pearson points in one response has no meaning.
        by_metric: dict[str, list[str]] = {}
        for t in prep.tasks:
            by_metric.setdefault(str(prep.metric_of[t]), []).append(t)
        single = len(by_metric) == 1
        for metric, tasks in by_metric.items():
            if len(tasks) < 2:
                continue
            part = data.loc[data["task"].isin(tasks)]
            use = block_seed and prep.has_seed and part.groupby("task")[SEED].nunique().max() > 1
            slices.append(
                (
                    ALL_TASKS if single else f"{ALL_TASKS} {metric}",
                    part,
                    ["task", *facs],
                    ("task", SEED) if use else None,
                )
            )
        if not single and all(len(ts) < 2 for ts in by_metric.values()):
            warnings.append(
                f"no ANOVA pooled over tasks: each task has its own metric ({', '.join(sorted(by_metric))}), "
                "and points of different metrics are not pooled"
            )
    for label, part, fs, block in slices:
        if not facs:
            warnings.append("no factor columns: no ANOVA")
            break
        with pywarnings.catch_warnings():
            # 0/0 when a fit is exact: F and p become NaN and the no-residual-df warning says why.
            pywarnings.simplefilter("ignore", RuntimeWarning)
            fit, fit_warnings = _fit_one(
                part,
                fs,
                orders,
                typ=typ,
                order=order,
                block=block,
                label=f"task {label}",
                collapse=prep.collapse if collapsed == "contrast" else None,
            )
        warnings += fit_warnings
        if fit is not None:
            tables.append(fit.table.assign(task=label)[ANOVA_COLUMNS])
            contrast = contrast or fit.contrast
        diag += _diagnostics(part, fit, fs, orders, label)
    anova = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=ANOVA_COLUMNS)
    diagnostics = pd.DataFrame(diag, columns=DIAGNOSTIC_COLUMNS)
    if not diagnostics.empty:
        diagnostics["value"] = diagnostics["value"].astype(float)
    design = _design_notes(prep, typ=typ, block_seed=block_seed, blocked=blocked, contrast=contrast) if facs else []
    return AnovaResult(anova, diagnostics, warnings, design)


def anova_table(
    df: pd.DataFrame,
    *,
    metric: MetricSpec,
    factors: Sequence[str] | None = None,
    typ: int = 2,
    order: int | None = None,
    block_seed: bool = True,
    pooled: bool = True,
    collapsed: str = "contrast",
) -> pd.DataFrame:
    """Factorial ANOVA per task and, with two or more tasks, pooled with ``task`` as a factor.

    One observation per run (a run shared by several cells counts once; collapsed factors
    are merged, see the module docstring). Columns ``task`` (``'all'`` for the pooled fit),
    ``term`` (factor column names, interactions joined by ``':'``, a merged factor's members
    joined by ``'×'``; ``'seed'`` / ``'task:seed'`` for the block; ``'Residual'``), ``df``,
    ``sum_sq``, ``F``, ``p``, ``partial_eta2`` = SS_effect / (SS_effect + SS_residual).
    ``typ`` 2 (default) or 3 (sum-to-zero contrasts). ``order`` limits interactions (1 =
    main effects; None = all). ``block_seed`` (default True, when the table has a ``seed``
    column with 2+ seeds) adds seed as an additive block (nested in task when pooled).
    ``collapsed``: how a merged factor of collapsed cells enters the ANOVA, ``"contrast"``
    (default: the fully crossed part, each member a factor of its own there, plus one term
    ``'<factor>=<levels> vs rest'`` for the shared runs) or ``"merged"`` (one factor of the
    settings actually run, members joined by ``'×'``); both fit the same model (same residuals).
    Factors with a single level in a task are dropped with a warning. Warnings are in
    ``frame.attrs["warnings"]``, the diagnostics frame (see :func:`anova_diagnostics`) in
    ``frame.attrs["diagnostics"]``, the design sentences in ``frame.attrs["design"]``.

    Reference: ``statsmodels.stats.anova.anova_lm(ols("y ~ C(seed, Sum) + C(a, Sum) * C(b, Sum)",
    data).fit(), typ=2)``; R ``car::Anova(lm(y ~ factor(seed) + a * b, contrasts =
    list(a = contr.sum, b = contr.sum)), type = 2)``.
    """
    prep = prepare(df, metric=metric, factors=factors)
    res = _anova(prep, typ=typ, order=order, block_seed=block_seed, pooled=pooled, collapsed=collapsed)
    res.table.attrs["warnings"] = prep.warnings + res.warnings
    res.table.attrs["diagnostics"] = res.diagnostics
    res.table.attrs["design"] = res.design
    return res.table


def anova_diagnostics(
    df: pd.DataFrame,
    *,
    metric: MetricSpec,
    factors: Sequence[str] | None = None,
    order: int | None = None,
    block_seed: bool = True,
    pooled: bool = True,
) -> pd.DataFrame:
    """Checks of the ANOVA's assumptions per task (and ``'all'``): columns ``task, check, value, note``.

    Checks, all on one row per run and on the model's cells (a merged factor's settings
    crossed with the other factors): ``runs`` (runs in the fit), ``balance`` (smallest /
    largest cell size; 1 = balanced), ``missing_cells`` (level combinations without runs),
    ``anova_order`` (interaction order fitted), ``residual_shapiro_p`` (Shapiro-Wilk p of
    the OLS residuals, seed block included), ``levene_p`` (Levene's test across cells,
    median-centred as R's ``car::leveneTest`` default).
    """
    prep = prepare(df, metric=metric, factors=factors)
    res = _anova(prep, order=order, block_seed=block_seed, pooled=pooled)
    res.diagnostics.attrs["warnings"] = prep.warnings + res.warnings
    return res.diagnostics


# --------------------------------------------------------------------------- mixed model
def _treatment_coding(codes: np.ndarray, k: int, ref: int) -> tuple[np.ndarray, list[int]]:
    cols = [j for j in range(k) if j != ref]
    return np.column_stack([(codes == j).astype(float) for j in cols]) if cols else np.zeros((codes.size, 0)), cols


def _term_columns(parts: Sequence[np.ndarray]) -> np.ndarray:
    """Columns of an interaction: all products of one column from each factor's coding."""
    cols = parts[0]
    for nxt in parts[1:]:
        cols = np.einsum("ni,nj->nij", cols, nxt).reshape(cols.shape[0], -1)
    return cols


def _reference_levels(prep: Prepared, base: Mapping[str, str]) -> dict[str, str]:
    """Reference level of each model factor: the baseline's, the merged factor's from its members'."""
    ref = {f: base[f] for f in prep.factors if f in base}
    col = prep.collapse
    if col is not None:
        from kdgrid.analyze.tidy import COLLAPSED_SEP, MERGED_SEP

        for lv in col.levels:
            parts = dict(zip(col.members, lv.split(MERGED_SEP)))
            if all(m not in base or base[m] in parts[m].split(COLLAPSED_SEP) for m in col.members):
                ref[col.name] = lv
                break
    return ref


def mixed_model(
    df: pd.DataFrame,
    factors: Sequence[str] | None,
    metric: MetricSpec,
    groups: str = SEED,
    *,
    order: int = 1,
    baseline: Mapping[str, object] | None = None,
    per_task: bool = False,
) -> pd.DataFrame:
    """Linear mixed model on one row per run with a random intercept for seed within task.

    Pooled (two or more tasks, ``per_task=False``): y = Xβ + u_{seed(task)} + ε, with task a
    **fixed** effect crossed with the factor terms (task, the factors and their interactions
    up to ``order``, and task × each of those terms), and a random intercept per (task,
    seed), u ~ N(0, σ²_seed), since a seed means a different run in every task. Per task (one
    task, or ``per_task=True``): y = Xβ + u_seed + ε. Fitted by REML with statsmodels
    ``MixedLM``; treatment coding against the baseline levels (default: first level; a
    merged factor of collapsed cells uses the setting that contains the baseline).

    Returns a tidy fixed-effects frame: ``task`` (``'all'`` when pooled), ``term``
    (``'Intercept'`` or factor names joined by ``':'``), ``level`` (levels joined by
    ``':'``), ``coef``, ``se``, Wald ``z``, ``p``, 95% ``ci_low``/``ci_high``. Wald z
    tests ignore the uncertainty in the variance components (no Kenward-Roger or
    Satterthwaite df), so they are optimistic with few seeds.
    ``frame.attrs["random_effects"]`` holds the variance estimates,
    ``frame.attrs["warnings"]`` the fit's problems in kdgrid's words (e.g. "did not
    converge"); no statsmodels warning is re-raised.

    Reference (R): ``lme4::lmer(y ~ task * (f1 + f2) + (1 | task:seed), REML = TRUE)``.
    """
    from statsmodels.regression.mixed_linear_model import MixedLM
    from statsmodels.tools.sm_exceptions import ConvergenceWarning

    from kdgrid.analyze.paired import resolve_baseline

    if not isinstance(order, int) or order < 1:
        raise AnalysisError(f"mixed model order must be a positive integer, got {order!r}")
    prep = prepare(df, metric=metric, factors=factors)
    if groups not in prep.runs.columns:
        raise AnalysisError(f"group column {groups!r} not in the table")
    base, warnings = resolve_baseline(prep, baseline)
    warnings = prep.warnings + warnings
    ref_level = _reference_levels(prep, base)
    runs = prep.runs
    pooled = len(prep.tasks) > 1 and not per_task
    slices = [(ALL_TASKS, runs)] if pooled else [(t, runs.loc[runs["task"] == t]) for t in prep.tasks]
    out: list[dict[str, object]] = []
    random_effects: dict[str, dict[str, float]] = {}
    for label, part in slices:
        used = [f for f in prep.model_factors if part[f].nunique() > 1]
        levels_of = {f: [lv for lv in prep.model_levels(f) if lv in set(part[f])] for f in used}
        if pooled:
            used = ["task", *used]
            levels_of["task"] = list(prep.tasks)
            ref_level["task"] = prep.tasks[0]
        cols: dict[str, np.ndarray] = {"x0": np.ones(len(part))}
        names: dict[str, tuple[str, str]] = {"x0": ("Intercept", "")}
        coded: dict[str, tuple[np.ndarray, list[str]]] = {}
        for f in used:
            levels = levels_of[f]
            ref = levels.index(ref_level[f]) if ref_level.get(f) in levels else 0
            codes = part[f].map({lv: i for i, lv in enumerate(levels)}).to_numpy()
            mat, idx = _treatment_coding(codes, len(levels), ref)
            coded[f] = (mat, [levels[i] for i in idx])
        non_task = [f for f in used if f != "task"]
        factor_terms = _terms_up_to(non_task, min(order, len(non_task))) if non_task else []
        terms: list[Term] = (
            ([("task",)] if pooled else []) + factor_terms + ([("task", *t) for t in factor_terms] if pooled else [])
        )
        for t in terms:
            block = _term_columns([coded[f][0] for f in t])
            labs = list(itertools.product(*[coded[f][1] for f in t]))
            for j, lab in enumerate(labs):
                key = f"x{len(cols)}"
                cols[key] = block[:, j]
                names[key] = (":".join(t), ":".join(lab))
        exog = pd.DataFrame(cols)
        y = part["value"].to_numpy(dtype=float)
        g = (part["task"].astype(str) + "/" + part[groups].astype(str)).to_numpy()
        with pywarnings.catch_warnings(record=True) as caught:
            pywarnings.simplefilter("always")
            try:
                fit = MixedLM(y, exog, groups=g).fit(reml=True)
                fe, se = fit.fe_params, fit.bse_fe
                scale, cov_re = float(fit.scale), float(np.asarray(fit.cov_re)[0, 0])
                converged = bool(getattr(fit, "converged", True))
            except (np.linalg.LinAlgError, ValueError) as exc:
                warnings.append(f"mixed model {label}: the fit failed ({exc}); no fixed effects")
                continue
        # statsmodels signals these cases by warnings whose text would otherwise reach the terminal.
        conv = [str(w.message) for w in caught if issubclass(w.category, ConvergenceWarning)]
        if not converged or any("boundary" not in m for m in conv):
            warnings.append(
                f"mixed model {label}: did not converge (the REML optimiser stopped before the optimum): its "
                "estimates and tests are not reliable"
            )
        elif conv:
            warnings.append(
                f"mixed model {label}: the seed variance estimate is at or near 0 (the boundary of its range), so the "
                "Wald tests of the fixed effects are approximate"
            )
        elif caught:
            warnings.append(f"mixed model {label}: numerical problems in the fit; treat its estimates as approximate")
        for key in fe.index:
            coef, s = float(fe[key]), float(se[key])
            z = coef / s if s > 0 else np.nan
            p = float(2 * stats.norm.sf(abs(z))) if np.isfinite(z) else np.nan
            term, level = names[str(key)]
            out.append(
                {
                    "task": label,
                    "term": term,
                    "level": level,
                    "coef": coef,
                    "se": s,
                    "z": z,
                    "p": p,
                    "ci_low": coef - 1.959963984540054 * s,
                    "ci_high": coef + 1.959963984540054 * s,
                }
            )
        random_effects[label] = {"residual_var": scale, ("seed_within_task_var" if pooled else f"{groups}_var"): cov_re}
    result = pd.DataFrame(out, columns=MIXED_COLUMNS)
    result.attrs["random_effects"] = random_effects
    result.attrs["warnings"] = list(dict.fromkeys(warnings))
    return result
