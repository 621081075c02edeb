"""ANOVA and mixed model: independent cross-checks, dotted factor names, empty cells, diagnostics."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import statsmodels.formula.api as smf
from scipy import stats
from statsmodels.stats.anova import anova_lm

from kdgrid.analyze import AnalysisError, anova_diagnostics, anova_table, describe_cells, mixed_model
from kdgrid.analyze.tidy import prepare

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


def statsmodels_anova(df: pd.DataFrame, typ: int, *, block: bool) -> pd.DataFrame:
    d = df.rename(columns={FA: "a", FB: "b", FC: "c"})
    rhs = ("C(seed, Sum) + " if block else "") + "C(a, Sum) * C(b, Sum) * C(c, Sum)"
    fit = smf.ols(f"mcc ~ {rhs}", data=d).fit()
    out = anova_lm(fit, typ=typ)
    return out.drop(index="Intercept", errors="ignore")


@pytest.mark.parametrize("block", [True, False])
@pytest.mark.parametrize("typ", [2, 3])
def test_unbalanced_three_way_agrees_with_statsmodels(typ: int, block: bool) -> None:
    # Reference: statsmodels.stats.anova.anova_lm(ols("mcc ~ C(seed, Sum) + C(a, Sum) * C(b, Sum) * C(c, Sum)",
    # data).fit(), typ=typ) (without the seed term for block=False), on an unbalanced table with dotted factor names.
    df = unbalanced()
    assert df.groupby([FA, FB, FC]).size().nunique() > 1  # really unbalanced, but no empty cell
    ours = anova_table(df, metric="mcc", factors=[FA, FB, FC], typ=typ, block_seed=block)
    ref = statsmodels_anova(df, typ, block=block)
    names = {"C(a, Sum)": FA, "C(b, Sum)": FB, "C(c, Sum)": FC, "C(seed, Sum)": "seed"}
    ref.index = [":".join(names[p] for p in i.split(":")) if i != "Residual" else i for i in ref.index]
    effects = [FA, FB, FC, f"{FA}:{FB}", f"{FA}:{FC}", f"{FB}:{FC}", f"{FA}:{FB}:{FC}", "Residual"]
    assert ours["term"].tolist() == (["seed"] if block else []) + effects
    assert set(ours["term"]) == set(ref.index)
    for _, r in ours.iterrows():
        s = ref.loc[r["term"]]
        assert r["df"] == s["df"]
        assert r["sum_sq"] == pytest.approx(s["sum_sq"], rel=1e-8, abs=1e-14)
        if r["term"] != "Residual":
            assert r["F"] == pytest.approx(s["F"], rel=1e-8)
            assert r["p"] == pytest.approx(s["PR(>F)"], rel=1e-7)
            assert r["partial_eta2"] == pytest.approx(r["sum_sq"] / (r["sum_sq"] + ours["sum_sq"].iloc[-1]), rel=1e-12)


def test_seed_block_matches_montgomery_rcbd() -> None:
    # Randomised complete block design, Montgomery, Design and Analysis of Experiments (8th ed.), Example 4.1
    # (vascular grafts: 4 extrusion pressures, 6 batches of resin as blocks), Table 4.4:
    #   Treatments SS 178.17 df 3, F0 = 8.11, P = 0.0019; Blocks SS 192.25 df 5; Error SS 109.89 df 15; Total 480.31
    yields = {
        8500: [90.3, 89.2, 98.2, 93.9, 87.4, 97.9],
        8700: [92.5, 89.5, 90.6, 94.7, 87.0, 95.8],
        8900: [85.5, 90.8, 89.6, 86.2, 88.0, 93.4],
        9100: [82.5, 89.5, 85.6, 87.4, 78.9, 90.7],
    }
    df = pd.DataFrame([{"psi": k, "seed": b + 1, "y": v} for k, vs in yields.items() for b, v in enumerate(vs)])
    t = anova_table(df, metric="y", factors=["psi"]).set_index("term")
    assert t.loc["psi", "df"] == 3 and t.loc["psi", "sum_sq"] == pytest.approx(178.17, abs=0.005)
    assert t.loc["psi", "F"] == pytest.approx(8.11, abs=0.005) and t.loc["psi", "p"] == pytest.approx(0.0019, abs=5e-5)
    assert t.loc["seed", "df"] == 5 and t.loc["seed", "sum_sq"] == pytest.approx(192.25, abs=0.005)
    assert t.loc["Residual", "df"] == 15 and t.loc["Residual", "sum_sq"] == pytest.approx(109.89, abs=0.005)
    # Without the block the batches' variation is error: one-way ANOVA, error SS 192.25 + 109.89 on 20 df.
    # scipy.stats.f_oneway(*yields.values()) -> F = 3.9313, p = 0.023448 (an independent one-way ANOVA)
    u = anova_table(df, metric="y", factors=["psi"], block_seed=False).set_index("term")
    assert u.loc["Residual", "df"] == 20 and u.loc["Residual", "sum_sq"] == pytest.approx(302.14, abs=0.005)
    assert u.loc["psi", "F"] == pytest.approx(3.9313, abs=5e-4) and u.loc["psi", "p"] == pytest.approx(
        0.023448, abs=5e-6
    )


@pytest.mark.filterwarnings("ignore::statsmodels.tools.sm_exceptions.SingularMatrixWarning")
def test_type2_with_an_empty_cell_tests_the_estimable_interaction() -> None:
    # The interaction's type II SS and df equal the explicit comparison of the nested fits
    # y ~ seed + a + c versus y ~ seed + a * c (R: anova(lm(y ~ seed + a + c), lm(y ~ seed + a * c))), whose df is
    # the rank gained: the rank-deficient design is not full rank, so kdgrid compares nested statsmodels OLS fits.
    df = unbalanced(drop=0.0)
    df = df[df[FB] == "uniform"]
    df = df[~((df[FA] == "none") & (df[FC] == 1.0))]
    out = anova_table(df, metric="mcc", factors=[FA, FC])
    inter = out[out["term"] == f"{FA}:{FC}"].iloc[0]
    d = df.rename(columns={FA: "a", FC: "c"})
    small = smf.ols("mcc ~ C(seed) + C(a) + C(c)", data=d).fit()
    big = smf.ols("mcc ~ C(seed) + C(a) * C(c)", data=d).fit()
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
    assert out["term"].tolist() == ["seed", FA, FB, FC, "Residual"]
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
    assert pooled == ["task:seed", "task", FA, FB, f"task:{FA}", f"task:{FB}", f"{FA}:{FB}", "Residual"]
    # seed nested in task: 4 seeds in each of 2 tasks -> 2 x 3 df
    assert out[(out["task"] == "all") & (out["term"] == "task:seed")]["df"].item() == 6


def test_pooled_anova_never_mixes_metrics() -> None:
    """Tasks of different metrics are pooled only among tasks of their own metric (issue 19: no pooling
    across metrics): SST-2 + RTE share accuracy and get 'all accuracy'; CoLA's MCC stays alone."""
    acc_a, acc_b, mcc = unbalanced(1), unbalanced(2), unbalanced(3)
    df = pd.concat(
        [
            acc_a.rename(columns={"mcc": "accuracy"}).assign(task="sst2"),
            acc_b.rename(columns={"mcc": "accuracy"}).assign(task="rte"),
            mcc.assign(task="cola"),
        ]
    )
    out = anova_table(df, metric="auto", factors=[FA, FB], order=2)
    labels = out["task"].unique().tolist()
    assert sorted(labels[:3]) == ["cola", "rte", "sst2"] and labels[3:] == ["all accuracy"]
    assert "task" in out.loc[out["task"] == "all accuracy", "term"].tolist()
    alone = pd.concat([acc_a.rename(columns={"mcc": "accuracy"}).assign(task="sst2"), mcc.assign(task="cola")])
    out = anova_table(alone, metric="auto", factors=[FA, FB], order=2)
    assert sorted(out["task"].unique().tolist()) == ["cola", "sst2"]
    assert any("no ANOVA pooled over tasks" in w and "accuracy, mcc" in w for w in out.attrs["warnings"])


