"""How many seeds a paired comparison needs: power of the paired t-test.

Power of the two-sided one-sample t-test on the paired differences (statsmodels
``TTestPower``; Cohen, 1988, ch. 2): with effect size d_z = mean(diff)/sd(diff) and n
pairs, the test statistic follows a noncentral t with n − 1 df and noncentrality
d_z·√n. Known values (R: ``pwr::pwr.t.test(d = 1, power = .8, type = "paired")``):
d_z = 1.0 needs 10 seeds, d_z = 0.5 needs 34 (9.94 and 33.37, rounded up).

The power table is prospective only. Power at the *observed* d_z is a monotone function
of the observed p value and says nothing new (Hoenig & Heisey, 2001, *Am. Stat.* 55:19),
and seeds "needed for the observed d_z" inherit the winner's curse, so neither is reported.
Instead, per comparison: the observed d_z with its exact confidence interval (inverting the
noncentral t distribution of t = d_z·√n, Steiger & Fouladi, 1997; :func:`dz_interval`), and
the seeds needed for stated target effects at the α the correction actually uses: α/m for a
family of m comparisons under Holm or Bonferroni (Holm's first step, and the level at which a
single planned comparison must pass), α/m for BH too (its first step; conservative), α
without correction.
"""

from __future__ import annotations

import functools
import math
import warnings as pywarnings

import numpy as np
import pandas as pd
from scipy import integrate, stats
from statsmodels.stats.power import TTestPower

from kdgrid.analyze.dist import nct_cdf
from kdgrid.analyze.tidy import AnalysisError

__all__ = [
    "PLAN_COLUMNS",
    "POWER_COLUMNS",
    "achieved_power",
    "dz_interval",
    "family_alpha",
    "power_plan",
    "power_table",
    "seeds_needed",
]

POWER_COLUMNS = [
    "task",
    "condition",
    "n",
    "dz",
    "dz_ci_low",
    "dz_ci_high",
    "family_size",
    "alpha_used",
    "target_dz",
    "n_for_target",
]
PLAN_COLUMNS = ["family", "family_size", "alpha_used", "target_dz", "power", "n_needed"]
_MAX_SEEDS = 10**7


def _check(alpha: float, power: float | None = None) -> None:
    if not 0 < alpha < 1:
        raise AnalysisError(f"alpha must be in (0, 1), got {alpha}")
    if power is not None and not 0 < power < 1:
        raise AnalysisError(f"power must be in (0, 1), got {power}")


def _power(dz: float, n: int, alpha: float) -> float:
    """Two-sided paired t-test power; numerical integration where scipy's noncentral t fails.

    statsmodels (through ``scipy.stats.nct``) returns NaN for very large noncentrality
    with 1 df (e.g. d_z = 20, n = 2). Then power = E_V[Φ(δ − c·√(V/ν)) + Φ(−δ − c·√(V/ν))]
    with V ~ χ²_ν, ν = n − 1, δ = d_z·√n, c = t_{1−α/2, ν}, integrated with ``quad``.
    """
    with pywarnings.catch_warnings():
        pywarnings.simplefilter("ignore")
        p = float(TTestPower().power(effect_size=abs(dz), nobs=n, alpha=alpha, alternative="two-sided"))
    if math.isfinite(p):
        return p
    nu, delta = n - 1, abs(dz) * math.sqrt(n)
    c = float(stats.t.ppf(1 - alpha / 2, nu))

    def integrand(v: float) -> float:
        s = c * math.sqrt(v / nu)
        return float((stats.norm.cdf(delta - s) + stats.norm.cdf(-delta - s)) * stats.chi2.pdf(v, nu))

    return float(min(1.0, integrate.quad(integrand, 0, np.inf, limit=200)[0]))


def seeds_needed(dz: float, *, power: float = 0.8, alpha: float = 0.05) -> int | None:
    """Smallest number of seeds (pairs) for the two-sided paired t-test to reach ``power`` at ``dz``.

    ceil of ``TTestPower().solve_power(effect_size=|dz|, power=power, alpha=alpha,
    alternative='two-sided')``, at least 2 (a t-test needs 2 pairs); where the solver
    fails, the smallest integer n whose power reaches ``power`` (power grows with n).
    None when d_z is 0 or not finite, or more than 10^7 seeds would be needed.
    """
    _check(alpha, power)
    if dz is None or not math.isfinite(dz) or dz == 0:
        return None
    es = abs(float(dz))
    if _power(es, 2, alpha) >= power:
        return 2
    n = math.nan
    with pywarnings.catch_warnings():
        pywarnings.simplefilter("ignore")
        try:
            n = float(
                np.squeeze(
                    TTestPower().solve_power(
                        effect_size=es, nobs=None, alpha=alpha, power=power, alternative="two-sided"
                    )
                )
            )
        except Exception:  # the root finder raises several types
            n = math.nan
    if math.isfinite(n) and n <= _MAX_SEEDS:
        return max(2, math.ceil(n - 1e-9))
    lo, hi = 2, 4
    while _power(es, hi, alpha) < power:
        lo, hi = hi, hi * 2
        if hi > _MAX_SEEDS:
            return None
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if _power(es, mid, alpha) < power else (lo, mid)
    return hi


def achieved_power(dz: float, n: int, *, alpha: float = 0.05) -> float:
    """Power of the two-sided paired t-test with ``n`` pairs at effect size ``dz`` (NaN if n < 2)."""
    _check(alpha)
    if n is None or n < 2 or dz is None or not math.isfinite(dz):
        return np.nan
    return _power(float(dz), int(n), alpha)


