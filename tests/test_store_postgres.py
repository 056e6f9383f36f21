"""The PostgreSQL state store's own promises, on a real throwaway server (tests/pg_server.py):
its schema and versioning, credentials from libpq's sources, locks held by a session, and a
server that goes away and comes back. The contract both backends share is tests/test_store.py."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from batch_toggle.errors import StoreError, StoreLocked, StoreLockLost, StoreUnavailable
from batch_toggle.outcome import Outcome
from batch_toggle.state import open_store
from batch_toggle.state.records import LedgerUpdate

REPO = Path(__file__).resolve().parents[1]
RUN_ARGS: dict[str, Any] = dict(command="run", inputs=[("optouts.csv", "ab" * 32)],
                                plan_key="plan-1", options={}, total_rows=10,
                                started_at="2026-11-01T00:00:00Z")
JOB_A = "6f1c9a52-3b7e-4d1a-9c2e-1a2b3c4d5e6f"
REVIEW_KEY = "d3b07384-d9a0-4c9b-8e4f-1234deadbeef"
API_KEY = "LK-live-7f3e9a1b2c4d5e6f-SECRET-API-KEY"
FULL = Outcome("updated", attempts=1, entity_id=JOB_A, confirmed_do_notify_sms=False)


@pytest.fixture
def url(pg_database: Any, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("PGPASSWORD", pg_database.password)
    return str(pg_database.dsn)


def tables(pg_database: Any) -> list[str]:
    return [name for (name,) in pg_database.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'batch_toggle'"
        " ORDER BY 1")]


# --- schema and versioning -------------------------------------------------------------------

def test_the_schema_is_created_once_in_its_own_namespace(url: str, pg_database: Any) -> None:
    with open_store(url) as first, open_store(url) as second:
        assert first.review_key_hash(REVIEW_KEY) == second.review_key_hash(REVIEW_KEY)
    assert tables(pg_database) == ["endpoints", "ledger", "locks", "meta", "outcomes", "runs",
                                   "sends", "slots"]
    assert pg_database.execute("SELECT count(*) FROM information_schema.tables"
                               " WHERE table_schema = 'public'") == [(0,)]


def test_a_read_only_open_of_a_database_without_the_store_creates_nothing(
        url: str, pg_database: Any) -> None:
    with open_store(url, readonly=True) as view:
        assert not view.exists and view.readonly
        assert view.list_runs() == [] and view.send_log() == []
        assert view.ledger_table(confirmed_only=True).num_rows == 0
        assert view.find_unfinished_run(["a.csv"], "k") is None
        assert view.lock_holder() is None
        with pytest.raises(StoreError, match="read-only"):
            view.create_run("r1", **RUN_ARGS)
    assert pg_database.execute("SELECT count(*) FROM pg_namespace"
                               " WHERE nspname = 'batch_toggle'") == [(0,)]


def test_a_read_only_view_cannot_write_even_around_the_store(url: str) -> None:
    with open_store(url) as store:
        store.create_run("r1", **RUN_ARGS)
    with open_store(url, readonly=True) as view:
        assert view.exists
        assert [r.run_id for r in view.list_runs()] == ["r1"]
        with pytest.raises(StoreError, match="read-only"):
            view.finish_run("r1", exit_code=0, finished_at="t", counts={})


def test_someone_elses_schema_of_that_name_is_refused(url: str, pg_database: Any) -> None:
    pg_database.execute("CREATE SCHEMA batch_toggle AUTHORIZATION batch_toggle")
    pg_database.execute("CREATE TABLE batch_toggle.things (id int)")
    for readonly in (False, True):
        with pytest.raises(StoreError, match="is not a batch-toggle state store"):
            open_store(url, readonly=readonly)


def test_a_store_from_a_newer_version_is_refused(url: str, pg_database: Any) -> None:
    open_store(url).close()
    pg_database.execute("UPDATE batch_toggle.meta SET value = convert_to('99', 'UTF8')"
                        " WHERE key = 'schema_version'")
    with pytest.raises(StoreError, match=r"newer batch-toggle \(schema 99, this one knows 2\)"):
        open_store(url)


def test_a_store_of_schema_1_gains_the_send_logs_key_and_its_old_sends_count_for_every_key(
        url: str, pg_database: Any) -> None:
    from batch_toggle.state.sendlog import LoggedSend, Reading, SendEntry

    with open_store(url) as store:
        store.record_sends([SendEntry("old", 1000.0, 1001.0)])
    pg_database.execute("ALTER TABLE batch_toggle.sends DROP COLUMN key_fp")
    pg_database.execute("UPDATE batch_toggle.meta SET value = convert_to('1', 'UTF8')"
                        " WHERE key = 'schema_version'")
    with open_store(url) as store:  # upgraded on opening
        key = store.api_key_fingerprint(API_KEY)
        store.record_sends([SendEntry("new", 1000.5, 1001.5, key=key)])
        other = store.api_key_fingerprint(API_KEY + "-other")
        now = Reading(1002.0, 0.0, None)
        assert store.recent_sends(now, 60.0, 30.0, key=other) == [LoggedSend(1000.0, 1001.0)]
        assert len(store.recent_sends(now, 60.0, 30.0, key=key)) == 2
    assert pg_database.execute("SELECT convert_from(value, 'UTF8') FROM batch_toggle.meta"
                               " WHERE key = 'schema_version'") == [("2",)]


# --- credentials -----------------------------------------------------------------------------

def test_a_wrong_password_is_a_store_error_that_shows_no_password(
        pg_database: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGPASSWORD", "wrong-" + pg_database.password)
    with pytest.raises(StoreError) as caught:
        open_store(pg_database.dsn)
    message = str(caught.value)
    assert message.startswith(f"state store {pg_database.dsn}: ")
    assert "password authentication failed" in message
    assert pg_database.password not in message


def test_the_password_comes_from_a_pgpass_file(pg_database: Any, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PGPASSWORD", raising=False)
    passfile = tmp_path / "pgpass"
    passfile.write_text(f"127.0.0.1:{pg_database.server.port}:*:batch_toggle:"
                        f"{pg_database.password}\n", encoding="utf-8")
    passfile.chmod(0o600)  # libpq ignores a password file others can read
    monkeypatch.setenv("PGPASSFILE", str(passfile))
    with open_store(pg_database.dsn) as store:
        store.create_run("r1", **RUN_ARGS)
        assert store.location == pg_database.dsn


def test_the_database_never_holds_the_api_key_or_a_review_key(url: str,
                                                              pg_database: Any) -> None:
    with open_store(url) as store:
        store.acquire_lock("r1", "alice", scope="s")
        store.create_run("r1", **{**RUN_ARGS, "options": {"rate": "2500/h"}})
        store.record_outcomes("r1", [(0, FULL, LedgerUpdate(
            JOB_A, "job", False, store.review_key_hash(REVIEW_KEY), JOB_A, None, "t", "r1"))])
        store.record_sends([("s1", 1.0, 2.0)])
        text = "\n".join(str(row) for table in tables(pg_database)
                         for row in pg_database.execute(
                             f"SELECT t::text FROM batch_toggle.{table} t"))
    assert JOB_A in text  # the scan sees what was written
    for secret in (REVIEW_KEY, REVIEW_KEY.replace("-", ""), REVIEW_KEY.upper(), API_KEY):
        assert secret not in text


# --- TLS to the database: libpq's sslmode ----------------------------------------------------

def test_tls_to_the_database_is_libpqs_sslmode_verified_against_the_given_root(
        url: str, pg_server: Any, tls_kit: Any, tmp_path: Path) -> None:
    import trustme

    other_ca = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other_ca))
    with pg_server.tls(tls_kit.good.cert, tls_kit.good.key):
        verified = f"{url}?sslmode=verify-full&sslrootcert={tls_kit.ca}"
        with open_store(verified) as store:
            store.create_run("r1", **RUN_ARGS)
            assert store.get_run("r1") is not None
            in_use = pg_server.execute(
                "SELECT s.ssl, s.version FROM pg_stat_ssl s JOIN pg_stat_activity a"
                " USING (pid) WHERE a.application_name = 'batch-toggle'")
            assert in_use and all(ssl and version.startswith("TLS") for ssl, version in in_use)
        untrusted = f"{url}?sslmode=verify-full&sslrootcert={other_ca}"
        with pytest.raises(StoreError) as caught:
            open_store(untrusted)
        message = str(caught.value)
        assert "certificate verify failed" in message and "\n" not in message
        assert message.startswith(f"state store {untrusted}: ")
    with pytest.raises(StoreError, match="does not support SSL|server does not support"):
        open_store(f"{url}?sslmode=require")  # off again: sslmode=require will not do without


# --- locks by session ------------------------------------------------------------------------

def test_the_same_work_is_refused_naming_its_holder_and_other_work_runs_beside_it(
        url: str) -> None:
    with open_store(url) as first, open_store(url) as second, open_store(url) as third:
        first.acquire_lock("r1", "alice", scope="run a.csv plan-1")
        first.acquire_lock("r1", "alice", scope="run a.csv plan-1")  # again: no-op
        with pytest.raises(StoreLocked) as caught:
            second.acquire_lock("r2", "bob", scope="run a.csv plan-1")
        message = str(caught.value)
        assert "in use by run r1 (alice, " in message
        assert f"pid {os.getpid()} on host {socket.gethostname()}" in message
        third.acquire_lock("r3", "carol", scope="run b.csv plan-1")  # other inputs: runs too
        assert {h["run_id"] for h in first.lock_holders()} == {"r1", "r3"}
        first.release_lock()
        second.acquire_lock("r2", "bob", scope="run a.csv plan-1")
        assert {h["run_id"] for h in third.lock_holders()} == {"r2", "r3"}


HOLDER = """
    import sys, time
    from batch_toggle.state import open_store
    store = open_store(sys.argv[1])
    store.acquire_lock("run-held", "alice", scope="the work")
    print("locked", flush=True)
    time.sleep(60)