def test_no_residual_df_gives_nan_and_a_warning() -> None:
    df = unbalanced(drop=0.0)
    one = df[df["seed"] == 0]  # one run per cell
    out = anova_table(one, metric="mcc", factors=[FA, FB, FC])
    assert out.iloc[-1]["df"] == 0 and out["F"].isna().all()
    assert any("no residual degrees of freedom" in w for w in out.attrs["warnings"])


def test_seed_block_is_on_by_default_and_can_be_turned_off() -> None:
    out = anova_table(unbalanced(drop=0.0), metric="mcc", factors=[FA, FB], order=2)
    assert out["term"].tolist() == ["seed", FA, FB, f"{FA}:{FB}", "Residual"]
    assert out.iloc[0]["df"] == 3
    assert any(d.startswith("Seed is a block") for d in out.attrs["design"])
    off = anova_table(unbalanced(drop=0.0), metric="mcc", factors=[FA, FB], order=2, block_seed=False)
    assert off["term"].tolist() == [FA, FB, f"{FA}:{FB}", "Residual"]
    assert off.iloc[-1]["df"] == out.iloc[-1]["df"] + 3
    assert any(d.startswith("Seed block off") for d in off.attrs["design"])


def test_diagnostics_report_balance_residuals_and_levene() -> None:
    diag = anova_diagnostics(unbalanced(drop=0.0), metric="mcc", factors=[FA, FB, FC]).set_index("check")
    assert list(diag.index) == ["runs", "balance", "missing_cells", "anova_order", "residual_shapiro_p", "levene_p"]
    assert diag.loc["runs", "value"] == 48.0
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
    # task is a fixed effect with its interactions; treatment coding against the baseline (attention=mse)
    assert list(zip(out["term"], out["level"])) == [
        ("Intercept", ""),
        ("task", "rte"),
        (FA, "kl"),
        (FA, "none"),
        (FB, "learnable"),
        (f"task:{FA}", "rte:kl"),
        (f"task:{FA}", "rte:none"),
        (f"task:{FB}", "rte:learnable"),
    ]
    kl = out[(out["term"] == FA) & (out["level"] == "kl")].iloc[0]
    assert 0.015 < kl["coef"] < 0.045 and kl["ci_low"] < kl["coef"] < kl["ci_high"]  # simulated effect 0.03
    assert set(out.attrs["random_effects"]["all"]) == {"residual_var", "seed_within_task_var"}
    per_task = mixed_model(df, [FA, FB], "mcc", per_task=True)
    assert per_task["task"].unique().tolist() == ["cola", "rte"]


