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

from kdgrid.report import render
from test_report import META, make_analysis  # the same hand-built Analysis as the format tests

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
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--enable-logging=stderr", "--log-level=0", f"--user-data-dir={profile}", f"--screenshot={shot}",
        f"--window-size={size}", "--hide-scrollbars", url,
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
