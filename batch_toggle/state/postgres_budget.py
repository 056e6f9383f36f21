"""One API key's request budget, shared live through PostgreSQL by every process that uses it.

Each host's own limiter (send/limiter.py) keeps *its* requests inside the windows; with two
hosts on one key, each would believe it owns the whole 2,500/hour. So before a request leaves,
its slot is reserved here, in the database, for the key:

* one function call, `reserve_slot`, under a transaction-scoped advisory lock per key
  (`pg_advisory_xact_lock`): the count of held slots and the insert of the new one are atomic
  against every other process on that key, on any host; other keys never wait for it;
* a slot is held, by the same rule as the limiter's, until `hold` (PERIOD plus the margin)
  after its reply; its times are the database server's clock, the one clock every host
  shares, so two hosts' clocks never have to agree;
* a slot never released (its process was killed) counts as answered at its deadline
  (reserved + the request timeout), then for `hold` more: only more careful;
* a full window is waited out without polling: the waiter LISTENs on the key's channel, and
  every release NOTIFYs it; it sleeps until then or until the first slot expires;
* the key is known only by its fingerprint under the store's secret (keys.py), never itself.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Sequence
from typing import Any

import psycopg

from batch_toggle.errors import StoreError, StoreUnavailable
from batch_toggle.state.pg_connect import connect

# Slots are kept this long after their reply (the longest hold, a day, and a margin).
KEEP = 86400.0 + 3600.0
BUDGET_LOCK_CLASS = 0x4255  # the advisory locks' first key for budgets ('BU')

_TABLE = """
CREATE TABLE {schema}.slots (
    id       BIGSERIAL PRIMARY KEY,
    key_fp   TEXT NOT NULL,                 -- the API key's fingerprint (keys.py)
    sent     DOUBLE PRECISION NOT NULL,     -- the server's clock (epoch s) at the reservation
    done     DOUBLE PRECISION,              -- at the release; NULL while in flight
    deadline DOUBLE PRECISION NOT NULL      -- sent + the request timeout
);
"""
_INDEX = "CREATE INDEX slots_by_end ON {schema}.slots (key_fp, (COALESCE(done, deadline)))"
_FUNCTION = """
CREATE FUNCTION {schema}.reserve_slot(p_key TEXT, p_limits INTEGER[],
                                      p_holds DOUBLE PRECISION[], p_timeout DOUBLE PRECISION,
                                      OUT slot BIGINT, OUT wait DOUBLE PRECISION)
LANGUAGE plpgsql AS $$
DECLARE
    now_s DOUBLE PRECISION := extract(epoch FROM clock_timestamp());
    held BIGINT;
    free_at DOUBLE PRECISION;
BEGIN
    PERFORM pg_advisory_xact_lock({lock_class}, hashtext(p_key));
    DELETE FROM {schema}.slots s WHERE s.key_fp = p_key
        AND COALESCE(s.done, s.deadline) < now_s - {keep};
    wait := 0;
    FOR i IN 1 .. COALESCE(array_length(p_limits, 1), 0) LOOP
        -- held: min(reply, now) + hold > now, i.e. reply > now - hold (sendlog.still_held)
        SELECT count(*) INTO held FROM {schema}.slots s
            WHERE s.key_fp = p_key AND COALESCE(s.done, s.deadline) > now_s - p_holds[i];
        IF held >= p_limits[i] THEN
            SELECT LEAST(COALESCE(s.done, s.deadline), now_s) + p_holds[i] INTO free_at
                FROM {schema}.slots s
                WHERE s.key_fp = p_key AND COALESCE(s.done, s.deadline) > now_s - p_holds[i]
                ORDER BY COALESCE(s.done, s.deadline) OFFSET held - p_limits[i] LIMIT 1;
            wait := GREATEST(wait, free_at - now_s);
        END IF;
    END LOOP;
    IF wait > 0 THEN
        slot := NULL;
        RETURN;
    END IF;
    INSERT INTO {schema}.slots (key_fp, sent, deadline) VALUES (p_key, now_s, now_s + p_timeout)
        RETURNING id INTO slot;
