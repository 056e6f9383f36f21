"""`batch-toggle sandbox`: option checks (CliRunner) and one real serve-until-Ctrl-C."""

from __future__ import annotations

import os
import queue
import re
import signal
import ssl
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from batch_toggle.cli.sandbox_cmd import is_loopback, sandbox_command

REPO = Path(__file__).resolve().parents[1]
SEED = REPO / "sample_data" / "sandbox_seed.csv"


def invoke(*args: str):
    return CliRunner().invoke(sandbox_command, list(args))


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.10", "::", "example.com"])
def test_a_non_loopback_host_is_refused_without_public(host):
    result = invoke("--host", host)
    assert result.exit_code == 2
    assert f"--host {host} is not a loopback address" in result.output
    assert "--public" in result.output


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.1.2.3", True), ("::1", True), ("[::1]", True),
     ("localhost", True), ("0.0.0.0", False), ("10.0.0.1", False), ("myhost", False)],
)
def test_is_loopback(host, loopback):
    assert is_loopback(host) is loopback


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(["--latency-ms", "fast"], "milliseconds like 50 or 5-200", id="latency"),
        pytest.param(["--latency-ms", "200-5"], "milliseconds like 50 or 5-200",
                     id="latency-range"),
        pytest.param(["--error-rate", "2"], "--error-rate", id="rate-range"),
        pytest.param(["--error-rate", "0.6", "--reset-rate", "0.6"], "add up to at most 1",
                     id="rates-sum"),
        pytest.param(["--retry-after", "minutes"], "--retry-after", id="retry-after-style"),
        pytest.param(["--seed", "no/such/seed.csv"], "does not exist", id="missing-seed"),
        pytest.param(["--hourly-limit", "0"], "--hourly-limit", id="hourly-limit"),
        pytest.param(["--request-log", "0"], "--request-log", id="request-log"),
    ],
)
def test_bad_options_are_usage_errors(args, message):
    result = invoke(*args)
    assert result.exit_code == 2
    assert message in result.output


def test_a_malformed_seed_is_a_usage_error_naming_it(tmp_path):
    seed = tmp_path / "broken.csv"
    seed.write_text("job_id,review_key\n1,2\n")
    result = invoke("--seed", str(seed), "--port", "0")
    assert result.exit_code == 2
    assert "broken.csv" in result.output and "missing column" in result.output


def test_help_names_every_option():
    result = invoke("--help")
    assert result.exit_code == 0
    for option in ("--host", "--port", "--public", "--seed", "--api-key", "--inactive-key",
                   "--no-permission-key", "--hourly-limit", "--window", "--daily-limit",
                   "--retry-after", "--latency-ms", "--error-rate", "--reset-rate",
                   "--timeout-rate", "--fault-seed", "--request-log"):
        assert option in result.output


class Lines:
    """A subprocess's stderr read by a thread, so the test can wait for a line with a bound."""

    def __init__(self, stream) -> None:
        self.queue: queue.Queue[str] = queue.Queue()
        self.thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self.thread.start()

    def _pump(self, stream) -> None:
        for line in stream:
            self.queue.put(line)

    def next(self, timeout: float) -> str:
        return self.queue.get(timeout=timeout)

    def rest(self, timeout: float) -> str:
        """Everything left, once the stream has ended (bounded)."""
        self.thread.join(timeout)
        return "".join(iter(lambda: None if self.queue.empty() else self.queue.get(), None))


def test_serves_prints_url_and_key_and_stops_on_ctrl_c(tmp_path):
    code = "from batch_toggle.cli.sandbox_cmd import sandbox_command; sandbox_command()"
    with subprocess.Popen(
        [sys.executable, "-c", code, "--port", "0", "--seed", str(SEED), "--api-key", "rehearsal",
         "--hourly-limit", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    ) as proc:
        try:
            lines = Lines(proc.stderr)
            first = lines.next(timeout=15)  # bounded: the server announces itself once listening
            url = re.search(r"listening on (http://127\.0\.0\.1:\d+)", first)
            assert url, first
            key_line = lines.next(timeout=5)
            assert "LOGIS_API_KEY=rehearsal" in key_line and url.group(1) in key_line
            job = SEED.read_text().splitlines()[1].split(",")
            body = {"job_id": job[0], "review_key": job[1], "do_notify_sms": "false",
                    "update_target": "job"}
            put = f"{url.group(1)}/api/apikeys/toggle_sms_notifications"
            headers = {"LOGIS-API-KEY": "rehearsal"}
            assert httpx.put(put, json=body, headers=headers, timeout=5).status_code == 200
            assert httpx.put(put, json=body, headers=headers, timeout=5).status_code == 429
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=10) == 0
            assert "Sandbox stopped." in lines.rest(timeout=5)
        finally:
            if proc.poll() is None:
                proc.kill()


def test_tls_serves_https_with_a_throwaway_ca_it_removes_on_ctrl_c(tmp_path):
    code = "from batch_toggle.cli.sandbox_cmd import sandbox_command; sandbox_command()"
    with subprocess.Popen(
        [sys.executable, "-c", code, "--port", "0", "--seed", str(SEED), "--tls"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    ) as proc:
        try:
            lines = Lines(proc.stderr)
            first = lines.next(timeout=15)
            url = re.search(r"listening on (https://127\.0\.0\.1:\d+)", first)
            assert url, first
            lines.next(timeout=5)  # the key line
            tls_line = lines.next(timeout=5)
            ca = re.search(r"trust the throwaway CA (\S+\.pem)", tls_line)
            assert ca and f"--ca-bundle {ca.group(1)}" in tls_line, tls_line
            health = f"{url.group(1)}/_sandbox/health"
            assert httpx.get(health, verify=ssl.create_default_context(cafile=ca.group(1)),
                             timeout=5).json()["ok"] is True
            with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                httpx.get(health, timeout=5)  # the machine's own store does not know it
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=10) == 0
            assert not Path(ca.group(1)).exists()  # thrown away with its directory
        finally:
            if proc.poll() is None:
                proc.kill()
