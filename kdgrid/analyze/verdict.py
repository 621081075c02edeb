"""Three verdicts for one paired comparison: *different*, *equivalent within ±margin*, or *inconclusive*.

A verdict needs evidence of its own kind (Schuirmann, 1987; Lakens, 2017, *Soc. Psychol. Personal. Sci.*
8:355): "different" from a test of H0: μ_d = 0 that rejects, "equivalent" from the two one-sided tests
(TOST) of H0: |μ_d| ≥ margin that reject, anything else "inconclusive". Non-significance alone never
makes "equivalent".

* Difference: Student's paired t-test on the differences d (``scipy.stats.ttest_1samp(d, 0)``). When the
  differences are all equal and non-zero (sd = 0) t is undefined; that is the strongest evidence a paired
  design can give, so the exact Wilcoxon signed-rank test is used instead (every sign agrees: p = 2/2^n,
  the smallest p that n pairs allow). All differences zero: p = 1 (the data say nothing against H0).
* Equivalence: TOST with the paired t-test (statsmodels ``ttost_paired(d, 0, -margin, margin)``):
  p_equiv = max(p(t_lower), p(t_upper)), t_lower = (mean(d) + margin)/(sd/√n), t_upper = (mean(d) − margin)/(sd/√n),
  n − 1 df. Rejecting at α is the same as the (1 − 2α) t interval lying inside (−margin, margin). With sd = 0
  the one-sided exact Wilcoxon tests of d + margin > 0 and d − margin < 0 take its place.
* When both reject (a small but real difference inside the margin) the verdict is "different" and
  ``within_margin`` is true.

:func:`verdict` tests one comparison at level ``alpha``; inside a family of comparisons the caller adjusts
the two p values (:func:`kdgrid.analyze.paired.adjust_pvalues`) and calls :func:`classify`. Pure functions,
no pandas: sequential designs reuse them.
"""

from __future__ import annotations

import functools
import math
import warnings as pywarnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import stats
from statsmodels.stats.weightstats import ttost_paired

Alternative = Literal["two-sided", "less", "greater"]

__all__ = [
    "EXACT_MAX_N",
    "VERDICTS",
    "Verdict",
    "classify",
    "difference_p",
    "equivalence_p",
    "exact_wilcoxon",
    "verdict",
]

VerdictName = Literal["different", "equivalent", "inconclusive"]
VERDICTS: tuple[str, ...] = ("different", "equivalent", "inconclusive")
#: Largest number of non-zero differences whose 2^n sign flips are enumerated exactly.
EXACT_MAX_N = 16


@dataclass(frozen=True)
class Verdict:
    """The verdict on one comparison and the evidence behind it."""

    verdict: VerdictName
    p_difference: float
    p_equivalence: float
    within_margin: bool
    margin: float
    alpha: float
    test: str  # which difference test gave p_difference
    n: int


def _clean(diffs: Sequence[float] | np.ndarray) -> np.ndarray:
    d = np.asarray(diffs, dtype=float)
    d = d[np.isfinite(d)]
    # Metric differences are multiples of 1/n_dev: rounding stops float noise from breaking ties.
    rounded: np.ndarray = np.round(d, 12)
    return rounded


def _constant(d: np.ndarray) -> bool:
    return bool(d.size >= 1 and np.ptp(d) <= 1e-12 * max(1.0, float(np.abs(d).max())))


def exact_wilcoxon(d: np.ndarray, alternative: Alternative = "two-sided") -> float:
    """Exact signed-rank p from all 2^n sign flips of the mid-ranks (zeros dropped, Wilcoxon's method)."""
    nz = d[d != 0]
    if nz.size == 0:
        return 1.0
    if nz.size > EXACT_MAX_N:  # 2^n sign flips: beyond 2^16 scipy's own choice (normal approximation with ties)
        return float(stats.wilcoxon(nz, alternative=alternative, zero_method="wilcox").pvalue)
    if nz.size < 2:  # scipy's own answer (it refuses a single pair)
        # n_resamples=inf asks scipy for every sign flip (its stubs admit only ints)
        every = stats.PermutationMethod(n_resamples=np.inf)  # type: ignore[call-overload]
        return float(stats.wilcoxon(nz, alternative=alternative, zero_method="wilcox", method=every).pvalue)
    return _sign_flip_p(nz, alternative)


@functools.lru_cache(maxsize=EXACT_MAX_N + 1)
def _flips(n: int) -> np.ndarray:
    """Row k of the 2^n x n matrix: which pairs keep their sign in flip k (every flip once)."""
    out = (np.arange(2**n)[:, None] >> np.arange(n)) & 1
    out.setflags(write=False)
    return out


def _sign_flip_p(nz: np.ndarray, alternative: Alternative) -> float:
    """``scipy.stats.wilcoxon(nz, alternative=..., zero_method="wilcox",
    method=stats.PermutationMethod(n_resamples=np.inf)).pvalue``, bit for bit, in one matrix product.

    scipy enumerates the 2^n sign flips through ``permutation_test`` and ranks every flipped sample again
    (0.7 s for 10 pairs); |d| and so the mid-ranks are the same for every flip, so the null distribution
    of R+ is the 0/1 matrix of flips times the ranks. Mid-ranks are multiples of 1/2, so every sum is
    exact in float64 whatever its order, and the p value below is permutation_test's own formula
    (exact test: no +1 adjustment; ties within 100 float eps of the observed value count).
    """
    ranks = stats.rankdata(np.abs(nz), method="average")
    n = nz.size
    flips = _flips(n)
    # scipy flips every sign in turn, pairing observation i with d_i or -d_i: R+ counts the positive ones.
    positive = np.where(flips == 1, nz > 0, nz < 0)
    null = positive.astype(float) @ ranks
    observed = float(ranks[nz > 0].sum())
    gamma = abs(np.finfo(float).eps * 100 * observed)
    less = np.count_nonzero(null <= observed + gamma) / null.size
    greater = np.count_nonzero(null >= observed - gamma) / null.size
    p = {"less": less, "greater": greater}.get(alternative, min(less, greater) * 2)
    return float(np.clip(p, 0.0, 1.0))


