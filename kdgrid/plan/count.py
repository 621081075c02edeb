"""How many runs a study plans, from the grid's arithmetic alone (nothing is expanded).

``kdgrid validate``, ``plan``, ``run`` and ``search`` refuse a plan larger than a limit before
expanding it, so ``seeds: 100000000`` is answered at once instead of after minutes of expansion.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from kdgrid.errors import PlanError
from kdgrid.study.schema import DEFAULT_PLAN_LIMIT, Study


@dataclass(frozen=True)
class PlanSize:
    """Runs a study expands to before include/exclude, and the factors of that product.

    ``factors``: (study key path, level count) for tasks, every grid factor, every variant group
    and seeds; ``runs`` is their product (an upper bound: include/exclude only remove runs).
    """

    runs: int
    factors: tuple[tuple[tuple[str, ...], int], ...]


def plan_size(study: Study) -> PlanSize:
    """tasks x (levels of each grid factor) x (levels of each variant group) x seeds, as a product."""
    seeds = study.seeds if isinstance(study.seeds, int) else len(study.seeds)
    factors = (
        (("tasks",), len(study.tasks)),
        *((("grid", path), len(levels)) for path, levels in study.grid.items()),
        *((("variants", group), len(levels)) for group, levels in study.variants.items()),
        (("seeds",), seeds),
    )
    return PlanSize(runs=math.prod(n for _, n in factors), factors=factors)


def check_plan_size(study: Study, limit: int | None = None) -> int:
    """The planned run count; :class:`PlanError` at the largest factor when it exceeds the limit.

    ``limit``: from ``--plan-limit``; else the study's ``plan_limit``; else DEFAULT_PLAN_LIMIT.
    """
    size = plan_size(study)
    cap = limit if limit is not None else (study.plan_limit or DEFAULT_PLAN_LIMIT)
    if size.runs > cap:
        loc, _ = max(size.factors, key=lambda f: f[1])
        product = " x ".join(_factor_text(k, n) for k, n in size.factors)
        raise PlanError(
            f"{'.'.join(loc)}: the study plans {size.runs} runs ({product}), more than the limit of {cap}; "
            f"set plan_limit: N in the study or pass --plan-limit N if you mean it",
            loc=loc,
        )
    return size.runs


def _factor_text(loc: tuple[str, ...], n: int) -> str:
    if len(loc) == 1:  # tasks, seeds
        return f"{n} {loc[0] if n != 1 else loc[0][:-1]}"
    return f"{n} {loc[1]}"
