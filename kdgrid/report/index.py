"""``reports/index.html``: one line per study report, linking it, with its headline result.

Built from the ``report.json`` files under a reports folder (each written by ``kdgrid
report``), so the index needs neither the store nor the analysis again.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

from kdgrid.report.render import _CSS, _write


def index_entries(root: Path) -> list[tuple[str, str, str]]:
    """(study folder, question, headline) for every ``<root>/<study>/report.json``, sorted by folder."""
    out = []
    for path in sorted(Path(root).glob("*/report.json")):
        try:
            obj = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # a half-written or foreign file: the index lists the reports it can read
        summary = obj.get("summary") or {}
        out.append(
            (
                path.parent.name,
                str(summary.get("question") or ""),
                str(summary.get("headline") or "no summary (report written by an older kdgrid)"),
            )
        )
    return out


def write_index(root: Path) -> Path:
    """Write ``<root>/index.html`` linking every study report under ``root``; returns its path."""
    esc = html.escape
    rows = []
    for name, question, head in index_entries(root):
        link = f"{name}/report.html" if (Path(root) / name / "report.html").is_file() else f"{name}/report.json"
        rows.append(
            f'<tr><td class="l"><a href="{esc(link)}">{esc(name)}</a></td>'
            f'<td class="l wrap">{esc(question or "–")}</td><td class="l wrap">{esc(head)}</td></tr>'
        )
    body = (
        (
            "<table><caption>Each study's report with its headline: the paired comparisons decided "
            '(different or equivalent) and the largest of them.</caption><thead><tr><th class="l">Study</th>'
            '<th class="l">Question</th><th class="l">Headline result</th></tr></thead><tbody>'
            + "".join(rows)
            + "</tbody></table>"
        )
        if rows
        else '<p class="note">No reports yet.</p>'
    )
    page = (
        "\n".join(
            [
                "<!DOCTYPE html>",
                '<html lang="en">',
                "<head>",
                '<meta charset="utf-8">',
                '<meta name="viewport" content="width=device-width, initial-scale=1">',
                "<title>kdgrid reports</title>",
                f"<style>{_CSS}td.wrap{{white-space:normal;max-width:560px}}</style>",
                "</head>",
                "<body>",
                "<main>",
                "<h1>kdgrid reports</h1>",
                body,
                "</main>",
                "</body>",
                "</html>",
            ]
        )
        + "\n"
    )
    path = Path(root) / "index.html"
    _write(path, page)
    return path
