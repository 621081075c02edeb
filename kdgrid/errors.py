"""One exception family for every error a user can cause or fix.

The CLI turns any :class:`KdgridError` into a single ``Error: ...`` line and a
non-zero exit, in one place (``kdgrid.cli``); library code never prints.
"""

from __future__ import annotations


class KdgridError(Exception):
    """Base of every error kdgrid reports to a user as one clean line."""


class StudyError(KdgridError):
    """The study file is unreadable, not YAML, or fails validation."""


class PlanError(KdgridError):
    """The grid expands to nothing, or an expanded run is invalid.

    ``loc`` is the place in the study file (a key path) when one is known, so the
    CLI can point at the line.
    """

    def __init__(self, message: str, *, loc: tuple[object, ...] = ()) -> None:
        super().__init__(message)
        self.loc = loc


class DataError(KdgridError):
    """A data directory, data file or dataset cannot serve a task."""


class ModelError(KdgridError):
    """A model path or hub id cannot be loaded, or a model shape is invalid."""


class StoreError(KdgridError):
    """The DuckDB file is not a kdgrid store, is locked, or cannot be written."""


class StoreBusy(StoreError):
    """Another process holds the DuckDB file's lock (and kept it longer than this opening would wait)."""


class RunFailed(KdgridError):
    """A single run failed in a way that must not stop the grid (NaN loss, ...)."""

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


class PluginError(PlanError):
    """A registered plug-in is missing, broken, registered twice, or cannot serve a study (a plan problem)."""
