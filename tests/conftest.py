"""Shared fixtures: the Logis sandbox in-process and on a real loopback socket.

    def test_x(sandbox_app): ...                      # in-process Starlette app (default config)
    def test_y(make_sandbox_app): app = make_sandbox_app(hourly_limit=3, clock=fake)
    def test_z(sandbox_server): sandbox_server.base_url, .state(), .requests(), .set_faults(...)
    def test_w(make_sandbox_server): srv = make_sandbox_server(window=2.0, hourly_limit=5)
    def test_v(any_sandbox_server): ...  # runs twice: over http, and over https (TLS)
    def test_u(make_sandbox_server, tls_kit): make_sandbox_server(tls=tls_kit.expired)
    def test_t(pg_database): pg_database.dsn, .password, .execute(...)  # a real PostgreSQL

Every server listens on 127.0.0.1, port 0 (ephemeral), with a bounded readiness wait. A TLS
server's handle carries `ca_bundle`, the CA file a client must trust (tests/e2e passes it as
--ca-bundle); `tls_kit` holds the test CA and its certificates (good, wrong host, expired).
`make_sandbox_server` starts a fresh one per call, stopped when the test ends; `sandbox_server`
is one server for the session, reset to the seed before each test. The seed is the shipped
`sample_data/sandbox_seed.csv`. The PostgreSQL fixtures (`pg_server`, `pg_database`: a throwaway
server of the machine's own, a fresh database per test) live in tests/pg_fixtures.py.
"""

from __future__ import annotations

import contextlib
import datetime
import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from pg_fixtures import pg_database, pg_server, pg_server_session  # noqa: F401 (fixtures)
from starlette.applications import Starlette

from batch_toggle.sandbox import DEFAULT_API_KEY, SandboxConfig, Seed, create_app, load_seed
from batch_toggle.sandbox.tls import LOOPBACK_NAMES, TlsFiles
from batch_toggle.sandbox.world import SeedJob, World
from batch_toggle.stderr import STDERR

REPO = Path(__file__).resolve().parents[1]
SAMPLE_DATA = REPO / "sample_data"
SEED_PATH = SAMPLE_DATA / "sandbox_seed.csv"
SANDBOX_KEY = DEFAULT_API_KEY


@pytest.fixture(autouse=True)
def _stderr_not_gone(monkeypatch: pytest.MonkeyPatch) -> None:
    """The process has one stderr writer (batch_toggle.stderr.STDERR) that stays silent once a
    write failed: a test that breaks it in this process must not silence the tests after it."""
    monkeypatch.setattr(STDERR, "gone", False)


