"""SIGINT and SIGTERM mid-run: the CLI stops taking rows, lets in-flight ones finish, writes a
complete report and its summary, and exits 130, promptly.

The CLI runs in a subprocess against the sandbox on a loopback socket with some latency, so the
signal lands while requests are in flight; the test waits (bounded polling of the server's
request log, never a sleep) until requests arrive before sending it.
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from . import FAST, SIGNALS, finish, job_rows, puts, start_cli, wait_until, write_input

pytestmark = pytest.mark.e2e

PROMPT = 5.0  # seconds from the signal to the exit: in-flight replies take 40 ms here


@pytest.mark.parametrize("sig", SIGNALS, ids=[s.name for s in SIGNALS])
def test_a_signal_mid_run_leaves_a_complete_report_and_exits_130(
    sandbox_server: Any, tmp_path: Path, sig: signal.Signals
) -> None:
    sandbox_server.set_faults(latency_ms=40)
    units = 300  # about 3 s at concurrency 4: the signal comes long before the end
    src = write_input(tmp_path / "in.csv", job_rows(sandbox_server.jobs[:units]))
    started = time.monotonic()
    proc = start_cli(sandbox_server, tmp_path, [src], *FAST, "--concurrency", "4")

    wait_until(lambda: len(puts(sandbox_server)) >= 12, 20, "the first requests")
    os.kill(proc.pid, sig)
    signalled = time.monotonic()
    run = finish(proc, tmp_path, started)
    took = time.monotonic() - signalled

    assert run.code == 130, run.stderr
    assert took < PROMPT, f"exit {took:.1f} s after {sig.name}"
    assert "Traceback" not in run.stderr
    # Complete: one row per input row; what the server answered is `updated`, the rest unsent.
    assert len(run.rows) == units
    received = puts(sandbox_server)
    assert 12 <= len(received) < units
    counts = Counter((r["status"], r["error_code"]) for r in run.rows)
    assert counts == {("updated", ""): len(received),
                      ("not_attempted", "interrupted"): units - len(received)}
    assert {r["job_id"] for r in run.by_status("updated")} == {r["job_id"] for r in received}
    # The summary is there, says so, and the stderr says how to go on.
    assert run.summary is not None
    assert run.summary["exit_code"] == 130
    assert run.summary["stopped"]["code"] == "interrupted"
    assert run.summary["requests_sent"] == len(received)
    assert "--resume" in run.stderr
