"""`batch-toggle doctor`: everything between this machine and Logis, checked one step at a time.

A first real run fails where nothing was rehearsed: a company CA the machine does not trust, a
proxy that wants credentials, a typo in the URL. A run that meets one of those stops with the
cause; doctor finds them all before a run, without spending budget: it resolves, connects,
opens the proxy's tunnel and shakes hands (probe.py, no HTTP request), then asks the API one
question WITHOUT a key (GET track, which must answer 401: Logis charges a key's budget, and no
key is sent), and looks at the state store read-only (its path, lock and the budget already
used). The key's presence is checked, never its value.

Each check is one line, ✓ or ✗ with the fix; the report is data (`DoctorReport`) first, so that
`--json` and the text say the same.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from batch_toggle.config import SendOptions
from batch_toggle.errors import StoreError, UsageError
from batch_toggle.send import causes, probe
from batch_toggle.send.classify import (
    classify_error,
    classify_exception,
    connection_failure,
    proxy_refusal,
)
from batch_toggle.send.client import Route, route_for, worker_connections
from batch_toggle.send.limiter import SlidingWindow
from batch_toggle.send.operations import TRACK_PATH
from batch_toggle.state import open_store
from batch_toggle.state.location import normalise, shown
from batch_toggle.state.records import default_state_path
from batch_toggle.state.sendlog import Reading
from batch_toggle.vocab import CONNECTION_CODES

NIL_JOB = "00000000-0000-0000-0000-000000000000"  # asks about no real job
MAX_STEP_TIMEOUT = 10.0  # seconds per step: doctor is for a person waiting at a terminal
URL_FIX = "check --base-url (LOGIS_BASE_URL); Logis is https://app.logisapp.ca"


@dataclass(frozen=True)
class Check:
    """One line of the report. `skipped`: not tried, because an earlier step failed."""

    name: str
    ok: bool
    detail: str
    fix: str | None = None
    skipped: bool = False


@dataclass(frozen=True)
class DoctorReport:
    base_url: str
    checks: tuple[Check, ...]
    route: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "base_url": self.base_url, "route": self.route,
                "checks": [asdict(c) for c in self.checks]}


@dataclass(frozen=True)
class DoctorInputs:
    """What doctor checks: the connection options, where the key would come from (None: no
    key), the proxy's credentials file's pair, the state store's path and the budget."""

    send: SendOptions
    key_source: str | None = None
    proxy_auth: tuple[str, str] | None = field(default=None, repr=False)
    state_path: Path | str | None = None


def diagnose(inputs: DoctorInputs, environ: Mapping[str, str] | None = None) -> DoctorReport:
    """Run every check (a failed step skips the ones that need it)."""
    send = inputs.send
    timeout = min(send.timeout, MAX_STEP_TIMEOUT)
    checks = [_url_check(send)]
    route = _route(send, inputs.proxy_auth, environ, checks) if checks[0].ok else None
    if route is not None:
        checks.append(Check("proxy", True, route.proxy.describe()))
        checks.extend(_path_checks(route, timeout))
    checks.append(_key_check(inputs.key_source))
    checks.append(_store_check(inputs.state_path, send))
    return DoctorReport(send.base_url, tuple(checks), route.as_dict() if route else None)


def _url_check(send: SendOptions) -> Check:
    from batch_toggle.hosts import check_base_url

    try:
        check_base_url(send.base_url, send.insecure)
    except UsageError as exc:
        return Check("base URL", False, str(exc), URL_FIX)
    return Check("base URL", True, send.base_url)


def _route(send: SendOptions, proxy_auth: tuple[str, str] | None,
           environ: Mapping[str, str] | None, checks: list[Check]) -> Route | None:
    """The route (trust, proxy), or None with a failed check naming the option at fault."""
    try:
        route = route_for(send, proxy_auth, environ)
        route.trust.context()
    except UsageError as exc:
        checks.append(Check("trust and proxy", False, str(exc), "fix the option it names"))
        return None
    return route


# --- the network path ---------------------------------------------------------------------


