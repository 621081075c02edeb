"""The DuckDB store: the only module that opens the database.

Tables (documented for users in docs/store.md):
``studies``, ``runs``, ``study_runs``, ``factors``, ``metrics``, ``teachers``, ``trials``
and ``kdgrid_meta`` (marks the file as a kdgrid store and holds the schema version).
Workers never open it: they write ``result.json`` files that the coordinator ingests.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

import duckdb

from kdgrid.errors import StoreBusy, StoreError
from kdgrid.records import RunResult, TeacherRow

if TYPE_CHECKING:
    import pandas as pd


class StudyCounts(TypedDict):
    """A study's distinct runs by status (``kdgrid status``); pending counts interrupted runs too."""

    study: str
    runs: int
    done: int
    failed: int
    running: int
    pending: int


SCHEMA_VERSION = "1"

_DDL = """
CREATE TABLE IF NOT EXISTS kdgrid_meta (key VARCHAR PRIMARY KEY, value VARCHAR);
CREATE TABLE IF NOT EXISTS studies (
    name VARCHAR PRIMARY KEY, path VARCHAR, text VARCHAR, sha256 VARCHAR,
    created TIMESTAMP DEFAULT current_timestamp, updated TIMESTAMP DEFAULT current_timestamp);
CREATE TABLE IF NOT EXISTS runs (
    run_id VARCHAR PRIMARY KEY, task VARCHAR, seed INTEGER, config JSON,
    status VARCHAR, attempt INTEGER DEFAULT 0, error VARCHAR,
    started TIMESTAMP, finished TIMESTAMP, duration_s DOUBLE,
    host VARCHAR, device VARCHAR, versions JSON, git_sha VARCHAR, run_dir VARCHAR);
-- Added after schema 1 shipped: the sha256 of the data files a run read (stores made before lack it).
ALTER TABLE runs ADD COLUMN IF NOT EXISTS data JSON;
CREATE TABLE IF NOT EXISTS study_runs (
    study VARCHAR, cell VARCHAR, run_id VARCHAR, PRIMARY KEY (study, cell, run_id));
CREATE TABLE IF NOT EXISTS factors (
    study VARCHAR, cell VARCHAR, run_id VARCHAR, name VARCHAR, value VARCHAR,
    PRIMARY KEY (study, cell, run_id, name));
CREATE TABLE IF NOT EXISTS metrics (
    run_id VARCHAR, stage VARCHAR, epoch INTEGER, step INTEGER, split VARCHAR,
    name VARCHAR, value DOUBLE);
CREATE TABLE IF NOT EXISTS teachers (
    key VARCHAR PRIMARY KEY, task VARCHAR, model VARCHAR, seed INTEGER, path VARCHAR,
    metrics JSON, majority DOUBLE, flagged BOOLEAN, created TIMESTAMP DEFAULT current_timestamp);
CREATE TABLE IF NOT EXISTS trials (
    search VARCHAR, number INTEGER, run_id VARCHAR, params JSON, value DOUBLE, state VARCHAR,
    PRIMARY KEY (search, number));
"""

RUN_STATUSES = ("pending", "running", "done", "failed", "interrupted")


def default_db_path() -> Path:
    return Path(os.environ.get("KDGRID_DB", "kdgrid.duckdb"))


