"""SIGINT and SIGTERM during a job: caught and recorded, never acted on in the handler.

The runner turns a caught signal into a stop (Runner.signals); the job keeps one `Interrupts`
from before its sending part until its report is written (jobs/session.finish_interruptible).
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Callable, Iterator
from typing import Any

INTERRUPT_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupts:
    """While entered, SIGINT and SIGTERM are caught and recorded, never acted on here.

    A plain `signal.signal` handler for the whole stretch (the run's sending part and its
    report): asyncio's `add_signal_handler` would reset SIGINT to `default_int_handler` and
    SIGTERM to the default action (death) on its removal, a moment in which a signal either
    escapes as KeyboardInterrupt or kills the process. While a run sends, `Runner.signals`
    forwards each signal to the loop as a stop; a signal outside that (the run finishing,
    its report being written) waits in `received` for the caller. A second signal is recorded
    like the first (no traceback, no hard stop): what follows it is bounded (in-flight
    requests within --timeout, then the report), and a hard stop would lose the report.

    Outside the main thread (a library caller's worker thread) Python cannot catch signals:
    then nothing is installed and the process's handlers stay as they are. On exit the
    handlers the process had before come back.
    """

    def __init__(self) -> None:
        self.received: signal.Signals | None = None  # the first signal caught
        self._forward: Callable[[signal.Signals], None] | None = None
        self._previous: dict[signal.Signals, Any] = {}

    def __enter__(self) -> Interrupts:
        for sig in INTERRUPT_SIGNALS:
            try:
                self._previous[sig] = signal.signal(sig, self._caught)
            except ValueError:  # not the main thread
                break
        return self

    def __exit__(self, *_exc: object) -> None:
        for sig, previous in self._previous.items():
            if previous is None:  # installed outside Python: put back what asyncio would
                previous = signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL
            signal.signal(sig, previous)
        self._previous.clear()

    @contextlib.contextmanager
    def forwarding(self, to: Callable[[signal.Signals], None]) -> Iterator[None]:
        """Also pass each signal caught inside this block to `to`."""
        self._forward = to
        try:
            yield
        finally:
            self._forward = None

    def _caught(self, signum: int, _frame: object) -> None:
        sig = signal.Signals(signum)
        if self.received is None:
            self.received = sig
        if self._forward is not None:
            self._forward(sig)
