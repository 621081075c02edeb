"""Factorial ANOVA of the metric on the grid factors, its diagnostics, and a mixed model.

The ANOVA is an OLS fit with every factor categorical and their interactions up to
``order`` (default: all). Sums of squares are computed by explicit comparison of
nested least-squares fits (``numpy.linalg.lstsq``) on sum-to-zero coded design
matrices (R's ``contr.sum``), built here without a formula engine, so factor
names with dots need no quoting and term names are the original column names
joined by ``':'``:

* **Type II** (default; Fox, *Applied Regression Analysis*, 2016, §8.2.5; R
  ``car::Anova(type = 2)``): SS(T) = RSS(M₋T) − RSS(M₋T + T), where M₋T holds every
  term that does not contain T (T's higher-order relatives are left out). df is the
  rank gained by adding T, so a design with empty cells is tested on its
  estimable contrasts (df smaller than nominal; a warning says so).
* **Type III** (``car::Anova(type = 3)`` with ``contr.sum``): SS(T) = RSS(full
  without T's columns) − RSS(full). Always with sum-to-zero contrasts: with
  treatment contrasts type III tests main effects at the reference level of the
  other factors, which is not what anyone means. Type III needs a full-rank design;
  with empty cells the interaction order is lowered until it is (with a warning).

F = (SS(T)/df(T)) / (RSS(full)/df_res), p = P(F_{df, df_res} > F), partial η² =
SS(T)/(SS(T) + SS_res). Balanced designs give identical type I, II and III tables.
"""

from __future__ import annotations

import itertools
import warnings as pywarnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from kdgrid.analyze.tidy import AnalysisError, MetricSpec, Prepared, level_order, prepare

__all__ = [
    "ANOVA_COLUMNS",
    "DIAGNOSTIC_COLUMNS",
    "MIXED_COLUMNS",
    "anova_diagnostics",
    "anova_table",
    "mixed_model",
]

ANOVA_COLUMNS = ["task", "term", "df", "sum_sq", "F", "p", "partial_eta2"]
DIAGNOSTIC_COLUMNS = ["task", "check", "value", "note"]
MIXED_COLUMNS = ["task", "term", "level", "coef", "se", "z", "p", "ci_low", "ci_high"]
ALL_TASKS = "all"
RESIDUAL = "Residual"

Term = tuple[str, ...]


# --------------------------------------------------------------------------- design matrices
def _sum_coding(codes: np.ndarray, k: int) -> np.ndarray:
    """R's ``contr.sum``: k−1 columns, level j<k -> e_j, last level -> −1 everywhere."""
    out = np.zeros((codes.size, k - 1))
    for j in range(k - 1):
        out[:, j] = codes == j
    out[codes == k - 1, :] = -1.0
    return out


def _treatment_coding(codes: np.ndarray, k: int, ref: int) -> tuple[np.ndarray, list[int]]:
    cols = [j for j in range(k) if j != ref]
    return np.column_stack([(codes == j).astype(float) for j in cols]) if cols else np.zeros((codes.size, 0)), cols


def _term_columns(parts: Sequence[np.ndarray]) -> np.ndarray:
    """Columns of an interaction: all products of one column from each factor's coding."""
    cols = parts[0]
    for nxt in parts[1:]:
        cols = np.einsum("ni,nj->nij", cols, nxt).reshape(cols.shape[0], -1)
    return cols


@dataclass
class _Design:
    y: np.ndarray
    coded: dict[str, np.ndarray]  # factor -> sum-coded columns

    def matrix(self, terms: Sequence[Term]) -> np.ndarray:
        blocks = [np.ones((self.y.size, 1))]
        blocks += [_term_columns([self.coded[f] for f in t]) for t in terms]
        return np.hstack(blocks)


def _rss_rank(x: np.ndarray, y: np.ndarray) -> tuple[float, int, np.ndarray]:
    beta, _res, rank, _sv = np.linalg.lstsq(x, y, rcond=None)
    resid = y - x @ beta
    return float(resid @ resid), int(rank), resid


def _terms_up_to(factors: Sequence[str], order: int) -> list[Term]:
    return [t for k in range(1, order + 1) for t in itertools.combinations(factors, k)]


# --------------------------------------------------------------------------- one fit
@dataclass
class _Fit:
    table: pd.DataFrame
    residuals: np.ndarray
    order: int
    factors: list[str]


