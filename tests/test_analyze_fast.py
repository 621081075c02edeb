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
