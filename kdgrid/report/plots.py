"""Report and search plots with plain matplotlib, saved as PNG and SVG.

Figures are built as ``matplotlib.figure.Figure`` objects with an Agg canvas attached,
never through ``pyplot``: pyplot keeps a global registry of open figures (a leak in a
long-lived process) and picks a GUI backend from the environment, which can fail on a
headless node. Nothing here calls ``matplotlib.use``, so importing kdgrid does not change
the backend of a user's notebook.

Every plotting function accepts the ``Analysis`` frames as documented in
docs/CONTRACTS.md and returns figures or written paths; a missing or empty input yields
no figure rather than an error, because a report with fewer plots beats no report.
"""

from __future__ import annotations

import base64
import io
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.image import AxesImage
from matplotlib.ticker import MaxNLocator

from kdgrid.errors import KdgridError
from kdgrid.report.pivot import cell_levels, level_labels, level_namer, short_names
from kdgrid.report.tables import (
    factor_columns,
    interval_label,
    mapping_weight_grids,
    metric_scale,
    metric_scales,
    section_frame,
    slug,
)

if TYPE_CHECKING:
    from matplotlib.typing import RcKeyType

    from kdgrid.analyze.core import Analysis

FORMATS: tuple[str, ...] = ("png", "svg")
PNG_DPI = 150  # sharp enough for a paper draft and for the HTML report, still small to mail
SIG_COLOR = "#c0392b"  # verdict "different" in the forest plot
EQUIV_COLOR = "#2471a3"  # verdict "equivalent"
NONSIG_COLOR = "#7f8c8d"  # "inconclusive"
SensitivityValue = Literal["retention", "gap"]


@dataclass(frozen=True)
class Plot:
    """A built figure and where it belongs in the report."""

    name: str  # file stem under plots/ (slugged), e.g. "interaction_cola"
    section: str  # the report section it illustrates ("cells", "paired_tests", ...)
    caption: str
    figure: Figure


def _figure(width: float, height: float, *, constrained: bool = False) -> Figure:
    # Single-axes figures rely on bbox_inches="tight" when saved; the constrained layout
    # engine (needed for subplot grids with a shared colour bar and a suptitle) costs an
    # extra draw per save, which is most of a report's run time on a small machine.
    fig = Figure(figsize=(width, height), layout="constrained" if constrained else None)
    FigureCanvasAgg(fig)  # attach a non-interactive canvas; no pyplot, no global figure list
    return fig


def save_figure(fig: Figure, out_dir: Path, name: str, formats: Sequence[str] = FORMATS) -> list[Path]:
    """Write ``fig`` as ``out_dir/<name>.<fmt>`` for each format; returns the paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in formats:
        path = out_dir / f"{name}.{fmt}"
        # Date=None keeps SVG/PDF files free of a timestamp, so re-running a report on the
        # same results does not show every plot as changed in version control.
        meta = {"Date": None} if fmt in ("svg", "pdf") else None
        fig.savefig(path, format=fmt, dpi=PNG_DPI, bbox_inches="tight", metadata=meta)
        paths.append(path)
    return paths


def figure_png_base64(fig: Figure) -> str:
    """The figure as a base64 PNG, for a self-contained HTML page (``data:image/png;base64,...``)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=PNG_DPI, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode("ascii")


# --------------------------------------------------------------------------- helpers


def _ordered_levels(values: Iterable[Any]) -> list[str]:
    """Distinct levels as strings: numeric order when all parse as numbers ("0.5" < "1.0"
    < "10"), else order of first appearance (the study file's order)."""
    levels = list(dict.fromkeys(_level(v) for v in values))
    try:
        return sorted(levels, key=float)
    except ValueError:
        return levels


def _level(v: Any) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v)


def _f(x: Any) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


# --------------------------------------------------------------------------- interaction

COLUMN_WIDTH_IN = 3.4  # one column of a two-column paper: every report figure is drawn at this width or 2×
MAX_LINES = 5  # lines per panel of an interaction plot
MAX_LEGEND_ENTRIES = 8  # no legend of a report figure has more (tests hold every figure to it)
_SMALL: dict[RcKeyType, Any] = {
    "font.size": 7.0,
    "axes.titlesize": 7.0,
    "axes.labelsize": 7.0,
    "xtick.labelsize": 6.5,
    "ytick.labelsize": 6.5,
    "legend.fontsize": 6.5,
}


def _matches(level: str, wanted: str) -> bool:
    """A collapsed level ("kl|mse": runs shared by both) belongs to each of its parts."""
    return level == wanted or wanted in level.split("|")