def _fit_one(
    data: pd.DataFrame,
    factors: list[str],
    *,
    typ: int,
    order: int | None,
    block: str | None,
    label: str,
) -> tuple[_Fit | None, list[str]]:
    """ANOVA table of ``value`` on ``factors`` for one slice of the data (None if nothing to fit), warnings."""
    warnings: list[str] = []
    used: list[str] = []
    for f in factors:
        lv = data[f].unique()
        if lv.size < 2:
            warnings.append(f"ANOVA {label}: factor {f} has a single level ({lv[0] if lv.size else 'none'}) and was dropped")
        else:
            used.append(f)
    if not used:
        warnings.append(f"ANOVA {label}: no factor with two or more levels, no ANOVA")
        return None, warnings
    y = data["value"].to_numpy(dtype=float)
    coded: dict[str, np.ndarray] = {}
    for f in used + ([block] if block else []):
        levels = level_order(data[f]) if f != block else sorted(data[f].unique().tolist(), key=str)
        codes = data[f].map({lv: i for i, lv in enumerate(levels)}).to_numpy()
        coded[f] = _sum_coding(codes, len(levels))
    design = _Design(y=y, coded=coded)
    max_order = len(used) if order is None else max(1, min(order, len(used)))
    blocks: list[Term] = [(block,)] if block else []

    eff_order = max_order
    terms = _terms_up_to(used, eff_order)
    x_full = design.matrix(blocks + terms)
    rss_full, rank_full, resid = _rss_rank(x_full, y)
    if typ == 3:
        while rank_full < x_full.shape[1] and eff_order > 1:
            eff_order -= 1
            terms = _terms_up_to(used, eff_order)
            x_full = design.matrix(blocks + terms)
            rss_full, rank_full, resid = _rss_rank(x_full, y)
        if eff_order < max_order:
            warnings.append(
                f"ANOVA {label}: empty cells make the order-{max_order} model rank-deficient; type III needs a full-rank "
                f"design, so interactions were fitted up to order {eff_order} only"
            )
        if rank_full < x_full.shape[1]:
            warnings.append(f"ANOVA {label}: design is rank-deficient even with main effects only (confounded factors); no ANOVA")
            return None, warnings
    df_res = y.size - rank_full

    rows: list[dict[str, object]] = []
    reduced: list[str] = []
    for t in blocks + terms:
        if typ == 2:
            base = [s for s in blocks + terms if not set(t) <= set(s)]
            rss0, rank0, _ = _rss_rank(design.matrix(base), y)
            rss1, rank1, _ = _rss_rank(design.matrix(base + [t]), y)
            ss, df_t = rss0 - rss1, rank1 - rank0
            nominal = int(np.prod([design.coded[f].shape[1] for f in t]))
            if df_t < nominal:
                reduced.append(f"{':'.join(t)} ({df_t} of {nominal})")
        else:
            keep = [s for s in blocks + terms if s != t]
            rss0, _rank0, _ = _rss_rank(design.matrix(keep), y)
            ss, df_t = rss0 - rss_full, int(np.prod([design.coded[f].shape[1] for f in t]))
        if df_t == 0:
            warnings.append(f"ANOVA {label}: term {':'.join(t)} is not estimable (no data in the cells it needs) and is left out")
            continue
        ss = max(ss, 0.0)
        rows.append({"term": ":".join(t), "df": df_t, "sum_sq": ss})
    if reduced:
        warnings.append(
            f"ANOVA {label}: empty cells leave fewer estimable contrasts, df reduced for " + ", ".join(reduced)
        )
    ms_res = rss_full / df_res if df_res > 0 else np.nan
    if df_res <= 0:
        warnings.append(f"ANOVA {label}: no residual degrees of freedom (one run per cell?): F and p undefined; lower the order")
    for r in rows:
        f_val = (r["sum_sq"] / r["df"]) / ms_res if df_res > 0 and ms_res > 0 else np.nan  # type: ignore[operator]
        r["F"] = f_val
        r["p"] = float(stats.f.sf(f_val, r["df"], df_res)) if np.isfinite(f_val) else np.nan
        denom = r["sum_sq"] + rss_full  # type: ignore[operator]
        r["partial_eta2"] = r["sum_sq"] / denom if denom > 0 else np.nan  # type: ignore[operator]
    rows.append({"term": RESIDUAL, "df": df_res, "sum_sq": rss_full, "F": np.nan, "p": np.nan, "partial_eta2": np.nan})
    table = pd.DataFrame(rows, columns=ANOVA_COLUMNS[1:])
    table["df"] = table["df"].astype("int64")
    return _Fit(table=table, residuals=resid, order=eff_order, factors=used), warnings


