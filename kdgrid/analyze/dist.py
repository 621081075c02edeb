"""Distribution functions that a large study calls thousands of times with few distinct arguments.

A report on 1,000 cells asks for the same t quantile (95%, 9 df) several thousand times, and each
``scipy.stats`` call costs about 0.1 ms in argument checks alone; these memoise scipy's own answers,
so every number is the one the direct call gives (``tests/test_analyze_fast.py`` compares them).
"""

from __future__ import annotations

import functools

from scipy import special, stats

__all__ = ["nct_cdf", "t_ppf"]


@functools.lru_cache(maxsize=4096)
def t_ppf(q: float, df: float) -> float:
    """``float(scipy.stats.t.ppf(q, df))``, memoised."""
    return float(stats.t.ppf(q, df))


def nct_cdf(t: float, df: float, nc: float) -> float:
    """``float(scipy.stats.nct.cdf(t, df, nc))`` for df > 0 and finite nc: the ufunc that method evaluates
    (``scipy.special.nctdtr``, scipy 1.17 ``nct_gen._cdf``) without the distribution's argument checks."""
    return float(special.nctdtr(df, nc, t))
