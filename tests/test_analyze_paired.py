"""Paired comparisons: pairing by seed, missing seeds, baselines, multiple-comparison corrections, d_z."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import PAIRED_TEST_COLUMNS

from kdgrid.analyze import AnalysisError, adjust_pvalues, min_wilcoxon_p, paired_tests, paired_ttest

ATT = "objective.intermediate.attention"
ALPHA = "objective.intermediate.alpha"


def grid(*, seeds: range = range(1, 6), tasks: tuple[str, ...] = ("cola", "sst2"), rng_seed: int = 0) -> pd.DataFrame:
    """A 2 x 3 grid (attention x alpha) over tasks and seeds with a seed effect shared by all cells."""
    rng = np.random.default_rng(rng_seed)
    rows = []
    for task in tasks:
        seed_effect = {s: rng.normal(0, 0.02) for s in seeds}
        for att in ("mse", "kl"):
            for alpha in (0.0, 0.5, 1.0):
                for s in seeds:
                    value = 0.5 + (0.02 if att == "kl" else 0) + 0.01 * alpha + seed_effect[s] + rng.normal(0, 0.005)
                    rows.append(
                        {ATT: att, ALPHA: alpha, "task": task, "seed": s, "mcc": value, "accuracy": value + 0.3}
                    )
    return pd.DataFrame(rows)


BASE = {ATT: "mse", ALPHA: 0.0}


def test_shuffled_rows_give_the_same_result() -> None:
    df = grid()
    a = paired_tests(df, metric="mcc", factors=[ATT, ALPHA], baseline=BASE)
    b = paired_tests(df.sample(frac=1.0, random_state=7), metric="mcc", factors=[ATT, ALPHA], baseline=BASE)
    pd.testing.assert_frame_equal(a, b)
    # and the default baseline does not depend on row order either
    c = paired_tests(df, metric="mcc", factors=[ATT, ALPHA])
    d = paired_tests(df.sample(frac=1.0, random_state=3), metric="mcc", factors=[ATT, ALPHA])
    pd.testing.assert_frame_equal(c, d)


def test_rows_cover_every_condition_per_task_and_nothing_is_pooled() -> None:
    out = paired_tests(grid(), metric="mcc", factors=[ATT, ALPHA], baseline=BASE)
    assert list(out.columns) == PAIRED_TEST_COLUMNS
    # Raw differences of tasks are never pooled into one row (kdgrid.analyze.pooled answers that question).
    assert out["task"].tolist() == ["cola"] * 5 + ["sst2"] * 5
    assert out["condition"].tolist()[:5] == [
        "attention=kl, alpha=0",
        "attention=kl, alpha=0.5",
        "attention=kl, alpha=1",
        "attention=mse, alpha=0.5",
        "attention=mse, alpha=1",
    ]
    assert set(out["baseline"]) == {"attention=mse, alpha=0"}
    assert (out["n"] == 5).all() and (out["family_size"] == 5).all()
    assert out["family"].tolist()[0] == "cola: every condition vs the baseline (5 comparisons, holm)"
    assert set(out["verdict"]) <= {"different", "equivalent", "inconclusive"}


def test_pairs_are_matched_by_seed_not_by_position() -> None:
    df = grid(tasks=("cola",))
    out = paired_tests(df, metric="mcc", factors=[ATT, ALPHA], baseline=BASE)
    wide = df.pivot_table(index="seed", columns=[ATT, ALPHA], values="mcc")
    d = wide[("kl", 0.0)] - wide[("mse", 0.0)]
    ref = paired_ttest(wide[("kl", 0.0)], wide[("mse", 0.0)]).iloc[0]
    row = out.iloc[0]
    assert row["mean_diff"] == pytest.approx(d.mean(), rel=1e-12)
    for col in ("t", "p", "ci_low", "ci_high", "dz", "wilcoxon_p"):
        assert row[col] == pytest.approx(ref[col], rel=1e-12)


def test_missing_seed_drops_only_its_pair_and_the_note_says_so() -> None:
    df = grid()
    gone = (df["task"] == "cola") & (df[ATT] == "kl") & (df[ALPHA] == 0.5) & (df["seed"] == 3)
    out = paired_tests(df.loc[~gone], metric="mcc", factors=[ATT, ALPHA], baseline=BASE)
    hit = out[(out["task"] == "cola") & (out["condition"] == "attention=kl, alpha=0.5")].iloc[0]
    assert hit["n"] == 4 and hit["df"] == 3
    assert "dropped seed(s) 3: missing in condition" in hit["note"]
    others = out[~((out["task"] == "cola") & (out["condition"] == "attention=kl, alpha=0.5"))]
    assert (others["n"] == 5).all()
    assert not others["note"].str.contains("dropped").any()
    # the same result as computing the 4 pairs by hand
    sub = df[(df["task"] == "cola") & (df["seed"] != 3)]
    a = sub[(sub[ATT] == "kl") & (sub[ALPHA] == 0.5)].sort_values("seed")["mcc"].to_numpy()
    b = sub[(sub[ATT] == "mse") & (sub[ALPHA] == 0.0)].sort_values("seed")["mcc"].to_numpy()
    assert hit["t"] == pytest.approx(paired_ttest(a, b).iloc[0]["t"], rel=1e-12)


def test_missing_seed_in_baseline_is_named() -> None:
    df = grid(tasks=("cola",))
    gone = (df[ATT] == "mse") & (df[ALPHA] == 0.0) & (df["seed"] == 5)
    out = paired_tests(df.loc[~gone], metric="mcc", factors=[ATT, ALPHA], baseline=BASE)
    assert (out["n"] == 4).all()
    assert out["note"].str.contains("dropped seed(s) 5: missing in baseline", regex=False).all()


def test_baseline_values_compare_as_strings_and_short_names_work() -> None:
    df = grid()
    a = paired_tests(df, metric="mcc", factors=[ATT, ALPHA], baseline=BASE)
    b = paired_tests(df, metric="mcc", factors=[ATT, ALPHA], baseline={"attention": "mse", "alpha": "0"})
    c = paired_tests(
        df.assign(**{ALPHA: df[ALPHA].astype(str)}),
        metric="mcc",
        factors=[ATT, ALPHA],
        baseline={"attention": "mse", "alpha": 0.0},
    )
    pd.testing.assert_frame_equal(a, b)
    pd.testing.assert_frame_equal(a, c)
    d = paired_tests(df, metric="mcc", factors=[ATT, ALPHA], baseline={"attention": "kl", "alpha": "0.50"})
    assert set(d["baseline"]) == {"attention=kl, alpha=0.5"}


def test_partial_baseline_compares_within_the_other_factors() -> None:
    out = paired_tests(grid(tasks=("cola",)), metric="mcc", factors=[ATT, ALPHA], baseline={"attention": "mse"})
    assert list(zip(out["condition"], out["baseline"])) == [
        ("attention=kl, alpha=0", "attention=mse, alpha=0"),
        ("attention=kl, alpha=0.5", "attention=mse, alpha=0.5"),
        ("attention=kl, alpha=1", "attention=mse, alpha=1"),
    ]


def test_default_baseline_is_the_first_level_and_a_warning_says_so() -> None:
    out = paired_tests(grid(), metric="mcc", factors=[ATT, ALPHA])
    assert set(out["baseline"]) == {"attention=kl, alpha=0"}  # levels sort as text: kl < mse
    assert any("no baseline given" in w and "attention=kl, alpha=0" in w for w in out.attrs["warnings"])


def test_bad_baseline_and_correction_raise_one_clear_error() -> None:
    df = grid(tasks=("cola",))
    with pytest.raises(AnalysisError, match="baseline factor 'heads' is not a factor"):
        paired_tests(df, metric="mcc", factors=[ATT, ALPHA], baseline={"heads": 4})
    with pytest.raises(
        AnalysisError,
        match=r"baseline level 0.25 of objective.intermediate.alpha not in the data; levels are: 0, 0.5, 1",
    ):
        paired_tests(df, metric="mcc", factors=[ATT, ALPHA], baseline={"alpha": 0.25})
    with pytest.raises(AnalysisError, match="unknown correction 'sidak'"):
        paired_tests(df, metric="mcc", factors=[ATT, ALPHA], baseline=BASE, correction="sidak")


# --------------------------------------------------------------------------- corrections
P = [0.01, 0.04, 0.03, 0.005]


def test_holm_by_hand() -> None:
    # sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 = 0.02, 0.03, 0.06, 0.04; running max 0.02, 0.03, 0.06, 0.06
    # R: p.adjust(c(0.01, 0.04, 0.03, 0.005), "holm") -> 0.03 0.06 0.06 0.02
    np.testing.assert_allclose(adjust_pvalues(P, "holm"), [0.03, 0.06, 0.06, 0.02], rtol=1e-12)


def test_benjamini_hochberg_by_hand() -> None:
    # p_(i) * m / i = 0.02, 0.02, 0.04, 0.04; running min from the top keeps them
    # R: p.adjust(c(0.01, 0.04, 0.03, 0.005), "BH") -> 0.02 0.04 0.04 0.02
    np.testing.assert_allclose(adjust_pvalues(P, "fdr_bh"), [0.02, 0.04, 0.04, 0.02], rtol=1e-12)


def test_bonferroni_and_none_by_hand() -> None:
    # R: p.adjust(c(0.01, 0.04, 0.03, 0.005, 0.3), "bonferroni") -> 0.05 0.20 0.15 0.025 1.00
    np.testing.assert_allclose(adjust_pvalues(P + [0.3], "bonferroni"), [0.05, 0.2, 0.15, 0.025, 1.0], rtol=1e-12)
    np.testing.assert_allclose(adjust_pvalues(P, "none"), P)


def test_nan_p_values_stay_out_of_the_family() -> None:
    # Holm over the two finite p values only: 0.01 * 2 = 0.02, max(0.04 * 1, 0.02) = 0.04
    out = adjust_pvalues([0.01, np.nan, 0.04], "holm")
    assert np.isnan(out[1])
    np.testing.assert_allclose(out[[0, 2]], [0.02, 0.04], rtol=1e-12)


@pytest.mark.parametrize("method", ["holm", "fdr_bh", "bonferroni", "none"])
def test_paired_tests_adjust_within_each_task(method: str) -> None:
    from statsmodels.stats.multitest import multipletests

    out = paired_tests(grid(), metric="mcc", factors=[ATT, ALPHA], baseline=BASE, correction=method)
    for _task, g in out.groupby("task"):
        np.testing.assert_allclose(g["p_adj"], adjust_pvalues(g["p"], method), rtol=1e-12)
        if method != "none":  # independent reference: statsmodels multipletests(p, method=...)[1]
            np.testing.assert_allclose(g["p_adj"], multipletests(g["p"], method=method)[1], rtol=1e-12)
            np.testing.assert_allclose(g["p_equiv_adj"], multipletests(g["p_equiv"], method=method)[1], rtol=1e-12)
    every = paired_tests(grid(), metric="mcc", factors=[ATT, ALPHA], baseline=BASE, correction=method, family="all")
    np.testing.assert_allclose(every["p_adj"], adjust_pvalues(every["p"], method), rtol=1e-12)


# --------------------------------------------------------------------------- d_z and edge cases
def test_dz_on_a_hand_made_example() -> None:
    # d = 1, 2, 3, 4, 6: mean 3.2, sum of squared deviations 14.8, sd = sqrt(14.8 / 4) = sqrt(3.7)
    # d_z = 3.2 / sqrt(3.7) = 1.663600783712; t = d_z * sqrt(5) = 3.719836; df = 4
    r = paired_ttest([2, 3, 4, 5, 7], [1, 1, 1, 1, 1]).iloc[0]
    assert r["mean_diff"] == pytest.approx(3.2, rel=1e-12)
    assert r["dz"] == pytest.approx(1.663600783712, rel=1e-11)
    assert r["t"] == pytest.approx(3.2 / np.sqrt(3.7) * np.sqrt(5), rel=1e-12)
    assert r["df"] == 4


def test_all_zero_differences_give_p_one_with_a_note() -> None:
    # No difference at all is no evidence against H0: p = 1 (not NaN, which would drop it from its family).
    r = paired_ttest([1.0, 2.0, 3.0], [1.0, 2.0, 3.0]).iloc[0]
    assert np.isnan(r["t"]) and r["p"] == 1.0 and np.isnan(r["dz"]) and np.isnan(r["wilcoxon_p"])
    assert "all differences are zero" in r["note"] and r["test"] == "none (all differences zero)"
    one = paired_ttest([1.0], [0.5]).iloc[0]
    assert one["n"] == 1 and np.isnan(one["t"]) and "no test" in one["note"]


def test_few_pairs_warn_about_wilcoxon_floor_and_n_below_3() -> None:
    assert min_wilcoxon_p(5) == 0.0625 and min_wilcoxon_p(6) == 0.03125
    five = paired_tests(grid(seeds=range(1, 6), tasks=("cola",)), metric="mcc", factors=[ATT, ALPHA], baseline=BASE)
    assert any("cannot go below" in w and "0.0625" in w for w in five.attrs["warnings"])
    assert (five["wilcoxon_p"] >= 0.0625 - 1e-12).all()
    six = paired_tests(grid(seeds=range(1, 7), tasks=("cola",)), metric="mcc", factors=[ATT, ALPHA], baseline=BASE)
    assert not any("cannot go below" in w for w in six.attrs["warnings"])
    two = paired_tests(grid(seeds=range(1, 3), tasks=("cola",)), metric="mcc", factors=[ATT, ALPHA], baseline=BASE)
    assert any("fewer than 3 pairs" in w for w in two.attrs["warnings"])


def test_metric_dict_uses_each_tasks_metric() -> None:
    df = grid()
    out = paired_tests(df, metric={"cola": "mcc", "sst2": "accuracy"}, factors=[ATT, ALPHA], baseline=BASE)
    ref = paired_tests(df, metric="mcc", factors=[ATT, ALPHA], baseline=BASE)
    # accuracy = mcc + 0.3 in the fixture: differences, and so every statistic, are the same
    np.testing.assert_allclose(out["t"], ref["t"], rtol=1e-9)
    assert out.loc[out["task"] == "sst2", "metric"].eq("accuracy").all()


def test_duplicate_runs_of_a_seed_are_averaged_with_a_warning() -> None:
    df = grid(tasks=("cola",))
    extra = df[(df[ATT] == "kl") & (df[ALPHA] == 0.0) & (df["seed"] == 1)].assign(mcc=0.9)
    out = paired_tests(pd.concat([df, extra]), metric="mcc", factors=[ATT, ALPHA], baseline=BASE)
    assert out.iloc[0]["n"] == 5
    assert any("averaged before pairing" in w for w in out.attrs["warnings"])


@pytest.mark.parametrize("method", ["holm", "fdr_bh", "bonferroni"])
def test_adjust_pvalues_agrees_with_statsmodels_multipletests(method: str) -> None:
    from statsmodels.stats.multitest import multipletests

    rng = np.random.default_rng(11)
    for m in (1, 2, 7, 30):
        p = rng.uniform(0, 0.2, size=m) ** 2
        p[rng.integers(0, m)] = p[0]  # a tie
        np.testing.assert_allclose(adjust_pvalues(p, method), multipletests(p, method=method)[1], rtol=1e-12)
