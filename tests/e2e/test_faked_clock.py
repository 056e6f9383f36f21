"""Runs whose clocks start just before a power of two, as on a host up 2^17 or 2^31 seconds.

The monotonic clock is seconds since boot, so every long run on a long-lived host crosses a
power of two of it. A float time loop that depends on rounding hung there at 100% CPU, deaf to
signals: a run whose timeline began below 2^k hung at its first budget wait past 2^k whenever
the lowest bit of its start time was set (half the runs). Here the real CLI runs under Debian's
libfaketime, which starts its clocks (the monotonic one included) where the test says, against
the sandbox on a loopback socket in this process (its clock untouched), with a budget small
enough that every run waits on it across the crossing. Twenty runs must all finish.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from batch_toggle.clock import parse_utc

from . import (
    FAST,
    LIBFAKETIME,
    cli_command,
    cli_env,
    collect,
    job_rows,
    needs_faketime,
    puts,
    wait_until,
    write_input,
)

pytestmark = pytest.mark.e2e


RUNS_PER_ORIGIN = 10
ROWS = 40
RATE = "4/1s"  # 40 rows: a burst of 4, then nine waits of about a second for the window
# Seconds from a process's start to its runner's, at most: imports, reading, planning, and
# ten processes starting at once on two cores.
START_UP = 5.0
RUN_TIMEOUT = 60.0  # a run takes about 11 s; a hung one is killed and fails the test


def faked_env(key: str, monotonic_at_start: float) -> dict[str, str]:
    """An environment whose process starts with its monotonic clock at `monotonic_at_start`.
    libfaketime moves every clock by one offset from the wall clock, so the offset is taken
    from this process's wall clock."""
    env = cli_env(key)
    env["LD_PRELOAD"] = str(LIBFAKETIME)
    env["FAKETIME"] = f"{monotonic_at_start - time.time():+.3f}s"
    env["FAKETIME_NO_CACHE"] = "1"
    return env


def faked_monotonic(env: dict[str, str]) -> float:
    probe = subprocess.run([sys.executable, "-c", "import time; print(time.monotonic())"],
                           env=env, capture_output=True, text=True, timeout=30, check=True)
    return float(probe.stdout)


@needs_faketime
def test_libfaketime_moves_the_monotonic_clock_where_the_tests_say() -> None:
    """The tool the test below relies on does what it says (else that test proves nothing)."""
    assert abs(faked_monotonic(faked_env("k", 2.0**31 - 5)) - (2.0**31 - 5)) < 5.0


@needs_faketime
@pytest.mark.parametrize("power", [17, 31])
def test_twenty_runs_crossing_a_power_of_two_of_the_monotonic_clock_all_finish(
        make_sandbox_server: Any, tmp_path: Path, power: int) -> None:
    server = make_sandbox_server()
    src = write_input(tmp_path / "in.csv", job_rows(server.jobs[:ROWS]))
    procs = []
    for n in range(RUNS_PER_ORIGIN):
        # Each runner starts before the crossing (its timeline's origin is below 2^power) and
        # meets budget waits after it, at a different point of each run.
        origin = 2.0**power - START_UP - 0.5 * n
        workdir = tmp_path / f"run{n}"
        workdir.mkdir()
        command = cli_command(server, workdir, [src], *FAST, "--rate", RATE,
                              "--concurrency", "4", "--no-progress")
        procs.append((workdir, time.monotonic(), subprocess.Popen(
            command, env=faked_env(server.api_key, origin), cwd=workdir, text=True,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)))
    hung, done = [], []
    for workdir, started, proc in procs:
        try:
            out, err = proc.communicate(timeout=max(1.0, started + RUN_TIMEOUT - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            hung.append(workdir.name)
            continue
        done.append(collect(workdir, proc.returncode, out, err, time.monotonic() - started))
    assert not hung, f"{len(hung)} of {RUNS_PER_ORIGIN} runs hung: {hung}"
    for run in done:
        assert run.code == 0, run.stderr
        assert [r["status"] for r in run.rows] == ["updated"] * ROWS
        # The budget was met across the crossing: the runs waited for it.
        assert sum(run.summary["timeline"]["wait_s"]) > 1.0
    assert os.cpu_count()  # keep the import honest on exotic platforms


@needs_faketime
def test_a_wall_clock_stepped_back_mid_run_never_gives_a_negative_duration(
        make_sandbox_server: Any, tmp_path: Path) -> None:
    """Durations come from the monotonic clock; the wall clock only stamps start and finish.
    The wall clock of the run is stepped back 2 hours once it has begun sending (libfaketime
    reads its offset from a file the test rewrites; the monotonic clock is left alone)."""
    server = make_sandbox_server()
    src = write_input(tmp_path / "in.csv", job_rows(server.jobs[:12]))
    offset = tmp_path / "faketime"
    offset.write_text("+0s\n", encoding="utf-8")
    env = cli_env(server.api_key)
    env.update(LD_PRELOAD=str(LIBFAKETIME), FAKETIME_TIMESTAMP_FILE=str(offset),
               FAKETIME_NO_CACHE="1", FAKETIME_DONT_FAKE_MONOTONIC="1")
    command = cli_command(server, tmp_path, [src], *FAST, "--rate", "4/1s", "--no-progress")
    started = time.monotonic()
    proc = subprocess.Popen(command, env=env, cwd=tmp_path, text=True,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        wait_until(lambda: len(puts(server)) >= 4, 30, "the first requests")
        offset.write_text("-7200s\n", encoding="utf-8")
        out, err = proc.communicate(timeout=RUN_TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    elapsed = time.monotonic() - started
    run = collect(tmp_path, proc.returncode, out, err, elapsed)
    assert run.code == 0, run.stderr
    assert run.summary is not None
    assert 1.0 <= run.summary["duration_s"] <= elapsed
    # The stamps tell the wall clock's story, the step included.
    assert parse_utc(run.summary["finished_at"]) < parse_utc(run.summary["started_at"])
