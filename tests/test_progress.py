"""The progress bar and the notices above it when stderr goes away (batch_toggle/cli/progress.py).

They write from inside the run (the committer's callback, the progress ticker, the -v lines):
a failed write there used to raise into the committer's writer task and hang the run. Now the
first failure ends the bar and every later line, and nothing raises. The end-to-end case (a
real run whose stderr pipe closes) is tests/e2e/test_progress_closed_stderr_e2e.py.
"""

from __future__ import annotations

import io
import os
import threading

import pytest
from tqdm.std import TqdmDefaultWriteLock

from batch_toggle.cli.app import make_hooks
from batch_toggle.cli.progress import ProgressBar

SNAP = {"total": 10, "done": 3, "requests": 3, "responses_429": 0, "failures": 0,
        "eta_s": 12.0, "waiting": None}
RETRY = {"unit": 3, "row": 7, "job_id": "0d1e", "update_target": "job",
         "error_code": "server_error", "http_status": 503, "attempt": 2, "max_attempts": 5,
         "seconds": 1.27}


class Stderr:
    """A stderr that works until `fail` is set, then raises it on every write and flush."""

    encoding = "utf-8"

    def __init__(self) -> None:
        self.text = ""
        self.fail: BaseException | None = None
        self.attempts_after_failure = 0

    def _check(self) -> None:
        if self.fail is not None:
            self.attempts_after_failure += 1
            raise self.fail

    def write(self, text: str) -> int:
        self._check()
        self.text += text
        return len(text)

    def flush(self) -> None:
        self._check()


FAILURES = [BrokenPipeError(32, "Broken pipe"), OSError(5, "Input/output error"),
            ValueError("I/O operation on closed file.")]


def _lock_is_free() -> bool:
    """tqdm's write lock can be taken by another thread (a raise inside tqdm's refresh()
    would have left it held by this one)."""
    took: list[bool] = []

    def probe() -> None:
        ok = TqdmDefaultWriteLock.th_lock.acquire(blocking=False)
        if ok:
            TqdmDefaultWriteLock.th_lock.release()
        took.append(ok)

    thread = threading.Thread(target=probe)
    thread.start()
    thread.join()
    return took == [True]


@pytest.mark.parametrize("failure", FAILURES, ids=["broken-pipe", "eio", "closed"])
def test_a_failed_write_ends_the_bar_and_every_later_line(
        monkeypatch: pytest.MonkeyPatch, failure: BaseException) -> None:
    err = Stderr()
    monkeypatch.setattr("sys.stderr", err)
    bar = ProgressBar(enabled=True)
    bar(SNAP)
    bar.write("plan: 10 rows")
    assert "3/10" in err.text and "plan: 10 rows\n" in err.text

    err.fail = failure  # the reader of the pipe left
    bar(dict(SNAP, done=4))  # from the committer's callback: must not raise
    assert err.attempts_after_failure == 1
    bar(dict(SNAP, done=5))
    bar.write("summary: ...")  # the final summary table, above the bar
    bar.close()
    assert err.attempts_after_failure == 1  # nothing tried after the first failure
    assert _lock_is_free()


def test_notices_without_a_bar_stop_quietly(monkeypatch: pytest.MonkeyPatch) -> None:
    err = Stderr()
    monkeypatch.setattr("sys.stderr", err)
    bar = ProgressBar(enabled=False)
    bar.write("plan: 10 rows")
    err.fail = BrokenPipeError(32, "Broken pipe")
    bar.write("stopped: ...")
    bar.write("summary")
    bar(SNAP)
    bar.close()
    assert err.text == "plan: 10 rows\n"
    assert err.attempts_after_failure == 1


def test_a_process_started_without_stderr_shows_nothing_and_raises_nothing(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """`batch-toggle run ... --progress 2>&-`: Python starts with sys.stderr None."""
    monkeypatch.setattr("sys.stderr", None)
    bar = ProgressBar(enabled=True)
    bar(SNAP)
    bar.write("plan: 10 rows")
    bar(SNAP)
    bar.close()
    assert bar._out.gone


def test_the_notice_path_of_the_hooks_never_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    """make_hooks prints notices and the -v lines above the bar, through bar.write."""
    err = Stderr()
    monkeypatch.setattr("sys.stderr", err)
    bar = ProgressBar(enabled=True)
    hooks = make_hooks({"verbose": 1}, bar)
    hooks.progress(SNAP)
    err.fail = BrokenPipeError(32, "Broken pipe")
    hooks.notice("plan: 10 rows")
    hooks.event("retry", RETRY)
    hooks.progress(SNAP)
    bar.close()
    assert err.attempts_after_failure == 1


def test_a_broken_pipe_leaves_nothing_for_the_exit_flush(monkeypatch: pytest.MonkeyPatch) -> None:
    """A buffered stderr keeps the bytes a failed flush could not write, and Python flushes
    stderr again at exit: that second failure made the process exit 120, whatever the run's
    code. After the first failure the descriptor points at /dev/null, so it succeeds."""
    read_end, write_end = os.pipe()
    stream = io.TextIOWrapper(io.BufferedWriter(io.FileIO(write_end, "w")),
                              encoding="utf-8", line_buffering=True)
    try:
        monkeypatch.setattr("sys.stderr", stream)
        os.close(read_end)  # `| head -3` exits
        bar = ProgressBar(enabled=True)
        bar(SNAP)  # "\r...3/10..." has no newline: it waits in the buffer, then flush fails
        bar.write("summary")
        bar.close()
        stream.flush()  # what the interpreter does at exit: no BrokenPipeError now
    finally:
        monkeypatch.undo()
        stream.close()


def test_the_bar_still_draws_to_a_working_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    bar = ProgressBar(enabled=True)
    bar(SNAP)
    bar.write("a notice")
    bar(dict(SNAP, done=10, waiting="budget"))
    bar.close()
    err = capsys.readouterr().err
    assert "a notice\n" in err
    assert "10/10" in err and "req=3 429=0 fail=0" in err and "waiting:budget" in err
