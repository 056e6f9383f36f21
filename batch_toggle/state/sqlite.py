"""The state store: one SQLite file holding runs, row outcomes, the send log and the ledger.

This is the only module that speaks SQL, and the one boundary where sqlite3 errors become
`StoreError` (with the store's path in the message).

What it promises:

* Durability. The file is in WAL mode. `record_outcomes` commits one transaction with
  `synchronous=FULL`: when it returns, the WAL frames are fsynced, so a `kill -9` (or a power
  cut) right after loses nothing. The send log is written on a second connection with
  `synchronous=NORMAL`: a WAL commit is in the kernel's page cache when it returns, so it
  survives a killed process (only an OS crash or power cut may lose the last few sends), and
  every later FULL commit of an outcome fsyncs those frames too.
* Secrecy. The store never holds the API key or a review_key. Review keys exist here only as a
  keyed hash (HMAC-SHA256 under a random per-store secret kept in the `meta` table, truncated to
  128 bits), so the same key hashes differently in two stores and a leaked file cannot be
  matched against a list of keys from elsewhere. `LedgerUpdate` refuses anything that is not
  such a hash. The file, its `-wal`/`-shm` and the `.lock` sidecar are created mode 0600 (SQLite
  gives the `-wal`/`-shm` files the database file's mode); a missing parent directory is created
  0700.
* One run at a time. `acquire_lock` takes an OS lock (`fcntl.flock`) on the sidecar file
  `<path>.lock` and keeps it for as long as the store is open: the kernel drops it when the
  process dies, even by SIGKILL, so a killed run never leaves a stale lock. The holder writes
  its run id, pid, host and start time into the sidecar so that a second run can say who holds
  the store.
* Read-only views. `SqliteStore.open(path, readonly=True)` (for `validate` and `--dry-run`)
  opens an existing file with `mode=ro` and never writes to it (SQLite may leave empty
  `-wal`/`-shm` sidecars beside it, mode 0600, when no writer has them open); a file that does
  not exist gives an empty in-memory view, so callers need no special case and nothing is
  created. Every write method of a read-only store raises `StoreError`.

* Order without clocks. Runs are ordered by their insertion (`runs.seq`) and confirmations by
  a counter of the store's own (`ledger.conf_seq` from `meta.ledger_seq`, handed out inside
  the write transaction): "latest" never compares two processes' clocks. The send log is the
  one place where time across processes matters; each time in it is read on the wall clock
  and on the boot's monotonic clock (see sendlog.py for which one decides).

The schema is versioned with `PRAGMA user_version` (and marked as ours with
`PRAGMA application_id`); a file from a newer batch-toggle, or some other SQLite file, is
refused rather than guessed at.

Thread safety: each connection is guarded by its own lock and opened with
`check_same_thread=False`, so any thread may call the store (the committer calls it from the
event loop itself, see committer.py; a library caller may use another thread).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import os
import secrets
import socket
import sqlite3
import stat
import threading
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

import pyarrow as pa
import pyarrow.csv as pcsv

from batch_toggle.clock import utc_text
from batch_toggle.errors import ExitCode, StoreError, StoreLocked
from batch_toggle.outcome import Outcome
from batch_toggle.state.dump import (
    ENDPOINT_FIELDS,
    LEDGER_FIELDS,
    RUN_FIELDS,
    SEND_FIELDS,
    StoreDump,
)
from batch_toggle.state.keys import KeyHasher
from batch_toggle.state.records import (  # noqa: F401 - re-exported: tests name them here
    LedgerUpdate,
    LedgerUpdates,
    RunRecord,
    default_state_path,
)
from batch_toggle.state.rows import (
    CONFIRMED,
    NEW_RUN_COLUMNS,
    OUTCOME_COLUMNS,
    OUTCOME_VALUES,
    RUN_COLUMNS,
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

SCHEMA_VERSION = 6  # 2: runs.units; 3: runs.resume_after; 4: ledger.conf_seq, sends' clocks;
# 5: endpoints, runs.stopped
# 'BTgl': marks the file as a batch-toggle state store (PRAGMA application_id).
APPLICATION_ID = 0x4254676C

_BUSY_TIMEOUT_MS = 10_000

_SCHEMA = """
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value BLOB NOT NULL
) WITHOUT ROWID;

CREATE TABLE runs (
    seq         INTEGER PRIMARY KEY,      -- insertion order: "latest" never trusts the clock
    run_id      TEXT NOT NULL UNIQUE,
    command     TEXT NOT NULL,
    inputs      TEXT NOT NULL,            -- JSON [[name, sha256], ...]
    input_names TEXT NOT NULL,            -- JSON [name, ...], matched exactly by resume
    plan_key    TEXT NOT NULL,
    options     TEXT NOT NULL,            -- JSON
    total_rows  INTEGER NOT NULL,
    started_at  TEXT NOT NULL,
    finished_at TEXT,
    exit_code   INTEGER,
    counts      TEXT,                     -- JSON, as given to finish_run
    pid         INTEGER,
    host        TEXT,
    resumes     INTEGER NOT NULL DEFAULT 0,
    resumed_at  TEXT,
    units       INTEGER,                  -- requests the plan needs (status: what is left)
    resume_after TEXT,                    -- a daily limit's reset: no resume sends before it
    stopped     TEXT                      -- JSON {code, message}: why it ended before its queue
);
CREATE INDEX runs_by_inputs ON runs (command, input_names, plan_key);

-- One row per unit's representative input row (0-based over the whole input table).
CREATE TABLE outcomes (
    run                     INTEGER NOT NULL,     -- runs.seq
    row                     INTEGER NOT NULL,
    status                  TEXT NOT NULL,
    error_code              TEXT,
    error_message           TEXT,
    retryable               INTEGER,
    http_status             INTEGER,
    attempts                INTEGER NOT NULL,
    entity_id               TEXT,
    confirmed_do_notify_sms INTEGER,
    sent_at                 TEXT,
    latency_ms              REAL,
    PRIMARY KEY (run, row)
) WITHOUT ROWID;

