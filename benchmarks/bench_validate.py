"""The whole `batch-toggle validate` process on a 1M-row file, against the job's I/O floor.

    .venv/bin/python benchmarks/bench_validate.py [--rows N] [--repeat 3] [--formats csv parquet]

Inputs (generated once, cached under benchmarks/data/, git-ignored): a CSV shaped like the sample
opt-out file (`Job ID, Review Key, SMS, Target, Client Name, Phone, Note`) with ~5% bad rows (every
local error code), ~10% rows that repeat an earlier unit (exact copies and respellings), some
conflicting states, the spellings real files carry (upper case, braces, 32 hex digits, state
words), and a Parquet copy (every column a string).

For each format two processes are timed, each in a fresh interpreter (the same for both):
  baseline  Python reads the file with pyarrow (every column a string), appends the 17 outcome
            columns filled with copies of input columns (no computation; each the input column
            nearest its role and width, so the output has the report's shape) and writes that
            report-shaped table as CSV: the I/O floor of the job;
  validate  `python -m batch_toggle validate FILE --report R.csv --state <absent>`: load,
            normalise, plan, assemble, write the report, its summary, and exit.
Wall time is the best of --repeat runs; peak RSS is the child's ru_maxrss (os.wait4), the
largest over the runs. Targets (issue 2): validate <= 4x baseline wall time (3x is the mark to
beat) and peak RSS <= 1.5 GB. Prints one JSON line and writes benchmarks/out/validate.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "benchmarks" / "data"
OUT = REPO / "benchmarks" / "out"

MAX_RATIO = 4.0
MARK_RATIO = 3.0
MAX_RSS_MB = 1536.0
GENERATOR_VERSION = 3  # bump when the generated data changes shape

HEADER = ["Job ID", "Review Key", "SMS", "Target", "Client Name", "Phone", "Note"]

TRUE_WORDS = ["true", "yes", "Yes", "1", "opt-in", "TRUE", "subscribe"]
FALSE_WORDS = ["false", "no", "No", "0", "opt-out", "FALSE", "unsubscribe", "OPT-OUT", " false "]
FIRST = ["José", "Anaïs", "François", "Wei", "Marie", "Olivier", "Fatima", "Liam", "Chloé", "Noah"]
LAST = ["Lévesque", "Nguyen", "Bouchard", "Gauthier", "Roy", "Tremblay", "Côté", "Singh"]
NOTES = ["", "", "", "", "asked by phone", "STOP by SMS", "called 2026-11-03", "web form",
         "=HYPERLINK(\"x\")", "+1 to list", "email reply\nsecond line"]
BAD_JOB = ["", "12345", "not-a-job", "0dd6809a-68b1-4b4d-bec4-07c7fdf3ae5"]
BAD_KEY = ["", "none", "baa14f0b-f53a-4f7b-8570", "zz"]
BAD_STATE = ["", "maybe", "?"]
BAD_TARGET = ["", "all", "both"]

# The baseline: the job's I/O floor (read all as text, append 17 copies, write CSV).
BASELINE = r"""
import csv, sys
import pyarrow as pa, pyarrow.csv as pa_csv, pyarrow.parquet as pq
src, dst = sys.argv[1], sys.argv[2]
if src.endswith(".parquet"):
    table = pq.read_table(src)
else:
    with open(src, newline="", encoding="utf-8") as f:
        header = next(csv.reader(f))
    table = pa_csv.read_csv(
        src, parse_options=pa_csv.ParseOptions(newlines_in_values=True),
        convert_options=pa_csv.ConvertOptions(column_types={h: pa.string() for h in header},
                                              strings_can_be_null=False))
# Each outcome column is a copy of the input column nearest its role and width: ids for ids,
# the short SMS/Target cells for the report's mostly-empty columns (a copied cell is never
# empty, so this output is still ~25% larger than the report).
copy_of = ["Review Key", "Phone", "Job ID", "Target", "SMS", "SMS", "Target", "Target", "SMS",
           "SMS", "Target", "SMS", "Target", "SMS", "Target", "SMS", "Review Key"]
for i, name in enumerate(copy_of):
    table = table.append_column(f"outcome_{i}", table[name])