def interaction_layout(cells: pd.DataFrame) -> tuple[str | None, str | None, list[str]]:
    """(x factor, line factor, panel factors): x has the most levels (numbers preferred), lines
    the fewest (at most :data:`MAX_LINES`), every other factor gets a panel per level."""
    factors = [f for f in factor_columns(cells) if cells[f].astype(str).nunique() > 1]
    if not factors:
        return None, None, []

    def n_levels(f: str) -> int:
        return len({p for v in cells[f] for p in _level(v).split("|")})

    def numeric(f: str) -> bool:
        try:
            [float(p) for v in cells[f] for p in _level(v).split("|")]
            return True
        except ValueError:
            return False

    x = max(factors, key=lambda f: (numeric(f), n_levels(f)))
    rest = [f for f in factors if f != x]
    lines = [f for f in sorted(rest, key=n_levels) if n_levels(f) <= MAX_LINES][:1]
    line = lines[0] if lines else None
    return x, line, [f for f in rest if f != line]


def _parts(values: Iterable[Any]) -> list[str]:
    return _ordered_levels(p for v in values for p in _level(v).split("|"))


def interaction_figure(
    cells: pd.DataFrame,
    task: str,
    metric: str,
    *,
    scale: float = 1.0,
    teacher: float | None = None,
    floor: float | None = None,
) -> Figure:
    """Interaction plot for one task as small multiples: x = the factor with the most levels,
    one line per level of the factor with the fewest, one panel per combination of the other
    factors' levels; shared axes, mean with its 95% CI, the teacher (dashed) and the floor
    (dotted, majority class) as reference lines. Drawn at one paper column's width."""
    import matplotlib as mpl

    sub = cells[(cells["task"].astype(str) == task) & (cells["metric"].astype(str) == metric)]
    x_name, line_name, panel_f = interaction_layout(sub)
    short = short_names(sub) if factor_columns(sub) else {}
    panel_keys: list[tuple[str, ...]] = [()]
    for f in panel_f:
        panel_keys = [k + (lv,) for k in panel_keys for lv in _parts(sub[f])]
    n = len(panel_keys)
    ncols = 1 if n == 1 else 2 if n in (2, 4) else 3
    nrows = math.ceil(n / ncols)
    width = COLUMN_WIDTH_IN if ncols <= 2 else 2 * COLUMN_WIDTH_IN
    with mpl.rc_context(_SMALL):
        fig = _figure(width, 0.9 + 1.5 * nrows, constrained=True)
        axes = fig.subplots(nrows, ncols, squeeze=False, sharex=True, sharey=True)
        x_levels = _parts(sub[x_name]) if x_name else ["all"]
        line_levels = _parts(sub[line_name]) if line_name else [""]
        handles: dict[str, Any] = {}
        for ax, pk in zip(axes.flat, panel_keys):
            in_panel = sub
            for f, lv in zip(panel_f, pk):
                in_panel = in_panel[[_matches(_level(v), lv) for v in in_panel[f]]]
            for j, ll in enumerate(line_levels):
                pts = []
                for xi, xl in enumerate(x_levels):
                    hit = in_panel
                    if x_name:
                        hit = hit[[_matches(_level(v), xl) for v in hit[x_name]]]
                    if line_name:
                        hit = hit[[_matches(_level(v), ll) for v in hit[line_name]]]
                    if len(hit):
                        r = hit.iloc[0]
                        pts.append((xi, _f(r["mean"]) * scale, _f(r["ci_low"]) * scale, _f(r["ci_high"]) * scale))
                if not pts:
                    continue
                off = (j - (len(line_levels) - 1) / 2) * 0.06
                xs = np.array([p[0] for p in pts], dtype=float) + off
                ys = np.array([p[1] for p in pts])
                yerr = np.vstack(
                    [
                        np.nan_to_num(ys - np.array([p[2] for p in pts])),
                        np.nan_to_num(np.array([p[3] for p in pts]) - ys),
                    ]
                )
                h = ax.errorbar(
                    xs,
                    ys,
                    yerr=yerr,
                    marker="o",
                    markersize=3,
                    capsize=2,
                    linewidth=1.1,
                    elinewidth=0.8,
                    color=f"C{j % 10}",
                )
                handles.setdefault(f"{short[line_name]} {ll}" if line_name else "mean", h)
            if teacher is not None and math.isfinite(teacher):
                handles["teacher"] = ax.axhline(teacher, color="0.3", linestyle="--", linewidth=0.8)
            if floor is not None and math.isfinite(floor):
                handles["majority class" if floor != 0 else "floor (0)"] = ax.axhline(
                    floor, color="0.5", linestyle=":", linewidth=0.9
                )
            if pk:
                ax.set_title(" · ".join(pk))  # levels alone; the factors are named once, in the title
            ax.grid(axis="y", alpha=0.3, linewidth=0.5)
            ax.set_xticks(range(len(x_levels)), x_levels)
        for ax in list(axes.flat)[n:]:
            ax.set_axis_off()
        for ax in axes[-1]:
            ax.set_xlabel(short[x_name] if x_name else "")
        for ax in axes[:, 0]:
            ax.set_ylabel(f"{metric}{' ×100' if scale == 100.0 else ''}")
        if handles:
            fig.legend(
                list(handles.values()),
                list(handles),
                loc="outside lower center",
                ncol=min(4, len(handles)),
                frameon=False,
            )
        panels = f"; panels: {' · '.join(short[f] for f in panel_f)}" if panel_f else ""
        fig.suptitle(f"{task}: mean and 95% CI over seeds{panels}", fontsize=7.5)
    return fig


