"""`batch-toggle run` end to end: the CLI in a subprocess, the sandbox on a real loopback socket.

Each behaviour is checked from both sides: the report rows the CLI wrote and what the server
received (`handle.requests()`) or holds (`handle.state()`). The shared `sandbox_server` is reset
to the seed before every test; windows are shrunk to a second so budget tests take seconds.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from . import (
    FAST,
    SAMPLE,
    SAMPLE_EXPECTED,
    finish,
    job_rows,
    max_in_window,
    puts,
    run_cli,
    start_cli,
    unknown_rows,
    wait_until,
    write_input,
)

pytestmark = pytest.mark.e2e


def _server_state(handle: Any) -> tuple[dict[str, bool], dict[str, bool]]:
    state = handle.state()
    jobs = {j["id"]: j["do_notify_sms"] for j in state["jobs"]}
    clients = {c["id"]: c["do_notify_sms"] for c in state["clients"]}
    return jobs, clients


# --- the sample file ------------------------------------------------------------------------


def test_sample_file_statuses_requests_server_state_and_client_before_job(
    any_sandbox_server: Any, tmp_path: Path
) -> None:
    sandbox_server = any_sandbox_server
    latency = 0.02
    sandbox_server.set_faults(latency_ms=latency * 1000)
    expected = json.loads(SAMPLE_EXPECTED.read_text(encoding="utf-8"))

    run = run_cli(sandbox_server, tmp_path, [SAMPLE], *FAST, "--concurrency", "4")

    assert run.code == 1, run.stderr  # the sample's bad rows need attention, by design
    assert "Traceback" not in run.stderr
    # The report: one row per input row, each with the status the sample planted.
    assert len(run.rows) == len(expected["rows"]) == 300
    assert [int(r["source_row"]) for r in run.rows] == [e["row"] for e in expected["rows"]]
    assert run.statuses() == [e["status"] for e in expected["rows"]]
    for row, want in zip(run.rows, expected["rows"], strict=True):
        assert (row["error_code"] or None) == want.get("error_code"), row["source_row"]
    assert Counter(run.statuses()) == expected["status_counts"]

    # The server: exactly one PUT per unit needed, none for an invalid, duplicate, superseded
    # or conflict row, and each PUT asked for what the row that stands for its unit asks.
    received = puts(sandbox_server)
    assert len(received) == expected["requests_needed"] == run.summary["requests_sent"]
    sent_units = Counter((r["job_id"], r["update_target"]) for r in received)
    assert max(sent_units.values()) == 1
    asked = {(r["job_id"], r["update_target"]): r["do_notify_sms"]
             for r in run.rows if r["status"] in ("updated", "failed")}
    assert set(sent_units) == set(asked)
    assert {(r["job_id"], r["update_target"]): r["do_notify_sms"] for r in received} == asked
    not_sent = {r["job_id"] for r in run.rows if r["status"] in ("conflict", "invalid")}
    assert not_sent.isdisjoint(r["job_id"] for r in received)

    # The server's state now equals the file for every unit the run updated.
    jobs, clients = _server_state(sandbox_server)
    client_of = {j.job_id: j.client_id for j in sandbox_server.jobs}
    updated = run.by_status("updated")
    assert len(updated) == expected["status_counts"]["updated"]
    for row in updated:
        want = row["do_notify_sms"] == "true"
        if row["update_target"] == "job":
            assert jobs[row["job_id"]] is want, row["source_row"]
        else:
            assert clients[client_of[row["job_id"]]] is want, row["source_row"]
        assert row["confirmed_do_notify_sms"] == row["do_notify_sms"]

    # For a job with both targets, the client PUT was answered before the job PUT was sent:
    # the server stamps a request after its latency, right before answering, so the job PUT
    # (sent after that answer, then held `latency` itself) is stamped at least `latency` later.
    at = {(r["job_id"], r["update_target"]): r["t"] for r in received}
    both = [job for job, target in at if target == "job" and (job, "client") in at]
    assert len(both) == 3
    for job in both:
        assert at[(job, "job")] - at[(job, "client")] >= latency * 0.95, job


# --- faults and retries ---------------------------------------------------------------------


def test_injected_faults_cost_exactly_their_retries_and_rows_end_updated(
    sandbox_server: Any, tmp_path: Path
) -> None:
    jobs = sandbox_server.jobs[:16]
    a, b, c, d = (j.job_id for j in jobs[:4])
    sandbox_server.set_faults(scripted={
        a: ["503", "503"], b: ["reset"], c: ["html500"], d: ["503", "503", "503", "503"]})
    src = write_input(tmp_path / "in.csv", job_rows(jobs))

    run = run_cli(sandbox_server, tmp_path, [src], *FAST, "--max-attempts", "3")

    assert run.code == 1, run.stderr  # d failed
    received = puts(sandbox_server)
    # 16 units + the retries of injected faults only: a 2, b 1, c 1, d 2 (3 attempts in all).
    assert len(received) == 16 + 2 + 1 + 1 + 2 == run.summary["requests_sent"]
    assert run.summary["retries"] == 6
    assert Counter(r["job_id"] for r in received if r["fault"]) == {a: 2, b: 1, c: 1, d: 3}
    assert all(r["status"] == 200 for r in received if not r["fault"])
    rows = {r["job_id"]: r for r in run.rows}
    assert len(run.rows) == 16
    assert {j: r["attempts"] for j, r in rows.items() if j in (a, b, c)} == {
        a: "3", b: "2", c: "2"}
    for job, row in rows.items():
        if job == d:
            continue
        assert row["status"] == "updated", row
        assert row["http_status"] == "200"
    failed = rows[d]
    assert (failed["status"], failed["error_code"], failed["retryable"], failed["attempts"],
            failed["http_status"]) == ("failed", "server_error", "true", "3", "503")
    jobs_now, _ = _server_state(sandbox_server)
    assert all(jobs_now[j] is False for j in rows if j != d)


# --- the budget -----------------------------------------------------------------------------


def test_rate_equal_to_the_servers_budget_sees_no_429_and_never_exceeds_the_window(
    sandbox_server: Any, tmp_path: Path
) -> None:
    n, window = 20, 1.0
    sandbox_server.set_limits(hourly_limit=n, window=window)
    src = write_input(tmp_path / "in.csv", job_rows(sandbox_server.jobs[:3 * n]))

    run = run_cli(sandbox_server, tmp_path, [src], *FAST, "--rate", f"{n}/{window:g}s")

    assert run.code == 0, run.stderr
    assert run.statuses() == ["updated"] * (3 * n)
    received = puts(sandbox_server)
    assert len(received) == 3 * n
    assert [r["status"] for r in received] == [200] * (3 * n)  # zero 429s
    times = [r["t"] for r in received]
    # The budget is spent exactly: full windows, never one request more.
    assert max_in_window(times, window) == n
    assert max(times) - min(times) >= 2 * window  # three windows' worth cannot go faster
    assert run.summary["responses_429"] == 0


def test_a_server_budget_below_rate_is_honoured_through_retry_after(
    any_sandbox_server: Any, tmp_path: Path
) -> None:
    sandbox_server = any_sandbox_server
    sandbox_server.set_limits(hourly_limit=8, window=1.0)
    units = 24
    src = write_input(tmp_path / "in.csv", job_rows(sandbox_server.jobs[:units]))

    run = run_cli(sandbox_server, tmp_path, [src], *FAST, "--rate", f"{units}/1s")

    assert run.code == 0, run.stderr
    assert run.statuses() == ["updated"] * units
    # Every request is on its row: a row sent again after a 429 shows both.
    assert sum(int(r["attempts"]) for r in run.rows) == run.summary["requests_sent"]
    assert all(r["error_code"] == "" for r in run.rows)  # a 429 is not a failed attempt
    received = puts(sandbox_server)
    limited = [r["t"] for r in received if r["status"] == 429]
    assert limited and run.summary["responses_429"] == len(limited)
    assert len(received) == units + len(limited)
    # Retry-After (at least 1 s here) is honoured: after a 429, only requests that were
    # already in flight arrive, then nothing until the pause is over.
    for t in limited:
        early = [r["t"] - t for r in received if t + 0.3 < r["t"] < t + 0.98]
        assert not early, f"requests {early} s after a 429"


# --- aborts and breakers --------------------------------------------------------------------


@pytest.mark.parametrize(("flags", "code"), [
    pytest.param({"active": False}, "api_key_invalid", id="inactive-key"),
    pytest.param({"allow_public_track": False}, "permission_denied", id="no-permission"),
])
def test_a_refused_key_aborts_at_once(sandbox_server: Any, tmp_path: Path,
                                      flags: dict[str, bool], code: str) -> None:
    key = "e2e-refused-key-0001"
    sandbox_server.set_key(key, **flags)
    src = write_input(tmp_path / "in.csv", job_rows(sandbox_server.jobs[:30]))

    run = run_cli(sandbox_server, tmp_path, [src], *FAST, "--concurrency", "4", key=key)

    assert run.code == 3, run.stderr
    received = puts(sandbox_server)
    assert 1 <= len(received) <= 4 and {r["status"] for r in received} == {403}
    assert len(run.rows) == 30
    failed = run.by_status("failed")
    assert len(failed) == len(received)
    assert {(r["error_code"], r["http_status"]) for r in failed} == {(code, "403")}
    assert {(r["status"], r["error_code"]) for r in run.rows if r not in failed} == {
        ("not_attempted", "aborted")}
    assert run.summary["exit_code"] == 3
    assert key not in run.stderr + run.stdout + (tmp_path / "report.csv").read_text()


def test_a_key_deactivated_mid_run_stops_within_concurrency(
    sandbox_server: Any, tmp_path: Path
) -> None:
    sandbox_server.set_faults(latency_ms=20)
    units = 80
    src = write_input(tmp_path / "in.csv", job_rows(sandbox_server.jobs[:units]))
    proc = start_cli(sandbox_server, tmp_path, [src], *FAST, "--concurrency", "4")
    started = time.monotonic()
    wait_until(lambda: len(puts(sandbox_server)) >= 10, 20, "the first requests")
    sandbox_server.set_key(sandbox_server.api_key, active=False)
    run = finish(proc, tmp_path, started)

    assert run.code == 3, run.stderr
    received = puts(sandbox_server)
    first_403 = next(i for i, r in enumerate(received) if r["status"] == 403)
    assert len(received) - (first_403 + 1) <= 4  # at most --concurrency past the first 403
    assert len(run.rows) == units
    ok = sum(r["status"] == 200 for r in received)
    refused = sum(r["status"] == 403 for r in received)
    counts = Counter((r["status"], r["error_code"]) for r in run.rows)
    assert counts[("updated", "")] == ok
    assert counts[("failed", "api_key_invalid")] == refused
    assert counts[("not_attempted", "aborted")] == units - ok - refused > 0


def test_halt_after_consecutive_unknown_jobs(sandbox_server: Any, tmp_path: Path) -> None:
    src = write_input(tmp_path / "in.csv", unknown_rows(40))

    run = run_cli(sandbox_server, tmp_path, [src], *FAST, "--halt-after", "5",
                  "--concurrency", "4")

    assert run.code == 3, run.stderr
    received = puts(sandbox_server)
    assert 5 <= len(received) <= 5 + 4
    assert {r["status"] for r in received} == {404}
    assert len(run.rows) == 40
    counts = Counter((r["status"], r["error_code"]) for r in run.rows)
    assert counts[("failed", "job_not_found")] == len(received)
    assert counts[("not_attempted", "halted")] == 40 - len(received)
    assert run.summary["stopped"]["code"] == "halted"


# --- early stops ----------------------------------------------------------------------------


def test_max_requests_sends_exactly_n(sandbox_server: Any, tmp_path: Path) -> None:
    src = write_input(tmp_path / "in.csv", job_rows(sandbox_server.jobs[:20]))

    run = run_cli(sandbox_server, tmp_path, [src], *FAST, "--max-requests", "7")

    assert run.code == 4, run.stderr
    assert len(puts(sandbox_server)) == 7
    counts = Counter((r["status"], r["error_code"]) for r in run.rows)
    assert counts == {("updated", ""): 7, ("not_attempted", "budget_exhausted"): 13}


def test_stop_after_ends_the_run_on_time(sandbox_server: Any, tmp_path: Path) -> None:
    sandbox_server.set_faults(latency_ms=30)
    units = 200  # about 1.5 s at concurrency 4: far more than the 0.5 s allowed
    src = write_input(tmp_path / "in.csv", job_rows(sandbox_server.jobs[:units]))

    run = run_cli(sandbox_server, tmp_path, [src], *FAST, "--stop-after", "0.5s")

    assert run.code == 4, run.stderr
    received = puts(sandbox_server)
    assert 0 < len(received) < units
    counts = Counter((r["status"], r["error_code"]) for r in run.rows)
    assert counts[("updated", "")] == len(received)
    assert counts[("not_attempted", "budget_exhausted")] == units - len(received)
    assert run.summary["stopped"]["code"] == "budget_exhausted"
    assert run.summary["duration_s"] < 0.5 + 1.5  # load, plan, 0.5 s of sending, report


@pytest.mark.parametrize("bad_first", [True, False], ids=["failing-canary", "good-canary"])
def test_canary(sandbox_server: Any, tmp_path: Path, bad_first: bool) -> None:
    good = job_rows(sandbox_server.jobs[:12])
    rows = (unknown_rows(3) + good) if bad_first else good
    src = write_input(tmp_path / "in.csv", rows)

    run = run_cli(sandbox_server, tmp_path, [src], *FAST, "--canary", "3")

    received = puts(sandbox_server)
    assert len(run.rows) == len(rows)
    assert run.stderr.count("canary: ") >= 3
    if bad_first:
        assert run.code == 1, run.stderr
        assert len(received) == 3
        counts = Counter((r["status"], r["error_code"]) for r in run.rows)
        assert counts == {("failed", "job_not_found"): 3, ("not_attempted", "halted"): 12}
    else:
        assert run.code == 0, run.stderr
        assert len(received) == 12
        assert run.statuses() == ["updated"] * 12


def test_daily_limit_ends_the_run_resumably_and_says_when(
    sandbox_server: Any, tmp_path: Path
) -> None:
    sandbox_server.set_limits(daily_limit=5)
    src = write_input(tmp_path / "in.csv", job_rows(sandbox_server.jobs[:15]))

    run = run_cli(sandbox_server, tmp_path, [src], *FAST)

    assert run.code == 4, run.stderr
    received = puts(sandbox_server)
    assert sum(r["status"] == 200 for r in received) == 5
    assert len(received) <= 5 + 4
    counts = Counter((r["status"], r["error_code"]) for r in run.rows)
    assert counts == {("updated", ""): 5, ("not_attempted", "daily_limit"): 10}
    stopped = run.summary["stopped"]
    assert stopped["code"] == "daily_limit" and stopped["resume_after"]
    assert stopped["resume_after"] in run.stderr  # a person reading stderr knows when

    # A resume before the limit resets (an hourly cron line) sends nothing: no request would
    # get anything but a 429. Its report still covers every row; still exit 4, same advice.
    sent_before = len(puts(sandbox_server))
    again = run_cli(sandbox_server, tmp_path, [src], *FAST, "--resume")
    assert again.code == 4, again.stderr
    assert len(puts(sandbox_server)) == sent_before
    assert Counter((r["status"], r["error_code"]) for r in again.rows) == counts
    assert again.summary["stopped"]["resume_after"] == stopped["resume_after"]
    assert f"resume with --resume after {stopped['resume_after']}" in again.stderr


# --- safety ---------------------------------------------------------------------------------


def test_plain_http_to_a_non_loopback_host_is_refused(sandbox_server: Any,
                                                      tmp_path: Path) -> None:
    src = write_input(tmp_path / "in.csv", job_rows(sandbox_server.jobs[:3]))

    run = run_cli(sandbox_server, tmp_path, [src], base_url="http://logis.example.com")

    assert run.code == 2
    assert "--insecure" in run.stderr and "Traceback" not in run.stderr
    assert not (tmp_path / "report.csv").exists()


def test_insecure_allows_plain_http_the_loopback_check_does_not_recognise(
    sandbox_server: Any, tmp_path: Path
) -> None:
    # `127.1` is 127.0.0.1 to the resolver but not a loopback literal to the URL check: it
    # stands in for a non-loopback http host without sending anything off this machine.
    port = sandbox_server.base_url.rsplit(":", 1)[1]
    src = write_input(tmp_path / "in.csv", job_rows(sandbox_server.jobs[:3]))

    refused = run_cli(sandbox_server, tmp_path, [src], base_url=f"http://127.1:{port}")
    assert refused.code == 2 and puts(sandbox_server) == []
    allowed = run_cli(sandbox_server, tmp_path, [src], "--insecure",
                      base_url=f"http://127.1:{port}")
    assert allowed.code == 0, allowed.stderr
    assert len(puts(sandbox_server)) == 3


def test_missing_key_is_a_usage_error_before_reading_inputs(sandbox_server: Any,
                                                            tmp_path: Path) -> None:
    run = run_cli(sandbox_server, tmp_path, [tmp_path / "does-not-exist.csv"], key=None)

    assert run.code == 2
    assert "LOGIS_API_KEY" in run.stderr
    assert "does-not-exist" not in run.stderr  # the key is checked first
    assert "Traceback" not in run.stderr
    assert sandbox_server.requests() == []


class _Redirector(BaseHTTPRequestHandler):
    """Answers everything with 307 to `target` + the same path, and counts what it got."""

    target = ""
    seen: list[str] = []

    def do_PUT(self) -> None:  # noqa: N802 - http.server's naming
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.seen.append(self.path)
        self.send_response(307)
        self.send_header("Location", self.target + self.path)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def redirector(sandbox_server: Any) -> Iterator[tuple[str, list[str]]]:
    seen: list[str] = []
    handler = type("Redirect", (_Redirector,), {"target": sandbox_server.base_url,
                                                "seen": seen})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_redirects_are_never_followed(sandbox_server: Any, redirector: tuple[str, list[str]],
                                      tmp_path: Path) -> None:
    url, seen = redirector
    src = write_input(tmp_path / "in.csv", job_rows(sandbox_server.jobs[:12]))

    run = run_cli(sandbox_server, tmp_path, [src], *FAST, "--concurrency", "4", base_url=url)

    assert sandbox_server.requests() == []  # the redirect's target never heard of us
    # A base URL that redirects does so for every row: the run stops at once (exit 3), each
    # row that got the redirect failed (not retried), the rest never sent.
    assert run.code == 3, run.stderr
    assert 1 <= len(seen) <= 4
    counts = Counter((r["status"], r["error_code"], r["http_status"]) for r in run.rows)
    assert counts == {("failed", "unexpected_response", "307"): len(seen),
                      ("not_attempted", "aborted", ""): 12 - len(seen)}


# --- progress -------------------------------------------------------------------------------


@pytest.mark.parametrize("flag", ["--progress", "--no-progress", None],
                         ids=["forced", "off", "non-tty-default"])
def test_progress_bar_on_stderr(sandbox_server: Any, tmp_path: Path, flag: str | None) -> None:
    src = write_input(tmp_path / "in.csv", job_rows(sandbox_server.jobs[:12]))

    run = run_cli(sandbox_server, tmp_path, [src], *FAST, *([flag] if flag else []))

    assert run.code == 0, run.stderr
    bar = "req=" in run.stderr
    assert bar is (flag == "--progress")
    if bar:
        assert "12/12" in run.stderr
        assert "req=12" in run.stderr and "429=0" in run.stderr and "fail=0" in run.stderr
        assert "eta~" in run.stderr


def test_progress_shows_a_wait_for_the_budget_and_the_whole_total_after_a_canary(
    sandbox_server: Any, tmp_path: Path
) -> None:
    # 5 requests per 1.5 s: the first 5 go at once, then the run waits for the window; the
    # bar must say so while nothing commits, and count the rows after the canary's 2 too.
    src = write_input(tmp_path / "in.csv", job_rows(sandbox_server.jobs[:8]))

    run = run_cli(sandbox_server, tmp_path, [src], *FAST, "--rate", "5/1.5s", "--canary", "2",
                  "--progress")

    assert run.code == 0, run.stderr
    assert "waiting:budget" in run.stderr
    assert "8/8" in run.stderr  # the bar's total grew from the canary's 2 to all 8
    assert len(puts(sandbox_server)) == 8


def test_a_clients_confirmed_opt_out_is_sticky_through_its_other_jobs(
    sandbox_server: Any, tmp_path: Path
) -> None:
    """Found by exploratory testing: a `client` row asking for true for another job of a
    client whose opt-out an earlier run confirmed turned the client's default back on."""
    by_client: dict[str, list[Any]] = {}
    for job in sandbox_server.jobs:
        by_client.setdefault(job.client_id, []).append(job)
    a, b = next(jobs for jobs in by_client.values() if len(jobs) >= 2)[:2]
    opt_out = write_input(tmp_path / "a.csv", job_rows([a], "false", "client"))
    assert run_cli(sandbox_server, tmp_path, [opt_out], *FAST).code == 0
    learn = write_input(tmp_path / "b_job.csv", job_rows([b], "false", "job"))  # b -> client
    assert run_cli(sandbox_server, tmp_path, [learn], *FAST).code == 0
    sent = len(puts(sandbox_server))

    back_on = write_input(tmp_path / "b.csv", job_rows([b], "true", "client"))
    run = run_cli(sandbox_server, tmp_path, [back_on], *FAST)

    assert run.code == 1, run.stderr
    assert len(puts(sandbox_server)) == sent  # nothing sent
    (row,) = run.rows
    assert (row["status"], row["error_code"]) == ("conflict", "resubscribe_blocked")
    assert f"this client's opt-out (through job {a.job_id})" in row["error_message"]
    again = run_cli(sandbox_server, tmp_path, [back_on], *FAST, "--allow-resubscribe")
    assert again.code == 0 and again.statuses() == ["updated"]


