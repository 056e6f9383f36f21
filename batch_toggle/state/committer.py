"""Where outcomes go as they arrive: memory for the report, the state store for durability.

Outcomes are group-committed: one writer task drains whatever has queued up and commits it in
one SQLite transaction, so an fsync per row never caps the send rate. Progress only counts a
row after its commit returned: a `kill -9` loses nothing that was shown. A worker takes its
next unit only once its last outcome is committed (`durable`), so a kill finds at most one unit
per worker sent without its outcome on disk: at most --concurrency units that a resume sends a
second time.

The commit runs on the event loop itself, not on a thread. A thread would let the loop go on
during the fsync, but the loop is what the store competes with: the sender is CPU-bound in
Python, and handing each round to a thread and back makes the two threads fight over the GIL
(every sqlite3 call drops and retakes it). Measured by bench_store at the loopback ceiling:
with a thread, the store cost 14% of the ceiling at 16 workers and ~100 µs of CPU a row; inline,
5-10% and 20-40 µs. The workers wait for their round's commit either way, and the loop is blocked
only for the commit itself (SQL for a handful of rows and one fsync): what piles up meanwhile
joins the next round.

The send log: a request is committed to the log before it leaves, so a run killed mid-request
still leaves its budget use on record (synchronous=NORMAL: it survives a killed process; the
next outcome commit fsyncs it). The runner waives that while its run cannot fill a budget
window (see Runner._budget_tight): the record is then queued, and rides with the next round of
outcomes, or is committed within SEND_LOG_DELAY when no outcome comes (retries, an outage).
The time a reply came is logged the same way, without waiting (a record with no reply time is
taken as answered at the timeout, which only makes a resumed budget more careful).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from batch_toggle.clock import Monotonic
from batch_toggle.errors import StoreError, StoreUnavailable
from batch_toggle.outcome import Outcome
from batch_toggle.state.interface import Store
from batch_toggle.state.records import LedgerUpdates
from batch_toggle.state.sendlog import SendEntry, boot_id

# The longest a commit round waits for the answers still in flight to join it (it waits for
# none when none is in flight). A round's commit (its fsync) costs more than its rows, and a
# worker waits for its own row's round anyway, so the other workers' answers may as well join
# it: bench_store at the loopback ceiling, 4 workers, 1.25 -> 4.0 rows a round and the store's
# share of the ceiling 0.33 -> 0.16. A millisecond is nothing beside a real API's latency.
MIN_ROUND = 0.001
# How long a queued send-log record may wait for a round of outcomes to carry it.
SEND_LOG_DELAY = 0.05
STORE_RETRY_DELAY = 1.0  # seconds between two tries of a round while the store is away
DEFAULT_OUTAGE_LIMIT = 15 * 60.0  # as SendOptions.outage_limit
_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Finished:
    """A unit's final outcome and what it taught the ledger."""

    unit: int
    row: int
    outcome: Outcome
    ledger: LedgerUpdates


