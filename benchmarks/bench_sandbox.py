"""How many requests per second the sandbox serves on this machine, with no faults.

    .venv/bin/python benchmarks/bench_sandbox.py [--seconds 3] [--concurrency 4 16]

The server runs in its own process (uvicorn, as `batch-toggle sandbox` runs it) so that client
and server do not share a GIL. Two clients, each a fixed set of keep-alive workers sending
toggles (PUT, target job, all answered 200) round the seed's jobs:
  server_rps  a minimal asyncio HTTP/1.1 client: what the sandbox itself can serve;
  httpx_rps   httpx.AsyncClient, the client batch-toggle uses (on loopback it is the slower side).
Also `inprocess_rps`: the app through httpx.ASGITransport (what `run --sandbox` uses).
Prints one JSON line.

The figure tells later benchmarks whether the sandbox could be their bottleneck: the real
Logis budget is 2,500 requests an hour, so anything above a few hundred per second is plenty.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import time

import httpx
from _common import KEY, REPO, TOGGLE, UNLIMITED, start_server

from batch_toggle.sandbox import SandboxConfig, create_app, load_seed

SEED = REPO / "sample_data" / "sandbox_seed.csv"


async def load(client: httpx.AsyncClient, bodies: list[dict[str, str]], concurrency: int,
               seconds: float, warmup: float) -> float:
    """Requests per second over `seconds`, after `warmup` seconds not counted."""
    start = time.perf_counter()
    counting_from = start + warmup
    deadline = counting_from + seconds
    counted = 0
    errors = 0

    async def worker(offset: int) -> None:
        nonlocal counted, errors
        i = offset
        while (now := time.perf_counter()) < deadline:
            response = await client.put(TOGGLE, json=bodies[i % len(bodies)],
                                        headers={"LOGIS-API-KEY": KEY})
            i += concurrency
            if response.status_code != 200:
                errors += 1
            if now >= counting_from:
                counted += 1

    await asyncio.gather(*(worker(n) for n in range(concurrency)))
    if errors:
        raise RuntimeError(f"{errors} requests were not answered 200")
    return counted / seconds


async def load_raw(base_url: str, bodies: list[dict[str, str]], concurrency: int,
                   seconds: float, warmup: float) -> float:
    """Like `load`, with a bare asyncio HTTP/1.1 keep-alive client (no client overhead to
    speak of), so the figure is the server's."""
    host, port = base_url.removeprefix("http://").split(":")
    requests = []
    for body in bodies:
        data = json.dumps(body).encode()
        requests.append(
            b"PUT " + TOGGLE.encode() + b" HTTP/1.1\r\nHost: sandbox\r\n"
            + f"LOGIS-API-KEY: {KEY}\r\n".encode()
            + b"Content-Type: application/json\r\n"
            + f"Content-Length: {len(data)}\r\n\r\n".encode() + data
        )
    start = time.perf_counter()
    counting_from, deadline = start + warmup, start + warmup + seconds

    async def worker(offset: int) -> int:
        reader, writer = await asyncio.open_connection(host, int(port))
        i, counted = offset, 0
        try:
            while (now := time.perf_counter()) < deadline:
                writer.write(requests[i % len(requests)])
                i += concurrency
                head = await reader.readuntil(b"\r\n\r\n")
                if not head.startswith(b"HTTP/1.1 200"):
                    raise RuntimeError(f"unexpected reply {head[:40]!r}")
                length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length:"))
                await reader.readexactly(length)
                if now >= counting_from:
                    counted += 1
        finally:
            writer.close()
            await writer.wait_closed()
        return counted

    counts = await asyncio.gather(*(worker(n) for n in range(concurrency)))
    return sum(counts) / seconds


async def measure(args: argparse.Namespace) -> dict[str, object]:
    seed = load_seed(SEED)
    bodies = [{"job_id": j.job_id, "review_key": j.review_key, "do_notify_sms": "false",
               "update_target": "job"} for j in seed.jobs]
    server_rps: dict[str, float] = {}
    httpx_rps: dict[str, float] = {}
    proc, base_url = start_server(SEED)
    try:
        for c in args.concurrency:
            server_rps[str(c)] = round(await load_raw(base_url, bodies, c, args.seconds, 0.5))
        for c in args.concurrency:
            limits = httpx.Limits(max_connections=c, max_keepalive_connections=c)
            async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=10) as client:
                httpx_rps[str(c)] = round(await load(client, bodies, c, args.seconds, 0.5))
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    inproc_rps: dict[str, float] = {}
    for c in args.concurrency:
        app = create_app(SandboxConfig(hourly_limit=UNLIMITED), seed=seed)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://sandbox") as client:
            inproc_rps[str(c)] = round(await load(client, bodies, c, args.seconds, 0.3))
    return {
        "benchmark": "sandbox_requests_per_second",
        "server_rps": server_rps,
        "httpx_rps": httpx_rps,
        "inprocess_rps": inproc_rps,
        "seconds_per_point": args.seconds,
        "request": "PUT toggle_sms_notifications, target job, 200, no faults",
        "httpx": httpx.__version__,
        "load_average": os.getloadavg()[0],
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[4, 16])
    args = parser.parse_args()
    print(json.dumps(asyncio.run(measure(args))))


if __name__ == "__main__":
    main()
