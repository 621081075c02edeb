"""Format-neutral display tables built from an ``Analysis`` (see docs/CONTRACTS.md).

Everything here turns analysis numbers into *strings laid out for a reader*:
paper-style condition × task tables, test tables with formatted p values, and the
section structure that every output format (rich, Markdown, LaTeX, HTML) renders.
The machine-readable formats (CSV, JSON) do not go through here: they write the raw
numbers so nothing is lost to rounding.

Conventions, stated once so every caption can repeat them:
- the GLUE scores (accuracy, F1, MCC, Pearson, Spearman) are shown ×100 with one decimal, as
  GLUE papers do, decided by the metric's identity (:func:`kdgrid.tasks.display_scale`), the
  same in every task and table; any other column as stored; ``scale100=False`` turns it off;
- p values are shown as ``<0.001`` or with three decimals;
- a missing number (NaN, no test possible) is shown as an en dash.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import pandas as pd

from kdgrid.analyze.mapping import mapping_convergence
from kdgrid.analyze.paired import PAIRED_COLUMNS as _PAIRED
from kdgrid.analyze.pooled import NEMENYI_COLUMNS as _NEMENYI
from kdgrid.analyze.pooled import RANK_COLUMNS as _RANKS
from kdgrid.analyze.pooled import STRATIFIED_COLUMNS as _STRATIFIED
from kdgrid.analyze.power import PLAN_COLUMNS as _PLAN
from kdgrid.analyze.power import POWER_COLUMNS as _POWER
from kdgrid.analyze.sensitivity import SENSITIVITY_COLUMNS as _SENSITIVITY
from kdgrid.tasks import display_scale

if TYPE_CHECKING:
    from kdgrid.analyze.core import Analysis  # the report also takes any object with its attributes (duck typing)

MISSING = "–"  # en dash: a number that does not exist (n = 1 sd, a test that could not run)

#: Contract column names (docs/CONTRACTS.md). Factor columns of ``cells`` are whatever
#: else the frame holds, so they are found by subtracting these.
CELL_COLUMNS: tuple[str, ...] = (
    "task",
    "metric",
    "cell",
    "n",
    "mean",
    "sd",
    "ci_low",
    "ci_high",
    "seeds",
    "values",
    "stands_for",
)
PAIRED_COLUMNS: tuple[str, ...] = tuple(_PAIRED)
ANOVA_COLUMNS: tuple[str, ...] = ("task", "term", "df", "sum_sq", "F", "p", "partial_eta2")
DIAGNOSTICS_COLUMNS: tuple[str, ...] = ("task", "check", "value", "note")
SENSITIVITY_COLUMNS: tuple[str, ...] = tuple(_SENSITIVITY)
POWER_COLUMNS: tuple[str, ...] = tuple(_POWER)
STRATIFIED_COLUMNS: tuple[str, ...] = tuple(_STRATIFIED)
RANK_COLUMNS: tuple[str, ...] = tuple(_RANKS)
NEMENYI_COLUMNS: tuple[str, ...] = tuple(_NEMENYI)
PLAN_COLUMNS: tuple[str, ...] = tuple(_PLAN)
MAPPING_COLUMNS: tuple[str, ...] = (
    "task",
    "cell",
    "seed",
    "epoch",
    "student_layer",
    "teacher_layer",
    "weight",
)
EFFICIENCY_COLUMNS: tuple[str, ...] = ("cell", "measure", "n", "median", "min", "max", "baseline", "ratio")
#: Section name -> contract columns; used to validate inputs and to give empty CSVs a header.
#: Which teacher layers each cell's students copied and learn from (``kdgrid.store.queries.layer_assignments``).
LAYER_COLUMNS: tuple[str, ...] = ("cell", "copied", "mapped")

SECTION_COLUMNS: dict[str, tuple[str, ...]] = {
    "cells": CELL_COLUMNS,
    "paired_tests": PAIRED_COLUMNS,
    "anova": ANOVA_COLUMNS,
    "diagnostics": DIAGNOSTICS_COLUMNS,
    "sensitivity": SENSITIVITY_COLUMNS,
    "power": POWER_COLUMNS,
    "stratified": STRATIFIED_COLUMNS,
    "ranks": RANK_COLUMNS,
    "nemenyi": NEMENYI_COLUMNS,
    "power_plan": PLAN_COLUMNS,
    "mapping_weights": MAPPING_COLUMNS,
    "efficiency": EFFICIENCY_COLUMNS,
    "layers": LAYER_COLUMNS,
}


# --------------------------------------------------------------------------- numbers


def _num(x: Any) -> float | None:
    """``x`` as a finite-or-infinite float, or None when it is missing or not a number."""
    if x is None or isinstance(x, bool):
        return None
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(v) else v


def fmt_num(x: Any, decimals: int = 2) -> str:
    """A plain number with fixed decimals; integer-typed values stay integers; missing -> en dash."""
    v = _num(x)
    if v is None:
        return MISSING
    if math.isinf(v):
        return "∞" if v > 0 else "−∞"
    # Integer *types* (n, a count) print without decimals; a float that happens to be whole
    # (t = 2.0) keeps them, so numeric columns stay aligned.
    if isinstance(x, int) or getattr(getattr(x, "dtype", None), "kind", "") in ("i", "u"):
        return str(int(v))
    return f"{v:.{decimals}f}"


def fmt_count(x: Any) -> str:
    """A count such as n or a df: integer when whole (3.0 -> "3"), else two decimals."""
    v = _num(x)
    if v is None:
        return MISSING
    if math.isinf(v):
        return "∞"
    return str(int(v)) if v == int(v) else f"{v:.2f}"


def fmt_g(x: Any, digits: int = 4) -> str:
    """Significant digits, for quantities without a natural scale (sums of squares)."""
    v = _num(x)
    if v is None:
        return MISSING
    if math.isinf(v):
        return "∞" if v > 0 else "−∞"
    return f"{v:.{digits}g}"


def fmt_p(p: Any, decimals: int = 3) -> str:
    """A p value: ``<0.001`` below the display resolution, else three decimals."""
    v = _num(p)
    if v is None:
        return MISSING
    floor = 10.0 ** (-decimals)
    return f"<{floor:.{decimals}f}" if v < floor else f"{v:.{decimals}f}"


def fmt_metric(x: Any, *, scale: float = 100.0, decimals: int = 1) -> str:
    """A metric value multiplied by ``scale`` (100 for metrics in [−1, 1]) with fixed decimals."""
    v = _num(x)
    if v is None:
        return MISSING
    if math.isinf(v):
        return "∞" if v > 0 else "−∞"
    return f"{v * scale:.{decimals}f}"


def fmt_mean_sd(mean: Any, sd: Any, *, scale: float = 100.0, decimals: int = 1) -> str:
    """``"85.3 ± 1.2"``; the sd is left out when it does not exist (a single seed)."""
    m = fmt_metric(mean, scale=scale, decimals=decimals)
    if m == MISSING or _num(sd) is None:
        return m
    return f"{m} ± {fmt_metric(sd, scale=scale, decimals=decimals)}"


def fmt_ci(low: Any, high: Any, *, scale: float = 1.0, decimals: int = 2) -> str:
    """A confidence interval as ``[low, high]``."""
    if _num(low) is None and _num(high) is None:
        return MISSING
    return f"[{fmt_metric(low, scale=scale, decimals=decimals)}, {fmt_metric(high, scale=scale, decimals=decimals)}]"


def in_unit_range(values: Iterable[Any]) -> bool:
    """True when every finite value lies in [−1, 1] (and there is at least one)."""
    seen = False
    for x in values:
        v = _num(x)
        if v is None:
            continue
        if math.isinf(v) or abs(v) > 1.0:
            return False
        seen = True
    return seen


def metric_scale(metric: Any, *, scale100: bool = True) -> float:
    """Display factor of a metric, from its identity alone (:func:`kdgrid.tasks.display_scale`)."""
    return display_scale(str(metric)) if scale100 else 1.0


def metric_scales(cells: pd.DataFrame | None, *, scale100: bool = True) -> dict[tuple[str, str], float]:
    """Display factor per (task, metric), decided by the metric's name, never by its values,
    so every task, table, CSV and JSON shows a metric on one scale and ``Avg`` never mixes
    raw and ×100 numbers. An external table that holds percentages names its metric column
    something other than the GLUE metric names, and is shown as stored.
    """
    if cells is None or cells.empty:
        return {}
    pairs = dict.fromkeys(zip(cells["task"].astype(str), cells["metric"].astype(str)))
    return {(t, m): metric_scale(m, scale100=scale100) for t, m in pairs}


def task_scales(cells: pd.DataFrame | None, *, scale100: bool = True) -> dict[str, float]:
    """Display factor per task (its metrics' factor; 1 when a task mixes scales)."""
    per_metric = metric_scales(cells, scale100=scale100)
    out: dict[str, float] = {}
    for (task, _), s in per_metric.items():
        out[task] = min(out.get(task, 100.0), s)
    if out:
        out.setdefault("all", 100.0 if all(s == 100.0 for s in out.values()) else 1.0)
        for (_, metric), s in per_metric.items():  # pooled within one metric: 'all accuracy'
            out.setdefault(f"all {metric}", s)
    return out


def scale_phrase(scales: Iterable[float]) -> str:
    """Caption phrase saying whether values were multiplied by 100."""
    s = set(scales)
    if s == {100.0}:
        return "GLUE scores are shown ×100."
    if s == {100.0, 1.0}:
        return "GLUE scores (accuracy, F1, MCC, Pearson, Spearman) are shown ×100; other metrics as stored."
    return "Values as stored (not rescaled)."


# --------------------------------------------------------------------------- labels


def factor_columns(cells: pd.DataFrame) -> list[str]:
    """The factor columns of a ``cells`` frame: every column the contract does not fix."""
    return [c for c in cells.columns if c not in CELL_COLUMNS]


def condition_labels(cells: pd.DataFrame | None) -> dict[str, str]:
    """Short, unique labels for cells: ``"attention=mse, kind=uniform"``.

    Cell names hold full dotted factor paths ("objective.intermediate.attention=mse, ...")
    which make tables and plot axes unreadable; the last path component is usually
    enough. Components are added back while two factors would share a name, and the full
    cell name is kept if the short labels are not unique.
    """
    if cells is None or cells.empty:
        return {}
    factors = factor_columns(cells)
    first = cells.drop_duplicates("cell")
    if not factors:
        return {str(c): str(c) for c in first["cell"]}
    short = _short_names(factors)
    labels: dict[str, str] = {}
    for _, row in first.iterrows():
        parts = [f"{short[f]}={_level_str(row[f])}" for f in factors if _present(row[f])]
        labels[str(row["cell"])] = ", ".join(parts) if parts else str(row["cell"])
    if len(set(labels.values())) < len(labels):
        return {c: c for c in labels}
    return labels


def short_name(name: str) -> str:
    """The last component of a dotted factor path."""
    return name.rsplit(".", 1)[-1]


def _short_names(names: Sequence[str]) -> dict[str, str]:
    depth = dict.fromkeys(names, 1)
    while True:
        cur = {n: ".".join(n.split(".")[-depth[n] :]) for n in names}
        clashes = [n for n in names if list(cur.values()).count(cur[n]) > 1]
        grown = [n for n in clashes if depth[n] < len(n.split("."))]
        if not grown:
            return cur
        for n in grown:
            depth[n] += 1


def _present(x: Any) -> bool:
    """False for None, NaN, pd.NA and NaT (a factor that does not apply to a cell)."""
    try:
        return not bool(pd.isna(x))
    except (TypeError, ValueError):  # list-like values: present
        return True


def _level_str(x: Any) -> str:
    return str(x)


def slug(text: str) -> str:
    """A file- and id-safe form of a name (tasks, metrics)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)).strip("_") or "x"


# --------------------------------------------------------------------------- paper table


def paper_table(
    cells: pd.DataFrame,
    metric_label: str,
    *,
    scale100: bool = True,
    decimals: int = 1,
    baseline: str | None = None,
    short_labels: bool = True,
) -> pd.DataFrame:
    """The table a paper prints: conditions as rows, tasks as columns, ``mean ± sd``.

    ``cells`` is the ``Analysis.cells`` frame (or a subset of it). Columns are the tasks in
    order of appearance; a task that carries several metrics in ``cells`` gets one column
    per metric ("mrpc f1", "mrpc accuracy"), and when the tasks use different metrics the
    metric is named in each header ("cola (mcc)"). ``Avg`` is the mean of the task means
    (a task with several metrics first averages them, as the GLUE score does), on the
    displayed scale; it is left empty for a condition that lacks a task, since an average
    over fewer tasks would not be comparable.

    ``scale100`` multiplies the GLUE scores by 100 (:func:`metric_scale`). ``baseline`` (a
    cell name) is moved to the first row and marked. The caption, stating the scale and
    the number of seeds, is in ``result.attrs["caption"]``. All entries are strings.
    """
    missing = {"task", "metric", "cell", "mean", "sd"} - set(cells.columns)
    if missing:
        raise ValueError(f"paper_table: cells lacks columns {sorted(missing)}")
    if cells.empty:
        empty = pd.DataFrame(columns=["Avg"], index=pd.Index([], name="condition"), dtype=object)
        empty.attrs["caption"] = f"{metric_label}: no cells."
        return empty

    scales = metric_scales(cells, scale100=scale100)
    pairs = list(dict.fromkeys(zip(cells["task"].astype(str), cells["metric"].astype(str))))
    metrics_of: dict[str, list[str]] = {}
    for t, m in pairs:
        metrics_of.setdefault(t, []).append(m)
    one_metric = len({m for _, m in pairs}) == 1

    def header(t: str, m: str) -> str:
        if len(metrics_of[t]) > 1:
            return f"{t} {m}"
        return t if one_metric else f"{t} ({m})"

    cell_order = list(dict.fromkeys(cells["cell"].astype(str)))
    if baseline is not None and baseline in cell_order:
        cell_order.remove(baseline)
        cell_order.insert(0, baseline)
    labels = condition_labels(cells) if short_labels else {c: c for c in cell_order}

    index = pd.Index(
        [labels.get(c, c) + (" (baseline)" if c == baseline else "") for c in cell_order], name="condition"
    )
    out = pd.DataFrame(index=index, columns=[header(t, m) for t, m in pairs] + ["Avg"], dtype=object)
    lookup = {(str(r.task), str(r.metric), str(r.cell)): r for r in cells.itertuples(index=False)}
    any_blank_avg = False
    for c, label in zip(cell_order, index):
        task_means: dict[str, list[float]] = {}
        for t, m in pairs:
            r = lookup.get((t, m, c))
            s = scales[(t, m)]
            if r is None:
                out.loc[label, header(t, m)] = MISSING
                continue
            out.loc[label, header(t, m)] = fmt_mean_sd(r.mean, r.sd, scale=s, decimals=decimals)
            v = _num(r.mean)
            if v is not None:
                task_means.setdefault(t, []).append(v * s)
        if len(task_means) == len(metrics_of) and all(len(v) == len(metrics_of[t]) for t, v in task_means.items()):
            avg = sum(sum(v) / len(v) for v in task_means.values()) / len(task_means)
            out.loc[label, "Avg"] = f"{avg:.{decimals}f}"
        else:
            out.loc[label, "Avg"] = MISSING
            any_blank_avg = True

    ns = sorted({int(n) for n in cells["n"] if _num(n) is not None}) if "n" in cells else []
    n_text = (f"n = {ns[0]}" if len(ns) == 1 else f"n = {ns[0]}–{ns[-1]}") if ns else "n unknown"
    caption = (
        f"{metric_label}: mean ± sd over seeds ({n_text}). {scale_phrase(scales.values())} "
        "Avg = mean of the task means" + (" (blank where a condition lacks a task)." if any_blank_avg else ".")
    )
    out.attrs["caption"] = caption
    return out


# --------------------------------------------------------------------------- sections


@dataclass(frozen=True)
class DisplayTable:
    """One table ready to print: string cells, a caption, which columns hold labels."""

    key: str  # stable slug: file names, HTML ids, LaTeX labels
    caption: str
    frame: pd.DataFrame  # strings only, RangeIndex; the first columns are the row labels
    left: tuple[str, ...] = ()  # label columns, aligned left; the rest are numbers, aligned right
    emphasis: tuple[bool, ...] = ()  # per row: a significant result, shown in bold / colour
    # Columns a narrow terminal may leave out (in this order) before it falls back to one line per row;
    # the full table is always in the files.
    optional: tuple[str, ...] = ()


@dataclass(frozen=True)
class CodeBlock:
    """Verbatim text (commands, a study file) that must reach the reader unescaped and unwrapped."""

    caption: str
    text: str
    lang: str = ""  # fence language in Markdown: bash, yaml
    # Reference material: folded in HTML, after the tables in Markdown, left out of the short versions.
    collapsed: bool = False


@dataclass(frozen=True)
class Section:
    """A report section: tables plus free-text notes, or one note saying why it is empty."""

    key: str
    title: str
    tables: tuple[DisplayTable, ...] = ()
    notes: tuple[str, ...] = ()
    empty_note: str | None = None  # set when the section has nothing to show
    bullets: tuple[str, ...] = ()  # list items (warnings)
    code: tuple[CodeBlock, ...] = ()  # shown before the tables, collapsed blocks last

    @property
    def lead_code(self) -> tuple[CodeBlock, ...]:
        return tuple(c for c in self.code if not c.collapsed)

    @property
    def trailing_code(self) -> tuple[CodeBlock, ...]:
        return tuple(c for c in self.code if c.collapsed)


def section_frame(analysis: Analysis, name: str) -> pd.DataFrame | None:
    """``analysis.<name>`` as a DataFrame, or None when absent, None or empty.

    Any object with the contract's attribute names is accepted (duck typing), so the
    report does not depend on the producer's class. A present frame that lacks contract
    columns is a producer bug and raises ``ValueError`` naming them.
    """
    df = getattr(analysis, name, None)
    if df is None:
        return None
    if not isinstance(df, pd.DataFrame):
        raise ValueError(f"analysis.{name} must be a pandas DataFrame, not {type(df).__name__}")
    if df.empty:
        return None
    need = SECTION_COLUMNS.get(name, ())
    optional = {"note", "train_size", "stands_for"}  # informative extras a producer may leave out
    missing = [c for c in need if c not in df.columns and c not in optional]
    if missing:
        raise ValueError(f"analysis.{name} lacks contract columns {missing} (docs/CONTRACTS.md)")
    return df


def metric_groups(cells: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """How the cells split into paper tables: one table when every task has one metric
    (``metric: auto`` gives each task its official metric, which papers print side by
    side), otherwise one table per metric."""
    per_task = cells.groupby("task", sort=False)["metric"].nunique()
    metrics = list(dict.fromkeys(cells["metric"].astype(str)))
    if (per_task <= 1).all():
        return [(" / ".join(metrics), cells)]
    return [(m, cells[cells["metric"].astype(str) == m]) for m in metrics]


def _baseline_of(paired: pd.DataFrame | None) -> str | None:
    if paired is None or "baseline" not in paired:
        return None
    b = list(dict.fromkeys(paired["baseline"].dropna().astype(str)))
    return b[0] if len(b) == 1 else None


def _frame(rows: list[dict[str, str]], columns: Sequence[str]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=list(columns), dtype=object)


def _shown_task(tasks: Sequence[str]) -> list[str]:
    """Blank a task name repeated on consecutive rows, so groups read as blocks."""
    out, prev = [], None
    for t in tasks:
        out.append("" if t == prev else t)
        prev = t
    return out


def cells_section(
    cells: pd.DataFrame | None,
    *,
    paired: pd.DataFrame | None = None,
    sens: pd.DataFrame | None = None,
    rows: Sequence[str] | None = None,
    cols: Sequence[str] | None = None,
    scale100: bool,
    alpha: float = 0.05,
    decimals: int = 1,
) -> Section:
    """The paper-style pivot tables (:mod:`kdgrid.report.pivot`): factors in rows and columns,
    levels alone as labels, verdict marks and the teacher row."""
    # Imported here: pivot builds on this module's helpers (one direction at import time).
    from kdgrid.report.pivot import choose_layout, pivot_tables

    if cells is None:
        return Section("cells", "Cells", empty_note="No cells: the analysis holds no results.")
    layout = choose_layout(cells, rows, cols)
    tables = pivot_tables(cells, paired, sens, layout, scale100=scale100, alpha=alpha, decimals=decimals)
    return Section("cells", "Cells", tables=tuple(tables))


def verdict_text(verdict: Any, margin: Any, scale: float) -> str:
    """``different`` / ``equivalent (±m)`` / ``inconclusive``, the margin on the displayed scale."""
    v = str(verdict) if _present(verdict) else ""
    if v == "equivalent" and _num(margin) is not None:
        return f"equivalent (±{fmt_metric(margin, scale=scale, decimals=1 if scale == 100.0 else 3)})"
    return v or MISSING


def interval_label(correction: str | None) -> str:
    """What the simultaneous interval is, for captions and plot legends."""
    if correction in (None, "", "none"):
        return "unadjusted (no correction)"
    return "simultaneous (Bonferroni over the family)"


def _correction_of(families: Iterable[str]) -> str | None:
    for f in families:
        m = re.search(r", (holm|fdr_bh|bonferroni|none)\)$", str(f))
        if m:
            return m.group(1)
    return None


def paired_section(paired: pd.DataFrame | None, cells: pd.DataFrame | None, *, alpha: float, scale100: bool) -> Section:
    title = "Paired tests vs baseline"
    if paired is None:
        note = "No paired tests: no baseline, no seed column to pair by, or no cell to compare."
        return Section("paired_tests", title, empty_note=note)
    from kdgrid.report.pivot import baseline_description, condition_level_columns

    labels = condition_labels(cells)
    baseline = _baseline_of(paired)
    base_text, base_varies = baseline_description(paired, cells) if cells is not None else ("", [])
    # Each factor's level alone in its own column; the baseline is named once, in the caption.
    level_cols = condition_level_columns(paired, cells) if base_text else {}
    families = list(dict.fromkeys(paired["family"].astype(str)))
    correction = _correction_of(families)
    adjusted = correction not in (None, "none")
    cond_cols = list(level_cols) or ["Condition"]
    cols = (
        ["Task", *cond_cols]
        + ([] if baseline or base_text else ["Baseline"])
        + [
            "n",
            "Δ",
            "95% CI (unadj.)",
            "Simult. CI" if adjusted else "CI",
            "p",
            "p_adj",
            "dz",
            "Wilcoxon p",
            "Verdict",
            "floor",
        ]
    )
    rows, emph, row_notes = [], [], []
    for i, r in enumerate(paired.itertuples(index=False)):
        s = metric_scale(r.metric, scale100=scale100)
        p_adj = _num(r.p_adj)
        sig = p_adj is not None and p_adj < alpha
        condition = labels.get(str(r.condition), str(r.condition))
        row = {
            "Task": str(r.task),
            "Condition": condition,
            "Baseline": labels.get(str(r.baseline), str(r.baseline)),
            "n": fmt_count(r.n),
            # One decimal on the ×100 scale, as the cells: five seeds do not resolve a hundredth of a point.
            "Δ": fmt_metric(r.mean_diff, scale=s, decimals=1 if s == 100.0 else 3),
            "95% CI (unadj.)": fmt_ci(r.ci_low, r.ci_high, scale=s, decimals=1 if s == 100.0 else 3),
            "Simult. CI" if adjusted else "CI": fmt_ci(r.sci_low, r.sci_high, scale=s, decimals=1 if s == 100.0 else 3),
            "p": fmt_p(r.p) + ("ᵂ" if str(r.test).startswith("exact Wilcoxon") else ""),
            "p_adj": fmt_p(r.p_adj),
            "dz": fmt_num(r.dz, 2),
            "Wilcoxon p": fmt_p(r.wilcoxon_p),
            "Verdict": verdict_text(r.verdict, r.margin, s),
            "floor": "at floor" if bool(r.baseline_at_floor) else "",
        }
        for c, levels in level_cols.items():
            row[c] = levels[i]
        rows.append(row)
        emph.append(sig)
        # Free-text notes go under the table, not in a column: one long note would
        # otherwise widen every row past a terminal's width.
        note = _note(getattr(r, "note", ""))
        if note:
            row_notes.append(f"{r.task} · {condition}: {note}")
    frame = _frame(rows, cols)
    frame["Task"] = _shown_task(list(frame["Task"]))
    if base_text:
        base_txt = f" vs the baseline ({base_text}" + (f", at each {', '.join(base_varies)})" if base_varies else ")")
    else:
        base_txt = f" vs baseline {labels.get(baseline, baseline)}" if baseline else ""
    scales = {metric_scale(m, scale100=scale100) for m in paired["metric"]}
    level = 1 - alpha
    caption = (
        f"Paired comparisons by seed{base_txt}: Δ = condition − baseline "
        f"({scale_phrase(scales or {1.0})[:-1]}); p from the paired t-test (ᵂ: exact Wilcoxon, "
        f"differences constant); dz = mean(diff) / sd(diff). {level:.0%} CI (unadj.) is the unadjusted interval; "
        + (
            f"Simult. CI is the {interval_label(correction)} interval at {level:.0%} family-wise coverage, "
            f"consistent with p_adj ({correction}): it excludes 0 only where p_adj < {alpha:g}. "
            if adjusted
            else "no correction was asked for, so every interval is unadjusted. "
        )
        + f"Verdict: different = p_adj < {alpha:g}; equivalent = TOST within ±margin with adjusted p < {alpha:g}; "
        "otherwise inconclusive. floor: the baseline student's CI reaches the majority-class or chance score. "
        "Families corrected together: " + "; ".join(families) + "."
    )
    notes = [f"Note: {n}" for n in row_notes]
    ns = [int(v) for v in paired["n"] if _num(v) is not None]
    if ns and min(ns) <= 6:
        n = min(ns)
        notes.append(
            f"With {n} pairs the exact two-sided Wilcoxon p cannot go below {2.0 / 2**n:.4g}: "
            "a non-significant Wilcoxon p there says little."
        )
    table = DisplayTable(
        "paired-tests",
        caption,
        frame,
        left=("Task", *cond_cols, "Baseline"),
        emphasis=tuple(emph),
        optional=("Wilcoxon p", "95% CI (unadj.)", "dz", "p", "n", "floor"),
    )
    return Section("paired_tests", title, tables=(table,), notes=tuple(notes))


def stratified_section(
    strat: pd.DataFrame | None, cells: pd.DataFrame | None, *, alpha: float, scale100: bool
) -> Section | None:
    """Over the tasks of one metric, task as a fixed effect; None when no metric has two tasks."""
    if strat is None:
        return None
    from kdgrid.report.pivot import level_namer

    name_of, level_key = level_namer(cells)
    cols = [
        "Metric",
        "Condition",
        "Tasks",
        "n",
        "Δ (mean over tasks)",
        "95% CI (unadj.)",
        "Simult. CI",
        "df",
        "p",
        "p_adj",
        "Task × effect p",
        "Verdict",
    ]
    rows, emph = [], []
    for r in strat.itertuples(index=False):
        sc = metric_scale(r.metric, scale100=scale100)
        rows.append(
            {
                "Metric": str(r.metric),
                "Condition": name_of(str(r.condition)),
                "Tasks": str(r.tasks),
                "n": fmt_count(r.n),
                "Δ (mean over tasks)": fmt_metric(r.estimate, scale=sc, decimals=2),
                "95% CI (unadj.)": fmt_ci(r.ci_low, r.ci_high, scale=sc, decimals=2),
                "Simult. CI": fmt_ci(r.sci_low, r.sci_high, scale=sc, decimals=2),
                "df": fmt_count(r.df),
                "p": fmt_p(r.p),
                "p_adj": fmt_p(r.p_adj),
                "Task × effect p": fmt_p(r.heterogeneity_p),
                "Verdict": verdict_text(r.verdict, r.margin, sc),
            }
        )
        emph.append((_num(r.p_adj) or 1.0) < alpha)
    frame = _frame(rows, cols)
    frame["Metric"] = _shown_task(list(frame["Metric"]))
    families = "; ".join(dict.fromkeys(strat["family"].astype(str)))
    caption = (
        "Within one metric, over its tasks: paired differences d = μ + τ_task + ε with sum-to-zero task effects "
        "(OLS); Δ = μ, the unweighted mean of the per-task mean differences, its SE from the pooled within-task "
        f"variance (N − T df). 'Task × effect p' tests whether the effect differs between tasks (if it does, read "
        f"the per-task rows). Simultaneous intervals are Bonferroni over the family. Families: {families}. "
        "Raw differences of different metrics are never pooled."
    )
    return Section(
        "stratified",
        "Over tasks, within a metric",
        tables=(
            DisplayTable(
                "stratified",
                _with_key(caption, level_key),
                frame,
                left=("Metric", "Condition", "Tasks"),
                emphasis=tuple(emph),
            ),
        ),
    )


def ranks_section(
    ranks: pd.DataFrame | None,
    nemenyi: pd.DataFrame | None,
    summary: Mapping[str, Any] | None,
    cells: pd.DataFrame | None,
    *,
    alpha: float,
) -> Section | None:
    """Friedman test and Nemenyi post-hoc over (task, seed) blocks; None without them."""
    if ranks is None or not summary:
        return None
    from kdgrid.report.pivot import level_namer

    name_of, level_key = level_namer(cells)
    best = float(ranks["mean_rank"].min())
    cd = _num(summary.get("cd"))
    rows = []
    for r in ranks.itertuples(index=False):
        rows.append(
            {
                "Condition": name_of(str(r.cell)),
                "Mean rank": fmt_num(r.mean_rank, 2),
                "within CD of best": "yes" if cd is not None and float(cast(float, r.mean_rank)) - best <= cd else "",
                "Same runs as": "; ".join(name_of(c) for c in str(r.same_as).split("; ") if c),
            }
        )
    frame = _frame(rows, ["Condition", "Mean rank", "within CD of best", "Same runs as"])
    n_sig = int((nemenyi["p"] < alpha).sum()) if nemenyi is not None else 0
    n_pairs = len(nemenyi) if nemenyi is not None else 0
    caption = (
        f"Across tasks, whatever their metric: {summary.get('method')}. Each (task, seed) block ranks the conditions "
        f"on its task's own metric (1 = best); Friedman χ² = {fmt_num(summary.get('statistic'), 2)}, "
        f"k = {summary.get('k')}, N = {summary.get('n_blocks')} blocks, p = {fmt_p(summary.get('p'))}. "
        f"Critical difference (Nemenyi, α = {alpha:g}, family = all {n_pairs} pairs): CD = {fmt_num(cd, 2)}; "
        f"{n_sig} pair(s) differ. The null is exchangeability within each task and seed: a rejection says the "
        "conditions differ somewhere, not that the ranking generalises to other tasks."
    )
    return Section(
        "ranks",
        "Across tasks: ranks (Friedman, Nemenyi)",
        tables=(DisplayTable("ranks", _with_key(caption, level_key), frame, left=("Condition", "Same runs as")),),
    )


def _with_key(caption: str, key: str) -> str:
    """Name, once, the factors whose levels a Condition label lists."""
    return f"Condition = {key}. {caption}" if key else caption


def _note(x: Any) -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else str(x)


def _term_labels(terms: Sequence[str]) -> dict[str, str]:
    """Short names for ANOVA terms: each factor path shortened as in the condition labels,
    interactions re-joined with ':', a merged factor's members with '×'."""

    def pieces(t: str) -> list[list[str]]:
        return [p.split("×") for p in t.split(":")]

    # A contrast term ("objective.intermediate.alpha=0.5 vs rest") is shortened before its '=' only.
    parts = list(dict.fromkeys(f.split("=", 1)[0] for t in terms if t != "Residual" for p in pieces(str(t)) for f in p))
    short = _short_names(parts)

    def show(f: str) -> str:
        name, eq, rest = f.partition("=")
        return short[name] + eq + rest

    return {
        t: "Residual" if t == "Residual" else ":".join("×".join(show(f) for f in p) for p in pieces(str(t)))
        for t in terms
    }


def anova_section(anova: pd.DataFrame | None, *, alpha: float, design: Sequence[str] = ()) -> Section:
    title = "ANOVA per task"
    if anova is None:
        return Section("anova", title, empty_note="No ANOVA: fewer than one factor with two levels, or too few runs.")
    cols = ["Task", "Term", "df", "Sum sq", "F", "p", "partial η²"]
    terms = _term_labels([str(t) for t in anova["term"]])
    rows, emph = [], []
    for r in anova.itertuples(index=False):
        p = _num(r.p)
        is_effect = str(r.term) != "Residual"
        rows.append(
            {
                "Task": str(r.task),
                "Term": terms[str(r.term)],
                "df": fmt_count(r.df),
                "Sum sq": fmt_g(r.sum_sq),
                "F": fmt_num(r.F, 2) if is_effect else "",
                "p": fmt_p(r.p) if is_effect else "",
                "partial η²": fmt_num(r.partial_eta2, 3) if is_effect else "",
            }
        )
        emph.append(is_effect and p is not None and p < alpha)
    frame = _frame(rows, cols)
    frame["Task"] = _shown_task(list(frame["Task"]))
    blocked = any(str(t).split(":")[-1] == "seed" for t in anova["term"])
    caption = (
        "OLS ANOVA on one row per run, categorical factors and their interactions (terms joined by ':', "
        "a merged factor's parts by '×')"
        + ("; seed is a block (task:seed: seed within task)" if blocked else "")
        + "; partial η² = SS_effect / (SS_effect + SS_residual); task 'all' treats the task as a factor; "
        f"highlighted: p < {alpha:g} (uncorrected)."
    )
    table = DisplayTable("anova", caption, frame, left=("Task", "Term"), emphasis=tuple(emph))
    return Section("anova", title, tables=(table,), notes=tuple(f"Model: {d}" for d in design))


def diagnostics_section(diag: pd.DataFrame | None) -> Section:
    title = "Diagnostics"
    if diag is None:
        return Section("diagnostics", title, empty_note="No diagnostics were computed.")
    rows = []
    for r in diag.itertuples(index=False):
        v = r.value
        shown = fmt_g(v) if _num(v) is not None else ("" if not _present(v) else str(v))
        rows.append({"Task": str(r.task), "Check": str(r.check), "Value": shown, "Note": _note(getattr(r, "note", ""))})
    frame = _frame(rows, ["Task", "Check", "Value", "Note"])
    frame["Task"] = _shown_task(list(frame["Task"]))
    caption = (
        "Runs in each fit (each once), balance and missing cells of the ANOVA's cells, and residual checks "
        "(Shapiro–Wilk and Levene p values)."
    )
    return Section(
        "diagnostics", title, tables=(DisplayTable("diagnostics", caption, frame, left=("Task", "Check", "Note")),)
    )


def sensitivity_section(
    sens: pd.DataFrame | None, summary: Mapping[str, Any] | None, cells: pd.DataFrame | None, *, scale100: bool
) -> Section:
    title = "Sensitivity (tasks ranked within their metric)"
    if sens is None:
        return Section("sensitivity", title, empty_note="No sensitivity analysis: no teacher scores were given.")
    from kdgrid.report.pivot import level_namer

    name_of, level_key = level_namer(cells)
    has_size = "train_size" in sens.columns and sens["train_size"].notna().any()
    cols = (
        ["Condition", "Rank", "Task"]
        + (["Train size"] if has_size else [])
        + ["Teacher", "Floor", "Student", "Gap [95% CI]", "Retention [95% CI]", "n"]
    )
    ordered = sens.assign(_c=pd.Categorical(sens["cell"], list(dict.fromkeys(sens["cell"]))))
    ordered = ordered.sort_values(["_c", "metric", "rank"], kind="stable")
    rows = []
    for r in ordered.itertuples(index=False):
        s = metric_scale(r.metric, scale100=scale100)
        rows.append(
            {
                "Condition": name_of(str(r.cell)),
                "Rank": f"{fmt_count(r.rank)} ({r.metric})",
                "Task": str(r.task),
                "Train size": fmt_count(getattr(r, "train_size", None)),
                "Teacher": fmt_metric(r.teacher, scale=s),
                "Floor": fmt_metric(r.floor, scale=s),
                "Student": fmt_mean_sd(r.student_mean, r.student_sd, scale=s),
                "Gap [95% CI]": f"{fmt_metric(r.gap, scale=s)} {fmt_ci(r.gap_ci_low, r.gap_ci_high, scale=s, decimals=1)}",
                "Retention [95% CI]": f"{fmt_num(r.retention, 2)} {fmt_ci(r.retention_ci_low, r.retention_ci_high)}",
                "n": fmt_count(r.n),
            }
        )
    frame = _frame(rows, cols)
    frame["Condition"] = _shown_task(list(frame["Condition"]))
    scales = {metric_scale(m, scale100=scale100) for m in sens["metric"]}
    caption = (
        "Teacher score, floor (majority-class score, or 0 for a correlation metric), student mean ± sd over seeds, "
        "gap = teacher − student and normalised retention = (student − floor)/(teacher − floor) (1 = the teacher's "
        "score, 0 = the floor), each with a t interval over seeds (the teacher is one fixed model). Tasks are ranked "
        f"within their metric, 1 = lowest retention. {scale_phrase(scales or {1.0})}"
    )
    notes = []
    if summary:
        shown = [f"{k} = {_fmt_summary(k, v)}" for k, v in summary.items() if _present(v) and v != ""]
        if shown:
            notes.append("Retention vs training-set size: " + ", ".join(shown))
    table = DisplayTable("sensitivity", _with_key(caption, level_key), frame, left=("Condition", "Task"))
    return Section("sensitivity", title, tables=(table,), notes=tuple(notes))


def _fmt_summary(key: str, v: Any) -> str:
    if _num(v) is None:
        return str(v) if _present(v) else MISSING
    return fmt_p(v) if key == "p" or key.endswith("_p") or key.startswith("p_") else fmt_g(v, 3)


def power_section(
    power: pd.DataFrame | None, cells: pd.DataFrame | None = None, plan: pd.DataFrame | None = None
) -> Section:
    title = "Power (prospective)"
    if power is None:
        return Section("power", title, empty_note="No power analysis: it needs paired tests.")
    from kdgrid.report.pivot import condition_level_columns

    # Each factor's level alone in its own column, as in the paired tests.
    level_cols = condition_level_columns(power, cells) if cells is not None else {}
    cond_cols = list(level_cols) or ["Condition"]
    cols = ["Task", *cond_cols, "n", "dz", "dz 95% CI", "α used", "Target dz", "Seeds for target"]
    labels = condition_labels(cells)
    rows = []
    for i, r in enumerate(power.itertuples(index=False)):
        row = {
            "Task": str(r.task),
            "Condition": labels.get(str(r.condition), str(r.condition)),
            "n": fmt_count(r.n),
            "dz": fmt_num(r.dz, 2),
            "dz 95% CI": fmt_ci(r.dz_ci_low, r.dz_ci_high),
            "α used": fmt_g(r.alpha_used, 3),
            "Target dz": fmt_num(r.target_dz, 2),
            "Seeds for target": _fmt_seeds(r.n_for_target),
        }
        row.update({c: levels[i] for c, levels in level_cols.items()})
        rows.append(row)
    frame = _frame(rows, cols)
    frame["Task"] = _shown_task(list(frame["Task"]))
    caption = (
        "Observed d_z with its exact 95% CI (noncentral t), and the seeds the two-sided paired t-test needs for 80% "
        "power at a target d_z chosen in advance, at the α the correction uses (α/m for a family of m). No power is "
        "computed from the observed effect (post-hoc power restates p)."
    )
    tables = [DisplayTable("power", caption, frame, left=("Task", *cond_cols), optional=("n", "α used", "Target dz"))]
    if plan is not None:
        prow = [
            {
                "Family": str(r.family),
                "α used": fmt_g(r.alpha_used, 3),
                "Target dz": fmt_num(r.target_dz, 2),
                "Seeds for 80% power": _fmt_seeds(r.n_needed),
            }
            for r in plan.itertuples(index=False)
        ]
        pframe = _frame(prow, ["Family", "α used", "Target dz", "Seeds for 80% power"])
        pframe["Family"] = _shown_task(list(pframe["Family"]))
        tables.append(
            DisplayTable(
                "power-plan",
                "Seeds needed per family for stated target effects (prospective).",
                pframe,
                left=("Family",),
            )
        )
    return Section("power", title, tables=tuple(tables))


def _fmt_seeds(x: Any) -> str:
    # Seeds are whole runs: round up, as a power calculation's n must be.
    v = _num(x)
    if v is None:
        return MISSING
    return "∞" if math.isinf(v) else str(int(math.ceil(v - 1e-9)))


def mapping_weight_grids(weights: pd.DataFrame, task: str) -> dict[str, pd.DataFrame]:
    """Per cell of ``task``: student layer × teacher layer weights at each seed's last
    epoch, averaged over seeds (what the learnable mapping converged to)."""
    sub = weights[weights["task"].astype(str) == task]
    out: dict[str, pd.DataFrame] = {}
    for cell, g in sub.groupby("cell", sort=False):
        # The last epoch per seed, not overall: a seed that stopped early still counts.
        last = g.groupby("seed")["epoch"].transform("max")
        final = g[g["epoch"] == last]
        out[str(cell)] = (
            final.pivot_table(index="student_layer", columns="teacher_layer", values="weight", aggfunc="mean")
            .sort_index()
            .sort_index(axis=1)
        )
    return out


def mapping_section(
    weights: pd.DataFrame | None, cells: pd.DataFrame | None, convergence: pd.DataFrame | None = None
) -> Section | None:
    """Learned mapping weights as student × teacher matrices, then their convergence tables
    (:func:`convergence_frame`); None (no section at all) when the study has no learnable
    mapping, since the contract makes them optional."""
    if weights is None:
        return None
    labels = condition_labels(cells)
    tables = []
    for task in dict.fromkeys(weights["task"].astype(str)):
        for cell, grid in mapping_weight_grids(weights, task).items():
            seeds = weights.loc[(weights["task"].astype(str) == task) & (weights["cell"].astype(str) == cell), "seed"]
            frame = grid.map(lambda v: fmt_num(v, 2)).astype(object)
            frame.columns = [f"T{c}" for c in frame.columns]
            frame.insert(0, "Student layer", [f"S{i}" for i in grid.index])
            caption = (
                f"{task} · {labels.get(cell, cell)}: weight of each teacher layer (T) for each student "
                f"layer (S) at the last epoch, mean over {seeds.nunique()} seed(s)."
            )
            tables.append(
                DisplayTable(
                    f"mapping-{slug(task)}-{slug(labels.get(cell, cell))}",
                    caption,
                    frame.reset_index(drop=True),
                    left=("Student layer",),
                )
            )
    if convergence is None:
        convergence = mapping_convergence(weights, cell_factor_levels(cells))
    tables += convergence_tables(convergence, labels)
    return Section("mapping_weights", "Learned mapping weights", tables=tuple(tables))


def cell_factor_levels(cells: pd.DataFrame | None) -> dict[str, dict[str, str]]:
    """Cell label -> factor -> level, from the cells table."""
    if cells is None:
        return {}
    factors = factor_columns(cells)
    return {str(r["cell"]): {f: str(r[f]) for f in factors} for _, r in cells.drop_duplicates("cell").iterrows()}


def convergence_frame(analysis: Analysis) -> pd.DataFrame | None:
    """The convergence of the analysis' learned mappings, pairing cells one factor apart; None without weights."""
    weights = section_frame(analysis, "mapping_weights")
    if weights is None:
        return None
    return mapping_convergence(weights, cell_factor_levels(section_frame(analysis, "cells")))


def convergence_tables(conv: pd.DataFrame, labels: Mapping[str, str]) -> list[DisplayTable]:
    """Per task: how far apart the mappings of cells one factor apart started and ended."""
    out = []
    for task, g in conv.groupby("task", sort=False):
        if g["cell_a"].nunique() < 2 and g["end_distance"].isna().all():
            continue
        rows = [
            {
                "Cell": labels.get(str(r["cell_a"]), str(r["cell_a"])),
                "vs": "(its own seeds)"
                if r["cell_a"] == r["cell_b"]
                else labels.get(str(r["cell_b"]), str(r["cell_b"])),
                "Seeds": f"{r['n_a']}" if r["cell_a"] == r["cell_b"] else f"{r['n_a']} / {r['n_b']}",
                "Start": fmt_num(r["start_distance"], 3),
                "End": fmt_num(r["end_distance"], 3),
                "Moved": fmt_num(r["moved"], 3),
            }
            for r in g.to_dict("records")
        ]
        caption = (
            f"{task}: distance between learned mappings, the mean over student layers of the total-variation "
            "distance of their weight rows (0 = the same mapping, 1 = no teacher layer in common), at the start "
            "(epoch 0) and after the last epoch. Two cells: between their seed-mean mappings; a cell with its "
            "own seeds: mean over seed pairs, the noise floor, and Moved, how far training took each seed's "
            "mapping from its start. Only cells that differ in one factor are "
            "paired. Mappings that converge whatever their start end closer than they began, near that floor."
        )
        out.append(
            DisplayTable(
                f"mapping-convergence-{slug(str(task))}",
                caption,
                _frame(rows, ["Cell", "vs", "Seeds", "Start", "End", "Moved"]),
                left=("Cell", "vs"),
            )
        )
    return out


#: measure -> (column header, how to show its median). Parameters in millions, times as measured.
_EFFICIENCY_SHOWN: dict[str, tuple[str, Any]] = {
    "params": ("Params (M)", lambda v: fmt_num(None if (n := _num(v)) is None else n / 1e6, 2)),
    "latency_ms": ("Latency (ms)", lambda v: fmt_num(v, 1)),
    "throughput_ex_s": ("Throughput (ex/s)", lambda v: fmt_num(v, 0)),
    "train_ex_per_s": ("Train (ex/s)", lambda v: fmt_num(v, 0)),
    "peak_memory_mb": ("Peak memory (MB)", lambda v: fmt_num(v, 0)),
}


def efficiency_section(eff: pd.DataFrame | None, cells: pd.DataFrame | None) -> Section | None:
    """Cost per condition: each measure's median over runs with its ratio to the baseline cell;
    None (no section) when the table has no efficiency columns, e.g. a ``--from`` table."""
    if eff is None:
        return None
    from kdgrid.report.pivot import level_namer

    name_of, level_key = level_namer(cells)
    measures = [m for m in _EFFICIENCY_SHOWN if m in set(eff["measure"])]
    order = list(dict.fromkeys(eff["cell"].astype(str)))
    rows = []
    for cell in order:
        sub = eff[eff["cell"].astype(str) == cell].set_index("measure")
        row = {"Condition": name_of(cell), "Runs": fmt_count(sub["n"].max())}
        for m in measures:
            header, show = _EFFICIENCY_SHOWN[m]
            if m not in sub.index:
                row[header] = MISSING
                continue
            ratio = _num(sub.at[m, "ratio"])
            row[header] = show(sub.at[m, "median"]) + ("" if ratio is None else f" ({ratio:.2f}×)")
        rows.append(row)
    frame = _frame(rows, ["Condition", "Runs"] + [_EFFICIENCY_SHOWN[m][0] for m in measures])
    caption = (
        "Median over every run of the condition (all tasks and seeds), with the ratio to the baseline "
        "condition's median in brackets (latency 0.50× = twice as fast). Latency and throughput: one forward "
        "pass of a batch of 32 × 64 tokens on the run's device, median of repeats; Train: examples per second "
        "of the whole distillation, teacher included. Times from runs that shared a machine compare best as ratios."
    )
    return Section(
        "efficiency",
        "Efficiency",
        tables=(
            DisplayTable(
                "efficiency",
                _with_key(caption, level_key),
                frame,
                left=("Condition",),
                optional=("Peak memory (MB)", "Throughput (ex/s)", "Params (M)", "Runs"),
            ),
        ),
    )


def layers_section(layers: pd.DataFrame | None, cells: pd.DataFrame | None) -> Section | None:
    """The teacher layers each condition's students were copied from and are trained towards; None
    (no section) without them (a ``--from`` table, runs stored before kdgrid recorded them)."""
    if layers is None or layers.empty:
        return None
    from kdgrid.report.pivot import level_namer

    name_of, level_key = level_namer(cells)
    # Two store cells that share runs (a collapsed setting) may have one name here: show it once.
    seen = dict.fromkeys((name_of(str(r.cell)), str(r.copied), str(r.mapped)) for r in layers.itertuples(index=False))
    rows = [{"Condition": c, "Copied": cp, "Mapped": mp} for c, cp, mp in seen]
    caption = (
        "Teacher layers (1 = the first above the embeddings) copied into student layers 1, 2, ... and the teacher "
        'layer each student layer is trained towards; a learnable mapping ("learnable over") by the fixed '
        "map its layers name, where a fixed start peaks: its weights may move to any teacher layer (see the "
        "mapping section). Different layers in the two columns mean the student learns towards layers it was "
        "not copied from."
    )
    return Section(
        "layers",
        "Layers copied and mapped",
        tables=(
            DisplayTable(
                "layers",
                _with_key(caption, level_key),
                _frame(rows, ["Condition", "Copied", "Mapped"]),
                left=("Condition", "Copied", "Mapped"),
            ),
        ),
    )


def summary_section(
    question: str, paired: pd.DataFrame | None, cells: pd.DataFrame | None, *, scale100: bool = True
) -> Section:
    """The opening box: the study's question, the decisive comparisons, the undecided ones."""
    from kdgrid.report.pivot import summary_lines

    q, decisive, undecided = summary_lines(question, paired, cells, scale100=scale100)
    notes = (f"Question: {q}",) + (() if decisive else ("Decided: none of the comparisons.",))
    return Section("summary", "Summary", notes=notes + tuple(undecided), bullets=tuple(decisive))


def warnings_section(warnings: Sequence[str] | None) -> Section:
    items = tuple(str(w) for w in (warnings or ()))
    if not items:
        return Section("warnings", "Warnings", empty_note="No warnings.")
    return Section("warnings", "Warnings", bullets=items)


def build_sections(
    analysis: Analysis,
    *,
    scale100: bool = True,
    alpha: float = 0.05,
    convergence: pd.DataFrame | None = None,
    rows: Sequence[str] | None = None,
    cols: Sequence[str] | None = None,
    question: str | None = None,
) -> list[Section]:
    """Every report section in order, from any object with the ``Analysis`` attributes.

    ``convergence``: :func:`convergence_frame` of the analysis when the caller has it already
    (None: computed here when there are mapping weights). ``rows``/``cols``: the factors of the
    pivot tables (:func:`kdgrid.report.pivot.choose_layout`). ``question`` (the study's
    description) opens the Summary section; None leaves the summary out."""
    cells = section_frame(analysis, "cells")
    paired = section_frame(analysis, "paired_tests")
    summary = summary_section(question, paired, cells, scale100=scale100) if question is not None else None
    sections = [
        *([summary] if summary is not None else []),
        cells_section(
            cells,
            paired=paired,
            sens=section_frame(analysis, "sensitivity"),
            rows=rows,
            cols=cols,
            scale100=scale100,
            alpha=alpha,
        ),
        paired_section(paired, cells, alpha=alpha, scale100=scale100),
        stratified_section(section_frame(analysis, "stratified"), cells, alpha=alpha, scale100=scale100),
        ranks_section(
            section_frame(analysis, "ranks"),
            section_frame(analysis, "nemenyi"),
            getattr(analysis, "friedman", None),
            cells,
            alpha=alpha,
        ),
        anova_section(section_frame(analysis, "anova"), alpha=alpha, design=getattr(analysis, "design", None) or ()),
        diagnostics_section(section_frame(analysis, "diagnostics")),
        sensitivity_section(
            section_frame(analysis, "sensitivity"),
            getattr(analysis, "sensitivity_summary", None),
            cells,
            scale100=scale100,
        ),
        power_section(section_frame(analysis, "power"), cells, section_frame(analysis, "power_plan")),
        mapping_section(section_frame(analysis, "mapping_weights"), cells, convergence),
        layers_section(section_frame(analysis, "layers"), cells),
        efficiency_section(section_frame(analysis, "efficiency"), cells),
        warnings_section(getattr(analysis, "warnings", None)),
    ]
    return [s for s in sections if s is not None]