# --------------------------------------------------------------------------- one row per run, collapsed cells
ATT, ALPHA, KIND, DATA = (
    "objective.intermediate.attention",
    "objective.intermediate.alpha",
    "objective.mapping.kind",
    "data.max_train_examples",
)
ABLATION_FACTORS = [ATT, DATA, KIND, ALPHA]
# The first ablation-cpu results (kdgrid 0.1 runs, 3-layer students), frozen here: reports/ holds the rerun.
ABLATION_PARQUET = Path(__file__).resolve().parent / "data" / "ablation-cpu-0.1.parquet"


def collapsed(tasks: tuple[str, ...] = ("stsb",), seed_sd: float = 0.02) -> pd.DataFrame:
    """ablation-cpu's grid: attention {mse, kl} x data {200, 400} x mapping {uniform, learnable} x alpha {0, .5, 1},
    5 seeds. At alpha = 0 the attention loss is never computed, so the mse and kl cells share one run, which the
    table lists once per cell (as the store does): 120 rows per task, 100 runs."""
    rng = np.random.default_rng(7)
    value: dict[str, float] = {}
    seed_effect = {(t, s): rng.normal(0, seed_sd) for t in tasks for s in range(5)}
    rows = []
    for task in tasks:
        for att in ("mse", "kl"):
            for data in (200, 400):
                for kind in ("uniform", "learnable"):
                    for alpha in (0.0, 0.5, 1.0):
                        for s in range(5):
                            rid = f"{task}-{data}-{kind}-{alpha}-{s}" + (f"-{att}" if alpha > 0 else "")
                            if rid not in value:
                                value[rid] = (
                                    0.3
                                    + 0.1 * (data == 400)
                                    - 0.1 * (kind == "learnable")
                                    - 0.05 * alpha
                                    + seed_effect[(task, s)]
                                    + rng.normal(0, 0.05)
                                )
                            rows.append(
                                {
                                    "run_id": rid,
                                    "task": task,
                                    "seed": s,
                                    ATT: att,
                                    DATA: data,
                                    KIND: kind,
                                    ALPHA: alpha,
                                    "pearson": value[rid],
                                }
                            )
    return pd.DataFrame(rows)


