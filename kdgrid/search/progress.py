"""What a search tells its display: a bar over trials, one over the current run, a line per trial."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from kdgrid.plan.expand import PlannedRun


class SearchReporter(Protocol):
    def search_start(self, name: str, target: int, used: int) -> None: ...
    def trial_start(self, number: int, params: Mapping[str, Any]) -> None: ...
    def run_start(self, index: int, total: int, run: PlannedRun) -> None: ...
    def run_progress(self, stage: str, epoch: int, step: int, total_steps: int) -> None: ...
    def trial_end(self, number: int, state: str, value: float | None, error: str | None,
                  best: tuple[int, float] | None) -> None: ...
    def search_end(self) -> None: ...


class NullSearchReporter:
    def search_start(self, name: str, target: int, used: int) -> None: ...
    def trial_start(self, number: int, params: Mapping[str, Any]) -> None: ...
    def run_start(self, index: int, total: int, run: PlannedRun) -> None: ...
    def run_progress(self, stage: str, epoch: int, step: int, total_steps: int) -> None: ...
    def trial_end(self, number: int, state: str, value: float | None, error: str | None,
                  best: tuple[int, float] | None) -> None: ...
    def search_end(self) -> None: ...


def short_params(params: Mapping[str, Any]) -> str:
    """``alpha=0.31, temperature=2.4``: the last part of each dotted path, floats to 4 significant digits."""
    def fmt(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    return ", ".join(f"{k.rsplit('.', 1)[-1]}={fmt(v)}" for k, v in params.items())


class RichSearchReporter:
    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), console=self.console, transient=False)
        self.trials: TaskID | None = None
        self.run: TaskID | None = None
        self._desc = ""
        self._params = ""

    def search_start(self, name: str, target: int, used: int) -> None:
        self.progress.start()
        self.trials = self.progress.add_task(f"search {name}", total=target, completed=used)

    def trial_start(self, number: int, params: Mapping[str, Any]) -> None:
        self._params = f"trial {number}: {short_params(params)}"

    def run_start(self, index: int, total: int, run: PlannedRun) -> None:
        if self.run is not None:
            self.progress.remove_task(self.run)
        self._desc = f"  {self._params} | run {index + 1}/{total} {run.task} seed={run.seed}"
        self.run = self.progress.add_task(self._desc, total=None)

    def run_progress(self, stage: str, epoch: int, step: int, total_steps: int) -> None:
        if self.run is not None:
            self.progress.update(self.run, description=f"{self._desc} | {stage} epoch {epoch}",
                                 completed=step, total=total_steps)

    def trial_end(self, number: int, state: str, value: float | None, error: str | None,
                  best: tuple[int, float] | None) -> None:
        if self.trials is not None:
            self.progress.advance(self.trials)
        shown = f"{value:.4f}" if value is not None else "-"
        colour = {"complete": "green", "pruned": "yellow"}.get(state, "red")
        best_txt = f"; best {best[1]:.4f} (trial {best[0]})" if best else ""
        why = f": {error}" if error else ""
        self.progress.console.print(f"{escape(self._params)} -> [{colour}]{state}[/{colour}] {shown}{best_txt}{escape(why)}",
                                    highlight=False)

    def search_end(self) -> None:
        if self.run is not None:
            self.progress.remove_task(self.run)
            self.run = None
        self.progress.stop()
