"""What the state store costs the sender: per row, and as a share of the sender's ceiling.

    .venv/bin/python benchmarks/bench_store.py [--units 3000] [--repeat 5] [--quick]

The sandbox runs in its own process (uvicorn, as `batch-toggle sandbox` runs it) on a loopback
socket, no latency, no faults, no budget in the way. The client side is the Runner exactly as
`live._send` drives it (budget, classification, committer, concurrency 4), sending one PUT per
unit (distinct jobs of a generated seed, target job), run twice per sample:

    none   Committer(store=None): outcomes kept in memory only;
    store  Committer(store=StateStore): a real SQLite file on disk (WAL; outcomes and the
           ledger group-committed with synchronous=FULL, i.e. fsync; every request in the send
           log as it leaves and again when answered), review keys hashed for the ledger.

Workloads, each `--repeat` interleaved (none, store) pairs, alternating which goes first:

    sweep    --max-rps unlimited at 4 (the default), 8, 16 and 32 workers: how fast the sender
             goes. At each, the store's share is 1 - rps(store) / rps(none) (the median of the
             per-pair shares), its per-row overhead 1/rps(store) - 1/rps(none). The sender's
             ceiling is the best of them without the store, the store's the best with it
             (`at_ceiling`): more workers wait on a round at once, so rounds carry more rows;
             `ceiling` is the 4-worker entry;
    structure, fsync  the ceiling again with the store's commits hollowed out (see `hollow`):
             `structure` writes nothing (the committer's machinery and the workers' wait for
             their round, nothing else), `fsync` writes and fsyncs one page a round. With the
             real `store` share beside them (`decomposition_c4`) they take the cost apart:
             the wait itself, the disk, and the SQL;
    paced    --max-rps 1000 (the brief's "about 1,000 rows a second"): the achieved rate, and
             the client process's CPU time per row (all threads: the event loop, which also
             commits, and httpx's), which is what the store really adds when the pace, not the
             CPU, sets the rate. The CPU overhead per row against the 1,000 µs a row has at
             1,000 rows/s is the paced share;
    remote   --max-rps 1000 against a server that answers in 20 ms (as a remote API does), with
             24 requests in flight: where the store's fixed cost per request (a commit round
             before a worker takes its next unit) meets a realistic request time.

A worker takes its next unit only once its last outcome is committed (the bound on what a
kill -9 re-sends), so on loopback, where a request takes under 3 ms, each request also waits
for a commit round (its SQL and one fsync, with the event loop blocked meanwhile): at the
4-worker ceiling that wait is most of the store's cost, and it shrinks as requests take longer
or more workers share a round.

Wall-clock figures move with the machine's load (other processes share its two cores); CPU
time per row is steadier. Medians are reported, and every sample. Also the store's own cost
per row without any network (`micro`): the two send-log writes and the outcome commit.

Target (issue 5): the store costs < 10% of the sender's ceiling. `target_met` reads it at the
ceiling: 1 - (the store's best rate) / (the sender's best rate without it), each the best
median over the sweep's worker counts. The default 4 workers are not the sender's ceiling
(more workers go faster on this machine), so their share is reported beside it
(`share_at_default_concurrency`), not as the target.

Why the share at 4 workers stays above 10% on loopback: a round carries at most one row per
worker (a worker waits for its outcome's round: the bound on what a kill -9 re-sends), and
the product contract's synchronous=FULL makes each round an fsync, which on this VM costs ~100 µs of
vCPU time, plus the SQL and WAL frames of four rows' outcome, ledger and send log: ~70 µs a
row against the ~650 µs a row the CPU-bound client spends anyway. With 8 or more workers a
round carries more rows; against a server that takes as long as a real API (`remote`) the
wait hides behind the request time.
Prints one JSON object and writes benchmarks/out/store.json.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
from _common import (
    CONCURRENCY,
    KEY,
    OUT,
    REPO,
    UNLIMITED,
    control,
    make_units,
    runner_client,
    start_server,
    warm_up,
    write_seed,
)

from batch_toggle.config import Rate, SendOptions
from batch_toggle.outcome import Outcome
from batch_toggle.plan.units import Units
from batch_toggle.sandbox import load_seed
from batch_toggle.send.limiter import Budget
from batch_toggle.send.runner import Runner
from batch_toggle.state.committer import Committer
from batch_toggle.state.sqlite import LedgerUpdate, StateStore

SEED_RNG = 5  # write_seed's RNG seed: the same generated jobs every run
PACED_RPS = 1000.0
# A server that takes as long as a remote API: 1,000 rows/s then needs ~25 requests in flight.
REMOTE_LATENCY_MS = 20.0
REMOTE_CONCURRENCY = 24
SWEEP_CONCURRENCY = (4, 8, 16, 32)  # 4 is the default --concurrency; 64 is the most allowed
TARGET_SHARE = 0.10

# --- one sample -----------------------------------------------------------------------------


def open_store(path: Path, units: Units) -> StateStore:
    store = StateStore.open(path)
    store.create_run("bench", command="run", inputs=[("bench.csv", "0" * 64)], plan_key="{}",
                     options={}, total_rows=len(units), started_at="2026-01-01T00:00:00+00:00",
                     units=len(units))
    return store


class Probe:
    """Where the store's time goes, measured from inside (steadier than wall time when other
    processes share the cores): time the event loop spends in the committer's send-log calls
    (the sender waits for it: the critical path), CPU time of the outcome commits,
    and how many rows each group commit carries."""

    def __init__(self, store: StateStore) -> None:
        self.commits = 0
        self.rows = 0
        self.loop_s = 0.0
        self.send_log_blocks_loop = True
        self.writer_cpu_s = 0.0
        inner = store.record_outcomes

        def counted(run_id: str, items: Sequence[Any], sends: Sequence[Any] = ()) -> None:
            cpu = time.thread_time()
            try:
                inner(run_id, items, sends)
            finally:
                self.writer_cpu_s += time.thread_time() - cpu
                self.commits += 1
                self.rows += len(items)

        store.record_outcomes = counted  # type: ignore[method-assign]

    def wrap(self, committer: Committer) -> None:
        """Time the send-log calls: on the event loop when they are plain calls (every worker
        waits), or the awaiting worker's wait when they are coroutines (only that one waits)."""
        for name in ("send_started", "send_done"):
            inner = getattr(committer, name)
            if inspect.iscoroutinefunction(inner):
                self.send_log_blocks_loop = False

                async def awaited(*args: Any, _inner: Any = inner, **kwargs: Any) -> Any:
                    t0 = time.perf_counter()
                    try:
                        return await _inner(*args, **kwargs)
                    finally:
                        self.loop_s += time.perf_counter() - t0

                setattr(committer, name, awaited)
                continue

            def timed(*args: Any, _inner: Any = inner, **kwargs: Any) -> Any:
                t0 = time.perf_counter()
                try:
                    return _inner(*args, **kwargs)
                finally:
                    self.loop_s += time.perf_counter() - t0

            setattr(committer, name, timed)


