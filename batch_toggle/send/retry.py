"""The retry policy as pure functions and small state machines: no clock, no sleep, no network.

The sender feeds them `Verdict`s (see classify.py) and times it reads from its own clock; they
answer how long to wait, whether to try again, and whether the run should pause or stop:

* `RetryPolicy` / `backoff_delay`: 5xx, timeouts, network errors and unreadable 2xx bodies are
  retried with exponential backoff and full jitter; 4xx never (429 aside).
* `RateLimitStreak`: a 429 is not a failed attempt. Every worker pauses for `Retry-After` or a
  doubling backoff; a 429 naming the daily limit, recurring after a full window's wait, or asking
  for more than an hour ends the run resumably instead of sleeping for hours.
* `OutageDetector`: when every recent request failed on the network, pause the whole run rather
  than fail row after row; give up after `--outage-limit` (15 min).
* `FirstContact`: a base URL that has never answered gets about a minute of ambiguous failures
  (refused, reset, timeout, a silent resolver), then the run stops (`unreachable`, exit 3)
  instead of pausing 15 minutes for an outage of something that may never have existed.
* `HaltDetector`: `--halt-after N` consecutive rows failing with the same permanent code stop the
  run: a file with swapped columns or from another account must not burn the budget row by row.
"""

from __future__ import annotations

import email.utils
import random
import re
from dataclasses import dataclass
from datetime import UTC
from typing import Literal

from batch_toggle.config import SendOptions
from batch_toggle.send.classify import Verdict

MAX_RETRY_AFTER = 3600.0  # a Retry-After beyond this ends the run resumably (exit 4)
# A wait beyond this is no time a resume can be told to start at (Retry-After 10**12: seconds
# or epoch milliseconds sent by mistake); the run still ends resumably, without a date.
MAX_RESUME_HINT = 7 * 86400.0
BACKOFF_BASE = 0.5
BACKOFF_CAP = 60.0
_MAX_EXPONENT = 62  # 2**62 s is far beyond any cap; keeps huge attempt numbers from overflowing

# Codes a retry can cure. Everything else is final on the first answer.
RETRYABLE_CODES = frozenset({"server_error", "timeout", "network_error", "unexpected_response"})
# Permanent codes that, repeated row after row, mean the file itself is wrong (--halt-after).
HALT_CODES = frozenset({"incorrect_review_key", "job_not_found", "bad_request"})
# Gateway answers that mean "the service cannot be reached", as good as a network failure.
_GATEWAY_STATUSES = frozenset({502, 503, 504})


def backoff_delay(
    attempt: int, rng: random.Random, base: float = BACKOFF_BASE, cap: float = BACKOFF_CAP
) -> float:
    """Seconds to wait after failed attempt number `attempt` (1-based): exponential backoff
    with FULL jitter, uniform(0, min(cap, base * 2**(attempt-1))). Full jitter spreads the
    retries of workers that failed together, so they do not come back together."""
    exponent = min(max(attempt, 1) - 1, _MAX_EXPONENT)
    return rng.uniform(0.0, min(cap, base * 2.0**exponent))


def rate_limit_delay(consecutive_429: int, period: float) -> float:
    """Without Retry-After: 1 s, doubling per consecutive 429 (1-based), capped at PERIOD."""
    exponent = min(max(consecutive_429, 1) - 1, _MAX_EXPONENT)
    return min(period, 2.0**exponent)


