"""-v/-vv end to end: the real CLI in a subprocess against the sandbox on a loopback socket,
with injected faults, so the lines an operator reads come from real retries, 429s, budget
waits, outages, stops and resumes (`-v/--verbose`, `--quiet`).

Every verbose line starts with a UTC timestamp; the default notices (plan, summary) do not,
which is how "no verbose line without -v" and "--quiet suppresses them" are checked.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from . import FAST, job_rows, puts, run_cli, write_input

pytestmark = pytest.mark.e2e

STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (.*)$")


def verbose_lines(stderr: str) -> list[str]:
    """The -v lines of a run's stderr, without their timestamps."""
    return [m.group(1) for line in stderr.splitlines() if (m := STAMP.match(line))]


def with_prefix(lines: list[str], prefix: str) -> list[str]:
    return [line for line in lines if line.startswith(prefix)]


@pytest.mark.parametrize("flags", [(), ("-v",), ("-vv",), ("--quiet", "-vv")],
                         ids=["default", "v", "vv", "quiet-wins"])
def test_retries_pauses_and_rows_at_each_verbosity(sandbox_server: Any, tmp_path: Path,
                                                    flags: tuple[str, ...]) -> None:
    seed = sandbox_server.jobs[:8]
    a, b, c, d = (j.job_id for j in seed[:4])
    # a: two 503s then fine; b: a dropped connection; c: a 429 with Retry-After 1;
    # d: 503 until its 3 attempts are spent (failed, retryable).
    sandbox_server.set_faults(scripted={a: ["503", "503"], b: ["reset"], c: ["429:1"],
                                        d: ["503", "503", "503"]})
    src = write_input(tmp_path / "in.csv", job_rows(seed))

    run = run_cli(sandbox_server, tmp_path, [src], *FAST, "--max-attempts", "3",
                  "--concurrency", "2", *flags)

    assert run.code == 1, run.stderr  # d failed
    assert "Traceback" not in run.stderr
    assert sandbox_server.api_key not in run.stderr + run.stdout
    assert run.stdout == ""  # stdout stays free for pipes
    lines = verbose_lines(run.stderr)
    level = 0 if "--quiet" in flags else sum(f.count("v") for f in flags)
    if level == 0:
        assert lines == []
        assert "retry:" not in run.stderr and "429:" not in run.stderr
        if "--quiet" in flags:
            assert "plan:" not in run.stderr  # --quiet leaves only errors
        return

    run_id = run.summary["run_id"]
    assert lines[0].startswith(f"start: run {run_id}: 8 rows, 8 requests")
    assert lines[-1].startswith(f"finish: run {run_id}: exit 1, attention")
    retries = with_prefix(lines, "retry: ")
    assert len(retries) == 2 + 1 + 2
    # The run's retries are every request beyond a unit's first: these, and c's re-send after
    # its 429.
    assert run.summary["retries"] == len(retries) + 1
    assert run.summary["requests_by_reason"] == {"first": 8, "retry": 5, "after_429": 1}
    assert with_prefix(retries, f"retry: job {a} (job): server_error (gateway 503), attempt 1/3 "
                                "failed; next try in ")
    assert with_prefix(retries, f"retry: job {a} (job): server_error (gateway 503), attempt 2/3 ")
    assert with_prefix(retries, f"retry: job {b} (job): network_error (no answer), "
                                "attempt 1/3 failed")
    assert len([r for r in retries if f"job {d} " in r]) == 2  # the third attempt is final
    assert with_prefix(lines, "429: every worker pauses 1.0 s (as Retry-After asks)")
    rows = with_prefix(lines, "row ")
    if level == 1:
        assert rows == []
        (gave_up,) = with_prefix(lines, "gave up: ")
        assert gave_up == (f"gave up: row {src}:4: job {d} (job): server_error (gateway 503) "
                           "after 3 attempts; failed, retryable (--resume --retry-failed sends "
                           "it again)")
        return
    assert len(rows) == 8  # one per row outcome, each naming its file:row and job
    for i, job in enumerate(seed, start=1):
        (line,) = [r for r in rows if f"job {job.job_id} " in r]
        assert line.startswith(f"row {src}:{i}: job {job.job_id} (job): ")
        assert re.search(r"\d+ ms(, retryable)?\)$", line), line
    assert with_prefix(rows, f"row {src}:1: job {a} (job): updated (HTTP 200, 3 attempts, ")
    # c: its 429, then the re-send: two requests on its row.
    assert with_prefix(rows, f"row {src}:3: job {c} (job): updated (HTTP 200, 2 attempts, ")
    (failed,) = with_prefix(rows, f"row {src}:4: job {d} (job): failed server_error (gateway 503, "
                                  "3 attempts, ")
    assert failed.endswith(" ms, retryable)")


def test_budget_wait_canary_stop_and_resume_are_told(sandbox_server: Any,
                                                     tmp_path: Path) -> None:
    seed = sandbox_server.jobs[:6]
    src = write_input(tmp_path / "in.csv", job_rows(seed))
    # 3 requests per 2 s: the canary's 2 and one more go at once, then the window is full.
    args = (*FAST, "--rate", "3/2s", "--canary", "2", "--max-requests", "4", "--resume", "-v")

    first = run_cli(sandbox_server, tmp_path, [src], *args)

    assert first.code == 4, first.stderr  # --max-requests: stopped early, resumable
    lines = verbose_lines(first.stderr)
    order = [next(i for i, line in enumerate(lines) if line.startswith(prefix)) for prefix in (
        "resume: no unfinished run with these inputs and plan options; a new run starts",
        "start: run ",
        "canary: 2 units sent, 0 failed permanently: going on with the rest",
        "budget: the --rate window is full; the next request goes in ",
        "stop (exit 4): --max-requests 4 reached; resume with --resume; in-flight rows "
        "finish, the rest are not_attempted (budget_exhausted)",
        "finish: run ")]
    assert order == sorted(order), lines
    assert len(puts(sandbox_server)) == 4

    second = run_cli(sandbox_server, tmp_path, [src], *FAST, "--resume", "-v")

    assert second.code == 0, second.stderr
    assert second.summary["run_id"] == first.summary["run_id"]
    assert with_prefix(verbose_lines(second.stderr),
                       f"resume: run {first.summary['run_id']}: 4 units already have an "
                       "outcome, 2 to send")


def test_an_outage_is_told_as_it_happens(sandbox_server: Any, tmp_path: Path) -> None:
    # Every request dropped 6 times in a row: with --concurrency 2 the run declares an outage
    # after 5 and probes instead of failing rows; then the server answers again.
    sandbox_server.set_faults(scripted={"*": ["reset"] * 6})
    src = write_input(tmp_path / "in.csv", job_rows(sandbox_server.jobs[:4]))

    run = run_cli(sandbox_server, tmp_path, [src], *FAST, "--concurrency", "2", "-v")

    assert run.code == 0, run.stderr
    outage = with_prefix(verbose_lines(run.stderr), "outage: every recent request got no "
                                                    "answer or a gateway error (for ")
    assert outage, run.stderr
    # A fresh store and a server that never answered yet: a first contact, which stops after
    # its one-minute grace rather than the 15-minute outage limit (retry.FirstContact).
    assert all(line.endswith("it stops after 1 min 0 s of outage") for line in outage)
