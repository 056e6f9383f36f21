"""The cost model (batch_toggle/send/cost.py): the schedule it predicts is the one the real limiter
keeps, it is monotone and finite, it is fast for 100,000+ requests, and it holds from clock
origins near powers of two (as tests/test_time_loops.py's loops do).

The reference is a simulation: workers sending through the real `limiter.Budget` on a
virtual clock (tests/test_limiter.py's loop), each reply taking the same latency.
"""

from __future__ import annotations

import asyncio
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_limiter import budget as limiter_budget
from test_limiter import clock
from test_limiter import run as run_virtual
from test_time_loops import GUARD, must_finish_within, origins

from batch_toggle.config import Rate, SendOptions
from batch_toggle.send.cost import Gate, Pace, finish_after, last_send
from batch_toggle.send.limiter import DAY, Budget, default_margin
from batch_toggle.state.sendlog import LoggedSend, Reading

# --- the schedule, by hand --------------------------------------------------------------------


def test_a_fresh_window_sends_a_burst_then_one_hold_and_latency_per_round() -> None:
    window = Gate(10, 1.0 + 102.0)  # N = 10, latency 1 s, PERIOD 100 s + 2 s margin
    assert last_send(10, [window]) == 0.0
    assert last_send(11, [window]) == 103.0
    assert last_send(25, [window]) == 2 * 103.0
    assert finish_after(25, [window], 1.0) == 2 * 103.0 + 1.0


def test_pacing_spreads_each_round_and_the_next_round_follows_the_first() -> None:
    gates, pace = [Gate(4, 10.0)], Pace(0.5)  # --max-rps 2, N = 4, hold 10 s
    # Round one at 0, 0.5, 1, 1.5; round two one hold after each: 10, 10.5, 11, 11.5.
    assert [last_send(n, gates, pace) for n in range(1, 9)] == [0.0, 0.5, 1.0, 1.5,
                                                                10.0, 10.5, 11.0, 11.5]


def test_the_pace_counts_from_where_a_send_was_due_when_it_went_a_little_late() -> None:
    """As the limiter does: a send held back by a window for less than an interval keeps its
    place on the schedule, so the next one is not pushed back by that much."""
    window = Gate(2, 0.55, (0.55,))  # one of two slots held until 0.55 s
    assert last_send(3, [window], Pace(0.5)) == 1.0  # 0, 0.55 (due 0.5), then 0.5 + 0.5
    assert last_send(3, [window], Pace(0.5, due=0.3), start=2.0) == 3.0  # a 429 pause first


def test_held_slots_act_as_earlier_requests() -> None:
    # Three of four slots held by an earlier run, freeing at 2, 5 and 9 s from now.
    gate = Gate(4, 10.0, (2.0, 5.0, 9.0))
    assert [last_send(n, [gate]) for n in range(1, 6)] == [0.0, 2.0, 5.0, 9.0, 10.0]


def test_workers_wait_for_their_replies() -> None:
    workers = Gate(2, 0.05)  # --concurrency 2, 50 ms replies
    assert finish_after(100, [workers], 0.05) == pytest.approx(50 * 0.05)


def test_a_gate_that_never_fills_costs_nothing() -> None:
    assert last_send(5, [Gate(10, 3600.0), Gate(6, 1.0, (0.5,))]) == 0.0
    assert last_send(0, [Gate(1, 5.0)]) == 0.0


def test_the_readme_job_is_twelve_windows_with_the_margin() -> None:
    """31,204 requests at 2500/h, --max-rps 10, no latency: 2,500 in a 250 s burst, then a
    round every PERIOD + 2% (3,672 s), the last 1,204 paced over 120 s."""
    b = Budget(Rate(2500, 3600.0), max_rps=10.0, clock=lambda: 0.0)
    assert b.eta_seconds(31_204, latency=0.0) == pytest.approx(12 * 3672.0 + 120.3)


# --- agreement with the real limiter ------------------------------------------------------------


