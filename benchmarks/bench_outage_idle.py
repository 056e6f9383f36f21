"""An outage pause is idle: the CPU a `batch-toggle run` process uses while the API is gone.

    .venv/bin/python benchmarks/bench_outage_idle.py                 # a 5-minute pause
    .venv/bin/python benchmarks/bench_outage_idle.py --seconds 60    # a quick look

A run against the sandbox (plain http on 127.0.0.1) sends its first requests, which answer, so
the base URL has answered and an outage is ridden out (not a first contact's short grace). Then
the sandbox drops every connection (`reset_rate=1`): the run declares an outage and probes with
a doubling delay (capped at 60 s) for up to 15 minutes. From the first "pause" (outage) event
on, the process's own CPU time (utime + stime from /proc/PID/stat) is sampled for `--seconds`;
then the run is interrupted (SIGINT, exit 130, report written).

Target (issue 14): over a 5-minute pause, the process's CPU time grows by less than 1 s. The
exit status is 0 when it does. Prints one JSON line, also written to
benchmarks/out/outage_idle.json.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "out"
TARGET_CPU_S = 1.0  # per 5 minutes of pause
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of `pid` (its threads included), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def wait_for(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"bench_outage_idle: timed out waiting for {what}")
        time.sleep(0.1)


def outage_started(events: Path) -> bool:
    if not events.exists():
        return False
    return any('"reason": "outage"' in line for line in events.read_text().splitlines())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=300.0,
                        help="how long to measure the pause (default 300: five minutes)")
    args = parser.parse_args()

    sys.path.insert(0, str(REPO))
    import httpx

    from batch_toggle.sandbox import SandboxConfig, create_app, serve_in_thread
    from batch_toggle.sandbox.config import default_seed_path
    from batch_toggle.sandbox.world import load_seed

    seed = load_seed(default_seed_path())
    app = create_app(SandboxConfig(seed=default_seed_path()), seed=seed)
    with tempfile.TemporaryDirectory() as tmp, serve_in_thread(app=app) as base_url:
        work = Path(tmp)
        src = work / "in.csv"
        src.write_text("job_id,review_key,do_notify_sms,update_target\n" + "".join(
            f"{j.job_id},{j.review_key},false,job\n" for j in seed.jobs[:100]))
        events = work / "events.jsonl"
        env = {k: v for k, v in os.environ.items() if not k.endswith(("_PROXY", "_proxy"))}
        env["LOGIS_API_KEY"] = app.state.config.api_keys[0]
        proc = subprocess.Popen(
            [sys.executable, "-m", "batch_toggle", "run", str(src), "--base-url", base_url,
             "--state", str(work / "state.sqlite"), "--report", str(work / "report.csv"),
             "--events", str(events), "--max-rps", "2", "--concurrency", "2", "--quiet"],
            env=env, cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            wait_for(lambda: len(app.state.world.requests) >= 3, 30, "the first answers")
            # The API goes away: every connection dropped (the introspection routes still work).
            httpx.post(f"{base_url}/_sandbox/faults", json={"reset_rate": 1.0}).raise_for_status()
            wait_for(lambda: outage_started(events), 60, "the outage pause")
            cpu0, t0 = cpu_seconds(proc.pid), time.monotonic()
            time.sleep(args.seconds)  # the measurement itself: a pause of this length
            cpu1, t1 = cpu_seconds(proc.pid), time.monotonic()
            probes = sum(1 for r in app.state.world.requests if r.get("fault") == "reset")
        finally:
            proc.send_signal(signal.SIGINT)
            _out, err = proc.communicate(timeout=60)
    grown = cpu1 - cpu0
    result = {
        "benchmark": "outage_idle", "pause_s": round(t1 - t0, 1), "cpu_s": round(grown, 3),
        "cpu_per_5_min_s": round(grown * 300.0 / (t1 - t0), 3), "probes_in_outage": probes,
        "exit_code": proc.returncode, "target_cpu_per_5_min_s": TARGET_CPU_S,
        "met": grown * 300.0 / (t1 - t0) < TARGET_CPU_S,
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "outage_idle.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))
    if proc.returncode != 130:
        print(f"bench_outage_idle: the run ended with {proc.returncode}: {err[-2000:]}",
              file=sys.stderr)
        return 1
    return 0 if result["met"] else 1


if __name__ == "__main__":
    sys.exit(main())
