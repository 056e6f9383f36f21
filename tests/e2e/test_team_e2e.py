"""A team's shared store end to end: several `batch-toggle run` processes, standing for several
hosts, on one PostgreSQL store (a real throwaway server, tests/pg_server.py) against the sandbox
on a loopback socket, with one Logis key.

What a test checks comes from three sides: the reports the CLIs wrote, what the server received
(its own clock: `t` of each request), and what the store holds.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from batch_toggle.state import open_store

from . import NETWORK_ENV, tls_args

CLI_TIMEOUT = 120.0


def write_input(path: Path, rows: Sequence[Sequence[str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["job_id", "review_key", "do_notify_sms", "update_target"])
        writer.writerows(rows)
    return path


def flip_rows(jobs: Sequence[Any]) -> list[list[str]]:
    return [[j.job_id, j.review_key, str(not j.do_notify_sms).lower(), "job"] for j in jobs]


def read_report(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def host_env(srv: Any, password: str) -> dict[str, str]:
    """A host's environment: the team's key, and the database password where libpq reads it."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("LOGIS_", "PG")) and k not in NETWORK_ENV}
    env["LOGIS_API_KEY"] = srv.api_key
    env["PGPASSWORD"] = password
    return env


def start_host(srv: Any, tmp: Path, url: str, password: str, source: Path,
               *extra: str) -> subprocess.Popen[str]:
    report = tmp / f"{source.stem}.report.csv"
    return subprocess.Popen(
        [sys.executable, "-m", "batch_toggle", "run", str(source), "--base-url", srv.base_url,
         *tls_args(srv), "--state", url, "--report", str(report), "--no-progress",
         "--max-rps", "500", *extra],
        env=host_env(srv, password), cwd=tmp, text=True, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def finish(proc: subprocess.Popen[str]) -> tuple[int, str]:
    try:
        _, err = proc.communicate(timeout=CLI_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate(timeout=10)
        pytest.fail(f"a host did not finish in {CLI_TIMEOUT:g} s: {err}")
    return proc.returncode, err


def most_in_any_window(times: Sequence[float], window: float) -> int:
    """The most requests any half-open window (t - window, t] of the server's clock held."""
    ordered = sorted(times)
    most, start = 0, 0
    for end, t in enumerate(ordered):
        while ordered[start] <= t - window:
            start += 1
        most = max(most, end - start + 1)
    return most


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
    assert most_in_any_window(counted, window) <= limit  # on the server's own clock
    for source in (a, b):
        report = read_report(tmp_path / f"{source.stem}.report.csv")
        assert len(report) == rows and {r["status"] for r in report} == {"updated"}
    monkeypatch.setenv("PGPASSWORD", pg_database.password)
    with open_store(pg_database.dsn, readonly=True) as store:
        runs = store.list_runs()
        assert sorted(r.input_names[0] for r in runs) == [str(a), str(b)]
        assert {r.exit_code for r in runs} == {0}
        assert store.ledger_table(confirmed_only=True).num_rows == 2 * rows
