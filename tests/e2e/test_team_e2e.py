"""A team's shared store end to end: several `batch-toggle run` processes, standing for several
hosts, on one PostgreSQL store (a real throwaway server, tests/pg_server.py) against the sandbox
on a loopback socket, with one Logis key.

What a test checks comes from three sides: the reports the CLIs wrote, what the server received
(its own clock: `t` of each request), and what the store holds.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from batch_toggle.state import open_store

from . import NETWORK_ENV, max_in_window, tls_args, wait_until, write_input

CLI_TIMEOUT = 120.0


def flip_rows(jobs: Sequence[Any]) -> list[list[str]]:
    return [[j.job_id, j.review_key, str(not j.do_notify_sms).lower(), "job"] for j in jobs]


def read_report(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def host_env(srv: Any, password: str, api_key: str | None = None) -> dict[str, str]:
    """A host's environment: the team's key (or `api_key`), and the database password where
    libpq reads it."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("LOGIS_", "PG")) and k not in NETWORK_ENV}
    env["LOGIS_API_KEY"] = api_key or srv.api_key
    env["PGPASSWORD"] = password
    return env


def start_host(srv: Any, tmp: Path, url: str, password: str, source: Path,
               *extra: str, command: str = "run",
               api_key: str | None = None) -> subprocess.Popen[str]:
    """`batch-toggle <command> SOURCE` on the shared store, its report at
    `<tmp>/<stem>.report.csv`; the team's key unless `api_key` names another."""
    report = tmp / f"{source.stem}.report.csv"
    return subprocess.Popen(
        [sys.executable, "-m", "batch_toggle", command, str(source), "--base-url", srv.base_url,
         *tls_args(srv), "--state", url, "--report", str(report), "--no-progress",
         "--max-rps", "500", *extra],
        env=host_env(srv, password, api_key), cwd=tmp, text=True, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def finish(proc: subprocess.Popen[str]) -> tuple[int, str]:
    try:
        _, err = proc.communicate(timeout=CLI_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate(timeout=10)
        pytest.fail(f"a host did not finish in {CLI_TIMEOUT:g} s: {err}")
    return proc.returncode, err


@pytest.mark.parametrize("round_", [1, 2, 3])
def test_two_hosts_with_one_key_share_its_window_and_never_meet_a_429(
        sandbox_server: Any, pg_database: Any, tmp_path: Path, round_: int,
        monkeypatch: pytest.MonkeyPatch) -> None:
    srv = sandbox_server
    limit, window, rows = 6, 1.0, 18  # 36 requests against 6 a second: demand 6x a window
    srv.set_limits(hourly_limit=limit, window=window)
    rate = ("--rate", f"{limit}/{window:g}s", "--timeout", "2")
    a = write_input(tmp_path / "a.csv", flip_rows(srv.jobs[:rows]))
    b = write_input(tmp_path / "b.csv", flip_rows(srv.jobs[rows:2 * rows]))
    before = len(srv.requests())

    hosts = [start_host(srv, tmp_path, pg_database.dsn, pg_database.password, source, *rate)
             for source in (a, b)]
    done = [finish(host) for host in hosts]

    assert [code for code, _ in done] == [0, 0], done
    received = srv.requests(before)
    assert sum(1 for r in received if r["status"] == 429) == 0
    counted = [r["t"] for r in received if r["counted"]]
    assert len(counted) >= 2 * rows
    assert max_in_window(counted, window) <= limit  # on the server's own clock
    for source in (a, b):
        report = read_report(tmp_path / f"{source.stem}.report.csv")
        assert len(report) == rows and {r["status"] for r in report} == {"updated"}
    monkeypatch.setenv("PGPASSWORD", pg_database.password)
    with open_store(pg_database.dsn, readonly=True) as store:
        runs = store.list_runs()
        assert sorted(r.input_names[0] for r in runs) == [str(a), str(b)]
        assert {r.exit_code for r in runs} == {0}
        assert store.ledger_table(confirmed_only=True).num_rows == 2 * rows


def test_the_daily_limit_is_shared_by_two_hosts_with_one_key(
        sandbox_server: Any, pg_database: Any, tmp_path: Path) -> None:
    """Each host alone would send its 8 rows under --daily-limit 10; together they may send 10
    in the day, and the two hosts' local windows cannot see each other: the store's can."""
    srv = sandbox_server
    daily, rows = 10, 8
    flags = ("--daily-limit", str(daily), "--timeout", "2", "--stop-after", "4s")
    a = write_input(tmp_path / "a.csv", flip_rows(srv.jobs[:rows]))
    b = write_input(tmp_path / "b.csv", flip_rows(srv.jobs[rows:2 * rows]))
    before = len(srv.requests())
    hosts = [start_host(srv, tmp_path, pg_database.dsn, pg_database.password, source, *flags)
             for source in (a, b)]
    done = [finish(host) for host in hosts]
    assert sorted(code for code, _ in done) in ([0, 4], [4, 4]), done
    puts = [r for r in srv.requests(before) if r["method"] == "PUT"]
    assert len(puts) == daily and all(r["status"] == 200 for r in puts)
    reports = [read_report(tmp_path / f"{s.stem}.report.csv") for s in (a, b)]
    assert [len(r) for r in reports] == [rows, rows]  # every row once, sent or waiting
    assert sum(r["status"] == "updated" for report in reports for r in report) == daily


def test_two_runs_that_touch_one_unit_at_once_each_report_what_they_did(
        sandbox_server: Any, pg_database: Any, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Two hosts' files both turn one job's SMS off, at the same moment. Whether the second
    sent it too or found the first's confirmation already in the ledger, each report says
    what its own run did: a report says `updated` exactly when its run sent the PUT."""
    srv = sandbox_server
    shared_job = srv.jobs[0]
    a = write_input(tmp_path / "a.csv", [[shared_job.job_id, shared_job.review_key, "false",
                                         "job"], *flip_rows(srv.jobs[1:6])])
    b = write_input(tmp_path / "b.csv", [*flip_rows(srv.jobs[6:11]),
                                         [shared_job.job_id, shared_job.review_key, "false",
                                          "job"]])
    before = len(srv.requests())
    hosts = [start_host(srv, tmp_path, pg_database.dsn, pg_database.password, source,
                        "--concurrency", "2")
             for source in (a, b)]
    done = [finish(host) for host in hosts]
    assert [code for code, _ in done] == [0, 0], done
    sent = [r for r in srv.requests(before)
            if r["method"] == "PUT" and r["job_id"] == shared_job.job_id]
    said = {}
    for source in (a, b):
        (row,) = [r for r in read_report(tmp_path / f"{source.stem}.report.csv")
                  if r["job_id"] == shared_job.job_id]
        said[source.stem] = row["status"]
    assert set(said.values()) <= {"updated", "unchanged"}
    assert sum(status == "updated" for status in said.values()) == len(sent) >= 1
    monkeypatch.setenv("PGPASSWORD", pg_database.password)
    with open_store(pg_database.dsn, readonly=True) as store:
        ledger = store.ledger_table(confirmed_only=True).to_pylist()
        (unit,) = [u for u in ledger if u["job_id"] == shared_job.job_id]
        assert unit["do_notify_sms"] is False
        senders = {r.run_id for r in store.list_runs()
                   if said[Path(r.input_names[0]).stem] == "updated"}
        assert unit["run_id"] in senders  # the later of the confirmations, if both sent


def run_host(srv: Any, tmp: Path, url: str, password: str, source: Path,
             *extra: str, command: str = "run") -> tuple[int, str, list[dict[str, str]]]:
    code, err = finish(start_host(srv, tmp, url, password, source, *extra, command=command))
    report = tmp / f"{source.stem}.report.csv"
    return code, err, read_report(report) if report.exists() else []


def same_client_jobs(srv: Any) -> tuple[Any, Any]:
    by_client: dict[str, list[Any]] = {}
    for job in srv.jobs:
        by_client.setdefault(job.client_id, []).append(job)
    first, second = next(jobs for jobs in by_client.values() if len(jobs) >= 2)[:2]
    return first, second


def test_an_opt_out_confirmed_on_one_host_blocks_a_resubscribe_from_another(
        sandbox_server: Any, pg_database: Any, tmp_path: Path) -> None:
    srv = sandbox_server
    j1, j2 = same_client_jobs(srv)
    host_a, host_b = tmp_path / "a", tmp_path / "b"  # nothing on disk shared: only the store
    host_a.mkdir()
    host_b.mkdir()
    # Host A opts the client out through J1, and J2 out too (so the ledger knows that J2
    # belongs to the client: a job never seen cannot be tied to one without asking Logis).
    optout = write_input(host_a / "optout.csv", [[j1.job_id, j1.review_key, "false", "client"],
                                                 [j2.job_id, j2.review_key, "false", "job"]])
    code, err, rows = run_host(srv, host_a, pg_database.dsn, pg_database.password, optout)
    assert code == 0, err
    assert [r["status"] for r in rows] == ["updated", "updated"]
    sent = len(srv.requests())

    optin = write_input(host_b / "optin.csv", [[j2.job_id, j2.review_key, "true", "client"]])
    code, err, rows = run_host(srv, host_b, pg_database.dsn, pg_database.password, optin)
    assert code == 1, err
    assert [(r["status"], r["error_code"]) for r in rows] == [
        ("conflict", "resubscribe_blocked")]
    assert f"through job {j1.job_id}" in rows[0]["error_message"]
    assert [r for r in srv.requests(sent) if r["method"] == "PUT"] == []
    assert srv.client_state(j1.client_id) is False


def test_the_same_file_twice_is_refused_naming_the_holder_and_other_files_run_beside_it(
        sandbox_server: Any, pg_database: Any, tmp_path: Path) -> None:
    srv = sandbox_server
    slow = ("--rate", "3/1s", "--timeout", "2")
    a = write_input(tmp_path / "a.csv", flip_rows(srv.jobs[:24]))  # about 8 s
    b = write_input(tmp_path / "b.csv", flip_rows(srv.jobs[24:27]))
    before = len(srv.requests())
    first = start_host(srv, tmp_path, pg_database.dsn, pg_database.password, a, *slow)
    try:
        # It holds its lock once it sends (a helper's wait on the server's log, as elsewhere).
        wait_until(lambda: len(srv.requests(before)) > 0, 30, "the first run to send")
        code, err, _ = run_host(srv, tmp_path, pg_database.dsn, pg_database.password, a,
                                *slow, "--report", str(tmp_path / "second.csv"))
        assert code == 2, err
        assert f"pid {first.pid} on host " in err and "in use by run " in err
        code, err, rows = run_host(srv, tmp_path, pg_database.dsn, pg_database.password, b,
                                   *slow)
        assert code == 0, err  # other inputs: the same store, the same key, at the same time
        assert {r["status"] for r in rows} == {"updated"}
    finally:
        code, err = finish(first)
    assert code == 0, err


def test_a_run_killed_beside_another_leaves_it_going_and_resumes_without_resending(
        sandbox_server: Any, pg_database: Any, tmp_path: Path) -> None:
    srv = sandbox_server
    pace = ("--rate", "8/1s", "--timeout", "2", "--concurrency", "2")
    a = write_input(tmp_path / "a.csv", flip_rows(srv.jobs[:24]))
    b = write_input(tmp_path / "b.csv", flip_rows(srv.jobs[24:40]))
    a_jobs = {j.job_id for j in srv.jobs[:24]}
    before = len(srv.requests())
    killed = start_host(srv, tmp_path, pg_database.dsn, pg_database.password, a, *pace)
    survivor = start_host(srv, tmp_path, pg_database.dsn, pg_database.password, b, *pace)
    try:
        wait_until(lambda: sum(r["job_id"] in a_jobs for r in srv.requests(before)) >= 6, 30,
                   "the first run to be under way")
    finally:
        killed.kill()  # SIGKILL: no handler, no goodbye to the database
        killed.communicate(timeout=10)
    code, err = finish(survivor)
    assert code == 0, err
    assert {r["status"] for r in read_report(tmp_path / "b.report.csv")} == {"updated"}

    # The killed run's session is gone, so is its lock: the resume takes it at once.
    code, err, rows = run_host(srv, tmp_path, pg_database.dsn, pg_database.password, a, *pace,
                               "--resume")
    assert code == 0, err
    assert len(rows) == 24 and {r["status"] for r in rows} == {"updated"}
    puts_a = [r["job_id"] for r in srv.requests(before)
              if r["method"] == "PUT" and r["job_id"] in a_jobs]
    resent = [job for job in a_jobs if puts_a.count(job) > 1]
    assert set(puts_a) == a_jobs
    assert len(resent) <= 2 and all(puts_a.count(job) == 2 for job in resent)  # in flight
    assert sum(1 for r in srv.requests(before) if r["status"] == 429) == 0


def test_a_database_outage_of_20_s_pauses_the_run_which_then_finishes(
        sandbox_server: Any, pg_database: Any, pg_server: Any, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    srv = sandbox_server
    rows, concurrency = 30, 2
    pace = ("--rate", "10/1s", "--timeout", "2", "--concurrency", str(concurrency))
    source = write_input(tmp_path / "a.csv", flip_rows(srv.jobs[:rows]))
    jobs = {j.job_id for j in srv.jobs[:rows]}
    before = len(srv.requests())
    run = start_host(srv, tmp_path, pg_database.dsn, pg_database.password, source, *pace)
    try:
        wait_until(lambda: len(srv.requests(before)) >= 8, 30, "the run to be under way")
        stopped_at = time.time()
        outage = pg_server.outage(20.0)
        outage.wait()
        back_at = time.time()
        code, err = finish(run)
    finally:
        if run.poll() is None:
            run.kill()
            run.communicate(timeout=10)
    assert code == 0, err
    report = read_report(tmp_path / "a.report.csv")
    assert len(report) == rows and {r["status"] for r in report} == {"updated"}
    puts = [r for r in srv.requests(before) if r["method"] == "PUT"]
    # Paused: nothing left while the database was away, beyond what was already on its way.
    during = [r for r in puts if stopped_at + 1.0 < r["at"] < back_at]
    assert during == []
    sent = [r["job_id"] for r in puts]
    assert set(sent) == jobs
    twice = [job for job in jobs if sent.count(job) > 1]
    assert len(twice) <= concurrency  # at most the units in flight when it went away
    assert sum(1 for r in srv.requests(before) if r["status"] == 429) == 0
    monkeypatch.setenv("PGPASSWORD", pg_database.password)
    with open_store(pg_database.dsn, readonly=True) as store:
        (record,) = store.list_runs()
        assert record.exit_code == 0 and record.final_outcomes == rows  # none lost


def test_a_run_that_slept_through_losing_its_lock_stops_and_leaves_the_work_to_its_successor(
        sandbox_server: Any, pg_database: Any, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A laptop's lid closes mid-run: its database sessions end (and the run's lock with them),
    and a resume from another host takes the work over and finishes it. When the laptop wakes,
    its run must not send the rows again: it finds its lock gone and stops (exit 4)."""
    srv = sandbox_server
    rows, concurrency = 30, 2
    pace = ("--rate", "10/1s", "--timeout", "2", "--concurrency", str(concurrency))
    source = write_input(tmp_path / "a.csv", flip_rows(srv.jobs[:rows]))
    jobs = {j.job_id for j in srv.jobs[:rows]}
    before = len(srv.requests())
    sleeper = start_host(srv, tmp_path, pg_database.dsn, pg_database.password, source, *pace)
    try:
        wait_until(lambda: len(srv.requests(before)) >= 6, 30, "the run to be under way")
        sleeper.send_signal(signal.SIGSTOP)
        cut = pg_database.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE application_name LIKE 'batch-toggle%%' AND datname = current_database()")
        assert cut and all(ok for (ok,) in cut)
        monkeypatch.setenv("PGPASSWORD", pg_database.password)
        with open_store(pg_database.dsn, readonly=True) as view:
            wait_until(lambda: view.lock_holder() is None, 10, "the lock to be freed")

        successor = subprocess.run(
            [sys.executable, "-m", "batch_toggle", "run", str(source), "--resume",
             "--base-url", srv.base_url, *tls_args(srv), "--state", pg_database.dsn,
             "--report", str(tmp_path / "successor.csv"), "--no-progress", *pace],
            env=host_env(srv, pg_database.password), cwd=tmp_path, capture_output=True,
            text=True, timeout=CLI_TIMEOUT, stdin=subprocess.DEVNULL)
        assert successor.returncode == 0, successor.stderr
        assert "resume: run " in successor.stderr
        woke_at = time.time()
        sleeper.send_signal(signal.SIGCONT)
        code, err = finish(sleeper)
    finally:
        if sleeper.poll() is None:
            sleeper.send_signal(signal.SIGCONT)
            sleeper.kill()
            sleeper.communicate(timeout=10)
    assert code == 4, err
    assert "this run's lock ended with its database session" in err
    assert "sends nothing more" in err
    taken_over = read_report(tmp_path / "successor.csv")
    assert len(taken_over) == rows and {r["status"] for r in taken_over} == {"updated"}
    assert len(read_report(tmp_path / "a.report.csv")) == rows  # every row once, even so
    puts = [r for r in srv.requests(before) if r["method"] == "PUT"]
    sent = [r["job_id"] for r in puts]
    assert set(sent) == jobs
    # The sleeper's workers each held at most one unit when the lid closed; nothing after.
    assert len([r for r in puts if r["at"] > woke_at]) <= concurrency
    assert len([job for job in jobs if sent.count(job) > 1]) <= concurrency
    with open_store(pg_database.dsn, readonly=True) as store:
        (record,) = store.list_runs()
        assert record.exit_code == 0 and record.final_outcomes == rows  # the successor's
        assert store.lock_holder() is None


def cli(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "batch_toggle", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=CLI_TIMEOUT,
                          stdin=subprocess.DEVNULL)


STATUS_FIELDS = ("run_id", "command", "state", "exit_code", "inputs", "rows", "units",
                 "units_done", "unit_counts", "row_counts", "retryable_failed", "resumable",
                 "not_resumable_because", "resume_sends", "stopped")


def test_a_migrated_store_tells_the_same_status_skips_the_same_rows_and_keeps_the_budget(
        sandbox_server: Any, pg_database: Any, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    srv = sandbox_server
    env = host_env(srv, pg_database.password)
    sqlite = tmp_path / "state.sqlite"
    done = write_input(tmp_path / "done.csv", flip_rows(srv.jobs[:6]))
    stopped = write_input(tmp_path / "stopped.csv", flip_rows(srv.jobs[6:14]))
    base = ("--base-url", srv.base_url, *tls_args(srv), "--state", str(sqlite), "--no-progress")
    assert cli("run", str(done), *base, env=env, cwd=tmp_path).returncode == 0
    slice_ = cli("run", str(stopped), *base, "--max-requests", "3", env=env, cwd=tmp_path)
    assert slice_.returncode == 4, slice_.stderr  # resumable, 5 rows left

    first = cli("state", "migrate", "--from", str(sqlite), "--to", pg_database.dsn, env=env,
                cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    again = cli("state", "migrate", "--from", str(sqlite), "--to", pg_database.dsn, env=env,
                cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert again.stdout.replace(str(sqlite), "") == first.stdout.replace(str(sqlite), "")
    assert pg_database.execute("SELECT count(*) FROM batch_toggle.runs") == [(2,)]  # not 4

    def status(location: str) -> list[dict[str, Any]]:
        out = cli("status", "--state", location, "--json", env=env, cwd=tmp_path)
        assert out.returncode == 0, out.stderr
        import json
        return [{k: run[k] for k in STATUS_FIELDS} for run in json.loads(out.stdout)["runs"]]

    assert status(pg_database.dsn) == status(str(sqlite))
    assert [r["resume_sends"] for r in status(pg_database.dsn)] == [5, None]

    # The same skip-confirmed decisions: a dry run of both files predicts the same rows.
    both = write_input(tmp_path / "both.csv", flip_rows(srv.jobs[:14]))
    predictions = []
    for location in (str(sqlite), pg_database.dsn):
        report = tmp_path / f"dry-{len(predictions)}.csv"
        out = cli("validate", str(both), "--state", location, "--report", str(report),
                  env=env, cwd=tmp_path)
        assert out.returncode in (0, 1), out.stderr
        predictions.append([(r["source_row"], r["status"], r["error_message"])
                            for r in read_report(report)])
    assert predictions[0] == predictions[1]
    assert [s for _, s, _ in predictions[0]].count("unchanged") == 9  # 6 done + 3 sliced

    # The same remaining budget: the same requests still hold slots of the window.
    monkeypatch.setenv("PGPASSWORD", pg_database.password)
    from batch_toggle.state.sendlog import Reading
    now = Reading.now()
    held = []
    for location in (sqlite, pg_database.dsn):
        with open_store(location, readonly=True) as store:
            held.append(store.recent_sends(now, 3600.0, 30.0))
    assert len(held[0]) == 9 and held[0] == held[1]


def test_a_run_on_a_store_just_migrated_honours_the_sends_the_sqlite_store_made(
        sandbox_server: Any, pg_database: Any, tmp_path: Path) -> None:
    """The SQLite operator used the whole window a moment ago; the team's first run on the
    migrated store waits for it rather than meeting 429s."""
    srv = sandbox_server
    limit, window = 6, 10.0
    srv.set_limits(hourly_limit=limit, window=window)
    rate = ("--rate", f"{limit}/{window:g}s", "--timeout", "2")
    env = host_env(srv, pg_database.password)
    sqlite = tmp_path / "state.sqlite"
    a = write_input(tmp_path / "a.csv", flip_rows(srv.jobs[:limit]))
    b = write_input(tmp_path / "b.csv", flip_rows(srv.jobs[limit:2 * limit]))
    before = len(srv.requests())
    first = cli("run", str(a), "--base-url", srv.base_url, *tls_args(srv), "--state",
                str(sqlite), "--no-progress", "--max-rps", "500", *rate, env=env, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    moved = cli("state", "migrate", "--from", str(sqlite), "--to", pg_database.dsn, env=env,
                cwd=tmp_path)
    assert moved.returncode == 0, moved.stderr

    code, err, rows = run_host(srv, tmp_path, pg_database.dsn, pg_database.password, b, *rate)

    assert code == 0, err
    assert {r["status"] for r in rows} == {"updated"}
    received = srv.requests(before)
    assert sum(1 for r in received if r["status"] == 429) == 0
    assert max_in_window([r["t"] for r in received if r["counted"]], window) <= limit
