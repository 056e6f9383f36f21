"""Every loop over times, driven from clock origins near powers of two.

The monotonic clock is seconds since boot. Float arithmetic near 2**k loses the low bits of a
time, and a loop that steps through float times can then round a step back onto where it was
and spin forever (a run hung at 100% CPU once its host had been up 1,024 s). Each test here
runs one time loop from origins 2**k - [0, 50] s and 2**k +/- a few ulps, k = 10 to 40, with
every bucket width or period it can reach, under a guard that turns a hang into a failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import signal
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batch_toggle.config import Rate
from batch_toggle.send.limiter import DAY, Budget
from batch_toggle.send.timeline import Timeline
from batch_toggle.state.sendlog import LoggedSend, Reading

from test_limiter import arrivals, latency_lists, max_in_window, worker  # isort: skip
from test_limiter import budget as limiter_budget  # isort: skip
from test_limiter import run as run_limiter  # isort: skip
from test_runner import ERROR_TEXT, FakeLogis, jobs, run_units  # isort: skip


class Hung(Exception):
    """A loop did not finish within its guard."""


@contextlib.contextmanager
def must_finish_within(seconds: float) -> Iterator[None]:
    """Fail (raise Hung) instead of hanging the test run when the block does not return."""
    def expired(_signum: int, _frame: object) -> None:
        raise Hung(f"did not finish within {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@st.composite
def origins(draw: st.DrawFn) -> float:
    """A monotonic time near a power of two: up to 50 s before it, or a few ulps either side."""
    k = draw(st.integers(min_value=10, max_value=40))
    base = float(2**k)
    if draw(st.booleans()):
        return base - draw(st.floats(min_value=0.0, max_value=50.0))
    ulps = draw(st.integers(min_value=-8, max_value=8))
    value = base
    step = math.nextafter if ulps >= 0 else (lambda x, _: math.nextafter(x, -math.inf))
    for _ in range(abs(ulps)):
        value = step(value, math.inf)
    return value


GUARD = 5.0  # seconds: a hang fails well before pytest's patience runs out
FAST = settings(max_examples=300, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])


# --- the HTML timeline ----------------------------------------------------------------------


@FAST
@given(origin=origins(), start=st.floats(0.0, 100.0), length=st.floats(0.0, 7200.0),
       width=st.sampled_from([0.001, 0.1, 1.0, 7.0, 60.0]))
def test_timeline_wait_finishes_and_keeps_its_length_near_powers_of_two(
        origin: float, start: float, length: float, width: float) -> None:
    timeline = Timeline(origin, 1.8e9, width=width)
    a = origin + start
    b = a + length
    with must_finish_within(GUARD):
        timeline.waited(a, b)
    data = timeline.to_dict()
    assert len(data["wait_s"]) <= Timeline.MAX_BUCKETS
    # The wait lands whole (to the float's resolution at this origin), once.
    resolution = 4 * math.ulp(b) + 1e-9 * len(data["wait_s"])
    assert sum(timeline.wait_s) == pytest.approx(b - a, abs=resolution + 1e-6)


@FAST
@given(origin=origins(), gaps=st.lists(st.floats(0.0, 900.0), min_size=1, max_size=60))
def test_timeline_waits_requests_and_merges_near_powers_of_two(
        origin: float, gaps: list[float]) -> None:
    """A long run's mix: requests, 429s and budget waits that cross bucket merges."""
    timeline = Timeline(origin, 1.8e9)
    t = origin
    with must_finish_within(GUARD):
        for n, gap in enumerate(gaps):
            timeline.request(t)
            if n % 3 == 0:
                timeline.rate_limited(t)
            timeline.waited(t, t + gap)
            t += gap
    assert sum(timeline.requests) == len(gaps)
    assert sum(timeline.responses_429) == len(range(0, len(gaps), 3))
    assert len(timeline.requests) <= Timeline.MAX_BUCKETS
    assert sum(timeline.wait_s) == pytest.approx(t - origin, abs=1e-3)


def test_timeline_wait_that_used_to_spin_at_1024_seconds_of_uptime() -> None:
    """The case py-spy caught: a bucket end that rounds back onto the time it starts from."""
    origin = 1024.0 - 13.889862032
    timeline = Timeline(origin, 0.0)
    with must_finish_within(GUARD):
        timeline.waited(1024.110137967, 1030.5)
    assert sum(timeline.wait_s) == pytest.approx(1030.5 - 1024.110137967, abs=1e-6)


# --- the budget: its acquire loop and its windows -------------------------------------------
#
# Progress: Budget.acquire loops "take a slot if every constraint allows it now, else sleep
# until the earliest time one could". The time slept to, `at`, is a sum fixed by state that
# changes only when a slot is released or expires; the clock passes any finite `at`, so each
# pass either returns or sleeps towards a fixed point (a slot held by a request in flight is
# waited for by an event its release sets, not by time). Near 2^40 s a float time has a
# resolution of 0.24 ms, far below the 50 ms margin every slot keeps.


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(origin=origins(), limit=st.integers(1, 6),
       period=st.sampled_from([0.5, 1.0, 10.0, 60.0, 3600.0]),
       workers=st.lists(st.tuples(latency_lists, st.integers(0, 2**32)), min_size=1,
                        max_size=5),
       max_rps=st.sampled_from([0.0, 2.0, 50.0]), daily=st.none() | st.integers(1, 20),
       seed=st.integers(0, 2**32))
