"""The one way this package writes to stderr: a writer that never raises, shared by the process.

Lines go to stderr from places where an exception must not escape: inside a run (the
committer's callback, the progress ticker, the -v lines, a failed --events write), and on the
way out (an error's one line, "batch-toggle: interrupted"). stderr can be gone by then
(`batch-toggle run ... --progress 2>&1 | head -3`, a closed terminal, `2>&-`), and a raise
there would hang a run, print a traceback into nowhere, or change the exit code.

Stdlib only (sys, os, io), no click: batch_toggle.cli.entry writes through it before the CLI has
been imported, and the library's EventLog without any CLI at all.

There is ONE writer, `STDERR`, for the whole process: the progress bar, the notices above it
and the last lines all go through it, so once one write has found stderr gone nobody tries
again.
"""

from __future__ import annotations

import io
import os
import sys


class Stderr:
    """sys.stderr (looked up at each write) as the bar and the notices see it: never raises.

    The first write or flush that fails (a pipe whose reader left: BrokenPipeError; another
    OSError; ValueError on a closed file) marks it gone; nothing is written after that. Its file
    descriptor is then pointed at /dev/null: Python would otherwise retry the unwritten bytes
    when it flushes stderr at exit, fail again, and exit 120 instead of the run's own code. A
    line written later by anyone else (an error's one line, "interrupted") is dropped the same
    way instead of raising. tqdm never sees an exception either: one raised while it draws
    leaves its lock held (refresh() does not release it on the way out).
    """

    def __init__(self) -> None:
        self.gone = False

    def write(self, text: str) -> None:
        if self.gone:
            return
        if sys.stderr is None:  # started with stderr closed (`2>&-`): Python sets it to None
            self.gone = True
            return
        try:
            sys.stderr.write(text)
        except (OSError, ValueError):
            self._lost()

    def flush(self) -> None:
        if self.gone or sys.stderr is None:
            return
        try:
            sys.stderr.flush()
        except (OSError, ValueError):
            self._lost()

    def fileno(self) -> int:
        """For tqdm's terminal width (dynamic_ncols); it falls back when this raises."""
        if sys.stderr is None:
            raise io.UnsupportedOperation("no stderr")
        return sys.stderr.fileno()

    @property
    def encoding(self) -> str:
        """For tqdm's choice of bar characters (unicode or ascii)."""
        return getattr(sys.stderr, "encoding", None) or "ascii"

    def _lost(self) -> None:
        self.gone = True
        fileno = getattr(sys.stderr, "fileno", None)
        if fileno is None:
            return
        try:
            fd = fileno()
            null = os.open(os.devnull, os.O_WRONLY)
        except (OSError, ValueError):  # no descriptor (a closed or in-memory stream)
            return
        if null == fd:  # the descriptor itself was closed: /dev/null took its number; keep it
            return
        try:
            os.dup2(null, fd)
        except OSError:
            pass
        finally:
            os.close(null)


STDERR = Stderr()  # the process's one writer: once it finds stderr gone, nobody writes


def say(line: str) -> None:
    """`line` and a newline on stderr, flushed; dropped, never raised, once stderr is gone."""
    STDERR.write(line + "\n")
    STDERR.flush()
