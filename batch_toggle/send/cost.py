"""The cost model: when the last of the next requests is answered, under every rule the limiter
keeps. The plan line, a resume's announcement, `status` and the progress ETA all ask it, so
they agree with each other and with the run.

Why a model and not a formula: "(requests - burst) / rate" ignored that a sliding window frees
a whole burst one hold later (PERIOD plus the margin, plus the reply's latency), that earlier
runs may still hold slots, that `--max-rps` paces each burst, that `--concurrency` workers each
wait for their reply, and the daily window. The README's 31,204 requests at 2500/h came out
47 minutes short.

Every window-like rule is a *gate*: at most `limit` requests hold one of its slots, and a slot
frees `delay` after its request goes. With a constant reply latency L:

    hourly window   limit N, delay L + PERIOD + margin
    daily window    limit D, delay L + a day + its margin
    workers         limit C (--concurrency), delay L

Slots taken before now (an earlier run's sends, requests in flight) are the gate's `held` free
times, as if they were earlier requests. `--max-rps` is the `Pace`: a request goes no sooner
than one interval after the last one's place on the schedule. Request i (0-based) then goes
at the earliest time every rule allows:

    t_i = max(t_{i-1}, start, due_i, max over gates of free[held + i - limit])
    free[held + j] = t_j + delay                       (no term while held + i < limit)

which is the hint t_i = max(t_{i-1} + 1/max_rps, t_{i-N} + L + hold, t_{i-D} + L + hold_day,
t_{i-C} + L), FIFO, with held slots acting as earlier requests; the pace counts from where a
send was due, not when it went, when it went less than an interval late, as the limiter does
(limiter.Budget._paced_from). It is the limiter's schedule when every reply takes L
(tests/test_cost.py checks it against the real one on a virtual clock).

Speed: the schedule becomes periodic (a round of N requests repeats one hold later; a day of
D repeats a day later; a paced stretch repeats every request). Once the last `memory` times
(the longest gate) and pace places all repeat those p earlier shifted by the same s, every
later round does too (each rule's term shifts by s), so the rest is extrapolated whole:
O(transient + two rounds) steps, not O(requests). Pure: no clock, no I/O; times are seconds
from "now".
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from batch_toggle.config import Rate, format_duration
from batch_toggle.events import CostRecord

# Reply latencies assumed when none has been measured (the plan, before any request): a
# loopback or LAN API, a typical HTTPS API across a continent, and a slow one. The central
# figure is the estimate; the two others bound it, and the plan says so.
LATENCY_LOW = 0.02
LATENCY_TYPICAL = 0.2
LATENCY_HIGH = 1.0

# Where an estimate's latency comes from (Estimate.latency_source).
MEASURED = "measured"  # this run's replies
EARLIER_REPLIES = "earlier replies"  # the replies of the run a resume continues
GIVEN = "given"  # the caller's
ASSUMED = "assumed"  # none known: the estimate is a range (LATENCY_LOW to LATENCY_HIGH)

# Two schedule times closer than this are the same time (float rounding over days of
# seconds is about 1e-11 s): the periodicity test compares shifts with it.
_SAME = 1e-6


@dataclass(frozen=True)
class Gate:
    """One rule every request passes: at most `limit` slots held; a slot frees `delay` after
    its request goes. `held`: the free times of slots taken before now (seconds from now,
    ascending)."""

    limit: int
    delay: float
    held: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if self.limit < 1 or not self.delay >= 0:
            raise ValueError(f"a gate needs limit >= 1 and delay >= 0, not {self}")


@dataclass(frozen=True)
class Pace:
    """`--max-rps`: a request goes `interval` after the last one's place on the schedule. Its
    place is where it was due, when it went less than max(interval, slack) late (a sleep wakes
    a little late: counting from the send would lose the pace), else when it went. `due`: when
    the first is due (the last send's place plus the interval; None: no send yet)."""

    interval: float = 0.0
    slack: float = 0.0
    due: float | None = None

    def place(self, due: float | None, sent: float) -> float:
        """The place on the schedule of a request `due` then and sent at `sent`."""
        if due is None or self.interval <= 0:
            return sent
        return due if 0 <= sent - due < max(self.interval, self.slack) else sent


def last_send(requests: int, gates: Sequence[Gate], pace: Pace = Pace(),
              start: float = 0.0) -> float:
    """Seconds from now until the last of `requests` can go (0 for none): no request before
    `start` (a 429 pause), each through `pace` and every gate."""
    if requests <= 0:
        return 0.0
    last = requests - 1
    # A gate binds only once held + i reaches its limit; one that never does is left out.
    binding = [g for g in gates if len(g.held) + last >= g.limit]
    memory = max((g.limit for g in binding), default=1)
    periods = {p: [math.nan, 0] for p in {1, *(g.limit for g in binding)}}  # [shift, run]
    terms = [(len(g.held) - g.limit, g.held, len(g.held), g.delay) for g in binding]
    times: list[float] = []
    places: list[float] = []  # each request's place on the --max-rps schedule
    due = pace.due
    for i in range(requests):
        # FIFO: never before the request ahead (a sleep can only end later), nor the start.
        at = max(start, times[-1] if times else start, start if due is None else due)
        for offset, held, n_held, delay in terms:
            j = offset + i
            if j >= 0:
                free = held[j] if j < n_held else times[j - n_held] + delay
                if free > at:
                    at = free
        times.append(at)
        places.append(pace.place(due, at))
        due = places[i] + pace.interval
        for p, run in periods.items():
            if i < p:
                continue
            shift = at - times[i - p]
            if abs(shift - run[0]) <= _SAME and abs(places[i] - places[i - p] - shift) <= _SAME:
                run[1] += 1
            else:
                run[0], run[1] = shift, 1
            # The last `memory` times and places repeat those p earlier, shifted by run[0],
            # and nothing that decides the next ones is a held slot or the start: every
            # later round repeats too.
            if run[1] >= memory and i + 1 - p - memory >= 0:
                rounds = -(-(last - i) // p)
                return times[last - rounds * p] + rounds * run[0]
    return times[-1]


def finish_after(requests: int, gates: Sequence[Gate], latency: float, pace: Pace = Pace(),
                 start: float = 0.0) -> float:
    """Seconds from now until the reply to the last of `requests` arrives (see `last_send`)."""
    if requests <= 0:
        return 0.0
    return last_send(requests, gates, pace, start) + latency


@dataclass(frozen=True)
class Estimate:
    """What the next `requests` cost: `seconds` until the last reply, at `latency`.

    `low`/`high` bound it: equal to `seconds` once the latency is known (measured in this
    run, or from an earlier run's replies: `latency_source`), else at LATENCY_LOW and
    LATENCY_HIGH. `burst`: how many go before the first wait for a window; `held`: slots
    of the hourly window already held (earlier runs, replies awaited)."""

    requests: int
    seconds: float
    low: float
    high: float
    latency: float
    latency_source: str  # MEASURED, EARLIER_REPLIES, GIVEN or ASSUMED
    burst: int
    held: int


def latency_prior(latencies_ms: Iterable[float | None]) -> float | None:
    """The latency (seconds) to expect from earlier replies' `latency_ms`: their mean (the
    schedule's cost grows with the sum of latencies, so the mean, not the median), None when
    there are none."""
    known = [ms for ms in latencies_ms if ms is not None and math.isfinite(ms) and ms >= 0]
    return sum(known) / len(known) / 1000.0 if known else None


# --- as the plan line, the summary and the events say it ------------------------------------


def cost_record(estimate: Estimate, rate: Rate) -> CostRecord:
    """An estimate as the summary, the events and the plan line carry it. The first four keys
    are the ones every earlier version wrote; `estimated_duration_s` is the central figure."""
    low, high = estimate.low, estimate.high
    return CostRecord(
        requests_needed=estimate.requests,
        estimated_duration_s=round(estimate.seconds, 1),
        estimated_duration=format_duration(estimate.seconds),
        rate=str(rate),
        estimated_duration_range_s=[round(low, 1), round(high, 1)],
        estimated_duration_range=(format_duration(low) if format_duration(low) ==
                                  format_duration(high) else
                                  f"{format_duration(low)} to {format_duration(high)}"),
        latency_s=round(estimate.latency, 3),
        latency_source=estimate.latency_source,
        burst=estimate.burst,
        slots_held=estimate.held,
    )


def cost_line(cost: Mapping[str, Any]) -> str:
    """`31,204 requests: about 12 h 16 min at 2500/h (the first 2,500 in a burst; 12 h 16 min
    to 12 h 19 min as replies take 20 ms to 1 s)`: the plan's promise, with what it rests on."""
    needed = cost["requests_needed"]
    noun = "request" if needed == 1 else "requests"
    return (f"{needed:,} {noun}: about {cost['estimated_duration']} at {cost['rate']}"
            f"{cost_notes(cost)}")


def cost_notes(cost: Mapping[str, Any]) -> str:
    """What an estimate rests on, in parentheses (empty when nothing needs saying): the burst
    before the first window wait, budget slots earlier requests still hold, and the range
    when no reply latency is known yet."""
    needed = cost["requests_needed"]
    burst, held = cost.get("burst", needed), cost.get("slots_held", 0)
    window = []
    if needed > burst:
        window.append(f"the first {burst:,} in a burst" if burst
                      else "the first waits for the budget window")
    if held:
        window.append(f"{held:,} budget slot{'s' if held != 1 else ''} still held by earlier "
                      "requests")
    notes = [", ".join(window)] if window else []
    if cost.get("latency_source") == ASSUMED and " to " in cost["estimated_duration_range"]:
        notes.append(f"{cost['estimated_duration_range']} as replies take "
                     f"{latency_text(LATENCY_LOW)} to {latency_text(LATENCY_HIGH)}")
    return f" ({'; '.join(notes)})" if notes else ""


def latency_text(seconds: float) -> str:
    """`20 ms`, `1 s`, `1.5 s`."""
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:g} s"


__all__ = ["ASSUMED", "EARLIER_REPLIES", "GIVEN", "LATENCY_HIGH", "LATENCY_LOW",
           "LATENCY_TYPICAL", "MEASURED", "Estimate", "Gate", "Pace", "cost_line", "cost_notes",
           "cost_record", "finish_after", "last_send", "latency_prior", "latency_text"]
