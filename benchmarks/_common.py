"""What the sandbox benchmarks (bench_sandbox, bench_sender, bench_store) share, kept in one
place so that they measure against the same server, the same seeds and the same client.

    the sandbox in its own process  `start_server`: uvicorn on a free loopback port, as
                                    `batch-toggle sandbox` runs it, so the client being measured
                                    does not share a GIL (or, on two cores, a core) with it;
    its control routes              `control`: /_sandbox/faults, /limits, /reset, /requests;
    a generated seed                `write_seed`: the same file for the same (jobs, rng_seed);
    units over a seed's jobs        `make_units`: target job, all answered 200;
    the run's client                `runner_client`: the one `live.make_client` builds, built by it.

Each benchmark is run as a script (`python benchmarks/bench_x.py`), so this folder is first on
sys.path and `import _common` finds this file.
"""

from __future__ import annotations

import csv
import os
import random
import subprocess
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from batch_toggle.config import SendOptions  # noqa: E402
from batch_toggle.jobs.pipeline import JobConfig  # noqa: E402
from batch_toggle.jobs.session import make_client  # noqa: E402
from batch_toggle.plan.units import Units  # noqa: E402

OUT = REPO / "benchmarks" / "out"
TOGGLE = "/api/apikeys/toggle_sms_notifications"
KEY = "sandbox-key"  # the sandbox's default API key
UNLIMITED = 10**9  # an hourly limit (or --max-rps) that nothing in a benchmark reaches
CONCURRENCY = 4  # --concurrency's default

# The sandbox server, run by `start_server` as `python -c SERVER SEED HOURLY_LIMIT`; it prints
# its URL once it listens.
SERVER = """
import sys
from batch_toggle.sandbox import SandboxConfig, run_server
config = SandboxConfig(seed=sys.argv[1], hourly_limit=int(sys.argv[2]))
run_server(config, "127.0.0.1", 0, on_ready=lambda url: print(url, flush=True))
"""


def start_server(seed: Path, hourly_limit: int = UNLIMITED) -> tuple[subprocess.Popen[str], str]:
    """The sandbox in its own process on a free loopback port, seeded from `seed`; the process
    (terminate it when done) and its base URL, once it listens."""
    proc = subprocess.Popen([sys.executable, "-c", SERVER, str(seed), str(hourly_limit)],
                            stdout=subprocess.PIPE, text=True,
                            cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()  # the server prints its URL once listening
    if not line.startswith("http://"):
        proc.kill()
        raise RuntimeError(f"the sandbox did not start: {line!r}")
    return proc, line


def control(base_url: str, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    """One call to the sandbox's control routes (/_sandbox/...); its JSON answer."""
    response = httpx.request(method, base_url + path, json=body, timeout=30)
    response.raise_for_status()
    return response.json()


def write_seed(path: Path, jobs: int, rng_seed: int) -> Path:
    """A sandbox seed of `jobs` generated jobs (four to a client, every flag true): more jobs
    than the shipped seed has, and the same file for the same `rng_seed`, so that runs of a
    benchmark are comparable."""
    rng = random.Random(rng_seed)

    def uid() -> str:
        return str(uuid.UUID(int=rng.getrandbits(128), version=4))

    clients = [uid() for _ in range(max(1, jobs // 4))]
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["job_id", "review_key", "client_id", "do_notify_sms",
                         "client_do_notify_sms"])
        for i in range(jobs):
            writer.writerow([uid(), uid(), clients[i % len(clients)], "true", "true"])
    return path


def make_units(jobs: Sequence[Any], n: int | None = None) -> Units:
    """`n` units (default: one per job) cycling over the seed's `jobs` (anything with job_id
    and review_key), target job, do_notify_sms alternating: all answered 200, none waiting on
    another."""
    n = len(jobs) if n is None else n
    picked = [jobs[i % len(jobs)] for i in range(n)]
    return Units(
        row=np.arange(n, dtype=np.int64),
        job_id=[j.job_id for j in picked],
        review_key=[j.review_key for j in picked],
        do_notify_sms=np.array([i % 2 == 0 for i in range(n)], dtype=bool),
        update_target=["job"] * n,
        after=np.full(n, -1, dtype=np.int64),
    )


def runner_client(options: SendOptions) -> httpx.AsyncClient:
    """The client a run sends with: `live.make_client`'s own (a connection per worker, no
    redirects), so the benchmark measures what ships. It has no base_url: the Runner puts
    `options.base_url` before every path itself."""
    return make_client(JobConfig(inputs=(), command="run", send=options))


async def warm_up(client: httpx.AsyncClient, base_url: str, units: Units) -> None:
    """One PUT of the first unit, so that connecting is not on the clock."""
    await client.put(base_url + TOGGLE, json={"job_id": units.job_id[0],
                                              "review_key": units.review_key[0],
                                              "do_notify_sms": "true", "update_target": "job"},
                     headers={"LOGIS-API-KEY": KEY})
