"""The process's one stderr writer (batch_toggle/stderr.py): never raises, and once stderr is
gone nobody writes and the exit code stays the process's own.

Whatever breaks stderr for real (a pipe whose reader left, a closed descriptor, `2>&-`) is done
in a child process, so this process's own stderr is never touched: the child reports what it
saw as JSON on stdout and exits 3, so an exit code of 1 (an exception escaped) or 120 (Python's
exit-time flush of stderr failed) shows. The end-to-end cases (a run, a validate) are
tests/e2e/test_progress_closed_stderr_e2e.py and test_closed_stderr_validate_e2e.py.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from batch_toggle.cli.progress import ProgressBar
from batch_toggle.errors import ExitCode
from batch_toggle.stderr import STDERR, Stderr, say

REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 60.0  # a hung child fails its test instead of hanging the suite
CHILD_EXIT = 3

# What every child does once its stderr is broken: write once (that write fails), then record
# whether the writer is gone and where fd 2 points, then write again into a stream that would
# record anything (nothing may reach it), put the broken stderr back for the exit-time flush,
# and exit 3.
CHILD = textwrap.dedent("""
    import io, json, os, sys
    from batch_toggle.stderr import STDERR, say

    BREAK
    say("the first line")
    try:
        fd2 = os.fstat(2)
    except OSError:  # closed
        fd2 = None
    null = os.stat(os.devnull)
    seen = {"gone": STDERR.gone, "fd2_is_devnull":
            fd2 is not None and (fd2.st_dev, fd2.st_ino) == (null.st_dev, null.st_ino)}
    broken, sys.stderr = sys.stderr, io.StringIO()
    say("a later line")
    STDERR.write("more")
    STDERR.flush()
    seen["later"] = sys.stderr.getvalue()
    sys.stderr = broken
    print(json.dumps(seen), flush=True)
    sys.exit(3)
""")


def _env(unbuffered: bool) -> dict[str, str]:
    """As from a shell (stderr line-buffered: a failed write stays pending for the exit-time
    flush), or unbuffered."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    if unbuffered:
        env["PYTHONUNBUFFERED"] = "1"
    return env


def _child(breaking: str, unbuffered: bool = False, **kwargs: Any,
           ) -> tuple[int, dict[str, Any], bytes]:
    """Run CHILD with `breaking` as its first statement: exit code, what it saw, its stderr
    (when the caller gave none: a pipe read here)."""
    kwargs.setdefault("stderr", subprocess.PIPE)
    proc = subprocess.run([sys.executable, "-c", CHILD.replace("BREAK", breaking)], cwd=REPO,
                          env=_env(unbuffered), stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, timeout=TIMEOUT, **kwargs)
    seen = json.loads(proc.stdout) if proc.stdout.strip() else {}
    return proc.returncode, seen, proc.stderr or b""


