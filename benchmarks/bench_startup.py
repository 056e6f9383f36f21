"""What a command costs before it does anything: `--help`, `--version`, `import batch_toggle`.

    .venv/bin/python benchmarks/bench_startup.py [--repeat 15]

`--help` is what a person types first, and every cron slice and `status` call pays the start-up
again. Each case runs as a fresh interpreter (a module once imported stays imported), `--repeat`
times, interleaved with the baseline: `python -c pass` in the same interpreter, so the figure
that is compared is the ratio to the bare interpreter's start on the same machine at the same
moment. Peak memory (ru_maxrss of the child) and the heavy libraries each case ended up loading
are reported beside it.

Prints one JSON line. Targets: `--help` under 0.15 s and loading neither pyarrow nor httpx
(tests/test_import_weight.py pins the second); exit status 1 when `--help`'s median is more than
TARGET_RATIO times the bare interpreter's.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HEAVY = ("pyarrow", "httpx", "pandas", "starlette", "uvicorn")
PROBE = ("import atexit, json, resource, sys\n"
         "atexit.register(lambda: print('LOADED=' + json.dumps([sorted(m for m in {heavy!r} "
         "if m in sys.modules), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss]), "
         "file=sys.__stderr__))\n")
CLI = ("import sys; sys.argv = ['batch-toggle', *{argv!r}]\n"
       "from batch_toggle.cli.entry import main; main()")
CASES: dict[str, str] = {
    "python -c pass (baseline)": "pass",
    "import batch_toggle": "import batch_toggle",
    "batch-toggle --help": CLI.format(argv=["--help"]),
    "batch-toggle validate --help": CLI.format(argv=["validate", "--help"]),
    "batch-toggle run --help": CLI.format(argv=["run", "--help"]),
    "batch-toggle --version": CLI.format(argv=["--version"]),
}
BASELINE = "python -c pass (baseline)"
TARGET_SECONDS = 0.15
TARGET_RATIO = 5.0  # 0.15 s over a 0.03 s bare interpreter here, with room for a busy moment


def once(body: str) -> tuple[float, float, list[str]]:
    """Wall seconds, peak RSS in MB, and the heavy modules loaded, of one fresh interpreter."""
    code = PROBE.format(heavy=HEAVY) + body
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, env={**os.environ, "NO_COLOR": "1"})
    wall = time.perf_counter() - start
    loaded, peak_kb = next(json.loads(line.removeprefix("LOADED="))
                           for line in proc.stderr.splitlines() if line.startswith("LOADED="))
    return wall, peak_kb / 1024, loaded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    walls: dict[str, list[float]] = {name: [] for name in CASES}
    peaks: dict[str, float] = {}
    loaded: dict[str, list[str]] = {}
    for _ in range(args.repeat):  # interleaved: a busy moment hits every case alike
        for name, body in CASES.items():
            wall, peak, mods = once(body)
            walls[name].append(wall)
            peaks[name] = peak
            loaded[name] = mods
    base = statistics.median(walls[BASELINE])
    cases = {name: {"median_s": round(statistics.median(w), 4), "min_s": round(min(w), 4),
                    "ratio_to_bare_python": round(statistics.median(w) / base, 2),
                    "peak_mb": round(peaks[name], 1),
                    "loaded_heavy": loaded[name]} for name, w in walls.items()}
    help_case = cases["batch-toggle --help"]
    result = {"benchmark": "startup", "repeat": args.repeat, "cases": cases,
              "target_seconds": TARGET_SECONDS, "target_ratio": TARGET_RATIO,
              "help_median_s": help_case["median_s"],
              "met": help_case["ratio_to_bare_python"] <= TARGET_RATIO
              and not help_case["loaded_heavy"]}
    print(json.dumps(result))
    sys.exit(0 if result["met"] else 1)


if __name__ == "__main__":
    main()
