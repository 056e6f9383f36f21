"""`state migrate` from stores that older batch-toggle versions wrote (older SQLite schemas)
into a PostgreSQL store on a real throwaway server (tests/pg_server.py). The newest schema's
migration end to end, through the CLI, is tests/e2e/test_team_e2e.py."""

from __future__ import annotations

import sqlite3
import tempfile
from pathlib import Path
from typing import Any

import pytest
from test_status import _downgrade_to_schema_1
from test_store import (
    FULL,
    JOB_A,
    JOB_B,
    RUN_ARGS,
    confirm,
    downgrade_to_schema_3,
    observe,
    seqs,
)

from batch_toggle.errors import StoreError
from batch_toggle.state import open_store
from batch_toggle.state.migrate import migrate
from batch_toggle.state.sendlog import LoggedSend, SendEntry
from batch_toggle.state.sqlite import SCHEMA_VERSION, SqliteStore

DOWNGRADES = {3: downgrade_to_schema_3, 1: _downgrade_to_schema_1}


@pytest.fixture
def url(pg_database: Any, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("PGPASSWORD", pg_database.password)
    return str(pg_database.dsn)


def older_store(path: Path, version: int) -> dict[tuple[str, str], int | None]:
    """A store with two runs, confirmations, an observation and a send, as batch-toggle of
    schema `version` left it; the confirmations' order as that version read it."""
    with SqliteStore.open(path) as store:
        store.create_run("r1", **RUN_ARGS)
        store.record_outcomes("r1", [
            (0, FULL, confirm(store, job=JOB_A, at="2026-11-01T02:00:00Z")),
            (1, FULL, confirm(store, job=JOB_B, at="2026-11-01T01:00:00Z")),
            (2, FULL, observe(job=JOB_B, target="client"))])
        store.finish_run("r1", exit_code=0, finished_at="2026-11-01T03:00:00Z",
                         counts={"updated": 3})
        store.create_run("r2", **{**RUN_ARGS, "plan_key": "plan-2"})
        store.record_sends([SendEntry("s", 1000.0, 1001.0, "boot-1", 5.0, 6.0)])
    DOWNGRADES[version](path)
    with SqliteStore.open(path, readonly=True) as view:
        return seqs(view)


@pytest.mark.parametrize("version", sorted(DOWNGRADES))
def test_a_store_of_an_older_schema_migrates_whole_and_is_left_as_it_was(
        url: str, tmp_path: Path, version: int, monkeypatch: pytest.MonkeyPatch) -> None:
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    source = tmp_path / "state.sqlite"
    legacy = older_store(source, version)
    before = source.read_bytes()

    done = migrate(source, url)
    assert done.complete
    assert done.source_counts["runs"] == 2 and done.source_counts["outcomes"] == 3
    assert done.source_counts["ledger"] == 3 and done.source_counts["sends"] == 1

    assert source.read_bytes() == before  # only read: an older version may still use it
    with sqlite3.connect(source) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == version
    with open_store(url, readonly=True) as team:
        assert seqs(team) == legacy  # the same decisions: confirmations in the same order
        assert [r.run_id for r in team.list_runs()] == ["r2", "r1"]
        assert team.get_run("r1").exit_code == 0  # type: ignore[union-attr]
        assert sorted(team.load_outcomes("r1")) == [0, 1, 2]
        assert team.send_log() == [LoggedSend(1000.0, 1001.0)]  # no boot before schema 4
        # The review-key secret came along: the old hashes keep their meaning.
        with SqliteStore.open(source, readonly=True) as old:
            assert team.review_key_hash("k") == old.review_key_hash("k")

    again = migrate(source, url)  # idempotent
    assert again.target_counts == done.target_counts
    assert list(scratch.iterdir()) == []  # the upgraded copy went with its directory


def test_a_store_of_a_newer_schema_is_refused_and_not_copied(url: str, tmp_path: Path,
                                                              pg_database: Any) -> None:
    source = tmp_path / "state.sqlite"
    with SqliteStore.open(source) as store:
        store.create_run("r1", **RUN_ARGS)
    with sqlite3.connect(source) as conn:
        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    with pytest.raises(StoreError, match="newer"):
        migrate(source, url)
    assert pg_database.execute("SELECT to_regclass('batch_toggle.runs')") == [(None,)]
