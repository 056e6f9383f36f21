"""`batch-toggle status` and the store facts it reads: run states, progress, what a resume would
send, and the guarantee that looking never writes. Real SQLite files in tmp_path; runs are
recorded through the StateStore API exactly as `run` records them.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from test_store import downgrade_to_schema_3

from batch_toggle.cli.app import main
from batch_toggle.clock import utc_text
from batch_toggle.input.readers import sha256_of
from batch_toggle.jobs.status import STALLED_AFTER, render_status, store_status
from batch_toggle.outcome import Outcome
from batch_toggle.state.sendlog import Reading, SendEntry
from batch_toggle.state.sqlite import SCHEMA_VERSION, StateStore

PLAN_LAST = json.dumps({"default_target": None, "map": [], "on_conflict": "last",
                        "set_state": None}, sort_keys=True)
UPDATED = Outcome("updated", http_status=200, attempts=1, sent_at="2026-11-01T00:00:01.000+00:00")
RETRYABLE = Outcome("failed", "server_error", "HTTP 503", True, 503, 5)
PERMANENT = Outcome("failed", "job_not_found", "HTTP 404", False, 404, 1)


@pytest.fixture
def state(tmp_path: Path) -> Path:
    return tmp_path / "state.sqlite"


@pytest.fixture
def src(tmp_path: Path) -> Path:
    path = tmp_path / "optouts.csv"
    path.write_text("job_id,review_key,do_notify_sms,update_target\n", encoding="utf-8")
    return path


def record_run(store: StateStore, run_id: str, src: Path, *, units: int | None = 10,
               outcomes: list[Outcome] = (), exit_code: int | None = None,
               plan_key: str = PLAN_LAST, options: dict[str, Any] | None = None,
               started: str = "2026-11-01T00:00:00+00:00", rows: int = 12) -> None:
    store.create_run(run_id, command="run", inputs=[(str(src), sha256_of(src))],
                     plan_key=plan_key, options=options or {"on_conflict": "last"},
                     total_rows=rows, started_at=started, units=units)
    store.record_outcomes(run_id, [(i, o, None) for i, o in enumerate(outcomes)])
    if exit_code is not None:
        store.finish_run(run_id, exit_code=exit_code, finished_at="2026-11-01T01:00:00+00:00",
                         counts={"updated": len(outcomes), "duplicate": 2})


def one(state: Path, **kwargs: Any) -> Any:
    (run,) = store_status(state, **kwargs).runs
    return run


# --- run states and what a resume would send --------------------------------------------------


def test_a_killed_run_is_resumable_and_a_resume_sends_the_units_without_a_final_outcome(
        state: Path, src: Path) -> None:
    with StateStore.open(state) as store:
        record_run(store, "r1", src, outcomes=[UPDATED] * 4 + [RETRYABLE, PERMANENT])
    run = one(state)
    assert (run.state, run.resumable, run.not_resumable_because) == ("killed", True, None)
    assert (run.units, run.units_done, run.resume_sends, run.retryable_failed) == (10, 6, 4, 1)
    assert run.unit_counts == {"updated": 4, "failed": 2}
    assert run.resume_command == f"batch-toggle run {src} --resume --state {state}"


@pytest.mark.parametrize(("exit_code", "name"), [(4, "stopped"), (130, "interrupted")])
def test_stopped_and_interrupted_runs_are_resumable(state: Path, src: Path, exit_code: int,
                                                    name: str) -> None:
    with StateStore.open(state) as store:
        record_run(store, "r1", src, outcomes=[UPDATED] * 3, exit_code=exit_code)
    run = one(state)
    assert (run.state, run.exit_code, run.resumable, run.resume_sends) == (name, exit_code,
                                                                           True, 7)
    assert run.row_counts == {"updated": 3, "duplicate": 2}


def test_a_finished_run_is_not_resumable(state: Path, src: Path) -> None:
    with StateStore.open(state) as store:
        record_run(store, "r1", src, units=3, outcomes=[UPDATED] * 3, exit_code=0)
    run = one(state)
    assert (run.state, run.resumable, run.resumable_with_retry_failed) == ("finished", False,
                                                                           False)
    assert run.not_resumable_because == "it finished (exit 0)"
    assert run.resume_command is None


def test_exit_1_with_retryable_failures_resumes_only_with_retry_failed(state: Path,
                                                                       src: Path) -> None:
    with StateStore.open(state) as store:
        record_run(store, "r1", src, units=3, outcomes=[UPDATED, RETRYABLE, PERMANENT],
                   exit_code=1)
        plain = store.find_unfinished_run([str(src)], PLAN_LAST)
        retry = store.find_unfinished_run([str(src)], PLAN_LAST, retry_failed=True)
    assert plain is None and retry is not None and retry.run_id == "r1"
    run = one(state)
    assert (run.resumable, run.resumable_with_retry_failed, run.retryable_failed) == (False,
                                                                                      True, 1)
    assert run.resume_command == f"batch-toggle run {src} --resume --retry-failed --state {state}"


def test_exit_1_without_retryable_failures_is_done(state: Path, src: Path) -> None:
    with StateStore.open(state) as store:
        record_run(store, "r1", src, units=2, outcomes=[UPDATED, PERMANENT], exit_code=1)
        assert store.find_unfinished_run([str(src)], PLAN_LAST, retry_failed=True) is None
    assert not one(state).resumable_with_retry_failed


def test_a_later_run_with_the_same_inputs_takes_the_older_ones_place(state: Path,
                                                                     src: Path) -> None:
    with StateStore.open(state) as store:
        record_run(store, "old", src, exit_code=4)
        record_run(store, "new", src, exit_code=0, units=0)
    new, old = store_status(state).runs
    assert (new.run_id, old.run_id) == ("new", "old")
    assert old.not_resumable_because == ("a later run with the same inputs and plan options "
                                         "took its place")


def test_other_plan_options_make_another_line_of_runs(state: Path, src: Path) -> None:
    other_key = PLAN_LAST.replace('"last"', '"first"')
    with StateStore.open(state) as store:
        record_run(store, "last", src, exit_code=4)
        record_run(store, "first", src, exit_code=4, plan_key=other_key,
                   options={"on_conflict": "first", "set_state": False,
                            "map": {"job_id": "Job Ref"}, "default_target": "client"})
    first, last = store_status(state).runs
    assert first.resumable and last.resumable
    assert first.resume_command == (
        f"batch-toggle run {src} --resume --map 'job_id=Job Ref' --set-state false "
        f"--default-target client --on-conflict first --state {state}")


def test_a_changed_or_missing_input_is_named_before_a_resume_refuses_it(state: Path,
                                                                        src: Path) -> None:
    with StateStore.open(state) as store:
        record_run(store, "r1", src, exit_code=4)
    src.write_text("job_id,review_key,do_notify_sms,update_target\nx,y,z,w\n", encoding="utf-8")
    run = one(state)
    assert not run.resumable
    assert run.not_resumable_because == f"input changed since the run began: {src}"
    assert one(state, check_inputs=False).resumable
    src.unlink()
    assert one(state).not_resumable_because == f"input missing: {src}"


def test_a_run_that_holds_the_lock_is_running(state: Path, src: Path) -> None:
    with StateStore.open(state) as store:
        record_run(store, "r1", src, outcomes=[UPDATED])
        store.acquire_lock("r1", owner="batch-toggle run optouts.csv")
        status = store_status(state)
        assert status.lock_holder is not None and status.lock_holder["run_id"] == "r1"
        (run,) = status.runs
        assert (run.state, run.resumable) == ("running", False)
        assert run.not_resumable_because == "it is running now"
        assert run.holder is not None and run.holder["owner"] == "batch-toggle run optouts.csv"
    # The holder is gone (even a SIGKILLed one drops a flock): the same run is now killed.
    status = store_status(state)
    assert status.lock_holder is None
    assert status.runs[0].state == "killed"


def test_a_run_whose_heartbeat_stopped_is_stalled_not_running(state: Path, src: Path) -> None:
    """Its process holds the lock (alive), but its watchdog stopped the heartbeat: its event
    loop has not answered for a while. status says so, and how to get out."""
    with StateStore.open(state) as store:
        record_run(store, "r1", src, outcomes=[UPDATED])
        store.acquire_lock("r1")
        store.heartbeat()
        assert one(state).state == "running"  # a fresh heartbeat
        beat = time.time() - STALLED_AFTER - 5
        os.utime(f"{state}.lock", (beat, beat))
        run = one(state)
        assert (run.state, run.resumable) == ("stalled", False)
        assert "SIGTERM" in (run.not_resumable_because or "")
        text = render_status(store_status(state))
        assert f"stalled since {utc_text(int(beat))[:19]}" in text
        store.heartbeat()  # the loop answers again
        assert one(state).state == "running"


def test_lock_holder_probe_creates_nothing_and_sees_a_free_lock(state: Path) -> None:
    with StateStore.open(state) as store:
        assert store.lock_holder() is None
        assert not Path(f"{state}.lock").exists()
        store.acquire_lock("r1")
        store.release_lock()
        assert store.lock_holder() is None  # the sidecar exists, nobody holds it


def test_a_resume_updates_the_unit_count(state: Path, src: Path) -> None:
    with StateStore.open(state) as store:
        record_run(store, "r1", src, units=10, exit_code=4)
        store.mark_resumed("r1", resumed_at="2026-11-01T02:00:00+00:00", units=8)
        record = store.get_run("r1")
    assert record is not None and (record.units, record.resumes) == (8, 1)


def test_what_a_resume_sends_comes_with_its_cost_from_the_held_slots_and_earlier_replies(
        state: Path, src: Path) -> None:
    """`status` asks the cost model the run uses: the run's own --rate, the slots its sends
    still hold in the store's send log, and its replies' latency. Six of ten slots held
    (answered just now) leave a burst of four; the rest wait a whole hold (PERIOD + 2%) for
    the held slots to free. The formula it replaced said 24 min: (14 - 10) x 6 min."""
    slow = Outcome("updated", http_status=200, attempts=1, latency_ms=500.0,
                   sent_at="2026-11-01T00:00:01.000+00:00")
    now = Reading.now()
    with StateStore.open(state) as store:
        record_run(store, "r1", src, units=20, outcomes=[slow] * 6, exit_code=4,
                   options={"on_conflict": "last", "rate": "10/h", "max_rps": 0,
                            "concurrency": 4, "timeout": 30.0})
        store.record_sends([SendEntry(f"s{i}", now.wall - 0.5, now.wall, now.boot,
                                      now.mono - 0.5, now.mono) for i in range(6)])
    run = one(state, check_inputs=False)
    cost = run.resume_cost
    assert (cost["requests_needed"], cost["burst"], cost["slots_held"]) == (14, 4, 6)
    assert (cost["latency_s"], cost["latency_source"]) == (0.5, "earlier replies")
    # The last four go one hold after the burst's first four (plus their latency), and
    # their replies take 0.5 s: 0.5 + 3,672 + 0.5 s from now.
    assert cost["estimated_duration_s"] == pytest.approx(3673.0, abs=1.0)
    assert ("cost:     14 requests: about 1 h 1 min at 10/h (the first 4 in a burst, 6 budget "
            "slots still held by earlier requests)") in render_status(
                store_status(state, check_inputs=False))


# --- the schema-1 file -----------------------------------------------------------------------


def test_a_run_stopped_at_a_daily_limit_says_from_when_a_resume_sends(state: Path,
                                                                      src: Path) -> None:
    at = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=2)
    with StateStore.open(state) as store:
        record_run(store, "r1", src, outcomes=[UPDATED] * 4, exit_code=4)
        store.finish_run("r1", exit_code=4, finished_at="2026-11-01T01:00:00+00:00",
                         counts={"updated": 4}, resume_after=at.isoformat())
    reset = utc_text(at)  # shown in the one timestamp form, whatever form was stored
    run = one(state)
    assert (run.resumable, run.resume_sends, run.resume_after) == (True, 6, reset)
    assert run.as_dict()["resume_after"] == reset
    assert f"would send 6 units, from {reset} (the daily limit resets" in render_status(
        store_status(state))
    with StateStore.open(state) as store:  # a reset that has passed binds nothing
        store.finish_run("r1", exit_code=4, finished_at="2026-11-01T01:00:00+00:00",
                         counts={"updated": 4}, resume_after="2026-11-02T00:00:00+00:00")
    assert one(state).resume_after is None and "from 2026" not in render_status(
        store_status(state))
    with StateStore.open(state) as store:  # a later finish without a limit clears it
        store.finish_run("r1", exit_code=4, finished_at="2026-11-02T01:00:00+00:00",
                         counts={"updated": 4})
    assert one(state).resume_after is None


def test_a_run_aborted_by_the_api_says_what_to_do_instead_of_only_finished(
        state: Path, src: Path) -> None:
    with StateStore.open(state) as store:
        record_run(store, "r1", src, outcomes=[UPDATED], exit_code=3)
    run = one(state)
    assert (run.state, run.resumable) == ("finished", False)
    assert run.not_resumable_because.startswith("it was aborted (exit 3: the API refused")
    assert "run again: rows already confirmed are not re-sent" in render_status(
        store_status(state))


def _downgrade_to_schema_1(path: Path) -> None:
    downgrade_to_schema_3(path)
    conn = sqlite3.connect(path)
    conn.execute("ALTER TABLE runs DROP COLUMN units")
    conn.execute("ALTER TABLE runs DROP COLUMN resume_after")  # schema 3's
    conn.execute("PRAGMA user_version=1")
    conn.close()


def test_a_schema_1_store_reads_without_unit_counts_and_migrates_when_written(
        state: Path, src: Path) -> None:
    with StateStore.open(state) as store:
        record_run(store, "r1", src, outcomes=[UPDATED] * 2, exit_code=4)
    _downgrade_to_schema_1(state)
    run = one(state)  # read-only: no migration, the count is unknown
    assert (run.units, run.units_done, run.resume_sends, run.resumable) == (None, 2, None, True)
    assert "would send the units without a final outcome" in render_status(store_status(state))
    with StateStore.open(state) as store:  # migrates 1 -> 2 -> 3 -> 4 -> 5
        record = store.get_run("r1")
        assert record is not None and (record.units, record.resume_after) == (None, None)
        assert record.stopped is None and not store.has_answered("https://logis.test:443")
    conn = sqlite3.connect(state)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    conn.close()


# --- looking never writes ---------------------------------------------------------------------


def test_status_of_a_missing_store_creates_nothing(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "state.sqlite"
    status = store_status(path)
    assert (status.exists, status.runs) == (False, ())
    assert render_status(status) == f"state store {path}: does not exist yet (no runs)"
    assert not path.parent.exists()


def test_status_leaves_the_database_file_as_it_was(state: Path, src: Path) -> None:
    with StateStore.open(state) as store:
        record_run(store, "r1", src, outcomes=[UPDATED], exit_code=4)
    before = state.read_bytes()
    store_status(state)
    assert state.read_bytes() == before
    assert not Path(f"{state}.lock").exists()


# --- the text and the CLI ---------------------------------------------------------------------


def test_status_text_shape(state: Path, src: Path) -> None:
    """The exact shape operators (and their cron mails) read."""
    with StateStore.open(state) as store:
        record_run(store, "20261101T000000Z-aaaaaa", src, units=1, outcomes=[UPDATED],
                   exit_code=0)
        record_run(store, "20261102T000000Z-bbbbbb", src, units=200,
                   outcomes=[UPDATED] * 120 + [RETRYABLE] * 3 + [PERMANENT],
                   started="2026-11-02T00:00:00+00:00", rows=210)
        store.mark_resumed("20261102T000000Z-bbbbbb", resumed_at="2026-11-02T01:00:00+00:00")
    assert render_status(store_status(state)) == f"""\
