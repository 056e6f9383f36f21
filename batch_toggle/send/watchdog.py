"""A thread that keeps a run answerable when its event loop is wedged.

Why: every stop of a run (SIGINT, SIGTERM, an abort, --stop-after) is made on the event loop. A
loop stuck in a computation that never yields (a time loop that stopped advancing once did,
at 100% CPU) therefore never stops: the signal handler hands the stop to a loop that will never
run it, no report is written, and the run keeps the state store's lock, so every cron slice
behind it is refused. Only `kill -9` ended it.

So while a run sends, the loop ticks (a callback every TICK seconds), and a watchdog thread,
which needs nothing from the main thread, watches two things:

* The ticks. A loop that has not ticked for STALL_AFTER seconds is wedged: the watchdog says so
  once on stderr, and stops refreshing the heartbeat that `batch-toggle status` reads (the lock
  sidecar's mtime), so status shows the run as "stalled since T", not "running".
* The signals, at the C level: `signal.set_wakeup_fd` writes each signal's number to a pipe
  the watchdog reads, even when the main thread cannot run a Python handler. A SIGINT/SIGTERM
  that arrives while the loop is wedged, or one after which the loop does not tick within
  GRACE seconds (a healthy loop ticks every TICK), ends the process at once: a `faulthandler`
  traceback of every thread on stderr (where it was stuck), the run recorded as interrupted in
  the state store if the store answers within a second, exit 130. Every outcome reported so far
  is already in the store (it commits before a worker moves on), so `run --resume` continues
  from there; at most the requests in flight are sent again (PUT is idempotent).

A healthy loop keeps the usual path: the first signal stops the run cleanly with a report, and
a second one while that is under way is only recorded (see send/signals.Interrupts).

Outside the main thread (a library caller's worker thread) Python cannot take signals, so the
watchdog then only watches the ticks. Stdlib only.
"""

from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import os
import select
import signal
import threading
import time
from collections.abc import Callable, Iterator

from batch_toggle.clock import Monotonic

TICK = 0.5  # seconds between two ticks of a healthy loop
STALL_AFTER = 30.0  # seconds without a tick: the loop is wedged
GRACE = 3.0  # seconds a signalled loop has to show that it still runs
HEARTBEAT = 5.0  # seconds between two heartbeats while the loop is healthy
_WATCHED = frozenset({int(signal.SIGINT), int(signal.SIGTERM)})