def _diagnostics(data: pd.DataFrame, fit: _Fit | None, factors: list[str], label: str) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    used = fit.factors if fit is not None else [f for f in factors if data[f].nunique() > 1]
    if not used:
        return rows
    counts = data.groupby(used, sort=True).size()
    lo, hi = int(counts.min()), int(counts.max())
    rows.append({
        "task": label, "check": "balance", "value": lo / hi,
        "note": (f"balanced: every cell has {lo} run(s)" if lo == hi else f"unbalanced: cells have {lo} to {hi} runs")
        + f" ({len(counts)} cells)",
    })
    levels = [level_order(data[f]) for f in used]
    observed = set(counts.index if len(used) > 1 else [(i,) for i in counts.index])
    missing = [c for c in itertools.product(*levels) if c not in observed]
    shown = "; ".join(", ".join(f"{f}={v}" for f, v in zip(used, c)) for c in missing[:5])
    rows.append({
        "task": label, "check": "missing_cells", "value": float(len(missing)),
        "note": "every combination of levels has runs" if not missing
        else f"{len(missing)} of {len(observed) + len(missing)} combinations have no runs: {shown}" + (" ..." if len(missing) > 5 else ""),
    })
    if fit is not None:
        rows.append({"task": label, "check": "anova_order", "value": float(fit.order),
                     "note": f"interactions up to order {fit.order} among {len(fit.factors)} factor(s)"})
        r = fit.residuals
        if r.size >= 3 and np.ptp(r) > 1e-12 * max(1.0, float(np.abs(data['value']).max())):
            p = float(stats.shapiro(r).pvalue)
            note = f"Shapiro-Wilk on {r.size} OLS residuals (small p: non-normal residuals)"
        else:
            p, note = np.nan, "Shapiro-Wilk needs at least 3 residuals that are not all equal"
        rows.append({"task": label, "check": "residual_shapiro_p", "value": p, "note": note})
    groups = [g["value"].to_numpy(dtype=float) for _, g in data.groupby(used, sort=True)]
    groups = [g for g in groups if g.size >= 2]
    if len(groups) >= 2 and any(np.ptp(g) > 0 for g in groups):
        with pywarnings.catch_warnings():
            pywarnings.simplefilter("ignore")
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


def _anova(
    prep: Prepared,
    *,
    typ: int = 2,
    order: int | None = None,
    block: str | None = None,
    pooled: bool = True,
) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """(anova table, diagnostics, warnings) per task and, with 2+ tasks, pooled with task as a factor."""
    _check_args(typ, order)
    if block is not None and block not in prep.data.columns:
        raise AnalysisError(f"block column {block!r} not in the table (use 'seed' to block on seeds)")
    warnings: list[str] = []
    tables: list[pd.DataFrame] = []
    diag: list[dict[str, object]] = []
    data = prep.data.copy()
    if block is not None:
        data[block] = data[block].astype(str)
    slices: list[tuple[str, pd.DataFrame, list[str]]] = [
        (t, data.loc[data["task"] == t], list(prep.factors)) for t in prep.tasks
    ]
    if pooled and len(prep.tasks) > 1:
        slices.append((ALL_TASKS, data, ["task"] + list(prep.factors)))
        metrics = sorted(set(prep.metric_of.values()))
        if len(metrics) > 1:
            warnings.append(f"ANOVA 'all' mixes metrics of different tasks ({', '.join(metrics)}) in one response")
    for label, part, facs in slices:
        if not facs:
            warnings.append("no factor columns: no ANOVA")
            break
        with pywarnings.catch_warnings():
            pywarnings.simplefilter("ignore", RuntimeWarning)
            fit, fit_warnings = _fit_one(part, facs, typ=typ, order=order, block=block, label=f"task {label}")
        warnings += fit_warnings
        if fit is not None:
            tables.append(fit.table.assign(task=label)[ANOVA_COLUMNS])
        diag += _diagnostics(part, fit, facs, label)
    anova = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=ANOVA_COLUMNS)
    diagnostics = pd.DataFrame(diag, columns=DIAGNOSTIC_COLUMNS)
    if not diagnostics.empty:
        diagnostics["value"] = diagnostics["value"].astype(float)
    return anova, diagnostics, warnings


