"""The kill loop: the CLI, as a subprocess, killed with SIGKILL at 10 random points of one run,
each time started again with --resume; then interrupted by SIGINT and by SIGTERM; then resumed
to the end.

What must hold at the end, checked from the server's request log, the server's state, the
state store and the reports:
  * the last report has one row per input row, every one `updated`, all under one run id;
  * the server's state equals the file for every unit;
  * no confirmed unit was sent twice: a unit whose outcome was committed to the store before a
    kill (or signal) is never sent again after it. A unit in flight at a kill may be re-sent
    ("in flight": sent, its outcome not yet committed; outcomes are group-committed every few
    milliseconds, so an answer that came just before the kill counts), and that is the only
    way a unit is sent twice: between any two requests for one unit there was a kill that found
    it unconfirmed, moments after its earlier request;
  * SIGINT and SIGTERM: exit 130, a complete report written on the way out, resumable.

Kill points are random (a seeded RNG; the seed is printed, KILL_LOOP_SEED=N replays it):
"after k more requests reach the server". For SIGKILL k starts at 0 (during start-up, before any
request): nothing may be lost wherever the process dies. For SIGINT and SIGTERM k starts at 1:
The promise for them (exit 130, a complete report, resumable) is about a run, and a run has
started once a request has reached the server. (A signal during start-up, before any run, is
test_signals_e2e's case: exit 130 and one line, with a window the CLI cannot cover.) A stop may
land anywhere in the run, its end included: a SIGINT/SIGTERM point past the last request is
taken just after it, in the run's tail (answers, commits, the report), where a signal must still
give exit 130 and a complete report (test_signals_e2e aims at that tail on purpose).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from batch_toggle.state.sqlite import StateStore

from . import FAST, cli_command, cli_env, collect, puts, wait_until, write_input

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

UNITS = 300
KILLS = 10
CONCURRENCY = 4
# How long before a kill an answered request's outcome may still be uncommitted: a group-commit
# round (10 ms of gathering plus one fsync'd transaction), with a wide margin for a loaded CI.
GROUP_COMMIT_SLACK = 2.0
MAX_MORE = 34  # a stop comes after at most this many more requests


@dataclass
class Stop:
    """One stop of the run: how, where the server's log stood, what the store had confirmed."""

    how: str
    at: float  # wall clock when the signal was sent
    log_len: int
    confirmed: frozenset[str]  # job ids with a committed final outcome at that moment
    code: int


