"""Where outcomes go as they arrive: memory for the report, the state store for durability.

Outcomes are group-committed: one writer task drains whatever has queued up and commits it in
one SQLite transaction on a dedicated thread, so an fsync per row never caps the send rate.
Progress only counts a row after its commit returned: a `kill -9` loses nothing that was shown.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from .outcome import Outcome
from .store import LedgerUpdate, StateStore


@dataclass(frozen=True)
class Finished:
    """A unit's final outcome and what it taught the ledger."""

    unit: int
    row: int
    outcome: Outcome
    ledger: LedgerUpdate | None


class Committer:
    """Collect outcomes; persist them in batches when a store is present."""

    def __init__(self, store: StateStore | None, run_id: str,
                 on_committed: Callable[[Finished], None] = lambda _f: None) -> None:
        self.store = store
        self.run_id = run_id
        self.outcomes: dict[int, Outcome] = {}  # by unit index, for the report
        self._on_committed = on_committed
        self._queue: list[Finished] = []
        self._wake = asyncio.Event()
        self._closed = False
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bt-store")
        self._task: asyncio.Task[None] | None = None
        self._send_ids = itertools.count()
        self._send_prefix = f"{run_id}-{os.getpid()}-"
        self.error: BaseException | None = None
        self._committing = False
        self._idle = asyncio.Event()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._writer())

    def put(self, finished: Finished) -> None:
        """Queue a final outcome; it is in the report from now on, durable at the next commit."""
        self.outcomes[finished.unit] = finished.outcome
        self._queue.append(finished)
        self._wake.set()

    def send_started(self, wall: float) -> str | None:
        """Log a request as it leaves, so a killed run still leaves its budget use on record."""
        if self.store is None:
            return None
        send_id = f"{self._send_prefix}{next(self._send_ids)}"
        self.store.record_sends([(send_id, wall, None)])
        return send_id

    def send_done(self, send_id: str | None, sent: float, done: float) -> None:
        if self.store is not None and send_id is not None:
            self.store.record_sends([(send_id, sent, done)])

    async def flush(self) -> None:
        """Wait until everything queued so far is committed."""
        while self._queue or self._committing:
            self._wake.set()
            await self._idle.wait()
            self._idle.clear()

    async def close(self) -> None:
        """Commit everything queued, then stop the writer."""
        self._closed = True
        self._wake.set()
        if self._task is not None:
            await self._task
        self._executor.shutdown(wait=True)

    async def _writer(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch, self._queue = self._queue, []
            if batch:
                self._committing = True
                try:
                    await self._commit(loop, batch)
                finally:
                    self._committing = False
            self._idle.set()
            if self._closed and not self._queue:
                return

    async def _commit(self, loop: asyncio.AbstractEventLoop, batch: list[Finished]) -> None:
        if self.store is not None and self.error is None:
            items = [(f.row, f.outcome, f.ledger) for f in batch]
            try:
                await loop.run_in_executor(self._executor, self.store.record_outcomes,
                                           self.run_id, items)
            except Exception as exc:  # noqa: BLE001 - reported by the runner, run stops
                self.error = exc
                return
        for finished in batch:
            self._on_committed(finished)
