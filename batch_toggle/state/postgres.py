"""The state store on PostgreSQL: one database shared by a team's hosts (state/interface.py).

Opened by `state.open_store("postgresql://USER@HOST:PORT/DB")`. libpq finds the password itself
(PGPASSWORD, ~/.pgpass, PGPASSFILE, a service file) and TLS follows its `sslmode`; a URL with a
password in it never gets here (state/location.py refuses it). Every table lives in the schema
`batch_toggle`, so the database may hold other things.

What it promises, as the SQLite store does:

* Durability. `record_outcomes` commits one transaction; with PostgreSQL's default
  `synchronous_commit=on` the commit is flushed to the server's WAL when it returns.
* Secrecy. Review keys only as keyed hashes (state/keys.py) under a random secret kept in
  `meta`; the API key never reaches the database (the budget knows a key by its fingerprint).
* Versioning. `meta` holds the application's mark and the schema version: a `batch_toggle`
  schema that lacks the mark is someone else's and is refused, as is a newer version.
* Order without clocks. Runs by `runs.seq`; confirmations by the counter `meta.ledger_seq`,
  advanced in the writing transaction under the counter's row lock, so the order of the
  numbers is the order of the commits, whichever host wrote them.
* Locks by session. `acquire_lock` takes a session-level advisory lock keyed by the work's
  scope (command, inputs, plan options) on a connection of its own: different inputs run side
  by side, the same ones are refused naming the holder, and a holder that dies (a killed
  process, a host gone) loses the lock when its session ends: the database decides, not a
  timeout that guesses.
* A lock lost is a stop. A server restart ends every session, and the run's lock with it; the
  run pauses through the outage, and at its first reservation after it (or its next
  heartbeat) takes the lock again, but only if no other run held it meanwhile (the lock's row
  is still its own). Otherwise it raises StoreLockLost: it sends nothing more and leaves the
  run's record to the run that took the work over.

Connections: one for the store's reads and writes, one for the lock and the heartbeat (so that
the watchdog's thread never waits on a write). A connection the server dropped (an outage) is
replaced on the next call; the call that met the drop raises StoreError.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import secrets
import socket
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Concatenate, ParamSpec, TypeVar

import psycopg
import pyarrow as pa
import pyarrow.csv as pcsv
from psycopg import pq

from batch_toggle.clock import utc_text
from batch_toggle.errors import (
    ExitCode,
    StoreError,
    StoreLocked,
    StoreLockLost,
    StoreUnavailable,
)
from batch_toggle.outcome import Outcome
from batch_toggle.state.dump import (
    ENDPOINT_FIELDS,
    LEDGER_FIELDS,
    OUTCOME_FIELDS,
    RUN_FIELDS,
    SEND_FIELDS,
    StoreDump,
)
from batch_toggle.state.keys import KeyHasher
from batch_toggle.state.location import redact
from batch_toggle.state.pg_connect import connect
from batch_toggle.state.postgres_budget import PostgresSlotGate, schema_statements
from batch_toggle.state.records import LedgerUpdates, RunRecord
from batch_toggle.state.rows import (
    CONFIRMED,
    NEW_RUN_COLUMNS,
    OUTCOME_COLUMNS,
    OUTCOME_VALUES,
    RUN_COLUMNS,
    confirmations,
    empty_table,
    finished_values,
    ledger_columns,
    merged_sends,
    new_run_values,
    number_confirmations,
    outcome_rows,
    resumed_values,
    run_record,
    stored_outcome,
)
from batch_toggle.state.sendlog import LoggedSend, Reading, SendEntry
from batch_toggle.vocab import RESUMABLE_EXIT_CODES

# psycopg logs a warning for each rollback that fails on a dropped connection; with no logging
# set up, Python prints them on stderr, a line each, beside the one StoreError that says it.
logging.getLogger("psycopg").addHandler(logging.NullHandler())

SCHEMA = "batch_toggle"
SCHEMA_VERSION = 2  # 2: sends.key_fp
APPLICATION = b"batch-toggle state store"
LOCK_CLASS = 0x4254  # the advisory locks' first key: 'BT', so that ours never meet another's
_CREATE_LOCK = 0  # the advisory lock (LOCK_CLASS, 0) serialises creating the schema
GHOST_WAIT = 5.0  # seconds for this run's own old session to let go of the lock once ended
LOCK_CHECK_EVERY = 1.0  # seconds between two checks that a sending run still holds its lock

_TABLES = f"""
CREATE TABLE {SCHEMA}.meta (
    key   TEXT PRIMARY KEY,
    value BYTEA NOT NULL
);
CREATE TABLE {SCHEMA}.runs (
    seq          BIGSERIAL PRIMARY KEY,
    run_id       TEXT NOT NULL UNIQUE,
    command      TEXT NOT NULL,
    inputs       TEXT NOT NULL,
    input_names  TEXT NOT NULL,
    plan_key     TEXT NOT NULL,
    options      TEXT NOT NULL,
    total_rows   BIGINT NOT NULL,
    started_at   TEXT NOT NULL,
    finished_at  TEXT,
    exit_code    INTEGER,
    counts       TEXT,
    pid          INTEGER,
    host         TEXT,
    resumes      INTEGER NOT NULL DEFAULT 0,
    resumed_at   TEXT,
    units        BIGINT,
    resume_after TEXT,
    stopped      TEXT
);
CREATE INDEX runs_by_inputs ON {SCHEMA}.runs (command, input_names, plan_key);
CREATE TABLE {SCHEMA}.outcomes (
    run                     BIGINT NOT NULL REFERENCES {SCHEMA}.runs (seq),
    row                     BIGINT NOT NULL,
    status                  TEXT NOT NULL,
    error_code              TEXT,
    error_message           TEXT,
    retryable               BOOLEAN,
    http_status             INTEGER,
    attempts                INTEGER NOT NULL,
    entity_id               TEXT,
    confirmed_do_notify_sms BOOLEAN,
    sent_at                 TEXT,
    latency_ms              DOUBLE PRECISION,
    PRIMARY KEY (run, row)
);
CREATE TABLE {SCHEMA}.endpoints (
    endpoint          TEXT PRIMARY KEY,
    first_answered_at TEXT NOT NULL,
    last_answered_at  TEXT NOT NULL
);
CREATE TABLE {SCHEMA}.sends (
    send_id   TEXT PRIMARY KEY,
    sent      DOUBLE PRECISION NOT NULL,
    done      DOUBLE PRECISION,
    boot      TEXT,
    sent_mono DOUBLE PRECISION,
    done_mono DOUBLE PRECISION,
    key_fp    TEXT              -- the API key's fingerprint (keys.py), NULL: any key's
);
CREATE INDEX sends_by_time ON {SCHEMA}.sends (sent);
CREATE TABLE {SCHEMA}.ledger (
    id            BIGSERIAL PRIMARY KEY,
    job_id        TEXT NOT NULL,
    update_target TEXT NOT NULL,
    client_id     TEXT,
    conf_state    BOOLEAN,
    conf_hash     TEXT,
    conf_entity   TEXT,
    conf_at       TEXT,
    conf_run      TEXT,
    conf_seq      BIGINT,
    obs_state     BOOLEAN,
    obs_entity    TEXT,
    obs_at        TEXT,
    obs_run       TEXT,
    UNIQUE (job_id, update_target)
);
CREATE INDEX ledger_by_job ON {SCHEMA}.ledger (job_id);
-- Who holds each run lock (the lock itself is an advisory lock of the holder's session: a row
-- here counts only while that lock is granted, see _LIVE_HOLDER).
CREATE TABLE {SCHEMA}.locks (
    scope_key INTEGER PRIMARY KEY,
    run_id    TEXT NOT NULL,
    owner     TEXT NOT NULL,
    pid       INTEGER,
    host      TEXT,
    since     TEXT NOT NULL,
    alive_at  TEXT NOT NULL
);
"""

_RUN_COLUMNS = ", ".join(RUN_COLUMNS)
_EXIT = RUN_COLUMNS.index("exit_code")

_P = ParamSpec("_P")
_R = TypeVar("_R")


def _translated(
    method: Callable[Concatenate[PostgresStore, _P], _R],
) -> Callable[Concatenate[PostgresStore, _P], _R]:
    """Turn psycopg errors into StoreError naming the store (its URL, no password)."""

    @functools.wraps(method)
    def wrapper(self: PostgresStore, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return method(self, *args, **kwargs)
        except psycopg.OperationalError as exc:  # the server is away: try again later
            # On a new connection: one the server dropped mid-batch can be left in pipeline
            # mode, not marked broken, refusing every later query.
            self._drop_connection()
            raise StoreUnavailable(f"state store {self.location}: {_said(exc)}") from exc
        except psycopg.Error as exc:
            raise StoreError(f"state store {self.location}: {_said(exc)}") from exc

    return wrapper


def _said(exc: psycopg.Error) -> str:
    """psycopg's message on one line (libpq's run over several)."""
    return " ".join(str(exc).split()) or type(exc).__name__


def scope_key(scope: str) -> int:
    """The advisory lock's second key for a work scope (a signed 32-bit int)."""
    return int.from_bytes(zlib.crc32(scope.encode("utf-8")).to_bytes(4, "big"), "big",
                          signed=True)


