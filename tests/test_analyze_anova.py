"""ANOVA and mixed model: independent cross-checks, dotted factor names, empty cells, diagnostics."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import statsmodels.formula.api as smf
from statsmodels.stats.anova import anova_lm

from kdgrid.analyze import AnalysisError, anova_diagnostics, anova_table, mixed_model

FA, FB, FC = "objective.intermediate.attention", "objective.mapping", "data.fraction"


def unbalanced(rng_seed: int = 5, drop: float = 0.3) -> pd.DataFrame:
    """3 x 2 x 2 design with dotted factor names, 4 runs per cell, about 30% of runs removed at random."""
    rng = np.random.default_rng(rng_seed)
    rows = []
    for a in ("mse", "kl", "none"):
        for b in ("uniform", "learnable"):
            for c in (0.5, 1.0):
                for s in range(4):
                    y = 0.5 + 0.03 * (a == "kl") + 0.02 * (b == "learnable") * (c == 1.0) + rng.normal(0, 0.02)
                    rows.append({FA: a, FB: b, FC: c, "seed": s, "task": "cola", "mcc": y})
    df = pd.DataFrame(rows)
    keep = rng.uniform(size=len(df)) > drop
    return df.loc[keep].reset_index(drop=True)


def statsmodels_anova(df: pd.DataFrame, typ: int) -> pd.DataFrame:
    d = df.rename(columns={FA: "a", FB: "b", FC: "c"})
    fit = smf.ols("mcc ~ C(a, Sum) * C(b, Sum) * C(c, Sum)", data=d).fit()
    out = anova_lm(fit, typ=typ)
    return out.drop(index="Intercept", errors="ignore")


@pytest.mark.parametrize("typ", [2, 3])
def test_unbalanced_three_way_agrees_with_statsmodels(typ: int) -> None:
    # Independent implementation: statsmodels anova_lm builds type II/III from Wald tests on the
    # coefficients of a patsy/formulaic design; kdgrid compares nested least-squares fits.
    df = unbalanced()
    assert df.groupby([FA, FB, FC]).size().nunique() > 1  # really unbalanced, but no empty cell
    ours = anova_table(df, metric="mcc", factors=[FA, FB, FC], typ=typ)
    ref = statsmodels_anova(df, typ)
    names = {"C(a, Sum)": FA, "C(b, Sum)": FB, "C(c, Sum)": FC}
    ref.index = [":".join(names[p] for p in i.split(":")) if i != "Residual" else i for i in ref.index]
    assert ours["term"].tolist() == [FA, FB, FC, f"{FA}:{FB}", f"{FA}:{FC}", f"{FB}:{FC}", f"{FA}:{FB}:{FC}", "Residual"]
    assert set(ours["term"]) == set(ref.index)
    for _, r in ours.iterrows():
        s = ref.loc[r["term"]]
        assert r["df"] == s["df"]
        assert r["sum_sq"] == pytest.approx(s["sum_sq"], rel=1e-8, abs=1e-14)
        if r["term"] != "Residual":
            assert r["F"] == pytest.approx(s["F"], rel=1e-8)
            assert r["p"] == pytest.approx(s["PR(>F)"], rel=1e-7)
            assert r["partial_eta2"] == pytest.approx(r["sum_sq"] / (r["sum_sq"] + ours["sum_sq"].iloc[-1]), rel=1e-12)


@pytest.mark.filterwarnings("ignore::statsmodels.tools.sm_exceptions.SingularMatrixWarning")
def test_type2_with_an_empty_cell_tests_the_estimable_interaction() -> None:
    # The interaction's type II SS and df equal the explicit comparison of the nested fits
    # y ~ a + b versus y ~ a * b (R: anova(lm(y ~ a + b), lm(y ~ a * b))), whose df is the rank gained.
    df = unbalanced(drop=0.0)
    df = df[df[FB] == "uniform"]
    df = df[~((df[FA] == "none") & (df[FC] == 1.0))]
    out = anova_table(df, metric="mcc", factors=[FA, FC])
    inter = out[out["term"] == f"{FA}:{FC}"].iloc[0]
    d = df.rename(columns={FA: "a", FC: "c"})
    small = smf.ols("mcc ~ C(a) + C(c)", data=d).fit()
    big = smf.ols("mcc ~ C(a) * C(c)", data=d).fit()
    cmp = anova_lm(small, big)
    assert inter["df"] == 1 == cmp["df_diff"].iloc[1]
    assert inter["sum_sq"] == pytest.approx(cmp["ss_diff"].iloc[1], rel=1e-8)
    assert out[out["term"] == "Residual"].iloc[0]["df"] == big.df_resid
    assert any("df reduced" in w for w in out.attrs["warnings"])
    diag = out.attrs["diagnostics"].set_index("check")
    assert diag.loc["missing_cells", "value"] == 1.0
    assert "data.fraction=1" in diag.loc["missing_cells", "note"]


def test_type3_with_an_empty_cell_lowers_the_order_and_says_so() -> None:
    df = unbalanced(drop=0.0)
    df = df[~((df[FA] == "none") & (df[FC] == 1.0) & (df[FB] == "uniform"))]
    out = anova_table(df, metric="mcc", factors=[FA, FB, FC], typ=3)
    assert max(t.count(":") for t in out["term"]) == 1  # three-way interaction no longer estimable
    assert any("type III needs a full-rank design" in w and "order 2" in w for w in out.attrs["warnings"])
    assert out.attrs["diagnostics"].set_index("check").loc["anova_order", "value"] == 2.0


def test_order_limits_interactions_and_single_level_factors_are_dropped() -> None:
    df = unbalanced().assign(**{"train.lr": 5e-5})
    out = anova_table(df, metric="mcc", factors=[FA, FB, FC, "train.lr"], order=1)
    assert out["term"].tolist() == [FA, FB, FC, "Residual"]
    assert any("factor train.lr has a single level (5e-05) and was dropped" in w for w in out.attrs["warnings"])
    with pytest.raises(AnalysisError, match="anova type must be 2 or 3"):
        anova_table(df, metric="mcc", factors=[FA, FB], typ=1)
    with pytest.raises(AnalysisError, match="anova order must be a positive integer"):
        anova_table(df, metric="mcc", factors=[FA, FB], order=0)


def test_pooled_anova_has_task_as_a_factor() -> None:
    df = pd.concat([unbalanced(1).assign(task="cola"), unbalanced(2).assign(task="rte")])
    out = anova_table(df, metric="mcc", factors=[FA, FB], order=2)
    assert out["task"].unique().tolist() == ["cola", "rte", "all"]
    pooled = out[out["task"] == "all"]["term"].tolist()
    assert pooled == ["task", FA, FB, f"task:{FA}", f"task:{FB}", f"{FA}:{FB}", "Residual"]


def test_no_residual_df_gives_nan_and_a_warning() -> None:
    df = unbalanced(drop=0.0)
    one = df[df["seed"] == 0]  # one run per cell
    out = anova_table(one, metric="mcc", factors=[FA, FB, FC])
    assert out.iloc[-1]["df"] == 0 and out["F"].isna().all()
    assert any("no residual degrees of freedom" in w for w in out.attrs["warnings"])


def test_block_on_seed_adds_a_seed_term() -> None:
    out = anova_table(unbalanced(drop=0.0), metric="mcc", factors=[FA, FB], block="seed", order=2)
    assert out["term"].tolist() == ["seed", FA, FB, f"{FA}:{FB}", "Residual"]
    assert out.iloc[0]["df"] == 3


def test_diagnostics_report_balance_residuals_and_levene() -> None:
    diag = anova_diagnostics(unbalanced(drop=0.0), metric="mcc", factors=[FA, FB, FC]).set_index("check")
    assert list(diag.index) == ["balance", "missing_cells", "anova_order", "residual_shapiro_p", "levene_p"]
    assert diag.loc["balance", "value"] == 1.0 and "balanced: every cell has 4 run(s)" in diag.loc["balance", "note"]
    assert diag.loc["missing_cells", "value"] == 0.0
    assert 0 < diag.loc["residual_shapiro_p", "value"] <= 1 and 0 < diag.loc["levene_p", "value"] <= 1
    unb = anova_diagnostics(unbalanced(), metric="mcc", factors=[FA, FB, FC]).set_index("check")
    assert unb.loc["balance", "value"] < 1 and unb.loc["balance", "note"].startswith("unbalanced")


def test_mixed_model_returns_tidy_fixed_effects() -> None:
    df = pd.concat([unbalanced(1, 0.0).assign(task="cola"), unbalanced(2, 0.0).assign(task="rte")])
    out = mixed_model(df, [FA, FB], "mcc", baseline={"attention": "mse", "mapping": "uniform"})
    assert list(out.columns) == ["task", "term", "level", "coef", "se", "z", "p", "ci_low", "ci_high"]
    assert out["task"].unique().tolist() == ["all"]
    assert list(zip(out["term"], out["level"])) == [("Intercept", ""), (FA, "kl"), (FA, "none"), (FB, "learnable")]
    kl = out[(out["term"] == FA) & (out["level"] == "kl")].iloc[0]
    assert 0.015 < kl["coef"] < 0.045 and kl["ci_low"] < kl["coef"] < kl["ci_high"]  # simulated effect 0.03
    assert set(out.attrs["random_effects"]["all"]) == {"residual_var", "task_var", "seed_within_task_var"}
    per_task = mixed_model(df, [FA, FB], "mcc", per_task=True)
    assert per_task["task"].unique().tolist() == ["cola", "rte"]
