"""The CLI against servers that misbehave: it ends cleanly, with the right statuses, exit code
and a complete report, and never follows a redirect with the key.

Each server here is a few lines of raw asyncio on 127.0.0.1 (no framework in the way, so it can
do what no well-behaved server does: stream a body forever, answer half a response and hang up,
accept a request and never answer). The CLI runs as a subprocess, as an operator runs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.e2e

API_KEY = "hostile-test-key-0123456789"
TOGGLE = "/api/apikeys/toggle_sms_notifications"
JOBS = [(str(uuid.UUID(int=0x3F1C5A9E0B7D4E219C3A5D6E7F800000 + i)),
         str(uuid.UUID(int=0xA1B2C3D4E5F64A7B8C9D0E1F2A300000 + i))) for i in range(10)]
JOB_INDEX = {job: i for i, (job, _key) in enumerate(JOBS)}


# --- a tiny HTTP/1.1 server -------------------------------------------------------------------


@dataclass
class Seen:
    """One request as the server received it."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body or b"null")


Reply = Callable[["Seen", int, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[bool]]


@dataclass
class TinyServer:
    """An HTTP/1.1 server on 127.0.0.1 whose every answer is `reply(seen, n, reader, writer)`
    (n counts requests from 0); `reply` returns False to close the connection."""

    reply: Reply
    requests: list[Seen] = field(default_factory=list)
    connections: int = 0
    base_url: str = ""

    def __post_init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._tasks: set[asyncio.Task[Any]] = set()

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._start())
        self._ready.set()
        self._loop.run_forever()

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._connection, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.base_url = f"http://127.0.0.1:{port}"

    async def _connection(self, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        try:
            while (seen := await _read_request(reader)) is not None:
                n = len(self.requests)
                self.requests.append(seen)
                if not await self.reply(seen, n, reader, writer):
                    break
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._tasks.discard(task)
            with contextlib.suppress(Exception):
                writer.close()

    def start(self) -> TinyServer:
        self._thread.start()
        assert self._ready.wait(10), "tiny server did not start"
        return self

    def stop(self) -> None:
        async def shutdown() -> None:
            self._server.close()
            # A client that has gone (the CLI exited) may have left a request the loop has not
            # read yet on a busy machine: let each connection read what was sent, up to its
            # end, before counting (the tasks of closed connections end on their own).
            if self._tasks:
                await asyncio.wait(list(self._tasks), timeout=2)
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


async def _read_request(reader: asyncio.StreamReader) -> Seen | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    lines = head.decode("latin-1").split("\r\n")
    method, path, _ = lines[0].split(" ", 2)
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return Seen(method, path, headers, body)


def response(status: int, body: bytes = b"", headers: dict[str, str] | None = None,
             reason: str = "X") -> bytes:
    head = [f"HTTP/1.1 {status} {reason}", f"Content-Length: {len(body)}"]
    head += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def job_reply(seen: Seen, content_type: str = "application/json") -> bytes:
    """What Logis answers to a good toggle: the updated object showing the asked state."""
    req = seen.json()
    state = req["do_notify_sms"] == "true"
    if req["update_target"] == "job":
        obj = {"job": {"id": req["job_id"], "do_notify_sms": state, "client": "c-1"}}
    else:
        obj = {"end_client": {"id": "c-1", "do_notify_sms": state}}
    return response(200, json.dumps(obj).encode(), {"Content-Type": content_type})


def answer(make: Callable[[Seen, int], bytes], keep_alive: bool = True) -> Reply:
    async def reply(seen: Seen, n: int, _r: asyncio.StreamReader,
                    writer: asyncio.StreamWriter) -> bool:
        writer.write(make(seen, n))
        await writer.drain()
        return keep_alive

    return reply


@contextlib.contextmanager
def serving(reply: Reply) -> Iterator[TinyServer]:
    server = TinyServer(reply).start()
    try:
        yield server
    finally:
        server.stop()


# --- running the CLI --------------------------------------------------------------------------


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str
    report: list[dict[str, str]]
    summary: dict[str, Any]
    seconds: float
    max_rss_kb: int


def input_file(tmp: Path, n: int = 3, target: str = "job") -> Path:
    path = tmp / "in.csv"
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["job_id", "review_key", "do_notify_sms", "update_target"])
        for job, key in JOBS[:n]:
            writer.writerow([job, key, "false", target])
    return path