def parse_retry_after(value: str | None, now_wall: float,
                      server_date: str | None = None) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP date. None when
    absent, negative, in the past or unparseable, so the caller falls back to its backoff.
    Compare with `MAX_RETRY_AFTER` (see `too_long`); a value too big for a float is `inf`.

    An HTTP date is measured against the response's own `Date` header when it has one
    (`server_date`): the server wrote both on its clock, so their difference is the wait
    whatever our clock says (a client 2 h behind read a 10 s wait as 7,210 s). Without a
    Date header it is measured against `now_wall` (Unix seconds)."""
    text = (value or "").strip()
    if not text:
        return None
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)  # "1e400" cannot match; a 400-digit number gives inf
    when = _http_date(text)
    if when is None:
        return None
    reference = _http_date(server_date) if server_date else None
    delta = when - (reference if reference is not None else now_wall)
    return delta if delta >= 0 else None


def _http_date(text: str | None) -> float | None:
    """An HTTP date as Unix seconds, or None when it does not parse."""
    try:
        when = email.utils.parsedate_to_datetime(text or "")
        if when.tzinfo is None:  # "-0000" or no zone: HTTP dates are always GMT
            when = when.replace(tzinfo=UTC)
        return when.timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def too_long(delay: float | None) -> bool:
    """A wait the run should not sleep through: over an hour ends it resumably (exit 4)."""
    return delay is not None and delay > MAX_RETRY_AFTER


# --- failed attempts ------------------------------------------------------------------------


@dataclass(frozen=True)
class RetryPolicy:
    """When to try a row again. `failed_attempts` counts this row's failed attempts so far,
    this one included; 429s are not failed attempts (`counts_as_attempt`)."""

    max_attempts: int = 5
    base: float = BACKOFF_BASE
    cap: float = BACKOFF_CAP

    @classmethod
    def from_options(cls, options: SendOptions) -> RetryPolicy:
        return cls(max_attempts=options.max_attempts)

    def should_retry(self, verdict: Verdict, failed_attempts: int) -> bool:
        """Retry transient failures while attempts remain. When this says no for a `retry`
        verdict, the row is `failed` with `retryable` true (a later --retry-failed may cure it)."""
        return verdict.kind == "retry" and failed_attempts < self.max_attempts

    def delay(self, failed_attempts: int, rng: random.Random) -> float:
        """How long this row waits before its next attempt (other rows go on meanwhile)."""
        return backoff_delay(failed_attempts, rng, self.base, self.cap)

    @staticmethod
    def counts_as_attempt(verdict: Verdict) -> bool:
        """A 429 says "not now", not "this failed": the row is re-queued without penalty."""
        return verdict.kind != "rate_limited"


# --- 429 ------------------------------------------------------------------------------------

EndReason = Literal["daily_limit", "budget_exhausted"]


@dataclass(frozen=True)
class RateLimitDecision:
    """What one 429 means for the run.

    `delay`: seconds every worker pauses (feed `Budget.pause_until(now + delay)`). `end_run`:
    None, or the error code for the rows left unsent when the run should end resumably (exit 4)
    instead of waiting. `resume_after`: seconds until a resume may start, when known.
    """

    delay: float
    source: Literal["retry_after", "backoff"]
    end_run: EndReason | None = None
    reason: str | None = None
    resume_after: float | None = None


class RateLimitStreak:
    """Consecutive 429s, and the time spent waiting on them. Any other answer ends the streak
    (call `reset`). Why the "full window" rule: after waiting a whole PERIOD our key's hourly
    window is empty, so a 429 then means a limit beyond it (the user's daily/global limit or
    other traffic on the key), and sleeping on would only burn more requests."""

    def __init__(self, period: float) -> None:
        self.period = period
        self.count = 0
        self.waited = 0.0

    def reset(self) -> None:
        self.count, self.waited = 0, 0.0

    def on_429(self, verdict: Verdict, now_wall: float) -> RateLimitDecision:
        """Decide on a 429 (`verdict.kind == "rate_limited"`) received at `now_wall`."""
        after_full_window = self.waited >= self.period
        self.count += 1
        header = parse_retry_after(verdict.retry_after, now_wall, verdict.server_date)
        if verdict.daily_limit:
            return RateLimitDecision(0.0, "backoff", "daily_limit", "the daily limit is reached",
                                     header)
        if header is not None and too_long(header):
            asked = f"{header:.0f} s" if header <= MAX_RESUME_HINT else "more than a week"
            return RateLimitDecision(header, "retry_after", "budget_exhausted",
                                     f"Retry-After asks for {asked} (over an hour)", header)
        if after_full_window:
            return RateLimitDecision(0.0, "backoff", "daily_limit",
                                     "429 again after waiting a full window", None)
        # Retry-After is a minimum: when 429s repeat anyway, the doubling backoff takes over, so
        # a server answering "Retry-After: 0" forever cannot make us hammer it.
        backoff = rate_limit_delay(self.count, self.period)
        source: Literal["retry_after", "backoff"] = "backoff"
        if header is not None and header >= backoff:
            source = "retry_after"
        delay = max(header or 0.0, backoff)
        self.waited += delay
        return RateLimitDecision(delay, source)


# --- outages --------------------------------------------------------------------------------


def is_network_failure(verdict: Verdict) -> bool:
    """A request that never got an answer from the service: timeout, connection failure, or a
    gateway's 502/503/504 (the proxy is up, the service behind it is not)."""
    if verdict.error_code in ("timeout", "network_error"):
        return True
    return verdict.error_code == "server_error" and verdict.http_status in _GATEWAY_STATUSES


