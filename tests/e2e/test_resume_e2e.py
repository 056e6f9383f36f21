"""Durable runs end to end: the CLI in a subprocess, the sandbox on a loopback socket, a real
SQLite state store in tmp_path.

What a test checks comes from three sides: the report the CLI wrote, what the server received
(`requests()`, `state()`), and what the state store holds. Windows are shrunk to seconds and
--max-rps is high, so the whole module stays well under a minute.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from batch_toggle.state.sqlite import StateStore

from . import NETWORK_ENV, tls_args, wait_until, write_input

CLI_TIMEOUT = 60.0
FAST = ("--max-rps", "1000")


# --- helpers ----------------------------------------------------------------------------------


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str
    rows: list[dict[str, str]]


def _env(key: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("LOGIS_") and k not in NETWORK_ENV}
    if key is not None:
        env["LOGIS_API_KEY"] = key
    return env


def _cmd(srv: Any, tmp: Path, inputs: Sequence[Path], *extra: str,
         report: str = "report.csv", state: str = "state.sqlite") -> list[str]:
    return [sys.executable, "-m", "batch_toggle", "run", *map(str, inputs),
            "--base-url", srv.base_url, *tls_args(srv), "--state", str(tmp / state),
            "--report", str(tmp / report), "--no-progress", *extra]


def _read_report(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def run_cli(srv: Any, tmp: Path, inputs: Sequence[Path], *extra: str,
            report: str = "report.csv", key: str | None = None) -> Result:
    """`batch-toggle run` to completion; the report is read back (empty when none)."""
    (tmp / report).unlink(missing_ok=True)
    proc = subprocess.run(_cmd(srv, tmp, inputs, *FAST, *extra, report=report),
                          env=_env(key or srv.api_key), cwd=tmp, capture_output=True, text=True,
                          timeout=CLI_TIMEOUT, stdin=subprocess.DEVNULL)
    return Result(proc.returncode, proc.stdout, proc.stderr, _read_report(tmp / report))


def start_cli(srv: Any, tmp: Path, inputs: Sequence[Path], *extra: str,
              report: str = "report.csv", key: str | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(_cmd(srv, tmp, inputs, *FAST, *extra, report=report),
                            env=_env(key or srv.api_key), cwd=tmp, text=True,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)


def status_cli(tmp: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "batch_toggle", "status", "--state",
                           str(tmp / "state.sqlite"), *extra], env=_env(None), cwd=tmp,
                          capture_output=True, text=True, timeout=CLI_TIMEOUT)


def flip_rows(jobs: Sequence[Any], target: str = "job") -> list[list[str]]:
    """One row per job asking for the opposite of its seeded state (so a change is visible)."""
    return [[j.job_id, j.review_key, str(not j.do_notify_sms).lower(), target] for j in jobs]


def puts(srv: Any, since: int = 0) -> list[dict[str, Any]]:
    return [r for r in srv.requests(since) if r["method"] == "PUT"]


def only_run(tmp: Path) -> Any:
    with StateStore.open(tmp / "state.sqlite", readonly=True) as store:
        (record,) = store.list_runs()
        return record


def final_rows_in_store(tmp: Path, run_id: str) -> set[int]:
    with StateStore.open(tmp / "state.sqlite", readonly=True) as store:
        return {row for row, o in store.load_outcomes(run_id).items() if o.is_final}


def count_429(srv: Any) -> int:
    return sum(1 for r in srv.requests() if r["status"] == 429)


def secret_forms(secret: str) -> set[bytes]:
    """A secret as it might slip into a file: as is, upper case, without hyphens."""
    forms = {secret, secret.upper(), secret.lower(), secret.replace("-", ""),
             secret.replace("-", "").upper()}
    return {f.encode() for f in forms if len(f) >= 8}


def store_files(tmp: Path) -> list[Path]:
    base = tmp / "state.sqlite"
    return [p for p in (base, Path(f"{base}-wal"), Path(f"{base}-shm"), Path(f"{base}.lock"))
            if p.exists()]


def assert_no_secrets(tmp: Path, secrets: Sequence[str]) -> None:
    files = store_files(tmp)
    assert files, "no state store files to scan"
    for path in files:
        data = path.read_bytes()
        for secret in secrets:
            for form in secret_forms(secret):
                assert form not in data, f"{path.name} contains a secret ({form[:4]!r}...)"


def iso(ts: str) -> float:
    return datetime.fromisoformat(ts).timestamp()


# --- kill -9, then resume ---------------------------------------------------------------------


def test_sigkill_mid_run_then_resume_finishes_every_row_once(any_sandbox_server: Any,
                                                            tmp_path: Path) -> None:
    srv = any_sandbox_server
    # Two keys on one account, one per process: the request log then says which process sent
    # what, however late the killed one's last requests reach the server.
    first_key, resume_key = f"e2e-{uuid.uuid4().hex}-aaaa", f"e2e-{uuid.uuid4().hex}-bbbb"
    srv.set_key(first_key)
    srv.set_key(resume_key)
    jobs = srv.jobs[:200]
    src = write_input(tmp_path / "big.csv", flip_rows(jobs))
    srv.set_faults(latency_ms=20)
    concurrency = 4

    proc = start_cli(srv, tmp_path, [src], "--concurrency", str(concurrency), key=first_key)
    try:
        wait_until(lambda: len(puts(srv)) >= 100, 30, "half the units to reach the server")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=CLI_TIMEOUT)
    assert proc.returncode == -signal.SIGKILL

    record = only_run(tmp_path)
    assert record.exit_code is None and record.units == 200
    confirmed = final_rows_in_store(tmp_path, record.run_id)
    assert 0 < len(confirmed) < 200
    # After a kill the WAL is still on disk: neither it nor the database holds a secret.
    secrets = [first_key, resume_key, *(j.review_key for j in jobs)]
    assert Path(f"{tmp_path / 'state.sqlite'}-wal").exists()
    assert_no_secrets(tmp_path, secrets)

    status = status_cli(tmp_path)
    assert status.returncode == 0, status.stderr
    assert f"{record.run_id}  killed (no exit recorded), resumable" in status.stdout
    assert f"would send {200 - len(confirmed)} units" in status.stdout

    resume_started = time.time()
    srv.set_faults(latency_ms=0)
    done = run_cli(srv, tmp_path, [src], "--resume", "--concurrency", str(concurrency),
                   report="resumed.csv", key=resume_key)
    assert done.code == 0, done.stderr
    assert f"resume: run {record.run_id}: {len(confirmed)} units already have an outcome" \
        in done.stderr

    # One report row per input row, in order, each with a final outcome, all of this run.
    assert [int(r["source_row"]) for r in done.rows] == list(range(1, 201))
    assert {r["status"] for r in done.rows} == {"updated"}
    assert {r["run_id"] for r in done.rows} == {record.run_id}
    # Earlier outcomes are in the resumed report, with their own (earlier) send times.
    earlier = [r for r in done.rows if iso(r["sent_at"]) < resume_started]
    assert len(earlier) >= len(confirmed)

    # The server got every unit, and holds the state the file asks for.
    killed_sent = [r["job_id"] for r in puts(srv) if r["key_hint"] == "...aaaa"]
    resumed_sent = [r["job_id"] for r in puts(srv) if r["key_hint"] == "...bbbb"]
    assert len(set(killed_sent)) == len(killed_sent)  # no unit twice within one process
    assert len(set(resumed_sent)) == len(resumed_sent)
    assert set(killed_sent) | set(resumed_sent) == {j.job_id for j in jobs}
    state = {j["id"]: j["do_notify_sms"] for j in srv.state()["jobs"]}
    assert all(state[j.job_id] is (not j.do_notify_sms) for j in jobs)
    # Nothing the store had confirmed before the kill was sent again; exactly the units sent
    # without a committed outcome were, and those were at most one per worker (in flight).
    confirmed_jobs = {jobs[row].job_id for row in confirmed}
    again = set(killed_sent) & set(resumed_sent)
    assert not confirmed_jobs & again
    assert again == set(killed_sent) - confirmed_jobs
    assert len(again) <= concurrency, f"{len(again)} units sent twice"

    assert_no_secrets(tmp_path, secrets)
    after = status_cli(tmp_path, "--json")
    (run,) = json.loads(after.stdout)["runs"]
    assert (run["state"], run["exit_code"], run["units_done"], run["resumes"]) == (
        "finished", 0, 200, 1)


# --- resume: which run, and when it refuses ----------------------------------------------------


def test_resume_finds_no_run_refuses_a_changed_file_and_ignores_other_plan_options(
        sandbox_server: Any, tmp_path: Path) -> None:
    srv = sandbox_server
    rows = flip_rows(srv.jobs[:12])
    src = write_input(tmp_path / "optouts.csv", rows)

    first = run_cli(srv, tmp_path, [src], "--resume", "--max-requests", "5")
    assert first.code == 4, first.stderr
    assert "resume: no unfinished run with these inputs and plan options; starting a new run" \
        in first.stderr
    assert len(puts(srv)) == 5

    write_input(src, rows[:-1] + [[rows[-1][0], rows[-1][1], "true", "job"]])
    changed = run_cli(srv, tmp_path, [src], "--resume")
    assert changed.code == 2
    assert f"{src}: its content changed since run" in changed.stderr
    assert "Traceback" not in changed.stderr
    assert len(puts(srv)) == 5  # nothing sent

    write_input(src, rows)
    other = run_cli(srv, tmp_path, [src], "--resume", "--on-conflict", "first")
    assert other.code == 0, other.stderr
    assert "resume: no unfinished run with these inputs and plan options; starting a new run" \
        in other.stderr
    # The new run learnt from the ledger: the 5 units the stopped run confirmed are unchanged.
    assert Counter(r["status"] for r in other.rows) == {"unchanged": 5, "updated": 7}
    assert len(puts(srv)) == 12


def test_retry_failed_resends_only_the_retryable_failures(sandbox_server: Any,
                                                          tmp_path: Path) -> None:
    srv = sandbox_server
    good, flaky = srv.jobs[:6], srv.jobs[6:9]
    unknown = [[str(uuid.uuid4()), str(uuid.uuid4()), "false", "job"] for _ in range(2)]
    src = write_input(tmp_path / "f.csv", flip_rows(good) + flip_rows(flaky) + unknown)
    srv.set_faults(scripted={j.job_id: ["503", "503"] for j in flaky})

    first = run_cli(srv, tmp_path, [src], "--max-attempts", "2")
    assert first.code == 1, first.stderr
    codes = Counter((r["status"], r["error_code"], r["retryable"]) for r in first.rows)
    assert codes == {("updated", "", ""): 6, ("failed", "server_error", "true"): 3,
                     ("failed", "job_not_found", "false"): 2}
    before = len(srv.requests())

    status = status_cli(tmp_path)
    assert "resumable with --retry-failed" in status.stdout
    assert "--retry-failed would re-send 3 failed units" in status.stdout

    srv.set_faults(scripted={})
    again = run_cli(srv, tmp_path, [src], "--resume", "--retry-failed", report="again.csv")
    assert again.code == 1, again.stderr  # the unknown jobs still fail, permanently
    resent = [r["job_id"] for r in puts(srv, before)]
    assert sorted(resent) == sorted(j.job_id for j in flaky)
    assert [r["status"] for r in again.rows] == ["updated"] * 9 + ["failed"] * 2
    assert {r["run_id"] for r in again.rows} == {first.rows[0]["run_id"]}


# --- the budget across runs ------------------------------------------------------------------


def test_back_to_back_runs_and_a_resume_after_a_kill_never_see_a_429(sandbox_server: Any,
                                                                     tmp_path: Path) -> None:
    srv = sandbox_server
    limit, window = 20, 2.0
    srv.set_limits(hourly_limit=limit, window=window)
    rate = ("--rate", f"{limit}/{window:g}s", "--timeout", "2")
    a = write_input(tmp_path / "a.csv", flip_rows(srv.jobs[:limit]))
    b = write_input(tmp_path / "b.csv", flip_rows(srv.jobs[limit:2 * limit]))

    assert run_cli(srv, tmp_path, [a], *rate).code == 0
    second = run_cli(srv, tmp_path, [b], *rate, report="b.csv.report.csv")
    assert second.code == 0, second.stderr
    times = [r["t"] for r in puts(srv)]
    assert len(times) == 2 * limit
    assert times[limit] - times[0] >= window  # the second run waited for the window
    assert count_429(srv) == 0

    # A run killed mid-way and resumed at once: its sends are in the store's log.
    c = write_input(tmp_path / "c.csv", flip_rows(srv.jobs[100:100 + 2 * limit]))
    start = len(srv.requests())
    proc = start_cli(srv, tmp_path, [c], *rate, report="c.csv.report.csv")
    try:
        wait_until(lambda: len(puts(srv, start)) >= limit // 2, 20, "the run to start sending")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=CLI_TIMEOUT)
    resumed = run_cli(srv, tmp_path, [c], "--resume", *rate, report="c.csv.report.csv")
    assert resumed.code == 0, resumed.stderr
    assert {r["status"] for r in resumed.rows} == {"updated"}
    assert count_429(srv) == 0


def test_a_run_with_another_key_does_not_wait_for_the_window_the_first_key_filled(
        sandbox_server: Any, tmp_path: Path) -> None:
    """Two keys take turns on one SQLite store: the second key's run starts at once, its own
    window empty, while a run with the first key again waits for that key's window."""
    srv = sandbox_server
    other = "second-sandbox-key-9c1d"
    srv.set_key(other)
    limit, window = 10, 4.0
    srv.set_limits(hourly_limit=limit, window=window)
    rate = ("--rate", f"{limit}/{window:g}s", "--timeout", "2")
    a = write_input(tmp_path / "a.csv", flip_rows(srv.jobs[:limit]))
    b = write_input(tmp_path / "b.csv", flip_rows(srv.jobs[limit:2 * limit]))
    c = write_input(tmp_path / "c.csv", flip_rows(srv.jobs[2 * limit:3 * limit]))

    assert run_cli(srv, tmp_path, [a], *rate).code == 0  # fills the first key's window
    second = run_cli(srv, tmp_path, [b], *rate, report="b.report.csv", key=other)
    assert second.code == 0, second.stderr
    third = run_cli(srv, tmp_path, [c], *rate, report="c.report.csv")
    assert third.code == 0, third.stderr
    times = [r["t"] for r in puts(srv)]
    assert len(times) == 3 * limit and count_429(srv) == 0
    assert times[limit] - times[0] < window  # the other key's first request: no wait
    assert times[2 * limit] - times[0] >= window  # the first key's again: its window held


