"""A real, throwaway PostgreSQL server for the tests: the machine's own `initdb` and `pg_ctl`.

    server = PgServer.create()           # initdb + start, in a fresh directory (parent_dir())
    server.dsn("db")                     # postgresql://batch_toggle@127.0.0.1:PORT/db (no password)
    server.password                      # that role's password (TCP asks for it: scram-sha-256)
    server.socket_dsn("db")              # the same role over the Unix socket (trusted, no password)
    server.execute("SELECT 1")           # [(1,)]: as the superuser, for set-up and assertions
    with server.database() as db: ...    # a fresh empty database, dropped afterwards
    server.stop(); server.start()        # an outage by hand; server.outage(20.0) on a timer
    server.close()                       # server stopped, its directory removed

Not a mock: the server is PostgreSQL itself. It refuses to run as root, and CI runs as root, so
root hands it to the `postgres` system user (Debian's postgresql package creates it); an
unprivileged user runs it as itself. It listens on 127.0.0.1 only, on a port below Linux's
ephemeral range (so that no client socket takes it while an outage has it closed), and on a Unix
socket in its own directory.

A crashed or killed test process must not leave a postmaster behind: each server has a guard,
this file run as a script in a session of its own (out of reach of the terminal's Ctrl-C), that
waits for its owner's end of a pipe to close, which the kernel does when the owner exits however
it exits, and then stops the server and removes its directory. A normal `close()` does the same
itself first. Standard library only, so that the guard starts fast; psycopg is imported where a
connection is made.
"""

from __future__ import annotations

import contextlib
import importlib.util
import itertools
import os
import pwd
import random
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

ROLE = "batch_toggle"  # the role tests connect as: a password on TCP, trusted on the socket
SUPERUSER = "postgres"  # the bootstrap superuser: on the socket only (it has no password)
HOST = "127.0.0.1"
OLDEST_MAJOR = 13  # DROP DATABASE ... WITH (FORCE)
# Below Linux's ephemeral range (32768-60999): during an outage the port is closed, and a
# client's outgoing connection could otherwise take it as its own port and keep the server out.
PORTS = range(15000, 32000)
SETTINGS_FILE = "batch_toggle_tests.conf"
COMMAND_TIMEOUT = 60.0


class PgUnavailable(Exception):
    """This machine cannot run the server; the message says why (the tests skip with it)."""


class PgServerError(RuntimeError):
    """A server command failed; the message carries its output and the end of the server log."""


def find_bindir() -> Path:
    """The directory of initdb and pg_ctl: what pg_config says, else Debian's newest
    /usr/lib/postgresql/N/bin (Debian keeps them off PATH), else PATH."""
    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config is not None:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            said = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True,
                                  check=True, timeout=COMMAND_TIMEOUT).stdout.strip()
            candidates.append(Path(said))
    debian = Path("/usr/lib/postgresql").glob("*/bin")
    candidates += sorted(debian, key=lambda p: _version_key(p.parent.name), reverse=True)
    on_path = shutil.which("initdb")
    if on_path is not None:
        candidates.append(Path(on_path).resolve().parent)
    for bindir in candidates:
        if (bindir / "initdb").is_file() and (bindir / "pg_ctl").is_file():
            return bindir
    raise PgUnavailable("PostgreSQL's initdb and pg_ctl are not installed "
                        "(`make system-deps` installs Debian's postgresql)")


