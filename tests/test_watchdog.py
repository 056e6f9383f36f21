"""The watchdog's decisions, driven by a fake clock (the thread is not involved): when a signal
ends a wedged process, when it is left to the loop, and what `status` learns."""

from __future__ import annotations

import signal

import pytest

from batch_toggle.send.watchdog import GRACE, HEARTBEAT, STALL_AFTER, TICK, Watchdog

SIGTERM, SIGINT = int(signal.SIGTERM), int(signal.SIGINT)


class Fake:
    """A clock, a heartbeat counter and an exit that records instead of exiting."""

    def __init__(self) -> None:
        self.now = 2.0**31 - 1.0  # an old host: the clock near a power of two
        self.beats = 0
        self.exits: list[int] = []
        self.recorded = 0

    def watchdog(self) -> Watchdog:
        def beat() -> None:
            self.beats += 1

        def record() -> None:
            self.recorded += 1

        return Watchdog(heartbeat=beat, record_stop=record, clock=lambda: self.now,
                        exit_process=self.exits.append)

    def healthy_for(self, dog: Watchdog, seconds: float) -> None:
        """The loop ticks every TICK for `seconds`; the watchdog looks every TICK / 2."""
        end = self.now + seconds
        while self.now < end:
            self.now += TICK / 2
            if int(self.now / (TICK / 2)) % 2 == 0:
                dog.ticked()
            dog.check(self.now, [])


def test_a_signal_to_a_healthy_loop_is_left_to_the_loop() -> None:
    fake = Fake()
    dog = fake.watchdog()
    dog.arm()
    fake.healthy_for(dog, 5.0)
    dog.check(fake.now, [SIGTERM])
    fake.healthy_for(dog, 2 * GRACE)  # the loop goes on ticking: it has the stop in hand
    dog.check(fake.now, [SIGINT])  # a second signal to a loop that answers: still the loop's
    fake.healthy_for(dog, 2 * GRACE)
    assert fake.exits == [] and fake.recorded == 0


def test_a_loop_that_does_not_tick_after_a_signal_is_ended_within_the_grace() -> None:
    fake = Fake()
    dog = fake.watchdog()
    dog.arm()
    fake.healthy_for(dog, 5.0)
    dog.check(fake.now, [SIGTERM])  # wedged a moment ago: not yet a stall
    assert fake.exits == []
    while not fake.exits and fake.now < 2.0**31 + 60:
        fake.now += TICK / 2
        dog.check(fake.now, [])
    assert fake.exits == [130] and fake.recorded == 1
    assert fake.now - (2.0**31 - 1.0 + 5.0) <= GRACE + TICK


def test_a_second_signal_before_the_loop_answers_ends_it_at_once() -> None:
    fake = Fake()
    dog = fake.watchdog()
    dog.arm()
    dog.check(fake.now, [SIGINT])
    fake.now += 0.2
    dog.check(fake.now, [SIGINT])
    assert fake.exits == [130]


def test_a_signal_to_a_stalled_loop_ends_it_at_once_and_the_stall_stops_the_heartbeat(
        capfd: pytest.CaptureFixture[str]) -> None:
    fake = Fake()
    dog = fake.watchdog()
    dog.arm()
    beats = fake.beats
    fake.now += STALL_AFTER + 1
    dog.check(fake.now, [])
    fake.now += 10 * HEARTBEAT
    dog.check(fake.now, [])
    assert fake.beats == beats  # status will show it stalled
    err = capfd.readouterr().err
    assert err.count("has not answered for") == 1  # said once, not at every look
    dog.check(fake.now, [SIGTERM])
    assert fake.exits == [130] and fake.recorded == 1
    assert "SIGTERM came while the run's event loop was stuck" in capfd.readouterr().err


def test_the_heartbeat_goes_on_while_the_loop_is_not_watched() -> None:
    """Planning and writing the report happen off the loop: no ticks, and no stall either."""
    fake = Fake()
    dog = fake.watchdog()
    for _ in range(4):
        fake.now += STALL_AFTER
        dog.check(fake.now, [SIGTERM])  # a signal then is runner.Interrupts' business
    assert fake.beats == 4 and fake.exits == []


def test_other_signals_are_not_the_watchdogs_business() -> None:
    fake = Fake()
    dog = fake.watchdog()
    dog.arm()
    fake.now += STALL_AFTER + 1
    dog.check(fake.now, [int(signal.SIGCHLD), int(signal.SIGWINCH)])
    assert fake.exits == []
