"""One keep-alive connection per worker, instead of one pool shared by every worker.

Why: before each request and after each response, httpx's pool checks every idle connection
it holds for a close by the server (a `poll` and a `getpeername` per connection, through
anyio's socket attributes). A worker waits between requests (for its outcome's commit, for the
budget), so with one shared pool most of its --concurrency connections are idle at any moment,
and each request paid for checking all of them: at --concurrency 4 on loopback that cost the
sender more CPU than the state store's own writes, and it grows with --concurrency. A worker
that owns its connection pays for the one check that matters: its own connection, before its
request leaves (a connection the server closed is replaced then, rather than failing the
request and wasting a budget slot).

A worker is an asyncio task. A task that sends its first request is given a transport of its
own (one connection, kept alive); when the task ends, the transport goes back to a free list
for the next task (the canary's workers hand their connections to the main run's). There are
never more transports than tasks that sent at the same time: the runner's --concurrency
workers. Through a proxy each of those transports holds one CONNECT tunnel, kept alive the
same way: one tunnel per worker, not one per request (a proxy counts and logs tunnels, and a
new one costs a TCP and a TLS handshake with the proxy in the way).

`Route` is how a run reaches its base URL (which CAs it trusts, which proxy it goes through),
decided once, before anything is sent: `route_for`.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from batch_toggle.config import SendOptions
from batch_toggle.send.proxies import ProxyChoice, choose_proxy
from batch_toggle.send.trust import Trust, resolve_trust


class WorkerConnections(httpx.AsyncBaseTransport):
    """An httpx transport that gives each asyncio task its own one-connection transport."""

    def __init__(self, new_transport: Callable[[], httpx.AsyncBaseTransport]) -> None:
        self._new_transport = new_transport
        self._by_task: dict[asyncio.Task[object], httpx.AsyncBaseTransport] = {}
        self._free: list[httpx.AsyncBaseTransport] = []
        self.created = 0  # transports ever made (each holds at most one connection)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        task = asyncio.current_task()
        if task is None:  # not reachable under asyncio; kept for other event loops
            raise RuntimeError("WorkerConnections needs an asyncio task")
        transport = self._by_task.get(task)
        if transport is None:
            transport = self._free.pop() if self._free else self._make()
            self._by_task[task] = transport
            task.add_done_callback(self._give_back)
        return await transport.handle_async_request(request)

    def _make(self) -> httpx.AsyncBaseTransport:
        self.created += 1
        return self._new_transport()

    def _give_back(self, task: asyncio.Task[object]) -> None:
        transport = self._by_task.pop(task, None)
        if transport is not None:
            self._free.append(transport)

    async def aclose(self) -> None:
        transports = [*self._by_task.values(), *self._free]
        self._by_task.clear()
        self._free.clear()
        for transport in transports:
            await transport.aclose()


@dataclass(frozen=True)
class Route:
    """How a run reaches its base URL: the CAs it trusts and the proxy it goes through."""

    base_url: str
    trust: Trust
    proxy: ProxyChoice

    def as_dict(self) -> dict[str, Any]:
        """For the summary and events: never a proxy password."""
        return {"base_url": self.base_url, "trust": self.trust.as_dict(),
                "proxy": self.proxy.as_dict()}


def route_for(send: SendOptions, proxy_auth: tuple[str, str] | None = None,
              environ: Mapping[str, str] | None = None) -> Route:
    """The route of a run with these options, in this environment (proxy variables,
    SSL_CERT_FILE/SSL_CERT_DIR). UsageError for a --ca-bundle or proxy URL that cannot work."""
    environ = os.environ if environ is None else environ
    trust = resolve_trust(send.trust, send.ca_bundle, environ)
    proxy = choose_proxy(send.base_url, send.proxy, environ, proxy_auth)
    return Route(send.base_url, trust, proxy)


def client_for(transport: httpx.AsyncBaseTransport, timeout: float) -> httpx.AsyncClient:
    """One client for the run: a kept-alive connection per worker (`worker_connections`),
    through the route's proxy when it has one, TLS verified against the route's trust; no
    redirects (the key header and body would follow them). `trust_env=False`: the route
    already read the environment (proxies, CA variables), and a ~/.netrc must not add
    credentials."""
    return httpx.AsyncClient(transport=transport, timeout=httpx.Timeout(timeout),
                             follow_redirects=False, trust_env=False)


def worker_connections(route: Route) -> WorkerConnections:
    """The transport a run uses on the network: one kept-alive HTTP/1.1 connection per worker
    (a tunnel through the route's proxy when it has one), TLS always verified against the
    route's trust (one SSL context, built once and shared by the workers)."""
    context = route.trust.context()
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    proxy = httpx.Proxy(route.proxy.url) if route.proxy.url is not None else None
    return WorkerConnections(lambda: httpx.AsyncHTTPTransport(
        verify=context, limits=limits, proxy=proxy, trust_env=False))