def _version_key(name: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", name))


def server_major(bindir: Path) -> int:
    """The major version of the binaries in `bindir` (`pg_ctl --version`)."""
    said = subprocess.run([str(bindir / "pg_ctl"), "--version"], capture_output=True, text=True,
                          check=True, timeout=COMMAND_TIMEOUT).stdout
    match = re.search(r"\)\s*(\d+)", said)
    if match is None:
        raise PgUnavailable(f"cannot read a version in {said!r}")
    return int(match.group(1))


def check_machine(bindir: Path | None = None) -> tuple[Path, int, ServerUser]:
    """The binaries' directory, their major version and the server's user; PgUnavailable
    when this machine cannot run the server."""
    bindir = bindir if bindir is not None else find_bindir()
    major = server_major(bindir)
    if major < OLDEST_MAJOR:
        raise PgUnavailable(f"PostgreSQL {major} in {bindir} is older than {OLDEST_MAJOR}")
    return bindir, major, server_user()


def unavailable_reason() -> str | None:
    """Why the tests cannot have a server here (what they skip with), or None."""
    if importlib.util.find_spec("psycopg") is None:
        return "psycopg is not installed: pip install -e '.[postgres]'"
    try:
        check_machine()
    except PgUnavailable as exc:
        return str(exc)
    return None


@dataclass(frozen=True)
class ServerUser:
    """The account the server's processes run as."""

    name: str
    uid: int
    gid: int
    home: str

    @property
    def is_me(self) -> bool:
        return self.uid == os.geteuid()


def server_user() -> ServerUser:
    """Who runs the server: PostgreSQL refuses root, so root hands it to `postgres`."""
    if os.geteuid() != 0:
        entry = pwd.getpwuid(os.geteuid())
    else:
        try:
            entry = pwd.getpwnam("postgres")
        except KeyError:
            raise PgUnavailable("running as root and there is no `postgres` user to run the "
                                "server as (Debian's postgresql package creates it)") from None
    return ServerUser(entry.pw_name, entry.pw_uid, entry.pw_gid, entry.pw_dir)


def run_as(user: ServerUser, argv: Sequence[str], cwd: Path,
           timeout: float = COMMAND_TIMEOUT) -> subprocess.CompletedProcess[str]:
    """Run a server binary as `user`, in `cwd`, with none of the caller's PG* variables.

    Root drops to the user in the child itself (setgroups/setgid/setuid, what
    `runuser -u postgres --` does, without a PAM session or a dependency on util-linux)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(LC_ALL="C", LANG="C", TZ="UTC", HOME=user.home)
    switch: dict[str, Any] = {}
    if not user.is_me:
        switch = {"user": user.uid, "group": user.gid, "extra_groups": []}
    return subprocess.run(list(argv), cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout, check=False, **switch)


def free_port() -> int:
    """A port on 127.0.0.1 that nothing holds now, from PORTS (the server may still lose a race
    for it: PgServer.create tries another one then)."""
    for port in random.SystemRandom().sample(PORTS, 50):  # whatever seeds `random`
        with socket.socket() as probe:
            try:
                probe.bind((HOST, port))
            except OSError:
                continue
            return port
    raise PgServerError("no free port on 127.0.0.1")


def parent_dir() -> Path:
    """Where servers live: /dev/shm when it is a roomy tmpfs, else /tmp.

    A database is created in 0.03 s on tmpfs against 0.2-0.4 s on a disk that other work keeps
    busy (fsync is off either way: it is the file copying that costs). Both are reachable by the
    server's user (pytest's own temporary root is private to root) and keep the socket's path
    under the 107 bytes a Unix socket allows."""
    shm = Path("/dev/shm")
    with contextlib.suppress(OSError):
        room = os.statvfs(shm)
        if room.f_bavail * room.f_frsize >= 1 << 30 and shm.stat().st_mode & 0o1777 == 0o1777:
            return shm
    return Path("/tmp")


def destroy(root: Path, bindir: Path, user: ServerUser) -> None:
    """Stop the server in `root` at once and remove the directory: used by close() and by the
    guard, so it must be safe to run twice (the second run finds nothing)."""
    data = root / "data"
    pid = postmaster_pid(data)
    if pid is not None:
        run_as(user, [str(bindir / "pg_ctl"), "stop", "-D", str(data), "-m", "immediate",
                      "-w", "-t", "30", "-s"], cwd=root)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if postmaster_pid(data) == pid:  # pg_ctl could not stop it: no mercy for a throwaway
                os.kill(pid, signal.SIGKILL)
    shutil.rmtree(root, ignore_errors=True)


def postmaster_pid(data: Path) -> int | None:
    """The pid in `data`/postmaster.pid (the first line), or None when there is none."""
    try:
        first = (data / "postmaster.pid").read_text(encoding="ascii").split("\n", 1)[0]
    except (FileNotFoundError, NotADirectoryError):
        return None
    return int(first) if first.strip().isdigit() else None


class PgServer:
    """One running throwaway server. Build it with PgServer.create(); end it with close()."""

    def __init__(self, bindir: Path, user: ServerUser, root: Path, major: int,
                 settings: dict[str, str]) -> None:
        self.bindir = bindir
        self.user = user
        self.root = root  # the socket's directory too
        self.data = root / "data"
        self.log = root / "server.log"
        self.major = major
        self.settings = settings
        self.port = 0
        self.password = secrets.token_hex(16)
        self._lock = threading.RLock()  # stop/start from a test and from an outage's timer
        self._outage: Outage | None = None
        self._names = itertools.count(1)
        self._guard: subprocess.Popen[bytes] | None = None
        self.closed = False

    # --- life ----------------------------------------------------------------------------

    @classmethod
    def create(cls, bindir: Path | None = None, parent: Path | None = None,
               settings: dict[str, str] | None = None) -> PgServer:
        """initdb, configure, start, and create ROLE; PgUnavailable when the machine cannot.
        `parent`: where its directory goes (parent_dir()); `settings`: postgresql.conf values
        over the defaults (e.g. {"fsync": "on"} for a benchmark that wants durable commits)."""
        bindir, major, user = check_machine(bindir)
        root = Path(tempfile.mkdtemp(prefix="batch-toggle-pg-", dir=parent or parent_dir()))
        server = cls(bindir, user, root, major, settings or {})
        try:
            server._start_guard()
            if not user.is_me:
                os.chown(root, user.uid, user.gid)
            server._initdb()
            server._first_start()
            server.execute(_create_role_sql(server.password))
        except BaseException:
            server.close()
            raise
        return server

    def close(self) -> None:
        """Stop the server now (immediate: nothing in it is worth a checkpoint), remove its
        directory, and let the guard go."""
        with self._lock:
            self.closed = True  # an outage's timer must not start it again
            if self._outage is not None:
                self._outage.cut_short()
            destroy(self.root, self.bindir, self.user)
            if self._guard is not None:
                if self._guard.stdin is not None:
                    self._guard.stdin.close()
                self._guard.wait(timeout=COMMAND_TIMEOUT)

    def __enter__(self) -> PgServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def guard_pid(self) -> int | None:
        return self._guard.pid if self._guard is not None else None

    def postmaster_pid(self) -> int | None:
        """The running postmaster's pid (None while stopped)."""
        return postmaster_pid(self.data)

    def _start_guard(self) -> None:
        self._guard = subprocess.Popen(
            [sys.executable, "-I", str(Path(__file__).resolve()), "guard", str(self.root),
             str(self.bindir)],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)

    def _initdb(self) -> None:
        self._run("initdb", "-D", str(self.data), "-U", SUPERUSER, "--encoding=UTF8",
                  "--locale=C", "--no-sync", "--auth-local=trust",
                  "--auth-host=scram-sha-256")
        # Exactly two ways in: the socket, trusted; TCP from 127.0.0.1 with a password.
        (self.data / "pg_hba.conf").write_text(
            "local all all trust\nhost all all 127.0.0.1/32 scram-sha-256\n", encoding="utf-8")
        with (self.data / "postgresql.conf").open("a", encoding="utf-8") as conf:
            conf.write(f"\ninclude '{SETTINGS_FILE}'\n")

    def _write_settings(self) -> None:
        # fsync off: only an operating-system crash could lose a commit, and that takes the
        # directory with it. synchronous_commit stays on, so a server killed mid-test (stop
        # mode "immediate") keeps every transaction it confirmed, as a real one does.
        settings = {
            "listen_addresses": f"'{HOST}'", "port": str(self.port),
            "unix_socket_directories": f"'{self.root}'",
            "password_encryption": "'scram-sha-256'",
            "fsync": "off", "full_page_writes": "off", "autovacuum": "off",
            "shared_buffers": "'32MB'", "timezone": "'UTC'", "log_timezone": "'UTC'",
        } | self.settings
        text = "".join(f"{name} = {value}\n" for name, value in settings.items())
        (self.data / SETTINGS_FILE).write_text(text, encoding="utf-8")

    def _first_start(self) -> None:
        for _ in range(5):
            self.port = free_port()
            self._write_settings()
            try:
                self.start()
                return
            except PgServerError as exc:
                if "could not bind" not in str(exc) and "in use" not in str(exc):
                    raise
        raise PgServerError("no port found that the server could bind on 127.0.0.1")

    def start(self) -> None:
        """Start the (stopped) server on its port and socket; returns once it accepts
        connections (pg_ctl -w)."""
        with self._lock:
            if self.closed:
                raise PgServerError("the server was closed")
            self._run("pg_ctl", "start", "-D", str(self.data), "-l", str(self.log),
                      "-w", "-t", "30", "-s")

    def stop(self, mode: str = "fast") -> None:
        """Stop the server: "fast" ends its sessions and shuts down cleanly; "immediate" is a
        crash (no shutdown checkpoint, recovery on the next start)."""
        with self._lock:
            self._run("pg_ctl", "stop", "-D", str(self.data), "-m", mode, "-w", "-t", "30",
                      "-s")

    def is_running(self) -> bool:
        done = run_as(self.user, [str(self.bindir / "pg_ctl"), "status", "-D", str(self.data)],
                      cwd=self.root)
        return done.returncode == 0

    def outage(self, seconds: float, mode: str = "fast") -> Outage:
        """Stop the server now and start it again `seconds` later, on a thread: the caller
        goes on while the database is away. wait() for its end; ensure_running() cuts it short."""
        with self._lock:
            if self._outage is not None and not self._outage.over:
                raise PgServerError("an outage is already under way")
            self._outage = Outage(self, seconds, mode)
            return self._outage

    def ensure_running(self) -> None:
        """End any outage now and start the server if it is stopped: what the fixtures do after
        each test, so that one test's outage never reaches the next."""
        with self._lock:
            outage = self._outage
        if outage is not None:
            outage.cancel()
        with self._lock:
            if not self.is_running():
                self.start()

    def _run(self, binary: str, *args: str) -> subprocess.CompletedProcess[str]:
        done = run_as(self.user, [str(self.bindir / binary), *args], cwd=self.root)
        if done.returncode != 0:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise PgServerError(f"{binary} {args[0]} exited {done.returncode}: "
                                f"{done.stdout}{done.stderr}\n--- server log ---\n{log}")
        return done

    # --- connecting ----------------------------------------------------------------------

    def dsn(self, dbname: str = "postgres") -> str:
        """ROLE over TCP, without its password (it comes from PGPASSWORD, a password file, or
        the connect call): the URL form `--state` will take."""
        return f"postgresql://{ROLE}@{HOST}:{self.port}/{dbname}"

    def socket_dsn(self, dbname: str = "postgres", user: str = ROLE) -> str:
        """`user` over the Unix socket, where the server trusts and asks no password."""
        return f"postgresql://{user}@/{dbname}?host={quote(str(self.root), safe='')}" \
               f"&port={self.port}"

    def connect(self, dbname: str = "postgres", **kwargs: Any) -> Any:
        """A psycopg connection as ROLE over TCP with the password."""
        import psycopg

        return psycopg.connect(self.dsn(dbname), password=self.password, **kwargs)

    def execute(self, sql: Any, params: Sequence[Any] | None = None, *,
                dbname: str = "postgres") -> list[tuple[Any, ...]]:
        """Run one statement as the superuser over the socket, in autocommit, and return its
        rows ([] for a statement without any): the tests' psql, for set-up and assertions."""
        import psycopg

        with psycopg.connect(host=str(self.root), port=self.port, user=SUPERUSER,
                             dbname=dbname, autocommit=True) as conn:
            cursor = conn.execute(sql, params)
            return cursor.fetchall() if cursor.description is not None else []

    @contextlib.contextmanager
    def tls(self, cert: Path, key: Path) -> Iterator[None]:
        """The server also speaks TLS with this certificate (and key) while the block runs:
        copied into its directory for its user (0600, as the server demands of a key), turned
        on with a configuration reload, no restart; off again afterwards."""
        for source, name in ((cert, "tls-cert.pem"), (key, "tls-key.pem")):
            target = self.data / name
            shutil.copyfile(source, target)
            target.chmod(0o600)
            if not self.user.is_me:
                os.chown(target, self.user.uid, self.user.gid)
        self._set_tls(on=True)
        try:
            yield
        finally:
            self._set_tls(on=False)

    def _set_tls(self, *, on: bool) -> None:
        if on:
            for name, value in (("ssl_cert_file", "tls-cert.pem"),
                                ("ssl_key_file", "tls-key.pem"), ("ssl", "on")):
                self.execute(f"ALTER SYSTEM SET {name} = '{value}'")
        else:
            self.execute("ALTER SYSTEM RESET ALL")
        self.execute("SELECT pg_reload_conf()")
        # The postmaster rereads its settings when it gets round to the SIGHUP; each new
        # session shows what it found.
        wanted = "on" if on else "off"
        deadline = time.monotonic() + COMMAND_TIMEOUT
        while self.execute("SHOW ssl") != [(wanted,)]:
            if time.monotonic() > deadline:
                log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
                raise PgServerError(f"ssl did not turn {wanted}:\n{log}")
            time.sleep(0.02)

    # --- databases -----------------------------------------------------------------------

    def create_database(self, template: str = "template0") -> str:
        """A new empty database owned by ROLE; its name."""
        from psycopg import sql

        name = f"bt_test_{next(self._names)}"
        self.execute(sql.SQL("CREATE DATABASE {} OWNER {} TEMPLATE {}").format(
            sql.Identifier(name), sql.Identifier(ROLE), sql.Identifier(template)))
        return name

    def drop_database(self, name: str) -> None:
        """Drop `name`, ending the sessions still in it (a test may leave one open)."""
        from psycopg import sql

        self.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
            sql.Identifier(name)))

    @contextlib.contextmanager
    def database(self) -> Iterator[PgDatabase]:
        """A fresh empty database for the block, dropped after it (the server restarted first
        if the block left it stopped)."""
        name = self.create_database()
        try:
            yield PgDatabase(self, name)
        finally:
            self.ensure_running()
            self.drop_database(name)


