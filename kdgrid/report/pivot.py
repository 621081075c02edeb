"""Paper-style pivot tables and the report's summary: what a reader sees first.

A study's factors are split into *row* factors and *column* factors, as papers lay out
their tables (rows = the methods compared, columns = task × data size). Every label is a
factor's level alone ("kl", "learnable", "0.5"); the factor names head the label
columns and the baseline is named once, in the caption.

Default layout, when neither the study (``analysis.table``) nor the command line
(``--rows``/``--cols``) chooses: the task and every *setting* factor (one under ``data.``,
``teacher.`` or ``student.``: it describes the problem, not the distillation method) form
the columns while that keeps at most :data:`MAX_DEFAULT_COLUMNS` of them; every other
factor forms the rows.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from kdgrid.errors import KdgridError
from kdgrid.report.tables import (
    MISSING,
    DisplayTable,
    _num,
    _present,
    _short_names,
    factor_columns,
    fmt_ci,
    fmt_mean_sd,
    fmt_metric,
    metric_groups,
    metric_scale,
    metric_scales,
    scale_phrase,
    short_name,
    slug,
)

MAX_DEFAULT_COLUMNS = 8
SETTING_PREFIXES = ("data.", "teacher.", "student.")
MARK_DIFFERENT = "*"
MARK_EQUIVALENT = "≈"
MARK_BASELINE = "ᵇ"
TASK = "task"


@dataclass(frozen=True)
class Layout:
    """Which factors (full dotted names, or ``"task"``) form the rows and which the columns."""

    rows: tuple[str, ...]
    cols: tuple[str, ...]


def short_names(cells: pd.DataFrame) -> dict[str, str]:
    """Factor -> its shortest unambiguous name ("attention"; "intermediate.alpha" beside "objective.alpha")."""
    return _short_names(factor_columns(cells))


def _level(v: Any) -> str:
    return str(v) if _present(v) else MISSING


def ordered_levels(values: Sequence[Any]) -> list[str]:
    """Distinct levels in numeric order when all parse as numbers, else in order of appearance."""
    levels = list(dict.fromkeys(_level(v) for v in values))
    try:
        return sorted(levels, key=float)
    except ValueError:
        return levels


def resolve_factor(name: str, factors: Sequence[str], where: str) -> str:
    """A factor named in full or by its last component ("attention"); anything else is a user error."""
    if name == TASK or name in factors:
        return name
    short = _short_names(factors)
    hits = [f for f in factors if short[f] == name or short_name(f) == name]
    if len(hits) == 1:
        return hits[0]
    allowed = ", ".join([TASK, *(short[f] for f in factors)])
    raise KdgridError(f"{where}: '{name}' is not a factor of this study (allowed: {allowed})")


def choose_layout(
    cells: pd.DataFrame,
    rows: Sequence[str] | None = None,
    cols: Sequence[str] | None = None,
    *,
    where: str = "analysis.table",
) -> Layout:
    """The table layout: the given rows/cols (names checked), the rest filled in by the default rule."""
    factors = factor_columns(cells)
    r = [resolve_factor(n, factors, f"{where}.rows") for n in (rows or [])]
    c = [resolve_factor(n, factors, f"{where}.cols") for n in (cols or [])]
    both = set(r) & set(c)
    if both:
        raise KdgridError(f"{where}: '{sorted(both)[0]}' is both a row and a column factor (each goes in one place)")
    placed = set(r) | set(c)
    rest = [f for f in factors if f not in placed]
    if not rows and not cols:
        n_cols = cells[TASK].nunique()
        for f in [f for f in rest if f.startswith(SETTING_PREFIXES)]:
            k = cells[f].nunique(dropna=False)
            if n_cols * k <= MAX_DEFAULT_COLUMNS:
                c.append(f)
                n_cols *= k
        rest = [f for f in rest if f not in c]
        return Layout(tuple(rest), (TASK, *c))
    if TASK not in placed:
        c.insert(0, TASK)
    if rows and not cols:
        c += rest  # only rows chosen: everything else spreads across the columns
    else:
        r += rest
    return Layout(tuple(r), tuple(c))


def _key(row: Any, names: Sequence[str]) -> tuple[str, ...]:
    return tuple(_level(row[n]) for n in names)


def baseline_description(paired: pd.DataFrame | None, cells: pd.DataFrame) -> tuple[str, list[str]]:
    """The baseline named once: "attention = mse, kind = uniform" and the factors it varies with
    ("at each max_train_examples"), from the baseline cells of the paired tests."""
    if paired is None or "baseline" not in paired:
        return "", []
    factors = factor_columns(cells)
    by_cell = cells.drop_duplicates("cell").set_index(cells.drop_duplicates("cell")["cell"].astype(str))
    names = [b for b in dict.fromkeys(paired["baseline"].dropna().astype(str)) if b in by_cell.index]
    if not names:
        return "", []
    fixed, varying = [], []
    short = short_names(cells)
    for f in factors:
        levels = {_level(by_cell.at[b, f]) for b in names}
        if len(levels) == 1:
            lv = levels.pop()
            if lv != MISSING:
                fixed.append(f"{short[f]} = {lv}")
        else:
            varying.append(short[f])
    return ", ".join(fixed), varying


def _marks(paired: pd.DataFrame | None) -> tuple[dict[tuple[str, str, str], str], set[tuple[str, str]]]:
    """(task, metric, condition) -> mark from the verdict, and the (task, baseline cell) pairs."""
    marks: dict[tuple[str, str, str], str] = {}
    bases: set[tuple[str, str]] = set()
    if paired is None:
        return marks, bases
    for r in paired.itertuples(index=False):
        v = str(r.verdict)
        marks[(str(r.task), str(r.metric), str(r.condition))] = (
            MARK_DIFFERENT if v == "different" else MARK_EQUIVALENT if v == "equivalent" else ""
        )
        bases.add((str(r.task), str(r.baseline)))
    return marks, bases


def _reference(sens: pd.DataFrame | None, column: str) -> dict[str, float]:
    """Per task: the teacher's score or the floor (one fixed number per task)."""
    if sens is None or column not in sens:
        return {}
    out = {}
    for task, g in sens.groupby(sens["task"].astype(str), sort=False):
        v = pd.to_numeric(g[column], errors="coerce").dropna()
        if len(v):
            out[str(task)] = float(v.iloc[0])
    return out


