"""Nemenyi p values of every pair of k cells: kdgrid's ``nemenyi_p`` vs the scikit-posthocs call it replaced.

``scikit_posthocs.posthoc_nemenyi_friedman`` evaluates scipy's studentized-range survival function (a numerical
integration) once per pair: k(k-1)/2 integrals, 499,500 at 1,000 cells, which was most of a 10,000-run report
(bench/README.md, section 6). The p value depends only on the difference of two rank sums, and twice a rank sum is
an integer, so ``kdgrid.analyze.pooled.nemenyi_p`` integrates once per distinct difference (at most 2·N·(k-1)+1).
Both run in turn on the same rank matrix (N blocks x k cells of random scores, few levels so there are ties);
the script prints the ratio of their median times and the largest difference between their p values.

    python bench/nemenyi.py                    # k = 300 cells, 10 blocks, 3 rounds
    python bench/nemenyi.py --cells 1000       # the 10,000-run report's size (scikit-posthocs: ~1-2 min a round)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cells", type=int, default=300)
    ap.add_argument("--blocks", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()

    import numpy as np
    import scikit_posthocs as sp
    from scipy import stats

    from kdgrid.analyze.pooled import nemenyi_p

    C.header("Nemenyi p of all pairs: kdgrid nemenyi_p vs scikit_posthocs.posthoc_nemenyi_friedman",
             cells=args.cells, blocks=args.blocks, rounds=args.rounds)
    rng = np.random.default_rng(0)
    values = rng.integers(0, 50, size=(args.blocks, args.cells)).astype(float)
    ranks = stats.rankdata(-values, axis=1, method="average")
    ia, ib = np.triu_indices(args.cells, 1)
    out: dict[str, np.ndarray] = {}

    def timed(name: str, fn: object) -> float:
        t0 = time.perf_counter()
        out[name] = fn()  # type: ignore[operator]
        return time.perf_counter() - t0

    times = C.alternate({
        "scikit-posthocs": lambda: timed("scikit-posthocs", lambda: sp.posthoc_nemenyi_friedman(values).to_numpy()[ia, ib]),
        "kdgrid": lambda: timed("kdgrid", lambda: nemenyi_p(ranks, ia, ib)),
    }, repeats=args.rounds)
    r, lo, hi = C.paired_ratio(times["scikit-posthocs"], times["kdgrid"])
    diff = float(np.max(np.abs(out["kdgrid"] - out["scikit-posthocs"])))
    print(f"   pairs {len(ia)}; seconds (median): scikit-posthocs {C.median(times['scikit-posthocs']):.3f}, "
          f"kdgrid {C.median(times['kdgrid']):.3f}")
    print(f"   RATIO scikit-posthocs / kdgrid time: {r:.1f} [{lo:.1f}-{hi:.1f}]; max |p difference| {diff:.2e}")


if __name__ == "__main__":
    main()