class Store:
    """A kdgrid DuckDB store. Use :func:`open_store` (a context manager)."""

    def __init__(self, con: duckdb.DuckDBPyConnection, path: Path) -> None:
        self.con = con
        self.path = path

    # -- writing -----------------------------------------------------------
    @contextmanager
    def transaction(self) -> Iterator[None]:
        self.con.execute("BEGIN TRANSACTION")
        try:
            yield
        except BaseException:
            self.con.execute("ROLLBACK")
            raise
        self.con.execute("COMMIT")

    def register_study(
        self, name: str, path: str, text: str, sha256: str, members: Iterable[Any], *, replace: bool = True
    ) -> None:
        """Record a study and its planned runs (``members``: PlannedRun-like objects); ``replace=False`` adds
        them to the study's members (a search's batches of trials) instead of making them its only ones."""
        members = list(members)
        with self.transaction():
            self.con.execute(
                """INSERT INTO studies (name, path, text, sha256) VALUES (?, ?, ?, ?)
                   ON CONFLICT (name) DO UPDATE SET path = excluded.path, text = excluded.text,
                   sha256 = excluded.sha256, updated = now()""",
                [name, path, text, sha256],
            )
            if replace:  # a grid's membership is whatever its current file plans
                self.con.execute("DELETE FROM study_runs WHERE study = ?", [name])
                self.con.execute("DELETE FROM factors WHERE study = ?", [name])
            # Bulk inserts from Arrow tables: DuckDB's executemany costs ~20 ms a row here (100 s for 1,000 runs).
            pairs = list(dict.fromkeys((m.cell, m.run_id) for m in members))
            self._insert_arrow(
                "INSERT OR IGNORE INTO study_runs SELECT * FROM {t}",
                {"study": [name] * len(pairs), "cell": [c for c, _ in pairs], "run_id": [r for _, r in pairs]},
            )
            factor_rows = list({(m.cell, m.run_id, k): str(v) for m in members for k, v in m.factors.items()}.items())
            self._insert_arrow(
                "INSERT OR IGNORE INTO factors SELECT * FROM {t}",
                {
                    "study": [name] * len(factor_rows),
                    "cell": [k[0] for k, _ in factor_rows],
                    "run_id": [k[1] for k, _ in factor_rows],
                    "name": [k[2] for k, _ in factor_rows],
                    "value": [v for _, v in factor_rows],
                },
            )
            unique = list({m.run_id: m for m in members}.values())
            self._insert_arrow(
                """INSERT INTO runs (run_id, task, seed, config, status)
                   SELECT run_id, task, seed, config, 'pending' FROM {t} ON CONFLICT (run_id) DO NOTHING""",
                {
                    "run_id": [m.run_id for m in unique],
                    "task": [m.task for m in unique],
                    "seed": pa_ints([m.seed for m in unique]),
                    "config": [json.dumps(m.config_data(), sort_keys=True) for m in unique],
                },
            )

    def _insert_arrow(self, sql: str, columns: dict[str, Any]) -> int:
        """Run ``sql`` with ``{t}`` naming a temporary view of ``columns`` (an Arrow table; None is NULL);
        return the count of rows it changed (0 when ``columns`` is empty)."""
        import pyarrow as pa

        n = len(next(iter(columns.values()))) if columns else 0
        if n == 0:
            return 0
        table = pa.table({k: v if isinstance(v, pa.Array) else pa.array(v) for k, v in columns.items()})
        view = "_kdgrid_bulk"
        self.con.register(view, table)
        try:
            row = self.con.execute(sql.format(t=view)).fetchone()
        finally:
            self.con.unregister(view)
        return int(row[0]) if row and isinstance(row[0], int) else 0

    def mark_running(self, run_id: str, run_dir: str) -> None:
        self.con.execute(
            """UPDATE runs SET status = 'running', attempt = attempt + 1, started = now(),
               error = NULL, run_dir = ? WHERE run_id = ?""",
            [run_dir, run_id],
        )

    def set_status(self, run_id: str, status: str, error: str | None = None) -> None:
        self.con.execute("UPDATE runs SET status = ?, error = ? WHERE run_id = ?", [status, error, run_id])

    def reset_stale_running(self, keep: Iterable[str] = ()) -> int:
        """Rows left 'running' by a dead coordinator become 'interrupted' (call only while holding the lock).

        ``keep``: runs still held by a live cluster job (they really are running).
        """
        where = "status = 'running' AND NOT list_contains(?::VARCHAR[], run_id)"
        keep_ids = list(keep)
        n = self._scalar(f"SELECT count(*) FROM runs WHERE {where}", [keep_ids])
        self.con.execute(
            f"UPDATE runs SET status = 'interrupted', error = 'coordinator stopped' WHERE {where}", [keep_ids]
        )
        return int(n)

    def ingest_result(self, result: RunResult) -> None:
        """Write one run's result; idempotent (a second ingest of the same result changes nothing)."""
        self.ingest_results([result])

    def ingest_results(self, results: Iterable[RunResult]) -> None:
        """Write many runs' results in one transaction, as if ingested one after another (idempotent).

        Rows go in through Arrow tables (one statement per table, not one per row): about 1 ms per
        100-row result instead of ~200 ms with executemany (bench/bookkeeping.py).
        """
        import pyarrow as pa

        latest = {r["run_id"]: r for r in results}  # the later result of a run wins, as with single ingests
        if not latest:
            return
        res = list(latest.values())
        ids = [r["run_id"] for r in res]
        metrics = [(r["run_id"], m) for r in res for m in r.get("metrics", [])]
        teachers = list({t["key"]: t for r in res if (t := r.get("teacher"))}.values())
        with self.transaction():
            self._insert_arrow("DELETE FROM metrics WHERE run_id IN (SELECT run_id FROM {t})", {"run_id": ids})
            self._insert_arrow(
                "INSERT INTO metrics SELECT * FROM {t}",
                {
                    "run_id": [rid for rid, _ in metrics],
                    "stage": [m.get("stage", "final") for _, m in metrics],
                    "epoch": pa_ints([m.get("epoch") for _, m in metrics]),
                    "step": pa_ints([m.get("step") for _, m in metrics]),
                    "split": [m.get("split", "dev") for _, m in metrics],
                    "name": [m["name"] for _, m in metrics],
                    "value": pa.array([_num(m["value"]) for _, m in metrics], type=pa.float64()),
                },
            )
            # Runs are nearly always registered already: update them, insert only the ones missing
            # (an INSERT ... ON CONFLICT costs more in DuckDB than the update itself).
            row = {
                "run_id": ids,
                "status": [r["status"] for r in res],
                "error": pa.array([r.get("error") for r in res], type=pa.string()),
                "started": pa.array([_text(r.get("started")) for r in res], type=pa.string()),
                "finished": pa.array([_text(r.get("finished")) for r in res], type=pa.string()),
                "duration_s": pa.array([_num(r.get("duration_s")) for r in res], type=pa.float64()),
                "host": pa.array([r.get("host") for r in res], type=pa.string()),
                "device": pa.array([r.get("device") for r in res], type=pa.string()),
                "versions": [json.dumps(r.get("versions", {})) for r in res],
                "git_sha": pa.array([r.get("git_sha") for r in res], type=pa.string()),
                "data": pa.array([json.dumps(r["data"]) if r.get("data") else None for r in res], type=pa.string()),
                "task": pa.array([r.get("task") for r in res], type=pa.string()),
                "seed": pa_ints([r.get("seed") for r in res]),
                "config": [json.dumps(r.get("config"), sort_keys=True) for r in res],
            }
            updated = self._insert_arrow(
                """UPDATE runs SET status = u.status, error = u.error, started = CAST(u.started AS TIMESTAMP),
                   finished = CAST(u.finished AS TIMESTAMP), duration_s = u.duration_s, host = u.host,
                   device = u.device, versions = u.versions, git_sha = u.git_sha, data = u.data
                   FROM {t} AS u WHERE runs.run_id = u.run_id""",
                row,
            )
            if updated != len(ids):
                self._insert_arrow(
                    """INSERT INTO runs (run_id, task, seed, config, status, error, started, finished, duration_s,
                                         host, device, versions, git_sha, data)
                       SELECT run_id, task, seed, config, status, error, CAST(started AS TIMESTAMP),
                              CAST(finished AS TIMESTAMP), duration_s, host, device, versions, git_sha, data
                       FROM {t} WHERE run_id NOT IN (SELECT run_id FROM runs)""",
                    row,
                )
            for t in teachers:
                self.upsert_teacher(t)

    def upsert_teacher(self, t: TeacherRow) -> None:
        values = [
            t["key"],
            t["task"],
            t["model"],
            t.get("seed"),
            t.get("path"),
            json.dumps(t.get("metrics", {})),
            _num(t.get("majority")),
            bool(t.get("flagged", False)),
        ]
        # Every run's result carries its teacher: write a teacher once per session unless it changed
        # (an upsert costs ~10-20 ms in DuckDB; only this connection writes the store).
        seen = self.__dict__.setdefault("_teachers_written", {})
        if seen.get(t["key"]) == values:
            return
        self.con.execute(
            """INSERT INTO teachers (key, task, model, seed, path, metrics, majority, flagged)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (key) DO UPDATE SET path = excluded.path,
               metrics = excluded.metrics, majority = excluded.majority, flagged = excluded.flagged""",
            values,
        )
        seen[t["key"]] = values

    # -- reading -----------------------------------------------------------
    def all_run_statuses(self) -> dict[str, str]:
        """run_id -> status of every run in the store."""
        return {str(rid): str(status) for rid, status in self.con.execute("SELECT run_id, status FROM runs").fetchall()}

    def run_statuses(self, run_ids: Iterable[str]) -> dict[str, str]:
        ids = list(run_ids)
        if not ids:
            return {}
        rows = self.con.execute("SELECT run_id, status FROM runs WHERE list_contains(?, run_id)", [ids]).fetchall()
        return dict(rows)

    def unfinished_runs(self) -> dict[str, str]:
        """Run id -> status of every run that is not done."""
        return dict(self.con.execute("SELECT run_id, status FROM runs WHERE status <> 'done'").fetchall())

    def final_dev_metrics(self, run_ids: Iterable[str]) -> dict[str, dict[str, float]]:
        """Run id -> {metric: value} of the final dev scores of the given runs (NaN where stored NULL)."""
        ids = list(run_ids)
        if not ids:
            return {}
        rows = self.con.execute(
            """SELECT run_id, name, value FROM metrics
               WHERE stage = 'final' AND split = 'dev' AND list_contains(?, run_id)""",
            [ids],
        ).fetchall()
        out: dict[str, dict[str, float]] = {}
        for run_id, name, value in rows:
            out.setdefault(run_id, {})[name] = float("nan") if value is None else float(value)
        return out

    def study_texts(self) -> dict[str, str]:
        """Study name -> the study file's text, as registered."""
        return dict(self.con.execute("SELECT name, text FROM studies").fetchall())

    def study_text(self, name: str) -> str | None:
        row = self.con.execute("SELECT text FROM studies WHERE name = ?", [name]).fetchone()
        return None if row is None else row[0]

    def study_names(self) -> list[str]:
        return [r[0] for r in self.con.execute("SELECT name FROM studies ORDER BY name").fetchall()]

    def study_run_counts(self, study: str) -> tuple[int, int]:
        """(done, all) distinct runs of a study."""
        row = self.con.execute(
            """SELECT count(DISTINCT r.run_id) FILTER (WHERE r.status = 'done'), count(DISTINCT r.run_id)
               FROM study_runs s JOIN runs r USING (run_id) WHERE s.study = ?""",
            [study],
        ).fetchone()
        return (0, 0) if row is None else (int(row[0]), int(row[1]))

    def study_status(self) -> list[StudyCounts]:
        rows = self.con.execute(
            """SELECT s.study, count(DISTINCT r.run_id) AS runs,
                      count(DISTINCT r.run_id) FILTER (WHERE r.status = 'done') AS done,
                      count(DISTINCT r.run_id) FILTER (WHERE r.status = 'failed') AS failed,
                      count(DISTINCT r.run_id) FILTER (WHERE r.status = 'running') AS running,
                      count(DISTINCT r.run_id) FILTER (WHERE r.status IN ('pending', 'interrupted')) AS pending
               FROM study_runs s JOIN runs r USING (run_id) GROUP BY s.study ORDER BY s.study"""
        ).fetchall()
        return [
            StudyCounts(
                study=str(r[0]), runs=int(r[1]), done=int(r[2]), failed=int(r[3]), running=int(r[4]), pending=int(r[5])
            )
            for r in rows
        ]

    def last_errors(self, study: str | None = None, limit: int = 5) -> list[tuple[str, str, str]]:
        sql = """SELECT DISTINCT r.run_id, s.study, r.error, r.finished FROM runs r JOIN study_runs s USING (run_id)
                 WHERE r.status = 'failed' AND r.error IS NOT NULL"""
        params: list[Any] = []
        if study:
            sql += " AND s.study = ?"
            params.append(study)
        sql += " ORDER BY r.finished DESC NULLS LAST LIMIT ?"
        params.append(limit)
        return [(r[0], r[1], r[2]) for r in self.con.execute(sql, params).fetchall()]

    def query_df(self, sql: str, params: list[Any] | None = None) -> pd.DataFrame:
        return self.con.execute(sql, params or []).df()

    def _scalar(self, sql: str, params: list[Any] | None = None) -> Any:
        """The first column of the first row (None when there is no row)."""
        row = self.con.execute(sql, params or []).fetchone()
        return None if row is None else row[0]