"""


def test_a_killed_holders_lock_is_freed_by_the_database_when_its_session_ends(
        url: str) -> None:
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(HOLDER), url],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              cwd=REPO)
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "locked", holder.stderr
        with open_store(url) as store:
            with pytest.raises(StoreLocked, match=f"run run-held \\(alice, pid {holder.pid} "):
                store.acquire_lock("run-2", "bob", scope="the work")
            assert store.lock_holder() is not None
            holder.send_signal(signal.SIGKILL)
            holder.communicate(timeout=10)
            # The server ends the session when it reads the closed socket: at once, but in
            # its own process, so wait (boundedly) for that to show.
            deadline = time.monotonic() + 10
            while store.lock_holder() is not None and time.monotonic() < deadline:
                time.sleep(0.05)
            assert store.lock_holder() is None  # its row stays, but counts no more
            store.acquire_lock("run-2", "bob", scope="the work")
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.communicate(timeout=10)


# --- the server going away ---------------------------------------------------------------------

def test_a_server_that_went_away_is_a_store_error_then_reconnected(
        url: str, pg_server: Any) -> None:
    with open_store(url) as store:
        store.create_run("r1", **RUN_ARGS)
        pg_server.stop()
        with pytest.raises(StoreError) as caught:
            store.record_outcomes("r1", [(0, FULL, None)])
        assert caught.value.args[0].startswith(f"state store {url}: ")
        pg_server.start()
        store.record_outcomes("r1", [(0, FULL, None)])  # a new connection, same store
        assert store.load_outcomes("r1") == {0: FULL}


# --- a lock lost with its session ----------------------------------------------------------

WINDOW = [(100, 60.0)]


def after_outage(call: Any, *args: Any, **kwargs: Any) -> Any:
    """The first call after a restart meets its dead connection (StoreUnavailable: the limiter
    and the committer try again); the next one reconnects."""
    try:
        return call(*args, **kwargs)
    except StoreUnavailable:
        return call(*args, **kwargs)


def sending_under_lock(store: Any) -> Any:
    """A run "r1" under its lock, one slot of the shared budget reserved: its budget's gate."""
    store.create_run("r1", **RUN_ARGS)
    store.acquire_lock("r1", "alice", scope="the work")
    gate = store.slot_gate(API_KEY, timeout=5.0)
    assert gate is not None and gate.reserve(WINDOW)[0] is not None
    return gate


