"""--events: one JSON object per line for cron and CI.

Each line has `ts` (UTC), `event` (the kind, an EventKind) and the kind's fields, whose schema
is the kind's TypedDict below (EVENT_PAYLOADS maps each kind to it; docs/events.md says what
each field means):

  plan            run start (PlanEvent)          resume          a resumed run (ResumeEvent)
  resume_new_run  --resume found nothing to continue (ResumeNewRunEvent)
  request         one answer or failure          retry           a row will be sent again
  pause           every worker pauses            wait            sending waits for the window
  stop            the run was told to stop       canary          the canary's verdict
  row             one request's final outcome, once committed   finish  the run's end

The same events drive -v/-vv on stderr (cli/verbose.py). The file is created 0600 and flushed
per line, so a tail -f or a killed run still shows everything up to the last event. Events
never carry the API key or a review key: rows are named by job_id and file:row, failures by
error code and HTTP status (a stop's message quotes a server only as classify.py scrubbed it).

Events are written from inside the run (the send loop, a signal's stop, the committer), so a
write that fails (`--events /dev/stdout | head` once head has quit: EPIPE; a full disk) must
not become the run's failure: the log says so once on stderr and writes no more events; the
run, its report and its exit code are what they would have been.
"""

# No `from __future__ import annotations` here: the payload TypedDicts are the schema at run
# time too (EVENT_PAYLOADS), and Python 3.11 sees NotRequired only in evaluated annotations.
import contextlib
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal, NotRequired, TextIO, TypedDict, get_args

from batch_toggle.clock import utc_text
from batch_toggle.errors import UsageError
from batch_toggle.stderr import say

# --- the schema ------------------------------------------------------------------------------

EventKind = Literal["plan", "resume", "resume_new_run", "request", "retry", "pause", "wait",
                    "stop", "canary", "row", "finish"]
EVENT_KINDS: Final[tuple[EventKind, ...]] = get_args(EventKind)


class Estimate(TypedDict):
    """How long sending takes (send/cost.py's cost_record, without the request count): a
    resume's event states it for what is left."""

    estimated_duration_s: float
    estimated_duration: str  # e.g. "12 h 16 min"
    rate: str  # e.g. "2500/h"
    estimated_duration_range_s: list[float]  # [low, high]: replies of 20 ms to 1 s
    estimated_duration_range: str
    latency_s: float
    latency_source: str  # "assumed", "earlier replies" or "measured"
    burst: int  # requests that go before the first wait for the window
    slots_held: int  # window slots earlier requests still hold


class CostRecord(Estimate):
    """A plan's cost as the plan line, the `plan` event and the summary's `plan` state it."""

    requests_needed: int


def estimate_of(cost: CostRecord) -> Estimate:
    """A cost without its request count, its keys in the same order."""
    return Estimate(
        estimated_duration_s=cost["estimated_duration_s"],
        estimated_duration=cost["estimated_duration"], rate=cost["rate"],
        estimated_duration_range_s=cost["estimated_duration_range_s"],
        estimated_duration_range=cost["estimated_duration_range"], latency_s=cost["latency_s"],
        latency_source=cost["latency_source"], burst=cost["burst"],
        slots_held=cost["slots_held"])


class PlanEvent(CostRecord):
    command: str  # run, validate or audit
    run_id: str
    rows: int
    units: NotRequired[int]  # an audit's
    jobs: NotRequired[int]  # an audit's: distinct jobs, one read each


class ResumeEvent(Estimate):
    run_id: str
    units_with_outcome: int
    units_to_send: int


class ResumeNewRunEvent(TypedDict):
    reason: str


class RequestEvent(TypedDict):
    unit: int
    kind: str  # the answer's kind (classify.py): ok, rate_limited, server_error, ...
    http_status: int | None


class RetryEvent(TypedDict):
    unit: int
    row: int
    job_id: str
    update_target: str
    error_code: str | None
    http_status: int | None
    attempt: int
    max_attempts: int
    seconds: float  # the backoff


class PauseEvent(TypedDict):
    reason: Literal["429", "outage"]
    seconds: float
    source: NotRequired[str]  # a 429's: where the wait came from (Retry-After, ...)
    outage_s: NotRequired[float]  # an outage's: how long it has lasted
    limit_s: NotRequired[float]  # an outage's: when it stops the run
    last: NotRequired[str | None]  # an outage's latest failure


