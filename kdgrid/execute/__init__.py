"""Execute: the coordinator that runs planned runs and ingests their results (torch-free).

Imports are lazy so a worker process (``python -m kdgrid.execute.worker``) starts without
DuckDB or Pydantic; ``from kdgrid.execute import run_grid`` works as before.
"""

from __future__ import annotations

from typing import Any

__all__ = ["GridOutcome", "run_grid"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from kdgrid.execute import local

        return getattr(local, name)
    raise AttributeError(f"module 'kdgrid.execute' has no attribute {name!r}")