async def send_all(base_url: str, units: Units, max_rps: float, concurrency: int,
                   store: StateStore | None, probe: Probe | None = None) -> dict[str, float]:
    """One Runner over every unit; wall and CPU seconds from the first send to the last
    commit (committing is part of the work)."""
    options = SendOptions(base_url=base_url, rate=Rate(UNLIMITED, 3600.0), max_rps=max_rps,
                          concurrency=concurrency, timeout=30.0)
    committer = Committer(store, "bench")
    if probe is not None:
        probe.wrap(committer)
    budget = Budget.from_options(options)
    async with runner_client(options) as client:
        await warm_up(client, base_url, units)
        runner = Runner(units, client=client, api_key=KEY, options=options, budget=budget,
                        committer=committer, run_id="bench",
                        review_key_hash=store.review_key_hash if store else None)
        committer.start()
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            await runner.run(list(range(len(units))))
        finally:
            runner.close()
            await committer.close()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    updated = sum(o.status == "updated" for o in committer.outcomes.values())
    if updated != len(units) or runner.stop is not None:
        raise RuntimeError(f"{updated} of {len(units)} updated, stop={runner.stop}")
    return {"wall_s": wall, "cpu_s": cpu, "rps": len(units) / wall,
            "cpu_us_per_row": cpu / len(units) * 1e6}


