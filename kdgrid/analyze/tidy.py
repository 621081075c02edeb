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
* labels cells ``"k=v, k=v"`` with short factor names (:func:`short_names`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from kdgrid.errors import KdgridError

__all__ = [
    "AnalysisError",
    "KNOWN_METRICS",
    "RESERVED_COLUMNS",
    "MetricSpec",
    "Prepared",
    "cell_label",
    "infer_factors",
    "level_key",
    "level_order",
    "load_table",
    "prepare",
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
        if pd.isna(value):  # pd.NA, NaT
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


def level_order(column: pd.Series) -> list[str]:
    """Deterministic order of a factor's levels (canonical strings).

    A pandas ``Categorical`` keeps its category order; levels that are all numbers
    sort numerically; anything else sorts as text. ``"NA"`` goes last. Row order
    never matters, so shuffling the table cannot change the default baseline.
    """
    if isinstance(column.dtype, pd.CategoricalDtype):
        cats = [level_key(c) for c in column.cat.categories]
        present = set(column.map(level_key))
        ordered = [c for c in dict.fromkeys(cats) if c in present]
        return ordered + (["NA"] if "NA" in present and "NA" not in ordered else [])
    keys = sorted(set(column.map(level_key)) - {"NA"})
    if keys and all(_is_number(k) for k in keys):
        keys.sort(key=float)
    if (column.map(level_key) == "NA").any():
        keys.append("NA")
    return keys


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
def load_table(path: str | Path, *, metric: MetricSpec | None = None) -> pd.DataFrame:
    """Read a tidy results table from ``.csv`` or ``.parquet``.

    Raises :class:`AnalysisError` when the file is missing, has an unknown extension,
    cannot be parsed, or has no metric column (the named ``metric`` column(s), or
    any of :data:`KNOWN_METRICS` when ``metric`` is not given).
    """
    p = Path(path)
    if not p.is_file():
        raise AnalysisError(f"results table not found: {p}")
    suffix = p.suffix.lower()
    try:
        if suffix == ".csv":
            df = pd.read_csv(p)
        elif suffix in (".parquet", ".pq"):
            df = pd.read_parquet(p)
        else:
            raise AnalysisError(f"unknown table extension {suffix or '(none)'!r} for {p}: use .csv or .parquet")
    except AnalysisError:
        raise
    except Exception as exc:  # parser errors of pandas/pyarrow are many types
        raise AnalysisError(f"cannot read {p}: {exc}") from None
    wanted = _metric_columns(metric) if metric is not None and metric != "auto" else list(KNOWN_METRICS)
    present = [c for c in wanted if c in df.columns]
    if metric is not None and metric != "auto" and len(present) < len(wanted):
        missing = sorted(set(wanted) - set(present))
        raise AnalysisError(f"no metric column {', '.join(missing)} in {p}; columns are: {', '.join(map(str, df.columns))}")
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
@dataclass
class Prepared:
    """A results table normalised for analysis (internal currency of the package).

    ``data`` has columns ``task`` (str), ``seed`` (when present), one column per
    factor (canonical string levels, original column names), ``cell`` (label),
    ``cell_rank`` (sort position of the cell), ``metric`` (metric name of the
    row's task) and ``value`` (float). Rows with a missing metric value are gone.
    """

    data: pd.DataFrame
    factors: list[str]
    short: dict[str, str]
    levels: dict[str, list[str]]
    metric_of: dict[str, str]
    tasks: list[str]
    has_seed: bool
    warnings: list[str] = field(default_factory=list)

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
        metric_of = {t: metric for t in tasks}
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
        warnings.append(f"{int(missing_value.sum())} run(s) with a missing or non-finite metric were dropped ({detail})")
        work = work.loc[~missing_value]
    if work.empty:
        raise AnalysisError("no run has a finite metric value")

    if "run_id" in work.columns:
        shared = work["run_id"].dropna()
        shared = shared[shared.duplicated(keep=False)]
        if not shared.empty:
            warnings.append(
                f"{shared.nunique()} run(s) appear in more than one cell (collapsed factors share runs): the ANOVA "
                "counts every copy, and cells that share runs have zero paired differences"
            )

    levels = {f: level_order(work[f]) for f in facs}
    for f in facs:
        work[f] = work[f].map(level_key).astype(object)
    short = short_names(facs)
    rank = {f: {lv: i for i, lv in enumerate(levels[f])} for f in facs}
    if facs:
        combos = work[facs].drop_duplicates()
        combos = combos.assign(
            _sort=[tuple(rank[f][r[f]] for f in facs) for _, r in combos.iterrows()]
        ).sort_values("_sort")
        labels = {tuple(r[f] for f in facs): cell_label({f: r[f] for f in facs}, facs, short) for _, r in combos.iterrows()}
        order = {lab: i for i, lab in enumerate(labels.values())}
        keys = list(zip(*(work[f] for f in facs)))
        work["cell"] = [labels[k] for k in keys]
        work["cell_rank"] = work["cell"].map(order).astype(int)
    else:
        work["cell"] = "all"
        work["cell_rank"] = 0
    keep = ["task"] + (["seed"] if has_seed else []) + facs + ["cell", "cell_rank", "metric", "value"]
    data = work[keep].reset_index(drop=True)
    return Prepared(
        data=data,
        factors=facs,
        short=short,
        levels=levels,
        metric_of=metric_of,
        tasks=tasks,
        has_seed=has_seed,
        warnings=warnings,
    )


def dedupe(messages: Iterable[str]) -> list[str]:
    """Messages in first-seen order without repeats."""
    return list(dict.fromkeys(messages))
