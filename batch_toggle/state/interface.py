"""The state store as the rest of batch-toggle sees it, whichever database holds it.

Two backends implement it: a SQLite file (state/sqlite.py, the default: one operator, one run
at a time) and PostgreSQL (state/postgres.py: a team's shared store). Code outside state/ opens
one with `state.open_store(location)` and types against `Store`; it never imports a backend nor
asks which one it has. What a store promises, whichever it is:

* an outcome is durable when `record_outcomes` returns (a worker waits for it before its next
  unit, so a crash loses nothing and re-sends at most what was in flight);
* review keys only as keyed hashes under the store's own secret, never the API key;
* "latest" (runs, confirmations) by the store's own counters, never by comparing clocks;
* a foreign or newer schema is refused (StoreError), never guessed at;
* `acquire_lock` refuses a second holder with StoreLocked naming it, and a holder that dies
  (even by SIGKILL) leaves no stale lock.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:  # pyarrow stays out of `import batch_toggle` (tests/test_import_weight.py)
    import pyarrow as pa

    from batch_toggle.outcome import Outcome
    from batch_toggle.state.records import LedgerUpdates, RunRecord
    from batch_toggle.state.sendlog import LoggedSend, Reading, SendEntry


class SlotGate(Protocol):
    """A request budget shared live by every process that sends with one API key through one
    store (state/postgres_budget.py). The process's own Budget still paces its sends; this is
    what keeps several processes, on several hosts, inside one key's windows together."""

    def reserve(self, windows: Sequence[tuple[int, float]]) -> tuple[int | None, float]:
        """Reserve one slot in every window (limit, hold seconds): (its id, 0.0), atomically
        against every other process using the key; or (None, seconds) when a window is full,
        with how long until its first slot frees at the latest. StoreError when the database
        cannot be reached (nothing is sent without a reservation)."""

    def wait(self, seconds: float) -> None:
        """Block until a slot of the key is released anywhere, or `seconds` pass."""

    def release(self, slot: int) -> None:
        """The request of `slot` was answered now: its slots expire `hold` from now. A slot
        never released (a process killed) counts as answered at its deadline."""

    def close(self) -> None: ...


class Store(Protocol):
    """One open state store. Close it (or use `with`); every write method of a read-only one
    raises StoreError, as does any database failure (its message names the store)."""

    readonly: bool
    exists: bool  # False for the empty read-only view of a store not created yet

    @property
    def location(self) -> str:
        """Where the store is, fit to show (a path, or a URL without any password)."""

    def close(self) -> None: ...
    def __enter__(self) -> Store: ...
    def __exit__(self, *exc_info: object) -> None: ...

    # review keys
    def review_key_hash(self, key: str) -> str: ...
    def review_key_hashes(self, keys: Iterable[str]) -> list[str]: ...

    # the run lock
    def acquire_lock(self, run_id: str, owner: str = "", *, scope: str = "") -> None:
        """Hold the run lock for `run_id` until `release_lock` or `close`; StoreLocked naming
        the holder otherwise. `scope` names the work (command, inputs, plan options): a store
        that runs several at once (PostgreSQL) keeps out only the same scope; the SQLite
        store keeps one run at a time whatever the scope."""

    def lock_holder(self) -> dict[str, Any] | None:
        """Who holds a run lock now (run_id, owner, pid, host, since, alive_at), or None; the
        newest holder where several runs may hold one."""

    def lock_holders(self) -> list[dict[str, Any]]:
        """Every current holder, newest first (one at most on the SQLite store)."""

    def heartbeat(self) -> None: ...
    def release_lock(self) -> None: ...

    # runs
    def create_run(self, run_id: str, *, command: str, inputs: Sequence[tuple[str, str]],
                   plan_key: str, options: Mapping[str, Any], total_rows: int,
                   started_at: str, units: int | None = None) -> None: ...
    def find_unfinished_run(self, input_names: Sequence[str], plan_key: str, *,
                            command: str = "run",
                            retry_failed: bool = False) -> RunRecord | None: ...
    def get_run(self, run_id: str) -> RunRecord | None: ...
    def mark_resumed(self, run_id: str, *, resumed_at: str,
                     options: Mapping[str, Any] | None = None,
                     units: int | None = None) -> None: ...
    def finish_run(self, run_id: str, *, exit_code: int, finished_at: str,
                   counts: Mapping[str, Any], resume_after: str | None = None,
                   stopped: Mapping[str, Any] | None = None) -> None: ...
    def list_runs(self, limit: int = 20) -> list[RunRecord]: ...

    def record_interrupted(self, run_id: str, finished_at: str, timeout: float = 1.0) -> None:
        """Record `run_id` as interrupted (exit 130) without the handle's own connections,
        which a stuck main thread may hold; StoreError when the store does not answer within
        `timeout` seconds (the watchdog's last act)."""

    # outcomes and the ledger
    def record_outcomes(self, run_id: str,
                        items: Sequence[tuple[int, Outcome, LedgerUpdates]],
                        sends: Sequence[SendEntry | tuple[Any, ...]] = ()) -> None: ...
    def load_outcomes(self, run_id: str) -> dict[int, Outcome]: ...
    def outcomes_table(self, run_id: str) -> pa.Table: ...
    def ledger_table(self, *, confirmed_only: bool = False,
                     columns: Sequence[str] | None = None) -> pa.Table: ...
    def job_clients(self, job_ids: Iterable[str] | None = None) -> dict[str, str]: ...

    # endpoints that answered before
    def has_answered(self, endpoint: str) -> bool: ...
    def record_answer(self, endpoint: str, at: str) -> None: ...

    def slot_gate(self, api_key: str, *, timeout: float) -> SlotGate | None:
        """The budget shared live by every process using `api_key` with this store (the key is
        known only by its keyed fingerprint), or None where the store shares none (SQLite: one
        run at a time, whose send log seeds the next). `timeout`: the longest a request may
        take; a slot never released counts as answered then."""

    # the send log (the budget's memory across processes)
    def record_sends(self, entries: Sequence[SendEntry | tuple[Any, ...]]) -> None: ...
    # With `key` (an API key's fingerprint): that key's records, and those that name no key.
    def recent_sends(self, now: Reading, keep: float, timeout: float,
                     key: str | None = None) -> list[LoggedSend]: ...
    def oldest_send(self, since_wall: float, key: str | None = None) -> float | None: ...
    def api_key_fingerprint(self, api_key: str) -> str: ...
    def prune_sends(self, now: Reading, keep: float, timeout: float) -> None: ...
    def send_log(self) -> list[LoggedSend]: ...
