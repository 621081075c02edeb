"""The ``kdgrid`` command line: thin Typer commands over the library.

Every :class:`KdgridError` becomes one ``Error: ...`` line and exit code 1, here
and nowhere else. Heavy imports (torch, transformers, analysis) happen inside the
commands that need them, so ``--help``, ``validate``, ``plan`` and ``status`` start fast.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from kdgrid import __version__
from kdgrid.errors import KdgridError, PlanError, StudyError

app = typer.Typer(
    name="kdgrid",
    help="Declarative knowledge-distillation studies: validate, plan, run, report, search.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)

DbOption = Annotated[
    Path | None,
    typer.Option("--db", help="DuckDB store (default: $KDGRID_DB or ./kdgrid.duckdb).", show_default=False),
]
StudyArg = Annotated[Path, typer.Argument(help="Study file (YAML).", show_default=False)]
PlanLimitOption = Annotated[
    int | None,
    typer.Option(
        "--plan-limit",
        min=1,
        show_default=False,
        help="Most runs the plan may have (default: the study's plan_limit, else 10000).",
    ),
]

# How runs execute: one definition for 'kdgrid run' and 'kdgrid search' (resolved by kdgrid.execute.settings).
WorkersOption = Annotated[
    int | None,
    typer.Option(
        help="Worker processes, one run each (0: in this process). Default: execute.workers, 1.", show_default=False
    ),
]
GpusOption = Annotated[
    str | None,
    typer.Option(help="GPUs for the workers, one slot each: 0,1 (0,0,1,1: two slots per GPU).", show_default=False),
]
TimeoutOption = Annotated[
    float | None,
    typer.Option("--timeout", help="Seconds a run may take; then it fails (not retried).", show_default=False),
]
RetriesOption = Annotated[
    int | None,
    typer.Option(
        help="More attempts for failures that can pass (killed worker, out of memory). Default: 1.", show_default=False
    ),
]
ExecutorOption = Annotated[
    str | None, typer.Option(help="local | slurm (a Slurm job array through submitit).", show_default=False)
]
SlurmOption = Annotated[
    str | None,
    typer.Option(
        help="Slurm settings as key=value,...: partition, gpus_per_run, time_min, array_parallelism, ...",
        show_default=False,
    ),
]


def _db(db: Path | None) -> Path:
    from kdgrid.store.db import default_db_path

    return db if db is not None else default_db_path()


def _load_and_plan(path: Path, plan_limit: int | None = None) -> tuple[Any, list[Any]]:
    from kdgrid.plan import check_plan_size, plan_study
    from kdgrid.study import load_study

    loaded = load_study(path)
    try:
        check_plan_size(loaded.study, plan_limit)  # first: the search checks below list the study's seeds
        if loaded.study.search is not None:
            from kdgrid.search import check_search

            check_search(loaded)  # a bad search block makes the whole file invalid, as any other block would
        runs = plan_study(loaded.study, plan_limit=plan_limit)
    except PlanError as exc:
        line = loaded.line_of(exc.loc) if exc.loc else None
        where = f"{path}:{line}" if line else str(path)
        raise StudyError(f"{where}: {exc}") from None
    if loaded.study.analysis.sequential is not None:
        from kdgrid.sequential import check_sequential

        check_sequential(loaded.study, runs, str(path))  # bad comparisons, margins or seed counts: invalid file
    return loaded, runs


def _check_data(runs: list[Any]) -> None:
    """Every task's train and dev files exist where the runs will read them (before any compute)."""
    from kdgrid.train.data import data_fingerprint  # torch-free module

    for task, data_dir in sorted({(r.task, r.config.data.dir) for r in runs}, key=str):
        for split in ("train", "dev"):
            data_fingerprint(task, split, data_dir)


@app.command()
def validate(study: StudyArg, plan_limit: PlanLimitOption = None) -> None:
    """Check a study file and every run it expands to; no compute, nothing written."""
    from kdgrid.plan import summarize

    loaded, runs = _load_and_plan(study, plan_limit)
    _check_data(runs)
    s = summarize(runs)
    console.print(
        f"{study}: ok: study '{loaded.study.name}', {s['runs']} runs ({s['unique_runs']} unique) "
        f"in {s['cells']} cells over {s['tasks']} task(s) x {s['seeds']} seed(s)"
    )
    if loaded.study.search is not None:
        from kdgrid.search.space import describe_search

        console.print(describe_search(loaded.study), highlight=False)


