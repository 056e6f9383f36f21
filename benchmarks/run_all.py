"""`make bench`: run every benchmark, collect their results, write BENCHMARKS.md from them.

    .venv/bin/python benchmarks/run_all.py [--only peers sandbox ...] [--no-md]

Each benchmark script runs as its own process, sized for the whole run to stay under ten
minutes on a 2-core machine (the arguments below; a flag is passed only if the script knows
it). A script that is not there is skipped with a message. Each writes
benchmarks/out/<name>.json, or prints its result as a JSON line (saved there for it). All of
them, with the machine, the versions and the commands, go to benchmarks/out/results.json, and
BENCHMARKS.md is rendered from that file (benchmarks/write_benchmarks_md.py). With --only, the
other benchmarks' last results (from benchmarks/out/) are reused.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "out"
sys.path.insert(0, str(REPO / "benchmarks"))

# (name, script, argument choices, time limit in seconds). Of the choices, the first whose flags
# the script declares is passed: `--quick` where a script has it, else a smaller size by hand.
BENCHMARKS: tuple[tuple[str, str, tuple[tuple[str, ...], ...], float], ...] = (
    ("validate", "bench_validate.py", (("--quick",), ("--repeat", "5")), 200.0),
    ("sender", "bench_sender.py", (("--quick",), ("--repeat", "2", "--requests", "2000")), 120.0),
    ("store", "bench_store.py", (("--quick",),), 240.0),
    ("pg_store", "bench_pg_store.py", (), 120.0),
    ("sandbox", "bench_sandbox.py", (("--quick",), ("--seconds", "2")), 60.0),
    ("sandbox_memory", "bench_sandbox_memory.py", (("--requests", "3000", "--log-limit", "3000"),),
     120.0),
    ("peers", "bench_peers.py", (), 420.0),
    ("estimates", "bench_estimates.py", (), 300.0),
    ("startup", "bench_startup.py", (), 120.0),
)


def arguments(script: Path, choices: tuple[tuple[str, ...], ...]) -> list[str]:
    """The first choice whose flag the script declares (its source names it), else none."""
    source = script.read_text(encoding="utf-8")
    for choice in choices:
        if f'"{choice[0]}"' in source or f"'{choice[0]}'" in source:
            return list(choice)
    return []


def last_json_line(text: str) -> dict[str, Any] | None:
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                value = json.loads(line)
            except ValueError:
                continue
            if isinstance(value, dict):
                return value
    return None


def run_one(name: str, script_name: str, wanted: tuple[tuple[str, ...], ...],
            limit: float) -> dict[str, Any]:
    """Run one benchmark script; its results, or why there are none."""
    script = REPO / "benchmarks" / script_name
    if not script.exists():
        print(f"run_all: {script_name} not found: skipping {name}", file=sys.stderr)
        return {"status": "missing", "script": f"benchmarks/{script_name}"}
    argv = [sys.executable, str(script), *arguments(script, wanted)]
    shown = " ".join(["python", f"benchmarks/{script_name}", *argv[2:]])
    print(f"run_all: {shown}", file=sys.stderr, flush=True)
    out_file = OUT / f"{name}.json"
    started_wall = time.time()
    started = time.perf_counter()
    # stderr goes straight to the console (progress); stdout is the result. Its own session,
    # so that a benchmark stopped for taking too long takes its servers and clients with it.
    proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)},
                            start_new_session=True)
    try:
        stdout, _ = proc.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        print(f"run_all: {name} took longer than {limit:g} s: stopped", file=sys.stderr)
        partial = _fresh(out_file, started_wall)
        if partial is not None:
            return {"status": "partial", "command": shown, "limit_s": limit,
                    "seconds": limit, "result": partial}
        return {"status": "timeout", "command": shown, "limit_s": limit}
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        raise
    seconds = round(time.perf_counter() - started, 1)
    result = _fresh(out_file, started_wall)
    if result is None:
        result = last_json_line(stdout)
        if result is not None:
            out_file.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    status = "ok" if result is not None else "failed"
    if result is None:
        print(f"run_all: {name} exited {proc.returncode} without a result", file=sys.stderr)
    return {"status": status, "command": shown, "exit_code": proc.returncode,
            "seconds": seconds, "result": result}


def _fresh(path: Path, since: float) -> dict[str, Any] | None:
    """The JSON a benchmark wrote at `path` during this run (None: none, or an older one)."""
    try:
        if path.stat().st_mtime >= since - 1:
            return dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError):
        pass
    return None


def first_line(argv: list[str]) -> str | None:
    if shutil.which(argv[0]) is None and not Path(argv[0]).exists():
        return None
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return out.splitlines()[0].strip() if out.strip() else None


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    def read(path: str) -> str:
        try:
            return Path(path).read_text(encoding="utf-8")
        except OSError:
            return ""

    cpu = next((line.split(":", 1)[1].strip() for line in read("/proc/cpuinfo").splitlines()
                if line.startswith("model name")), platform.processor() or None)
    mem_kb = next((int(line.split()[1]) for line in read("/proc/meminfo").splitlines()
                   if line.startswith("MemTotal:")), None)
    os_name = next((line.split("=", 1)[1].strip().strip('"')
                    for line in read("/etc/os-release").splitlines()
                    if line.startswith("PRETTY_NAME=")), platform.system())
    return {
        "nproc": first_line(["nproc"]) or str(os.cpu_count()),
        "memory_gb": round(mem_kb / 2**20, 1) if mem_kb else None,
        "cpu": cpu, "os": os_name, "kernel": platform.release(),
        "load_average_at_start": round(os.getloadavg()[0], 2),
    }


def versions() -> dict[str, str | None]:
    import httpx
    import pyarrow

    from batch_toggle import __version__

    newman = REPO / "benchmarks" / ".node" / "node_modules" / ".bin" / "newman"
    return {
        "python": platform.python_version(), "batch-toggle": __version__,
        "httpx": httpx.__version__, "pyarrow": pyarrow.__version__,
        "curl": first_line(["curl", "--version"]),
        "node": first_line(["node", "--version"]),
        "newman": first_line([str(newman) if newman.exists() else "newman", "--version"]),
    }


def previous(name: str) -> dict[str, Any]:
    """The last recorded entry of a benchmark (for --only)."""
    try:
        results = json.loads((OUT / "results.json").read_text(encoding="utf-8"))
        return dict(results["benchmarks"][name])
    except (OSError, ValueError, KeyError):
        return {"status": "not run"}


def main() -> int:
    names = [b[0] for b in BENCHMARKS]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=names, default=names)
    parser.add_argument("--no-md", action="store_true", help="do not write BENCHMARKS.md")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    record: dict[str, Any] = {
        "generated_at": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(), "versions": versions(), "benchmarks": {},
    }
    for name, script, wanted, limit in BENCHMARKS:
        if name in args.only:
            record["benchmarks"][name] = run_one(name, script, wanted, limit)
        else:
            record["benchmarks"][name] = previous(name)
    record["total_s"] = round(time.perf_counter() - started, 1)
    record["command"] = "make bench" if args.only == names else \
        "python benchmarks/run_all.py --only " + " ".join(args.only)
    (OUT / "results.json").write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    if not args.no_md:
        from write_benchmarks_md import write

        path = write(record, REPO / "BENCHMARKS.md")
        print(f"run_all: wrote {path.relative_to(REPO)}", file=sys.stderr)
    print(f"run_all: done in {record['total_s']:.0f} s", file=sys.stderr)
    failed = [n for n, b in record["benchmarks"].items()
              if b.get("status") in ("failed", "timeout", "partial")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
