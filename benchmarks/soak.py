"""Soak: a long live run against the sandbox on a real socket, with every fault at once, then a
sceptic's audit of what happened.

    .venv/bin/python benchmarks/soak.py                 # 20,000 rows (`make soak`)
    .venv/bin/python benchmarks/soak.py --rows 1000     # what tests/e2e/test_soak.py runs

The sandbox (uvicorn, 127.0.0.1, in a thread of this process) answers with 5-200 ms latency,
5% 5xx (a share of them HTML pages from a "proxy"), 1% connection resets, 1% replies that stall
past the client's --timeout (the change IS applied: a timeout is not a failure to apply), and a
budget window shrunk so that the client, which is allowed far more, meets 429s all along.
`batch-toggle run` runs as a subprocess, as an operator runs it.

Then every claim is checked from the server's own request log, the server's state and the
report (see `check`):
  * one report row per input row, in order; zero rows lost (every row has a final status);
  * the server's state equals the file for every valid unit (and nothing else changed);
  * requests = needed units + one retry per injected fault + one resend per 429, exactly,
    checked unit by unit: every request of a unit before its last one is a 429 or a fault.
    A timed-out request is in that count as a fault although the server applied it: the
    client cannot know, and re-sends (the PUT is idempotent), so the server applied the same
    state twice and the unit's last request is the one whose answer the client read.
Prints the figures (rows, requests, faults injected by kind, 429s, duration, peak RSS of the
CLI process) as text and one JSON line; exits 1 when any check fails.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from batch_toggle.sandbox import SandboxConfig, SandboxThread, create_app  # noqa: E402

API_KEY = "soak-key-0123456789abcdef"
TIMEOUT = 1.0  # the client's --timeout; the sandbox's stalled replies take longer


@dataclass(frozen=True)
class SoakConfig:
    rows: int = 20_000
    seed: int = 2026
    concurrency: int = 16
    max_attempts: int = 8  # 7 faults in a row on one unit: about 1 in 10^8 at 7%
    latency_ms: tuple[float, float] = (5.0, 200.0)
    error_rate: float = 0.05
    reset_rate: float = 0.01
    timeout_rate: float = 0.01
    server_limit: int = 200  # requests per key in any `server_window` seconds...
    server_window: float = 2.0  # ...below what 16 workers at ~100 ms send: 429s all along
    # An outage: once a third of the rows' requests have arrived, the server drops every
    # connection for this long (the run pauses and probes, then goes on).
    outage_s: float = 3.0
    duplicate_share: float = 0.01
    invalid_share: float = 0.01
    unknown_share: float = 0.005
    cli_timeout_s: float = 3600.0


@dataclass
class Row:
    job_id: str
    review_key: str
    state: str
    target: str
    kind: str  # valid | duplicate | invalid | unknown


@dataclass
class SoakFiles:
    seed: Path
    inputs: Path
    rows: list[Row]
    seed_jobs: dict[str, tuple[str, bool, bool]]  # job -> (client, job state, client state)


@dataclass
class SoakResult:
    config: SoakConfig
    files: SoakFiles
    exit_code: int
    stderr: str
    seconds: float
    peak_rss_kb: int
    report: list[dict[str, str]]
    summary: dict[str, Any]
    log: list[dict[str, Any]]
    state: dict[str, Any]
    problems: list[str] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)


# --- files --------------------------------------------------------------------------------------


def make_files(tmp: Path, config: SoakConfig) -> SoakFiles:
    """A seed with one job per valid unit (each its own client, seeded in the opposite of the
    state the file asks for, so every update is visible), and the input file."""
    rng = random.Random(config.seed)

    def uid() -> str:
        return str(uuid.UUID(int=rng.getrandbits(128), version=4))

    rows: list[Row] = []
    seed_jobs: dict[str, tuple[str, bool, bool]] = {}
    keys: dict[str, str] = {}
    for _ in range(config.rows):
        u = rng.random()
        if rows and u < config.duplicate_share:
            first = rng.choice([r for r in rows[-50:] if r.kind == "valid"] or rows[-1:])
            rows.append(Row(first.job_id, first.review_key, first.state, first.target,
                            "duplicate" if first.kind == "valid" else first.kind))
            continue
        u -= config.duplicate_share
        state = rng.choice(["true", "false"])
        target = "client" if rng.random() < 0.2 else "job"
        if u < config.invalid_share:
            rows.append(Row(uid()[:-3] + "xyz", uid(), state, target, "invalid"))
            continue
        u -= config.invalid_share
        if u < config.unknown_share:
            rows.append(Row(uid(), uid(), state, "job", "unknown"))
            continue
        job = uid()
        keys[job], client = uid(), uid()
        current = state != "true"
        seed_jobs[job] = (client, current, current)
        rows.append(Row(job, keys[job], state, target, "valid"))
    seed_path = tmp / "soak_seed.csv"
    with seed_path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["job_id", "review_key", "client_id", "do_notify_sms",
                         "client_do_notify_sms"])
        for job, (client, job_state, client_state) in seed_jobs.items():
            writer.writerow([job, keys[job], client, str(job_state).lower(),
                             str(client_state).lower()])
    inputs = tmp / "soak_input.csv"
    with inputs.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["job_id", "review_key", "do_notify_sms", "update_target", "note"])
        for i, r in enumerate(rows):
            writer.writerow([r.job_id, r.review_key, r.state, r.target, f"soak row {i + 1}"])
    return SoakFiles(seed_path, inputs, rows, seed_jobs)


# --- the run ------------------------------------------------------------------------------------


def sandbox_config(config: SoakConfig, seed: Path) -> SandboxConfig:
    return SandboxConfig(
        seed=seed, api_keys=(API_KEY,), hourly_limit=config.server_limit,
        window=config.server_window, latency_ms=config.latency_ms, error_rate=config.error_rate,
        error_html_share=0.3, reset_rate=config.reset_rate, timeout_rate=config.timeout_rate,
        timeout_delay_s=TIMEOUT + 0.5, fault_seed=config.seed,
        request_log_limit=10**8,  # the check reads every request the server received
    )


def cli_command(config: SoakConfig, files: SoakFiles, base_url: str, tmp: Path) -> list[str]:
    return [
        sys.executable, "-m", "batch_toggle", "run", str(files.inputs), "--base-url", base_url,
        "--state", str(tmp / "state.sqlite"), "--report", str(tmp / "soak_report.csv"),
        "--rate", "1000000/h", "--max-rps", "2000", "--concurrency", str(config.concurrency),
        "--timeout", str(TIMEOUT), "--max-attempts", str(config.max_attempts),
        "--max-invalid", "100", "--halt-after", "1000", "--no-progress",
    ]


def run_measured(cmd: list[str], env: dict[str, str], tmp: Path,
                 timeout: float) -> tuple[int, str, float, int]:
    """(exit code, stderr, seconds, the child's own peak RSS in KiB), reaped with wait4."""
    err_path = tmp / "soak.stderr"
    start = time.monotonic()
    with err_path.open("wb") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=env, cwd=tmp,
                                stdin=subprocess.DEVNULL)
    deadline = start + timeout
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() > deadline:
            proc.kill()
            os.wait4(proc.pid, 0)
            raise RuntimeError(f"the soak run did not end within {timeout:g} s")
        time.sleep(0.05)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return (proc.returncode, err_path.read_text(errors="replace"), time.monotonic() - start,
            usage.ru_maxrss)


