"""The HTML report of the sample run, as a browser shows it: headless Chromium (Debian's
`chromium`; `make screenshot` installs it) renders the page, its DOM is dumped and checked for
the charts and the attention table, a screenshot and a PDF print are made.

Skipped, with a message, where `chromium` is not on PATH; tests/test_html_report.py checks the
same page with html.parser, so CI without a browser still covers its content.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "sample_data" / "optouts_2026_11.csv"
EXPECTED = json.loads((REPO / "sample_data" / "optouts_2026_11.expected.json").read_text())
ATTENTION = {"invalid", "failed", "conflict", "mismatch", "not_attempted"}
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


class _Dom(HTMLParser):
    """The rendered DOM: status bars of the charts and the attention table's rows."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.svg_ids: list[str] = []
        self.stack: list[str] = []
        self.bars: dict[str, dict[str, int]] = {}
        self.rows: list[tuple[str, str]] = []
        self.scripts = 0
        self._in_attention = False
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "script":
            self.scripts += 1
        if tag == "svg":
            self.svg_ids.append(a.get("id", ""))
            self.stack.append(a.get("id", ""))
        if tag == "rect" and self.stack and "bar" in a.get("class", "").split():
            self.bars.setdefault(self.stack[-1], {})[a["data-key"]] = int(a["data-count"])
        if tag == "table" and a.get("id") == "attention-table":
            self._in_attention = True
        if tag == "tr" and self._in_attention and "data-status" in a:
            self.rows.append((a["data-row"], a["data-status"]))

    def handle_endtag(self, tag: str) -> None:
        if tag == "svg" and self.stack:
            self.stack.pop()
        if tag == "table":
            self._in_attention = False


@pytest.fixture(scope="module")
def sample_page(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`batch-toggle run sample_data/optouts_2026_11.csv --sandbox`, the real CLI."""
    if CHROMIUM is None:
        pytest.skip("chromium is not on PATH: `make screenshot` installs Debian's chromium "
                    "(apt-get install chromium); tests/test_html_report.py checks the page "
                    "without a browser")
    tmp = tmp_path_factory.mktemp("html")
    report = tmp / "optouts_2026_11.csv"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOGIS_", "BATCH_TOGGLE_"))}
    proc = subprocess.run(
        [sys.executable, "-m", "batch_toggle", "run", str(SAMPLE), "--sandbox", "--max-rps",
         "1000", "--report", str(report), "--state", str(tmp / "state.sqlite"), "--quiet"],
        capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 1, proc.stderr  # the sample's bad rows need attention, by design
    page = report.with_name(report.name + ".html")
    assert page.exists()
    return page


def _chromium(page: Path, *args: str) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    profile = page.parent / f"chromium-profile-{len(args)}-{os.getpid()}"
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--no-first-run", "--hide-scrollbars", f"--user-data-dir={profile}", *args,
         page.as_uri()],
        capture_output=True, text=True, timeout=120)


def test_chromium_renders_the_status_charts_and_the_attention_table(sample_page: Path) -> None:
    proc = _chromium(sample_page, "--dump-dom")
    assert proc.returncode == 0, proc.stderr[-2000:]
    dom = _Dom(proc.stdout)
    assert {"chart-status", "chart-error-code", "chart-timeline"} <= set(dom.svg_ids)
    assert dom.bars["chart-status"] == EXPECTED["status_counts"]
    assert dom.bars["chart-error-code"] == EXPECTED["error_code_counts"]
    expected_rows = [(str(r["row"]), r["status"]) for r in EXPECTED["rows"]
                     if r["status"] in ATTENTION]
    assert dom.rows == expected_rows
    assert Counter(s for _, s in dom.rows) == {"invalid": 9, "failed": 2, "conflict": 2}
    assert dom.scripts == 0


def test_chromium_takes_a_screenshot_and_prints_a_pdf(sample_page: Path) -> None:
    shot = sample_page.parent / "report.png"
    proc = _chromium(sample_page, f"--screenshot={shot}", "--window-size=1280,1600")
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (1280, 1600)
    assert len(data) > 50_000  # a page with charts and tables, not a blank one
    pdf = sample_page.parent / "report.pdf"
    proc = _chromium(sample_page, f"--print-to-pdf={pdf}", "--no-pdf-header-footer")
    assert proc.returncode == 0, proc.stderr[-2000:]
    content = pdf.read_bytes()
    assert content[:5] == b"%PDF-" and content.count(b"/Type /Page\n") + content.count(
        b"/Type/Page") + content.count(b"/Type /Page ") >= 1
