"""WorkerConnections: each worker task owns one kept-alive connection (see the module's why)."""

from __future__ import annotations

import asyncio
from typing import Any

import httpcore._backends.anyio as httpcore_anyio
import httpx
import pytest

from batch_toggle.connections import WorkerConnections, worker_connections


class Recording(httpx.MockTransport):
    """A fake one-connection transport that remembers it was used and closed."""

    def __init__(self, seen: list[tuple[str, int]], number: int) -> None:
        self.number = number
        self.closed = False

        def answer(request: httpx.Request) -> httpx.Response:
            seen.append((request.headers["x-task"], number))
            return httpx.Response(200, json={"ok": True})

        super().__init__(answer)

    async def aclose(self) -> None:
        self.closed = True


def recording_connections() -> tuple[WorkerConnections, list[tuple[str, int]],
                                     list[Recording]]:
    seen: list[tuple[str, int]] = []
    made: list[Recording] = []

    def new() -> Recording:
        made.append(Recording(seen, len(made)))
        return made[-1]

    return WorkerConnections(new), seen, made


async def requests_from(client: httpx.AsyncClient, name: str, n: int) -> None:
    for _ in range(n):
        response = await client.get("http://logis.test/x", headers={"x-task": name})
        assert response.status_code == 200
        await asyncio.sleep(0)  # let the other tasks interleave


def test_each_task_sends_over_its_own_transport_and_hands_it_on_when_done() -> None:
    connections, seen, made = recording_connections()

    async def main() -> None:
        async with httpx.AsyncClient(transport=connections) as client:
            await asyncio.gather(*(requests_from(client, f"w{i}", 5) for i in range(3)))
            # The first three tasks ended: the next two reuse their transports.
            await asyncio.gather(*(requests_from(client, f"v{i}", 5) for i in range(2)))

    asyncio.run(main())
    by_task: dict[str, set[int]] = {}
    for task, number in seen:
        by_task.setdefault(task, set()).add(number)
    assert len(seen) == 25
    assert all(len(numbers) == 1 for numbers in by_task.values()), by_task
    assert len({next(iter(by_task[f"w{i}"])) for i in range(3)}) == 3  # one each, concurrently
    assert connections.created == 3 and len(made) == 3
    assert all(m.closed for m in made), "aclose closes every transport, free or in use"


def test_a_task_still_running_at_close_has_its_transport_closed_too() -> None:
    connections, _seen, made = recording_connections()

    async def main() -> None:
        client = httpx.AsyncClient(transport=connections)
        await client.get("http://logis.test/x", headers={"x-task": "main"})
        await client.aclose()  # the main task is still running: its transport is in use

    asyncio.run(main())
    assert len(made) == 1 and made[0].closed


def test_on_a_real_socket_a_request_checks_only_its_own_idle_connection(
        sandbox_server: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """httpx checks every idle connection of a pool for a server-side close before and after
    each request. With one connection per worker that is at most two checks a request,
    however many workers wait meanwhile (with one shared pool it grows with the pool)."""
    checks = 0
    real_check = httpcore_anyio.is_socket_readable

    def counted(sock: Any) -> bool:
        nonlocal checks
        checks += 1
        return real_check(sock)

    monkeypatch.setattr(httpcore_anyio, "is_socket_readable", counted)
    workers, each = 6, 15

    async def main() -> int:
        connections = worker_connections()
        async with httpx.AsyncClient(transport=connections,
                                     base_url=sandbox_server.base_url) as client:

            async def worker() -> None:
                for _ in range(each):
                    response = await client.get("/_sandbox/state")
                    assert response.status_code == 200

            await asyncio.gather(*(worker() for _ in range(workers)))
        return connections.created

    created = asyncio.run(main())
    assert created == workers
    assert 0 < checks <= 2 * workers * each, checks
