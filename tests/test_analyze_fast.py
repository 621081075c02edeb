"""The fast paths of the analysis and of the store's report queries give the same numbers as the
straightforward ones they replaced, exactly (no tolerance)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from kdgrid.analyze import analyze_table
from kdgrid.analyze.verdict import _sign_flip_p, exact_wilcoxon


def scipy_exact(d: np.ndarray, alternative: str) -> float:
    # The call exact_wilcoxon made before the matrix product (kdgrid integration a88d5ec).
    return float(
        stats.wilcoxon(
            d, alternative=alternative, zero_method="wilcox", method=stats.PermutationMethod(n_resamples=np.inf)
        ).pvalue
    )


def samples() -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    out = [np.array([0.3, 0.3]), np.array([0.3, -0.3, 0.3]), np.full(5, 0.01), np.array([1.0, 2.0, 2.0, -2.0, 3.0])]
    for n in range(2, 11):
        out.append(rng.normal(size=n))
        out.append(rng.integers(-3, 4, size=n).astype(float))  # ties, and zeros dropped below
        out.append(np.round(rng.normal(size=n), 1) + 0.05)
    return [d[d != 0] for d in out if np.count_nonzero(d) >= 2]


@pytest.mark.parametrize("alternative", ["two-sided", "less", "greater"])
def test_sign_flip_p_is_scipys_permutation_p_bit_for_bit(alternative: str) -> None:
    for d in samples():
        assert _sign_flip_p(d, alternative) == scipy_exact(d, alternative), d


def test_exact_wilcoxon_known_values() -> None:
    # scipy.stats.wilcoxon([1, 2, 3, 4, 5], method="exact").pvalue -> 0.0625 (2 / 2^5)
    assert exact_wilcoxon(np.array([1.0, 2.0, 3.0, 4.0, 5.0])) == 0.0625
    # constant differences: all 2^n flips, one extreme each way -> 2 * 1/2^4
    assert exact_wilcoxon(np.full(4, 0.2)) == 0.125


def table(k: int = 6, seeds: int = 5) -> pd.DataFrame:
    rng = np.random.default_rng(3)
    rows = []
    for task in ("cola", "stsb"):
        for i in range(k):
            for s in range(seeds):
                v = 0.5 + 0.01 * int(rng.integers(0, 4)) + 0.004 * i + (0.01 * s if i % 3 == 0 else 0)
                rows.append(
                    {
                        "task": task,
                        "a": f"l{i // 2}",
                        "b": f"m{i % 2}",
                        "seed": s,
                        "mcc": v,
                        "pearson": v,
                        "params": 1000.0 + i,
                        "latency_ms": 2.0 + 0.1 * s,
                    }
                )
    return pd.DataFrame(rows)


def test_nemenyi_pairs_and_efficiency_are_the_per_pair_reads() -> None:
    a = analyze_table(table(), metric="auto", factors=["a", "b"], baseline={"a": "l0", "b": "m0"})
    # The straightforward reads the fast paths replaced: .loc per Nemenyi pair, .at per cell.
    assert len(a.ranks) >= 3
    mean_rank = dict(zip(a.ranks["cell"], a.ranks["mean_rank"]))
    cells = list(a.nemenyi["cell_a"].drop_duplicates()) + [a.nemenyi["cell_b"].iloc[-1]]
    expected = [(x, y, float(mean_rank[x] - mean_rank[y])) for i, x in enumerate(cells) for y in cells[i + 1 :]]
    assert list(zip(a.nemenyi["cell_a"], a.nemenyi["cell_b"], a.nemenyi["rank_diff"])) == expected
    assert a.nemenyi["p"].between(0, 1).all()
    eff = a.efficiency[a.efficiency["measure"] == "latency_ms"]
    assert list(eff["median"]) == [2.2] * len(eff) and list(eff["n"]) == [10] * len(eff)


def test_store_queries_read_through_arrow_equal_query_df(tmp_path: Path) -> None:
    from kdgrid.store.db import open_store
    from kdgrid.store.queries import _final_metrics_wide, _frame, mapping_weights

    with open_store(tmp_path / "s.duckdb") as store:
        store.con.execute("CREATE TABLE t AS SELECT range AS i, 'x' || (range % 7) AS s, range / 3 AS v FROM range(50)")
        sql = "SELECT * FROM t WHERE i >= ? ORDER BY i"
        pd.testing.assert_frame_equal(_frame(store, sql, [10]), store.query_df(sql, [10]), check_exact=True)
        assert _frame(store, sql, [10**6]).empty
        assert _final_metrics_wide(store, "run_id IN (SELECT run_id FROM study_runs WHERE study = ?)", ["none"]) is None
        assert mapping_weights(store, "none").empty


def test_nemenyi_p_equals_scikit_posthocs() -> None:
    """kdgrid.analyze.pooled.nemenyi_p (one integral per distinct rank difference) against the call it replaced."""
    import scikit_posthocs as sp

    from kdgrid.analyze.pooled import nemenyi_p

    rng = np.random.default_rng(11)
    for blocks, k, levels in ((7, 30, 5), (10, 12, 1000), (3, 4, 2), (25, 60, 8)):
        values = rng.integers(0, levels, size=(blocks, k)).astype(float)  # few levels: many ties, mid-ranks
        ranks = stats.rankdata(-values, axis=1, method="average")  # rank 1 = best, as friedman_ranks
        ia, ib = np.triu_indices(k, 1)
        want = sp.posthoc_nemenyi_friedman(values).to_numpy()[ia, ib]
        got = nemenyi_p(ranks, ia, ib)
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)
        assert len(np.unique(got)) < len(got) or k < 5  # pairs do share integrals


# --------------------------------------------------------------------------- issue 18 item 5, second round
def level_columns() -> list[pd.Series]:
    mixed = [0.5, "0.5", "0.50", 1, 1.0, True, False, None, np.nan, -0.0, 0.0, "kl", " kl ", np.float32(0.1)]
    mixed += [np.int64(3), np.float64(3.0), np.bool_(True), pd.NA, "1e-05", 1e-05, "inf", float("inf"), ("t",)]
    return [
        pd.Series(mixed, dtype=object),
        pd.Series(["a", None, "b", "a"], dtype="str"),
        pd.Series(["a", None, "b"], dtype="string"),
        pd.Series([1.0, np.nan, 2.5, 1.0, -0.0, 0.0]),
        pd.Series([3, 1, 2, 3]),
        pd.Series([True, False, True]),
        pd.Series(pd.Categorical(["b", "a", None, "b"], categories=["b", "a", "c"])),
        pd.Series(pd.Categorical([1.0, 2.0, 1.0])),
    ]


def test_level_keys_are_level_key_of_each_value_and_level_order_is_unchanged() -> None:
    from kdgrid.analyze.tidy import _is_number, level_key, level_keys, level_order

    def level_order_before(column: pd.Series) -> list[str]:
        # level_order at kdgrid integration a88d5ec (level_key once per row)
        if isinstance(column.dtype, pd.CategoricalDtype):
            cats = [level_key(c) for c in column.cat.categories]
            present = set(column.map(level_key))
            ordered = [c for c in dict.fromkeys(cats) if c in present]
            return ordered + (["NA"] if "NA" in present and "NA" not in ordered else [])
        keys = sorted(set(column.map(level_key)) - {"NA"})
        if keys and all(_is_number(k) for k in keys):
            keys.sort(key=float)
        if (column.map(level_key) == "NA").any():
            keys.append("NA")
        return keys

    for col in level_columns():
        assert level_keys(col) == list(col.map(level_key)), col
        assert level_order(col) == level_order_before(col), col
    assert level_keys(pd.Series([-0.0, 0.0], dtype=object)) == ["-0", "0"]  # equal floats, different keys


def test_memoised_distribution_calls_are_scipys_bit_for_bit() -> None:
    from kdgrid.analyze.dist import nct_cdf, t_ppf

    rng = np.random.default_rng(11)
    for _ in range(300):
        df = int(rng.integers(1, 40))
        q = float(rng.uniform(0.5, 0.9999))
        assert t_ppf(q, df) == float(stats.t.ppf(q, df))
        t, nc = float(rng.normal(0, 8)), float(rng.normal(0, 60))  # far tails included (NaN there)
        a, b = nct_cdf(t, df, nc), float(stats.nct.cdf(t, df, nc))
        assert a == b or (np.isnan(a) and np.isnan(b)), (t, df, nc)


def test_dz_interval_cached_equals_a_fresh_root_search() -> None:
    from kdgrid.analyze.power import _dz_interval, dz_interval

    for dz, n in [(0.8, 10), (-1.3, 5), (0.0, 3), (4.0, 10), (12.0, 4)]:
        first = dz_interval(dz, n)
        _dz_interval.cache_clear()
        assert dz_interval(dz, n) == first == dz_interval(dz, n)
    assert np.isnan(dz_interval(float("nan"), 10)[0]) and np.isnan(dz_interval(1.0, 1)[1])


@pytest.mark.filterwarnings("ignore:The design matrix is rank-deficient")
def test_one_full_fit_gives_matrix_rank_rss_and_the_formula_anova() -> None:
    """_fit_full's rank is np.linalg.matrix_rank's, its RSS and residuals are statsmodels' OLS fit of the same
    design, and anova_lm on it is anova_lm on the formula fit (what _fit_one called before), on a balanced and
    an unbalanced design and a rank-deficient one (an empty cell)."""
    import patsy
    import statsmodels.api as sm
    import statsmodels.formula.api as smf
    from statsmodels.stats.anova import anova_lm

    from kdgrid.analyze.anova import _fit_full

    rng = np.random.default_rng(5)
    frame = pd.DataFrame([(a, b, s) for a in "xyz" for b in "uv" for s in "0123"], columns=["a", "b", "s"]).assign(
        y=lambda d: rng.normal(size=len(d))
    )
    unbalanced = frame.drop(index=[1, 2, 9])
    empty_cell = frame.loc[~((frame["a"] == "z") & (frame["b"] == "v"))]
    rhs = "1 + C(s, Sum) + C(a, Sum) + C(b, Sum) + C(a, Sum):C(b, Sum)"
    for data, full_rank in ((frame, True), (unbalanced, True), (empty_cell, False)):
        x = patsy.dmatrix(rhs, data, return_type="matrix")
        y = data["y"].to_numpy(dtype=float)
        full = _fit_full(y, x)
        assert full.rank == int(np.linalg.matrix_rank(np.asarray(x)))
        assert (full.rank == x.shape[1]) is full_rank
        ols = sm.OLS(y, np.asarray(x)).fit()
        assert full.ssr == float(ols.ssr) and full.df_resid == float(ols.df_resid)
        assert np.array_equal(full.resid, np.asarray(ols.resid, dtype=float))
        if full_rank:
            for typ in (2, 3):
                ours = anova_lm(full.fit, typ=typ)
                ref = anova_lm(smf.ols("y ~ " + rhs, data=data).fit(), typ=typ)
                assert list(ours.index) == list(ref.index)
                np.testing.assert_allclose(ours["sum_sq"], ref["sum_sq"], rtol=1e-12, atol=1e-12)
                np.testing.assert_array_equal(ours["df"], ref["df"])


def balanced_runs(rng: np.random.Generator, levels: tuple[int, ...], seeds: int, reps: int, tied: bool) -> pd.DataFrame:
    import itertools

    rows = []
    for combo in itertools.product(*(range(k) for k in levels)):
        for s in range(seeds):
            for _ in range(reps):
                v = 0.7 + 0.01 * sum(combo) + 0.003 * s + rng.normal(0, 0.02)
                rows.append({**{f"f{i}": f"l{c}" for i, c in enumerate(combo)}, "seed": str(s), "value": v})
    out = pd.DataFrame(rows)
    if tied:  # accuracies on a small dev set: many exactly equal values
        out["value"] = np.round(out["value"] * 50) / 50
    return out


@pytest.mark.parametrize("typ", [2, 3])
def test_balanced_anova_equals_the_full_statsmodels_fit(typ: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """_balanced_fit (cell means) against the path it bypasses (anova_lm on the statsmodels fit of every run),
    on random and tied data, with and without the seed block, all interactions or main effects only."""
    from kdgrid.analyze import anova as anova_mod

    rng = np.random.default_rng(23)
    cases = [((3, 2), 4, 1, False), ((3, 2), 4, 1, True), ((2, 3, 2), 3, 2, False), ((4, 2), 1, 3, True)]
    for levels, seeds, reps, tied in cases:
        data = balanced_runs(rng, levels, seeds, reps, tied)
        factors = [f"f{i}" for i in range(len(levels))]
        orders = {f: sorted(data[f].unique()) for f in [*factors, "seed"]}
        for order in (None, 1):
            block = ("seed",) if seeds > 1 else None
            fast, w_fast = anova_mod._fit_one(data, factors, orders, typ=typ, order=order, block=block, label="t")
            with monkeypatch.context() as m:
                m.setattr(anova_mod, "_balanced_fit", lambda *a, **k: None)
                ref, w_ref = anova_mod._fit_one(data, factors, orders, typ=typ, order=order, block=block, label="t")
            assert fast is not None and ref is not None and w_fast == w_ref
            total = float(((data["value"] - data["value"].mean()) ** 2).sum())
            assert list(fast.table["term"]) == list(ref.table["term"])
            assert list(fast.table["df"]) == list(ref.table["df"])
            np.testing.assert_allclose(fast.table["sum_sq"], ref.table["sum_sq"], rtol=1e-12, atol=1e-12 * total)
            np.testing.assert_allclose(fast.table["F"], ref.table["F"], rtol=1e-9, equal_nan=True)
            np.testing.assert_allclose(fast.table["p"], ref.table["p"], rtol=1e-9, atol=1e-15, equal_nan=True)
            np.testing.assert_allclose(fast.residuals, ref.residuals, rtol=0, atol=1e-12)
            assert fast.order == ref.order and fast.factors == ref.factors


def test_unbalanced_or_incomplete_designs_take_the_general_path() -> None:
    from kdgrid.analyze.anova import _balanced_fit

    rng = np.random.default_rng(2)
    data = balanced_runs(rng, (3, 2), 3, 1, False)
    orders = {f: sorted(data[f].unique()) for f in ("f0", "f1", "seed")}
    terms = [("f0",), ("f1",), ("f0", "f1")]
    assert _balanced_fit(data, ["f0", "f1"], ["seed"], orders, terms) is not None
    assert _balanced_fit(data.drop(index=[4]), ["f0", "f1"], ["seed"], orders, terms) is None  # one run missing
    assert _balanced_fit(pd.concat([data, data.iloc[:1]]), ["f0", "f1"], ["seed"], orders, terms) is None
    empty = data.loc[~((data["f0"] == "l2") & (data["f1"] == "l1"))]  # an empty cell
    assert _balanced_fit(empty, ["f0", "f1"], ["seed"], orders, terms) is None
    one_run = data.loc[data["seed"] == "0"]  # one run per cell, all interactions: no residual df
    assert _balanced_fit(one_run, ["f0", "f1"], [], orders, terms) is None


def test_batched_t_tests_equal_the_one_by_one_calls_bit_for_bit() -> None:
    from kdgrid.analyze.paired import _batched_t, _paired_stats, wilcoxon_signed_rank
    from kdgrid.analyze.verdict import difference_p

    rng = np.random.default_rng(17)
    pairs = []
    for n in (1, 2, 3, 5, 10, 10, 10, 16, 17):
        for kind in range(4):
            c = 0.8 + rng.normal(0, 0.02, size=n)
            b = 0.8 + rng.normal(0, 0.02, size=n)
            if kind == 1:  # tied: accuracies on a small dev set
                c, b = np.round(c * 50) / 50, np.round(b * 50) / 50
            elif kind == 2:  # constant differences: no t test
                b = c - 0.01
            elif kind == 3:  # identical: all differences zero
                b = c.copy()
            pairs.append((c, b))
    for (c, b), pre in zip(pairs, _batched_t(pairs)):
        d = c - b
        assert pre[0] is None or pre[0] == difference_p(d)[0]
        assert difference_p(d, t_pvalue=pre[0]) == difference_p(d)
        one, batched = _paired_stats(c, b, 0.95), _paired_stats(c, b, 0.95, pre)
        assert str(one) == str(batched)  # NaN-aware, every field and note
        if pre[1] is not None:
            assert pre[1] == float(stats.ttest_rel(c, b).statistic)
        if pre[2] is not None:
            assert pre[2] == wilcoxon_signed_rank(d)[0]
    assert sum(pre[2] is not None for pre in _batched_t(pairs)) > 20


def test_sign_flip_p_of_many_samples_is_the_one_by_one_p_bit_for_bit() -> None:
    from kdgrid.analyze.verdict import sign_flip_p_many

    many = [d for d in samples() if 2 <= d.size <= 16]
    rng = np.random.default_rng(4)
    many += [np.round(rng.normal(size=16), 1) + 0.05 for _ in range(70)]  # 16 pairs: more than one chunk
    assert sign_flip_p_many(many) == [_sign_flip_p(d, "two-sided") for d in many]
    with pytest.raises(ValueError):
        sign_flip_p_many([np.array([0.1, 0.0])])


def test_plugins_used_grouped_in_duckdb_equals_parsing_every_config(tmp_path: Path) -> None:
    import json
    from collections import Counter

    from kdgrid.store.db import open_store
    from kdgrid.store.queries import _plugins_used

    a = {"package": "my-kd", "version": "2.0", "settings_sha": "ab"}
    b = {"package": "other", "version": 1.1, "settings_sha": None}
    configs = [{}, {"plugins": {}}, {"plugins": {"losses.x": a}}, {"plugins": {"losses.x": a, "students.y": b}}]
    with open_store(tmp_path / "s.duckdb") as store:
        for i in range(12):
            cfg, status = configs[i % 4], ("done" if i % 5 else "failed")
            store.con.execute(
                "INSERT INTO runs (run_id, config, status) VALUES (?, ?, ?)", [f"r{i}", json.dumps(cfg), status]
            )
            for cell in ("c1", "c2") if i == 3 else ("c1",):  # a run in two cells counts once
                store.con.execute("INSERT INTO study_runs VALUES ('s', ?, ?)", [cell, f"r{i}"])
        got = _plugins_used(store, "s")
        # the per-run parse it replaced
        ref: Counter[tuple[str, str, str, str]] = Counter()
        for (config,) in store.con.execute(
            "SELECT config FROM runs WHERE run_id IN (SELECT run_id FROM study_runs WHERE study = 's') AND status = 'done'"
        ).fetchall():
            for key, p in json.loads(config).get("plugins", {}).items():
                ref[(key, str(p.get("package")), str(p.get("version")), str(p.get("settings_sha")))] += 1
    assert [(g.key, g.package, g.version, g.settings_sha, g.runs) for g in got] == [
        (*k, n) for k, n in sorted(ref.items())
    ]
    assert got and sum(g.runs for g in got) == sum(ref.values())


def describe_before(prep: object, confidence: float = 0.95) -> pd.DataFrame:
    """kdgrid.analyze.describe._describe at kdgrid integration 9387756 (a pandas group per cell)."""
    from kdgrid.analyze.describe import CELL_COLUMNS, mean_ci

    rows: list[dict[str, object]] = []
    data = prep.runs  # type: ignore[attr-defined]
    has_seed, factors = prep.has_seed, prep.factors  # type: ignore[attr-defined]
    data = data.sort_values(["task", "cell_rank"] + (["seed"] if has_seed else []), kind="mergesort")
    for (task, _rank), g in data.groupby(["task", "cell_rank"], sort=True):
        vals = g["value"].to_numpy(dtype=float)
        mean, sd, lo, hi = mean_ci(vals, confidence=confidence)
        first = g.iloc[0]
        row: dict[str, object] = {"task": task, "metric": first["metric"], "cell": first["cell"]}
        row.update({f: first[f] for f in factors})
        row.update(
            n=int(vals.size),
            mean=mean,
            sd=sd,
            ci_low=lo,
            ci_high=hi,
            seeds=g["seed"].tolist() if has_seed else [],
            values=vals.tolist(),
            stands_for=list(first["cells"]),
        )
        rows.append(row)
    out = pd.DataFrame(rows, columns=CELL_COLUMNS[:3] + factors + CELL_COLUMNS[3:])
    out["n"] = out["n"].astype("int64")
    return out


def test_describe_by_array_slices_equals_the_pandas_groups() -> None:
    from test_analyze_anova import collapsed

    from kdgrid.analyze.describe import _describe
    from kdgrid.analyze.tidy import prepare

    shuffled = table().sample(frac=1.0, random_state=4)
    cases = [
        prepare(shuffled, metric="auto", factors=["a", "b"]),
        prepare(shuffled.drop(columns="seed"), metric="auto", factors=["a", "b"]),
        prepare(collapsed(("stsb", "rte")), metric="pearson"),
    ]
    for prep in cases:
        pd.testing.assert_frame_equal(_describe(prep), describe_before(prep), check_exact=True)


def test_run_keys_from_one_groupby_equal_a_group_per_cell() -> None:
    from test_analyze_anova import collapsed

    from kdgrid.analyze.paired import run_keys
    from kdgrid.analyze.tidy import level_key, prepare

    df = collapsed(("stsb", "rte")).sample(frac=1.0, random_state=2)
    prep = prepare(df, metric="pearson")
    got = run_keys(prep, df)
    # the loop it replaced (kdgrid integration 9387756): one pandas group per (task, cell)
    label = [
        ", ".join(f"{prep.short[f]}={level_key(v)}" for f, v in zip(prep.factors, vals))
        for vals in zip(*(df[f] for f in prep.factors))
    ]
    src = pd.DataFrame({"task": df["task"].astype(str).to_numpy(), "cell": label, "run_id": df["run_id"].to_numpy()})
    expected: dict[tuple[str, str], tuple[object, ...]] = {}
    for (t, c), grp in src.groupby(["task", "cell"], sort=False):
        expected[(str(t), str(c))] = tuple(sorted(map(str, grp["run_id"].unique())))
    assert got == {k: expected[k] for k in got} and len(got) == len(expected)


@pytest.mark.parametrize("sort", [True, False])
def test_group_rows_are_pandas_groups_in_pandas_order(sort: bool) -> None:
    from kdgrid.analyze.tidy import group_rows

    rng = np.random.default_rng(9)
    frame = pd.DataFrame(
        {
            "task": rng.choice(["stsb", "cola", "rte"], size=300),
            "cell": rng.choice([f"a={i}" for i in range(12)], size=300),
            "k": rng.choice([1.0, 2.0, np.nan], size=300),  # a missing key: its rows are in no group
        }
    ).set_index(pd.Index(rng.permutation(300) * 3))  # positions, not labels
    for keys in (["task"], ["task", "cell"], ["cell", "k"]):
        expected = [frame.index.get_indexer(g.index) for _, g in frame.groupby(keys, sort=sort)]
        got = group_rows(frame, keys, sort=sort)
        assert len(got) == len(expected) and all(np.array_equal(a, b) for a, b in zip(got, expected))
    assert group_rows(frame.iloc[:0], ["task"], sort=sort) == []


def test_efficiency_reusing_one_prepare_equals_a_prepare_per_measure() -> None:
    from kdgrid.analyze.efficiency import EFFICIENCY_COLUMNS, efficiency_table

    base = table().assign(throughput_ex_s=lambda d: 100.0 + d["seed"], peak_memory_mb=50.0)
    holes = base.copy()
    holes.loc[holes.index[::7], "latency_ms"] = np.nan  # another set of runs for this measure: its own prepare
    no_seed_value = base.astype({"seed": float})
    no_seed_value.loc[no_seed_value.index[:3], "seed"] = np.nan  # rows prepare drops for every measure
    measures = ("params", "latency_ms", "throughput_ex_s", "peak_memory_mb")
    for frame in (base, holes, no_seed_value, base.drop(columns="seed")):
        for baseline in (None, {"a": "l1"}):
            got, _ = efficiency_table(frame, factors=["a", "b"], baseline=baseline, measures=measures)
            one_by_one = [
                efficiency_table(frame, factors=["a", "b"], baseline=baseline, measures=(m,))[0] for m in measures
            ]
            expected = pd.concat(one_by_one, ignore_index=True)[list(EFFICIENCY_COLUMNS)]
            pd.testing.assert_frame_equal(got, expected, check_exact=True)