def pivot_tables(
    cells: pd.DataFrame,
    paired: pd.DataFrame | None,
    sens: pd.DataFrame | None,
    layout: Layout,
    *,
    scale100: bool = True,
    alpha: float = 0.05,
    decimals: int = 1,
) -> list[DisplayTable]:
    """One pivot table per metric group (:func:`metric_groups`): mean ± sd, verdict marks, teacher row."""
    marks, bases = _marks(paired)
    teacher, floor = _reference(sens, "teacher"), _reference(sens, "floor")
    base_text, base_varies = baseline_description(paired, cells)
    short = short_names(cells)
    row_f = [f for f in layout.rows]
    col_f = [f for f in layout.cols]
    out = []
    for label, sub in metric_groups(cells):
        scales = metric_scales(sub, scale100=scale100)
        one_metric = len(set(sub["metric"].astype(str))) == 1
        # Column keys: tasks in order of appearance, factor levels in their natural order.
        col_levels = {
            f: (list(dict.fromkeys(sub[f].astype(str))) if f == TASK else ordered_levels(list(sub[f]))) for f in col_f
        }
        seen_cols = set(_key(r, col_f) for _, r in sub.iterrows())
        col_keys = [k for k in _product(col_levels, col_f) if k in seen_cols]
        row_levels = {f: ordered_levels(list(sub[f])) for f in row_f}
        seen_rows = set(_key(r, row_f) for _, r in sub.iterrows())
        row_keys = [k for k in _product(row_levels, row_f) if k in seen_rows]
        lookup: dict[tuple[tuple[str, ...], tuple[str, ...]], Any] = {}
        for _, r in sub.iterrows():
            lookup.setdefault((_key(r, row_f), _key(r, col_f)), r)
        # Baseline rows first: the reference the marks refer to.
        is_base_row = {
            rk: any(
                (str(lookup[(rk, ck)]["task"]), str(lookup[(rk, ck)]["cell"])) in bases
                for ck in col_keys
                if (rk, ck) in lookup
            )
            for rk in row_keys
        }
        row_keys = [rk for rk in row_keys if is_base_row[rk]] + [rk for rk in row_keys if not is_base_row[rk]]

        def header(ck: tuple[str, ...]) -> str:
            return " ".join(ck)  # levels alone; each task's metric is named in the caption

        headers = [header(ck) for ck in col_keys]
        label_cols = [short[f] if f != TASK else "Task" for f in row_f] or ["Condition"]
        rows = []
        for rk in row_keys:
            row = dict(zip(label_cols, rk)) if row_f else {"Condition": "all"}
            for ck, h in zip(col_keys, headers):
                hit = lookup.get((rk, ck))
                if hit is None:
                    row[h] = MISSING
                    continue
                s = scales[(str(hit["task"]), str(hit["metric"]))]
                text = fmt_mean_sd(hit["mean"], hit["sd"], scale=s, decimals=decimals)
                if (str(hit["task"]), str(hit["cell"])) in bases:
                    text += MARK_BASELINE
                else:
                    text += marks.get((str(hit["task"]), str(hit["metric"]), str(hit["cell"])), "") or ""
                row[h] = text
            rows.append(row)
        for name, ref in (("teacher", teacher), ("floor", floor)):
            if not ref:
                continue
            row = dict.fromkeys(label_cols, "")
            row[label_cols[0]] = name
            for ck, h in zip(col_keys, headers):
                task = ck[col_f.index(TASK)] if TASK in col_f else None
                metric = next(iter({m for t, m in scales if t == task}), "")
                v = ref.get(task) if task is not None else None
                row[h] = (
                    MISSING
                    if v is None
                    else fmt_metric(v, scale=scales.get((task or "", metric), 1.0), decimals=decimals)
                )
            rows.append(row)
        frame = pd.DataFrame(rows, columns=label_cols + headers, dtype=object)
        # Blank a level that repeats the row above under the same outer levels: blocks read as groups.
        raw = frame[label_cols].astype(str).values.tolist()
        for i in range(len(raw) - 1, 0, -1):
            if raw[i][0] in ("teacher", "floor"):
                continue
            for j in range(len(label_cols) - 1):
                if raw[i][: j + 1] != raw[i - 1][: j + 1]:
                    break
                frame.iat[i, j] = ""
        ns = sorted({int(n) for n in sub["n"] if _num(n) is not None}) if "n" in sub else []
        n_text = (f"n = {ns[0]}" if len(ns) == 1 else f"n = {ns[0]}–{ns[-1]}") if ns else "n unknown"
        row_names = " × ".join(label_cols) if row_f else "—"
        col_names = " × ".join("task" if f == TASK else short[f] for f in col_f)
        per_task = ", ".join(f"{t} {m}" for t, m in scales) if not one_metric else label
        caption = (
            f"{per_task}: mean ± sd over seeds ({n_text}). {scale_phrase(scales.values())} Rows: {row_names}; "
            f"columns: {col_names}. "
            + (
                f"Baseline {MARK_BASELINE}: {base_text}"
                + (f" (at each {', '.join(base_varies)})" if base_varies else "")
                + f". {MARK_DIFFERENT} different from the baseline of its task (paired test, adjusted p < {alpha:g}); "
                f"{MARK_EQUIVALENT} equivalent within the margin (TOST); unmarked: inconclusive. "
                if base_text or paired is not None
                else ""
            )
            + (
                "teacher: the fine-tuned teacher's score; floor: the majority-class score (0 for a correlation). "
                if teacher
                else ""
            )
            + (
                "A level joined by '|' (kl|mse) marks runs shared by cells that differ only in a factor without "
                "effect there, shown once."
                if any("|" in k for rk in row_keys for k in rk)
                else ""
            )
        ).strip()
        out.append(DisplayTable(f"cells-{slug(label)}", caption, frame, left=tuple(label_cols)))
    return out