class OutageDetector:
    """An outage is `window_n` consecutive requests failing on the network (any answer from the
    service ends it). Its duration runs from the first failure of that streak; after `limit`
    seconds the run should stop resumably, the rest `not_attempted`.

    While in an outage the sender should pause every worker and send one request at a time,
    `probe_delay()` apart, without counting those failures against the rows' attempts.
    `window_n` should exceed the concurrency, so that one blip failing every in-flight request
    at once is not taken for an outage (`for_concurrency`).
    """

    def __init__(self, window_n: int = 8, limit: float = 15 * 60.0, probe_cap: float = 60.0):
        self.window_n = max(1, window_n)
        self.limit = limit
        self.probe_cap = probe_cap
        self.streak = 0
        self._since: float | None = None

    @classmethod
    def for_concurrency(cls, concurrency: int, limit: float = 15 * 60.0) -> OutageDetector:
        """Two full rounds of in-flight requests, and at least 5."""
        return cls(window_n=max(5, 2 * concurrency), limit=limit)

    def record(self, network_failure: bool, now: float) -> None:
        """Feed every request's result (monotonic `now`)."""
        if not network_failure:
            self.streak, self._since = 0, None
            return
        if self.streak == 0:
            self._since = now
        self.streak += 1

    @property
    def in_outage(self) -> bool:
        return self.streak >= self.window_n

    def duration(self, now: float) -> float:
        """Seconds the current outage has lasted (0 when there is none)."""
        return now - self._since if self.in_outage and self._since is not None else 0.0

    def exhausted(self, now: float) -> bool:
        """The outage has lasted `limit`: stop the run (exit 4, resumable)."""
        return self.in_outage and self.duration(now) >= self.limit

    def probe_delay(self) -> float:
        """Seconds between probes during an outage: 1 s doubling per failed probe, capped."""
        return min(self.probe_cap, 2.0 ** min(self.streak - self.window_n, _MAX_EXPONENT))


# --- first contact ------------------------------------------------------------------------

FIRST_CONTACT_GRACE = 60.0  # seconds of failures a never-answered base URL gets


class FirstContact:
    """Has the base URL ever answered? Until it has, its ambiguous failures count against a
    short grace instead of the outage limit.

    Why: a refused port, a host that times out or a resolver that stays silent look like an
    outage, and an outage is ridden out for 15 minutes. That is right for a service that
    answered before (in this run, or an earlier one on the same state store: a resumed cron
    slice must ride out a blip), and wrong for a first contact, where it is far more likely a
    wrong URL, port or network path: then `grace` seconds after the first failure the run
    stops with the cause (exit 3) rather than report "stopped early: resumable".

    Feed every request's result (`answered`/`failed`, monotonic `now`); `expired` says when
    to stop; `cap` keeps a pause from sleeping past the grace.
    """

    def __init__(self, answered_before: bool, grace: float = FIRST_CONTACT_GRACE) -> None:
        self.answered = answered_before
        self.grace = grace
        self._first_failure: float | None = None

    def answer(self) -> bool:
        """The service answered (any HTTP status but a gateway's). True the first time only."""
        first = not self.answered
        self.answered = True
        return first

    def failed(self, now: float) -> None:
        """A request got no answer (timeout, connection failure, gateway 502/503/504)."""
        if self._first_failure is None:
            self._first_failure = now

    def waited(self, now: float) -> float:
        """Seconds since the first failure of this first contact (0 once it answered)."""
        if self.answered or self._first_failure is None:
            return 0.0
        return now - self._first_failure

    def expired(self, now: float) -> bool:
        """A first contact that has failed for `grace` seconds: stop (exit 3, `unreachable`)."""
        return not self.answered and self._first_failure is not None and \
            self.waited(now) >= self.grace

    def cap(self, delay: float, now: float) -> float:
        """`delay`, shortened so that a first contact's grace ends in a try, not a sleep."""
        if self.answered or self._first_failure is None:
            return delay
        return max(0.0, min(delay, self.grace - self.waited(now)))


# --- halting --------------------------------------------------------------------------------


class HaltDetector:
    """`--halt-after N`: N consecutive rows whose FINAL outcome is the same one of `HALT_CODES`.
    Feed each finished row's error code (None for a success); a success or a different code
    resets the streak. `halt_after <= 0` disables it."""

    def __init__(self, halt_after: int) -> None:
        self.halt_after = halt_after
        self.code: str | None = None
        self.streak = 0

    def record(self, error_code: str | None) -> bool:
        """Count one finished row; True when the run should halt (exit 3, the rest `halted`)."""
        if error_code not in HALT_CODES:
            self.code, self.streak = None, 0
            return False
        if error_code == self.code:
            self.streak += 1
        else:
            self.code, self.streak = error_code, 1
        return self.halted

    @property
    def halted(self) -> bool:
        return self.halt_after > 0 and self.streak >= self.halt_after