def _create_role_sql(password: str) -> Any:
    from psycopg import sql

    return sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(ROLE),
                                                               sql.Literal(password))


@dataclass(frozen=True)
class PgDatabase:
    """One test's database on `server`: its name and the ways to reach it."""

    server: PgServer
    name: str

    @property
    def dsn(self) -> str:
        """ROLE over TCP, no password inside (see `password`)."""
        return self.server.dsn(self.name)

    @property
    def socket_dsn(self) -> str:
        return self.server.socket_dsn(self.name)

    @property
    def password(self) -> str:
        return self.server.password

    def connect(self, **kwargs: Any) -> Any:
        """A psycopg connection as ROLE over TCP with the password."""
        return self.server.connect(self.name, **kwargs)

    def execute(self, sql: Any, params: Sequence[Any] | None = None) -> list[tuple[Any, ...]]:
        """One statement as the superuser in this database (see PgServer.execute)."""
        return self.server.execute(sql, params, dbname=self.name)


class Outage:
    """The server stopped now and started again after `seconds` (on a daemon thread)."""

    def __init__(self, server: PgServer, seconds: float, mode: str) -> None:
        self.seconds = seconds
        self._server = server
        self._cut_short = threading.Event()
        self._error: BaseException | None = None
        server.stop(mode)
        self.began = time.monotonic()
        self.ended: float | None = None
        self._thread = threading.Thread(target=self._restore, name="pg-outage", daemon=True)
        self._thread.start()

    @property
    def over(self) -> bool:
        return not self._thread.is_alive()

    def _restore(self) -> None:
        self._cut_short.wait(self.seconds)  # the outage's length is what this waits for
        try:
            if not self._server.closed:
                self._server.start()
        except BaseException as exc:  # handed to wait(): a thread cannot fail the test itself
            self._error = exc
        finally:
            self.ended = time.monotonic()

    def wait(self, timeout: float | None = None) -> None:
        """Block until the server is back (raises what starting it raised)."""
        self._thread.join(timeout if timeout is not None else self.seconds + COMMAND_TIMEOUT)
        if self._thread.is_alive():
            raise PgServerError(f"the server is not back {timeout} s into the outage")
        if self._error is not None:
            raise self._error

    def cut_short(self) -> None:
        """End the wait now (the server starts at once, unless it was closed)."""
        self._cut_short.set()

    def cancel(self) -> None:
        """Bring the server back now."""
        self.cut_short()
        self.wait()


def _guard(root: Path, bindir: Path) -> None:
    """Wait until the owner's end of stdin closes (its close(), or its death), then destroy."""
    for number in (signal.SIGINT, signal.SIGHUP):
        signal.signal(number, signal.SIG_IGN)
    while sys.stdin.buffer.read(65536):
        pass
    destroy(root, bindir, server_user())


if __name__ == "__main__" and sys.argv[1:2] == ["guard"]:
    _guard(Path(sys.argv[2]), Path(sys.argv[3]))
