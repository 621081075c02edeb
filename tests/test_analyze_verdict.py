"""Issue 19 (part B): exact small-sample tests, one comparison per family, simultaneous intervals,
equivalence (TOST) verdicts, comparisons over tasks, prospective power, floors, display scale.

Every number is checked against an independent reference, the call that produced it written beside it.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from kdgrid.analyze import analyze_table, paired_tests
from kdgrid.analyze.paired import family_adjust, wilcoxon_signed_rank
from kdgrid.analyze.pooled import stratified_effect
from kdgrid.analyze.power import dz_interval
from kdgrid.analyze.verdict import difference_p, equivalence_p, verdict

ATT = "objective.intermediate.attention"
ALPHA = "objective.intermediate.alpha"


def _signflip_p(d: np.ndarray) -> float:
    """Exact two-sided signed-rank p by enumerating all 2^n sign flips of the mid-ranks (zeros dropped)."""
    d = d[d != 0]
    r = stats.rankdata(np.abs(d))  # mid-ranks for ties
    w = r[d > 0].sum()
    mean = r.sum() / 2
    flips = np.array([sum(ri for ri, s in zip(r, signs) if s) for signs in itertools.product([0, 1], repeat=len(r))])
    return float(np.mean(np.abs(flips - mean) >= abs(w - mean) - 1e-12))


# --------------------------------------------------------------------------- exact Wilcoxon
def test_wilcoxon_with_ties_is_exact_at_five_pairs() -> None:
    # Tied |d|: the old code switched to the normal approximation and returned p = 0.0369 for five equal
    # differences and 0.0477 for [1, 2, 2, 2, 2], below the exact floor. Every sign positive is the most
    # extreme of the 2^5 flips: p = 2/32.
    # scipy.stats.wilcoxon([1, 2, 2, 2, 2], method=scipy.stats.PermutationMethod(n_resamples=np.inf)) -> 0.0625
    for d in ([0.01] * 5, [0.01, 0.02, 0.02, 0.02, 0.02], [0.01, 0.01, 0.02, 0.02, 0.03]):
        p, note = wilcoxon_signed_rank(d)
        assert p == pytest.approx(0.0625, abs=1e-12) and note == ""


@pytest.mark.parametrize(
    "d",
    [
        [0.0, 1.0, 1.0, -2.0, 3.0, 4.0],  # a zero and a tie
        [-0.5, 0.5, 1.0, 1.0, 1.0, 2.0, -3.0],  # ties of opposite signs
        [0.2, 0.2, 0.2, -0.2, 0.4, 0.4, 0.6, 0.8],  # many ties
    ],
)
def test_wilcoxon_matches_the_enumerated_sign_flip_distribution(d: list[float]) -> None:
    p, _ = wilcoxon_signed_rank(d)
    assert p == pytest.approx(_signflip_p(np.asarray(d)), abs=1e-12)
    # and scipy's own exact permutation call on the non-zero differences
    nz = np.asarray(d)[np.asarray(d) != 0]
    ref = stats.wilcoxon(nz, method=stats.PermutationMethod(n_resamples=np.inf)).pvalue
    assert p == pytest.approx(ref, abs=1e-12)


# --------------------------------------------------------------------------- constant differences
def test_constant_nonzero_differences_use_the_exact_test_and_stay_in_the_family() -> None:
    # t is undefined (sd = 0); exact Wilcoxon: all 6 signs agree, p = 2/2^6 = 0.03125
    # (scipy.stats.wilcoxon([1] * 6, method=scipy.stats.PermutationMethod(n_resamples=np.inf)) -> 0.03125)
    p, test = difference_p([0.02] * 6)
    assert p == pytest.approx(0.03125) and test.startswith("exact Wilcoxon")
    rows = []
    for s in range(6):
        base = 0.5 + 0.01 * s
        rows += [
            {"a": "base", "seed": s, "mcc": base},
            {"a": "up", "seed": s, "mcc": base + 0.02},
            {"a": "noisy", "seed": s, "mcc": base + [0.01, -0.02, 0.0, 0.03, -0.01, 0.02][s]},
        ]
    out = paired_tests(pd.DataFrame(rows), metric="mcc", factors=["a"], baseline={"a": "base"})
    up = out[out["condition"] == "a=up"].iloc[0]
    # The old code returned p = NaN here and dropped the comparison from its family.
    assert up["p"] == pytest.approx(0.03125) and up["family_size"] == 2
    # statsmodels multipletests([p_up, p_noisy], method="holm")[1]
    from statsmodels.stats.multitest import multipletests

    np.testing.assert_allclose(out["p_adj"], multipletests(out["p"], method="holm")[1], rtol=1e-12)
    assert "exact Wilcoxon" in up["test"] and "sd = 0" in up["note"]


# --------------------------------------------------------------------------- one comparison per family
def collapsed_grid(seeds: int = 5) -> pd.DataFrame:
    """attention × alpha where alpha = 0 makes attention irrelevant: the store lists one run in both cells."""
    rng = np.random.default_rng(11)
    rows = []
    for s in range(seeds):
        shared = 0.5 + rng.normal(0, 0.01)
        rows.append({"run_id": f"off-{s}", ATT: "mse", ALPHA: 0.0, "seed": s, "mcc": shared})
        rows.append({"run_id": f"off-{s}", ATT: "kl", ALPHA: 0.0, "seed": s, "mcc": shared})
        for att in ("mse", "kl"):
            for a in (0.5, 1.0):
                rows.append(
                    {
                        "run_id": f"{att}-{a}-{s}",
                        ATT: att,
                        ALPHA: a,
                        "seed": s,
                        "mcc": 0.5 + 0.02 * a + rng.normal(0, 0.01),
                    }
                )
    return pd.DataFrame(rows)


def test_a_comparison_of_the_same_runs_counts_once_in_its_family() -> None:
    out = paired_tests(collapsed_grid(), metric="mcc", factors=[ATT, ALPHA], baseline={ALPHA: 0.5, ATT: "mse"})
    # kl@0 and mse@0 are the same runs: "kl, alpha=0 vs mse, alpha=0.5" and "mse, alpha=0 vs mse, alpha=0.5"
    # are one hypothesis. The family holds 4 distinct comparisons (not 5).
    assert (out["family_size"] == 4).all()
    dup = out[out["note"].str.contains("counted once")]
    assert len(dup) == 1
    first = out[out["condition"] == "attention=kl, alpha=0"].iloc[0]
    second = out[out["condition"] == "attention=mse, alpha=0"].iloc[0]
    assert first["p_adj"] == second["p_adj"] and first["p"] == second["p"]
    unique = out.drop(index=dup.index)
    # statsmodels multipletests(p of the 4 distinct comparisons, method="holm")[1]
    from statsmodels.stats.multitest import multipletests

    np.testing.assert_allclose(unique["p_adj"], multipletests(unique["p"], method="holm")[1], rtol=1e-12)


def test_collapsed_cells_give_one_power_row_and_one_warning_count_per_comparison() -> None:
    a = analyze_table(collapsed_grid(), metric="mcc", factors=[ATT, ALPHA], baseline={ALPHA: 0.5, ATT: "mse"})
    assert len(a.paired_tests) == 5  # both collapsed rows are shown (the second says it repeats the first)
    assert len(a.power) == 4  # ... but planning counts hypotheses: 4 distinct comparisons
    assert set(a.power["condition"]) == set(a.paired_tests["condition"]) - {"attention=mse, alpha=0"}
    assert any(w.startswith("4 comparison(s) have 5 or fewer pairs") for w in a.warnings), a.warnings


def test_collapsed_cells_count_once_in_the_friedman_ranks() -> None:
    a = analyze_table(collapsed_grid(), metric="mcc", factors=[ATT, ALPHA], baseline={ALPHA: 0.5, ATT: "mse"})
    assert a.friedman["k"] == 5  # 6 cells, two of them the same runs
    assert a.ranks["same_as"].str.len().gt(0).sum() == 1


# --------------------------------------------------------------------------- simultaneous intervals
def test_simultaneous_intervals_are_bonferroni_and_agree_with_p_adj() -> None:
    out = paired_tests(collapsed_grid(seeds=6), metric="mcc", factors=[ATT, ALPHA], baseline={ALPHA: 0.0, ATT: "mse"})
    m = int(out["family_size"].iloc[0])
    for r in out.itertuples():
        # t-interval at level 1 − α/m: mean ± t_{1−α/(2m), n−1}·sd/√n  (scipy.stats.t.ppf)
        half_unadj = r.mean_diff - r.ci_low
        ratio = stats.t.ppf(1 - 0.05 / (2 * m), r.n - 1) / stats.t.ppf(0.975, r.n - 1)
        assert r.sci_high - r.mean_diff == pytest.approx(half_unadj * ratio, rel=1e-10)
        if r.sci_low > 0 or r.sci_high < 0:
            assert r.p_adj < 0.05  # an interval that excludes 0 never sits beside a non-significant p_adj


# --------------------------------------------------------------------------- equivalence (TOST)
def test_tost_matches_the_written_out_formula_and_statsmodels() -> None:
    d = np.array([0.004, -0.002, 0.006, 0.001, -0.003, 0.002])
    margin = 0.01
    se = d.std(ddof=1) / math.sqrt(d.size)
    # Schuirmann (1987): p = max(P(T > (mean + margin)/se), P(T < (mean − margin)/se)), T ~ t(n − 1)
    ref = max(stats.t.sf((d.mean() + margin) / se, d.size - 1), stats.t.cdf((d.mean() - margin) / se, d.size - 1))
    assert equivalence_p(d, margin) == pytest.approx(ref, rel=1e-10)
    # statsmodels.stats.weightstats.ttost_paired(d, zeros, -0.01, 0.01)[0] -> the same
    from statsmodels.stats.weightstats import ttost_paired

    assert equivalence_p(d, margin) == pytest.approx(ttost_paired(d, np.zeros_like(d), -margin, margin)[0], rel=1e-10)
    # TOST at α rejects exactly when the (1 − 2α) t interval lies inside ±margin
    half = stats.t.ppf(0.95, d.size - 1) * se
    assert (equivalence_p(d, margin) < 0.05) == (-margin < d.mean() - half and d.mean() + half < margin)


def test_three_verdicts() -> None:
    assert verdict([0.004, -0.002, 0.006, 0.001, -0.003, 0.002], 0.01).verdict == "equivalent"
    assert verdict([0.05, 0.06, 0.055, 0.07, 0.045, 0.06], 0.01).verdict == "different"
    v = verdict([0.03, -0.04, 0.05, -0.01, 0.02], 0.01)
    assert v.verdict == "inconclusive" and not v.within_margin  # not significant is not "no difference"
    # a small real difference inside the margin: different, and within_margin says so
    w = verdict([0.002, 0.0021, 0.0019, 0.002, 0.0022, 0.0018], 0.01)
    assert w.verdict == "different" and w.within_margin
    # constant differences inside the margin: exact one-sided Wilcoxon tests, max p = 1/2^6
    assert verdict([0.002] * 6, 0.01).p_equivalence == pytest.approx(1 / 64)


# --------------------------------------------------------------------------- stratified, Friedman
def test_stratified_effect_matches_the_hand_formula() -> None:
    rng = np.random.default_rng(5)
    diffs = {"rte": rng.normal(0.02, 0.01, 5), "sst2": rng.normal(0.05, 0.01, 4), "mnli": rng.normal(0.0, 0.02, 6)}
    eff = stratified_effect(diffs)
    means = [d.mean() for d in diffs.values()]
    ss = sum(((d - d.mean()) ** 2).sum() for d in diffs.values())
    n, k = sum(d.size for d in diffs.values()), len(diffs)
    s2 = ss / (n - k)
    se = math.sqrt(s2 / k**2 * sum(1 / d.size for d in diffs.values()))
    assert eff["estimate"] == pytest.approx(np.mean(means), rel=1e-10)
    assert eff["se"] == pytest.approx(se, rel=1e-10) and eff["df"] == n - k
    assert eff["p"] == pytest.approx(2 * stats.t.sf(abs(np.mean(means) / se), n - k), rel=1e-8)
    # heterogeneity = one-way ANOVA of the differences on task: scipy.stats.f_oneway(*diffs.values())
    assert eff["heterogeneity_p"] == pytest.approx(stats.f_oneway(*diffs.values()).pvalue, rel=1e-8)


def test_over_tasks_nothing_pools_raw_differences_of_different_metrics() -> None:
    rng = np.random.default_rng(2)
    rows = []
    for task, scale in (("cola", 0.1), ("stsb", 0.8), ("sst2", 0.85), ("rte", 0.6)):
        for s in range(5):
            for a in ("x", "y", "z"):
                rows.append(
                    {
                        "task": task,
                        "seed": s,
                        "a": a,
                        "v": scale + {"x": 0, "y": 0.01, "z": 0.03}[a] + rng.normal(0, 0.01),
                    }
                )
    df = pd.DataFrame(rows)
    metric = {"cola": "mcc", "stsb": "pearson", "sst2": "accuracy", "rte": "accuracy"}
    a = analyze_table(
        df.assign(mcc=df.v, pearson=df.v, accuracy=df.v), metric=metric, factors=["a"], baseline={"a": "x"}
    )
    # stratified rows only within accuracy (sst2 + rte): never mcc with pearson
    assert set(a.stratified["metric"]) == {"accuracy"} and (a.stratified["tasks"] == "rte, sst2").all()
    # Friedman over 20 (task, seed) blocks; no ties: chi2 = 12N/(k(k+1)) * sum(R_j^2) - 3N(k+1)
    wide = df.pivot_table(index=["task", "seed"], columns="a", values="v")
    ranks = wide.rank(axis=1, ascending=False)
    n, k = wide.shape
    chi2 = 12 * n / (k * (k + 1)) * (ranks.mean() ** 2).sum() - 3 * n * (k + 1)
    assert a.friedman["statistic"] == pytest.approx(chi2, rel=1e-10) and a.friedman["n_blocks"] == 20
    assert a.friedman["p"] == pytest.approx(stats.chi2.sf(chi2, k - 1), rel=1e-8)
    # Nemenyi critical difference (Demšar 2006, eq. for CD): q_0.05(k=3)/√2 = 2.343
    assert a.friedman["cd"] == pytest.approx(2.343 * math.sqrt(k * (k + 1) / (6 * n)), rel=1e-3)


# --------------------------------------------------------------------------- power, floors
def test_dz_interval_inverts_the_noncentral_t_and_covers() -> None:
    lo, hi = dz_interval(1.0, 10)
    # scipy.stats.nct.cdf(t_obs, 9, lo*sqrt(10)) = 0.975 and ... = 0.025 at hi
    t_obs = 1.0 * math.sqrt(10)
    assert stats.nct.cdf(t_obs, 9, lo * math.sqrt(10)) == pytest.approx(0.975, abs=1e-8)
    assert stats.nct.cdf(t_obs, 9, hi * math.sqrt(10)) == pytest.approx(0.025, abs=1e-8)
    rng = np.random.default_rng(0)
    hits = 0
    for _ in range(300):
        d = rng.normal(0.8, 1.0, 6)
        a, b = dz_interval(d.mean() / d.std(ddof=1), 6)
        hits += a <= 0.8 <= b
    assert abs(hits / 300 - 0.95) < 3 * math.sqrt(0.95 * 0.05 / 300)


def test_a_baseline_at_the_floor_is_marked_and_warned() -> None:
    rng = np.random.default_rng(4)
    rows = [
        {"task": "cola", "seed": s, "a": a, "mcc": (0.002 if a == "base" else 0.05) + rng.normal(0, 0.01)}
        for s in range(5)
        for a in ("base", "other")
    ]
    a = analyze_table(pd.DataFrame(rows), metric="mcc", factors=["a"], baseline={"a": "base"})
    row = a.paired_tests.iloc[0]
    assert bool(row["baseline_at_floor"]) and row["floor"] == 0.0  # MCC's chance score
    assert "at the floor" in row["note"]
    assert any("no better than the majority class or chance" in w for w in a.warnings)


def test_display_scale_comes_from_the_metric_not_the_data() -> None:
    from kdgrid.report.tables import metric_scales, paper_table

    # A wide CI above 1 used to keep the task unscaled, and Avg then mixed raw and ×100 numbers.
    cells = pd.DataFrame(
        {
            "task": ["stsb", "cola"],
            "metric": ["pearson", "mcc"],
            "cell": ["c", "c"],
            "n": [3, 3],
            "mean": [0.90, 0.20],
            "sd": [0.2, 0.05],
            "ci_low": [0.4, 0.08],
            "ci_high": [1.4, 0.32],
        }
    )
    assert metric_scales(cells) == {("stsb", "pearson"): 100.0, ("cola", "mcc"): 100.0}
    t = paper_table(cells, "x")
    assert t.loc["c", "Avg"] == "55.0"  # (90.0 + 20.0) / 2 on one scale


# --------------------------------------------------------------------------- simulation under the null
def test_family_wise_error_and_simultaneous_coverage_under_the_null() -> None:
    """Seeded: 4,000 paired designs (5 conditions vs one baseline, 6 seeds, a shared seed effect, no true
    difference). The corrected tests keep the family-wise error at or below α and the simultaneous
    intervals cover all five true differences (0) at least 1 − α of the time, within 3 Monte Carlo
    standard errors; the unadjusted tests do not (the check can fail)."""
    rng = np.random.default_rng(20261202)
    sims, m, n, alpha = 4000, 5, 6, 0.05
    seed_effect = rng.normal(0, 1.0, (sims, 1, n))
    base = seed_effect + rng.normal(0, 0.5, (sims, 1, n))
    cond = seed_effect + rng.normal(0, 0.5, (sims, m, n))
    d = cond - base  # the comparisons share the baseline: correlated, as in a study
    p = stats.ttest_1samp(d, 0.0, axis=2).pvalue
    mean, sd = d.mean(axis=2), d.std(axis=2, ddof=1)
    ci_low = mean - stats.t.ppf(1 - alpha / 2, n - 1) * sd / math.sqrt(n)
    nn = np.full(m, float(n))
    mc = 3 * math.sqrt(alpha * (1 - alpha) / sims)
    for correction in ("holm", "bonferroni"):
        errors = covered = 0
        for i in range(sims):
            p_adj, _, lo, hi = family_adjust(
                p[i], np.full(m, np.nan), nn, mean[i], ci_low[i], correction=correction, alpha=alpha
            )
            errors += bool((p_adj < alpha).any())
            covered += bool(((lo <= 0) & (hi >= 0)).all())
        assert errors / sims <= alpha + mc, correction
        assert covered / sims >= 1 - alpha - mc, correction
    unadjusted = float(np.mean((p < alpha).any(axis=1)))
    assert unadjusted > alpha + mc  # without the correction the family errs far more often


def test_equal_values_of_different_runs_are_still_compared() -> None:
    # Two students that both collapse to MCC 0 at every seed are different runs: the comparison stays
    # (p = 1, all differences zero), it is not mistaken for a collapsed cell. Only run ids decide that.
    rows = [{"run_id": f"{c}-{s}", "config": c, "seed": s, "mcc": 0.0} for c in ("best", "baseline") for s in (1, 2)]
    for df in (pd.DataFrame(rows), pd.DataFrame(rows).drop(columns="run_id")):
        out = paired_tests(df, metric="mcc", factors=["config"], baseline={"config": "baseline"})
        assert len(out) == 1 and out["p"].iloc[0] == 1.0 and out["family_size"].iloc[0] == 1
