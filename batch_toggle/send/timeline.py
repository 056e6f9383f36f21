"""The HTML report's timeline data: requests, 429s and budget waits per time bucket of a run.

The runner feeds it as it sends; the summary carries `to_dict()`; report/html.py draws it.
"""

from __future__ import annotations

from typing import Any

from batch_toggle.clock import utc_text

_NS = 1_000_000_000  # nanoseconds a second


class Timeline:
    """Requests, 429 responses and budget waits per time bucket, for the HTML report's chart.

    Memory is O(buckets), never O(requests): when a run outgrows MAX_BUCKETS, neighbouring
    buckets merge and the bucket width doubles (a 40-hour run ends with buckets of ~20 min).
    Times are the runner's monotonic clock; `started_wall` places bucket 0 on the wall clock.

    Why integers: every time is turned once into integer nanoseconds since the start, and
    buckets are ranges of those. A loop that stepped through float bucket ends
    (`started + (i + 1) * width`) once the monotonic clock passed a power of two could round
    an end back onto the time it started from and never advance: a run hung at 100% CPU.
    Integer bucket indices cannot repeat, so every loop here visibly makes progress.
    """

    MAX_BUCKETS = 240

    def __init__(self, started_mono: float, started_wall: float, width: float = 1.0) -> None:
        self.started_mono = started_mono
        self.started_wall = started_wall
        self._width_ns = max(1, round(width * _NS))
        self.requests: list[int] = []
        self.responses_429: list[int] = []
        self.wait_s: list[float] = []

    @property
    def width(self) -> float:
        """The current bucket width, in seconds."""
        return self._width_ns / _NS

    def request(self, t: float) -> None:
        i = self._index(self._offset(t))  # first: it may merge the buckets, replacing the lists
        self.requests[i] += 1

    def rate_limited(self, t: float) -> None:
        i = self._index(self._offset(t))
        self.responses_429[i] += 1

    def waited(self, start: float, end: float) -> None:
        """Sending was held back by the budget (window full, 429 pause) from `start` to `end`."""
        lo, hi = self._offset(start), self._offset(end)
        if hi <= lo:
            return
        last = self._index(hi)  # grow (and merge) first, so the loop below sees the final width
        width = self._width_ns
        # Progress: `i` runs over a finite integer range, one bucket per step.
        for i in range(lo // width, last + 1):
            overlap = min(hi, (i + 1) * width) - max(lo, i * width)
            if overlap > 0:
                self.wait_s[i] += overlap / _NS

    def to_dict(self) -> dict[str, Any]:
        return {"started_at": utc_text(self.started_wall), "bucket_s": self.width,
                "requests": list(self.requests), "responses_429": list(self.responses_429),
                "wait_s": [round(w, 3) for w in self.wait_s]}

    def _offset(self, t: float) -> int:
        """`t` as whole nanoseconds since the start (never negative)."""
        return max(0, round((t - self.started_mono) * _NS))

    def _index(self, offset: int) -> int:
        """The bucket of `offset`, growing the lists to hold it. Progress: each merge doubles
        the width, so `offset // width` halves until it is below MAX_BUCKETS."""
        while offset // self._width_ns >= self.MAX_BUCKETS:
            self._merge()
        i = offset // self._width_ns
        if i >= len(self.requests):
            grow = i + 1 - len(self.requests)
            self.requests += [0] * grow
            self.responses_429 += [0] * grow
            self.wait_s += [0.0] * grow
        return i

    def _merge(self) -> None:
        def pairs(values: list[Any]) -> list[Any]:
            return [sum(values[k:k + 2]) for k in range(0, len(values), 2)]

        self.requests = pairs(self.requests)
        self.responses_429 = pairs(self.responses_429)
        self.wait_s = pairs(self.wait_s)
        self._width_ns *= 2
