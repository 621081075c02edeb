"""Group-sequential comparisons: boundaries against scipy's multivariate normal, and error rates by simulation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from kdgrid.analyze.sequential import (
    Design,
    boundaries,
    detectable,
    operating_characteristics,
    sequential_test,
    simulate,
    spent_alpha,
)


def _mvn_cov(info: tuple[float, ...]) -> np.ndarray:
    t = np.asarray(info)
    return np.sqrt(np.minimum.outer(t, t) / np.maximum.outer(t, t))


# Reference: brentq on the exit probability computed with
# scipy.stats.multivariate_normal(np.zeros(k), cov=sqrt(t_i/t_j), seed=12345, abseps=1e-12, releps=1e-6).cdf(
#     c, lower_limit=-c) (Genz's method), one look at a time, as Lan & DeMets define the boundaries.
MVN_OBF_5 = (4.382612702884384, 3.0997274775744215, 2.5533549722177353, 2.253847898262396, 2.0635010983891053)
MVN_POCOCK_5 = (2.4379766880500116, 2.426813850487338, 2.410193839416799, 2.396645397669379, 2.385984583205949)
MVN_OBF_4_BONFERRONI8 = (5.468737573241845, 3.867024883259864, 3.165228666987749, 2.766332741754554)


@pytest.mark.parametrize(
    ("info", "alpha", "kind", "ref"),
    [
        ((0.2, 0.4, 0.6, 0.8, 1.0), 0.05, "obrien_fleming", MVN_OBF_5),
        ((0.2, 0.4, 0.6, 0.8, 1.0), 0.05, "pocock", MVN_POCOCK_5),
        ((0.25, 0.5, 0.75, 1.0), 0.05 / 8, "obrien_fleming", MVN_OBF_4_BONFERRONI8),
    ],
)
def test_boundaries_match_scipy_multivariate_normal(
    info: tuple[float, ...], alpha: float, kind: str, ref: tuple[float, ...]
) -> None:
    assert boundaries(info, alpha, kind, 2) == pytest.approx(ref, abs=2e-4)


@pytest.mark.slow
def test_boundaries_spend_alpha_in_the_joint_distribution() -> None:
    info = (0.25, 0.5, 0.75, 1.0)
    c2 = np.array(boundaries(info, 0.05, "obrien_fleming", 2))
    c1 = np.array(boundaries(info, 0.05, "obrien_fleming", 1))
    mvn = stats.multivariate_normal(np.zeros(4), _mvn_cov(info), seed=7, abseps=1e-9, releps=1e-6)
    # P(no |Z_k| crosses) = 1 - alpha; one-sided: P(no Z_k crosses) = 1 - alpha
    assert mvn.cdf(c2, lower_limit=-c2) == pytest.approx(0.95, abs=1e-5)
    assert mvn.cdf(c1) == pytest.approx(0.95, abs=1e-5)
    # the first look spends exactly alpha(t_1): scipy.stats.norm.isf(spent / 2)
    assert c2[0] == pytest.approx(stats.norm.isf(spent_alpha(0.25, 0.05, "obrien_fleming") / 2), rel=1e-9)
    assert c2[0] == pytest.approx(1.959963984540054 / math.sqrt(0.25), rel=1e-9)  # OBF-type: z_{1-α/2}/√t


def test_operating_characteristics_at_the_null_spend_alpha() -> None:
    oc = operating_characteristics(Design((3, 6, 9, 12)), 0.0)
    assert oc.p_different == pytest.approx(0.05, abs=1e-6)
    assert oc.p_equivalent == 0.0
    assert sum(oc.stop_by_look) == pytest.approx(1.0)


def test_a_clear_difference_stops_early_and_the_verdict_is_a_pure_function() -> None:
    design = Design((3, 6, 9, 12), alpha=0.05, spending="pocock")
    d = [0.50, 0.52, 0.49, 0.51, 0.50, 0.48, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5]
    looks = [d[:n] for n in design.looks]
    first = sequential_test(looks[:1], design)
    assert first.verdict == "different" and first.n == 3 and len(first.looks) == 1
    # the same data with more looks available decides the same way at the same look
    assert sequential_test(looks, design) == first


def test_undecided_until_the_last_look_then_inconclusive() -> None:
    design = Design((3, 6), alpha=0.05)
    d = [0.3, -0.5, 0.1, 0.4, -0.2, 0.0]
    assert sequential_test([d[:3]], design).verdict == "undecided"
    assert sequential_test([d[:3], d], design).verdict == "inconclusive"


def test_failed_runs_drop_pairs_and_spend_by_observed_information() -> None:
    design = Design((3, 6, 9))
    d = [0.1, np.nan, 0.2, 0.1, 0.3, np.nan, 0.2, 0.1, 0.2]
    res = sequential_test([d[:3], d[:6], d], design, margin=1.0)
    assert [r.n for r in res.looks][:1] == [2]
    assert res.looks[0].info == pytest.approx(2 / 9)


def test_equal_runs_are_equivalent_and_a_constant_shift_is_different() -> None:
    design = Design((3, 6))
    assert sequential_test([[0.0, 0.0, 0.0]], design, margin=0.01).verdict == "equivalent"
    assert sequential_test([[0.2, 0.2, 0.2]], design, margin=0.01).verdict == "different"


# --------------------------------------------------------------------------- simulation
REPS = 4000
MC3 = 3 * math.sqrt(0.05 * 0.95 / REPS)  # three Monte Carlo standard errors at a rate of 0.05


@pytest.mark.parametrize("spending", ["obrien_fleming", "pocock"])
def test_simulation_type_one_error_and_false_equivalence_stay_at_alpha(spending: str) -> None:
    design = Design((3, 6, 9, 12), alpha=0.05, spending=spending)
    margin = detectable(design, 0.8, equivalence=True)
    null = simulate(design, 0.0, margin, REPS, seed=1)
    assert null["different"] <= 0.05 + MC3  # P(declare different | no difference) over the whole procedure
    at_margin = simulate(design, margin, margin, REPS, seed=2)
    assert at_margin["equivalent"] <= 0.05 + MC3  # P(declare equivalent | difference exactly at the margin)


def test_simulation_equivalence_rate_and_expected_seeds() -> None:
    design = Design((3, 6, 9, 12), alpha=0.05, spending="obrien_fleming")
    margin = detectable(design, 0.8, equivalence=True)  # the margin (in sd of the differences) sized for 80%
    intended = operating_characteristics(design, 0.0, margin)
    assert intended.p_equivalent == pytest.approx(0.8, abs=1e-6)
    sim = simulate(design, 0.0, margin, REPS, seed=3)
    # Estimating sd(diff) with 2-11 df costs some of the known-sigma rate (0.71 here at 4000 reps,
    # docs/sequential.md); a rate far below would mean the t conversion is broken, above would be too good.
    mc = 3 * math.sqrt(0.8 * 0.2 / REPS)
    assert intended.p_equivalent - 0.12 <= sim["equivalent"] <= intended.p_equivalent + mc
    assert sim["n"] < design.n_max  # stopping early saves seeds on average


def test_look_statistics_match_scipy_and_statsmodels() -> None:
    """The sequential code's own t and TOST p (scipy.special, for simulation speed) equal the library calls."""
    from scipy import stats
    from statsmodels.stats.weightstats import ttost_paired

    from kdgrid.analyze.sequential import _look_stats

    d = np.random.default_rng(5).normal(0.01, 0.02, 7)
    mean, sd, t, p, p_eq, lo, hi = _look_stats(d, 0.03, 0.025)
    ref = stats.ttest_1samp(d, 0.0)
    assert t == pytest.approx(ref.statistic, rel=1e-12) and p == pytest.approx(ref.pvalue, rel=1e-10)
    # statsmodels ttost_paired(d, 0, -0.03, 0.03)[0]: the larger of the two one-sided p values
    assert p_eq == pytest.approx(ttost_paired(d, np.zeros_like(d), -0.03, 0.03)[0], rel=1e-10)
    # the (1 - 2·0.025) t interval: scipy.stats.t.interval(0.95, 6, mean, sd/sqrt(7))
    assert (lo, hi) == pytest.approx(stats.t.interval(0.95, 6, loc=d.mean(), scale=stats.sem(d)), rel=1e-10)