async def send_all(b: Budget, requests: int, workers: int, latency: float) -> float:
    """Seconds from now until the last reply, `workers` sending through `b` one request after
    another, each reply taking `latency` (on the virtual clock `b` reads)."""
    left = [requests]
    start = last = clock()

    async def worker() -> None:
        nonlocal last
        while left[0] > 0:
            left[0] -= 1
            async with b.slot():
                await asyncio.sleep(latency)
                last = max(last, clock())

    await asyncio.gather(*(worker() for _ in range(workers)))
    return last - start


@st.composite
def budgets(draw: st.DrawFn) -> tuple[Rate, float, int | None, int, float, list[float]]:
    limit = draw(st.integers(1, 12))
    period = draw(st.sampled_from([0.5, 1.0, 10.0, 60.0, 3600.0]))
    max_rps = draw(st.sampled_from([0.0, 2.0, 10.0, 50.0]))
    daily = draw(st.none() | st.integers(1, 40))
    concurrency = draw(st.integers(1, 6))
    latency = draw(st.sampled_from([0.0, 0.001, 0.05, 0.2, 1.0, 3.0]))
    held = draw(st.lists(st.floats(0.0, 2 * 3600.0), max_size=8))  # seconds since the reply
    return Rate(limit, period), max_rps, daily, concurrency, latency, held


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=budgets(), requests=st.integers(0, 80), origin=origins())
def test_the_model_agrees_with_the_real_limiter_on_a_virtual_clock(
        case: tuple[Rate, float, int | None, int, float, list[float]], requests: int,
        origin: float) -> None:
    """The finish the model predicts is the finish of workers sending through the real
    Budget: same windows, margin, held slots, pacing, daily window, concurrency, latency."""
    rate, max_rps, daily, concurrency, latency, ages = case

    async def main() -> tuple[float, float]:
        b = limiter_budget(rate, max_rps=max_rps, daily_limit=daily, concurrency=concurrency)
        seed(b, ages)
        predicted = b.eta_seconds(requests, latency)
        return predicted, await send_all(b, requests, concurrency, latency)

    with must_finish_within(GUARD):
        predicted, measured = run_virtual(main, origin=origin)
    # A float time near 2^40 keeps about 0.1 ms, and each send the limiter times on that
    # clock may round by as much: the model's times count from 0 and keep more.
    assert predicted == pytest.approx(measured, abs=1e-6 + 4 * (requests + 1) * math.ulp(origin))


def seed(b: Budget, ages: list[float]) -> None:
    """Earlier requests answered `age` seconds ago, on this boot's clock."""
    now = clock()
    wall = 1.8e9
    b.seed([LoggedSend(wall - age, wall - age, "boot", now - age, now - age) for age in ages],
           now=Reading(wall, now, "boot"), timeout=30.0)


# --- properties -----------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(origin=origins(), limit=st.integers(1, 3000),
       period=st.sampled_from([1.0, 10.0, 3600.0, DAY]),
       max_rps=st.sampled_from([0.0, 1.0, 10.0, 1000.0]), daily=st.none() | st.integers(1, 9000),
       concurrency=st.integers(1, 64), latency=st.floats(0.0, 30.0),
       ages=st.lists(st.floats(-30.0, 2 * DAY), max_size=40),
       requests=st.integers(0, 200_000))