# --------------------------------------------------------------------------- forest


def forest_figure(
    paired: pd.DataFrame, cells: pd.DataFrame | None = None, *, alpha: float = 0.05, scale100: bool = True
) -> Figure:
    """Forest plot of one task's paired differences vs the baseline, sorted by effect.

    Thick bar: the simultaneous interval of the comparison's family (consistent with p_adj);
    thin bar: the unadjusted 95% interval; both named on the axis. Colour: the verdict
    (different, equivalent within ±margin, inconclusive). Labels are levels alone, the factors
    named once on the y axis.
    """
    import matplotlib as mpl

    labels, key = level_labels(cells)
    paired = paired.assign(_d=pd.to_numeric(paired["mean_diff"], errors="coerce")).sort_values("_d", kind="stable")
    n = len(paired)
    colors = {"different": SIG_COLOR, "equivalent": EQUIV_COLOR}
    scales = set()
    with mpl.rc_context(_SMALL):
        fig = _figure(COLUMN_WIDTH_IN, 0.14 * n + 1.1)
        ax = fig.add_subplot()
        ytick, ylab = [], []
        for i, r in enumerate(paired.itertuples(index=False)):
            y = i
            s = metric_scale(r.metric, scale100=scale100)
            scales.add(s)
            d, lo, hi = _f(r.mean_diff) * s, _f(r.ci_low) * s, _f(r.ci_high) * s
            slo, shi = _f(r.sci_low) * s, _f(r.sci_high) * s
            verdict = str(r.verdict)
            color = colors.get(verdict, NONSIG_COLOR)
            if math.isfinite(lo) and math.isfinite(hi):
                ax.plot([lo, hi], [y, y], color=color, linewidth=0.7)
            if math.isfinite(slo) and math.isfinite(shi):
                ax.plot([slo, shi], [y, y], color=color, linewidth=2.2, alpha=0.45)
            filled = verdict in colors
            ax.plot([d], [y], marker="o", markersize=3.5, color=color, markerfacecolor=color if filled else "white")
            if bool(getattr(r, "baseline_at_floor", False)):
                ax.annotate("floor", (d, y), xytext=(4, 2), textcoords="offset points", fontsize=5.5, color="0.3")
            ytick.append(y)
            ylab.append(labels.get(str(r.condition)) or _levels_of(cells, str(r.condition)))
        ax.axvline(0.0, color="black", linestyle="--", linewidth=0.7)
        ax.set_yticks(ytick, ylab)
        ax.set_ylim(-0.7, n - 0.3)
        if key:
            ax.set_ylabel(key)
        families = list(dict.fromkeys(paired["family"].astype(str)))
        m = re.search(r", (holm|fdr_bh|bonferroni|none)\)$", families[0]) if families else None
        correction = m.group(1) if m else None
        metric = "/".join(dict.fromkeys(paired["metric"].astype(str)))
        ax.set_xlabel(
            f"Δ {metric} vs baseline"
            + (" (×100)" if scales == {100.0} else "")
            + f"\nthick: {interval_label(correction)}; thin: unadjusted 95% CI"
        )
        ax.set_title(f"{paired['task'].iloc[0]}: paired differences, sorted" if n else "")
        ax.grid(axis="x", alpha=0.3, linewidth=0.5)
        # Proxy artists: a legend that explains colour even when only one kind is present.
        ax.plot([], [], marker="o", linestyle="", color=SIG_COLOR, label=f"different (p_adj < {alpha:g})")
        ax.plot([], [], marker="o", linestyle="", color=EQUIV_COLOR, label="equivalent (TOST)")
        ax.plot([], [], marker="o", linestyle="", color=NONSIG_COLOR, markerfacecolor="white", label="inconclusive")
        ax.legend(
            frameon=False, loc="lower center", bbox_to_anchor=(0.5, 1.04), ncol=3, handletextpad=0.2, columnspacing=0.8
        )
    return fig


