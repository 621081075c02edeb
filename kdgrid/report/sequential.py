"""The report section of a sequential study: each comparison's decision, looks, boundaries and seeds.

Built from the rows of :func:`kdgrid.sequential.states_frame` (a DataFrame, so ``report`` does not
import the layer above it) and the design in words; rendered with the report's own table helpers.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from kdgrid.report.render import markdown_table
from kdgrid.report.tables import MISSING, DisplayTable, Section, fmt_g, fmt_p

_VERDICT_TEXT = {
    "different": "different",
    "equivalent": "equivalent",
    "inconclusive": "inconclusive at max",
    "undecided": "running",
}


def _looks_table(looks: pd.DataFrame) -> DisplayTable:
    rows = [
        {
            "task": r["task"],
            "condition": r["condition"],
            "look": str(r["look"]),
            "n": str(r["n"]),
            "info": fmt_g(r["info"], 3),
            "mean diff": fmt_g(r["mean_diff"]),
            "t": fmt_g(r["t"], 3),
            "p": fmt_p(r["p"]),
            "p boundary": fmt_g(r["p_bound"], 3),
            "TOST p": fmt_p(r["p_equiv"]),
            "TOST boundary": fmt_g(r["p_equiv_bound"], 3),
            "decision": _VERDICT_TEXT.get(r["decision"], r["decision"]).replace("running", "go on"),
        }
        for r in looks.to_dict("records")
    ]
    return DisplayTable(
        "sequential_looks",
        "Every look taken: pairs, information fraction, statistics and the boundaries it was held to",
        pd.DataFrame(rows),
        left=("task", "condition", "decision"),
    )


def sequential_section(states: pd.DataFrame, design: Sequence[str], looks: pd.DataFrame | None = None) -> Section:
    """One row per comparison; the notes state the design (spending, looks, α split, detectable effects)."""
    if states.empty:
        return Section("sequential", "Sequential design", notes=tuple(design), empty_note="no comparison")
    rows = []
    for r in states.to_dict("records"):
        ci = MISSING if pd.isna(r["ci_low"]) else f"[{fmt_g(r['ci_low'])}, {fmt_g(r['ci_high'])}]"
        rows.append(
            {
                "task": r["task"],
                "condition": r["condition"],
                "baseline": r["baseline"],
                "verdict": _VERDICT_TEXT.get(r["verdict"], r["verdict"]),
                "looks": str(r["looks"]),
                "seeds": str(r["seeds"]),
                "mean diff": fmt_g(r["mean_diff"]),
                "repeated CI": ci,
                "margin": fmt_g(r["margin"]),
                "p": fmt_p(r["p"]),
                "p boundary": fmt_g(r["p_bound"], 3),
                "z boundary": fmt_g(r["z_bound"], 4),
                "TOST p": fmt_p(r["p_equiv"]),
                "TOST boundary": fmt_g(r["p_equiv_bound"], 3),
                "reason": r["reason"],
            }
        )
    frame = pd.DataFrame(rows)
    table = DisplayTable(
        "sequential",
        "Sequential comparisons (last look taken): verdict, looks, seeds per cell, "
        "the look's boundaries as nominal levels for the paired t test (p) and TOST",
        frame,
        left=("task", "condition", "baseline", "verdict", "reason"),
        emphasis=tuple(v in ("different", "equivalent") for v in states["verdict"]),
    )
    tables = (table,) if looks is None or looks.empty else (table, _looks_table(looks))
    return Section("sequential", "Sequential design", tables=tables, notes=tuple(design))


def sequential_markdown(section: Section) -> str:
    out = [f"## {section.title}", ""]
    out += [f"{n}" for n in section.notes] + [""]
    for t in section.tables:
        out += [f"*{t.caption}*", "", markdown_table(t), ""]
    if section.empty_note:
        out += [section.empty_note, ""]
    return "\n".join(out)
