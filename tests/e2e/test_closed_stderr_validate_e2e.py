"""`validate` (and a dry run) with stderr already closed by its reader (`... 2>&1 | head -0`,
a cron wrapper that went away): the notices and the summary never raise, the report is
written, the exit code is the job's own. The run path is covered by
test_progress_closed_stderr_e2e.py; validate has no progress bar, so its notices took another
path (click.echo), which raised BrokenPipeError: a traceback and exit 1."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from . import CLI_TIMEOUT, cli_env, job_rows, write_input

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("command", [["validate"], ["run", "--dry-run", "--base-url", "BASE"]],
                         ids=["validate", "dry-run"])
def test_a_closed_stderr_changes_nothing_but_what_is_seen(
        sandbox_server: Any, tmp_path: Path, command: list[str]) -> None:
    src = write_input(tmp_path / "in.csv", job_rows(sandbox_server.jobs[:5]))
    report = tmp_path / "report.csv"
    read_end, write_end = os.pipe()
    os.close(read_end)  # nobody will read: every write to it fails with EPIPE
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "batch_toggle",
             *(sandbox_server.base_url if arg == "BASE" else arg for arg in command),
             str(src), "--report", str(report), "--state", str(tmp_path / "state.sqlite")],
            env=cli_env(sandbox_server.api_key), cwd=tmp_path, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=write_end, timeout=CLI_TIMEOUT)
    finally:
        os.close(write_end)
    assert proc.returncode == 0, proc.stdout
    assert report.exists() and report.with_name("report.csv.summary.json").exists()
    assert sandbox_server.requests() == []


def test_a_run_started_without_stderr_finishes_and_reports(
        sandbox_server: Any, tmp_path: Path) -> None:
    """`2>&-`: Python starts with sys.stderr None; the progress choice and every notice must
    cope (the terminal check raised AttributeError: a traceback into nowhere, exit 1)."""
    src = write_input(tmp_path / "in.csv", job_rows(sandbox_server.jobs[:5]))
    report = tmp_path / "report.csv"
    proc = subprocess.run(
        [sys.executable, "-m", "batch_toggle", "run", str(src), "--report", str(report),
         "--state", str(tmp_path / "state.sqlite"), "--base-url", sandbox_server.base_url,
         "--max-rps", "500"],
        env=cli_env(sandbox_server.api_key), cwd=tmp_path, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=None, pass_fds=(), timeout=CLI_TIMEOUT,
        preexec_fn=lambda: os.close(2))
    assert proc.returncode == 0, proc.stdout
    assert report.exists() and len(sandbox_server.requests()) == 5
