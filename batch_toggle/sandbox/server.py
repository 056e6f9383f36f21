"""Serving the sandbox on a real socket: blocking (the CLI) or in a thread (tests, benchmarks)."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import uvicorn
from starlette.applications import Starlette

from .app import create_app
from .config import SandboxConfig
from .world import Clock


class SandboxServerError(RuntimeError):
    """The sandbox server did not start (port taken, bad host) or did not stop in time."""


def _uvicorn_config(app: Starlette, host: str, port: int, **overrides: Any) -> uvicorn.Config:
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
    options.update(overrides)
    return uvicorn.Config(app, **options)


def base_url_of(server: uvicorn.Server, host: str) -> str:
    """The URL a started uvicorn server answers on (the real port when port 0 was asked)."""
    port = server.servers[0].sockets[0].getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}"


def run_server(
    config: SandboxConfig,
    host: str = "127.0.0.1",
    port: int = 8765,
    *,
    on_ready: Callable[[str], None] | None = None,
    log_level: str = "warning",
) -> None:
    """Serve the sandbox until SIGINT/SIGTERM. `on_ready(base_url)` is called once listening.

    Raises SandboxServerError when the server cannot start (e.g. the port is taken). After a
    graceful shutdown uvicorn re-raises the signal it caught, so Ctrl-C ends this call with
    KeyboardInterrupt (the CLI turns that into a quiet exit).
    """
    app = create_app(config)
    server = _ReadyServer(_uvicorn_config(app, host, port, log_level=log_level), on_ready, host)
    try:
        server.run()
    except SystemExit as exc:  # uvicorn exits the process when it cannot bind
        raise SandboxServerError(f"the sandbox could not listen on {host}:{port}") from exc
    if not server.started:
        raise SandboxServerError(f"the sandbox could not listen on {host}:{port}")


class _ReadyServer(uvicorn.Server):
    """A uvicorn Server that says when it is listening."""

    def __init__(self, config: uvicorn.Config, on_ready: Callable[[str], None] | None,
                 host: str) -> None:
        super().__init__(config)
        self.ready = threading.Event()
        self._on_ready = on_ready
        self._host = host

    async def startup(self, sockets: Any = None) -> None:
        await super().startup(sockets)
        if self.started and not self.should_exit:
            if self._on_ready is not None:
                self._on_ready(base_url_of(self, self._host))
            self.ready.set()


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
) -> Iterator[str]:
    """Run the sandbox under uvicorn in a background thread; yield its base URL.

    Port 0 picks a free ephemeral port. Waits at most `ready_timeout` seconds for the server
    to listen (SandboxServerError otherwise), and on exit stops it, waiting at most
    `stop_timeout` seconds. Pass `app` to serve an app you built (and inspect its world).
    """
    app = app if app is not None else create_app(config or SandboxConfig(), clock=clock)
    # log_config=None: leave the process's logging alone (uvicorn's errors still propagate).
    server = _ReadyServer(_uvicorn_config(app, host, port, log_config=None), None, host)
    thread = threading.Thread(target=server.run, name=f"sandbox-{host}:{port}", daemon=True)
    thread.start()
    try:
        _wait_ready(server, thread, ready_timeout, host, port)
        yield base_url_of(server, host)
    finally:
        server.should_exit = True
        thread.join(stop_timeout)
        if thread.is_alive():
            server.force_exit = True
            thread.join(stop_timeout)


def _wait_ready(server: Any, thread: threading.Thread, timeout: float, host: str,
                port: int) -> None:
    """Block until the server listens; bounded, and fails fast if its thread died."""
    deadline = time.monotonic() + timeout
    while not server.ready.wait(0.02):
        if not thread.is_alive():
            raise SandboxServerError(f"the sandbox could not listen on {host}:{port}")
        if time.monotonic() > deadline:
            server.should_exit = True
            raise SandboxServerError(
                f"the sandbox did not start listening on {host}:{port} within {timeout:g} s"
            )