def test_a_restart_ends_the_lock_and_the_run_takes_it_again_when_nobody_else_did(
        url: str, pg_server: Any) -> None:
    with open_store(url) as a, open_store(url) as b:
        gate = sending_under_lock(a)
        pg_server.stop()
        pg_server.start()
        assert after_outage(gate.reserve, WINDOW)[0] is not None  # the lock verified, held again
        with pytest.raises(StoreLocked, match="in use by run r1 \\(alice, "):
            b.acquire_lock("r2", "bob", scope="the work")
        after_outage(a.finish_run, "r1", exit_code=0, finished_at="2026-11-01T01:00:00Z",
                     counts={})
        assert a.get_run("r1").exit_code == 0  # type: ignore[union-attr]


def test_a_lock_taken_by_another_run_during_a_restart_stops_the_sending_of_the_first(
        url: str, pg_server: Any) -> None:
    with open_store(url) as a, open_store(url) as b, open_store(url) as c:
        gate = sending_under_lock(a)
        pg_server.stop()
        pg_server.start()
        b.acquire_lock("r1", "bob", scope="the work")  # a resume of the same work, elsewhere
        with pytest.raises(StoreLockLost) as caught:
            after_outage(gate.reserve, WINDOW)
        message = str(caught.value)
        assert message.startswith(f"state store {url}: this run's lock ended with its")
        assert "in use by run r1 (bob, pid" in message and "sends nothing more" in message
        with pytest.raises(StoreLockLost):
            gate.reserve(WINDOW)  # and stays refused
        after_outage(a.record_outcomes, "r1", [(0, FULL, None)])  # what it did still counts
        a.finish_run("r1", exit_code=4, finished_at="2026-11-01T01:00:00Z", counts={})
        assert a.get_run("r1").exit_code is None  # type: ignore[union-attr]  # bob's to end
        a.release_lock()
        with pytest.raises(StoreLocked, match="bob"):  # a's goodbye left bob's lock alone
            c.acquire_lock("r3", "carol", scope="the work")


