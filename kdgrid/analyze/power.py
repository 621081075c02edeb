"""How many seeds a paired comparison needs: power of the paired t-test.

Power of the two-sided one-sample t-test on the paired differences (statsmodels
``TTestPower``; Cohen, 1988, ch. 2): with effect size d_z = mean(diff)/sd(diff) and n
pairs, the test statistic follows a noncentral t with n − 1 df and noncentrality
d_z·√n. Known values (R: ``pwr::pwr.t.test(d = 1, power = .8, type = "paired")``):
d_z = 1.0 needs 10 seeds, d_z = 0.5 needs 34 (9.94 and 33.37, rounded up).

``power_observed`` is the power at the *observed* d_z. It is a monotone function
of the observed p value and says nothing new about the result (Hoenig & Heisey, 2001,
*Am. Stat.* 55:19); plan with ``n_for_target`` at an effect size chosen in advance.
"""

from __future__ import annotations

import math
import warnings as pywarnings

import numpy as np
import pandas as pd
from scipy import integrate, stats
from statsmodels.stats.power import TTestPower

from kdgrid.analyze.tidy import AnalysisError

__all__ = ["POWER_COLUMNS", "achieved_power", "power_table", "seeds_needed"]

POWER_COLUMNS = ["task", "condition", "n", "observed_dz", "power_observed", "n_for_observed", "target_dz", "n_for_target"]
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
            n = float(np.squeeze(TTestPower().solve_power(
                effect_size=es, nobs=None, alpha=alpha, power=power, alternative="two-sided")))
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


def power_table(
    paired: pd.DataFrame,
    *,
    target_dz: float = 0.5,
    power: float = 0.8,
    alpha: float = 0.05,
) -> pd.DataFrame:
    """Seeds needed per comparison of a :func:`kdgrid.analyze.paired_tests` frame.

    Columns ``task, condition, n, observed_dz, power_observed, n_for_observed,
    target_dz, n_for_target``: ``power_observed`` = power with the current n at the
    observed d_z; ``n_for_observed`` / ``n_for_target`` = seeds for ``power`` (default
    80%) at the observed d_z / at ``target_dz`` (default 0.5), two-sided ``alpha``.
    Seed counts are nullable integers (``<NA>`` when undefined, e.g. d_z = 0).
    """
    _check(alpha, power)
    if not math.isfinite(target_dz) or target_dz == 0:
        raise AnalysisError(f"target_dz must be a non-zero number, got {target_dz}")
    missing = [c for c in ("task", "condition", "n", "dz") if c not in paired.columns]
    if missing:
        raise AnalysisError(f"paired frame lacks column(s) {', '.join(missing)}")
    n_target = seeds_needed(target_dz, power=power, alpha=alpha)
    rows = []
    for r in paired.itertuples(index=False):
        dz = float(r.dz) if r.dz is not None else np.nan
        rows.append({
            "task": r.task,
            "condition": r.condition,
            "n": int(r.n),
            "observed_dz": dz,
            "power_observed": achieved_power(dz, int(r.n), alpha=alpha),
            "n_for_observed": seeds_needed(dz, power=power, alpha=alpha),
            "target_dz": float(target_dz),
            "n_for_target": n_target,
        })
    out = pd.DataFrame(rows, columns=POWER_COLUMNS)
    out["n"] = out["n"].astype("int64")
    for c in ("n_for_observed", "n_for_target"):
        out[c] = pd.array([None if v is None or (isinstance(v, float) and math.isnan(v)) else int(v) for v in out[c]], dtype="Int64")
    for c in ("observed_dz", "power_observed", "target_dz"):
        out[c] = out[c].astype(float)
    return out
