"""The request budget: at most N requests in ANY sliding window of PERIOD, as the server sees it.

Why not a token bucket: a bucket of capacity N refilled at N/PERIOD lets almost 2N through one
window (a full bucket, then the refill). Why not a plain log of send times: it repeats the first
burst exactly one window later, and latency or clock skew shift the arrivals into the server's
window. So a *slot* is held from the moment a request is sent until its response (or timeout),
plus PERIOD, plus a safety margin; a request may be sent only while fewer than N slots are held.

Proof sketch: suppose N+1 requests arrive at the server inside one window [t, t+P]. Each was sent
no later than its arrival (<= t+P) and answered no earlier than its arrival (>= t), so each slot
is held over [send, t+P]. When the last of them was sent, the other N were already held: the
limiter would have refused. The margin (2% of PERIOD, at least 50 ms) absorbs clock skew between
us and the server and makes every boundary strict.

`SlidingWindow` is the pure bookkeeping (float times on a monotonic clock, no asyncio);
`Budget` is the async gate the sender awaits: the hourly window, an optional daily window, the
`--max-rps` smoothing and the global 429 pause, with the clock and sleep injected for tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass

from batch_toggle.clock import Monotonic, Sleep
from batch_toggle.config import Rate, SendOptions
from batch_toggle.errors import StoreError, StoreUnavailable
from batch_toggle.send.cost import (
    ASSUMED,
    EARLIER_REPLIES,
    GIVEN,
    LATENCY_HIGH,
    LATENCY_LOW,
    LATENCY_TYPICAL,
    MEASURED,
    Estimate,
    Gate,
    Pace,
    finish_after,
)
from batch_toggle.state.interface import SlotGate
from batch_toggle.state.sendlog import LoggedSend, Reading, held_expiries

DAY = 86400.0
SHARED_WAIT_MAX = 5.0  # seconds: the longest one wait on the shared budget sleeps
SHARED_RETRY = 1.0  # seconds between two tries to reserve while its database is away
MIN_MARGIN = 0.05  # seconds
MARGIN_FRACTION = 0.02  # of PERIOD

OnWait = Callable[[str, float, float], object]  # (why, until when, now): the budget's clock

# Why the head of the queue waits (Budget.waiting, on_wait): the hourly budget, the daily budget,
# the --max-rps smoothing, or a 429 pause.
WAIT_BUDGET, WAIT_DAILY, WAIT_RPS, WAIT_PAUSE = "budget", "daily", "rps", "pause"
WAIT_STORE = "store"  # the shared budget's database is away: nothing can be reserved


# The ETA's latency is the mean of the last this many replies.
LATENCY_SAMPLES = 200
# A progress bar's ETA is computed afresh at most this often (seconds); see progress_eta.
ETA_REFRESH = 1.0

# How late a paced send may be and still count as on schedule (see Budget._paced_from).
PACE_SLACK = 0.005


def default_margin(period: float) -> float:
    """The safety margin added to every held slot: about 2% of PERIOD, at least 50 ms."""
    return max(MARGIN_FRACTION * period, MIN_MARGIN)


# How long the send log keeps a request after its reply, whatever the run that prunes it asks
# for: the daily window's hold (a day plus its margin). A run without --daily-limit must not
# erase what a later run with one needs; a run whose own windows hold longer keeps longer.
SEND_LOG_KEEP = DAY + default_margin(DAY)


class SlidingWindow:
    """At most `limit` slots held at once; a released slot stays held `period + margin` longer.

    Pure: every method takes `now` (a monotonic float) and nothing sleeps. Slots in flight (sent,
    no response yet) never expire on their own; released and seeded slots expire at a known time.
    """

    def __init__(self, limit: int, period: float, margin: float | None = None) -> None:
        if limit <= 0 or period <= 0:
            raise ValueError("limit and period must be positive")
        self.limit = limit
        self.period = period
        self.margin = default_margin(period) if margin is None else margin
        self._in_flight: dict[int, float] = {}  # slot id -> send time
        self._expiries: list[float] = []  # heap of expiry times of released/seeded slots
        self._ids = itertools.count(1)

    @property
    def hold(self) -> float:
        """How long a slot stays held after its response: PERIOD plus the margin."""
        return self.period + self.margin

    @property
    def in_flight(self) -> int:
        """Requests sent and not yet answered."""
        return len(self._in_flight)

    @property
    def in_flight_slots(self) -> Iterable[int]:
        """The ids of the slots whose requests await their reply."""
        return self._in_flight.keys()

    def held(self, now: float) -> int:
        """Slots held at `now` (in flight, or answered less than `hold` ago)."""
        self._prune(now)
        return len(self._in_flight) + len(self._expiries)

    def available_at(self, now: float) -> float:
        """The earliest time a new slot can be taken: `now` if one is free, `inf` if only a
        response can free one (every held slot is in flight)."""
        excess = self.held(now) - self.limit  # >= 0: blocked until excess + 1 slots expire
        if excess < 0:
            return now
        if len(self._expiries) <= excess:
            return math.inf
        if excess == 0:  # the usual case: the heap's head, O(1)
            return self._expiries[0]
        return heapq.nsmallest(excess + 1, self._expiries)[-1]

    def acquire(self, now: float) -> int:
        """Take a slot at `now` (the send time); it is held until `release`. Returns its id."""
        if self.available_at(now) > now:
            raise RuntimeError("no free slot: check available_at() first")
        slot = next(self._ids)
        self._in_flight[slot] = now
        return slot

    def release(self, slot: int, now: float) -> None:
        """The response (or timeout, or error) for `slot` arrived at `now`: the slot expires at
        `now + period + margin`. Releasing an unknown or already released slot does nothing."""
        if self._in_flight.pop(slot, None) is not None:
            heapq.heappush(self._expiries, now + self.hold)

    def seed(self, held_until: Iterable[float]) -> None:
        """Slots held by earlier runs, as expiry times on this clock (see
        `sendlog.held_expiries`)."""
        for expiry in held_until:
            if math.isfinite(expiry):
                heapq.heappush(self._expiries, expiry)

    def free_times(self, now: float, latency: float) -> tuple[float, ...]:
        """When each held slot frees, in seconds from `now`, ascending (the cost model's
        `Gate.held`): a released or seeded slot at its expiry, one in flight `latency` from
        now plus the hold (its reply is assumed to come then)."""
        self._prune(now)
        ahead = [expiry - now for expiry in self._expiries]
        ahead += [latency + self.hold] * len(self._in_flight)
        return tuple(sorted(ahead))

    def _prune(self, now: float) -> None:
        while self._expiries and self._expiries[0] <= now:
            heapq.heappop(self._expiries)


@dataclass(frozen=True)
class Ticket:
    """Permission to send one request: the slots it holds and when it was granted (monotonic)."""

    slot: int
    daily_slot: int | None
    sent_at: float
    shared: int | None = None  # its slot in the key's shared budget (SlotGate), if any


class Budget:
    """The async gate every request passes: hourly window, optional daily window, `--max-rps`
    smoothing, and a global pause after a 429.

    Fairness: waiters queue on one FIFO lock; only the head of the queue sleeps on the clock (no
    thundering herd), takes its slot and passes the turn to the next. Cancellation: a waiter
    cancelled while queued or sleeping holds no slot yet; a slot is taken synchronously right
    before `acquire` returns, so nothing can leak between the two. Use `async with budget.slot()`
    so that the slot is released even when the request is cancelled.
    """

    def __init__(
        self,
        rate: Rate,
        *,
        max_rps: float,
        daily_limit: int | None = None,
        margin: float | None = None,
        concurrency: int | None = None,
        clock: Monotonic = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        on_wait: OnWait | None = None,
        store_outage_limit: float = 15 * 60.0,
    ) -> None:
        self.rate = rate
        self.hourly = SlidingWindow(rate.limit, rate.period, margin)
        self.daily = SlidingWindow(daily_limit, DAY) if daily_limit else None
        self._clock, self._sleep, self._on_wait = clock, sleep, on_wait
        self._base_interval = 1.0 / max_rps if max_rps and max_rps > 0 else 0.0
        # Slowing down after repeated 429s never goes below the budget's even pace.
        self._slowest_interval = max(self._base_interval, rate.period / rate.limit)
        self._interval = self._base_interval
        self._last_send: float | None = None
        self._paused_until = -math.inf
        self._turn = asyncio.Lock()
        self._freed = asyncio.Event()
        self.waiting: str | None = None  # why the head of the queue waits, for progress
        self.sent = 0  # requests granted by this budget
        self.concurrency = concurrency  # workers sending through it (None: unbounded)
        self._latencies: deque[float] = deque(maxlen=LATENCY_SAMPLES)
        self._expected_latency: float | None = None
        self._eta_cache: tuple[float, float] | None = None  # (computed at, finish), clock
        self._shared: SlotGate | None = None
        self.store_outage_limit = store_outage_limit
        self._store_away_since: float | None = None  # the shared budget's database is away

    @classmethod
    def from_options(
        cls,
        options: SendOptions,
        *,
        clock: Monotonic = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        on_wait: OnWait | None = None,
    ) -> Budget:
        """The budget a run's `SendOptions` ask for (rate, max_rps, daily_limit, and the
        concurrency its ETA counts with)."""
        return cls(
            options.rate, max_rps=options.max_rps, daily_limit=options.daily_limit,
            concurrency=options.concurrency, clock=clock, sleep=sleep, on_wait=on_wait,
            store_outage_limit=options.outage_limit,
        )

    def share(self, gate: SlotGate) -> None:
        """Also reserve every request's slot in `gate`, the key's budget shared live with
        other processes and hosts (state/postgres_budget.py): this budget still paces this
        process; the gate keeps all of them together inside the key's windows."""
        self._shared = gate

    async def acquire(self) -> Ticket:
        """Wait until every constraint allows one more request, then take its slots."""
        async with self._turn:
            while True:
                now = self._clock()
                at, reason = self._ready_at(now)
                if at > now:
                    await self._wait(at, now, reason)
                    continue
                shared = None
                if self._shared is not None:
                    shared = await self._reserve_shared(self._shared)
                    if shared is None:
                        continue  # another process took the window: waited, check again
                    now = self._clock()
                return self._take(now, shared)  # synchronous: no await between take and return

    async def _reserve_shared(self, gate: SlotGate) -> int | None:
        """A slot of the shared budget, or None after waiting for one to free (a release by
        any process wakes the wait: no polling). StoreError when the database is away."""
        windows = [(w.limit, w.hold) for w in self.windows]
        try:
            slot, wait = await asyncio.to_thread(gate.reserve, windows)
        except StoreUnavailable:
            # No slot can be reserved while the database is away: nothing is sent; try again
            # until it is back, or stop (StoreError) after the outage limit.
            now = self._clock()
            if self._store_away_since is None:
                self._store_away_since = now
            if now - self._store_away_since >= self.store_outage_limit:
                raise
            self.waiting = WAIT_STORE
            try:
                await self._sleep(SHARED_RETRY)
            finally:
                self.waiting = None
            return None
        self._store_away_since = None
        if slot is not None:
            return slot
        now = self._clock()
        self.waiting = WAIT_BUDGET
        if self._on_wait is not None:
            self._on_wait(WAIT_BUDGET, now + wait, now)
        try:
            # Woken by any release of the key's slots; at the latest after SHARED_WAIT_MAX, so
            # that a run told to stop is never kept by a thread asleep in the wait.
            await asyncio.to_thread(gate.wait, min(wait, SHARED_WAIT_MAX))
        finally:
            self.waiting = None
        return None

    def release(self, ticket: Ticket) -> None:
        """The response (or timeout/error) for `ticket` arrived now. Idempotent."""
        now = self._clock()
        if ticket.slot in self.hourly.in_flight_slots:
            self._latencies.append(max(0.0, now - ticket.sent_at))
        self.hourly.release(ticket.slot, now)
        if self.daily is not None and ticket.daily_slot is not None:
            self.daily.release(ticket.daily_slot, now)
        if self._shared is not None and ticket.shared is not None:
            self._release_shared(self._shared, ticket.shared)
        self._freed.set()

    def _release_shared(self, gate: SlotGate, slot: int) -> None:
        """Tell the shared budget, off the event loop. If the database cannot hear it, the
        slot counts until its deadline: the budget only waits longer, it never overruns."""
        def release() -> None:
            with contextlib.suppress(StoreError):
                gate.release(slot)

        try:
            asyncio.get_running_loop().run_in_executor(None, release)
        except RuntimeError:  # no loop (a synchronous caller): tell it here
            release()

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[Ticket]:
        """`async with budget.slot() as ticket:` send inside; released on exit, whatever happens."""
        ticket = await self.acquire()
        try:
            yield ticket
        finally:
            self.release(ticket)

    def pause_until(self, t: float) -> None:
        """After a 429: nobody sends before monotonic time `t` (a later pause wins)."""
        self._paused_until = max(self._paused_until, t)

    def slow_down(self) -> None:
        """429s repeat: the key may be shared, so double the spacing between sends, up to the
        budget's even pace (PERIOD / N)."""
        doubled = self._interval * 2 if self._interval > 0 else self._slowest_interval / 16
        self._interval = min(doubled, self._slowest_interval)

    def recover(self) -> None:
        """A response that was not a 429: ease the spacing back towards `--max-rps`."""
        self._interval = max(self._base_interval, self._interval * 0.9)

    @property
    def interval(self) -> float:
        """The current minimum spacing between two sends, in seconds."""
        return self._interval

    @property
    def paused_until(self) -> float | None:
        """The end of the current 429 pause, or None."""
        return self._paused_until if self._paused_until > self._clock() else None

    def next_send_at(self) -> float:
        """The earliest monotonic time a new request could be sent (inf: awaiting responses)."""
        return self._ready_at(self._clock())[0]

    @property
    def windows(self) -> tuple[SlidingWindow, ...]:
        """The sliding windows every request holds a slot of: hourly, and daily when set."""
        return (self.hourly,) if self.daily is None else (self.hourly, self.daily)

    @property
    def hold(self) -> float:
        """The longest any of its windows holds a slot after the reply: how far back the send
        log must reach to seed this budget."""
        return max(window.hold for window in self.windows)

    def seed(self, sends: Iterable[LoggedSend], *, now: Reading, timeout: float) -> None:
        """Honour requests recorded by earlier runs sharing the state store, each window by its
        own hold (see `sendlog.held_expiries`). `now` is both clocks read just before; `timeout`
        is how late a request with no recorded reply may have been answered."""
        sends = list(sends)
        for window in self.windows:
            window.seed(held_expiries(sends, now=now, clock_now=self._clock(), hold=window.hold,
                                      timeout=timeout))

    def gates(self, latency: float) -> list[Gate]:
        """This budget's windows and workers as the cost model's gates, from its state now
        (slots held, requests in flight), each reply taking `latency` seconds."""
        now = self._clock()
        gates = [Gate(w.limit, latency + w.hold, w.free_times(now, latency))
                 for w in self.windows]
        if self.concurrency:
            gates.append(Gate(self.concurrency, latency, (latency,) * self.hourly.in_flight))
        return gates

    def pace(self) -> Pace:
        """This budget's `--max-rps` spacing as the cost model's `Pace`, from its last send."""
        due = None
        if self._last_send is not None and self._interval > 0:
            due = self._last_send + self._interval - self._clock()
        return Pace(self._interval, PACE_SLACK, due)

    @property
    def latency(self) -> float | None:
        """The mean reply latency of the last requests this budget saw answered (seconds),
        or the expected one (`expect_latency`) before any; None when neither is known."""
        if self._latencies:
            return sum(self._latencies) / len(self._latencies)
        return self._expected_latency

    @property
    def latency_source(self) -> str:
        """Where `latency` comes from: MEASURED, EARLIER_REPLIES (expected), or ASSUMED (none
        known: an estimate is then a range)."""
        if self._latencies:
            return MEASURED
        return EARLIER_REPLIES if self._expected_latency is not None else ASSUMED

    def expect_latency(self, seconds: float | None) -> None:
        """A latency to assume until replies are measured (a resume: its earlier replies')."""
        self._expected_latency = seconds

    def eta_seconds(self, remaining_requests: int, latency: float | None = None) -> float:
        """Seconds until the reply to the last of `remaining_requests` more requests, from the
        budget's own state (held slots, windows, spacing, workers, pause), not from the recent
        rate. `latency`: the reply latency to assume (default: the one measured, else 0)."""
        if latency is None:
            latency = self.latency or 0.0
        start = max(0.0, self._paused_until - self._clock())
        return finish_after(remaining_requests, self.gates(latency), latency, self.pace(), start)

    def progress_eta(self, remaining_units: int) -> float:
        """Seconds until `remaining_units` (one request each, those in flight included) are
        answered, for a progress bar, which asks ten times a second: computed afresh at most
        every ETA_REFRESH seconds; in between, the finish it found counts down. A unit in
        flight needs no slot any more, only its reply."""
        now = self._clock()
        if self._eta_cache is None or now - self._eta_cache[0] >= ETA_REFRESH:
            in_flight = self.hourly.in_flight
            unsent = max(0, remaining_units - in_flight)
            replies = (self.latency or 0.0) if in_flight and remaining_units else 0.0
            self._eta_cache = (now, now + max(self.eta_seconds(unsent), replies))
        return max(0.0, self._eta_cache[1] - now)

    def estimate(self, requests: int, latency: float | None = None) -> Estimate:
        """What `requests` more cost from here, at `latency` when given, else at the one this
        budget knows (`latency_source`), else as a range over the latencies a network may
        have (LATENCY_LOW to LATENCY_HIGH, LATENCY_TYPICAL in the middle)."""
        source = GIVEN if latency is not None else self.latency_source
        latency = latency if latency is not None else self.latency
        if latency is None:
            low, mid, high = (self.eta_seconds(requests, lat)
                              for lat in (LATENCY_LOW, LATENCY_TYPICAL, LATENCY_HIGH))
            latency = LATENCY_TYPICAL
        else:
            low = mid = high = self.eta_seconds(requests, latency)
        now = self._clock()
        free = min(w.limit - w.held(now) for w in self.windows)
        return Estimate(requests=requests, seconds=mid, low=low, high=high, latency=latency,
                        latency_source=source, burst=max(0, min(requests, free)),
                        held=self.hourly.held(now))

    def _ready_at(self, now: float) -> tuple[float, str]:
        """When the next request may go, and which constraint decides it."""
        candidates = [
            (self.hourly.available_at(now), WAIT_BUDGET), (self._paused_until, WAIT_PAUSE)
        ]
        if self.daily is not None:
            candidates.append((self.daily.available_at(now), WAIT_DAILY))
        if self._last_send is not None:
            candidates.append((self._last_send + self._interval, WAIT_RPS))
        return max(candidates, key=lambda c: c[0])

    def _take(self, now: float, shared: int | None = None) -> Ticket:
        daily_slot = self.daily.acquire(now) if self.daily is not None else None
        ticket = Ticket(self.hourly.acquire(now), daily_slot, now, shared)
        self._last_send = self._paced_from(now)
        self.sent += 1
        return ticket

    def _paced_from(self, now: float) -> float:
        """Where the next `--max-rps` interval starts counting from. A sleep always wakes a
        little late (epoll's timers count whole milliseconds, and the event loop may be busy);
        counting from the actual send would add that lateness to every interval, and a pace of
        1,000/s came out near 650/s. So a send late by less than one interval, or than
        PACE_SLACK, counts as sent on schedule: the pace is kept on average, and no stretch of
        time sees more than max(1, PACE_SLACK x rate) requests beyond it (one at any pace up
        to 200/s). A send later than that (the run was idle, or waited on something else)
        starts the schedule afresh, so idle time never builds up into a burst."""
        if self._last_send is None or self._interval <= 0:
            return now
        scheduled = self._last_send + self._interval
        return scheduled if 0 <= now - scheduled < max(self._interval, PACE_SLACK) else now

    async def _wait(self, at: float, now: float, reason: str) -> None:
        """Sleep until `at`, or, when only a response can free a slot, until one is released.
        The caller re-checks every constraint afterwards, so waking early or late is safe."""
        self.waiting = reason
        if self._on_wait is not None:
            self._on_wait(reason, at, now)
        try:
            if math.isinf(at):
                self._freed.clear()
                await self._freed.wait()
            else:
                await self._sleep(at - now)
        finally:
            self.waiting = None
