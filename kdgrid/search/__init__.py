"""Optuna searches whose trials are ordinary kdgrid runs (docs/search.md).

Modules: ``space`` (the ``search:`` block checked against the study, sampling), ``journal`` (the
Optuna study beside the store: sampler, pruner, trial bookkeeping), ``loop`` (a search session: ask,
run the trials' runs through the grid scheduler ``kdgrid.execute.run_grid``, tell), ``confirm`` (best
settings vs the baseline on fresh seeds), ``report`` (best settings, history, importances, slices,
confirmation). Nothing here imports torch: trials run through ``kdgrid.execute``.
"""

from __future__ import annotations

from kdgrid.search.space import check_search

__all__ = ["check_search"]