def anova_table(
    df: pd.DataFrame,
    *,
    metric: MetricSpec,
    factors: Sequence[str] | None = None,
    typ: int = 2,
    order: int | None = None,
    block: str | None = None,
    pooled: bool = True,
) -> pd.DataFrame:
    """Factorial ANOVA per task and, with two or more tasks, pooled with ``task`` as a factor.

    Columns ``task`` (``'all'`` for the pooled fit), ``term`` (factor column names,
    interactions joined by ``':'``; ``'Residual'``), ``df``, ``sum_sq``, ``F``, ``p``,
    ``partial_eta2`` = SS_effect / (SS_effect + SS_residual). ``typ`` 2 (default) or 3
    (sum-to-zero contrasts; see the module docstring for the formulas). ``order``
    limits interactions (1 = main effects; None = all). ``block="seed"`` adds seed as an
    additive block term (randomised complete block design). Factors with a single
    level in a task are dropped with a warning. Warnings are in
    ``frame.attrs["warnings"]``, the diagnostics frame (see :func:`anova_diagnostics`)
    in ``frame.attrs["diagnostics"]``.

    Reference (R): ``car::Anova(lm(len ~ supp * factor(dose), ToothGrowth,
    contrasts = list(supp = contr.sum, dose = contr.sum)), type = 2)``.
    """
    prep = prepare(df, metric=metric, factors=factors)
    table, diagnostics, warnings = _anova(prep, typ=typ, order=order, block=block, pooled=pooled)
    table.attrs["warnings"] = prep.warnings + warnings
    table.attrs["diagnostics"] = diagnostics
    return table


def anova_diagnostics(
    df: pd.DataFrame,
    *,
    metric: MetricSpec,
    factors: Sequence[str] | None = None,
    order: int | None = None,
    pooled: bool = True,
) -> pd.DataFrame:
    """Checks of the ANOVA's assumptions per task (and ``'all'``): columns ``task, check, value, note``.

    Checks: ``balance`` (smallest / largest cell size; 1 = balanced), ``missing_cells``
    (number of level combinations without runs), ``anova_order`` (interaction order
    fitted), ``residual_shapiro_p`` (Shapiro-Wilk p of the OLS residuals),
    ``levene_p`` (Levene's test across cells, median-centred as R's
    ``car::leveneTest`` default).
    """
    prep = prepare(df, metric=metric, factors=factors)
    _table, diagnostics, warnings = _anova(prep, order=order, pooled=pooled)
    diagnostics.attrs["warnings"] = prep.warnings + warnings
    return diagnostics


