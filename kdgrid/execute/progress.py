"""A rich progress display for a grid: one bar for the grid, one for each run in flight."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from kdgrid.execute.ledger import Reporter
from kdgrid.plan.expand import PlannedRun
from kdgrid.records import RunResult


class RichReporter(Reporter):
    def __init__(self, console: Console | None = None, label: str = "grid") -> None:
        self.console = console or Console(stderr=True)
        self.label = label  # what the overall bar counts ('grid'; a search's round of trials)
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
        )
        self.grid: TaskID | None = None
        self.runs: dict[str, tuple[TaskID, str]] = {}  # run_id -> (bar, description)
        self.last: str | None = None  # the run that progress without a run id belongs to

    def grid_start(self, total: int, todo: int) -> None:
        self.progress.start()
        self.grid = self.progress.add_task(f"{self.label} ({total - todo} of {total} already done)", total=todo)

    def run_start(self, index: int, run: PlannedRun) -> None:
        self._drop(run.run_id)
        desc = f"  {run.task} seed={run.seed} {run.cell}"
        self.runs[run.run_id] = (self.progress.add_task(desc, total=None), desc)
        self.last = run.run_id

    def run_progress(self, stage: str, epoch: int, step: int, total_steps: int, run_id: str | None = None) -> None:
        bar = self.runs.get(run_id or self.last or "")
        if bar is None:
            return
        self.progress.update(bar[0], description=f"{bar[1]} | {stage} epoch {epoch}", completed=step, total=total_steps)

    def run_retry(self, run: PlannedRun, result: RunResult, attempt: int) -> None:
        self.console.print(
            f"[yellow]run {run.run_id} failed, trying again (attempt {attempt}):[/yellow] {result.get('error')}",
            highlight=False,
        )

    def run_end(self, run: PlannedRun, result: RunResult) -> None:
        self._drop(run.run_id)
        if self.grid is not None:
            self.progress.advance(self.grid)
        if result["status"] != "done":
            self.console.print(f"[red]run {run.run_id} failed:[/red] {result.get('error')}", highlight=False)

    def grid_end(self) -> None:
        for run_id in list(self.runs):
            self._drop(run_id)
        self.progress.stop()

    def _drop(self, run_id: str) -> None:
        bar = self.runs.pop(run_id, None)
        if bar is not None:
            self.progress.remove_task(bar[0])