class PostgresStore:
    """A handle on the state store in one PostgreSQL database. Open with `open`; close it."""

    def __init__(self, url: str, *, readonly: bool, exists: bool, secret: bytes) -> None:
        self.url = url
        self.readonly = readonly
        self.exists = exists
        self._hasher = KeyHasher(secret)
        self._lock = threading.RLock()
        self._conn: psycopg.Connection[Any] | None = None
        self._lock_conn_lock = threading.RLock()
        self._lock_conn: psycopg.Connection[Any] | None = None
        self._held_scope: int | None = None
        self._lock_row: tuple[Any, ...] | None = None  # what acquire_lock wrote in `locks`
        self._lost: str | None = None  # why the lock is gone to another run (StoreLockLost)
        self._lock_backend: int | None = None  # the server process of the lock's session
        self._verified_at = -LOCK_CHECK_EVERY  # time.monotonic() of the last `_hold_again`
        self._run_seqs: dict[str, int] = {}
        self._gates: list[PostgresSlotGate] = []

    @property
    def location(self) -> str:
        return redact(self.url)

    # --- opening and closing ----------------------------------------------------------------

    @classmethod
    def open(cls, url: str, *, readonly: bool = False) -> PostgresStore:
        """Open the store in the database at `url`, creating its schema unless `readonly`.

        Read-only: the session is read-only too, and a database without the schema reads as an
        empty store (`exists` False). Raises StoreError when the database cannot be reached,
        its `batch_toggle` schema is someone else's, or a newer batch-toggle wrote it."""
        shown = redact(url)
        try:
            conn = _connect(url, readonly=readonly)
        except psycopg.Error as exc:
            raise StoreError(f"state store {shown}: {_said(exc)}") from exc
        try:
            if readonly:
                secret = _read_secret(conn, shown)
                exists = secret is not None
                secret = secret if secret is not None else secrets.token_bytes(32)
            else:
                secret = _ensure_schema(conn, shown)
                exists = True
        except psycopg.Error as exc:
            conn.close()
            raise StoreError(f"state store {shown}: {_said(exc)}") from exc
        except BaseException:
            conn.close()
            raise
        store = cls(url, readonly=readonly, exists=exists, secret=secret)
        store._conn = conn
        return store

    def close(self) -> None:
        """Release the lock (if held) and close the connections. Safe to call twice."""
        self.release_lock()
        for gate in self._gates:
            gate.close()
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> PostgresStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _drop_connection(self) -> None:
        """Forget the store's connection (closed): the next call makes a new one."""
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                conn.close()

    def _connection(self) -> psycopg.Connection[Any]:
        """The store's connection, made again if the server dropped it (an outage)."""
        conn = self._conn
        if (conn is None or conn.closed or conn.broken
                or conn.pgconn.pipeline_status != pq.PipelineStatus.OFF):
            self._drop_connection()
            conn = self._conn = _connect(self.url, readonly=self.readonly)
        return conn

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[psycopg.Connection[Any]]:
        with self._lock:
            conn = self._connection()
            with conn.transaction():
                yield conn

    # --- review keys ------------------------------------------------------------------------

    def review_key_hash(self, key: str) -> str:
        """The keyed hash under which this store knows a (normalised) review key (keys.py)."""
        return self._hasher.review_key_hash(key)

    def review_key_hashes(self, keys: Iterable[str]) -> list[str]:
        return self._hasher.review_key_hashes(keys)

    # --- the run lock -----------------------------------------------------------------------

    @_translated
    def acquire_lock(self, run_id: str, owner: str = "", *, scope: str = "") -> None:
        """Take the lock on `scope` (the work: command, inputs, plan options) for `run_id`
        until `release_lock` or `close`. Runs of other scopes are not kept out. StoreLocked
        naming the holder (run, pid, host) when another session holds it."""
        self._writable()
        if self._held_scope is not None:
            return
        key = scope_key(scope)
        with self._lock_conn_lock:
            conn = self._lock_conn
            if conn is None or conn.closed or conn.broken:
                conn = self._lock_conn = _connect(self.url, readonly=False,
                                                  name="batch-toggle lock")
            if not _try_lock(conn, key):
                raise StoreLocked(self._locked_message(conn, key))
            now = utc_text()
            row = (run_id, owner, os.getpid(), socket.gethostname(), now)
            conn.execute(
                f"INSERT INTO {SCHEMA}.locks (scope_key, run_id, owner, pid, host, since,"
                " alive_at) VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (scope_key) DO"
                " UPDATE SET run_id = excluded.run_id, owner = excluded.owner,"
                " pid = excluded.pid, host = excluded.host, since = excluded.since,"
                " alive_at = excluded.alive_at", (key, *row, now))
            self._held_scope, self._lock_row, self._lost = key, row, None
            self._lock_backend = conn.info.backend_pid  # to tell its own old session apart

    @_translated
    def check_lock(self, *, verify: bool = False) -> None:
        """StoreLockLost when this run's lock has gone to another run (a no-op without a lock).
        With `verify`, ask the server first (after a reconnection: a restart ends every
        session and the lock with it), taking the lock again if nobody took it meanwhile."""
        if verify and self._held_scope is not None and self._lost is None:
            with self._lock_conn_lock:
                self._hold_again()
                self._verified_at = time.monotonic()
        if self._lost is not None:
            raise StoreLockLost(self._lost)

    def _still_ours(self) -> tuple[str, tuple[Any, ...]]:
        """A condition for writing the run's end (and its parameters): the lock's row is still
        this run's, i.e. no other run took the work since, even if this one never noticed its
        lock go (a session cut after its last request). Empty without a lock."""
        if self._held_scope is None or self._lock_row is None:
            return "", ()
        return (f"EXISTS (SELECT 1 FROM {SCHEMA}.locks WHERE scope_key = %s"
                " AND run_id = %s AND owner = %s AND pid = %s AND host = %s AND since = %s)",
                (self._held_scope, *self._lock_row))

    def _hold_again(self) -> None:
        """Make sure the lock's session still lives; if it ended, take the lock again on a new
        one, unless another run held it meanwhile (its row in `locks` is no longer this
        run's): then the lock is lost (`_lost` says to whom). Under `_lock_conn_lock`."""
        key = self._held_scope
        if key is None or self._lost is not None:
            return
        conn = self._lock_conn
        if conn is not None and not conn.closed and not conn.broken:
            try:
                conn.execute("SELECT 1")
                return  # the session lives, and the lock with it
            except psycopg.OperationalError:
                pass
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                conn.close()
        self._lock_conn = None
        conn = self._lock_conn = _connect(self.url, readonly=False, name="batch-toggle lock")
        got = self._take_back(conn, key)
        if got and _lock_row_of(conn, key) == self._lock_row:
            return  # nobody took it meanwhile: held again
        if got:
            conn.execute("SELECT pg_advisory_unlock(%s, %s)", (LOCK_CLASS, key))
            taken = "another run took the same work and has finished or let it go since"
        else:
            taken = _in_use_by(conn, key)
        self._lost = (f"state store {self.location}: this run's lock ended with its database "
                      f"session (a server restart or a cut connection), and meanwhile "
                      f"{taken}; this run sends nothing more, so that the two never send the "
                      "same rows (`batch-toggle status` shows where the work stands)")

    def _take_back(self, conn: psycopg.Connection[Any], key: int) -> bool:
        """Take the lock on a new session. When the one holding it is this run's own old
        session (the connection broke on the client's side, a Wi-Fi or VPN drop, and the
        server has not noticed yet: it would keep the lock until its TCP keepalive gives up,
        hours), end that session first: it is no other run."""
        got = _try_lock(conn, key)
        if not got and self._lock_backend is not None \
                and _holder_pid(conn, key) == self._lock_backend:
            conn.execute("SELECT pg_terminate_backend(%s)", (self._lock_backend,))
            deadline = time.monotonic() + GHOST_WAIT
            # The ended session lets go of its locks as its process exits.
            while not (got := _try_lock(conn, key)) and time.monotonic() < deadline:
                time.sleep(0.05)
        if got:
            self._lock_backend = conn.info.backend_pid
        return got

    def _locked_message(self, conn: psycopg.Connection[Any], key: int) -> str:
        return f"state store {self.location}: {_in_use_by(conn, key)}"

    @_translated
    def lock_holders(self) -> list[dict[str, Any]]:
        """Every run that holds a lock now (its session alive), newest first."""
        if not self.exists:
            return []
        with self._lock:
            rows = self._connection().execute(
                f"SELECT run_id, owner, pid, host, since, alive_at FROM {SCHEMA}.locks l"
                f" WHERE {_LIVE_HOLDER} ORDER BY since DESC", (LOCK_CLASS,)).fetchall()
        names = ("run_id", "owner", "pid", "host", "since", "alive_at")
        return [dict(zip(names, row, strict=True)) for row in rows]

    def lock_holder(self) -> dict[str, Any] | None:
        """The newest run holding a lock now, or None (see `lock_holders` for all of them)."""
        holders = self.lock_holders()
        return holders[0] if holders else None

    def heartbeat(self) -> None:
        """Mark the holder alive now, on the lock's own connection (the watchdog's thread
        calls it while the run works); a failure is left to the next write to report."""
        key = self._held_scope
        if key is None:
            return
        with self._lock_conn_lock, contextlib.suppress(psycopg.Error):
            # The server may have gone away and taken the session's lock with it: take it
            # again, or learn that another run holds the work now (the next reservation stops).
            self._hold_again()
            if self._lost is None and self._lock_conn is not None:
                self._lock_conn.execute(f"UPDATE {SCHEMA}.locks SET alive_at = %s"
                                        " WHERE scope_key = %s", (utc_text(), key))

    def release_lock(self) -> None:
        """Give the lock back (no-op when not held): closing its session frees it."""
        key, self._held_scope = self._held_scope, None
        if self._lost is not None:
            key = None  # the lock and its row are another run's now
        with self._lock_conn_lock:
            conn, self._lock_conn = self._lock_conn, None
            if conn is None:
                return
            with contextlib.suppress(psycopg.Error):
                if key is not None and not conn.broken:
                    conn.execute(f"DELETE FROM {SCHEMA}.locks WHERE scope_key = %s", (key,))
                    # Now, not when the server gets round to ending the closed session: the
                    # next run may take the lock the moment this returns.
                    conn.execute("SELECT pg_advisory_unlock(%s, %s)", (LOCK_CLASS, key))
            conn.close()

    # --- runs -------------------------------------------------------------------------------

    @_translated
    def create_run(self, run_id: str, *, command: str, inputs: Sequence[tuple[str, str]],
                   plan_key: str, options: Mapping[str, Any], total_rows: int,
                   started_at: str, units: int | None = None) -> None:
        self._writable()
        with self._transaction() as conn:
            row = conn.execute(
                f"INSERT INTO {SCHEMA}.runs ({', '.join(NEW_RUN_COLUMNS)})"
                f" VALUES ({','.join(['%s'] * len(NEW_RUN_COLUMNS))}) RETURNING seq",
                new_run_values(run_id, command, inputs, plan_key, options, total_rows,
                               started_at, units)).fetchone()
            assert row is not None
            self._run_seqs[run_id] = int(row[0])

    @_translated
    def find_unfinished_run(self, input_names: Sequence[str], plan_key: str,
                            *, command: str = "run",
                            retry_failed: bool = False) -> RunRecord | None:
        """As the SQLite store's: the latest matching run, if a resume may continue it."""
        if not self.exists:
            return None
        with self._lock:
            conn = self._connection()
            row = conn.execute(
                f"SELECT {_RUN_COLUMNS} FROM {SCHEMA}.runs WHERE command = %s AND"
                " input_names = %s AND plan_key = %s ORDER BY seq DESC LIMIT 1",
                (command, json.dumps(list(input_names)), plan_key)).fetchone()
            if row is None:
                return None
            if row[_EXIT] is None or row[_EXIT] in RESUMABLE_EXIT_CODES:
                return self._run_record(conn, row)
            if retry_failed and row[_EXIT] == int(ExitCode.ROW_PROBLEMS):
                record = self._run_record(conn, row)
                return record if record.retryable_failed else None
            return None

    @_translated
    def get_run(self, run_id: str) -> RunRecord | None:
        if not self.exists:
            return None
        with self._lock:
            conn = self._connection()
            row = conn.execute(f"SELECT {_RUN_COLUMNS} FROM {SCHEMA}.runs WHERE run_id = %s",
                               (run_id,)).fetchone()
            return None if row is None else self._run_record(conn, row)

    @_translated
    def mark_resumed(self, run_id: str, *, resumed_at: str,
                     options: Mapping[str, Any] | None = None, units: int | None = None) -> None:
        self._writable()
        with self._transaction() as conn:
            cur = conn.execute(
                f"UPDATE {SCHEMA}.runs SET finished_at = NULL, exit_code = NULL, counts = NULL,"
                " stopped = NULL, pid = %s, host = %s, resumes = resumes + 1,"
                " resumed_at = %s, options = COALESCE(%s, options),"
                " units = COALESCE(%s, units) WHERE run_id = %s",
                resumed_values(run_id, resumed_at, options, units))
            if cur.rowcount != 1:
                raise StoreError(f"state store {self.location}: no run {run_id}")

    @_translated
    def finish_run(self, run_id: str, *, exit_code: int, finished_at: str,
                   counts: Mapping[str, Any], resume_after: str | None = None,
                   stopped: Mapping[str, Any] | None = None) -> None:
        self._writable()
        if self._lost is not None:
            return  # the run that took the work over writes how it ends
        ours, mine = self._still_ours()
        with self._transaction() as conn:
            cur = conn.execute(
                f"UPDATE {SCHEMA}.runs SET exit_code = %s, finished_at = %s, counts = %s,"
                f" resume_after = %s, stopped = %s WHERE run_id = %s"
                f"{' AND ' + ours if ours else ''}",
                (*finished_values(run_id, exit_code, finished_at, counts, resume_after,
                                  stopped), *mine))
            if cur.rowcount == 1:
                return
            if ours and self._run_seq(conn, run_id) is not None:
                # The lock went with its session, unnoticed, and another run took the work
                # over since: its record is that run's to end.
                self._lost = (f"state store {self.location}: another run took this run's "
                              "work over while its lock was gone")
                return
            raise StoreError(f"state store {self.location}: no run {run_id}")

    @_translated
    def list_runs(self, limit: int = 20) -> list[RunRecord]:
        if not self.exists:
            return []
        with self._lock:
            conn = self._connection()
            rows = conn.execute(f"SELECT {_RUN_COLUMNS} FROM {SCHEMA}.runs ORDER BY seq DESC"
                                " LIMIT %s", (limit,)).fetchall()
            return [self._run_record(conn, row) for row in rows]

    def record_interrupted(self, run_id: str, finished_at: str, timeout: float = 1.0) -> None:
        """Record `run_id` as interrupted (exit 130) on a connection of its own that gives up
        after `timeout` seconds; a run that has an exit code already is left alone, as is one
        whose lock went to another run."""
        if self._lost is not None:
            return
        ours, mine = self._still_ours()
        try:
            with connect(self.url, name="batch-toggle",
                         connect_timeout=max(1, round(timeout)),
                         options=f"-c statement_timeout={int(timeout * 1000)}") as conn:
                conn.execute(f"UPDATE {SCHEMA}.runs SET exit_code = %s, finished_at = %s"
                             f" WHERE run_id = %s AND exit_code IS NULL"
                             f"{' AND ' + ours if ours else ''}",
                             (int(ExitCode.INTERRUPTED), finished_at, run_id, *mine))
        except psycopg.Error as exc:
            raise StoreError(f"state store {self.location}: {_said(exc)}") from exc

    def _run_record(self, conn: psycopg.Connection[Any], row: tuple[Any, ...]) -> RunRecord:
        by_status = conn.execute(
            f"SELECT status, count(*), count(*) FILTER (WHERE retryable) FROM {SCHEMA}.outcomes"
            " WHERE run = %s GROUP BY status", (row[0],)).fetchall()
        return run_record(row, by_status)

    def _run_seq(self, conn: psycopg.Connection[Any], run_id: str) -> int | None:
        seq = self._run_seqs.get(run_id)
        if seq is None:
            row = conn.execute(f"SELECT seq FROM {SCHEMA}.runs WHERE run_id = %s",
                               (run_id,)).fetchone()
            if row is None:
                return None
            seq = self._run_seqs[run_id] = int(row[0])
        return seq

    # --- outcomes and the ledger ------------------------------------------------------------

    @_translated
    def record_outcomes(self, run_id: str,
                        items: Sequence[tuple[int, Outcome, LedgerUpdates]],
                        sends: Sequence[SendEntry | tuple[Any, ...]] = ()) -> None:
        """Commit a batch of outcomes, what they taught the ledger, and `sends`, in ONE
        transaction (see the SQLite store's for the rules; they are the same)."""
        self._writable()
        if not items:
            self.record_sends(sends)
            return
        rows, ledger_rows = outcome_rows(items, lambda flag: flag)
        ours, mine = self._still_ours()
        with self._transaction() as conn:
            seq = self._run_seq(conn, run_id)
            if seq is None:
                raise StoreError(f"state store {self.location}: no run {run_id}")
            with conn.cursor() as cur:
                cur.executemany(
                    f"INSERT INTO {SCHEMA}.outcomes (run, row, {', '.join(OUTCOME_VALUES)})"
                    f" VALUES ({seq}, %s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)"
                    " ON CONFLICT (run, row) DO UPDATE SET "
                    + ", ".join(f"{f} = excluded.{f}" for f in OUTCOME_VALUES)
                    # A run whose work another took over adds what it learnt, but never
                    # overwrites that run's outcomes.
                    + (f" WHERE {ours}" if ours else ""),
                    [(*r, *mine) for r in rows] if ours else rows)
                if ledger_rows:
                    _number_confirmations(conn, ledger_rows)
                    # In item order: a later update of the same unit wins.
                    for ledger_row in ledger_rows:
                        cur.execute(_LEDGER_UPSERT, ledger_row)
                        if ledger_row["client_id"] is not None:
                            cur.execute(_LEDGER_CLIENT, ledger_row)
                if sends:
                    cur.executemany(_SENDS_UPSERT, _merged(sends))

    @_translated
    def load_outcomes(self, run_id: str) -> dict[int, Outcome]:
        if not self.exists:
            return {}
        with self._lock:
            conn = self._connection()
            seq = self._run_seq(conn, run_id)
            if seq is None:
                return {}
            rows = conn.execute(f"SELECT row, {', '.join(OUTCOME_VALUES)} FROM"
                                f" {SCHEMA}.outcomes WHERE run = %s", (seq,)).fetchall()
        return {int(r[0]): stored_outcome(r[1:]) for r in rows}

    @_translated
    def outcomes_table(self, run_id: str) -> pa.Table:
        seq: int | None = None
        if self.exists:
            with self._lock:
                seq = self._run_seq(self._connection(), run_id)
        if seq is None:
            return empty_table(OUTCOME_COLUMNS)
        with self._lock:
            table = _copy_out(self._connection(), OUTCOME_COLUMNS,
                              f"{SCHEMA}.outcomes WHERE run = {int(seq)}")
        return table.sort_by("row")

    @_translated
    def ledger_table(self, *, confirmed_only: bool = False,
                     columns: Sequence[str] | None = None) -> pa.Table:
        """As the SQLite store's `ledger_table`: same columns, same meanings."""
        wanted = ledger_columns(columns)
        if not self.exists:
            return empty_table(wanted)
        where = f" WHERE {CONFIRMED}" if confirmed_only else ""
        with self._lock:
            return _copy_out(self._connection(), wanted, f"{SCHEMA}.ledger l{where}")

    @_translated
    def job_clients(self, job_ids: Iterable[str] | None = None) -> dict[str, str]:
        if not self.exists:
            return {}
        sql = (f"SELECT DISTINCT job_id, client_id FROM {SCHEMA}.ledger"
               " WHERE client_id IS NOT NULL")
        with self._lock:
            conn = self._connection()
            if job_ids is None:
                return {str(j): str(c) for j, c in conn.execute(sql)}
            ids = list(dict.fromkeys(job_ids))
            rows = conn.execute(f"{sql} AND job_id = ANY(%s)", (ids,)).fetchall()
            return {str(j): str(c) for j, c in rows}

    # --- endpoints --------------------------------------------------------------------------

    @_translated
    def has_answered(self, endpoint: str) -> bool:
        if not self.exists:
            return False
        with self._lock:
            return self._connection().execute(
                f"SELECT 1 FROM {SCHEMA}.endpoints WHERE endpoint = %s",
                (endpoint,)).fetchone() is not None

    @_translated
    def record_answer(self, endpoint: str, at: str) -> None:
        self._writable()
        with self._transaction() as conn:
            conn.execute(
                f"INSERT INTO {SCHEMA}.endpoints (endpoint, first_answered_at, last_answered_at)"
                " VALUES (%s, %s, %s) ON CONFLICT (endpoint) DO UPDATE SET"
                " last_answered_at = excluded.last_answered_at", (endpoint, at, at))

    def slot_gate(self, api_key: str, *, timeout: float) -> PostgresSlotGate | None:
        """The key's budget, shared live with every process using it on this database
        (postgres_budget.py); None for a read-only view."""
        if self.readonly:
            return None
        gate = PostgresSlotGate(self.url, self.location, SCHEMA,
                                self._hasher.api_key_fingerprint(api_key), timeout,
                                guard=self._guard_sending)
        self._gates.append(gate)  # closed with the store
        return gate

    def _guard_sending(self, reconnected: bool) -> None:
        """The budget asks before each reservation: no slot, and so no request, for a run
        whose lock went to another run. The lock is verified on the server (`check_lock`)
        after the budget's own reconnection (an outage ends every session at once) and at
        least every LOCK_CHECK_EVERY seconds (a lock's session alone may be cut, or the host
        may have slept): a lost lock lets out no more than that second's requests."""
        verify = reconnected or time.monotonic() - self._verified_at >= LOCK_CHECK_EVERY
        self.check_lock(verify=verify)

    # --- the send log -----------------------------------------------------------------------

    @_translated
    def record_sends(self, entries: Sequence[SendEntry | tuple[Any, ...]]) -> None:
        self._writable()
        if not entries:
            return
        with self._transaction() as conn, conn.cursor() as cur:
            cur.executemany(_SENDS_UPSERT, _merged(entries))

    @_translated
    def recent_sends(self, now: Reading, keep: float, timeout: float,
                     key: str | None = None) -> list[LoggedSend]:
        if not self.exists:
            return []
        with self._lock:
            rows = self._connection().execute(
                f"SELECT sent, done, boot, sent_mono, done_mono FROM {SCHEMA}.sends"
                f" WHERE {_HELD}{_OF_KEY if key is not None else ''} ORDER BY sent",
                {**_held_args(now, keep, timeout), "key": key}).fetchall()
        return [LoggedSend(*row) for row in rows]

    @_translated
    def oldest_send(self, since_wall: float, key: str | None = None) -> float | None:
        if not self.exists:
            return None
        with self._lock:
            row = self._connection().execute(
                f"SELECT min(sent) FROM {SCHEMA}.sends WHERE sent >= %(since)s"
                f"{_OF_KEY if key is not None else ''}",
                {"since": since_wall, "key": key}).fetchone()
        return None if row is None or row[0] is None else float(row[0])

    def api_key_fingerprint(self, api_key: str) -> str:
        """How this store knows an API key (keys.py): never the key itself."""
        return self._hasher.api_key_fingerprint(api_key)

    @_translated
    def prune_sends(self, now: Reading, keep: float, timeout: float) -> None:
        self._writable()
        with self._transaction() as conn:
            conn.execute(f"DELETE FROM {SCHEMA}.sends WHERE NOT ({_HELD})",
                         _held_args(now, keep, timeout))

    @_translated
    def send_log(self) -> list[LoggedSend]:
        if not self.exists:
            return []
        with self._lock:
            rows = self._connection().execute(
                f"SELECT sent, done, boot, sent_mono, done_mono FROM {SCHEMA}.sends"
                " ORDER BY sent").fetchall()
        return [LoggedSend(*row) for row in rows]

    # --- migration --------------------------------------------------------------------------

    @_translated
    def load_dump(self, dump: StoreDump) -> dict[str, int]:
        """Add `dump`'s history (another store's, state/dump.py) to this one, in one
        transaction, and return how many of its rows of each kind this store now holds.

        Idempotent: what is here already (a run by its id, an outcome by run and row, a unit of
        the ledger, a send by its id, an endpoint) is left as it is, so a second migration
        adds nothing. The review keys' hashes mean something only under the secret they were
        made with: this store takes the dump's secret when it holds no history of its own yet,
        and refuses a dump made under another secret once it does."""
        self._writable()
        with self._transaction() as conn:
            conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", (LOCK_CLASS, _CREATE_LOCK))
            self._adopt_secret(conn, dump.secret)
            with conn.cursor() as cur:
                cur.executemany(
                    f"INSERT INTO {SCHEMA}.runs ({', '.join(RUN_FIELDS)}) VALUES"
                    f" ({', '.join(['%s'] * len(RUN_FIELDS))}) ON CONFLICT (run_id) DO NOTHING",
                    dump.runs)
                seqs = dict(conn.execute(f"SELECT run_id, seq FROM {SCHEMA}.runs").fetchall())
                cur.executemany(
                    f"INSERT INTO {SCHEMA}.outcomes (run, {', '.join(OUTCOME_FIELDS[1:])})"
                    f" VALUES ({', '.join(['%s'] * len(OUTCOME_FIELDS))})"
                    " ON CONFLICT (run, row) DO NOTHING",
                    [(seqs[o[0]], *o[1:]) for o in dump.outcomes])
                cur.executemany(
                    f"INSERT INTO {SCHEMA}.ledger ({', '.join(LEDGER_FIELDS)}) VALUES"
                    f" ({', '.join(['%s'] * len(LEDGER_FIELDS))})"
                    " ON CONFLICT (job_id, update_target) DO NOTHING", dump.ledger)
                cur.executemany(
                    f"INSERT INTO {SCHEMA}.sends ({', '.join(SEND_FIELDS)}) VALUES"
                    f" ({', '.join(['%s'] * len(SEND_FIELDS))}) ON CONFLICT (send_id) DO NOTHING",
                    dump.sends)
                cur.executemany(
                    f"INSERT INTO {SCHEMA}.endpoints ({', '.join(ENDPOINT_FIELDS)}) VALUES"
                    " (%s, %s, %s) ON CONFLICT (endpoint) DO NOTHING", dump.endpoints)
            # Confirmations made here later must number above every migrated one.
            conn.execute(f"UPDATE {SCHEMA}.meta SET value = convert_to(GREATEST("
                         "convert_from(value, 'UTF8')::bigint, %s)::text, 'UTF8')"
                         " WHERE key = 'ledger_seq'", (dump.ledger_seq,))
            return self._holding(conn, dump)

    def _adopt_secret(self, conn: psycopg.Connection[Any], secret: bytes) -> None:
        row = conn.execute(f"SELECT value FROM {SCHEMA}.meta WHERE key = 'hmac_secret'"
                           ).fetchone()
        if row is not None and bytes(row[0]) == secret:
            return
        history = conn.execute(f"SELECT EXISTS (SELECT 1 FROM {SCHEMA}.runs) OR EXISTS"
                               f" (SELECT 1 FROM {SCHEMA}.ledger)").fetchone()
        if history is not None and history[0]:
            raise StoreError(f"state store {self.location} already holds another store's "
                             "history (its review keys are hashed under another secret): "
                             "migrate into a database that no run has used yet")
        conn.execute(f"UPDATE {SCHEMA}.meta SET value = %s WHERE key = 'hmac_secret'",
                     (secret,))
        self._hasher = KeyHasher(secret)

    def _holding(self, conn: psycopg.Connection[Any], dump: StoreDump) -> dict[str, int]:
        """How many of `dump`'s rows, by their keys, this store holds (in the same
        transaction as the copy: the count verifies the copy, not a later state)."""
        def count(sql: str, keys: list[Any]) -> int:
            row = conn.execute(sql, (keys,)).fetchone()
            return int(row[0]) if row is not None else 0

        run_ids = [r[0] for r in dump.runs]
        return {
            "runs": count(f"SELECT count(*) FROM {SCHEMA}.runs WHERE run_id = ANY(%s)", run_ids),
            "outcomes": count(
                f"SELECT count(*) FROM {SCHEMA}.outcomes o JOIN {SCHEMA}.runs r ON r.seq = o.run"
                " WHERE (r.run_id || ' ' || o.row) = ANY(%s)",
                [f"{o[0]} {o[1]}" for o in dump.outcomes]),
            "ledger": count(f"SELECT count(*) FROM {SCHEMA}.ledger"
                            " WHERE (job_id || ' ' || update_target) = ANY(%s)",
                            [f"{u[0]} {u[1]}" for u in dump.ledger]),
            "sends": count(f"SELECT count(*) FROM {SCHEMA}.sends WHERE send_id = ANY(%s)",
                           [s[0] for s in dump.sends]),
            "endpoints": count(f"SELECT count(*) FROM {SCHEMA}.endpoints"
                               " WHERE endpoint = ANY(%s)", [e[0] for e in dump.endpoints]),
        }

    # --- helpers ----------------------------------------------------------------------------

    def _writable(self) -> None:
        if self.readonly:
            raise StoreError(f"state store {self.location}: opened read-only")