def _levels_of(cells: pd.DataFrame | None, name: str) -> str:
    """A cell's varying levels alone, also for a cell the cells table shows collapsed."""
    if cells is None:
        return name
    found = cell_levels(cells, name)
    if found is None:
        return name
    varying = [f for f in factor_columns(cells) if cells[f].astype(str).nunique() > 1]
    return " · ".join(found[f] for f in varying)


def delta_heatmap_figure(
    paired: pd.DataFrame,
    cells: pd.DataFrame,
    *,
    rows: Sequence[str] | None = None,
    cols: Sequence[str] | None = None,
    scale100: bool = True,
) -> Figure:
    """Heat map of Δ vs baseline for grids with many cells: the pivot table's layout (row factors ×
    task and column factors), colour = Δ on a scale centred on 0, '*' = different, '≈' = equivalent."""
    import matplotlib as mpl

    from kdgrid.report.pivot import choose_layout, ordered_levels

    layout = choose_layout(cells, rows, cols)
    short = short_names(cells)
    recs = []
    for r in paired.itertuples(index=False):
        found = cell_levels(cells, str(r.condition))
        if found is None:
            continue
        lv = dict(found)
        lv["task"] = str(r.task)
        mark = "*" if str(r.verdict) == "different" else "≈" if str(r.verdict) == "equivalent" else ""
        recs.append(
            {
                "row": " · ".join(lv[f] for f in layout.rows) or "all",
                "col": " ".join(lv[f] for f in layout.cols),
                "d": _f(r.mean_diff) * metric_scale(r.metric, scale100=scale100),
                "mark": mark,
            }
        )
    df = pd.DataFrame(recs)
    row_order = list(dict.fromkeys(df["row"]))
    col_order = list(dict.fromkeys(df["col"]))
    try:
        row_order = sorted(row_order, key=lambda k: [ordered_levels(list(df["row"])).index(k)])
    except ValueError:
        pass
    grid = df.pivot_table(index="row", columns="col", values="d", aggfunc="first").reindex(
        index=row_order, columns=col_order
    )
    marks = df.pivot_table(index="row", columns="col", values="mark", aggfunc="first").reindex(
        index=row_order, columns=col_order
    )
    data = grid.to_numpy(dtype=float)
    lim = float(np.nanmax(np.abs(data))) if np.isfinite(data).any() else 1.0
    with mpl.rc_context(_SMALL):
        fig = _figure(COLUMN_WIDTH_IN, 0.17 * len(row_order) + 1.3)
        ax = fig.add_subplot()
        im = ax.imshow(data, cmap="RdBu", vmin=-lim, vmax=lim, aspect="auto")
        for (i, j), v in np.ndenumerate(data):
            if math.isfinite(v):
                cell_mark = marks.iat[i, j]
                mk = cell_mark if isinstance(cell_mark, str) else ""
                rgba = im.cmap(im.norm(v))
                dark = 0.299 * rgba[0] + 0.587 * rgba[1] + 0.114 * rgba[2] < 0.5
                ax.text(
                    j, i, f"{v:.1f}{mk}", ha="center", va="center", fontsize=5.5, color="white" if dark else "black"
                )
        ax.set_xticks(
            range(len(col_order)),
            col_order,
            rotation=30 if len(col_order) > 4 else 0,
            ha="right" if len(col_order) > 4 else "center",
        )
        ax.set_yticks(range(len(row_order)), row_order)
        ax.set_ylabel(" · ".join(short[f] for f in layout.rows))
        ax.set_xlabel(" × ".join("task" if f == "task" else short[f] for f in layout.cols))
        fig.colorbar(im, ax=ax, label="Δ vs baseline" + (" ×100" if scale100 else ""), shrink=0.8)
        ax.set_title("Δ vs baseline (* different, ≈ equivalent)")
    return fig