def test_a_lock_taken_and_given_back_meanwhile_is_lost_all_the_same(
        url: str, pg_server: Any) -> None:
    with open_store(url) as a, open_store(url) as b:
        a.acquire_lock("r1", "alice", scope="the work")
        pg_server.stop()
        pg_server.start()
        b.acquire_lock("r1", "bob", scope="the work")  # took the work over, and finished it
        b.release_lock()
        with pytest.raises(StoreLockLost, match="finished or let it go"):
            a.check_lock(verify=True)
        b.acquire_lock("r2", "bob", scope="the work")  # a's check did not keep the lock


def test_a_cut_lock_session_is_found_by_the_heartbeat_or_within_a_second_of_sending(
        url: str, pg_database: Any) -> None:
    with open_store(url) as a, open_store(url) as b:
        a.acquire_lock("r1", "alice", scope="the work")
        gate = a.slot_gate(API_KEY, timeout=5.0)
        assert gate is not None and gate.reserve(WINDOW)[0] is not None
        cut_lock_session(pg_database, a)  # only the lock's session: the budget's lives on
        b.acquire_lock("r1", "bob", scope="the work")
        a.heartbeat()  # the watchdog's thread, every few seconds
        with pytest.raises(StoreLockLost, match="bob"):
            gate.reserve(WINDOW)


def test_a_connection_an_outage_left_in_pipeline_mode_is_replaced(url: str) -> None:
    """A server that goes away in the middle of a batch (executemany runs in pipeline mode)
    can leave the connection in pipeline mode without marking it broken: every later query
    then failed with "PQsendQuery not allowed in pipeline mode", and the run stayed paused
    until its outage limit (seen once in the 20 s outage e2e)."""
    with open_store(url) as store:
        store.create_run("r1", **RUN_ARGS)
        store._conn.pgconn.enter_pipeline_mode()  # type: ignore[union-attr] # that state
        store.record_outcomes("r1", [(0, FULL, None)])
        assert store.load_outcomes("r1") == {0: FULL}


def cut_lock_session(pg_database: Any, store: Any) -> None:
    """End the lock's session on the server, as a restart or a dropped connection does, and
    wait (boundedly) until the server has let go of its lock."""
    cut = pg_database.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                              " WHERE application_name = 'batch-toggle lock'")
    assert cut == [(True,)]
    deadline = time.monotonic() + 10
    while store.lock_holder() is not None and time.monotonic() < deadline:
        time.sleep(0.05)


def test_a_run_whose_lock_went_unnoticed_to_a_resume_leaves_that_runs_record_alone(
        url: str, pg_database: Any) -> None:
    """The lock's session ends after the run's last request, so nothing checks it again: a
    resume elsewhere takes the work over. The first run's end (its finish, an interrupt, its
    late outcomes) must not overwrite the run the resume is still sending."""
    with open_store(url) as a, open_store(url) as b:
        a.create_run("r1", **RUN_ARGS)
        a.acquire_lock("r1", "alice", scope="the work")
        a.record_outcomes("r1", [(0, FULL, None)])
        gate = a.slot_gate(API_KEY, timeout=5.0)
        assert gate is not None and gate.reserve(WINDOW)[0] is not None  # its last request
        cut_lock_session(pg_database, a)
        b.acquire_lock("r1", "bob", scope="the work")  # `run --resume` on another host
        b.mark_resumed("r1", resumed_at="2026-11-01T00:30:00Z")
        b.record_outcomes("r1", [(1, FULL, None)])
        late = Outcome("failed", "timeout", "no response", True, None, 2, None, None, None, None)
        a.record_outcomes("r1", [(1, late, None), (2, FULL, None)])
        a.finish_run("r1", exit_code=0, finished_at="2026-11-01T01:00:00Z", counts={})
        a.record_interrupted("r1", "2026-11-01T01:00:01Z")
        record = b.get_run("r1")
        assert record is not None and record.exit_code is None  # bob's run goes on
        assert b.load_outcomes("r1") == {0: FULL, 1: FULL, 2: FULL}  # alice's adds, not over
        with pytest.raises(StoreLockLost):
            a.check_lock()