def _path_checks(route: Route, timeout: float) -> list[Check]:
    """DNS, TCP (or the proxy's tunnel), TLS, then the API itself; the first failure skips the
    rest of the path."""
    target = probe.Target.of(route.base_url)
    steps: list[tuple[str, Callable[[], Check]]] = [
        ("DNS", lambda: _dns(route, target, timeout)),
        ("TCP" if route.proxy.url is None else "proxy tunnel",
         lambda: _connect(route, target, timeout)),
        ("TLS", lambda: _tls(route, target, timeout)),
        ("API", lambda: _api(route, timeout)),
    ]
    checks: list[Check] = []
    failed: str | None = None
    for name, step in steps:
        if failed is not None:
            checks.append(Check(name, False, f"skipped: {failed} failed", skipped=True))
            continue
        checks.append(step())
        failed = None if checks[-1].ok else name
    return checks


def _dns(route: Route, target: probe.Target, timeout: float) -> Check:
    host, port = (target.host, target.port) if route.proxy.url is None else \
        (route.proxy.host_port or ("", 0))
    whose = "" if route.proxy.url is None else f"the proxy's host ({target.host} is resolved " \
                                               "by the proxy) "
    if _is_address(host):
        return Check("DNS", True, f"{whose}{host} is an address: nothing to resolve")
    try:
        addresses = probe.resolve(host, port, timeout)
    except TimeoutError:
        return Check("DNS", False, f"{whose}{host}: the resolver did not answer within "
                                   f"{timeout:g} s",
                     "check this machine's DNS settings and network")
    except OSError as exc:
        verdict = connection_failure(exc)
        if verdict is not None:
            return Check("DNS", False, causes.describe(verdict.error_code or "", verdict.message
                                                       or "", route))
        return Check("DNS", False, f"{whose}{host}: {exc}",
                     "the resolver failed; check this machine's DNS settings and network")
    return Check("DNS", True, f"{whose}{host} -> {', '.join(addresses[:4])}")