# A lock row counts while its session holds the advisory lock (LOCK_CLASS, scope_key).
_LIVE_HOLDER = ("EXISTS (SELECT 1 FROM pg_locks p WHERE p.locktype = 'advisory' AND p.granted"
                " AND p.classid::bigint = %s AND p.objsubid = 2"
                " AND p.objid::bigint = (l.scope_key::bigint & 4294967295))")

# sendlog.still_held in SQL. SQLite's two-argument min() is NULL when either side is;
# PostgreSQL's LEAST ignores NULLs, hence the explicit CASEs.
_HELD = (
    "CASE WHEN %(boot)s::text IS NOT NULL AND boot = %(boot)s::text AND sent_mono IS NOT NULL"
    " THEN (CASE WHEN done_mono IS NULL THEN LEAST(sent_mono, %(mono)s) + %(timeout)s"
    "            ELSE LEAST(done_mono, %(mono)s) END) > %(mono)s - %(keep)s"
    " ELSE (CASE WHEN done IS NULL THEN LEAST(sent, %(wall)s) + %(timeout)s"
    "            ELSE LEAST(done, %(wall)s) END) > %(wall)s - %(keep)s END")


def _try_lock(conn: psycopg.Connection[Any], key: int) -> bool:
    """Take the lock on the work `key` for `conn`'s session if nobody holds it."""
    (got,) = conn.execute("SELECT pg_try_advisory_lock(%s, %s)",
                          (LOCK_CLASS, key)).fetchone() or (False,)
    return bool(got)


