"""A live run's signals, in process against the in-process sandbox (and the runner's own).

the product contract: a SIGINT/SIGTERM stops taking rows, lets in-flight ones finish, writes the
report and exits 130, wherever it lands once the run sends. The e2e side (the CLI, a real socket,
a real signal from outside) is tests/e2e/test_signals_e2e.py; here the signal is raised by the
test at an exact point of the run's end (after the sending part, or while the report is being
written), which a subprocess cannot hit on purpose. signal.raise_signal runs the Python handler
before it returns, so the point is exact and no sleep is involved.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
from pathlib import Path
from typing import Any

import pytest
from test_live_events import UNITS, Recorder, config_for
from test_runner import FakeLogis, job_name, jobs, run_units

from batch_toggle.errors import ExitCode
from batch_toggle.jobs import run as live
from batch_toggle.jobs import session
from batch_toggle.jobs.pipeline import JobConfig
from batch_toggle.sandbox import Seed
from batch_toggle.send.runner import RunHooks, Stop
from batch_toggle.send.signals import Interrupts
from batch_toggle.state import resume
from batch_toggle.state.committer import Committer
from batch_toggle.state.sqlite import StateStore

SIGNALS = (signal.SIGINT, signal.SIGTERM)


@pytest.fixture(autouse=True)
def _handlers_come_back() -> Any:
    """Every test leaves the process's handlers as it found them (pytest's own SIGINT one)."""
    before = {sig: signal.getsignal(sig) for sig in SIGNALS}
    yield
    assert {sig: signal.getsignal(sig) for sig in SIGNALS} == before


def signal_during(monkeypatch: pytest.MonkeyPatch, name: str, *sigs: signal.Signals) -> list[int]:
    """Raise `sigs` (one after the other) when the session's `name` (what run and audit share)
    is first called, then call it."""
    real = getattr(session, name)
    calls: list[int] = []

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            for sig in sigs:
                signal.raise_signal(sig)
        return real(*args, **kwargs)

    monkeypatch.setattr(session, name, wrapped)
    return calls


def assert_interrupted(result: Any, rec: Recorder, config: JobConfig,
                       sig: signal.Signals) -> None:
    """Exit 130 with a complete report and summary, one stop then one finish event, and a run
    the store keeps resumable."""
    assert result.exit_code == ExitCode.INTERRUPTED
    assert result.report.num_rows == UNITS
    assert set(result.report.column("status").to_pylist()) == {"updated"}
    summary = json.loads(Path(f"{config.report_path}.summary.json").read_text(encoding="utf-8"))
    assert summary["exit_code"] == 130
    assert summary["stopped"]["code"] == "interrupted"
    assert sig.name in summary["stopped"]["message"]
    kinds = rec.kinds()
    assert kinds.count("row") == UNITS
    assert kinds.count("stop") == 1 and kinds.count("finish") == 1
    assert kinds.index("stop") < kinds.index("finish") == len(kinds) - 1
    assert rec.events("finish")[0][1]["exit_code"] == 130
    notices = [m for c, m, _ in rec.calls if c == "notice"]
    assert notices[-1] == f"stopped: interrupted by {sig.name}; resume with --resume"
    assert config.state_path is not None
    with StateStore.open(config.state_path) as store:
        resumable = store.find_unfinished_run(resume.input_names(config), resume.plan_key(config))
    assert resumable is not None and resumable.run_id == result.run_id


# --- 1. a signal after the sending part ---------------------------------------------------


@pytest.mark.parametrize("sig", SIGNALS, ids=[s.name for s in SIGNALS])
def test_a_signal_while_the_report_is_written_gives_a_complete_report_and_130(
        tmp_path: Path, sandbox_seed: Seed, monkeypatch: pytest.MonkeyPatch,
        sig: signal.Signals) -> None:
    """The exit code is decided before the report is written: the report is written again as
    interrupted, and only that ending is told (one summary, one finish event)."""
    calls = signal_during(monkeypatch, "finish", sig)
    rec = Recorder()
    config = config_for(tmp_path, sandbox_seed)
    result = live.run(config, rec.hooks())
    assert len(calls) == 2
    assert_interrupted(result, rec, config, sig)


@pytest.mark.parametrize("sig", SIGNALS, ids=[s.name for s in SIGNALS])
def test_a_signal_between_the_sending_part_and_the_report_gives_130(
        tmp_path: Path, sandbox_seed: Seed, monkeypatch: pytest.MonkeyPatch,
        sig: signal.Signals) -> None:
    """After the runner's own handling ended (here: as the committer closes), before the
    report: the run stops as interrupted, its report written once."""
    real_close = Committer.close
    calls: list[int] = []

    async def close(self: Committer) -> None:  # after the runner's block, inside the loop
        calls.append(1)
        signal.raise_signal(sig)
        await real_close(self)

    monkeypatch.setattr(Committer, "close", close)
    rec = Recorder()
    config = config_for(tmp_path, sandbox_seed)
    result = live.run(config, rec.hooks())
    assert len(calls) == 1
    assert_interrupted(result, rec, config, sig)


def test_more_signals_while_finishing_change_nothing_more(
        tmp_path: Path, sandbox_seed: Seed, monkeypatch: pytest.MonkeyPatch) -> None:
    """A second and third Ctrl-C are recorded like the first: no traceback, no hard stop (a
    hard stop would lose the report that is being written)."""
    calls = signal_during(monkeypatch, "finish", signal.SIGINT, signal.SIGINT, signal.SIGTERM)
    rec = Recorder()
    config = config_for(tmp_path, sandbox_seed)
    result = live.run(config, rec.hooks())
    assert len(calls) == 2
    assert_interrupted(result, rec, config, signal.SIGINT)


def test_a_run_without_a_signal_writes_its_report_once(
        tmp_path: Path, sandbox_seed: Seed, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = signal_during(monkeypatch, "finish")
    rec = Recorder()
    result = live.run(config_for(tmp_path, sandbox_seed), rec.hooks())
    assert len(calls) == 1
    assert result.exit_code == ExitCode.OK
    assert "stop" not in rec.kinds() and rec.kinds()[-1] == "finish"


def test_a_signal_before_the_runner_listens_stops_it_as_it_starts(
        tmp_path: Path, sandbox_seed: Seed, monkeypatch: pytest.MonkeyPatch) -> None:
    """Caught while the sending part sets up (the client, the committer): the runner stops on
    entry, nothing is sent, every row is `not_attempted` (interrupted), exit 130."""
    signal_during(monkeypatch, "make_client", signal.SIGTERM)
    rec = Recorder()
    result = live.run(config_for(tmp_path, sandbox_seed), rec.hooks())
    assert result.exit_code == ExitCode.INTERRUPTED
    assert set(result.report.column("error_code").to_pylist()) == {"interrupted"}
    assert result.summary["requests_sent"] == 0
    assert rec.kinds().count("stop") == 1


# --- 2. a stop's event comes once the stop has taken effect -------------------------------


def test_a_stop_event_that_raises_still_wakes_every_waiting_worker(
        caplog: pytest.LogCaptureFixture) -> None:
    """The "stop" event goes out after the stop took effect: a sink that raises (here, from
    a signal's callback on the loop) cannot leave workers parked in a long backoff."""
    logis = FakeLogis(script={job_name(0): [500] * 10, job_name(1): [500] * 10})

    def stop_at_40(runner: Any) -> None:
        def raising(kind: str, _data: dict[str, Any]) -> None:
            if kind == "stop":
                raise BrokenPipeError(32, "Broken pipe")

        runner.hooks = RunHooks(event=raising)
        asyncio.get_running_loop().call_at(40.0, runner.request_stop,
                     Stop("interrupted", ExitCode.INTERRUPTED, "interrupted by SIGINT"))

    with caplog.at_level(logging.ERROR, logger="asyncio"):
        res = run_units(jobs(2), logis, concurrency=2, max_attempts=50, during=stop_at_40)
    assert res.stop is not None and res.stop.code == "interrupted"
    assert res.elapsed == pytest.approx(40.0)  # not the end of a backoff after it


def test_the_runner_alone_puts_back_the_handlers_it_found() -> None:
    """Runner.signals without the caller's Interrupts catches signals for its block only."""
    seen: list[int] = []

    def before(signum: int, _frame: object) -> None:
        seen.append(signum)

    old = signal.signal(signal.SIGTERM, before)
    try:
        run_units(jobs(3), FakeLogis(), signals=True)
        assert signal.getsignal(signal.SIGTERM) is before
        signal.raise_signal(signal.SIGTERM)
        assert seen == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, old)


