"""The send loop (runner.Runner) against a fake Logis on httpx.MockTransport, in virtual time.

Every test checks two things: the outcomes the runner hands the committer, and what the
"server" received (each request's arrival and response time on the virtual clock, its body and
headers). Nothing here sleeps in real time: backoffs, 429 pauses and the budget's windows are
timers on a VirtualTimeLoop (tests/helpers_time.py) that jump instead of waiting.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import signal
import ssl
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from email.utils import formatdate
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from helpers_time import run_virtual, vclock
from test_limiter import max_in_window  # the same closed-window count the limiter is held to

from batch_toggle import vocab
from batch_toggle.clock import Clock, parse_utc
from batch_toggle.config import Rate, SendOptions
from batch_toggle.errors import ExitCode
from batch_toggle.outcome import Outcome
from batch_toggle.plan.units import Units
from batch_toggle.send.limiter import DAY, Budget, default_margin
from batch_toggle.send.operations import TOGGLE_PATH
from batch_toggle.send.runner import RunHooks, Runner, Stop
from batch_toggle.state.committer import Committer, Finished
from batch_toggle.state.sqlite import StateStore

API_KEY = "sk-test-7f3a9c21e5b8"
BASE_URL = "https://logis.test"
EPOCH = 1_780_000_000.0  # the fake wall clock is EPOCH + virtual time
VIRTUAL_LIMIT = 30 * 86400.0  # a run that has not ended after a virtual month is stuck

ERROR_TEXT = {
    400: "Missing required fields",
    401: "Incorrect review_key",
    403: "Invalid or inactive LOGIS-API-KEY",
    404: "Job not found",
    429: "Rate limit exceeded",
    500: "Internal server error",
    503: "Service unavailable",
}
DAILY_LIMITED = "Rate limit exceeded: the user's global daily limit was reached"

# The one timestamp form of every output: UTC, milliseconds, a Z.
TIMESTAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"


# --- a fake Logis -----------------------------------------------------------------------------


@dataclass
class Req:
    """One request as the server saw it."""

    seq: int
    t: float  # arrival, virtual seconds
    job_id: str
    target: str
    desired: bool
    body: dict[str, Any]
    headers: httpx.Headers
    method: str
    path: str
    t_end: float | None = None  # when the answer (or the failure) left
    status: int | None = None  # None: the connection failed


# "ok" | "mismatch" | int | (int, text) | (int, text, headers) | exception class | a function
# of the request that returns the exception to raise (for one with a chain of causes)
Answer = Any


@dataclass
class FakeLogis:
    """Answers like Logis. `script[job_id]` is consumed one answer per request for that job (by
    job and target as `script[(job_id, target)]` first); `by_seq[n]` answers the n-th request
    (0-based) whatever its job; anything unscripted gets a 200 showing the desired state.
    `latency` is seconds of virtual time per request (a number or a function of the request)."""

    script: dict[Any, list[Answer]] = field(default_factory=dict)
    by_seq: dict[int, Answer] = field(default_factory=dict)
    latency: float | Callable[[Req], float] = 0.0
    requests: list[Req] = field(default_factory=list)
    events: list[tuple[str, int]] = field(default_factory=list)  # ("start"|"end", seq)
    in_flight: int = 0
    max_in_flight: int = 0

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        req = Req(len(self.requests), vclock(), body["job_id"], body["update_target"],
                  body["do_notify_sms"] == "true", body, request.headers, request.method,
                  request.url.path)
        self.requests.append(req)
        self.events.append(("start", req.seq))
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            answer = self._answer_for(req)
            delay = self.latency(req) if callable(self.latency) else self.latency
            if delay:
                await asyncio.sleep(delay)
            response = self._respond(answer, req, request)
            req.status = response.status_code
            return response
        finally:
            self.in_flight -= 1
            req.t_end = vclock()
            self.events.append(("end", req.seq))

    def _answer_for(self, req: Req) -> Answer:
        if req.seq in self.by_seq:
            return self.by_seq[req.seq]
        for key in ((req.job_id, req.target), req.job_id):
            queue = self.script.get(key)
            if queue:
                return queue.pop(0)
        return "ok"

    @staticmethod
    def _respond(answer: Answer, req: Req, request: httpx.Request) -> httpx.Response:
        if isinstance(answer, type) and issubclass(answer, httpx.TransportError):
            raise answer(f"simulated {answer.__name__}", request=request)
        if callable(answer):
            raise answer(request)
        if answer in ("ok", "mismatch"):
            state = req.desired if answer == "ok" else not req.desired
            if req.target == "job":
                obj = {"job": {"id": req.job_id, "status": "scheduled", "do_notify_sms": state,
                               "client": client_of(req.job_id), "address_detail": {}}}
            else:
                obj = {"end_client": {"id": client_of(req.job_id), "do_notify_sms": state,
                                      "address_detail": {}}}
            return httpx.Response(200, json=obj)
        if isinstance(answer, int):
            answer = (answer, ERROR_TEXT[answer])
        status, text, *rest = answer
        return httpx.Response(status, json={"error": text}, headers=rest[0] if rest else None)

    # --- what the server saw ------------------------------------------------------------

    def sent(self) -> list[tuple[str, str]]:
        return [(r.job_id, r.target) for r in self.requests]

    def arrivals(self) -> list[float]:
        return [r.t for r in self.requests]


def client_of(job_id: str) -> str:
    return "C-" + job_id


def review_key(i: int) -> str:
    return f"{i:08x}-1a2b-4c3d-8e4f-{i * 7919:012x}"


def make_units(specs: Sequence[tuple[str, str, bool]],
               after: dict[int, int] | None = None) -> Units:
    """Units from (job_id, update_target, desired) in send order; `after[u] = v`: unit u waits
    for unit v (client before job)."""
    n = len(specs)
    deps = np.full(n, -1, dtype=np.int64)
    for u, v in (after or {}).items():
        deps[u] = v
    return Units(
        row=np.arange(n, dtype=np.int64) * 3,  # report rows need not equal unit indices
        job_id=[j for j, _, _ in specs],
        review_key=[review_key(int(j[1:])) for j, _, _ in specs],
        do_notify_sms=np.array([d for _, _, d in specs], dtype=bool),
        update_target=[t for _, t, _ in specs],
        after=deps,
    )


def jobs(n: int, target: str = "job", desired: bool = False, start: int = 0) -> Units:
    return make_units([(job_name(i), target, desired) for i in range(start, start + n)])


def job_name(i: int) -> str:
    return f"J{i:05d}"


def paired_units(n: int) -> Units:
    """n jobs with both units: the client update (even index) before the job update."""
    specs, after = [], {}
    for i in range(n):
        specs += [(job_name(i), "client", i % 2 == 0), (job_name(i), "job", i % 3 == 0)]
        after[2 * i + 1] = 2 * i
    return make_units(specs, after)


# --- running it ---------------------------------------------------------------------------------


@dataclass
class Result:
    runner: Runner
    committer: Committer
    logis: FakeLogis
    units: Units
    hook_events: list[tuple[str, dict[str, Any], float, int]]  # kind, data, time, requests seen
    elapsed: float
    snapshot: dict[str, Any]  # progress_snapshot() at the end of the run
    committed: list[Finished]  # what the committer passed on after committing, in order

    @property
    def stop(self) -> Stop | None:
        return self.runner.stop

    @property
    def outcomes(self) -> dict[int, Outcome]:
        return self.committer.outcomes

    def unit(self, job_id: str, target: str = "job") -> int:
        return next(u for u in range(len(self.units))
                    if self.units.job_id[u] == job_id and self.units.update_target[u] == target)

    def outcome(self, job_id: str, target: str = "job") -> Outcome:
        return self.outcomes[self.unit(job_id, target)]

    def requests_for(self, job_id: str, target: str = "job") -> list[Req]:
        return [r for r in self.logis.requests if (r.job_id, r.target) == (job_id, target)]

    def seen(self, status: int) -> list[tuple[float, int]]:
        """(time, requests started so far) when the runner saw each response of `status`."""
        return [(t, n) for kind, d, t, n in self.hook_events
                if kind == "request" and d["http_status"] == status]

    def report(self) -> dict[int, Outcome]:
        """Every unit's outcome as the report would show it (unsent ones filled)."""
        unsent = self.runner.unsent_outcome()
        return {u: self.outcomes.get(u, unsent) for u in range(len(self.units))}