def merged_runs(df: pd.DataFrame) -> pd.DataFrame:
    """The reference's own one-row-per-run table, built independently of kdgrid: drop the duplicate listings and
    merge attention and alpha into one factor (attention is 'any' at alpha = 0)."""
    runs = df.drop_duplicates("run_id").copy()
    runs["m"] = np.where(runs[ALPHA] == 0.0, "any@0", runs[ATT] + "@" + runs[ALPHA].astype(str))
    return runs.rename(columns={DATA: "d", KIND: "k"})


@pytest.mark.parametrize("block", [False, True])
def test_collapsed_cells_count_each_run_once(block: bool) -> None:
    # Fails on kdgrid <= 0.1: every alpha = 0 run entered twice, residual df 96 instead of 80.
    df = collapsed()
    assert len(df) == 120 and df["run_id"].nunique() == 100
    ours = anova_table(df, metric="pearson", factors=ABLATION_FACTORS, block_seed=block)
    # 100 runs - 20 cells (5 settings x 2 x 2) = 80 residual df; the seed block takes 4 more
    assert ours.iloc[-1]["df"] == (76 if block else 80)
    # The crossed part plus a contrast, built here by hand as numeric columns on one row per run:
    # on = 1 where alpha > 0; att = +1 kl / -1 mse where alpha > 0, else 0; alp = +1 at 0.5 / -1 at 1, else 0.
    # Reference: statsmodels anova_lm(ols("pearson ~ [C(seed, Sum) +] (on + att + alp + att:alp) * C(d, Sum)
    # * C(k, Sum)", runs).fit(), typ=2)
    runs = merged_runs(df)
    runs["on"] = (runs[ALPHA] > 0).astype(float)
    runs["att"] = runs[ATT].map({"kl": 1.0, "mse": -1.0}) * runs["on"]
    runs["alp"] = runs[ALPHA].map({0.0: 0.0, 0.5: 1.0, 1.0: -1.0})
    rhs = ("C(seed, Sum) + " if block else "") + "(on + att + alp + att:alp) * C(d, Sum) * C(k, Sum)"
    ref = anova_lm(smf.ols(f"pearson ~ {rhs}", data=runs).fit(), typ=2)
    contrast = f"{ALPHA}=0 vs rest"
    names = {"on": contrast, "att": ATT, "alp": ALPHA, "C(d, Sum)": DATA, "C(k, Sum)": KIND, "C(seed, Sum)": "seed"}
    ref.index = [":".join(names[p] for p in i.split(":")) if i != "Residual" else i for i in ref.index]
    assert len(ours) == len(ref) == 20 + block
    for _, r in ours.iterrows():
        key = (
            r["term"]
            if r["term"] in ref.index
            else ":".join(sorted(r["term"].split(":"), key=lambda p: list(names.values()).index(p)))
        )
        s = ref.loc[key]
        assert r["df"] == s["df"] and r["sum_sq"] == pytest.approx(s["sum_sq"], rel=1e-7, abs=1e-14)
        if r["term"] != "Residual":
            assert r["F"] == pytest.approx(s["F"], rel=1e-7) and r["p"] == pytest.approx(s["PR(>F)"], rel=1e-6)
    design = " ".join(ours.attrs["design"])
    assert "attention has no effect at alpha=0" in design.lower() and "crossed part plus a contrast" in design
    assert "kl|mse@0, kl@0.5, kl@1, mse@0.5, mse@1" in design