def _outage(served: Any, base_url: str, config: SoakConfig) -> None:
    """Drop every connection for `outage_s` once a third of the rows' requests have arrived,
    then serve as before. Bounded: gives up if the run never gets that far."""
    import httpx

    if config.outage_s <= 0:
        return
    log = served.app.state.world.requests
    deadline = time.monotonic() + config.cli_timeout_s
    while len(log) + log.dropped < config.rows // 3:
        if time.monotonic() > deadline:
            return
        time.sleep(0.01)
    with httpx.Client(base_url=base_url, timeout=10.0) as http:
        down = {"reset_rate": 1.0, "error_rate": 0.0, "timeout_rate": 0.0}
        http.post("/_sandbox/faults", json=down).raise_for_status()
        time.sleep(config.outage_s)
        http.post("/_sandbox/faults", json={
            "reset_rate": config.reset_rate, "error_rate": config.error_rate,
            "timeout_rate": config.timeout_rate}).raise_for_status()


def run_soak(tmp: Path, config: SoakConfig) -> SoakResult:
    """Build the files, serve the sandbox, run the CLI to its end, collect everything."""
    import httpx

    files = make_files(tmp, config)
    served = SandboxThread(create_app(sandbox_config(config, files.seed)))
    base_url = served.start(ready_timeout=30.0)
    try:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("LOGIS_") and k != "SSLKEYLOGFILE"}
        env["LOGIS_API_KEY"] = API_KEY
        outage = threading.Thread(target=_outage, args=(served, base_url, config),
                                  daemon=True)
        outage.start()
        code, stderr, seconds, rss = run_measured(cli_command(config, files, base_url, tmp), env,
                                                  tmp, config.cli_timeout_s)
        outage.join(timeout=config.outage_s + 30.0)
        with httpx.Client(base_url=base_url, timeout=60.0) as http:
            log = http.get("/_sandbox/requests").json()["requests"]
            state = http.get("/_sandbox/state").json()
    finally:
        served.stop()
    report_path = tmp / "soak_report.csv"
    report: list[dict[str, str]] = []
    summary: dict[str, Any] = {}
    if report_path.exists():
        with report_path.open(newline="", encoding="utf-8") as fh:
            report = list(csv.DictReader(fh))
        summary = json.loads(Path(f"{report_path}.summary.json").read_text(encoding="utf-8"))
    result = SoakResult(config, files, code, stderr, seconds, rss, report, summary, log, state)
    check(result)
    return result