@app.command()
def plugins(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line instead of a table.")] = False,
) -> None:
    """List the registered loss terms, mappings, student builders and metrics, with package and version."""
    from kdgrid.plugins import KINDS, registry

    reg = registry()
    rows = [
        (
            kind,
            e.spec.name,
            e.source.package,
            e.source.version,
            e.spec.description,
            ", ".join(e.spec.settings.model_fields) or "-",
        )
        for kind in KINDS
        for e in reg.entries(kind)
    ]
    if as_json:
        keys = ("kind", "name", "package", "version", "description", "settings")
        for row in rows:
            typer.echo(json.dumps(dict(zip(keys, row))))
        return
    table = Table(title="Registered plug-ins (docs/plugins.md)")
    for col in ("kind", "name", "package", "version", "settings", "description"):
        table.add_column(col, overflow="fold")
    for kind, name, package, version, description, settings in rows:
        table.add_row(kind, name, package, version, settings, description)
    console.print(table)


@app.command()
def schema() -> None:
    """Print the JSON Schema of the study file (for editor completion)."""
    from kdgrid.study.schema import Study

    typer.echo(json.dumps(Study.model_json_schema(), indent=2))


@app.command()
def plan(
    study: StudyArg,
    db: DbOption = None,
    limit: Annotated[int, typer.Option(help="Rows to show (0: all).")] = 50,
    plan_limit: PlanLimitOption = None,
) -> None:
    """Show the runs a study expands to, and which are already done."""
    from kdgrid.plan import summarize
    from kdgrid.store.db import open_store

    loaded, runs = _load_and_plan(study, plan_limit)
    seq_plan = None
    if loaded.study.analysis.sequential is not None:  # the table shows the first look; the summary the maximum
        from kdgrid.sequential import plan_sequential

        seq_plan = plan_sequential(loaded.study, runs, path=str(study))
        runs = seq_plan.first_look_runs()
    path = _db(db)
    statuses: dict[str, str] = {}
    if path.exists():
        with open_store(path, read_only=True) as store:
            statuses = store.run_statuses(r.run_id for r in runs)
    factor_names = list(runs[0].factors)
    table = Table(title=f"study {loaded.study.name}")
    for col in ["run_id", "task", *factor_names, "seed", "status"]:
        table.add_column(col)
    shown = runs if limit == 0 else runs[:limit]
    for r in shown:
        table.add_row(
            r.run_id, r.task, *(r.factors[f] for f in factor_names), str(r.seed), statuses.get(r.run_id, "new")
        )
    console.print(table)
    if len(shown) < len(runs):
        console.print(f"... {len(runs) - len(shown)} more rows (--limit 0 shows all)")
    s = summarize(runs)
    done = sum(1 for rid in {r.run_id for r in runs} if statuses.get(rid) == "done")
    console.print(
        f"{s['runs']} runs, {s['unique_runs']} unique, {s['cells']} cells, {s['tasks']} task(s), "
        f"{s['seeds']} seed(s): {done} done, {s['unique_runs'] - done} to run"
    )
    if seq_plan is not None:
        from kdgrid.sequential.command import plan_summary

        plan_summary(seq_plan, console)


