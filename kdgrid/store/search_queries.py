"""Store helpers for searches: the ``trials`` table and a search's run membership.

A search registers its runs under the store study ``<name>.search`` (cell ``trial=N, <param>=<value>, ...``,
factors ``trial`` and one per parameter) and its confirmation under ``<name>.confirm``; the
``trials`` table mirrors the Optuna journal (one row per trial number).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

import pandas as pd

from kdgrid.store.db import Store

TRIAL_STATES = ("running", "complete", "pruned", "failed", "interrupted")


def add_members(store: Store, study: str, path: str, text: str, sha256: str, members: Iterable[Any]) -> None:
    """Add runs to a study without dropping its other members (``register_study`` replaces them).

    Several search processes add trials concurrently; each adds only its own.
    """
    members = list(members)
    if not members:
        return
    with store.transaction():
        store.con.execute(
            """INSERT INTO studies (name, path, text, sha256) VALUES (?, ?, ?, ?)
               ON CONFLICT (name) DO UPDATE SET path = excluded.path, text = excluded.text,
               sha256 = excluded.sha256, updated = now()""",
            [study, path, text, sha256],
        )
        store.con.executemany("INSERT OR IGNORE INTO study_runs VALUES (?, ?, ?)", [[study, m.cell, m.run_id] for m in members])
        factor_rows = [[study, m.cell, m.run_id, k, v] for m in members for k, v in m.factors.items()]
        if factor_rows:  # DuckDB's executemany refuses an empty list
            store.con.executemany("INSERT OR IGNORE INTO factors VALUES (?, ?, ?, ?, ?)", factor_rows)
        store.con.executemany(
            """INSERT INTO runs (run_id, task, seed, config, status) VALUES (?, ?, ?, ?, 'pending')
               ON CONFLICT (run_id) DO NOTHING""",
            [[m.run_id, m.task, m.seed, json.dumps(m.config, sort_keys=True)] for m in {m.run_id: m for m in members}.values()],
        )


def upsert_trials(store: Store, search: str, rows: Iterable[Mapping[str, Any]]) -> None:
    """Write trial rows (number, run_id, params, value, state); a later state replaces an earlier one."""
    data = [
        [search, int(r["number"]), r.get("run_id"), json.dumps(r.get("params") or {}, sort_keys=True),
         None if r.get("value") is None else float(r["value"]), r["state"]]
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
    df = store.query_df("SELECT number, run_id, params, value, state FROM trials WHERE search = ? ORDER BY number", [search])
    if df.empty:
        return df
    params = pd.DataFrame([json.loads(p) if isinstance(p, str) else dict(p or {}) for p in df.pop("params")], index=df.index)
    return pd.concat([df, params], axis=1)


def search_names(store: Store) -> list[str]:
    return [r[0] for r in store.con.execute("SELECT DISTINCT search FROM trials ORDER BY search").fetchall()]


def study_text(store: Store, name: str) -> str | None:
    row = store.con.execute("SELECT text FROM studies WHERE name = ?", [name]).fetchone()
    return None if row is None else str(row[0])
