"""The tqdm progress bar: rows done/total, requests, 429s, failures, and an ETA from the budget.

tqdm's own ETA extrapolates the recent rate, which is wrong for a budget-bound run (a burst of
2,500 then an hour's wait); the postfix carries the budget's ETA instead.

The bar and the notices above it write to stderr from inside the run (the committer's callback,
the progress ticker, the -v lines), where an exception must not escape: stderr can go away
mid-run (`batch-toggle run ... --progress 2>&1 | head -3`, a closed terminal). They write
through `_Stderr`, which never raises; the first failed write ends the bar and every later line.
"""

from __future__ import annotations

import io
import os
import sys
from typing import Any

from batch_toggle.config import format_duration


class _Stderr:
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
        try:
            os.dup2(null, fd)
        except OSError:
            pass
        finally:
            os.close(null)


class ProgressBar:
    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._bar: Any = None
        self._out = _Stderr()

    def __call__(self, snap: dict[str, Any]) -> None:
        if not self.enabled or self._out.gone:
            return
        if self._bar is None:
            from tqdm import tqdm  # only when a bar is shown: tqdm costs import time

            self._bar = tqdm(total=snap["total"], unit="row", dynamic_ncols=True, leave=True,
                             file=self._out,
                             bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} {postfix}")
        self._bar.total = snap["total"]  # grows when a canary's run goes on to the rest
        self._bar.n = snap["done"]
        waiting = f" waiting:{snap['waiting']}" if snap.get("waiting") else ""
        self._bar.set_postfix_str(
            f"req={snap['requests']} 429={snap['responses_429']} fail={snap['failures']} "
            f"eta~{format_duration(snap['eta_s'])}{waiting}", refresh=True)

    def write(self, message: str) -> None:
        """A notice on stderr that does not break the bar: printed above it while it runs."""
        if self._out.gone:
            return
        if self._bar is None:
            self._out.write(message + "\n")
            self._out.flush()
        else:
            self._bar.write(message, file=self._out)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()  # its last draw goes through _Stderr too: never raises
