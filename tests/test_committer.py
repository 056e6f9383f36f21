"""The committer's on_committed callback: whatever it raises, commits and waiters go on.

The callback is reporting (the CLI's progress bar and -vv lines, a library caller's
on_progress/on_event): it runs on the writer task. An exception escaping it used to end that
task, so every later durable() waiter, flush() and the run itself waited forever. Run on the
virtual-time loop, whose deadlock guard turns such a hang into a failure.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from helpers_time import run_virtual

from batch_toggle.outcome import Outcome
from batch_toggle.state.committer import Committer, Finished
from batch_toggle.state.sqlite import StateStore

RUN_ID = "run-callback"
RUN_ARGS = dict(command="run", inputs=[("in.csv", "ab" * 32)], plan_key="plan-1",
                options={}, total_rows=4, started_at="2026-11-01T00:00:00Z")
UNITS = 4


def _finished(unit: int) -> Finished:
    return Finished(unit, unit, Outcome("updated", http_status=200, attempts=1), None)


def _failing(seen: list[int]) -> object:
    def on_committed(finished: Finished) -> None:
        seen.append(finished.unit)
        raise BrokenPipeError(32, "Broken pipe")  # as a progress bar on a closed stderr did
    return on_committed


@pytest.fixture
def store(tmp_path: Path):
    s = StateStore.open(tmp_path / "state.sqlite")
    s.create_run(RUN_ID, **RUN_ARGS)
    yield s
    s.close()


def test_a_raising_callback_leaves_every_durable_waiter_released(
        store: StateStore, caplog: pytest.LogCaptureFixture) -> None:
    seen: list[int] = []

    async def main() -> None:
        committer = Committer(store, RUN_ID, on_committed=_failing(seen))  # type: ignore[arg-type]
        committer.start()
        for unit in range(UNITS):  # as a worker does: its next unit once this one is durable
            committer.put(_finished(unit))
            await committer.durable(unit)
        await committer.flush()
        await committer.close()  # returns: the writer task did not die of the callback
        assert committer.error is None  # the store did not fail: nothing for the runner to stop

    with caplog.at_level(logging.DEBUG, logger="batch_toggle.state.committer"):
        run_virtual(main, real_wait=5.0)

    assert seen == list(range(UNITS))  # called for every row, not only until it first raised
    assert sorted(store.load_outcomes(RUN_ID)) == list(range(UNITS))
    failures = [r for r in caplog.records if r.name == "batch_toggle.state.committer"
                and r.levelno >= logging.WARNING]
    assert len(failures) == 1  # said once, not once per row of a long run
    # One line naming the error: no traceback, which the CLI (no logging set up) would print
    # on the user's stderr through logging's last resort. The traceback is at debug level.
    (warning,) = failures
    assert warning.exc_info is None
    assert "BrokenPipeError" in warning.getMessage() and "\n" not in warning.getMessage()
    debug = [r for r in caplog.records if r.levelno == logging.DEBUG and r.exc_info]
    assert len(debug) == 1 and debug[0].exc_info[0] is BrokenPipeError  # type: ignore[index]


def test_without_a_store_every_row_still_reaches_the_callback_and_flush_returns() -> None:
    seen: list[int] = []

    async def main() -> None:
        committer = Committer(None, RUN_ID, on_committed=_failing(seen))  # type: ignore[arg-type]
        committer.start()
        committer.put(_finished(0))
        committer.put(_finished(1))
        await committer.flush()
        committer.put(_finished(2))
        await committer.flush()
        await committer.close()

    run_virtual(main, real_wait=5.0)
    assert seen == [0, 1, 2]
