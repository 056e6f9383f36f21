"""The state store's ledger, as the planner sees it.

validate and --dry-run read it (never write it) so they predict `unchanged` and
`resubscribe_blocked` exactly as `run` would.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from batch_toggle.plan.units import LedgerView

if TYPE_CHECKING:
    from batch_toggle.config import JobConfig
    from batch_toggle.state.interface import Store

# confirmed_seq: a client's latest client-level confirmation decides its state (plan); the
# store's own order of writes says which is latest, never a clock.
_COLUMNS = ["job_id", "update_target", "do_notify_sms", "review_key_hash", "entity_id",
            "confirmed_seq"]


def ledger_view(store: Store, exclude_run: str | None = None) -> LedgerView | None:
    """What the store confirmed; None when it knows nothing yet.

    A resume excludes what its own run learnt: those units keep their stored outcomes instead
    of turning `unchanged`, and the plan stays the one the run began with.
    """
    confirmed = store.ledger_table(confirmed_only=True, columns=[*_COLUMNS, "run_id"])
    clients = store.job_clients()
    if exclude_run is not None and confirmed.num_rows:
        import pyarrow.compute as pc
        mine = pc.equal(confirmed["run_id"], exclude_run)
        learnt = set(confirmed.filter(mine)["job_id"].to_pylist())
        confirmed = confirmed.filter(pc.invert(mine))
        clients = {j: c for j, c in clients.items() if j not in learnt}
    if confirmed.num_rows == 0 and not clients:
        return None
    return LedgerView(confirmed=confirmed.select(_COLUMNS), job_clients=clients,
                      hash_review_key=store.review_key_hash)


def read_ledger(config: JobConfig) -> LedgerView | None:
    """Open the configured store read-only, if it exists, and view its ledger."""
    if not config.use_state:
        return None
    from batch_toggle.state import open_store
    with open_store(config.state_path, readonly=True) as store:
        return ledger_view(store) if store.exists else None
