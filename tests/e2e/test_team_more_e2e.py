"""More of a team's shared store end to end (tests/e2e/test_team_e2e.py has the rest): an audit
on one host beside runs on others, the library on a PostgreSQL store, and two API keys on one
store. CLI "hosts" run in subprocesses (their own working directories, nothing shared on disk but
the store) against the sandbox on a loopback socket and a real throwaway PostgreSQL server.

What a test checks comes from three sides: what the CLIs or the library wrote, what the server
received (`t` of each request on the server's own clock, and which key sent it), and what the
store holds.
"""

from __future__ import annotations

import json
import subprocess
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

import batch_toggle
from batch_toggle.state import open_store

from . import NETWORK_ENV, max_in_window, tls_args, write_input
from .test_team_e2e import (
    CLI_TIMEOUT,
    finish,
    flip_rows,
    host_env,
    read_report,
    same_client_jobs,
    start_host,
)

pytestmark = pytest.mark.e2e


def status_runs(url: str, password: str, srv: Any, cwd: Path) -> list[dict[str, Any]]:
    """`batch-toggle status --state URL --json` from a host: its runs, newest first."""
    out = subprocess.run([sys.executable, "-m", "batch_toggle", "status", "--state", url,
                          "--json"], env=host_env(srv, password), cwd=cwd, text=True,
                         capture_output=True, timeout=CLI_TIMEOUT, stdin=subprocess.DEVNULL)
    assert out.returncode == 0, out.stderr
    runs: list[dict[str, Any]] = json.loads(out.stdout)["runs"]
    return runs


def live_expectation(srv: Any, rows: Sequence[Sequence[str]]) -> list[tuple[str, str]]:
    """What an audit must say of each (job_id, review_key, state, target) row from what the
    sandbox holds now: (in_sync or would_change, the current state)."""
    state = srv.state()
    jobs = {j["id"]: j for j in state["jobs"]}
    clients = {c["id"]: c["do_notify_sms"] for c in state["clients"]}
    expected = []
    for job_id, _, want, target in rows:
        job = jobs[job_id]
        now = job["do_notify_sms"] if target == "job" else clients[job["client"]]
        expected.append(("in_sync" if now == (want == "true") else "would_change",
                         str(now).lower()))
    return expected


# --- 1. an audit on a PostgreSQL store ------------------------------------------------------


def test_an_audit_on_another_host_sees_what_a_run_confirmed_and_is_listed_in_status(
        sandbox_server: Any, pg_database: Any, tmp_path: Path) -> None:
    srv = sandbox_server
    url, password = pg_database.dsn, pg_database.password
    j1, j2 = same_client_jobs(srv)
    others = [j for j in srv.jobs if j.client_id != j1.client_id]
    done, untouched = others[:6], others[6:12]
    host_a, host_b = tmp_path / "a", tmp_path / "b"  # nothing on disk shared: only the store
    host_a.mkdir()
    host_b.mkdir()
    # Host A: six jobs flipped, and the client of J1 opted out (J2 out too, so that the ledger
    # knows J2 belongs to that client).
    imported = write_input(host_a / "import.csv", flip_rows(done) + [
        [j1.job_id, j1.review_key, "false", "client"], [j2.job_id, j2.review_key, "false", "job"]])
    code, err = finish(start_host(srv, host_a, url, password, imported))
    assert code == 0, err
    assert {r["status"] for r in read_report(host_a / "import.report.csv")} == {"updated"}

    # Host B audits A's six, six nobody touched, and a re-subscribe of A's opted-out client.
    audited = flip_rows(done) + flip_rows(untouched)
    source = write_input(host_b / "audit.csv",
                         [*audited, [j2.job_id, j2.review_key, "true", "client"]])
    before = len(srv.requests())
    code, err = finish(start_host(srv, host_b, url, password, source, command="audit"))

    assert code == 1, err  # the re-subscribe row is a conflict
    rows = read_report(host_b / "audit.report.csv")
    assert [(r["status"], r["confirmed_do_notify_sms"]) for r in rows[:-1]] == \
        live_expectation(srv, audited)
    assert [r["status"] for r in rows[:-1]] == ["in_sync"] * 6 + ["would_change"] * 6
    # The sticky opt-out A confirmed, known to B only through the store's ledger.
    assert (rows[-1]["status"], rows[-1]["error_code"]) == ("conflict", "resubscribe_blocked")
    assert f"through job {j1.job_id}" in rows[-1]["error_message"]
    received = srv.requests(before)
    assert sorted(r["job_id"] for r in received) == sorted(row[0] for row in audited)
    assert {r["method"] for r in received} == {"GET"}

    # Any host's `status` lists the audit beside the run, with what it found.
    audit_run, import_run = status_runs(url, password, srv, tmp_path)
    assert (audit_run["command"], audit_run["exit_code"], audit_run["inputs"]) == (
        "audit", 1, [str(source)])
    assert audit_run["unit_counts"] == {"in_sync": 6, "would_change": 6}
    assert audit_run["row_counts"]["conflict"] == 1
    assert (import_run["command"], import_run["exit_code"]) == ("run", 0)