class CuttableProxy:
    """A loopback TCP relay whose `cut()` drops the client's side of every connection and
    keeps the server's side open and silent: a Wi-Fi or VPN drop the server has not noticed
    (it would hold the session, and its locks, until its TCP keepalive gives up: hours)."""

    def __init__(self, port: int) -> None:
        self._target = port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._kept: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self._target))
            self._pairs.append((client, server))
            for src, dst in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)

    def cut(self) -> None:
        pairs, self._pairs = self._pairs, []
        for client, server in pairs:
            with contextlib.suppress(OSError):
                client.shutdown(socket.SHUT_RDWR)
            client.close()
            self._kept.append(server)

    def close(self) -> None:
        self._listener.close()
        for client, server in self._pairs:
            client.close()
            server.close()
        for server in self._kept:
            server.close()


def test_a_network_drop_the_server_has_not_noticed_is_not_a_lock_lost_to_another_run(
        url: str) -> None:
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    proxy = CuttableProxy(port)
    try:
        with open_store(url.replace(f":{port}/", f":{proxy.port}/")) as a, \
                open_store(url) as b:
            a.create_run("r1", **RUN_ARGS)
            a.acquire_lock("r1", "alice", scope="the work")
            proxy.cut()  # the old session lives on in the server, holding the lock
            a.check_lock(verify=True)  # its own ghost ended, the lock taken back
            with pytest.raises(StoreLocked, match="alice"):
                b.acquire_lock("r2", "bob", scope="the work")
    finally:
        proxy.close()


def test_every_session_has_keepalives_unless_the_url_sets_its_own(url: str) -> None:
    """A silent network shows as an error within about a minute, not the kernel's 15."""
    with open_store(url) as store:
        store.acquire_lock("r1", scope="the work")
        gate = store.slot_gate(API_KEY, timeout=5.0)
        assert gate is not None and gate.reserve(WINDOW)[0] is not None
        sessions = [store._conn, store._lock_conn, gate._conn]  # noqa: SLF001 - what they are
        for conn in sessions:
            assert conn is not None
            settings = conn.info.get_parameters()
            assert (settings["keepalives_idle"], settings["keepalives_count"]) == ("30", "3")
    with open_store(f"{url}?keepalives_idle=7") as store:
        assert store._conn.info.get_parameters()["keepalives_idle"] == "7"  # type: ignore


# --- the budget shared live ------------------------------------------------------------------

def test_one_keys_slots_are_reserved_atomically_across_handles_and_keys_are_apart(
        url: str, pg_database: Any) -> None:
    with open_store(url) as a, open_store(url) as b:
        gate_a = a.slot_gate(API_KEY, timeout=5.0)
        gate_b = b.slot_gate(API_KEY, timeout=5.0)
        other = b.slot_gate(API_KEY + "-other", timeout=5.0)
        assert gate_a is not None and gate_b is not None and other is not None
        window = [(3, 60.0)]
        granted = [gate_a.reserve(window), gate_b.reserve(window), gate_a.reserve(window)]
        assert all(slot is not None for slot, _ in granted)
        slot, wait = gate_b.reserve(window)
        assert slot is None and 55.0 < wait <= 60.0  # an in-flight slot: a full hold at most
        assert other.reserve(window)[0] is not None  # another key: its own budget
        # Released now: its slot frees `hold` after the release, on the server's clock.
        gate_a.release(granted[0][0])
        slot, wait = gate_b.reserve(window)
        assert slot is None and wait <= 60.0
        assert gate_b.reserve([(5, 60.0)])[0] is not None  # a wider window has room
    stored = pg_database.execute("SELECT DISTINCT key_fp FROM batch_toggle.slots")
    assert len(stored) == 2 and all(API_KEY not in fp for (fp,) in stored)