def run_units(units: Units, logis: FakeLogis, *, store: StateStore | None = None,
              run_id: str = "run-test", during: Callable[[Runner], object] | None = None,
              todo: Iterable[int] | None = None, signals: bool = False,
              origin: float = 0.0, answered_before: bool = False,
              hooks: RunHooks | None = None, **options: Any) -> Result:
    """Send `units` through a Runner against `logis`; options are SendOptions fields (defaults
    here: no --max-rps pacing, concurrency 4). `during(runner)` runs once the run has begun.
    `origin`: where the monotonic clock starts (the wall clock starts at EPOCH whatever it is).
    `answered_before`: the base URL answered an earlier run (retry.FirstContact); `hooks`:
    its `explain` and `answered` are used (events are always recorded here)."""
    opts: dict[str, Any] = {"base_url": BASE_URL, "max_rps": 0, "concurrency": 4}
    opts.update(options)
    send_options = SendOptions(**opts)
    hook_events: list[tuple[str, dict[str, Any], float, int]] = []

    async def main() -> Result:
        budget = Budget.from_options(send_options, clock=vclock, sleep=asyncio.sleep)
        committed: list[Finished] = []
        committer = Committer(store, run_id, on_committed=committed.append)
        run_hooks = RunHooks(event=lambda kind, data: hook_events.append(
            (kind, dict(data), vclock(), len(logis.requests))))
        if hooks is not None:
            run_hooks.explain, run_hooks.answered = hooks.explain, hooks.answered
        clock = Clock(mono=vclock, wall=lambda: EPOCH + (vclock() - origin),
                      sleep=asyncio.sleep)
        transport = httpx.MockTransport(logis)
        async with httpx.AsyncClient(transport=transport, follow_redirects=False) as client:
            runner = Runner(units, client=client, api_key=API_KEY, options=send_options,
                            budget=budget, committer=committer, hooks=run_hooks,
                            clock=clock, rng=random.Random(0),
                            review_key_hash=store.review_key_hash if store else None,
                            run_id=run_id, answered_before=answered_before)
            committer.start()
            if during is not None:
                during(runner)
            t0 = vclock()
            sending = runner.run(list(range(len(units))) if todo is None else list(todo))
            try:
                if signals:
                    with runner.signals():
                        await asyncio.wait_for(sending, VIRTUAL_LIMIT)
                else:
                    await asyncio.wait_for(sending, VIRTUAL_LIMIT)
            finally:
                runner.close()
                await committer.close()
            return Result(runner, committer, logis, units, hook_events, vclock() - t0,
                          runner.progress_snapshot(), committed)

    return run_virtual(main, origin=origin)


def stop_at(t: float, stop: Stop) -> Callable[[Runner], object]:
    """A `during` hook: request `stop` at virtual time t (as SIGINT would)."""
    return lambda runner: asyncio.get_running_loop().call_at(t, runner.request_stop, stop)


def by_job_latency(spread: float, seed: int = 1) -> Callable[[Req], float]:
    """A fixed pseudo-random latency per (job, target, attempt), so completions interleave."""
    def latency(req: Req) -> float:
        return random.Random(f"{seed}:{req.job_id}:{req.target}:{req.seq}").uniform(0, spread)
    return latency


# --- the happy path -------------------------------------------------------------------------