def test_max_requests_slices_until_done(sandbox_server: Any, tmp_path: Path) -> None:
    srv = sandbox_server
    src = write_input(tmp_path / "big.csv", flip_rows(srv.jobs[:12]))
    codes = []
    for _ in range(5):
        result = run_cli(srv, tmp_path, [src], "--resume", "--max-requests", "5")
        codes.append(result.code)
        if result.code != 4:
            break
    assert codes == [4, 4, 0]
    assert len(puts(srv)) == 12
    assert [r["status"] for r in result.rows] == ["updated"] * 12
    assert len({r["run_id"] for r in result.rows}) == 1


# --- the ledger --------------------------------------------------------------------------------


def test_the_second_monthly_run_sends_nothing(sandbox_server: Any, tmp_path: Path) -> None:
    srv = sandbox_server
    rows = flip_rows(srv.jobs[:8])
    src = write_input(tmp_path / "nov.csv", rows + [rows[0]])  # the last row: a duplicate

    first = run_cli(srv, tmp_path, [src])
    assert first.code == 0, first.stderr
    assert [r["status"] for r in first.rows] == ["updated"] * 8 + ["duplicate"]

    again = run_cli(srv, tmp_path, [src], report="again.csv")
    assert again.code == 0, again.stderr
    assert [r["status"] for r in again.rows] == ["unchanged"] * 8 + ["duplicate"]
    assert len(puts(srv)) == 8  # none more

    forced = run_cli(srv, tmp_path, [src], "--no-skip-confirmed", report="forced.csv")
    assert forced.code == 0, forced.stderr
    assert [r["status"] for r in forced.rows] == ["updated"] * 8 + ["duplicate"]
    assert len(puts(srv)) == 16


