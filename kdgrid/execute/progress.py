"""A rich progress display for a grid: one bar for the grid, one for the current run."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from kdgrid.plan.expand import PlannedRun


class RichReporter:
    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
            console=self.console, transient=False,
        )
        self.grid: TaskID | None = None
        self.run: TaskID | None = None
        self._desc = ""

    def grid_start(self, total: int, todo: int) -> None:
        self.progress.start()
        self.grid = self.progress.add_task(f"grid ({total - todo} of {total} already done)", total=todo)

    def run_start(self, index: int, run: PlannedRun) -> None:
        if self.run is not None:
            self.progress.remove_task(self.run)
        self._desc = f"  {run.task} seed={run.seed} {run.cell}"
        self.run = self.progress.add_task(self._desc, total=None)

    def run_progress(self, stage: str, epoch: int, step: int, total_steps: int) -> None:
        if self.run is None:
            return
        self.progress.update(self.run, description=f"{self._desc} | {stage} epoch {epoch}", completed=step, total=total_steps)

    def run_end(self, run: PlannedRun, result: dict[str, Any]) -> None:
        if self.grid is not None:
            self.progress.advance(self.grid)
        if result["status"] != "done":
            self.console.print(f"[red]run {run.run_id} failed:[/red] {result.get('error')}")

    def grid_end(self) -> None:
        self.progress.stop()
