"""The road to the real API end to end: TLS with certificates the tests make, trust sources, a
typo'd host, a refused port, a real forward proxy (tinyproxy), all on 127.0.0.1.

A connection that cannot work as configured stops the run at once (exit 3) with its own code,
and the cause reaches every place a person looks: the report rows, the summary's `stopped`,
the HTML verdict, the -v line, the --events stream and `batch-toggle status`. The same TLS
server trusted the right way (--ca-bundle, SSL_CERT_FILE, the system store emulated with
SSL_CERT_DIR) lets the run finish.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from . import CLI_TIMEOUT, FAST, cli_env, collect, job_rows, run_cli, write_input
from .forward_proxy import PROXY_PEER, Tinyproxy, tinyproxy_path

pytestmark = pytest.mark.e2e

CONNECTION_STOP_SECONDS = 10.0  # "within seconds": no retries, no outage pause


def run_net(handle: Any, tmp_path: Path, src: Path, *extra: str, base_url: str | None = None,
            env: dict[str, str] | None = None, key: str | None = None) -> Any:
    """`batch-toggle run` with -v and --events, without --ca-bundle unless `extra` gives it;
    `env` adds variables (SSL_CERT_FILE, HTTPS_PROXY...)."""
    args = [sys.executable, "-m", "batch_toggle", "run", str(src),
            "--base-url", base_url or handle.base_url, "--state", str(tmp_path / "state.sqlite"),
            "--report", str(tmp_path / "report.csv"), "--events", str(tmp_path / "events.jsonl"),
            "-v", "--concurrency", "3", *FAST, *extra]
    started = time.monotonic()
    proc = subprocess.run(args, env={**cli_env(key or handle.api_key), **(env or {})},
                          cwd=tmp_path, capture_output=True, text=True, timeout=CLI_TIMEOUT,
                          stdin=subprocess.DEVNULL)
    return collect(tmp_path, proc.returncode, proc.stdout, proc.stderr,
                   time.monotonic() - started)


def events(tmp_path: Path) -> list[dict[str, Any]]:
    path = tmp_path / "events.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def status_text(tmp_path: Path) -> str:
    proc = subprocess.run([sys.executable, "-m", "batch_toggle", "status", "--state",
                           str(tmp_path / "state.sqlite")], env=cli_env(None),
                          capture_output=True, text=True, timeout=CLI_TIMEOUT)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def assert_stopped_everywhere(run: Any, tmp_path: Path, code: str, *words: str) -> None:
    """The cause `code` (and its detail `words`) in the report rows, the summary, the HTML
    verdict, the -v stop line, the --events stream and `status`."""
    assert run.code == 3, run.stderr
    assert "Traceback" not in run.stderr
    assert run.elapsed < CONNECTION_STOP_SECONDS, run.elapsed
    message = run.summary["stopped"]["message"]
    assert run.summary["stopped"]["code"] == code
    for word in words:
        assert word in message, (word, message)
    assert "batch-toggle doctor" in message
    assert code in run.summary["verdict"] and run.summary["exit_code"] == 3
    failed = run.by_status("failed")
    unsent = run.by_status("not_attempted")
    assert len(failed) + len(unsent) == len(run.rows)
    assert all(r["error_code"] == code for r in failed + unsent), {r["error_code"]
                                                                   for r in run.rows}
    assert all(r["error_message"] == message for r in unsent)
    assert run.summary["counts_by_error_code"] == {code: len(run.rows)}
    html = (tmp_path / "report.csv.html").read_text(encoding="utf-8")
    verdict = html[html.index('id="verdict"'):]
    assert code in verdict[:2000] and words[0] in verdict[:4000]
    stop_lines = [line for line in run.stderr.splitlines() if " stop (exit 3): " in line]
    assert stop_lines and code in stop_lines[0] and words[0] in stop_lines[0]
    assert f"stopped: {message}" in run.stderr  # the last word on stderr
    stops = [e for e in events(tmp_path) if e["event"] == "stop"]
    assert [(s["code"], s["exit_code"]) for s in stops] == [(code, 3)]
    status = status_text(tmp_path)
    assert f"stopped:  {code}: " in status and "its connection could not work" in status


@pytest.fixture
def rows(sandbox_server: Any) -> list[list[str]]:
    return job_rows(sandbox_server.jobs[:12])


# --- certificates that do not verify ---------------------------------------------------------


@pytest.mark.parametrize(("cert", "ca_given", "code", "words"), [
    pytest.param("good", False, "tls_untrusted",
                 ("not trusted", 'issued by "batch-toggle tests"', "127.0.0.1", "--ca-bundle",
                  "SSL_CERT_FILE"), id="unknown-ca"),
    pytest.param("wrong_host", True, "tls_hostname_mismatch",
                 ("not valid for 127.0.0.1", "for logis.example", "--base-url"),
                 id="hostname-mismatch"),
    pytest.param("expired", True, "tls_untrusted",
                 ("has expired", "expired 2020-02-01", "renew"), id="expired"),
])
def test_a_certificate_that_does_not_verify_stops_at_once_with_its_cause(
        make_sandbox_server: Any, tls_kit: Any, tmp_path: Path, cert: str, ca_given: bool,
        code: str, words: tuple[str, ...]) -> None:
    srv = make_sandbox_server(tls=getattr(tls_kit, cert))
    src = write_input(tmp_path / "in.csv", job_rows(srv.jobs[:12]))

    run = run_net(srv, tmp_path, src, *(["--ca-bundle", str(tls_kit.ca)] if ca_given else []))

    assert_stopped_everywhere(run, tmp_path, code, *words)
    # No request got past the handshake (the world itself: its certificate is broken for any
    # client, the handle's too).
    assert len(srv.world.requests) == 0


@pytest.mark.parametrize(("how", "source"), [
    pytest.param("ca-bundle", "ca_bundle", id="ca-bundle"),
    pytest.param("SSL_CERT_FILE", "system", id="ssl-cert-file"),
    pytest.param("SSL_CERT_FILE certifi", "certifi", id="ssl-cert-file-with-certifi"),
    pytest.param("system store", "system", id="system-store"),
])
def test_the_same_server_trusted_the_right_way_completes(
        make_sandbox_server: Any, tls_kit: Any, tmp_path: Path, how: str, source: str) -> None:
    srv = make_sandbox_server(tls=tls_kit.good)
    src = write_input(tmp_path / "in.csv", job_rows(srv.jobs[:12]))
    extra: list[str] = []
    env: dict[str, str] = {}
    if how == "ca-bundle":
        extra = ["--ca-bundle", str(tls_kit.ca)]
    elif how.startswith("SSL_CERT_FILE"):
        env = {"SSL_CERT_FILE": str(tls_kit.ca)}
        extra = ["--trust", "certifi"] if how.endswith("certifi") else []
    else:
        # The operating system's store, emulated: OpenSSL's default verify directory points
        # at a hashed directory the test made (the machine's own store is never touched).
        env = {"SSL_CERT_DIR": str(tls_kit.ca_dir)}

    run = run_net(srv, tmp_path, src, *extra, env=env)

    assert run.code == 0, run.stderr
    assert run.statuses() == ["updated"] * 12
    trust = run.summary["connection"]["trust"]
    assert trust["source"] == source
    if env:
        assert trust["env"] == env and next(iter(env.values())) in trust["described"]
    assert len([r for r in srv.requests() if r["method"] == "PUT"]) == 12


# --- the wrong URL ------------------------------------------------------------------------------


def test_https_to_a_plain_http_port_is_a_tls_error(sandbox_server: Any, tmp_path: Path,
                                                   rows: list[list[str]]) -> None:
    src = write_input(tmp_path / "in.csv", rows)
    https = sandbox_server.base_url.replace("http://", "https://")

    run = run_net(sandbox_server, tmp_path, src, base_url=https)

    assert_stopped_everywhere(run, tmp_path, "tls_error", "no secure connection could be "
                                                          "agreed", "plain http")


def test_a_typo_d_host_stops_in_seconds_with_dns_failure(sandbox_server: Any, tmp_path: Path,
                                                         rows: list[list[str]]) -> None:
    src = write_input(tmp_path / "in.csv", rows)

    run = run_net(sandbox_server, tmp_path, src, base_url="https://logis-accept.invalid")

    assert_stopped_everywhere(run, tmp_path, "dns_failure",
                              "the host logis-accept.invalid does not exist", "--base-url")


# --- a real forward proxy ---------------------------------------------------------------------

needs_tinyproxy = pytest.mark.skipif(tinyproxy_path() is None,
                                     reason="tinyproxy not installed (make system-deps)")
PROXY_USER, PROXY_PASSWORD = "alice", "pr0xy-S3cret-9f2e"


@pytest.fixture
def proxies(tmp_path: Path) -> Iterator[Any]:
    started: list[Tinyproxy] = []

    def start(**options: Any) -> Tinyproxy:
        started.append(Tinyproxy(tmp_path / f"proxy{len(started)}", **options))
        return started[-1]

    yield start
    for proxy in started:
        proxy.stop()


@needs_tinyproxy
@pytest.mark.parametrize("credentials", ["none", "in HTTPS_PROXY", "--proxy-auth-file"])
def test_a_run_goes_through_the_proxy_one_tunnel_per_worker(
        make_sandbox_server: Any, tls_kit: Any, proxies: Any, tmp_path: Path,
        credentials: str) -> None:
    srv = make_sandbox_server(tls=tls_kit.good)
    src = write_input(tmp_path / "in.csv", job_rows(srv.jobs[:30]))
    auth = None if credentials == "none" else (PROXY_USER, PROXY_PASSWORD)
    proxy = proxies(auth=auth)
    extra = ["--ca-bundle", str(tls_kit.ca)]
    env = {"HTTPS_PROXY": proxy.url}
    if credentials == "in HTTPS_PROXY":
        env = {"HTTPS_PROXY": proxy.url_with(PROXY_USER, PROXY_PASSWORD)}
    elif credentials == "--proxy-auth-file":
        auth_file = tmp_path / "proxy-auth"
        auth_file.write_text(f"{PROXY_USER}:{PROXY_PASSWORD}\n", encoding="utf-8")
        extra += ["--proxy", proxy.url, "--proxy-auth-file", str(auth_file)]
        env = {}

    run = run_net(srv, tmp_path, src, *extra, env=env)

    assert run.code == 0, run.stderr
    assert run.statuses() == ["updated"] * 30
    received = srv.requests()
    assert len(received) == 30
    assert {r["peer"] for r in received} == {PROXY_PEER}  # every request came via the proxy
    tunnels = proxy.connects()
    host_port = srv.base_url.removeprefix("https://")
    assert tunnels and set(tunnels) == {f"CONNECT {host_port} HTTP/1.1"}
    assert len(tunnels) <= 3  # one kept-alive tunnel per worker (--concurrency 3)
    assert run.summary["connection"]["proxy"]["url"] == (
        proxy.url if auth is None else f"http://{PROXY_USER}:***@127.0.0.1:{proxy.port}")
    assert PROXY_PASSWORD not in run.stderr + json.dumps(run.summary)


@needs_tinyproxy
def test_no_proxy_sends_the_host_direct(make_sandbox_server: Any, tls_kit: Any, proxies: Any,
                                        tmp_path: Path) -> None:
    srv = make_sandbox_server(tls=tls_kit.good)
    src = write_input(tmp_path / "in.csv", job_rows(srv.jobs[:6]))
    proxy = proxies()

    run = run_net(srv, tmp_path, src, "--ca-bundle", str(tls_kit.ca),
                  env={"HTTPS_PROXY": proxy.url, "NO_PROXY": "localhost,127.0.0.1"})

    assert run.code == 0, run.stderr
    assert {r["peer"] for r in srv.requests()} == {"127.0.0.1"}
    assert proxy.connects() == []
    assert run.summary["connection"]["proxy"]["bypassed_by"] == "NO_PROXY"


@needs_tinyproxy
@pytest.mark.parametrize(("setup", "code", "words"), [
    pytest.param("no credentials", "proxy_auth_required",
                 ("wants credentials", "407", "--proxy-auth-file"), id="407"),
    pytest.param("wrong credentials", "proxy_auth_required",
                 ("refused the credentials", "check them"), id="wrong-credentials"),
    pytest.param("connect refused", "proxy_error",
                 ("does not let a tunnel", "403", "NO_PROXY"), id="connect-refused"),
])
def test_a_proxy_that_refuses_stops_at_once_with_its_answer(
        make_sandbox_server: Any, tls_kit: Any, proxies: Any, tmp_path: Path, setup: str,
        code: str, words: tuple[str, ...]) -> None:
    srv = make_sandbox_server(tls=tls_kit.good)
    src = write_input(tmp_path / "in.csv", job_rows(srv.jobs[:12]))
    if setup == "connect refused":
        proxy = proxies(connect_ports=[443])  # tunnels to 443 only
        url = proxy.url
    else:
        proxy = proxies(auth=(PROXY_USER, PROXY_PASSWORD))
        url = proxy.url if setup == "no credentials" else proxy.url_with(PROXY_USER, "wrong")

    run = run_net(srv, tmp_path, src, "--ca-bundle", str(tls_kit.ca),
                  env={"HTTPS_PROXY": url})

    assert_stopped_everywhere(run, tmp_path, code, *words)
    assert f"127.0.0.1:{proxy.port}" in run.summary["stopped"]["message"]
    assert srv.requests() == []
    assert "wrong@" not in run.stderr and ":wrong" not in json.dumps(run.summary)


def test_proxy_credentials_on_the_command_line_are_refused(sandbox_server: Any, tmp_path: Path,
                                                           rows: list[list[str]]) -> None:
    src = write_input(tmp_path / "in.csv", rows)

    run = run_cli(sandbox_server, tmp_path, [src], "--proxy",
                  f"http://{PROXY_USER}:{PROXY_PASSWORD}@127.0.0.1:3128")

    assert run.code == 2, run.stderr
    assert "never taken from the command line" in run.stderr
    assert PROXY_PASSWORD not in run.stderr and run.rows == []
    assert sandbox_server.requests() == []


# --- first contact ----------------------------------------------------------------------------


def closed_port() -> int:
    """A port nothing listens on (bound, then released: connections are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def library_run(tmp_path: Path, base_url: str, src: Path, key: str, *, grace: float,
                outage_limit: float, report: str) -> Any:
    """The library's run (what the CLI calls) with a short first-contact grace and outage
    limit, on a real loopback socket: the CLI's are a minute and 15 minutes."""
    from batch_toggle.config import SendOptions
    from batch_toggle.jobs.pipeline import JobConfig
    from batch_toggle.jobs.run import run as run_live

    config = JobConfig(
        inputs=(str(src),), command="run", api_key=key, state_path=tmp_path / "state.sqlite",
        report_path=tmp_path / report, html=False,
        send=SendOptions(base_url=base_url, max_rps=500, concurrency=2, timeout=2.0,
                         first_contact_grace=grace, outage_limit=outage_limit))
    started = time.monotonic()
    result = run_live(config)
    return result, time.monotonic() - started


def test_a_refused_port_on_a_first_contact_stops_after_the_grace(tmp_path: Path,
                                                                 sandbox_server: Any,
                                                                 rows: list[list[str]]) -> None:
    src = write_input(tmp_path / "in.csv", rows)
    base_url = f"http://127.0.0.1:{closed_port()}"

    result, elapsed = library_run(tmp_path, base_url, src, sandbox_server.api_key, grace=2.0,
                                  outage_limit=600.0, report="first.csv")

    assert int(result.exit_code) == 3
    stopped = result.summary["stopped"]
    assert stopped["code"] == "unreachable"
    assert "has never answered this state store" in stopped["message"]
    assert "batch-toggle doctor" in stopped["message"]
    assert 2.0 <= elapsed < 2.0 + 5.0
    assert set(result.report.column("error_code").to_pylist()) == {"unreachable"}


def test_a_server_that_answered_an_earlier_run_gets_the_outage_pause(
        tmp_path: Path, make_sandbox_server: Any) -> None:
    """A resumed cron slice must ride out a blip: the store remembers that the base URL
    answered, so the same failures that stop a first contact are an outage (exit 4)."""
    srv = make_sandbox_server()
    src = write_input(tmp_path / "in.csv", job_rows(srv.jobs[:4]))
    first, _ = library_run(tmp_path, srv.base_url, src, srv.api_key, grace=1.0,
                           outage_limit=600.0, report="first.csv")
    assert int(first.exit_code) == 0
    later = write_input(tmp_path / "later-input.csv", job_rows(srv.jobs[4:8]))
    srv.set_faults(reset_rate=1.0)  # every connection dropped: the server "went away"

    result, elapsed = library_run(tmp_path, srv.base_url, later, srv.api_key, grace=1.0,
                                  outage_limit=4.0, report="later.csv")

    assert int(result.exit_code) == 4
    assert result.summary["stopped"]["code"] == "network_error"
    assert elapsed >= 4.0  # past the first contact's grace: the outage limit decided