def start(srv: Any, tmp: Path, src: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        cli_command(srv, tmp, [src], *FAST, "--concurrency", str(CONCURRENCY), "--resume",
                    "--no-progress"),
        env=cli_env(srv.api_key), cwd=tmp, text=True, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def quiet_log_length(srv: Any) -> int:
    """The server's log length once requests still on their way (latency) have landed: the
    length has not changed for 0.15 s (bounded: at most 5 s)."""
    deadline = time.monotonic() + 5
    last, since = len(srv.requests()), time.monotonic()
    while time.monotonic() < deadline:
        now = len(srv.requests())
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= 0.15:
            break
        time.sleep(0.02)
    return last


def confirmed_jobs(tmp: Path, jobs: list[str]) -> frozenset[str]:
    """Job ids whose unit has a committed final outcome in the store (any run)."""
    path = tmp / "state.sqlite"
    if not path.exists():
        return frozenset()
    with StateStore.open(path, readonly=True) as store:
        runs = store.list_runs()
        if not runs:
            return frozenset()
        assert len(runs) == 1, "every start resumed the same run"
        outcomes = store.load_outcomes(runs[0].run_id)
    return frozenset(jobs[row] for row, o in outcomes.items() if o.is_final)


def stop_at_random_point(srv: Any, tmp: Path, src: Path, rng: random.Random, sig: signal.Signals,
                         jobs: list[str]) -> tuple[Stop, subprocess.Popen[str], str]:
    before = len(puts(srv))
    first = 0 if sig == signal.SIGKILL else 1  # SIGINT/SIGTERM: once the run has started
    more = rng.choice(range(first, MAX_MORE + 1))
    if sig != signal.SIGKILL:
        # Never past the run's end, where the process has exited and no signal can land: a
        # draw beyond it stops the run just after its last first request, in its tail (the
        # last answers and commits, the report), where a signal must still give exit 130 and
        # a complete report. (Ten kills rarely reach the end; these two stops come after.)
        left = len(jobs) - len(confirmed_jobs(tmp, jobs))  # units this start sends, at least
        more = min(more, left)
    proc = start(srv, tmp, src)
    wait_until(lambda: len(puts(srv)) >= before + more or proc.poll() is not None, 30,
               f"{more} more requests")
    if proc.poll() is not None:  # the stop point lay past the run's end: no stop to test
        _out, err = proc.communicate()
        pytest.fail(f"the run ended (exit {proc.returncode}) before its {sig.name} stop after "
                    f"{more} more requests:\n{err}")
    at = time.time()
    proc.send_signal(sig)
    _out, err = proc.communicate(timeout=30)
    assert "Traceback" not in err, err
    stop = Stop(sig.name, at, quiet_log_length(srv), confirmed_jobs(tmp, jobs), proc.returncode)
    return stop, proc, err


def test_sigkill_ten_times_then_sigint_and_sigterm_then_finish(sandbox_server: Any,
                                                               tmp_path: Path) -> None:
    srv = sandbox_server
    seed = int(os.environ.get("KILL_LOOP_SEED") or int.from_bytes(os.urandom(4), "big"))
    print(f"kill loop seed {seed} (replay: KILL_LOOP_SEED={seed})")
    rng = random.Random(seed)
    chosen = srv.jobs[:UNITS]
    jobs = [j.job_id for j in chosen]
    src = write_input(tmp_path / "in.csv",
                      [[j.job_id, j.review_key, str(not j.do_notify_sms).lower(), "job"]
                       for j in chosen])
    srv.set_faults(latency_ms=[5, 25])
    stops: list[Stop] = []

    for _ in range(KILLS):
        stop, proc, err = stop_at_random_point(srv, tmp_path, src, rng, signal.SIGKILL, jobs)
        assert proc.returncode == -signal.SIGKILL, err
        stops.append(stop)

    for sig in (signal.SIGINT, signal.SIGTERM):
        if confirmed_jobs(tmp_path, jobs) == frozenset(jobs):
            continue  # the SIGINT came at the very end: no run left for a SIGTERM to stop
        stop, proc, err = stop_at_random_point(srv, tmp_path, src, rng, sig, jobs)
        stops.append(stop)
        run = collect(tmp_path, proc.returncode, "", err, 0.0)
        assert run.code == 130, err
        assert len(run.rows) == UNITS, "a complete report on the way out"
        assert {r["status"] for r in run.rows} <= {"updated", "not_attempted"}
        assert {r["job_id"] for r in run.by_status("updated")} == stop.confirmed
        assert run.summary is not None and run.summary["exit_code"] == 130

    final = start(srv, tmp_path, src)
    out, err = final.communicate(timeout=60)
    done = collect(tmp_path, final.returncode, out, err, 0.0)
    assert done.code == 0, err
    assert "resume: run " in err

    # One row per input row, all updated, one run.
    assert [int(r["source_row"]) for r in done.rows] == list(range(1, UNITS + 1))
    assert {r["status"] for r in done.rows} == {"updated"}
    assert len({r["run_id"] for r in done.rows}) == 1
    # The server's state equals the file.
    state = {j["id"]: j["do_notify_sms"] for j in srv.state()["jobs"]}
    assert all(state[j.job_id] is (not j.do_notify_sms) for j in chosen)

    # No confirmed unit was sent again after the stop that found it confirmed.
    log = srv.requests()
    put_at: dict[str, list[int]] = defaultdict(list)
    for e in log:
        if e["method"] == "PUT":
            put_at[e["job_id"]].append(e["seq"])
    assert set(put_at) == set(jobs)
    for stop in stops:
        again = {e["job_id"] for e in log[stop.log_len:] if e["method"] == "PUT"}
        assert not again & stop.confirmed, f"confirmed before {stop.how}, sent again"
    # A unit sent twice was in flight at a stop that found it unconfirmed: its earlier request
    # was still out, or answered moments before, its outcome waiting for the next group commit
    # (outcomes are committed in rounds of a few milliseconds; a kill loses an open round).
    resent = 0
    for job, seqs in put_at.items():
        for a, b in zip(seqs, seqs[1:], strict=False):
            resent += 1
            stop = next((s for s in stops if a < s.log_len <= b and job not in s.confirmed),
                        None)
            assert stop is not None, (
                f"{job} sent at {a} and {b} with no stop in between that found it unconfirmed")
            assert log[a]["at"] >= stop.at - GROUP_COMMIT_SLACK, (
                f"{job}: its request {stop.at - log[a]['at']:.2f} s before the {stop.how} "
                "was answered yet not committed")
    assert sum(1 for e in log if e["method"] == "PUT") == UNITS + resent
    print(f"{len(stops)} stops, {UNITS} units, {resent} re-sent after a stop; log at each: "
          f"{[s.log_len for s in stops]}")
    # At least some stops came with units in flight or done: the points were inside the run.
    assert len({s.log_len for s in stops}) > len(stops) // 2
