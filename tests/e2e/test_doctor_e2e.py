"""`batch-toggle doctor` end to end against the TLS sandbox (and a real tinyproxy): every way the
path can fail gives a ✗ on the step at fault naming the fix, the steps after it are skipped,
the exit code is 3; a path that works is all ✓ and exit 0. Doctor never sends the key and
never spends budget: the sandbox sees one request, without a key.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from threading import Thread
from typing import Any

import pytest

from batch_toggle.state.sqlite import StateStore

from . import CLI_TIMEOUT, cli_env
from .forward_proxy import PROXY_PEER, Tinyproxy, tinyproxy_path

pytestmark = pytest.mark.e2e


def doctor(tmp_path: Path, *args: str, key: str | None = "doctor-key-7731",
           env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "batch_toggle", "doctor", "--state",
                           str(tmp_path / "state.sqlite"), "--timeout", "5", *args],
                          env={**cli_env(key), "PYTHONIOENCODING": "utf-8", **(env or {})},
                          capture_output=True, text=True, timeout=CLI_TIMEOUT,
                          stdin=subprocess.DEVNULL, cwd=tmp_path)


def lines(proc: subprocess.CompletedProcess[str]) -> dict[str, str]:
    """{check name: its whole line} of doctor's text output."""
    out = {}
    for line in proc.stdout.splitlines():
        if line[:2] in ("✓ ", "✗ ", "– "):
            out[line[2:].split(":", 1)[0]] = line
    return out


def assert_fails_at(proc: subprocess.CompletedProcess[str], step: str, *words: str) -> None:
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    found = lines(proc)
    assert found[step].startswith("✗ "), proc.stdout
    for word in words:
        assert word in found[step], (word, found[step])
    order = list(found)
    for later in order[order.index(step) + 1:]:
        if later in ("TCP", "proxy tunnel", "TLS", "API"):
            assert found[later].startswith("– ") and "skipped" in found[later], proc.stdout


