"""--events into a pipe whose reader went away (`--events /dev/stdout | head -1`).

The real CLI in a subprocess against the sandbox on a loopback socket, its stdout a pipe that
the test closes: before the first event, or once the first event (the plan) has been read, while
rows are still to be sent (the budget holds half of them back for a window). Events are written
from inside the run (the send loop, the committer): a failed write must not become the run's
failure. The run finishes, writes its report and summary, says once on stderr that the events
stopped, and exits with the code its rows call for (0 here), never 1 with a traceback.
"""

from __future__ import annotations

import os
import select
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from . import CLI_TIMEOUT, FAST, cli_command, cli_env, collect, job_rows, puts, write_input

pytestmark = pytest.mark.e2e


def _read_line(proc: subprocess.Popen[bytes], timeout: float) -> bytes:
    """The first line the CLI wrote to its stdout (bounded wait)."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    seen = b""
    deadline = time.monotonic() + timeout
    while b"\n" not in seen:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no line within {timeout:g} s: {seen!r}")
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                raise AssertionError(f"the CLI closed its stdout first: {seen!r}")
            seen += chunk
    return seen


@pytest.mark.parametrize("when", ["at_once", "mid_run"])
def test_events_into_a_closed_pipe_neither_fail_nor_change_the_run(
        sandbox_server: Any, tmp_path: Path, when: str) -> None:
    seed = sandbox_server.jobs[:6]
    src = write_input(tmp_path / "in.csv", job_rows(seed))
    # 3 requests per 2 s: three rows go at once, the other three a window later.
    cmd = cli_command(sandbox_server, tmp_path, [src], *FAST, "--rate", "3/2s",
                      "--no-progress", "--events", "/dev/stdout")
    err_path = tmp_path / "stderr.txt"
    started = time.monotonic()
    with err_path.open("wb") as err:
        proc = subprocess.Popen(cmd, env=cli_env(sandbox_server.api_key), cwd=tmp_path,
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err)
        try:
            first = _read_line(proc, CLI_TIMEOUT) if when == "mid_run" else b""
            closed_at = time.time()
            proc.stdout.close()  # type: ignore[union-attr]  # the reader quits
            try:
                code = proc.wait(timeout=CLI_TIMEOUT)
            except subprocess.TimeoutExpired:
                raise AssertionError("the run hung after its events pipe closed") from None
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    stderr = err_path.read_text(encoding="utf-8")

    run = collect(tmp_path, code, "", stderr, time.monotonic() - started)
    assert "Traceback" not in stderr, stderr
    assert run.code == 0, stderr  # every row updated: the exit code its rows call for
    assert run.statuses() == ["updated"] * 6
    assert run.summary is not None and run.summary["exit_code"] == 0
    warnings = [line for line in stderr.splitlines() if "--events /dev/stdout" in line]
    assert warnings == ["warning: --events /dev/stdout: cannot write (Broken pipe); no more "
                        "events are written, the run goes on"], stderr
    received = puts(sandbox_server)
    assert len(received) == 6
    if when == "mid_run":
        assert b'"event": "plan"' in first
        # The case under test happened: rows were sent (and their events due) after the close.
        assert any(r["at"] > closed_at for r in received)
