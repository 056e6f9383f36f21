"""The async send loop: workers take units, ask the budget, call Logis, hand outcomes on.

A fixed set of worker tasks pulls from one queue (a task per row would cost gigabytes for a big
file). Every wait (budget, backoff, 429 pause) races the stop event, so SIGINT, an abort or
--stop-after end the run promptly; requests already in flight finish within --timeout. Units
never raise: each ends with a final Outcome or stays unsent, and the report fills the unsent.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
from collections import Counter, deque
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import httpx

from batch_toggle import vocab
from batch_toggle.clock import SYSTEM, Clock, utc_text
from batch_toggle.config import SendOptions
from batch_toggle.errors import ExitCode, StoreError, StoreLockLost, exit_rank
from batch_toggle.events import EventSink, PauseEvent, RequestEvent, RetryEvent, StopEvent
from batch_toggle.outcome import Outcome
from batch_toggle.plan.units import Units
from batch_toggle.send.classify import MAX_BODY, Verdict, classify_exception
from batch_toggle.send.limiter import DAY, Budget, Ticket, default_margin
from batch_toggle.send.operations import Operation, Toggle, logis_headers
from batch_toggle.send.retry import (
    MAX_RESUME_HINT,
    FirstContact,
    HaltDetector,
    OutageDetector,
    RateLimitDecision,
    RateLimitStreak,
    RetryPolicy,
    is_network_failure,
    parse_retry_after,
    too_long,
)
from batch_toggle.send.signals import Interrupts
from batch_toggle.send.timeline import Timeline
from batch_toggle.state.committer import Committer, Finished

T = TypeVar("T")

# What _exchange returns when no request went out (the run stopped, or must not send).
_NOT_SENT: tuple[None, str, float, float] = (None, "", 0.0, 0.0)


@dataclass(frozen=True)
class Stop:
    """Why a run stopped before its queue was empty; `code` marks the unsent rows."""

    code: str
    exit_code: ExitCode
    message: str
    resume_after: str | None = None


def interrupt_stop(sig: signal.Signals) -> Stop:
    """The stop a SIGINT/SIGTERM makes: exit 130, the unsent rows `interrupted`."""
    return Stop("interrupted", ExitCode.INTERRUPTED,
                f"interrupted by {sig.name}; resume with --resume")


# Why a request went (Runner.requests_by_reason).
REASON_FIRST, REASON_RETRY, REASON_429, REASON_PROBE = "first", "retry", "after_429", "probe"


@dataclass
class Counters:
    requests: int = 0
    responses_429: int = 0
    retries: int = 0
    failures: int = 0
    units_done: int = 0
    units_total: int = 0


@dataclass
class RunHooks:
    """Callbacks the runner reports through (progress bars, --events, stderr notices).

    An outcome once it is durable is not among them: the committer, which alone knows when
    a row is written, tells its `on_committed` (jobs/run.py makes the `row` event there)."""

    notice: Callable[[str], None] = lambda _m: None
    event: EventSink = lambda _k, _d: None
    # The stop message of a connection that cannot work (code, short cause, seconds a first
    # contact waited): the detail and the fix (causes.explainer). Called as the run stops.
    explain: Callable[[str, str, float | None], str] = lambda _c, m, _w: m
    # The base URL answered for the first time (the store remembers it: retry.FirstContact).
    answered: Callable[[], None] = lambda: None


class Runner:
    """Sends a plan's units; one Runner per run (it may be called twice, e.g. after a canary)."""

    def __init__(self, units: Units, *, client: httpx.AsyncClient, api_key: str,
                 options: SendOptions, budget: Budget, committer: Committer,
                 hooks: RunHooks | None = None, clock: Clock | None = None,
                 rng: random.Random | None = None,
                 review_key_hash: Callable[[str], str] | None = None, run_id: str = "",
                 operation: Operation | None = None,
                 advice: Callable[[str], str] | None = None,
                 answered_before: bool = False) -> None:
        self.units = units
        self.client = client
        self.options = options
        self.budget = budget
        self.committer = committer
        self.hooks = hooks or RunHooks()
        # The job's clock (clock.py); `rng`: the retry jitter's, seeded by a test.
        self.clock = clock or SYSTEM
        self.rng = rng or random.Random()
        self.counters = Counters()
        self.timeline = Timeline(self.clock.mono(), self.clock.wall())
        # An acquire that waits longer than the --max-rps queueing of `concurrency` workers is
        # a wait for the budget; the timeline keeps the union of such waits, not their sum.
        self._wait_min = max(1.0, 2.0 * options.concurrency / max(options.max_rps, 0.01))
        self._waited_until = -float("inf")
        self.stop: Stop | None = None
        self.operation: Operation = operation or Toggle(units, review_key_hash)
        # Stop messages advise `run`'s way on ("resume with --resume"); another command (an
        # audit) rewords them here, once, for the report, the summary and the events alike.
        self._advice = advice
        self._run_id = run_id
        self._base = options.base_url.rstrip("/")
        self._headers = logis_headers(api_key)
        self._parked: set[asyncio.Task[Any]] = set()  # workers waiting in _race
        self._unparked: set[asyncio.Task[Any]] = set()  # ... that a stop has cancelled
        self._cond = asyncio.Condition()
        self._ready: deque[int] = deque()
        self._waiting_on: dict[int, list[int]] = {}
        self._in_flight: set[int] = set()
        self._started = 0
        self._deadline: asyncio.Task[None] | None = None
        self._client_of: dict[int, str | None] = {}
        self._attempts: dict[int, int] = {}  # failed attempts of units re-queued after a 429
        # Every request sent for a unit (the report's `attempts`), and why the next one goes.
        self._sent_for: dict[int, int] = {}
        self._next_reason: dict[int, str] = {}
        self._reasons: Counter[str] = Counter()
        self._last_failure = ""  # the latest network failure, in words (outage events)
        self._streak = RateLimitStreak(options.rate.period)
        self._last_429 = -float("inf")
        self._first_sent_wall: float | None = None  # this run's first request (wall clock)
        self._policy = RetryPolicy.from_options(options)
        self._halt = HaltDetector(options.halt_after)
        self._outage = OutageDetector.for_concurrency(options.concurrency, options.outage_limit)
        self._contact = FirstContact(answered_before, options.first_contact_grace)

    # --- public -------------------------------------------------------------------------

    async def run(self, todo: Sequence[int]) -> None:
        """Send `todo` (unit indices, in send order) until done or stopped."""
        self._enqueue(todo)
        self.counters.units_total += len(todo)
        workers = [asyncio.create_task(self._worker()) for _ in range(self.options.concurrency)]
        self._deadline = self._deadline_task() or self._deadline
        try:
            await asyncio.gather(*workers)
        finally:
            for task in workers:
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)

    def close(self) -> None:
        """The run is over: a --stop-after that has not fired must not fire now."""
        if self._deadline is not None:
            self._deadline.cancel()

    def request_stop(self, stop: Stop) -> None:
        """Stop taking units; the first stop of the highest rank decides the exit code.

        Also callable once the sending part is over (no running loop: a signal that came while
        the run was finishing), where it only decides the exit code and tells the event."""
        if self._advice is not None:
            stop = replace(stop, message=self._advice(stop.message))
        decided = self.stop is None or exit_rank(stop.exit_code) < exit_rank(self.stop.exit_code)
        if decided:
            self.stop = stop
        self._unpark()
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None  # the sending part is over: no worker to wake
        if loop is not None:
            loop.create_task(self._notify())
        if decided:
            # Once per decision (workers repeat a --max-requests stop): the moment a run is
            # told to stop, not only the line at its end, since in-flight rows still finish.
            # Told last, once the stop has taken effect: a sink that raises (a library
            # caller's) can then not leave a worker parked or the stop half made.
            self.hooks.event("stop", StopEvent(code=stop.code, exit_code=int(stop.exit_code),
                                               message=stop.message,
                                               resume_after=stop.resume_after))

    def progress_snapshot(self) -> dict[str, Any]:
        """What a progress bar shows: rows done/total, requests, 429s, failures, budget ETA."""
        c = self.counters
        remaining = max(0, c.units_total - c.units_done)
        return {"done": c.units_done, "total": c.units_total, "requests": c.requests,
                "responses_429": c.responses_429, "failures": c.failures,
                "retries": c.retries, "waiting": self.budget.waiting,
                "eta_s": self.budget.progress_eta(remaining)}

    def unsent_outcome(self) -> Outcome:
        """What a unit that was never completed reports."""
        if self.stop is None:
            return Outcome(vocab.NOT_ATTEMPTED, "interrupted", "the run ended before this row")
        return Outcome(vocab.NOT_ATTEMPTED, self.stop.code, self.stop.message)

    def unfinished_outcomes(self) -> dict[int, Outcome]:
        """Units sent at least once that have no final outcome (the run stopped while they
        waited for a retry, or after a 429 sent them back to the queue): `unsent_outcome`
        with the requests they cost, so that every request sent is on some row's `attempts`."""
        done = self.committer.outcomes
        unsent = self.unsent_outcome()
        return {unit: replace(unsent, attempts=n) for unit, n in self._sent_for.items()
                if unit not in done}

    @property
    def requests_by_reason(self) -> dict[str, int]:
        """Requests sent, by why each went: a unit's first, a retry after a transient
        failure, a re-send after a 429, or a probe during an outage."""
        return dict(self._reasons)

    @contextlib.contextmanager
    def signals(self, interrupts: Interrupts | None = None) -> Any:
        """SIGINT/SIGTERM stop the run cleanly (exit 130) instead of killing it.

        The signals are caught by `interrupts` (or, without one, by an `Interrupts` for the
        length of this block): while this block runs each one also stops the run, on the loop
        (a signal caught before the block, while the run was starting, stops it on entry).
        Outside the block they are only recorded, for the caller to act on: the job's session
        keeps one `Interrupts` from before the sending part until the report is written, so a signal
        after the last request is still a clean interrupt with a report."""
        loop = asyncio.get_running_loop()

        def stop(sig: signal.Signals) -> None:
            # A Python signal handler runs between two bytecodes of the main thread, possibly
            # inside the loop's own code: hand the stop to the loop rather than make it here.
            loop.call_soon_threadsafe(self.request_stop, interrupt_stop(sig))

        with contextlib.ExitStack() as stack:
            caught = interrupts or stack.enter_context(Interrupts())
            stack.enter_context(caught.forwarding(stop))
            if caught.received is not None:
                self.request_stop(interrupt_stop(caught.received))
            yield

    # --- queue --------------------------------------------------------------------------

    def _enqueue(self, todo: Sequence[int]) -> None:
        pending = set(todo)
        for u in todo:
            dep = int(self.units.after[u])
            if dep >= 0 and dep in pending:
                self._waiting_on.setdefault(dep, []).append(u)
            else:
                self._ready.append(u)

    async def _next(self) -> int | None:
        async with self._cond:
            while True:
                if self.committer.error is not None and self.stop is None:
                    self._store_failed(self.committer.error)
                if self.stop is not None:
                    return None
                if self._ready:
                    unit = self._ready.popleft()
                    self._in_flight.add(unit)
                    return unit
                if not self._in_flight:
                    return None
                await self._cond.wait()

    async def _release(self, unit: int, requeue: bool) -> None:
        """A unit leaves a worker: back to the front of the queue, or done (freeing its
        dependents, which go first: their natural place was right after it)."""
        async with self._cond:
            self._in_flight.discard(unit)
            if requeue:
                self._ready.appendleft(unit)
            else:
                self._ready.extendleft(reversed(self._waiting_on.pop(unit, [])))
            self._cond.notify_all()

    async def _notify(self) -> None:
        async with self._cond:
            self._cond.notify_all()

    # --- workers ------------------------------------------------------------------------

    async def _worker(self) -> None:
        while (unit := await self._next()) is not None:
            requeue = False
            try:
                result = await self._send_unit(unit)
                if isinstance(result, Outcome):
                    self._finish(unit, result)
                    # No next request before this outcome is on disk: a kill -9 then finds at
                    # most one unit per worker sent without it (a resume sends those again).
                    await self.committer.durable(unit)
                requeue = result == "requeue"
            finally:
                await self._release(unit, requeue and self.stop is None)

    async def _send_unit(self, unit: int) -> Outcome | str | None:
        """Try one unit until it has a final outcome ("requeue" after a 429; None if stopped).

        `attempts` counts the unit's failed attempts, what --max-attempts limits; 429s and
        outage probes are not among them. The report's `attempts` is every request sent for
        the unit (`_sent_for`), whatever it was for."""
        attempts = self._attempts.pop(unit, 0)
        while True:
            verdict, sent_at, latency, sent_mono = await self._exchange(unit)
            if verdict is None:
                return None
            self.hooks.event("request", RequestEvent(unit=unit, kind=verdict.kind,
                                                     http_status=verdict.http_status))
            self._note_contact(verdict)
            if verdict.kind == "rate_limited":
                self._next_reason[unit] = REASON_429
                self._on_429(verdict, sent_mono)
                if attempts:
                    self._attempts[unit] = attempts  # a 429 neither uses up nor resets them
                return "requeue"
            if sent_mono > self._last_429:
                # Only an answer to a request sent after the last 429 shows the limit lifted;
                # replies to requests already in flight must not reset the backoff.
                self._streak.reset()
                self.budget.recover()
            self._outage.record(is_network_failure(verdict), self.clock.mono())
            if is_network_failure(verdict):
                self._last_failure = _failure_words(verdict)
            if verdict.kind != "retry":
                return self._final(unit, verdict, attempts + 1, sent_at, latency)
            if self._outage.in_outage:
                self._next_reason[unit] = REASON_PROBE
                if not await self._ride_out_outage():
                    return None
                continue  # an outage does not use up the row's attempts
            attempts += 1
            if not self._policy.should_retry(verdict, attempts):
                return self._final(unit, verdict, attempts, sent_at, latency)
            self._next_reason[unit] = REASON_RETRY
            delay = self._policy.delay(attempts, self.rng)
            self._retry_event(unit, verdict, attempts, delay)
            if not await self._wait(delay):
                return None

    def _retry_event(self, unit: int, v: Verdict, attempts: int, delay: float) -> None:
        """A row failed on a transient error and will be sent again: which one, why, which
        attempt of how many, and how long it waits (other rows go on meanwhile)."""
        self.hooks.event("retry", RetryEvent(
            unit=unit, row=int(self.units.row[unit]), job_id=self.units.job_id[unit],
            update_target=self.units.update_target[unit], error_code=v.error_code,
            http_status=v.http_status, attempt=attempts, max_attempts=self._policy.max_attempts,
            seconds=round(delay, 3)))

    async def _exchange(self, unit: int) -> tuple[Verdict | None, str, float, float]:
        """One request through the budget: (verdict, sent_at, latency_ms, monotonic send time).
        The verdict is None when the run stopped first. The budget slot is held until the
        reply (or the decision not to send), whatever happens."""
        if self._over_request_limit():
            return _NOT_SENT
        ticket = await self._acquire()
        if ticket is None:
            return _NOT_SENT
        try:
            return await self._send_holding(unit)
        finally:
            self.budget.release(ticket)

    async def _send_holding(self, unit: int) -> tuple[Verdict | None, str, float, float]:
        if not await self._honour_pause():
            return _NOT_SENT
        # Check again: other workers passed the first check while this one waited for the
        # budget, and may have used up --max-requests since (no await from here to the count).
        if self._over_request_limit():
            return _NOT_SENT
        self._started += 1
        wall = self.clock.wall()
        if self._first_sent_wall is None:
            self._first_sent_wall = wall
        try:
            # Recorded before it leaves: a run killed mid-request still leaves its budget use
            # on record. If that cannot be recorded, the request is not sent. (The logged
            # time is a little before the send, never after.)
            send_id = self.committer.send_started(wall, wait=self._budget_tight())
        except Exception as exc:  # noqa: BLE001 - the store's failure stops the run
            self._store_failed(exc)
            return _NOT_SENT
        if not await self._honour_pause():  # a 429 came while the send was being logged
            self.committer.send_done(send_id, wall, self.clock.wall())
            return _NOT_SENT
        sent_at = utc_text(self.clock.wall())
        t0 = self.clock.mono()
        try:
            verdict = await self._put(unit)
        finally:
            self.committer.send_done(send_id, wall, self.clock.wall())
        self.counters.requests += 1
        self._count_request(unit)
        self.timeline.request(t0)
        return verdict, sent_at, (self.clock.mono() - t0) * 1000.0, t0

    def _count_request(self, unit: int) -> None:
        """One more request for `unit`: its `attempts`, and the run's count by reason (every
        request beyond a unit's first is a retry, whatever it was for)."""
        sent = self._sent_for.get(unit, 0)
        self._sent_for[unit] = sent + 1
        reason = self._next_reason.pop(unit, REASON_RETRY) if sent else REASON_FIRST
        self._reasons[reason] += 1
        if sent:
            self.counters.retries += 1

    async def _put(self, unit: int) -> Verdict:
        request = self.operation.request(unit)
        try:
            async with asyncio.timeout(self.options.timeout):
                async with self.client.stream(request.method, self._base + request.path,
                                              json=request.json, params=request.params,
                                              headers=self._headers) as response:
                    content = await _read_capped(response)
                    return self.operation.classify(unit, response.status_code,
                                                   response.headers, content)
        except TimeoutError:
            return classify_exception(httpx.ReadTimeout(
                f"no complete reply within {self.options.timeout:g} s"))
        except httpx.HTTPError as exc:
            return classify_exception(exc)

    def _budget_tight(self) -> bool:
        """Could this run fill a budget window (hourly or daily) from here on? Then each send
        must be on record before it leaves: a send a kill kept off the log would let a resumed
        run overspend the window. Otherwise the budget is not what limits this run, and the
        record may follow the request by a commit round (the committer's fast path).
        Counted generously: every unit left may take --max-attempts requests."""
        need = ((self.counters.units_total - self.counters.units_done)
                * self.options.max_attempts)
        now = self.clock.mono()
        return any(window is not None and window.limit - window.held(now) <= need
                   for window in (self.budget.hourly, self.budget.daily))

    def _over_request_limit(self) -> bool:
        limit = self.options.max_requests
        if limit is not None and self._started >= limit:
            self.request_stop(Stop("budget_exhausted", ExitCode.STOPPED,
                                   f"--max-requests {limit} reached; resume with --resume"))
            return True
        return False

    # --- outcomes -----------------------------------------------------------------------

    def _final(self, unit: int, v: Verdict, attempts: int, sent_at: str,
               latency: float) -> Outcome:
        """The unit's outcome. `attempts` (its failed attempts) decided it; the outcome's
        `attempts` is every request sent for the unit."""
        outcome = Outcome(
            status=v.status or vocab.FAILED, error_code=v.error_code, error_message=v.message,
            retryable=v.retryable, http_status=v.http_status,
            attempts=self._sent_for.get(unit, attempts),
            entity_id=v.entity_id, confirmed_do_notify_sms=v.confirmed, sent_at=sent_at,
            latency_ms=round(latency, 1),
        )
        self._client_of[unit] = v.client_id
        if v.kind == "abort" and v.error_code in vocab.CONNECTION_CODES:
            self.request_stop(Stop(v.error_code, ExitCode.ABORTED,
                                   self.hooks.explain(v.error_code, v.message or "", None)))
        elif v.kind == "abort":
            self.request_stop(Stop("aborted", ExitCode.ABORTED,
                                   f"run aborted: {v.error_code} ({v.message or 'no reason'})"))
        elif self._halt.record(v.error_code):  # any other final outcome breaks the streak
            self.request_stop(Stop("halted", ExitCode.ABORTED,
                                   f"halted: {self.options.halt_after} rows in a row failed with "
                                   f"{v.error_code}; check the file's columns and the account"))
        return outcome

    def _finish(self, unit: int, outcome: Outcome) -> None:
        client_id = self._client_of.pop(unit, None)
        ledger = None
        if self.committer.store is not None:
            ledger = self.operation.ledger_update(unit, outcome, client_id, self._run_id)
        if outcome.status == vocab.FAILED:
            self.counters.failures += 1
        self.committer.put(Finished(unit, int(self.units.row[unit]), outcome, ledger))

    def _store_failed(self, exc: BaseException) -> None:
        """The state store stopped accepting writes: sending on would spend budget on work
        that a resume cannot see. Stop; the report still shows every outcome so far. (A
        run whose lock went to another run stops the same way: that run does the rest.)"""
        if isinstance(exc, StoreLockLost):
            self.request_stop(Stop("interrupted", ExitCode.STOPPED, str(exc)))
            return
        self.request_stop(Stop("interrupted", ExitCode.STOPPED,
                               f"the state store failed ({exc}); nothing more was sent; "
                               "fix it and run again with --resume"))

    # --- waits --------------------------------------------------------------------------

    def _on_429(self, v: Verdict, sent_mono: float) -> None:
        """Every worker pauses; the unit goes back to the queue. Not a failed attempt."""
        self.counters.responses_429 += 1
        self.timeline.rate_limited(self.clock.mono())
        if sent_mono <= self._last_429 and not v.daily_limit:
            self._on_echo_429(v)
            return
        self._last_429 = self.clock.mono()
        decision = self._streak.on_429(v, self.clock.wall())
        if decision.end_run is not None:
            stamp = self._resume_time(decision)
            when = f"after {stamp}" if stamp is not None else "later"
            self.request_stop(Stop(decision.end_run, ExitCode.STOPPED,
                                   f"{decision.reason}; resume with --resume {when}",
                                   resume_after=stamp))
            return
        self.budget.pause_until(self.clock.mono() + decision.delay)
        if self._streak.count > 1:
            self.budget.slow_down()  # 429s repeat: the key may be shared with other traffic
        self.hooks.event("pause", PauseEvent(reason="429", seconds=round(decision.delay, 3),
                                             source=decision.source))

    def _resume_time(self, decision: RateLimitDecision) -> str | None:
        """When a resume may send again, as a timestamp; None when no time can be told.

        A Retry-After says it (up to MAX_RESUME_HINT: a larger one is no date a person can
        use). Otherwise a daily limit frees its first slot when the oldest request still in
        the last 24 hours leaves that window (plus the margin); the send log knows it, this
        run's own first request at least. "429 again after a full window" without a header:
        one more PERIOD."""
        now = self.clock.wall()
        if decision.resume_after is not None:
            wait = decision.resume_after
            return utc_text(now + wait) if wait <= MAX_RESUME_HINT else None
        if decision.end_run == "daily_limit":
            oldest = self._oldest_send_in_day(now)
            if oldest is not None:
                return utc_text(max(now, oldest + DAY + default_margin(DAY)))
        return utc_text(now + self.options.rate.period)

    def _oldest_send_in_day(self, now_wall: float) -> float | None:
        """The wall time of the oldest request still inside the last 24 hours: this run's
        first, or an earlier run's from the state store's send log."""
        oldest = self._first_sent_wall
        store = self.committer.store
        if store is not None:
            with contextlib.suppress(StoreError):
                logged = store.oldest_send(now_wall - DAY, key=self.committer.key)
                if logged is not None:
                    oldest = logged if oldest is None else min(oldest, logged)
        return oldest

    def _on_echo_429(self, v: Verdict) -> None:
        """A 429 to a request that was already in flight when an earlier 429 paused the run: the
        same refusal again, not news. It must neither grow the streak (the in-flight echoes of
        one 429 would pass for "429 again after a full window" and end the run) nor slow the
        run down; its own Retry-After is still honoured, as a minimum."""
        wait = parse_retry_after(v.retry_after, self.clock.wall(), v.server_date)
        if wait is not None and not too_long(wait):
            self.budget.pause_until(self.clock.mono() + wait)

    async def _ride_out_outage(self) -> bool:
        """Every recent request failed on the network: pause the run, probe, give up later."""
        if self._outage.exhausted(self.clock.mono()):
            self.request_stop(Stop("network_error", ExitCode.STOPPED,
                                   "the API has been unreachable for "
                                   f"{self.options.outage_limit / 60:g} min; resume with --resume"))
            return False
        delay = self._contact.cap(self._outage.probe_delay(), self.clock.mono())
        # A first contact stops at its grace, not at the outage limit: say the limit that holds.
        limit = (self.options.outage_limit if self._contact.answered
                 else min(self._contact.grace, self.options.outage_limit))
        self.hooks.event("pause", PauseEvent(
            reason="outage", seconds=delay,
            outage_s=round(self._outage.duration(self.clock.mono()), 1), limit_s=limit,
            last=self._last_failure))
        self.budget.pause_until(self.clock.mono() + delay)
        return self.stop is None

    def _note_contact(self, v: Verdict) -> None:
        """Whether the base URL has answered (retry.FirstContact): its first answer is
        remembered; a first contact that failed for the whole grace stops the run (exit 3)."""
        now = self.clock.mono()
        if is_network_failure(v):
            self._contact.failed(now)
            if self._contact.expired(now) and self.stop is None:
                waited = self._contact.waited(now)
                self.request_stop(Stop("unreachable", ExitCode.ABORTED, self.hooks.explain(
                    "unreachable", v.message or v.error_code or "no answer", waited)))
        elif (v.http_status is not None and v.error_code not in vocab.CONNECTION_CODES
              and self._contact.answer()):  # a proxy's 407 is not the service answering
            self.hooks.answered()

    async def _honour_pause(self) -> bool:
        """A 429 may have paused the run after the budget granted this worker its ticket and
        before the worker ran again: wait the pause out before sending, so that no request
        leaves during a pause (its answer would be one more 429, and it would pass for news
        rather than an echo). The slot stays held meanwhile, which only makes the budget more
        careful. False when the run stopped first."""
        while (until := self.budget.paused_until) is not None:
            left = until - self.clock.mono()
            if left <= 0:
                break
            if not await self._wait(left):
                return False
        return self.stop is None

    async def _wait(self, seconds: float) -> bool:
        """Sleep unless the run stops first. False when it stopped."""
        if seconds > 0:
            await self._race(self.clock.sleep(seconds))
        return self.stop is None

    async def _race(self, coro: Coroutine[Any, Any, T]) -> T | None:
        """Await `coro` unless the run stops first (then it is cancelled: None).

        `coro` runs inside the calling worker (a task per wait, plus one to watch the stop,
        cost a fifth of a request's CPU on every budget grant); a stop cancels the workers
        parked here, and the cancellation is taken back below. A cancellation from outside
        (the run ending) still propagates."""
        if self.stop is not None:
            coro.close()
            return None
        me = asyncio.current_task()
        assert me is not None
        self._parked.add(me)
        try:
            return await coro
        except asyncio.CancelledError:
            if me in self._unparked and me.cancelling() == 1:
                me.uncancel()
                return None
            raise
        finally:
            self._parked.discard(me)
            self._unparked.discard(me)

    def _unpark(self) -> None:
        """A stop: wake every worker parked in a wait (see `_race`)."""
        for task in self._parked - self._unparked:
            self._unparked.add(task)
            task.cancel()

    async def _acquire(self) -> Ticket | None:
        """A budget ticket, or None when the run stops first (a ticket granted at the same
        moment as the stop is given back unused)."""
        asked = self.clock.mono()
        try:
            ticket = await self._race(self.budget.acquire())
        except StoreError as exc:  # a shared budget's database away beyond the outage limit
            self._store_failed(exc)
            return None
        got = self.clock.mono()
        if got - asked >= self._wait_min and got > self._waited_until:
            self.timeline.waited(max(asked, self._waited_until), got)
            self._waited_until = got
        if ticket is not None and self.stop is not None:
            self.budget.release(ticket)
            return None
        return ticket

    def _deadline_task(self) -> asyncio.Task[None] | None:
        """--stop-after counts from the first call of run(), canary included."""
        if self.options.stop_after is None or self._deadline is not None:
            return None

        async def expire() -> None:
            await self.clock.sleep(self.options.stop_after or 0.0)
            self.request_stop(Stop("budget_exhausted", ExitCode.STOPPED,
                                   f"--stop-after {self.options.stop_after:g} s reached; "
                                   "resume with --resume"))

        return asyncio.create_task(expire())


def _failure_words(v: Verdict) -> str:
    """A failure on the way to the service, as -v says it: "no answer (timeout)" or
    "gateway 503"."""
    if v.http_status is not None:
        return f"gateway {v.http_status}"
    return f"no answer ({v.error_code})"


async def _read_capped(response: httpx.Response) -> bytes:
    """The body, or its first MAX_BODY bytes and one more (the classifier sees it is too big)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        chunks.append(chunk)
        size += len(chunk)
        if size > MAX_BODY:
            break
    return b"".join(chunks)
