"""The HTML report opened in a real browser: headless Chromium renders it to a screenshot.

Skipped where no ``chromium`` binary is on PATH (``apt-get install chromium`` on Debian;
about 35 s and 350 MB). It checks what the string tests cannot: that the page lays out,
that the base64 plots decode and show, and that the browser reports no page errors.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image
from test_report import META, make_analysis  # the same hand-built Analysis as the format tests

from kdgrid.report import render

CHROMIUM = shutil.which("chromium")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no 'chromium' binary on PATH (apt-get install chromium) for the headless HTML check"
)

# With --enable-logging=stderr Chromium prints each console message and uncaught exception
# of the page: '[...:INFO:CONSOLE:1] "Uncaught ReferenceError: f is not defined", source: ...'
# (older builds wrote CONSOLE(1)). Without that flag headless Chromium prints none of them,
# so test_chromium_reports_page_errors keeps this check honest.
PAGE_ERROR = re.compile(r":CONSOLE[:(]|Uncaught")


def screenshot(url: str, shot: Path, profile: Path, size: str) -> subprocess.CompletedProcess[str]:
    """Run headless Chromium on ``url`` and write a PNG screenshot; stderr carries page errors."""
    assert CHROMIUM is not None
    # Flags keep the browser off the network and out of the user's profile: no sync,
    # component updates or QUIC probes, a throwaway profile directory, no sandbox
    # (containers usually lack the namespaces it needs).
    cmd = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--enable-logging=stderr",
        "--log-level=0",
        f"--user-data-dir={profile}",
        f"--screenshot={shot}",
        f"--window-size={size}",
        "--hide-scrollbars",
        url,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=False)


def page_errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if PAGE_ERROR.search(line)]


def test_chromium_reports_page_errors(tmp_path: Path) -> None:
    """Canary: a page with a console error and an exception must show up on stderr."""
    bad = tmp_path / "bad.html"
    bad.write_text('<p>x</p><script>console.error("boom"); notDefined();</script>', encoding="utf-8")
    proc = screenshot(bad.as_uri(), tmp_path / "bad.png", tmp_path / "profile", "400,300")
    errors = page_errors(proc.stderr)
    assert any("boom" in e for e in errors) and any("Uncaught ReferenceError" in e for e in errors), proc.stderr[-2000:]


@pytest.mark.slow
def test_report_html_renders_in_headless_chromium(tmp_path: Path) -> None:
    render(make_analysis(), fmt="html", out_dir=tmp_path, title="Ablation", meta=META, plots=True)
    page = tmp_path / "report.html"
    shot = tmp_path / "screenshot.png"
    proc = screenshot(page.as_uri(), shot, tmp_path / "profile", "1200,2000")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert shot.is_file() and shot.stat().st_size > 0, proc.stderr[-2000:]
    errors = page_errors(proc.stderr)
    assert not errors, "\n".join(errors)

    with Image.open(shot) as im:
        rgb = im.convert("RGB")
        assert rgb.size == (1200, 2000)
        pixels = list(rgb.getdata())
    dark = sum(1 for r, g, b in pixels if min(r, g, b) < 128)  # text, rules, plot lines
    coloured = sum(1 for r, g, b in pixels if max(r, g, b) - min(r, g, b) > 100)  # only the plots are saturated
    assert dark > 0.002 * len(pixels), "page looks blank"
    assert coloured > 500, "no saturated pixels: the embedded plots did not render"


ROOT = Path(__file__).resolve().parents[1]
COMMITTED = sorted((ROOT / "reports").glob("*/report.html"))


def top_pixels(shot: Path) -> list[tuple[int, int, int]]:
    with Image.open(shot) as im:
        return list(im.convert("RGB").getdata())


@pytest.mark.parametrize("page", COMMITTED, ids=[p.parent.name for p in COMMITTED])
def test_committed_report_top_renders_without_errors(tmp_path: Path, page: Path) -> None:
    """The top of each committed report (what a reader sees first) lays out and is not blank."""
    shot = tmp_path / "top.png"
    proc = screenshot(page.as_uri(), shot, tmp_path / "profile", "1200,900")
    assert proc.returncode == 0 and shot.is_file(), proc.stderr[-2000:]
    assert not page_errors(proc.stderr), "\n".join(page_errors(proc.stderr))
    pixels = top_pixels(shot)
    dark = sum(1 for r, g, b in pixels if min(r, g, b) < 128)
    assert dark > 0.005 * len(pixels), f"{page}: the top of the page looks blank"


def test_summary_box_opens_the_page(tmp_path: Path) -> None:
    """The summary box (its thick dark left border, #2c3e50: a vertical stripe, unlike the headings'
    horizontal rules) is in the first screenful."""
    render(make_analysis(), fmt="html", out_dir=tmp_path, title="Ablation", meta=META, plots=False)
    shot = tmp_path / "top.png"
    proc = screenshot((tmp_path / "report.html").as_uri(), shot, tmp_path / "profile", "1200,400")
    assert proc.returncode == 0, proc.stderr[-2000:]
    with Image.open(shot) as im:
        rgb = im.convert("RGB")
        w, h = rgb.size

        def is_border(x: int, y: int) -> bool:
            r, g, b = rgb.getpixel((x, y))
            return abs(r - 0x2C) < 8 and abs(g - 0x3E) < 8 and abs(b - 0x50) < 8

        stripe = max(sum(is_border(x, y) for y in range(h)) for x in range(min(w, 80)))
    assert stripe > 60, "no summary box at the top of the page"
