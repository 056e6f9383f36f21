"""--events: one JSON object per line for cron and CI (run start with the plan, each row's
outcome, 429 pauses, budget waits, abort, finish with the verdict and exit code).

The file is created 0600 and flushed per line, so a tail -f or a killed run still shows
everything up to the last event. Events never carry the API key or a review key.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from .errors import UsageError


class EventLog:
    def __init__(self, path: Path) -> None:
        """Open (create 0600) for appending; UsageError naming the path when it cannot be,
        so an unwritable --events is found before the first request, not as a traceback."""
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            os.fchmod(fd, 0o600)
        except OSError as exc:
            reason = (f"{exc.filename} is not a directory" if isinstance(exc, FileExistsError)
                      else exc.strerror or str(exc))
            raise UsageError(f"--events {path}: cannot write: {reason}") from exc
        self._file: TextIO = os.fdopen(fd, "a", encoding="utf-8")

    def __call__(self, kind: str, data: dict[str, Any]) -> None:
        record = {"ts": datetime.now(UTC).isoformat(timespec="milliseconds"), "event": kind,
                  **data}
        self._file.write(json.dumps(record, default=str, ensure_ascii=False) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()