def test_the_estimate_is_finite_and_grows_with_the_requests_near_powers_of_two(
        origin: float, limit: int, period: float, max_rps: float, daily: int | None,
        concurrency: int, latency: float, ages: list[float], requests: int) -> None:
    b = Budget(Rate(limit, period), max_rps=max_rps, daily_limit=daily,
               concurrency=concurrency, clock=lambda: origin)
    wall = 1.8e9
    b.seed([LoggedSend(wall - age, None, None) for age in ages],
           now=Reading(wall, origin, None), timeout=30.0)
    with must_finish_within(GUARD):
        eta = b.eta_seconds(requests, latency)
        more = b.eta_seconds(requests + 1, latency)
        window_more = b.eta_seconds(requests + limit, latency)
    # Monotone to the float's resolution (a jump by whole rounds and a step may round apart).
    slack = 1e-12 * window_more
    assert math.isfinite(window_more) and 0.0 <= eta <= more + slack <= window_more + 2 * slack
    if requests:
        assert eta >= latency


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(limit=st.integers(1, 40), period=st.sampled_from([1.0, 60.0, 3600.0]),
       max_rps=st.sampled_from([0.0, 3.0, 10.0]), daily=st.none() | st.integers(1, 120),
       concurrency=st.integers(1, 8), latency=st.sampled_from([0.0, 0.05, 0.7]),
       held=st.lists(st.floats(0.001, 5000.0), max_size=30), requests=st.integers(1, 1500))
def test_extrapolated_rounds_equal_the_schedule_step_by_step(
        limit: int, period: float, max_rps: float, daily: int | None, concurrency: int,
        latency: float, held: list[float], requests: int) -> None:
    """The periodic jump (cost.last_send) gives the time stepping every request gives."""
    gates = [Gate(limit, latency + period + default_margin(period), tuple(sorted(held))),
             Gate(concurrency, latency)]
    if daily:
        gates.append(Gate(daily, latency + DAY + default_margin(DAY), tuple(sorted(held))))
    pace = Pace(1 / max_rps if max_rps else 0.0, 0.005)
    assert last_send(requests, gates, pace) == pytest.approx(
        step_by_step(requests, gates, pace), rel=1e-12, abs=1e-6)


def step_by_step(requests: int, gates: list[Gate], pace: Pace) -> float:
    """The schedule of cost.py's docstring, every request stepped."""
    times: list[float] = []
    due = pace.due
    for i in range(requests):
        at = max(times[-1] if times else 0.0, 0.0 if due is None else due)
        for g in gates:
            j = len(g.held) + i - g.limit
            if j >= 0:
                at = max(at, g.held[j] if j < len(g.held) else times[j - len(g.held)] + g.delay)
        times.append(at)
        due = pace.place(due, at) + pace.interval
    return times[-1]


def test_a_billion_requests_are_extrapolated_by_whole_rounds_not_stepped() -> None:
    """The plan line, `status` and the progress bar ask for jobs of 100,000+ requests: once
    the schedule repeats, the rest is extrapolated (stepping a billion would not finish)."""
    b = Budget.from_options(SendOptions(), clock=lambda: 0.0)  # 2500/h, 10/s, 4 workers
    with must_finish_within(GUARD):
        eta = b.eta_seconds(10**9, 0.2)
    rounds, rest = divmod(10**9 - 1, 2500)
    assert eta == pytest.approx(rounds * (0.2 + 3672.0) + rest / 10 + 0.2, rel=1e-9)


# --- the progress bar's ETA -----------------------------------------------------------------------


def test_the_progress_eta_counts_down_between_refreshes_and_skips_units_in_flight() -> None:
    """A progress bar asks ten times a second: the finish is computed once a second and counts
    down in between. A unit whose request is in flight needs only its reply: the last ones,
    sent into a window they filled, are not an hour away."""
    now = [100.0]

    def full_window() -> Budget:
        b = Budget(Rate(2, 3600.0), max_rps=0, clock=lambda: now[0])
        b.hourly.acquire(now[0])
        b.hourly.acquire(now[0])  # the window is full, both requests in flight
        return b

    assert full_window().progress_eta(2) == 0.0  # no reply timed yet: they are due now
    b = full_window()
    assert b.progress_eta(3) == pytest.approx(3672.0)  # the third waits a hold for a slot
    now[0] += 0.5
    assert b.progress_eta(3) == pytest.approx(3671.5)  # the same finish, 0.5 s nearer
    now[0] += 0.6  # past ETA_REFRESH: computed again, the replies still awaited
    assert b.progress_eta(3) == pytest.approx(3672.0)
