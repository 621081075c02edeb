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
from typing import Any, Literal

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.image import AxesImage
from matplotlib.ticker import MaxNLocator

from kdgrid.errors import KdgridError
from kdgrid.report.tables import (
    condition_labels,
    factor_columns,
    mapping_weight_grids,
    interval_label,
    metric_scale,
    metric_scales,
    section_frame,
    short_name,
    slug,
)

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


def interaction_figure(
    cells: pd.DataFrame, task: str, metric: str, *, scale: float = 1.0, teacher: float | None = None
) -> Figure:
    """Interaction plot for one task: x = levels of the first factor, one line per level of
    the second (or per combination of the remaining factors), mean with its 95% CI.

    Lines are dodged sideways a little so overlapping error bars stay readable. With no
    factor columns the cells themselves are the x axis. ``teacher`` (same units as the
    cells) adds a dashed reference line.
    """
    sub = cells[(cells["task"].astype(str) == task) & (cells["metric"].astype(str) == metric)]
    factors = factor_columns(cells)
    labels = condition_labels(cells)
    if factors:
        x_name, rest = factors[0], factors[1:]
        x_levels = _ordered_levels(sub[x_name])
        x_of = [_level(v) for v in sub[x_name]]
    else:
        x_name, rest = "condition", []
        x_levels = [labels[c] for c in dict.fromkeys(sub["cell"].astype(str))]
        x_of = [labels[str(c)] for c in sub["cell"]]
    line_keys = [tuple(_level(r[f]) for f in rest) for _, r in sub.iterrows()]
    lines = list(dict.fromkeys(line_keys))
    if len(rest) == 1:
        order = _ordered_levels(k[0] for k in lines)
        lines = sorted(lines, key=lambda k: order.index(k[0]))

    fig = _figure(max(4.0, 1.2 * len(x_levels) + 2.5), 3.6)
    ax = fig.add_subplot()
    width = 0.25 if len(lines) > 1 else 0.0
    for i, key in enumerate(lines):
        offset = (i - (len(lines) - 1) / 2) * width / max(1, len(lines) - 1)
        pts = sorted(
            (x_levels.index(x), _f(r["mean"]) * scale, _f(r["ci_low"]) * scale, _f(r["ci_high"]) * scale)
            for x, k, (_, r) in zip(x_of, line_keys, sub.iterrows())
            if k == key
        )
        xs = np.array([p[0] for p in pts], dtype=float) + offset
        ys = np.array([p[1] for p in pts])
        lo = np.array([p[2] for p in pts])
        hi = np.array([p[3] for p in pts])
        # NaN CI (one seed) -> no bar, rather than a bar of NaN length that hides the point.
        yerr = np.vstack([np.nan_to_num(ys - lo), np.nan_to_num(hi - ys)])
        if len(rest) > 1:
            label: str | None = ", ".join(f"{short_name(f)}={v}" for f, v in zip(rest, key))
        else:
            label = key[0] if key else None
        ax.errorbar(xs, ys, yerr=yerr, marker="o", capsize=3, linewidth=1.5, label=label, color=f"C{i % 10}")
    if teacher is not None and math.isfinite(teacher):
        ax.axhline(teacher, color="0.35", linestyle="--", linewidth=1, label="teacher")
    ax.set_xticks(range(len(x_levels)), x_levels, rotation=20 if max(map(len, x_levels)) > 12 else 0)
    ax.set_xlabel(short_name(x_name))
    ax.set_ylabel(f"{metric}{' (×100)' if scale == 100.0 else ''}")
    ax.set_title(f"{task}: mean and 95% CI over seeds")
    ax.grid(axis="y", alpha=0.3)
    if len(lines) > 1 or teacher is not None:
        ax.legend(title=short_name(rest[0]) if len(rest) == 1 else None, fontsize="small", frameon=False,
                  loc="center left", bbox_to_anchor=(1.0, 0.5))
    return fig


# --------------------------------------------------------------------------- forest