@app.command()
def run(
    study: StudyArg,
    db: DbOption = None,
    retry_failed: Annotated[bool, typer.Option("--retry-failed", help="Also rerun runs that failed before.")] = False,
    max_runs: Annotated[int | None, typer.Option(help="Stop after this many runs (for smoke tests).")] = None,
    workers: WorkersOption = None,
    gpus: GpusOption = None,
    timeout: TimeoutOption = None,
    retries: RetriesOption = None,
    executor: ExecutorOption = None,
    slurm: SlurmOption = None,
    plan_limit: PlanLimitOption = None,
) -> None:
    """Run every run of a study that is not done yet (resumable; finished runs are never redone). docs/execution.md"""
    from kdgrid.execute.local import run_grid
    from kdgrid.execute.progress import RichReporter
    from kdgrid.execute.settings import resolve_execute

    loaded, runs = _load_and_plan(study, plan_limit)
    execute = resolve_execute(
        loaded.study.execute,
        executor=executor,
        workers=workers,
        gpus=gpus,
        timeout_s=timeout,
        retries=retries,
        slurm=slurm,
    )
    _check_data(runs)
    if loaded.study.analysis.sequential is not None:
        _run_sequential(study, loaded, runs, _db(db), execute, retry_failed=retry_failed, max_runs=max_runs)
        return
    outcome = run_grid(
        _db(db),
        study_name=loaded.study.name,
        study_path=str(study),
        study_text=loaded.text,
        study_sha=loaded.sha256,
        planned=runs,
        reporter=RichReporter(err_console),
        retry_failed=retry_failed,
        max_runs=max_runs,
        execute=execute,
    )
    console.print(
        f"study {loaded.study.name}: {outcome.done} run(s) done now, {outcome.already_done} were done before, "
        f"{outcome.failed} failed"
        + (f", {outcome.recovered} recovered from an earlier crash" if outcome.recovered else "")
        + (f", {outcome.retried} attempt(s) retried" if outcome.retried else "")
    )
    for run_id, error in outcome.errors[:5]:
        err_console.print(f"  failed {run_id}: {error}")
    if outcome.elsewhere:
        err_console.print(
            f"{outcome.elsewhere} run(s) are still held by cluster jobs; 'kdgrid run' with the cluster executor collects them"
        )
    if outcome.interrupted:
        if outcome.detached:
            err_console.print(
                f"stopped waiting: {outcome.detached} run(s) still queued or running on the cluster; "
                "run 'kdgrid run' again to collect them"
            )
        else:
            err_console.print("interrupted: run 'kdgrid run' again to continue")
        raise typer.Exit(130)
    if outcome.failed:
        raise typer.Exit(2)


def _run_sequential(
    path: Path, loaded: Any, runs: list[Any], db: Path, execute: Any, *, retry_failed: bool, max_runs: int | None
) -> None:
    """Looks until every comparison is decided (docs/sequential.md)."""
    from kdgrid.execute.progress import RichReporter
    from kdgrid.sequential import plan_sequential
    from kdgrid.sequential.command import states_table
    from kdgrid.sequential.driver import run_sequential

    if retry_failed:  # a rerun could change a finished look's data, and so a decision already taken
        raise KdgridError(
            f"{path}: --retry-failed: not allowed for a sequential study (failed runs drop their "
            "seed's pair from the look; see docs/sequential.md)"
        )
    plan = plan_sequential(loaded.study, runs, path=str(path))
    out = run_sequential(db, loaded, plan, execute=execute, reporter=RichReporter(err_console), max_runs=max_runs)
    console.print(states_table(out.states, f"study {loaded.study.name}: sequential comparisons"))
    console.print(
        f"study {loaded.study.name}: {out.done} run(s) done now in {out.passes} pass(es), {out.failed} failed",
        highlight=False,
    )
    for run_id, error in out.errors[:5]:
        err_console.print(f"  failed {run_id}: {error}")
    if out.interrupted:
        err_console.print("interrupted: run 'kdgrid run' again to continue (decisions are recomputed from the store)")
        raise typer.Exit(130)
    if out.failed:
        raise typer.Exit(2)


