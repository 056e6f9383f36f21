"""The records every state-store backend takes and gives: runs, ledger updates, the default
location. Kept apart from the backends so that the rest of the code can name them without
knowing (or importing) which database holds them."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from batch_toggle.clock import parse_utc
from batch_toggle.state.keys import is_review_key_hash
from batch_toggle.vocab import RESUMABLE_EXIT_CODES


def default_state_path(env: Mapping[str, str] | None = None) -> Path:
    """`$XDG_STATE_HOME/batch-toggle/state.sqlite`, or `~/.local/state/...` when it is unset.

    A relative XDG_STATE_HOME is ignored, as the XDG spec asks.
    """
    env = os.environ if env is None else env
    base = env.get("XDG_STATE_HOME", "")
    if base and os.path.isabs(base):
        root = Path(base)
    else:
        home = env.get("HOME")
        root = (Path(home) if home else Path.home()) / ".local" / "state"
    return root / "batch-toggle" / "state.sqlite"


@dataclass(frozen=True)
class LedgerUpdate:
    """What one unit's response taught us, to be written with its outcome.

    A confirmation (`observed=False`: a PUT's 200 showed the desired state) needs the keyed hash
    of the review key it was sent with (`StateStore.review_key_hash`); an observation
    (`observed=True`: a read-only audit saw this state) has no review key behind it.
    `client_id` is the client the job belongs to, when the response said. `confirmed_at` is the
    UTC ISO 8601 time the state was learnt, whichever way.
    """

    job_id: str
    update_target: str
    do_notify_sms: bool
    review_key_hash: str | None
    entity_id: str | None
    client_id: str | None
    confirmed_at: str
    run_id: str
    observed: bool = False

    def __post_init__(self) -> None:
        # A guard against a raw review key reaching the file by a slip of the caller.
        if self.review_key_hash is not None and not is_review_key_hash(self.review_key_hash):
            raise ValueError("review_key_hash must come from StateStore.review_key_hash()")
        if not self.observed and self.review_key_hash is None:
            raise ValueError("a confirmed ledger update needs the review key's hash")


# What one unit's outcome teaches the ledger: nothing, one unit, or several (a `client`
# request that also answers the client units folded into it, see plan.Units.folded).
LedgerUpdates = LedgerUpdate | tuple[LedgerUpdate, ...] | None


@dataclass(frozen=True)
class RunRecord:
    """One run as the store knows it.

    `counts` is what `finish_run` was given (None until then). `outcome_counts` counts the stored
    outcomes by status and `final_outcomes` those with a final status (not `not_attempted`):
    both count units (representative rows), not input rows. `units` is how many units the
    plan sends (as of the latest start or resume), so `units - final_outcomes` is what a resume
    would send.
    """

    run_id: str
    command: str
    inputs: tuple[tuple[str, str], ...]  # (name, sha256) in the order given
    plan_key: str
    options: dict[str, Any]
    total_rows: int
    started_at: str
    finished_at: str | None
    exit_code: int | None
    counts: dict[str, Any] | None
    pid: int | None
    host: str | None
    resumes: int = 0
    resumed_at: str | None = None
    outcome_counts: dict[str, int] = field(default_factory=dict)
    final_outcomes: int = 0
    units: int | None = None  # units (requests) the plan needs; None in a schema-1 record
    retryable_failed: int = 0  # outcomes `failed` with retryable true (what --retry-failed adds)
    resume_after: str | None = None  # ISO time: the daily limit it stopped at resets then
    stopped: dict[str, Any] | None = None  # {code, message}: why it ended before its queue did

    def sends_from(self, now: datetime) -> str | None:
        """When a resume may send again, if that is still ahead: the reset of the daily limit
        the run stopped at. None when there is none, it has passed, or it is more than 25 h
        away (no daily limit's reset: a resume may try)."""
        if not self.resume_after:
            return None
        reset = parse_utc(self.resume_after)
        if reset is None:
            return None
        return self.resume_after if now < reset <= now + timedelta(hours=25) else None

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.inputs)

    @property
    def unfinished(self) -> bool:
        """True when `run --resume` may continue it: killed, stopped early or interrupted."""
        return self.exit_code is None or self.exit_code in RESUMABLE_EXIT_CODES


