"""What a request costs the PostgreSQL state store: its slot reserved in the key's shared budget,
released at the reply, and its outcome (with a ledger confirmation) committed.

    .venv/bin/python benchmarks/bench_pg_store.py [--requests 2000] [--quick]

A throwaway PostgreSQL server of the machine's own (tests/pg_server.py: initdb and pg_ctl, run
as the `postgres` user when root) on 127.0.0.1, its data in /tmp (on disk), with fsync ON, so
that every commit is as durable as on a real server. One client process, one key, the real
2,500/h window (nothing ever waits on it: 2,000 requests never fill it), requests one after
another, so each figure is one request's own cost:

    reserve  Store.slot_gate(...).reserve: the advisory-locked count and insert (one call);
    release  the reply's release (an UPDATE and a NOTIFY, one transaction);
    commit   Store.record_outcomes of the request's outcome and its ledger confirmation
             (one transaction, fsynced);
    total    the three, as one request pays them.

Target (issue 16): total under 5 ms at the median and 20 ms at p99, against the 1.44 s that the
budget spaces requests by (3,600 s / 2,500): the ratio to that spacing is reported too.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "out"
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from pg_server import PgServer, unavailable_reason  # noqa: E402

from batch_toggle.outcome import Outcome  # noqa: E402
from batch_toggle.state import open_store  # noqa: E402
from batch_toggle.state.records import LedgerUpdate  # noqa: E402

SPACING = 3600.0 / 2500  # the budget's even pace, seconds
WINDOW = [(2500, 3600.0 + 72.0)]  # 2,500/h and its margin, as the limiter holds them
TARGET_MEDIAN_MS, TARGET_P99_MS = 5.0, 20.0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def measure(url: str, requests: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {"reserve": [], "release": [], "commit": [], "total": []}
    with open_store(url) as store:
        store.create_run("bench", command="run", inputs=[("bench.csv", "0" * 64)],
                         plan_key="k", options={}, total_rows=requests,
                         started_at="2026-12-01T00:00:00Z", units=requests)
        gate = store.slot_gate("LK-bench-key", timeout=30.0)
        assert gate is not None
        for i in range(requests):
            job = f"00000000-0000-4000-8000-{i:012d}"
            t0 = time.perf_counter()
            slot, _ = gate.reserve(WINDOW)
            t1 = time.perf_counter()
            assert slot is not None
            gate.release(slot)
            t2 = time.perf_counter()
            update = LedgerUpdate(job, "job", False, store.review_key_hash(job), job, None,
                                  "2026-12-01T00:00:00Z", "bench")
            store.record_outcomes("bench", [(i, Outcome("updated", attempts=1, entity_id=job,
                                                        confirmed_do_notify_sms=False),
                                             update)])
            t3 = time.perf_counter()
            times["reserve"].append((t1 - t0) * 1000)
            times["release"].append((t2 - t1) * 1000)
            times["commit"].append((t3 - t2) * 1000)
            times["total"].append((t3 - t0) * 1000)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--quick", action="store_true", help="500 requests")
    args = parser.parse_args()
    requests = 500 if args.quick else args.requests
    reason = unavailable_reason()
    if reason is not None:
        print(json.dumps({"benchmark": "pg_store", "skipped": reason}))
        return 0
    # In /tmp, not /dev/shm (the tests' choice): an fsync on tmpfs would cost nothing.
    with PgServer.create(parent=Path("/tmp"),
                         settings={"fsync": "on", "full_page_writes": "on"}) as server:
        database = server.create_database()
        url = server.dsn(database)
        import os
        os.environ["PGPASSWORD"] = server.password
        measure(url, 50)  # warm-up: connections, the plan cache
        server.execute("TRUNCATE batch_toggle.outcomes, batch_toggle.runs, batch_toggle.slots,"
                       " batch_toggle.ledger", dbname=database)
        times = measure(url, requests)
        major = server.major
    figures = {name: {"median_ms": round(statistics.median(v), 3),
                      "p99_ms": round(percentile(v, 0.99), 3),
                      "max_ms": round(max(v), 3)} for name, v in times.items()}
    total = figures["total"]
    result = {
        "benchmark": "pg_store", "requests": requests, "postgresql": major, "fsync": "on",
        **figures,
        "median_share_of_spacing": round(total["median_ms"] / 1000 / SPACING, 5),
        "p99_share_of_spacing": round(total["p99_ms"] / 1000 / SPACING, 5),
        "target_met": total["median_ms"] < TARGET_MEDIAN_MS and total["p99_ms"] < TARGET_P99_MS,
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "pg_store.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result))
    return 0 if result["target_met"] else 1


if __name__ == "__main__":
    sys.exit(main())
