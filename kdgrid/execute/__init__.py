"""Execute: the coordinator that runs planned runs and ingests their results (torch-free)."""

from kdgrid.execute.local import GridOutcome, run_grid

__all__ = ["GridOutcome", "run_grid"]