@pytest.fixture
def not_logis() -> Iterator[str]:
    """A web server that is not the Logis API: 200 and an HTML page for everything."""
    class Page(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
            body = b"<html><body>Welcome</body></html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Page)
    thread = Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_working_path_is_all_checks_passed_and_costs_no_budget(
        make_sandbox_server: Any, tls_kit: Any, tmp_path: Path) -> None:
    srv = make_sandbox_server(tls=tls_kit.good)
    with StateStore.open(tmp_path / "state.sqlite") as store:
        store.record_sends([("s1", 1e10, 1e10 + 1)])  # one request "in the window"

    proc = doctor(tmp_path, "--base-url", srv.base_url, "--ca-bundle", str(tls_kit.ca))

    assert proc.returncode == 0, proc.stdout + proc.stderr
    found = lines(proc)
    assert list(found) == ["base URL", "proxy", "DNS", "TCP", "TLS", "API", "API key",
                           "state store"]
    assert all(line.startswith("✓ ") for line in found.values()), proc.stdout
    assert "TLSv1." in found["TLS"] and 'issued by "batch-toggle tests"' in found["TLS"]
    assert "127.0.0.1" in found["TLS"] and f"--ca-bundle {tls_kit.ca}" in found["TLS"]
    assert "401" in found["API"] and "no budget spent" in found["API"]
    assert "LOGIS_API_KEY" in found["API key"] and "doctor-key-7731" not in proc.stdout
    assert "lock free" in found["state store"] and "budget: 1 of 2500/h" in found["state store"]
    assert proc.stdout.rstrip().endswith("doctor: all checks passed")
    (request,) = srv.requests()  # one question, without a key: nothing charged
    assert (request["method"], request["key_hint"], request["status"], request["counted"]) == (
        "GET", None, 401, False)

    as_json = json.loads(doctor(tmp_path, "--base-url", srv.base_url, "--ca-bundle",
                                str(tls_kit.ca), "--json").stdout)
    assert as_json["ok"] is True and as_json["route"]["trust"]["source"] == "ca_bundle"
    assert [c["name"] for c in as_json["checks"]] == list(found)


@pytest.mark.parametrize(("cert", "ca_given", "words"), [
    pytest.param("good", False, ("not trusted", 'issued by "batch-toggle tests"',
                                 "--ca-bundle", "SSL_CERT_FILE", "system trust store"),
                 id="unknown-ca"),
    pytest.param("wrong_host", True, ("not valid for 127.0.0.1", "logis.example",
                                      "--base-url"), id="hostname-mismatch"),
    pytest.param("expired", True, ("has expired", "2020-02-01", "renew"), id="expired"),
])
def test_a_certificate_that_does_not_verify_fails_tls_with_its_detail_and_fix(
        make_sandbox_server: Any, tls_kit: Any, tmp_path: Path, cert: str, ca_given: bool,
        words: tuple[str, ...]) -> None:
    srv = make_sandbox_server(tls=getattr(tls_kit, cert))
    extra = ["--ca-bundle", str(tls_kit.ca)] if ca_given else []

    proc = doctor(tmp_path, "--base-url", srv.base_url, *extra)

    assert_fails_at(proc, "TLS", *words)
    assert lines(proc)["TCP"].startswith("✓ ")
    assert len(srv.world.requests) == 0


def test_https_to_an_http_port_fails_tls(sandbox_server: Any, tmp_path: Path) -> None:
    proc = doctor(tmp_path, "--base-url", sandbox_server.base_url.replace("http:", "https:"))
    assert_fails_at(proc, "TLS", "no secure connection", "plain http")


def test_a_host_that_does_not_exist_fails_dns(tmp_path: Path) -> None:
    proc = doctor(tmp_path, "--base-url", "https://logis-accept.invalid")
    assert_fails_at(proc, "DNS", "logis-accept.invalid does not exist", "--base-url")


def test_a_refused_port_fails_tcp(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = doctor(tmp_path, "--base-url", f"https://127.0.0.1:{port}")
    assert_fails_at(proc, "TCP", "refused", "check --base-url")


def test_a_server_that_is_not_logis_fails_api(not_logis: str, tmp_path: Path) -> None:
    proc = doctor(tmp_path, "--base-url", not_logis)
    assert_fails_at(proc, "API", "HTTP 200 to a request without a key",
                    "does not look like the Logis API", "check --base-url")


def test_no_key_fails_the_key_check_and_a_held_lock_the_store_check(
        make_sandbox_server: Any, tls_kit: Any, tmp_path: Path) -> None:
    srv = make_sandbox_server(tls=tls_kit.good)
    with StateStore.open(tmp_path / "state.sqlite") as store:
        store.acquire_lock("run-7", owner="batch-toggle run in.csv")
        proc = doctor(tmp_path, "--base-url", srv.base_url, "--ca-bundle", str(tls_kit.ca),
                      key=None)
    assert proc.returncode == 3
    found = lines(proc)
    assert found["API"].startswith("✓ ")
    assert found["API key"].startswith("✗ ") and "set LOGIS_API_KEY" in found["API key"]
    assert found["state store"].startswith("✗ ") and "in use by run-7" in found["state store"]
    assert "batch-toggle status" in found["state store"]


needs_tinyproxy = pytest.mark.skipif(tinyproxy_path() is None,
                                     reason="tinyproxy not installed (make system-deps)")


@needs_tinyproxy
@pytest.mark.parametrize(("setup", "step", "words"), [
    pytest.param("works", None, ()),
    pytest.param("no credentials", "proxy tunnel", ("407", "--proxy-auth-file")),
    pytest.param("connect refused", "proxy tunnel", ("403", "does not let a tunnel")),
])
def test_through_a_proxy(make_sandbox_server: Any, tls_kit: Any, tmp_path: Path, setup: str,
                         step: str | None, words: tuple[str, ...]) -> None:
    srv = make_sandbox_server(tls=tls_kit.good)
    auth = ("bob", "d0ctor-Pr0xy-pw") if setup != "connect refused" else None
    proxy = Tinyproxy(tmp_path / "proxy", auth=auth,
                      connect_ports=[443] if setup == "connect refused" else [])
    try:
        url = proxy.url_with(*auth) if setup == "works" and auth else proxy.url
        proc = doctor(tmp_path, "--base-url", srv.base_url, "--ca-bundle", str(tls_kit.ca),
                      env={"HTTPS_PROXY": url})
    finally:
        proxy.stop()
    assert "d0ctor-Pr0xy-pw" not in proc.stdout + proc.stderr
    if step is None:
        assert proc.returncode == 0, proc.stdout
        found = lines(proc)
        assert "http://bob:***@127.0.0.1" in found["proxy"] and "HTTPS_PROXY" in found["proxy"]
        assert found["proxy tunnel"].startswith("✓ ") and "resolved by the proxy" in found["DNS"]
        assert {r["peer"] for r in srv.requests()} == {PROXY_PEER}
    else:
        assert_fails_at(proc, step, *words)