def dz_interval(dz: float, n: int, *, confidence: float = 0.95) -> tuple[float, float]:
    """Exact confidence interval of d_z from the noncentral t (NaN when undefined).

    With t = d_z·√n and ν = n − 1, the limits are δ/√n for the noncentrality δ solving
    ``scipy.stats.nct.cdf(t, ν, δ) = 1 − (1 − confidence)/2`` (lower) and ``(1 − confidence)/2``
    (upper), found with ``scipy.optimize.brentq``.
    """
    if n is None or n < 2 or dz is None or not math.isfinite(dz):
        return np.nan, np.nan
    # The paired table and the power table ask for the same (d_z, n): one root search each.
    return _dz_interval(float(dz), int(n), float(confidence))


@functools.lru_cache(maxsize=65536)
def _dz_interval(dz: float, n: int, confidence: float) -> tuple[float, float]:
    from scipy.optimize import brentq

    nu, t_obs = n - 1, dz * math.sqrt(n)
    tail = (1 - confidence) / 2

    def solve(target: float) -> float:
        def f(d: float) -> float:
            return nct_cdf(t_obs, nu, d) - target

        # The cdf falls in δ; widen the bracket step by step (scipy's nct gives NaN far in the tails).
        lo, hi = t_obs - 1.0, t_obs + 1.0
        while f(lo) < 0:
            lo -= max(1.0, abs(lo))
        while f(hi) > 0:
            hi += max(1.0, abs(hi))
        return float(brentq(f, lo, hi, xtol=1e-10)) / math.sqrt(n)

    with pywarnings.catch_warnings():
        pywarnings.simplefilter("ignore")
        try:
            return solve(1 - tail), solve(tail)
        except (ValueError, RuntimeError):
            return np.nan, np.nan


def family_alpha(alpha: float, family_size: int, correction: str) -> float:
    """The per-comparison α a planned comparison must meet in a family of ``family_size``."""
    if correction == "none" or family_size <= 1:
        return alpha
    return alpha / family_size


def power_table(
    paired: pd.DataFrame,
    *,
    target_dz: float = 0.5,
    power: float = 0.8,
    alpha: float = 0.05,
    correction: str = "holm",
) -> pd.DataFrame:
    """Observed d_z with its CI, and seeds needed for ``target_dz``, per comparison of a paired frame.

    Columns ``task, condition, n, dz, dz_ci_low, dz_ci_high, family_size, alpha_used,
    target_dz, n_for_target``: the CI is :func:`dz_interval` (95%); ``alpha_used`` is
    :func:`family_alpha` for the comparison's family (``family_size`` from the frame, else 1);
    ``n_for_target`` = seeds for ``power`` (default 80%) at ``target_dz`` (chosen in advance)
    and ``alpha_used``, two-sided. Seed counts are nullable integers.
    """
    _check(alpha, power)
    if not math.isfinite(target_dz) or target_dz == 0:
        raise AnalysisError(f"target_dz must be a non-zero number, got {target_dz}")
    missing = [c for c in ("task", "condition", "n", "dz") if c not in paired.columns]
    if missing:
        raise AnalysisError(f"paired frame lacks column(s) {', '.join(missing)}")
    rows = []
    cache: dict[float, int | None] = {}
    for r in paired.to_dict("records"):
        dz = float(r["dz"]) if r["dz"] is not None else np.nan
        m = int(r.get("family_size", 1) or 1)
        a = family_alpha(alpha, m, correction)
        if a not in cache:
            cache[a] = seeds_needed(target_dz, power=power, alpha=a)
        lo, hi = dz_interval(dz, int(r["n"]))
        rows.append(
            {
                "task": r["task"],
                "condition": r["condition"],
                "n": int(r["n"]),
                "dz": dz,
                "dz_ci_low": lo,
                "dz_ci_high": hi,
                "family_size": m,
                "alpha_used": a,
                "target_dz": float(target_dz),
                "n_for_target": cache[a],
            }
        )
    out = pd.DataFrame(rows, columns=POWER_COLUMNS)
    out["n"] = out["n"].astype("int64")
    out["family_size"] = out["family_size"].astype("int64")
    out["n_for_target"] = pd.array(
        [None if v is None or (isinstance(v, float) and math.isnan(v)) else int(v) for v in out["n_for_target"]],
        dtype="Int64",
    )
    for c in ("dz", "dz_ci_low", "dz_ci_high", "alpha_used", "target_dz"):
        out[c] = out[c].astype(float)
    return out


def power_plan(
    paired: pd.DataFrame,
    *,
    targets: tuple[float, ...] = (0.5, 1.0, 1.5, 2.0),
    power: float = 0.8,
    alpha: float = 0.05,
    correction: str = "holm",
) -> pd.DataFrame:
    """Seeds needed per family for each target d_z at the family's α (one row per family and target)."""
    _check(alpha, power)
    if paired.empty or "family" not in paired.columns:
        return pd.DataFrame(columns=PLAN_COLUMNS)
    rows = []
    fams = paired.drop_duplicates("family")[["family", "family_size"]]
    for r in fams.to_dict("records"):
        a = family_alpha(alpha, int(r["family_size"]), correction)
        for d in targets:
            rows.append(
                {
                    "family": r["family"],
                    "family_size": int(r["family_size"]),
                    "alpha_used": a,
                    "target_dz": float(d),
                    "power": power,
                    "n_needed": seeds_needed(d, power=power, alpha=a),
                }
            )
    out = pd.DataFrame(rows, columns=PLAN_COLUMNS)
    out["n_needed"] = pd.array(list(out["n_needed"]), dtype="Int64")
    return out
