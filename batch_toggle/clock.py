"""Timestamps as batch-toggle writes and reads them: one UTC ISO 8601 form everywhere.

Reports, summaries, events, -v lines, `status` and the state store are read side by side (a
compliance officer matches a report's `sent_at` against an event's `ts`), so every timestamp
has one shape: `2026-12-06T10:34:54.123Z`, milliseconds and a `Z`. Reading accepts any ISO 8601
form Python does (older stores and reports wrote `+00:00` and whole seconds), a naive one taken
as UTC.

Durations are never computed from these: they come from the monotonic clock (a wall clock
stepped back mid-run once gave a negative duration).

Time itself comes from one injected `Clock` (wall seconds for timestamps, monotonic seconds for
durations and deadlines, and the sleep that waits on the same clock): a job gets it with its
JobConfig (default: the machine's, `SYSTEM`), and hands it to what it builds (runner, budget,
committer, watchdog), so a test moves time by giving another clock, never by patching a
module's `datetime`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

Monotonic = Callable[[], float]  # seconds on a clock that never steps back
Sleep = Callable[[float], Coroutine[Any, Any, Any]]  # a wait that the runner can cancel


async def asyncio_sleep(seconds: float) -> None:
    """asyncio.sleep, imported when first slept: `import batch_toggle` and --help stay light."""
    import asyncio

    await asyncio.sleep(seconds)


@dataclass(frozen=True)
class Clock:
    """The time a job sees: `wall()` Unix seconds (timestamps only), `mono()` monotonic
    seconds (every duration, deadline and window), `sleep(s)` a wait on the same time."""

    wall: Callable[[], float] = time.time
    mono: Monotonic = time.monotonic
    sleep: Sleep = field(default=asyncio_sleep)

    def now(self) -> datetime:
        """The wall clock as an aware UTC datetime."""
        return datetime.fromtimestamp(self.wall(), UTC)


SYSTEM = Clock()


def system_clock() -> Clock:
    """The default clock of a JobConfig, looked up when the config is built (a test that
    swaps `SYSTEM` reaches every job that does not name its own clock)."""
    return SYSTEM


def utc_text(moment: datetime | float | None = None) -> str:
    """`moment` (a datetime, Unix seconds, or now) as `YYYY-MM-DDTHH:MM:SS.mmmZ`."""
    if moment is None:
        moment = time.time()
    when = (datetime.fromtimestamp(moment, UTC) if isinstance(moment, int | float)
            else moment.astimezone(UTC))
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


def parse_utc(text: Any) -> datetime | None:
    """A timestamp written by `utc_text` (or any ISO 8601 form) as an aware UTC datetime;
    None when there is none or it does not parse."""
    if not text:
        return None
    try:
        when = datetime.fromisoformat(str(text).strip())
    except ValueError:
        return None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)
