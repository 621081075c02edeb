"""Plan: expand a study into resolved runs with stable ids (torch-free)."""

from kdgrid.plan.canonical import canonical_config, run_id_of
from kdgrid.plan.count import PlanSize, check_plan_size, plan_size
from kdgrid.plan.expand import PlannedRun, expand, plan_study, summarize

__all__ = [
    "PlanSize",
    "PlannedRun",
    "canonical_config",
    "check_plan_size",
    "expand",
    "plan_size",
    "plan_study",
    "run_id_of",
    "summarize",
]
