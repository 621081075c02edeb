"""Optuna searches whose trials are ordinary kdgrid runs (docs/search.md).

Modules: ``space`` (the ``search:`` block checked against the study, sampling), ``loop`` (one
search process: resumable, shareable through the Optuna journal), ``workers`` (N processes on one
search), ``confirm`` (best settings vs the baseline on fresh seeds), ``report`` (best settings,
history, importances, slices, confirmation). Nothing here imports torch: trials run through the
runner (``kdgrid.train.run.run_one``).
"""

from __future__ import annotations

from kdgrid.search.space import check_search

__all__ = ["check_search"]