# --------------------------------------------------------------------------- mixed model
def mixed_model(
    df: pd.DataFrame,
    factors: Sequence[str] | None,
    metric: MetricSpec,
    groups: str = "seed",
    *,
    order: int = 1,
    baseline: Mapping[str, object] | None = None,
    per_task: bool = False,
) -> pd.DataFrame:
    """Linear mixed model with a random intercept for ``groups`` (and for task when pooled).

    y = Xβ + u_task + u_{seed(task)} + ε, fitted by REML with statsmodels ``MixedLM``.
    Fixed effects: the factors with treatment coding against the baseline levels
    (default: first level), interactions up to ``order`` (default 1, main effects).
    With two or more tasks and ``per_task=False`` one model is fitted with random
    intercepts for task and for ``groups`` nested in task (a seed means a different
    run in every task); otherwise one model per task with a random intercept for
    ``groups``.

    Returns a tidy fixed-effects frame: ``task`` (``'all'`` when pooled), ``term``
    (``'Intercept'`` or factor names joined by ``':'``), ``level`` (levels joined by
    ``':'``), ``coef``, ``se``, Wald ``z``, ``p``, 95% ``ci_low``/``ci_high``. Wald z
    tests ignore the uncertainty in the variance components (no Kenward-Roger or
    Satterthwaite df), so they are optimistic with few seeds.
    ``frame.attrs["random_effects"]`` holds the variance estimates,
    ``frame.attrs["warnings"]`` convergence and other warnings.

    Reference (R): ``lme4::lmer(y ~ f1 + f2 + (1 | task) + (1 | task:seed), REML = TRUE)``.
    """
    from statsmodels.regression.mixed_linear_model import MixedLM
    from statsmodels.tools.sm_exceptions import ConvergenceWarning

    from kdgrid.analyze.paired import resolve_baseline

    if not isinstance(order, int) or order < 1:
        raise AnalysisError(f"mixed model order must be a positive integer, got {order!r}")
    prep = prepare(df, metric=metric, factors=factors)
    if groups not in prep.data.columns:
        raise AnalysisError(f"group column {groups!r} not in the table")
    base, warnings = resolve_baseline(prep, baseline)
    warnings = prep.warnings + warnings
    pooled = len(prep.tasks) > 1 and not per_task
    slices = [(ALL_TASKS, prep.data)] if pooled else [(t, prep.data.loc[prep.data["task"] == t]) for t in prep.tasks]
    out: list[dict[str, object]] = []
    random_effects: dict[str, dict[str, float]] = {}
    for label, part in slices:
        used = [f for f in prep.factors if part[f].nunique() > 1]
        cols: dict[str, np.ndarray] = {"x0": np.ones(len(part))}
        names: dict[str, tuple[str, str]] = {"x0": ("Intercept", "")}
        coded: dict[str, tuple[np.ndarray, list[str]]] = {}
        for f in used:
            levels = level_order(part[f])
            ref = levels.index(base[f]) if base.get(f) in levels else 0
            codes = part[f].map({lv: i for i, lv in enumerate(levels)}).to_numpy()
            mat, idx = _treatment_coding(codes, len(levels), ref)
            coded[f] = (mat, [levels[i] for i in idx])
        for t in _terms_up_to(used, min(order, len(used))) if used else []:
            mats = [coded[f][0] for f in t]
            labs = list(itertools.product(*[coded[f][1] for f in t]))
            block = _term_columns(mats)
            for j, lab in enumerate(labs):
                key = f"x{len(cols)}"
                cols[key] = block[:, j]
                names[key] = (":".join(t), ":".join(lab))
        frame = pd.DataFrame(cols)
        frame["y"] = part["value"].to_numpy(dtype=float)
        frame["g"] = part[groups].astype(str).to_numpy()
        frame["task"] = part["task"].to_numpy()
        formula = "y ~ 0 + " + " + ".join(k for k in cols)
        with pywarnings.catch_warnings(record=True) as caught:
            pywarnings.simplefilter("always")
            try:
                if pooled:
                    model = MixedLM.from_formula(formula, data=frame, groups="task", re_formula="1",
                                                 vc_formula={groups: "0 + C(g)"})
                else:
                    model = MixedLM.from_formula(formula, data=frame, groups="g", re_formula="1")
                fit = model.fit(reml=True)
            except (np.linalg.LinAlgError, ValueError) as exc:
                warnings.append(f"mixed model {label}: fit failed ({exc})")
                continue
        for w in caught:
            if issubclass(w.category, (ConvergenceWarning, RuntimeWarning, UserWarning)):
                warnings.append(f"mixed model {label}: {w.message}")
        fe = fit.fe_params
        se = fit.bse_fe
        for key in fe.index:
            coef, s = float(fe[key]), float(se[key])
            z = coef / s if s > 0 else np.nan
            p = float(2 * stats.norm.sf(abs(z))) if np.isfinite(z) else np.nan
            term, level = names[key]
            out.append({"task": label, "term": term, "level": level, "coef": coef, "se": s, "z": z, "p": p,
                        "ci_low": coef - 1.959963984540054 * s, "ci_high": coef + 1.959963984540054 * s})
        re = {"residual_var": float(fit.scale)}
        re[("task" if pooled else groups) + "_var"] = float(np.asarray(fit.cov_re)[0, 0])
        if pooled:
            re[f"{groups}_within_task_var"] = float(np.asarray(fit.vcomp)[0])
        random_effects[label] = re
    result = pd.DataFrame(out, columns=MIXED_COLUMNS)
    result.attrs["random_effects"] = random_effects
    result.attrs["warnings"] = list(dict.fromkeys(warnings))
    return result
