"""A cron job in slices reads like one job: `run --resume --max-requests K`, ten times, against
the sandbox on a real loopback socket, from one working directory as cron would run it.

It leaves one report (with its summary and HTML page), kept current by every slice; while the
job is under way, the rows not sent yet are "waiting" (the next slice sends them), apart from
the rows that need a person, in the stderr table, the summary, the HTML page and the rejects
file (which holds full review keys: only rows a person must fix belong there).
"""

from __future__ import annotations

import csv
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from . import CLI_TIMEOUT, FAST, SAMPLE, SAMPLE_EXPECTED, cli_env

pytestmark = pytest.mark.e2e

SLICE = 30  # requests per slice: the sample's 274 units take ten slices


def _slice(handle: Any, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "batch_toggle", "run", str(SAMPLE), "--resume",
         "--max-requests", str(SLICE), "--base-url", handle.base_url, *FAST,
         "--concurrency", "1", "--state", str(cwd / "state.sqlite"),
         "--rejects", "reports/fix-me.csv"],
        env=cli_env(handle.api_key), cwd=cwd, capture_output=True, text=True,
        timeout=CLI_TIMEOUT, stdin=subprocess.DEVNULL)


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_ten_cron_slices_leave_one_current_report_and_keep_waiting_rows_apart(
        sandbox_server: Any, tmp_path: Path) -> None:
    import json

    expected = json.loads(SAMPLE_EXPECTED.read_text(encoding="utf-8"))
    problems = sum(n for s, n in expected["status_counts"].items()
                   if s in ("invalid", "conflict", "failed", "mismatch"))
    reports = tmp_path / "reports"
    codes = []
    for n in range(1, 11):
        done = _slice(sandbox_server, tmp_path)
        codes.append(done.returncode)
        assert "Traceback" not in done.stderr
        (report,) = reports.glob("optouts_2026_11-*.csv")  # one report, whatever the slice
        assert sorted(p.name for p in reports.iterdir()) == sorted(
            [report.name, report.name + ".summary.json", report.name + ".html", "fix-me.csv"])
        rows = _rows(report)
        assert len(rows) == 300
        summary = json.loads((reports / (report.name + ".summary.json")).read_text())
        sent_so_far = sum(1 for r in rows if r["status"] in ("updated", "failed"))
        assert sent_so_far == min(n * SLICE, expected["requests_needed"])  # kept current
        unsent = sum(1 for r in rows if r["status"] == "not_attempted")
        rejects = _rows(reports / "fix-me.csv")
        html = (reports / (report.name + ".html")).read_text(encoding="utf-8")
        if done.returncode == 4:  # mid-job: the rows not sent yet are waiting, not problems
            assert unsent > 0 and summary["waiting"]["rows"] == unsent
            assert len(rejects) == summary["attention"]["rows"] < problems + 1
            assert 'id="waiting"' in html and f"Waiting: {unsent:,} rows" in html
            assert 'data-status="not_attempted"' not in html
            assert re.search(rf"^not_attempted +{unsent}  waiting: the next slice sends them$",
                             done.stderr, re.M), done.stderr
            assert re.search(rf"^waiting +{unsent} rows: the next slice \(run --resume\) "
                             r"sends them$", done.stderr, re.M)
            assert re.search(rf"^attention +{len(rejects)} rows need attention", done.stderr,
                             re.M)
        else:
            assert unsent == 0 and "waiting" not in summary
            assert len(rejects) == problems == summary["attention"]["rows"]
            assert 'id="waiting"' not in html
    assert codes == [4] * 9 + [1]
