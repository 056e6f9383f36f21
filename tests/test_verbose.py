"""-v/-vv (cli/verbose.py) and the events behind them.

Three layers: the runner emits the moments a person wants to see (a retry with its attempt and
wait, a stop decision once, an outage with its duration), in virtual time against the fake
Logis of test_runner; the renderer turns each event into one line at the right level; and the
CLI wiring sends those lines through the notice (so --quiet wins) beside the --events file.
The end-to-end view (a real CLI, a real socket, injected faults) is tests/e2e/test_verbose_e2e.py.
"""

from __future__ import annotations

import json
import math
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from test_runner import FakeLogis, job_name, jobs, review_key, run_units

from batch_toggle.cli.app import main, make_hooks
from batch_toggle.cli.verbose import RENDERERS, SILENT_KINDS, VerboseLog, render
from batch_toggle.events import EventLog, fan_out
from batch_toggle.jobs.pipeline import Hooks
from batch_toggle.jobs.session import NOTABLE_WAIT
from batch_toggle.jobs.session import wait_events as _wait_events

REPO = Path(__file__).resolve().parents[1]
STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z ")


def events_of(res: Any, kind: str) -> list[dict[str, Any]]:
    return [d for k, d, *_ in res.hook_events if k == kind]


# --- what the runner emits ----------------------------------------------------------------


def test_each_retry_is_an_event_with_row_unit_error_attempt_and_wait() -> None:
    logis = FakeLogis(script={job_name(0): [503, httpx.ConnectError, "ok"]})
    res = run_units(jobs(3), logis, concurrency=1, max_attempts=4)

    retries = events_of(res, "retry")
    assert len(retries) == res.runner.counters.retries == 2
    first, second = retries
    assert {k: first[k] for k in ("unit", "row", "job_id", "update_target", "error_code",
                                  "http_status", "attempt", "max_attempts")} == {
        "unit": 0, "row": 0, "job_id": job_name(0), "update_target": "job",
        "error_code": "server_error", "http_status": 503, "attempt": 1, "max_attempts": 4}
    assert (second["error_code"], second["http_status"], second["attempt"]) == (
        "network_error", None, 2)
    # The wait it announces is the wait it took: the next request for the row came no sooner.
    sent = [r.t for r in res.requests_for(job_name(0))]
    assert sent[1] - sent[0] >= first["seconds"] - 1e-3
    assert sent[2] - sent[1] >= second["seconds"] - 1e-3  # rounded to ms
    assert res.outcome(job_name(0)).attempts == 3


def test_a_row_that_runs_out_of_attempts_has_retries_then_a_final_failure_no_more() -> None:
    logis = FakeLogis(script={job_name(0): [500, 500, 500]})
    res = run_units(jobs(1), logis, concurrency=1, max_attempts=3)
    assert [d["attempt"] for d in events_of(res, "retry")] == [1, 2]  # the third is final
    assert res.outcome(job_name(0)).attempts == 3


def test_a_stop_decision_is_one_event_even_when_every_worker_repeats_it() -> None:
    res = run_units(jobs(12), FakeLogis(), concurrency=4, max_requests=5)
    stops = events_of(res, "stop")
    assert stops == [{"code": "budget_exhausted", "exit_code": 4,
                      "message": "--max-requests 5 reached; resume with --resume",
                      "resume_after": None}]


def test_an_abort_is_a_stop_event_naming_its_code() -> None:
    logis = FakeLogis(script={job_name(2): [403]})
    res = run_units(jobs(6), logis, concurrency=1)
    (stop,) = events_of(res, "stop")
    assert (stop["code"], stop["exit_code"]) == ("aborted", 3)
    assert "api_key_invalid" in stop["message"]


def test_an_outage_pause_says_how_long_it_has_lasted_and_when_the_run_gives_up() -> None:
    logis = FakeLogis(by_seq={i: httpx.ConnectError for i in range(8)})
    res = run_units(jobs(4), logis, concurrency=2, max_attempts=3, outage_limit=600.0,
                    answered_before=True)
    pauses = [d for d in events_of(res, "pause") if d["reason"] == "outage"]
    assert pauses
    assert all(p["limit_s"] == 600.0 and p["outage_s"] >= 0 for p in pauses)
    assert pauses[-1]["outage_s"] > pauses[0]["outage_s"]