def _holder_pid(conn: psycopg.Connection[Any], key: int) -> int | None:
    """The server process whose session holds the lock on the work `key`, if any."""
    row = conn.execute("SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted"
                       " AND classid::bigint = %s AND objsubid = 2 AND objid::bigint = %s",
                       (LOCK_CLASS, key & 0xFFFFFFFF)).fetchone()
    return None if row is None else int(row[0])


def _lock_row_of(conn: psycopg.Connection[Any], key: int) -> tuple[Any, ...] | None:
    """The holder the `locks` table names for the work `key`: (run_id, owner, pid, host,
    since), as `acquire_lock` wrote it, or None."""
    row = conn.execute(f"SELECT run_id, owner, pid, host, since FROM {SCHEMA}.locks"
                       " WHERE scope_key = %s", (key,)).fetchone()
    return None if row is None else tuple(row)


def _in_use_by(conn: psycopg.Connection[Any], key: int) -> str:
    """Who holds the lock on the work `key`, from its row in `locks`."""
    row = _lock_row_of(conn, key)
    if row is None:
        return "the same inputs and plan options are in use by another run (holder unknown)"
    run_id, owner, pid, host, since = row
    who = f"{owner}, " if owner else ""
    return (f"the same inputs and plan options are in use by run {run_id} ({who}pid {pid} on "
            f"host {host}, since {since})")


