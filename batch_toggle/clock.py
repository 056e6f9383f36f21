"""Timestamps as batch-toggle writes and reads them: one UTC ISO 8601 form everywhere.

Reports, summaries, events, -v lines, `status` and the state store are read side by side (a
compliance officer matches a report's `sent_at` against an event's `ts`), so every timestamp
has one shape: `2026-12-06T10:34:54.123Z`, milliseconds and a `Z`. Reading accepts any ISO 8601
form Python does (older stores and reports wrote `+00:00` and whole seconds), a naive one taken
as UTC.

Durations are never computed from these: they come from the monotonic clock (a wall clock
stepped back mid-run once gave a negative duration).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any


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
