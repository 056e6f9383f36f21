"""The Logis sandbox: a faithful local simulator of the two endpoints batch-toggle drives.

    app = create_app(SandboxConfig(seed="sample_data/sandbox_seed.csv"))   # in-process
    httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://sandbox")

    with serve_in_thread(SandboxConfig(window=2.0, hourly_limit=5)) as base_url:  # real socket
        ...

`run_server` serves until Ctrl-C (the `batch-toggle sandbox` command). See docs/sandbox.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from batch_toggle.sandbox.config import (
    DEFAULT_API_KEY,
    DEFAULT_PORT,
    SandboxConfig,
    default_seed_path,
    parse_latency,
)

if TYPE_CHECKING:
    from batch_toggle.sandbox.app import create_app
    from batch_toggle.sandbox.config import Fault, parse_fault
    from batch_toggle.sandbox.server import (
        SandboxServerError,
        SandboxThread,
        run_server,
        serve_in_thread,
    )
    from batch_toggle.sandbox.world import Seed, SeedError, World, load_seed

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

# Where each name lives. Only the light config is imported up front: `batch-toggle sandbox
# --help` (and every --help, which lists it) must not pay for starlette (~50 ms) or uvicorn.
_LAZY = {"create_app": "app", "Fault": "config", "parse_fault": "config",
         "Seed": "world", "SeedError": "world", "World": "world", "load_seed": "world",
         "SandboxServerError": "server", "SandboxThread": "server", "run_server": "server",
         "serve_in_thread": "server"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"batch_toggle.sandbox.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
