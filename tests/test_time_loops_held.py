"""Held slots across clocks, driven from clock origins near powers of two (a sibling of
tests/test_time_loops.py, same origins, same guard).

Three places compute with times that may sit near 2**k of a clock, where a float keeps fewer
low bits than a time needs:

* the send log's rule (`sendlog.still_held`, and the SQL that prunes and loads by it): a send
  is held until `hold` after its reply, on the clock that places it;
* the seeding of a run's windows from that log (`sendlog.held_expiries`, then
  `SlidingWindow.seed`): a slot an earlier run holds must expire on this run's clock, and a run
  waiting for it must get it;
* the sandbox's sliding logs (`sandbox.world.SlidingLog`): a client told to wait `wait(now)`
  must be admitted when it comes back.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_time_loops import FAST, GUARD, must_finish_within, origins

from batch_toggle.sandbox.world import SlidingLog
from batch_toggle.send.limiter import DAY, SlidingWindow, default_margin
from batch_toggle.state.sendlog import (
    LoggedSend,
    Reading,
    held_expiries,
    released_before,
    still_held,
)

HOLDS = st.sampled_from([0.05, 1.0, 4.08, 61.2, 3672.0, DAY + default_margin(DAY)])
BOOT = "boot"


def resolution(*times: float) -> float:
    """What float arithmetic on these times may lose: a few ulps of the largest."""
    return 8 * max(math.ulp(abs(t)) for t in times)


@st.composite
def sends_from(draw: st.DrawFn, wall_origin: float, mono_origin: float,
               timeout: float) -> list[LoggedSend]:
    """Sends answered (or, never answered, sent) up to two holds before the origins, on this
    boot, another, or no boot."""
    out = []
    for _ in range(draw(st.integers(1, 8))):
        back = draw(st.floats(-timeout, 2 * DAY))
        latency = draw(st.none() | st.floats(0.0, 30.0))
        boot = draw(st.sampled_from([BOOT, "other", None]))
        done = None if latency is None else wall_origin - back
        done_mono = None if latency is None else mono_origin - back
        sent = (done if done is not None else wall_origin - back) - (latency or 0.0)
        sent_mono = None if boot is None else (mono_origin - back) - (latency or 0.0)
        out.append(LoggedSend(sent, done, boot, sent_mono, done_mono if boot else None))
    return out


# --- the send log's rule -------------------------------------------------------------------


@FAST
@given(data=st.data(), wall=origins(), mono=origins(), hold=HOLDS,
       timeout=st.sampled_from([0.1, 30.0, 600.0]))
def test_a_send_is_held_until_its_hold_has_passed_and_never_after_near_powers_of_two(
        data: st.DataObject, wall: float, mono: float, hold: float, timeout: float) -> None:
    """Progress of pruning: `still_held` turns false once `hold` (to the float's resolution)
    has passed since the reply, on the clock that places the send, and stays false: a log
    pruned by it shrinks, and nothing held is ever pruned."""
    now = Reading(wall, mono, BOOT)
    for send in data.draw(sends_from(wall, mono, timeout)):
        ago = released_before(send, now, timeout)
        slack = resolution(wall, mono, hold)
        if ago < hold - slack:
            assert still_held(send, now, hold, timeout)
        if ago > hold + slack:
            assert not still_held(send, now, hold, timeout)
        later = Reading(wall + hold + timeout + 2 * DAY, mono + hold + timeout + 2 * DAY, BOOT)
        assert not still_held(send, later, hold, timeout)


# --- seeding a run's windows from the log -----------------------------------------------------


@FAST
@given(data=st.data(), wall=origins(), mono=origins(), clock=origins(), hold=HOLDS,
       timeout=st.sampled_from([0.1, 30.0]), limit=st.integers(1, 5))
def test_seeded_slots_expire_on_this_runs_clock_and_a_waiting_run_gets_every_one(
        data: st.DataObject, wall: float, mono: float, clock: float, hold: float,
        timeout: float, limit: int) -> None:
    """The conversion keeps how long each slot is still held (to the resolution of the three
    clocks' origins), and a window seeded with the expiries frees them: a run that takes a slot
    whenever `available_at` says gets `limit` more, its clock never going back, and within the
    guard. Progress: each `available_at` is a seeded expiry (finite, later than the last time
    a slot was free) or now, and each acquire adds a slot released at once."""
    sends = data.draw(sends_from(wall, mono, timeout))
    now = Reading(wall, mono, BOOT)
    expiries = held_expiries(sends, now=now, clock_now=clock, hold=hold, timeout=timeout)
    slack = resolution(wall, mono, clock, hold + timeout)
    for send in sends:
        # A slot still held for more than the resolution is seeded to expire that much later
        # on this clock; one held for less may round either way; an expired one is left out.
        left = hold - released_before(send, now, timeout)
        (got,) = held_expiries([send], now=now, clock_now=clock, hold=hold,
                               timeout=timeout) or [None]
        if left > slack:
            assert got == pytest.approx(clock + left, abs=slack)
        elif left < -slack:
            assert got is None
    for expiry in expiries:
        assert clock < expiry <= clock + hold + timeout + slack
    window = SlidingWindow(limit, hold, 0.0)
    window.seed(expiries)
    t = clock
    with must_finish_within(GUARD):
        for _ in range(limit):
            at = window.available_at(t)
            assert math.isfinite(at) and at >= t
            t = at
            window.release(window.acquire(t), t)
    assert t <= max([clock, *expiries])


# --- the sandbox's sliding logs --------------------------------------------------------------


@FAST
@given(origin=origins(), window=st.sampled_from([0.5, 1.0, 4.0, 60.0, 3600.0, 86400.0]),
       limit=st.integers(1, 5), gaps=st.lists(st.floats(0.0, 5000.0), min_size=1, max_size=30))
def test_a_client_that_waits_what_the_sandbox_says_is_admitted_near_powers_of_two(
        origin: float, window: float, limit: int, gaps: list[float]) -> None:
    """Every refusal names a wait after which the request is admitted (the Retry-After the
    server derives from it, rounded up to whole seconds, only waits longer), and the log never
    holds more than `limit`. Progress: `prune` pops an entry per turn; a full log's wait is
    positive, so the client's clock moves on."""
    log = SlidingLog(limit, window)
    now = origin
    with must_finish_within(GUARD):
        for gap in gaps:
            now += gap
            refusals = 0
            while log.full(now):
                wait = log.wait(now)
                assert wait > 0
                now += wait
                refusals += 1
                assert refusals <= 1, "refused again after waiting what it was told"
            log.record(now)
            assert len(log.times) <= limit
