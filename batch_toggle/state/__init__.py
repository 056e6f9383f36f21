"""The state store: runs, outcomes, the ledger and the send log.

    with open_store(location, readonly=...) as store:   # a state.interface.Store

`location` picks the backend: a path (or `sqlite:PATH`) is a SQLite file, the default; a
`postgresql://USER@HOST:PORT/DB` URL is a PostgreSQL database shared by a team. Nothing outside
this package knows which one it has. The backends load lazily: `import batch_toggle` loads
neither pyarrow nor a database client.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from batch_toggle.errors import StoreError
from batch_toggle.state.location import StateLocation, is_postgres_url, normalise

if TYPE_CHECKING:
    from batch_toggle.state.interface import Store

POSTGRES_EXTRA = "pip install 'batch-toggle[postgres]'"

__all__ = ["POSTGRES_EXTRA", "StateLocation", "is_postgres_url", "location_text", "open_store"]


def open_store(location: StateLocation | None = None, *, readonly: bool = False) -> Store:
    """Open the store at `location` (default: the user's SQLite file, see
    records.default_state_path). Read-only: never creates or writes anything; a store that
    does not exist yet reads as empty (`exists` False).

    Raises UsageError (exit 2) for a PostgreSQL URL with a password in it, StoreError (exit 2)
    when the store cannot be opened, is not ours or is newer than this batch-toggle, or when
    PostgreSQL's client is not installed (the message says what to install)."""
    where = normalise(location)
    if isinstance(where, str):
        try:
            from batch_toggle.state.postgres import PostgresStore
        except ImportError as exc:
            if exc.name is not None and exc.name.split(".")[0] == "psycopg":
                raise StoreError(f"a PostgreSQL state store needs its client: "
                                 f"{POSTGRES_EXTRA}") from None
            raise
        return PostgresStore.open(where, readonly=readonly)
    from batch_toggle.state.records import default_state_path
    from batch_toggle.state.sqlite import SqliteStore
    return SqliteStore.open(where if where is not None else default_state_path(),
                            readonly=readonly)


def location_text(location: StateLocation | None) -> str:
    """The store's location as messages show it: its path, or its URL without a password."""
    from batch_toggle.state.location import shown
    from batch_toggle.state.records import default_state_path
    where = normalise(location)
    return shown(where if where is not None else default_state_path())