def hollow(store: StateStore, kind: str, tmp: Path) -> None:
    """Make `store`'s outcome commits hollow, to take the store's cost apart: `structure`
    writes nothing (what is left is the committer's machinery and the workers' wait for their
    round), `fsync` writes and fsyncs one page a round (a round's unavoidable disk cost with
    synchronous=FULL), `store` is the real thing."""
    if kind == "store":
        return
    page = tmp / f"{kind}.fsync"

    def structure(run_id: str, items: Sequence[Any], sends: Sequence[Any] = ()) -> None:
        return None

    def fsync_only(run_id: str, items: Sequence[Any], sends: Sequence[Any] = ()) -> None:
        fd = os.open(page, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            os.pwrite(fd, b"x" * 4096, 0)
            os.fsync(fd)
        finally:
            os.close(fd)

    store.record_outcomes = structure if kind == "structure" else fsync_only  # type: ignore


def sample(base_url: str, units: Units, max_rps: float, concurrency: int, tmp: Path,
           name: str, with_store: bool, kind: str = "store") -> dict[str, float]:
    if not with_store:
        return asyncio.run(send_all(base_url, units, max_rps, concurrency, None))
    path = tmp / f"{name}.sqlite"
    store = open_store(path, units)
    hollow(store, kind, tmp)
    probe = Probe(store)
    try:
        result = asyncio.run(send_all(base_url, units, max_rps, concurrency, store, probe))
    finally:
        store.close()
    n = len(units)
    result["commits"] = probe.commits
    result["rows_per_commit"] = probe.rows / max(1, probe.commits)
    result["send_log_us_per_row"] = probe.loop_s / n * 1e6
    result["send_log_blocks_loop"] = float(probe.send_log_blocks_loop)
    result["writer_cpu_us_per_row"] = probe.writer_cpu_s / n * 1e6
    return result


def workload(base_url: str, units: Units, max_rps: float, repeat: int, tmp: Path, label: str,
             concurrency: int = CONCURRENCY, latency_ms: float = 0.0,
             kind: str = "store") -> dict[str, Any]:
    control(base_url, "POST", "/_sandbox/faults", {"latency_ms": latency_ms})
    samples: dict[str, list[dict[str, float]]] = {"none": [], "store": []}
    for i in range(repeat):
        order = (False, True) if i % 2 == 0 else (True, False)
        for with_store in order:
            key = "store" if with_store else "none"
            samples[key].append(sample(base_url, units, max_rps, concurrency, tmp,
                                       f"{label}-{i}", with_store, kind))
            print(f"bench_store: {label} {key} #{i}: {samples[key][-1]['rps']:.0f} rows/s, "
                  f"{samples[key][-1]['cpu_us_per_row']:.0f} µs CPU/row", file=sys.stderr,
                  flush=True)

    def med(key: str, field: str) -> float:
        return statistics.median(s[field] for s in samples[key])

    rps_none, rps_store = med("none", "rps"), med("store", "rps")
    cpu_none, cpu_store = med("none", "cpu_us_per_row"), med("store", "cpu_us_per_row")
    # Paired per sample as well: each pair ran back to back, under the same load.
    paired = [1 - s["rps"] / n["rps"] for n, s in zip(samples["none"], samples["store"],
                                                      strict=True)]
    return {
        "units": len(units),
        "max_rps": max_rps if max_rps < UNLIMITED else "unlimited",
        "concurrency": concurrency,
        "server_latency_ms": latency_ms,
        "rps_none": round(rps_none), "rps_store": round(rps_store),
        "wall_overhead_us_per_row": round(1e6 / rps_store - 1e6 / rps_none, 1),
        "share_of_ceiling": round(1 - rps_store / rps_none, 4),
        "share_of_ceiling_paired_median": round(statistics.median(paired), 4),
        "cpu_us_per_row_none": round(cpu_none, 1), "cpu_us_per_row_store": round(cpu_store, 1),
        "cpu_overhead_us_per_row": round(cpu_store - cpu_none, 1),
        "cpu_share": round((cpu_store - cpu_none) / cpu_none, 4),
        # At a set pace the budget per row is 1/max_rps: the CPU the store takes of it.
        "cpu_overhead_share_of_row_time": (round((cpu_store - cpu_none) * max_rps / 1e6, 4)
                                           if max_rps < UNLIMITED else None),
        "rows_per_commit": round(med("store", "rows_per_commit"), 2),
        # The send log's time per row before a request may leave: on the event loop (every
        # worker waits) when the committer logs synchronously, else the one worker's wait.
        "send_log_us_per_row": round(med("store", "send_log_us_per_row"), 1),
        "send_log_blocks_loop": bool(samples["store"][0]["send_log_blocks_loop"]),
        "writer_cpu_us_per_row": round(med("store", "writer_cpu_us_per_row"), 1),
        "samples": {k: [{f: round(x, 4) for f, x in s.items()} for s in v]
                    for k, v in samples.items()},
    }


def at_ceiling(sweep: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The sender's ceiling with and without the store: each the best median rate over the
    sweep's worker counts (not necessarily the same count), and the share the store costs."""
    none_c = max(sweep, key=lambda c: sweep[c]["rps_none"])
    store_c = max(sweep, key=lambda c: sweep[c]["rps_store"])
    none_rps, store_rps = sweep[none_c]["rps_none"], sweep[store_c]["rps_store"]
    return {"rps_none": none_rps, "concurrency_none": int(none_c),
            "rps_store": store_rps, "concurrency_store": int(store_c),
            "share": round(1 - store_rps / none_rps, 4)}


# --- the store alone ------------------------------------------------------------------------


def micro(tmp: Path, n: int, batch: float) -> dict[str, float]:
    """The store's own calls per row, no network: what the event loop pays (two send-log
    writes) and what a commit round pays (the outcome commit, in batches of `batch`)."""
    units = make_units([_Job(str(uuid.uuid4()), str(uuid.uuid4())) for _ in range(n)])
    store = open_store(tmp / "micro.sqlite", units)
    try:
        t0 = time.perf_counter()
        for i in range(n):
            wall = time.time()
            store.record_sends([(f"m{i}", wall, None)])
            store.record_sends([(f"m{i}", wall, wall + 0.001)])
        sends = (time.perf_counter() - t0) / n
        size = max(1, round(batch))
        outcome = Outcome("updated", http_status=200, attempts=1, entity_id="e",
                          confirmed_do_notify_sms=True, sent_at="2026-01-01T00:00:00.000+00:00",
                          latency_ms=1.0)
        t0 = time.perf_counter()
        for start in range(0, n, size):
            items = []
            for i in range(start, min(n, start + size)):
                ledger = LedgerUpdate(units.job_id[i], "job", True,
                                      store.review_key_hash(units.review_key[i]), "e", None,
                                      "2026-01-01T00:00:00Z", "bench")
                items.append((i, outcome, ledger))
            store.record_outcomes("bench", items)
        outcomes = (time.perf_counter() - t0) / n
    finally:
        store.close()
    return {"send_log_us_per_row": round(sends * 1e6, 1),
            "outcome_commit_us_per_row": round(outcomes * 1e6, 1),
            "batch_rows": size}


class _Job:
    def __init__(self, job_id: str, review_key: str) -> None:
        self.job_id, self.review_key = job_id, review_key


# --- main -----------------------------------------------------------------------------------


def run(units_n: int, repeat: int, state_dir: Path | None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-store-seed-") as seed_tmp, \
            tempfile.TemporaryDirectory(prefix="bench-store-", dir=state_dir) as tmp:
        # One job per unit, so every unit is its own ledger row.
        seed = write_seed(Path(seed_tmp) / "seed.csv", units_n, SEED_RNG)
        units = make_units(load_seed(seed).jobs)
        proc, base_url = start_server(seed)
        try:
            sweep = {str(c): workload(base_url, units, UNLIMITED, repeat, Path(tmp),
                                      f"ceiling_c{c}", concurrency=c)
                     for c in SWEEP_CONCURRENCY}
            ceiling = sweep[str(CONCURRENCY)]
            parts = {kind: workload(base_url, units, UNLIMITED, repeat, Path(tmp), kind,
                                    kind=kind)["share_of_ceiling_paired_median"]
                     for kind in ("structure", "fsync")}
            parts["store"] = ceiling["share_of_ceiling_paired_median"]
            paced = workload(base_url, units, PACED_RPS, repeat, Path(tmp), "paced")
            remote = workload(base_url, units, PACED_RPS, repeat, Path(tmp), "remote",
                              concurrency=REMOTE_CONCURRENCY, latency_ms=REMOTE_LATENCY_MS)
        finally:
            proc.terminate()
            proc.wait(timeout=10)
        small = micro(Path(tmp), min(units_n, 2000), ceiling["rows_per_commit"])
    return {"benchmark": "store", "ceiling": ceiling, "sweep": sweep,
            "at_ceiling": at_ceiling(sweep),
            "decomposition_c4": parts, "paced": paced, "remote": remote, "micro": small}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--units", type=int, default=3000, help="units (requests) per sample")
    parser.add_argument("--repeat", type=int, default=5, help="interleaved pairs per workload")
    parser.add_argument("--quick", action="store_true", help="1,500 units, 3 pairs (make bench)")
    parser.add_argument("--state-dir", type=Path, default=REPO / "benchmarks" / "out",
                        help="where the store files go (a real disk, so fsync is real; "
                             "/tmp may be tmpfs)")
    args = parser.parse_args(argv)
    if args.quick:
        args.units, args.repeat = 1500, 3
    args.state_dir.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()[0]
    result = run(args.units, args.repeat, args.state_dir)
    result.update({
        "target_share": TARGET_SHARE,
        "target_met": result["at_ceiling"]["share"] < TARGET_SHARE,
        # Each pair ran back to back under the same load: the paired median is the steadier.
        "share_at_default_concurrency": result["ceiling"]["share_of_ceiling_paired_median"],
        "server": "sandbox in its own process (uvicorn), loopback, no faults",
        "python": platform.python_version(), "httpx": httpx.__version__,
        "sqlite": _sqlite_version(), "cpus": os.cpu_count(),
        "load_average": {"before": round(load_before, 2),
                         "after": round(os.getloadavg()[0], 2)},
    })
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "store.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result))


def _sqlite_version() -> str:
    import sqlite3
    return sqlite3.sqlite_version


if __name__ == "__main__":
    main()
