"""End-to-end helpers: the real CLI in a subprocess against the sandbox on a loopback socket.

Every run gets LOGIS_API_KEY from the handle (or none), `--base-url` of the handle, and its state
store and report under the test's tmp_path: never the user's defaults. What a test checks comes
from two sides: the report the CLI wrote (one row per input row) and what the server received
(`handle.requests()`, `handle.state()`).
"""

from __future__ import annotations

import csv
import glob
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
# Debian's libfaketime (`make test` installs it): the faked-clock tests skip without it.
LIBFAKETIME = next(iter(sorted(glob.glob("/usr/lib/*/faketime/libfaketime.so.1"))), None)
needs_faketime = pytest.mark.skipif(
    LIBFAKETIME is None, reason="Debian's libfaketime is not installed (make test installs it)")
SAMPLE = REPO / "sample_data" / "optouts_2026_11.csv"
SAMPLE_EXPECTED = REPO / "sample_data" / "optouts_2026_11.expected.json"
HEADER = ("job_id", "review_key", "do_notify_sms", "update_target")
FAST = ("--max-rps", "500")  # pacing is not the point of most tests: let the budget decide
CLI_TIMEOUT = 60.0  # a hung CLI fails its test instead of hanging the suite


@dataclass
class CliRun:
    """A finished CLI run: exit code, output, and the report and summary it wrote."""

    code: int
    stdout: str
    stderr: str
    rows: list[dict[str, str]]
    summary: dict[str, Any] | None
    elapsed: float

    def statuses(self) -> list[str]:
        return [r["status"] for r in self.rows]

    def by_status(self, status: str) -> list[dict[str, str]]:
        return [r for r in self.rows if r["status"] == status]


def write_input(path: Path, rows: Iterable[Sequence[str]]) -> Path:
    """A CSV with the four canonical columns; rows are (job_id, review_key, state, target)."""
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(HEADER)
        writer.writerows(rows)
    return path


def job_rows(jobs: Iterable[Any], state: str = "false", target: str = "job") -> list[list[str]]:
    """Input rows for seed jobs (their real review keys): every one a unit the sandbox accepts."""
    return [[j.job_id, j.review_key, state, target] for j in jobs]


def unknown_rows(n: int, state: str = "false") -> list[list[str]]:
    """Rows naming jobs the sandbox does not know (404 job_not_found), valid otherwise."""
    return [[str(uuid.UUID(int=0xDEAD0000 + i)), str(uuid.UUID(int=0xBEEF0000 + i)), state, "job"]
            for i in range(n)]


def cli_command(handle: Any, tmp_path: Path, inputs: Sequence[Path | str],
                *extra: str, base_url: str | None = None) -> list[str]:
    return [sys.executable, "-m", "batch_toggle", "run", *map(str, inputs),
            "--base-url", base_url or handle.base_url, *tls_args(handle),
            "--state", str(tmp_path / "state.sqlite"),
            "--report", str(tmp_path / "report.csv"), *extra]


def tls_args(handle: Any) -> list[str]:
    """`--ca-bundle` for a sandbox served over TLS (its test CA), nothing for plain http."""
    ca = getattr(handle, "ca_bundle", None)
    return ["--ca-bundle", str(ca)] if ca is not None else []


# The machine's own network settings: a test decides these itself (a proxy on the machine, or
# a CA file named in SSL_CERT_FILE, must not change what a test sees).
NETWORK_ENV = ("SSL_CERT_FILE", "SSL_CERT_DIR", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY",
               "NO_PROXY", "http_proxy", "https_proxy", "all_proxy", "no_proxy")


def cli_env(key: str | None) -> dict[str, str]:
    """The parent's environment without any Logis or network setting, plus the key when given."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("LOGIS_") and k != "SSLKEYLOGFILE" and k not in NETWORK_ENV}
    env["PYTHONUNBUFFERED"] = "1"
    if key is not None:
        env["LOGIS_API_KEY"] = key
    return env


def run_cli(handle: Any, tmp_path: Path, inputs: Sequence[Path | str], *extra: str,
            key: str | None | bool = True, base_url: str | None = None) -> CliRun:
    """Run `batch-toggle run` to completion; key=True uses the handle's key, None/False none."""
    api_key = handle.api_key if key is True else (key or None)
    started = time.monotonic()
    proc = subprocess.run(cli_command(handle, tmp_path, inputs, *extra, base_url=base_url),
                          env=cli_env(api_key), cwd=tmp_path, capture_output=True, text=True,
                          timeout=CLI_TIMEOUT, stdin=subprocess.DEVNULL)
    return collect(tmp_path, proc.returncode, proc.stdout, proc.stderr,
                   time.monotonic() - started)


def start_cli(handle: Any, tmp_path: Path, inputs: Sequence[Path | str],
              *extra: str) -> subprocess.Popen[str]:
    """Start `batch-toggle run` without waiting (signal tests)."""
    return subprocess.Popen(cli_command(handle, tmp_path, inputs, *extra),
                            env=cli_env(handle.api_key), cwd=tmp_path, text=True,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)


def collect(tmp_path: Path, code: int, stdout: str, stderr: str, elapsed: float) -> CliRun:
    report = tmp_path / "report.csv"
    rows: list[dict[str, str]] = []
    summary = None
    if report.exists():
        with report.open(newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        summary_path = tmp_path / "report.csv.summary.json"
        if summary_path.exists():
            summary = json.loads(summary_path.read_text(encoding="utf-8"))
    return CliRun(code, stdout, stderr, rows, summary, elapsed)


def puts(handle: Any) -> list[dict[str, Any]]:
    """Every toggle PUT the server received, in arrival order."""
    return [r for r in handle.requests() if r["method"] == "PUT"]


def max_in_window(times: Sequence[float], window: float) -> int:
    """The most arrivals in any half-open window (t - window, t] (the server's own definition)."""
    ordered = sorted(times)
    best, lo = 0, 0
    for hi, t in enumerate(ordered):
        while ordered[lo] <= t - window:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def wait_until(condition: Callable[[], bool], timeout: float, what: str,
               interval: float = 0.01) -> None:
    """Poll `condition` until true; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def finish(proc: subprocess.Popen[str], tmp_path: Path, started: float,
           timeout: float = CLI_TIMEOUT) -> CliRun:
    """Wait for a started CLI (killing it if it hangs) and collect its report."""
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        stdout, stderr = proc.communicate()
        raise AssertionError(f"the CLI did not finish within {timeout:g} s:\n{stderr}") from None
    return collect(tmp_path, proc.returncode, stdout, stderr, time.monotonic() - started)


SIGNALS = (signal.SIGINT, signal.SIGTERM)
