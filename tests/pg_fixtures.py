"""The PostgreSQL fixtures (tests/conftest.py imports them; tests/pg_server.py runs the server).

    def test_a(pg_database): pg_database.dsn, .password, .connect(), .execute("SELECT ...")
    def test_b(pg_server): pg_server.outage(20.0).wait(); pg_server.stop(); pg_server.start()

One server per pytest process, started by the first test that asks for it: under pytest-xdist
each worker that runs such a test starts its own (about a second). Sharing one across workers
would save that second but not survive the outage helpers: a test that stops its server would
break the tests that other workers run on it at the same moment, and the last worker out would
have to be found to stop it. Each test gets a database of its own, created from template0
(about 0.05 s) and dropped afterwards; after every test the server is running again, whatever
the test did to it.

Without the server binaries, the `postgres` user (when root) or psycopg, these tests skip with
the reason.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pg_server import PgDatabase, PgServer, unavailable_reason


@pytest.fixture(scope="session")
def pg_server_session() -> Iterator[PgServer]:
    """The process's server (use `pg_server`, which also repairs it after each test)."""
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    server = PgServer.create()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def pg_server(pg_server_session: PgServer) -> Iterator[PgServer]:
    """The running server; stop it, start it, or give it an outage: it is up again after the
    test."""
    yield pg_server_session
    pg_server_session.ensure_running()


@pytest.fixture
def pg_database(pg_server: PgServer) -> Iterator[PgDatabase]:
    """A fresh empty database owned by the test role, dropped after the test."""
    with pg_server.database() as database:
        yield database