def _product(levels: Mapping[str, list[str]], names: Sequence[str]) -> list[tuple[str, ...]]:
    keys: list[tuple[str, ...]] = [()]
    for n in names:
        keys = [k + (lv,) for k in keys for lv in levels[n]]
    return keys


# --------------------------------------------------------------------------- summary


@dataclass(frozen=True)
class Finding:
    """One paired comparison, stated in a line a reader can take away."""

    task: str
    condition: str  # levels that differ from the baseline: "attention kl, kind learnable"
    where: str  # the levels the baseline shares with it ("max_train_examples 200")
    verdict: str  # different / equivalent / inconclusive
    text: str  # the whole sentence


_NAME_SPLIT = re.compile(r", (?=[A-Za-z_][\w.]*=)")


def cell_levels(cells: pd.DataFrame, name: str) -> dict[str, str] | None:
    """Factor -> level of a cell: from the cells table, else parsed from its name
    ("a.b=kl, c=0.5"; a paired test may name a cell the cells table shows collapsed)."""
    factors = factor_columns(cells)
    hit = cells[cells["cell"].astype(str) == name]
    if len(hit):
        return {f: _level(hit.iloc[0][f]) for f in factors}
    short = _short_names(factors)
    named = {n: f for f in factors for n in (f, short[f], short_name(f))}
    parsed = dict(p.split("=", 1) for p in _NAME_SPLIT.split(name) if "=" in p)
    if not parsed or any(k not in named for k in parsed):
        return None
    by_factor = {named[k]: v for k, v in parsed.items()}
    return {f: by_factor.get(f, MISSING) for f in factors}


