"""The send log across runs: what a run keeps, what it loads, and which clock places each send.

A real SQLite store and the real `seeded_budget` a run starts with; the clocks are this
machine's (the boot id, CLOCK_MONOTONIC), with records dated relative to them.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from batch_toggle.jobs.options import job_config
from batch_toggle.jobs.pipeline import Hooks
from batch_toggle.jobs.session import seeded_budget
from batch_toggle.send.limiter import DAY, SEND_LOG_KEEP, default_margin
from batch_toggle.state.sendlog import LoggedSend, Reading, SendEntry, boot_id, still_held
from batch_toggle.state.sqlite import StateStore

TIMEOUT = 30.0
DAILY_HOLD = DAY + default_margin(DAY)


@pytest.fixture
def store(tmp_path: Path):
    s = StateStore.open(tmp_path / "state.sqlite")
    yield s
    s.close()


def config(**options: object):
    return job_config("run", ["in.csv"], {"timeout": TIMEOUT, **options}, api_key="k" * 12)


def answered(name: str, ago: float, *, boot: str | None = None,
             wall_ahead: float = 0.0) -> SendEntry:
    """A request answered `ago` seconds before now on this machine's clocks (`boot`: this one
    unless named), its wall times shifted by `wall_ahead` (the wall clock moved since)."""
    now = Reading.now()
    boot = boot_id() if boot is None else boot
    wall = now.wall - ago + wall_ahead
    return SendEntry(name, wall - 0.1, wall, boot, now.mono - ago - 0.1, now.mono - ago)


def notices_of(store: StateStore, **options: object) -> tuple[list[str], object]:
    said: list[str] = []
    budget = seeded_budget(config(**options), store, Hooks(notice=said.append))
    return said, budget


needs_boot_id = pytest.mark.skipif(boot_id() is None, reason="no boot id on this system")


# --- defect 7: a resume loads every slot still held, the daily margin included -----------------


@needs_boot_id
def test_a_resume_loads_the_sends_the_daily_window_still_holds_in_its_margin(
        store: StateStore) -> None:
    """A daily slot is held a day plus the 2% margin (about 29 min) after the reply. Sends
    answered a day and 20 min ago are still held: a new run must count them. The loading used
    to reach back only a day, the timeout and 60 s."""
    store.record_sends([answered(f"s{i}", DAY + 1200.0) for i in range(3)])
    _, budget = notices_of(store, daily_limit=3)
    assert budget.daily is not None
    mono = time.monotonic()
    assert budget.daily.held(mono) == 3
    assert budget.next_send_at() == pytest.approx(mono + DAILY_HOLD - DAY - 1200.0, abs=1.0)
    assert budget.hourly.held(mono) == 0  # long gone from the hourly window


# --- defect 2: what a run keeps does not depend on its options ---------------------------------


@needs_boot_id
def test_a_run_without_a_daily_limit_keeps_the_days_history_and_prunes_only_what_no_rule_needs(
        store: StateStore) -> None:
    store.record_sends([answered("hours", 5 * 3600.0), answered("margin", DAY + 1200.0),
                        answered("gone", DAILY_HOLD + 60.0)])
    kept = [s.sent for s in store.send_log()]
    seeded_budget(config(), store)  # --rate 2500/h, no --daily-limit: its own window is 1 h
    assert [s.sent for s in store.send_log()] == kept[1:]  # only "gone" is gone
    assert SEND_LOG_KEEP == DAILY_HOLD


@needs_boot_id
def test_a_rate_period_longer_than_a_day_keeps_its_own_window(store: StateStore) -> None:
    store.record_sends([answered("two-days", 2 * DAY - 60.0)])
    seeded_budget(config(rate="10/2d"), store)
    assert len(store.send_log()) == 1


# --- point 5: one boot goes by the monotonic clock; across boots, a notice ---------------------


@needs_boot_id
@pytest.mark.parametrize("wall_step", [-3600.0, 3600.0])
def test_on_one_boot_a_stepped_wall_clock_neither_frees_nor_blocks_slots(
        store: StateStore, wall_step: float) -> None:
    """The window is full with sends answered 10 s ago. The wall clock moved an hour since:
    forward, the wall alone would call them an hour old (a burst); back, in the future (a
    full window's wait from now). The monotonic clock says 10 s: they free at 10 s + hold."""
    store.record_sends([answered(f"s{i}", 10.0, wall_ahead=-wall_step) for i in range(5)])
    said, budget = notices_of(store, rate="5/m")
    mono = time.monotonic()
    assert budget.hourly.held(mono) == 5
    assert budget.next_send_at() == pytest.approx(mono + 60.0 * 1.02 - 10.0, abs=1.0)
    assert said == []


@needs_boot_id
def test_sends_of_another_boot_dated_in_the_future_count_as_now_with_a_warning(
        store: StateStore) -> None:
    store.record_sends([answered("before-reboot", 10.0, boot="another-boot",
                                 wall_ahead=3600.0)])
    said, budget = notices_of(store, rate="1/m")
    mono = time.monotonic()
    assert budget.next_send_at() == pytest.approx(mono + 60.0 * 1.02, abs=1.0)
    assert len(said) == 1
    assert said[0].startswith("warning: the state store's send log has requests dated up to "
                              "59 min 50 s ahead of this machine's clock, sent before a reboot "
                              "or on another host")


# --- one rule, in Python and in SQL --------------------------------------------------------------


BOOTS = st.sampled_from([None, "boot-a", "boot-b"])
TIMES = st.floats(-1e4, 1e4)


@st.composite
def logged(draw: st.DrawFn, origin: float, mono_origin: float) -> SendEntry:
    sent = origin + draw(TIMES)
    done = draw(st.none() | st.floats(0.0, 100.0).map(lambda d: sent + d))
    sent_mono = draw(st.none() | TIMES.map(lambda t: mono_origin + t))
    done_mono = None if sent_mono is None or done is None else sent_mono + draw(
        st.floats(0.0, 100.0))
    return SendEntry(draw(st.uuids()).hex, sent, done, draw(BOOTS), sent_mono, done_mono)


@settings(max_examples=60, deadline=None)
@given(data=st.data(), origin=st.sampled_from([0.0, 1.7e9, 2.0**31, 2.0**40]),
       mono_origin=st.sampled_from([0.0, 2.0**10, 2.0**31, 2.0**40]),
       boot=BOOTS, keep=st.floats(0.001, 1e5), timeout=st.floats(0.1, 600.0))
def test_the_store_loads_and_prunes_by_exactly_the_rule_the_budget_uses(
        tmp_path_factory: pytest.TempPathFactory, data: st.DataObject, origin: float,
        mono_origin: float, boot: str | None, keep: float, timeout: float) -> None:
    """`recent_sends` returns, and `prune_sends` keeps, exactly the sends `still_held` says
    are held: the SQL and the Python are one rule, to the last bit."""
    entries = data.draw(st.lists(logged(origin, mono_origin), max_size=12))
    now = Reading(origin + data.draw(TIMES), mono_origin + data.draw(TIMES), boot)
    expected = sorted((LoggedSend(*e[1:6]) for e in entries
                       if still_held(LoggedSend(*e[1:6]), now, keep, timeout)), key=repr)
    with StateStore.open(tmp_path_factory.mktemp("log") / "s.sqlite") as store:
        store.record_sends(entries)
        assert sorted(store.recent_sends(now, keep, timeout), key=repr) == expected
        store.prune_sends(now, keep, timeout)
        assert sorted(store.send_log(), key=repr) == expected