def test_a_run_and_an_audit_with_one_key_share_its_window_and_never_meet_a_429(
        sandbox_server: Any, pg_database: Any, tmp_path: Path) -> None:
    srv = sandbox_server
    url, password = pg_database.dsn, pg_database.password
    limit, window, rows = 6, 1.0, 12  # 12 PUTs and 12 GETs against 6 a second
    srv.set_limits(hourly_limit=limit, window=window)
    rate = ("--rate", f"{limit}/{window:g}s", "--timeout", "2")
    to_run = write_input(tmp_path / "run.csv", flip_rows(srv.jobs[:rows]))
    to_audit = write_input(tmp_path / "audit.csv", flip_rows(srv.jobs[rows:2 * rows]))
    before = len(srv.requests())

    hosts = [start_host(srv, tmp_path, url, password, to_run, *rate),
             start_host(srv, tmp_path, url, password, to_audit, *rate, command="audit")]
    done = [finish(host) for host in hosts]

    assert [code for code, _ in done] == [0, 0], done
    received = srv.requests(before)
    assert sum(1 for r in received if r["status"] == 429) == 0
    assert sorted(r["method"] for r in received) == ["GET"] * rows + ["PUT"] * rows
    counted = [r["t"] for r in received if r["counted"]]
    assert len(counted) == 2 * rows
    assert max_in_window(counted, window) <= limit  # on the server's own clock
    assert {r["status"] for r in read_report(tmp_path / "run.report.csv")} == {"updated"}
    assert {r["status"] for r in read_report(tmp_path / "audit.report.csv")} == {"would_change"}
    # Every request, the audit's reads too, took its slot in the key's shared budget.
    assert pg_database.execute("SELECT count(DISTINCT key_fp), count(*)"
                               " FROM batch_toggle.slots") == [(1, 2 * rows)]
    commands = [run["command"] for run in status_runs(url, password, srv, tmp_path)]
    assert sorted(commands) == ["audit", "run"]


# --- 2. the library on a PostgreSQL store ---------------------------------------------------


def with_password(dsn: str, password: str) -> str:
    """The test's URL with the password written into its user part, as it must not be."""
    scheme, rest = dsn.split("://", 1)
    user, host = rest.split("@", 1)
    return f"{scheme}://{user}:{password}@{host}"


def all_text(exc: BaseException) -> str:
    """Everything an exception could show: its chain, formatted as a traceback, and reprs."""
    return "".join(traceback.format_exception(exc)) + repr(exc) + repr(exc.__cause__)


