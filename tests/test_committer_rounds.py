"""Commit rounds: a round waits for the answers still in flight (at most MIN_ROUND), so the
workers' rows share one commit; with nothing in flight it commits at once. Virtual time (the
commit itself, on the writer thread, takes none), a real SQLite store."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from helpers_time import run_virtual, vclock

from batch_toggle.outcome import Outcome
from batch_toggle.state.committer import MIN_ROUND, SEND_LOG_DELAY, Committer, Finished
from batch_toggle.state.sendlog import LoggedSend
from batch_toggle.state.sqlite import StateStore

RUN_ID = "run-rounds"
RUN_ARGS = dict(command="run", inputs=[("in.csv", "cd" * 32)], plan_key="plan-1",
                options={}, total_rows=8, started_at="2026-11-01T00:00:00Z")


@pytest.fixture
def store(tmp_path: Path) -> Any:
    s = StateStore.open(tmp_path / "state.sqlite")
    s.create_run(RUN_ID, **RUN_ARGS)
    rounds: list[list[int]] = []
    inner = s.record_outcomes

    def counted(run_id: str, items: Sequence[Any], sends: Sequence[Any] = ()) -> None:
        rounds.append([row for row, _o, _l in items])
        inner(run_id, items, sends)

    s.record_outcomes = counted  # type: ignore[method-assign]
    s.rounds = rounds  # type: ignore[attr-defined]
    yield s
    s.close()


def finished(unit: int) -> Finished:
    return Finished(unit, unit, Outcome("updated", http_status=200, attempts=1), None)


def answer(committer: Committer, send_id: str | None, unit: int) -> None:
    """A request's answer, as the runner handles it: reply logged, then the outcome queued."""
    committer.send_done(send_id, 0.0, 0.0)
    committer.put(finished(unit))


def test_with_nothing_in_flight_a_round_commits_at_once(store: Any) -> None:
    async def main() -> float:
        committer = Committer(store, RUN_ID)
        committer.start()
        send_id = committer.send_started(0.0, wait=False)
        answer(committer, send_id, 0)
        await committer.durable(0)
        durable_at = vclock()
        await committer.close()
        return durable_at

    assert run_virtual(main) == 0.0
    assert store.rounds == [[0]]


def test_a_round_waits_for_the_answers_in_flight_and_takes_them_along(store: Any) -> None:
    async def main() -> list[float]:
        committer = Committer(store, RUN_ID)
        committer.start()
        ids = [committer.send_started(0.0, wait=False) for _ in range(3)]
        loop = asyncio.get_running_loop()
        # Three answers come 0.2 ms apart: one round for all three, once the last is in.
        answer(committer, ids[0], 0)
        loop.call_at(0.0002, answer, committer, ids[1], 1)
        loop.call_at(0.0004, answer, committer, ids[2], 2)
        times = []
        for unit in (0, 1, 2):
            await committer.durable(unit)
            times.append(vclock())
        await committer.close()
        return times

    times = run_virtual(main)
    assert times == pytest.approx([0.0004] * 3)  # not at once for the first, not MIN_ROUND
    assert store.rounds == [[0, 1, 2]]


def test_a_round_waits_no_longer_than_min_round_for_a_slow_answer(store: Any) -> None:
    async def main() -> float:
        committer = Committer(store, RUN_ID)
        committer.start()
        first = committer.send_started(0.0, wait=False)
        slow = committer.send_started(0.0, wait=False)  # answered only after 5 s
        answer(committer, first, 0)
        await committer.durable(0)
        durable_at = vclock()
        asyncio.get_running_loop().call_later(5.0, answer, committer, slow, 1)
        await asyncio.sleep(5.1)
        await committer.durable(1)
        await committer.close()
        return durable_at

    assert run_virtual(main) == pytest.approx(MIN_ROUND)
    assert store.rounds == [[0], [1]]


def test_a_send_record_with_no_outcome_to_ride_with_is_committed_within_the_delay(
        store: Any) -> None:
    """A request that is retried (no outcome yet) still leaves its send on disk soon."""

    async def main() -> list[LoggedSend]:
        committer = Committer(store, RUN_ID, mono=vclock, boot="boot-1")
        committer.start()
        send_id = committer.send_started(100.0, wait=False)
        committer.send_done(send_id, 100.0, 100.5)  # answered: a retry, no outcome
        await asyncio.sleep(SEND_LOG_DELAY + 0.001)
        logged = store.send_log()
        await committer.close()
        return logged

    assert run_virtual(main) == [LoggedSend(100.0, 100.5, "boot-1", 0.0, 0.0)]
    assert store.rounds == [[]]  # one round, for the send log alone


def test_a_send_is_logged_on_both_clocks_with_the_boot_it_was_read_in(store: Any) -> None:
    """The wall times are the runner's; the monotonic ones are read beside them, on the clock a
    later run of the same boot reads too (see sendlog.py), when the request leaves and when
    its reply comes."""

    async def main() -> list[LoggedSend]:
        committer = Committer(store, RUN_ID, mono=lambda: 1000.0 + vclock(), boot="boot-1")
        committer.start()
        await asyncio.sleep(2.0)
        send_id = committer.send_started(100.0, wait=True)
        in_flight = store.send_log()
        await asyncio.sleep(0.25)
        committer.send_done(send_id, 100.0, 100.5)
        await committer.close()
        return [*in_flight, *store.send_log()]

    assert run_virtual(main) == [LoggedSend(100.0, None, "boot-1", 1002.0, None),
                                 LoggedSend(100.0, 100.5, "boot-1", 1002.0, 1002.25)]


def test_a_failed_outcome_commit_does_not_take_the_send_log_down_with_it(store: Any) -> None:
    """The send records ride in the outcomes' transaction; when that fails (here: an unknown
    run), the requests were still sent, so their records are written on their own."""

    async def main() -> BaseException | None:
        committer = Committer(store, "no-such-run")
        committer.start()
        send_id = committer.send_started(0.0, wait=False)
        answer(committer, send_id, 0)  # logs the reply as (sent 0.0, done 0.0)
        await committer.durable(0)
        await committer.close()
        return committer.error

    error = run_virtual(main)
    assert error is not None and "no run no-such-run" in str(error)
    assert [(s.sent, s.done) for s in store.send_log()] == [(0.0, 0.0)]