def cd_figure(
    ranks: pd.DataFrame, nemenyi: pd.DataFrame, summary: Any, cells: pd.DataFrame | None = None, *, alpha: float = 0.05
) -> Figure:
    """Critical-difference diagram (Demšar 2006) drawn by ``scikit_posthocs.critical_difference_diagram``:
    conditions joined by a bar are not distinguishable by the Nemenyi test at ``alpha``."""
    import matplotlib as mpl
    import scikit_posthocs as sp

    name_of, key = level_namer(cells)
    names = [name_of(str(c)) for c in ranks["cell"]]
    rank = pd.Series(ranks["mean_rank"].to_numpy(dtype=float), index=names)
    sig = pd.DataFrame(1.0, index=names, columns=names)
    for r in nemenyi.itertuples(index=False):
        a, b = name_of(str(r.cell_a)), name_of(str(r.cell_b))
        sig.at[a, b] = sig.at[b, a] = float(cast(float, r.p))
    with mpl.rc_context(_SMALL):  # two paper columns wide: the labels need both sides
        fig = _figure(2 * COLUMN_WIDTH_IN, 0.16 * len(names) + 1.2)
        ax = fig.add_subplot()
        sp.critical_difference_diagram(rank, sig, ax=ax, alpha=alpha, label_props={"fontsize": 6.0})
    ax.set_title(
        f"Mean ranks over (task, seed) blocks; bars: no Nemenyi difference at α = {alpha:g} "
        f"(Friedman p = {float(summary.get('p', float('nan'))):.3g})" + (f"\nlabels: {key}" if key else ""),
        fontsize=7.0,
    )
    return fig


# --------------------------------------------------------------------------- sensitivity


def sensitivity_figure(
    sens: pd.DataFrame,
    cells: pd.DataFrame | None = None,
    *,
    value: SensitivityValue = "retention",
    scale100: bool = True,
) -> Figure:
    """Heatmap tasks × conditions of normalised retention (default) or of the teacher–student gap.

    Tasks are sorted by their mean over conditions, most affected on top, so the ranking
    the section reports reads straight off the plot.
    """
    labels, key = level_labels(cells)
    scales = {metric_scale(m, scale100=scale100) for m in sens["metric"]}
    df = sens.assign(
        _cond=[labels.get(str(c), str(c)) for c in sens["cell"]],
        _v=[
            _f(v) * (metric_scale(m, scale100=scale100) if value == "gap" else 1.0)
            for m, v in zip(sens["metric"], sens[value])
        ],
    )
    grid = df.pivot_table(index="task", columns="_cond", values="_v", aggfunc="mean", sort=False)
    grid = grid[[c for c in dict.fromkeys(df["_cond"]) if c in grid.columns]]
    ascending = value == "retention"  # low retention / high gap = most sensitive, on top
    grid = grid.loc[grid.mean(axis=1).sort_values(ascending=ascending).index]
    data = grid.to_numpy(dtype=float)

    import matplotlib as mpl

    what = (
        "retention (student − floor)/(teacher − floor)"
        if value == "retention"
        else "gap (teacher − student)" + (" ×100" if scales == {100.0} else "")
    )
    with mpl.rc_context(_SMALL):  # one paper column up to 8 conditions, else two
        width = COLUMN_WIDTH_IN if data.shape[1] <= 8 else 2 * COLUMN_WIDTH_IN
        fig = _figure(width, 0.28 * data.shape[0] + 1.6)
        ax = fig.add_subplot()
        cmap = "RdYlGn" if value == "retention" else "RdYlGn_r"
        im = ax.imshow(data, cmap=cmap, aspect="auto")
        _annotate(ax, im, data, "{:.2f}" if value == "retention" else "{:.1f}", fontsize=5.5)
        ax.set_xticks(range(data.shape[1]), [str(c) for c in grid.columns], rotation=30, ha="right")
        ax.set_yticks(range(data.shape[0]), [str(t) for t in grid.index])
        if key:
            ax.set_xlabel(key)
        fig.colorbar(im, ax=ax, label="retention" if value == "retention" else "gap", shrink=0.9)
        ax.set_title(f"Per-task sensitivity: {what}", fontsize=7.0)
    return fig


def _annotate(
    ax: Axes, im: AxesImage, data: np.ndarray, fmt: str, *, fontsize: Any = "small", lead_zero: bool = True
) -> None:
    """Write each heatmap value in its cell, white on dark colours and black on light ones
    (``lead_zero=False``: ".14" for weights in [0, 1], which fit narrow cells)."""
    if data.size == 0 or data.shape[0] > 16 or data.shape[1] > 16:
        return  # too crowded to read; the colour bar carries the values
    for (i, j), v in np.ndenumerate(data):
        if not math.isfinite(v):
            continue
        r, g, b, _ = im.cmap(im.norm(v))
        luminance = 0.299 * r + 0.587 * g + 0.114 * b
        text = fmt.format(v)
        if not lead_zero and text.startswith("0."):
            text = text[1:]
        ax.text(j, i, text, ha="center", va="center", fontsize=fontsize, color="white" if luminance < 0.5 else "black")


# --------------------------------------------------------------------------- mapping weights