-- Base URLs that have answered a run on this store (scheme://host:port): a first contact that
-- never answers stops the run, one that answered before rides out an outage (FirstContact).
CREATE TABLE endpoints (
    endpoint          TEXT PRIMARY KEY,
    first_answered_at TEXT NOT NULL,
    last_answered_at  TEXT NOT NULL
) WITHOUT ROWID;

-- Every request sent with this store (all runs): the limiter's memory across processes.
-- Each time is read on two clocks: the wall clock, and CLOCK_MONOTONIC of the boot named by
-- `boot`, which every process of that boot shares and no one can step (see sendlog.py).
CREATE TABLE sends (
    send_id   TEXT PRIMARY KEY,
    sent      REAL NOT NULL,  -- wall clock (time.time()) when the request left
    done      REAL,           -- wall clock when its response (or timeout) came, NULL in flight
    boot      TEXT,           -- /proc/sys/kernel/random/boot_id of the sender, NULL if unknown
    sent_mono REAL,           -- CLOCK_MONOTONIC of that boot when the request left
    done_mono REAL,           -- CLOCK_MONOTONIC when its response came, NULL in flight
    key_fp    TEXT            -- the API key's fingerprint (keys.py), NULL: any key's
);
CREATE INDEX sends_by_time ON sends (sent);

-- Per unit: what a PUT confirmed (conf_*) and, separately, what an audit last saw (obs_*).
-- client_id is the job's client, kept equal on both units of a job (a column here rather than
-- a table of its own: a join would double the cost of reading a million-row ledger).
-- A rowid table (not WITHOUT ROWID) so that bulk reads can walk it in rowid ranges.
CREATE TABLE ledger (
    job_id        TEXT NOT NULL,
    update_target TEXT NOT NULL,
    client_id     TEXT,
    conf_state    INTEGER,
    conf_hash     TEXT,
    conf_entity   TEXT,
    conf_at       TEXT,       -- NOT NULL exactly when a PUT confirmed this unit
    conf_run      TEXT,
    conf_seq      INTEGER,    -- order of confirmations: meta.ledger_seq when written, never a clock
    obs_state     INTEGER,
    obs_entity    TEXT,
    obs_at        TEXT,
    obs_run       TEXT,
    UNIQUE (job_id, update_target)
);
"""

_BULK_CHUNK = 200_000  # key values per bulk-read query: bounds the transient text to ~40 MB


_P = ParamSpec("_P")
_R = TypeVar("_R")


def _translated(
    method: Callable[Concatenate[SqliteStore, _P], _R],
) -> Callable[Concatenate[SqliteStore, _P], _R]:
    """Turn sqlite3 and OS errors into StoreError naming the store's path."""

    @functools.wraps(method)
    def wrapper(self: SqliteStore, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return method(self, *args, **kwargs)
        except sqlite3.Error as exc:
            raise StoreError(f"state store {self.path}: {exc}") from exc
        except OSError as exc:
            raise StoreError(f"state store {self.path}: {exc.strerror or exc}") from exc

    return wrapper


def _int(value: bool | None) -> int | None:
    return None if value is None else int(value)


class SqliteStore:
    """A handle on one state store file. Open with `SqliteStore.open` (or `state.open_store`);
    close (or use `with`)."""

    def __init__(self, path: Path, conn: sqlite3.Connection, sends_conn: sqlite3.Connection | None,
                 *, readonly: bool, exists: bool) -> None:
        self.path = path
        self.readonly = readonly
        self.exists = exists  # False for the empty view of a missing file (read-only)
        self._conn = conn
        self._sends_conn = sends_conn or conn
        self._lock = threading.RLock()
        self._sends_lock = threading.RLock() if sends_conn is not None else self._lock
        self._run_seqs: dict[str, int] = {}
        self._lock_fd: int | None = None
        self._hasher = KeyHasher(self._load_secret())
        with self._lock:
            names = {r[1] for r in conn.execute("PRAGMA table_info(runs)")}
        # A read-only view of an older file cannot be migrated: it reads the columns it
        # lacks as NULL.
        self._run_columns = ", ".join(c if c in names else "NULL" for c in RUN_COLUMNS)
        with self._lock:
            self._has_endpoints = conn.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'endpoints'"
            ).fetchone() is not None
        with self._sends_lock:
            send_names = {r[1] for r in self._sends_conn.execute("PRAGMA table_info(sends)")}
        self._send_columns = ", ".join(c if c in send_names else "NULL" for c in _SEND_FIELDS)
        self._held_sql = _held_sql(send_names)
        self._sends_keyed = "key_fp" in send_names  # not in a read-only view of an older file
        with self._lock:
            ledger_names = {r[1] for r in conn.execute("PRAGMA table_info(ledger)")}
        self._ledger_has_seq = "conf_seq" in ledger_names

    # --- opening and closing ----------------------------------------------------------------

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, readonly: bool = False) -> SqliteStore:
        """Open (creating it 0600 unless `readonly`) the store at `path`.

        Raises StoreError when the file cannot be opened, is not a SQLite database, belongs to
        something else, or was written by a newer batch-toggle.
        """
        path = Path(path).expanduser()
        try:
            if readonly:
                return cls._open_readonly(path)
            return cls._open_readwrite(path)
        except sqlite3.Error as exc:
            raise StoreError(f"state store {path}: {exc}") from exc
        except OSError as exc:
            raise StoreError(f"state store {path}: {exc.strerror or exc}") from exc

    @classmethod
    def _open_readwrite(cls, path: Path) -> SqliteStore:
        if not path.parent.exists():
            # Only the leaf is made 0700; existing directories are the user's business.
            os.makedirs(path.parent, mode=0o700, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise StoreError(f"state store {path}: not a regular file")
            if st.st_mode & 0o077:
                os.fchmod(fd, 0o600)  # tighten a file someone created loosely
        finally:
            os.close(fd)
        for suffix in ("-wal", "-shm"):
            _tighten(Path(f"{path}{suffix}"))
        conn = _connect(str(path), uri=False)
        sends_conn = None
        try:
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StoreError(f"state store {path}: cannot use WAL mode (got {mode})")
            conn.execute("PRAGMA synchronous=FULL")
            _ensure_schema(conn, path)
            sends_conn = _connect(str(path), uri=False)
            sends_conn.execute("PRAGMA synchronous=NORMAL")
        except BaseException:
            conn.close()
            if sends_conn is not None:
                sends_conn.close()
            raise
        return cls(path, conn, sends_conn, readonly=False, exists=True)

    @classmethod
    def _open_readonly(cls, path: Path) -> SqliteStore:
        if not path.exists():
            return cls._empty_view(path)
        uri = "file:" + urllib.parse.quote(str(path.resolve())) + "?mode=ro"
        conn = _connect(uri, uri=True)
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version == 0 and not _has_tables(conn):
                conn.close()  # created but never initialised: nothing to read
                return cls._empty_view(path)
            _check_ours(conn, path, version)
        except BaseException:
            conn.close()
            raise
        return cls(path, conn, None, readonly=True, exists=True)

    @classmethod
    def _empty_view(cls, path: Path) -> SqliteStore:
        conn = _connect(":memory:", uri=False)
        _ensure_schema(conn, path)
        return cls(path, conn, None, readonly=True, exists=False)

    def close(self) -> None:
        """Release the lock (if held) and close the connections. Safe to call twice."""
        self.release_lock()
        with self._lock, self._sends_lock:
            if self._sends_conn is not self._conn:
                self._sends_conn.close()
            self._conn.close()

    @property
    def location(self) -> str:
        """The file's path, as messages show it."""
        return str(self.path)

    def record_interrupted(self, run_id: str, finished_at: str, timeout: float = 1.0) -> None:
        """`record_interrupted` on this store's file (a connection of its own)."""
        record_interrupted(self.path, run_id, finished_at, timeout)

    def __enter__(self) -> SqliteStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- review keys ------------------------------------------------------------------------

    def review_key_hash(self, key: str) -> str:
        """The keyed hash under which this store knows a (normalised) review key (keys.py)."""
        return self._hasher.review_key_hash(key)

    def review_key_hashes(self, keys: Iterable[str]) -> list[str]:
        """`review_key_hash` of many keys (about 1 µs each)."""
        return self._hasher.review_key_hashes(keys)

    def _load_secret(self) -> bytes:
        with self._lock:
            row = self._conn.execute("SELECT value FROM meta WHERE key = 'hmac_secret'").fetchone()
        if row is None:
            raise StoreError(f"state store {self.path}: missing its review-key secret")
        return bytes(row[0])

    # --- the run lock -----------------------------------------------------------------------

    @_translated
    def acquire_lock(self, run_id: str, owner: str = "", *, scope: str = "") -> None:
        """Take the one-run-at-a-time lock for `run_id` until `release_lock` or `close`.
        The whole file is one scope: `scope` (the work, see Store.acquire_lock) is ignored.

        `owner` (e.g. the user name) is shown to whoever finds the store locked. Raises
        StoreLocked naming the holder when another process (or another handle in this one)
        holds it.
        """
        self._writable()
        if self._lock_fd is not None:
            return
        lock_path = Path(f"{self.path}.lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            if os.fstat(fd).st_mode & 0o077:
                os.fchmod(fd, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise StoreLocked(self._locked_message(fd)) from None
            holder = {
                "run_id": run_id, "owner": owner, "pid": os.getpid(),
                "host": socket.gethostname(), "since": utc_text(),
            }
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(holder).encode(), 0)
        except BaseException:
            os.close(fd)
            raise
        self._lock_fd = fd

    def _locked_message(self, fd: int) -> str:
        try:
            holder = json.loads(os.pread(fd, 4096, 0) or b"{}")
        except ValueError:
            holder = {}
        if not holder.get("run_id"):
            return f"state store {self.path} is in use by another run (holder unknown)"
        who = f"{holder.get('owner')}, " if holder.get("owner") else ""
        return (f"state store {self.path} is in use by run {holder['run_id']} "
                f"({who}pid {holder.get('pid')} on host {holder.get('host')}, "
                f"since {holder.get('since')})")

    def lock_holder(self) -> dict[str, Any] | None:
        """Who holds the run lock right now (run_id, owner, pid, host, since), or None.

        A probe for `batch-toggle status`: it never takes the lock for longer than the probe
        and never creates the sidecar. A lock held by this handle counts as held.
        """
        lock_path = Path(f"{self.path}.lock")
        try:
            fd = os.open(lock_path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StoreError(f"state store {self.path}: {exc.strerror or exc}") from exc
        try:
            if self._lock_fd is None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                except BlockingIOError:
                    pass  # held: read the holder below
                else:
                    return None  # closing the descriptor drops the probe's lock
            try:
                holder = json.loads(os.pread(fd, 4096, 0) or b"{}")
            except ValueError:
                holder = {}
            holder = holder if isinstance(holder, dict) else {}
            if holder:
                holder["alive_at"] = utc_text(os.fstat(fd).st_mtime)
            return holder
        finally:
            os.close(fd)

    def lock_holders(self) -> list[dict[str, Any]]:
        """[lock_holder()] when the lock is held, else []: one run at a time on this store."""
        holder = self.lock_holder()
        return [] if holder is None else [holder]

    def heartbeat(self) -> None:
        """Mark the run that holds the lock as alive now (the sidecar's mtime): `status` tells a
        run whose process is alive but no longer making progress ("stalled") from a running one.
        Touches no SQLite connection, so another thread may call it while the run works."""
        fd = self._lock_fd
        if fd is not None:
            with contextlib.suppress(OSError):
                os.utime(fd)

    def release_lock(self) -> None:
        """Give the lock back (no-op when not held)."""
        fd, self._lock_fd = self._lock_fd, None
        if fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)  # no stale holder details for the next reader
        os.close(fd)  # closing the descriptor drops the flock

    # --- runs -------------------------------------------------------------------------------

    @_translated
    def create_run(self, run_id: str, *, command: str, inputs: Sequence[tuple[str, str]],
                   plan_key: str, options: Mapping[str, Any], total_rows: int,
                   started_at: str, units: int | None = None) -> None:
        """Record a new run. `inputs` are (name, sha256) pairs in the order given; `units` is
        how many units its plan sends."""
        self._writable()
        with self._lock, _transaction(self._conn):
            cur = self._conn.execute(
                f"INSERT INTO runs ({', '.join(NEW_RUN_COLUMNS)})"
                f" VALUES ({','.join('?' * len(NEW_RUN_COLUMNS))})",
                new_run_values(run_id, command, inputs, plan_key, options, total_rows,
                               started_at, units))
            self._run_seqs[run_id] = int(cur.lastrowid or 0)

    @_translated
    def find_unfinished_run(self, input_names: Sequence[str], plan_key: str,
                            *, command: str = "run",
                            retry_failed: bool = False) -> RunRecord | None:
        """The latest run of `command` with exactly these input names (in order) and plan key
        that `run --resume` may continue (see `RunRecord.unfinished`), or None.

        Only the latest matching run is considered: once it finished, older unfinished ones
        are history, not work. With `retry_failed`, a latest run that finished with exit 1 and
        has retryable failures counts too: `--resume --retry-failed` re-sends only those,
        where a new run would also re-send the permanent failures.
        """
        with self._lock:
            row = self._conn.execute(
                f"SELECT {self._run_columns} FROM runs WHERE command = ? AND input_names = ?"
                " AND plan_key = ? ORDER BY seq DESC LIMIT 1",
                (command, json.dumps(list(input_names)), plan_key)).fetchone()
            if row is None:
                return None
            if row[_EXIT] is None or row[_EXIT] in RESUMABLE_EXIT_CODES:
                return self._run_record(row)
            if retry_failed and row[_EXIT] == int(ExitCode.ROW_PROBLEMS):
                record = self._run_record(row)
                return record if record.retryable_failed else None
            return None

    @_translated
    def get_run(self, run_id: str) -> RunRecord | None:
        """The run with this id, or None."""
        with self._lock:
            row = self._conn.execute(f"SELECT {self._run_columns} FROM runs WHERE run_id = ?",
                                     (run_id,)).fetchone()
            return None if row is None else self._run_record(row)

    @_translated
    def mark_resumed(self, run_id: str, *, resumed_at: str,
                     options: Mapping[str, Any] | None = None, units: int | None = None) -> None:
        """A resume took this run over: clear its finish, note this process and the time.

        `options` replaces the stored options when given (throttling may differ on resume);
        `units` replaces the plan's unit count (the ledger may have changed the plan).
        """
        self._writable()
        with self._lock, _transaction(self._conn):
            cur = self._conn.execute(
                "UPDATE runs SET finished_at = NULL, exit_code = NULL, counts = NULL,"
                " stopped = NULL, pid = ?, host = ?, resumes = resumes + 1, resumed_at = ?,"
                " options = COALESCE(?, options), units = COALESCE(?, units) WHERE run_id = ?",
                resumed_values(run_id, resumed_at, options, units))
            if cur.rowcount != 1:
                raise StoreError(f"state store {self.path}: no run {run_id}")

    @_translated
    def finish_run(self, run_id: str, *, exit_code: int, finished_at: str,
                   counts: Mapping[str, Any], resume_after: str | None = None,
                   stopped: Mapping[str, Any] | None = None) -> None:
        """Record how a run ended. A run that ended 4 or 130 stays resumable; `resume_after`
        (a daily limit's reset) is when a resume may send again; `stopped` ({code, message})
        why it ended before its queue did (status shows it)."""
        self._writable()
        with self._lock, _transaction(self._conn):
            cur = self._conn.execute(
                "UPDATE runs SET exit_code = ?, finished_at = ?, counts = ?, resume_after = ?,"
                " stopped = ? WHERE run_id = ?",
                finished_values(run_id, exit_code, finished_at, counts, resume_after, stopped))
            if cur.rowcount != 1:
                raise StoreError(f"state store {self.path}: no run {run_id}")

    @_translated
    def list_runs(self, limit: int = 20) -> list[RunRecord]:
        """The latest `limit` runs, newest first, with their outcome counts."""
        with self._lock:
            rows = self._conn.execute(
                f"SELECT {self._run_columns} FROM runs ORDER BY seq DESC LIMIT ?",
                (limit,)).fetchall()
            return [self._run_record(row) for row in rows]

    def _run_record(self, row: tuple[Any, ...]) -> RunRecord:
        by_status = self._conn.execute(
            "SELECT status, count(*), sum(retryable) FROM outcomes WHERE run = ?"
            " GROUP BY status", (row[0],)).fetchall()
        return run_record(row, by_status)

    def _run_seq(self, run_id: str) -> int:
        seq = self._run_seqs.get(run_id)
        if seq is None:
            row = self._conn.execute("SELECT seq FROM runs WHERE run_id = ?",
                                     (run_id,)).fetchone()
            if row is None:
                raise StoreError(f"state store {self.path}: no run {run_id}")
            seq = self._run_seqs[run_id] = int(row[0])
        return seq

    # --- outcomes and the ledger ------------------------------------------------------------

    @_translated
    def record_outcomes(self, run_id: str,
                        items: Sequence[tuple[int, Outcome, LedgerUpdates]],
                        sends: Sequence[SendEntry | tuple[Any, ...]] = ()) -> None:
        """Commit a batch of outcomes (and what they taught the ledger) in ONE transaction.

        `sends` are send-log entries (as for `record_sends`) that nobody waits on: written in
        the same transaction, they cost no commit of their own (a commit, not the rows, is most
        of what a round costs) and are fsynced with the outcomes.

        `int` is the unit's representative row (0-based over the whole input table); a row that
        already has an outcome in this run is overwritten (a retry of a failed row). Durable
        when it returns: the commit is fsynced (synchronous=FULL).

        In the ledger, a confirmation replaces the unit's previous confirmation and clears any
        older observation; an observation is stored beside a confirmation and never replaces
        it (see `ledger_table`).
        """
        self._writable()
        if not items:
            self.record_sends(sends)
            return
        rows, ledger_rows = outcome_rows(items, _int)
        with self._lock:
            seq = self._run_seq(run_id)
            with _transaction(self._conn):
                self._conn.executemany(
                    f"INSERT OR REPLACE INTO outcomes (run, row, {', '.join(OUTCOME_VALUES)})"
                    f" VALUES ({seq}, ?,?,?,?,?,?,?,?,?,?,?)", rows)
                if ledger_rows:
                    _number_confirmations(self._conn, ledger_rows)
                    # In item order: a later update of the same unit wins.
                    self._conn.executemany(_LEDGER_UPSERT, ledger_rows)
                    self._conn.executemany(_LEDGER_CLIENT, ledger_rows)
                if sends:
                    self._conn.executemany(_SENDS_UPSERT, merged_sends(sends))

    @_translated
    def load_outcomes(self, run_id: str) -> dict[int, Outcome]:
        """Every stored outcome of a run, by representative row ({} for an unknown run)."""
        with self._lock:
            try:
                seq = self._run_seq(run_id)
            except StoreError:
                return {}
            rows = self._conn.execute(
                f"SELECT row, {', '.join(OUTCOME_VALUES)} FROM outcomes WHERE run = ?",
                (seq,)).fetchall()
        return {r[0]: stored_outcome(r[1:]) for r in rows}

    @_translated
    def outcomes_table(self, run_id: str) -> pa.Table:
        """The same as `load_outcomes`, as an Arrow table (column `row` plus every Outcome
        field, sorted by row): the cheap way to join a million outcomes onto a plan."""
        with self._lock:
            try:
                seq = self._run_seq(run_id)
            except StoreError:
                seq = -1
            table = _bulk_read(self._conn, OUTCOME_COLUMNS, f"outcomes WHERE run = {seq}",
                               key="row")
        return table.sort_by("row")

    @_translated
    def ledger_table(self, *, confirmed_only: bool = False,
                     columns: Sequence[str] | None = None) -> pa.Table:
        """The ledger, one row per (job_id, update_target), in no particular order.

        Columns (all, or those named in `columns`, in this order): job_id, update_target,
        do_notify_sms, review_key_hash, entity_id, client_id, confirmed_at, run_id, observed,
        observed_do_notify_sms, observed_at, confirmed_seq.

        For a unit a PUT confirmed, the first columns describe that confirmation and `observed`
        is False; an audit after it only fills `observed_do_notify_sms`/`observed_at` (so an
        audit that contradicts a confirmation is visible, and never erases it). For a unit only
        an audit has seen, `observed` is True, `review_key_hash` is null and `confirmed_at` is
        when it was seen. `client_id` is the client the job belongs to, as Logis last said
        (on both units of the job). `confirmed_only=True` leaves out the
        observed-only units (what --skip-confirmed and the sticky opt-out use).
        `confirmed_seq` orders the confirmations: of two, the higher was written later.
        """
        wanted = ledger_columns(columns)
        where = f" WHERE {CONFIRMED}" if confirmed_only else " WHERE 1"
        source = "ledger l"
        if not self._ledger_has_seq:
            # A schema-3 file opened read-only: number its confirmations as the migration will.
            source += f" LEFT JOIN ({_LEGACY_ORDER}) AS o ON o.id = l.rowid"
            wanted = tuple((name, expr.replace("l.conf_seq", "o.n"), typ)
                           for name, expr, typ in wanted)
        with self._lock:
            return _bulk_read(self._conn, wanted, source + where, key="l.rowid")

    @_translated
    def job_clients(self, job_ids: Iterable[str] | None = None) -> dict[str, str]:
        """job_id -> client_id, as Logis reported them (for client-level conflicts).

        With `job_ids`, only those jobs (cheaper than the whole map when few rows target
        `client`).
        """
        sql = "SELECT DISTINCT job_id, client_id FROM ledger WHERE client_id IS NOT NULL"
        with self._lock:
            if job_ids is None:
                return dict(self._conn.execute(sql))
            ids = list(dict.fromkeys(job_ids))
            out: dict[str, str] = {}
            for i in range(0, len(ids), 500):
                part = ids[i:i + 500]
                out.update(self._conn.execute(
                    f"{sql} AND job_id IN ({','.join('?' * len(part))})", part))
            return out

    # --- endpoints --------------------------------------------------------------------------

    @_translated
    def has_answered(self, endpoint: str) -> bool:
        """Has `endpoint` (scheme://host:port) answered a run on this store before?"""
        if not self._has_endpoints:  # a read-only view of an older file
            return False
        with self._lock:
            return self._conn.execute("SELECT 1 FROM endpoints WHERE endpoint = ?",
                                      (endpoint,)).fetchone() is not None

    @_translated
    def record_answer(self, endpoint: str, at: str) -> None:
        """`endpoint` answered at `at` (UTC ISO 8601): remembered for later runs."""
        self._writable()
        with self._lock, _transaction(self._conn):
            self._conn.execute(
                "INSERT INTO endpoints (endpoint, first_answered_at, last_answered_at)"
                " VALUES (?, ?, ?) ON CONFLICT (endpoint) DO UPDATE SET"
                " last_answered_at = excluded.last_answered_at", (endpoint, at, at))

    def slot_gate(self, api_key: str, *, timeout: float) -> None:
        """None: one run at a time on a file; the send log carries the budget between runs."""
        return None

    # --- the send log -----------------------------------------------------------------------

    @_translated
    def record_sends(self, entries: Sequence[SendEntry | tuple[Any, ...]]) -> None:
        """Log requests (see `SendEntry`; a plain (send_id, sent, done) tuple is a record on
        the wall clock alone).

        Record a request when it leaves (done None) and again under the same `send_id` when
        its response or timeout comes: a run killed mid-request still leaves the send on
        record. Written with synchronous=NORMAL (see the module docstring): it survives a killed
        process, is fsynced by the next outcome commit, and costs no fsync of its own.
        """
        self._writable()
        if not entries:
            return
        with self._sends_lock, _transaction(self._sends_conn):
            self._sends_conn.executemany(_SENDS_UPSERT, merged_sends(entries))

    @_translated
    def recent_sends(self, now: Reading, keep: float, timeout: float,
                     key: str | None = None) -> list[LoggedSend]:
        """The requests that still hold a slot at `now` in a window whose slots are held `keep`
        seconds after the reply (`sendlog.still_held`), oldest first. With `key` (an API key's
        fingerprint, `api_key_fingerprint`), only that key's (and those that name none)."""
        with self._sends_lock:
            rows = self._sends_conn.execute(
                f"SELECT {self._send_columns} FROM sends WHERE {self._held_sql}"
                f"{self._of_key(key)} ORDER BY sent",
                {**_held_args(now, keep, timeout), "key": key}).fetchall()
        return [LoggedSend(*row) for row in rows]

    @_translated
    def oldest_send(self, since_wall: float, key: str | None = None) -> float | None:
        """The wall time of the oldest request sent at or after `since_wall` (with `key`: of
        that key, as `recent_sends`), or None: where a daily window that a 429 says is full
        frees its first slot."""
        with self._sends_lock:
            row = self._sends_conn.execute(
                f"SELECT min(sent) FROM sends WHERE sent >= :since{self._of_key(key)}",
                {"since": since_wall, "key": key}).fetchone()
        return None if row is None or row[0] is None else float(row[0])

    def _of_key(self, key: str | None) -> str:
        """The send log's condition for one key's records (parameter :key), or none."""
        if key is None or not self._sends_keyed:
            return ""
        return " AND (key_fp IS NULL OR key_fp = :key)"

    def api_key_fingerprint(self, api_key: str) -> str:
        """How this store knows an API key (keys.py): never the key itself."""
        return self._hasher.api_key_fingerprint(api_key)

    @_translated
    def prune_sends(self, now: Reading, keep: float, timeout: float) -> None:
        """Forget the requests that hold no slot at `now` in a window of `keep` (the longest
        any rule may ask for: see `limiter.SEND_LOG_KEEP`), by the same rule as
        `recent_sends`."""
        self._writable()
        with self._sends_lock, _transaction(self._sends_conn):
            self._sends_conn.execute(f"DELETE FROM sends WHERE NOT ({self._held_sql})",
                                     _held_args(now, keep, timeout))

    @_translated
    def send_log(self) -> list[LoggedSend]:
        """Every request on record, oldest first (for tests and for looking)."""
        with self._sends_lock:
            rows = self._sends_conn.execute(
                f"SELECT {self._send_columns} FROM sends ORDER BY sent").fetchall()
        return [LoggedSend(*row) for row in rows]

    # --- migration --------------------------------------------------------------------------

    @_translated
    def dump(self) -> StoreDump:
        """Everything this store holds, for `state migrate` (state/dump.py), read in one
        transaction: one consistent snapshot even while a run writes."""
        def as_bool(value: Any) -> bool | None:
            return None if value is None else bool(value)

        with self._lock:
            began = not self._conn.in_transaction
            if began:
                self._conn.execute("BEGIN")
            try:
                conn = self._conn
                (seq,) = conn.execute(
                    "SELECT value FROM meta WHERE key = 'ledger_seq'").fetchone() or (0,)
                runs = [tuple(r[1:]) for r in conn.execute(
                    f"SELECT seq, {', '.join(RUN_FIELDS)} FROM runs ORDER BY seq")]
                outcomes = [(r[0], r[1], r[2], r[3], r[4], as_bool(r[5]), *r[6:9],
                             as_bool(r[9]), *r[10:]) for r in conn.execute(
                    "SELECT r.run_id, o.row, o.status, o.error_code, o.error_message,"
                    " o.retryable, o.http_status, o.attempts, o.entity_id,"
                    " o.confirmed_do_notify_sms, o.sent_at, o.latency_ms"
                    " FROM outcomes o JOIN runs r ON r.seq = o.run ORDER BY o.run, o.row")]
                ledger = [(*r[:3], as_bool(r[3]), *r[4:9], as_bool(r[9]), *r[10:])
                          for r in conn.execute(
                              f"SELECT {', '.join(LEDGER_FIELDS)} FROM ledger ORDER BY rowid")]
                sends = [tuple(r) for r in conn.execute(
                    f"SELECT {', '.join(SEND_FIELDS)} FROM sends ORDER BY sent")]
                endpoints = [tuple(r) for r in conn.execute(
                    f"SELECT {', '.join(ENDPOINT_FIELDS)} FROM endpoints ORDER BY endpoint")]
            finally:
                if began:
                    self._conn.execute("COMMIT")
        return StoreDump(self._load_secret(), int(seq), runs, outcomes, ledger, sends,
                         endpoints)

    # --- helpers ----------------------------------------------------------------------------

    def _writable(self) -> None:
        if self.readonly:
            raise StoreError(f"state store {self.path}: opened read-only")


_EXIT = RUN_COLUMNS.index("exit_code")

# A send-log record: a later record of the same send adds its reply time (and monotonic
# readings), never removes them.
_SENDS_UPSERT = (
    "INSERT INTO sends (send_id, sent, done, boot, sent_mono, done_mono, key_fp)"
    " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (send_id) DO UPDATE SET sent = excluded.sent,"
    " done = COALESCE(excluded.done, done), boot = COALESCE(excluded.boot, boot),"
    " sent_mono = COALESCE(excluded.sent_mono, sent_mono),"
    " done_mono = COALESCE(excluded.done_mono, done_mono),"
    " key_fp = COALESCE(excluded.key_fp, key_fp)")
_SEND_FIELDS = ("sent", "done", "boot", "sent_mono", "done_mono")  # LoggedSend's, in order


def _held_sql(columns: set[str]) -> str:
    """`sendlog.still_held` in SQL, over the send log's columns (a schema-3 file, read only,
    lacks the monotonic ones: then the wall clock decides, as it did). Parameters: see
    `_held_args`. SQLite's two-argument min() is NULL when either side is: hence COALESCE."""
    wall = "COALESCE(min(done, :wall), min(sent, :wall) + :timeout) > :wall - :keep"
    if not {"boot", "sent_mono", "done_mono"} <= columns:
        return wall
    mono = ("COALESCE(min(done_mono, :mono), min(sent_mono, :mono) + :timeout)"
            " > :mono - :keep")
    return (f"CASE WHEN :boot IS NOT NULL AND boot = :boot AND sent_mono IS NOT NULL"
            f" THEN {mono} ELSE {wall} END")


def _held_args(now: Reading, keep: float, timeout: float) -> dict[str, Any]:
    return {"wall": now.wall, "mono": now.mono, "boot": now.boot, "keep": keep,
            "timeout": timeout}


# One statement for both kinds of ledger update, so that a batch applies in item order.
# A confirmation replaces the unit's confirmation and clears an older observation; an
# observation only replaces the observation. A new unit inherits its job's known client.
_LEDGER_UPSERT = """
INSERT INTO ledger (job_id, update_target, client_id,
                    conf_state, conf_hash, conf_entity, conf_at, conf_run, conf_seq,
                    obs_state, obs_entity, obs_at, obs_run)
VALUES (:job_id, :target,
        COALESCE(:client_id, (SELECT client_id FROM ledger
                              WHERE job_id = :job_id AND client_id IS NOT NULL LIMIT 1)),
        CASE WHEN :observed THEN NULL ELSE :state END,
        CASE WHEN :observed THEN NULL ELSE :hash END,
        CASE WHEN :observed THEN NULL ELSE :entity END,
        CASE WHEN :observed THEN NULL ELSE :at END,
        CASE WHEN :observed THEN NULL ELSE :run END,
        CASE WHEN :observed THEN NULL ELSE :seq END,
        CASE WHEN :observed THEN :state END,
        CASE WHEN :observed THEN :entity END,
        CASE WHEN :observed THEN :at END,
        CASE WHEN :observed THEN :run END)
ON CONFLICT (job_id, update_target) DO UPDATE SET
    client_id   = COALESCE(excluded.client_id, client_id),
    conf_state  = CASE WHEN :observed THEN conf_state  ELSE excluded.conf_state END,
    conf_hash   = CASE WHEN :observed THEN conf_hash   ELSE excluded.conf_hash END,
    conf_entity = CASE WHEN :observed THEN conf_entity ELSE excluded.conf_entity END,
    conf_at     = CASE WHEN :observed THEN conf_at     ELSE excluded.conf_at END,
    conf_run    = CASE WHEN :observed THEN conf_run    ELSE excluded.conf_run END,
    conf_seq    = CASE WHEN :observed THEN conf_seq    ELSE excluded.conf_seq END,
    obs_state   = excluded.obs_state,
    obs_entity  = excluded.obs_entity,
    obs_at      = excluded.obs_at,
    obs_run     = excluded.obs_run
"""
def _number_confirmations(conn: sqlite3.Connection, ledger_rows: list[dict[str, Any]]) -> None:
    """Give each confirmation among `ledger_rows` (in order) the next number of the store's
    counter, meta.ledger_seq, and advance it: inside the caller's write transaction, so two
    processes never hand out the same number and the order is the order of the commits."""
    (last,) = conn.execute("SELECT value FROM meta WHERE key = 'ledger_seq'").fetchone()
    last = number_confirmations(ledger_rows, int(last))
    conn.execute("UPDATE meta SET value = ? WHERE key = 'ledger_seq'", (last,))


# Keep both units of a job on the job's latest known client.
_LEDGER_CLIENT = """
UPDATE ledger SET client_id = :client_id
WHERE job_id = :job_id AND :client_id IS NOT NULL AND client_id IS NOT :client_id
"""


def _connect(database: str, *, uri: bool) -> sqlite3.Connection:
    # isolation_level=None: no implicit transactions; _transaction() says where they are.
    conn = sqlite3.connect(database, uri=uri, isolation_level=None, check_same_thread=False,
                           timeout=_BUSY_TIMEOUT_MS / 1000)
    conn.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")
    return conn


@contextlib.contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    # IMMEDIATE: take the write lock up front, so a busy store waits (busy_timeout) at BEGIN
    # instead of failing half-way through.
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _has_tables(conn: sqlite3.Connection) -> bool:
    return conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] > 0


def _check_ours(conn: sqlite3.Connection, path: Path, version: int) -> None:
    app_id = conn.execute("PRAGMA application_id").fetchone()[0]
    if app_id != APPLICATION_ID:
        raise StoreError(f"state store {path}: not a batch-toggle state store")
    if version > SCHEMA_VERSION:
        raise StoreError(f"state store {path}: written by a newer batch-toggle (schema "
                         f"{version}, this one knows {SCHEMA_VERSION})")


def _ensure_schema(conn: sqlite3.Connection, path: Path) -> None:
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version == 0:
        with _transaction(conn):
            # Re-check under the write lock: another process may have just created it.
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version == 0:
                if _has_tables(conn):
                    raise StoreError(f"state store {path}: not a batch-toggle state store")
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute("INSERT INTO meta (key, value) VALUES ('hmac_secret', ?)",
                             (secrets.token_bytes(32),))
                conn.execute("INSERT INTO meta (key, value) VALUES ('ledger_seq', 0)")
                conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
                conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
                return
    _check_ours(conn, path, version)
    # Older schemas migrate here, one step at a time, each inside a transaction.
    if version < 2:
        with _transaction(conn):
            if conn.execute("PRAGMA user_version").fetchone()[0] < 2:  # not done meanwhile
                conn.execute("ALTER TABLE runs ADD COLUMN units INTEGER")
                conn.execute("PRAGMA user_version=2")
    if version < 3:
        with _transaction(conn):
            if conn.execute("PRAGMA user_version").fetchone()[0] < 3:
                conn.execute("ALTER TABLE runs ADD COLUMN resume_after TEXT")
                conn.execute("PRAGMA user_version=3")
    if version < 4:
        with _transaction(conn):
            if conn.execute("PRAGMA user_version").fetchone()[0] < 4:
                _migrate_to_4(conn)
                conn.execute("PRAGMA user_version=4")
    if version < 5:
        with _transaction(conn):
            if conn.execute("PRAGMA user_version").fetchone()[0] < 5:
                conn.execute("ALTER TABLE runs ADD COLUMN stopped TEXT")
                conn.execute("CREATE TABLE endpoints (endpoint TEXT PRIMARY KEY,"
                             " first_answered_at TEXT NOT NULL, last_answered_at TEXT NOT NULL)"
                             " WITHOUT ROWID")
                conn.execute("PRAGMA user_version=5")
    if version < 6:
        with _transaction(conn):
            if conn.execute("PRAGMA user_version").fetchone()[0] < 6:
                # Records already there name no key: they keep counting for every key.
                conn.execute("ALTER TABLE sends ADD COLUMN key_fp TEXT")
                conn.execute("PRAGMA user_version=6")


def _migrate_to_4(conn: sqlite3.Connection) -> None:
    """Schema 4: the ledger's confirmations get their order (conf_seq, and its counter
    meta.ledger_seq), and the send log its monotonic side (boot, sent_mono, done_mono).

    Confirmations already there are numbered in the order the older version judged them by
    (their time, then insertion), so the migration changes no decision it made; every later
    confirmation is numbered above them. Send records already there have no boot: the wall
    clock places them, as before."""
    conn.execute("ALTER TABLE ledger ADD COLUMN conf_seq INTEGER")
    conn.execute(f"UPDATE ledger SET conf_seq = ordered.n FROM ({_LEGACY_ORDER}) AS ordered"
                 " WHERE ledger.rowid = ordered.id")
    conn.execute("INSERT INTO meta (key, value) VALUES ('ledger_seq',"
                 " (SELECT count(*) FROM ledger WHERE conf_at IS NOT NULL))")
    for column in ("boot TEXT", "sent_mono REAL", "done_mono REAL"):
        conn.execute(f"ALTER TABLE sends ADD COLUMN {column}")


# The order of a schema-3 ledger's confirmations: the one its version used (conf_at, then
# insertion). Used once, by the migration, and by a read-only view of such a file.
_LEGACY_ORDER = ("SELECT rowid AS id, row_number() OVER (ORDER BY conf_at, rowid) AS n"
                 " FROM ledger WHERE conf_at IS NOT NULL")


def _tighten(path: Path) -> None:
    """chmod 0600 a sidecar left by an earlier, looser process (ours by construction)."""
    with contextlib.suppress(FileNotFoundError):
        if path.stat().st_mode & 0o077:
            path.chmod(0o600)


def _bulk_read(conn: sqlite3.Connection, columns: Sequence[tuple[str, str, pa.DataType]],
               source: str, *, key: str) -> pa.Table:
    """Read `columns` (name, SQL expression, type) of `source` ("table WHERE ...") into Arrow.

    Fetching a million rows through sqlite3's Python objects costs about 0.25 µs per value and
    as much again to build Arrow arrays from them. Instead SQLite formats each chunk of rows
    as one CSV text (values quoted SQL-style by printf's %Q, so commas, quotes and newlines
    inside values survive, and an unquoted NULL is a null) and pyarrow's C parser reads it:
    about half the time. Chunks are ranges of the integer `key`; all are read in one read
    transaction, so the result is one consistent snapshot.
    """
    names = [name for name, _, _ in columns]
    fmt, exprs = [], []
    for _, expr, typ in columns:
        if pa.types.is_floating(typ):
            # %Q would keep 15 significant digits; %!.17g round-trips a double exactly.
            fmt.append("%s")
            exprs.append(f"CASE WHEN ({expr}) IS NULL THEN 'NULL' "
                         f"ELSE printf('%!.17g', {expr}) END")
        else:
            fmt.append("%Q")
            exprs.append(expr)
    query = (f"SELECT CAST(group_concat(printf('{','.join(fmt)}', {', '.join(exprs)}), char(10))"
             f" AS BLOB) FROM {source} AND {key} BETWEEN ? AND ?")
    read = pcsv.ReadOptions(column_names=names, block_size=1 << 24)
    parse = pcsv.ParseOptions(quote_char="'", double_quote=True, newlines_in_values=True)
    convert = pcsv.ConvertOptions(column_types={n: pa.string() for n in names},
                                  null_values=["NULL"], strings_can_be_null=True,
                                  quoted_strings_can_be_null=False)
    chunks = []
    began = not conn.in_transaction
    if began:
        conn.execute("BEGIN")
    try:
        low, high = conn.execute(f"SELECT min({key}), max({key}) FROM {source}").fetchone()
        if low is not None:
            for start in range(low, high + 1, _BULK_CHUNK):
                blob = conn.execute(query, (start, start + _BULK_CHUNK - 1)).fetchone()[0]
                if blob:
                    chunks.append(pcsv.read_csv(pa.py_buffer(blob), read_options=read,
                                                parse_options=parse, convert_options=convert))
    finally:
        if began:
            conn.execute("COMMIT")
    schema = pa.schema([(name, typ) for name, _, typ in columns])
    if not chunks:
        return schema.empty_table()
    text = pa.concat_tables(chunks)
    arrays = []
    for (_, _, typ), col in zip(columns, text.columns, strict=True):
        if pa.types.is_boolean(typ):
            arrays.append(col.cast(pa.int8()).cast(typ))  # SQLite booleans are 0/1
        else:
            arrays.append(col.cast(typ))
    return pa.Table.from_arrays(arrays, schema=schema)


def record_interrupted(path: str | os.PathLike[str], run_id: str, finished_at: str,
                       timeout: float = 1.0) -> None:
    """Record `run_id` as interrupted (exit 130) on a connection of its own, giving up after
    `timeout` seconds: the last act of a process whose main thread is stuck (watchdog.py),
    possibly holding the store's connections and locks. Leaves a run that already has an exit
    code alone. Raises StoreError when the store does not answer in time."""
    try:
        conn = sqlite3.connect(str(path), timeout=timeout, isolation_level=None)
        try:
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute(
                "UPDATE runs SET exit_code = ?, finished_at = ? WHERE run_id = ?"
                " AND exit_code IS NULL", (int(ExitCode.INTERRUPTED), finished_at, run_id))
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise StoreError(f"state store {path}: {exc}") from exc





# The name this class had before the store had a second backend (the tests' habit).
StateStore = SqliteStore
