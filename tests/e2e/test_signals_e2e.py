"""SIGINT and SIGTERM mid-run: the CLI stops taking rows, lets in-flight ones finish, writes a
complete report and its summary, and exits 130, promptly.

The CLI runs in a subprocess against the sandbox on a loopback socket with some latency, so the
signal lands while requests are in flight; the test waits (bounded polling of the server's
request log, never a sleep) until requests arrive before sending it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import tomllib
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from . import (
    CLI_TIMEOUT,
    FAST,
    REPO,
    SAMPLE,
    SIGNALS,
    cli_env,
    finish,
    job_rows,
    puts,
    run_cli,
    start_cli,
    wait_until,
    write_input,
)

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


# --- a signal during start-up, before any run ----------------------------------------------
#
# Sending a signal "as soon as the process is spawned" cannot be made to land anywhere in
# particular: it mostly lands in the interpreter's own start-up, the one window the CLI cannot
# cover (see batch_toggle/cli/entry.py), so nothing could be asserted of it. Instead the child's
# sitecustomize (test code, on the child's PYTHONPATH; the product has no such hook) sends the
# process a real signal at a known point: when a given module is first imported. os.kill to
# oneself delivers it before os.kill returns, so the point is exact and no sleep is involved.
# It is sent from inside an exec() of a string, as when it lands while @dataclass builds a
# class: under `python -m` CPython remembers that and would end the process by SIGINT (exit -2)
# after the CLI handled the interrupt, unless told otherwise (entry._forget_handled_interrupt).

TRIP = """\
import os, signal, sys


class _Trip:
    \"\"\"Send this process {sig} when {module!r} is first imported (once).\"\"\"

    def find_spec(self, name, path=None, target=None):
        if name == {module!r}:
            sys.meta_path.remove(self)
            with open({marker!r}, "w") as fh:
                fh.write(name)
            exec("os.kill(os.getpid(), signal.{sig})")
        return None


sys.meta_path.insert(0, _Trip())
"""


def _console_script() -> list[str]:
    """What the installed `batch-toggle` script does, from pyproject.toml's [project.scripts]."""
    with (REPO / "pyproject.toml").open("rb") as fh:
        target = tomllib.load(fh)["project"]["scripts"]["batch-toggle"]
    module, _, func = target.partition(":")
    return [sys.executable, "-c", f"import sys; from {module} import {func}; sys.exit({func}())"]


ENTRIES = {"python -m": [sys.executable, "-m", "batch_toggle"], "console script": None}
# point: (the module whose first import trips the signal, the command, "{tmp}" the test's dir)
POINTS = {
    # importing the CLI (click, pyarrow, the jobs layer): most of a start-up's time
    "importing": ("batch_toggle.cli.app",
                  ["validate", str(SAMPLE), "--no-html", "--report", "{tmp}/report.csv"]),
    # click resolving a lazy command: inside click's main, before the command's body
    "parsing": ("batch_toggle.cli.status_cmd", ["status", "--state", "{tmp}/state.sqlite"]),
}


@pytest.mark.parametrize("point", POINTS)
@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize("sig", SIGNALS, ids=[s.name for s in SIGNALS])
def test_a_signal_during_start_up_exits_130_with_one_line(
    tmp_path: Path, sig: signal.Signals, entry: str, point: str
) -> None:
    module, args = POINTS[point]
    marker = tmp_path / "tripped"
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        TRIP.format(module=module, marker=str(marker), sig=sig.name), encoding="utf-8")
    env = cli_env(None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH")]))
    command = [*(ENTRIES[entry] or _console_script()),
               *(a.replace("{tmp}", str(tmp_path)) for a in args)]

    proc = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=CLI_TIMEOUT, stdin=subprocess.DEVNULL)

    assert marker.read_text() == module, "the signal was never sent"
    assert proc.returncode == 130, proc.stderr
    # One line (while parsing, after the blank line click writes to close a terminal's ^C).
    assert proc.stderr.strip() == "batch-toggle: interrupted", proc.stderr
    assert proc.stdout == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site", "tripped"], "nothing written"


# --- a signal once every request is answered, while the report is written ------------------

COPIES = 4000  # each unit's row again and again: duplicates, so a long report and few requests


def _row_events(path: Path) -> int:
    if not path.exists():
        return 0
    return path.read_text(encoding="utf-8").count('"event": "row"')


@pytest.mark.parametrize("sig", SIGNALS, ids=[s.name for s in SIGNALS])
def test_a_signal_while_the_run_finishes_still_writes_the_report_and_exits_130(
    sandbox_server: Any, tmp_path: Path, sig: signal.Signals
) -> None:
    """the product contract: a signal means stop taking rows, let in-flight ones finish, write the
    report, exit 130, wherever it lands. Here it lands after the last request reached the
    server: the run is committing its last outcomes, closing its connections or writing a
    report of 80,000 rows (the duplicates need no request, so the sending is over at once)."""
    units = 20
    rows = job_rows(sandbox_server.jobs[:units]) * COPIES
    src = write_input(tmp_path / "in.csv", rows)
    events = tmp_path / "events.jsonl"
    started = time.monotonic()
    proc = start_cli(sandbox_server, tmp_path, [src], *FAST, "--concurrency", "4",
                     "--events", str(events))

    # Every request reached the server, and every answer is committed (its "row" event is
    # out): the sending part is over or ending, and the report is next.
    wait_until(lambda: len(puts(sandbox_server)) >= units or proc.poll() is not None, 30,
               "every unit sent")
    wait_until(lambda: _row_events(events) >= units or proc.poll() is not None, 30,
               "every outcome committed")
    assert proc.poll() is None, "the run ended before the signal could be sent"
    os.kill(proc.pid, sig)
    run = finish(proc, tmp_path, started)

    assert run.code == 130, run.stderr
    assert "Traceback" not in run.stderr
    assert "batch-toggle: interrupted" not in run.stderr, "the run's own end, not an escape"
    # A complete report: one row per input row; every unit was answered before the signal.
    assert len(run.rows) == len(rows)
    counts = Counter(r["status"] for r in run.rows)
    assert counts == {"updated": units, "duplicate": len(rows) - units}
    assert len(puts(sandbox_server)) == units
    # The summary, and the stderr's last word, say it was interrupted.
    assert run.summary is not None
    assert run.summary["exit_code"] == 130
    assert run.summary["stopped"]["code"] == "interrupted"
    assert sig.name in run.summary["stopped"]["message"]
    assert f"stopped: interrupted by {sig.name}" in run.stderr
    # The events tell the stop, then the finish with the same exit code.
    kinds = [json.loads(line) for line in events.read_text(encoding="utf-8").splitlines()]
    names = [e["event"] for e in kinds]
    assert names.count("row") == units
    assert names.count("stop") == 1 and names[-1] == "finish"
    assert names.index("stop") < names.index("finish")
    assert kinds[-1]["exit_code"] == 130
    # Resumable: the next --resume continues this run, sends nothing again, and ends 0.
    again = run_cli(sandbox_server, tmp_path, [src], *FAST, "--resume")
    assert again.code == 0, again.stderr
    assert "resume: run " in again.stderr
    assert len(puts(sandbox_server)) == units
    assert len(again.rows) == len(rows)