def run_cli(tmp: Path, base_url: str, *args: str, n: int = 3, timeout: float = 60.0,
            state: Path | None = None, inputs: Path | None = None) -> Run:
    """`batch-toggle run` as a subprocess; its report, summary, wall time and peak RSS."""
    inputs = inputs or input_file(tmp, n)
    report = tmp / "report.csv"
    for stale in (report, Path(f"{report}.summary.json")):
        stale.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "batch_toggle", "run", str(inputs), "--base-url", base_url,
           "--state", str(state or tmp / "state.sqlite"), "--report", str(report),
           "--max-rps", "200", "--no-progress", *args]
    env = {**os.environ, "LOGIS_API_KEY": API_KEY}
    code, out, err, seconds, rss = run_measured(cmd, env, tmp, timeout)
    assert "Traceback" not in err, err
    rows: list[dict[str, str]] = []
    summary: dict[str, Any] = {}
    if report.exists():
        with report.open(newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        summary = json.loads(Path(f"{report}.summary.json").read_text(encoding="utf-8"))
    return Run(code, out, err, rows, summary, seconds, rss)


def run_measured(cmd: list[str], env: dict[str, str], tmp: Path,
                 timeout: float) -> tuple[int, str, str, float, int]:
    """Run `cmd` to its end: (exit code, stdout, stderr, seconds, its own peak RSS in KiB).

    Reaped with os.wait4 so the peak RSS is this child's, not the largest of every child."""
    out_path, err_path = tmp / "cli.stdout", tmp / "cli.stderr"
    start = time.monotonic()
    with out_path.open("wb") as out, err_path.open("wb") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env)
    deadline = start + timeout
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() > deadline:
            proc.kill()
            os.wait4(proc.pid, 0)
            raise AssertionError(f"the CLI did not end within {timeout} s; stderr:\n"
                                 f"{err_path.read_text(errors='replace')}")
        time.sleep(0.01)
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
    return (proc.returncode, out_path.read_text(errors="replace"),
            err_path.read_text(errors="replace"), time.monotonic() - start, usage.ru_maxrss)


def row_of(seen: Seen) -> int:
    """Which input row (0-based) a toggle request is about."""
    return JOB_INDEX[seen.json()["job_id"]]


def statuses(run: Run) -> list[tuple[str, str]]:
    return [(r["status"], r["error_code"]) for r in run.report]


def assert_complete(run: Run, n: int) -> None:
    assert len(run.report) == n, run.stderr
    assert [r["source_row"] for r in run.report] == [str(i) for i in range(1, n + 1)]
    assert run.summary["rows"] == n


# --- redirects --------------------------------------------------------------------------------


REDIRECTS = (301, 302, 303, 307, 308)


def test_redirects_are_never_followed_and_stop_the_run(tmp_path: Path) -> None:
    """The key header and the review key would travel with a followed redirect: the target
    must receive nothing. A base URL that redirects does so for every row, so the run stops
    like an abort (exit 3) instead of spending one request per row."""
    n = 10
    with serving(answer(lambda s, k: response(200, b"{}"))) as target:
        location = f"{target.base_url}{TOGGLE}"

        def make(seen: Seen, k: int) -> bytes:
            status = REDIRECTS[row_of(seen) % len(REDIRECTS)]
            return response(status, b"", {"Location": location})

        with serving(answer(make)) as api:
            run = run_cli(tmp_path, api.base_url, "--max-attempts", "3", n=n)
        assert target.requests == [] and target.connections == 0, "the redirect was followed"
    assert run.code == 3
    assert_complete(run, n)
    failed = [r for r in run.report if r["status"] == "failed"]
    aborted = [r for r in run.report if r["status"] == "not_attempted"]
    assert len(failed) + len(aborted) == n
    assert 1 <= len(failed) <= 4, "only requests already in flight (--concurrency) may finish"
    assert {r["error_code"] for r in failed} == {"unexpected_response"}
    assert {r["error_code"] for r in aborted} == {"aborted"}
    assert all("not followed" in r["error_message"] for r in failed)
    assert {r["retryable"] for r in failed} == {"false"}
    assert len(api.requests) == len(failed), "a redirect is final: no retry"
    assert all(s.headers.get("logis-api-key") == API_KEY for s in api.requests)