# --- the audit ----------------------------------------------------------------------------------


def check(r: SoakResult) -> None:
    """Fill r.problems (empty when every claim holds) and r.figures."""
    p = r.problems
    rows = r.files.rows
    if "Traceback" in r.stderr:
        p.append("a traceback on stderr")
    if r.exit_code not in (0, 1):
        p.append(f"exit code {r.exit_code} (expected 1: the file has invalid and unknown rows)")

    # One report row per input row, in order, each with a final status.
    if len(r.report) != len(rows):
        p.append(f"{len(r.report)} report rows for {len(rows)} input rows")
    if [r_["source_row"] for r_ in r.report] != [str(i) for i in range(1, len(r.report) + 1)]:
        p.append("report rows are not one per input row in order")
    expected_status = {"valid": {"updated"}, "duplicate": {"duplicate"},
                       "invalid": {"invalid"}, "unknown": {"failed"}}
    lost = [i + 1 for i, (row, rep) in enumerate(zip(rows, r.report, strict=False))
            if rep["status"] not in expected_status[row.kind]
            and not _retryable_failure(row, rep)]
    if lost:
        p.append(f"{len(lost)} rows without their expected final status, e.g. rows {lost[:5]}")

    # The server's state equals the file for every valid unit, and nothing else changed.
    jobs = {j["id"]: j for j in r.state["jobs"]}
    clients = {c["id"]: c["do_notify_sms"] for c in r.state["clients"]}
    want_job = {job: s for job, (_c, s, _cs) in r.files.seed_jobs.items()}
    want_client = {c: cs for _job, (c, _s, cs) in r.files.seed_jobs.items()}
    for row, rep in zip(rows, r.report, strict=False):
        if row.kind == "valid" and rep["status"] == "updated":
            if row.target == "job":
                want_job[row.job_id] = row.state == "true"
            else:
                want_client[r.files.seed_jobs[row.job_id][0]] = row.state == "true"
    wrong_jobs = [j for j, s in want_job.items() if jobs[j]["do_notify_sms"] is not s]
    wrong_clients = [c for c, s in want_client.items() if clients[c] is not s]
    if wrong_jobs or wrong_clients:
        p.append(f"server state differs from the file: {len(wrong_jobs)} jobs, "
                 f"{len(wrong_clients)} clients")

    # Requests: unit by unit, every request before the last is a 429 or an injected fault.
    puts = [e for e in r.log if e["method"] == "PUT"]
    by_unit: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for e in puts:
        by_unit[(e["job_id"], e["update_target"])].append(e)
    units = {(row.job_id, row.target) for row in rows if row.kind in ("valid", "unknown")}
    if set(by_unit) != units:
        p.append(f"units sent {len(by_unit)} != needed {len(units)}")
    unexplained = []
    for unit, entries in by_unit.items():
        *before, last = entries
        for e in before:
            if e["status"] != 429 and e["fault"] is None:
                unexplained.append((unit, e["seq"], e["status"]))
        if last["status"] == 429:
            unexplained.append((unit, last["seq"], "ended on a 429"))
        elif last["fault"] is not None and len(entries) - _n429(entries) < r.config.max_attempts:
            unexplained.append((unit, last["seq"], f"gave up after {last['fault']}"))
    if unexplained:
        p.append(f"{len(unexplained)} requests not explained by a fault or a 429, e.g. "
                 f"{unexplained[:3]}")
    faults = Counter(_fault_kind(e["fault"]) for e in puts if e["fault"] is not None)
    n_faults = sum(faults.values())
    n429 = sum(1 for e in puts if e["status"] == 429)
    final_faults = sum(1 for entries in by_unit.values() if entries[-1]["fault"] is not None)
    needed = len(units)
    if len(puts) != needed + (n_faults - final_faults) + n429:
        p.append(f"requests {len(puts)} != units {needed} + retried faults "
                 f"{n_faults - final_faults} + 429s {n429}")
    client_count = r.summary.get("requests_sent")
    if client_count != len(puts):
        p.append(f"the client counted {client_count} requests, the server received {len(puts)}")
    # Accounting, unit by unit: a unit's row says every request the server got for it
    # (retries, re-sends after 429s, outage probes); the run's retries are the rest.
    attempts: dict[tuple[str, str], int] = {}
    for row, rep in zip(rows, r.report, strict=False):
        if row.kind in ("valid", "unknown") and rep["status"] != "duplicate":
            attempts.setdefault((row.job_id, row.target), int(rep["attempts"] or 0))
    miscounted = [(u, attempts.get(u), len(e)) for u, e in by_unit.items()
                  if attempts.get(u) != len(e)]
    if miscounted:
        p.append(f"{len(miscounted)} units whose attempts differ from the requests the server "
                 f"got for them, e.g. (unit, attempts, requests) {miscounted[:3]}")
    if sum(attempts.values()) != len(puts):
        p.append(f"the rows' attempts add up to {sum(attempts.values())}, the server received "
                 f"{len(puts)}")
    if r.summary.get("retries") != len(puts) - len(by_unit):
        p.append(f"retries {r.summary.get('retries')} != requests beyond each unit's first "
                 f"{len(puts) - len(by_unit)}")
    by_reason = r.summary.get("requests_by_reason") or {}
    applied_twice = sum(1 for entries in by_unit.values()
                        for e in entries[:-1] if e["fault"] == "timeout")
    r.figures = {
        "rows": len(rows), "units": needed, "requests": len(puts),
        "faults_injected": n_faults, "faults_by_kind": dict(sorted(faults.items())),
        "timeouts_applied_then_resent": applied_twice,
        "responses_429": n429, "client_requests_sent": client_count,
        "client_429s": r.summary.get("responses_429"), "retries": r.summary.get("retries"),
        "requests_by_reason": by_reason,
        "statuses": dict(Counter(rep["status"] for rep in r.report)),
        "exit_code": r.exit_code, "duration_s": round(r.seconds, 1),
        "rows_per_s": round(len(rows) / r.seconds, 1) if r.seconds else None,
        "peak_rss_mb": round(r.peak_rss_kb / 1024, 1), "problems": len(p),
    }


