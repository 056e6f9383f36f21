"""The Logis sandbox: a faithful local simulator of the two endpoints batch-toggle drives.

    app = create_app(SandboxConfig(seed="sample_data/sandbox_seed.csv"))   # in-process
    httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://sandbox")

    with serve_in_thread(SandboxConfig(window=2.0, hourly_limit=5)) as base_url:  # real socket
        ...

`run_server` serves until Ctrl-C (the `batch-toggle sandbox` command). See docs/sandbox.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .app import create_app
from .config import (
    DEFAULT_API_KEY,
    DEFAULT_PORT,
    SandboxConfig,
    default_seed_path,
    parse_latency,
)
from .faults import Fault, parse_fault
from .world import Seed, SeedError, World, load_seed

if TYPE_CHECKING:
    from .server import SandboxServerError, SandboxThread, run_server, serve_in_thread

__all__ = [
    "DEFAULT_API_KEY",
    "DEFAULT_PORT",
    "Fault",
    "SandboxConfig",
    "SandboxServerError",
    "SandboxThread",
    "Seed",
    "SeedError",
    "World",
    "create_app",
    "default_seed_path",
    "load_seed",
    "parse_fault",
    "parse_latency",
    "run_server",
    "serve_in_thread",
]

_SERVER_NAMES = ("SandboxServerError", "SandboxThread", "run_server", "serve_in_thread")


def __getattr__(name: str) -> Any:
    # The socket side imports uvicorn (~0.1 s): only load it when it is asked for, so that
    # `run --sandbox` and the in-process tests do not pay for it.
    if name in _SERVER_NAMES:
        from . import server

        return getattr(server, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
