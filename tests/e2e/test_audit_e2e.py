"""`batch-toggle audit` end to end: the CLI in a subprocess, the sandbox on a real loopback socket,
a real state store and real report files.

What the audit says is checked against what the server holds (`handle.state()`) and what it
received (`handle.requests()`): one GET per distinct job, never a PUT.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from batch_toggle.state.sqlite import StateStore

from . import (
    CLI_TIMEOUT,
    FAST,
    SAMPLE,
    CliRun,
    cli_env,
    collect,
    tls_args,
    unknown_rows,
    write_input,
)

pytestmark = pytest.mark.e2e


def cli(handle: Any, tmp_path: Path, command: str, inputs: list[Path], *extra: str,
        key: bool = True) -> CliRun:
    """`batch-toggle <command>` to completion, with this test's state store and report."""
    args = [sys.executable, "-m", "batch_toggle", command, *map(str, inputs),
            "--state", str(tmp_path / "state.sqlite"), "--report", str(tmp_path / "report.csv"),
            *extra]
    if command != "validate":
        args += ["--base-url", handle.base_url, *tls_args(handle), *FAST]
    started = time.monotonic()
    proc = subprocess.run(args, env=cli_env(handle.api_key if key else None), cwd=tmp_path,
                          capture_output=True, text=True, timeout=CLI_TIMEOUT,
                          stdin=subprocess.DEVNULL)
    return collect(tmp_path, proc.returncode, proc.stdout, proc.stderr,
                   time.monotonic() - started)


def _state(handle: Any) -> tuple[dict[str, bool], dict[str, bool]]:
    state = handle.state()
    return ({j["id"]: j["do_notify_sms"] for j in state["jobs"]},
            {c["id"]: c["do_notify_sms"] for c in state["clients"]})


def _flip(handle: Any, job: Any, target: str, state: bool) -> None:
    """Change the live state behind the audit's back, as another system would."""
    response = httpx.put(f"{handle.base_url}/api/apikeys/toggle_sms_notifications",
                         headers={"LOGIS-API-KEY": handle.api_key}, verify=handle.verify,
                         json={"job_id": job.job_id, "review_key": job.review_key,
                               "do_notify_sms": str(state).lower(), "update_target": target})
    response.raise_for_status()


def _mixed_rows(handle: Any) -> tuple[list[list[str]], set[str]]:
    """Rows for jobs and clients of the seed, half already in their desired state, half not,
    one job with both a job row and a client row, a duplicate and an unknown job; and the set
    of distinct valid jobs they name."""
    by_client: dict[str, list[Any]] = {}
    for job in handle.jobs:
        by_client.setdefault(job.client_id, []).append(job)
    pairs = [jobs[:2] for jobs in by_client.values() if len(jobs) >= 2]
    rows: list[list[str]] = []
    for i, (a, b) in enumerate(pairs[:4]):  # job rows: a in sync, b not (per the seed)
        rows.append([a.job_id, a.review_key, str(a.do_notify_sms).lower(), "job"])
        rows.append([b.job_id, b.review_key, str(not b.do_notify_sms).lower(), "job"])
        # client rows on jobs a: in sync for even i, would change for odd i
        want = a.client_do_notify_sms if i % 2 == 0 else not a.client_do_notify_sms
        rows.append([a.job_id, a.review_key, str(want).lower(), "client"])
    rows.append(list(rows[1]))  # a duplicate of a job row
    rows += unknown_rows(1)
    jobs = {r[0] for r in rows[:-1]}
    return rows, jobs


