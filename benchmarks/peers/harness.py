"""What the peer benchmark needs around each contestant: a sandbox process, a measured child
process (wall time, peak RSS of its whole process tree), and the scoring of a run from what the
sandbox saw (its request log and its final state).

Scoring looks only at the server side, so every contestant is judged by the same rules,
whatever it prints about itself.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[2]


# --- the sandbox, as its own process ---------------------------------------------------------


class Sandbox:
    """`python -m batch_toggle sandbox` on a free loopback port, stopped on exit."""

    def __init__(self, seed: Path, hourly_limit: int, window: float, api_key: str) -> None:
        argv = [sys.executable, "-m", "batch_toggle", "sandbox", "--port", "0",
                "--seed", str(seed), "--hourly-limit", str(hourly_limit),
                "--window", str(window), "--api-key", api_key,
                "--request-log", str(10**8)]  # scoring reads every request received
        self.command = argv
        self.proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)
        assert self.proc.stderr is not None
        line = self.proc.stderr.readline()  # "Logis sandbox listening on http://127.0.0.1:N"
        match = re.search(r"http://[\d.]+:\d+", line)
        if match is None:
            self.proc.kill()
            raise RuntimeError(f"the sandbox did not start: {line!r}")
        self.base_url = match.group(0)
        self.http = httpx.Client(base_url=self.base_url, timeout=30)

    def request_count(self) -> int:
        return int(self.http.get("/_sandbox/requests", params={"since": 10**9}).json()["next"])

    def requests(self, since: int = 0) -> list[dict[str, Any]]:
        return list(self.http.get("/_sandbox/requests", params={"since": since})
                    .json()["requests"])

    def state(self) -> dict[str, Any]:
        return dict(self.http.get("/_sandbox/state").json())

    def close(self) -> None:
        self.http.close()
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stderr is not None:
            self.proc.stderr.close()

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- a measured child process ----------------------------------------------------------------


@dataclass
class Measured:
    """One contestant process: how long it ran, its memory, and how it ended."""

    exit_code: int
    wall_s: float
    tree_peak_rss_mb: float  # sum over the process tree, sampled
    largest_rss_mb: float  # the largest single process (what /usr/bin/time -v reports)
    killed: bool = False  # by kill_when
    timed_out: bool = False  # killed because it ran past the timeout
    stderr_tail: str = ""


def _session_memory_kb(sid: int) -> tuple[int, int]:
    """(resident KiB summed over every live process of session `sid`, the largest peak
    resident KiB (VmHWM) among them): the contestant's whole tree, right now."""
    total = largest = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as fh:
                stat = fh.read()
            if int(stat[stat.rindex(b")") + 2:].split()[3]) != sid:  # field 6: session id
                continue
            with open(f"/proc/{entry.name}/status", "rb") as fh:
                status = fh.read().decode("ascii", "replace")
        except (OSError, ValueError):
            continue  # gone in between
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        rss = int(fields.get("VmRSS", "0 kB").split()[0])
        total += rss
        largest = max(largest, int(fields.get("VmHWM", "0 kB").split()[0]))
    return total, largest