class Watchdog:
    """Watches a run's event loop from a thread; see the module docstring.

    `heartbeat()` is called every HEARTBEAT seconds while the loop is healthy (or not being
    watched: the run is planning or writing its report); `record_stop()` is called, bounded by
    the caller, just before a wedged process exits. Both run on the watchdog's thread and must
    not raise; the watchdog swallows what they do raise.
    """

    def __init__(self, *, heartbeat: Callable[[], None] | None = None,
                 record_stop: Callable[[], None] | None = None,
                 stall_after: float = STALL_AFTER, grace: float = GRACE,
                 clock: Monotonic = time.monotonic,
                 exit_process: Callable[[int], None] = os._exit) -> None:
        self._heartbeat = heartbeat
        self._record_stop = record_stop
        self.stall_after = stall_after
        self.grace = grace
        self._clock = clock
        self._exit = exit_process
        self._armed = False
        self._last_tick = clock()
        self._signalled_at: float | None = None  # a signal the loop has not yet answered
        self._stall_said = False
        self._last_beat = -float("inf")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._read_fd = self._write_fd = -1
        self._previous_wakeup: int | None = None

    # --- lifetime ---------------------------------------------------------------------------

    def __enter__(self) -> Watchdog:
        self._read_fd, self._write_fd = os.pipe()
        for fd in (self._read_fd, self._write_fd):
            os.set_blocking(fd, False)
            os.set_inheritable(fd, False)
        with contextlib.suppress(ValueError):  # not the main thread: no signals to watch
            self._previous_wakeup = signal.set_wakeup_fd(self._write_fd,
                                                         warn_on_full_buffer=False)
        self._thread = threading.Thread(target=self._watch, name="batch-toggle-watchdog",
                                        daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        if self._previous_wakeup is not None:
            with contextlib.suppress(ValueError):
                signal.set_wakeup_fd(self._previous_wakeup)
            self._previous_wakeup = None
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        for fd in (self._read_fd, self._write_fd):
            with contextlib.suppress(OSError):
                os.close(fd)

    @contextlib.contextmanager
    def watching(self, loop: asyncio.AbstractEventLoop) -> Iterator[None]:
        """While inside, `loop` must tick: it is the run's sending part."""
        handle: asyncio.TimerHandle | None = None

        def tick() -> None:
            nonlocal handle
            self.ticked()
            handle = loop.call_later(TICK, tick)

        self.arm()
        handle = loop.call_later(TICK, tick)
        try:
            yield
        finally:
            self.disarm()
            handle.cancel()

    def arm(self) -> None:
        """From now on the loop must tick (`watching` does this around the sending part)."""
        self._last_tick = self._clock()
        self._stall_said = False
        self._armed = True

    def ticked(self) -> None:
        """The loop ran: called on the loop, every TICK seconds."""
        self._last_tick = self._clock()

    def disarm(self) -> None:
        self._armed = False
        self._signalled_at = None

    # --- the thread -------------------------------------------------------------------------

    def _watch(self) -> None:
        while not self._stop.is_set():
            try:
                ready, _, _ = select.select([self._read_fd], [], [], TICK / 2)
            except (OSError, ValueError):  # the pipe closed under us: we are stopping
                return
            signals = self._drain() if ready else []
            self.check(self._clock(), signals)

    def _drain(self) -> list[int]:
        try:
            return list(os.read(self._read_fd, 512))
        except OSError:
            return []

    def check(self, now: float, signals: list[int]) -> None:
        """One look at the loop and at the signals that came since the last look. Public for
        tests, which drive it with their own clock instead of the thread."""
        if not self._armed:
            self._beat(now)
            return
        silent = now - self._last_tick
        if silent >= self.stall_after and not self._stall_said:
            self._stall_said = True
            _write(f"batch-toggle: warning: the run's event loop has not answered for "
                   f"{silent:.0f} s (a bug: please report it); SIGINT or SIGTERM stops the "
                   "process at once, and --resume continues the run")
        if self._signalled_at is not None and self._last_tick > self._signalled_at:
            self._signalled_at = None  # the loop ran since: it has the stop in hand
        for number in signals:
            if number not in _WATCHED:
                continue
            if silent >= self.stall_after or self._signalled_at is not None:
                self._die(signal.Signals(number), silent)
                return
            self._signalled_at = now
        if self._signalled_at is not None and now - self._signalled_at >= self.grace:
            self._die(None, silent)
            return
        if silent < self.stall_after:
            self._beat(now)

    def _beat(self, now: float) -> None:
        if self._heartbeat is not None and now - self._last_beat >= HEARTBEAT:
            self._last_beat = now
            with contextlib.suppress(Exception):
                self._heartbeat()

    def _die(self, sig: signal.Signals | None, silent: float) -> None:
        """Where the loop is stuck, on stderr; the stop on record if possible; exit 130."""
        why = (f"{sig.name} came" if sig is not None
               else f"a signal came {self.grace:g} s ago")
        _write(f"batch-toggle: {why} while the run's event loop was stuck (no answer for "
               f"{silent:.1f} s); stopping at once. Every outcome reported so far is in the "
               "state store: resume with --resume. Where each thread was:")
        with contextlib.suppress(Exception):
            faulthandler.dump_traceback(file=2, all_threads=True)
        if self._record_stop is not None:
            with contextlib.suppress(Exception):
                self._record_stop()
        self._exit(130)


def _write(line: str) -> None:
    """Straight to fd 2: the main thread may hold sys.stderr's lock where it is stuck."""
    with contextlib.suppress(OSError):
        os.write(2, (line + "\n").encode("utf-8", "replace"))
