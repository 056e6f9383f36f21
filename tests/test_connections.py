"""WorkerConnections: each worker task owns one kept-alive connection (see the module's why)."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from batch_toggle.config import SendOptions
from batch_toggle.jobs.pipeline import JobConfig
from batch_toggle.jobs.session import make_client
from batch_toggle.send.client import WorkerConnections, route_for


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


class RecordingServer:
    """A minimal HTTP/1.1 keep-alive server on 127.0.0.1: answers every request 200 `{}` and
    records (client port, request line). As a forward proxy it sees absolute-form targets."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, str]] = []
        self.url = ""
        self._server: asyncio.base_events.Server | None = None

    async def __aenter__(self) -> RecordingServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *_exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        port = writer.get_extra_info("peername")[1]
        try:
            while head := await reader.readuntil(b"\r\n\r\n"):
                lines = head.decode("latin-1").split("\r\n")
                length = next((int(h.split(":", 1)[1]) for h in lines
                               if h.lower().startswith("content-length:")), 0)
                await reader.readexactly(length)
                self.seen.append((port, lines[0]))
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                             b"Content-Length: 2\r\n\r\n{}")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY",
              "http_proxy", "https_proxy", "all_proxy", "no_proxy")


@pytest.fixture
def no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in PROXY_VARS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def client_for(base_url: str, concurrency: int) -> httpx.AsyncClient:
    """The client a live run gets (session.make_client), for `base_url`."""
    config = JobConfig(inputs=("in.csv",), command="run",
                       send=SendOptions(base_url=base_url, concurrency=concurrency))
    return make_client(config)


def test_a_run_gives_each_worker_one_kept_alive_connection(no_proxy_env: Any) -> None:
    workers, each = 6, 15

    async def main() -> list[tuple[int, str]]:
        async with RecordingServer() as server, client_for(server.url, workers) as client:

            async def worker(name: str) -> None:
                for _ in range(each):
                    response = await client.put(f"{server.url}/api/{name}", json={})
                    assert response.status_code == 200
                    await asyncio.sleep(0)  # let the other workers interleave

            await asyncio.gather(*(worker(f"w{i}") for i in range(workers)))
        return server.seen

    seen = asyncio.run(main())
    assert len(seen) == workers * each
    ports_by_worker: dict[str, set[int]] = {}
    for port, line in seen:
        ports_by_worker.setdefault(line.split()[1], set()).add(port)
    assert all(len(ports) == 1 for ports in ports_by_worker.values()), ports_by_worker
    assert len({p for ports in ports_by_worker.values() for p in ports}) == workers


def test_a_proxy_named_in_the_environment_is_used_one_connection_per_worker(
        no_proxy_env: pytest.MonkeyPatch) -> None:
    """A run behind an egress proxy goes through it, and keeps one connection to it per
    worker (for https each would be one CONNECT tunnel), never httpx's shared pool."""
    workers, each = 3, 5

    async def main() -> list[tuple[int, str]]:
        async with RecordingServer() as proxy:
            no_proxy_env.setenv("HTTP_PROXY", proxy.url)
            async with client_for("http://logis.test", workers) as client:

                async def worker(name: str) -> None:
                    for _ in range(each):
                        response = await client.put(f"http://logis.test/api/{name}", json={})
                        assert response.status_code == 200
                        await asyncio.sleep(0)

                await asyncio.gather(*(worker(f"w{i}") for i in range(workers)))
        return proxy.seen

    seen = asyncio.run(main())
    assert len(seen) == workers * each
    assert all(line.startswith("PUT http://logis.test/api/w") for _port, line in seen)
    ports_by_worker: dict[str, set[int]] = {}
    for port, line in seen:
        ports_by_worker.setdefault(line.split()[1], set()).add(port)
    assert all(len(ports) == 1 for ports in ports_by_worker.values()), ports_by_worker
    assert len({p for ports in ports_by_worker.values() for p in ports}) == workers


def test_no_proxy_sends_the_base_url_direct(no_proxy_env: pytest.MonkeyPatch) -> None:
    async def main() -> list[tuple[int, str]]:
        async with RecordingServer() as server:
            no_proxy_env.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # nothing listens there
            no_proxy_env.setenv("NO_PROXY", "localhost,127.0.0.1")
            async with client_for(server.url, 2) as client:
                response = await client.put(f"{server.url}/api/x", json={})
                assert response.status_code == 200
        return server.seen

    assert [line for _port, line in asyncio.run(main())] == ["PUT /api/x HTTP/1.1"]


def test_without_proxy_variables_the_route_is_direct(no_proxy_env: Any) -> None:
    route = route_for(SendOptions(base_url="https://app.logisapp.ca"))
    assert route.proxy.url is None and route.trust.source == "system"
