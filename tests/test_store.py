"""The state store: durable runs, outcomes, send log and ledger.

The contract tests (those that take `store` alone) run against both backends: the SQLite file
and a real throwaway PostgreSQL database (tests/pg_server.py). Those that also take `store_path`
are about the SQLite file itself (its modes, WAL, the flock sidecar) and run on it alone; the
PostgreSQL store's own (its schema, its locks by session) are in tests/test_store_postgres.py."""

from __future__ import annotations

import os
import signal
import sqlite3
import stat
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from batch_toggle.errors import StoreError, StoreLocked
from batch_toggle.outcome import Outcome
from batch_toggle.state import open_store
from batch_toggle.state.rows import LEDGER_COLUMNS, merged_sends
from batch_toggle.state.sendlog import LoggedSend, Reading, SendEntry
from batch_toggle.state.sqlite import (
    SCHEMA_VERSION,
    LedgerUpdate,
    StateStore,
    default_state_path,
)

REPO = Path(__file__).resolve().parents[1]

RUN_ARGS = dict(command="run", inputs=[("optouts.csv", "ab" * 32)], plan_key="plan-1",
                options={"on_conflict": "last"}, total_rows=10, started_at="2026-11-01T00:00:00Z")

JOB_A = "6f1c9a52-3b7e-4d1a-9c2e-1a2b3c4d5e6f"
JOB_B = "0b5d7e11-2222-4333-8444-555566667777"
CLIENT_1 = "c1c1c1c1-0000-4000-8000-000000000001"
CLIENT_2 = "c2c2c2c2-0000-4000-8000-000000000002"
REVIEW_KEY = "d3b07384-d9a0-4c9b-8e4f-1234deadbeef"
API_KEY = "LK-live-7f3e9a1b2c4d5e6f-SECRET-API-KEY"


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "state.sqlite"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "store" in metafunc.fixturenames or "location" in metafunc.fixturenames:
        file_bound = "store_path" in metafunc.fixturenames
        metafunc.parametrize("backend", ["sqlite"] if file_bound else ["sqlite", "postgres"])


@pytest.fixture
def location(backend: str, request: pytest.FixtureRequest) -> Path | str:
    """Where `store` is: its SQLite file, or its PostgreSQL database's URL."""
    if backend == "postgres":
        return postgres_location(request)
    return request.getfixturevalue("store_path")


@pytest.fixture
def store(location: Path | str):
    s = open_store(location)
    yield s
    s.close()


def postgres_location(request: pytest.FixtureRequest) -> str:
    """A fresh database's URL; its password reaches libpq as PGPASSWORD, never in the URL."""
    database = request.getfixturevalue("pg_database")
    request.getfixturevalue("monkeypatch").setenv("PGPASSWORD", database.password)
    return database.dsn


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def confirm(store: StateStore, job: str = JOB_A, target: str = "job", state: bool = False,
            key: str = REVIEW_KEY, run: str = "r1", at: str = "2026-11-01T00:00:01Z",
            client: str | None = None, entity: str | None = None) -> LedgerUpdate:
    return LedgerUpdate(job, target, state, store.review_key_hash(key), entity or job, client,
                        at, run)


def observe(job: str = JOB_A, target: str = "job", state: bool = True, run: str = "a1",
            at: str = "2026-11-02T00:00:00Z", client: str | None = None) -> LedgerUpdate:
    return LedgerUpdate(job, target, state, None, job, client, at, run, observed=True)


def run_script(code: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=REPO)


def wait_for_line(proc: subprocess.Popen[str], expected: str) -> None:
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if line != expected:
        proc.kill()
        _, err = proc.communicate(timeout=10)
        pytest.fail(f"child said {line!r}, stderr: {err}")


def kill9(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=10)
    assert proc.returncode == -signal.SIGKILL


# --- where and how the file is made -----------------------------------------------------------

def test_default_path_follows_xdg_state_home() -> None:
    assert default_state_path({"XDG_STATE_HOME": "/x/state", "HOME": "/home/u"}) == Path(
        "/x/state/batch-toggle/state.sqlite")


@pytest.mark.parametrize("env", [
    pytest.param({"HOME": "/home/u"}, id="unset"),
    pytest.param({"XDG_STATE_HOME": "", "HOME": "/home/u"}, id="empty"),
    pytest.param({"XDG_STATE_HOME": "rel/state", "HOME": "/home/u"}, id="relative-ignored"),
])
def test_default_path_falls_back_to_local_state(env: dict[str, str]) -> None:
    assert default_state_path(env) == Path("/home/u/.local/state/batch-toggle/state.sqlite")


def test_file_sidecars_and_new_parent_are_private(store: StateStore, store_path: Path) -> None:
    store.create_run("r1", **RUN_ARGS)
    store.record_outcomes("r1", [(0, Outcome("updated", attempts=1), None)])
    store.acquire_lock("r1", "alice")
    assert mode(store_path.parent) == 0o700
    for path in (store_path, Path(f"{store_path}-wal"), Path(f"{store_path}-shm"),
                 Path(f"{store_path}.lock")):
        assert path.exists(), path
        assert mode(path) == 0o600, path