def test_every_unit_is_sent_exactly_once_with_the_right_request() -> None:
    units = make_units([(job_name(i), "job" if i % 3 else "client", i % 2 == 0)
                        for i in range(30)])
    logis = FakeLogis(latency=by_job_latency(2.0))
    res = run_units(units, logis, concurrency=4)

    assert res.stop is None
    assert sorted(logis.sent()) == sorted(zip(units.job_id, units.update_target, strict=True))
    assert logis.max_in_flight <= 4 and logis.max_in_flight > 1
    assert res.runner.counters.requests == 30 and res.runner.counters.retries == 0
    for req in logis.requests:
        u = res.unit(req.job_id, req.target)
        assert req.method == "PUT" and req.path == TOGGLE_PATH
        assert req.headers["LOGIS-API-KEY"] == API_KEY
        assert req.headers["content-type"] == "application/json"
        assert req.body == {"job_id": units.job_id[u], "review_key": units.review_key[u],
                            "do_notify_sms": "true" if units.do_notify_sms[u] else "false",
                            "update_target": units.update_target[u]}
    for u in range(30):
        o = res.outcomes[u]
        assert o.status == vocab.UPDATED and o.error_code is None
        assert o.attempts == 1 and o.http_status == 200
        assert o.confirmed_do_notify_sms == bool(units.do_notify_sms[u])
        expected_entity = (units.job_id[u] if units.update_target[u] == "job"
                           else client_of(units.job_id[u]))
        assert o.entity_id == expected_entity
        assert o.sent_at is not None and re.fullmatch(TIMESTAMP, o.sent_at)
    snapshot = res.snapshot
    assert snapshot["total"] == 30 and snapshot["requests"] == 30 and snapshot["failures"] == 0
    # Everything reached the committer and came out committed, with its report row.
    assert sorted(f.unit for f in res.committed) == list(range(30))
    assert all(f.row == int(units.row[f.unit]) and f.outcome == res.outcomes[f.unit]
               and f.ledger is None for f in res.committed)  # no store: no ledger


def test_an_empty_todo_sends_nothing() -> None:
    logis = FakeLogis()
    res = run_units(jobs(3), logis, todo=[])
    assert logis.requests == [] and res.outcomes == {} and res.stop is None


# --- one answer, one outcome ----------------------------------------------------------------


def test_each_response_class_gives_its_status_and_code_and_is_not_retried() -> None:
    cases = {  # job -> (answer, status, error_code, retryable, http_status)
        job_name(0): ("ok", vocab.UPDATED, None, None, 200),
        job_name(1): ("mismatch", vocab.MISMATCH, None, False, 200),
        job_name(2): (400, vocab.FAILED, "bad_request", False, 400),
        job_name(3): (401, vocab.FAILED, "incorrect_review_key", False, 401),
        job_name(4): (404, vocab.FAILED, "job_not_found", False, 404),
        # Logis' sibling endpoints answer a wrong review key with 404 + "review_key" text.
        job_name(5): ((404, "Invalid job_id or review_key"), vocab.FAILED,
                      "incorrect_review_key", False, 404),
    }
    units = make_units([(job, "job", True) for job in cases] + [(job_name(6), "client", True)])
    logis = FakeLogis(script={job: [answer] for job, (answer, *_) in cases.items()}
                      | {(job_name(6), "client"): ["mismatch"]}, latency=0.2)
    res = run_units(units, logis, concurrency=2, max_attempts=5)

    assert res.stop is None
    assert len(logis.requests) == len(units)  # none retried
    for job, (_answer, status, code, retryable, http) in cases.items():
        o = res.outcome(job)
        assert (o.status, o.error_code, o.retryable, o.http_status, o.attempts) == \
            (status, code, retryable, http, 1), job
    mismatch = res.outcome(job_name(1))
    assert mismatch.confirmed_do_notify_sms is False and mismatch.entity_id == job_name(1)
    assert "do_notify_sms=false" in (mismatch.error_message or "")
    client = res.outcome(job_name(6), "client")
    assert client.status == vocab.MISMATCH and client.entity_id == client_of(job_name(6))
    assert res.runner.counters.failures == 4


def test_5xx_is_retried_with_backoff_up_to_max_attempts_then_failed_retryable() -> None:
    logis = FakeLogis(script={job_name(0): [500] * 10, job_name(1): [503, 503, "ok"]})
    res = run_units(jobs(2), logis, concurrency=2, max_attempts=4)

    assert res.stop is None
    failed = res.outcome(job_name(0))
    assert (failed.status, failed.error_code, failed.retryable, failed.http_status,
            failed.attempts) == (vocab.FAILED, "server_error", True, 500, 4)
    cured = res.outcome(job_name(1))
    assert (cured.status, cured.attempts) == (vocab.UPDATED, 3)
    times = [r.t for r in res.requests_for(job_name(0))]
    assert len(times) == 4  # exactly max_attempts requests, no more
    gaps = np.diff(times)
    # Full jitter: the k-th wait is uniform(0, 0.5 * 2**(k-1)).
    assert all(0 <= g <= 0.5 * 2**k + 1e-9 for k, g in enumerate(gaps))
    assert res.runner.counters.retries == 3 + 2
    assert res.runner.counters.requests == 7


def test_a_timeout_is_retried_and_reported_as_timeout_when_attempts_run_out() -> None:
    slow = {job_name(0): 100.0}  # virtual seconds, beyond --timeout

    def latency(req: Req) -> float:
        return slow.get(req.job_id, 0.0) if req.seq < 3 else 0.0

    logis = FakeLogis(latency=latency)
    res = run_units(jobs(1), logis, concurrency=1, timeout=5.0, max_attempts=2)
    o = res.outcome(job_name(0))
    assert (o.status, o.error_code, o.retryable, o.attempts) == \
        (vocab.FAILED, "timeout", True, 2)
    assert len(logis.requests) == 2
    # Each attempt was cut at --timeout, not left to run for its 100 s.
    assert res.elapsed < 2 * 5.0 + 1.0


# --- 429 ------------------------------------------------------------------------------------


