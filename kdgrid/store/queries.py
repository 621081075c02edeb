"""Read-only queries that turn the store into tidy tables for analysis."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pandas as pd

from kdgrid.store.db import Store


def _frame(store: Store, sql: str, params: list[Any]) -> pd.DataFrame:
    """``store.query_df`` through Arrow: the same frame (the tests compare them), strings converted in
    bulk instead of one Python object per cell (3x faster on the 360,000 mapping rows of 10,000 runs).
    An empty result goes the usual way, whose column dtypes callers have seen so far."""
    cur = store.con.cursor()  # its own result: the store's connection may hold an unfinished one
    try:
        table = cur.sql(sql, params=params).to_arrow_table()
    finally:
        cur.close()
    return store.query_df(sql, params) if table.num_rows == 0 else table.to_pandas()


def tidy_results(store: Store, study: str) -> pd.DataFrame:
    """One row per (cell, run) of a study: factor columns, task, seed, run_id, final dev metrics.

    Only runs with status 'done' appear; a run shared by two cells (collapsed factor) appears once per cell.
    """
    members = _frame(
        store,
        """SELECT s.cell, s.run_id, r.task, r.seed FROM study_runs s JOIN runs r USING (run_id)
           WHERE s.study = ? AND r.status = 'done'""",
        [study],
    )
    if members.empty:
        return members
    factors = _frame(store, "SELECT cell, run_id, name, value FROM factors WHERE study = ?", [study])
    if not factors.empty:
        wide = factors.pivot_table(index=["cell", "run_id"], columns="name", values="value", aggfunc="first")
        order = list(dict.fromkeys(factors["name"]))
        wide = wide[order].reset_index()
        members = members.merge(wide, on=["cell", "run_id"], how="left")
    mw = _final_metrics_wide(store, "m.run_id IN (SELECT run_id FROM study_runs WHERE study = ?)", [study])
    if mw is not None:
        members = members.merge(mw, on="run_id", how="left")
    return members.sort_values(["task", "cell", "seed"]).reset_index(drop=True)


def _final_metrics_wide(store: Store, where: str, params: list[Any]) -> pd.DataFrame | None:
    """Final dev and efficiency metrics, one row per run and one column per name (sorted), None if none.

    DuckDB pivots: 10,000 runs have 600,000 such rows, and moving them into pandas to pivot there took
    seconds. A name recorded twice for a run keeps its last non-null value (insertion order, as
    pandas' pivot_table(aggfunc="last") did on the scan order); a name null in every run is left out.
    """
    filt = f"stage = 'final' AND split IN ('dev', 'efficiency') AND {where.replace('m.run_id', 'run_id')}"
    names = [
        r[0]
        for r in store.con.execute(
            f"SELECT DISTINCT name FROM metrics WHERE {filt} AND value IS NOT NULL ORDER BY name", params
        ).fetchall()
    ]
    if not names:
        return None
    wide = _frame(
        store,
        f"""PIVOT (SELECT run_id, name, value, rowid AS rid FROM metrics WHERE {filt} AND value IS NOT NULL)
            ON name IN ({", ".join("'" + n.replace("'", "''") + "'" for n in names)})
            USING arg_max(value, rid) GROUP BY run_id""",
        params,
    )
    return wide[["run_id", *sorted(names)]]


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
    # avg in run order: DuckDB's parallel avg adds in whatever order its threads finish, so the last
    # digit of a score over 10,000 runs changed between two reports of the same store.
    return store.query_df(
        """SELECT r.task, m.name, avg(m.value ORDER BY m.run_id) AS value FROM metrics m JOIN runs r USING (run_id)
           WHERE m.split = 'teacher' AND r.status = 'done'
             AND m.run_id IN (SELECT run_id FROM study_runs WHERE study = ?)
           GROUP BY r.task, m.name ORDER BY r.task, m.name""",
        [study],
    )


def run_curves(store: Store, run_id: str) -> Any:
    return store.query_df("SELECT * FROM metrics WHERE run_id = ? ORDER BY stage, epoch, step", [run_id])


def mapping_weights(store: Store, study: str) -> pd.DataFrame:
    """Learned layer-mapping weights per epoch: task, cell, seed, epoch, student_layer, teacher_layer, weight."""
    # The layers are parsed by DuckDB: pandas' str.extract took 8 s on the 360,000 rows of 10,000 runs.
    # A name that is not s<i>.t<j> fails the cast, as it failed pandas' astype(int).
    return _frame(
        store,
        r"""SELECT r.task, s.cell, r.seed, m.stage, m.epoch,
                  CAST(regexp_extract(m.name, 's(\d+)\.t(\d+)', 1) AS BIGINT) AS student_layer,
                  CAST(regexp_extract(m.name, 's(\d+)\.t(\d+)', 2) AS BIGINT) AS teacher_layer,
                  m.value AS weight
           FROM metrics m JOIN runs r USING (run_id) JOIN study_runs s USING (run_id)
           WHERE m.split = 'mapping' AND s.study = ? AND r.status = 'done'
           ORDER BY r.task, s.cell, r.seed, m.stage, m.epoch, m.name""",  # a run shared by two cells: same order every time
        [study],
    )


def layer_assignments(store: Store, study: str) -> pd.DataFrame:
    """Which teacher layers each cell's students copied and are trained towards: cell, copied, mapped.

    Layers read as ``1-2-3-4`` (student layer 1 first); ``mapped`` of a learnable mapping reads
    ``learnable over 1-2-3-4``: the fixed map its ``layers`` name, where a ``fixed`` start peaks and which the
    student copies (a ``uniform`` start spreads over every teacher layer). ``-`` where nothing was copied (random
    init) or no layer loss is trained. A cell whose runs differ (tasks of another depth) lists each variant once, joined by ``|``.
    Empty (columns only) for runs stored before the ``layers`` rows existed.
    """
    rows = _frame(
        store,
        """SELECT s.cell, m.run_id, m.name, m.value
           FROM metrics m JOIN runs r USING (run_id) JOIN study_runs s USING (run_id)
           WHERE m.split = 'layers' AND s.study = ? AND r.status = 'done'""",
        [study],
    )
    columns = ["cell", "copied", "mapped"]
    if rows.empty:
        return pd.DataFrame(columns=columns)

    def chain(g: pd.DataFrame, prefix: str) -> str:
        sel = g[g["name"].str.startswith(prefix)]
        if sel.empty:
            return "-"
        order = sel["name"].str.slice(len(prefix)).astype(int)
        return "-".join(str(int(v)) for v in sel.assign(k=order).sort_values("k")["value"])

    per_run = []
    for (cell, _), g in rows.groupby(["cell", "run_id"], sort=False):
        mapped = chain(g, "mapped.s")
        learnable = bool((g.loc[g["name"] == "learnable", "value"] > 0).any())
        per_run.append(
            {
                "cell": cell,
                "copied": chain(g, "copied.s"),
                "mapped": f"learnable over {mapped}" if learnable and mapped != "-" else mapped,
            }
        )

    def variants(values: pd.Series) -> str:
        return " | ".join(dict.fromkeys(str(v) for v in values))

    runs = pd.DataFrame(per_run)
    return runs.groupby("cell", sort=True).agg(variants).reset_index()[columns]


def export_runs(store: Store, study: str | None = None) -> pd.DataFrame:
    """Every done run with its final metrics (and, for one study, its factors): the table `kdgrid export` writes."""
    if study is not None:
        return tidy_results(store, study)
    runs = store.query_df("SELECT run_id, task, seed, status FROM runs WHERE status = 'done'")
    wide = _final_metrics_wide(store, "TRUE", [])
    return runs if wide is None else runs.merge(wide, on="run_id", how="left")


# --------------------------------------------------------------------------- reproducibility

# Membership goes through study_runs: a run serves every study whose plan holds its config, so only this
# study's runs may count. IN (subquery) counts a run once even when it fills several cells.
_OF_STUDY = "run_id IN (SELECT run_id FROM study_runs WHERE study = ?)"
_DONE_OF_STUDY = f"{_OF_STUDY} AND status = 'done'"
_SPLIT_ORDER = {"train": 0, "dev": 1}
_STATUS_ORDER = ("done", "failed", "interrupted", "running", "pending")  # what the numbers rest on first


@dataclass(frozen=True)
class CodeVersion:
    """A kdgrid version and commit, with how many done runs used it (None: not recorded)."""

    version: str | None
    commit: str | None
    runs: int


@dataclass(frozen=True)
class LibrarySet:
    """One distinct set of library versions (python, torch, transformers, ...); empty: not recorded."""

    versions: dict[str, str]
    runs: int


@dataclass(frozen=True)
class Machine:
    host: str | None
    device: str | None
    runs: int


@dataclass(frozen=True)
class DataFile:
    """A data file's fingerprint as runs recorded it; ``split`` and ``hash`` are None for runs that did not."""

    task: str
    split: str | None
    hash: str | None
    runs: int


@dataclass(frozen=True)
class TeacherUsed:
    key: str
    task: str
    model: str
    seed: int | None
    majority: float | None
    flagged: bool
    runs: int


@dataclass(frozen=True)
class PluginUsed:
    """A plug-in (not built into kdgrid) the done runs used, as recorded in their configs."""

    key: str  # 'losses.cosine_hidden', 'mappings.top', ...
    package: str
    version: str
    settings_sha: str
    runs: int


@dataclass(frozen=True)
class Reproducibility:
    """What a reader needs to rerun a study and check that the same code and data were used.

    Counts and timing cover every run of the study; code, libraries, machines, data and teachers
    cover its done runs, the ones the report's numbers come from.
    """

    study: str
    db: str
    path: str | None
    sha256: str | None
    text: str | None
    status_counts: dict[str, int]
    first_started: datetime | None
    last_finished: datetime | None
    run_time_s: float | None
    code: tuple[CodeVersion, ...]
    libraries: tuple[LibrarySet, ...]
    machines: tuple[Machine, ...]
    data_recorded: bool  # False: the store predates runs.data
    data: tuple[DataFile, ...]
    teachers: tuple[TeacherUsed, ...]
    plugins: tuple[PluginUsed, ...] = ()

    @property
    def runs(self) -> int:
        return sum(self.status_counts.values())

    @property
    def done(self) -> int:
        return self.status_counts.get("done", 0)

    @property
    def wall_s(self) -> float | None:
        if self.first_started is None or self.last_finished is None:
            return None
        return (self.last_finished - self.first_started).total_seconds()


def study_reproducibility(store: Store, study: str) -> Reproducibility:
    """The provenance of a study's runs, read from the store alone (no data directory, no model)."""
    row = store.con.execute("SELECT path, text, sha256 FROM studies WHERE name = ?", [study]).fetchone()
    path, text, sha = row if row is not None else (None, None, None)
    first, last, run_time = _timing(store, study)
    code, libraries = _code_and_libraries(store, study)
    recorded, data = _data_files(store, study)
    return Reproducibility(
        study=study,
        db=str(store.path),
        path=path,
        sha256=sha,
        text=text,
        status_counts=_status_counts(store, study),
        first_started=first,
        last_finished=last,
        run_time_s=run_time,
        code=code,
        libraries=libraries,
        machines=_machines(store, study),
        data_recorded=recorded,
        data=data,
        teachers=_teachers_used(store, study),
        plugins=_plugins_used(store, study),
    )


def _plugins_used(store: Store, study: str) -> tuple[PluginUsed, ...]:
    """The plug-ins recorded in the done runs' configs (kdgrid.plugins.terms.plugins_used), with run counts."""
    # DuckDB groups the runs by their plug-in block (a few distinct values), so each is parsed once,
    # not once per run (10,000 configs: 0.4 s of json.loads).
    rows = store.con.execute(
        f"SELECT json_extract(config, '$.plugins') AS p, count(*) FROM runs WHERE {_DONE_OF_STUDY} GROUP BY p",
        [study],
    ).fetchall()
    counts: Counter[tuple[str, str, str, str]] = Counter()
    for plugins, n in rows:
        for key, p in _json_dict(plugins).items():
            counts[(key, str(p.get("package")), str(p.get("version")), str(p.get("settings_sha")))] += int(n)
    return tuple(PluginUsed(*k, n) for k, n in sorted(counts.items()))


def _timing(store: Store, study: str) -> tuple[datetime | None, datetime | None, float | None]:
    """First start, last finish and summed duration over every run of the study, whatever its status:
    a failed run took time too."""
    row = store.con.execute(
        f"SELECT min(started), max(finished), sum(duration_s) FROM runs WHERE {_OF_STUDY}", [study]
    ).fetchone()
    if row is None:
        return None, None, None
    return row[0], row[1], None if row[2] is None else float(row[2])


def _status_counts(store: Store, study: str) -> dict[str, int]:
    rows = store.con.execute(f"SELECT status, count(*) FROM runs WHERE {_OF_STUDY} GROUP BY status", [study]).fetchall()
    rank = {s: i for i, s in enumerate(_STATUS_ORDER)}
    return {str(s): int(n) for s, n in sorted(rows, key=lambda r: (rank.get(r[0], len(rank)), str(r[0])))}


def _json_dict(text: Any) -> dict[str, Any]:
    """A JSON object column's value as a dict; NULL, '{}' and anything malformed read as empty."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except (TypeError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _code_and_libraries(store: Store, study: str) -> tuple[tuple[CodeVersion, ...], tuple[LibrarySet, ...]]:
    rows = store.con.execute(
        f"""SELECT versions, git_sha, count(*) FROM runs WHERE {_DONE_OF_STUDY}
            GROUP BY versions, git_sha ORDER BY versions NULLS LAST, git_sha NULLS LAST""",
        [study],
    ).fetchall()
    code: Counter[tuple[str | None, str | None]] = Counter()
    libraries: Counter[tuple[tuple[str, str], ...]] = Counter()
    for versions, git_sha, n in rows:
        libs = {str(k): str(v) for k, v in _json_dict(versions).items()}
        version = libs.pop("kdgrid", None)
        recorded_sha = libs.pop("kdgrid_git", None)
        # runs.git_sha is the column meant for the commit; the versions JSON carries it too (kdgrid_git).
        code[(version, git_sha or recorded_sha)] += int(n)
        libraries[tuple(sorted(libs.items()))] += int(n)
    return (
        tuple(CodeVersion(v, c, n) for (v, c), n in code.most_common()),
        tuple(LibrarySet(dict(k), n) for k, n in libraries.most_common()),
    )


def _machines(store: Store, study: str) -> tuple[Machine, ...]:
    rows = store.con.execute(
        f"""SELECT host, device, count(*) AS n FROM runs WHERE {_DONE_OF_STUDY}
            GROUP BY host, device ORDER BY n DESC, host NULLS LAST, device NULLS LAST""",
        [study],
    ).fetchall()
    return tuple(Machine(h, d, int(n)) for h, d, n in rows)


def _has_column(store: Store, table: str, column: str) -> bool:
    row = store.con.execute(
        "SELECT count(*) FROM information_schema.columns WHERE table_name = ? AND column_name = ?", [table, column]
    ).fetchone()
    return bool(row and row[0])


def _data_files(store: Store, study: str) -> tuple[bool, tuple[DataFile, ...]]:
    """(whether the store has runs.data, the distinct (task, split, hash) with run counts).

    A store opened read-only is never migrated, so one written before runs.data existed lacks the column.
    """
    recorded = _has_column(store, "runs", "data")
    data = "data" if recorded else "NULL"
    rows = store.con.execute(
        f"SELECT task, {data} AS data, count(*) FROM runs WHERE {_DONE_OF_STUDY} GROUP BY task, data", [study]
    ).fetchall()
    counts: Counter[tuple[str, str | None, str | None]] = Counter()
    for task, text, n in rows:
        files = _json_dict(text)
        for split, digest in files.items():
            counts[(str(task), str(split), str(digest))] += int(n)
        if not files:
            counts[(str(task), None, None)] += int(n)
    ordered = sorted(counts.items(), key=lambda kv: _data_order(*kv[0]))
    return recorded, tuple(DataFile(t, s, h, n) for (t, s, h), n in ordered)


def _data_order(task: str, split: str | None, digest: str | None) -> tuple[Any, ...]:
    # Per task: train, dev, other splits, then the runs that recorded nothing.
    return task, split is None, _SPLIT_ORDER.get(split or "", len(_SPLIT_ORDER)), split or "", digest or ""


def _teachers_used(store: Store, study: str) -> tuple[TeacherUsed, ...]:
    """Teachers whose task, model and fine-tune seed match the study's done runs.

    Runs do not store their teacher's cache key, so two teachers fine-tuned with other settings
    on the same (task, model, seed) both match; the report says so when it happens.
    """
    rows = store.con.execute(
        f"""WITH used AS (
                SELECT task, json_extract_string(config, '$.teacher.model') AS model,
                       TRY_CAST(json_extract_string(config, '$.teacher.finetune.seed') AS INTEGER) AS seed,
                       count(*) AS runs
                FROM runs WHERE {_DONE_OF_STUDY} GROUP BY ALL)
            SELECT t.key, t.task, t.model, t.seed, t.majority, t.flagged, u.runs
            FROM used u JOIN teachers t ON t.task = u.task AND t.model = u.model AND t.seed IS NOT DISTINCT FROM u.seed
            ORDER BY t.task, t.model, t.seed, t.key""",
        [study],
    ).fetchall()
    return tuple(
        TeacherUsed(
            str(k),
            str(t),
            str(m),
            None if s is None else int(s),
            None if maj is None else float(maj),
            bool(flag),
            int(n),
        )
        for k, t, m, s, maj, flag, n in rows
    )