def test_a_waiter_is_woken_by_a_release_on_another_connection(url: str) -> None:
    with open_store(url) as a, open_store(url) as b:
        gate_a = a.slot_gate(API_KEY, timeout=5.0)
        gate_b = b.slot_gate(API_KEY, timeout=5.0)
        assert gate_a is not None and gate_b is not None
        held, _ = gate_a.reserve([(1, 0.2)])
        assert held is not None
        slot, wait = gate_b.reserve([(1, 0.2)])
        assert slot is None and wait > 0.1  # in flight: held until its reply plus 0.2 s
        released = threading.Timer(0.3, gate_a.release, (held,))
        started = time.monotonic()
        released.start()
        gate_b.wait(30.0)  # woken by the release's NOTIFY, not by the 30 s timeout
        assert time.monotonic() - started < 10.0
        released.join()


def test_a_slot_never_released_counts_until_its_deadline_then_its_hold(
        url: str, pg_database: Any) -> None:
    with open_store(url) as store:
        gate = store.slot_gate(API_KEY, timeout=2.0)
        assert gate is not None
        slot, _ = gate.reserve([(1, 10.0)])
        assert slot is not None  # its process dies here: no release ever comes
        pg_database.execute("UPDATE batch_toggle.slots SET sent = sent - 5,"
                            " deadline = deadline - 5")  # reserved 5 s ago, deadline passed
        slot, wait = gate.reserve([(1, 10.0)])
        assert slot is None and 6.0 < wait <= 7.0  # deadline (3 s ago) + 10 s hold


# --- the committer while the database is away ------------------------------------------------

def _finished(unit: int) -> Any:
    from batch_toggle.state.committer import Finished
    return Finished(unit, unit, FULL, None)


def test_outcomes_wait_out_an_outage_and_are_committed_when_the_server_is_back(
        url: str, pg_server: Any) -> None:
    from batch_toggle.state.committer import Committer

    async def main(store: Any) -> None:
        committer = Committer(store, "r1", outage_limit=120.0)
        committer.start()
        committer.put(_finished(0))
        await committer.durable(0)
        await asyncio.to_thread(pg_server.stop)
        committer.put(_finished(1))
        waiter = asyncio.ensure_future(committer.durable(1))
        while committer.unavailable_since is None:  # the round met the outage
            await asyncio.sleep(0.01)
        assert not waiter.done()  # the worker waits: it takes no next unit meanwhile
        await asyncio.to_thread(pg_server.start)
        await asyncio.wait_for(waiter, 30)
        await committer.close()
        assert committer.error is None and committer.unavailable_since is None

    with open_store(url) as store:
        store.create_run("r1", **RUN_ARGS)
        asyncio.run(main(store))
        assert sorted(store.load_outcomes("r1")) == [0, 1]


def test_an_outage_longer_than_the_limit_fails_the_committer_and_lets_workers_go(
        url: str, pg_server: Any) -> None:
    from batch_toggle.state.committer import Committer

    async def main(store: Any) -> None:
        committer = Committer(store, "r1", outage_limit=0.0)
        committer.start()
        pg_server.stop()
        committer.put(_finished(0))
        await asyncio.wait_for(committer.durable(0), 30)  # released: the runner stops the run
        await committer.close()
        assert isinstance(committer.error, StoreError)
        assert "outage limit" in str(committer.error)

    with open_store(url) as store:
        store.create_run("r1", **RUN_ARGS)
        asyncio.run(main(store))


# --- doctor ----------------------------------------------------------------------------------

def doctor_store_check(url: str) -> dict[str, Any]:
    """`batch-toggle doctor --json`'s state store check (its Logis checks fail fast: nothing
    listens on 127.0.0.1:9)."""
    import json

    from click.testing import CliRunner

    from batch_toggle.cli.app import main

    result = CliRunner().invoke(main, ["doctor", "--base-url", "http://127.0.0.1:9",
                                       "--state", url, "--json"])
    checks = json.loads(result.output)["checks"]
    (check,) = [c for c in checks if c["name"] == "state store"]
    return dict(check)


def test_doctor_checks_the_database_and_names_the_runs_on_it(
        url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with open_store(url) as store:
        store.acquire_lock("r1", "alice", scope="s")
        check = doctor_store_check(url)
        assert check["ok"], check
        assert f"r1 (pid {os.getpid()} on {socket.gethostname()})" in check["detail"]
        assert "the database answers" in check["detail"]
    monkeypatch.setenv("PGPASSWORD", "wrong")
    check = doctor_store_check(url)
    assert not check["ok"] and "password authentication failed" in check["detail"]
