"""Clocks that disagree between runs on one state store, end to end.

Each run is the real CLI in a subprocess, its clocks moved by Debian's libfaketime (`make test`
installs it; without it these tests skip), against the sandbox on a real loopback socket whose
own clock is the true one. Two ways of moving a run's clock:

* `FAKETIME=+1h` alone moves every clock of the process, the monotonic one included (this
  libfaketime then reports CLOCK_MONOTONIC as the faked wall time): the run looks as if it
  happened an hour later by every measure. That is how "5 h later" is staged.
* `FAKETIME=+1h` with `FAKETIME_DONT_FAKE_MONOTONIC=1` moves only the wall clock: what an NTP
  step or an operator's `date -s` does to a machine between two runs.
"""

from __future__ import annotations

import subprocess
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from . import (
    CLI_TIMEOUT,
    FAST,
    LIBFAKETIME,
    CliRun,
    cli_command,
    cli_env,
    collect,
    max_in_window,
    needs_faketime,
    write_input,
)

pytestmark = pytest.mark.e2e



def faked_run(handle: Any, tmp_path: Path, inputs: Sequence[Path], *extra: str,
              offset: str | None = None, wall_only: bool = False,
              command: str = "run", timeout: float = CLI_TIMEOUT) -> CliRun:
    """`batch-toggle <command>` to completion with its clocks moved by `offset` (libfaketime's
    syntax: "+1h", "-3600"); `wall_only` leaves the monotonic clock alone."""
    env = cli_env(handle.api_key)
    if offset is not None:
        env.update(LD_PRELOAD=str(LIBFAKETIME), FAKETIME=offset, FAKETIME_NO_CACHE="1")
        if wall_only:
            env["FAKETIME_DONT_FAKE_MONOTONIC"] = "1"
    cmd = cli_command(handle, tmp_path, inputs, *extra)
    cmd[3] = command
    started = time.monotonic()
    proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)
    return collect(tmp_path, proc.returncode, proc.stdout, proc.stderr,
                   time.monotonic() - started)


def api_requests(handle: Any) -> list[dict[str, Any]]:
    return [r for r in handle.requests() if r["path"].startswith("/api/")]


def client_with_jobs(handle: Any, n: int) -> tuple[str, list[Any]]:
    """A seeded client with at least `n` jobs, and `n` of them."""
    by_client: dict[str, list[Any]] = {}
    for job in handle.jobs:
        by_client.setdefault(job.client_id, []).append(job)
    client, jobs = next((c, js) for c, js in by_client.items() if len(js) >= n)
    return client, jobs[:n]


# --- defect 1: the latest confirmation is the latest written, whatever the clocks said ---------


@needs_faketime
def test_an_opt_out_stays_blocked_after_an_earlier_run_with_a_fast_clock(
        sandbox_server: Any, tmp_path: Path) -> None:
    """Run A (its clock an hour fast) sets client C's default true through job J1; run B (true
    time) opts C out through J2; run C asks for true through J3. B's opt-out is the latest
    confirmation: C is `resubscribe_blocked` and nothing is sent, although A's confirmation
    carries the later time. (Run A also sets J3's own state, so that the ledger knows J3
    belongs to C: a job it never saw cannot be tied to a client without asking Logis.)"""
    srv = sandbox_server
    client, (j1, j2, j3) = client_with_jobs(srv, 3)
    a = faked_run(srv, tmp_path, [write_input(tmp_path / "a.csv", [
        [j1.job_id, j1.review_key, "true", "client"],
        [j3.job_id, j3.review_key, "true", "job"]])], *FAST, offset="+3600s")
    assert a.code == 0 and a.statuses() == ["updated"] * 2, a.stderr
    b = faked_run(srv, tmp_path, [write_input(tmp_path / "b.csv", [
        [j2.job_id, j2.review_key, "false", "client"]])], *FAST)
    assert b.code == 0 and b.statuses() == ["updated"], b.stderr
    assert srv.client_state(client) is False
    sent_before = len(api_requests(srv))

    c = faked_run(srv, tmp_path, [write_input(tmp_path / "c.csv", [
        [j3.job_id, j3.review_key, "true", "client"]])], *FAST)

    assert c.code == 1, c.stderr
    assert [(r["status"], r["error_code"]) for r in c.rows] == [
        ("conflict", "resubscribe_blocked")]
    assert f"through job {j2.job_id}" in c.rows[0]["error_message"]
    assert len(api_requests(srv)) == sent_before  # nothing sent
    assert srv.client_state(client) is False


# --- defect 2: the daily window's history survives a run that has no daily limit ---------------


