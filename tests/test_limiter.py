"""The budget limiter: at most N server arrivals in ANY window of PERIOD, whatever the latencies.

Everything runs on a virtual-time event loop: `asyncio.sleep` advances a fake clock instead of
waiting, so a simulated day takes milliseconds and no test sleeps in real time.
"""

from __future__ import annotations

import asyncio
import math
import random
import selectors
from bisect import bisect_right
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, TypeVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from batch_toggle.config import Rate, SendOptions
from batch_toggle.send.limiter import (
    DAY,
    WAIT_BUDGET,
    WAIT_PAUSE,
    WAIT_RPS,
    Budget,
    SlidingWindow,
    default_margin,
)
from batch_toggle.state.sendlog import LoggedSend, Reading, held_expiries

T = TypeVar("T")


# --- a virtual-time event loop ----------------------------------------------------------------


class _AdvancingSelector(selectors.SelectSelector):
    """Instead of blocking for `timeout`, jump the loop's virtual clock forward by it."""

    def __init__(self, loop: VirtualTimeLoop) -> None:
        super().__init__()
        self._loop = loop

    def select(self, timeout: float | None = None) -> list[Any]:
        if timeout is None:
            raise RuntimeError("deadlock: nothing ready and no timer scheduled")
        self._loop.now += max(0.0, timeout)
        return super().select(0)


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An asyncio loop whose time only moves when every task is waiting on a timer."""

    def __init__(self, origin: float = 0.0) -> None:
        self.now = origin
        super().__init__(selector=_AdvancingSelector(self))

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


def run(factory: Callable[[], Coroutine[Any, Any, T]], origin: float = 0.0) -> T:
    loop = VirtualTimeLoop(origin)
    try:
        return loop.run_until_complete(factory())
    finally:
        loop.close()


def clock() -> float:
    return asyncio.get_running_loop().time()


def budget(rate: Rate, **kwargs: Any) -> Budget:
    kwargs.setdefault("max_rps", 0)
    return Budget(rate, clock=clock, **kwargs)


# --- helpers --------------------------------------------------------------------------------


def max_in_window(times: Iterable[float], period: float) -> int:
    """The most arrivals inside any closed window [t, t + period]."""
    ts = sorted(times)
    return max((bisect_right(ts, t + period) - i for i, t in enumerate(ts)), default=0)


def arrivals(exchanges: list[tuple[float, float]], rng: random.Random) -> dict[str, list[float]]:
    """Server arrival times under three assumptions: at send, at response, anywhere between."""
    return {
        "send": [s for s, _ in exchanges],
        "response": [r for _, r in exchanges],
        "between": [s + rng.random() * (r - s) for s, r in exchanges],
    }


async def worker(b: Budget, latencies: list[float], thinks: list[float], log: list) -> None:
    """Send one request per latency; each answer arrives `latency` after its send."""
    for latency, think in zip(latencies, thinks, strict=True):
        async with b.slot():
            sent = clock()
            await asyncio.sleep(latency)
            log.append((sent, clock()))
        await asyncio.sleep(think)


latency_lists = st.lists(
    st.floats(min_value=0.0, max_value=30.0, allow_nan=False), min_size=1, max_size=12
)


# --- SlidingWindow: the pure bookkeeping ----------------------------------------------------


def test_margin_is_two_percent_of_period_but_at_least_50_ms() -> None:
    assert default_margin(3600) == pytest.approx(72.0)
    assert default_margin(1) == 0.05
    assert SlidingWindow(5, 100).hold == pytest.approx(102.0)


def test_fresh_window_grants_exactly_limit_slots_then_waits_for_a_response() -> None:
    w = SlidingWindow(3, 10.0, margin=0.5)
    slots = [w.acquire(0.0) for _ in range(3)]
    assert w.available_at(0.0) == math.inf  # all in flight: only a response frees a slot
    with pytest.raises(RuntimeError):
        w.acquire(0.0)
    w.release(slots[0], 2.0)
    assert w.available_at(3.0) == 12.5  # response + period + margin
    assert w.available_at(12.5) == 12.5
    assert w.held(12.5) == 2 and w.in_flight == 2


def test_release_is_idempotent_and_ignores_unknown_slots() -> None:
    w = SlidingWindow(2, 10.0, margin=0.0)
    slot = w.acquire(0.0)
    w.release(slot, 1.0)
    w.release(slot, 5.0)  # a second release must not add a second held slot
    w.release(999, 1.0)
    assert w.held(1.0) == 1


def test_seeded_slots_count_until_they_expire() -> None:
    w = SlidingWindow(2, 10.0)
    w.seed([5.0, 7.0, math.inf])  # inf is ignored: a seed is an expiry, not an open request
    assert w.available_at(0.0) == 5.0
    assert w.held(6.0) == 1 and w.available_at(6.0) == 6.0


def test_more_seeded_slots_than_the_limit_wait_for_enough_expiries() -> None:
    w = SlidingWindow(2, 10.0)
    w.seed([1.0, 2.0, 3.0, 4.0])
    assert w.available_at(0.0) == 3.0  # two must expire before fewer than 2 are held


def test_free_times_are_seconds_from_now_with_in_flight_slots_answered_after_latency() -> None:
    w = SlidingWindow(10, 100.0, margin=2.0)
    w.seed([5.0, 3.0, 1.0])  # 1.0 has expired at now = 2.0
    w.acquire(2.0)
    assert w.free_times(2.0, latency=0.5) == (1.0, 3.0, 0.5 + 102.0)


# --- seeds from the send log -----------------------------------------------------------------

BOOT = "boot-a"


def test_wall_sends_become_expiries_on_the_monotonic_clock() -> None:
    """Records without a boot (an older store, another boot): the wall clock places them."""
    got = held_expiries(
        [LoggedSend(1000.0, 1001.0), LoggedSend(1090.0, None), LoggedSend(500.0, 501.0)],
        now=Reading(1100.0, 7.0, BOOT), clock_now=50.0, hold=102.0, timeout=30.0,
    )
    # answered at 1001 -> 50 - 99 + 102; unknown completion -> sent + timeout; 501 is long gone
    assert got == pytest.approx([53.0, 50.0 - 10.0 + 30.0 + 102.0])


def test_a_wall_time_in_the_future_is_taken_as_now_so_a_clock_jump_neither_bursts_nor_stalls(
) -> None:
    got = held_expiries(
        [LoggedSend(5000.0, 5001.0, "boot-before"), LoggedSend(5000.0, None)],
        now=Reading(1100.0, 7.0, BOOT), clock_now=50.0, hold=102.0, timeout=30.0,
    )
    assert got == pytest.approx([152.0, 182.0])  # at most one hold (+ timeout) from now


@pytest.mark.parametrize("wall_step", [-3600.0, 0.0, 3600.0, 1e6])
def test_sends_of_this_boot_are_placed_by_the_monotonic_clock_whatever_the_wall_did(
        wall_step: float) -> None:
    """Same boot: the wall clock may have been stepped between the runs; the monotonic times
    alone say how long ago the replies came."""
    sends = [LoggedSend(1000.0, 1001.0, BOOT, 200.0, 201.0),
             LoggedSend(1090.0, None, BOOT, 290.0, None),
             LoggedSend(500.0, 501.0, BOOT, -300.0, -299.0)]
    now = Reading(1100.0 + wall_step, 300.0, BOOT)
    got = held_expiries(sends, now=now, clock_now=50.0, hold=102.0, timeout=30.0)
    assert got == pytest.approx([53.0, 50.0 - 10.0 + 30.0 + 102.0])


def test_a_monotonic_time_ahead_of_this_boots_clock_counts_as_now() -> None:
    """Impossible on a real kernel, possible under a faked clock: never held beyond a window."""
    got = held_expiries([LoggedSend(0.0, 1.0, BOOT, 9e9, 9e9 + 1)],
                        now=Reading(0.0, 300.0, BOOT), clock_now=50.0, hold=102.0, timeout=30.0)
    assert got == pytest.approx([152.0])


# --- Budget: the async gate -----------------------------------------------------------------


@settings(max_examples=80, deadline=None)
@given(
    limit=st.integers(1, 6),
    period=st.sampled_from([1.0, 10.0, 60.0]),
    workers=st.lists(st.tuples(latency_lists, st.integers(0, 2**32)), min_size=1, max_size=6),
    max_rps=st.sampled_from([0.0, 2.0, 50.0]),
    seed=st.integers(0, 2**32),
)
def test_no_window_ever_sees_more_than_n_arrivals(limit, period, workers, max_rps, seed) -> None:
    """Random concurrency, latencies and pauses between requests: in ANY window of PERIOD the
    server sees at most N arrivals, whether a request arrives at its send, at its response or
    anywhere in between."""
    log: list[tuple[float, float]] = []

    async def main() -> None:
        b = budget(Rate(limit, period), max_rps=max_rps)
        tasks = []
        for latencies, think_seed in workers:
            rng = random.Random(think_seed)  # idle now and then, sometimes for a while
            thinks = [rng.choice([0.0, 0.0, rng.random() * period]) for _ in latencies]
            tasks.append(worker(b, latencies, thinks, log))
        await asyncio.gather(*tasks)

    run(main)
    assert len(log) == sum(len(lat) for lat, _ in workers)
    for name, times in arrivals(log, random.Random(seed)).items():
        assert max_in_window(times, period) <= limit, name


@settings(max_examples=40, deadline=None)
@given(
    limit=st.integers(1, 5),
    daily=st.integers(1, 12),
    workers=st.lists(latency_lists, min_size=1, max_size=4),
    seed=st.integers(0, 2**32),
)
def test_hourly_and_daily_windows_hold_together(limit, daily, workers, seed) -> None:
    period = 600.0
    log: list[tuple[float, float]] = []

    async def main() -> None:
        b = budget(Rate(limit, period), daily_limit=daily)
        await asyncio.gather(*(worker(b, lat, [0.0] * len(lat), log) for lat in workers))

    run(main)
    for name, times in arrivals(log, random.Random(seed)).items():
        assert max_in_window(times, period) <= limit, name
        assert max_in_window(times, DAY) <= daily, name


@settings(max_examples=60, deadline=None)
@given(
    limit=st.integers(1, 5),
    first=st.lists(latency_lists, min_size=1, max_size=4),
    second=st.lists(latency_lists, min_size=1, max_size=4),
    stop_at=st.floats(0.0, 60.0),
    offset=st.floats(-1e6, 1e6),
    same_boot=st.booleans(),
    wall_step=st.floats(-1e6, 1e6),
    seed=st.integers(0, 2**32),
)
def test_a_second_run_seeded_from_the_first_keeps_the_bound(
    limit, first, second, stop_at, offset, same_boot, wall_step, seed
) -> None:
    """Run 1 is killed at `stop_at` (open requests have no recorded completion); run 2 seeds
    its budget from run 1's log, its wall clock `offset` from the monotonic one. Another boot:
    the log has no monotonic side, the wall clock places it. The same boot: the log has its
    monotonic times too, and the wall clock may have been stepped by `wall_step` between the
    runs (an hour forward used to look like an empty window: a burst the server refused).
    Together the runs never exceed N in a window."""
    period, timeout = 30.0, 30.0  # every latency drawn is within the timeout
    old: list[tuple[float, float]] = []
    new: list[tuple[float, float]] = []

    async def main() -> None:
        b1 = budget(Rate(limit, period))
        opened: dict[int, float] = {}

        async def traced(latencies: list[float]) -> None:
            for latency in latencies:
                async with b1.slot() as ticket:
                    opened[ticket.slot] = clock()
                    await asyncio.sleep(latency)
                    old.append((opened.pop(ticket.slot), clock()))

        tasks = [asyncio.ensure_future(traced(lat)) for lat in first]
        await asyncio.sleep(stop_at)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        killed = list(opened.values())
        boot = BOOT if same_boot else None
        recorded = [LoggedSend(s + offset, r + offset, boot, s if boot else None,
                               r if boot else None) for s, r in old]
        recorded += [LoggedSend(s + offset, None, boot, s if boot else None) for s in killed]
        old.extend((s, s + timeout) for s in killed)  # worst case: answered at the timeout
        b2 = budget(Rate(limit, period))
        step = wall_step if same_boot else 0.0
        b2.seed(recorded, now=Reading(clock() + offset + step, clock(), BOOT), timeout=timeout)
        await asyncio.gather(*(worker(b2, lat, [0.0] * len(lat), new) for lat in second))

    run(main)
    for name, times in arrivals(old + new, random.Random(seed)).items():
        assert max_in_window(times, period) <= limit, name


def test_a_fresh_budget_bursts_exactly_n_then_sends_as_slots_free() -> None:
    async def main() -> list[float]:
        b = budget(Rate(5, 10.0))  # margin 0.2 s
        sends = []
        for _ in range(7):
            ticket = await b.acquire()
            sends.append(ticket.sent_at)
            b.release(ticket)
        return sends

    sends = run(main)
    assert sends[:5] == [0.0] * 5
    assert sends[5:] == pytest.approx([10.2, 10.2])


def test_max_rps_spaces_the_burst() -> None:
    async def main() -> list[float]:
        b = budget(Rate(100, 3600.0), max_rps=4.0)
        sends = []
        for _ in range(5):
            async with b.slot() as ticket:
                sends.append(ticket.sent_at)
        return sends

    assert run(main) == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0])


def test_max_rps_keeps_its_pace_when_every_sleep_wakes_late() -> None:
    """Each sleep overshoots by 40% of the interval (a busy event loop): the pace must still
    be --max-rps on average, not interval x 1.4, and no second ever sees more than one request
    beyond the pace."""

    async def late_sleep(seconds: float) -> None:
        await asyncio.sleep(seconds + 0.4 * 0.01)

    async def main() -> list[float]:
        b = Budget(Rate(10_000, 3600.0), max_rps=100.0, clock=clock, sleep=late_sleep)
        sends = []
        for _ in range(501):
            async with b.slot() as ticket:
                sends.append(ticket.sent_at)
        return sends

    sends = run(main)
    assert sends[-1] - sends[0] == pytest.approx(5.0, abs=0.02)  # 500 intervals of 10 ms
    assert max_in_window(sends, 1.0) <= 100 + 1


def test_a_fast_pace_survives_timers_that_wake_milliseconds_late() -> None:
    """At 1,000/s an interval is 1 ms, and epoll's timers wake up to a whole millisecond late
    (more on a busy loop): lateness up to PACE_SLACK (5 ms) still counts as on schedule, so
    the pace holds, and no 100 ms ever sees more than 5 requests beyond it."""

    async def late_sleep(seconds: float) -> None:
        await asyncio.sleep(seconds + 0.003)

    async def main() -> list[float]:
        b = Budget(Rate(10**6, 3600.0), max_rps=1000.0, clock=clock, sleep=late_sleep)
        sends = []
        for _ in range(1001):
            async with b.slot() as ticket:
                sends.append(ticket.sent_at)
        return sends

    sends = run(main)
    assert sends[-1] - sends[0] == pytest.approx(1.0, abs=0.01)  # not 4 s: 1 ms + 3 ms late
    assert max_in_window(sends, 0.1) <= 100 + 5


def test_max_rps_does_not_bank_idle_time_into_a_burst() -> None:
    async def main() -> list[float]:
        b = budget(Rate(10_000, 3600.0), max_rps=10.0)
        async with b.slot():
            pass
        await asyncio.sleep(5.0)  # idle: nothing to send for 50 intervals
        sends = []
        for _ in range(3):
            async with b.slot() as ticket:
                sends.append(ticket.sent_at)
        return sends

    assert run(main) == pytest.approx([5.0, 5.1, 5.2])


def test_pause_until_stops_every_sender_until_then() -> None:
    async def main() -> list[float]:
        b = budget(Rate(100, 3600.0))
        async with b.slot():
            b.pause_until(clock() + 30.0)
            b.pause_until(clock() + 5.0)  # an earlier end never shortens a pause
        assert b.paused_until == 30.0
        got = await asyncio.gather(*(b.acquire() for _ in range(3)))
        return [t.sent_at for t in got]

    assert run(main) == [30.0, 30.0, 30.0]


def test_a_waiter_blocked_on_in_flight_slots_wakes_when_one_is_released() -> None:
    async def main() -> float:
        b = budget(Rate(1, 10.0))
        first = await b.acquire()
        waiter = asyncio.ensure_future(b.acquire())
        await asyncio.sleep(3.0)
        assert not waiter.done() and b.waiting == WAIT_BUDGET
        b.release(first)  # at t=3: the slot frees at 3 + 10 + 0.2
        return (await waiter).sent_at

    assert run(main) == pytest.approx(13.2)


def test_waiters_are_served_in_arrival_order_and_only_the_head_sleeps() -> None:
    sleeps = []

    async def counting_sleep(delay: float) -> None:
        sleeps.append(delay)
        await asyncio.sleep(delay)

    async def main() -> list[int]:
        b = budget(Rate(1, 1.0), sleep=counting_sleep)
        order = []

        async def one(i: int) -> None:
            async with b.slot():
                order.append(i)

        await asyncio.gather(*(one(i) for i in range(10)))
        return order

    assert run(main) == list(range(10))
    assert len(sleeps) == 9  # one wake per grant: no thundering herd


def test_a_cancelled_waiter_takes_no_slot_and_does_not_block_the_queue() -> None:
    async def main() -> None:
        b = budget(Rate(2, 10.0))
        held = [await b.acquire(), await b.acquire()]
        blocked = asyncio.ensure_future(b.acquire())  # waits on in-flight slots
        behind = asyncio.ensure_future(b.acquire())  # queued behind it
        await asyncio.sleep(1.0)
        blocked.cancel()
        await asyncio.gather(blocked, return_exceptions=True)
        assert b.hourly.in_flight == 2
        for t in held:
            b.release(t)
        ticket = await behind
        assert ticket.sent_at == pytest.approx(1.0 + 10.2)
        assert b.hourly.in_flight == 1 and b.hourly.held(clock()) == 1  # the old two expired

    run(main)


def test_cancelling_a_waiter_queued_behind_the_head_keeps_the_order_of_the_rest() -> None:
    async def main() -> list[int]:
        b = budget(Rate(1, 1.0))
        order: list[int] = []

        async def one(i: int) -> None:
            async with b.slot():
                order.append(i)

        tasks = [asyncio.ensure_future(one(i)) for i in range(5)]
        await asyncio.sleep(0.5)
        tasks[2].cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        assert b.hourly.in_flight == 0 and b.sent == 4
        return order

    assert run(main) == [0, 1, 3, 4]


def test_a_waiter_cancelled_while_sleeping_for_budget_takes_no_slot() -> None:
    async def main() -> None:
        b = budget(Rate(1, 10.0))
        async with b.slot():
            pass
        sleeper = asyncio.ensure_future(b.acquire())
        await asyncio.sleep(5.0)
        sleeper.cancel()
        await asyncio.gather(sleeper, return_exceptions=True)
        assert b.hourly.held(clock()) == 1 and b.waiting is None and b.sent == 1

    run(main)


def test_a_request_cancelled_mid_flight_releases_its_slot() -> None:
    async def main() -> None:
        b = budget(Rate(1, 10.0))

        async def send() -> None:
            async with b.slot():
                await asyncio.sleep(100.0)

        task = asyncio.ensure_future(send())
        await asyncio.sleep(1.0)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        assert b.hourly.in_flight == 0
        assert b.next_send_at() == pytest.approx(1.0 + 10.2)

    run(main)


def test_on_wait_reports_why_and_until_when() -> None:
    seen: list[tuple[str, float]] = []

    async def main() -> None:
        b = budget(Rate(10, 60.0), max_rps=2.0, on_wait=lambda r, t, _now: seen.append((r, t)))
        async with b.slot():
            pass
        async with b.slot():
            pass
        b.pause_until(clock() + 7.0)
        async with b.slot():
            pass

    run(main)
    assert seen == [(WAIT_RPS, 0.5), (WAIT_PAUSE, 7.5)]


def test_slow_down_doubles_spacing_up_to_the_even_pace_and_recover_eases_back() -> None:
    b = Budget(Rate(100, 100.0), max_rps=10.0)  # even pace 1 s, base 0.1 s
    for _ in range(10):
        b.slow_down()
    assert b.interval == 1.0
    for _ in range(100):
        b.recover()
    assert b.interval == pytest.approx(0.1)
    unsmoothed = Budget(Rate(100, 100.0), max_rps=0)
    unsmoothed.slow_down()
    assert 0 < unsmoothed.interval < 1.0


def test_eta_comes_from_the_budget_not_from_recent_throughput() -> None:
    b = Budget(Rate(2500, 3600.0), max_rps=10.0, clock=lambda: 0.0)
    assert b.eta_seconds(0) == 0.0
    assert b.eta_seconds(2500) == pytest.approx(249.9)  # the burst at max_rps
    assert b.eta_seconds(2501) == pytest.approx(3672.0)  # one window + margin
    daily = Budget(Rate(2500, 3600.0), max_rps=10.0, daily_limit=3000, clock=lambda: 0.0)
    assert daily.eta_seconds(3001) == pytest.approx(DAY * 1.02)


def test_from_options_uses_rate_rps_and_daily_limit() -> None:
    b = Budget.from_options(SendOptions(rate=Rate(7, 60.0), max_rps=3.0, daily_limit=50))
    assert b.hourly.limit == 7 and b.daily is not None and b.daily.limit == 50
    assert b.interval == pytest.approx(1 / 3)