def test_a_first_contacts_outage_pause_gives_up_at_its_grace() -> None:
    logis = FakeLogis(by_seq={i: httpx.ConnectError for i in range(8)})
    res = run_units(jobs(4), logis, concurrency=2, max_attempts=3, outage_limit=600.0,
                    first_contact_grace=60.0)
    pauses = [d for d in events_of(res, "pause") if d["reason"] == "outage"]
    assert pauses and all(p["limit_s"] == 60.0 for p in pauses)


def test_runner_events_never_carry_a_review_key_or_the_api_key() -> None:
    logis = FakeLogis(script={job_name(0): [503, "ok"], job_name(1): [429, "ok"],
                              job_name(2): [404]})
    res = run_units(jobs(4), logis, concurrency=2)
    text = json.dumps([[k, d] for k, d, *_ in res.hook_events])
    assert not any(review_key(i) in text for i in range(4))
    assert "sk-test" not in text


def test_a_long_budget_wait_is_an_event_a_short_or_routine_one_is_not() -> None:
    seen: list[tuple[str, dict[str, Any]]] = []
    on_wait = _wait_events(Hooks(event=lambda k, d: seen.append((k, d))))
    now = 1000.0  # the budget's own clock: any monotonic origin
    on_wait("rps", now + 30, now)  # the --max-rps spacing: routine
    on_wait("pause", now + 30, now)  # a 429 pause: told by its own "pause" event
    on_wait("budget", math.inf, now)  # waiting for a response to free a slot: no known end
    on_wait("budget", now + NOTABLE_WAIT / 10, now)  # too short to notice
    assert seen == []
    on_wait("budget", now + 3300, now)
    on_wait("daily", now + 7200, now)
    assert [(k, d["reason"]) for k, d in seen] == [("wait", "budget"), ("wait", "daily")]
    assert seen[0][1]["seconds"] == 3300


# --- the renderer ---------------------------------------------------------------------------

RETRY = {"unit": 3, "row": 7, "job_id": "0d1e", "update_target": "job",
         "error_code": "server_error", "http_status": 503, "attempt": 2, "max_attempts": 5,
         "seconds": 1.27}
ROW = {"unit": 3, "row": 7, "source": "optouts.csv:8", "job_id": "0d1e", "update_target": "client",
       "status": "updated", "error_code": None, "http_status": 200, "attempts": 2,
       "retryable": None, "latency_ms": 41.6}
GAVE_UP = {**ROW, "status": "failed", "error_code": "timeout", "http_status": None,
           "attempts": 5, "retryable": True}


@pytest.mark.parametrize(("kind", "data", "line"), [
    ("plan", {"run_id": "R1", "rows": 31204, "requests_needed": 30000,
              "estimated_duration": "11 h 29 min", "rate": "2500/h"},
     "start: run R1: 31,204 rows, 30,000 requests: about 11 h 29 min at 2500/h"),
    ("resume", {"run_id": "R1", "units_with_outcome": 2500, "units_to_send": 100},
     "resume: run R1: 2,500 units already have an outcome, 100 to send"),
    ("resume_new_run", {"reason": "no unfinished run with these inputs and plan options"},
     "resume: no unfinished run with these inputs and plan options; a new run starts"),
    ("retry", RETRY, "retry: job 0d1e (job): server_error (gateway 503), attempt 2/5 failed; "
                     "next try in 1.3 s"),
    ("retry", {**RETRY, "error_code": "network_error", "http_status": None},
     "retry: job 0d1e (job): network_error (no answer), attempt 2/5 failed; "
     "next try in 1.3 s"),
    ("pause", {"reason": "429", "seconds": 7.0, "source": "retry_after"},
     "429: every worker pauses 7.0 s (as Retry-After asks); the row goes back to the queue"),
    ("pause", {"reason": "429", "seconds": 4.0, "source": "backoff"},
     "429: every worker pauses 4.0 s (backoff); the row goes back to the queue"),
    ("pause", {"reason": "outage", "seconds": 4.0, "outage_s": 35.2, "limit_s": 900.0},
     "outage: every recent request got no answer or a gateway error (for 35.2 s); the run "
     "pauses, next probe in 4.0 s; it stops after 15 min 0 s of outage"),
    ("wait", {"reason": "budget", "seconds": 3365.0},
     "budget: the --rate window is full; the next request goes in 56 min 5 s"),
    ("wait", {"reason": "daily", "seconds": 18000.0},
     "budget: the daily limit is full; the next request goes in 5 h 0 min"),
    ("stop", {"code": "halted", "exit_code": 3, "message": "halted: 50 rows in a row failed",
              "resume_after": None},
     "stop (exit 3): halted: 50 rows in a row failed; in-flight rows finish, the rest are "
     "not_attempted (halted)"),
    ("canary", {"units": 20, "failed_permanently": 0, "go_on": True},
     "canary: 20 units sent, 0 failed permanently: going on with the rest"),
    ("canary", {"units": 20, "failed_permanently": 2, "go_on": False},
     "canary: 20 units sent, 2 failed permanently: nothing more is sent"),
    ("finish", {"run_id": "R1", "exit_code": 1, "verdict": "attention: some rows",
                "counts": {"updated": 1200, "failed": 3}},
     "finish: run R1: exit 1, attention: some rows (failed 3, updated 1,200)"),
])
def test_each_event_renders_as_one_line_at_v(kind: str, data: dict[str, Any], line: str) -> None:
    assert render(kind, data, 1) == line
    assert render(kind, data, 2) == line
    assert render(kind, data, 0) is None