# --- bodies -----------------------------------------------------------------------------------


GARBAGE = [
    (b"\x00\xff\xfe garbage \x80", "application/json"),
    (b"<html><body>502 Bad Gateway</body></html>", "application/json"),
    (b'{"job": "not an object"}', "application/json"),
    (b'{"ok": true}', "application/json"),
    (b"", "application/json"),
    (b"[" * 100_000, "application/json"),
    (b'{"job": {"do_notify_sms": "maybe"}}', "text/plain"),
    (b'{"end_client": {"do_notify_sms": false}}', "application/json"),  # wrong object
]


def test_200_with_garbage_is_retried_then_failed_retryable(tmp_path: Path) -> None:
    """Binary, HTML labelled JSON, the wrong object, empty, 100k nested brackets, a state that
    is not a boolean: one kind per row; each is retried, then failed with retryable true."""
    def make(seen: Seen, n: int) -> bytes:
        body, content_type = GARBAGE[row_of(seen)]
        return response(200, body, {"Content-Type": content_type})

    with serving(answer(make)) as api:
        run = run_cli(tmp_path, api.base_url, "--max-attempts", "2", "--concurrency", "2",
                      n=len(GARBAGE))
    assert run.code == 1
    assert_complete(run, len(GARBAGE))
    assert statuses(run) == [("failed", "unexpected_response")] * len(GARBAGE)
    assert {(r["retryable"], r["attempts"], r["http_status"]) for r in run.report} == {
        ("true", "2", "200")}
    assert len(api.requests) == 2 * len(GARBAGE)


CONTENT_TYPES = ["text/html", "application/octet-stream", "", "application/json; charset=latin-1"]


def test_a_good_body_under_a_wrong_content_type_is_still_read(tmp_path: Path) -> None:
    """Only the body decides: Logis' JSON behind a proxy that mislabels it is still an answer."""
    with serving(answer(lambda s, n: job_reply(s, CONTENT_TYPES[row_of(s)]))) as api:
        run = run_cli(tmp_path, api.base_url, n=len(CONTENT_TYPES))
    assert run.code == 0, run.stderr
    assert statuses(run) == [("updated", "")] * len(CONTENT_TYPES)
    assert {r["confirmed_do_notify_sms"] for r in run.report} == {"false"}


