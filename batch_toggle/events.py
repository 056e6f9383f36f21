"""--events: one JSON object per line for cron and CI.

Each line has `ts` (UTC), `event` (the kind) and the kind's fields:

  plan            run start: command (run, validate or audit), run_id, rows, requests_needed,
                  estimated_duration_s and estimated_duration, rate, the estimate's
                  estimated_duration_range_s/_range, latency_s, latency_source, burst,
                  slots_held (see docs/report.md; an audit's also: units, jobs)
  resume          a resumed run: run_id, units_with_outcome, units_to_send, and the estimate
                  for those (the plan's keys but requests_needed)
  resume_new_run  --resume found no unfinished run to continue: reason
  request         one answer (or failure): unit, kind, http_status
  retry           a row will be sent again: unit, row, job_id, update_target, error_code,
                  http_status, attempt, max_attempts, seconds (the backoff)
  pause           every worker pauses: reason ("429": seconds, source; "outage": seconds,
                  outage_s, limit_s, last: the latest failure, "no answer (timeout)" or
                  "gateway 503")
  wait            sending waits for the budget window: reason ("budget" or "daily"), seconds
  stop            the run was told to stop: code, exit_code, message (an audit's says "audit
                  again", never --resume), resume_after
  canary          the canary's verdict: units, failed_permanently, go_on
  row             one request's final outcome, once committed, on the row it was sent for
                  (invalid, duplicate, superseded and unchanged rows get none): unit, row,
                  source (file:row), job_id, update_target, status, error_code, http_status,
                  attempts (every request sent for the unit: retries, re-sends after a
                  429, outage probes), retryable, latency_ms
  finish          run_id, exit_code, verdict, counts

The same events drive -v/-vv on stderr (cli/verbose.py). The file is created 0600 and flushed
per line, so a tail -f or a killed run still shows everything up to the last event. Events
never carry the API key or a review key: rows are named by job_id and file:row, failures by
error code and HTTP status (a stop's message quotes a server only as classify.py scrubbed it).

Events are written from inside the run (the send loop, a signal's stop, the committer), so a
write that fails (`--events /dev/stdout | head` once head has quit: EPIPE; a full disk) must
not become the run's failure: the log says so once on stderr and writes no more events; the
run, its report and its exit code are what they would have been.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from batch_toggle.clock import utc_text
from batch_toggle.errors import UsageError
from batch_toggle.stderr import say


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

    def __call__(self, kind: str, data: dict[str, Any]) -> None:
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


def fan_out(*sinks: Callable[[str, dict[str, Any]], None] | None,
            ) -> Callable[[str, dict[str, Any]], None]:
    """One Hooks.event that feeds every sink given (the --events file, the -v lines, a
    library caller's on_event)."""
    live = [s for s in sinks if s is not None]

    def event(kind: str, data: dict[str, Any]) -> None:
        for sink in live:
            sink(kind, data)

    return event


@dataclass(frozen=True)
class Hooks:
    """How the core talks to whoever runs it. Defaults are silent."""

    notice: Callable[[str], None] = lambda _msg: None  # one line for a person (stderr)
    event: Callable[[str, dict[str, Any]], None] = lambda _kind, _data: None  # --events
    progress: Callable[[dict[str, Any]], None] = lambda _snapshot: None  # progress bar
    color: bool = False  # ANSI colour in the stderr summary (the CLI decides: TTY, NO_COLOR)


SILENT = Hooks()
