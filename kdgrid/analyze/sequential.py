"""Group-sequential paired comparisons: decide after each look whether to stop (docs/sequential.md).

The design (Jennison & Turnbull, 2000, *Group Sequential Methods with Applications to Clinical
Trials*, ch. 7 and 19; Lan & DeMets, 1983, *Biometrika* 70:659):

* Looks after n_1 < n_2 < ... < n_K seeds per cell; information fraction t_k = n_k / n_K (the
  variance of a paired mean difference is proportional to 1/n).
* **Different**: two-sided test of mean difference 0 with an α-spending function α(t)
  (O'Brien-Fleming-type: 2 − 2Φ(z_{1−α/2}/√t); Pocock-type: α·ln(1 + (e − 1)t)). The boundary
  c_k solves P(|Z_j| < c_j for j < k, |Z_k| ≥ c_k) = α(t_k) − α(t_{k−1}) for the canonical
  joint distribution of the Z statistics (independent increments, corr(Z_i, Z_j) = √(t_i/t_j)).
* **Equivalent**: repeated TOST. Each one-sided test (mean > −m, mean < m) is itself a
  group-sequential test with the one-sided boundaries e_k of the same spending function at
  level α; equivalence is declared at the first look where both reject. Under a true
  difference of ±m, P(declare equivalent) ≤ α (intersection-union, Berger 1982).
* **Small n**: the paired t statistic (df = n − 1) is turned into a nominal p value and compared
  with the boundary's nominal level Φ̄(c_k) ("significance level approach", Jennison &
  Turnbull 2000, §3.8). Successive t statistics are less correlated than the z statistics the
  boundaries assume, which alone gives a type-I error of 0.054-0.057 at α = 0.05, so 'different'
  spends a calibrated α' ≤ α (:func:`calibrated_alpha`); tests/test_sequential.py and
  bench/sequential.py check the error rates by simulation at 3-24 seeds.

Boundaries come from the recursive numerical integration of Armitage, McPherson & Rowe (1969)
(J&T ch. 19) on Simpson grids; tests check them against ``scipy.stats.multivariate_normal``'s
rectangle probabilities (Genz's method), which is too slow (tens of seconds per design at the
precision OBF needs at early looks) to be used for the root search itself.

Pure functions: no store, no torch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import numpy as np
from scipy import special, stats
from scipy.optimize import brentq

__all__ = [
    "SPENDING",
    "Design",
    "LookResult",
    "OperatingCharacteristics",
    "SequentialResult",
    "boundaries",
    "calibrated_alpha",
    "detectable",
    "operating_characteristics",
    "sequential_test",
    "simulate",
    "spent_alpha",
]

Spending = Literal["obrien_fleming", "pocock"]
SPENDING: tuple[str, ...] = ("obrien_fleming", "pocock")
Verdict = Literal["different", "equivalent", "inconclusive", "undecided"]
_GRID = 60  # Simpson panels per interval: boundaries agree with scipy's MVN to 1e-4 (tests)
_TAIL = 9.0  # a one-sided continuation region is cut 9 sd below the mean


def spent_alpha(t: float | np.ndarray, alpha: float, kind: str) -> np.ndarray:
    """Cumulative α spent at information fraction t (Lan & DeMets, 1983)."""
    t = np.clip(np.asarray(t, dtype=float), 0.0, 1.0)
    if kind == "obrien_fleming":
        with np.errstate(divide="ignore"):
            return np.where(t > 0, 2.0 - 2.0 * stats.norm.cdf(stats.norm.isf(alpha / 2) / np.sqrt(t)), 0.0)
    if kind == "pocock":
        return alpha * np.log1p((math.e - 1.0) * t)
    raise ValueError(f"unknown spending function {kind!r} (allowed: {', '.join(SPENDING)})")


# --------------------------------------------------------------------------- recursive integration
def _simpson(a: float, b: float) -> tuple[np.ndarray, np.ndarray]:
    x = np.linspace(a, b, 2 * _GRID + 1)
    w = np.ones_like(x)
    w[1:-1:2], w[2:-1:2] = 4.0, 2.0
    return x, w * (b - a) / (6 * _GRID)


def _nodes(intervals: Sequence[tuple[float, float]]) -> tuple[np.ndarray, np.ndarray]:
    parts = [_simpson(a, b) for a, b in intervals if b > a]
    if not parts:
        return np.zeros(0), np.zeros(0)
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


@dataclass
class _State:
    """Sub-density of the score S_k = Z_k √t_k on the continuation region after look k."""

    x: np.ndarray
    mass: np.ndarray  # density × quadrature weight at x
    t: float

    @classmethod
    def start(cls) -> _State:
        return cls(np.zeros(1), np.ones(1), 0.0)

    def prob_between(self, lo: float, hi: float, t: float, drift: float) -> float:
        """P(lo < S at information t < hi, still running), S_t − S_prev ~ N(drift·Δt, Δt)."""
        sd = math.sqrt(t - self.t)
        mu = self.x + drift * (t - self.t)
        # Tails from their own side: early O'Brien-Fleming increments are 1e-12 and 1 - cdf would lose them.
        if lo == -math.inf:
            p = special.ndtr((hi - mu) / sd)
        elif hi == math.inf:
            p = special.ndtr((mu - lo) / sd)
        else:
            p = special.ndtr((hi - mu) / sd) - special.ndtr((lo - mu) / sd)
        return float(self.mass @ p)

    def advance(self, intervals: Sequence[tuple[float, float]], t: float, drift: float) -> _State:
        x, w = _nodes(intervals)
        sd = math.sqrt(t - self.t)
        dens = stats.norm.pdf((x[:, None] - self.x[None, :] - drift * (t - self.t)) / sd) / sd @ self.mass
        return _State(x, dens * w, t)


def _solve(f: Callable[[float], float], lo: float = 0.0, hi: float = 40.0) -> float:
    return float(brentq(f, lo, hi, xtol=1e-9))


@lru_cache(maxsize=4096)
def boundaries(info: tuple[float, ...], alpha: float, kind: str, sides: int = 2) -> tuple[float, ...]:
    """Z-scale boundaries c_1..c_K for looks at information fractions ``info`` (increasing, last ≤ 1).

    ``sides=2``: reject when |Z_k| ≥ c_k; ``sides=1``: reject when Z_k ≥ c_k. The α(t_k) − α(t_{k−1})
    spent at look k is exact for the canonical joint distribution (null, independent increments).
    """
    if not info or any(b <= a for a, b in zip(info, info[1:])) or info[0] <= 0 or info[-1] > 1 + 1e-12:
        raise ValueError(f"information fractions must increase in (0, 1]: {info}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must lie in (0, 1): {alpha}")
    cum = spent_alpha(np.array(info), alpha, kind)
    state, out, prev = _State.start(), [], 0.0
    for t, a in zip(info, cum):
        inc = max(float(a) - prev, 0.0)
        prev = float(a)
        st = math.sqrt(t)
        if inc <= 1e-15:  # nothing to spend: a boundary no statistic reaches
            c = math.inf
        elif sides == 2:

            def both(c: float, state: _State = state, st: float = st, t: float = t, inc: float = inc) -> float:
                return (
                    state.prob_between(-math.inf, -c * st, t, 0.0) + state.prob_between(c * st, math.inf, t, 0.0) - inc
                )

            c = _solve(both)
        else:

            def upper_only(c: float, state: _State = state, st: float = st, t: float = t, inc: float = inc) -> float:
                return state.prob_between(c * st, math.inf, t, 0.0) - inc

            c = _solve(upper_only, -10.0, 40.0)
        out.append(c)
        upper = c * st if math.isfinite(c) else _TAIL * st
        state = state.advance([(-upper, upper)] if sides == 2 else [(-_TAIL * st, upper)], t, 0.0)
    return tuple(out)


# --------------------------------------------------------------------------- small samples
CALIBRATION_SEED = 20261202


def calibration_reps(alpha: float) -> int:
    """Simulated studies for :func:`calibrated_alpha`: about 1,000 expected rejections (3% relative MC
    error), at least 40,000, at most 200,000 (a Bonferroni-split α of 0.002 still gets 400 rejections)."""
    return min(200_000, max(40_000, math.ceil(1000 / alpha)))


@lru_cache(maxsize=256)
def calibrated_alpha(looks: tuple[int, ...], alpha: float, kind: str) -> float:
    """The largest α' ≤ α whose two-sided boundaries, applied to paired t tests at these looks through
    their nominal levels, reject a true null of normal differences with probability ≤ α.

    The nominal-level conversion is exact look by look (each t has its exact marginal), but the t
    statistics of successive looks are less correlated than the z statistics the boundaries assume
    (each look re-estimates the sd from 2-11 df), so without this the whole procedure rejects a true
    null about 10% too often (0.054-0.057 for α = 0.05, bench/sequential.py). The rate is simulated
    with common random numbers (:func:`calibration_reps` studies, fixed seed: the same α' on every call, so a
    decision recomputed after a restart is the same) and α' found by bisection.
    """
    ns = np.asarray(looks)
    rng = np.random.default_rng(CALIBRATION_SEED)
    d = rng.standard_normal((calibration_reps(alpha), int(ns[-1])))
    s1 = np.cumsum(d, axis=1)[:, ns - 1]
    s2 = np.cumsum(d * d, axis=1)[:, ns - 1]
    mean = s1 / ns
    se = np.sqrt((s2 - ns * mean**2) / (ns - 1) / ns)
    p = 2 * special.stdtr(ns - 1, -np.abs(mean / se))
    info = tuple(float(n) / float(ns[-1]) for n in ns)

    def rate(a: float) -> float:
        nominal = 2 * special.ndtr(-np.asarray(boundaries(info, a, kind, 2)))
        return float(np.mean((p <= nominal).any(axis=1)))

    if rate(alpha) <= alpha:
        return alpha
    lo, hi = alpha / 2, alpha
    while rate(lo) > alpha:
        lo /= 2
    for _ in range(30):  # bisection on the log scale: α' to about 0.1% relative
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if rate(mid) <= alpha else (lo, mid)
    return lo


# --------------------------------------------------------------------------- the design
@dataclass(frozen=True)
class Design:
    """A sequential comparison's design: looks (planned seeds per cell), α per comparison, spending."""

    looks: tuple[int, ...]  # planned pairs at each look, increasing, e.g. (3, 6, 9, 12)
    alpha: float = 0.05  # per comparison (the caller splits the family's α)
    spending: str = "obrien_fleming"

    def __post_init__(self) -> None:
        if not self.looks or self.looks[0] < 2 or any(b <= a for a, b in zip(self.looks, self.looks[1:])):
            raise ValueError(f"looks must be increasing seed counts starting at 2 or more: {self.looks}")
        if self.spending not in SPENDING:
            raise ValueError(f"unknown spending function {self.spending!r} (allowed: {', '.join(SPENDING)})")

    @property
    def n_max(self) -> int:
        return self.looks[-1]

    @property
    def alpha_different(self) -> float:
        """α of the spending function for 'different', calibrated for t statistics (:func:`calibrated_alpha`)."""
        return calibrated_alpha(self.looks, self.alpha, self.spending)

    def planned_boundaries(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """(two-sided 'different' boundaries, one-sided TOST boundaries) at the planned looks."""
        info = tuple(n / self.n_max for n in self.looks)
        return boundaries(info, self.alpha, self.spending, 2), boundaries(info, self.alpha, self.spending, 1)


@dataclass(frozen=True)
class LookResult:
    look: int  # 1-based index of the planned look
    n: int  # pairs used (seeds with a finite value in both cells)
    info: float  # information fraction used for the boundary
    mean_diff: float
    sd_diff: float
    t: float
    p: float  # two-sided paired t p value
    p_bound: float  # nominal two-sided level this look rejects at: 2Φ̄(c_k)
    z_bound: float  # c_k
    p_equiv: float  # TOST p: the larger of the two one-sided p values (NaN without a margin)
    p_equiv_bound: float  # nominal one-sided level of the TOST boundary: Φ̄(e_k)
    ci_low: float  # repeated CI at the look's nominal level (two-sided 1 − 2Φ̄(e_k)), as TOST uses it
    ci_high: float
    decision: Verdict  # what this look decided ('undecided': go on)


@dataclass(frozen=True)
class SequentialResult:
    verdict: Verdict
    looks: tuple[LookResult, ...]
    reason: str

    @property
    def n(self) -> int:
        return self.looks[-1].n if self.looks else 0


def _look_stats(d: np.ndarray, margin: float | None, p_eq_bound: float) -> tuple[float, ...]:
    # scipy.special's t and normal CDFs: the same functions scipy.stats.t / norm call, without
    # the distribution-object overhead that would dominate a simulation of thousands of studies.
    n = len(d)
    mean = float(d.mean())
    sd = float(d.std(ddof=1))
    se = sd / math.sqrt(n)
    df = n - 1
    if se > 0:
        t = mean / se
        p = float(2 * special.stdtr(df, -abs(t)))
    else:  # every difference equal: a constant shift is either no difference or a certain one
        t = 0.0 if mean == 0 else math.copysign(math.inf, mean)
        p = 1.0 if mean == 0 else 0.0
    q = -float(special.stdtrit(df, p_eq_bound)) if p_eq_bound > 0 else math.inf
    lo, hi = mean - q * se, mean + q * se
    if margin is None:
        p_eq = math.nan
    elif se > 0:
        p_eq = float(max(special.stdtr(df, -(mean + margin) / se), special.stdtr(df, -(margin - mean) / se)))
    else:
        p_eq = 0.0 if abs(mean) < margin else 1.0
    return mean, sd, t, p, p_eq, lo, hi


def sequential_test(
    diffs: Sequence[Sequence[float] | np.ndarray],
    design: Design,
    margin: float | None = None,
    *,
    complete: int | None = None,
) -> SequentialResult:
    """Apply the design to the paired differences available at each look.

    ``diffs[k]``: the differences (condition − baseline) of look k+1's seeds that have both runs
    (cumulative: look k+1 holds look k's pairs and more). Only looks whose runs have all finished
    are passed; ``complete`` (default ``len(diffs)``) says how many. The verdict is a pure function
    of these numbers, so recomputing it from the store after a restart gives the same decision.
    Looks that add no pair are skipped; the information fraction is the observed n / n_max, and the
    last planned look spends what is left of α (Lan & DeMets).
    """
    k_done = len(diffs) if complete is None else complete
    if k_done > len(design.looks):
        raise ValueError(f"{k_done} looks given, the design has {len(design.looks)}")
    arrays = [np.asarray(d, dtype=float) for d in diffs[:k_done]]
    arrays = [a[np.isfinite(a)] for a in arrays]
    used: list[tuple[int, np.ndarray]] = []
    for k, a in enumerate(arrays):
        if len(a) >= 2 and (not used or len(a) > len(used[-1][1])):
            used.append((k, a))
    results: list[LookResult] = []
    last_planned = len(design.looks) - 1
    for i, (k, a) in enumerate(used):
        infos = tuple(1.0 if kk == last_planned else min(len(aa) / design.n_max, 1.0) for kk, aa in used[: i + 1])
        c = boundaries(infos, design.alpha_different, design.spending, 2)[-1]
        e = boundaries(infos, design.alpha, design.spending, 1)[-1]
        p_bound = float(2 * special.ndtr(-c))
        p_eq_bound = float(special.ndtr(-e))
        mean, sd, t, p, p_eq, lo, hi = _look_stats(a, margin, p_eq_bound)
        if p <= p_bound:
            decision: Verdict = "different"
        elif margin is not None and p_eq <= p_eq_bound:
            decision = "equivalent"
        elif k == last_planned:
            decision = "inconclusive"
        else:
            decision = "undecided"
        results.append(
            LookResult(k + 1, len(a), infos[-1], mean, sd, t, p, p_bound, c, p_eq, p_eq_bound, lo, hi, decision)
        )
        if decision != "undecided":
            return SequentialResult(decision, tuple(results), _reason(decision, results[-1], margin))
    if k_done == len(design.looks):
        return SequentialResult("inconclusive", tuple(results), "too few complete pairs at the last look")
    last = ""
    if results:
        r = results[-1]
        eq = "" if margin is None else f", TOST p = {r.p_equiv:.3g} > {r.p_equiv_bound:.3g}"
        last = f"look {r.look} (n = {r.n}): p = {r.p:.3g} > {r.p_bound:.3g}{eq}; "
    return SequentialResult(
        "undecided", tuple(results), f"{last}waiting for look {k_done + 1} ({design.looks[k_done]} seeds)"
    )


def _reason(decision: str, r: LookResult, margin: float | None) -> str:
    if decision == "different":
        return f"p = {r.p:.3g} ≤ {r.p_bound:.3g} (boundary |z| ≥ {r.z_bound:.3f}) at look {r.look}, n = {r.n}"
    if decision == "equivalent":
        return (
            f"TOST p = {r.p_equiv:.3g} ≤ {r.p_equiv_bound:.3g}: CI [{r.ci_low:.4g}, {r.ci_high:.4g}] inside "
            f"±{margin:g} at look {r.look}, n = {r.n}"
        )
    return f"neither boundary crossed at the last look (n = {r.n})"


# --------------------------------------------------------------------------- operating characteristics
@dataclass(frozen=True)
class OperatingCharacteristics:
    """Probabilities of each verdict and the expected seeds per cell, for known σ (the z process)."""

    p_different: float
    p_equivalent: float
    p_inconclusive: float
    expected_n: float
    stop_by_look: tuple[float, ...]


def operating_characteristics(design: Design, effect: float, margin: float | None = None) -> OperatingCharacteristics:
    """The design's verdict probabilities when the paired differences are N(effect, 1) (σ known).

    ``effect`` and ``margin`` are in units of sd(diff) (``effect`` is d_z). This is the
    large-sample behaviour the small-n t version approximates; the simulations compare the two.
    """
    n_max = design.n_max
    info = tuple(n / n_max for n in design.looks)
    c2, e1 = design.planned_boundaries()
    drift = effect * math.sqrt(n_max)  # E[S_t] = drift · t
    phi_m = None if margin is None else margin * math.sqrt(n_max)
    state = _State.start()
    p_diff = p_eq = 0.0
    stops: list[float] = []
    for k, (t, c, e) in enumerate(zip(info, c2, e1)):
        st = math.sqrt(t)
        b = c * st
        a = 0.0 if phi_m is None else max(0.0, phi_m * t - e * st)
        a = min(a, b)
        d = state.prob_between(-math.inf, -b, t, drift) + state.prob_between(b, math.inf, t, drift)
        q = state.prob_between(-a, a, t, drift) if a > 0 else 0.0
        p_diff += d
        p_eq += q
        stops.append(d + q)
        if k < len(info) - 1:
            state = state.advance([(-b, -a), (a, b)] if a > 0 else [(-b, b)], t, drift)
    running = 1.0 - sum(stops)
    stops[-1] += running  # reaching the last look ends the comparison whatever it shows
    exp_n = float(sum(n * s for n, s in zip(design.looks, stops)))
    return OperatingCharacteristics(p_diff, p_eq, max(running, 0.0), exp_n, tuple(stops))


def simulate(design: Design, effect: float, margin: float | None, reps: int, seed: int) -> dict[str, float]:
    """The whole small-n procedure (t statistics, calibrated α) on ``reps`` studies whose paired
    differences are N(effect, 1): the share of each verdict and the mean seeds taken (``n``).
    The Monte Carlo counterpart of :func:`operating_characteristics`, used by the tests and the bench."""
    rng = np.random.default_rng(seed)
    counts = {"different": 0, "equivalent": 0, "inconclusive": 0}
    n = 0
    for _ in range(reps):
        d = rng.normal(effect, 1.0, design.n_max)
        r = sequential_test([d[:k] for k in design.looks], design, margin)
        counts[r.verdict] += 1
        n += r.n
    return {**{k: v / reps for k, v in counts.items()}, "n": n / reps}


def detectable(design: Design, power: float, *, equivalence: bool = False) -> float:
    """Smallest |d_z| the design calls different with probability ``power`` (σ known), or, with
    ``equivalence=True``, the smallest margin (in sd(diff)) it calls equivalent at d_z = 0 with it."""
    if equivalence:
        return _solve(lambda m: operating_characteristics(design, 0.0, m).p_equivalent - power, 1e-6, 50.0)
    return _solve(lambda d: operating_characteristics(design, d).p_different - power, 0.0, 50.0)
