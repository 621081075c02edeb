"""``kdgrid run`` for a sequential study: run a look, decide from the store, run the next look, ...

Every pass asks the store for each comparison's state, plans the runs the undecided comparisons
need through their next look (and every run of the looks before, so the study's membership in the
store is all its looks), and hands them to :func:`kdgrid.execute.local.run_grid`, which runs only
what is not done. Interrupt it at any point: the next ``kdgrid run`` recomputes the same states
from the stored results and carries on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from kdgrid.execute.local import GridOutcome, Reporter, Runner, run_grid
from kdgrid.sequential.plan import SequentialPlan
from kdgrid.sequential.state import ComparisonState, runs_needed, states_from_store
from kdgrid.study.loader import LoadedStudy
from kdgrid.study.schema import Execute


@dataclass
class SequentialOutcome:
    passes: int = 0
    grids: list[GridOutcome] = field(default_factory=list)
    states: list[ComparisonState] = field(default_factory=list)

    @property
    def done(self) -> int:
        return sum(g.done for g in self.grids)

    @property
    def failed(self) -> int:
        return sum(g.failed for g in self.grids)

    @property
    def interrupted(self) -> bool:
        return any(g.interrupted for g in self.grids)

    @property
    def errors(self) -> list[tuple[str, str]]:
        return [e for g in self.grids for e in g.errors]


def run_sequential(
    db: Path,
    loaded: LoadedStudy,
    plan: SequentialPlan,
    *,
    execute: Execute | None = None,
    reporter: Reporter | None = None,
    runner: Runner | None = None,
    max_runs: int | None = None,
) -> SequentialOutcome:
    """Run looks until every comparison is different, equivalent or inconclusive at its last look."""
    out = SequentialOutcome()
    budget = max_runs
    previous: set[str] | None = None
    while True:
        states = states_from_store(db, plan)
        out.states = states
        needed = runs_needed(plan, states)
        ids = {r.run_id for r in needed}
        if ids == previous:  # nothing new to run: every comparison is decided, or its runs cannot finish
            return out
        previous = ids
        grid = run_grid(
            db,
            study_name=loaded.study.name,
            study_path=str(loaded.path),
            study_text=loaded.text,
            study_sha=loaded.sha256,
            planned=needed,
            runner=runner,
            reporter=reporter,
            max_runs=budget,
            execute=execute,
        )
        out.grids.append(grid)
        out.passes += 1
        if budget is not None:
            budget -= grid.done + grid.failed
        if grid.interrupted or grid.elsewhere or (budget is not None and budget <= 0):
            out.states = states_from_store(db, plan)
            return out
