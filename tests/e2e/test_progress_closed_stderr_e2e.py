"""--progress when stderr goes away mid-run (`batch-toggle run ... --progress 2>&1 | head -3`).

The real CLI in a subprocess against the sandbox on a loopback socket; its stdout and stderr are
one pipe, which the test closes once the bar has been drawn, while rows are still to be sent
(the budget holds the second half back for a window). The run must neither hang nor die: it
finishes, writes its report, summary and events, and exits with the code its rows call for.
A traceback could not be seen on the closed pipe; an uncaught exception shows as exit 1, a
failed flush of stderr at the interpreter's exit as 120, and a hang as the timeout.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from . import CLI_TIMEOUT, FAST, cli_command, cli_env, collect, job_rows, puts, write_input

pytestmark = pytest.mark.e2e


def _read_until(proc: subprocess.Popen[bytes], marker: bytes, timeout: float) -> bytes:
    """What the CLI wrote to its pipe, up to and including `marker` (bounded wait)."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    seen = b""
    deadline = time.monotonic() + timeout
    while marker not in seen:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no {marker!r} within {timeout:g} s: {seen!r}")
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                raise AssertionError(f"the CLI closed its output before {marker!r}: {seen!r}")
            seen += chunk
    return seen


@pytest.mark.parametrize("unbuffered", [False, True], ids=["buffered", "unbuffered"])
def test_a_closed_stderr_neither_hangs_nor_changes_the_run(sandbox_server: Any, tmp_path: Path,
                                                           unbuffered: bool) -> None:
    seed = sandbox_server.jobs[:6]
    src = write_input(tmp_path / "in.csv", job_rows(seed))
    events = tmp_path / "events.jsonl"
    # 3 requests per 2 s: the first three go at once, the other three a window later, after
    # the test has closed the pipe; -v adds lines that also meet the closed pipe.
    cmd = cli_command(sandbox_server, tmp_path, [src], *FAST, "--rate", "3/2s", "--progress",
                      "-v", "--events", str(events))
    env = cli_env(sandbox_server.api_key)
    if not unbuffered:  # as from a shell: stderr line-buffered, a failed write stays pending
        env.pop("PYTHONUNBUFFERED", None)
    started = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        shown = _read_until(proc, b"/6 ", CLI_TIMEOUT)  # the bar, drawn at the first commit
        closed_at = time.time()
        proc.stdout.close()  # type: ignore[union-attr]  # `| head -3` exits
        try:
            code = proc.wait(timeout=CLI_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"the run hung after its stderr closed (shown: {shown!r})") from None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    run = collect(tmp_path, code, "", "", time.monotonic() - started)
    received = puts(sandbox_server)
    # The case under test happened: rows were sent (and committed) after the pipe closed.
    assert len(received) == 6
    assert any(r["at"] > closed_at for r in received), (closed_at, [r["at"] for r in received])
    assert run.code == 0  # every row updated: not 1 (a traceback), not 120 (a failed flush)
    assert run.statuses() == ["updated"] * 6
    assert run.summary is not None and run.summary["requests_sent"] == 6
    logged = [json.loads(line) for line in events.read_text(encoding="utf-8").splitlines()]
    assert len([e for e in logged if e["event"] == "row"]) == 6  # none lost with the bar
    (finish,) = [e for e in logged if e["event"] == "finish"]
    assert finish["exit_code"] == 0
