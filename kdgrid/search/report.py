"""The report of a search, read from the store only: best settings, history, importances, slices, confirmation.

Everything comes from the ``trials`` table and the study file stored with the search's runs, so a
copied DuckDB file is enough (the Optuna journal is not needed). Parameter importances are
Optuna's fANOVA (``optuna.importance.get_param_importances``, seeded so a report is repeatable),
computed on an in-memory study rebuilt from the complete trials.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from pydantic import ValidationError

from kdgrid.errors import KdgridError
from kdgrid.search.confirm import ConfirmationResult, confirm_study_name, confirmation_result
from kdgrid.search.loop import search_study_name
from kdgrid.store.db import open_store
from kdgrid.store.search_queries import search_names, study_text, trials_frame
from kdgrid.study.loader import parse_yaml
from kdgrid.study.schema import Search, Study


def short_params(params: dict[str, Any]) -> str:
    """``alpha=0.31, temperature=2.4``: the last part of each dotted path, floats to 4 significant digits."""

    def fmt(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    return ", ".join(f"{k.rsplit('.', 1)[-1]}={fmt(v)}" for k, v in params.items())


_PLOT_STATES = {
    "complete": "COMPLETE",
    "pruned": "PRUNED",
    "failed": "FAIL",
    "interrupted": "FAIL",
    "running": "RUNNING",
    "waiting": "WAITING",
}


@dataclass
class SearchReport:
    name: str
    search: Search | None
    trials: pd.DataFrame  # number, run_id, value, state, one column per parameter
    params: list[str]
    best: dict[str, Any] | None  # number, value, params
    counts: dict[str, int]
    importances: dict[str, float] | None
    importance_note: str = ""
    confirmation: ConfirmationResult | None = None
    files: list[Path] = field(default_factory=list)

    @property
    def direction(self) -> str:
        return self.search.direction if self.search else "maximize"


def pick_search(db: Path, *, search: str | None, study: str | None) -> str | None:
    """Which search ``kdgrid report`` should show, or None for an ordinary study report.

    ``--search NAME`` names it; ``--study NAME`` picks a search when NAME has trials but no grid
    runs of its own; with neither, the store's only search when the store holds nothing else.
    """
    if search is None and not Path(db).exists():
        return None
    with open_store(db, read_only=True) as store:  # a running search may hold the file for a moment
        names = search_names(store)
        studies = store.study_names()
    if search is not None:
        if search not in names:
            raise KdgridError(f"--search: no search '{search}' in {db} (allowed: {', '.join(names) or 'none yet'})")
        return search
    if study is not None:
        return study if study in names and study not in studies else None
    own = {n for name in names for n in (search_study_name(name), confirm_study_name(name))}
    if len(names) == 1 and set(studies) <= own:
        return names[0]
    return None


def build_search_report(db: Path, name: str, *, importances: bool = True) -> SearchReport:
    import optuna

    with open_store(db, read_only=True) as store:
        trials = trials_frame(store, name)
        text = study_text(store, search_study_name(name))
    if trials.empty:
        raise KdgridError(f"search '{name}': no trials in {db} yet")
    search = _stored_search(text, name)
    params = (
        list(search.params)
        if search
        else [c for c in trials.columns if c not in ("number", "run_id", "value", "state")]
    )
    counts = {s: int((trials["state"] == s).sum()) for s in ("complete", "pruned", "failed", "interrupted", "running")}
    complete = trials[(trials["state"] == "complete") & trials["value"].notna()]
    best = None
    if not complete.empty:
        values = complete["value"].to_numpy(dtype=float)
        row = complete.iloc[
            int(values.argmax() if (search is None or search.direction == "maximize") else values.argmin())
        ]
        best = {
            "number": int(row["number"]),
            "value": float(row["value"]),
            "params": {p: _plain(row[p]) for p in params if p in row},
        }
    imp, note = _importances(optuna, complete, params, search) if importances else (None, "")
    metric = search.metric if search else "auto"
    confirmation = confirmation_result(db, name, metric)
    return SearchReport(name, search, trials, params, best, counts, imp, note, confirmation)


def _stored_search(text: str | None, name: str) -> Search | None:
    if text is None:
        return None
    data, _ = parse_yaml(text, Path(f"<study {name}>"))
    try:
        return Study.model_validate(data).search
    except ValidationError:
        return None  # written by another kdgrid version: report without the declared space


def _plain(v: Any) -> Any:
    return v.item() if hasattr(v, "item") else v


def _importances(
    optuna: Any, complete: pd.DataFrame, params: list[str], search: Search | None
) -> tuple[dict[str, float] | None, str]:
    if search is None:
        return None, "parameter importances need the search block (the stored study file cannot be read)"
    if len(complete) < 2:
        return None, f"parameter importances need at least 2 complete trials (have {len(complete)})"
    from optuna.importance import FanovaImportanceEvaluator, get_param_importances
    from optuna.trial import create_trial

    from kdgrid.search.space import distribution

    dists = {p: distribution(search.params[p]) for p in params}
    ostudy = optuna.create_study(direction=search.direction)
    for _, row in complete.iterrows():
        ostudy.add_trial(
            create_trial(params={p: _plain(row[p]) for p in params}, distributions=dists, value=float(row["value"]))
        )
    try:
        imp = get_param_importances(ostudy, evaluator=FanovaImportanceEvaluator(seed=0))
    except (ValueError, RuntimeError) as exc:
        return None, f"parameter importances could not be computed: {exc}"
    values = {str(k): float(v) for k, v in imp.items()}
    if not values or any(math.isnan(v) for v in values.values()):
        return None, "parameter importances are undefined (the complete trials have equal values)"
    return values, ""


def write_search_report(rep: SearchReport, out_dir: Path, *, plots: bool = True) -> list[Path]:
    """``search.md``, ``trials.csv``, ``importances.csv``, ``search.json`` (+ plots) under ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files = [out_dir / "search.md", out_dir / "trials.csv", out_dir / "search.json"]
    files[0].write_text(markdown(rep))
    rep.trials.to_csv(files[1], index=False)
    files[2].write_text(json.dumps(as_json(rep), indent=1, default=str))
    if rep.importances:
        path = out_dir / "importances.csv"
        pd.DataFrame({"param": list(rep.importances), "importance": list(rep.importances.values())}).to_csv(
            path, index=False
        )
        files.append(path)
    if rep.confirmation is not None and not rep.confirmation.tests.empty:
        path = out_dir / "confirmation.csv"
        rep.confirmation.tests.to_csv(path, index=False)
        files.append(path)
    if plots:
        from kdgrid.report.plots import search_plots

        history = rep.trials.assign(state=[_PLOT_STATES.get(s, str(s).upper()) for s in rep.trials["state"]])
        files += search_plots(
            history[["number", "value", "state"]],
            rep.importances,
            history[["number", *rep.params]],
            out_dir=out_dir,
            direction="minimize" if rep.direction == "minimize" else "maximize",
        )
    rep.files = files
    return files