def test_one_get_per_distinct_job_no_put_and_statuses_match_the_server(
        any_sandbox_server: Any, tmp_path: Path) -> None:
    sandbox_server = any_sandbox_server
    rows, jobs = _mixed_rows(sandbox_server)
    flipped = next(j for j in sandbox_server.jobs if j.job_id == rows[0][0])
    _flip(sandbox_server, flipped, "job", not flipped.do_notify_sms)  # row 1 now would change
    before = len(sandbox_server.requests())
    job_state, client_state = _state(sandbox_server)
    client_of = {j.job_id: j.client_id for j in sandbox_server.jobs}

    audit = cli(sandbox_server, tmp_path, "audit", [write_input(tmp_path / "in.csv", rows)])

    assert audit.code == 1, audit.stderr  # the unknown job's row failed
    received = sandbox_server.requests(before)
    assert {r["method"] for r in received} == {"GET"}
    assert Counter(r["job_id"] for r in received) == Counter(jobs | {rows[-1][0]})
    assert audit.summary["requests_sent"] == len(received) == len(jobs) + 1
    assert _state(sandbox_server) == (job_state, client_state)  # nothing changed

    for row, report in zip(rows[:-2], audit.rows, strict=False):
        job, _, want, target = row
        current = job_state[job] if target == "job" else client_state[client_of[job]]
        expected = "in_sync" if current == (want == "true") else "would_change"
        assert report["status"] == expected, report
        assert report["confirmed_do_notify_sms"] == str(current).lower()
        assert report["entity_id"] == (job if target == "job" else client_of[job])
    assert {"in_sync", "would_change"} <= {r["status"] for r in audit.rows}
    assert {(r["update_target"], r["status"]) for r in audit.rows[:-2]} == {
        ("job", "in_sync"), ("job", "would_change"),
        ("client", "in_sync"), ("client", "would_change")}
    assert audit.rows[0]["status"] == "would_change"  # the live state, not the seed's
    assert audit.rows[-2]["status"] == "duplicate"
    assert (audit.rows[-1]["status"], audit.rows[-1]["error_code"]) == ("failed",
                                                                        "job_not_found")
    would_change = sum(r["status"] == "would_change" for r in audit.rows[:-2])
    assert audit.summary["run_needs"]["requests_needed"] == would_change
    assert "review key is not verified by an audit" in audit.stderr
    assert any("not verified" in note for note in audit.summary["notes"])

    # What the audit learnt (job -> client) now feeds the plan: two client rows for the two
    # jobs of one client asking different states are a conflict.
    a, b = rows[0], rows[1]
    assert client_of[a[0]] == client_of[b[0]]
    later = write_input(tmp_path / "later.csv", [[a[0], a[1], "true", "client"],
                                                 [b[0], b[1], "false", "client"]])
    validate = cli(sandbox_server, tmp_path, "validate", [later])
    assert validate.statuses() == ["conflict", "conflict"], validate.stderr
    assert {r["error_code"] for r in validate.rows} == {"conflicting_state"}


def test_after_a_run_the_audit_finds_every_sent_row_in_sync(
        sandbox_server: Any, tmp_path: Path) -> None:
    run = cli(sandbox_server, tmp_path, "run", [SAMPLE])
    assert run.code == 1, run.stderr  # the sample's bad rows, by design
    before = len(sandbox_server.requests())

    audit = cli(sandbox_server, tmp_path, "audit", [SAMPLE])

    received = sandbox_server.requests(before)
    assert {r["method"] for r in received} == {"GET"}
    assert len(received) == len({r["job_id"] for r in received}) == audit.summary["audit"]["jobs"]
    updated = [i for i, r in enumerate(run.rows) if r["status"] == "updated"]
    assert len(updated) == 272
    assert {audit.rows[i]["status"] for i in updated} == {"in_sync"}
    for a, r in zip(audit.rows, run.rows, strict=True):  # the plan's own statuses are run's
        if r["status"] in ("invalid", "duplicate", "superseded", "conflict"):
            assert a["status"] == r["status"]
    with StateStore.open(tmp_path / "state.sqlite", readonly=True) as store:
        assert [r.command for r in store.list_runs()] == ["audit", "run"]


def test_sample_spends_exactly_n_reads_and_reports_the_interval(
        sandbox_server: Any, tmp_path: Path) -> None:
    before = len(sandbox_server.requests())
    audit = cli(sandbox_server, tmp_path, "audit", [SAMPLE], "--sample", "25", "--seed", "4")

    # Exit 1: the sample file's invalid and conflict rows; the unsampled rows add nothing.
    assert audit.code == 1, audit.stderr
    assert not audit.by_status("failed")
    received = sandbox_server.requests(before)
    assert len(received) == 25 == audit.summary["requests_sent"]
    assert {r["method"] for r in received} == {"GET"}
    skipped = audit.by_status("not_attempted")
    assert skipped and {(r["error_code"], r["error_message"]) for r in skipped} == {
        ("", "not in the audit sample")}
    sample = audit.summary["sample"]
    low, high = sample["interval"]
    assert low <= sample["estimated_share_in_sync"] <= high
    assert sample["jobs_sampled"] == 25 and sample["confidence"] == 0.95
    assert "95% CI" in audit.stderr


def test_a_second_audit_on_a_locked_store_is_refused(
        sandbox_server: Any, tmp_path: Path) -> None:
    with StateStore.open(tmp_path / "state.sqlite") as store:
        store.acquire_lock("20261101T000000Z-abcdef", owner="batch-toggle audit x.csv")
        audit = cli(sandbox_server, tmp_path, "audit", [SAMPLE])
    assert audit.code == 2
    assert "in use by run 20261101T000000Z-abcdef" in audit.stderr
    assert sandbox_server.requests() == []


