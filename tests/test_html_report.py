"""The HTML report beside every report: self-contained, escaped, keys masked, capped, printable.

The sample run is real (the CLI against the in-process sandbox, real SQLite, real files); the
page is then read with html.parser, the way CI without a browser can check what Chromium shows
(tests/e2e/test_html_chromium.py checks the same in a browser).
"""

from __future__ import annotations

import json
import os
import re
import stat
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from click.testing import CliRunner

from batch_toggle.cli.app import main
from batch_toggle.report.html import (
    attention_rows,
    html_path,
    mask_key,
    render_html,
    short_mask,
    write_html_report,
)
from batch_toggle.send.timeline import Timeline
from batch_toggle.vocab import OUTCOME_COLUMNS, REVIEW_KEY_MASK_PREFIX

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "sample_data" / "optouts_2026_11.csv"
EXPECTED = json.loads((REPO / "sample_data" / "optouts_2026_11.expected.json").read_text())
ATTENTION = {"invalid", "failed", "conflict", "mismatch", "not_attempted"}


class Page(HTMLParser):
    """What a reader of the page sees, collected: chart bars, attention rows, every URL."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.svg: list[str] = []  # id of the svg we are in
        self.bars: dict[str, dict[str, int]] = {}  # chart id -> key -> count
        self.timeline_rects: Counter[str] = Counter()
        self.attention: list[dict[str, str]] = []
        self.attention_cells: list[list[str]] = []
        self.in_attention_body = False
        self.cell: list[str] | None = None
        self.ids: set[str] = set()
        self.tags: Counter[str] = Counter()
        self.urls: list[str] = []
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        self.tags[tag] += 1
        if "id" in a:
            self.ids.add(a["id"])
        for name in ("src", "href", "action", "srcset"):
            if name in a:
                self.urls.append(a[name])
        if tag == "svg":
            self.svg.append(a.get("id", ""))
        if tag == "rect" and self.svg:
            chart = self.svg[-1]
            if "bar" in a.get("class", "").split():
                self.bars.setdefault(chart, {})[a["data-key"]] = int(a["data-count"])
            elif chart == "chart-timeline":
                self.timeline_rects[a.get("class", "")] += int(
                    a.get("data-count", "0")) if a.get("class") != "wait" else 1
        if tag == "tbody" and self._table == "attention-table":
            self.in_attention_body = True
        if tag == "table":
            self._table = a.get("id", "")
        if tag == "tr" and self.in_attention_body:
            self.attention.append(a)
            self.attention_cells.append([])
        if tag == "td" and self.in_attention_body:
            self.cell = []

    _table = ""

    def handle_endtag(self, tag: str) -> None:
        if tag == "svg" and self.svg:
            self.svg.pop()
        if tag == "tbody":
            self.in_attention_body = False
        if tag == "td" and self.cell is not None:
            self.attention_cells[-1].append("".join(self.cell))
            self.cell = None

    def handle_data(self, data: str) -> None:
        if self.cell is not None:
            self.cell.append(data)


def _run_sample(tmp_path: Path, *args: str) -> tuple[Any, Path]:
    report = tmp_path / "out" / "sample.csv"
    result = CliRunner().invoke(main, [
        "run", str(SAMPLE), "--sandbox", "--max-rps", "1000", "--report", str(report),
        "--state", str(tmp_path / "state.sqlite"), *args])
    return result, report


@pytest.fixture(scope="module")
def sample_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    """One live run of the sample against the in-process sandbox, shared by the page tests."""
    return _run_sample(tmp_path_factory.mktemp("sample"))


def test_every_run_writes_the_page_beside_the_report_0600(sample_run: tuple[Any, Path]) -> None:
    result, report = sample_run
    assert result.exit_code == 1, result.output  # the sample's bad rows need attention
    page = html_path(report)
    assert page == report.with_name("sample.csv.html")
    assert stat.S_IMODE(page.stat().st_mode) == 0o600
    assert not [p for p in page.parent.iterdir() if p.name.startswith(".")]  # no temp left
    summary = json.loads(report.with_name("sample.csv.summary.json").read_text())
    assert summary["html_report"]["path"] == str(page)
    assert f"html report {page}".split() == next(
        line.split() for line in result.output.splitlines() if line.startswith("html report"))


def test_the_status_and_error_code_charts_show_the_runs_counts(
        sample_run: tuple[Any, Path]) -> None:
    page = Page(html_path(sample_run[1]).read_text(encoding="utf-8"))
    assert page.bars["chart-status"] == EXPECTED["status_counts"]
    assert page.bars["chart-error-code"] == EXPECTED["error_code_counts"]


def test_the_timeline_counts_every_request_sent(sample_run: tuple[Any, Path]) -> None:
    summary = json.loads(sample_run[1].with_name("sample.csv.summary.json").read_text())
    page = Page(html_path(sample_run[1]).read_text(encoding="utf-8"))
    assert "chart-timeline" in page.ids
    assert page.timeline_rects["req"] == summary["requests_sent"] == EXPECTED["requests_needed"]
    assert sum(summary["timeline"]["requests"]) == summary["requests_sent"]


def test_the_attention_table_lists_the_samples_bad_rows_with_masked_keys(
        sample_run: tuple[Any, Path]) -> None:
    text = html_path(sample_run[1]).read_text(encoding="utf-8")
    page = Page(text)
    expected = [(str(r["row"]), r["status"]) for r in EXPECTED["rows"] if r["status"] in ATTENTION]
    assert [(a["data-row"], a["data-status"]) for a in page.attention] == expected
    keys = [cells[4] for cells in page.attention_cells]
    assert all(re.fullmatch(r"(\*\*\*\*.{1,4})?", k) for k in keys), keys
    assert "****d53e" in keys  # row 65's key, shown by its last 4 characters
    # No full review key of the input reaches the page, whatever column it sits in.
    full_keys = set(re.findall(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-"
                               r"[0-9a-fA-F]{12}", _review_key_cells(SAMPLE)))
    assert full_keys and not [k for k in full_keys if k.lower() in text.lower()]


def _review_key_cells(path: Path) -> str:
    import csv
    with open(path, encoding="utf-8", newline="") as handle:
        return " ".join(row["Review Key"] for row in csv.DictReader(handle))


def test_the_page_is_self_contained_no_script_no_network(sample_run: tuple[Any, Path]) -> None:
    text = html_path(sample_run[1]).read_text(encoding="utf-8")
    page = Page(text)
    assert page.tags["script"] == 0 and page.tags["link"] == 0 and page.tags["img"] == 0
    assert page.urls == []
    assert "@import" not in text and "url(" not in text
    # The only http(s) string is the SVG namespace, which is a name, not a fetch.
    assert set(re.findall(r"https?://[^\s\"'<>]+", text)) == {"http://www.w3.org/2000/svg"}
    assert "default-src 'none'" in text  # a CSP forbids scripts and fetches even if injected


def test_the_page_carries_the_runs_evidence(sample_run: tuple[Any, Path]) -> None:
    report = sample_run[1]
    summary = json.loads(report.with_name("sample.csv.summary.json").read_text())
    text = html_path(report).read_text(encoding="utf-8")
    for fact in (summary["run_id"], summary["inputs"][0]["sha256"], summary["report"]["sha256"],
                 summary["version"], summary["started_at"], summary["finished_at"],
                 summary["user"], summary["host"], summary["verdict"]):
        assert str(fact) in text
    assert 'data-exit-code="1"' in text
    assert "--on-conflict" in text and "2500/h" in text


def test_the_page_is_written_for_paper(sample_run: tuple[Any, Path]) -> None:
    text = html_path(sample_run[1]).read_text(encoding="utf-8")
    assert "@media print" in text
    assert "thead { display: table-header-group; }" in text  # headers repeat on every page
    assert "break-inside: avoid" in text
    assert "print-color-adjust: exact" in text  # the bars keep their colour on paper


def test_validate_page_says_nothing_was_sent(tmp_path: Path) -> None:
    report = tmp_path / "v.csv"
    result = CliRunner().invoke(main, ["validate", str(SAMPLE), "--report", str(report),
                                       "--state", str(tmp_path / "none.sqlite")])
    assert result.exit_code == 1, result.output
    page = Page(html_path(report).read_text(encoding="utf-8"))
    assert "timeline-note" in page.ids and "chart-timeline" not in page.ids
    assert page.bars["chart-status"]["dry_run"] == EXPECTED["requests_needed"]


def test_no_html_writes_no_page(tmp_path: Path) -> None:
    report = tmp_path / "v.csv"
    result = CliRunner().invoke(main, ["validate", str(SAMPLE), "--report", str(report),
                                       "--no-html", "--state", str(tmp_path / "none.sqlite")])
    assert result.exit_code == 1
    assert report.exists() and not html_path(report).exists()
    assert "html_report" not in json.loads(report.with_name("v.csv.summary.json").read_text())


def test_a_page_that_cannot_be_written_costs_only_a_warning(tmp_path: Path) -> None:
    report = tmp_path / "v.csv"
    html_path(report).mkdir()  # a directory where the page should go
    result = CliRunner().invoke(main, ["validate", str(SAMPLE), "--report", str(report),
                                       "--state", str(tmp_path / "none.sqlite")])
    assert result.exit_code == 1  # the run's own verdict, unchanged
    assert "warning: the HTML report was not written" in result.output
    assert report.exists() and report.with_name("v.csv.summary.json").exists()


# --- rendering from a hand-made report ------------------------------------------------------


def _report(rows: list[dict[str, Any]], key_column: str = "Review Key") -> pa.Table:
    columns: dict[str, list[Any]] = {key_column: [r.get("key") for r in rows]}
    for name in OUTCOME_COLUMNS:
        columns[name] = [r.get(name) for r in rows]
    return pa.table({k: pa.array(v, pa.string() if k != "source_row" else pa.int64())
                     for k, v in columns.items()})


def _summary(**extra: Any) -> dict[str, Any]:
    return {"command": "run", "run_id": "r1", "version": "0.1.0", "exit_code": 1,
            "verdict": "attention", "rows": 1,
            "inputs": [{"file": "in.csv", "sha256": "ab", "rows": 1, "encoding": "utf-8",
                        "columns": {"review_key": "Review Key"}}],
            "counts_by_status": {"failed": 1}, "counts_by_error_code": {"job_not_found": 1},
            **extra}


HOSTILE = '<script>alert("x")</script><img src=x onerror=alert(1)>'


def test_text_from_the_input_is_escaped_everywhere() -> None:
    row = {"source_file": f"{HOSTILE}.csv", "source_row": 1, "job_id": HOSTILE,
           "update_target": HOSTILE, "status": "failed", "error_code": HOSTILE,
           "error_message": HOSTILE, "key": HOSTILE}
    summary = _summary(inputs=[{"file": HOSTILE, "sha256": HOSTILE, "rows": 1,
                                "columns": {"review_key": HOSTILE}}],
                       counts_by_error_code={HOSTILE: 1}, options={"map": {"job_id": HOSTILE}},
                       notes=[HOSTILE], verdict=HOSTILE)
    text = render_html(summary, _report([row]))
    page = Page(text)
    assert page.tags["script"] == 0 and page.tags["img"] == 0 and page.urls == []
    assert "&lt;script&gt;" in text
    assert HOSTILE not in text


def test_a_full_review_key_is_masked_even_in_a_column_the_report_did_not_mask() -> None:
    key = "0274b644-fb7d-4b1f-a4cb-014074a4473a"
    row = {"source_file": "in.csv", "source_row": 1, "status": "failed", "key": key}
    text = render_html(_summary(), _report([row]))
    assert key not in text and "4473a" not in text
    assert "<td class=\"mono nowrap\">****473a</td>" in text
    assert short_mask(key) == short_mask(REVIEW_KEY_MASK_PREFIX + "473a") == "****473a"
    assert mask_key(f"  {key} ") == REVIEW_KEY_MASK_PREFIX + "473a"
    assert mask_key(REVIEW_KEY_MASK_PREFIX + "473a") == REVIEW_KEY_MASK_PREFIX + "473a"
    assert mask_key(None) == "" and mask_key("  ") == ""


def test_a_review_key_column_named_like_an_outcome_column_is_found() -> None:
    summary = _summary(inputs=[{"file": "in.csv", "columns": {"review_key": "status"}}])
    table = _report([{"status": "failed", "key": "ffff"}], key_column="input_status")
    rows, total = attention_rows(summary, table)
    assert total == 1 and rows[0]["_key"] == REVIEW_KEY_MASK_PREFIX + "ffff"


def test_the_attention_table_is_capped_with_a_note_saying_how_many_more() -> None:
    rows = [{"source_file": "in.csv", "source_row": i, "status": "invalid" if i % 2 else "updated"}
            for i in range(1, 3001)]
    page = Page(render_html(_summary(), _report(rows), limit=1000))
    assert len(page.attention) == 1000
    assert [a["data-row"] for a in page.attention[:2]] == ["1", "3"]
    assert "attention-more" in page.ids
    text = render_html(_summary(), _report(rows), limit=1000)
    assert "Showing the first 1,000 of 1,500: 500 more" in text and "--rejects" in text


def test_no_row_needing_attention_says_so() -> None:
    text = render_html(_summary(counts_by_status={"updated": 1}), _report(
        [{"source_file": "in.csv", "source_row": 1, "status": "updated"}]))
    assert "attention-table" not in Page(text).ids
    assert "None: no row is invalid" in text


def test_the_estimate_shows_its_range_while_no_reply_latency_was_known() -> None:
    row = [{"source_file": "in.csv", "source_row": 1, "status": "updated"}]
    plan = {"requests_needed": 31204, "estimated_duration": "12 h 16 min", "rate": "2500/h",
            "estimated_duration_range": "12 h 16 min to 12 h 19 min"}
    assumed = render_html(_summary(plan={**plan, "latency_source": "assumed"}), _report(row))
    assert ("12 h 16 min at 2500/h (12 h 16 min to 12 h 19 min, as replies take 20 ms to 1 s)"
            in assumed)
    known = render_html(_summary(plan={**plan, "latency_source": "earlier replies"}),
                        _report(row))
    assert "12 h 16 min at 2500/h" in known and "as replies take" not in known


def test_write_html_report_replaces_atomically_with_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "r.csv.html"
    path.write_text("old")
    os.chmod(path, 0o644)
    write_html_report(_summary(), _report([]), path)
    assert path.read_text().startswith("<!DOCTYPE html>")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


# --- the runner's timeline ------------------------------------------------------------------


def test_timeline_memory_stays_bounded_and_totals_survive_merging() -> None:
    timeline = Timeline(started_mono=100.0, started_wall=1_800_000_000.0)
    for i in range(100_000):  # 100,000 requests spread over ~28 hours
        timeline.request(100.0 + i)
        if i % 1000 == 0:
            timeline.rate_limited(100.0 + i)
    timeline.waited(150.0, 3750.0)  # an hour's wait for the window
    data = timeline.to_dict()
    assert len(data["requests"]) <= Timeline.MAX_BUCKETS
    assert sum(data["requests"]) == 100_000
    assert sum(data["responses_429"]) == 100
    assert sum(data["wait_s"]) == pytest.approx(3600.0)
    assert data["bucket_s"] * len(data["requests"]) >= 100_000
    assert data["started_at"].startswith("2027-01-15T08:00:00")


def test_timeline_spreads_a_wait_over_the_buckets_it_covers() -> None:
    timeline = Timeline(started_mono=0.0, started_wall=0.0, width=1.0)
    timeline.waited(0.5, 3.25)
    assert timeline.to_dict()["wait_s"] == [0.5, 1.0, 1.0, 0.25]
