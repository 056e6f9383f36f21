"""Every loop over times, driven from clock origins near powers of two.

The monotonic clock is seconds since boot. Float arithmetic near 2**k loses the low bits of a
time, and a loop that steps through float times can then round a step back onto where it was
and spin forever (a run hung at 100% CPU once its host had been up 1,024 s). Each test here
runs one time loop from origins 2**k - [0, 50] s and 2**k +/- a few ulps, k = 10 to 40, with
every bucket width or period it can reach, under a guard that turns a hang into a failure.
"""

from __future__ import annotations

import contextlib
import math
import signal
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batch_toggle.runner import Timeline


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
