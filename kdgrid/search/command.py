"""What ``kdgrid search FILE [--trials N] [--confirm K] [--workers N ...]`` does, for the thin CLI command."""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from kdgrid.errors import KdgridError
from kdgrid.execute.job import Runner
from kdgrid.execute.progress import RichReporter
from kdgrid.search.confirm import confirmation_result, run_confirmation
from kdgrid.search.journal import budget, journal_path
from kdgrid.search.loop import SearchJob, TrialEnd, run_search
from kdgrid.search.report import build_search_report, confirmation_renderables, short_params, summary_lines
from kdgrid.study.loader import LoadedStudy
from kdgrid.study.schema import Execute

EXIT_INTERRUPTED = 130
EXIT_NO_RESULT = 2


def trial_line(end: TrialEnd) -> str:
    """``trial 3: alpha=0.31, temperature=2.4 -> complete 0.4120; best 0.4120 (trial 3)`` (rich markup)."""
    shown = f"{end.value:.4f}" if end.value is not None else "-"
    colour = {"complete": "green", "pruned": "yellow"}.get(end.state, "red")
    best = f"; best {end.best[1]:.4f} (trial {end.best[0]})" if end.best else ""
    why = f": {end.error}" if end.error else ""
    return (
        f"{escape(f'trial {end.number}: {short_params(end.params)}')} -> [{colour}]{end.state}[/{colour}] "
        f"{shown}{best}{escape(why)}"
    )


def search_main(
    db: Path,
    loaded: LoadedStudy,
    *,
    trials: int | None = None,
    execute: Execute | None = None,
    confirm: int | None = None,
    console: Console | None = None,
    err_console: Console | None = None,
    runner: Runner | None = None,
) -> int:
    """Run (or resume) the search to its budget, print the summary, then confirm if asked; the exit code.

    ``execute``: how the trials' runs execute, as for ``kdgrid run`` (None: in this process, no retries).
    """
    console = console or Console()
    err_console = err_console or Console(stderr=True)
    search = loaded.study.search
    if search is None:
        raise KdgridError(f"{loaded.path}: no 'search:' block (see docs/search.md)")
    deadline = time.time() + search.timeout_s if search.timeout_s else None
    job = SearchJob(db, loaded, budget(search, trials), deadline)
    try:
        interrupted = run_search(
            job,
            runner=runner,
            execute=execute,
            reporter=RichReporter(err_console, "trial runs"),
            on_trial=lambda end: err_console.print(trial_line(end), highlight=False),
        ).interrupted
    except KeyboardInterrupt:
        interrupted = True
    rep = build_search_report(db, loaded.study.name, importances=False)
    for line in summary_lines(rep):
        console.print(line, highlight=False)
    console.print(
        f"journal: {journal_path(db, loaded.study.name)}; report: kdgrid report --search {loaded.study.name}",
        highlight=False,
    )
    if interrupted:
        err_console.print("interrupted: run 'kdgrid search' again to continue (finished trials are kept)")
        return EXIT_INTERRUPTED
    if rep.best is None:
        err_console.print("no trial completed; see the errors above ('kdgrid status' lists failed runs)")
        return EXIT_NO_RESULT
    if confirm is not None:
        try:
            conf = run_confirmation(
                db, loaded, confirm, runner=runner, execute=execute, reporter=RichReporter(err_console)
            )
        except KeyboardInterrupt:
            err_console.print("interrupted: run 'kdgrid search --confirm' again to continue")
            return EXIT_INTERRUPTED
        console.print(
            f"confirmation: trial {conf.best_number}'s settings vs the baseline "
            f"({_baseline_text(conf.baseline)}) on fresh seeds {conf.seeds}",
            highlight=False,
        )
        for run_id, error in conf.errors[:5]:
            err_console.print(f"  failed {run_id}: {error}")
        result = confirmation_result(db, loaded.study.name, search.metric)
        if result is None:
            err_console.print("no confirmation run finished")
            return EXIT_NO_RESULT
        for part in confirmation_renderables(result):
            console.print(part)
    return 0


def _baseline_text(baseline: dict[str, object]) -> str:
    return ", ".join(f"{k}={v}" for k, v in baseline.items()) or "the study's base run"
