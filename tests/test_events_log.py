"""EventLog (--events) never raises into the run: a failed write is said once, then the log
stops. The CLI side (a pipe whose reader quit) is tests/e2e/test_events_closed_pipe_e2e.py."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from typing import Any

import pytest

from batch_toggle.events import EventLog


class FailingFile:
    """A file whose writes (or flushes) fail as a full disk's do."""

    def __init__(self, on: str) -> None:
        self.on = on
        self.written: list[str] = []
        self.closed = False

    def write(self, text: str) -> int:
        if self.on == "write":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.written.append(text)
        return len(text)

    def flush(self) -> None:
        if self.on == "flush":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def close(self) -> None:
        self.closed = True
        self.flush()


@pytest.mark.parametrize("on", ["write", "flush"])
def test_a_failing_write_is_said_once_and_the_log_stops(tmp_path: Path, on: str) -> None:
    warned: list[str] = []
    log = EventLog(tmp_path / "events.jsonl", warn=warned.append)
    log("plan", {"rows": 3})
    failing = FailingFile(on)
    log._file.close()  # type: ignore[union-attr]
    log._file = failing  # type: ignore[assignment]
    for unit in range(3):
        log("row", {"unit": unit})  # raises nothing
    log.close()
    assert warned == [f"warning: --events {tmp_path / 'events.jsonl'}: cannot write (No space "
                      "left on device); no more events are written, the run goes on"]
    assert failing.closed
    assert len(failing.written) == (1 if on == "flush" else 0)  # the first try, then nothing
    lines = (tmp_path / "events.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["event"] for line in lines] == ["plan"]


def test_a_pipe_whose_reader_closed_stops_the_log_with_one_warning(
        capsys: pytest.CaptureFixture[str]) -> None:
    """`--events /dev/stdout | head -1` once head has quit: EPIPE, on stderr by default."""
    read, write = os.pipe()
    os.close(read)
    try:
        log = EventLog(Path(f"/proc/self/fd/{write}"))
        log("plan", {"rows": 1})
        log("finish", {"exit_code": 0})
        log.close()
    finally:
        os.close(write)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot write (Broken pipe)" in err, err


def test_a_sink_that_fails_on_close_is_said_once(tmp_path: Path) -> None:
    warned: list[str] = []
    log = EventLog(tmp_path / "events.jsonl", warn=warned.append)
    real: Any = log._file
    real.close()
    log._file = FailingFile("flush")  # type: ignore[assignment]
    log.close()
    log.close()
    assert len(warned) == 1
