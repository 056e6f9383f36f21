"""The retry policy: backoff, Retry-After, 429 streaks, outages, halting; no clock needed."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from email.utils import format_datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from batch_toggle.config import SendOptions
from batch_toggle.send.classify import Verdict
from batch_toggle.send.retry import (
    HALT_CODES,
    MAX_RETRY_AFTER,
    HaltDetector,
    OutageDetector,
    RateLimitStreak,
    RetryPolicy,
    backoff_delay,
    is_network_failure,
    parse_retry_after,
    rate_limit_delay,
    too_long,
)

NOW = datetime(2026, 11, 3, 12, 0, 0, tzinfo=UTC).timestamp()


def verdict(kind: str, code: str | None = None, http: int | None = None, **kw: object) -> Verdict:
    return Verdict(kind, "failed", code, None, kind == "retry", http, **kw)  # type: ignore[arg-type]


def rate_limited(retry_after: str | None = None, daily: bool = False) -> Verdict:
    return Verdict("rate_limited", None, "rate_limited", None, True, 429,
                   retry_after=retry_after, daily_limit=daily)


# --- backoff --------------------------------------------------------------------------------


@given(attempt=st.integers(1, 10_000), seed=st.integers(0, 2**32))
def test_backoff_is_full_jitter_under_an_exponential_ceiling(attempt: int, seed: int) -> None:
    ceiling = min(60.0, 0.5 * 2.0 ** min(attempt - 1, 100))
    assert 0.0 <= backoff_delay(attempt, random.Random(seed)) <= ceiling


def test_backoff_ceilings_double_from_half_a_second_to_a_minute() -> None:
    class Top(random.Random):
        def uniform(self, a: float, b: float) -> float:
            return b

    assert [backoff_delay(n, Top()) for n in range(1, 10)] == [
        0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0,
    ]


def test_backoff_spreads_workers_that_failed_together() -> None:
    rng = random.Random(7)
    delays = {round(backoff_delay(6, rng), 3) for _ in range(50)}
    assert len(delays) > 40


def test_rate_limit_delay_doubles_from_one_second_up_to_the_period() -> None:
    assert [rate_limit_delay(n, 10.0) for n in range(1, 7)] == [1, 2, 4, 8, 10, 10]
    assert rate_limit_delay(10**6, 3600.0) == 3600.0


# --- Retry-After ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param("120", 120.0, id="delta-seconds"),
        pytest.param(" 0 ", 0.0, id="zero"),
        pytest.param("1.5", 1.5, id="fractional"),
        pytest.param(format_datetime(datetime.fromtimestamp(NOW + 90, UTC), usegmt=True), 90.0,
                     id="http-date"),
        pytest.param("Tuesday, 03-Nov-26 12:00:30 GMT", 30.0, id="rfc850-date"),
        pytest.param("Tue Nov  3 12:01:00 2026", 60.0, id="asctime-date"),
        pytest.param(None, None, id="absent"),
        pytest.param("", None, id="empty"),
        pytest.param("-5", None, id="negative"),
        pytest.param("soon", None, id="unparseable"),
        pytest.param("nan", None, id="nan"),
        pytest.param("Tue, 03 Nov 2026 11:59:00 GMT", None, id="date-in-the-past"),
        pytest.param("Tue, 99 Nov 2026 11:59:00 GMT", None, id="impossible-date"),
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    got = parse_retry_after(value, NOW)
    assert got == (pytest.approx(expected) if expected is not None else None)


def test_an_http_date_is_measured_against_the_responses_own_date() -> None:
    """A client whose clock is 2 h behind must not read a 10 s wait as 7,210 s: the server
    wrote Retry-After and Date on one clock."""
    server_now = NOW
    retry_at = format_datetime(datetime.fromtimestamp(server_now + 10, UTC), usegmt=True)
    date = format_datetime(datetime.fromtimestamp(server_now, UTC), usegmt=True)
    behind, ahead = NOW - 7200, NOW + 7200
    assert parse_retry_after(retry_at, behind, date) == pytest.approx(10.0)
    assert parse_retry_after(retry_at, ahead, date) == pytest.approx(10.0)
    assert parse_retry_after(retry_at, behind) == pytest.approx(7210.0)  # no Date: our clock
    assert parse_retry_after(retry_at, behind, "not a date") == pytest.approx(7210.0)
    assert parse_retry_after("30", behind, date) == 30.0  # delta-seconds need no clock


def test_absurd_retry_afters_are_too_long_never_an_error() -> None:
    """10**12 (epoch milliseconds sent by mistake) and beyond: a number, too long to wait."""
    assert parse_retry_after("1000000000000", NOW) == 1e12
    assert parse_retry_after("9" * 400, NOW) == float("inf")
    assert too_long(parse_retry_after("9" * 400, NOW))
    assert parse_retry_after("Fri, 31 Dec 9999 23:59:59 GMT", NOW) > MAX_RETRY_AFTER


def test_over_an_hour_is_too_long_to_sleep_through() -> None:
    assert MAX_RETRY_AFTER == 3600.0
    assert too_long(parse_retry_after("3601", NOW))
    assert not too_long(parse_retry_after("3600", NOW)) and not too_long(None)


# --- the retry predicate --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("v", "retried"),
    [
        pytest.param(verdict("retry", "server_error", 503), True, id="5xx"),
        pytest.param(verdict("retry", "timeout"), True, id="timeout"),
        pytest.param(verdict("retry", "network_error"), True, id="network"),
        pytest.param(verdict("retry", "unexpected_response", 200), True, id="garbage-2xx"),
        pytest.param(verdict("permanent", "bad_request", 400), False, id="400"),
        pytest.param(verdict("permanent", "incorrect_review_key", 401), False, id="401"),
        pytest.param(verdict("permanent", "job_not_found", 404), False, id="404"),
        pytest.param(verdict("permanent", "unexpected_response", 302), False, id="redirect"),
        pytest.param(verdict("abort", "api_key_invalid", 403), False, id="403"),
        pytest.param(rate_limited(), False, id="429-is-requeued-not-retried"),
        pytest.param(Verdict("ok", "updated", None, None, None, 200), False, id="ok"),
        pytest.param(Verdict("mismatch", "mismatch", None, None, False, 200), False,
                     id="mismatch"),
    ],
)
def test_only_transient_failures_are_retried(v: Verdict, retried: bool) -> None:
    assert RetryPolicy().should_retry(v, failed_attempts=1) is retried


def test_retries_stop_at_max_attempts() -> None:
    policy = RetryPolicy.from_options(SendOptions(max_attempts=3))
    v = verdict("retry", "server_error", 500)
    assert [policy.should_retry(v, n) for n in (1, 2, 3)] == [True, True, False]


def test_a_429_is_not_a_failed_attempt() -> None:
    assert not RetryPolicy.counts_as_attempt(rate_limited())
    assert RetryPolicy.counts_as_attempt(verdict("retry", "timeout"))


def test_a_zero_base_policy_never_waits() -> None:
    assert RetryPolicy(base=0.0).delay(5, random.Random(1)) == 0.0


# --- 429 streaks ----------------------------------------------------------------------------


def test_without_retry_after_the_pause_doubles_per_consecutive_429() -> None:
    streak = RateLimitStreak(period=3600.0)
    delays = [streak.on_429(rate_limited(), NOW).delay for _ in range(4)]
    assert delays == [1.0, 2.0, 4.0, 8.0]
    streak.reset()
    assert streak.on_429(rate_limited(), NOW).delay == 1.0


def test_retry_after_is_honoured_as_a_minimum() -> None:
    streak = RateLimitStreak(period=3600.0)
    first = streak.on_429(rate_limited("30"), NOW)
    assert (first.delay, first.source, first.end_run) == (30.0, "retry_after", None)
    zero = RateLimitStreak(period=3600.0)
    delays = [zero.on_429(rate_limited("0"), NOW).delay for _ in range(3)]
    assert delays == [1.0, 2.0, 4.0]  # "Retry-After: 0" forever cannot make us hammer


def test_an_unusable_retry_after_falls_back_to_the_backoff() -> None:
    d = RateLimitStreak(period=3600.0).on_429(rate_limited("Tue, 03 Nov 2020 00:00:00 GMT"), NOW)
    assert (d.delay, d.source) == (1.0, "backoff")


def test_retry_after_over_an_hour_ends_the_run_resumably() -> None:
    d = RateLimitStreak(period=3600.0).on_429(rate_limited("7200"), NOW)
    assert d.end_run == "budget_exhausted" and d.resume_after == 7200.0


def test_a_429_naming_the_daily_limit_ends_the_run_with_when_to_resume() -> None:
    d = RateLimitStreak(period=3600.0).on_429(rate_limited("5400", daily=True), NOW)
    assert d.end_run == "daily_limit" and d.resume_after == 5400.0
    unknown = RateLimitStreak(period=3600.0).on_429(rate_limited(daily=True), NOW)
    assert unknown.end_run == "daily_limit" and unknown.resume_after is None


def test_a_429_after_waiting_a_full_window_ends_the_run() -> None:
    """Consecutive 429s with a whole PERIOD of waiting behind them: our own window is empty, so
    the limit is another one (daily, or other traffic on the key)."""
    streak = RateLimitStreak(period=10.0)
    decisions = [streak.on_429(rate_limited(), NOW) for _ in range(5)]
    assert [d.delay for d in decisions[:4]] == [1.0, 2.0, 4.0, 8.0]
    assert [d.end_run for d in decisions] == [None, None, None, None, "daily_limit"]


# --- outages --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("v", "network"),
    [
        pytest.param(verdict("retry", "timeout"), True, id="timeout"),
        pytest.param(verdict("retry", "network_error"), True, id="connection"),
        pytest.param(verdict("retry", "server_error", 503), True, id="gateway-503"),
        pytest.param(verdict("retry", "server_error", 500), False, id="500-is-an-answer"),
        pytest.param(verdict("permanent", "job_not_found", 404), False, id="404"),
        pytest.param(rate_limited(), False, id="429"),
    ],
)
def test_what_counts_as_a_network_failure(v: Verdict, network: bool) -> None:
    assert is_network_failure(v) is network


def test_an_outage_needs_every_recent_request_to_fail() -> None:
    d = OutageDetector(window_n=3, limit=900.0)
    for t in (0.0, 1.0):
        d.record(True, t)
    assert not d.in_outage
    d.record(False, 2.0)  # one answer in between: not an outage
    for t in (3.0, 4.0, 5.0):
        d.record(True, t)
    assert d.in_outage and d.duration(10.0) == 7.0  # from the streak's first failure


def test_an_outage_gives_up_after_its_limit_and_ends_on_any_answer() -> None:
    d = OutageDetector(window_n=2, limit=900.0)
    d.record(True, 0.0)
    d.record(True, 1.0)
    assert not d.exhausted(899.0) and d.exhausted(900.0)
    d.record(False, 901.0)
    assert not d.in_outage and d.duration(1000.0) == 0.0 and not d.exhausted(2000.0)


def test_outage_probes_back_off_to_a_minute() -> None:
    d = OutageDetector(window_n=2)
    probes = []
    for t in range(12):
        d.record(True, float(t))
        if d.in_outage:
            probes.append(d.probe_delay())
    assert probes[:4] == [1.0, 2.0, 4.0, 8.0] and probes[-1] == 60.0


def test_the_outage_window_exceeds_the_concurrency() -> None:
    assert OutageDetector.for_concurrency(4).window_n == 8
    assert OutageDetector.for_concurrency(1).window_n == 5


# --- halting --------------------------------------------------------------------------------


def test_halt_after_n_consecutive_rows_with_the_same_permanent_code() -> None:
    h = HaltDetector(3)
    assert [h.record("job_not_found") for _ in range(3)] == [False, False, True]
    assert h.code == "job_not_found"


@pytest.mark.parametrize(
    "breaker",
    [
        pytest.param(None, id="a-success"),
        pytest.param("incorrect_review_key", id="a-different-code"),
        pytest.param("timeout", id="a-non-halting-code"),
    ],
)
def test_the_streak_resets(breaker: str | None) -> None:
    h = HaltDetector(3)
    h.record("job_not_found")
    h.record("job_not_found")
    h.record(breaker)
    assert not h.record("job_not_found")


def test_halt_codes_are_the_permanent_row_errors() -> None:
    assert {"incorrect_review_key", "job_not_found", "bad_request"} == HALT_CODES


def test_halt_after_zero_disables_halting() -> None:
    h = HaltDetector(0)
    assert not any(h.record("bad_request") for _ in range(100))