class WaitEvent(TypedDict):
    reason: str  # "budget" or "daily"
    seconds: float


class StopEvent(TypedDict):
    code: str
    exit_code: int
    message: str
    resume_after: str | None


class CanaryEvent(TypedDict):
    units: int
    failed_permanently: int
    go_on: bool


class RowEvent(TypedDict):
    unit: int
    row: int
    source: str  # file:row
    job_id: str
    update_target: str
    status: str
    error_code: str | None
    http_status: int | None
    attempts: int  # every request sent for the unit: retries, re-sends after a 429, probes
    retryable: bool | None
    latency_ms: float | None


class FinishEvent(TypedDict):
    run_id: str
    exit_code: int
    verdict: str
    counts: dict[str, int]


Event = (PlanEvent | ResumeEvent | ResumeNewRunEvent | RequestEvent | RetryEvent | PauseEvent
         | WaitEvent | StopEvent | CanaryEvent | RowEvent | FinishEvent)
# Each kind's payload: the schema of --events, in code.
EVENT_PAYLOADS: Final[Mapping[EventKind, type[Any]]] = {
    "plan": PlanEvent, "resume": ResumeEvent, "resume_new_run": ResumeNewRunEvent,
    "request": RequestEvent, "retry": RetryEvent, "pause": PauseEvent, "wait": WaitEvent,
    "stop": StopEvent, "canary": CanaryEvent, "row": RowEvent, "finish": FinishEvent,
}
# Whoever hears events: the --events file, the -v lines, a library caller's on_event.
EventSink = Callable[[EventKind, Mapping[str, Any]], None]


def _stderr(message: str) -> None:
    say(message)  # no stderr, or a closed one: nobody to tell, and never a raise


class EventLog:
    def __init__(self, path: Path, warn: Callable[[str], None] = _stderr) -> None:
        """Open (create 0600) for appending; UsageError naming the path when it cannot be,
        so an unwritable --events is found before the first request, not as a traceback.
        `warn` says, once, that writing failed and the log stopped (by default on stderr)."""
        self._path = path
        self._warn = warn
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            os.fchmod(fd, 0o600)
        except OSError as exc:
            reason = (f"{exc.filename} is not a directory" if isinstance(exc, FileExistsError)
                      else exc.strerror or str(exc))
            raise UsageError(f"--events {path}: cannot write: {reason}") from exc
        self._file: TextIO | None = os.fdopen(fd, "a", encoding="utf-8")

    def __call__(self, kind: EventKind, data: Mapping[str, Any]) -> None:
        if self._file is None:
            return
        record = {"ts": utc_text(), "event": kind,
                  **data}
        line = json.dumps(record, default=str, ensure_ascii=False) + "\n"
        try:
            self._file.write(line)
            self._file.flush()
        except (OSError, ValueError) as exc:  # ValueError: the file was closed under us
            self._stop(exc)

    def close(self) -> None:
        file, self._file = self._file, None
        if file is not None:
            try:
                file.close()  # flushes: may fail as a write does
            except (OSError, ValueError) as exc:
                self._warn(self._message(exc))

    def _stop(self, exc: BaseException) -> None:
        """Writing failed: say so once and write no more. The file is closed now, without
        caring whether that works: a failed flush left bytes that would only fail again (and
        be reported as an ignored exception at exit)."""
        file, self._file = self._file, None
        with contextlib.suppress(OSError, ValueError):
            if file is not None:
                file.close()
        self._warn(self._message(exc))

    def _message(self, exc: BaseException) -> str:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        return (f"warning: --events {self._path}: cannot write ({reason}); no more events are "
                "written, the run goes on")


def fan_out(*sinks: EventSink | None) -> EventSink:
    """One Hooks.event that feeds every sink given (the --events file, the -v lines, a
    library caller's on_event)."""
    live = [s for s in sinks if s is not None]

    def event(kind: EventKind, data: Mapping[str, Any]) -> None:
        for sink in live:
            sink(kind, data)

    return event


@dataclass(frozen=True)
class Hooks:
    """How the core talks to whoever runs it. Defaults are silent."""

    notice: Callable[[str], None] = lambda _msg: None  # one line for a person (stderr)
    event: EventSink = lambda _kind, _data: None  # --events
    progress: Callable[[dict[str, Any]], None] = lambda _snapshot: None  # progress bar
    color: bool = False  # ANSI colour in the stderr summary (the CLI decides: TTY, NO_COLOR)


SILENT = Hooks()