def mapping_figure(weights: pd.DataFrame, task: str, cells: pd.DataFrame | None = None) -> Figure:
    """Learned layer-mapping weights for every cell of one task, one heatmap per cell (titled by
    its levels alone, the factors named in the figure title)."""
    import matplotlib as mpl

    labels, key = level_labels(cells)
    grids = mapping_weight_grids(weights, task)
    k = len(grids)
    ncols = min(2, k) if k <= 4 else min(4, k)  # one paper column up to 4 cells, else two
    nrows = math.ceil(k / ncols)
    shape = next(iter(grids.values())).shape
    width = COLUMN_WIDTH_IN if ncols <= 2 else 2 * COLUMN_WIDTH_IN
    bounded = bool(((weights["weight"] >= 0) & (weights["weight"] <= 1)).all())
    im = None
    with mpl.rc_context(_SMALL):
        fig = _figure(width, nrows * (0.22 * shape[0] + 0.9) + 0.5, constrained=True)
        axes = fig.subplots(nrows, ncols, squeeze=False, sharex=True, sharey=True)
        for ax, (cell, grid) in zip(axes.flat, grids.items()):
            data = grid.to_numpy(dtype=float)
            im = ax.imshow(
                data, cmap="viridis", vmin=0 if bounded else None, vmax=1 if bounded else None, aspect="auto"
            )
            if data.shape[1] <= 8:
                _annotate(ax, im, data, "{:.2f}", fontsize=5.5, lead_zero=not bounded)
            ax.set_xticks(range(data.shape[1]), [str(c) for c in grid.columns])
            ax.set_yticks(range(data.shape[0]), [str(i) for i in grid.index])
            ax.set_title(labels.get(cell, cell))
        for ax in axes[-1]:
            ax.set_xlabel("teacher layer")
        for ax in axes[:, 0]:
            ax.set_ylabel("student layer")
        for ax in list(axes.flat)[k:]:
            ax.set_axis_off()
        if im is not None:
            fig.colorbar(im, ax=axes, label="weight", shrink=0.8)
        fig.suptitle(
            f"{task}: learned mapping weights (last epoch, mean over seeds)" + (f"\npanels: {key}" if key else ""),
            fontsize=7.5,
        )
    return fig


# --------------------------------------------------------------------------- all report plots


HEATMAP_MIN_CONDITIONS = 8  # more compared conditions per task than this: add the Δ heat map


def build_figures(
    analysis: Analysis,
    *,
    scale100: bool = True,
    alpha: float = 0.05,
    sensitivity_value: SensitivityValue = "retention",
    rows: Sequence[str] | None = None,
    cols: Sequence[str] | None = None,
) -> list[Plot]:
    """Every plot the analysis supports, each tagged with the report section it belongs to.
    ``rows``/``cols``: the pivot layout, which the Δ heat map follows."""
    plots: list[Plot] = []
    cells = section_frame(analysis, "cells")
    sens = section_frame(analysis, "sensitivity")
    if cells is not None:
        scales = metric_scales(cells, scale100=scale100)
        pairs = list(scales)
        tasks_with_many = {t for t, _ in pairs if sum(1 for u, _ in pairs if u == t) > 1}
        for task, metric in pairs:
            teacher = floor = None
            if sens is not None:
                here = sens[sens["task"].astype(str) == task]
                tv = pd.to_numeric(here["teacher"], errors="coerce").dropna()
                if tv.nunique() == 1:
                    teacher = float(tv.iloc[0]) * scales[(task, metric)]
                fv = pd.to_numeric(here["floor"], errors="coerce").dropna() if "floor" in here else pd.Series([])
                if fv.nunique() == 1:
                    floor = float(fv.iloc[0]) * scales[(task, metric)]
            name = f"interaction_{slug(task)}" + (f"_{slug(metric)}" if task in tasks_with_many else "")
            fig = interaction_figure(cells, task, metric, scale=scales[(task, metric)], teacher=teacher, floor=floor)
            plots.append(
                Plot(
                    name,
                    "cells",
                    f"{task} ({metric}): cell means with 95% CI, a panel per level of the "
                    "other factors; dashed: teacher, dotted: majority class",
                    fig,
                )
            )
    paired = section_frame(analysis, "paired_tests")
    if paired is not None:
        for task, g in paired.groupby(paired["task"].astype(str), sort=False):
            plots.append(
                Plot(
                    f"forest_{slug(task)}",
                    "paired_tests",
                    f"{task}: paired differences vs baseline sorted by effect; simultaneous (thick) and "
                    "unadjusted 95% (thin) intervals, coloured by verdict",
                    forest_figure(g, cells, alpha=alpha, scale100=scale100),
                )
            )
        per_task = paired.groupby(paired["task"].astype(str)).size()
        if cells is not None and per_task.max() > HEATMAP_MIN_CONDITIONS:
            plots.append(
                Plot(
                    "delta_heatmap",
                    "paired_tests",
                    "Δ vs baseline in the pivot table's layout",
                    delta_heatmap_figure(paired, cells, rows=rows, cols=cols, scale100=scale100),
                )
            )
    ranks = section_frame(analysis, "ranks")
    nemenyi = section_frame(analysis, "nemenyi")
    friedman = getattr(analysis, "friedman", None)
    if ranks is not None and nemenyi is not None and friedman:
        plots.append(
            Plot(
                "critical_difference",
                "ranks",
                "Critical-difference diagram (Friedman, Nemenyi)",
                cd_figure(ranks, nemenyi, friedman, cells, alpha=alpha),
            )
        )
    if sens is not None and sens[sensitivity_value].notna().any():
        plots.append(
            Plot(
                f"sensitivity_{sensitivity_value}",
                "sensitivity",
                "Per-task sensitivity",
                sensitivity_figure(sens, cells, value=sensitivity_value, scale100=scale100),
            )
        )
    weights = section_frame(analysis, "mapping_weights")
    if weights is not None:
        for task in dict.fromkeys(weights["task"].astype(str)):
            plots.append(
                Plot(
                    f"mapping_{slug(task)}",
                    "mapping_weights",
                    f"{task}: learned mapping weights",
                    mapping_figure(weights, task, cells),
                )
            )
    return plots


