"""Retry-After as real servers send it, through the real CLI against the sandbox on a socket:
absurd values, and HTTP dates read by a client whose clock is wrong."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from . import FAST, job_rows, run_cli, write_input
from .test_faked_clock import LIBFAKETIME, needs_faketime

pytestmark = pytest.mark.e2e


def test_a_retry_after_of_10_to_the_12_ends_the_run_resumably_with_a_complete_report(
        sandbox_server: Any, tmp_path: Path) -> None:
    jobs = sandbox_server.jobs[:6]
    sandbox_server.set_faults(scripted={jobs[2].job_id: ["429:1000000000000"]})
    src = write_input(tmp_path / "in.csv", job_rows(jobs))
    run = run_cli(sandbox_server, tmp_path, [src], *FAST, "--concurrency", "1")
    assert run.code == 4, run.stderr
    assert "Traceback" not in run.stderr
    assert len(run.rows) == 6
    assert run.summary is not None and run.summary["stopped"]["code"] == "budget_exhausted"
    assert run.summary["stopped"]["resume_after"] is None
    assert "stopped: Retry-After asks for more than a week" in run.stderr
    assert [r["status"] for r in run.rows[:2]] == ["updated", "updated"]
    assert {r["status"] for r in run.rows[2:]} == {"not_attempted"}


@needs_faketime
def test_an_http_date_retry_after_works_with_the_client_clock_two_hours_behind(
        make_sandbox_server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The wait is measured against the response's Date header, not the client's clock: a
    2-second Retry-After stays 2 seconds (it was read as 7,202 s, and the run gave up)."""
    server = make_sandbox_server(retry_after_style="http-date")
    jobs = server.jobs[:4]
    server.set_faults(scripted={jobs[1].job_id: ["429:2"]})
    src = write_input(tmp_path / "in.csv", job_rows(jobs))
    # The wall clock only: the monotonic clock (intervals) is the machine's own.
    monkeypatch.setenv("LD_PRELOAD", str(LIBFAKETIME))
    monkeypatch.setenv("FAKETIME", "-7200s")
    monkeypatch.setenv("FAKETIME_DONT_FAKE_MONOTONIC", "1")
    run = run_cli(server, tmp_path, [src], *FAST, "--concurrency", "1")
    assert run.code == 0, run.stderr
    assert run.statuses() == ["updated"] * 4
    assert run.summary is not None and run.summary["responses_429"] == 1
    assert run.elapsed < 30
