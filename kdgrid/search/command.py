"""What ``kdgrid search FILE [--trials N] [--workers N] [--confirm K]`` does, for the thin CLI command."""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console

from kdgrid.errors import KdgridError
from kdgrid.search.confirm import confirmation_result, run_confirmation
from kdgrid.search.journal import budget
from kdgrid.search.locks import journal_path
from kdgrid.search.loop import Runner, SearchJob, default_runner, run_search
from kdgrid.search.progress import RichSearchReporter
from kdgrid.search.report import build_search_report, confirmation_renderables, summary_lines
from kdgrid.search.worker import runner_from_env
from kdgrid.study.loader import LoadedStudy

EXIT_INTERRUPTED = 130
EXIT_NO_RESULT = 2


def search_main(db: Path, loaded: LoadedStudy, *, trials: int | None = None, workers: int = 1,
                confirm: int | None = None, console: Console | None = None, err_console: Console | None = None,
                runner: Runner | None = None) -> int:
    """Run (or resume) the search to its budget, print the summary, then confirm if asked; the exit code."""
    console = console or Console()
    err_console = err_console or Console(stderr=True)
    search = loaded.study.search
    if search is None:
        raise KdgridError(f"{loaded.path}: no 'search:' block (see docs/search.md)")
    if workers < 1:
        raise KdgridError(f"--workers: {workers} (allowed: 1 or more)")
    runner = runner or runner_from_env() or default_runner()
    deadline = time.time() + search.timeout_s if search.timeout_s else None
    job = SearchJob(db, loaded, budget(search, trials), deadline)
    reporter = RichSearchReporter(err_console)
    interrupted = False
    try:
        if workers > 1:
            from kdgrid.search.workers import run_workers

            # Worker processes use the real runner (or KDGRID_SEARCH_RUNNER): a function cannot cross processes.

            run_workers(job, workers, reporter=reporter)
        else:
            interrupted = run_search(job, runner=runner, reporter=reporter).interrupted
    except KeyboardInterrupt:
        interrupted = True
    rep = build_search_report(db, loaded.study.name, importances=False)
    for line in summary_lines(rep):
        console.print(line, highlight=False)
    console.print(f"journal: {journal_path(db, loaded.study.name)}; report: kdgrid report --search {loaded.study.name}",
                  highlight=False)
    if interrupted:
        err_console.print("interrupted: run 'kdgrid search' again to continue (finished trials are kept)")
        return EXIT_INTERRUPTED
    if rep.best is None:
        err_console.print("no trial completed; see the errors above ('kdgrid status' lists failed runs)")
        return EXIT_NO_RESULT
    if confirm is not None:
        from kdgrid.execute.progress import RichReporter

        try:
            conf = run_confirmation(db, loaded, confirm, runner=runner, reporter=RichReporter(err_console))
        except KeyboardInterrupt:
            err_console.print("interrupted: run 'kdgrid search --confirm' again to continue")
            return EXIT_INTERRUPTED
        console.print(f"confirmation: trial {conf.best_number}'s settings vs the baseline "
                      f"({_baseline_text(conf.baseline)}) on fresh seeds {conf.seeds}", highlight=False)
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