def make_plots(
    analysis: Analysis,
    out_dir: Path,
    *,
    scale100: bool = True,
    alpha: float = 0.05,
    sensitivity_value: SensitivityValue = "retention",
    formats: Sequence[str] = FORMATS,
) -> list[Path]:
    """Build every report plot and save it under ``out_dir/plots/`` as PNG and SVG.

    Returns the written paths (empty when the analysis supports no plot).
    """
    return [
        path
        for plot in build_figures(analysis, scale100=scale100, alpha=alpha, sensitivity_value=sensitivity_value)
        for path in save_figure(plot.figure, Path(out_dir) / "plots", plot.name, formats)
    ]


# --------------------------------------------------------------------------- search


def _state(x: Any) -> str:
    # Accept "COMPLETE", "TrialState.COMPLETE" or the enum itself.
    return str(getattr(x, "name", x)).rsplit(".", 1)[-1].upper()


def _search_frame(history_df: pd.DataFrame, params_df: pd.DataFrame | None) -> tuple[pd.DataFrame, list[str]]:
    """One frame: number, value, state and one column per parameter (``params_`` prefix
    of ``optuna``'s ``trials_dataframe()`` stripped)."""
    hist = history_df.copy()
    if "state" not in hist:
        hist["state"] = "COMPLETE"
    hist["state"] = [_state(s) for s in hist["state"]]
    hist = hist.rename(columns={c: c[len("params_") :] for c in hist.columns if c.startswith("params_")})
    if params_df is not None:
        p = params_df.rename(columns={c: c[len("params_") :] for c in params_df.columns if c.startswith("params_")})
        p = p.drop(columns=[c for c in ("value", "state") if c in p.columns and c in hist.columns])
        dup = [c for c in p.columns if c in hist.columns and c != "number"]
        hist = hist.drop(columns=dup).merge(p, on="number", how="left")
    fixed = {
        "number",
        "value",
        "state",
        "datetime_start",
        "datetime_complete",
        "duration",
        "run_id",
        "user_attrs",
        "system_attrs",
    }
    params = [c for c in hist.columns if c not in fixed and not c.startswith(("user_attrs_", "system_attrs_"))]
    return hist.sort_values("number", kind="stable"), params


def history_figure(trials: pd.DataFrame, *, direction: Literal["maximize", "minimize"] = "maximize") -> Figure:
    """Objective value per completed trial, with the best value so far as a step line."""
    done = trials[(trials["state"] == "COMPLETE") & pd.to_numeric(trials["value"], errors="coerce").notna()]
    x = done["number"].to_numpy(dtype=float)
    y = pd.to_numeric(done["value"]).to_numpy(dtype=float)
    best = np.maximum.accumulate(y) if direction == "maximize" else np.minimum.accumulate(y)
    fig = _figure(6.5, 3.6)
    ax = fig.add_subplot()
    ax.scatter(x, y, s=18, color="C0", label="trial value", zorder=3)
    ax.step(x, best, where="post", color="C3", linewidth=1.8, label="best so far")
    others = trials.loc[trials["state"] != "COMPLETE", "state"].value_counts()
    words = {"FAIL": "failed", "PRUNED": "pruned", "RUNNING": "running", "WAITING": "waiting"}
    extra = ", ".join(f"{n} {words.get(str(s), str(s).lower())}" for s, n in others.items())
    ax.set_title("Optimisation history" + (f" ({extra} not shown)" if extra else ""))
    ax.set_xlabel("trial")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # trial numbers are whole
    ax.set_ylabel("objective value")
    ax.grid(alpha=0.3)
    ax.legend(frameon=False, fontsize="small")
    return fig