def store_text(pg_database: Any) -> str:
    """Every row of every table of the store, as PostgreSQL spells it."""
    tables = pg_database.execute("SELECT table_name FROM information_schema.tables"
                                 " WHERE table_schema = 'batch_toggle' ORDER BY table_name")
    assert {"runs", "outcomes", "ledger", "slots"} <= {name for (name,) in tables}
    return "\n".join(str(row) for (name,) in tables
                     for row in pg_database.execute(f"SELECT t::text FROM batch_toggle.{name} t"))


def test_the_library_runs_on_a_postgresql_store_and_never_shows_its_password(
        sandbox_server: Any, pg_database: Any, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    srv = sandbox_server
    url, password = pg_database.dsn, pg_database.password
    for name in NETWORK_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PGPASSWORD", password)
    jobs = srv.jobs[:8]
    source = write_input(tmp_path / "lib.csv", flip_rows(jobs))
    said: list[str] = []
    events: list[tuple[str, Any]] = []
    common: dict[str, Any] = {"base_url": srv.base_url, "api_key": srv.api_key, "max_rps": 500,
                              "notice": said.append}

    result = batch_toggle.run(source, state=url, report=tmp_path / "lib.report.csv",
                              on_event=lambda kind, data: events.append((kind, data)), **common)

    assert result.exit_code == 0 and result.counts == {"updated": len(jobs)}
    assert all(srv.job_state(j.job_id) is (not j.do_notify_sms) for j in jobs)
    with open_store(url, readonly=True) as store:
        (record,) = store.list_runs()
        assert (record.run_id, record.exit_code) == (result.run_id, 0)
        outcomes = store.load_outcomes(result.run_id)
        assert [o.status for o in outcomes.values()] == ["updated"] * len(jobs)
        ledger = store.ledger_table(confirmed_only=True).to_pylist()
    assert sorted((r["job_id"], r["do_notify_sms"], r["run_id"]) for r in ledger) == sorted(
        (j.job_id, not j.do_notify_sms, result.run_id) for j in jobs)

    # A password in the URL: refused as the CLI refuses it, before anything is read or sent.
    sent = len(srv.requests())
    refusals = []
    for bad in (with_password(url, password), f"{url}?password={password}"):
        with pytest.raises(batch_toggle.UsageError) as refused:
            batch_toggle.run(source, state=bad, report=tmp_path / "refused.csv", **common)
        assert refused.value.exit_code == 2
        message = str(refused.value)
        assert "\n" not in message and "a password in the URL is refused" in message
        cli = subprocess.run(
            [sys.executable, "-m", "batch_toggle", "run", str(source), "--state", bad,
             "--base-url", srv.base_url, *tls_args(srv), "--report", str(tmp_path / "x.csv")],
            env=host_env(srv, password), cwd=tmp_path, text=True, capture_output=True,
            timeout=CLI_TIMEOUT, stdin=subprocess.DEVNULL)
        assert cli.returncode == 2
        assert f"Error: Invalid value for '--state': {message}\n" in cli.stderr
        refusals += [all_text(refused.value), cli.stdout, cli.stderr]
    assert srv.requests(sent) == [] and not (tmp_path / "refused.csv").exists()

    # A wrong password (libpq's own source): a StoreError that names the store, not the secret.
    monkeypatch.setenv("PGPASSWORD", password[::-1])
    with pytest.raises(batch_toggle.StoreError) as wrong:
        batch_toggle.run(source, state=url, report=tmp_path / "wrong.csv", **common)
    assert url in str(wrong.value)
    refusals.append(all_text(wrong.value))

    for text in refusals:
        assert password not in text and password[::-1] not in text
    written = {path: path.read_bytes() for path in tmp_path.rglob("*") if path.is_file()}
    assert {tmp_path / "lib.report.csv", result.summary_path} <= set(written)
    for path, content in written.items():
        assert password.encode() not in content, path
    shown = [json.dumps(result.summary), str(result.report.to_pylist()), repr(result),
             "\n".join(said), repr(events)]
    assert not [text for text in shown if password in text]
    assert password not in store_text(pg_database)


# --- 3. two API keys on one store -----------------------------------------------------------

SECOND_KEY = "team-b-sandbox-key-7f3e"  # key_hint "...7f3e", the team's key's is "...-key"


def key_times(received: Sequence[dict[str, Any]], key: str) -> list[float]:
    hint = "..." + key[-4:]
    return [r["t"] for r in received if r["counted"] and r["key_hint"] == hint]


def test_two_api_keys_on_one_store_each_keep_a_window_of_their_own(
        sandbox_server: Any, pg_database: Any, tmp_path: Path) -> None:
    srv = sandbox_server
    url, password = pg_database.dsn, pg_database.password
    srv.set_key(SECOND_KEY)  # the sandbox keeps a sliding window per key, as Logis does
    limit, window, rows = 6, 1.0, 18  # each key's demand alone is 3 windows' worth
    srv.set_limits(hourly_limit=limit, window=window)
    rate = ("--rate", f"{limit}/{window:g}s", "--timeout", "2")
    a = write_input(tmp_path / "a.csv", flip_rows(srv.jobs[:rows]))
    b = write_input(tmp_path / "b.csv", flip_rows(srv.jobs[rows:2 * rows]))
    before = len(srv.requests())

    hosts = [start_host(srv, tmp_path, url, password, a, *rate),
             start_host(srv, tmp_path, url, password, b, *rate, api_key=SECOND_KEY)]
    done = [finish(host) for host in hosts]

    assert [code for code, _ in done] == [0, 0], done
    received = srv.requests(before)
    assert sum(1 for r in received if r["status"] == 429) == 0
    per_key = [key_times(received, key) for key in (srv.api_key, SECOND_KEY)]
    assert [len(times) for times in per_key] == [rows, rows]
    assert all(max_in_window(times, window) <= limit for times in per_key)
    # Together they went past one key's window: they were not throttled as one budget.
    assert max_in_window(per_key[0] + per_key[1], window) > limit
    for source in (a, b):
        assert {r["status"] for r in read_report(tmp_path / f"{source.stem}.report.csv")} == {
            "updated"}

    fingerprints = pg_database.execute("SELECT key_fp, count(*) FROM batch_toggle.slots"
                                       " GROUP BY key_fp")
    assert sorted(n for _, n in fingerprints) == [rows, rows]  # two budgets, one per key
    stored = store_text(pg_database)
    assert srv.api_key not in stored and SECOND_KEY not in stored


def test_a_key_whose_window_another_key_just_filled_sends_at_once(
        sandbox_server: Any, pg_database: Any, tmp_path: Path) -> None:
    """Key A fills its window; a run with key B, started inside that window, must not wait for
    it: B's window is its own, and empty."""
    srv = sandbox_server
    url, password = pg_database.dsn, pg_database.password
    srv.set_key(SECOND_KEY)
    limit, window = 6, 6.0  # long enough for B to start inside A's window on a loaded machine
    srv.set_limits(hourly_limit=limit, window=window)
    rate = ("--rate", f"{limit}/{window:g}s", "--timeout", "2")
    a = write_input(tmp_path / "a.csv", flip_rows(srv.jobs[:limit]))
    b = write_input(tmp_path / "b.csv", flip_rows(srv.jobs[limit:2 * limit]))
    before = len(srv.requests())

    code, err = finish(start_host(srv, tmp_path, url, password, a, *rate))
    assert code == 0, err  # its 6 requests fill key A's window for the next 6 s
    code, err = finish(start_host(srv, tmp_path, url, password, b, *rate, api_key=SECOND_KEY))
    assert code == 0, err

    received = srv.requests(before)
    assert sum(1 for r in received if r["status"] == 429) == 0
    a_times, b_times = (key_times(received, key) for key in (srv.api_key, SECOND_KEY))
    assert (len(a_times), len(b_times)) == (limit, limit)
    assert min(b_times) < min(a_times) + window  # B did not wait for A's window
    assert max_in_window(a_times + b_times, window) == 2 * limit