def test_429_requeues_the_unit_pauses_every_worker_and_honours_retry_after() -> None:
    logis = FakeLogis(by_seq={2: (429, ERROR_TEXT[429], {"Retry-After": "7"})}, latency=0.5)
    res = run_units(jobs(8), logis, concurrency=3, max_attempts=3)

    assert res.stop is None
    limited = logis.requests[2]
    assert limited.status == 429
    # Every unit updated, the limited one too; its `attempts` counts both its requests (the
    # 429 and the re-send), and the run's retries count the re-send.
    assert all(o.status == vocab.UPDATED for o in res.outcomes.values()) and len(res.outcomes) == 8
    assert res.outcome(limited.job_id).attempts == 2
    assert len(res.requests_for(limited.job_id)) == 2
    assert len(logis.requests) == 9 == sum(o.attempts for o in res.outcomes.values())
    assert res.runner.counters.responses_429 == 1 and res.runner.counters.retries == 1
    assert res.runner.requests_by_reason == {"first": 8, "after_429": 1}
    # The pause: nobody sends between the 429's arrival and Retry-After later.
    (seen_at, _), = res.seen(429)
    after = [r.t for r in logis.requests if r.t > limited.t]
    requests_in_pause = [t for t in after if seen_at < t < seen_at + 7.0]
    assert requests_in_pause == []
    assert min(t for t in after if t > seen_at) >= seen_at + 7.0
    pauses = [d for kind, d, *_ in res.hook_events if kind == "pause"]
    assert pauses == [{"reason": "429", "seconds": 7.0, "source": "retry_after"}]


def test_a_429_between_failures_neither_resets_nor_uses_up_the_rows_attempts() -> None:
    logis = FakeLogis(script={job_name(0): [500, 500, 429, 500, 500, "ok"]})
    res = run_units(jobs(1), logis, concurrency=1, max_attempts=3)
    o = res.outcome(job_name(0))
    # 500, 500, 429 (not a failed attempt), 500: the third failed attempt ends it; the row's
    # `attempts` is every request sent for it, the 429 included.
    assert (o.status, o.error_code, o.attempts) == (vocab.FAILED, "server_error", 4)
    assert [r.status for r in logis.requests] == [500, 500, 429, 500]


def test_attempts_reported_for_a_success_count_earlier_failures_across_a_429() -> None:
    logis = FakeLogis(script={job_name(0): [503, 429, "ok"]})
    res = run_units(jobs(1), logis, concurrency=1, max_attempts=5)
    assert res.outcome(job_name(0)).attempts == 3  # 503, 429, 200: three requests
    assert res.runner.requests_by_reason == {"first": 1, "retry": 1, "after_429": 1}


def test_repeated_429s_without_retry_after_back_off_doubling() -> None:
    logis = FakeLogis(script={job_name(0): [429, 429, 429]})
    res = run_units(jobs(1), logis, concurrency=1)
    assert res.outcome(job_name(0)).status == vocab.UPDATED
    assert res.outcome(job_name(0)).attempts == 4  # three 429s, then the 200
    gaps = np.diff(logis.arrivals())
    assert len(gaps) == 3
    assert gaps == pytest.approx([1.0, 2.0, 4.0], abs=0.05)


def test_a_retry_after_over_an_hour_ends_the_run_resumably_instead_of_sleeping() -> None:
    logis = FakeLogis(by_seq={1: (429, ERROR_TEXT[429], {"Retry-After": "7200"})})
    res = run_units(jobs(5), logis, concurrency=1)
    assert res.stop is not None
    assert (res.stop.code, res.stop.exit_code) == ("budget_exhausted", ExitCode.STOPPED)
    assert len(logis.requests) == 2 and res.elapsed < 1.0
    assert res.stop.resume_after is not None
    resume = datetime.fromisoformat(res.stop.resume_after).timestamp()
    assert resume == pytest.approx(EPOCH + 7200, abs=1.0)


@pytest.mark.parametrize("value", ["1000000000000", "9" * 400,
                                   "Fri, 31 Dec 9999 23:59:59 GMT"])
def test_an_absurd_retry_after_ends_the_run_resumably_without_a_date(value: str) -> None:
    """Seconds of 10**12 (or epoch milliseconds by mistake) overflowed the resume time into a
    traceback, no report and an unrecorded run. Now: exit 4, the report complete, and no
    resume time, since none can be told."""
    logis = FakeLogis(by_seq={1: (429, ERROR_TEXT[429], {"Retry-After": value})})
    res = run_units(jobs(5), logis, concurrency=1)
    assert res.stop is not None
    assert (res.stop.code, res.stop.exit_code) == ("budget_exhausted", ExitCode.STOPPED)
    assert res.stop.resume_after is None
    assert res.stop.message.endswith("; resume with --resume later")
    assert len(res.report()) == 5 and res.outcome(job_name(0)).status == vocab.UPDATED


def test_a_daily_429_without_retry_after_resumes_when_the_24_hour_window_frees() -> None:
    """Not an hour later (an hourly cron would spend requests on 429s every hour): when the
    oldest request still in the last 24 hours leaves that window, plus the margin."""
    logis = FakeLogis(by_seq={3: (429, DAILY_LIMITED)}, latency=1.0)
    res = run_units(jobs(10), logis, concurrency=1)
    assert res.stop is not None and res.stop.code == "daily_limit"
    first_send = EPOCH + logis.requests[0].t
    reset = parse_utc(res.stop.resume_after)
    assert reset is not None
    assert reset.timestamp() == pytest.approx(first_send + DAY + default_margin(DAY), abs=0.01)