def pa_ints(values: list[Any]) -> Any:
    """An Arrow int64 column from ints, numeric strings or None (None stays NULL)."""
    import pyarrow as pa

    return pa.array([None if v is None else int(v) for v in values], type=pa.int64())


def _text(v: Any) -> str | None:
    return None if v is None else str(v)


def _num(v: Any) -> float | None:
    if v is None:
        return None
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def _is_kdgrid(con: duckdb.DuckDBPyConnection) -> bool:
    tables = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
    if not tables:
        return True  # an empty database becomes a store
    if "kdgrid_meta" not in tables:
        return False
    row = con.execute("SELECT value FROM kdgrid_meta WHERE key = 'app'").fetchone()
    return bool(row and row[0] == "kdgrid")


#: How long a reader (status, report, export) waits for a writer's lock: a coordinator holds the file
#: for well under a second per write, so a reader that arrives then should wait, not fail.
READER_WAIT_S = 15.0


def _connect(p: Path, read_only: bool, wait_s: float) -> duckdb.DuckDBPyConnection:
    """duckdb.connect, waiting up to ``wait_s`` (backoff with jitter) while another process holds the file.

    The one place that recognises DuckDB's lock error; callers see :class:`StoreBusy`.
    """
    deadline = time.monotonic() + wait_s
    delay = 0.02
    while True:
        try:
            return duckdb.connect(str(p), read_only=read_only)
        except duckdb.IOException as exc:
            msg = str(exc).splitlines()[0]
            if "lock" not in msg.lower():
                raise
            if time.monotonic() > deadline:
                raise StoreBusy(f"{p}: the store is in use by another kdgrid process ({msg})") from None
        time.sleep(delay * (1 + random.random()))  # jitter: processes that collided do not collide again
        delay = min(2 * delay, 0.5)