@app.command()
def status(db: DbOption = None) -> None:
    """Studies in the store with their done / failed / pending counts and the last errors."""
    from kdgrid.execute.rundir import damaged_results, waiting_results, workdir_for
    from kdgrid.store.db import open_store

    with open_store(_db(db), read_only=True) as store:
        rows = store.study_status()
        errors = store.last_errors()
        waiting, on_cluster = waiting_results(store, workdir_for(_db(db)))
        damaged = damaged_results(workdir_for(_db(db)), list(store.unfinished_runs()))
        texts = store.study_texts()
        sequential: list[tuple[str, Any]] = []
        if any("sequential" in (t or "") for t in texts.values()):  # scipy only for sequential studies
            from kdgrid.sequential import study_states

            sequential = [
                (r["study"], study_states(store, r["study"]))
                for r in rows
                if "sequential" in (texts.get(r["study"]) or "")
            ]
    table = Table(title=f"kdgrid store {_db(db)}")
    for col in ("study", "runs", "done", "failed", "running", "pending"):
        table.add_column(col, justify="right" if col != "study" else "left")
    for r in rows:
        table.add_row(r["study"], *(str(n) for n in (r["runs"], r["done"], r["failed"], r["running"], r["pending"])))
    console.print(table)
    for name, found in sequential:
        if found is not None:
            from kdgrid.sequential.command import states_table

            console.print(states_table(found[1], f"study {name}: sequential comparisons"))
    for run_id, study_name, error in errors:
        console.print(f"[red]failed[/red] {study_name}/{run_id}: {error}")
    if waiting:
        console.print(
            f"{len(waiting)} finished result(s) in run directories are not in the store yet; 'kdgrid run STUDY' stores them"
        )
    if on_cluster:
        console.print(f"{len(on_cluster)} run(s) submitted to a cluster and not finished yet")
    for run_id, why in damaged:
        console.print(
            f"damaged result {workdir_for(_db(db)) / 'runs' / run_id / 'result.json'}: {why}; "
            "the next 'kdgrid run' runs it again and keeps the file as result.json.damaged",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )


@app.command()
def search(
    study: StudyArg,
    db: DbOption = None,
    trials: Annotated[
        int | None, typer.Option(min=1, help="Trials the search should have in all (default: search.trials).")
    ] = None,
    confirm: Annotated[
        int | None,
        typer.Option(min=2, help="Then run the best settings and the baseline on K fresh seeds and compare them."),
    ] = None,
    workers: WorkersOption = None,
    gpus: GpusOption = None,
    timeout: TimeoutOption = None,
    retries: RetriesOption = None,
    executor: ExecutorOption = None,
    slurm: SlurmOption = None,
    plan_limit: PlanLimitOption = None,
) -> None:
    """Optuna search over the study's search block; every trial is a kdgrid run (resumable; see docs/search.md)."""
    from kdgrid.execute.settings import resolve_execute
    from kdgrid.search.command import search_main

    loaded, runs = _load_and_plan(study, plan_limit)
    if loaded.study.search is None:
        raise KdgridError(f"{study}: no 'search:' block (see docs/search.md)")
    execute = resolve_execute(
        loaded.study.execute,
        executor=executor,
        workers=workers,
        gpus=gpus,
        timeout_s=timeout,
        retries=retries,
        slurm=slurm,
    )
    _check_data(runs)
    code = search_main(
        _db(db), loaded, trials=trials, execute=execute, confirm=confirm, console=console, err_console=err_console
    )
    if code:
        raise typer.Exit(code)


def _parse_baseline(text: str | None) -> dict[str, str] | None:
    if not text:
        return None
    out: dict[str, str] = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise KdgridError(
                f"--baseline: '{part}' is not key=value (example: --baseline objective.mapping.kind=uniform)"
            )
        out[key.strip()] = value.strip()
    return out


REPORT_FORMATS = ("table", "md", "csv", "latex", "html", "json")