def test_a_daily_429_counts_an_earlier_runs_sends_in_the_24_hours(tmp_path: Path) -> None:
    """The send log remembers requests of earlier runs on the store: the window frees when
    the oldest of those leaves it."""
    earlier = EPOCH - 5 * 3600.0
    with StateStore.open(tmp_path / "s.sqlite") as store:
        store.create_run("run-test", command="run", inputs=[("in.csv", "0" * 64)],
                         plan_key="{}", options={}, total_rows=4, started_at="2026-01-01")
        store.record_sends([("old-1", earlier, earlier + 0.2), ("old-2", earlier + 60, None),
                            ("ancient", EPOCH - 2 * DAY, EPOCH - 2 * DAY)])
        logis = FakeLogis(by_seq={2: (429, DAILY_LIMITED)})
        res = run_units(jobs(4), logis, concurrency=1, store=store)
    assert res.stop is not None and res.stop.code == "daily_limit"
    reset = parse_utc(res.stop.resume_after)
    assert reset is not None
    assert reset.timestamp() == pytest.approx(earlier + DAY + default_margin(DAY), abs=0.01)


def test_a_retry_after_http_date_is_honoured() -> None:
    when = formatdate(EPOCH + 30, usegmt=True)  # the fake wall clock starts at EPOCH
    logis = FakeLogis(by_seq={0: (429, ERROR_TEXT[429], {"Retry-After": when})})
    res = run_units(jobs(1), logis, concurrency=1)
    assert res.outcome(job_name(0)).status == vocab.UPDATED
    assert logis.requests[1].t == pytest.approx(30.0, abs=0.01)


def test_a_429_again_after_waiting_a_full_window_ends_the_run() -> None:
    # Rate 5/10s: after a 12 s Retry-After the key's window is empty; a new 429 means a
    # limit beyond it, so the run ends resumably instead of sleeping on.
    limited = (429, ERROR_TEXT[429], {"Retry-After": "12"})
    logis = FakeLogis(by_seq={0: limited, 1: limited})
    res = run_units(jobs(3), logis, concurrency=1, rate=Rate(5, 10.0))
    assert res.stop is not None
    assert (res.stop.code, res.stop.exit_code) == ("daily_limit", ExitCode.STOPPED)
    assert len(logis.requests) == 2 and res.outcomes == {}


def test_a_429_naming_the_daily_limit_stops_the_run_resumably() -> None:
    logis = FakeLogis(by_seq={3: (429, DAILY_LIMITED)}, latency=by_job_latency(1.0))
    units = jobs(10)
    res = run_units(units, logis, concurrency=2)

    assert res.stop is not None
    assert (res.stop.code, res.stop.exit_code) == ("daily_limit", ExitCode.STOPPED)
    assert res.stop.resume_after is not None and "resume" in res.stop.message
    limited = logis.requests[3]
    (seen_at, started), = res.seen(429)
    assert started <= 3 + 2  # the 429 plus at most the one other in flight
    assert all(r.t <= seen_at for r in logis.requests)  # nothing new after it was seen
    # The limited unit is not failed: it stays unsent, like every unit never sent.
    assert res.unit(limited.job_id) not in res.outcomes
    report = res.report()
    unsent = [u for u, o in report.items() if o.status == vocab.NOT_ATTEMPTED]
    assert {res.unit(r.job_id) for r in logis.requests if r.status == 200}.isdisjoint(unsent)
    assert len(unsent) == 10 - sum(r.status == 200 for r in logis.requests)
    assert all(report[u].error_code == "daily_limit" for u in unsent)


# --- run-level stops --------------------------------------------------------------------------


@pytest.mark.parametrize(("answer", "code"), [
    ((403, "Invalid or inactive LOGIS-API-KEY"), "api_key_invalid"),
    ((403, "Permission denied"), "permission_denied"),
    ((401, "Missing LOGIS-API-KEY header"), "api_key_missing"),
])
def test_an_auth_error_aborts_in_flight_rows_finish_and_nothing_new_starts(
        answer: tuple[int, str], code: str) -> None:
    logis = FakeLogis(by_seq={6: answer}, latency=by_job_latency(3.0, seed=7))
    units = jobs(40)
    res = run_units(units, logis, concurrency=4)

    assert res.stop is not None
    assert (res.stop.code, res.stop.exit_code) == ("aborted", ExitCode.ABORTED)
    assert code in res.stop.message
    bad = logis.requests[6]
    o = res.outcome(bad.job_id)
    assert (o.status, o.error_code, o.retryable, o.http_status) == \
        (vocab.FAILED, code, False, answer[0])
    (seen_at, started), = res.seen(answer[0])
    # No request started after the runner saw the 403/401 ...
    assert len(logis.requests) == started
    assert all(r.t <= seen_at for r in logis.requests)
    # ... so at most the other concurrency - 1 were in flight beside it.
    assert len(logis.requests) <= 6 + 4
    # Every request sent ended with its row's own outcome (in-flight rows finished).
    sent_units = {res.unit(r.job_id) for r in logis.requests}
    assert sent_units == set(res.outcomes)
    assert all(res.outcomes[u].status == vocab.UPDATED for u in sent_units
               if units.job_id[u] != bad.job_id)
    report = res.report()
    rest = [report[u] for u in range(len(units)) if u not in sent_units]
    assert rest and all((x.status, x.error_code) == (vocab.NOT_ATTEMPTED, "aborted") for x in rest)


def test_halt_after_consecutive_job_not_found_and_a_success_resets_the_streak() -> None:
    script = {job_name(i): [404] for i in (0, 1, 3, 4, 5, 6, 7, 8, 9)}
    logis = FakeLogis(script=script)  # job 2 succeeds between two 404s
    res = run_units(jobs(10), logis, concurrency=1, halt_after=3)

    assert res.stop is not None
    assert (res.stop.code, res.stop.exit_code) == ("halted", ExitCode.ABORTED)
    assert "job_not_found" in res.stop.message
    # 404, 404, ok (reset), 404, 404, 404 -> halt: six requests, no seventh.
    assert [r.job_id for r in logis.requests] == [job_name(i) for i in range(6)]
    assert res.outcome(job_name(2)).status == vocab.UPDATED
    assert res.outcome(job_name(5)).error_code == "job_not_found"
    report = res.report()
    assert [(report[u].status, report[u].error_code) for u in range(6, 10)] == \
        [(vocab.NOT_ATTEMPTED, "halted")] * 4