def test_a_confirmed_opt_out_is_sticky(sandbox_server: Any, tmp_path: Path) -> None:
    srv = sandbox_server
    jobs = srv.jobs[:3]
    optout = write_input(tmp_path / "optout.csv", [[j.job_id, j.review_key, "false", "job"]
                                                    for j in jobs])
    assert run_cli(srv, tmp_path, [optout]).code == 0
    sent = len(puts(srv))

    optin = write_input(tmp_path / "optin.csv", [[j.job_id, j.review_key, "true", "job"]
                                                  for j in jobs])
    blocked = run_cli(srv, tmp_path, [optin], report="blocked.csv")
    assert blocked.code == 1
    assert {(r["status"], r["error_code"]) for r in blocked.rows} == {
        ("conflict", "resubscribe_blocked")}
    assert len(puts(srv)) == sent

    allowed = run_cli(srv, tmp_path, [optin], "--allow-resubscribe", report="allowed.csv")
    assert allowed.code == 0, allowed.stderr
    assert [r["status"] for r in allowed.rows] == ["updated"] * 3
    assert all(srv.job_state(j.job_id) for j in jobs)


def test_client_rows_of_one_known_client_are_one_request_or_a_conflict(
        sandbox_server: Any, tmp_path: Path) -> None:
    srv = sandbox_server
    by_client: dict[str, list[Any]] = {}
    for job in srv.jobs:
        by_client.setdefault(job.client_id, []).append(job)
    j1, j2 = next(js for js in by_client.values() if len(js) >= 2)[:2]
    learn = write_input(tmp_path / "learn.csv", flip_rows([j1, j2]))
    assert run_cli(srv, tmp_path, [learn]).code == 0  # job replies carry the client

    differ = write_input(tmp_path / "differ.csv", [[j1.job_id, j1.review_key, "false", "client"],
                                                   [j2.job_id, j2.review_key, "true", "client"]])
    sent = len(puts(srv))
    conflict = run_cli(srv, tmp_path, [differ], report="differ.csv.report.csv")
    assert conflict.code == 1
    assert {(r["status"], r["error_code"]) for r in conflict.rows} == {
        ("conflict", "conflicting_state")}
    assert len(puts(srv)) == sent

    same = write_input(tmp_path / "same.csv", [[j1.job_id, j1.review_key, "false", "client"],
                                               [j2.job_id, j2.review_key, "false", "client"]])
    one = run_cli(srv, tmp_path, [same], report="same.csv.report.csv")
    assert one.code == 0, one.stderr
    assert [r["status"] for r in one.rows] == ["updated", "duplicate"]
    assert len(puts(srv)) == sent + 1
    assert srv.client_state(j1.client_id) is False


