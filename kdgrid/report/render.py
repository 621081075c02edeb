"""Render an ``Analysis`` as a terminal table, Markdown, CSV, LaTeX, HTML or JSON.

One entry point, :func:`render`. The display formats (table, md, latex, html) share
the section structure built in :mod:`kdgrid.report.tables`, so they always show the
same numbers with the same rounding; CSV and JSON write the unrounded numbers for
machines. ``analysis`` is any object with the attributes listed in docs/CONTRACTS.md
(duck typing), so the report does not depend on the producer's class.

Files written under ``out_dir`` (when given), per format:

- table: ``report.txt``
- md:    ``report.md``
- csv:   ``cells.csv``, ``paired_tests.csv``, ``anova.csv``, ``sensitivity.csv``,
  ``power.csv``, ``diagnostics.csv`` (header only when empty), ``warnings.txt``,
  ``mapping_weights.csv`` and ``mapping_convergence.csv`` when the analysis has mapping weights and
  ``efficiency.csv`` when it has efficiency measures, ``layers.csv`` when the runs recorded their layers
- latex: ``report.tex`` (a complete document; booktabs tables)
- html:  ``report.html`` (self-contained: CSS inline, plots as base64 PNG)
- json:  ``report.json``

and, with ``plots=True`` (the default), the plots as PNG and SVG under ``out_dir/plots/``
for every format; Markdown and LaTeX reference them, HTML embeds them (base64 PNG,
also without ``out_dir``).

A report made from the store also gets a Reproducibility section (``reproducibility=``,
built in :mod:`kdgrid.report.reproducibility`): in full in Markdown, HTML and JSON, short
in the terminal table and LaTeX.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

import numpy as np
import pandas as pd
from rich import box
from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.rule import Rule
from rich.table import Table
from rich.text import Text

from kdgrid.errors import KdgridError
from kdgrid.report.reproducibility import reproducibility_json, reproducibility_section
from kdgrid.report.tables import (
    MISSING,
    PAIRED_COLUMNS,
    SECTION_COLUMNS,
    CodeBlock,
    DisplayTable,
    Section,
    build_sections,
    convergence_frame,
    section_frame,
)
from kdgrid.tasks import display_scale

if TYPE_CHECKING:
    from kdgrid.analyze.core import Analysis
    from kdgrid.store.queries import Reproducibility

Format = Literal["table", "md", "csv", "latex", "html", "json"]
FORMATS: tuple[str, ...] = get_args(Format)
REPORT_FILES: dict[str, str] = {
    "table": "report.txt",
    "md": "report.md",
    "latex": "report.tex",
    "html": "report.html",
    "json": "report.json",
}
CSV_SECTIONS: tuple[str, ...] = ("cells", "paired_tests", "anova", "sensitivity", "power", "diagnostics")
#: Keys of each ``paired_tests`` / ``anova`` record in the JSON report (a stable schema).
JSON_PAIRED_KEYS: tuple[str, ...] = tuple(c for c in PAIRED_COLUMNS if c != "note")
JSON_ANOVA_KEYS: tuple[str, ...] = SECTION_COLUMNS["anova"]
_LIST_COLUMNS = {"seeds", "values", "stands_for"}  # list-valued cells columns, JSON-encoded inside CSV
_BOOL_COLUMNS = {"baseline_at_floor"}
_STRING_COLUMNS = {
    "task",
    "metric",
    "cell",
    "condition",
    "baseline",
    "term",
    "check",
    "note",
    "test",
    "family",
    "verdict",
    "tasks",
    "same_as",
    "cell_a",
    "cell_b",
}


def render(
    analysis: Analysis,
    *,
    fmt: str,
    out_dir: Path | None = None,
    title: str = "kdgrid report",
    meta: Mapping[str, Any] | None = None,
    scale100: bool = True,
    alpha: float = 0.05,
    plots: bool = True,
    width: int = 120,
    reproducibility: Reproducibility | None = None,
    rows: Sequence[str] | None = None,
    cols: Sequence[str] | None = None,
    question: str = "",
) -> str:
    """Render ``analysis`` in format ``fmt`` and return the text.

    ``fmt`` is one of table, md, csv, latex, html, json. When ``out_dir`` is given the
    format's files are written there (see the module docstring) together with the plots
    (``plots=True``; ``plots=False`` also leaves the images out of the HTML page).
    ``meta`` (study name, metric, baseline, correction, ...) is shown at the top and
    stored under ``meta`` in JSON. ``scale100`` shows metrics in [−1, 1] ×100 (captions
    say so); ``alpha`` marks adjusted-significant rows. ``width`` is the line width of the
    ``table`` text (the CLI can print :func:`rich_report` instead, which adapts to the
    terminal). Empty sections get a one-line note instead of a table. ``reproducibility`` (read
    from the store) adds the Reproducibility section: in full in Markdown, HTML and JSON, short
    (facts and commands) in the terminal table and LaTeX. ``rows``/``cols`` lay out the pivot
    tables (:func:`kdgrid.report.pivot.choose_layout`); ``question`` (the study's description)
    opens the Summary.
    """
    return render_many(
        analysis,
        fmts=[fmt],
        out_dir=out_dir,
        title=title,
        meta=meta,
        scale100=scale100,
        alpha=alpha,
        plots=plots,
        width=width,
        reproducibility=reproducibility,
        rows=rows,
        cols=cols,
        question=question,
    )[fmt]


def render_many(
    analysis: Analysis,
    *,
    fmts: Sequence[str],
    out_dir: Path | None = None,
    title: str = "kdgrid report",
    meta: Mapping[str, Any] | None = None,
    scale100: bool = True,
    alpha: float = 0.05,
    plots: bool = True,
    width: int = 120,
    reproducibility: Reproducibility | None = None,
    rows: Sequence[str] | None = None,
    cols: Sequence[str] | None = None,
    question: str = "",
    brief: bool = False,
) -> dict[str, str]:
    """:func:`render` for several formats at once (``kdgrid report --format md,html``),
    building and saving the plots only once: drawing figures is the slow part of a report.
    ``brief`` shortens the ``table`` text to the summary and the decisive comparisons."""
    bad = [f for f in fmts if f not in FORMATS]
    if bad:
        raise KdgridError(f"unknown report format '{bad[0]}'; choose one of: {', '.join(FORMATS)}")
    meta = dict(meta or {})
    out = Path(out_dir) if out_dir is not None else None
    linked: dict[str, list[tuple[str, str]]] = {}  # section -> [(caption, "plots/x.png")] for md / latex
    embedded: dict[str, list[tuple[str, str]]] = {}  # section -> [(caption, base64 png)] for html
    if plots and (out is not None or "html" in fmts):
        # Imported here so the text formats without plots do not pay for matplotlib.
        from kdgrid.report.plots import build_figures, figure_png_base64, save_figure

        for p in build_figures(analysis, scale100=scale100, alpha=alpha, rows=rows, cols=cols):
            if out is not None:
                png = save_figure(p.figure, out / "plots", p.name)[0]
                linked.setdefault(p.section, []).append((p.caption, f"plots/{png.name}"))
            if "html" in fmts:
                # Reuse the written PNG rather than drawing the figure a second time.
                b64 = (
                    base64.b64encode(png.read_bytes()).decode("ascii")
                    if out is not None
                    else figure_png_base64(p.figure)
                )
                embedded.setdefault(p.section, []).append((p.caption, b64))

    display = {"table", "md", "latex", "html"} & set(fmts)
    convergence = convergence_frame(analysis)  # shown in tables, JSON and CSV: computed once
    sections = (
        build_sections(
            analysis, scale100=scale100, alpha=alpha, convergence=convergence, rows=rows, cols=cols, question=question
        )
        if display
        else []
    )
    full = sections + _reproducibility_sections(reproducibility, full=True)
    short = sections + _reproducibility_sections(reproducibility, full=False)
    texts: dict[str, str] = {}
    for fmt in fmts:
        if fmt == "csv":
            texts[fmt] = _csv(analysis, out, convergence)
            continue
        if fmt == "json":
            obj = analysis_json(
                analysis,
                title=title,
                meta=meta,
                reproducibility=reproducibility,
                convergence=convergence,
                question=question,
            )
            text = json.dumps(obj, indent=2, allow_nan=False) + "\n"
        elif fmt == "table":
            group = rich_report(analysis, title=title, meta=meta, sections=short, brief=brief)
            text = _console_text(group, width)
        elif fmt == "md":
            text = _markdown(full, title, meta, linked)
        elif fmt == "latex":
            text = _latex(short, title, meta, linked)
        else:
            text = _html(full, title, meta, embedded)
        if out is not None:
            _write(out / REPORT_FILES[fmt], text)
        texts[fmt] = text
    return texts


def _write(path: Path, text: str) -> None:
    """Write atomically (temp file + rename): an interrupted report never leaves half a file.

    The temp file is opened normally (not with mkstemp, which forces mode 0600) so the
    report gets the user's usual permissions and can be shared from a group directory.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _reproducibility_sections(info: Reproducibility | None, *, full: bool) -> list[Section]:
    # Reports made from a table file (--from) have no store, hence no provenance to show.
    return [] if info is None else [reproducibility_section(info, full=full)]


def _meta_items(meta: Mapping[str, Any]) -> list[tuple[str, str]]:
    # Nested values (seed lists, the baseline dict) are shown as compact JSON.
    return [
        (str(k), v if isinstance(v, str) else json.dumps(_jsonable(v), ensure_ascii=False)) for k, v in meta.items()
    ]


# --------------------------------------------------------------------------- rich


def rich_report(
    analysis: Analysis,
    *,
    title: str = "kdgrid report",
    meta: Mapping[str, Any] | None = None,
    scale100: bool = True,
    alpha: float = 0.05,
    sections: Sequence[Section] | None = None,
    reproducibility: Reproducibility | None = None,
    rows: Sequence[str] | None = None,
    cols: Sequence[str] | None = None,
    question: str = "",
    brief: bool = False,
) -> Group:
    """The report as rich renderables, for ``Console.print`` (colour, terminal width).

    Every cell is a ``Text``, never markup, so a factor level such as ``[1, 2]`` prints as is.
    ``reproducibility`` adds the short Reproducibility section when ``sections`` is not given.
    ``brief`` keeps only the summary and the decisive rows (different or equivalent) of the
    paired tests. A table wider than the terminal first abbreviates its labels (with a key),
    then leaves out its optional columns, and only then prints one line per row.
    """
    if sections is None:
        sections = [
            *build_sections(analysis, scale100=scale100, alpha=alpha, rows=rows, cols=cols, question=question),
            *_reproducibility_sections(reproducibility, full=False),
        ]
    if brief:
        sections = _brief_sections(sections)
    parts: list[RenderableType] = [Text(title, style="bold")]
    for k, v in [] if brief else _meta_items(meta or {}):
        parts.append(Text.assemble((f"{k}: ", "dim"), v))
    for s in sections:
        parts.append(Text(""))
        parts.append(Rule(Text(s.title, style="bold cyan"), align="left"))
        if s.key == "summary":
            parts += _rich_summary(s)
            continue
        if s.empty_note:
            parts.append(Text(s.empty_note, style="dim"))
        for c in s.lead_code:
            parts += _rich_code(c)
        for t in s.tables:
            parts.append(_FitTable(t))
        for note in s.notes:
            parts.append(Text(note, style="italic"))
        for b in s.bullets:
            parts.append(Text.assemble(("• ", "yellow"), b))
    return Group(*parts)


def _rich_summary(s: Section) -> list[RenderableType]:
    # Question first, then what was decided, then what was not: the order a reader asks in.
    out: list[RenderableType] = [Text(s.notes[0], style="bold")] if s.notes else []
    out += [Text.assemble(("• ", "green"), b) for b in s.bullets]
    out += [Text(n, style="italic") for n in s.notes[1:]]
    return out


def _brief_sections(sections: Sequence[Section]) -> list[Section]:
    """The summary and the paired tests' decisive rows (verdict different or equivalent) only."""
    out = []
    for s in sections:
        if s.key == "summary":
            out.append(s)
        elif s.key == "paired_tests" and s.tables:
            t = s.tables[0]
            keep = [i for i, v in enumerate(t.frame["Verdict"]) if str(v).startswith(("different", "equivalent"))]
            frame = t.frame.iloc[keep].reset_index(drop=True)
            if "Task" in frame:  # the blanked repeats refer to rows that may be gone
                frame["Task"] = [t.frame["Task"].iloc[: i + 1].replace("", pd.NA).ffill().iloc[-1] for i in keep]
            emph = tuple(t.emphasis[i] for i in keep) if t.emphasis else ()
            # The caption's first sentence (what Δ and the baseline are); the rest is in the full report.
            caption = t.caption.split(". ", 1)[0] + "."
            table = DisplayTable(t.key, caption, frame, t.left, emph, t.optional)
            out.append(
                Section(
                    s.key,
                    "Decisive comparisons",
                    tables=(table,) if keep else (),
                    empty_note=None if keep else "No comparison was decided.",
                )
            )
    return out


def _rich_code(c: CodeBlock) -> list[RenderableType]:
    # Folded, never cropped: a command cut at the terminal's edge would run, but on the wrong file.
    return [Text(c.caption, style="dim"), Text(c.text, overflow="fold"), Text("")]


LABEL_FOLD = 16


def _min_widths(t: DisplayTable) -> list[int]:
    """Narrowest width of each column: numbers whole (never wrapped or cut), labels down
    to their longest word (they may wrap at spaces: "attention=mse," / "kind=uniform")."""
    out = []
    for c in t.frame.columns:
        values = [str(c), *(str(v) for v in t.frame[c])]
        if c in t.left:
            # Labels wrap at spaces; a longer word (an interaction term) folds at LABEL_FOLD characters.
            out.append(min(LABEL_FOLD, max([len(w) for v in values for w in v.split()] or [1])))
        else:
            out.append(max(len(v) for v in values))
    return out


def _rich_table(t: DisplayTable) -> Table:
    # One space of padding plus the box's column gap: the paired-test table (12 columns)
    # then fits 120 characters with full condition labels.
    table = Table(
        box=box.SIMPLE_HEAD,
        caption=t.caption,
        caption_justify="left",
        header_style="bold",
        pad_edge=False,
        show_edge=False,
        padding=(0, 1, 0, 0),
    )
    for c, w in zip(t.frame.columns, _min_widths(t)):
        label = c in t.left
        table.add_column(
            Text(str(c)), justify="left" if label else "right", no_wrap=not label, overflow="fold", min_width=w
        )
    for i, row in enumerate(t.frame.itertuples(index=False)):
        emph = bool(t.emphasis and t.emphasis[i])
        table.add_row(*(Text(str(v)) for v in row), style="bold green" if emph else None)
    return table


class _FitTable:
    """A table that never loses data on a narrow terminal.

    A rich ``Table`` wider than the console silently crops its right-most columns (the
    p values!). So a table too wide for the console is narrowed in steps: its long labels
    are abbreviated (a key under the table spells them out), then its optional columns are
    left out (named under the table; the files keep them), and when even that does not fit
    each row is printed as wrapped ``column: value`` items.
    """

    def __init__(self, t: DisplayTable) -> None:
        self.t = t

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        def fits(t: DisplayTable) -> bool:
            # Each column costs its width plus 2 (one space of padding, one of column gap).
            return sum(w + 2 for w in _min_widths(t)) <= options.max_width

        if fits(self.t):
            yield _rich_table(self.t)
            return
        short, key = abbreviate(self.t)
        dropped: list[str] = []
        for c in self.t.optional:
            if fits(short):
                break
            if c in short.frame.columns:
                short = DisplayTable(
                    short.key, short.caption, short.frame.drop(columns=[c]), short.left, short.emphasis, short.optional
                )
                dropped.append(c)
        if fits(short):
            yield _rich_table(short)
            if key:
                yield Text("Key: " + "; ".join(f"{a} = {b}" for a, b in key.items()), style="dim")
            if dropped:
                yield Text(
                    f"Left out at this width: {', '.join(dropped)} (in report.md and the CSV files).", style="dim"
                )
            return
        cols = [str(c) for c in self.t.frame.columns]
        for i, row in enumerate(self.t.frame.itertuples(index=False)):
            style = "bold green" if self.t.emphasis and self.t.emphasis[i] else ""
            # Greedy wrapping by whole "column: value" items, so no pair is split.
            line = Text("• ")
            for c, v in zip(cols, row):
                if not str(v):
                    continue
                item = Text.assemble((f"{c}: ", "dim"), (str(v), style))
                if len(line) > 2 and len(line) + 3 + len(item) > options.max_width:
                    yield line
                    line = Text("  ")
                elif len(line) > 2:
                    line.append("   ")
                line.append_text(item)
            yield line
        yield Text(self.t.caption, style="dim")


ABBREV_LEN = 6  # labels longer than this are abbreviated on a narrow terminal


def _abbrev(word: str, taken: set[str], *, header: bool) -> str:
    """``max_train_examples`` -> ``mte`` (a header), ``learnable`` -> ``learn``, ``uniform`` -> ``unif``;
    unique within ``taken``; ``word`` itself when no short, unique form exists."""
    parts = [p for p in re.split(r"[_\s.]+", word) if p]
    cands = ["".join(p[0] for p in parts)] if header and len(parts) > 1 else []
    # A prefix that ends on a consonant before a vowel reads as a word: "unif", "learn", "att".
    vowels = set("aeiouAEIOU")
    cands += [
        word[:k]
        for k in range(3, ABBREV_LEN + 1)
        if k < len(word) and word[k - 1].isalpha() and word[k - 1] not in vowels and word[k] in vowels
    ]
    if header:
        cands += [word[:k] for k in range(ABBREV_LEN - 1, len(word))]
    for c in cands:
        if c and c not in taken:
            return c
    return word


def abbreviate(t: DisplayTable) -> tuple[DisplayTable, dict[str, str]]:
    """The table with label-column headers and levels longer than :data:`ABBREV_LEN` shortened,
    and the key (short -> long). Numbers, task names and other headers stay as they are."""
    key: dict[str, str] = {}
    long_to_short: dict[str, str] = {}
    taken: set[str] = {str(c) for c in t.frame.columns}
    label_cols = [c for c in t.frame.columns if c in t.left and c != "Task"]
    for c in label_cols:
        for i, v in enumerate([c, *dict.fromkeys(str(x) for x in t.frame[c])]):
            if len(v) > ABBREV_LEN and " " not in v and v != MISSING and v not in long_to_short:
                a = _abbrev(v, taken, header=i == 0)
                if a != v:
                    long_to_short[v] = a
                    key[a] = v
                    taken.add(a)
    frame = t.frame.copy()
    for c in label_cols:
        frame[c] = [long_to_short.get(str(v), v) for v in frame[c]]
    frame = frame.rename(columns={c: long_to_short.get(str(c), c) for c in label_cols})
    left = tuple(long_to_short.get(c, c) for c in t.left)
    optional = tuple(long_to_short.get(c, c) for c in t.optional)
    return DisplayTable(t.key, t.caption, frame, left, t.emphasis, optional), key


def _console_text(renderable: RenderableType, width: int) -> str:
    console = Console(
        file=io.StringIO(),
        width=width,
        record=True,
        color_system=None,
        force_terminal=False,
        legacy_windows=False,
        soft_wrap=False,
    )
    console.print(renderable)
    return console.export_text()


# --------------------------------------------------------------------------- markdown


_MD_SPECIAL = re.compile(r"([\\`*|<])")


def _md_cell(v: Any) -> str:
    """Text safe in Markdown: a pipe would end a table cell, '*' start emphasis, '<' open
    raw HTML; CommonMark lets a backslash escape each of them. Brackets stay as they are:
    CIs read "[2.28, 3.25]" and form no link without a following "(url)"."""
    return _MD_SPECIAL.sub(r"\\\1", str(v)).replace("\n", " ")


def markdown_table(t: DisplayTable) -> str:
    """A GitHub pipe table: label columns left-aligned, numbers right-aligned, the labels of
    significant rows in bold (the ``sig`` column carries the marker)."""
    cols = list(t.frame.columns)
    lines = [
        "| " + " | ".join(_md_cell(c) for c in cols) + " |",
        "|" + "|".join(":--" if c in t.left else "--:" for c in cols) + "|",
    ]
    for i, row in enumerate(t.frame.itertuples(index=False)):
        cells = [_md_cell(v) for v in row]
        if t.emphasis and t.emphasis[i]:  # bold labels only: whole bold rows are hard to scan
            cells = [f"**{c}**" if c and col in t.left else c for c, col in zip(cells, cols)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def md_fence(text: str) -> str:
    """A code fence longer than any backtick run in ``text``, so the text cannot close it early."""
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    return "`" * max(3, longest + 1)


def _markdown_code(c: CodeBlock) -> list[str]:
    fence = md_fence(c.text)
    return [f"*{_md_cell(c.caption)}*", "", f"{fence}{c.lang}", c.text.rstrip("\n"), fence, ""]


def _markdown(
    sections: Sequence[Section], title: str, meta: Mapping[str, Any], plots: Mapping[str, list[tuple[str, str]]]
) -> str:
    out = [f"# {_md_cell(title)}", ""]
    for k, v in _meta_items(meta):
        out.append(f"- **{_md_cell(k)}**: {_md_cell(v)}")
    if meta:
        out.append("")
    for s in sections:
        out += [f"## {s.title}", ""]
        if s.key == "summary":
            out += [f"**{_md_cell(s.notes[0])}**", ""] if s.notes else []
            out += [f"- {_md_cell(b)}" for b in s.bullets] + ([""] if s.bullets else [])
            out += [_md_cell(n) + "\n" for n in s.notes[1:]]
            continue
        if s.empty_note:
            out += [f"_{_md_cell(s.empty_note)}_", ""]
        for c in s.lead_code:
            out += _markdown_code(c)
        for t in s.tables:
            out += [f"*{_md_cell(t.caption)}*", "", markdown_table(t), ""]
        for n in s.notes:
            out += [_md_cell(n), ""]
        out += [f"- {_md_cell(b)}" for b in s.bullets] + ([""] if s.bullets else [])
        for c in s.trailing_code:
            out += _markdown_code(c)
        for caption, path in plots.get(s.key, []):
            out += [f"![{caption}]({path})", ""]
    return "\n".join(out).rstrip() + "\n"


# --------------------------------------------------------------------------- latex

_LATEX_MAP = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "±": r"$\pm$",
    "–": "--",
    "—": "---",
    "−": "$-$",
    "×": r"$\times$",
    "η²": r"$\eta^2$",
    "η": r"$\eta$",
    "²": r"$^2$",
    "Δ": r"$\Delta$",
    "ρ": r"$\rho$",
    "∞": r"$\infty$",
    "<": "$<$",
    ">": "$>$",
    "≤": r"$\le$",
    "≥": r"$\ge$",
    "·": r"$\cdot$",
    "•": r"\textbullet{}",
    "α": r"$\alpha$",
    "β": r"$\beta$",
    # the paired, stratified and rank sections' symbols
    "š": r"\v{s}",
    "μ": r"$\mu$",
    "τ": r"$\tau$",
    "ε": r"$\varepsilon$",
    "χ": r"$\chi$",
    "√": r"$\surd$",
    "ᵂ": r"$^{W}$",
    # the pivot tables' marks
    "ᵇ": r"$^{b}$",
    "≈": r"$\approx$",
}
_LATEX_RE = re.compile("|".join(re.escape(k) for k in sorted(_LATEX_MAP, key=len, reverse=True)))
_LATEX_HEADERS = {
    "dz": "$d_z$",
    "p_adj": r"$p_{\mathrm{adj}}$",
    "p": "$p$",
    "t": "$t$",
    "F": "$F$",
    "n": "$n$",
    "Observed dz": "Observed $d_z$",
    "n for observed dz": r"$n$ for obs.\ $d_z$",
    "Target dz": "Target $d_z$",
    "n for target dz": r"$n$ for target $d_z$",
    "Wilcoxon p": "Wilcoxon $p$",
    "partial η²": r"partial $\eta^2$",
    "Power at n": "Power at $n$",
    "dz 95% CI": r"$d_z$ 95\% CI",
    "α used": r"$\alpha$ used",
}


def latex_escape(text: str) -> str:
    """Escape LaTeX specials and spell the Unicode symbols the tables use in math mode."""
    return _LATEX_RE.sub(lambda m: _LATEX_MAP[m.group(0)], str(text))


def latex_table(t: DisplayTable) -> str:
    """A booktabs ``table`` float; wide tables are scaled to the line width."""
    cols = list(t.frame.columns)
    spec = "".join("l" if c in t.left else "r" for c in cols)
    body = [
        r"\toprule",
        " & ".join(_LATEX_HEADERS.get(str(c), latex_escape(str(c))) for c in cols) + r" \\",
        r"\midrule",
    ]
    for i, row in enumerate(t.frame.itertuples(index=False)):
        cells = [latex_escape(str(v)) for v in row]
        if t.emphasis and t.emphasis[i]:
            cells = [rf"\textbf{{{c}}}" if c and col in t.left else c for c, col in zip(cells, cols)]
        body.append(" & ".join(cells) + r" \\")
    body.append(r"\bottomrule")
    tabular = "\n".join([rf"\begin{{tabular}}{{{spec}}}", *body, r"\end{tabular}"])
    if len(cols) > 8:
        tabular = r"\resizebox{\linewidth}{!}{%" + "\n" + tabular + "}"
    return "\n".join(
        [
            r"\begin{table}[htbp]",
            r"\centering",
            r"\small",
            rf"\caption{{{latex_escape(t.caption)}}}",
            rf"\label{{tab:{t.key}}}",
            tabular,
            r"\end{table}",
        ]
    )


def _latex(
    sections: Sequence[Section], title: str, meta: Mapping[str, Any], plots: Mapping[str, list[tuple[str, str]]]
) -> str:
    out = [
        r"\documentclass[10pt]{article}",
        r"\usepackage[T1]{fontenc}",
        r"\usepackage[utf8]{inputenc}",
        r"\usepackage{booktabs}",
        r"\usepackage{graphicx}",
        r"\usepackage[margin=2cm]{geometry}",
        rf"\title{{{latex_escape(title)}}}",
        r"\author{}",
        r"\date{}",
        r"\begin{document}",
        r"\maketitle",
        "",
    ]
    if meta:
        out += (
            [r"\begin{itemize}"]
            + [rf"\item \textbf{{{latex_escape(k)}}}: {latex_escape(v)}" for k, v in _meta_items(meta)]
            + [r"\end{itemize}", ""]
        )
    for s in sections:
        out += [rf"\section*{{{latex_escape(s.title)}}}", ""]
        if s.empty_note:
            out += [rf"\emph{{{latex_escape(s.empty_note)}}}", ""]
        for c in s.code:
            out += [
                rf"\paragraph*{{{latex_escape(c.caption)}}}",
                r"\begin{verbatim}",
                c.text.rstrip("\n"),
                r"\end{verbatim}",
                "",
            ]
        for t in s.tables:
            out += [latex_table(t), ""]
        for n in s.notes:
            out += [latex_escape(n), ""]
        if s.bullets:
            out += [r"\begin{itemize}"] + [rf"\item {latex_escape(b)}" for b in s.bullets] + [r"\end{itemize}", ""]
        for caption, path in plots.get(s.key, []):
            out += [
                r"\begin{figure}[htbp]",
                r"\centering",
                rf"\includegraphics[width=0.8\linewidth]{{{path}}}",
                rf"\caption{{{latex_escape(caption)}}}",
                r"\end{figure}",
                "",
            ]
    out.append(r"\end{document}")
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------- html

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;background:#fff;color:#222}
main{max-width:1150px;margin:0 auto;padding:24px}
h1{font-size:1.6em;margin:0 0 8px}
h2{font-size:1.25em;border-bottom:2px solid #2c3e50;padding-bottom:4px;margin-top:32px}
dl.meta{display:grid;grid-template-columns:max-content auto;gap:2px 12px;font-size:.9em;color:#444}
dl.meta dt{font-weight:600}dl.meta dd{margin:0}
nav{font-size:.9em;margin:12px 0}nav a{margin-right:12px;color:#2c3e50}
.tablewrap{overflow-x:auto;margin:12px 0 20px}
table{border-collapse:collapse;font-size:.88em;font-variant-numeric:tabular-nums}
caption{caption-side:top;text-align:left;color:#555;font-size:.92em;padding:4px 0 6px;max-width:1100px}
th{border-top:2px solid #333;border-bottom:1px solid #333;padding:4px 10px;text-align:right;white-space:nowrap}
td{padding:3px 10px;text-align:right;white-space:nowrap}
th.l,td.l{text-align:left}tbody tr:last-child td{border-bottom:2px solid #333}
tbody tr:nth-child(even){background:#f6f8fa}tr.sig td{font-weight:600;background:#e8f6ee}
p.note{color:#666;font-style:italic}ul.warn li{color:#8a4b00}
.figs{display:flex;flex-wrap:wrap;gap:8px 24px;align-items:flex-start}
figure{margin:12px 0;max-width:100%}figure img{max-width:100%;height:auto}
figcaption{font-size:.85em;color:#555}
pre{background:#f6f8fa;padding:8px 12px;overflow-x:auto;font-size:.85em;margin:4px 0 16px}
p.caption{color:#555;font-size:.92em;margin:12px 0 4px}details{margin:12px 0}
details summary{cursor:pointer;color:#2c3e50;font-size:.92em}
section.summary{border:1px solid #2c3e50;border-left:6px solid #2c3e50;background:#f4f7fa;padding:4px 18px 10px;
margin:16px 0 8px}section.summary h2{border:0;margin:8px 0 4px;font-size:1.1em}
p.question{font-size:1.05em;margin:6px 0}ul.decisive li{margin:2px 0}p.undecided{color:#555;margin:6px 0 0}
"""


def html_table(t: DisplayTable) -> str:
    """A plain HTML table with a caption; label columns left-aligned, significant rows marked."""
    esc = html.escape
    cols = list(t.frame.columns)
    head = "".join(f'<th class="{"l" if c in t.left else "r"}">{esc(str(c))}</th>' for c in cols)
    rows = []
    for i, row in enumerate(t.frame.itertuples(index=False)):
        cls = ' class="sig"' if t.emphasis and t.emphasis[i] else ""
        tds = "".join(f'<td class="{"l" if c in t.left else "r"}">{esc(str(v))}</td>' for c, v in zip(cols, row))
        rows.append(f"<tr{cls}>{tds}</tr>")
    return (
        f'<div class="tablewrap"><table id="{esc(t.key)}"><caption>{esc(t.caption)}</caption>'
        f"<thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table></div>"
    )


def html_code(c: CodeBlock) -> str:
    """A ``<pre>`` block; a collapsed one (a whole study file) folded in ``<details>`` so it does not
    push the rest of the page down."""
    esc = html.escape
    pre = f'<pre><code class="language-{esc(c.lang)}">{esc(c.text)}</code></pre>'
    if c.collapsed:
        return f"<details><summary>{esc(c.caption)}</summary>{pre}</details>"
    return f'<p class="caption">{esc(c.caption)}</p>{pre}'


def _css_width(b64: str) -> int:
    """Display width in CSS pixels of a base64 PNG drawn at PNG_DPI: the plot then shows at
    its printed size (sharp on high-density screens) instead of 1.5× too large."""
    from kdgrid.report.plots import PNG_DPI

    header = base64.b64decode(b64[:32])  # IHDR: width is bytes 16-19, big-endian
    return round(int.from_bytes(header[16:20], "big") * 96 / PNG_DPI)


def _html_summary(s: Section) -> str:
    """The box a reader sees first: the question, what was decided, what was not."""
    esc = html.escape
    question = s.notes[0] if s.notes else ""
    q_label, _, q_text = question.partition(": ")
    parts = [
        f'<section id="summary" class="summary"><h2>{esc(s.title)}</h2>',
        f'<p class="question"><b>{esc(q_label)}:</b> {esc(q_text)}</p>',
    ]
    if s.bullets:
        parts.append(
            '<p class="decided"><b>Decided</b> (different or equivalent, adjusted for the family):</p>'
            '<ul class="decisive">' + "".join(f"<li>{esc(b)}</li>" for b in s.bullets) + "</ul>"
        )
    parts += [f'<p class="undecided">{esc(n)}</p>' for n in s.notes[1:]]
    parts.append("</section>")
    return "".join(parts)


def _html(
    sections: Sequence[Section], title: str, meta: Mapping[str, Any], images: Mapping[str, list[tuple[str, str]]]
) -> str:
    esc = html.escape
    out = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{esc(title)}</title>",
        f"<style>{_CSS}</style>",
        "</head>",
        "<body>",
        "<main>",
        f"<h1>{esc(title)}</h1>",
    ]
    # The summary opens the page, before the settings: what was asked and what came out.
    out += [_html_summary(s) for s in sections if s.key == "summary"]
    sections = [s for s in sections if s.key != "summary"]
    if meta:
        out.append(
            '<dl class="meta">' + "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in _meta_items(meta)) + "</dl>"
        )
    out.append("<nav>" + "".join(f'<a href="#{s.key}">{esc(s.title)}</a>' for s in sections) + "</nav>")
    for s in sections:
        out.append(f'<section id="{esc(s.key)}"><h2>{esc(s.title)}</h2>')
        if s.empty_note:
            out.append(f'<p class="note">{esc(s.empty_note)}</p>')
        out += [html_code(c) for c in s.lead_code]
        out += [html_table(t) for t in s.tables]
        out += [f'<p class="note">{esc(n)}</p>' for n in s.notes]
        if s.bullets:
            out.append('<ul class="warn">' + "".join(f"<li>{esc(b)}</li>" for b in s.bullets) + "</ul>")
        out += [html_code(c) for c in s.trailing_code]
        figs = [
            f'<figure><img alt="{esc(caption)}" style="width:{_css_width(b64)}px" '
            f'src="data:image/png;base64,{b64}"><figcaption>{esc(caption)}</figcaption></figure>'
            for caption, b64 in images.get(s.key, [])
        ]
        if figs:
            out.append('<div class="figs">' + "".join(figs) + "</div>")
        out.append("</section>")
    out += ["</main>", "</body>", "</html>"]
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------- json


def _jsonable(x: Any) -> Any:
    """Plain JSON values: NaN/inf -> None, numpy scalars and arrays -> Python, others -> str."""
    if x is None or isinstance(x, (bool, str)):
        return x
    if isinstance(x, (np.bool_,)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        v = float(x)
        return v if math.isfinite(v) else None
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple, set, np.ndarray, pd.Series)):
        return [_jsonable(v) for v in x]
    if x is pd.NA or x is pd.NaT:
        return None
    if isinstance(x, (pd.Timestamp,)):
        return x.isoformat()
    return str(x)


def _records(df: pd.DataFrame | None, keys: Sequence[str] | None = None) -> list[dict[str, Any]]:
    if df is None:
        return []
    cols = list(keys) if keys is not None else list(df.columns)
    sub = df.reindex(columns=cols)  # a missing optional column becomes null, never a KeyError
    return [{c: _jsonable(v) for c, v in zip(cols, row)} for row in sub.itertuples(index=False, name=None)]


def analysis_json(
    analysis: Analysis,
    *,
    title: str = "kdgrid report",
    meta: Mapping[str, Any] | None = None,
    reproducibility: Reproducibility | None = None,
    convergence: pd.DataFrame | None = None,
    question: str = "",
) -> dict[str, Any]:
    """The JSON report as a dict: ``cells``, ``paired_tests``, ``anova``, ``sensitivity``,
    ``power``, ``warnings``, ``meta``, ``reproducibility`` (null without a store) (plus ``title``,
    ``anova_design`` (the sentences stating the ANOVA's model), ``diagnostics``, ``sensitivity_summary``, ``paired_test_notes``, ``power_plan``, ``stratified``,
    ``friedman``, ``ranks``, ``nemenyi``, ``efficiency``, ``layers`` and
    ``mapping_convergence``, computed here unless ``convergence`` is given). NaN becomes None (null).

    ``paired_tests`` records have exactly :data:`JSON_PAIRED_KEYS` and ``anova`` records
    exactly :data:`JSON_ANOVA_KEYS`; the free-text ``note`` of a paired test is kept apart
    in ``paired_test_notes`` (task, condition, note) so the record schema stays fixed.
    """
    from kdgrid.report.pivot import headline, summary_lines

    paired = section_frame(analysis, "paired_tests")
    cells = section_frame(analysis, "cells")
    _, decisive, undecided = summary_lines(question, paired, cells)
    notes = []
    if paired is not None and "note" in paired.columns:
        for r in paired.itertuples(index=False):
            note = _jsonable(r.note)
            if note:
                notes.append({"task": _jsonable(r.task), "condition": _jsonable(r.condition), "note": note})
    return {
        "title": title,
        "meta": _jsonable(dict(meta or {})),
        # What the HTML summary box shows, and the one line reports/index.html lists.
        "summary": {
            "question": question,
            "headline": headline(paired, cells),
            "decisive": decisive,
            "undecided": undecided,
        },
        # The factor each metric is shown with in the tables (values here stay raw): one per metric, never per task.
        "display_scale": {
            str(m): display_scale(str(m))
            for m in dict.fromkeys(getattr(section_frame(analysis, "cells"), "metric", pd.Series([])))
        },
        "cells": _records(section_frame(analysis, "cells")),
        "paired_tests": _records(paired, JSON_PAIRED_KEYS),
        "paired_test_notes": notes,
        "anova": _records(section_frame(analysis, "anova"), JSON_ANOVA_KEYS),
        "anova_design": [str(d) for d in (getattr(analysis, "design", None) or [])],
        "diagnostics": _records(section_frame(analysis, "diagnostics")),
        "sensitivity": _records(section_frame(analysis, "sensitivity")),
        "sensitivity_summary": _jsonable(dict(getattr(analysis, "sensitivity_summary", None) or {})),
        "power": _records(section_frame(analysis, "power")),
        "power_plan": _records(section_frame(analysis, "power_plan")),
        "stratified": _records(section_frame(analysis, "stratified")),
        "friedman": _jsonable(dict(getattr(analysis, "friedman", None) or {})),
        "ranks": _records(section_frame(analysis, "ranks")),
        "nemenyi": _records(section_frame(analysis, "nemenyi")),
        "efficiency": _records(section_frame(analysis, "efficiency")),
        "layers": _records(section_frame(analysis, "layers")),
        "mapping_convergence": _records(convergence if convergence is not None else convergence_frame(analysis)),
        "warnings": [str(w) for w in (getattr(analysis, "warnings", None) or [])],
        "reproducibility": None if reproducibility is None else _jsonable(reproducibility_json(reproducibility)),
    }


# --------------------------------------------------------------------------- csv


def _csv_frame(analysis: Analysis, name: str) -> pd.DataFrame:
    df = section_frame(analysis, name)
    if df is None:
        # Header only: scripts that read every section keep working on an empty one.
        return pd.DataFrame(columns=list(SECTION_COLUMNS[name]))
    df = df.copy()
    for c in _LIST_COLUMNS & set(df.columns):
        df[c] = [json.dumps(_jsonable(v)) for v in df[c]]
    return df


def _csv(analysis: Analysis, out: Path | None, conv: pd.DataFrame | None) -> str:
    optional = ("stratified", "ranks", "nemenyi", "power_plan", "mapping_weights", "efficiency", "layers")
    names = list(CSV_SECTIONS) + [name for name in optional if section_frame(analysis, name) is not None]
    chunks = []
    for name in names:
        text = _csv_frame(analysis, name).to_csv(index=False, lineterminator="\n")
        if out is not None:
            _write(out / f"{name}.csv", text)
        chunks.append(f"# {name}.csv\n{text}")
    if conv is not None and not conv.empty:
        text = conv.to_csv(index=False, lineterminator="\n")
        if out is not None:
            _write(out / "mapping_convergence.csv", text)
        chunks.append(f"# mapping_convergence.csv\n{text}")
    warnings = [str(w) for w in (getattr(analysis, "warnings", None) or [])]
    if out is not None:
        _write(out / "warnings.txt", "".join(w.replace("\n", " ") + "\n" for w in warnings))
    chunks.append("# warnings.txt\n" + "".join(w + "\n" for w in warnings))
    return "\n".join(chunks)


def read_section_csv(path: Path | str) -> pd.DataFrame:
    """Read back a section CSV written by ``render(fmt="csv")``: contract number columns as
    numbers, ``seeds``/``values`` as lists, everything else (factor levels such as "0.0")
    as strings, so the round trip is exact."""
    path = Path(path)
    schema = SECTION_COLUMNS.get(path.stem, ())
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    for c in df.columns:
        if c in _LIST_COLUMNS:
            df[c] = [json.loads(v) if v else [] for v in df[c]]
        elif c in _BOOL_COLUMNS:
            df[c] = df[c] == "True"
        elif c in schema and c not in _STRING_COLUMNS:
            num = pd.to_numeric(df[c].replace("", np.nan), errors="coerce")
            # diagnostics.value may hold text ("balanced"): keep strings unless all parse.
            if num.notna().sum() == (df[c] != "").sum():
                df[c] = num
    return df
