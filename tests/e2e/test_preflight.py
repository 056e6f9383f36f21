"""Pre-flight: what cannot be written is found before the first request, not at the end of a
40-hour run; and a disk that fills while the report is written loses nothing (the product contract,
6 and 8).

  * An unwritable report, rejects, events or state store path: exit 2, one line naming it, and
    the server received nothing.
  * A full disk while writing the report: the state store keeps every outcome, the run stays
    unfinished, and `--resume` writes the report without sending anything again. The disk is
    filled two ways: a tiny tmpfs (ENOSPC, as a real full disk) where mounting one is allowed,
    and RLIMIT_FSIZE on the CLI's process (EFBIG) everywhere.
"""

from __future__ import annotations

import contextlib
import csv
import resource
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from batch_toggle.state.sqlite import StateStore

from . import CLI_TIMEOUT, cli_env, job_rows, puts, write_input

pytestmark = pytest.mark.e2e


def run(srv: Any, tmp: Path, inputs: Path, *args: str, report: Path | None = None,
        state: Path | None = None, fsize: int | None = None) -> subprocess.CompletedProcess[str]:
    """`batch-toggle run` with its report and store where the test says (RLIMIT_FSIZE: every
    file the CLI writes stops growing at `fsize` bytes)."""
    cmd = [sys.executable, "-m", "batch_toggle", "run", str(inputs), "--base-url", srv.base_url,
           "--state", str(state or tmp / "state.sqlite"),
           "--report", str(report or tmp / "report.csv"), "--max-rps", "500", "--no-progress",
           *args]

    def limit() -> None:
        if fsize is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

    proc = subprocess.run(cmd, env=cli_env(srv.api_key), cwd=tmp, capture_output=True,
                          text=True, timeout=CLI_TIMEOUT, stdin=subprocess.DEVNULL,
                          preexec_fn=limit if fsize is not None else None)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def error_line(proc: subprocess.CompletedProcess[str]) -> str:
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("batch-toggle: error:")]
    assert len(lines) == 1, proc.stderr
    return lines[0]


@pytest.fixture
def small_input(sandbox_server: Any, tmp_path: Path) -> Path:
    return write_input(tmp_path / "in.csv", job_rows(sandbox_server.jobs[:5]))


# --- unwritable paths -------------------------------------------------------------------------


@pytest.mark.parametrize("option", ["--report", "--rejects", "--events", "--state"])
def test_an_unwritable_output_path_is_refused_before_any_request(
        sandbox_server: Any, tmp_path: Path, small_input: Path, option: str) -> None:
    """The parent is a regular file (permissions would not stop root, which CI runs as)."""
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where a directory should be\n")
    target = blocker / "sub" / "out.csv"
    proc = run(sandbox_server, tmp_path, small_input, option, str(target),
               *(["--report", str(tmp_path / "r.csv")] if option != "--report" else []))
    assert proc.returncode == 2, proc.stderr
    assert str(target) in error_line(proc) or "not-a-dir" in error_line(proc)
    assert sandbox_server.requests() == [], "a request left before the pre-flight failed"
    assert not (tmp_path / "r.csv").exists() and not (tmp_path / "report.csv").exists()


def test_a_state_store_that_is_a_directory_or_not_sqlite_is_refused(
        sandbox_server: Any, tmp_path: Path, small_input: Path) -> None:
    garbage = tmp_path / "garbage.sqlite"
    garbage.write_bytes(b"this is not a database\x00" * 200)
    proc = run(sandbox_server, tmp_path, small_input, state=garbage)
    assert proc.returncode == 2, proc.stderr
    assert str(garbage) in error_line(proc)
    directory = tmp_path / "adir"
    directory.mkdir()
    proc = run(sandbox_server, tmp_path, small_input, state=directory)
    assert proc.returncode == 2, proc.stderr
    assert sandbox_server.requests() == []


