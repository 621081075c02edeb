"""Read-only queries that turn the store into tidy tables for analysis."""

from __future__ import annotations

from typing import Any

import pandas as pd

from kdgrid.store.db import Store


def tidy_results(store: Store, study: str) -> pd.DataFrame:
    """One row per (cell, run) of a study: factor columns, task, seed, run_id, final dev metrics.

    Only runs with status 'done' appear; a run shared by two cells (collapsed factor) appears once per cell.
    """
    members = store.query_df(
        """SELECT s.cell, s.run_id, r.task, r.seed FROM study_runs s JOIN runs r USING (run_id)
           WHERE s.study = ? AND r.status = 'done'""",
        [study],
    )
    if members.empty:
        return members
    factors = store.query_df("SELECT cell, run_id, name, value FROM factors WHERE study = ?", [study])
    if not factors.empty:
        wide = factors.pivot_table(index=["cell", "run_id"], columns="name", values="value", aggfunc="first")
        order = list(dict.fromkeys(factors["name"]))
        wide = wide[order].reset_index()
        members = members.merge(wide, on=["cell", "run_id"], how="left")
    metrics = store.query_df(
        """SELECT m.run_id, m.name, m.value FROM metrics m
           WHERE m.stage = 'final' AND m.split IN ('dev', 'efficiency')
             AND m.run_id IN (SELECT run_id FROM study_runs WHERE study = ?)""",
        [study],
    )
    if not metrics.empty:
        mw = metrics.pivot_table(index="run_id", columns="name", values="value", aggfunc="last").reset_index()
        members = members.merge(mw, on="run_id", how="left")
    return members.sort_values(["task", "cell", "seed"]).reset_index(drop=True)


def study_factor_names(store: Store, study: str) -> list[str]:
    rows = store.con.execute("SELECT DISTINCT name FROM factors WHERE study = ?", [study]).fetchall()
    names = [r[0] for r in rows]
    text = store.con.execute("SELECT text FROM studies WHERE name = ?", [study]).fetchone()
    return names if text is None else sorted(names, key=lambda n: text[0].find(n) if n in text[0] else 10**9)


def teacher_scores(store: Store, study: str) -> pd.DataFrame:
    """Teacher dev metrics per task (long form: task, name, value), from the runs of a study.

    Every run records its teacher's dev metrics under split 'teacher'; runs of one task share a teacher
    unless the teacher itself is a factor, so the mean over runs is the teacher's score.
    """
    return store.query_df(
        """SELECT r.task, m.name, avg(m.value) AS value FROM metrics m JOIN runs r USING (run_id)
           WHERE m.split = 'teacher' AND r.status = 'done'
             AND m.run_id IN (SELECT run_id FROM study_runs WHERE study = ?)
           GROUP BY r.task, m.name ORDER BY r.task, m.name""",
        [study],
    )


def run_curves(store: Store, run_id: str) -> Any:
    return store.query_df("SELECT * FROM metrics WHERE run_id = ? ORDER BY stage, epoch, step", [run_id])


def mapping_weights(store: Store, study: str) -> pd.DataFrame:
    """Learned layer-mapping weights per epoch: task, cell, seed, epoch, student_layer, teacher_layer, weight."""
    df = store.query_df(
        """SELECT r.task, s.cell, r.seed, m.stage, m.epoch, m.name, m.value AS weight
           FROM metrics m JOIN runs r USING (run_id) JOIN study_runs s USING (run_id)
           WHERE m.split = 'mapping' AND s.study = ? AND r.status = 'done'""",
        [study],
    )
    if df.empty:
        return df
    parts = df["name"].str.extract(r"s(\d+)\.t(\d+)").astype(int)
    df["student_layer"], df["teacher_layer"] = parts[0], parts[1]
    return df.drop(columns="name")[["task", "cell", "seed", "stage", "epoch", "student_layer", "teacher_layer", "weight"]]


def export_runs(store: Store, study: str | None = None) -> pd.DataFrame:
    """Every done run with its final metrics (and, for one study, its factors): the table `kdgrid export` writes."""
    if study is not None:
        return tidy_results(store, study)
    runs = store.query_df("SELECT run_id, task, seed, status FROM runs WHERE status = 'done'")
    metrics = store.query_df("SELECT run_id, name, value FROM metrics WHERE stage = 'final' AND split IN ('dev', 'efficiency')")
    if metrics.empty:
        return runs
    wide = metrics.pivot_table(index="run_id", columns="name", values="value", aggfunc="last").reset_index()
    return runs.merge(wide, on="run_id", how="left")