def test_every_request_is_on_its_rows_attempts_even_with_one_attempt_allowed(
        sandbox_server: Any, tmp_path: Path) -> None:
    """--max-attempts 1 against gateway 503s: the 503s pass for an outage, whose probes do not
    use up a row's attempts, so a row can be sent five times. Each row's `attempts` says so,
    unit by unit as the server counted, and the summary's retries are every request beyond a
    unit's first (it said 1 attempt everywhere and 0 retries)."""
    jobs = sandbox_server.jobs[:10]
    # Four rows fail at once (one attempt each); the fifth gateway error in a row is an
    # outage, whose probes re-send the fifth row until the gateway answers.
    scripted = {job.job_id: ["503"] for job in jobs[:4]}
    scripted[jobs[4].job_id] = ["503"] * 3
    sandbox_server.set_faults(scripted=scripted)
    src = write_input(tmp_path / "in.csv", job_rows(jobs))
    run = run_cli(sandbox_server, tmp_path, [src], *FAST, "--max-attempts", "1",
                  "--concurrency", "1")
    received = Counter(r["job_id"] for r in puts(sandbox_server))
    assert sum(received.values()) > len(jobs)
    assert {r["job_id"]: int(r["attempts"]) for r in run.rows} == dict(received)
    assert run.summary is not None
    assert run.summary["requests_sent"] == sum(received.values())
    assert run.summary["retries"] == sum(received.values()) - len(jobs)