def condition_diff(cells: pd.DataFrame | None, condition: str, baseline: str) -> tuple[str, str]:
    """(levels where condition and baseline differ, levels they share), each as "name level" pairs."""
    if cells is None:
        return condition, ""
    cl, bl = cell_levels(cells, condition), cell_levels(cells, baseline)
    if cl is None or bl is None:
        return condition, ""
    diff: list[str] = []
    same: list[str] = []
    short = short_names(cells)
    for f in factor_columns(cells):
        a, b = cl[f], bl[f]
        (same if a == b else diff).append(f"{short[f]} {a}")
    return ", ".join(diff) or condition, ", ".join(same)


def findings(paired: pd.DataFrame | None, cells: pd.DataFrame | None, *, scale100: bool = True) -> list[Finding]:
    """Every paired comparison as a sentence: decisive ones (different, equivalent) sorted by |Δ|."""
    if paired is None:
        return []
    settings: list[str] = []
    if cells is not None:
        short = short_names(cells)
        settings = [short[f] for f in factor_columns(cells) if f.startswith(SETTING_PREFIXES)]
    out = []
    for r in paired.itertuples(index=False):
        s = metric_scale(r.metric, scale100=scale100)
        diff, same = condition_diff(cells, str(r.condition), str(r.baseline))
        where_bits = [b for b in same.split(", ") if b and any(b.startswith(f + " ") for f in settings)]
        where = ", ".join(where_bits)
        verdict = str(r.verdict) if _present(r.verdict) else "inconclusive"
        delta = fmt_metric(r.mean_diff, scale=s, decimals=1)
        ci = fmt_ci(r.sci_low, r.sci_high, scale=s, decimals=1)
        if verdict == "equivalent":
            what = f"equivalent to the baseline within ±{fmt_metric(r.margin, scale=s, decimals=1)}"
        elif verdict == "different":
            what = ("better" if (_num(r.mean_diff) or 0) > 0 else "worse") + " than the baseline"
        else:
            what = "undecided"
        unit = f"{r.metric}{' ×100' if s == 100.0 else ''}"
        text = f"{r.task}{' · ' + where if where else ''}: {diff} is {what} (Δ {delta} {unit}, simultaneous CI {ci})"
        out.append(Finding(str(r.task), diff, where, verdict, text))
    size = {id(f): abs(_num(r.mean_diff) or 0.0) for f, r in zip(out, paired.itertuples(index=False))}
    # Comparisons of cells that share their runs (a collapsed factor) give the very same numbers:
    # say it once, in the shortest words.
    once: dict[tuple[str, ...], Finding] = {}
    for f, r in zip(out, paired.itertuples(index=False)):
        key = (f.task, str(r.metric), *(repr(_num(x)) for x in (r.mean_diff, r.sci_low, r.sci_high, r.p)))
        if key not in once or len(f.text) < len(once[key].text):
            once[key] = f
    kept = list(once.values())
    return sorted(kept, key=lambda f: (f.verdict not in ("different", "equivalent"), -size[id(f)]))