def importance_figure(importances: Mapping[str, float]) -> Figure:
    """Horizontal bars of parameter importances, largest on top."""
    items = sorted(((str(k), float(v)) for k, v in importances.items()), key=lambda kv: kv[1])
    fig = _figure(5.5, 0.4 * len(items) + 1.4)
    ax = fig.add_subplot()
    ax.barh([k for k, _ in items], [v for _, v in items], color="C0")
    for i, (_, v) in enumerate(items):
        ax.text(v, i, f" {v:.2f}", va="center", fontsize="small")
    ax.set_xlabel("importance")
    ax.set_title("Hyperparameter importances")
    ax.set_xlim(0, max([v for _, v in items] + [0.0]) * 1.15 or 1.0)
    return fig


def slice_figure(trials: pd.DataFrame, params: Sequence[str]) -> Figure:
    """Objective value against each chosen parameter (one panel each), coloured by trial
    number so the sampler's drift toward a region is visible."""
    done = trials[(trials["state"] == "COMPLETE") & pd.to_numeric(trials["value"], errors="coerce").notna()]
    k = len(params)
    fig = _figure(3.4 * k + 1.0, 3.4)
    axes = fig.subplots(1, k, squeeze=False, sharey=True)[0]
    sc = None
    for ax, name in zip(axes, params):
        col = done[name]
        y = pd.to_numeric(done["value"]).to_numpy(dtype=float)
        num = pd.to_numeric(col, errors="coerce")
        if num.notna().all() and len(num):
            x = num.to_numpy(dtype=float)
            if (x > 0).all() and x.max() / x.min() >= 100:
                ax.set_xscale("log")  # learning rates and the like are sampled on a log scale
        else:
            levels = list(dict.fromkeys(_level(v) for v in col))
            x = np.array([levels.index(_level(v)) for v in col], dtype=float)
            ax.set_xticks(range(len(levels)), levels)
            ax.set_xlim(-0.5, len(levels) - 0.5)
        sc = ax.scatter(x, y, c=done["number"].to_numpy(dtype=float), cmap="viridis", s=20)
        ax.set_xlabel(name)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("objective value")
    if sc is not None:
        fig.colorbar(sc, ax=list(axes), label="trial")
    fig.suptitle("Slice plots")
    return fig


def search_plots(
    history_df: pd.DataFrame,
    importances: Mapping[str, float] | None,
    params_df: pd.DataFrame | None = None,
    *,
    out_dir: Path,
    params: Sequence[str] | None = None,
    direction: Literal["maximize", "minimize"] = "maximize",
    formats: Sequence[str] = FORMATS,
) -> list[Path]:
    """Plots of an Optuna search from plain DataFrames (no optuna import needed).

    ``history_df`` has ``number``, ``value`` and ``state`` (``COMPLETE``, ``PRUNED``,
    ``FAIL``; ``TrialState`` values work too); parameter columns may be in it (as
    ``params_<name>``, as ``study.trials_dataframe()`` writes them) or in ``params_df``
    (``number`` plus one column per parameter). ``params`` picks the slice-plot
    parameters (e.g. ``["alpha", "temperature"]``); by default the four most important,
    or all when no importances are given. Writes ``search_history``,
    ``search_importances`` and ``search_slices`` under ``out_dir/plots/`` and returns
    the paths; plots without data are skipped.
    """
    trials, all_params = _search_frame(history_df, params_df)
    plot_dir = Path(out_dir) / "plots"
    paths: list[Path] = []
    complete = trials[(trials["state"] == "COMPLETE") & pd.to_numeric(trials["value"], errors="coerce").notna()]
    if not complete.empty:
        paths += save_figure(history_figure(trials, direction=direction), plot_dir, "search_history", formats)
    if importances:
        paths += save_figure(importance_figure(importances), plot_dir, "search_importances", formats)
    if params is None:
        ranked = [p for p in sorted(importances or {}, key=lambda p: -float((importances or {})[p])) if p in all_params]
        params = ranked[:4] if ranked else all_params
    missing = [p for p in params if p not in trials.columns]
    if missing:
        # A user names these (e.g. on the command line): a KdgridError, one clean line.
        raise KdgridError(
            f"no search parameter(s) {', '.join(map(str, missing))}; allowed: {', '.join(all_params) or 'none'}"
        )
    if params and not complete.empty:
        paths += save_figure(slice_figure(trials, list(params)), plot_dir, "search_slices", formats)
    return paths
