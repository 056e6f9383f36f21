"""What the sandbox's request log costs in memory per request, measured with tracemalloc.

    .venv/bin/python benchmarks/bench_sandbox_memory.py [--requests 20000] [--log-limit N]

The app in-process (httpx.ASGITransport, what `run --sandbox` uses), PUTs round the seed's
jobs, all answered 200. After a warm-up, the memory tracemalloc sees still allocated is read,
then again after more requests: the growth divided by the requests is what each one leaves
behind. It is measured twice: while the log fills (up to `--requests`, or the ring's size if
smaller: every one of them is kept), and once it holds its limit (a ring of the last N
entries), over `--requests`.
Prints one JSON line. The target: `full_over_filling` (what a request leaves behind once the
ring is full, over what it left while the log grew) at most 0.1; exit status 1 when missed. What
is left once the ring is full is the budget's own sliding log (a send time per request in the
window, about 32 bytes), which the window bounds.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import inspect
import json
import sys
import tracemalloc

import httpx
from _common import KEY, REPO, TOGGLE, UNLIMITED

from batch_toggle.sandbox import SandboxConfig, create_app, load_seed

SEED = REPO / "sample_data" / "sandbox_seed.csv"
TARGET = 0.1


async def put_many(client: httpx.AsyncClient, bodies: list[dict[str, str]], n: int) -> None:
    for i in range(n):
        response = await client.put(TOGGLE, json=bodies[i % len(bodies)],
                                    headers={"LOGIS-API-KEY": KEY})
        if response.status_code != 200:
            raise RuntimeError(f"answered {response.status_code}")


def retained() -> int:
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


async def measure(requests: int, log_limit: int | None) -> dict[str, object]:
    seed = load_seed(SEED)
    options: dict[str, object] = {"hourly_limit": UNLIMITED}
    bounded = "request_log_limit" in inspect.signature(SandboxConfig).parameters
    if bounded and log_limit is not None:
        options["request_log_limit"] = log_limit
    config = SandboxConfig(seed=SEED, **options)  # type: ignore[arg-type]
    limit = getattr(config, "request_log_limit", None)
    app = create_app(config, seed=seed)
    bodies = [{"job_id": j.job_id, "review_key": j.review_key, "do_notify_sms": "false",
               "update_target": "job"} for j in seed.jobs]
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://sandbox") as client:
        await put_many(client, bodies, 500)  # warm-up: imports, caches, the first allocations
        tracemalloc.start()
        start = retained()
        filling = requests if limit is None else min(requests, limit)  # all of them kept
        await put_many(client, bodies, filling)
        filled = retained()
        full = None
        if limit is not None:
            # Past the limit, so the ring is full, then `requests` more.
            await put_many(client, bodies, limit - filling)
            before = retained()
            await put_many(client, bodies, requests)
            full = (retained() - before) / requests
        tracemalloc.stop()
    per_kept = (filled - start) / filling
    return {"benchmark": "sandbox_memory", "requests": requests, "log_limit": limit,
            "bytes_per_request_filling": round(per_kept, 1),
            "bytes_per_request_full": None if full is None else round(full, 1),
            "full_over_filling": None if full is None else round(full / per_kept, 3),
            "target_full_over_filling": TARGET}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--log-limit", type=int, default=None,
                        help="the sandbox's request_log_limit (default: its own)")
    args = parser.parse_args()
    result = asyncio.run(measure(args.requests, args.log_limit))
    print(json.dumps(result))
    ratio = result["full_over_filling"]
    sys.exit(0 if isinstance(ratio, float) and ratio <= TARGET else 1)


if __name__ == "__main__":
    main()