def as_json(rep: SearchReport) -> dict[str, Any]:
    conf = rep.confirmation
    return {
        "search": rep.name,
        "direction": rep.direction,
        "counts": rep.counts,
        "best": rep.best,
        "importances": rep.importances,
        "importance_note": rep.importance_note,
        "trials": json.loads(rep.trials.to_json(orient="records")),
        "confirmation": None
        if conf is None
        else {
            "seeds": conf.seeds,
            "note": conf.note,
            "means": json.loads(conf.means.to_json(orient="records")),
            "paired_tests": json.loads(conf.tests.to_json(orient="records")),
        },
    }


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.{digits}g}" if isinstance(v, float) else str(v)


def summary_lines(rep: SearchReport) -> list[str]:
    c = rep.counts
    lines = [
        f"search {rep.name}: {len(rep.trials)} trials ({c['complete']} complete, {c['pruned']} pruned, "
        f"{c['failed']} failed"
        + (f", {c['interrupted']} interrupted" if c["interrupted"] else "")
        + (f", {c['running']} running" if c["running"] else "")
        + ")"
    ]
    if rep.best:
        lines.append(
            f"best: trial {rep.best['number']}, value {rep.best['value']:.4f} ({rep.direction}): "
            f"{short_params(rep.best['params'])}"
        )
    else:
        lines.append("best: no complete trial yet")
    return lines


def confirmation_frame(conf: ConfirmationResult) -> pd.DataFrame:
    """The paired tests without the columns that are the same in every row (best vs baseline) and the notes
    (printed below the table)."""
    cols = ["task", "n", "mean_diff", "ci_low", "ci_high", "t", "df", "p", "dz", "wilcoxon_p", "verdict"]
    return conf.tests[[c for c in cols if c in conf.tests]] if not conf.tests.empty else conf.tests