pa_csv.write_csv(table, dst)
"""


# --- data ------------------------------------------------------------------------------------


def _uuids(rng: np.random.Generator, n: int) -> np.ndarray:
    """n random lowercase 8-4-4-4-12 UUIDs as a numpy bytes array (S36), vectorised."""
    hexdigits = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
    digits = hexdigits[rng.integers(0, 16, size=(n, 32), dtype=np.uint8)]
    out = np.full((n, 36), ord("-"), dtype=np.uint8)
    for dst, src in (((0, 8), (0, 8)), ((9, 13), (8, 12)), ((14, 18), (12, 16)),
                     ((19, 23), (16, 20)), ((24, 36), (20, 32))):
        out[:, dst[0]:dst[1]] = digits[:, src[0]:src[1]]
    out[:, 14] = ord("4")
    return out.view("S36").ravel()


def _respell(rng: np.random.Generator, values: np.ndarray, share: float) -> np.ndarray:
    """Respell a share of canonical UUIDs the ways real files do (upper, braces, 32 hex)."""
    out = values.astype(object)
    pick = np.flatnonzero(rng.random(len(values)) < share)
    kind = rng.integers(0, 3, len(pick))
    for i, k in zip(pick.tolist(), kind.tolist(), strict=True):
        text = values[i].decode()
        out[i] = text.upper() if k == 0 else "{" + text + "}" if k == 1 else text.replace("-", "")
    return out


def generate(rows: int, seed: int = 2026) -> pa.Table:
    """The benchmark table: ~5% bad rows, ~10% repeats of an earlier unit (a tenth of them with
    the other state, a hundredth with another review key), realistic extras."""
    rng = np.random.default_rng(seed)
    n_units = max(1, int(rows * 0.9))
    jobs = _uuids(rng, n_units)
    keys = _uuids(rng, n_units)
    state = rng.random(n_units) < 0.2  # about 20% opt-ins
    client = rng.random(n_units) < 0.15
    # Row -> unit: the first 90% are the units in order, the rest repeat earlier units.
    unit = np.empty(rows, dtype=np.int64)
    unit[:n_units] = np.arange(n_units)
    unit[n_units:] = rng.integers(0, n_units, rows - n_units)
    unit = unit[rng.permutation(rows)]  # interleave the repeats through the file
    # Repeats mostly agree; about 1 in 10 flips the state (a conflict for the policy to settle).
    _, first_pos = np.unique(unit, return_index=True)
    repeat = np.ones(rows, dtype=bool)
    repeat[first_pos] = False
    row_state = state[unit] ^ (repeat & (rng.random(rows) < 0.1))

    job_col = _respell(rng, jobs[unit], 0.03)
    row_keys = keys[unit]
    other_key = np.flatnonzero(repeat & (rng.random(rows) < 0.01))  # a unit named by two keys
    row_keys[other_key] = keys[rng.integers(0, n_units, len(other_key))]
    key_col = _respell(rng, row_keys, 0.03)
    words_t = np.array(TRUE_WORDS, dtype=object)
    words_f = np.array(FALSE_WORDS, dtype=object)
    sms = np.where(row_state, words_t[rng.integers(0, len(words_t), rows)],
                   words_f[rng.integers(0, len(words_f), rows)])
    target = np.where(client[unit], np.array(["client", "Client", " client "], dtype=object)[
        rng.integers(0, 3, rows)], np.array(["job", "Job", "JOB", " job"], dtype=object)[
        rng.integers(0, 4, rows)])

    bad = np.flatnonzero(rng.random(rows) < 0.05)
    which = rng.integers(0, 4, len(bad))
    for col, choices, k in ((job_col, BAD_JOB, 0), (key_col, BAD_KEY, 1), (sms, BAD_STATE, 2),
                            (target, BAD_TARGET, 3)):
        hit = bad[which == k]
        col[hit] = np.array(choices, dtype=object)[rng.integers(0, len(choices), len(hit))]

    first = np.array(FIRST, dtype=object)[rng.integers(0, len(FIRST), rows)]
    last = np.array(LAST, dtype=object)[rng.integers(0, len(LAST), rows)]
    names = pc.binary_join_element_wise(pa.array(first, pa.string()),
                                                pa.array(last, pa.string()), " ")
    phone = np.char.add("450.555.", np.char.zfill(rng.integers(0, 10000, rows).astype(str), 4))
    note = np.array(NOTES, dtype=object)[rng.integers(0, len(NOTES), rows)]
    return pa.table({
        "Job ID": pa.array(job_col, pa.string()),
        "Review Key": pa.array(key_col, pa.string()),
        "SMS": pa.array(sms, pa.string()),
        "Target": pa.array(target, pa.string()),
        "Client Name": names,
        "Phone": pa.array(phone.astype(object), pa.string()),
        "Note": pa.array(note, pa.string()),
    })


def inputs(rows: int) -> dict[str, Path]:
    """The cached CSV and Parquet inputs for `rows` rows (generated on first use)."""
    DATA.mkdir(parents=True, exist_ok=True)
    stem = DATA / f"optouts_{rows}_v{GENERATOR_VERSION}"
    paths = {"csv": stem.with_suffix(".csv"), "parquet": stem.with_suffix(".parquet")}
    if not all(p.exists() for p in paths.values()):
        started = time.perf_counter()
        table = generate(rows)
        for fmt, path in paths.items():
            tmp = path.with_name(path.name + ".tmp")
            if fmt == "csv":
                pa_csv.write_csv(table, tmp)
            else:
                pq.write_table(table, tmp)
            os.replace(tmp, path)
        print(f"generated {rows:,} rows in {time.perf_counter() - started:.1f} s -> {DATA}",
              file=sys.stderr)
    return paths


# --- measuring -------------------------------------------------------------------------------


def measure(argv: list[str], expect: set[int]) -> tuple[float, float, float]:
    """(wall seconds, CPU seconds, peak RSS MB) of one child process, from fork to exit.

    Dirty pages of earlier runs are flushed first, so that no process pays for another's
    writes (validate fsyncs its report before renaming it into place; the baseline does not).
    """
    os.sync()
    started = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=REPO)
    assert proc.stderr is not None
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    proc.stderr.close()
    if proc.returncode not in expect:
        raise SystemExit(f"{argv} exited {proc.returncode}:\n{err.decode(errors='replace')}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024.0  # Linux: KiB


def summarise(runs: list[tuple[float, float, float]]) -> dict[str, float]:
    """Best wall and CPU time over the runs (the least disturbed by other load on the
    machine), and the largest peak RSS."""
    return {"wall_s": round(min(w for w, _, _ in runs), 3),
            "cpu_s": round(min(c for _, c, _ in runs), 3),
            "peak_rss_mb": round(max(r for _, _, r in runs), 1)}


def bench_format(path: Path, repeat: int, work: Path) -> dict[str, object]:
    baseline_out = work / "baseline.csv"
    report = work / "report.csv"
    baseline_argv = [sys.executable, "-c", BASELINE, str(path), str(baseline_out)]
    validate_argv = [sys.executable, "-m", "batch_toggle", "validate", str(path), "--report",
                     str(report), "--state", str(work / "absent.sqlite"), "--quiet"]
    runs: dict[str, list[tuple[float, float, float]]] = {"baseline": [], "validate": []}
    for _ in range(repeat):  # interleaved, so a burst of other load hits both alike
        runs["baseline"].append(measure(baseline_argv, {0}))
        runs["validate"].append(measure(validate_argv, {0, 1}))
    baseline, validate = (summarise(runs[k]) for k in ("baseline", "validate"))
    ratio = validate["wall_s"] / baseline["wall_s"]
    return {
        "input": str(path.relative_to(REPO)), "input_mb": round(path.stat().st_size / 2**20, 1),
        "baseline": {**baseline, "output_mb": round(baseline_out.stat().st_size / 2**20, 1)},
        "validate": {**validate, "report_mb": round(report.stat().st_size / 2**20, 1)},
        "ratio": round(ratio, 2),
        "cpu_ratio": round(validate["cpu_s"] / baseline["cpu_s"], 2),
        "meets_target": ratio <= MAX_RATIO and validate["peak_rss_mb"] <= MAX_RSS_MB,
        "beats_mark": ratio <= MARK_RATIO,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--formats", nargs="+", choices=["csv", "parquet"],
                        default=["csv", "parquet"])
    args = parser.parse_args()
    paths = inputs(args.rows)
    results: dict[str, object] = {}
    with tempfile.TemporaryDirectory(prefix="bench-validate-") as tmp:
        for fmt in args.formats:
            results[fmt] = bench_format(paths[fmt], args.repeat, Path(tmp))
    record = {
        "benchmark": "validate", "rows": args.rows, "repeat": args.repeat,
        "targets": {"max_ratio": MAX_RATIO, "mark_ratio": MARK_RATIO, "max_rss_mb": MAX_RSS_MB},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "pyarrow": pa.__version__, "platform": platform.platform()},
        **results,
        "meets_target": all(r["meets_target"] for r in results.values()),  # type: ignore[index]
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "validate.json").write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record))
    return 0 if record["meets_target"] else 1


if __name__ == "__main__":
    sys.exit(main())