state store {state}: 2 runs, newest first
lock: free

20261102T000000Z-bbbbbb  killed (no exit recorded), resumable
  inputs:   {src}
  time:     started 2026-11-02T00:00:00.000Z, resumed 1x (last 2026-11-02T01:00:00.000Z)
  progress: 124 of 200 units have a final outcome (62%); 210 input rows
  outcomes: updated 120, failed 4 (3 retryable) (units)
  resume:   would send 76 units (79 with --retry-failed)
            batch-toggle run {src} --resume --state {state}
  cost:     76 requests: about 8 s at 2500/h (8 s to 19 s as replies take 20 ms to 1 s)

20261101T000000Z-aaaaaa  finished, exit 0
  inputs:   {src}
  time:     started 2026-11-01T00:00:00.000Z, ended 2026-11-01T01:00:00.000Z
  progress: 1 of 1 units have a final outcome (100%); 12 input rows
  outcomes: updated 1 (units)
  report:   duplicate 2, updated 1 (rows)
  resume:   no: it finished (exit 0)"""


def test_status_command_prints_the_text_and_json(state: Path, src: Path) -> None:
    with StateStore.open(state) as store:
        record_run(store, "r1", src, outcomes=[UPDATED] * 4, exit_code=4)
    runner = CliRunner()
    text = runner.invoke(main, ["status", "--state", str(state)])
    assert text.exit_code == 0, text.output
    assert text.output == render_status(store_status(state)) + "\n"
    doc = runner.invoke(main, ["status", "--state", str(state), "--json"])
    assert doc.exit_code == 0
    data = json.loads(doc.output)
    assert data["state"] == str(state)
    (run,) = data["runs"]
    assert (run["run_id"], run["state"], run["resume_sends"], run["units"]) == ("r1", "stopped",
                                                                               6, 10)


def test_status_of_a_file_that_is_not_a_store_is_one_line_exit_2(tmp_path: Path) -> None:
    bogus = tmp_path / "notes.sqlite"
    bogus.write_text("hello, not a database" * 100, encoding="utf-8")
    result = CliRunner().invoke(main, ["status", "--state", str(bogus)])
    assert result.exit_code == 2
    assert result.output.startswith(f"batch-toggle: error: state store {bogus}:")
    assert result.output.count("\n") == 1


def test_status_has_help() -> None:
    result = CliRunner().invoke(main, ["status", "--help"])
    assert result.exit_code == 0
    assert "List the runs in the state store" in result.output


def test_would_send_leaves_out_units_another_run_confirmed_since(tmp_path: Path,
                                                                   state: Path) -> None:
    """A run stopped with 4 units unsent; another run (another file) then confirms 2 of them.
    The resume finds those `unchanged` and sends 2: status says 2, not 4."""
    import batch_toggle
    from batch_toggle.sandbox import load_seed

    jobs = load_seed(Path(__file__).resolve().parents[1] / "sample_data" /
                     "sandbox_seed.csv").jobs[:6]
    header = "job_id,review_key,do_notify_sms,update_target\n"

    def write(name: str, chosen: Any) -> Path:
        path = tmp_path / name
        path.write_text(header + "".join(f"{j.job_id},{j.review_key},false,job\n"
                                         for j in chosen), encoding="utf-8")
        return path

    big, other = write("big.csv", jobs), write("other.csv", jobs[4:])
    common = {"sandbox": True, "max_rps": 1000, "state": state, "html": False,
              "concurrency": 1}
    stopped = batch_toggle.run(big, max_requests=2, report=tmp_path / "a.csv", **common)
    assert stopped.exit_code == 4 and stopped.counts["not_attempted"] == 4
    assert one(state).resume_sends == 4
    batch_toggle.run(other, report=tmp_path / "b.csv", **common)
    (run,) = [r for r in store_status(state).runs if r.run_id == stopped.run_id]
    assert run.resume_sends == 2
    assert "would send 2 units" in render_status(store_status(state))
    resumed = batch_toggle.run(big, resume=True, report=tmp_path / "c.csv", **common)
    assert resumed.summary["requests_sent"] == 2 and resumed.counts["unchanged"] == 2