def test_rows_are_lines_at_vv_and_only_exhausted_retries_at_v() -> None:
    assert render("row", ROW, 1) is None
    assert render("row", ROW, 2) == (
        "row optouts.csv:8: job 0d1e (client): updated (HTTP 200, 2 attempts, 42 ms)")
    assert render("row", GAVE_UP, 1) == (
        "gave up: row optouts.csv:8: job 0d1e (client): timeout (no answer) after "
        "5 attempts; failed, retryable (--resume --retry-failed sends it again)")
    assert render("row", GAVE_UP, 2) == (
        "row optouts.csv:8: job 0d1e (client): failed timeout (no answer, 5 attempts, "
        "42 ms, retryable)")
    permanent = {**GAVE_UP, "error_code": "job_not_found", "http_status": 404,
                 "retryable": False}
    assert render("row", permanent, 1) is None  # a permanent failure is no retry decision
    assert render("row", permanent, 2) == (
        "row optouts.csv:8: job 0d1e (client): failed job_not_found (HTTP 404, 5 attempts, "
        "42 ms)")
    unsent = {**ROW, "http_status": None, "attempts": 0, "latency_ms": None}
    assert render("row", unsent, 2) == (
        "row optouts.csv:8: job 0d1e (client): updated (no answer, 0 attempts)")


def test_an_audits_lines_name_an_audit_and_advise_auditing_again() -> None:
    """Audit rejects --resume: its lines must not send a reader there."""
    plan = {"command": "audit", "run_id": "R1", "rows": 7, "requests_needed": 3,
            "estimated_duration": "0 s", "rate": "2500/h"}
    assert render("plan", plan, 1, "audit") == (
        "start: audit R1: 7 rows, 3 reads: about 0 s at 2500/h")
    assert render("row", GAVE_UP, 1, "audit") == (
        "gave up: row optouts.csv:8: job 0d1e (client): timeout (no answer) after "
        "5 attempts; failed, retryable (auditing again reads it again)")
    assert render("finish", {"run_id": "R1", "exit_code": 4, "verdict": "stopped early",
                             "counts": {}}, 1, "audit") == "finish: audit R1: exit 4, stopped early"
    # A run (and a command this version does not know) keeps the run's words.
    for command in ("run", "validate", "something_new"):
        assert "--resume --retry-failed" in (render("row", GAVE_UP, 1, command) or "")
        assert (render("plan", plan, 1, command) or "").startswith("start: run R1: 7 rows, 3 "
                                                                   "requests")


def test_the_log_takes_its_command_from_the_plan_event() -> None:
    lines: list[str] = []
    log = VerboseLog(1, lines.append)
    log("row", GAVE_UP)  # before any plan: a run's words
    log("plan", {"command": "audit", "run_id": "R1", "rows": 1, "requests_needed": 1})
    log("row", GAVE_UP)
    first, start, then = (STAMP.sub("", line) for line in lines)
    assert first.endswith("(--resume --retry-failed sends it again)")
    assert start.startswith("start: audit R1: 1 row, 1 read")
    assert then.endswith("(auditing again reads it again)")


