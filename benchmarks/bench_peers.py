"""batch-toggle against what users would pick instead, on the same file and the same server.

    .venv/bin/python benchmarks/bench_peers.py [--blocks 10] [--scenarios hour storm kill raw]

Contestants (each skipped with a message when its tool is missing):
  batch-toggle  `python -m batch_toggle run FILE --rate N/Ws ...` (the budget it is told is the
                server's; its defaults otherwise, --max-rps scaled with the shrunk hour);
  naive-python  benchmarks/peers/naive_script.py: httpx, one PUT per row, cells as they are;
  xargs-curl    benchmarks/peers/curl_xargs.sh: `xargs -P 8` over one curl per line;
  newman        `newman run benchmarks/peers/newman_collection.json -d FILE` (`make bench-peers`
                installs it under benchmarks/.node/).

Every run gets a fresh `python -m batch_toggle sandbox` process on a loopback port, seeded with
benchmarks/data/peers/<rows>-rows/seed.csv (benchmarks/peers/make_data.py: the shipped sample's
mess scaled by --blocks, plus a clean file of as many rows; every unit starts opposite to the
file's intent). Scenarios:
  hour   the key's budget with the hour shrunk to 30 s, half what the file needs, as a 5,000-row
         file is against the real 2,500/h: messy and clean files. The budget's average rate
         (rows / 60 s) stays below every contestant's own speed, as the real 0.7 request/s
         does, so that a tool that does not pace itself meets the limit here as it would there;
  storm  a budget a twelfth of the file per 1.5 s (a key shared with other traffic or lowered
         by its owner): messy file;
  kill   no budget pressure; SIGKILL the contestant's process tree once the server has seen
         half the rows, then run it again in full (batch-toggle with --resume): messy file;
  raw    no budget pressure, clean file: plain speed.
Scoring is from the server's side only (harness.classify / harness.desired_rows). Writes
benchmarks/out/peers.json and prints a short summary.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks" / "peers"))

from harness import Ledger, Sandbox, classify, desired_rows, run_measured  # noqa: E402
from make_data import DEFAULT_OUT as DATA  # noqa: E402
from make_data import generate  # noqa: E402

OUT = REPO / "benchmarks" / "out"
PEERS_DIR = REPO / "benchmarks" / "peers"
NEWMAN_LOCAL = REPO / "benchmarks" / ".node" / "node_modules" / ".bin" / "newman"
API_KEY = "bench-key-0000"
ROOMY = 10**6  # requests per window: no budget pressure at all
HOUR_S = 30.0  # the shrunk hour: 3600 s -> 30 s, a factor of 120
TIME_SCALE = 3600.0 / HOUR_S
STORM_WINDOW_S = 1.5
RUN_TIMEOUT_S = 150.0  # a contestant still running after this is killed and reported so
PEERS = ("batch-toggle", "naive-python", "xargs-curl", "newman")
ROWS_PER_BLOCK = 300


@dataclass(frozen=True)
class Scenario:
    name: str
    input: str  # "messy" or "clean"
    blocks: int  # size: 300 rows per block
    limit: int
    window: float
    kill: bool
    title: str


def scenarios(blocks: int, small_blocks: int) -> dict[str, list[Scenario]]:
    """The budget of each scenario, sized to its file (see the module docstring)."""
    hour_limit = blocks * ROWS_PER_BLOCK // 2  # 2,500 for 5,000 rows
    storm_limit = max(1, small_blocks * ROWS_PER_BLOCK // 12)
    hour_title = (f"budget {hour_limit:,} per {HOUR_S:g} s (the hour shrunk {TIME_SCALE:g}x; "
                  f"the file needs two windows' worth)")
    return {
        "hour": [Scenario("hour-messy", "messy", blocks, hour_limit, HOUR_S, False, hour_title),
                 Scenario("hour-clean", "clean", blocks, hour_limit, HOUR_S, False, hour_title)],
        "storm": [Scenario("storm-messy", "messy", small_blocks, storm_limit, STORM_WINDOW_S,
                           False,
                           f"429 storm: budget {storm_limit:,} per {STORM_WINDOW_S:g} s, a "
                           "twelfth of the file")],
        "kill": [Scenario("kill-messy", "messy", small_blocks, ROOMY, 3600.0, True,
                          "kill -9 of the whole process tree once the server has seen half "
                          "the rows, then a second full run")],
        "raw": [Scenario("raw-clean", "clean", small_blocks, ROOMY, 3600.0, False,
                         "no budget pressure: plain speed")],
    }


# --- the contestants ---------------------------------------------------------------------------


def newman_path() -> str | None:
    if NEWMAN_LOCAL.exists():
        return str(NEWMAN_LOCAL)
    return shutil.which("newman")


def missing_tool(peer: str) -> str | None:
    """Why a contestant cannot run here, or None."""
    if peer == "xargs-curl":
        absent = [t for t in ("curl", "xargs", "sh") if shutil.which(t) is None]
        return f"{', '.join(absent)} not found" if absent else None
    if peer == "newman":
        if shutil.which("node") is None:
            return "node not found"
        if newman_path() is None:
            return "newman not installed (run `make bench-peers` to install it locally)"
    return None


@dataclass(frozen=True)
class Command:
    argv: list[str]
    stdout: Path | None  # where its per-row log goes, if that is stdout
    report: Path | None  # the per-row report it writes itself, if any


def command(peer: str, scenario: Scenario, input_path: Path, base_url: str, work: Path,
            resume: bool = False) -> Command:
    """The command line of one contestant for one run."""
    if peer == "batch-toggle":
        report = work / f"report-{int(resume)}.csv"
        argv = [sys.executable, "-m", "batch_toggle", "run", str(input_path),
                "--base-url", base_url, "--state", str(work / "state.sqlite"),
                "--report", str(report), "--rate", f"{scenario.limit}/{scenario.window:g}s",
                "--max-rps", f"{10 * TIME_SCALE:g}", "--quiet"]
        return Command(argv + (["--resume"] if resume else []), None, report)
    if peer == "naive-python":
        return Command([sys.executable, str(PEERS_DIR / "naive_script.py"), str(input_path),
                        base_url], work / f"naive-{int(resume)}.log", None)
    if peer == "xargs-curl":
        return Command(["sh", str(PEERS_DIR / "curl_xargs.sh"), str(input_path), base_url],
                       work / f"curl-{int(resume)}.log", None)
    if peer == "newman":
        report = work / f"newman-{int(resume)}.json"
        return Command([str(newman_path()), "run", str(PEERS_DIR / "newman_collection.json"),
                        "-d", str(input_path), "--env-var", f"api_key={API_KEY}",
                        "--env-var", f"base_url={base_url}", "--reporters", "json",
                        "--reporter-json-export", str(report)], None, report)
    raise ValueError(peer)


def display(argv: list[str], base_url: str = "", work: Path | None = None) -> str:
    """A command line as a person would type it: paths relative to the repository, the run's
    scratch directory as $WORK, its sandbox port as PORT, the key as $LOGIS_API_KEY."""
    out = []
    for a in argv:
        a = a.replace(sys.executable, "python")
        if work is not None:
            a = a.replace(str(work), "$WORK")
        if base_url:
            a = a.replace(base_url, "http://127.0.0.1:PORT")
        a = a.replace(str(REPO) + "/", "").replace(API_KEY, "$LOGIS_API_KEY")
        out.append(a if a and " " not in a else json.dumps(a))
    return " ".join(out)


# --- per-row reports ---------------------------------------------------------------------------


def check_report(peer: str, cmd: Command, rows: int) -> dict[str, Any]:
    """Does the contestant leave one entry per input row, naming the row and its outcome?"""
    if peer == "batch-toggle":
        return _bt_report(cmd.report, rows)
    if peer == "newman":
        return _newman_report(cmd.report, rows)
    return _log_report(cmd.stdout, rows)


def _bt_report(path: Path | None, rows: int) -> dict[str, Any]:
    if path is None or not path.exists():
        return {"exists": False, "entries": 0, "complete": False}
    with path.open(newline="", encoding="utf-8") as fh:
        statuses = [r["status"] for r in csv.DictReader(fh)]
    complete = len(statuses) == rows and all(statuses)
    return {"exists": True, "entries": len(statuses), "complete": complete,
            "kind": "status, error code, HTTP status per row; summary JSON with hashes"}


def _newman_report(path: Path | None, rows: int) -> dict[str, Any]:
    if path is None or not path.exists():
        return {"exists": False, "entries": 0, "complete": False}
    executions = json.loads(path.read_text(encoding="utf-8"))["run"]["executions"]
    codes = [e.get("response", {}).get("code") for e in executions]
    complete = len(codes) == rows and all(codes)
    return {"exists": True, "entries": len(codes), "complete": complete,
            "kind": "HTTP status per iteration (JSON reporter, written at the end)"}


def _log_report(path: Path | None, rows: int) -> dict[str, Any]:
    if path is None or not path.exists() or path.stat().st_size == 0:
        return {"exists": False, "entries": 0, "complete": False}
    numbers = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        head = line.split(" ", 1)[0]
        if head.isdigit():
            numbers.append(int(head))
    complete = sorted(numbers) == list(range(1, rows + 1))
    return {"exists": True, "entries": len(numbers), "complete": complete,
            "kind": "HTTP status per line of stdout"}


# --- one run -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Dataset:
    """One generated size: its directory, make_data's summary, and the seed's job ids."""

    path: Path
    data: dict[str, Any]
    known_jobs: frozenset[str]

    @classmethod
    def make(cls, blocks: int) -> Dataset:
        path = DATA / f"{blocks * ROWS_PER_BLOCK}-rows"
        data = generate(path, blocks)
        lines = (path / "seed.csv").read_text(encoding="utf-8").splitlines()[1:]
        return cls(path, data, frozenset(line.split(",", 1)[0] for line in lines))


def one_run(peer: str, scenario: Scenario, ds: Dataset, work: Path,
            env: dict[str, str]) -> dict[str, Any]:
    """A fresh sandbox, the contestant (killed and re-run in the kill scenario), the score."""
    input_path = ds.path / f"{scenario.input}.csv"
    rows = int(ds.data[scenario.input]["rows"])
    intents = ds.data[scenario.input]["intents"]
    known_jobs = set(ds.known_jobs)
    with Sandbox(ds.path / "seed.csv", scenario.limit, scenario.window, API_KEY) as sandbox:
        cmd = command(peer, scenario, input_path, sandbox.base_url, work)
        kill_when: Callable[[], bool] | None = None
        if scenario.kill:
            def kill_when() -> bool:
                return sandbox.request_count() >= rows // 2
        first = run_measured(cmd.argv, env=env, stdout=cmd.stdout, kill_when=kill_when,
                             timeout=RUN_TIMEOUT_S)
        ledger = Ledger()
        waste, statuses = classify(sandbox.requests(), known_jobs, ledger)
        result: dict[str, Any] = {
            "command": display(cmd.argv, sandbox.base_url, work),
            "exit_code": first.exit_code, "wall_s": first.wall_s,
            "tree_peak_rss_mb": first.tree_peak_rss_mb, "largest_rss_mb": first.largest_rss_mb,
            "requests": sum(statuses.values()), "statuses": dict(statuses),
            "wasted": waste.as_dict(), "report": check_report(peer, cmd, rows),
            **desired_rows(sandbox.state(), intents),
        }
        if first.timed_out:
            result["timed_out_after_s"] = RUN_TIMEOUT_S
        if scenario.kill:
            result["killed"] = first.killed
            seen = sum(statuses.values())
            again = command(peer, scenario, input_path, sandbox.base_url, work, resume=True)
            second = run_measured(again.argv, env=env, stdout=again.stdout,
                                  timeout=RUN_TIMEOUT_S)
            waste2, statuses2 = classify(sandbox.requests(since=seen), known_jobs, ledger)
            result["rerun"] = {
                "command": display(again.argv, sandbox.base_url, work),
                "exit_code": second.exit_code,
                "wall_s": second.wall_s, "tree_peak_rss_mb": second.tree_peak_rss_mb,
                "requests": sum(statuses2.values()), "statuses": dict(statuses2),
                "wasted": waste2.as_dict(), "report": check_report(peer, again, rows),
                **({"timed_out_after_s": RUN_TIMEOUT_S} if second.timed_out else {}),
                **desired_rows(sandbox.state(), intents),
            }
        if first.exit_code not in (0, 1) and not first.killed:
            result["stderr_tail"] = first.stderr_tail
    return result


def versions() -> dict[str, str | None]:
    """Versions of every tool in the comparison (None: not installed)."""
    import httpx
    import pyarrow

    from batch_toggle import __version__

    def first_line(argv: list[str]) -> str | None:
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=30).stdout
        except (OSError, subprocess.SubprocessError):
            return None
        return out.splitlines()[0].strip() if out else None

    nm = newman_path()
    return {
        "python": sys.version.split()[0], "batch-toggle": __version__,
        "httpx": httpx.__version__, "pyarrow": pyarrow.__version__,
        "curl": first_line(["curl", "--version"]),
        "xargs": first_line(["xargs", "--version"]),
        "node": first_line(["node", "--version"]),
        "newman": first_line([nm, "--version"]) if nm else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=8,
                        help="size of the hour scenario's files: 300 rows per block "
                             "(default 8: 2,400 rows)")
    parser.add_argument("--small-blocks", type=int, default=2,
                        help="size of the storm, kill and raw scenarios' file (default 2: "
                             "600 rows)")
    parser.add_argument("--scenarios", nargs="+", default=["hour", "storm", "kill", "raw"],
                        choices=["hour", "storm", "kill", "raw"])
    parser.add_argument("--peers", nargs="+", default=list(PEERS), choices=PEERS)
    parser.add_argument("--max-seconds", type=float, default=330.0,
                        help="start no new scenario after this long (make bench's 10 minutes)")
    args = parser.parse_args()
    started = time.perf_counter()
    datasets = {b: Dataset.make(b) for b in {args.blocks, args.small_blocks}}
    env = {**os.environ, "LOGIS_API_KEY": API_KEY, "PYTHONPATH": str(REPO)}
    skipped = {p: why for p in args.peers if (why := missing_tool(p))}
    for peer, why in skipped.items():
        print(f"bench_peers: skipping {peer}: {why}", file=sys.stderr)
    plan = scenarios(args.blocks, args.small_blocks)
    record: dict[str, Any] = {
        "benchmark": "peers", "complete": False,
        "data": {str(ds.data["messy"]["rows"]): {
            "blocks": b, "seed_jobs": ds.data["seed_jobs"], "dir": display([str(ds.path)]),
            "messy_rows_scored": sum(1 for i in ds.data["messy"]["intents"] if i),
            "messy_units_scored": len({tuple(i[:2]) for i in ds.data["messy"]["intents"] if i}),
        } for b, ds in sorted(datasets.items())},
        "generator": "benchmarks/peers/make_data.py",
        "time_scale": TIME_SCALE, "api_key": "a sandbox key (not a secret)",
        "skipped": skipped, "versions": versions(), "scenarios": {}, "out_of_time": [],
    }
    with tempfile.TemporaryDirectory(prefix="bench-peers-") as tmp:
        for key in args.scenarios:
            for scenario in plan[key]:
                if time.perf_counter() - started > args.max_seconds:
                    print(f"bench_peers: {args.max_seconds:g} s spent: skipping {scenario.name}",
                          file=sys.stderr)
                    record["out_of_time"].append(scenario.name)
                    continue
                record["scenarios"][scenario.name] = run_scenario(
                    scenario, args.peers, skipped, datasets[scenario.blocks], Path(tmp), env)
                save(record, started)  # so that a run stopped later still leaves these
    record["complete"] = not record["out_of_time"]
    save(record, started)
    print(json.dumps({"benchmark": "peers", "duration_s": record["duration_s"],
                      "written": "benchmarks/out/peers.json"}))


def run_scenario(scenario: Scenario, peers: list[str], skipped: dict[str, str], ds: Dataset,
                 tmp: Path, env: dict[str, str]) -> dict[str, Any]:
    """Every contestant through one scenario, each against its own fresh sandbox."""
    runs: dict[str, Any] = {}
    for peer in peers:
        if peer in skipped:
            continue
        work = tmp / scenario.name / peer
        work.mkdir(parents=True)
        t0 = time.perf_counter()
        r = runs[peer] = one_run(peer, scenario, ds, work, env)
        print(f"bench_peers: {scenario.name:12} {peer:13} {time.perf_counter() - t0:6.1f} s  "
              f"requests {r['requests']:>6}  wasted {r['wasted']['total']:>6}  desired "
              f"{r['rows_desired']}/{r['rows_scored']}", file=sys.stderr)
    return {**asdict(scenario), "rows": ds.data["messy"]["rows"], "runs": runs}


def save(record: dict[str, Any], started: float) -> None:
    record["duration_s"] = round(time.perf_counter() - started, 1)
    OUT.mkdir(parents=True, exist_ok=True)
    tmp = OUT / "peers.json.tmp"
    tmp.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    tmp.replace(OUT / "peers.json")


if __name__ == "__main__":
    main()
