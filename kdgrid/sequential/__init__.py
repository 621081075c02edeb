"""Sequential studies: run seeds in looks until every comparison is decided (docs/sequential.md).

On top of ``execute`` and ``analyze`` (as ``search`` is): :mod:`.plan` turns a study with
``analysis.sequential`` into comparisons and looks, :mod:`.state` reads the store and decides each
comparison with :func:`kdgrid.analyze.sequential.sequential_test`, :mod:`.driver` runs the next looks
through :func:`kdgrid.execute.local.run_grid`. Torch-free: ``plan``, ``status`` and ``report`` use it.
"""

from __future__ import annotations

from kdgrid.sequential.plan import Comparison, SequentialPlan, check_sequential, plan_sequential
from kdgrid.sequential.state import ComparisonState, comparison_states, runs_needed, states_frame, study_states

__all__ = [
    "Comparison",
    "ComparisonState",
    "SequentialPlan",
    "check_sequential",
    "comparison_states",
    "plan_sequential",
    "runs_needed",
    "states_frame",
    "study_states",
]