END $$
"""


def schema_statements(schema: str) -> list[str]:
    """The budget's table, index and function in the store's schema, one statement each."""
    return [sql.format(schema=schema, lock_class=BUDGET_LOCK_CLASS, keep=KEEP)
            for sql in (_TABLE, _INDEX, _FUNCTION)]


class PostgresSlotGate:
    """The shared budget of one key (state.interface.SlotGate). Its calls come from worker
    threads (the event loop hands them over), so each connection has a lock of its own: the
    reservations' and releases', and the listener's."""

    def __init__(self, url: str, location: str, schema: str, key_fp: str,
                 timeout: float, guard: Callable[[bool], None] | None = None) -> None:
        self._url = url
        self._location = location
        self._schema = schema
        self._key_fp = key_fp
        self._timeout = float(timeout)
        # Asked before each reservation, with whether the connection is new (after an
        # outage): it raises to refuse the slot (the store's run lock went to another run).
        self._guard = guard
        self._channel = f"bt_slots_{key_fp[:24]}"
        self._lock = threading.Lock()
        self._conn: psycopg.Connection[Any] | None = None
        self._listen_lock = threading.Lock()
        self._listener: psycopg.Connection[Any] | None = None

    def reserve(self, windows: Sequence[tuple[int, float]]) -> tuple[int | None, float]:
        limits = [int(limit) for limit, _ in windows]
        holds = [float(hold) for _, hold in windows]
        with self._lock:
            try:
                self._listening()  # before the count: no release between the two is missed
                conn, reconnected = self._connection()
                if self._guard is not None:
                    self._guard(reconnected)
                row = conn.execute(
                    f"SELECT slot, wait FROM {self._schema}.reserve_slot(%s, %s, %s, %s)",
                    (self._key_fp, limits, holds, self._timeout)).fetchone()
            except psycopg.Error as exc:
                raise self._error(exc) from exc
        assert row is not None
        slot, wait = row
        return (None, max(0.0, float(wait))) if slot is None else (int(slot), 0.0)

    def wait(self, seconds: float) -> None:
        with self._listen_lock:
            try:
                listener = self._listening()
                for _ in listener.notifies(timeout=max(0.0, seconds), stop_after=1):
                    break
            except psycopg.OperationalError:
                # The server went away (its restart ends every session): the wait ends, and
                # the next reservation says whether it is back (and listens anew).
                with contextlib.suppress(psycopg.Error):
                    if self._listener is not None:
                        self._listener.close()
                self._listener = None
            except psycopg.Error as exc:
                raise self._error(exc) from exc

    def release(self, slot: int) -> None:
        with self._lock:
            try:
                conn, _ = self._connection()
                with conn.transaction():
                    conn.execute(f"UPDATE {self._schema}.slots SET done ="
                                 " extract(epoch FROM clock_timestamp())"
                                 " WHERE id = %s AND done IS NULL", (slot,))
                    conn.execute("SELECT pg_notify(%s, '')", (self._channel,))
            except psycopg.Error as exc:
                raise self._error(exc) from exc

    def close(self) -> None:
        for lock, name in ((self._lock, "_conn"), (self._listen_lock, "_listener")):
            with lock:
                conn = getattr(self, name)
                setattr(self, name, None)
                if conn is not None:
                    with contextlib.suppress(psycopg.Error):
                        conn.close()

    def _connection(self) -> tuple[psycopg.Connection[Any], bool]:
        """The reservations' connection, and whether it was made just now (after an outage)."""
        conn = self._conn
        if conn is not None and not conn.closed and not conn.broken:
            return conn, False
        conn = self._conn = _connect(self._url)
        return conn, True

    def _listening(self) -> psycopg.Connection[Any]:
        listener = self._listener
        if listener is None or listener.closed or listener.broken:
            listener = self._listener = _connect(self._url)
            listener.execute(f"LISTEN {self._channel}")
        return listener

    def _error(self, exc: psycopg.Error) -> StoreError:
        said = " ".join(str(exc).split()) or type(exc).__name__
        kind = StoreUnavailable if isinstance(exc, psycopg.OperationalError) else StoreError
        return kind(f"state store {self._location}: the shared budget: {said}")


def _connect(url: str) -> psycopg.Connection[Any]:
    return connect(url, name="batch-toggle budget")
