"""The send log's times: which clock to trust for a request an earlier run sent, and the one
rule for whether it still holds a slot.

The log carries the budget across processes (runs, resumes, cron slices). A time from another
process means nothing on this process's monotonic clock unless both read the same one. Within
one boot they do: CLOCK_MONOTONIC counts from boot for every process and nobody can step it,
while the wall clock can be stepped (NTP, `date -s`, a VM restored from a snapshot) by an hour
between two runs. So every logged time is read on both clocks, with the boot it was read in:

* same boot: the monotonic times decide. A wall clock moved between the runs changes nothing:
  an hour forward no longer makes a full window look empty (the server would have answered
  429), an hour back no longer makes it look full for an hour.
* another boot, or a record that predates schema 4 (no boot): only the wall clock relates the
  two, as it did before. A time in the future there means the wall clock moved back since;
  `wall_clock_moved` measures it so the run can say so, and such a time counts as now (the
  run waits at most one window more, and never bursts).

`released_before` is the rule: a request holds a slot of a window until `hold` seconds (the
window's PERIOD plus its margin, `SlidingWindow.hold`) after its reply; a request with no
recorded reply is taken as answered at `sent + timeout`. The store's SQL (`recent_sends`,
`prune_sends`) states the same rule; tests/test_send_log.py checks that the two agree.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from batch_toggle.clock import SYSTEM, Clock

BOOT_ID_PATH = Path("/proc/sys/kernel/random/boot_id")


@functools.cache
def boot_id() -> str | None:
    """This boot's id (Linux: a random UUID per boot), or None where there is none to read."""
    try:
        return BOOT_ID_PATH.read_text(encoding="ascii").strip() or None
    except (OSError, UnicodeDecodeError):
        return None


@dataclass(frozen=True)
class Reading:
    """Both clocks read together, and the boot whose monotonic clock `mono` is."""

    wall: float
    mono: float
    boot: str | None

    @classmethod
    def now(cls, clock: Clock = SYSTEM) -> Reading:
        return cls(clock.wall(), clock.mono(), boot_id())


class LoggedSend(NamedTuple):
    """One request of the send log, as an earlier run recorded it. `done`/`done_mono` are None
    while it was in flight; `boot`/`sent_mono` are None in a record without them (written by
    an older batch-toggle, or where no boot id can be read)."""

    sent: float
    done: float | None
    boot: str | None = None
    sent_mono: float | None = None
    done_mono: float | None = None


def on_monotonic(send: LoggedSend, now: Reading) -> bool:
    """Whether `send`'s monotonic times can be compared with `now`'s: the same, known boot."""
    return now.boot is not None and send.boot == now.boot and send.sent_mono is not None


def _end(sent: float, done: float | None, now: float, timeout: float) -> float:
    # A time ahead of now (a clock moved back, or a faked one) counts as now: never as a
    # request that has not happened yet, whose slot would be held a whole window too long.
    sent = min(sent, now)
    return min(done, now) if done is not None else sent + timeout


def released_before(send: LoggedSend, now: Reading, timeout: float) -> float:
    """How long before `now` the request released its slot's start (its reply came; `sent +
    timeout` when no reply was logged), on the clock `on_monotonic` picks. Negative when
    that is still ahead (a request in flight)."""
    if on_monotonic(send, now):
        assert send.sent_mono is not None
        return now.mono - _end(send.sent_mono, send.done_mono, now.mono, timeout)
    return now.wall - _end(send.sent, send.done, now.wall, timeout)


def still_held(send: LoggedSend, now: Reading, hold: float, timeout: float) -> bool:
    """Whether the request still holds a slot of a window whose slots are held `hold` seconds
    after the reply. Written as the store's SQL compares (`end > now - hold`), so the two
    agree to the last bit."""
    if on_monotonic(send, now):
        assert send.sent_mono is not None
        return _end(send.sent_mono, send.done_mono, now.mono, timeout) > now.mono - hold
    return _end(send.sent, send.done, now.wall, timeout) > now.wall - hold


def held_expiries(sends: Iterable[LoggedSend], *, now: Reading, clock_now: float, hold: float,
                  timeout: float) -> list[float]:
    """The expiry times, on a clock that reads `clock_now` at `now`, of the slots `sends` still
    hold in a window of `hold` (for `SlidingWindow.seed`). Expired ones are left out.

    Only the time since the reply crosses from the record to the clock: no clock's origin
    does, so the limiter's own clock may be any monotonic one (a test's virtual one too)."""
    expiries = []
    for send in sends:
        expiry = clock_now + (hold - released_before(send, now, timeout))
        if expiry > clock_now and math.isfinite(expiry):
            expiries.append(expiry)
    return expiries


def wall_clock_moved(sends: Iterable[LoggedSend], now: Reading) -> float:
    """How far (seconds) the latest wall-clock time among the sends that only the wall clock
    can place (another boot, or no boot recorded) lies ahead of `now`: 0 when none does. More
    than 0 means the wall clock went back since they were sent (or the hosts sharing this
    store disagree on the time)."""
    ahead = 0.0
    for send in sends:
        if not on_monotonic(send, now):
            latest = send.sent if send.done is None else max(send.sent, send.done)
            ahead = max(ahead, latest - now.wall)
    return ahead


class SendEntry(NamedTuple):
    """A record for the send log: a request as it leaves (`done` None), or again under the same
    `send_id` once its reply (or timeout) came. `boot`, `sent_mono` and `done_mono` are the
    monotonic side (see `Reading`); a record without them is placed by the wall clock alone.
    `key` is the API key's fingerprint under the store's secret (never the key): the log keeps
    every key's requests, and each key's budget counts only its own (and the records that
    name no key: written by an older batch-toggle, they may be anyone's)."""

    send_id: str
    sent: float
    done: float | None
    boot: str | None = None
    sent_mono: float | None = None
    done_mono: float | None = None
    key: str | None = None
