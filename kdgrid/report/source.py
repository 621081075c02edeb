"""Where a report's rows come from: a study in the store, or any tidy table (--from)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from kdgrid.analyze.tidy import read_table
from kdgrid.errors import KdgridError
from kdgrid.store.db import open_store
from kdgrid.store.queries import (
    Reproducibility,
    layer_assignments,
    mapping_weights,
    study_factor_names,
    study_reproducibility,
    teacher_scores,
    tidy_results,
)
from kdgrid.study.loader import parse_yaml
from kdgrid.tasks import TASKS


@dataclass
class ReportInput:
    title: str
    table: pd.DataFrame
    factors: list[str] | None
    teacher: pd.DataFrame | None = None
    mapping: pd.DataFrame | None = None
    layers: pd.DataFrame | None = None  # cell, copied, mapped (only a study in the store has them)
    analysis_settings: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    reproducibility: Reproducibility | None = None  # only a study in the store has provenance
    question: str = ""  # the study file's description: what the study asks


def from_store(db: Path, study: str | None) -> ReportInput:
    with open_store(db, read_only=True) as store:
        names = store.study_names()
        if not names:
            raise KdgridError(f"{db}: the store has no studies yet (run 'kdgrid run STUDY' first)")
        if study is None:
            if len(names) > 1:
                raise KdgridError(
                    f"{db}: the store has several studies; choose one with --study (allowed: {', '.join(names)})"
                )
            study = names[0]
        if study not in names:
            raise KdgridError(f"--study: no study '{study}' in {db} (allowed: {', '.join(names)})")
        table = tidy_results(store, study)
        if table.empty:
            raise KdgridError(f"study '{study}': no finished runs yet (see 'kdgrid status')")
        factors = study_factor_names(store, study)
        long_scores = teacher_scores(store, study)
        teacher = _teacher_frame(long_scores, table)
        mapping = mapping_weights(store, study)
        layers = layer_assignments(store, study)
        provenance = study_reproducibility(store, study)
        teacher = _with_floors(teacher, provenance)
        text = store.study_text(study)
        done, total = store.study_run_counts(study)
    if text is None:  # study_names() listed it, so its row holds the file's text
        raise KdgridError(f"{db}: study '{study}' has no study file text")
    data, _ = parse_yaml(text, Path(f"<study {study}>"))
    settings = dict(data.get("analysis") or {}) if isinstance(data, dict) else {}
    if not settings.get("baseline") and isinstance(data, dict):
        # The first level the study file lists for each factor is the natural reference cell.
        first = {k: v[0] for k, v in (data.get("grid") or {}).items() if v}
        first.update({k: next(iter(v)) for k, v in (data.get("variants") or {}).items() if v})
        settings["baseline"] = first or None
    meta = {"study": study, "store": str(db), "runs done": f"{done} of {total}"}
    flagged = (
        long_scores[(long_scores["name"] == "no_better_than_majority") & (long_scores["value"] > 0)]
        if not long_scores.empty
        else long_scores
    )
    warnings = [
        f"the teacher of task {t} scores no better than always predicting the majority class: "
        "its students' numbers say little"
        for t in flagged.get("task", [])
    ]
    question = str(data.get("description") or "").strip() if isinstance(data, dict) else ""
    return ReportInput(
        study,
        table,
        factors,
        teacher,
        None if mapping.empty else mapping,
        None if layers.empty else layers,
        settings,
        meta,
        warnings,
        provenance,
        question,
    )


def _teacher_frame(long: pd.DataFrame, table: pd.DataFrame) -> pd.DataFrame | None:
    """Teacher score per task in each task's official metric (the metric the students are judged by)."""
    if long.empty:
        return None
    rows = []
    for task, grp in long.groupby("task"):
        spec = TASKS.get(str(task))
        if spec is None:
            continue
        hit = grp[grp["name"] == spec.official_metric]
        if not hit.empty:
            rows.append({"task": task, "teacher": float(hit["value"].iloc[0])})
    return pd.DataFrame(rows) if rows else None


def _with_floors(teacher: pd.DataFrame | None, provenance: Reproducibility | None) -> pd.DataFrame | None:
    """Add each task's majority-class score (``floor``), recorded with its teacher, to the teacher frame."""
    if teacher is None or provenance is None:
        return teacher
    floors: dict[str, list[float]] = {}
    for t in provenance.teachers:
        if t.majority is not None:
            floors.setdefault(t.task, []).append(float(t.majority))
    if not floors:
        return teacher
    return teacher.assign(floor=teacher["task"].map(lambda k: sum(floors[k]) / len(floors[k]) if k in floors else None))


def from_file(path: Path, metric: str | None = None, teachers: Path | None = None) -> ReportInput:
    """A tidy table; ``teachers`` (CSV/Parquet: task, teacher[, floor]) stands in for the store's teacher
    records, giving the sensitivity section and the majority-class floors a table alone cannot carry."""
    from kdgrid.analyze import load_table

    table = load_table(path, metric=None if metric in (None, "auto") else metric)
    meta = {"source": str(path)}
    teacher = None
    if teachers is not None:
        teacher = read_teachers(teachers)
        meta["teachers"] = str(teachers)
    # A table called just "results" (reports/<study>/results.parquet, as scripts/reports.sh exports it) is
    # titled by its folder, the study.
    title = path.parent.name if path.stem == "results" and path.parent.name not in ("", ".") else path.stem
    return ReportInput(title, table, None, teacher, meta=meta)


def read_teachers(path: Path) -> pd.DataFrame:
    """The frame ``from_store`` builds (task, teacher[, floor]) read from a file, in the metric's raw units."""
    df = read_table(path, "--teachers: file", comment="#")
    missing = [c for c in ("task", "teacher") if c not in df.columns]
    if missing:
        raise KdgridError(
            f"--teachers: {path} has no column {', '.join(missing)} (needed: task, teacher; optional: floor)"
        )
    out = df[["task", "teacher", *(["floor"] if "floor" in df.columns else [])]].copy()
    out["task"] = out["task"].astype(str)
    for col in out.columns[1:]:
        values = pd.to_numeric(out[col], errors="coerce")
        bad = out.loc[values.isna() & out[col].notna(), col]
        if not bad.empty:
            raise KdgridError(f"--teachers: {path}, column {col}: {bad.iloc[0]!r} is not a number")
        if (values.abs() > 1).any():
            raise KdgridError(
                f"--teachers: {path}, column {col}: {values.abs().max():g} is outside [-1, 1] "
                "(give scores in the metric's raw units, e.g. 0.861 not 86.1)"
            )
        out[col] = values
    return out