def test_halt_after_counts_only_consecutive_rows_with_the_same_code() -> None:
    # 404, 404, a row that finally fails with server_error, 404, 404: never 3 in a row.
    script = {job_name(i): [404] for i in (0, 1, 3, 4)} | {job_name(2): [500]}
    logis = FakeLogis(script=script)
    res = run_units(jobs(5), logis, concurrency=1, halt_after=3, max_attempts=1)
    assert res.stop is None
    assert len(logis.requests) == 5
    assert res.outcome(job_name(2)).error_code == "server_error"


def test_halt_after_with_concurrency_lets_in_flight_rows_finish() -> None:
    logis = FakeLogis(script={job_name(i): [400] for i in range(20)},
                      latency=by_job_latency(1.0))
    res = run_units(jobs(20), logis, concurrency=3, halt_after=5)
    assert res.stop is not None and res.stop.code == "halted"
    assert 5 <= len(logis.requests) <= 5 + 2
    assert {res.unit(r.job_id) for r in logis.requests} == set(res.outcomes)


@pytest.mark.parametrize(("concurrency", "limit"), [(1, 4), (4, 4), (4, 3), (4, 6), (3, 1)])
def test_max_requests_sends_exactly_that_many_then_stops(concurrency: int, limit: int) -> None:
    logis = FakeLogis(script={job_name(1): [500]}, latency=0.3)  # a retry counts too
    res = run_units(jobs(10), logis, concurrency=concurrency, max_requests=limit)

    assert len(logis.requests) == limit
    assert res.runner.counters.requests == limit
    assert res.stop is not None
    assert (res.stop.code, res.stop.exit_code) == ("budget_exhausted", ExitCode.STOPPED)
    report = res.report()
    assert sum(o.status == vocab.NOT_ATTEMPTED for o in report.values()) >= 10 - limit
    answered = {res.unit(r.job_id) for r in logis.requests if r.status == 200}
    assert set(res.outcomes) == answered
    assert all(o.error_code == "budget_exhausted" for o in report.values()
               if o.status == vocab.NOT_ATTEMPTED)


def test_max_requests_not_reached_ends_normally() -> None:
    logis = FakeLogis()
    res = run_units(jobs(3), logis, max_requests=3)
    assert res.stop is None and len(logis.requests) == 3 and len(res.outcomes) == 3


def test_stop_after_stops_taking_units_and_lets_in_flight_ones_finish() -> None:
    logis = FakeLogis(latency=1.0)
    res = run_units(jobs(20), logis, concurrency=2, stop_after=2.5)

    assert res.stop is not None
    assert (res.stop.code, res.stop.exit_code) == ("budget_exhausted", ExitCode.STOPPED)
    # Two at t=0, two at t=1, two at t=2; those finish at t=3; none starts after 2.5.
    assert logis.arrivals() == pytest.approx([0, 0, 1, 1, 2, 2])
    assert len(res.outcomes) == 6 and all(o.status == vocab.UPDATED
                                          for o in res.outcomes.values())
    assert res.elapsed == pytest.approx(3.0)


def test_stop_after_does_not_fire_after_the_run_ended() -> None:
    logis = FakeLogis()
    res = run_units(jobs(2), logis, stop_after=60.0)
    assert res.stop is None and len(res.outcomes) == 2


def test_an_interrupt_mid_run_stops_taking_units_and_in_flight_ones_finish() -> None:
    logis = FakeLogis(latency=1.0, by_seq={5: (403, "Invalid or inactive LOGIS-API-KEY")})
    interrupt = Stop("interrupted", ExitCode.INTERRUPTED, "interrupted by SIGINT")
    res = run_units(jobs(20), logis, concurrency=2, during=stop_at(2.5, interrupt))

    # The 403 answering an in-flight row after the interrupt does not outrank it (130 > 3).
    assert res.stop == interrupt
    assert len(logis.requests) == 6 and all(r.t < 2.5 for r in logis.requests)
    assert len(res.outcomes) == 6
    assert res.outcomes[5].error_code == "api_key_invalid"
    report = res.report()
    assert all((report[u].status, report[u].error_code) == (vocab.NOT_ATTEMPTED, "interrupted")
               for u in range(6, 20))


def test_sigint_through_signals_stops_the_run_as_interrupted() -> None:
    logis = FakeLogis(latency=1.0)

    def send_sigint(runner: Runner) -> None:
        asyncio.get_running_loop().call_at(1.5, os.kill, os.getpid(), signal.SIGINT)

    res = run_units(jobs(10), logis, concurrency=2, signals=True, during=send_sigint)
    assert res.stop is not None
    assert (res.stop.code, res.stop.exit_code) == ("interrupted", ExitCode.INTERRUPTED)
    assert "SIGINT" in res.stop.message
    assert len(logis.requests) == 4 and len(res.outcomes) == 4
    # The handler is removed afterwards: the default one is back.
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_an_interrupt_during_a_backoff_ends_the_wait_at_once() -> None:
    logis = FakeLogis(script={job_name(0): [500] * 10})
    interrupt = Stop("interrupted", ExitCode.INTERRUPTED, "interrupted by SIGTERM")
    res = run_units(jobs(1), logis, concurrency=1, max_attempts=50,
                    during=stop_at(40.0, interrupt))
    assert res.stop == interrupt
    assert res.elapsed == pytest.approx(40.0)
    assert res.outcomes == {}  # a row whose attempts are not used up is not failed


# --- client before job ------------------------------------------------------------------------