@contextmanager
def open_store(
    path: str | Path | None = None, *, read_only: bool = False, create: bool = True, wait_s: float | None = None
) -> Iterator[Store]:
    """Open (and create, unless ``read_only``) a kdgrid store; one clear StoreError otherwise.

    While another process holds the file it waits up to ``wait_s`` seconds (default: READER_WAIT_S for a
    reader, none for a writer), then raises :class:`StoreBusy`.
    """
    p = Path(path) if path is not None else default_db_path()
    if read_only and not p.exists():
        raise StoreError(f"{p}: no kdgrid store here (run 'kdgrid run STUDY' first, or pass --db PATH)")
    if not create and not p.exists():
        raise StoreError(f"{p}: no kdgrid store here")
    if p.exists() and p.is_dir():
        raise StoreError(f"{p}: is a directory, not a DuckDB file")
    try:
        con = _connect(p, read_only, (READER_WAIT_S if read_only else 0.0) if wait_s is None else wait_s)
    except duckdb.IOException as exc:
        raise StoreError(f"{p}: not a DuckDB database or unreadable ({str(exc).splitlines()[0]})") from None
    except duckdb.Error as exc:
        raise StoreError(f"{p}: not a DuckDB database or unreadable ({str(exc).splitlines()[0]})") from None
    try:
        try:
            if not _is_kdgrid(con):
                raise StoreError(
                    f"{p}: a DuckDB file that is not a kdgrid store (no kdgrid_meta table); choose another --db"
                )
            _check_schema_version(con, p)
            if not read_only:
                con.execute(_DDL)
                con.execute(
                    "INSERT OR IGNORE INTO kdgrid_meta VALUES ('app', 'kdgrid'), ('schema_version', ?)",
                    [SCHEMA_VERSION],
                )
            yield Store(con, p)
        except duckdb.Error as exc:
            # A truncated or corrupt file often opens and fails only when a query reaches the damaged
            # blocks: any command, at any query, then says so in one line instead of a traceback.
            if _is_damage(exc):
                raise StoreError(
                    f"{p}: the store is damaged ({_first_line(exc)}); restore it from a copy, or "
                    "'kdgrid run' each study into a new --db (finished run directories are ingested "
                    "again)"
                ) from None
            if isinstance(exc, duckdb.IOException):  # a full disk, a file system gone read-only
                raise StoreError(f"{p}: cannot read or write the store ({_first_line(exc)})") from None
            raise
    finally:
        con.close()


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _is_damage(exc: duckdb.Error) -> bool:
    """DuckDB's errors for a file cut short or with bad blocks (not a mistake in a query)."""
    text = str(exc).lower()
    return isinstance(exc, duckdb.SerializationException) or any(
        w in text for w in ("corrupt", "checksum", "could not read enough bytes", "not a valid duckdb")
    )


def _check_schema_version(con: duckdb.DuckDBPyConnection, p: Path) -> None:
    """Refuse a store written by a newer kdgrid (it may hold tables or meanings this one does not know)."""
    tables = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
    if "kdgrid_meta" not in tables:
        return  # an empty database: it becomes a store of this version
    row = con.execute("SELECT value FROM kdgrid_meta WHERE key = 'schema_version'").fetchone()
    if row is None:
        return  # marked 'app' but not yet versioned: this kdgrid writes the version
    version = str(row[0])
    if not version.isdigit():
        raise StoreError(f"{p}: the store is damaged (kdgrid_meta.schema_version is {version!r}, not a number)")
    if int(version) > int(SCHEMA_VERSION):
        raise StoreError(
            f"{p}: written by a newer kdgrid (store schema version {version}; this kdgrid reads up to "
            f"{SCHEMA_VERSION}); upgrade kdgrid, or choose another --db"
        )