class SandboxHandle:
    """A running sandbox as tests see it: its URL, its key, and its introspection routes.
    `ca_bundle`: the CA file that verifies it (None for plain http)."""

    def __init__(self, base_url: str, app: Starlette, config: SandboxConfig,
                 ca_bundle: Path | None = None) -> None:
        self.base_url = base_url
        self.app = app
        self.config = config
        self.api_key = config.api_keys[0] if config.api_keys else SANDBOX_KEY
        self.ca_bundle = ca_bundle
        self._http = httpx.Client(base_url=base_url, timeout=10.0, verify=self.verify)

    @property
    def verify(self) -> ssl.SSLContext | bool:
        """What an httpx client needs to talk to this server (its test CA, for TLS)."""
        if self.ca_bundle is None:
            return True
        return ssl.create_default_context(cafile=str(self.ca_bundle))

    @property
    def world(self) -> World:
        """The live world (same process): read it only when no request is in flight."""
        return self.app.state.world

    @property
    def jobs(self) -> tuple[SeedJob, ...]:
        """The seed's jobs, review keys included, in seed order."""
        return self.world.seed.jobs

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        response = self._http.request(method, path, json=body)
        response.raise_for_status()
        return response.json()

    def state(self) -> dict[str, Any]:
        """{"jobs": [{"id", "client", "do_notify_sms"}], "clients": [{"id", "do_notify_sms"}]}"""
        return self._call("GET", "/_sandbox/state")

    def job_state(self, job_id: str) -> bool:
        return next(j["do_notify_sms"] for j in self.state()["jobs"] if j["id"] == job_id)

    def client_state(self, client_id: str) -> bool:
        return next(c["do_notify_sms"] for c in self.state()["clients"] if c["id"] == client_id)

    def requests(self, since: int = 0) -> list[dict[str, Any]]:
        """Every request received (from index `since`): t, method, path, key_hint, job_id,
        update_target, do_notify_sms, status, error, fault, counted."""
        return self._call("GET", f"/_sandbox/requests?since={since}")["requests"]

    def set_faults(self, **changes: Any) -> dict[str, Any]:
        """e.g. set_faults(error_rate=0.5), set_faults(scripted={job_id: ["503", "reset"]})."""
        return self._call("POST", "/_sandbox/faults", changes)

    def set_limits(self, **changes: Any) -> dict[str, Any]:
        """e.g. set_limits(hourly_limit=3, window=1.0, daily_limit=10)."""
        return self._call("POST", "/_sandbox/limits", changes)

    def set_key(self, key: str, active: bool = True, allow_public_track: bool = True) -> None:
        """Add a key or change its flags (e.g. deactivate the key mid-run)."""
        self._call("POST", "/_sandbox/keys",
                   {"key": key, "active": active, "allow_public_track": allow_public_track})

    def reset(self) -> None:
        """Back to the seed; logs, budgets, faults and keys as configured."""
        self._call("POST", "/_sandbox/reset")

    def close(self) -> None:
        self._http.close()


@dataclass(frozen=True)
class TlsKit:
    """A test CA (its PEM file `ca`, and the same CA in an OpenSSL hashed directory `ca_dir`)
    and server certificates from it: `good` for the loopback names, `wrong_host` for another
    name, `expired` (valid in January 2020 only)."""

    ca: Path
    ca_dir: Path
    good: TlsFiles
    wrong_host: TlsFiles
    expired: TlsFiles


@pytest.fixture(scope="session")
def tls_kit(tmp_path_factory: pytest.TempPathFactory) -> TlsKit:
    import trustme

    root = tmp_path_factory.mktemp("tls")
    ca = trustme.CA(organization_name="batch-toggle tests")
    ca_path = root / "test-ca.pem"
    ca.cert_pem.write_to_path(str(ca_path))

    def files(name: str, leaf: Any) -> TlsFiles:
        cert, key = root / f"{name}-cert.pem", root / f"{name}-key.pem"
        cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
        leaf.private_key_pem.write_to_path(str(key))
        return TlsFiles(ca_path, cert, key)

    return TlsKit(
        ca=ca_path, ca_dir=_hashed_dir(root / "ca-dir", ca_path),
        good=files("good", ca.issue_cert(*LOOPBACK_NAMES)),
        wrong_host=files("wrong-host", ca.issue_cert("logis.example")),
        expired=files("expired", ca.issue_cert(
            *LOOPBACK_NAMES, not_before=datetime.datetime(2020, 1, 1),
            not_after=datetime.datetime(2020, 2, 1))))


def _hashed_dir(directory: Path, ca: Path) -> Path:
    """A directory of CAs as OpenSSL looks them up (`<subject hash>.0`), like /etc/ssl/certs:
    what SSL_CERT_DIR points at. The hash comes from `openssl x509 -hash`."""
    import subprocess

    directory.mkdir()
    digest = subprocess.run(["openssl", "x509", "-hash", "-noout", "-in", str(ca)],
                            capture_output=True, text=True, check=True, timeout=30).stdout.strip()
    (directory / f"{digest}.0").write_bytes(ca.read_bytes())
    return directory


@pytest.fixture(scope="session")
def sandbox_seed() -> Seed:
    """The shipped seed, parsed once per session."""
    return load_seed(SEED_PATH)