def test_the_job_update_is_never_sent_before_its_client_update_was_answered() -> None:
    units = paired_units(12)
    logis = FakeLogis(latency=by_job_latency(2.0, seed=3),
                      script={(job_name(1), "client"): [429],
                              (job_name(2), "client"): [503, 503],
                              (job_name(3), "client"): [404]})
    res = run_units(units, logis, concurrency=4)

    assert res.stop is None and len(res.outcomes) == 24
    assert logis.max_in_flight == 4
    position = {event: i for i, event in enumerate(logis.events)}
    for job in range(12):
        client_reqs = res.requests_for(job_name(job), "client")
        (job_req,) = res.requests_for(job_name(job), "job")
        last_client_end = position[("end", client_reqs[-1].seq)]
        assert position[("start", job_req.seq)] > last_client_end, job_name(job)
        assert job_req.t >= (client_reqs[-1].t_end or np.inf)
    # A client update that failed for good still lets its job update go.
    assert res.outcome(job_name(3), "client").error_code == "job_not_found"
    assert res.outcome(job_name(3), "job").status == vocab.UPDATED


# --- outages ----------------------------------------------------------------------------------


def test_an_outage_pauses_the_run_instead_of_failing_rows() -> None:
    logis = FakeLogis(by_seq={i: httpx.ConnectError for i in range(14)})
    res = run_units(jobs(6), logis, concurrency=2, max_attempts=3, answered_before=True)

    assert res.stop is None
    assert len(res.outcomes) == 6
    assert all(o.status == vocab.UPDATED for o in res.outcomes.values())
    # Every request is on its row, probes included; none of them used up a row's attempts
    # (--max-attempts 3, yet every row ends updated).
    assert sum(o.attempts for o in res.outcomes.values()) == len(logis.requests)
    assert res.runner.requests_by_reason["probe"] > 0
    # Once the outage is declared (5 network failures in a row for concurrency 2), requests
    # are spaced by the probe delay (1 s, doubling) instead of hammering.
    failures = [r.t for r in logis.requests[:14]]
    assert failures[-1] - failures[4] >= 1.0 + 2.0
    pauses = [d for kind, d, *_ in res.hook_events if kind == "pause"]
    assert pauses and all(p["reason"] == "outage" for p in pauses)


def test_a_long_outage_stops_the_run_with_network_error() -> None:
    logis = FakeLogis(by_seq={i: httpx.ConnectError for i in range(10_000)})
    res = run_units(jobs(8), logis, concurrency=2, outage_limit=120.0, answered_before=True)

    assert res.stop is not None
    assert (res.stop.code, res.stop.exit_code) == ("network_error", ExitCode.STOPPED)
    assert res.outcomes == {}  # no row was failed by the outage
    assert 120.0 <= res.elapsed < 120.0 + 2 * 60.0
    assert len(logis.requests) < 40  # probes, not a request per row per retry
    report = res.report()
    assert all((o.status, o.error_code) == (vocab.NOT_ATTEMPTED, "network_error")
               for o in report.values())


def untrusted_certificate(request: httpx.Request) -> httpx.ConnectError:
    """What httpx raises for a certificate from an unknown CA: the ssl error is the cause."""
    cause = ssl.SSLCertVerificationError(1, "certificate verify failed")
    cause.verify_code, cause.verify_message = 20, "unable to get local issuer certificate"
    error = httpx.ConnectError(str(cause), request=request)
    error.__cause__ = cause
    return error


def test_a_certificate_that_does_not_verify_stops_the_run_at_once_with_its_cause() -> None:
    logis = FakeLogis(by_seq={i: untrusted_certificate for i in range(10_000)}, latency=0.05)
    explained: list[tuple[str, str, float | None]] = []

    def explain(code: str, message: str, waited: float | None) -> str:
        explained.append((code, message, waited))
        return f"explained {code}"

    res = run_units(jobs(20), logis, concurrency=4, hooks=RunHooks(explain=explain))

    assert res.stop is not None
    assert (res.stop.code, res.stop.exit_code, res.stop.message) == (
        "tls_untrusted", ExitCode.ABORTED, "explained tls_untrusted")
    assert explained[0][:2] == ("tls_untrusted", "certificate verify failed: unable to get "
                                                 "local issuer certificate")
    assert len(logis.requests) <= 4  # the requests in flight when it stopped, no retry
    assert res.elapsed < 1.0  # at once: no backoff, no outage pause
    report = res.report()
    failed = [o for o in report.values() if o.status == vocab.FAILED]
    assert failed and all(o.error_code == "tls_untrusted" for o in failed)
    unsent = [o for o in report.values() if o.status == vocab.NOT_ATTEMPTED]
    assert len(failed) + len(unsent) == 20
    assert all((o.error_code, o.error_message) == ("tls_untrusted", "explained tls_untrusted")
               for o in unsent)


def test_a_first_contact_that_never_answers_stops_after_the_grace() -> None:
    logis = FakeLogis(by_seq={i: httpx.ConnectError for i in range(10_000)})
    waits: list[float | None] = []

    def explain(code: str, message: str, waited: float | None) -> str:
        waits.append(waited)
        return f"{code}: {message}"

    res = run_units(jobs(8), logis, concurrency=2, first_contact_grace=60.0,
                    hooks=RunHooks(explain=explain))

    assert res.stop is not None
    assert (res.stop.code, res.stop.exit_code) == ("unreachable", ExitCode.ABORTED)
    assert "ConnectError" in res.stop.message
    assert 60.0 <= res.elapsed < 61.0  # the last probe is cut to end the grace, not after it
    assert waits and waits[0] is not None and waits[0] >= 60.0
    assert len(logis.requests) < 20  # the outage's probes, not a request per row per retry
    assert {(o.status, o.error_code) for o in res.report().values()} == {
        (vocab.NOT_ATTEMPTED, "unreachable")}


def test_a_base_url_that_answered_in_this_run_rides_out_an_outage() -> None:
    failures = {i: httpx.ConnectError for i in range(1, 10_000)}
    logis = FakeLogis(by_seq=failures)
    answered: list[int] = []
    res = run_units(jobs(8), logis, concurrency=1, outage_limit=120.0,
                    first_contact_grace=60.0,
                    hooks=RunHooks(answered=lambda: answered.append(len(logis.requests))))

    assert answered == [1]  # told once, on the first answer
    assert res.stop is not None
    assert (res.stop.code, res.stop.exit_code) == ("network_error", ExitCode.STOPPED)
    assert res.elapsed >= 120.0  # the outage limit, not the first contact's grace