@pytest.mark.parametrize("block", [False, True])
def test_collapsed_cells_as_one_merged_factor(block: bool) -> None:
    df = collapsed()
    ours = anova_table(df, metric="pearson", factors=ABLATION_FACTORS, block_seed=block, collapsed="merged")
    merged = f"{ATT}×{ALPHA}"
    assert ours["term"].tolist() == (["seed"] if block else []) + [
        merged,
        DATA,
        KIND,
        f"{merged}:{DATA}",
        f"{merged}:{KIND}",
        f"{DATA}:{KIND}",
        f"{merged}:{DATA}:{KIND}",
        "Residual",
    ]
    assert ours.iloc[-1]["df"] == (76 if block else 80)
    # Reference: statsmodels anova_lm(ols("pearson ~ [C(seed, Sum) +] C(m, Sum) * C(d, Sum) * C(k, Sum)",
    # one row per run).fit(), typ=2)
    runs = merged_runs(df)
    rhs = ("C(seed, Sum) + " if block else "") + "C(m, Sum) * C(d, Sum) * C(k, Sum)"
    ref = anova_lm(smf.ols(f"pearson ~ {rhs}", data=runs).fit(), typ=2)
    names = {"C(m, Sum)": merged, "C(d, Sum)": DATA, "C(k, Sum)": KIND, "C(seed, Sum)": "seed"}
    ref.index = [":".join(names[p] for p in i.split(":")) if i != "Residual" else i for i in ref.index]
    for _, r in ours.iterrows():
        s = ref.loc[r["term"]]
        assert r["df"] == s["df"] and r["sum_sq"] == pytest.approx(s["sum_sq"], rel=1e-8)
        if r["term"] != "Residual":
            assert r["F"] == pytest.approx(s["F"], rel=1e-8) and r["p"] == pytest.approx(s["PR(>F)"], rel=1e-6)
    # the same model either way: same residual sum of squares
    split = anova_table(df, metric="pearson", factors=ABLATION_FACTORS, block_seed=block)
    assert split.iloc[-1]["sum_sq"] == pytest.approx(ours.iloc[-1]["sum_sq"], rel=1e-10)


def test_pooled_collapsed_anova_nests_seed_in_task() -> None:
    df = collapsed(tasks=("cola", "stsb"))
    out = anova_table(df, metric="pearson", factors=ABLATION_FACTORS)
    pooled = out[out["task"] == "all"].set_index("term")
    # 200 runs - 40 cells (task x 5 settings x 2 x 2) - 8 block df (4 per task) = 152
    assert pooled.loc["task:seed", "df"] == 8 and pooled.loc["Residual", "df"] == 152
    # Reference: statsmodels anova_lm(ols("pearson ~ C(task, Sum) + C(task, Sum):C(seed, Sum)
    # + C(task, Sum) * C(m, Sum) * C(d, Sum) * C(k, Sum)", one row per run).fit(), typ=2)
    runs = merged_runs(df)
    ref = anova_lm(
        smf.ols(
            "pearson ~ C(task, Sum) + C(task, Sum):C(seed, Sum) + C(task, Sum) * C(m, Sum) * C(d, Sum) * C(k, Sum)",
            data=runs,
        ).fit(),
        typ=2,
    )
    assert pooled.loc["task:seed", "sum_sq"] == pytest.approx(ref.loc["C(task, Sum):C(seed, Sum)", "sum_sq"], rel=1e-8)
    assert pooled.loc["task", "F"] == pytest.approx(ref.loc["C(task, Sum)", "F"], rel=1e-8)
    assert pooled.loc[KIND, "F"] == pytest.approx(ref.loc["C(k, Sum)", "F"], rel=1e-8)