@app.command()
def report(
    study: Annotated[
        str | None, typer.Option("--study", help="Study name in the store (default: the only one).")
    ] = None,
    db: DbOption = None,
    from_file: Annotated[
        Path | None, typer.Option("--from", help="Analyse a tidy CSV/Parquet table instead of the store.")
    ] = None,
    teachers: Annotated[
        Path | None,
        typer.Option(
            "--teachers",
            help="With --from: CSV/Parquet of task, teacher[, floor] (raw units) for the sensitivity section and floor checks.",
        ),
    ] = None,
    metric: Annotated[
        str | None, typer.Option(help="Metric column, or 'auto' for each task's official metric.")
    ] = None,
    baseline: Annotated[
        str | None, typer.Option(help="Baseline cell as key=value,... (default: the study's analysis.baseline).")
    ] = None,
    correction: Annotated[str | None, typer.Option(help="holm | fdr_bh | bonferroni | none.")] = None,
    anova_type: Annotated[int, typer.Option("--anova-type", help="2 or 3 (type III uses sum-to-zero contrasts).")] = 2,
    anova_order: Annotated[
        int | None, typer.Option("--anova-order", help="Highest interaction order in the ANOVA (default: all).")
    ] = None,
    block_seed: Annotated[
        bool | None,
        typer.Option(
            "--block-seed/--no-block-seed",
            help="Seed (within task) as a block in the ANOVA (default: the study's analysis.block_seed, else on).",
        ),
    ] = None,
    mixed: Annotated[
        bool, typer.Option("--mixed", help="Also fit a mixed model: task fixed, random intercept for seed within task.")
    ] = False,
    factors: Annotated[
        str | None, typer.Option(help="Comma-separated factors to analyse (default: the grid's).")
    ] = None,
    fmt: Annotated[
        str, typer.Option("--format", help="What to print: table | md | csv | latex | html | json.")
    ] = "table",
    out: Annotated[Path | None, typer.Option(help="Folder for the report files (default: reports/<study>/).")] = None,
    plots: Annotated[
        bool, typer.Option("--plots/--no-plots", help="Draw plots (PNG+SVG) and embed them in the HTML.")
    ] = True,
    search_name: Annotated[
        str | None,
        typer.Option("--search", help="Report a search (best settings, history, importances, confirmation)."),
    ] = None,
    rows: Annotated[
        str | None,
        typer.Option(
            "--rows",
            help="Factors forming the rows of the pivot tables, comma-separated (default: the study's analysis.table.rows).",
        ),
    ] = None,
    cols: Annotated[
        str | None,
        typer.Option(
            "--cols",
            help="Factors (and 'task') forming the columns of the pivot tables (default: analysis.table.cols).",
        ),
    ] = None,
    brief: Annotated[
        bool, typer.Option("--brief", help="Print only the summary and the decisive comparisons.")
    ] = False,
    question: Annotated[
        str | None, typer.Option("--question", help="The question the study asks (default: the study's description).")
    ] = None,
    all_studies: Annotated[
        bool,
        typer.Option(
            "--all", help="Report every study in the store under --out (default reports/) and write its index.html."
        ),
    ] = False,
    index_only: Annotated[
        bool,
        typer.Option(
            "--index", help="Only (re)write index.html under --out (default reports/) from the reports there."
        ),
    ] = False,
) -> None:
    """Statistics for a study: cells (mean ± sd), paired tests, ANOVA, sensitivity, power; files under reports/."""
    if fmt not in REPORT_FORMATS:
        raise KdgridError(f"--format: '{fmt}' is not allowed (allowed: {', '.join(REPORT_FORMATS)})")
    if anova_type not in (2, 3):
        raise KdgridError(f"--anova-type: {anova_type} is not allowed (allowed: 2, 3)")
    from kdgrid.analyze.paired import CORRECTIONS

    if correction is not None and correction not in CORRECTIONS:
        raise KdgridError(f"--correction: '{correction}' is not allowed (allowed: {', '.join(CORRECTIONS)})")
    if teachers is not None and from_file is None:
        raise KdgridError("--teachers: only with --from (a report from the store takes the teachers it recorded)")
    if index_only or all_studies:
        _report_all(db, out or Path("reports"), plots=plots, render_studies=all_studies)
        return
    if from_file is None:
        from kdgrid.search.report import pick_search

        chosen_search = pick_search(_db(db), search=search_name, study=study)
        if chosen_search is not None:
            _search_report(_db(db), chosen_search, fmt=fmt, out=out, plots=plots)
            return
    from kdgrid.analyze import analyze_table
    from kdgrid.report.render import render_many
    from kdgrid.report.source import from_file as load_from_file
    from kdgrid.report.source import from_store
    from kdgrid.tasks import TASKS

    src = load_from_file(from_file, metric, teachers) if from_file is not None else from_store(_db(db), study)
    settings = src.analysis_settings
    chosen_factors = [f.strip() for f in factors.split(",")] if factors else (settings.get("factors") or src.factors)
    chosen_metric = metric or settings.get("metric") or "auto"
    base = _parse_baseline(baseline) if baseline else settings.get("baseline")
    corr = correction or settings.get("correction") or "holm"
    analysis = analyze_table(
        src.table,
        metric=chosen_metric,
        factors=chosen_factors,
        baseline=base,
        correction=corr,
        anova_type=anova_type,
        anova_order=anova_order,
        teacher_scores=src.teacher,
        block_seed=block_seed if block_seed is not None else bool(settings.get("block_seed", True)),
        train_sizes={name: spec.train_size for name, spec in TASKS.items()},
        margin=settings.get("equivalence_margin"),
    )
    if src.mapping is not None or src.layers is not None:
        from kdgrid.analyze.mapping import as_analysis_cells

        if src.mapping is not None:
            analysis.mapping_weights = as_analysis_cells(src.mapping, src.table, chosen_factors or [])
        if src.layers is not None:
            analysis.layers = as_analysis_cells(src.layers, src.table, chosen_factors or [])
    analysis.warnings = [*src.warnings, *analysis.warnings]
    layout = settings.get("table") or {}
    chosen_rows = [f.strip() for f in rows.split(",") if f.strip()] if rows else list(layout.get("rows") or [])
    chosen_cols = [f.strip() for f in cols.split(",") if f.strip()] if cols else list(layout.get("cols") or [])
    asked = question if question is not None else src.question
    meta = {
        **src.meta,
        "metric": chosen_metric,
        "baseline": base or "first level of each factor",
        "correction": corr,
        "equivalence margin": settings.get("equivalence_margin", 0.01),
        "anova type": anova_type,
        "kdgrid": __version__,
    }
    out_dir = out or Path("reports") / src.title
    files = [f for f in ("md", "csv", "html", "json", "latex") if f != fmt]
    texts = render_many(
        analysis,
        fmts=[fmt, *files],
        out_dir=out_dir,
        title=f"kdgrid report: {src.title}",
        meta=meta,
        plots=plots,
        reproducibility=src.reproducibility,
        rows=chosen_rows,
        cols=chosen_cols,
        question=asked,
    )
    if fmt == "table":
        from kdgrid.report.render import rich_report

        console.print(
            rich_report(
                analysis,
                title=f"kdgrid report: {src.title}",
                meta=meta,
                reproducibility=src.reproducibility,
                rows=chosen_rows,
                cols=chosen_cols,
                question=asked,
                brief=brief,
            )
        )
    else:
        typer.echo(texts[fmt])
    if mixed:
        _mixed_section(src.table, chosen_metric, chosen_factors, base, out_dir)
    if from_file is None and (settings.get("sequential") or None) is not None:
        _sequential_section(_db(db), src.title, out_dir, fmt)
    err_console.print(f"report files written to {out_dir}/")