def test_no_key_is_a_usage_error_before_any_read(sandbox_server: Any, tmp_path: Path) -> None:
    audit = cli(sandbox_server, tmp_path, "audit", [SAMPLE], key=False)
    assert audit.code == 2
    assert "no API key" in audit.stderr
    assert sandbox_server.requests() == []


def _verbose(stderr: str) -> list[str]:
    """The -v lines of stderr (each starts with a UTC timestamp), without their timestamps."""
    stamp = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z ")
    return [line[m.end():] for line in stderr.splitlines() if (m := stamp.match(line))]


def _events(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.mark.parametrize("command", ["audit", "run"])
def test_a_stopped_audit_advises_auditing_again_never_resume_a_run_still_resume(
        sandbox_server: Any, tmp_path: Path, command: str) -> None:
    """Audit rejects --resume, so neither its -v lines nor its --events may advise it; the same
    stop and the same exhausted retries in a `run` keep their --resume advice."""
    seed = sandbox_server.jobs[:4]
    failing = seed[0].job_id
    # The first job's request fails 3 times (its attempts run out: "gave up"), the second's
    # is the 4th request, then --max-requests 4 stops the rest.
    sandbox_server.set_faults(scripted={failing: ["503", "503", "503"]})
    src = write_input(tmp_path / "in.csv", [[j.job_id, j.review_key, "false", "job"]
                                            for j in seed])
    events = tmp_path / "events.jsonl"

    result = cli(sandbox_server, tmp_path, command, [src], "--concurrency", "1",
                 "--max-attempts", "3", "--max-requests", "4", "--events", str(events), "-v")

    assert result.code == 4, result.stderr
    assert "Traceback" not in result.stderr
    lines = _verbose(result.stderr)
    (start,) = [x for x in lines if x.startswith("start: ")]
    (gave_up,) = [x for x in lines if x.startswith("gave up: ")]
    (stop,) = [x for x in lines if x.startswith("stop (exit 4): ")]
    (finish,) = [x for x in lines if x.startswith("finish: ")]
    assert f"job {failing} (job): server_error (gateway 503) after 3 attempts" in gave_up
    (stop_event,) = [e for e in _events(events) if e["event"] == "stop"]
    (plan_event,) = [e for e in _events(events) if e["event"] == "plan"]
    assert plan_event["command"] == command
    assert stop_event["code"] == "budget_exhausted"
    if command == "audit":
        assert start.startswith(f"start: audit {result.summary['run_id']}: 4 rows, 4 reads")
        assert gave_up.endswith("failed, retryable (auditing again reads it again)")
        assert stop.startswith("stop (exit 4): --max-requests 4 reached; audit again; ")
        assert finish.startswith(f"finish: audit {result.summary['run_id']}: exit 4, "
                                 "stopped early: the rest was not read; audit again")
        assert stop_event["message"] == "--max-requests 4 reached; audit again"
        assert "--resume" not in result.stderr
        assert "--resume" not in events.read_text(encoding="utf-8")
        assert "--resume" not in json.dumps(result.summary)
    else:
        assert start.startswith(f"start: run {result.summary['run_id']}: 4 rows, 4 requests")
        assert gave_up.endswith("failed, retryable (--resume --retry-failed sends it again)")
        assert stop.startswith("stop (exit 4): --max-requests 4 reached; resume with --resume; ")
        assert finish.startswith(f"finish: run {result.summary['run_id']}: exit 4, ")
        assert stop_event["message"] == "--max-requests 4 reached; resume with --resume"


@pytest.mark.parametrize("command", ["audit", "run"])
def test_a_refused_key_ends_with_a_stopped_line_naming_why(
        sandbox_server: Any, tmp_path: Path, command: str) -> None:
    """An audit whose key Logis refuses (403) says why it stopped, last on stderr, as a run
    does; its counts say they cover only what was read, never "0 units in sync" as an answer."""
    sandbox_server.set_key(sandbox_server.api_key, active=False)
    result = cli(sandbox_server, tmp_path, command, [SAMPLE])
    assert result.code == 3, result.stderr
    last = result.stderr.rstrip().splitlines()[-1]
    assert last.startswith("stopped: ") and "api_key_invalid" in last, result.stderr
    if command == "audit":
        (counts,) = [x for x in result.stderr.splitlines() if x.startswith("audit: ")]
        assert "among the jobs read before it stopped" in counts