def _kill_tree(pgid: int) -> None:
    """SIGKILL every process of the contestant's group (a no-op once it is empty)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


def run_measured(argv: Sequence[str], *, env: dict[str, str], stdout: Path | None = None,
                 kill_when: Callable[[], bool] | None = None, timeout: float = 600.0,
                 sample_every: float = 0.05) -> Measured:
    """Run `argv` in its own session; sample the tree's RSS; SIGKILL the whole tree once
    `kill_when()` turns true (polled as often as the sampler runs).

    Memory comes from /proc, sampled: the tree's peak is the largest sum of VmRSS over the
    session's processes, the largest process's peak its VmHWM (the kernel's high-water mark, as
    /usr/bin/time -v reports it). Short-lived processes between samples can be missed, so both
    are lower bounds. Not wait4's ru_maxrss: a child forked from this (large) process starts
    with the parent's pages counted before it execs, and ru_maxrss keeps that figure.
    """
    out = stdout.open("wb") if stdout is not None else subprocess.DEVNULL
    started = time.perf_counter()
    proc = subprocess.Popen(list(argv), cwd=REPO, env=env, stdout=out, stderr=subprocess.PIPE,
                            start_new_session=True)
    peak_kb = largest_kb = 0
    killed = timed_out = False
    done = threading.Event()
    err_chunks: list[bytes] = []
    reader = threading.Thread(target=lambda: err_chunks.append(proc.stderr.read()),  # type: ignore[union-attr]
                              daemon=True)
    reader.start()

    def sample() -> None:
        nonlocal peak_kb, largest_kb, killed, timed_out
        while not done.is_set():
            tree_kb, hwm_kb = _session_memory_kb(proc.pid)
            peak_kb, largest_kb = max(peak_kb, tree_kb), max(largest_kb, hwm_kb)
            if not killed and kill_when is not None and kill_when():
                killed = True
                _kill_tree(proc.pid)
            if not timed_out and time.perf_counter() - started > timeout:
                timed_out = True
                _kill_tree(proc.pid)
            done.wait(sample_every)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, status = os.waitpid(proc.pid, 0)
    wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    done.set()
    sampler.join()
    if killed or timed_out:  # the leader is gone; no straggler of its tree may outlive it
        _kill_tree(proc.pid)
    reader.join(timeout=10)
    if stdout is not None:
        out.close()  # type: ignore[union-attr]
    err = b"".join(err_chunks).decode(errors="replace")
    return Measured(exit_code=proc.returncode, wall_s=round(wall, 2),
                    tree_peak_rss_mb=round(peak_kb / 1024, 1),
                    largest_rss_mb=round(largest_kb / 1024, 1), killed=killed,
                    timed_out=timed_out,
                    stderr_tail=err[-600:])


# --- scoring from the server's side ---------------------------------------------------------


def canonical_uuid(text: Any) -> str | None:
    """The job id a sent value names, however it was spelled (None if it names none)."""
    if not isinstance(text, str):
        return None
    s = text.strip().lower()
    s = s.removeprefix("urn:uuid:").removeprefix("{").removesuffix("}")
    if not re.fullmatch(r"[0-9a-f]{32}|[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}", s):
        return None
    return str(uuid.UUID(s))


@dataclass
class Waste:
    """Requests that could not help, by why (all zero for a perfect client)."""

    duplicate: int = 0  # a unit already settled (200) earlier in this run (or the killed one)
    invalid: int = 0  # 400, or a 404 for a job that exists (the id was sent misspelled)
    permanent_retry: int = 0  # the same unit again after a 401/404 that will not change
    rate_limited: int = 0  # 429
    other: int = 0  # 5xx, no reply

    @property
    def total(self) -> int:
        return (self.duplicate + self.invalid + self.permanent_retry + self.rate_limited
                + self.other)

    def as_dict(self) -> dict[str, int]:
        return {"duplicate": self.duplicate, "invalid": self.invalid,
                "permanent_retry": self.permanent_retry, "rate_limited": self.rate_limited,
                "other": self.other, "total": self.total}


@dataclass
class Ledger:
    """What earlier requests settled, per unit: carried from a killed run into its re-run."""

    settled: dict[tuple[str, str], int] = field(default_factory=dict)  # unit -> 200/401/404


def classify(requests: list[dict[str, Any]], known_jobs: set[str],
             ledger: Ledger | None = None) -> tuple[Waste, Counter[str]]:
    """Sort a run's requests into useful and wasted ones (see Waste), in arrival order.

    A unit is (job, target). Its first request that the server actually judged (200, 401
    incorrect review_key, 404 unknown job) is useful: nobody can know those answers without
    asking. Any later request for a unit already judged is waste, as is a request the server
    rejected on its form (400; or 404 for a job that exists, i.e. an id sent unnormalised),
    and every 429. `ledger` carries what a killed run already settled into its re-run.
    """
    ledger = ledger if ledger is not None else Ledger()
    waste = Waste()
    statuses: Counter[str] = Counter()
    for r in requests:
        status = r.get("status")
        statuses[str(status)] += 1
        job = canonical_uuid(r.get("job_id"))
        unit = (job or str(r.get("job_id")), str(r.get("update_target")))
        if status == 429:
            waste.rate_limited += 1
        elif status == 400 or (status == 404 and job in known_jobs):
            waste.invalid += 1
        elif status in (200, 401, 404):
            before = ledger.settled.get(unit)
            if before is None:
                ledger.settled[unit] = status
            elif before == 200:
                waste.duplicate += 1
            else:
                waste.permanent_retry += 1
        else:
            waste.other += 1
    return waste, statuses


def desired_rows(state: dict[str, Any], intents: list[list[str] | None]) -> dict[str, int]:
    """How many rows with a clear intent have their unit in the desired state on the server."""
    jobs = {j["id"]: j for j in state["jobs"]}
    clients = {c["id"]: c["do_notify_sms"] for c in state["clients"]}
    scored = met = 0
    units_met: set[tuple[str, str]] = set()
    units: set[tuple[str, str]] = set()
    for intent in intents:
        if intent is None:
            continue
        job_id, target, desired = intent
        job = jobs[job_id]
        now = job["do_notify_sms"] if target == "job" else clients[job["client"]]
        scored += 1
        units.add((job_id, target))
        if now == (desired == "true"):
            met += 1
            units_met.add((job_id, target))
    return {"rows_scored": scored, "rows_desired": met, "units_scored": len(units),
            "units_desired": len(units_met)}