def _sequential_section(db: Path, name: str, out_dir: Path, fmt: str) -> None:
    """A sequential study's decisions: printed with the terminal report, and sequential.md/.csv beside it."""
    from kdgrid.sequential import study_states
    from kdgrid.sequential.command import states_table, write_section
    from kdgrid.store.db import open_store

    with open_store(db, read_only=True) as store:
        found = study_states(store, name)
    if found is None:
        return
    write_section(*found, out_dir)
    if fmt == "table":
        console.print(states_table(found[1], f"study {name}: sequential comparisons"))
        for line in found[0].design_lines():
            console.print(f"  {line}", highlight=False)


def _report_all(db: Path | None, root: Path, *, plots: bool, render_studies: bool) -> None:
    """``--all``: every study of the store reported under ``root/<study>/``; then ``root/index.html``."""
    from kdgrid.report.index import write_index

    if render_studies:
        from kdgrid.store.db import open_store

        with open_store(_db(db), read_only=True) as store:
            names = store.study_names()
        if not names:
            raise KdgridError(f"{_db(db)}: the store has no studies yet (run 'kdgrid run STUDY' first)")
        failed = []
        for name in names:
            try:
                report(study=name, db=db, out=root / name, plots=plots, fmt="table", brief=True)
            except KdgridError as e:  # one study that cannot be analysed does not cost the others their reports
                err_console.print(f"study {name}: {e}")
                failed.append(name)
    path = write_index(root)
    err_console.print(f"index written to {path}")
    if render_studies and failed:
        raise KdgridError(f"--all: no report for {', '.join(failed)} (see the lines above); the others are written")