# --- one run at a time --------------------------------------------------------------------------


def test_a_second_run_on_a_locked_store_says_who_holds_it_and_sends_nothing(
        sandbox_server: Any, tmp_path: Path) -> None:
    srv = sandbox_server
    a = write_input(tmp_path / "a.csv", flip_rows(srv.jobs[:40]))
    b = write_input(tmp_path / "b.csv", flip_rows(srv.jobs[40:45]))
    srv.set_faults(latency_ms=100)
    proc = start_cli(srv, tmp_path, [a], "--concurrency", "1")
    try:
        wait_until(lambda: len(puts(srv)) >= 1, 20, "the first run to start sending")
        second = run_cli(srv, tmp_path, [b], report="b.csv.report.csv")
        status = status_cli(tmp_path)
    finally:
        proc.send_signal(signal.SIGINT)
        _, first_err = proc.communicate(timeout=CLI_TIMEOUT)
    assert second.code == 2
    holder = only_run(tmp_path)
    assert f"is in use by run {holder.run_id}" in second.stderr
    assert f"pid {proc.pid}" in second.stderr
    # status, meanwhile, read the store without taking the lock and saw the run going.
    assert f"lock: held by run {holder.run_id} (pid {proc.pid}" in status.stdout
    assert f"{holder.run_id}  running (pid {proc.pid})\n" in status.stdout
    assert "resume:   no: it is running now" in status.stdout
    assert not second.rows  # no report: nothing was decided, nothing sent
    assert not {r["job_id"] for r in puts(srv)} & {j.job_id for j in srv.jobs[40:45]}
    assert proc.returncode == 130, first_err


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_status_of_a_store_that_does_not_exist(tmp_path: Path, fmt: str) -> None:
    result = status_cli(tmp_path, *(["--json"] if fmt == "json" else []))
    assert result.returncode == 0, result.stderr
    if fmt == "json":
        assert json.loads(result.stdout)["runs"] == []
    else:
        assert "does not exist yet (no runs)" in result.stdout
    assert not (tmp_path / "state.sqlite").exists()
