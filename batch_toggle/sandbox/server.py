"""Serving the sandbox on a real socket: blocking (the CLI) or in a thread (tests, benchmarks)."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import uvicorn
from starlette.applications import Starlette

from batch_toggle.sandbox.app import create_app
from batch_toggle.sandbox.config import SandboxConfig
from batch_toggle.sandbox.tls import TlsFiles
from batch_toggle.sandbox.world import Clock


class SandboxServerError(RuntimeError):
    """The sandbox server did not start (port taken, bad host) or did not stop in time."""


def _uvicorn_config(app: Starlette, host: str, port: int, tls: TlsFiles | None = None,
                    **overrides: Any) -> uvicorn.Config:
    options: dict[str, Any] = {
        "host": host,
        "port": port,
        "log_level": "warning",
        "access_log": False,
        "lifespan": "off",
        "ws": "none",  # no websockets import (and none of its deprecation warnings)
        # A stalled "timeout" reply must not hold a shutdown hostage.
        "timeout_graceful_shutdown": 2,
    }
    if tls is not None:
        options.update(ssl_certfile=str(tls.cert), ssl_keyfile=str(tls.key))
    options.update(overrides)
    return uvicorn.Config(app, **options)


def base_url_of(server: uvicorn.Server, host: str) -> str:
    """The URL a started uvicorn server answers on (the real port when port 0 was asked)."""
    port = server.servers[0].sockets[0].getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    scheme = "https" if server.config.is_ssl else "http"
    return f"{scheme}://{shown}:{port}"


def run_server(
    config: SandboxConfig,
    host: str = "127.0.0.1",
    port: int = 8765,
    *,
    on_ready: Callable[[str], None] | None = None,
    log_level: str = "warning",
    tls: TlsFiles | None = None,
) -> None:
    """Serve the sandbox until SIGINT/SIGTERM (over HTTPS with `tls`). `on_ready(base_url)` is
    called once listening.

    Raises SandboxServerError when the server cannot start (e.g. the port is taken). After a
    graceful shutdown uvicorn re-raises the signal it caught, so Ctrl-C ends this call with
    KeyboardInterrupt (the CLI turns that into a quiet exit).
    """
    app = create_app(config)
    server = _ReadyServer(_uvicorn_config(app, host, port, tls, log_level=log_level), on_ready,
                          host)
    try:
        server.run()
    except SystemExit as exc:  # uvicorn exits the process when it cannot bind
        raise SandboxServerError(f"the sandbox could not listen on {host}:{port}") from exc
    if not server.started:
        raise SandboxServerError(f"the sandbox could not listen on {host}:{port}")


def _abort_stalls(app: Any) -> None:
    """Let replies held by "timeout" faults go (dropped), so a shutdown does not wait on them."""
    sandbox = getattr(getattr(app, "state", None), "sandbox", None)
    if sandbox is not None:
        sandbox.abort_stalls()


class _ReadyServer(uvicorn.Server):
    """A uvicorn Server that says when it is listening."""

    def __init__(self, config: uvicorn.Config, on_ready: Callable[[str], None] | None,
                 host: str) -> None:
        super().__init__(config)
        self.ready = threading.Event()
        self._on_ready = on_ready
        self._host = host

    def handle_exit(self, sig: int, frame: Any) -> None:
        _abort_stalls(self.config.app)
        super().handle_exit(sig, frame)

    async def startup(self, sockets: Any = None) -> None:
        await super().startup(sockets)
        if self.started and not self.should_exit:
            if self._on_ready is not None:
                self._on_ready(base_url_of(self, self._host))
            self.ready.set()


class SandboxThread:
    """A sandbox served by uvicorn in a daemon thread: start() -> base URL, stop().

    Stopping takes uvicorn about 0.2 s (its tick and a grace sleep); to stop many at once,
    call request_stop() on each, then stop() on each.
    """

    def __init__(self, app: Starlette, host: str = "127.0.0.1", port: int = 0,
                 tls: TlsFiles | None = None) -> None:
        self.app, self.host, self.port = app, host, port
        # log_config=None: leave the process's logging alone (uvicorn's errors still propagate).
        self.server = _ReadyServer(_uvicorn_config(app, host, port, tls, log_config=None), None,
                                   host)
        self.thread = threading.Thread(target=self._run, name=f"sandbox-{host}:{port}",
                                       daemon=True)
        self.base_url: str | None = None

    def _run(self) -> None:
        # uvicorn calls sys.exit() when it cannot bind; in a thread that is only noise (start()
        # reports it), so swallow it here.
        with contextlib.suppress(SystemExit):
            self.server.run()

    def start(self, ready_timeout: float = 10.0) -> str:
        """Start and wait (at most `ready_timeout` s) until it listens; its base URL."""
        self.thread.start()
        deadline = time.monotonic() + ready_timeout
        while not self.server.ready.wait(0.02):
            if not self.thread.is_alive():
                raise SandboxServerError(f"the sandbox could not listen on {self.host}:{self.port}")
            if time.monotonic() > deadline:
                self.stop()
                raise SandboxServerError(
                    f"the sandbox did not start listening on {self.host}:{self.port} "
                    f"within {ready_timeout:g} s"
                )
        self.base_url = base_url_of(self.server, self.host)
        return self.base_url

    def request_stop(self) -> None:
        _abort_stalls(self.app)
        self.server.should_exit = True

    def stop(self, timeout: float = 10.0) -> None:
        """Stop gracefully; force it after `timeout` s; SandboxServerError if it still runs."""
        self.request_stop()
        if not self.thread.is_alive():
            return
        self.thread.join(timeout)
        if self.thread.is_alive():
            self.server.force_exit = True
            self.thread.join(timeout)
            if self.thread.is_alive():
                raise SandboxServerError("the sandbox server thread did not stop")


@contextlib.contextmanager
def serve_in_thread(
    config: SandboxConfig | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    app: Starlette | None = None,
    clock: Clock | None = None,
    ready_timeout: float = 10.0,
    stop_timeout: float = 10.0,
    tls: TlsFiles | None = None,
) -> Iterator[str]:
    """Run the sandbox under uvicorn in a background thread; yield its base URL.

    Port 0 picks a free ephemeral port. Waits at most `ready_timeout` seconds for the server
    to listen (SandboxServerError otherwise), and on exit stops it, waiting at most
    `stop_timeout` seconds. Pass `app` to serve an app you built (and inspect its world), and
    `tls` to serve it over HTTPS (the base URL is then https://).
    """
    app = app if app is not None else create_app(config or SandboxConfig(), clock=clock)
    served = SandboxThread(app, host, port, tls)
    try:
        yield served.start(ready_timeout)
    finally:
        served.stop(stop_timeout)