def test_existing_parent_directory_is_left_alone(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    StateStore.open(tmp_path / "s.sqlite").close()
    assert mode(tmp_path) == 0o755
    assert mode(tmp_path / "s.sqlite") == 0o600


def test_loose_existing_file_is_tightened(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    path.touch(mode=0o644)
    path.chmod(0o644)
    StateStore.open(path).close()
    assert mode(path) == 0o600


def test_wal_and_synchronous_settings(store: StateStore, store_path: Path) -> None:
    assert store._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store._conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL: outcomes
    assert store._sends_conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL: sends
    other = sqlite3.connect(store_path)
    try:  # WAL is a property of the file, seen by any other connection
        assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert other.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    finally:
        other.close()


def test_not_a_database_is_a_store_error_naming_the_path(tmp_path: Path) -> None:
    path = tmp_path / "notes.sqlite"
    path.write_bytes(b"this is not sqlite at all, just some text" * 100)
    with pytest.raises(StoreError, match=str(path)):
        StateStore.open(path)
    with pytest.raises(StoreError, match=str(path)):
        StateStore.open(path, readonly=True)


def test_someone_elses_sqlite_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.sqlite"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="not a batch-toggle state store"):
        StateStore.open(path)
    with pytest.raises(StoreError, match="not a batch-toggle state store"):
        StateStore.open(path, readonly=True)


def test_store_from_a_newer_version_is_refused(store_path: Path) -> None:
    StateStore.open(store_path).close()
    conn = sqlite3.connect(store_path)
    conn.execute("PRAGMA user_version=99")
    conn.close()
    with pytest.raises(StoreError, match="newer batch-toggle"):
        StateStore.open(store_path)


def downgrade_to_schema_3(path: Path) -> None:
    """Make a file of this schema what batch-toggle wrote before schema 4."""
    conn = sqlite3.connect(path)
    conn.execute("ALTER TABLE runs DROP COLUMN stopped")  # schema 5's
    conn.execute("DROP TABLE endpoints")  # schema 5's
    conn.execute("ALTER TABLE ledger DROP COLUMN conf_seq")
    # Schema 3's send log, as it was created (DROP COLUMN trips on the comments of schema 4's).
    conn.executescript("""
        CREATE TABLE sends3 (send_id TEXT PRIMARY KEY, sent REAL NOT NULL, done REAL);
        INSERT INTO sends3 SELECT send_id, sent, done FROM sends;
        DROP TABLE sends;
        ALTER TABLE sends3 RENAME TO sends;
        CREATE INDEX sends_by_time ON sends (sent);
    """)
    conn.execute("DELETE FROM meta WHERE key = 'ledger_seq'")
    conn.execute("PRAGMA user_version=3")
    conn.commit()
    conn.close()


def test_a_schema_3_store_is_read_as_is_and_migrated_in_place_when_opened_to_write(
        store_path: Path) -> None:
    """Schema 4 numbers the confirmations already there in the order schema 3 judged them by
    (their time, then insertion): no decision changes across the upgrade, and what comes after
    is numbered above. A read-only view (validate, status) numbers them the same way without
    writing. Old send records have no boot: the wall clock places them, as before."""
    with StateStore.open(store_path) as store:
        store.create_run("r1", **RUN_ARGS)
        store.record_outcomes("r1", [
            (0, FULL, confirm(store, job=JOB_A, at="2026-11-01T02:00:00Z")),
            (1, FULL, confirm(store, job=JOB_B, at="2026-11-01T01:00:00Z")),
            (2, FULL, observe(job=JOB_B, target="client"))])
        store.record_sends([SendEntry("s", 1000.0, 1001.0, "boot-1", 5.0, 6.0)])
    downgrade_to_schema_3(store_path)
    legacy = {(JOB_A, "job"): 2, (JOB_B, "job"): 1, (JOB_B, "client"): None}
    with StateStore.open(store_path, readonly=True) as view:
        assert seqs(view) == legacy
        assert view.send_log() == [LoggedSend(1000.0, 1001.0)]
        assert view.recent_sends(Reading(1002.0, 0.0, "boot-1"), 60.0, 30.0) \
            == [LoggedSend(1000.0, 1001.0)]
    assert sqlite3.connect(store_path).execute("PRAGMA user_version").fetchone()[0] == 3
    with StateStore.open(store_path) as store:
        assert seqs(store) == legacy
        store.record_outcomes("r1", [(3, FULL, confirm(store, job=JOB_B, target="client"))])
        assert seqs(store)[(JOB_B, "client")] == 3
        assert store.send_log() == [LoggedSend(1000.0, 1001.0)]
        store.record_sends([SendEntry("t", 1100.0, None, "boot-1", 105.0)])
        assert store.send_log()[-1] == LoggedSend(1100.0, None, "boot-1", 105.0, None)
    conn = sqlite3.connect(store_path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 6
    conn.close()


def test_sqlite_errors_become_store_errors(store: StateStore, store_path: Path) -> None:
    with pytest.raises(StoreError, match="no run nope"):
        store.record_outcomes("nope", [(0, Outcome("updated"), None)])
    store.create_run("r1", **RUN_ARGS)
    with pytest.raises(StoreError, match=str(store_path)) as info:
        store.create_run("r1", **RUN_ARGS)  # duplicate run id: a sqlite3.IntegrityError
    assert isinstance(info.value.__cause__, sqlite3.Error)
    store.close()
    with pytest.raises(StoreError, match=str(store_path)):
        store.list_runs()


# --- the run lock ----------------------------------------------------------------------------

HOLDER = """
    import sys, time
    from batch_toggle.state.sqlite import StateStore
    s = StateStore.open(sys.argv[1])
    s.acquire_lock("run-held", "alice")
    print("locked", flush=True)
    time.sleep(60)
"""


def test_second_run_is_told_who_holds_the_lock_and_a_killed_holder_frees_it(
        store: StateStore, store_path: Path) -> None:
    holder = run_script(HOLDER, str(store_path))
    try:
        wait_for_line(holder, "locked")
        with pytest.raises(StoreLocked) as info:
            store.acquire_lock("run-2", "bob")
        message = str(info.value)
        assert message.startswith(f"state store {store_path} is in use by run run-held (")
        assert f"pid {holder.pid} on host " in message
        assert "alice" in message and "since 20" in message
    finally:
        kill9(holder)
    store.acquire_lock("run-2", "bob")  # the kernel dropped the dead holder's lock


def test_lock_is_exclusive_between_handles_and_released_on_close(store_path: Path) -> None:
    first = StateStore.open(store_path)
    second = StateStore.open(store_path)
    try:
        first.acquire_lock("r1", "alice")
        first.acquire_lock("r1", "alice")  # again from the holder: no-op
        with pytest.raises(StoreLocked, match="in use by run r1"):
            second.acquire_lock("r2", "bob")
        first.release_lock()
        second.acquire_lock("r2", "bob")
        second.close()
        first.acquire_lock("r3", "alice")
    finally:
        first.close()
        second.close()


# --- runs ------------------------------------------------------------------------------------

def test_find_unfinished_matches_inputs_and_plan_key_latest_wins(store: StateStore) -> None:
    store.create_run("old", **RUN_ARGS)
    store.create_run("new", **RUN_ARGS)
    store.create_run("audit", **{**RUN_ARGS, "command": "audit"})
    store.create_run("other-plan", **{**RUN_ARGS, "plan_key": "plan-2"})
    found = store.find_unfinished_run(["optouts.csv"], "plan-1")
    assert found is not None and found.run_id == "new"
    assert found.inputs == (("optouts.csv", "ab" * 32),)
    assert found.options == {"on_conflict": "last"}
    assert found.pid == os.getpid() and found.unfinished
    assert store.find_unfinished_run(["optouts.csv"], "plan-3") is None
    assert store.find_unfinished_run(["optouts.csv", "more.csv"], "plan-1") is None
    assert store.find_unfinished_run(["other.csv"], "plan-1") is None


def test_input_order_matters_for_resume(store: StateStore) -> None:
    store.create_run("r", **{**RUN_ARGS, "inputs": [("a.csv", "1"), ("b.csv", "2")]})
    assert store.find_unfinished_run(["a.csv", "b.csv"], "plan-1") is not None
    assert store.find_unfinished_run(["b.csv", "a.csv"], "plan-1") is None


@pytest.mark.parametrize("exit_code, resumable", [
    pytest.param(0, False, id="ok"),
    pytest.param(1, False, id="row-problems"),
    pytest.param(3, False, id="aborted"),
    pytest.param(4, True, id="stopped-early"),
    pytest.param(130, True, id="interrupted"),
])
def test_finished_runs_are_resumable_only_when_stopped_or_interrupted(
        store: StateStore, exit_code: int, resumable: bool) -> None:
    store.create_run("r1", **RUN_ARGS)
    store.finish_run("r1", exit_code=exit_code, finished_at="2026-11-01T01:00:00Z",
                     counts={"updated": 3})
    found = store.find_unfinished_run(["optouts.csv"], "plan-1")
    assert (found is not None) == resumable


def test_a_newer_finished_run_hides_an_older_unfinished_one(store: StateStore) -> None:
    store.create_run("killed", **RUN_ARGS)
    store.create_run("done", **RUN_ARGS)
    store.finish_run("done", exit_code=0, finished_at="t", counts={})
    assert store.find_unfinished_run(["optouts.csv"], "plan-1") is None


def test_mark_resumed_clears_the_finish_and_may_replace_options(store: StateStore) -> None:
    store.create_run("r1", **RUN_ARGS)
    store.finish_run("r1", exit_code=4, finished_at="t1", counts={"updated": 1})
    store.mark_resumed("r1", resumed_at="t2", options={"rate": "100/h"})
    rec = store.get_run("r1")
    assert rec is not None
    assert (rec.finished_at, rec.exit_code, rec.counts) == (None, None, None)
    assert (rec.resumes, rec.resumed_at, rec.options) == (1, "t2", {"rate": "100/h"})
    with pytest.raises(StoreError, match="no run nope"):
        store.mark_resumed("nope", resumed_at="t")
    with pytest.raises(StoreError, match="no run nope"):
        store.finish_run("nope", exit_code=0, finished_at="t", counts={})


def test_list_runs_newest_first_with_progress(store: StateStore) -> None:
    store.create_run("r1", **RUN_ARGS)
    store.create_run("r2", **RUN_ARGS)
    store.record_outcomes("r2", [
        (0, Outcome("updated", attempts=1), None),
        (3, Outcome("failed", "timeout", retryable=True, attempts=5), None),
        (5, Outcome("not_attempted", "aborted"), None),
    ])
    store.finish_run("r2", exit_code=4, finished_at="2026-11-01T02:00:00Z",
                     counts={"updated": 4, "not_attempted": 6})
    runs = store.list_runs()
    assert [r.run_id for r in runs] == ["r2", "r1"]
    r2 = runs[0]
    assert r2.outcome_counts == {"updated": 1, "failed": 1, "not_attempted": 1}
    assert r2.final_outcomes == 2
    assert r2.counts == {"updated": 4, "not_attempted": 6}
    assert (r2.exit_code, r2.finished_at, r2.total_rows) == (4, "2026-11-01T02:00:00Z", 10)
    assert r2.input_names == ("optouts.csv",)
    assert runs[1].outcome_counts == {} and runs[1].final_outcomes == 0
    assert [r.run_id for r in store.list_runs(limit=1)] == ["r2"]


# --- outcomes --------------------------------------------------------------------------------

FULL = Outcome("updated", None, None, None, 200, 1, JOB_A, True, "2026-11-01T00:00:01Z", 12.5)
FAILED = Outcome("failed", "timeout", "no response in 30 s", True, None, 5, None, None,
                 "2026-11-01T00:00:02Z", 0.1 + 0.2)
MISMATCH = Outcome("mismatch", "unexpected_response", "job shows do_notify_sms true", False,
                   200, 2, JOB_B, False, None, None)
AWKWARD = Outcome("failed", "bad_request", "it's, \"quoted\"\nNULL\r\n'' é ✓", False, 400, 1,
                  "", None, "NULL", 0.0)
BARE = Outcome("not_attempted", "aborted")


def test_outcomes_round_trip_every_field(store: StateStore) -> None:
    store.create_run("r1", **RUN_ARGS)
    stored = {0: FULL, 7: FAILED, 8: MISMATCH, 9: AWKWARD, 1_000_000: BARE}
    store.record_outcomes("r1", list((row, o, None) for row, o in stored.items()))
    assert store.load_outcomes("r1") == stored
    table = store.outcomes_table("r1")
    assert table.column("row").to_pylist() == sorted(stored)
    for rec in table.to_pylist():
        assert Outcome(**{k: v for k, v in rec.items() if k != "row"}) == stored[rec["row"]]


def test_a_later_outcome_for_the_same_row_replaces_it(store: StateStore) -> None:
    store.create_run("r1", **RUN_ARGS)
    store.record_outcomes("r1", [(3, FAILED, None)])
    store.record_outcomes("r1", [(3, FULL, None)])
    assert store.load_outcomes("r1") == {3: FULL}


def test_outcomes_are_kept_per_run(store: StateStore) -> None:
    store.create_run("r1", **RUN_ARGS)
    store.create_run("r2", **RUN_ARGS)
    store.record_outcomes("r1", [(0, FULL, None)])
    store.record_outcomes("r2", [(0, FAILED, None)])
    assert store.load_outcomes("r1") == {0: FULL}
    assert store.load_outcomes("r2") == {0: FAILED}
    assert store.load_outcomes("unknown") == {}
    assert store.outcomes_table("unknown").num_rows == 0


def test_record_outcomes_works_from_another_thread(store: StateStore) -> None:
    store.create_run("r1", **RUN_ARGS)
    worker = threading.Thread(target=store.record_outcomes, args=("r1", [(1, FULL, None)]))
    worker.start()
    worker.join()
    assert store.load_outcomes("r1") == {1: FULL}


WRITER = """
    import sys, time
    from batch_toggle.outcome import Outcome
    from batch_toggle.state.sqlite import LedgerUpdate, StateStore
    s = StateStore.open(sys.argv[1])
    s.create_run("r1", command="run", inputs=[("a.csv", "00")], plan_key="k", options={},
                 total_rows=100, started_at="t")
    for batch in range(5):
        items = []
        for i in range(batch * 20, batch * 20 + 20):
            job = f"00000000-0000-4000-8000-{i:012d}"
            upd = LedgerUpdate(job, "job", False, s.review_key_hash(job), job, None, "t", "r1")
            items.append((i, Outcome("updated", attempts=1, entity_id=job), upd))
        s.record_outcomes("r1", items)
    s.record_sends([("s1", 1000.0, None)])
    print("committed", flush=True)
    time.sleep(60)
"""


def test_committed_outcomes_survive_sigkill(store_path: Path) -> None:
    writer = run_script(WRITER, str(store_path))
    wait_for_line(writer, "committed")
    kill9(writer)
    with StateStore.open(store_path) as store:
        outcomes = store.load_outcomes("r1")
        assert sorted(outcomes) == list(range(100))
        assert outcomes[99].entity_id == "00000000-0000-4000-8000-000000000099"
        assert store.ledger_table().num_rows == 100
        assert walls(store.send_log()) == [(1000.0, None)]
        assert store.find_unfinished_run(["a.csv"], "k") is not None


# --- the send log ----------------------------------------------------------------------------

def walls(sends: list[LoggedSend]) -> list[tuple[float, float | None]]:
    return [(s.sent, s.done) for s in sends]


def test_send_log_records_in_flight_then_done_and_prunes(store: StateStore) -> None:
    store.record_sends([("a", 100.0, 100.5), ("b", 200.0, None), ("c", 300.0, None)])
    store.record_sends([("c", 300.0, 301.0)])  # its response came
    store.record_sends([("b", 200.0, None)])  # re-recording in flight keeps nothing less
    assert walls(store.send_log()) == [(100.0, 100.5), (200.0, None), (300.0, 301.0)]
    # Held at 400 by a window that keeps a slot 150 s (or 175 s) after the reply; b was never
    # answered: taken as answered at its timeout, 230.
    now = Reading(400.0, 0.0, None)
    assert walls(store.recent_sends(now, 150.0, 30.0)) == [(300.0, 301.0)]
    assert walls(store.recent_sends(now, 175.0, 30.0)) == [(200.0, None), (300.0, 301.0)]
    store.prune_sends(now, 175.0, 30.0)  # forgets what no window of 175 s holds
    assert walls(store.send_log()) == [(200.0, None), (300.0, 301.0)]


def test_sends_of_this_boot_are_kept_and_loaded_by_the_monotonic_clock(store: StateStore) -> None:
    """The wall clock went an hour forward since both were sent: the one of this boot is 49 s
    old by the monotonic clock and still held; the one of another boot only the wall clock
    can place, an hour old."""
    store.record_sends([SendEntry("a", 1000.0, 1001.0, "boot-1", 50.0, 51.0),
                        SendEntry("b", 1000.0, 1001.0, "boot-0", 50.0, 51.0)])
    now = Reading(1100.0 + 3600.0, 100.0, "boot-1")
    assert store.recent_sends(now, 60.0, 30.0) == [LoggedSend(1000.0, 1001.0, "boot-1", 50.0,
                                                              51.0)]
    store.prune_sends(now, 60.0, 30.0)
    assert [s.boot for s in store.send_log()] == ["boot-1"]


def test_send_log_entries_ride_in_the_outcomes_transaction(store: StateStore) -> None:
    """With the outcomes they commit together, or not at all."""
    store.create_run("r1", **RUN_ARGS)
    store.record_sends([("a", 100.0, None)])
    store.record_outcomes("r1", [(0, Outcome("updated", attempts=1), None)],
                          [("a", 100.0, 100.5), ("b", 200.0, None)])
    assert walls(store.send_log()) == [(100.0, 100.5), (200.0, None)]
    assert sorted(store.load_outcomes("r1")) == [0]
    with pytest.raises(StoreError, match="no run nope"):
        store.record_outcomes("nope", [(1, Outcome("updated"), None)], [("c", 300.0, None)])
    assert walls(store.send_log()) == [(100.0, 100.5), (200.0, None)]
    store.record_outcomes("r1", [], [("d", 400.0, None)])  # no outcomes: still logged
    assert walls(store.send_log()) == [(100.0, 100.5), (200.0, None), (400.0, None)]


_SEND_ENTRIES = st.lists(st.builds(
    SendEntry, st.sampled_from("abc"), st.sampled_from([1.0, 2.0]),
    st.none() | st.sampled_from([3.0, 4.0]), st.none() | st.just("boot"),
    st.none() | st.sampled_from([5.0, 6.0]), st.none() | st.sampled_from([7.0, 8.0])),
    max_size=8)


@settings(max_examples=60, deadline=None)
@given(before=_SEND_ENTRIES, batch=_SEND_ENTRIES)
def test_a_batch_of_send_records_ends_as_if_upserted_one_by_one(
        tmp_path_factory: pytest.TempPathFactory, before: list, batch: list) -> None:
    """A batch is merged to one record per request before it is written: the log must read
    the same as if every record had been written in order."""
    root = tmp_path_factory.mktemp("sends")
    with StateStore.open(root / "batch.sqlite") as batched, \
            StateStore.open(root / "single.sqlite") as single:
        batched.record_sends(before)
        batched.record_sends(batch)
        for entry in [*before, *batch]:
            single.record_sends([entry])
        assert batched.send_log() == single.send_log()


def test_a_request_sent_and_answered_within_one_batch_is_one_record() -> None:
    assert merged_sends([("a", 1.0, None), ("b", 2.0, None), ("a", 1.0, 1.5), ("b", 2.0, None)]) \
        == [SendEntry("a", 1.0, 1.5), SendEntry("b", 2.0, None)]
    assert merged_sends([SendEntry("a", 1.0, None, "boot", 5.0),
                         SendEntry("a", 1.0, 1.5, None, None, 6.0)]) \
        == [SendEntry("a", 1.0, 1.5, "boot", 5.0, 6.0)]


def test_each_api_keys_sends_count_only_against_its_own_budget(store: StateStore) -> None:
    """Two keys on one store: a run with key A counts A's sends and those that name no key
    (an older version's, anyone's), never B's; a record's reply keeps its key."""
    key_a = store.api_key_fingerprint(API_KEY)
    key_b = store.api_key_fingerprint(API_KEY + "-other")
    assert key_a != key_b and API_KEY not in key_a + key_b
    assert store.api_key_fingerprint(API_KEY) == key_a
    store.record_sends([SendEntry("a1", 1000.0, None, key=key_a),
                        SendEntry("b1", 1000.5, 1001.5, key=key_b),
                        SendEntry("old", 1000.2, 1001.2)])
    store.record_sends([SendEntry("a1", 1000.0, 1001.0)])  # the reply: no key on it
    now = Reading(1002.0, 0.0, None)
    assert store.recent_sends(now, 60.0, 30.0, key=key_a) == [
        LoggedSend(1000.0, 1001.0), LoggedSend(1000.2, 1001.2)]
    assert store.recent_sends(now, 60.0, 30.0, key=key_b) == [
        LoggedSend(1000.2, 1001.2), LoggedSend(1000.5, 1001.5)]
    assert len(store.recent_sends(now, 60.0, 30.0)) == 3  # every key's: status, doctor
    assert store.oldest_send(1000.3, key=key_a) is None
    assert store.oldest_send(1000.3, key=key_b) == 1000.5
    assert store.oldest_send(1000.1, key=key_a) == 1000.2


def test_send_log_is_shared_by_every_handle_on_the_store(store: StateStore,
                                                         location: Path | str) -> None:
    store.record_sends([("a", 10.0, 11.0)])
    with open_store(location, readonly=True) as view:
        assert walls(view.send_log()) == [(10.0, 11.0)]


# --- the ledger ------------------------------------------------------------------------------

def ledger_rows(store: StateStore, **kwargs: object) -> dict[tuple[str, str], dict]:
    return {(r["job_id"], r["update_target"]): r
            for r in store.ledger_table(**kwargs).to_pylist()}  # type: ignore[arg-type]


def test_a_confirmation_is_recorded_with_the_keyed_hash(store: StateStore) -> None:
    store.create_run("r1", **RUN_ARGS)
    store.record_outcomes("r1", [(0, FULL, confirm(store, client=CLIENT_1))])
    row = ledger_rows(store)[(JOB_A, "job")]
    assert row == {
        "job_id": JOB_A, "update_target": "job", "do_notify_sms": False,
        "review_key_hash": store.review_key_hash(REVIEW_KEY), "entity_id": JOB_A,
        "client_id": CLIENT_1, "confirmed_at": "2026-11-01T00:00:01Z", "run_id": "r1",
        "observed": False, "observed_do_notify_sms": None, "observed_at": None,
        "confirmed_seq": 1,
    }
    assert [c.name for c in store.ledger_table().schema] == [c[0] for c in LEDGER_COLUMNS]


def test_a_later_confirmation_overwrites(store: StateStore) -> None:
    store.create_run("r1", **RUN_ARGS)
    store.record_outcomes("r1", [(0, FULL, confirm(store, state=False))])
    store.record_outcomes("r1", [(0, FULL, confirm(store, state=True, key="other-key",
                                                  run="r2", at="t2"))])
    row = ledger_rows(store)[(JOB_A, "job")]
    assert (row["do_notify_sms"], row["review_key_hash"], row["run_id"], row["confirmed_at"]) \
        == (True, store.review_key_hash("other-key"), "r2", "t2")


def seqs(store: StateStore) -> dict[tuple[str, str], int | None]:
    return {unit: row["confirmed_seq"] for unit, row in ledger_rows(store).items()}


def test_confirmations_are_numbered_in_the_order_they_are_written_never_by_their_time(
        store: StateStore, location: Path | str) -> None:
    """The order of confirmations is the store's own: a run with a clock an hour fast writes a
    later `confirmed_at` than the run after it, and still comes first. An observation leaves the
    number alone; a unit confirmed again gets a new, higher one. Another handle on the file
    (another process) continues the same count."""
    store.create_run("r1", **RUN_ARGS)
    store.record_outcomes("r1", [(0, FULL, confirm(store, job=JOB_A, at="2026-11-01T01:00:00Z")),
                                 (1, FULL, confirm(store, job=JOB_B, at="2026-11-01T01:00:01Z"))])
    store.record_outcomes("r1", [(2, FULL, confirm(store, job=JOB_A, target="client",
                                                   at="2026-11-01T00:00:00Z"))])
    assert seqs(store) == {(JOB_A, "job"): 1, (JOB_B, "job"): 2, (JOB_A, "client"): 3}
    store.record_outcomes("r1", [(3, FULL, observe(job=JOB_B))])
    assert seqs(store)[(JOB_B, "job")] == 2
    with open_store(location) as other:
        other.record_outcomes("r1", [(0, FULL, confirm(other, job=JOB_A, state=True))])
    assert seqs(store) == {(JOB_A, "job"): 4, (JOB_B, "job"): 2, (JOB_A, "client"): 3}
    store.record_outcomes("r1", [(4, FULL, observe(job=CLIENT_1))])  # observed only: no number
    assert seqs(store)[(CLIENT_1, "job")] is None


def test_an_observation_never_overwrites_a_confirmation(store: StateStore) -> None:
    store.create_run("r1", **RUN_ARGS)
    store.record_outcomes("r1", [(0, FULL, confirm(store, state=False))])
    store.record_outcomes("r1", [(1, FULL, observe(state=True, at="t-audit"))])
    row = ledger_rows(store)[(JOB_A, "job")]
    assert row["observed"] is False
    assert row["do_notify_sms"] is False  # the confirmed opt-out stays (sticky opt-out)
    assert row["review_key_hash"] == store.review_key_hash(REVIEW_KEY)
    assert (row["observed_do_notify_sms"], row["observed_at"]) == (True, "t-audit")


def test_an_observation_alone_is_marked_observed_and_has_no_key_hash(store: StateStore) -> None:
    store.create_run("r1", **RUN_ARGS)
    store.record_outcomes("r1", [(0, FULL, observe(state=False))])
    row = ledger_rows(store)[(JOB_A, "job")]
    assert row["observed"] is True and row["review_key_hash"] is None
    assert (row["do_notify_sms"], row["confirmed_at"], row["run_id"]) == (
        False, "2026-11-02T00:00:00Z", "a1")
    assert ledger_rows(store, confirmed_only=True) == {}


def test_a_confirmation_after_an_observation_supersedes_it(store: StateStore) -> None:
    store.create_run("r1", **RUN_ARGS)
    store.record_outcomes("r1", [(0, FULL, observe(state=True)),
                                 (0, FULL, confirm(store, state=False))])  # item order holds
    row = ledger_rows(store, confirmed_only=True)[(JOB_A, "job")]
    assert (row["observed"], row["do_notify_sms"], row["observed_do_notify_sms"]) == (
        False, False, None)


def test_units_of_one_job_are_separate(store: StateStore) -> None:
    store.create_run("r1", **RUN_ARGS)
    store.record_outcomes("r1", [(0, FULL, confirm(store, target="client", state=False,
                                                  entity=CLIENT_1)),
                                 (1, FULL, confirm(store, target="job", state=True))])
    rows = ledger_rows(store)
    assert rows[(JOB_A, "client")]["do_notify_sms"] is False
    assert rows[(JOB_A, "client")]["entity_id"] == CLIENT_1
    assert rows[(JOB_A, "job")]["do_notify_sms"] is True


def test_job_clients_are_learnt_and_shared_by_both_units_of_a_job(store: StateStore) -> None:
    store.create_run("r1", **RUN_ARGS)
    store.record_outcomes("r1", [(0, FULL, confirm(store, target="job", client=CLIENT_1))])
    store.record_outcomes("r1", [(1, FULL, confirm(store, target="client"))])  # inherits
    store.record_outcomes("r1", [(2, FULL, confirm(store, job=JOB_B))])  # client unknown
    rows = ledger_rows(store)
    assert rows[(JOB_A, "client")]["client_id"] == CLIENT_1
    assert rows[(JOB_B, "job")]["client_id"] is None
    assert store.job_clients() == {JOB_A: CLIENT_1}
    # Logis later says the job belongs to another client: both units follow.
    store.record_outcomes("r1", [(3, FULL, observe(target="client", client=CLIENT_2))])
    assert {r["client_id"] for r in store.ledger_table().to_pylist()
            if r["job_id"] == JOB_A} == {CLIENT_2}
    assert store.job_clients() == {JOB_A: CLIENT_2}
    assert store.job_clients([JOB_B, JOB_A, JOB_A]) == {JOB_A: CLIENT_2}
    assert store.job_clients([]) == {}


def test_ledger_columns_can_be_chosen(store: StateStore) -> None:
    store.create_run("r1", **RUN_ARGS)
    store.record_outcomes("r1", [(0, FULL, confirm(store))])
    table = store.ledger_table(confirmed_only=True,
                               columns=["review_key_hash", "job_id", "update_target"])
    assert table.column_names == ["job_id", "update_target", "review_key_hash"]
    with pytest.raises(ValueError, match="unknown ledger column"):
        store.ledger_table(columns=["review_key"])


def test_empty_ledger_has_the_full_schema(store: StateStore) -> None:
    table = store.ledger_table()
    assert table.num_rows == 0
    assert table.column_names == [c[0] for c in LEDGER_COLUMNS]


def test_ledger_update_refuses_anything_but_a_hash() -> None:
    with pytest.raises(ValueError, match="review_key_hash"):
        LedgerUpdate(JOB_A, "job", True, REVIEW_KEY, None, None, "t", "r1")
    with pytest.raises(ValueError, match="needs the review key's hash"):
        LedgerUpdate(JOB_A, "job", True, None, None, None, "t", "r1")


# --- secrets ---------------------------------------------------------------------------------

def test_review_key_hash_is_stable_per_store_and_differs_between_stores(
        store: StateStore, location: Path | str, tmp_path: Path) -> None:
    h = store.review_key_hash(REVIEW_KEY)
    assert len(h) == 32 and int(h, 16) >= 0
    assert h == store.review_key_hash(REVIEW_KEY)
    assert h != store.review_key_hash(REVIEW_KEY.replace("d3b0", "d3b1"))
    assert store.review_key_hashes([REVIEW_KEY, "x"]) == [h, store.review_key_hash("x")]
    with open_store(location, readonly=True) as again:
        assert again.review_key_hash(REVIEW_KEY) == h
    with StateStore.open(tmp_path / "other.sqlite") as other:
        assert other.review_key_hash(REVIEW_KEY) != h


def test_store_bytes_never_contain_the_api_key_or_a_review_key(store: StateStore,
                                                               store_path: Path) -> None:
    # What a runner holds while it works: the key, the row with its review key.
    row = {"job_id": JOB_A, "review_key": REVIEW_KEY, "do_notify_sms": False,
           "update_target": "job", "api_key": API_KEY}
    store.acquire_lock("r1", "alice")
    store.create_run("r1", command="run", inputs=[("optouts.csv", "ab" * 32)], plan_key="k",
                     options={"rate": "2500/h"}, total_rows=1, started_at="t")
    rk_hash = store.review_key_hash(row["review_key"])
    store.record_outcomes("r1", [
        (0, FULL, LedgerUpdate(row["job_id"], row["update_target"], row["do_notify_sms"],
                               rk_hash, JOB_A, CLIENT_1, "t", "r1")),
        (1, FAILED, LedgerUpdate(JOB_B, "client", True, None, CLIENT_1, CLIENT_1, "t", "r1",
                                 observed=True)),
    ])
    store.record_sends([("s1", 1.0, 2.0)])
    files = [store_path, Path(f"{store_path}-wal"), Path(f"{store_path}.lock")]
    blob = b"".join(p.read_bytes() for p in files if p.exists())
    assert JOB_A.encode() in blob  # the scan does see what was written
    for secret in (REVIEW_KEY, REVIEW_KEY.replace("-", ""), REVIEW_KEY.upper(), API_KEY):
        assert secret.encode() not in blob, secret
        assert secret.encode("utf-16-le") not in blob, secret


# --- read-only views -------------------------------------------------------------------------

def test_readonly_open_of_a_missing_store_creates_nothing(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "state.sqlite"
    with StateStore.open(path, readonly=True) as view:
        assert not view.exists
        assert view.find_unfinished_run(["a.csv"], "k") is None
        assert view.ledger_table(confirmed_only=True).num_rows == 0
        assert view.job_clients() == {}
        assert view.list_runs() == []
        assert view.send_log() == []
        assert len(view.review_key_hash(REVIEW_KEY)) == 32
        with pytest.raises(StoreError, match="read-only"):
            view.create_run("r1", **RUN_ARGS)
    assert list(tmp_path.iterdir()) == []


def test_readonly_open_reads_without_modifying(store: StateStore, store_path: Path) -> None:
    store.create_run("r1", **RUN_ARGS)
    store.record_outcomes("r1", [(0, FULL, confirm(store))])
    store.close()
    before = store_path.read_bytes()
    mtime = store_path.stat().st_mtime_ns
    with StateStore.open(store_path, readonly=True) as view:
        assert view.exists and view.readonly
        assert view.load_outcomes("r1") == {0: FULL}
        assert view.ledger_table().num_rows == 1
        assert view.find_unfinished_run(["optouts.csv"], "plan-1") is not None
        for write in (lambda: view.create_run("r2", **RUN_ARGS),
                      lambda: view.record_outcomes("r1", [(1, FULL, None)]),
                      lambda: view.finish_run("r1", exit_code=0, finished_at="t", counts={}),
                      lambda: view.mark_resumed("r1", resumed_at="t"),
                      lambda: view.record_sends([("s", 1.0, None)]),
                      lambda: view.prune_sends(Reading(1.0, 1.0, None), 1.0, 1.0),
                      lambda: view.acquire_lock("r2", "bob")):
            with pytest.raises(StoreError, match="read-only"):
                write()
    assert store_path.read_bytes() == before
    assert store_path.stat().st_mtime_ns == mtime
    for sidecar in (Path(f"{store_path}-wal"), Path(f"{store_path}-shm")):
        if sidecar.exists():  # SQLite may leave these; never readable by others
            assert mode(sidecar) == 0o600


def test_readonly_view_sees_what_a_live_writer_committed(store: StateStore,
                                                         location: Path | str) -> None:
    store.create_run("r1", **RUN_ARGS)
    store.record_outcomes("r1", [(0, FULL, confirm(store))])
    with open_store(location, readonly=True) as view:
        assert view.load_outcomes("r1") == {0: FULL}
        store.record_outcomes("r1", [(1, FAILED, None)])
        assert view.load_outcomes("r1") == {0: FULL, 1: FAILED}