def test_cells_and_diagnostics_show_a_collapsed_cell_once() -> None:
    df = collapsed()
    cells = describe_cells(df, metric="pearson", factors=ABLATION_FACTORS)
    assert len(cells) == 20 and cells["n"].tolist() == [5] * 20  # 24 cells on kdgrid <= 0.1
    zero = cells[cells[ALPHA] == "0"]
    assert zero["cell"].tolist()[0] == "attention=kl|mse, max_train_examples=200, kind=learnable, alpha=0"
    assert zero["stands_for"].tolist()[0] == [
        "attention=kl, max_train_examples=200, kind=learnable, alpha=0",
        "attention=mse, max_train_examples=200, kind=learnable, alpha=0",
    ]
    assert all(len(c) == 1 for c in cells.loc[cells[ALPHA] != "0", "stands_for"])
    diag = anova_diagnostics(df, metric="pearson", factors=ABLATION_FACTORS).set_index("check")
    assert diag.loc["runs", "value"] == 100 and "20 shared by several cells" in diag.loc["runs", "note"]
    assert diag.loc["balance", "note"] == "balanced: every cell has 5 run(s) (20 cells)"
    # Levene across the 20 run-level cells: scipy.stats.levene(*groups, center="median") on one row per run
    runs = merged_runs(df)
    groups = [g["pearson"].to_numpy() for _, g in runs.groupby(["m", "d", "k"])]
    assert diag.loc["levene_p", "value"] == pytest.approx(stats.levene(*groups, center="median").pvalue, rel=1e-10)


def test_run_level_detects_the_collapse_from_shared_run_ids() -> None:
    prep = prepare(collapsed(), metric="pearson", factors=ABLATION_FACTORS)
    col = prep.collapse
    assert col is not None and col.collapsed == (ATT,) and col.given == {ALPHA: ("0",)}
    assert col.members == (ATT, ALPHA) and col.levels == ("kl|mse@0", "kl@0.5", "kl@1", "mse@0.5", "mse@1")
    assert prep.model_factors == [f"{ATT}×{ALPHA}", DATA, KIND]
    assert len(prep.runs) == 100 and prep.runs["run_id"].is_unique
    assert len(prep.data) == 120  # the (cell, run) rows are kept for what compares cells
    # without run ids nothing can be known to be shared: every row is a run
    no_ids = prepare(collapsed().drop(columns="run_id"), metric="pearson", factors=ABLATION_FACTORS)
    assert no_ids.collapse is None and len(no_ids.runs) == 120


@pytest.mark.skipif(not ABLATION_PARQUET.is_file(), reason="tests/data/ablation-cpu-0.1.parquet not in the checkout")
def test_ablation_cpu_stsb_has_80_residual_df_without_the_seed_block() -> None:
    # The committed ablation-cpu results: kdgrid <= 0.1 reported Residual df 96 and mapping F = 209.8 on STS-B.
    df = pd.read_parquet(ABLATION_PARQUET)
    # default: 100 runs - 20 cells - 4 seed-block df = 76 (kdgrid <= 0.1: 96)
    blocked = anova_table(df, metric="auto", factors=ABLATION_FACTORS).set_index(["task", "term"])
    assert blocked.loc[("stsb", "Residual"), "df"] == 76 and blocked.loc[("stsb", "seed"), "df"] == 4
    out = anova_table(df, metric="auto", factors=ABLATION_FACTORS, block_seed=False)
    stsb = out[out["task"] == "stsb"].set_index("term")
    assert stsb.loc["Residual", "df"] == 80
    assert stsb.loc[KIND, "F"] == pytest.approx(160.2, abs=0.05)  # kdgrid <= 0.1: 209.8
    assert stsb.loc[ATT, "F"] == pytest.approx(2.41, abs=0.005)  # kdgrid <= 0.1: 1.80 (96 df, alpha = 0 runs twice)


