"""`batch-toggle state migrate`: one operator's SQLite history into a team's PostgreSQL store.

Runs, outcomes, the ledger (with its review-key secret: the hashes keep their meaning), the send
log and the endpoints that answered are copied in one transaction on the target. Idempotent:
running it again adds nothing. Verified by counts: for each kind of row, how many of the
source's the target holds afterwards; any shortfall is an error (exit 2). The source is only
read: a store an older batch-toggle wrote (an older schema) is copied into a private temporary
directory and upgraded there, since that version may still be running on it and would refuse a
newer schema.
"""

from __future__ import annotations

import contextlib
import sqlite3
import tempfile
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from batch_toggle.errors import StoreError, UsageError
from batch_toggle.state.location import StateLocation, normalise, shown


@dataclass(frozen=True)
class Migration:
    """What was copied: per kind of row, the source's count and how many the target holds."""

    source: str
    target: str
    source_counts: dict[str, int]
    target_counts: dict[str, int]

    @property
    def complete(self) -> bool:
        return all(self.target_counts.get(k, 0) >= n for k, n in self.source_counts.items())


def migrate(source: StateLocation, target: StateLocation) -> Migration:
    """Copy the SQLite store at `source` into the PostgreSQL store at `target` (created when
    new). UsageError for locations of the wrong kinds; StoreError when either cannot be opened,
    the target holds another store's history, or the counts fall short."""
    from_where, to_where = normalise(source), normalise(target)
    if from_where is None or isinstance(from_where, str):
        raise UsageError(f"--from {shown(from_where or '')}: give the SQLite file to migrate "
                         "from")
    if not isinstance(to_where, str):
        raise UsageError(f"--to {to_where}: give the postgresql://USER@HOST:PORT/DB to "
                         "migrate to")
    if not from_where.exists():
        raise UsageError(f"--from {from_where}: no such file")
    from batch_toggle.state import open_store
    from batch_toggle.state.sqlite import SqliteStore

    with _in_this_schema(from_where) as readable, \
            SqliteStore.open(readable, readonly=True) as original:
        dump = original.dump()
    with open_store(to_where) as store:  # says what to install when psycopg is missing
        from batch_toggle.state.postgres import PostgresStore
        assert isinstance(store, PostgresStore)
        holding = store.load_dump(dump)
    result = Migration(str(from_where), shown(to_where), dump.counts(), holding)
    if not result.complete:
        short = ", ".join(f"{k} {holding.get(k, 0)} of {n}"
                          for k, n in result.source_counts.items() if holding.get(k, 0) < n)
        raise StoreError(f"state migrate: the target holds fewer rows than the source: {short}")
    return result


@contextlib.contextmanager
def _in_this_schema(path: Path) -> Iterator[Path]:
    """The SQLite store at `path` in this version's schema: the file itself, or a snapshot of
    it (SQLite's online backup: consistent even while a run writes) upgraded in a private
    temporary directory, removed afterwards. A newer or foreign file is left to the store's
    own refusal."""
    from batch_toggle.state.sqlite import SCHEMA_VERSION, SqliteStore

    uri = "file:" + urllib.parse.quote(str(path.resolve())) + "?mode=ro"
    try:
        with contextlib.closing(sqlite3.connect(uri, uri=True)) as source:
            (version,) = source.execute("PRAGMA user_version").fetchone()
            if not 0 < version < SCHEMA_VERSION:
                yield path
                return
            with tempfile.TemporaryDirectory(prefix="batch-toggle-migrate-") as tmp:
                copy = Path(tmp) / "state.sqlite"
                with contextlib.closing(sqlite3.connect(copy)) as target:
                    source.backup(target)
                with SqliteStore.open(copy):
                    pass  # opened to write: upgraded to this schema, step by step
                yield copy
    except sqlite3.Error as exc:
        raise StoreError(f"state store {path}: {exc}") from exc