def test_a_huge_streamed_body_is_capped_and_memory_stays_bounded(tmp_path: Path) -> None:
    """A 200 that streams without end (Content-Length says 2 GB): the client reads at most
    about 1 MiB of it, drops the connection, and fails the row retryable."""
    sent: list[int] = []

    async def endless(seen: Seen, n: int, _r: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 2000000000\r\n\r\n" + b'{"job": {"pad": "')
        chunk = b"a" * 65536
        total = 0
        with contextlib.suppress(ConnectionError):
            while total < 2_000_000_000:
                writer.write(chunk)
                await writer.drain()
                total += len(chunk)
        sent.append(total)
        return False

    with serving(endless) as api:
        baseline = run_cli(tmp_path, api.base_url, "--dry-run")  # same process, no body
        run = run_cli(tmp_path, api.base_url, "--max-attempts", "2", "--concurrency", "3",
                      "--timeout", "20")
    assert run.code == 1, run.stderr
    assert_complete(run, 3)
    assert statuses(run) == [("failed", "unexpected_response")] * 3
    assert "over the 1,048,576-byte cap" in run.report[0]["error_message"]
    assert len(sent) == 6 and max(sent) < 64 << 20, "the client hung up early"
    assert run.seconds < 15
    # Six 2 GB bodies were offered; the process grew by no more than a few MiB per stream.
    print(f"peak RSS: dry run {baseline.max_rss_kb} KiB, huge bodies {run.max_rss_kb} KiB")
    assert run.max_rss_kb - baseline.max_rss_kb < 64 * 1024, (run.max_rss_kb,
                                                             baseline.max_rss_kb)


# --- Retry-After ------------------------------------------------------------------------------


USELESS_RETRY_AFTER = ["Wed, 21 Oct 2015 07:28:00 GMT", "-5", "soon", ""]


def test_retry_after_in_the_past_negative_or_junk_falls_back_to_the_backoff(
        tmp_path: Path) -> None:
    """Each row's first answer is a 429 whose Retry-After is useless (a past date, negative,
    a word, junk, absent): the run waits its own backoff (1 s) each time and goes on."""
    def make(seen: Seen, n: int) -> bytes:
        row = row_of(seen)
        if sum(1 for s in api.requests[:n] if row_of(s) == row) == 0:
            value = USELESS_RETRY_AFTER[row]
            headers = {"Retry-After": value} if value else {}
            return response(429, b'{"error": "Rate limit exceeded"}', headers)
        return job_reply(seen)

    n = len(USELESS_RETRY_AFTER)
    with serving(answer(make)) as api:
        run = run_cli(tmp_path, api.base_url, "--concurrency", "1", n=n)
    assert run.code == 0, run.stderr
    assert statuses(run) == [("updated", "")] * n
    assert run.summary["responses_429"] == n
    assert len(api.requests) == 2 * n, "each 429'd row is sent again, once"
    assert run.seconds > 0.9 * n, "each useless Retry-After still cost a backoff pause"
    assert run.seconds < 30


def test_an_enormous_retry_after_ends_the_run_resumably(tmp_path: Path) -> None:
    """Retry-After over an hour: exit 4, not a day's sleep; then a resume against a server
    that has recovered finishes the job. 999,999,999 s (31 years) is no time a resume can be
    told to start at: the stop says so and gives none (a sane one is tested in test_runner)."""
    def make(seen: Seen, n: int) -> bytes:
        return response(429, b'{"error": "Rate limit exceeded"}', {"Retry-After": "999999999"})

    with serving(answer(make)) as api:
        run = run_cli(tmp_path, api.base_url, "--concurrency", "1")
    assert run.code == 4, run.stderr
    assert_complete(run, 3)
    assert statuses(run) == [("not_attempted", "budget_exhausted")] * 3
    assert run.summary["stopped"]["resume_after"] is None, run.summary["stopped"]
    assert "more than a week" in run.summary["stopped"]["message"]
    assert len(api.requests) == 1
    with serving(answer(lambda s, n: job_reply(s))) as api:
        resumed = run_cli(tmp_path, api.base_url, "--resume", "--concurrency", "1")
    assert resumed.code == 0, resumed.stderr
    assert statuses(resumed) == [("updated", "")] * 3
    assert resumed.report[0]["run_id"] == run.report[0]["run_id"]


# --- silence and hang-ups ---------------------------------------------------------------------


async def _never_answer(seen: Seen, n: int, reader: asyncio.StreamReader,
                        writer: asyncio.StreamWriter) -> bool:
    """Take the request, say nothing, wait for the client to give up."""
    with contextlib.suppress(ConnectionError):
        await reader.read()
    return False


def test_a_server_that_never_answers_times_out_and_fails_retryable(tmp_path: Path) -> None:
    with serving(_never_answer) as api:
        run = run_cli(tmp_path, api.base_url, "--timeout", "0.3", "--max-attempts", "2",
                      "--concurrency", "1", n=2)
    assert run.code == 1, run.stderr
    assert_complete(run, 2)
    assert statuses(run) == [("failed", "timeout")] * 2
    assert {(r["retryable"], r["attempts"]) for r in run.report} == {("true", "2")}
    assert len(api.requests) == 4
    assert run.seconds < 10


def test_a_server_that_never_answers_anyone_is_an_outage_not_a_hang(tmp_path: Path) -> None:
    """Every request times out: the run pauses as for an outage; Ctrl-C (SIGINT) still ends it
    promptly with exit 130 and a complete report."""
    inputs = input_file(tmp_path, 3)
    report = tmp_path / "report.csv"
    cmd = [sys.executable, "-m", "batch_toggle", "run", str(inputs), "--base-url", "",
           "--state", str(tmp_path / "state.sqlite"), "--report", str(report),
           "--timeout", "0.3", "--concurrency", "3", "--max-rps", "100", "--no-progress"]
    with serving(_never_answer) as api:
        cmd[cmd.index("--base-url") + 1] = api.base_url
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "LOGIS_API_KEY": API_KEY})
        deadline = time.monotonic() + 20
        while len(api.requests) < 6 and time.monotonic() < deadline:  # in the outage by now
            time.sleep(0.05)
        assert len(api.requests) >= 6
        proc.send_signal(2)
        _out, err = proc.communicate(timeout=15)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    with report.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 3
    assert {r["status"] for r in rows} <= {"failed", "not_attempted"}