def test_per_request_events_and_unknown_kinds_print_nothing() -> None:
    assert render("request", {"unit": 1, "kind": "ok", "http_status": 200}, 2) is None
    assert render("something_new", {"x": 1}, 2) is None


def test_every_event_the_core_emits_is_rendered_or_deliberately_silent() -> None:
    """A new event kind must be given a line (or a reason for none) here, not forgotten."""
    source = "\n".join(p.read_text(encoding="utf-8") for p in (REPO / "batch_toggle").rglob("*.py"))
    emitted = set(re.findall(r"""\.event\(\s*["'](\w+)["']""", source))
    assert {"plan", "retry", "pause", "wait", "stop", "canary", "row", "finish"} <= emitted
    assert emitted <= set(RENDERERS) | SILENT_KINDS | {"row"}


# --- the sink and the wiring -------------------------------------------------------------


def test_lines_are_timestamped_in_utc() -> None:
    lines: list[str] = []
    log = VerboseLog(1, lines.append, now=lambda: datetime(2026, 11, 3, 14, 3, 12, tzinfo=UTC))
    log("retry", RETRY)
    log("request", {"unit": 1})
    assert lines == ["2026-11-03T14:03:12.000Z retry: job 0d1e (job): server_error (gateway 503), "
                     "attempt 2/5 failed; next try in 1.3 s"]


def test_a_line_never_breaks_the_run() -> None:
    """Events fire inside the send loop and the committer: a malformed event or a stderr that
    went away (a closed pipe) must not raise there."""
    lines: list[str] = []
    log = VerboseLog(2, lines.append)
    log("row", {"latency_ms": "not a number"})
    log("finish", {"counts": "not a mapping"})
    assert lines == []

    def broken(_line: str) -> None:
        raise BrokenPipeError(32, "Broken pipe")

    closed = VerboseLog(2, broken)
    closed("retry", RETRY)  # no exception
    assert closed.level == 0  # and no further attempts to write


def test_fan_out_feeds_every_sink_and_skips_none() -> None:
    a: list[str] = []
    b: list[str] = []
    event = fan_out(lambda k, _d: a.append(k), None, lambda k, _d: b.append(k))
    event("plan", {})
    assert a == b == ["plan"]


@pytest.mark.parametrize(("opts", "expected"), [
    ({}, []),
    ({"verbose": 1}, ["retry"]),
    ({"verbose": 2}, ["retry", "row"]),
    ({"verbose": 2, "quiet": True}, []),  # --quiet wins
])
def test_make_hooks_levels_and_quiet_wins(opts: dict[str, Any], expected: list[str],
                                          capsys: pytest.CaptureFixture[str]) -> None:
    hooks = make_hooks(opts)
    hooks.event("retry", RETRY)
    hooks.event("row", ROW)
    hooks.event("request", {"unit": 1, "kind": "ok", "http_status": 200})
    err = capsys.readouterr().err.splitlines()
    assert all(STAMP.match(line) for line in err)
    assert [STAMP.sub("", line).split(":")[0].split(" ")[0] for line in err] == expected


def test_the_events_file_and_the_lines_see_the_same_events(tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str],
                                                           ) -> None:
    log = EventLog(tmp_path / "events.jsonl")
    try:
        hooks = make_hooks({"verbose": 1}, events=log)
        hooks.event("retry", RETRY)
        hooks.event("row", ROW)
    finally:
        log.close()
    kinds = [json.loads(x)["event"] for x in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert kinds == ["retry", "row"]  # the file gets every event, -v only its lines
    assert len(capsys.readouterr().err.splitlines()) == 1


def test_help_says_what_v_and_vv_show() -> None:
    for command in ("run", "validate", "audit"):
        text = " ".join(CliRunner().invoke(main, [command, "--help"],
                                           terminal_width=200).output.split())
        assert "-v, --verbose" in text
        assert "-v: the run's notable moments" in text
        # -vv: a line per request sent, not per row (duplicates and the like get none).
        assert ("-vv: also one line per request's outcome, on the row it was sent for (none "
                "for invalid, duplicate, superseded or unchanged rows)") in text
        assert "--quiet wins" in text
