"""Render analysis results as the tables and plots a paper needs.

``render(analysis, fmt=..., out_dir=..., title=..., meta=...)`` writes a terminal
table, Markdown, CSV, LaTeX, self-contained HTML or JSON (``render_many`` several of
them, drawing the plots once); ``make_plots`` and
``search_plots`` write PNG and SVG figures. ``analysis`` is any object with the
attributes of ``kdgrid.analyze.Analysis`` (docs/CONTRACTS.md): this package reads the
attributes and never imports the producer, torch or transformers.
"""

from __future__ import annotations

from typing import Any

from kdgrid.report.render import (
    FORMATS,
    JSON_ANOVA_KEYS,
    JSON_PAIRED_KEYS,
    REPORT_FILES,
    analysis_json,
    read_section_csv,
    render,
    render_many,
    rich_report,
)
from kdgrid.report.tables import (
    condition_labels,
    fmt_mean_sd,
    fmt_metric,
    fmt_p,
    paper_table,
)

__all__ = [
    "FORMATS",
    "JSON_ANOVA_KEYS",
    "JSON_PAIRED_KEYS",
    "REPORT_FILES",
    "analysis_json",
    "build_figures",
    "condition_labels",
    "fmt_mean_sd",
    "fmt_metric",
    "fmt_p",
    "make_plots",
    "paper_table",
    "read_section_csv",
    "render",
    "render_many",
    "rich_report",
    "search_plots",
]


_PLOTS = ("build_figures", "make_plots", "search_plots")


def __getattr__(name: str) -> Any:
    # matplotlib costs about a second to import: only the commands that draw pay for it.
    if name in _PLOTS:
        from kdgrid.report import plots

        return getattr(plots, name)
    raise AttributeError(f"module 'kdgrid.report' has no attribute {name!r}")
