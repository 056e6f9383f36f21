"""Virtual time for async tests: an event loop whose clock jumps instead of waiting.

    from helpers_time import run_virtual, vclock

    async def main():
        await asyncio.sleep(3600)      # returns at once; vclock() is now 3600.0
    run_virtual(main)

Timers (asyncio.sleep, asyncio.timeout, call_later) advance the loop's clock to the next
deadline as soon as no callback is ready, so an hour of backoff takes microseconds. Work in
other threads (run_in_executor, e.g. a SQLite commit) takes no virtual time: while a job is out,
the clock does not move and the loop waits for it in real time, bounded by `real_wait`, after
which it declares a deadlock instead of hanging the test run. The same approach as
tests/test_limiter.py, plus that thread handling and an asyncio.run-style cleanup of leftover
tasks.
"""

from __future__ import annotations

import asyncio
import math
import selectors
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class _AdvancingSelector(selectors.SelectSelector):
    """Never block on a timer: jump the loop's virtual clock forward by the timeout instead."""

    def __init__(self, loop: VirtualTimeLoop, real_wait: float) -> None:
        super().__init__()
        self._loop = loop
        self._real_wait = real_wait

    def select(self, timeout: float | None = None) -> list[Any]:
        ready = super().select(0)  # I/O already there (e.g. a worker thread's wake-up)
        if ready or timeout == 0:
            return ready
        if self._loop.threads_busy:
            # Work handed to a thread takes no virtual time: wait for it in real time before
            # the clock moves, or a task awaiting it would see every timer fire first.
            ready = super().select(self._real_wait)
            if not ready:
                raise RuntimeError(f"deadlock: a worker thread did not finish within "
                                   f"{self._real_wait:g} s")
            return ready
        if timeout is None:
            # Nothing scheduled: only another thread can make progress. Wait for it in real
            # time, but never forever.
            ready = super().select(self._real_wait)
            if not ready:
                raise RuntimeError(f"deadlock: nothing ready, no timer, and no thread woke "
                                   f"the loop within {self._real_wait:g} s")
            return ready
        self._loop.now += max(0.0, timeout)
        return []


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An asyncio loop whose time only moves when every task is waiting on a timer."""

    def __init__(self, real_wait: float = 10.0, origin: float = 0.0) -> None:
        self.now = origin  # a clock far from zero, like a host's that has been up for a while
        self.threads_busy = 0  # run_in_executor jobs not yet delivered back to the loop
        super().__init__(selector=_AdvancingSelector(self, real_wait))

    def time(self) -> float:
        return self.now

    # asyncio runs a timer once `when < time() + _clock_resolution`. Near 2^35 s a float time
    # cannot hold a nanosecond, so a timer due exactly now would never run and the loop would
    # spin: a virtual clock's resolution is the float's (a real clock simply moves on).
    @property
    def _clock_resolution(self) -> float:
        return max(1e-9, math.ulp(self.now))

    @_clock_resolution.setter
    def _clock_resolution(self, _value: float) -> None:
        pass

    def run_in_executor(self, executor: Any, func: Callable[..., T], *args: Any
                        ) -> asyncio.Future[T]:
        future = super().run_in_executor(executor, func, *args)
        self.threads_busy += 1
        future.add_done_callback(self._thread_done)
        return future

    def _thread_done(self, _future: asyncio.Future[Any]) -> None:
        self.threads_busy -= 1


def run_virtual(factory: Callable[[], Coroutine[Any, Any, T]], *, real_wait: float = 10.0,
                origin: float = 0.0) -> T:
    """Run `factory()` to completion on a fresh VirtualTimeLoop whose clock starts at `origin`;
    like asyncio.run, cancel whatever tasks are left and shut down async generators and the
    default executor."""
    loop = VirtualTimeLoop(real_wait, origin)
    try:
        asyncio.set_event_loop(loop)
        return loop.run_until_complete(factory())
    finally:
        try:
            _cancel_all_tasks(loop)
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            asyncio.set_event_loop(None)
            loop.close()


def _cancel_all_tasks(loop: asyncio.AbstractEventLoop) -> None:
    pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
    for task in pending:
        task.cancel()
    if pending:
        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))


def vclock() -> float:
    """The running loop's (virtual) time: use as a monotonic clock."""
    return asyncio.get_running_loop().time()