def headline(paired: pd.DataFrame | None, cells: pd.DataFrame | None, *, scale100: bool = True) -> str:
    """One line for the index: how many comparisons were decided, and the largest decisive one."""
    fs = findings(paired, cells, scale100=scale100)
    if not fs:
        return "no paired comparisons (no baseline or too few seeds)"
    n_diff = sum(f.verdict == "different" for f in fs)
    n_eq = sum(f.verdict == "equivalent" for f in fs)
    lead = f"{n_diff} different, {n_eq} equivalent, {len(fs) - n_diff - n_eq} undecided of {len(fs)} comparisons"
    decisive = [f for f in fs if f.verdict in ("different", "equivalent")]
    return lead + (f"; largest: {decisive[0].text}" if decisive else "")


def summary_lines(
    question: str, paired: pd.DataFrame | None, cells: pd.DataFrame | None, *, scale100: bool = True, limit: int = 8
) -> tuple[str, list[str], list[str]]:
    """(question, decisive sentences, undecided summary) for the report's opening box."""
    fs = findings(paired, cells, scale100=scale100)
    decisive = [f.text for f in fs if f.verdict in ("different", "equivalent")]
    undecided = [f for f in fs if f.verdict not in ("different", "equivalent")]
    shown = decisive[:limit] + (
        [f"… and {len(decisive) - limit} more (paired tests below)"] if len(decisive) > limit else []
    )
    und = []
    if undecided:
        by_task: dict[str, int] = {}
        for f in undecided:
            by_task[f.task] = by_task.get(f.task, 0) + 1
        und.append(
            f"{len(undecided)} of {len(fs)} comparisons undecided (neither different nor equivalent): "
            + ", ".join(f"{t} {n}" for t, n in by_task.items())
            + ". More seeds would decide them "
            "(see the power section)."
        )
    elif not fs:
        und.append("No paired comparisons: no baseline, or no seeds to pair by.")
    return question or "(the study states no question: add 'description:' to the study file)", shown, und


def condition_level_columns(paired: pd.DataFrame, cells: pd.DataFrame | None) -> dict[str, list[str]]:
    """Short factor name -> the level of each paired row's condition, for the factors whose levels
    vary among the rows (a factor fixed everywhere says nothing per row)."""
    if cells is None:
        return {}
    parsed = [cell_levels(cells, str(c)) for c in paired["condition"]]
    if any(p is None for p in parsed):
        return {}
    out: dict[str, list[str]] = {}
    short = short_names(cells)
    for f in factor_columns(cells):
        levels = [p[f] for p in parsed if p is not None]
        if len(set(levels)) > 1:
            out[short[f]] = levels
    return out


def level_labels(cells: pd.DataFrame | None) -> tuple[dict[str, str], str]:
    """Cell -> its levels alone ("kl · learnable · 0.5"), for the factors that vary, and the key
    naming those factors in the same order ("attention · kind · alpha")."""
    if cells is None or cells.empty:
        return {}, ""
    first = cells.drop_duplicates("cell")
    short = short_names(cells)
    varying = [f for f in factor_columns(cells) if first[f].astype(str).nunique() > 1]
    if not varying:
        return {str(c): str(c) for c in first["cell"]}, ""
    labels = {str(r["cell"]): " · ".join(_level(r[f]) for f in varying) for _, r in first.iterrows()}
    if len(set(labels.values())) < len(labels):
        return {str(c): str(c) for c in first["cell"]}, ""
    return labels, " · ".join(short[f] for f in varying)


def level_namer(cells: pd.DataFrame | None) -> tuple[Callable[[str], str], str]:
    """(cell name -> its varying levels alone, "kl · learnable · 0.5"; the key naming those
    factors, "attention · kind · alpha"), for cells the table shows collapsed too."""
    labels, key = level_labels(cells)
    if cells is None or not key:
        return (lambda name: labels.get(name, name)), key
    varying = [f for f in factor_columns(cells) if cells.drop_duplicates("cell")[f].astype(str).nunique() > 1]

    def name_of(name: str) -> str:
        if name in labels:
            return labels[name]
        found = cell_levels(cells, name)
        return name if found is None else " · ".join(found[f] for f in varying)

    return name_of, key