def test_mixed_model_is_fitted_on_one_row_per_run_with_seed_within_task() -> None:
    df = collapsed(tasks=("cola", "stsb"), seed_sd=0.05)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = mixed_model(df, ABLATION_FACTORS, "pearson")
    assert caught == []  # statsmodels' warnings are turned into report warnings, never re-raised
    # Reference: statsmodels mixedlm("pearson ~ C(task) * (C(m) + C(d) + C(k))", one row per run,
    # groups = task/seed).fit(reml=True), m the merged attention x alpha factor with kdgrid's first level as reference
    runs = merged_runs(df)
    runs["m"] = pd.Categorical(
        runs["m"].str.replace("any@0", "kl|mse@0").str.replace(".0", "", regex=False),
        categories=["kl|mse@0", "kl@0.5", "kl@1", "mse@0.5", "mse@1"],
    )
    runs["g"] = runs["task"] + "/" + runs["seed"].astype(str)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = smf.mixedlm("pearson ~ C(task) * (C(m) + C(d) + C(k))", runs, groups="g").fit(reml=True)
    merged = f"{ATT}×{ALPHA}"
    names = {
        ("Intercept", ""): "Intercept",
        ("task", "stsb"): "C(task)[T.stsb]",
        (merged, "mse@1"): "C(m)[T.mse@1]",
        (KIND, "uniform"): "C(k)[T.uniform]",
        (f"task:{DATA}", "stsb:400"): "C(task)[T.stsb]:C(d)[T.400]",
    }
    got = out.set_index(["term", "level"])
    assert len(out) == len(ref.fe_params) == 14
    for key, ref_name in names.items():
        assert got.loc[key, "coef"] == pytest.approx(ref.fe_params[ref_name], rel=1e-5, abs=1e-8)
        assert got.loc[key, "se"] == pytest.approx(ref.bse_fe[ref_name], rel=1e-4)
    re = out.attrs["random_effects"]["all"]
    assert re["seed_within_task_var"] == pytest.approx(float(ref.cov_re.iloc[0, 0]), rel=1e-4)


def test_mixed_model_boundary_and_non_convergence_become_report_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    from statsmodels.regression.mixed_linear_model import MixedLM
    from statsmodels.tools.sm_exceptions import ConvergenceWarning

    real_fit = MixedLM.fit

    def failing_fit(self: MixedLM, *args: object, **kwargs: object) -> object:
        result = real_fit(self, *args, **kwargs)
        warnings.warn("Gradient optimization failed, |grad| = 1.2", ConvergenceWarning, stacklevel=1)
        result.converged = False
        return result

    df = collapsed(tasks=("cola", "stsb"))
    monkeypatch.setattr(MixedLM, "fit", failing_fit)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = mixed_model(df, ABLATION_FACTORS, "pearson")
    assert caught == []
    mine = [w for w in out.attrs["warnings"] if w.startswith("mixed model")]
    assert mine == [
        "mixed model all: did not converge (the REML optimiser stopped before the optimum): its estimates "
        "and tests are not reliable"
    ]
    assert not any("grad" in w for w in out.attrs["warnings"])


def test_shapiro_on_more_than_5000_residuals_says_so_without_a_python_warning() -> None:
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"f": rng.choice(["a", "b"], 6000), "y": rng.normal(size=6000)})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        diag = anova_diagnostics(df, metric="y", factors=["f"]).set_index("check")
    assert caught == []  # scipy: "For N > 5000, computed p-value may not be accurate."
    assert "p value is approximate" in diag.loc["residual_shapiro_p", "note"]
