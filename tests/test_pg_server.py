"""The throwaway PostgreSQL server the tests use (tests/pg_server.py): the ways in that a state
store on PostgreSQL will use, the outages its tests will stage, and that nothing outlives it."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from e2e import wait_until
from pg_server import HOST, ROLE, PgDatabase, PgServer, unavailable_reason

psycopg = pytest.importorskip("psycopg", reason="psycopg is not installed: pip install -e "
                                                "'.[postgres]'")

TESTS = Path(__file__).resolve().parent


@pytest.fixture
def no_pg_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No password from the developer's own environment: no PG* variable, no password file."""
    for name in [n for n in os.environ if n.startswith("PG")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("PGPASSFILE", str(tmp_path / "no-such-pgpass"))


def whoami(conn: psycopg.Connection) -> tuple[str, str | None, str]:
    """(current_user, the server address the session came in on or None on a socket,
    current_database)."""
    row = conn.execute("SELECT current_user, host(inet_server_addr()), current_database()"
                       ).fetchone()
    assert row is not None
    return row[0], row[1], row[2]


@pytest.mark.usefixtures("no_pg_env")
def test_tcp_takes_the_role_with_its_password(pg_database: PgDatabase) -> None:
    assert pg_database.dsn == f"postgresql://{ROLE}@{HOST}:{pg_database.server.port}/" \
                              f"{pg_database.name}"  # the password is not in it
    with psycopg.connect(pg_database.dsn, password=pg_database.password) as conn:
        assert whoami(conn) == (ROLE, HOST, pg_database.name)


@pytest.mark.usefixtures("no_pg_env")
@pytest.mark.parametrize("password", [None, "not-the-password"], ids=["none", "wrong"])
def test_tcp_refuses_the_role_without_its_password(pg_database: PgDatabase,
                                                   password: str | None) -> None:
    with pytest.raises(psycopg.OperationalError, match="password"):
        psycopg.connect(pg_database.dsn, password=password).close()


@pytest.mark.usefixtures("no_pg_env")
@pytest.mark.parametrize("source", ["PGPASSWORD", "PGPASSFILE", "~/.pgpass"])
def test_libpq_finds_the_password_where_a_user_keeps_it(
        pg_database: PgDatabase, source: str, monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    """The sources a `--state postgresql://...` user will rely on work with this server."""
    line = f"{HOST}:{pg_database.server.port}:{pg_database.name}:{ROLE}:{pg_database.password}\n"
    if source == "PGPASSWORD":
        monkeypatch.setenv("PGPASSWORD", pg_database.password)
    elif source == "PGPASSFILE":
        passfile = tmp_path / "passwords"
        passfile.write_text(line, encoding="utf-8")
        passfile.chmod(0o600)  # libpq ignores a password file that others can read
        monkeypatch.setenv("PGPASSFILE", str(passfile))
    else:
        monkeypatch.delenv("PGPASSFILE")
        monkeypatch.setenv("HOME", str(tmp_path))
        (tmp_path / ".pgpass").write_text(line, encoding="utf-8")
        (tmp_path / ".pgpass").chmod(0o600)
    with psycopg.connect(pg_database.dsn) as conn:
        assert whoami(conn)[0] == ROLE


@pytest.mark.usefixtures("no_pg_env")
def test_the_socket_is_trusted_without_a_password(pg_database: PgDatabase) -> None:
    with psycopg.connect(pg_database.socket_dsn) as conn:
        assert whoami(conn) == (ROLE, None, pg_database.name)


def test_each_database_starts_empty_and_apart(pg_server: PgServer,
                                              pg_database: PgDatabase) -> None:
    tables = "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
    assert pg_database.execute(tables) == []
    with pg_database.connect() as conn:  # the role owns its database: it can build a schema
        conn.execute("CREATE TABLE runs (id int PRIMARY KEY)")
    with pg_server.database() as other:
        assert other.name != pg_database.name
        assert other.execute(tables) == []
    assert pg_database.execute(tables) == [("runs",)]
    names = {row[0] for row in pg_server.execute("SELECT datname FROM pg_database")}
    assert pg_database.name in names and other.name not in names  # dropped after its block


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_stop_breaks_connections_and_start_brings_the_data_back(pg_database: PgDatabase,
                                                                mode: str) -> None:
    """"immediate" is a crash: a committed row survives it all the same (synchronous_commit
    stays on even though fsync is off)."""
    server = pg_database.server
    conn = pg_database.connect(autocommit=True)
    conn.execute("CREATE TABLE outcomes (unit int)")
    conn.execute("INSERT INTO outcomes VALUES (1)")
    server.stop(mode)
    with pytest.raises(psycopg.OperationalError):
        conn.execute("SELECT 1")
    conn.close()
    with pytest.raises(psycopg.OperationalError):
        pg_database.connect().close()
    server.start()
    with pg_database.connect() as again:
        assert again.execute("SELECT unit FROM outcomes").fetchall() == [(1,)]


def test_an_outage_lasts_as_long_as_asked(pg_database: PgDatabase) -> None:
    outage = pg_database.server.outage(0.5)
    with pytest.raises(psycopg.OperationalError):
        pg_database.connect().close()
    outage.wait()
    with pg_database.connect() as conn:
        assert whoami(conn)[0] == ROLE
    assert outage.ended is not None and outage.ended - outage.began >= 0.5


def test_after_a_test_the_server_is_up_again_at_once(pg_server: PgServer) -> None:
    """What the fixtures do after each test: an outage left running is cut short."""
    outage = pg_server.outage(600.0)
    assert not pg_server.is_running()
    pg_server.ensure_running()
    assert pg_server.is_running() and outage.over
    assert outage.ended is not None and outage.ended - outage.began < 60.0


def test_it_listens_on_127_0_0_1_and_nowhere_else(pg_server: PgServer) -> None:
    assert pg_server.execute("SHOW listen_addresses") == [("127.0.0.1",)]
    with socket.socket() as other_loopback:  # not bound to every address: 127.0.0.2 is refused
        assert other_loopback.connect_ex(("127.0.0.2", pg_server.port)) == errno.ECONNREFUSED


def test_the_server_does_not_run_as_root(pg_server: PgServer) -> None:
    pid = pg_server.postmaster_pid()
    assert pid is not None
    assert Path(f"/proc/{pid}").stat().st_uid == pg_server.user.uid != 0


# --- nothing outlives the tests -------------------------------------------------------------

INNER_TESTS = '''
import json, os, signal

def test_fails(pg_database):
    assert False, "on purpose: a failing test must not leave the server behind"

def test_reports_its_server(pg_database):
    server = pg_database.server
    probe = {"root": str(server.root), "postmaster": server.postmaster_pid(),
             "guard": server.guard_pid}
    with open(os.environ["PG_PROBE"] + ".part", "w") as out:
        json.dump(probe, out)
    os.replace(os.environ["PG_PROBE"] + ".part", os.environ["PG_PROBE"])
    if os.environ["PG_THEN"] == "wait":
        signal.pause()  # until the outer test interrupts or kills this run
'''


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie does not: nobody may reap an orphan in a container)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def processes_in(root: Path) -> list[int]:
    """Every live process whose working directory or command line is inside `root` (all of a
    cluster's processes work in its data directory)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cwd = os.readlink(entry / "cwd")
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if (cwd.startswith(str(root)) or str(root) in cmdline) and alive(int(entry.name)):
            found.append(int(entry.name))
    return found


@pytest.mark.skipif(not Path("/proc/self/cwd").exists(), reason="needs Linux's /proc")
@pytest.mark.parametrize("end", ["a test fails", "Ctrl-C", "kill -9"])
def test_nothing_outlives_the_tests(tmp_path: Path, end: str) -> None:
    """A pytest run with the fixtures ends in failure, in Ctrl-C (SIGINT to its process group),
    or in SIGKILL: the server's processes and its directory are gone all the same."""
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    (tmp_path / "test_inner.py").write_text(INNER_TESTS, encoding="utf-8")
    (tmp_path / "pytest.ini").write_text("[pytest]\n", encoding="utf-8")
    probe = tmp_path / "probe.json"
    env = {**os.environ, "PYTHONPATH": str(TESTS), "PG_PROBE": str(probe),
           "PG_THEN": "return" if end == "a test fails" else "wait",
           "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}  # hypothesis' plugin alone takes 1.5 s
    with subprocess.Popen(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "pg_fixtures",
             "-c", str(tmp_path / "pytest.ini"), str(tmp_path)],
            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True) as inner:
        try:
            wait_until(lambda: probe.exists() or inner.poll() is not None, 120.0, "the inner run")
            if probe.exists() and end != "a test fails":
                os.killpg(inner.pid, signal.SIGINT if end == "Ctrl-C" else signal.SIGKILL)
            output = inner.communicate(timeout=120.0)[0]
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(inner.pid, signal.SIGKILL)
            raise
    assert probe.exists(), output
    server = json.loads(probe.read_text())
    root = Path(server["root"])
    assert isinstance(server["postmaster"], int) and server["postmaster"] > 1
    wait_until(lambda: not alive(server["guard"]), 60.0, "the guard to finish")
    assert not alive(server["postmaster"])
    assert processes_in(root) == []
    assert not root.exists()
    expected = {"a test fails": 1, "Ctrl-C": 2, "kill -9": -signal.SIGKILL}[end]
    assert inner.returncode == expected, output
    if end == "a test fails":
        assert "1 failed, 1 passed" in output, output