def forest_figure(
    paired: pd.DataFrame, cells: pd.DataFrame | None = None, *, alpha: float = 0.05, scale100: bool = True
) -> Figure:
    """Forest plot of paired differences vs the baseline, one row per (task, condition).

    Thick bar: the simultaneous interval of the comparison's family (consistent with p_adj);
    thin bar: the unadjusted 95% interval. Colour: the verdict (different, equivalent within
    ±margin, inconclusive). Without a correction both intervals are the unadjusted one.
    """
    labels = condition_labels(cells)
    n = len(paired)
    fig = _figure(7.0, 0.32 * n + 1.6)
    ax = fig.add_subplot()
    ytick, ylab = [], []
    prev_task = None
    colors = {"different": SIG_COLOR, "equivalent": EQUIV_COLOR}
    scales = set()
    for i, r in enumerate(paired.itertuples(index=False)):
        y = n - 1 - i
        s = metric_scale(r.metric, scale100=scale100)
        scales.add(s)
        d, lo, hi = _f(r.mean_diff) * s, _f(r.ci_low) * s, _f(r.ci_high) * s
        slo, shi = _f(r.sci_low) * s, _f(r.sci_high) * s
        verdict = str(r.verdict)
        color = colors.get(verdict, NONSIG_COLOR)
        if math.isfinite(lo) and math.isfinite(hi):
            ax.plot([lo, hi], [y, y], color=color, linewidth=0.9)
        if math.isfinite(slo) and math.isfinite(shi):
            ax.plot([slo, shi], [y, y], color=color, linewidth=2.6, alpha=0.55)
        filled = verdict in colors
        ax.plot([d], [y], marker="o", markersize=6, color=color, markerfacecolor=color if filled else "white")
        if bool(getattr(r, "baseline_at_floor", False)):
            ax.annotate("floor", (d, y), xytext=(6, 3), textcoords="offset points", fontsize="x-small", color="0.3")
        if prev_task is not None and str(r.task) != prev_task:
            ax.axhline(y + 0.5, color="0.85", linewidth=0.8)  # separate task groups
        prev_task = str(r.task)
        ytick.append(y)
        ylab.append(f"{r.task} · {labels.get(str(r.condition), str(r.condition))}")
    ax.axvline(0.0, color="black", linestyle="--", linewidth=0.9)
    ax.set_yticks(ytick, ylab, fontsize="small")
    ax.set_ylim(-0.7, n - 0.3)
    ax.set_xlabel("difference vs baseline" + (" (×100)" if scales == {100.0} else ""))
    families = list(dict.fromkeys(paired["family"].astype(str)))
    m = re.search(r", (holm|fdr_bh|bonferroni|none)\)$", families[0]) if families else None
    correction = m.group(1) if m else None
    ax.set_title("Paired differences: thick = " + interval_label(correction) + ", thin = unadjusted 95% CI\n"
                 "families corrected together: " + "; ".join(families), fontsize="x-small", wrap=True)
    ax.grid(axis="x", alpha=0.3)
    # Proxy artists: a legend that explains colour even when only one kind is present.
    ax.plot([], [], marker="o", color=SIG_COLOR, label=f"different (p_adj < {alpha:g})")
    ax.plot([], [], marker="o", color=EQUIV_COLOR, label="equivalent (TOST)")
    ax.plot([], [], marker="o", color=NONSIG_COLOR, markerfacecolor="white", label="inconclusive")
    ax.legend(fontsize="small", frameon=False, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return fig


def cd_figure(ranks: pd.DataFrame, nemenyi: pd.DataFrame, summary: Any, cells: pd.DataFrame | None = None,
              *, alpha: float = 0.05) -> Figure:
    """Critical-difference diagram (Demšar 2006) drawn by ``scikit_posthocs.critical_difference_diagram``:
    conditions joined by a bar are not distinguishable by the Nemenyi test at ``alpha``."""
    import scikit_posthocs as sp

    labels = condition_labels(cells)
    names = [labels.get(str(c), str(c)) for c in ranks["cell"]]
    rank = pd.Series(ranks["mean_rank"].to_numpy(dtype=float), index=names)
    sig = pd.DataFrame(1.0, index=names, columns=names)
    for r in nemenyi.itertuples(index=False):
        a, b = labels.get(str(r.cell_a), str(r.cell_a)), labels.get(str(r.cell_b), str(r.cell_b))
        sig.loc[a, b] = sig.loc[b, a] = float(r.p)
    fig = _figure(8.0, 0.28 * len(names) + 1.6)
    ax = fig.add_subplot()
    sp.critical_difference_diagram(rank, sig, ax=ax, alpha=alpha, label_props={"fontsize": "x-small"})
    ax.set_title(f"Mean ranks over (task, seed) blocks; bars: no Nemenyi difference at α = {alpha:g} "
                 f"(Friedman p = {float(summary.get('p', float('nan'))):.3g})", fontsize="small")
    return fig


# --------------------------------------------------------------------------- sensitivity


def sensitivity_figure(
    sens: pd.DataFrame, cells: pd.DataFrame | None = None, *, value: SensitivityValue = "retention",
    scale100: bool = True,
) -> Figure:
    """Heatmap tasks × conditions of normalised retention (default) or of the teacher–student gap.

    Tasks are sorted by their mean over conditions, most affected on top, so the ranking
    the section reports reads straight off the plot.
    """
    labels = condition_labels(cells)
    scales = {metric_scale(m, scale100=scale100) for m in sens["metric"]}
    df = sens.assign(
        _cond=[labels.get(str(c), str(c)) for c in sens["cell"]],
        _v=[_f(v) * (metric_scale(m, scale100=scale100) if value == "gap" else 1.0)
            for m, v in zip(sens["metric"], sens[value])],
    )
    grid = df.pivot_table(index="task", columns="_cond", values="_v", aggfunc="mean", sort=False)
    grid = grid[[c for c in dict.fromkeys(df["_cond"]) if c in grid.columns]]
    ascending = value == "retention"  # low retention / high gap = most sensitive, on top
    grid = grid.loc[grid.mean(axis=1).sort_values(ascending=ascending).index]
    data = grid.to_numpy(dtype=float)

    fig = _figure(max(4.5, 1.1 * data.shape[1] + 2.5), max(2.5, 0.5 * data.shape[0] + 1.8))
    ax = fig.add_subplot()
    cmap = "RdYlGn" if value == "retention" else "RdYlGn_r"
    im = ax.imshow(data, cmap=cmap, aspect="auto")
    _annotate(ax, im, data, "{:.2f}" if value == "retention" else "{:.1f}")
    ax.set_xticks(range(data.shape[1]), [str(c) for c in grid.columns], rotation=30, ha="right", fontsize="small")
    ax.set_yticks(range(data.shape[0]), [str(t) for t in grid.index])
    what = "retention (student − floor)/(teacher − floor)" if value == "retention" else "gap (teacher − student)" + (
        " ×100" if scales == {100.0} else "")
    fig.colorbar(im, ax=ax, label=what)
    ax.set_title(f"Per-task sensitivity: {what}")
    return fig


def _annotate(ax: Axes, im: AxesImage, data: np.ndarray, fmt: str) -> None:
    """Write each heatmap value in its cell, white on dark colours and black on light ones."""
    if data.size == 0 or data.shape[0] > 16 or data.shape[1] > 16:
        return  # too crowded to read; the colour bar carries the values
    for (i, j), v in np.ndenumerate(data):
        if not math.isfinite(v):
            continue
        r, g, b, _ = im.cmap(im.norm(v))
        luminance = 0.299 * r + 0.587 * g + 0.114 * b
        ax.text(j, i, fmt.format(v), ha="center", va="center", fontsize="small",
                color="white" if luminance < 0.5 else "black")


# --------------------------------------------------------------------------- mapping weights


def mapping_figure(weights: pd.DataFrame, task: str, cells: pd.DataFrame | None = None) -> Figure:
    """Learned layer-mapping weights for every cell of one task, one heatmap per cell."""
    labels = condition_labels(cells)
    grids = mapping_weight_grids(weights, task)
    k = len(grids)
    ncols = min(3, k)
    nrows = math.ceil(k / ncols)
    shape = next(iter(grids.values())).shape
    fig = _figure(ncols * max(3.2, 0.45 * shape[1] + 1.8), nrows * max(2.6, 0.45 * shape[0] + 1.4), constrained=True)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    bounded = bool(((weights["weight"] >= 0) & (weights["weight"] <= 1)).all())
    im = None
    for ax, (cell, grid) in zip(axes.flat, grids.items()):
        data = grid.to_numpy(dtype=float)
        im = ax.imshow(data, cmap="viridis", vmin=0 if bounded else None, vmax=1 if bounded else None, aspect="auto")
        _annotate(ax, im, data, "{:.2f}")
        ax.set_xticks(range(data.shape[1]), [str(c) for c in grid.columns], fontsize="small")
        ax.set_yticks(range(data.shape[0]), [str(i) for i in grid.index], fontsize="small")
        ax.set_xlabel("teacher layer")
        ax.set_ylabel("student layer")
        ax.set_title(labels.get(cell, cell), fontsize="small")
    for ax in list(axes.flat)[k:]:
        ax.set_axis_off()
    if im is not None:
        fig.colorbar(im, ax=axes, label="weight", shrink=0.8)
    fig.suptitle(f"{task}: learned mapping weights (last epoch, mean over seeds)")
    return fig


# --------------------------------------------------------------------------- all report plots


def build_figures(
    analysis: Any, *, scale100: bool = True, alpha: float = 0.05, sensitivity_value: SensitivityValue = "retention"
) -> list[Plot]:
    """Every plot the analysis supports, each tagged with the report section it belongs to."""
    plots: list[Plot] = []
    cells = section_frame(analysis, "cells")
    sens = section_frame(analysis, "sensitivity")
    if cells is not None:
        scales = metric_scales(cells, scale100=scale100)
        pairs = list(scales)
        tasks_with_many = {t for t, _ in pairs if sum(1 for u, _ in pairs if u == t) > 1}
        for task, metric in pairs:
            teacher = None
            if sens is not None:
                tv = pd.to_numeric(sens.loc[sens["task"].astype(str) == task, "teacher"], errors="coerce").dropna()
                if tv.nunique() == 1:
                    teacher = float(tv.iloc[0]) * scales[(task, metric)]
            name = f"interaction_{slug(task)}" + (f"_{slug(metric)}" if task in tasks_with_many else "")
            fig = interaction_figure(cells, task, metric, scale=scales[(task, metric)], teacher=teacher)
            plots.append(Plot(name, "cells", f"{task} ({metric}): cell means with 95% CI", fig))
    paired = section_frame(analysis, "paired_tests")
    if paired is not None:
        plots.append(Plot("forest", "paired_tests",
                          "Paired differences vs baseline: simultaneous (thick) and unadjusted 95% (thin) intervals, "
                          "coloured by verdict",
                          forest_figure(paired, cells, alpha=alpha, scale100=scale100)))
    ranks = section_frame(analysis, "ranks")
    nemenyi = section_frame(analysis, "nemenyi")
    friedman = getattr(analysis, "friedman", None)
    if ranks is not None and nemenyi is not None and friedman:
        plots.append(Plot("critical_difference", "ranks", "Critical-difference diagram (Friedman, Nemenyi)",
                          cd_figure(ranks, nemenyi, friedman, cells, alpha=alpha)))
    if sens is not None and sens[sensitivity_value].notna().any():
        plots.append(Plot(f"sensitivity_{sensitivity_value}", "sensitivity", "Per-task sensitivity",
                          sensitivity_figure(sens, cells, value=sensitivity_value, scale100=scale100)))
    weights = section_frame(analysis, "mapping_weights")
    if weights is not None:
        for task in dict.fromkeys(weights["task"].astype(str)):
            plots.append(Plot(f"mapping_{slug(task)}", "mapping_weights", f"{task}: learned mapping weights",
                              mapping_figure(weights, task, cells)))
    return plots


def make_plots(
    analysis: Any,
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
    hist = hist.rename(columns={c: c[len("params_"):] for c in hist.columns if c.startswith("params_")})
    if params_df is not None:
        p = params_df.rename(columns={c: c[len("params_"):] for c in params_df.columns if c.startswith("params_")})
        p = p.drop(columns=[c for c in ("value", "state") if c in p.columns and c in hist.columns])
        dup = [c for c in p.columns if c in hist.columns and c != "number"]
        hist = hist.drop(columns=dup).merge(p, on="number", how="left")
    fixed = {"number", "value", "state", "datetime_start", "datetime_complete", "duration", "run_id",
             "user_attrs", "system_attrs"}
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
        raise KdgridError(f"no search parameter(s) {', '.join(map(str, missing))}; "
                          f"allowed: {', '.join(all_params) or 'none'}")
    if params and not complete.empty:
        paths += save_figure(slice_figure(trials, list(params)), plot_dir, "search_slices", formats)
    return paths