def confirmation_notes(conf: ConfirmationResult) -> list[str]:
    notes = []
    if not conf.tests.empty and "note" in conf.tests:
        notes += [
            f"{row.task}: {row.note}" for row in conf.tests.itertuples() if isinstance(row.note, str) and row.note
        ]
    return notes + ([conf.note] if conf.note else [])


def markdown(rep: SearchReport) -> str:
    out = [f"# kdgrid search report: {rep.name}", "", *[f"- {line}" for line in summary_lines(rep)], ""]
    if rep.best:
        out += [
            "## Best parameters",
            "",
            "| parameter | value |",
            "|---|---|",
            *[f"| {k} | {_fmt(v, 6)} |" for k, v in rep.best["params"].items()],
            "",
        ]
    out += ["## Parameter importances (fANOVA)", ""]
    if rep.importances:
        out += [
            "| parameter | importance |",
            "|---|---|",
            *[f"| {k} | {v:.3f} |" for k, v in sorted(rep.importances.items(), key=lambda kv: -kv[1])],
            "",
        ]
    else:
        out += [rep.importance_note, ""]
    out += ["## Trials", "", rep.trials.to_markdown(index=False, floatfmt=".4g"), ""]
    conf = rep.confirmation
    if conf is not None:
        out += [
            f"## Confirmation on fresh seeds {conf.seeds}",
            "",
            "Best trial's settings vs the baseline, re-run on seeds no trial used, paired by seed.",
            "",
            conf.means.to_markdown(index=False, floatfmt=".4g"),
            "",
        ]
        if not conf.tests.empty:
            out += [
                "Difference best - baseline:",
                "",
                confirmation_frame(conf).to_markdown(index=False, floatfmt=".4g"),
                "",
            ]
        out += [f"Note: {n}" for n in confirmation_notes(conf)] + [""]
    return "\n".join(out)


def _table(title: str, df: pd.DataFrame) -> Any:
    from rich.table import Table

    t = Table(title=title, title_justify="left")
    for col in df.columns:
        t.add_column(str(col), justify="right" if pd.api.types.is_numeric_dtype(df[col]) else "left")
    for row in df.itertuples(index=False):
        t.add_row(*(_fmt(v) for v in row))
    return t


def _short_columns(params: list[str]) -> dict[str, str]:
    """Last part of each dotted path, where that is unambiguous (the terminal is narrow)."""
    last = [p.rsplit(".", 1)[-1] for p in params]
    return {p: s for p, s in zip(params, last, strict=True) if last.count(s) == 1}


def rich_search_report(rep: SearchReport) -> Any:
    """The report as rich renderables for the terminal."""
    from rich.console import Group
    from rich.text import Text

    parts: list[Any] = [Text(line) for line in summary_lines(rep)]
    if rep.best:
        parts.append(
            _table(
                "Best parameters",
                pd.DataFrame({"parameter": list(rep.best["params"]), "value": list(rep.best["params"].values())}),
            )
        )
    if rep.importances:
        imp = sorted(rep.importances.items(), key=lambda kv: -kv[1])
        parts.append(_table("Parameter importances (fANOVA)", pd.DataFrame(imp, columns=["parameter", "importance"])))
    elif rep.importance_note:
        parts.append(Text(rep.importance_note))
    shown = rep.trials.sort_values("value", ascending=rep.direction == "minimize", na_position="last").head(10)
    shown = shown.drop(columns=["run_id"]).rename(columns=_short_columns(rep.params))
    parts.append(_table(f"Trials (best {len(shown)} of {len(rep.trials)})", shown))
    if rep.confirmation is not None:
        parts += confirmation_renderables(rep.confirmation)
    return Group(*parts)


def confirmation_renderables(conf: ConfirmationResult) -> list[Any]:
    from rich.text import Text

    parts: list[Any] = [_table(f"Confirmation on fresh seeds {conf.seeds}: mean per configuration", conf.means)]
    if not conf.tests.empty:
        parts.append(_table("Best vs baseline, paired by seed (diff = best - baseline)", confirmation_frame(conf)))
    parts += [Text(f"note: {n}") for n in confirmation_notes(conf)]
    return parts