def test_read_timeouts_count_as_an_outage_too() -> None:
    logis = FakeLogis(by_seq={i: httpx.ReadTimeout for i in range(8)})
    res = run_units(jobs(2), logis, concurrency=1, max_attempts=5, answered_before=True)
    assert all(o.status == vocab.UPDATED for o in res.outcomes.values())
    assert len(res.outcomes) == 2


# --- the budget -----------------------------------------------------------------------------


def test_the_budget_never_lets_more_than_n_requests_into_any_window() -> None:
    logis = FakeLogis(latency=by_job_latency(1.5, seed=11),
                      script={job_name(4): [500], job_name(9): [503]})
    res = run_units(jobs(12), logis, concurrency=4, rate=Rate(5, 10.0))

    assert res.stop is None and len(res.outcomes) == 12
    assert len(logis.requests) == 14  # the retries spend budget too
    assert max_in_window(logis.arrivals(), 10.0) <= 5
    assert max_in_window([r.t_end or 0.0 for r in logis.requests], 10.0) <= 5
    # ... and it is spent, not wasted: 14 requests need two full windows after the first burst.
    assert 20.0 <= res.elapsed <= 3 * 10.4 + 3 * 1.5


def test_max_rps_spaces_the_first_burst() -> None:
    logis = FakeLogis()
    run_units(jobs(5), logis, concurrency=4, max_rps=4.0)
    assert np.diff(logis.arrivals()) == pytest.approx([0.25] * 4)


# --- the state store ------------------------------------------------------------------------


def test_outcomes_and_ledger_updates_reach_a_real_state_store_without_review_keys(
        tmp_path: Path) -> None:
    units = make_units([(job_name(0), "client", False), (job_name(0), "job", False),
                        (job_name(1), "job", True), (job_name(2), "job", True),
                        (job_name(3), "job", False)], after={1: 0})
    logis = FakeLogis(script={job_name(2): ["mismatch"], job_name(3): [404]}, latency=0.1)
    path = tmp_path / "state.sqlite"
    store = StateStore.open(path)
    try:
        store.create_run("run-store", command="run", inputs=[("in.csv", "0" * 64)],
                         plan_key="{}", options={}, total_rows=15, started_at="2026-01-01")
        res = run_units(units, logis, store=store, run_id="run-store", concurrency=2)

        stored = store.load_outcomes("run-store")
        assert stored == {int(units.row[u]): o for u, o in res.outcomes.items()}
        assert len(stored) == 5
        ledger = {(r["job_id"], r["update_target"]): r
                  for r in store.ledger_table(confirmed_only=True).to_pylist()}
        assert set(ledger) == {(job_name(0), "client"), (job_name(0), "job"),
                               (job_name(1), "job")}  # not the mismatch, not the 404
        for (job, target), entry in ledger.items():
            u = res.unit(job, target)
            assert entry["do_notify_sms"] == bool(units.do_notify_sms[u])
            assert entry["review_key_hash"] == store.review_key_hash(units.review_key[u])
            assert entry["client_id"] == client_of(job)
            assert entry["run_id"] == "run-store"
            assert entry["entity_id"] == (job if target == "job" else client_of(job))
        # The mismatch is kept as what the server showed, not as a confirmation we made.
        everything = {(r["job_id"], r["update_target"]): r
                      for r in store.ledger_table().to_pylist()}
        seen = everything[(job_name(2), "job")]
        assert seen["observed"] is True and seen["observed_do_notify_sms"] is False
        assert seen["client_id"] == client_of(job_name(2))
        assert store.job_clients() == {job_name(i): client_of(job_name(i)) for i in range(3)}
        sends = store.send_log()
        assert len(sends) == len(logis.requests) == 5
        assert all(s.done is not None and s.sent >= EPOCH for s in sends)
    finally:
        store.close()
    secrets = [API_KEY] + [k for key in units.review_key
                           for k in (key, key.upper(), key.replace("-", ""))]
    files = [p for p in tmp_path.iterdir() if p.is_file()]
    assert files
    for p in files:
        data = p.read_bytes()
        for secret in secrets:
            assert secret.encode() not in data, (p.name, secret[-4:])


def test_the_handlers_the_process_had_come_back_after_the_run() -> None:
    """asyncio's remove_signal_handler resets SIGTERM to the default action: a SIGTERM while
    the report is written would kill the process. Runner.signals puts back what was there."""
    import signal

    seen: list[int] = []

    def before(signum: int, _frame: object) -> None:
        seen.append(signum)

    old_term = signal.signal(signal.SIGTERM, before)
    old_int = signal.getsignal(signal.SIGINT)
    try:
        run_units(jobs(3), FakeLogis(), signals=True)
        assert signal.getsignal(signal.SIGTERM) is before
        assert signal.getsignal(signal.SIGINT) is old_int
        signal.raise_signal(signal.SIGTERM)
        assert seen == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, old_term)


def test_a_unit_sent_then_left_unsent_by_a_stop_still_counts_its_requests() -> None:
    """A 429 naming the daily limit ends the run: the limited unit stays not_attempted, yet
    its request is on its row, so the rows' attempts add up to what the server received."""
    logis = FakeLogis(by_seq={3: (429, DAILY_LIMITED)})
    res = run_units(jobs(6), logis, concurrency=1)
    assert res.stop is not None and res.stop.code == "daily_limit"
    report = {**res.report(), **res.runner.unfinished_outcomes()}
    limited = res.unit(logis.requests[3].job_id)
    assert (report[limited].status, report[limited].attempts) == (vocab.NOT_ATTEMPTED, 1)
    assert sum(o.attempts or 0 for o in report.values()) == len(logis.requests)
