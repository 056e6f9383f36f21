"""-v / -vv: the run's notable moments on stderr, one readable, timestamped line each.

Rendered from the same events as --events (batch_toggle/events.py), so the two never tell
different stories and the core never prints. What each level shows:

  -v   run start with the plan, resume decisions, each retry (row, unit, error, HTTP status,
       attempt n/N, wait), rows that ran out of attempts, 429 pauses (Retry-After or backoff),
       outage pauses, budget waits, every stop decision (abort, halt, outage, daily limit,
       --max-requests, --stop-after, a failing state store, a signal), the canary's verdict,
       the finish.
  -vv  also one line per request's outcome, once committed, on the row it was sent for
       (file:row): job_id, target, status, error_code, HTTP status, attempts, latency (for a
       row that ran out of attempts, this line takes the place of -v's "gave up" line and
       says `retryable`). A request is a unit of the plan (an audit's: a read, one per job);
       rows not sent themselves (invalid, conflict, duplicate, superseded, unchanged, a
       job's other rows in an audit, rows left unsent by a stop) get no line: the report
       has every row.

The advice a line gives follows the command, which the `plan` event names: a run resumes
(--resume, --retry-failed), an audit is simply run again.

Events never carry the API key or a review key, so neither can these lines. A line that
cannot be rendered (an event from a newer core) is skipped rather than stopping a long run.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from batch_toggle.clock import SYSTEM, utc_text
from batch_toggle.config import format_duration
from batch_toggle.events import EventKind

Writer = Callable[[str], None]

# Kinds deliberately without a line: one per request is more than a person can read (a retry,
# a 429 or a final outcome is already told by its own event).
SILENT_KINDS: frozenset[EventKind] = frozenset({"request"})


def _seconds(value: Any) -> str:
    """Backoffs are fractions of a second, budget waits up to hours: say each the readable way."""
    seconds = float(value or 0.0)
    return f"{seconds:.1f} s" if seconds < 60 else format_duration(seconds)


# Answers a gateway gives when the service behind it is down or slow: said as such, since
# the run treats them like a network failure (an outage), and "HTTP 503" alone reads as Logis.
GATEWAY_STATUSES = frozenset({502, 503, 504})


def _http(status: Any) -> str:
    """What came back, in words: "no answer", "gateway 503", "429", "HTTP 404"."""
    if status is None:
        return "no answer"
    if status in GATEWAY_STATUSES:
        return f"gateway {status}"
    return "429" if status == 429 else f"HTTP {status}"


def _unit(data: Mapping[str, Any]) -> str:
    return f"job {data.get('job_id')} ({data.get('update_target')})"


def _plural(n: Any, word: str) -> str:
    return f"{n:,} {word}{'' if n == 1 else 's'}" if isinstance(n, int) else f"{n} {word}s"


def _job(command: str) -> str:
    """What the lines call the job: an audit is recorded as a run, but is not one to a reader."""
    return "audit" if command == "audit" else "run"


def _plan(d: Mapping[str, Any], command: str = "run") -> str:
    needed = d.get("requests_needed", 0)
    return (f"start: {_job(command)} {d.get('run_id')}: {_plural(d.get('rows', 0), 'row')}, "
            f"{_plural(needed, 'read' if command == 'audit' else 'request')}: about "
            f"{d.get('estimated_duration')} at {d.get('rate')}")


def _resume(d: Mapping[str, Any]) -> str:
    return (f"resume: run {d.get('run_id')}: {d.get('units_with_outcome', 0):,} units already "
            f"have an outcome, {d.get('units_to_send', 0):,} to send")


def _resume_new_run(d: Mapping[str, Any]) -> str:
    return f"resume: {d.get('reason')}; a new run starts"


def _retry(d: Mapping[str, Any]) -> str:
    return (f"retry: {_unit(d)}: {d.get('error_code')} ({_http(d.get('http_status'))}), "
            f"attempt {d.get('attempt')}/{d.get('max_attempts')} failed; next try in "
            f"{_seconds(d.get('seconds'))}")


def _pause(d: Mapping[str, Any]) -> str:
    if d.get("reason") == "outage":
        last = f", the last: {d['last']}" if d.get("last") else ""
        return (f"outage: every recent request got no answer or a gateway error (for "
                f"{_seconds(d.get('outage_s'))}{last}); the run pauses, next probe in "
                f"{_seconds(d.get('seconds'))}; it stops after "
                f"{_seconds(d.get('limit_s'))} of outage")
    why = "as Retry-After asks" if d.get("source") == "retry_after" else "backoff"
    return (f"429: every worker pauses {_seconds(d.get('seconds'))} ({why}); the row goes "
            "back to the queue")


def _wait(d: Mapping[str, Any]) -> str:
    window = "the daily limit" if d.get("reason") == "daily" else "the --rate window"
    return (f"budget: {window} is full; the next request goes in "
            f"{_seconds(d.get('seconds'))}")


def _stop(d: Mapping[str, Any]) -> str:
    return (f"stop (exit {d.get('exit_code')}): {d.get('message')}; in-flight rows finish, "
            f"the rest are not_attempted ({d.get('code')})")


def _canary(d: Mapping[str, Any]) -> str:
    verdict = "going on with the rest" if d.get("go_on") else "nothing more is sent"
    return (f"canary: {_plural(d.get('units', 0), 'unit')} sent, "
            f"{d.get('failed_permanently', 0)} failed permanently: {verdict}")


def _finish(d: Mapping[str, Any], command: str = "run") -> str:
    counts = ", ".join(f"{k} {v:,}" for k, v in sorted((d.get("counts") or {}).items()))
    return (f"finish: {_job(command)} {d.get('run_id')}: exit {d.get('exit_code')}, "
            f"{d.get('verdict')}{' (' + counts + ')' if counts else ''}")


def _row(d: Mapping[str, Any]) -> str:
    status = d.get("status")
    code = f" {d['error_code']}" if d.get("error_code") else ""
    detail = [_http(d.get("http_status")), _plural(d.get("attempts") or 0, "attempt")]
    if d.get("latency_ms") is not None:
        detail.append(f"{float(d['latency_ms']):.0f} ms")
    if status == "failed" and d.get("retryable"):
        detail.append("retryable")  # what -v's "gave up" line says
    return f"row {d.get('source')}: {_unit(d)}: {status}{code} ({', '.join(detail)})"


# What a retryable failure's -v line advises, by command: an audit rejects --resume.
RETRY_ADVICE = {"run": "--resume --retry-failed sends it again",
                "audit": "auditing again reads it again"}


def _gave_up(d: Mapping[str, Any], command: str = "run") -> str | None:
    """At -v, the one row outcome that is a retry decision: attempts ran out."""
    if d.get("status") != "failed" or not d.get("retryable"):
        return None
    return (f"gave up: row {d.get('source')}: {_unit(d)}: {d.get('error_code')} "
            f"({_http(d.get('http_status'))}) after {_plural(d.get('attempts') or 0, 'attempt')}; "
            f"failed, retryable ({RETRY_ADVICE[_job(command)]})")


RENDERERS: dict[EventKind, Callable[[Mapping[str, Any]], str | None]] = {
    "plan": _plan, "resume": _resume, "resume_new_run": _resume_new_run, "retry": _retry,
    "pause": _pause, "wait": _wait, "stop": _stop, "canary": _canary, "finish": _finish,
}
# Renderers whose words depend on the command (run or audit): they also take it.
BY_COMMAND: frozenset[EventKind] = frozenset({"plan", "finish"})


def render(kind: EventKind, data: Mapping[str, Any], level: int,
           command: str = "run") -> str | None:
    """The line for one event at verbosity `level` (0: none), without the timestamp.
    `command` is the job's (the `plan` event's "command"): it words the advice and names."""
    if level <= 0 or kind in SILENT_KINDS:
        return None
    if kind == "row":
        return _row(data) if level >= 2 else _gave_up(data, command)
    if kind in BY_COMMAND:
        return _plan(data, command) if kind == "plan" else _finish(data, command)
    renderer = RENDERERS.get(kind)
    return renderer(data) if renderer is not None else None


class VerboseLog:
    """An event sink (Hooks.event) that writes the lines of `render` through `write`: the
    CLI's notice, which prints above a progress bar and is silent under --quiet."""

    def __init__(self, level: int, write: Writer,
                 now: Callable[[], datetime] = SYSTEM.now, command: str = "run") -> None:
        self.level = level
        self.command = command  # until a `plan` event names it
        self._write = write
        self._now = now

    def __call__(self, kind: EventKind, data: Mapping[str, Any]) -> None:
        # Events fire inside the send loop and the committer: an exception here would stop
        # the run (or hang it, waiting on a commit that never reports), so a line that cannot
        # be rendered is skipped, and a stderr that went away (a closed pipe) ends the lines.
        if self.level <= 0:
            return
        try:
            if kind == "plan" and isinstance(data.get("command"), str):
                self.command = data["command"]
            line = render(kind, data, self.level, self.command)
            if line is not None:
                self._write(f"{utc_text(self._now())} {line}")
        except OSError:  # the CLI's writer never raises, but a library caller's may: ends the lines
            self.level = 0
        except Exception:  # noqa: BLE001 - a line is not worth a 40-hour run
            return


