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
workers.
"""

from __future__ import annotations

import asyncio
import ssl
import urllib.request
from collections.abc import Callable

import httpx


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


def worker_connections() -> WorkerConnections:
    """The transport a run uses on the network: one kept-alive HTTP/1.1 connection per worker,
    TLS always verified (one SSL context, built once and shared by the workers; it honours
    SSL_CERT_FILE and SSL_CERT_DIR as httpx does)."""
    context: ssl.SSLContext = httpx.create_ssl_context(verify=True)
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    return WorkerConnections(lambda: httpx.AsyncHTTPTransport(verify=context, limits=limits))


def proxy_configured() -> bool:
    """Does the environment name a proxy (HTTP_PROXY, HTTPS_PROXY, ALL_PROXY, any case)?

    httpx honours those only when it builds the client's transport itself, so a run that must
    go through a proxy keeps httpx's own pool (and its NO_PROXY rules) rather than
    `WorkerConnections`: correct first, a little CPU second."""
    return any(urllib.request.getproxies().get(scheme) for scheme in ("http", "https", "all"))
