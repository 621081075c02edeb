"""kdgrid.analyze against published reference values (R output for textbook data sets).

Every asserted number has the R call that produced it in a comment and is reproduced
to at least 4 significant digits. The data sets are typed in and checked against their
known sums and means first, so a typo cannot hide behind a tolerance.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from kdgrid.analyze import anova_table, paired_tests, paired_ttest, wilcoxon_signed_rank

RTOL = 5e-5  # 4 significant digits and a half


def close(actual: float, expected: float, rtol: float = RTOL) -> bool:
    return bool(np.isclose(actual, expected, rtol=rtol, atol=0))


# --------------------------------------------------------------------------- data sets
# R: datasets::sleep (Cushny & Peebles 1905; Student 1908). extra = extra hours of sleep,
# group = drug (1, 2), ID = patient. Rows 1-10 group 1, rows 11-20 group 2, ID 1..10 each.
SLEEP_EXTRA_1 = [0.7, -1.6, -0.2, -1.2, -0.1, 3.4, 3.7, 0.8, 0.0, 2.0]
SLEEP_EXTRA_2 = [1.9, 0.8, 1.1, 0.1, -0.1, 4.4, 5.5, 1.6, 4.6, 3.4]


def sleep_df() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "extra": SLEEP_EXTRA_1 + SLEEP_EXTRA_2,
            "group": ["1"] * 10 + ["2"] * 10,
            "seed": list(range(1, 11)) * 2,  # ID: the pairing unit
        }
    )


# R: datasets::ToothGrowth (Crampton 1947). len, supp (VC, OJ), dose (0.5, 1, 2); rows in R's order:
# VC 0.5 (1-10), VC 1 (11-20), VC 2 (21-30), OJ 0.5 (31-40), OJ 1 (41-50), OJ 2 (51-60).
TOOTH_LEN = {
    ("VC", 0.5): [4.2, 11.5, 7.3, 5.8, 6.4, 10.0, 11.2, 11.2, 5.2, 7.0],
    ("VC", 1.0): [16.5, 16.5, 15.2, 17.3, 22.5, 17.3, 13.6, 14.5, 18.8, 15.5],
    ("VC", 2.0): [23.6, 18.5, 33.9, 25.5, 26.4, 32.5, 26.7, 21.5, 23.3, 29.5],
    ("OJ", 0.5): [15.2, 21.5, 17.6, 9.7, 14.5, 10.0, 8.2, 9.4, 16.5, 9.7],
    ("OJ", 1.0): [19.7, 23.3, 23.6, 26.4, 20.0, 25.2, 25.8, 21.2, 14.5, 27.3],
    ("OJ", 2.0): [25.5, 26.4, 22.4, 24.5, 24.8, 30.9, 26.4, 27.3, 29.4, 23.0],
}


def tooth_df() -> pd.DataFrame:
    rows = [{"len": v, "supp": s, "dose": d} for (s, d), vals in TOOTH_LEN.items() for v in vals]
    return pd.DataFrame(rows)


# R: carData::Moore (Moore & Krupat 1971; Fox, Applied Regression Analysis, 2016, ch. 8): 45 rows,
# unbalanced 3 x 2 design. Columns partner.status, conformity, fcategory, in R's row order.
MOORE = """\
low 8 low|low 4 high|low 8 high|low 7 low|low 10 low|low 6 low|low 12 medium|low 4 medium|low 13 low
low 12 low|low 4 medium|low 13 high|low 7 low|low 9 medium|low 9 high|low 24 high|low 6 low|low 7 high
low 23 high|low 13 high|low 8 low|low 12 low|high 19 high|high 12 medium|high 21 low|high 9 high
high 23 low|high 7 high|high 17 medium|high 14 medium|high 11 high|high 16 medium|high 15 low
high 20 medium|high 8 medium|high 12 low|high 14 high|high 14 medium|high 17 medium|high 7 medium
high 17 medium|high 13 high|high 16 low|high 10 high|high 15 medium"""


def moore_df() -> pd.DataFrame:
    recs = [r.split() for line in MOORE.splitlines() for r in line.split("|")]
    return pd.DataFrame(
        {
            "partner.status": [r[0] for r in recs],
            "conformity": [float(r[1]) for r in recs],
            "fcategory": [r[2] for r in recs],
        }
    )


# Kidney data (statsmodels/stats/tests/test_anova.py, "from JT's course"): Days by Duration (1, 2)
# x Weight (1, 2, 3), 10 patients per cell, in that file's row order.
KIDNEY_DAYS = {
    (1, 1): [0, 2, 1, 3, 0, 2, 0, 5, 6, 8],
    (1, 2): [2, 4, 7, 12, 15, 4, 3, 1, 5, 20],
    (1, 3): [15, 10, 8, 5, 25, 16, 7, 30, 3, 27],
    (2, 1): [0, 1, 1, 0, 4, 2, 7, 4, 0, 3],
    (2, 2): [5, 3, 2, 0, 1, 1, 3, 6, 7, 9],
    (2, 3): [10, 8, 12, 3, 7, 15, 4, 9, 6, 1],
}


def kidney_df() -> pd.DataFrame:
    rows = [{"Days": v, "Duration": d, "Weight": w} for (d, w), vals in KIDNEY_DAYS.items() for v in vals]
    df = pd.DataFrame(rows)
    df["logDays"] = np.log(df["Days"] + 1.0)
    return df


def test_data_sets_are_typed_correctly() -> None:
    s = sleep_df()
    assert len(s) == 20
    # R: tapply(sleep$extra, sleep$group, mean) -> 0.75 2.33
    assert s.groupby("group")["extra"].mean().round(10).tolist() == [0.75, 2.33]
    t = tooth_df()
    assert len(t) == 60
    # R: mean(ToothGrowth$len) -> 18.81333; sum(ToothGrowth$len) -> 1128.8
    assert close(t["len"].mean(), 18.81333)
    assert round(t["len"].sum(), 6) == 1128.8
    # R: with(ToothGrowth, tapply(len, list(supp, dose), mean))
    #       0.5     1     2
    #   OJ 13.23 22.70 26.06
    #   VC  7.98 16.77 26.14
    means = t.groupby(["supp", "dose"])["len"].mean().round(6)
    assert means.to_dict() == {
        ("OJ", 0.5): 13.23,
        ("OJ", 1.0): 22.70,
        ("OJ", 2.0): 26.06,
        ("VC", 0.5): 7.98,
        ("VC", 1.0): 16.77,
        ("VC", 2.0): 26.14,
    }
    m = moore_df()
    assert len(m) == 45 and m["conformity"].sum() == 546
    # Cell means, as R's with(Moore, tapply(conformity, list(fcategory, partner.status), mean)) lays them out.
    # (Not copied from a source: the data come from the Rdatasets CSV of carData::Moore, and the type II
    # sums of squares below match car's to 12 digits, which pins every value.)
    #            high    low
    #   high   11.857 12.625
    #   low    17.400  8.900
    #   medium 14.273  7.250
    cm = m.groupby(["fcategory", "partner.status"])["conformity"].mean()
    assert cm.round(3).to_dict() == {
        ("high", "high"): 11.857,
        ("high", "low"): 12.625,
        ("low", "high"): 17.4,
        ("low", "low"): 8.9,
        ("medium", "high"): 14.273,
        ("medium", "low"): 7.25,
    }
    # R: summary(mod) with contr.sum: (Intercept) 12.0508 = the unweighted mean of the 6 cell means
    assert close(cm.mean(), 12.0508, 1e-5)
    k = kidney_df()
    assert len(k) == 60 and k["Days"].sum() == 380


# --------------------------------------------------------------------------- paired t-test
SLEEP_T = -4.0621  # R: t.test(extra ~ group, data = sleep, paired = TRUE)
SLEEP_P = 0.002833  #   t = -4.0621, df = 9, p-value = 0.002833
SLEEP_CI = (-2.4598858, -0.7001142)  # 95 percent confidence interval: -2.4598858 -0.7001142
SLEEP_MEAN = -1.58  # mean difference -1.58


def test_sleep_paired_ttest_matches_r() -> None:
    r = paired_ttest(SLEEP_EXTRA_1, SLEEP_EXTRA_2).iloc[0]
    assert r["n"] == 10 and r["df"] == 9
    assert close(r["t"], SLEEP_T)
    assert close(r["p"], SLEEP_P, rtol=2e-4)  # R prints 4 significant digits
    assert close(r["ci_low"], SLEEP_CI[0]) and close(r["ci_high"], SLEEP_CI[1])
    assert close(r["mean_diff"], SLEEP_MEAN)
    # d_z = mean(d) / sd(d); R: with(sleep, mean(extra[1:10] - extra[11:20]) / sd(extra[1:10] - extra[11:20]))
    # -> -1.284558 (sd(d) = 1.229995)
    assert close(r["dz"], -1.284558)


def test_sleep_through_paired_tests_matches_r() -> None:
    out = paired_tests(sleep_df(), metric="extra", factors=["group"], baseline={"group": 2})
    assert len(out) == 1
    r = out.iloc[0]
    assert (r["condition"], r["baseline"]) == ("group=1", "group=2")
    assert close(r["t"], SLEEP_T) and close(r["p"], SLEEP_P, rtol=2e-4)
    assert close(r["ci_low"], SLEEP_CI[0]) and close(r["ci_high"], SLEEP_CI[1])
    assert r["p_adj"] == r["p"]  # a family of one


def test_sleep_wilcoxon_is_exact_with_ties_and_a_zero() -> None:
    # R: wilcox.test(extra ~ group, data = sleep, paired = TRUE) gives p = 0.009091 from the normal
    # approximation ("cannot compute exact p-value with ties / with zeroes"). The exact conditional test
    # drops the one zero; the other 9 differences are all negative, the most extreme of the 2^9 sign
    # flips whatever the mid-ranks, so p = 2/2^9 = 0.00390625.
    # scipy.stats.wilcoxon(d[d != 0], method=scipy.stats.PermutationMethod(n_resamples=np.inf)) -> 0.00390625
    d = np.subtract(SLEEP_EXTRA_1, SLEEP_EXTRA_2)
    p, note = wilcoxon_signed_rank(d)
    assert p == pytest.approx(2 / 2**9, abs=1e-15) and note == ""


def test_wilcoxon_exact_small_sample() -> None:
    # Exact null distribution by hand: all 5 signs positive, P(V >= 15) = 1/2^5, two-sided 2/2^5 = 0.0625
    # (what R's wilcox.test(c(1.5, 2, 3, 4, 5)) computes: exact, as n < 50 without ties or zeros).
    p, note = wilcoxon_signed_rank([1.5, 2, 3, 4, 5])
    assert p == pytest.approx(0.0625, abs=1e-12) and note == ""
    # By hand: n = 7, only the smallest |d| negative, V = 27; P(V >= 27) = P(V <= 1) = 2/2^7, two-sided 0.03125.
    p, _ = wilcoxon_signed_rank([-0.3, 1.1, 2.2, 3.5, 4.1, 5.6, 6.2])
    assert p == pytest.approx(0.03125, abs=1e-12)


# --------------------------------------------------------------------------- balanced two-way ANOVA
def _by_term(table: pd.DataFrame) -> dict[str, pd.Series]:
    return {r["term"]: r for _, r in table.iterrows()}


@pytest.mark.parametrize("typ", [2, 3])
def test_toothgrowth_anova_matches_r(typ: int) -> None:
    # R: anova(lm(len ~ supp * factor(dose), data = ToothGrowth))
    #                   Df  Sum Sq Mean Sq F value    Pr(>F)
    # supp               1  205.35  205.35  15.572 0.0002312 ***
    # factor(dose)       2 2426.43 1213.22  92.000 < 2.2e-16 ***
    # supp:factor(dose)  2  108.32   54.16   4.107 0.0218603 *
    # Residuals         54  712.11   13.19
    # Balanced: type I = II = III (car::Anova(..., type = 2 or 3) with contr.sum give the same).
    t = _by_term(anova_table(tooth_df(), metric="len", factors=["supp", "dose"], typ=typ))
    assert list(t) == ["supp", "dose", "supp:dose", "Residual"]
    assert [t[k]["df"] for k in t] == [1, 2, 2, 54]
    assert (
        close(t["supp"]["sum_sq"], 205.35) and close(t["supp"]["F"], 15.572) and close(t["supp"]["p"], 0.0002312, 2e-4)
    )
    assert close(t["dose"]["sum_sq"], 2426.43) and close(t["dose"]["F"], 92.000)
    assert t["dose"]["p"] < 2.2e-16
    assert close(t["supp:dose"]["sum_sq"], 108.32) and close(t["supp:dose"]["F"], 4.107, 1e-4)
    assert close(t["supp:dose"]["p"], 0.02186, 2e-4)
    assert close(t["Residual"]["sum_sq"], 712.11)
    # partial eta^2 = SS / (SS + SS_res); supp: 205.35 / (205.35 + 712.106)
    assert close(t["supp"]["partial_eta2"], 205.35 / (205.35 + 712.106))


# --------------------------------------------------------------------------- unbalanced two-way ANOVA
MOORE_FACTORS = ["fcategory", "partner.status"]


def test_moore_type2_matches_car() -> None:
    # R: library(car); mod <- lm(conformity ~ fcategory * partner.status, data = Moore,
    #        contrasts = list(fcategory = contr.sum, partner.status = contr.sum)); Anova(mod)
    # Anova Table (Type II tests)
    #                          Sum Sq Df F value   Pr(>F)
    # fcategory                 11.61  2  0.2770 0.759564
    # partner.status           212.21  1 10.1207 0.002874 **
    # fcategory:partner.status 175.49  2  4.1846 0.022572 *
    # Residuals                817.76 39
    # (full precision from the parameters package tests, same call: SS 11.6147000439174,
    #  212.213777777778, 175.488927849928, 817.763961038961; F 0.276958464357662, 10.1206921894899,
    #  4.18462326063615; p 0.759564473545402, 0.00287422991075648, 0.0225724417916786)
    t = _by_term(anova_table(moore_df(), metric="conformity", factors=MOORE_FACTORS, typ=2))
    assert [t[k]["df"] for k in t] == [2, 1, 2, 39]
    for term, ss, f, p in [
        ("fcategory", 11.6147000439174, 0.276958464357662, 0.759564473545402),
        ("partner.status", 212.213777777778, 10.1206921894899, 0.00287422991075648),
        ("fcategory:partner.status", 175.488927849928, 4.18462326063615, 0.0225724417916786),
    ]:
        assert close(t[term]["sum_sq"], ss, 1e-8)
        assert close(t[term]["F"], f, 1e-8)
        assert close(t[term]["p"], p, 1e-8)
    assert close(t["Residual"]["sum_sq"], 817.763961038961, 1e-8)


def test_moore_type3_matches_car() -> None:
    # R: Anova(mod, type = 3)  # mod as above, with contr.sum
    # Anova Table (Type III tests)
    #                           Sum Sq Df  F value    Pr(>F)
    # (Intercept)              5752.8  1 274.3592 < 2.2e-16 ***
    # fcategory                  36.0  2   0.8589  0.431492
    # partner.status            239.6  1  11.4250  0.001657 **
    # fcategory:partner.status  175.5  2   4.1846  0.022572 *
    # Residuals                 817.8 39
    t = _by_term(anova_table(moore_df(), metric="conformity", factors=MOORE_FACTORS, typ=3))
    assert "Intercept" not in t
    assert close(t["fcategory"]["sum_sq"], 36.0, 2e-3) and close(t["fcategory"]["F"], 0.8589, 1e-4)
    assert close(t["fcategory"]["p"], 0.431492, 2e-5)
    assert close(t["partner.status"]["sum_sq"], 239.6, 2e-4) and close(t["partner.status"]["F"], 11.4250)
    assert close(t["partner.status"]["p"], 0.001657, 5e-4)
    assert close(t["fcategory:partner.status"]["F"], 4.1846) and close(
        t["fcategory:partner.status"]["p"], 0.022572, 5e-5
    )


def _kidney_dropped() -> pd.DataFrame:
    return kidney_df().drop([0, 1, 2]).reset_index(drop=True)


def test_kidney_balanced_type1_matches_r() -> None:
    # R (statsmodels/stats/tests/test_anova.py, TestAnovaLM):
    #   anova(lm(log(Days + 1) ~ Duration * Weight)), factors: Duration 2.339693 (F 4.358293,
    #   p 0.0415617), Weight 16.97129 (F 15.80674, p 3.944502e-06), Duration:Weight 0.6356584
    #   (F 0.5920404, p 0.5567479), Residuals 28.9892 on 54 df. Balanced, so type II gives the same.
    t = _by_term(anova_table(kidney_df(), metric="logDays", factors=["Duration", "Weight"]))
    assert close(t["Duration"]["sum_sq"], 2.339693) and close(t["Duration"]["F"], 4.358293)
    assert close(t["Weight"]["sum_sq"], 16.97129) and close(t["Weight"]["p"], 3.944502e-06)
    assert close(t["Duration:Weight"]["sum_sq"], 0.6356584) and close(t["Duration:Weight"]["p"], 0.5567479)
    assert close(t["Residual"]["sum_sq"], 28.9892) and t["Residual"]["df"] == 54


def test_kidney_unbalanced_type2_and_type3_match_car() -> None:
    # R (statsmodels/stats/tests/test_anova.py, TestAnova2 / TestAnova3): first 3 rows dropped,
    #   car::Anova(lm(log(Days + 1) ~ Duration * Weight, dta.dropped,
    #              contrasts = list(Duration = contr.sum, Weight = contr.sum)), type = "II")
    #   Duration 3.067066 F 5.667033 p 0.02106078; Weight 13.27205 F 12.26141 p 4.487909e-05;
    #   Duration:Weight 0.1905093 F 0.1760025 p 0.8391231; Residuals 27.60181 on 51 df
    #   ... type = "III": Duration 2.904723 F 5.367071 p 0.02457384; Weight 13.45718 F 12.43245
    #   p 3.999431e-05; Duration:Weight 0.1905093 F 0.1760025 p 0.8391231
    t2 = _by_term(anova_table(_kidney_dropped(), metric="logDays", factors=["Duration", "Weight"], typ=2))
    assert close(t2["Duration"]["sum_sq"], 3.067066) and close(t2["Duration"]["F"], 5.667033)
    assert close(t2["Duration"]["p"], 0.02106078)
    assert close(t2["Weight"]["sum_sq"], 13.27205) and close(t2["Weight"]["p"], 4.487909e-05)
    assert close(t2["Duration:Weight"]["sum_sq"], 0.1905093) and close(t2["Duration:Weight"]["F"], 0.1760025)
    assert close(t2["Residual"]["sum_sq"], 27.60181) and t2["Residual"]["df"] == 51
    t3 = _by_term(anova_table(_kidney_dropped(), metric="logDays", factors=["Duration", "Weight"], typ=3))
    assert close(t3["Duration"]["sum_sq"], 2.904723) and close(t3["Duration"]["F"], 5.367071)
    assert close(t3["Duration"]["p"], 0.02457384)
    assert close(t3["Weight"]["sum_sq"], 13.45718) and close(t3["Weight"]["F"], 12.43245)
    assert close(t3["Weight"]["p"], 3.999431e-05)
    assert close(t3["Duration:Weight"]["p"], 0.8391231)
