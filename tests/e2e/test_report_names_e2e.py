"""Default report names under contention: several CLI processes started in the same second.

The default report path has one-second resolution (`reports/<stem>-<UTC time>.csv`). Debian's
libfaketime freezes the wall clock of five real `validate` processes on one second, so that
every one of them chooses its name in that second: each must still get a report of its own.
"""

from __future__ import annotations

import csv
import glob
import subprocess
import sys
from pathlib import Path

import pytest

from . import SAMPLE, cli_env

pytestmark = pytest.mark.e2e

LIBFAKETIME = next(iter(sorted(glob.glob("/usr/lib/*/faketime/libfaketime.so.1"))), None)


@pytest.mark.skipif(LIBFAKETIME is None, reason="Debian's libfaketime is not installed "
                    "(make system-deps installs it)")
def test_five_validates_in_the_same_second_write_five_reports(tmp_path: Path) -> None:
    env = cli_env(None)
    # The wall clock stands still at one second; the monotonic clock runs (nothing here
    # waits on it, but a frozen one would be a different test).
    env.update({"LD_PRELOAD": str(LIBFAKETIME), "FAKETIME": "2026-11-28 10:30:00",
                "DONT_FAKE_MONOTONIC": "1", "XDG_STATE_HOME": str(tmp_path / "xdg")})
    procs = [subprocess.Popen([sys.executable, "-m", "batch_toggle", "validate", str(SAMPLE),
                               "--no-html", "--quiet"],
                              cwd=tmp_path, env=env, stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(5)]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [1] * 5, [err for _, err in outputs]
    reports = sorted(p.name for p in (tmp_path / "reports").glob("*.csv"))
    assert reports == sorted(["optouts_2026_11-20261128T103000.csv"] + [
        f"optouts_2026_11-20261128T103000-{n}.csv" for n in range(2, 6)])
    summaries = sorted((tmp_path / "reports").glob("*.summary.json"))
    assert len(summaries) == 5
    for report in (tmp_path / "reports").glob("*.csv"):
        with report.open(newline="", encoding="utf-8") as fh:
            assert len(list(csv.DictReader(fh))) == 300  # each a whole report