@pytest.fixture
def sandbox_config() -> Callable[..., SandboxConfig]:
    """Factory: sandbox_config(**overrides) -> SandboxConfig on the shipped seed."""

    def make(**overrides: Any) -> SandboxConfig:
        overrides.setdefault("seed", SEED_PATH)
        return SandboxConfig(**overrides)

    return make


@pytest.fixture
def make_sandbox_app(
    sandbox_seed: Seed, sandbox_config: Callable[..., SandboxConfig]
) -> Callable[..., Starlette]:
    """Factory: make_sandbox_app(clock=None, **config_overrides) -> in-process app."""

    def make(clock: Callable[[], float] | None = None, **overrides: Any) -> Starlette:
        config = sandbox_config(**overrides)
        seed = sandbox_seed if Path(config.seed or "") == SEED_PATH else None
        return create_app(config, seed=seed, clock=clock)

    return make


@pytest.fixture
def sandbox_app(make_sandbox_app: Callable[..., Starlette]) -> Starlette:
    """An in-process sandbox with the default config; its world is `app.state.world`."""
    return make_sandbox_app()


@pytest.fixture
def make_sandbox_server(
    make_sandbox_app: Callable[..., Starlette],
) -> Iterator[Callable[..., SandboxHandle]]:
    """Factory: make_sandbox_server(clock=None, tls=None, **config_overrides) -> SandboxHandle
    on a real uvicorn at 127.0.0.1 (ephemeral port), over HTTPS with `tls` (TlsFiles); stopped
    at the end of the test."""
    from batch_toggle.sandbox import serve_in_thread

    with contextlib.ExitStack() as stack:

        def make(clock: Callable[[], float] | None = None, tls: TlsFiles | None = None,
                 **overrides: Any) -> SandboxHandle:
            app = make_sandbox_app(clock=clock, **overrides)
            base_url = stack.enter_context(serve_in_thread(app=app, ready_timeout=10.0,
                                                           tls=tls))
            handle = SandboxHandle(base_url, app, app.state.config,
                                   tls.ca if tls is not None else None)
            stack.callback(handle.close)
            return handle

        yield make


@pytest.fixture(scope="session")
def _shared_sandbox_thread(sandbox_seed: Seed) -> Iterator[Any]:
    from batch_toggle.sandbox import SandboxThread

    served = SandboxThread(create_app(SandboxConfig(seed=SEED_PATH), seed=sandbox_seed))
    served.start(ready_timeout=10.0)
    yield served
    served.stop()


@pytest.fixture(scope="session")
def _shared_tls_sandbox_thread(sandbox_seed: Seed, tls_kit: TlsKit) -> Iterator[Any]:
    from batch_toggle.sandbox import SandboxThread

    served = SandboxThread(create_app(SandboxConfig(seed=SEED_PATH), seed=sandbox_seed),
                           tls=tls_kit.good)
    served.start(ready_timeout=10.0)
    yield served
    served.stop()


@pytest.fixture(params=["http", "https"])
def any_sandbox_server(request: pytest.FixtureRequest) -> Iterator[SandboxHandle]:
    """`sandbox_server` over plain http, then the same over TLS (a test CA the client is given
    with --ca-bundle): the main flows must work on the real path too, not only on loopback
    http."""
    if request.param == "http":
        served = request.getfixturevalue("_shared_sandbox_thread")
        ca = None
    else:
        served = request.getfixturevalue("_shared_tls_sandbox_thread")
        ca = request.getfixturevalue("tls_kit").ca
    served.app.state.world.reset()
    handle = SandboxHandle(served.base_url, served.app, served.app.state.config, ca)
    yield handle
    handle.close()


@pytest.fixture
def sandbox_server(_shared_sandbox_thread: Any) -> Iterator[SandboxHandle]:
    """A sandbox with the default config on a real loopback socket.

    One server serves the whole session (stopping uvicorn costs 0.2 s); it is reset to the seed
    (state, logs, budgets, faults, keys, limits) before each test that uses it.
    """
    served = _shared_sandbox_thread
    served.app.state.world.reset()
    handle = SandboxHandle(served.base_url, served.app, served.app.state.config)
    yield handle
    handle.close()