def test_the_budget_holds_and_finishes_from_clock_origins_near_powers_of_two(
        origin: float, limit: int, period: float, workers: list[tuple[list[float], int]],
        max_rps: float, daily: int | None, seed: int) -> None:
    log: list[tuple[float, float]] = []

    async def main() -> None:
        b = limiter_budget(Rate(limit, period), max_rps=max_rps, daily_limit=daily)
        tasks = []
        for latencies, think_seed in workers:
            rng = random.Random(think_seed)
            thinks = [rng.choice([0.0, rng.random() * period]) for _ in latencies]
            tasks.append(worker(b, latencies, thinks, log))
        await asyncio.gather(*tasks)

    with must_finish_within(GUARD):
        run_limiter(main, origin=origin)
    assert len(log) == sum(len(lat) for lat, _ in workers)
    for name, times in arrivals(log, random.Random(seed)).items():
        assert max_in_window(times, period) <= limit, name
        if daily is not None:
            assert max_in_window(times, DAY) <= daily, name


@FAST
@given(origin=origins(), limit=st.integers(1, 50), period=st.sampled_from([1.0, 3600.0, DAY]),
       sends=st.lists(st.tuples(st.floats(0.0, 2 * DAY), st.none() | st.floats(0.0, 60.0)),
                      max_size=60),
       remaining=st.integers(0, 10_000), latency=st.floats(0.0, 5.0))
def test_eta_and_send_times_are_finite_and_ordered_near_powers_of_two(
        origin: float, limit: int, period: float, sends: list[tuple[float, float | None]],
        remaining: int, latency: float) -> None:
    """The ETA the progress bar shows: from any clock origin, seeded with any earlier sends,
    a finite, non-negative time that never shrinks when more requests remain."""
    now_wall = 1.8e9
    b = Budget(Rate(limit, period), max_rps=0, clock=lambda: origin)
    b.seed([LoggedSend(now_wall - age, None if d is None else now_wall - age + d)
            for age, d in sends], now=Reading(now_wall, origin, None), timeout=30.0)
    with must_finish_within(GUARD):
        eta = b.eta_seconds(remaining, latency)
        more = b.eta_seconds(remaining + limit, latency)
    assert math.isfinite(eta) and 0.0 <= eta <= more


# --- the whole engine: outages, 429s, backoff, retries, windows -----------------------------


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(origin=origins(), limit=st.integers(2, 8), period=st.sampled_from([1.0, 10.0]),
       n=st.integers(1, 30), faults=st.lists(
           st.sampled_from([503, 500, 429, "429:1", "429:0", httpx.ConnectError,
                            httpx.ReadTimeout, "ok"]), max_size=40),
       outage_from=st.none() | st.integers(0, 20), seed=st.integers(0, 2**16))
def test_runs_with_faults_finish_and_keep_the_budget_near_powers_of_two(
        origin: float, limit: int, period: float, n: int, faults: list[Any],
        outage_from: int | None, seed: int) -> None:
    """Retries with backoff, 429 pauses and streaks, an outage that pauses the run and
    probes: every unit ends (an outcome, or unsent after a stop), within the virtual limit,
    and no window sees more than N."""
    rng = random.Random(seed)
    by_seq: dict[int, Any] = {}
    for i, fault in enumerate(faults):
        if isinstance(fault, str) and fault.startswith("429:"):
            fault = (429, ERROR_TEXT[429], {"Retry-After": fault[4:]})
        by_seq[rng.randrange(0, 3 * n + 1) if i else 0] = fault
    if outage_from is not None:  # twelve failures on the network in a row: a pause, probes
        for k in range(outage_from, outage_from + 12):
            by_seq[k] = httpx.ConnectError
    logis = FakeLogis(by_seq=by_seq, latency=lambda req: rng.random() * 0.2)
    with must_finish_within(GUARD * 4):
        res = run_units(jobs(n), logis, origin=origin, rate=Rate(limit, period),
                        outage_limit=120.0, max_attempts=3)
    report = res.report()
    assert len(report) == n
    assert all(o.status in ("updated", "failed", "not_attempted") for o in report.values())
    assert max_in_window(logis.arrivals(), period) <= limit


@pytest.mark.parametrize("origin", [2.0**17 - 3.0, 2.0**31 - 1.5, 2.0**35, 2.0**40 - 2.0],
                         ids=["2^17", "2^31", "2^35", "2^40"])
def test_a_forty_hour_run_keeps_its_budget_and_its_eta_from_any_clock_origin(
        origin: float) -> None:
    """A 40-hour job in virtual time (2,000 units at 50/h: forty windows, as 100,000 at
    2,500/h), its monotonic clock starting near a power of two: it finishes, no window of the
    server's ever holds more than N, and the ETA the progress bar showed at the start is the
    finish within 0.003 h."""
    n, limit, latency = 2000, 50, 0.05
    etas: list[float] = []
    with must_finish_within(60.0):
        res = run_units(jobs(n), FakeLogis(latency=latency), origin=origin,
                        rate=Rate(limit, 3600.0), max_rps=0,
                        during=lambda runner: etas.append(runner.budget.eta_seconds(n, latency)))
    assert all(o.status == "updated" for o in res.report().values())
    assert max_in_window(res.logis.arrivals(), 3600.0) == limit
    assert 39.0 < res.elapsed / 3600 < 41.0
    assert abs(etas[0] - res.elapsed) / 3600 < 0.003