def _retryable_failure(row: Row, rep: dict[str, str]) -> bool:
    """A valid unit whose every attempt met a fault is `failed` retryable: not lost."""
    return row.kind in ("valid", "duplicate") and rep["status"] == "failed" \
        and rep["retryable"] == "true"


def _n429(entries: list[dict[str, Any]]) -> int:
    return sum(1 for e in entries if e["status"] == 429)


def _fault_kind(token: str) -> str:
    if token.startswith("html"):
        return "5xx_html"
    if token[:1] == "5":
        return "5xx_json"
    return token


# --- main -----------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=SoakConfig.rows)
    parser.add_argument("--seed", type=int, default=SoakConfig.seed)
    parser.add_argument("--concurrency", type=int, default=SoakConfig.concurrency)
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)
    config = SoakConfig(rows=args.rows, seed=args.seed, concurrency=args.concurrency)
    tmp = Path(tempfile.mkdtemp(prefix="batch-toggle-soak-"))
    result = run_soak(tmp, config)
    f = result.figures
    print(f"soak: {f['rows']:,} rows ({f['units']:,} units) in {f['duration_s']} s "
          f"({f['rows_per_s']} rows/s), exit {f['exit_code']}")
    print(f"  requests {f['requests']:,} = units {f['units']:,} + retried faults + "
          f"429s {f['responses_429']:,}; faults injected {f['faults_injected']:,} "
          f"{f['faults_by_kind']}")
    print(f"  timed-out requests applied by the server and re-sent: "
          f"{f['timeouts_applied_then_resent']}; statuses {f['statuses']}")
    print(f"  peak RSS of the CLI: {f['peak_rss_mb']} MB")
    for problem in result.problems:
        print(f"  PROBLEM: {problem}")
    print(json.dumps({"soak": f}))
    if args.keep:
        print(f"  files in {tmp}")
    else:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return 1 if result.problems else 0


if __name__ == "__main__":
    sys.exit(main())