def _is_address(host: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def _connect(route: Route, target: probe.Target, timeout: float) -> Check:
    name = "TCP" if route.proxy.url is None else "proxy tunnel"
    started = time.monotonic()
    try:
        with probe.connect(target, route.proxy, timeout):
            pass
    except probe.ProxyRefused as exc:
        verdict = proxy_refusal(f"{exc.status} {exc.reason}")
        if verdict is not None:
            return Check(name, False, causes.describe(verdict.error_code or "",
                                                      verdict.message or "", route))
        return Check(name, False, f"the proxy {route.proxy.describe()} could not open a tunnel "
                                  f"to {target.authority}: {exc}",
                     f"{URL_FIX}; the proxy itself cannot reach it")
    except TimeoutError:
        return Check(name, False, f"no answer from {_first_hop(route, target)} within "
                                  f"{timeout:g} s",
                     "a firewall may drop the connection; a network that only reaches out "
                     "through a proxy needs HTTPS_PROXY or --proxy")
    except OSError as exc:
        return Check(name, False, f"{_first_hop(route, target)}: "
                                  f"{exc.strerror or exc}",
                     f"{URL_FIX} (host and port), and that the service is up" if
                     route.proxy.url is None else "check --proxy / HTTPS_PROXY (host and port)")
    via = "" if route.proxy.url is None else f" through {route.proxy.shown}"
    return Check(name, True, f"connected to {target.authority}{via} in "
                             f"{(time.monotonic() - started) * 1000:.0f} ms")


def _tls(route: Route, target: probe.Target, timeout: float) -> Check:
    if target.scheme != "https":
        return Check("TLS", True, "not used: plain http (only allowed to loopback or with "
                                  "--insecure)")
    try:
        with probe.connect(target, route.proxy, timeout) as sock:
            shake = probe.handshake(sock, target.host, route.trust.context())
    except (OSError, ssl.SSLError) as exc:
        verdict = connection_failure(exc)
        if verdict is None:
            return Check("TLS", False, f"the handshake with {target.authority} failed: "
                                       f"{exc}", "try again; if it persists, run with -v")
        cert = probe.fetch_certificate(route.base_url, route.proxy, timeout)
        return Check("TLS", False, causes.describe(verdict.error_code or "",
                                                   verdict.message or "", route,
                                                   certificate=cert))
    seen = f"certificate {shake.certificate.describe()}; " if shake.certificate else ""
    return Check("TLS", True, f"{shake.version}, {seen}accepted by {route.trust.describe()}")


def _api(route: Route, timeout: float) -> Check:
    """GET track WITHOUT a key: Logis answers 401 (missing key) and charges nothing."""
    import httpx

    async def ask() -> tuple[int, Any, bytes]:
        async with httpx.AsyncClient(transport=worker_connections(route), timeout=timeout,
                                     follow_redirects=False, trust_env=False) as client:
            response = await client.get(route.base_url.rstrip("/") + TRACK_PATH,
                                        params={"job_id": NIL_JOB})
            return response.status_code, response.headers, response.content[:1 << 16]

    try:
        status, headers, body = asyncio.run(ask())
    except httpx.HTTPError as exc:
        verdict = classify_exception(exc)
        if verdict.error_code in CONNECTION_CODES:
            return Check("API", False, causes.describe(verdict.error_code or "",
                                                       verdict.message or "", route))
        return Check("API", False, f"no answer: {verdict.message}",
                     "try again; if it persists, check the network path above")
    verdict = classify_error(status, headers, body)
    if status == 401 and verdict.error_code == "api_key_missing":
        return Check("API", True, f"answers like the Logis API (HTTP 401 \"{verdict.message}\" "
                                  "to a request without a key; no budget spent)")
    return Check("API", False, f"HTTP {status} to a request without a key, where Logis "
                               f"answers 401 ({verdict.message or 'no message'}): this does "
                               "not look like the Logis API", URL_FIX)


def _first_hop(route: Route, target: probe.Target) -> str:
    if route.proxy.url is None:
        return target.authority
    host, port = route.proxy.host_port or ("?", 0)
    return f"the proxy {host}:{port}"


# --- the key and the store ----------------------------------------------------------------


def _key_check(source: str | None) -> Check:
    if source is None:
        return Check("API key", False, "not set",
                     "set LOGIS_API_KEY or use --api-key-file (a key with the \"Allow Public "
                     "Track\" permission)")
    return Check("API key", True, f"set (from {source}; doctor never sends it)")


def _store_check(path: Path | str | None, send: SendOptions) -> Check:
    try:
        where = normalise(path)
        store_path = where if where is not None else default_state_path()
        with open_store(store_path, readonly=True) as store:
            if not store.exists:
                if isinstance(store_path, str):
                    return Check("state store", True, f"{shown(store_path)}: reachable, no "
                                 "batch-toggle tables yet (the first run creates them)")
                return _new_store(store_path)
            holders = store.lock_holders()
            hold = SlidingWindow(send.rate.limit, send.rate.period).hold
            used = len(store.recent_sends(Reading.now(), hold, send.timeout))
    except (StoreError, UsageError) as exc:
        return Check("state store", False, str(exc),
                     "give another --state, or move the file away if it is not a state store")
    budget = f"budget: {used:,} of {send.rate} used in the last window (every key on it)"
    if isinstance(store_path, str):
        # A shared database: other files' runs go beside these ones; only the same work waits.
        running = "; ".join(f"{h.get('run_id')} (pid {h.get('pid')} on {h.get('host')})"
                            for h in holders) or "none"
        return Check("state store", True, f"{shown(store_path)}: the database answers; runs "
                                          f"in progress: {running}; {budget}")
    holder = holders[0] if holders else None
    if holder:
        who = holder.get("run_id") or "an unknown run"
        return Check("state store", False, f"{shown(store_path)}: in use by {who} (pid "
                                           f"{holder.get('pid')} on {holder.get('host')}); "
                                           f"{budget}",
                     "a run now would be refused: wait for that one (`batch-toggle status`)")
    return Check("state store", True, f"{shown(store_path)}: lock free; {budget}")


def _new_store(path: Path) -> Check:
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if os.access(parent, os.W_OK):
        return Check("state store", True, f"{path}: not created yet (the first run creates it)")
    return Check("state store", False, f"{path}: cannot be created ({parent} is not writable)",
                 "give a --state path in a directory you can write")


def render(report: DoctorReport, ascii_only: bool = False) -> str:
    """One line per check: ✓/✗ (or OK/FAIL), the check, what it found, the fix."""
    good, bad, skip = ("OK  ", "FAIL", "-   ") if ascii_only else ("✓", "✗", "–")
    lines = []
    for check in report.checks:
        mark = skip if check.skipped else good if check.ok else bad
        fix = f". Fix: {check.fix}" if check.fix and not check.ok else ""
        lines.append(f"{mark} {check.name}: {check.detail}{fix}")
    verdict = "all checks passed" if report.ok else \
        f"{sum(not c.ok and not c.skipped for c in report.checks)} check(s) failed"
    lines.append(f"doctor: {verdict}")
    return "\n".join(lines)


__all__ = ["Check", "DoctorInputs", "DoctorReport", "diagnose", "render"]