def _search_report(db: Path, name: str, *, fmt: str, out: Path | None, plots: bool) -> None:
    """The report of a search: printed as a table, Markdown or JSON; files under reports/<name>.search/."""
    from kdgrid.search.report import as_json, build_search_report, markdown, rich_search_report, write_search_report

    if fmt not in ("table", "md", "json", "csv"):
        raise KdgridError(f"--format: '{fmt}' is not available for a search report (allowed: table, md, csv, json)")
    rep = build_search_report(db, name)
    out_dir = out or Path("reports") / f"{name}.search"
    write_search_report(rep, out_dir, plots=plots)
    if fmt == "table":
        console.print(rich_search_report(rep))
    elif fmt == "md":
        typer.echo(markdown(rep))
    elif fmt == "json":
        typer.echo(json.dumps(as_json(rep), indent=1, default=str))
    else:
        typer.echo(rep.trials.to_csv(index=False), nl=False)
    err_console.print(f"report files written to {out_dir}/")


def _mixed_section(table: Any, metric: str, factors: list[str] | None, baseline: Any, out_dir: Path) -> None:
    """Fixed effects of a mixed model (task fixed, random intercept for seed within task), printed and saved."""
    from kdgrid.analyze import mixed_model

    fe = mixed_model(table, factors, metric, groups="seed", baseline=baseline)
    out_dir.mkdir(parents=True, exist_ok=True)
    fe.to_csv(out_dir / "mixed_model.csv", index=False)
    t = Table(
        title=f"Mixed model ({metric}), one row per run: fixed effects (task and its interactions), "
        "random intercept for seed within task"
    )
    for col in fe.columns:
        t.add_column(str(col))
    for row in fe.itertuples(index=False):
        t.add_row(*(f"{v:.4g}" if isinstance(v, float) else str(v) for v in row))
    console.print(t)
    for w in fe.attrs.get("warnings", []):
        if w.startswith("mixed model"):  # the others are the report's, printed with it
            console.print(f"Warning: {w}", markup=False)


@app.command()
def export(
    study: Annotated[
        str | None, typer.Option("--study", help="One study (with its factor columns); default: all runs.")
    ] = None,
    db: DbOption = None,
    fmt: Annotated[str, typer.Option("--format", help="parquet | csv.")] = "parquet",
    out: Annotated[Path | None, typer.Option(help="Output file (default: <study or runs>.<format>).")] = None,
) -> None:
    """Write the tidy results (one row per run, final metrics as columns) for pandas or R."""
    if fmt not in ("parquet", "csv"):
        raise KdgridError(f"--format: '{fmt}' is not allowed (allowed: parquet, csv)")
    from kdgrid.store.db import open_store
    from kdgrid.store.queries import export_runs

    with open_store(_db(db), read_only=True) as store:
        if study is not None and study not in store.study_names():
            raise KdgridError(f"--study: no study '{study}' in {_db(db)} (allowed: {', '.join(store.study_names())})")
        df = export_runs(store, study)
    path = out or Path(f"{study or 'runs'}.{fmt}")
    if fmt == "parquet":
        df.to_parquet(path, index=False)
    else:
        df.to_csv(path, index=False)
    console.print(f"{len(df)} rows written to {path}")


def main() -> None:
    """Entry point: run the app and turn library errors into one clean line."""
    try:
        # With standalone_mode=False click returns the code of typer.Exit instead of exiting.
        rc = app(standalone_mode=False)
    except KdgridError as exc:
        err_console.print(f"Error: {exc}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(1)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        err_console.print("Aborted.")
        sys.exit(130)
    except KeyboardInterrupt:
        err_console.print("Interrupted.")
        sys.exit(130)
    except Exception as exc:  # click usage errors come through here with standalone_mode=False
        # Typer ships its own copy of click (typer._click), whose exceptions are no click.ClickException:
        # recognise a usage error by what it can do, so an unknown option is one message, not a traceback.
        show, code = getattr(exc, "show", None), getattr(exc, "exit_code", None)
        if callable(show) and isinstance(code, int):
            show()
            sys.exit(code)
        raise
    sys.exit(rc if isinstance(rc, int) else 0)


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
) -> None:
    if version:
        typer.echo(f"kdgrid {__version__}")
        raise typer.Exit(0)