def sign_flip_p_many(samples: Sequence[np.ndarray]) -> list[float]:
    """:func:`_sign_flip_p` (two-sided) of many samples of non-zero differences (2 to ``EXACT_MAX_N`` each),
    the samples of one size in one matrix product.

    The null R+ of a flip is the sum of the ranks of the pairs it leaves positive: flips @ (ranks of the
    positive pairs) + (1 − flips) @ (ranks of the negative ones). Mid-ranks are multiples of 1/2, so every
    such sum is exact in float64 and equals :func:`_sign_flip_p`'s product bit for bit, and the p value is
    the same formula (``tests/test_analyze_fast.py``).
    """
    out = [math.nan] * len(samples)
    by_n: dict[int, list[int]] = {}
    for i, nz in enumerate(samples):
        if not 2 <= nz.size <= EXACT_MAX_N or np.any(nz == 0):
            raise ValueError("sign_flip_p_many takes 2 to EXACT_MAX_N non-zero differences per sample")
        by_n.setdefault(nz.size, []).append(i)
    for n, idx in by_n.items():
        flips = _flips(n).astype(float)
        # at most ~4M null values at once: 2^16 flips x 64 samples
        step = max(1, (1 << 22) // (1 << n))
        for lo in range(0, len(idx), step):
            part = idx[lo : lo + step]
            d = np.vstack([samples[i] for i in part])
            ranks = stats.rankdata(np.abs(d), method="average", axis=1)
            pos, neg = np.where(d > 0, ranks, 0.0), np.where(d < 0, ranks, 0.0)
            null = flips @ pos.T + (1.0 - flips) @ neg.T  # (2^n, samples)
            observed = pos.sum(axis=1)
            gamma = np.abs(np.finfo(float).eps * 100 * observed)
            less = np.count_nonzero(null <= observed + gamma, axis=0) / null.shape[0]
            greater = np.count_nonzero(null >= observed - gamma, axis=0) / null.shape[0]
            p = np.clip(np.minimum(less, greater) * 2, 0.0, 1.0)
            for i, v in zip(part, p.tolist()):
                out[i] = float(v)
    return out


def difference_p(diffs: Sequence[float] | np.ndarray, *, t_pvalue: float | None = None) -> tuple[float, str]:
    """Two-sided p of H0: μ_d = 0 and the test that gave it (see the module docstring).

    ``t_pvalue``: ``scipy.stats.ttest_1samp(d, 0).pvalue`` of these differences when the caller computed it
    already (for many comparisons in one scipy call, :func:`kdgrid.analyze.paired._batched_t`); used only
    where the paired t test is the test."""
    d = _clean(diffs)
    if d.size < 2:
        return math.nan, "no test (fewer than 2 pairs)"
    if _constant(d):
        if d[0] == 0:
            return 1.0, "none (all differences zero)"
        return exact_wilcoxon(d), "exact Wilcoxon (constant differences: t undefined)"
    return float(stats.ttest_1samp(d, 0.0).pvalue if t_pvalue is None else t_pvalue), "paired t"


def equivalence_p(diffs: Sequence[float] | np.ndarray, margin: float) -> float:
    """TOST p of H0: |μ_d| ≥ margin (small p: equivalent within ±margin); NaN without a margin or 2 pairs."""
    d = _clean(diffs)
    if d.size < 2 or not (margin > 0 and math.isfinite(margin)):
        return math.nan
    if _constant(d):
        if abs(d[0]) >= margin:
            return 1.0
        return max(exact_wilcoxon(d + margin, "greater"), exact_wilcoxon(d - margin, "less"))
    with pywarnings.catch_warnings():
        pywarnings.simplefilter("ignore")
        p = ttost_paired(d, np.zeros_like(d), -margin, margin)[0]
    return float(p)


def classify(p_difference: float, p_equivalence: float, alpha: float) -> tuple[VerdictName, bool]:
    """Verdict from two (possibly family-adjusted) p values: (verdict, within_margin)."""
    equivalent = bool(math.isfinite(p_equivalence) and p_equivalence < alpha)
    if math.isfinite(p_difference) and p_difference < alpha:
        return "different", equivalent
    return ("equivalent" if equivalent else "inconclusive"), equivalent


def verdict(diffs: Sequence[float] | np.ndarray, margin: float, alpha: float = 0.05) -> Verdict:
    """Verdict on one paired comparison (differences = condition − baseline), unadjusted, at level ``alpha``."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    d = _clean(diffs)
    p_diff, test = difference_p(d)
    p_eq = equivalence_p(d, margin)
    name, within = classify(p_diff, p_eq, alpha)
    return Verdict(name, p_diff, p_eq, within, float(margin), float(alpha), test, int(d.size))