class Committer:
    """Collect outcomes; persist them (and the send log) when a store is present."""

    def __init__(self, store: Store | None, run_id: str,
                 on_committed: Callable[[Finished], None] = lambda _f: None, *,
                 mono: Monotonic = time.monotonic, boot: str | None = None,
                 outage_limit: float = DEFAULT_OUTAGE_LIMIT, key: str | None = None) -> None:
        self.store = store
        self.key = key  # the API key's fingerprint: whose budget the logged sends spent
        # A database that cannot be reached (StoreUnavailable) is retried this long: the
        # workers wait on their outcomes meanwhile, so sending pauses; then the run stops.
        self.outage_limit = outage_limit
        self.unavailable_since: float | None = None  # monotonic, while the store is away
        self.run_id = run_id
        self.outcomes: dict[int, Outcome] = {}  # by unit index, for the report
        self._on_committed = on_committed
        self._queue: list[Finished] = []
        self._durable: dict[int, asyncio.Future[None]] = {}  # by unit, until committed
        self._sends: list[SendEntry] = []  # queued send-log records, for the next round
        self._wake = asyncio.Event()
        self._closed = False
        self._task: asyncio.Task[None] | None = None
        self._send_ids = itertools.count()
        self._send_prefix = f"{run_id}-{os.getpid()}-"
        self.error: BaseException | None = None
        self._idle = asyncio.Event()
        self._hurry = False  # a flush or close is waiting
        self.min_round = MIN_ROUND
        self._in_flight = 0  # requests between send_started and send_done
        self._quiet: asyncio.Future[None] | None = None  # set when none is in flight
        self._send_log_timer: asyncio.TimerHandle | None = None  # a round for queued sends
        self._callback_failed = False  # on_committed raised once: said once, not per row
        # The send log's monotonic side (see sendlog.py): this boot's CLOCK_MONOTONIC, which
        # a later run on the same boot reads too, whatever the runner's own clocks are.
        self._mono = mono
        self._boot = boot_id() if boot is None else boot
        self._sent_mono: dict[str, float] = {}  # send_id -> when it left, until its reply

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._writer())

    def put(self, finished: Finished) -> None:
        """Queue a final outcome; it is in the report from now on, durable at the next commit."""
        self.outcomes[finished.unit] = finished.outcome
        self._queue.append(finished)
        if self.store is not None:
            self._durable[finished.unit] = asyncio.get_running_loop().create_future()
        self._wake.set()

    async def durable(self, unit: int) -> None:
        """Wait until `unit`'s outcome is committed (or the store failed; at once without a
        store). A worker that waits for this before its next request leaves at most one unit
        sent without its outcome on disk: what a kill -9 makes a resume send again."""
        waiter = self._durable.get(unit)
        if waiter is not None:
            await asyncio.shield(waiter)

    def send_started(self, wall: float, wait: bool = True) -> str | None:
        """Log a request about to leave. With `wait`, it is committed before this returns, so a
        killed run still leaves its budget use on record; without, it is queued and rides with
        the next round of outcomes (or goes within SEND_LOG_DELAY): the caller decides when
        that small risk cannot matter (see Runner._budget_tight). Raises when the store has
        failed (the request must then not be sent). From here to `send_done` the request
        counts as in flight (a round waits for it, see `_gather`)."""
        if self.store is None:
            return None
        if self.error is not None:
            raise self.error
        send_id = f"{self._send_prefix}{next(self._send_ids)}"
        mono = self._sent_mono[send_id] = self._mono()
        entry = SendEntry(send_id, wall, None, self._boot, mono, key=self.key)
        if wait:  # with whatever is queued (reply times, records waiting for a round)
            pending, self._sends = self._sends, []
            try:
                self.store.record_sends([*pending, entry])
            except StoreUnavailable:
                # The database is away but the request's slot is reserved in it already (a
                # store that can be away shares its budget live): queue the record instead.
                self._sends[:0] = [*pending, entry]
                self._send_log_soon()
            except BaseException:
                self._sends[:0] = pending
                del self._sent_mono[send_id]  # never sent
                raise
        else:
            self._sends.append(entry)
            self._send_log_soon()
        self._in_flight += 1
        return send_id

    def send_done(self, send_id: str | None, sent: float, done: float) -> None:
        """Log when the request's reply (or timeout, or error) came, with the next batch."""
        if self.store is not None and send_id is not None:
            sent_mono = self._sent_mono.pop(send_id, None)
            self._sends.append(SendEntry(send_id, sent, done, self._boot, sent_mono,
                                         self._mono(), self.key))
            self._in_flight -= 1
            if self._in_flight == 0 and self._quiet is not None:
                _let_go([self._quiet])
            self._send_log_soon()

    def _send_log_soon(self) -> None:
        """A round within SEND_LOG_DELAY for queued send-log records, unless a round of
        outcomes takes them first (waking the writer for each record would mean a round, a
        thread hop, per request)."""
        if self._send_log_timer is None:
            self._send_log_timer = asyncio.get_running_loop().call_later(
                SEND_LOG_DELAY, self._wake.set)

    async def flush(self) -> None:
        """Wait until everything queued so far is committed."""
        self._hurry = True
        try:
            while self._queue or self._sends:
                self._wake.set()
                await self._idle.wait()
                self._idle.clear()
        finally:
            self._hurry = False

    async def close(self) -> None:
        """Commit everything queued, then stop the writer."""
        self._closed = True
        self._wake.set()
        if self._task is not None:
            await self._task

    async def _writer(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            if (self._queue and self.min_round > 0 and self.store is not None
                    and not (self._closed or self._hurry)):
                # Let the answers on their way join these outcomes (a commit round costs an
                # fsync), unless a flush/close waits on us.
                await self._gather(loop)
            self._wake.clear()
            if self._send_log_timer is not None:  # this round carries the queued records
                self._send_log_timer.cancel()
                self._send_log_timer = None
            sends, self._sends = self._sends, []
            batch, self._queue = self._queue, []
            if (sends or batch) and not self._commit(sends, batch):
                # The store is away: everything goes back to the front of the queues, and the
                # workers keep waiting on their outcomes (nothing more is sent) until a retry
                # commits them, or the outage limit stops the run.
                self._sends[:0] = sends
                self._queue[:0] = batch
                await asyncio.sleep(STORE_RETRY_DELAY)
                self._wake.set()
                continue
            self._idle.set()
            if self._closed and not self._queue and not self._sends:
                return

    async def _gather(self, loop: asyncio.AbstractEventLoop) -> None:
        """Wait for the answers still on their way, for at most `min_round`: with none in
        flight nothing more can join this round, so it commits at once. The workers then tend
        to move together (send, all answered, one commit for all, send again): one round per
        --concurrency rows instead of one per row or two."""
        if self._in_flight <= 0:
            return
        quiet = self._quiet = loop.create_future()
        timer = loop.call_later(self.min_round, _let_go, [quiet])
        try:
            await quiet
        finally:
            timer.cancel()
            self._quiet = None

    def _commit(self, sends: list[SendEntry], batch: list[Finished]) -> bool:
        """One round: the outcomes and the queued send log in one transaction (one commit,
        one fsync), on the event loop (see the module docstring). False when the store is
        away (StoreUnavailable) within the outage limit: the round is to be tried again."""
        if self.store is None or self.error is not None:
            self._committed(batch)
            return True
        items = [(f.row, f.outcome, f.ledger) for f in batch]
        try:
            try:
                self.store.record_outcomes(self.run_id, items, sends)
            except StoreUnavailable:
                raise
            except Exception:
                # Those requests were sent: their records must not go down with the outcomes'
                # transaction (a later run sharing the store counts them).
                with contextlib.suppress(Exception):
                    self.store.record_sends(sends)
                raise
        except StoreUnavailable as exc:
            if self._still_waiting(exc):
                return False
            self.error = StoreError(f"{exc} (away longer than the outage limit, "
                                    f"{self.outage_limit:g} s)")
            self._release(batch)
            return True
        except Exception as exc:  # noqa: BLE001 - reported by the runner, run stops
            self.error = exc
            self._release(batch)
            return True
        self.unavailable_since = None
        self._committed(batch)
        return True

    def _still_waiting(self, exc: StoreUnavailable) -> bool:
        """Whether an outage of the store is still within the outage limit."""
        now = self._mono()
        if self.unavailable_since is None:
            self.unavailable_since = now
            _log.info("the state store is away (%s); sending pauses until it is back", exc)
        return now - self.unavailable_since < self.outage_limit

    def _committed(self, batch: list[Finished]) -> None:
        self._release(batch)
        for finished in batch:
            # The callback reports (a progress bar, -vv lines, a library caller's hooks) and runs
            # on the writer task: an exception escaping it would end the task, and every later
            # durable() waiter, flush() and so the run would wait forever. The row is committed
            # whatever the callback does; the run goes on.
            try:
                self._on_committed(finished)
            except Exception as exc:  # noqa: BLE001 - see above
                if not self._callback_failed:
                    self._callback_failed = True
                    # One line: the CLI has no logging set up, and logging's last resort would
                    # print a traceback on the user's stderr. The traceback is for debugging.
                    _log.warning("the on_committed callback failed (%s: %s); the run goes on",
                                 type(exc).__name__, " ".join(str(exc).split()))
                    _log.debug("the on_committed callback's failure", exc_info=True)

    def _release(self, batch: list[Finished]) -> None:
        """Let the workers waiting on these outcomes go (the runner sees a store error)."""
        _let_go([w for f in batch if (w := self._durable.pop(f.unit, None)) is not None])


def _let_go(waiters: list[asyncio.Future[None]]) -> None:
    """Wake whoever waits on these (a worker on its outcome, a round on the answers)."""
    for waiter in waiters:
        if not waiter.done():
            waiter.set_result(None)