@pytest.mark.parametrize("unbuffered", [False, True], ids=["buffered", "unbuffered"])
def test_a_pipe_whose_reader_left_marks_it_gone_and_points_fd2_at_devnull(
        unbuffered: bool) -> None:
    """`batch-toggle ... 2>&1 | head -0`: EPIPE on the first line; nothing raises, later lines
    are dropped, and the exit-time flush (of bytes still pending when buffered) cannot fail."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader has left
    try:
        code, seen, _ = _child("", unbuffered, stderr=write_end)
    finally:
        os.close(write_end)
    assert seen == {"gone": True, "fd2_is_devnull": True, "later": ""}
    assert code == CHILD_EXIT


def test_a_closed_descriptor_under_a_live_stream_is_replaced_by_devnull() -> None:
    """fd 2 closed under sys.stderr: EBADF. /dev/null then opens as descriptor 2 itself, and
    must stay there (closing it again left the exit-time flush failing: exit 120)."""
    code, seen, _ = _child("os.close(2)")
    assert seen == {"gone": True, "fd2_is_devnull": True, "later": ""}
    assert code == CHILD_EXIT


def test_a_closed_stream_marks_it_gone_and_writes_nothing() -> None:
    """sys.stderr closed (ValueError): no descriptor to redirect, none needed (a closed stream
    has nothing pending); fd 2 is left as it is, and nothing more reaches it."""
    code, seen, err = _child("sys.stderr.close()")
    assert seen == {"gone": True, "fd2_is_devnull": False, "later": ""}
    assert err == b""
    assert code == CHILD_EXIT


def test_a_process_started_without_stderr_writes_nothing_and_raises_nothing() -> None:
    """`2>&-`: Python starts with sys.stderr None."""
    proc = subprocess.run(
        ["/bin/sh", "-c", 'exec "$0" "$@" 2>&-', sys.executable, "-c",
         "import json, sys\n"
         "from batch_toggle.stderr import STDERR, say\n"
         "none = sys.stderr is None\n"
         "say('a line')\n"
         "STDERR.flush()\n"
         "print(json.dumps({'none': none, 'gone': STDERR.gone}))\n"
         "sys.exit(3)\n"],
        cwd=REPO, env=_env(False), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        timeout=TIMEOUT)
    assert json.loads(proc.stdout) == {"none": True, "gone": True}
    assert proc.returncode == CHILD_EXIT


def test_no_stderr_in_this_process_is_handled_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stderr", None)
    out = Stderr()
    out.write("a line\n")
    out.flush()
    assert out.gone
    assert out.encoding == "ascii"  # what tqdm asks for its bar characters
    with pytest.raises(io.UnsupportedOperation):  # tqdm falls back to a fixed width
        out.fileno()


class Breaking:
    """A stderr that raises `fail` on every write and flush, counting the attempts."""

    encoding = "utf-8"

    def __init__(self, fail: BaseException) -> None:
        self.fail = fail
        self.attempts = 0

    def write(self, text: str) -> int:
        self.attempts += 1
        raise self.fail

    def flush(self) -> None:
        self.attempts += 1
        raise self.fail


@pytest.mark.parametrize("failure", [BrokenPipeError(32, "Broken pipe"),
                                     OSError(5, "Input/output error"),
                                     ValueError("I/O operation on closed file.")],
                         ids=["broken-pipe", "eio", "closed"])
def test_the_first_failure_ends_every_later_write(monkeypatch: pytest.MonkeyPatch,
                                                  failure: BaseException) -> None:
    err = Breaking(failure)
    monkeypatch.setattr("sys.stderr", err)  # in memory: no descriptor, so fd 2 is left alone
    out = Stderr()
    out.write("a line\n")
    out.write("another\n")
    out.flush()
    assert out.gone and err.attempts == 1


def test_the_bar_and_the_last_lines_share_one_writer(monkeypatch: pytest.MonkeyPatch) -> None:
    """Once a notice above the bar finds stderr gone, an error's line or "interrupted" (say)
    does not try again: one writer for the process."""
    err = Breaking(BrokenPipeError(32, "Broken pipe"))
    monkeypatch.setattr("sys.stderr", err)
    ProgressBar(enabled=False).write("plan: 10 rows")
    assert STDERR.gone and err.attempts == 1
    say("batch-toggle: interrupted")
    assert err.attempts == 1


def test_say_writes_one_flushed_line(capsys: pytest.CaptureFixture[str]) -> None:
    say("batch-toggle: error: something")
    assert capsys.readouterr().err == "batch-toggle: error: something\n"


def test_an_error_line_into_a_closed_pipe_keeps_the_commands_exit_code(tmp_path: Path) -> None:
    """`_fail`'s line used click.echo, which raised BrokenPipeError past it: exit 1."""
    command = [sys.executable, "-m", "batch_toggle", "validate", str(tmp_path / "missing.csv")]
    seen = subprocess.run(command, cwd=tmp_path, env=_env(False), stdin=subprocess.DEVNULL,
                          capture_output=True, timeout=TIMEOUT)
    assert seen.stderr.decode().startswith("batch-toggle: error: ")
    assert seen.returncode == ExitCode.USAGE
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        unseen = subprocess.run(command, cwd=tmp_path, env=_env(False), stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=write_end, timeout=TIMEOUT)
    finally:
        os.close(write_end)
    assert unseen.returncode == ExitCode.USAGE


def test_interrupted_at_start_up_without_stderr_still_exits_130() -> None:
    """entry's "interrupted" line with sys.stderr None: it raised AttributeError (exit 1)."""
    proc = subprocess.run(
        [sys.executable, "-c", "import sys\nsys.stderr = None\n"
                               "from batch_toggle.cli.entry import _interrupted\n_interrupted()\n"],
        cwd=REPO, env=_env(False), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        timeout=TIMEOUT)
    assert proc.returncode == ExitCode.INTERRUPTED