def test_interrupts_record_the_first_signal_and_put_back_the_handlers() -> None:
    forwarded: list[signal.Signals] = []
    with Interrupts() as caught:
        assert caught.received is None
        with caught.forwarding(forwarded.append):
            signal.raise_signal(signal.SIGTERM)
        signal.raise_signal(signal.SIGINT)  # no longer forwarded: only recorded
    assert caught.received == signal.SIGTERM
    assert forwarded == [signal.SIGTERM]


def test_interrupts_outside_the_main_thread_install_nothing() -> None:
    import threading

    errors: list[BaseException] = []

    def body() -> None:
        try:
            with Interrupts() as caught:
                assert caught.received is None
        except BaseException as exc:  # noqa: BLE001 - reported to the main thread
            errors.append(exc)

    thread = threading.Thread(target=body)
    thread.start()
    thread.join(10)
    assert errors == []


@pytest.mark.parametrize("sig", SIGNALS, ids=[s.name for s in SIGNALS])
def test_an_audit_signalled_while_its_report_is_written_gives_a_complete_report_and_130(
        tmp_path: Path, sandbox_seed: Seed, monkeypatch: pytest.MonkeyPatch,
        sig: signal.Signals) -> None:
    """An audit finishes the way a run does: the signal is recorded, the report is written
    again as interrupted, exit 130; and its advice never names --resume."""
    from dataclasses import replace

    from batch_toggle.jobs.audit import audit

    calls = signal_during(monkeypatch, "finish", sig)
    rec = Recorder()
    result = audit(replace(config_for(tmp_path, sandbox_seed), command="audit"), rec.hooks())
    assert len(calls) == 2
    assert result.exit_code == ExitCode.INTERRUPTED
    assert result.report.num_rows == UNITS
    summary = json.loads(Path(f"{tmp_path / 'report.csv'}.summary.json").read_text("utf-8"))
    assert summary["exit_code"] == 130 and summary["stopped"]["code"] == "interrupted"
    kinds = rec.kinds()
    assert kinds.count("stop") == 1 and kinds.count("finish") == 1
    said = [m for c, m, _ in rec.calls if c == "notice"] + [
        json.dumps(d) for _k, d in rec.events()]
    assert not any("--resume" in line for line in said), said
