"""Store helpers for searches: the ``trials`` table and a search's run membership.

A search registers its runs under the store study ``<name>.search`` (cell ``trial=N, <param>=<value>, ...``,
factors ``trial`` and one per parameter; ``kdgrid.execute.run_grid`` adds each batch of trials) and its
confirmation under ``<name>.confirm``; the ``trials`` table mirrors the Optuna journal (one row per trial number).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

import pandas as pd

from kdgrid.records import MetricRow, metric_row
from kdgrid.store.db import Store

TRIAL_STATES = ("running", "complete", "pruned", "failed", "interrupted")


def run_states(store: Store, run_ids: Iterable[str]) -> dict[str, tuple[str, str | None]]:
    """Run id -> (status, error) of the given runs."""
    ids = list(run_ids)
    if not ids:
        return {}
    rows = store.con.execute("SELECT run_id, status, error FROM runs WHERE list_contains(?, run_id)", [ids]).fetchall()
    return {r[0]: (r[1], r[2]) for r in rows}


def dev_epochs(store: Store, run_ids: Iterable[str]) -> dict[str, list[MetricRow]]:
    """Run id -> its dev metric rows per epoch (stage, epoch, split, name, value), in training order: the
    rows a result.json holds, so a search replays a stored run to its pruner as it would a fresh one."""
    ids = list(run_ids)
    if not ids:
        return {}
    rows = store.con.execute(
        """SELECT run_id, stage, epoch, name, value FROM metrics
           WHERE split = 'dev' AND epoch IS NOT NULL AND list_contains(?, run_id) ORDER BY run_id, epoch, step""",
        [ids],
    ).fetchall()
    out: dict[str, list[MetricRow]] = {}
    for run_id, stage, epoch, name, value in rows:
        out.setdefault(run_id, []).append(metric_row(stage, "dev", name, value, epoch=epoch))
    return out


def upsert_trials(store: Store, search: str, rows: Iterable[Mapping[str, Any]]) -> None:
    """Write trial rows (number, run_id, params, value, state); a later state replaces an earlier one."""
    data = [
        [
            search,
            int(r["number"]),
            r.get("run_id"),
            json.dumps(r.get("params") or {}, sort_keys=True),
            None if r.get("value") is None else float(r["value"]),
            r["state"],
        ]
        for r in rows
    ]
    if not data:
        return
    store.con.executemany(
        """INSERT INTO trials (search, number, run_id, params, value, state) VALUES (?, ?, ?, ?, ?, ?)
           ON CONFLICT (search, number) DO UPDATE SET run_id = coalesce(excluded.run_id, trials.run_id),
           params = excluded.params, value = excluded.value, state = excluded.state""",
        data,
    )


def trials_frame(store: Store, search: str) -> pd.DataFrame:
    """One row per trial: number, run_id, value, state and one column per parameter (its dotted path)."""
    df = store.query_df(
        "SELECT number, run_id, params, value, state FROM trials WHERE search = ? ORDER BY number", [search]
    )
    if df.empty:
        return df
    params = pd.DataFrame(
        [json.loads(p) if isinstance(p, str) else dict(p or {}) for p in df.pop("params")], index=df.index
    )
    return pd.concat([df, params], axis=1)


def search_names(store: Store) -> list[str]:
    return [r[0] for r in store.con.execute("SELECT DISTINCT search FROM trials ORDER BY search").fetchall()]


def study_text(store: Store, name: str) -> str | None:
    row = store.con.execute("SELECT text FROM studies WHERE name = ?", [name]).fetchone()
    return None if row is None else str(row[0])
