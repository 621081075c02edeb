"""Reading and normalising the tidy results table that every analysis starts from.

The table has one row per run: factor columns (``objective.intermediate.attention``
or short names), ``task``, ``seed`` and metric columns (``mcc``, ``accuracy``, ...).
Everything in :mod:`kdgrid.analyze` goes through :func:`prepare`, which

* resolves the metric (one column, a dict task -> column, or ``"auto"`` for each
  GLUE task's official metric from :mod:`kdgrid.tasks`),
* turns every factor value into a canonical string *level* (:func:`level_key`), so
  that ``0.5``, ``"0.5"`` and ``"0.50"`` are one level and ``1`` equals ``1.0``,
* orders levels deterministically (:func:`level_order`) so that row order never
  changes a result,
* labels cells ``"k=v, k=v"`` with short factor names (:func:`short_names`),
* builds the **run-level table** (:func:`run_level`, ``Prepared.runs``): each run once,
  with the cells it stands for. A store lists a run shared by several cells (a factor
  without effect at some level of another) once per cell; models and tests that count
  that row twice inflate their degrees of freedom, so they read ``runs`` and model the
  collapse with a merged factor (:class:`Collapse`).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd

from kdgrid.errors import KdgridError

__all__ = [
    "KNOWN_METRICS",
    "RESERVED_COLUMNS",
    "AnalysisError",
    "Collapse",
    "MetricSpec",
    "Prepared",
    "cell_label",
    "group_rows",
    "infer_factors",
    "level_key",
    "level_keys",
    "level_order",
    "load_table",
    "prepare",
    "run_level",
    "short_names",
]

#: Metric columns recognised without being named (GLUE dev metrics).
KNOWN_METRICS: tuple[str, ...] = ("accuracy", "f1", "mcc", "pearson", "spearman")
#: Columns that are never factors.
RESERVED_COLUMNS: tuple[str, ...] = ("task", "seed", "run_id", "cell", "study", "status")
#: Name of the single task when the table has no ``task`` column.
DEFAULT_TASK = "all"
_INTERNAL = ("value", "metric", "cell_rank")

MetricSpec = str | Mapping[str, str]


class AnalysisError(KdgridError):
    """The results table or an analysis argument cannot be analysed as asked."""


# --------------------------------------------------------------------------- levels
def level_key(value: object) -> str:
    """Canonical string for a factor level: how levels are grouped and compared.

    Numbers and numeric strings become ``format(float(v), ".15g")`` (so ``0.5``,
    ``"0.5"`` and ``"0.50"`` are ``"0.5"``; ``1`` and ``1.0`` are ``"1"``); missing
    values are ``"NA"``; booleans ``"True"``/``"False"``; anything else ``str(v)``.
    """
    if value is None:
        return "NA"
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, float, np.integer, np.floating)):
        f = float(value)
        return "NA" if math.isnan(f) else format(f, ".15g")
    try:
        if pd.isna(cast(Any, value)):  # pd.NA, NaT (pandas' stubs accept no plain object)
            return "NA"
    except (TypeError, ValueError):
        pass
    text = str(value).strip()
    try:
        f = float(text)
    except ValueError:
        return text
    return format(f, ".15g") if math.isfinite(f) else text


def _is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def level_keys(column: pd.Series | Sequence[object]) -> list[str]:
    """:func:`level_key` of every value, computed once per distinct value (a 10,000-run table has a handful).

    The cache is keyed by the value's type and exact value (a float by its ``repr``, so that ``-0.0`` and
    ``0.0`` stay apart); values of other types are computed one by one.
    """
    if isinstance(column, pd.Series) and isinstance(column.dtype, pd.StringDtype):
        # Text columns (the store's factors): every value is a str or missing, so equal values are equal
        # strings and pandas' factorize groups them exactly; missing values read "NA".
        codes, uniques = pd.factorize(column, use_na_sentinel=True)
        table = np.asarray([*(level_key(u) for u in uniques), "NA"], dtype=object)
        return cast("list[str]", table[codes].tolist())
    values = column.to_numpy(dtype=object) if isinstance(column, pd.Series) else column
    cache: dict[tuple[type, object], str] = {}
    out: list[str] = []
    for v in values:
        t = type(v)
        if t is str or t is int or t is bool or isinstance(v, (np.str_, np.integer, np.bool_)):
            k: tuple[type, object] = (t, v)
        elif isinstance(v, (float, np.floating)):
            k = (t, repr(v))
        else:
            out.append(level_key(v))
            continue
        key = cache.get(k)
        if key is None:
            key = cache[k] = level_key(v)
        out.append(key)
    return out


def level_order(column: pd.Series, keys: Sequence[str] | None = None) -> list[str]:
    """Deterministic order of a factor's levels (canonical strings).

    A pandas ``Categorical`` keeps its category order; levels that are all numbers
    sort numerically; anything else sorts as text. ``"NA"`` goes last. Row order
    never matters, so shuffling the table cannot change the default baseline.
    ``keys``: :func:`level_keys` of ``column`` when the caller has them already.
    """
    present = set(level_keys(column) if keys is None else keys)
    if isinstance(column.dtype, pd.CategoricalDtype):
        cats = [level_key(c) for c in column.cat.categories]
        ordered = [c for c in dict.fromkeys(cats) if c in present]
        return ordered + (["NA"] if "NA" in present and "NA" not in ordered else [])
    ordered = sorted(present - {"NA"})
    if ordered and all(_is_number(k) for k in ordered):
        ordered.sort(key=float)
    if "NA" in present:
        ordered.append("NA")
    return ordered


def short_names(factors: Sequence[str]) -> dict[str, str]:
    """Factor column -> display name: the last dotted component when unambiguous.

    ``objective.intermediate.attention`` -> ``attention`` unless another factor
    also ends in ``attention``, in which case both keep their full names.
    """
    last = [f.rsplit(".", 1)[-1] for f in factors]
    return {f: (s if last.count(s) == 1 else f) for f, s in zip(factors, last)}


def cell_label(levels: Mapping[str, str], factors: Sequence[str], short: Mapping[str, str]) -> str:
    """``"k=v, k=v"`` over ``factors`` in order, with short names; ``"all"`` when no factor."""
    if not factors:
        return "all"
    return ", ".join(f"{short[f]}={levels[f]}" for f in factors)


# --------------------------------------------------------------------------- loading
def read_table(path: Path, what: str, *, comment: str | None = None) -> pd.DataFrame:
    """A ``.csv`` or ``.parquet`` file as a DataFrame; a missing file, another extension or a parse
    error is one :class:`AnalysisError` line naming ``what`` and the file."""
    if not path.is_file():
        raise AnalysisError(f"{what} not found: {path}")
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".parquet", ".pq"):
        raise AnalysisError(f"{what} {path}: unknown extension {suffix or '(none)'!r} (allowed: .csv, .parquet)")
    try:
        return pd.read_csv(path, comment=comment) if suffix == ".csv" else pd.read_parquet(path)
    except Exception as exc:  # parser errors of pandas/pyarrow are many types
        raise AnalysisError(f"cannot read {what} {path}: {exc}") from None


def load_table(path: str | Path, *, metric: MetricSpec | None = None) -> pd.DataFrame:
    """Read a tidy results table from ``.csv`` or ``.parquet``.

    Raises :class:`AnalysisError` when the file is missing, has an unknown extension,
    cannot be parsed, or has no metric column (the named ``metric`` column(s), or
    any of :data:`KNOWN_METRICS` when ``metric`` is not given).
    """
    p = Path(path)
    df = read_table(p, "results table")
    wanted = _metric_columns(metric) if metric is not None and metric != "auto" else list(KNOWN_METRICS)
    present = [c for c in wanted if c in df.columns]
    if metric is not None and metric != "auto" and len(present) < len(wanted):
        missing = sorted(set(wanted) - set(present))
        raise AnalysisError(
            f"no metric column {', '.join(missing)} in {p}; columns are: {', '.join(map(str, df.columns))}"
        )
    if not present:
        raise AnalysisError(
            f"no metric column in {p}: expected one of {', '.join(KNOWN_METRICS)}; columns are: {', '.join(map(str, df.columns))}"
        )
    return df


def _metric_columns(metric: MetricSpec) -> list[str]:
    if isinstance(metric, str):
        return [metric]
    return list(dict.fromkeys(metric.values()))


def infer_factors(df: pd.DataFrame, *, metric: MetricSpec | None = None) -> list[str]:
    """Factor columns by exclusion: every column except :data:`RESERVED_COLUMNS`,
    :data:`KNOWN_METRICS` and the column(s) named by ``metric``, in table order.

    Tables with other per-run measurements (latency, parameters) must name their
    factors explicitly; this function cannot tell a measurement from a factor.
    """
    excluded = set(RESERVED_COLUMNS) | set(KNOWN_METRICS) | set(_INTERNAL)
    if metric is not None and metric != "auto":
        excluded |= set(_metric_columns(metric))
    return [str(c) for c in df.columns if str(c) not in excluded]


# --------------------------------------------------------------------------- prepare
@dataclass(frozen=True)
class Collapse:
    """How cells that share runs are modelled: the factors that collapse, merged into one factor.

    A run listed in several cells (a setting without effect at some level of another factor:
    at α = 0 the attention loss is never computed, so ``attention=mse, alpha=0`` and
    ``attention=kl, alpha=0`` are one run) makes the design partly crossed: attention is
    crossed with α only at α > 0. Such a design is modelled with one **merged factor** whose
    levels are the distinct settings that were actually run, e.g. ``attention×alpha`` with
    levels ``kl|mse@0``, ``kl@0.5``, ``kl@1``, ``mse@0.5``, ``mse@1`` (DESIGN.md §6: "merged
    factor of distinct levels ... never by copying rows").

    * ``collapsed``: the factors whose level differs between the cells of one run (attention);
    * ``given``: the factors whose levels say when they collapse, with those levels
      (``{alpha: ("0",)}``): a factor qualifies when the shared runs and the unshared ones
      have no level of it in common; when none does, every other factor that takes only
      some of its levels on the shared runs; empty when neither exists;
    * ``members``: collapsed and given factors in table order, the parts of the merged factor;
    * ``name``: the merged factor's column name, the members' names joined by ``×``;
    * ``levels``: the merged levels in display order; a level joins the members' levels
      with ``@`` (collapsed levels joined by ``|``).
    """

    collapsed: tuple[str, ...]
    given: dict[str, tuple[str, ...]]
    members: tuple[str, ...]
    name: str
    levels: tuple[str, ...]

    def describe(self, short: Mapping[str, str]) -> str:
        """One sentence for a report: which cells share runs and what the models do about it."""
        coll = " and ".join(short.get(f, f) for f in self.collapsed)
        when = "; ".join(f"{short.get(f, f)}={'|'.join(lv)}" for f, lv in self.given.items())
        merged = "×".join(short.get(f, f) for f in self.members)
        return (
            f"{coll} has no effect{' at ' + when if when else ' on some runs'} (those runs are shared by the cells "
            f"that differ only in {coll}): the models use one merged factor {merged} with the {len(self.levels)} "
            f"settings actually run ({', '.join(self.levels)}), crossed with the other factors, each run once"
        )


@dataclass
class Prepared:
    """A results table normalised for analysis (internal currency of the package).

    ``data`` has one row per (cell, run) as the table lists them, with columns ``task``
    (str), ``seed`` (when present), one column per factor (canonical string levels,
    original column names), ``cell`` (label), ``cell_rank`` (sort position of the cell),
    ``metric`` (metric name of the row's task) and ``value`` (float). Rows with a missing
    metric value are gone. A run shared by several cells appears once per cell here.

    ``runs`` has **one row per run** (see :func:`run_level`): every model, test and
    diagnostic that treats runs as observations must use it, never ``data``.
    ``collapse`` says how shared runs were merged (None when no run is shared);
    :attr:`model_factors` are the factors a model of ``runs`` uses.
    """

    data: pd.DataFrame
    factors: list[str]
    short: dict[str, str]
    levels: dict[str, list[str]]
    metric_of: dict[str, str]
    tasks: list[str]
    has_seed: bool
    warnings: list[str] = field(default_factory=list)
    runs: pd.DataFrame = field(default_factory=pd.DataFrame)
    collapse: Collapse | None = None

    @property
    def model_factors(self) -> list[str]:
        """The factors of a model of ``runs``: ``factors`` with the collapse's members replaced by
        the merged factor (at the place of the first member)."""
        if self.collapse is None:
            return list(self.factors)
        out: list[str] = []
        for f in self.factors:
            if f in self.collapse.members:
                if self.collapse.name not in out:
                    out.append(self.collapse.name)
            else:
                out.append(f)
        return out

    def model_levels(self, factor: str) -> list[str]:
        """Level order of a model factor (the merged one included)."""
        if self.collapse is not None and factor == self.collapse.name:
            return list(self.collapse.levels)
        return list(self.levels[factor])

    def cell_levels(self, cell: str) -> dict[str, str]:
        row = self.data.loc[self.data["cell"] == cell].iloc[0]
        return {f: str(row[f]) for f in self.factors}


def _resolve_metric(df: pd.DataFrame, tasks: list[str], metric: MetricSpec) -> dict[str, str]:
    if isinstance(metric, str) and metric == "auto" and "auto" not in df.columns:
        from kdgrid.tasks import TASKS  # torch-free catalogue, imported only when asked

        unknown = [t for t in tasks if t not in TASKS]
        if unknown:
            raise AnalysisError(
                f"metric='auto' needs GLUE task names, got {', '.join(unknown)}: name the metric column instead"
            )
        metric_of = {t: TASKS[t].official_metric for t in tasks}
    elif isinstance(metric, str):
        metric_of = dict.fromkeys(tasks, metric)
    elif isinstance(metric, Mapping):
        missing = [t for t in tasks if t not in metric]
        if missing:
            raise AnalysisError(f"metric dict has no entry for task(s) {', '.join(missing)}")
        metric_of = {t: str(metric[t]) for t in tasks}
    else:
        raise AnalysisError(f"metric must be a column name or a dict task -> column, got {type(metric).__name__}")
    for t, col in metric_of.items():
        if col not in df.columns:
            raise AnalysisError(
                f"metric column {col!r} (task {t}) not in the table; columns are: {', '.join(map(str, df.columns))}"
            )
        if not pd.api.types.is_numeric_dtype(df[col]):
            try:
                pd.to_numeric(df[col])
            except (TypeError, ValueError):
                raise AnalysisError(f"metric column {col!r} is not numeric") from None
    return metric_of


def _seed_values(col: pd.Series) -> pd.Series:
    num = pd.to_numeric(col, errors="coerce")
    if num.notna().all() and np.all(np.mod(num.to_numpy(dtype=float), 1) == 0):
        return num.astype("int64")
    return col.astype(str)


def prepare(df: pd.DataFrame, *, metric: MetricSpec, factors: Sequence[str] | None = None) -> Prepared:
    """Validate and normalise a results table (see :class:`Prepared`)."""
    if not isinstance(df, pd.DataFrame):
        raise AnalysisError(f"expected a pandas DataFrame, got {type(df).__name__}")
    if df.empty:
        raise AnalysisError("the results table is empty")
    warnings: list[str] = []
    work = df.copy()
    if "task" not in work.columns:
        work["task"] = DEFAULT_TASK
    work["task"] = work["task"].astype(str)
    tasks = sorted(work["task"].unique())
    metric_of = _resolve_metric(work, tasks, metric)

    if factors is None:
        facs = infer_factors(df, metric=metric)
    else:
        if isinstance(factors, str):
            raise AnalysisError("factors must be a list of column names, not a string")
        facs = list(factors)
        missing = [f for f in facs if f not in work.columns]
        if missing:
            raise AnalysisError(
                f"factor column(s) {', '.join(missing)} not in the table; columns are: {', '.join(map(str, df.columns))}"
            )
        bad = [f for f in facs if f in RESERVED_COLUMNS or f in _INTERNAL or f in set(metric_of.values())]
        if bad:
            raise AnalysisError(f"{', '.join(bad)} cannot be a factor (reserved, internal or metric column)")
    if len(set(facs)) != len(facs):
        raise AnalysisError("factors contain duplicates")

    has_seed = "seed" in work.columns
    if has_seed:
        na_seed = work["seed"].isna()
        if na_seed.any():
            warnings.append(f"{int(na_seed.sum())} row(s) without a seed were dropped")
            work = work.loc[~na_seed]
        work["seed"] = _seed_values(work["seed"])

    values = np.full(len(work), np.nan)
    metric_col = work["task"].map(metric_of)
    for col in set(metric_of.values()):
        rows = (metric_col == col).to_numpy()
        values[rows] = pd.to_numeric(work.loc[rows, col], errors="coerce").to_numpy(dtype=float)
    work["value"] = values
    work["metric"] = metric_col.astype(str)
    missing_value = ~np.isfinite(values)
    if missing_value.any():
        by_task = work.loc[missing_value, "task"].value_counts().sort_index()
        detail = ", ".join(f"{t}: {n}" for t, n in by_task.items())
        warnings.append(
            f"{int(missing_value.sum())} run(s) with a missing or non-finite metric were dropped ({detail})"
        )
        work = work.loc[~missing_value]
    if work.empty:
        raise AnalysisError("no run has a finite metric value")

    keys_of = {f: level_keys(work[f]) for f in facs}
    levels = {f: level_order(work[f], keys_of[f]) for f in facs}
    for f in facs:
        work[f] = pd.Series(keys_of[f], index=work.index, dtype=object)
    short = short_names(facs)
    rank = {f: {lv: i for i, lv in enumerate(levels[f])} for f in facs}
    if facs:
        combos = work[facs].drop_duplicates()
        tuples = list(combos.itertuples(index=False, name=None))
        combos = combos.assign(
            _sort=pd.Series([tuple(rank[f][v] for f, v in zip(facs, r)) for r in tuples], index=combos.index)
        ).sort_values("_sort")
        labels = {
            r: cell_label(dict(zip(facs, r)), facs, short) for r in combos[facs].itertuples(index=False, name=None)
        }
        order = {lab: i for i, lab in enumerate(labels.values())}
        keys = list(zip(*(work[f] for f in facs)))
        work["cell"] = [labels[k] for k in keys]
        work["cell_rank"] = work["cell"].map(order).astype(int)
    else:
        work["cell"] = "all"
        work["cell_rank"] = 0
    keep = ["task"] + (["seed"] if has_seed else []) + facs + ["cell", "cell_rank", "metric", "value"]
    data = work[keep].reset_index(drop=True)
    run_ids = work["run_id"].to_numpy(dtype=object) if "run_id" in work.columns else None
    runs, collapse, w = run_level(data, facs, levels, short, run_ids)
    warnings += w
    return Prepared(
        data=data,
        factors=facs,
        short=short,
        levels=levels,
        metric_of=metric_of,
        tasks=tasks,
        has_seed=has_seed,
        warnings=warnings,
        runs=runs,
        collapse=collapse,
    )


# --------------------------------------------------------------------------- one row per run
#: Joins the levels of a collapsed factor in a run shared by several cells ("kl|mse").
COLLAPSED_SEP = "|"
#: Joins the members' levels in a merged factor's level ("mse@0.5").
MERGED_SEP = "@"
#: Joins the members' names in a merged factor's name ("attention×alpha").
MERGED_NAME_SEP = "×"


def run_level(
    data: pd.DataFrame,
    factors: Sequence[str],
    levels: Mapping[str, Sequence[str]],
    short: Mapping[str, str],
    run_ids: Sequence[object] | np.ndarray | None = None,
) -> tuple[pd.DataFrame, Collapse | None, list[str]]:
    """One row per run from the (cell, run) rows of :class:`Prepared` ``data``: (runs, collapse, warnings).

    A run is identified by ``run_ids`` (the table's ``run_id`` column, aligned with
    ``data``); rows without one, or tables without the column, are one run each. The
    result has the columns of ``data`` plus

    * ``run_id`` (a made-up ``row<i>`` where the table had none),
    * ``cells``: tuple of the cell labels the run stands for, in cell order (one for most runs),
    * the merged factor's column when a :class:`Collapse` is detected.

    For a run shared by several cells, a factor whose level differs between those cells
    holds the levels joined by ``|`` in level order (``kl|mse``), and ``cell`` /
    ``cell_rank`` name the collapsed cell (``attention=kl|mse, alpha=0``, at the
    position of its first cell). Every other column is the run's own (a run has one task,
    seed and value). The collapse is detected from the data only: which cells share run ids.
    """
    warnings: list[str] = []
    rid = (
        pd.Series(list(run_ids), index=data.index, dtype=object)
        if run_ids is not None
        else pd.Series([None] * len(data), index=data.index, dtype=object)
    )
    missing = rid.isna()
    rid[missing] = [f"row{i}" for i in np.flatnonzero(missing.to_numpy())]
    work = data.assign(run_id=rid.astype(str))
    dup = work.duplicated(["run_id", "cell"])
    if dup.any():
        warnings.append(f"{int(dup.sum())} row(s) repeat a run already listed in the same cell and were ignored")
        work = work.loc[~dup]
    n_cells = work.groupby("run_id")["cell"].transform("size")
    shared = work.loc[n_cells > 1]
    if shared.empty:
        runs = work.assign(
            cells=pd.Series([(c,) for c in work["cell"].to_numpy(dtype=object)], index=work.index)
        ).reset_index(drop=True)
        return runs, None, warnings

    collapsed = [f for f in factors if (shared.groupby("run_id")[f].nunique() > 1).any()]
    rank = {f: {lv: i for i, lv in enumerate(levels[f])} for f in factors}
    rows: list[dict[Hashable, object]] = []
    for _rid, g in work.sort_values("cell_rank", kind="mergesort").groupby("run_id", sort=False):
        first = g.iloc[0].to_dict()
        if len(g) > 1:
            for f in collapsed:
                present = set(g[f])
                first[f] = COLLAPSED_SEP.join(lv for lv in levels[f] if lv in present)
            first["cell"] = cell_label({f: str(first[f]) for f in factors}, factors, short)
        first["cells"] = tuple(dict.fromkeys(g["cell"]))
        rows.append(first)
    runs = pd.DataFrame(rows)
    n_shared = int((runs["cells"].map(len) > 1).sum())
    warnings.append(
        f"{n_shared} run(s) appear in more than one cell (collapsed factors share runs): each run counts once in "
        "the cells table, the ANOVA, its diagnostics and the mixed model"
    )

    is_shared = runs["cells"].map(len) > 1
    given: dict[str, tuple[str, ...]] = {}
    others = [f for f in factors if f not in collapsed]
    if (~is_shared).any():
        for f in others:
            on_shared, on_rest = set(runs.loc[is_shared, f]), set(runs.loc[~is_shared, f])
            if not on_shared & on_rest:
                given[f] = tuple(lv for lv in levels[f] if lv in on_shared)
        if not given:
            for f in others:
                on_shared = set(runs.loc[is_shared, f])
                if on_shared < set(levels[f]):
                    given[f] = tuple(lv for lv in levels[f] if lv in on_shared)
    members = tuple(f for f in factors if f in collapsed or f in given)
    name = MERGED_NAME_SEP.join(members)

    def key(row: pd.Series) -> tuple[int, ...]:
        # a joined (collapsed) level sorts before the member's own levels
        return tuple(rank[f].get(str(row[f]), -1) for f in members)

    combos = sorted((r for _, r in runs[list(members)].drop_duplicates().iterrows()), key=key)
    merged_levels = tuple(MERGED_SEP.join(str(r[f]) for f in members) for r in combos)
    runs[name] = [MERGED_SEP.join(str(v) for v in vals) for vals in zip(*(runs[f] for f in members))]
    cell_order = runs.drop_duplicates("cell").sort_values("cell_rank", kind="mergesort")["cell"].tolist()
    runs["cell_rank"] = runs["cell"].map({c: i for i, c in enumerate(cell_order)}).astype(int)
    collapse = Collapse(collapsed=tuple(collapsed), given=given, members=members, name=name, levels=merged_levels)
    return runs.reset_index(drop=True), collapse, warnings


def group_rows(frame: pd.DataFrame, keys: list[str], *, sort: bool) -> list[np.ndarray]:
    """Row positions of each group of ``frame.groupby(keys, sort=sort)``, in the order pandas iterates them
    (rows in table order within a group; groups with a missing key left out, as pandas does).

    For loops over many small groups: a pandas sub-frame per group costs ~0.5 ms, a slice of a plain
    array nothing, and the values (so every sum and mean) are the same.
    """
    raw = frame.groupby(keys, sort=sort).ngroup().to_numpy(dtype=float)  # NaN (or -1) for a missing key
    kept = np.isfinite(raw) & (raw >= 0)
    codes = raw[kept].astype(np.int64)
    order = np.flatnonzero(kept)[np.argsort(codes, kind="stable")]
    counts = np.bincount(codes)
    return np.split(order, np.cumsum(counts)[:-1]) if order.size else []


def dedupe(messages: Iterable[str]) -> list[str]:
    """Messages in first-seen order without repeats."""
    return list(dict.fromkeys(messages))