@needs_faketime
def test_the_daily_limit_holds_across_an_intervening_audit_without_one(
        sandbox_server: Any, tmp_path: Path) -> None:
    """3 sends under --daily-limit 5, then (3 h later) a 1-row audit without a daily limit,
    then (5 h after the first) another --daily-limit 5 run: 4 requests of the day are on record
    (the audit's read counts too), so it sends 1 and stops; the server saw 5 in the day. The
    audit used to prune the log to 2 x its own longest window (2 h) and the last run sent 4.

    Every run's clocks move together (monotonic included): "3 h later" by every measure."""
    srv = sandbox_server
    jobs = srv.jobs[:8]
    first = faked_run(srv, tmp_path, [write_input(tmp_path / "first.csv", [
        [j.job_id, j.review_key, "false", "job"] for j in jobs[:3]])], *FAST,
        "--daily-limit", "5", offset="+0")
    assert first.code == 0 and first.statuses() == ["updated"] * 3, first.stderr
    audit = faked_run(srv, tmp_path, [write_input(tmp_path / "audit.csv", [
        [jobs[3].job_id, jobs[3].review_key, "false", "job"]])], *FAST, command="audit",
        offset="+3h")
    assert audit.code == 0 and len(audit.rows) == 1, audit.stderr
    assert len(api_requests(srv)) == 4

    last = faked_run(srv, tmp_path, [write_input(tmp_path / "last.csv", [
        [j.job_id, j.review_key, "false", "job"] for j in jobs[4:8]])], *FAST,
        "--daily-limit", "5", "--stop-after", "3s", offset="+5h")

    assert last.code == 4, last.stderr  # stopped early (--stop-after), resumable
    assert Counter(last.statuses()) == {"updated": 1, "not_attempted": 3}
    assert len(api_requests(srv)) == 5
    assert all(r["status"] == 200 for r in api_requests(srv))


# --- point 5: a wall clock stepped between two runs of one boot -------------------------------


WINDOW, LIMIT = 6.0, 10
HOLD = WINDOW * 1.02  # how long the client holds a slot after its reply: PERIOD plus the margin
# Seconds from a CLI process's start to its first request, at most (imports, planning, the
# store), with room for a loaded machine; well under a window, so a stall shows.
START_UP = 4.5


def first_free_slot(earlier: list[float], start: float) -> float:
    """When the client's budget has a free slot for a run starting at `start`, given the
    server's arrival times of every earlier request (a reply comes right after on loopback)."""
    held = sorted(t + HOLD for t in earlier if t + HOLD > start)
    return start if len(held) < LIMIT else held[len(held) - LIMIT]


@needs_faketime
def test_a_wall_clock_stepped_an_hour_either_way_between_runs_neither_bursts_nor_stalls(
        make_sandbox_server: Any, tmp_path: Path) -> None:
    """A first run fills the server's window; a second run on the same store starts right
    after with the wall clock an hour ahead, a third with it an hour behind (the monotonic
    clock untouched: what an NTP step or `date -s` does). The second used to take the first
    run's sends for an hour old and burst into the full window (two 429s). Now: no 429, never
    more than N in any window on the server's own clock, no stall (each run's first request
    goes as soon as its start-up and the budget allow, its last within one hold of its first:
    15 requests behind a full, then a third-full window), and no warning (one boot: the
    monotonic clock places every send). The server runs in this process: its clock is this
    test's time.monotonic()."""
    srv = make_sandbox_server(window=WINDOW, hourly_limit=LIMIT)
    rate = ("--rate", f"{LIMIT}/{WINDOW:g}s")
    jobs = list(srv.jobs)
    fill = faked_run(srv, tmp_path, [write_input(tmp_path / "fill.csv", [
        [j.job_id, j.review_key, "false", "job"] for j in jobs[:LIMIT]])], *FAST, *rate)
    assert fill.code == 0 and fill.statuses() == ["updated"] * LIMIT, fill.stderr

    for n, offset in enumerate(("+1h", "-1h")):
        rows = jobs[LIMIT + 15 * n:LIMIT + 15 * (n + 1)]
        earlier = [r["t"] for r in api_requests(srv)]
        started = time.monotonic()
        run = faked_run(srv, tmp_path, [write_input(tmp_path / f"step{n}.csv", [
            [j.job_id, j.review_key, "false", "job"] for j in rows])], *FAST, *rate,
            offset=offset, wall_only=True)
        assert run.code == 0 and run.statuses() == ["updated"] * 15, run.stderr
        assert "warning" not in run.stderr
        mine = [r["t"] for r in api_requests(srv)[len(earlier):]]
        assert len(mine) == 15
        due = max(started + START_UP, first_free_slot(earlier, started) + 0.5)
        assert min(mine) <= due, (offset, min(mine) - started, due - started)
        assert max(mine) - min(mine) <= HOLD + 0.5, (offset, max(mine) - min(mine))

    received = api_requests(srv)
    assert len(received) == LIMIT + 30
    assert [r["status"] for r in received if r["status"] != 200] == []
    assert max_in_window([r["t"] for r in received], WINDOW) <= LIMIT