def _held_args(now: Reading, keep: float, timeout: float) -> dict[str, Any]:
    return {"wall": float(now.wall), "mono": float(now.mono), "boot": now.boot,
            "keep": float(keep), "timeout": float(timeout)}


# A send record of one key (parameter key), or of none (an older version's: anyone's).
_OF_KEY = " AND (key_fp IS NULL OR key_fp = %(key)s::text)"

_SENDS_UPSERT = (
    f"INSERT INTO {SCHEMA}.sends (send_id, sent, done, boot, sent_mono, done_mono, key_fp)"
    " VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (send_id) DO UPDATE SET"
    " sent = excluded.sent, key_fp = COALESCE(excluded.key_fp, sends.key_fp),"
    " done = COALESCE(excluded.done, sends.done), boot = COALESCE(excluded.boot, sends.boot),"
    " sent_mono = COALESCE(excluded.sent_mono, sends.sent_mono),"
    " done_mono = COALESCE(excluded.done_mono, sends.done_mono)")


def _merged(entries: Sequence[SendEntry | tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """One record per request (rows.merged_sends), in PostgreSQL's types."""
    return [(e.send_id, float(e.sent), None if e.done is None else float(e.done), e.boot,
             None if e.sent_mono is None else float(e.sent_mono),
             None if e.done_mono is None else float(e.done_mono), e.key)
            for e in merged_sends(entries)]


# A confirmation replaces the unit's confirmation and clears an older observation; an
# observation only replaces the observation. A new unit inherits its job's known client.
_LEDGER_UPSERT = f"""
INSERT INTO {SCHEMA}.ledger AS l (job_id, update_target, client_id,
                    conf_state, conf_hash, conf_entity, conf_at, conf_run, conf_seq,
                    obs_state, obs_entity, obs_at, obs_run)
VALUES (%(job_id)s, %(target)s,
        COALESCE(%(client_id)s::text, (SELECT client_id FROM {SCHEMA}.ledger
                 WHERE job_id = %(job_id)s AND client_id IS NOT NULL LIMIT 1)),
        CASE WHEN %(observed)s THEN NULL ELSE %(state)s::boolean END,
        CASE WHEN %(observed)s THEN NULL ELSE %(hash)s::text END,
        CASE WHEN %(observed)s THEN NULL ELSE %(entity)s::text END,
        CASE WHEN %(observed)s THEN NULL ELSE %(at)s::text END,
        CASE WHEN %(observed)s THEN NULL ELSE %(run)s::text END,
        CASE WHEN %(observed)s THEN NULL ELSE %(seq)s::bigint END,
        CASE WHEN %(observed)s THEN %(state)s::boolean END,
        CASE WHEN %(observed)s THEN %(entity)s::text END,
        CASE WHEN %(observed)s THEN %(at)s::text END,
        CASE WHEN %(observed)s THEN %(run)s::text END)
ON CONFLICT (job_id, update_target) DO UPDATE SET
    client_id   = COALESCE(excluded.client_id, l.client_id),
    conf_state  = CASE WHEN %(observed)s THEN l.conf_state  ELSE excluded.conf_state END,
    conf_hash   = CASE WHEN %(observed)s THEN l.conf_hash   ELSE excluded.conf_hash END,
    conf_entity = CASE WHEN %(observed)s THEN l.conf_entity ELSE excluded.conf_entity END,
    conf_at     = CASE WHEN %(observed)s THEN l.conf_at     ELSE excluded.conf_at END,
    conf_run    = CASE WHEN %(observed)s THEN l.conf_run    ELSE excluded.conf_run END,
    conf_seq    = CASE WHEN %(observed)s THEN l.conf_seq    ELSE excluded.conf_seq END,
    obs_state   = excluded.obs_state,
    obs_entity  = excluded.obs_entity,
    obs_at      = excluded.obs_at,
    obs_run     = excluded.obs_run
"""

# Keep both units of a job on the job's latest known client.
_LEDGER_CLIENT = (f"UPDATE {SCHEMA}.ledger SET client_id = %(client_id)s::text"
                  " WHERE job_id = %(job_id)s AND client_id IS DISTINCT FROM %(client_id)s::text")


def _number_confirmations(conn: psycopg.Connection[Any],
                          ledger_rows: list[dict[str, Any]]) -> None:
    """Number the confirmations among `ledger_rows` from meta.ledger_seq, advanced in the
    caller's transaction: the counter's row lock makes every other writer wait for this
    commit, so the numbers' order is the commits' order across hosts."""
    count = confirmations(ledger_rows)
    (last,) = conn.execute(
        f"UPDATE {SCHEMA}.meta SET value = convert_to((convert_from(value, 'UTF8')::bigint"
        " + %s)::text, 'UTF8') WHERE key = 'ledger_seq'"
        " RETURNING convert_from(value, 'UTF8')::bigint", (count,)).fetchone() or (0,)
    number_confirmations(ledger_rows, int(last) - count)


def _connect(url: str, *, readonly: bool, name: str = "batch-toggle") -> psycopg.Connection[Any]:
    """A session (pg_connect.connect), read-only when asked."""
    conn = connect(url, name=name)
    if readonly:
        conn.execute("SET default_transaction_read_only = on")
    return conn


def _meta(conn: psycopg.Connection[Any]) -> dict[str, bytes] | None:
    """The store's meta table, or None when the database has no `batch_toggle` schema."""
    found = conn.execute("SELECT to_regclass(%s)", (f"{SCHEMA}.meta",)).fetchone()
    if found is None or found[0] is None:
        return None
    return {str(k): bytes(v) for k, v in conn.execute(f"SELECT key, value FROM {SCHEMA}.meta")}


def _schema_exists(conn: psycopg.Connection[Any]) -> bool:
    return conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s",
                        (SCHEMA,)).fetchone() is not None


def _check_ours(meta: dict[str, bytes] | None, shown: str) -> bytes:
    """The store's secret, when `meta` is a batch-toggle store this version can use."""
    if meta is None or meta.get("application") != APPLICATION or "hmac_secret" not in meta:
        raise StoreError(f"state store {shown}: its schema {SCHEMA} is not a batch-toggle "
                         "state store")
    version = int(meta.get("schema_version", b"0"))
    if version > SCHEMA_VERSION:
        raise StoreError(f"state store {shown}: written by a newer batch-toggle (schema "
                         f"{version}, this one knows {SCHEMA_VERSION})")
    return meta["hmac_secret"]


def _read_secret(conn: psycopg.Connection[Any], shown: str) -> bytes | None:
    """The secret of an existing store; None when there is none yet (read-only open)."""
    if not _schema_exists(conn):
        return None
    return _check_ours(_meta(conn), shown)


def _ensure_schema(conn: psycopg.Connection[Any], shown: str) -> bytes:
    """Create the schema on first use (once, however many hosts start together) and return
    the store's secret; refuse a foreign or newer one."""
    if _schema_exists(conn):
        secret = _check_ours(_meta(conn), shown)
        _upgrade(conn)
        return secret
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", (LOCK_CLASS, _CREATE_LOCK))
        if _schema_exists(conn):  # another host created it while this one waited
            return _check_ours(_meta(conn), shown)
        conn.execute(f"CREATE SCHEMA {SCHEMA}")
        for statement in _TABLES.split(";"):
            if statement.strip():
                conn.execute(statement)  # type: ignore[arg-type] # our own constant text
        for statement in schema_statements(SCHEMA):
            conn.execute(statement)  # type: ignore[arg-type] # our own constant text
        secret = secrets.token_bytes(32)
        conn.execute(f"INSERT INTO {SCHEMA}.meta (key, value) VALUES ('application', %s),"
                     " ('schema_version', %s), ('hmac_secret', %s), ('ledger_seq', %s)",
                     (APPLICATION, str(SCHEMA_VERSION).encode(), secret, b"0"))
    return secret


def _upgrade(conn: psycopg.Connection[Any]) -> None:
    """Bring an older schema of ours to this version, step by step, once (under the lock that
    serialises creating it, however many hosts open it together)."""
    meta = _meta(conn) or {}
    if int(meta.get("schema_version", b"0")) >= SCHEMA_VERSION:
        return
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", (LOCK_CLASS, _CREATE_LOCK))
        (version,) = conn.execute(
            f"SELECT convert_from(value, 'UTF8')::int FROM {SCHEMA}.meta"
            " WHERE key = 'schema_version'").fetchone() or (0,)
        if version < 2:
            # Send records already there name no key: they keep counting for every key.
            conn.execute(f"ALTER TABLE {SCHEMA}.sends ADD COLUMN key_fp TEXT")
        conn.execute(f"UPDATE {SCHEMA}.meta SET value = %s WHERE key = 'schema_version'",
                     (str(SCHEMA_VERSION).encode(),))


def _copy_out(conn: psycopg.Connection[Any], columns: Sequence[tuple[str, str, pa.DataType]],
              source: str) -> pa.Table:
    """`columns` (name, SQL expression, type) of `source` into Arrow through COPY ... CSV and
    pyarrow's CSV parser: a million rows without a Python object each. One statement: one
    consistent snapshot."""
    names = [name for name, _, _ in columns]
    exprs = [f"({expr})::text" for _, expr, _ in columns]
    buffer = bytearray()
    with conn.cursor() as cur, cur.copy(
            f"COPY (SELECT {', '.join(exprs)} FROM {source}) TO STDOUT"  # type: ignore[arg-type]
            " (FORMAT csv, NULL '\\N')") as copy:
        for block in copy:
            buffer += block
    schema = pa.schema([(name, typ) for name, _, typ in columns])
    if not buffer:
        return schema.empty_table()
    text = pcsv.read_csv(
        pa.py_buffer(bytes(buffer)),
        read_options=pcsv.ReadOptions(column_names=names, block_size=1 << 24),
        parse_options=pcsv.ParseOptions(newlines_in_values=True),
        convert_options=pcsv.ConvertOptions(
            column_types={n: pa.string() for n in names}, null_values=["\\N"],
            strings_can_be_null=True, quoted_strings_can_be_null=False))
    arrays = []
    for (_, _, typ), col in zip(columns, text.columns, strict=True):
        if pa.types.is_boolean(typ):
            import pyarrow.compute as pc
            arrays.append(pc.equal(col, "true"))
        else:
            arrays.append(col.cast(typ))
    return pa.Table.from_arrays(arrays, schema=schema)