def test_a_report_path_that_is_a_directory_is_refused(
        sandbox_server: Any, tmp_path: Path, small_input: Path) -> None:
    (tmp_path / "out.csv").mkdir()
    proc = run(sandbox_server, tmp_path, small_input, report=tmp_path / "out.csv")
    assert proc.returncode == 2, proc.stderr
    assert sandbox_server.requests() == []


# --- a full disk while writing the report -----------------------------------------------------


@contextlib.contextmanager
def tiny_tmpfs(where: Path, size: str) -> Iterator[Path]:
    where.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs",
                              str(where)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip()}); the RLIMIT_FSIZE "
                    "case covers a full disk")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def big_rows(srv: Any, n: int, note_bytes: int) -> list[list[str]]:
    """Rows with a large note each: the report (which carries it) outgrows the disk, the state
    store (which does not) stays small."""
    return [[*row, f"{i}:" + "n" * note_bytes] for i, row in enumerate(job_rows(srv.jobs[:n]))]


def write_big_input(path: Path, rows: list[list[str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["job_id", "review_key", "do_notify_sms", "update_target", "note"])
        writer.writerows(rows)
    return path


def read_report_with_big_cells(path: Path) -> list[dict[str, str]]:
    """csv's default field limit (128 KB) is below the notes' size: lift it for this read only."""
    before = csv.field_size_limit(1 << 24)
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            return list(csv.DictReader(fh))
    finally:
        csv.field_size_limit(before)


@pytest.mark.parametrize("how", ["tmpfs", "rlimit"])
def test_a_full_disk_while_writing_the_report_loses_nothing_and_resumes(
        sandbox_server: Any, tmp_path: Path, how: str) -> None:
    """RLIMIT_FSIZE caps every file the CLI writes, the state store's write-ahead log too, and
    that log grows by a few pages per commit (about 1.5-2 MB for 60 rows before its first
    checkpoint). So the report must outgrow the limit by far while the store stays far below it:
    few rows with big notes (40 x 200 KB: an 8 MB report against a 4 MB limit and a store log
    under about 1.5 MB)."""
    srv = sandbox_server
    n = 40
    inputs = write_big_input(tmp_path / "in.csv", big_rows(srv, n, 200_000))
    state = tmp_path / "store" / "state.sqlite"
    with contextlib.ExitStack() as stack:
        if how == "tmpfs":
            disk = stack.enter_context(tiny_tmpfs(tmp_path / "disk", "4m"))
            first = run(srv, tmp_path, inputs, report=disk / "report.csv", state=state)
        else:
            first = run(srv, tmp_path, inputs, report=tmp_path / "full" / "report.csv",
                        state=state, fsize=4_000_000)
        # Clean end: one line naming the report, saying how to get it, exit 4 (resumable);
        # only the report failed, so the line says every outcome is saved.
        line = error_line(first)
        assert "report.csv" in line and "--resume" in line, line
        assert "every outcome is saved in the state store" in line, first.stderr
        assert first.returncode == 4, first.stderr
        sent = len(puts(srv))
        assert sent == n, "every unit was sent before the report was written"

    # The store is intact: every outcome is there and the run is unfinished (resumable).
    with sqlite3.connect(state) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    with StateStore.open(state, readonly=True) as store:
        (record,) = store.list_runs()
        assert record.exit_code is None
        outcomes = store.load_outcomes(record.run_id)
        assert len(outcomes) == n and {o.status for o in outcomes.values()} == {"updated"}

    report = tmp_path / "roomy" / "report.csv"
    resumed = run(srv, tmp_path, inputs, "--resume", report=report, state=state)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resume: run {record.run_id}: {n} units already have an outcome; 0 to send" \
        in resumed.stderr
    assert len(puts(srv)) == sent, "the resume sent nothing again"
    rows = read_report_with_big_cells(report)
    assert [r["status"] for r in rows] == ["updated"] * n
    assert {r["run_id"] for r in rows} == {record.run_id}
