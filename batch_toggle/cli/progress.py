"""The tqdm progress bar: rows done/total, requests, 429s, failures, and an ETA from the budget.

tqdm's own ETA extrapolates the recent rate, which is wrong for a budget-bound run (a burst of
2,500 then an hour's wait); the postfix carries the budget's ETA instead.

The bar and the notices above it write to stderr from inside the run (the committer's callback,
the progress ticker, the -v lines), where an exception must not escape: stderr can go away
mid-run (`batch-toggle run ... --progress 2>&1 | head -3`, a closed terminal). They write
through the process's one stderr writer (batch_toggle/stderr.py), which never raises; the first
failed write ends the bar and every later line, this process's error lines included.
"""

from __future__ import annotations

from typing import Any

from batch_toggle.config import format_duration
from batch_toggle.stderr import STDERR, say


class ProgressBar:
    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._bar: Any = None
        self._out = STDERR  # shared with every other line: once it is gone, all are

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
            say(message)
        else:
            self._bar.write(message, file=self._out)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()  # its last draw goes through STDERR too: never raises