CUTS = ["after-status-line", "mid-headers", "mid-body", "no-bytes"]


def test_a_server_that_hangs_up_mid_response(tmp_path: Path) -> None:
    """Each row's first answer is cut off somewhere (one place per row); the retry succeeds
    (the PUT is idempotent)."""
    async def reply(seen: Seen, n: int, _r: asyncio.StreamReader,
                    writer: asyncio.StreamWriter) -> bool:
        full = job_reply(seen)
        if any(s.body == seen.body for s in api.requests[:n]):
            writer.write(full)
            await writer.drain()
            return True
        cut = CUTS[row_of(seen)]
        part = {"after-status-line": full[: full.index(b"\r\n") + 2],
                "mid-headers": full[: full.index(b"\r\n\r\n") - 3],
                "mid-body": full[: len(full) - 10], "no-bytes": b""}[cut]
        writer.write(part)
        await writer.drain()
        return False

    with serving(reply) as api:
        run = run_cli(tmp_path, api.base_url, "--concurrency", "2", n=len(CUTS))
    assert run.code == 0, run.stderr
    assert_complete(run, len(CUTS))
    assert statuses(run) == [("updated", "")] * len(CUTS)
    assert {r["attempts"] for r in run.report} == {"2"}
    assert len(api.requests) == 2 * len(CUTS)


def test_a_server_that_always_hangs_up_mid_body_fails_rows_retryable(tmp_path: Path) -> None:
    async def reply(seen: Seen, n: int, _r: asyncio.StreamReader,
                    writer: asyncio.StreamWriter) -> bool:
        full = job_reply(seen)
        writer.write(full[: len(full) // 2])
        await writer.drain()
        return False

    with serving(reply) as api:
        run = run_cli(tmp_path, api.base_url, "--concurrency", "1", "--max-attempts", "2", n=2)
    assert run.code == 1, run.stderr
    assert statuses(run) == [("failed", "network_error")] * 2
    assert {r["retryable"] for r in run.report} == {"true"}


def test_5xx_with_bodies_of_every_kind_then_success(tmp_path: Path) -> None:
    bodies = [(500, b"<html>oops</html>", "text/html"), (502, b"", ""),
              (504, b"\xff\xfe\x00", "application/octet-stream")]

    def make(seen: Seen, n: int) -> bytes:
        if n < len(bodies):
            status, body, ctype = bodies[n]
            return response(status, body, {"Content-Type": ctype} if ctype else {})
        return job_reply(seen)

    with serving(answer(make)) as api:
        run = run_cli(tmp_path, api.base_url, "--concurrency", "1", "--max-attempts", "5", n=1)
    assert run.code == 0, run.stderr
    assert statuses(run) == [("updated", "")]
    assert run.report[0]["attempts"] == str(len(bodies) + 1)
