"""The path to a base URL taken one step at a time: DNS, TCP, the proxy's tunnel, TLS.

A run's requests go through httpx, which reports a failure as one exception at the end; a person
needs to know which step failed and the detail of it (the certificate's issuer and names, the
host that did not resolve, the proxy's answer). These blocking functions take the same path by
hand and say so; `batch-toggle doctor` runs them all, and a run that stops on a TLS failure uses
`fetch_certificate` to name the certificate it refused. None sends an HTTP request to the base
URL, so none costs budget.

Errors are the standard library's (socket.gaierror, OSError, ssl.SSLError) plus `ProxyRefused`,
so that callers classify them exactly as a run's own failures are classified.
"""

from __future__ import annotations

import base64
import contextlib
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import unquote, urlsplit

from batch_toggle.clock import SYSTEM
from batch_toggle.errors import ProxyRefused
from batch_toggle.send.proxies import ProxyChoice

MAX_PROXY_REPLY = 16 * 1024


@dataclass(frozen=True)
class Certificate:
    """What a server's certificate says about itself (read, not verified)."""

    subject: str
    names: tuple[str, ...]
    issuer: str
    not_before: datetime
    not_after: datetime

    def expired(self, now: datetime | None = None) -> bool:
        return (now or SYSTEM.now()) > self.not_after

    def describe(self, now: datetime | None = None) -> str:
        """`for app.example.com, *.example.com, issued by "R3, Let's Encrypt", valid until
        2027-01-31 (in 41 days)`: who issued it, for which names, and until when."""
        now = now or SYSTEM.now()
        names = ", ".join(self.names) or self.subject or "no names"
        days = (self.not_after - now).days
        if self.not_after < now:
            until = f"expired {self.not_after:%Y-%m-%d} ({-days} days ago)"
        elif self.not_before > now:
            until = f"not valid before {self.not_before:%Y-%m-%d}"
        else:
            until = f"valid until {self.not_after:%Y-%m-%d} (in {days} days)"
        return f"for {names}, issued by \"{self.issuer}\", {until}"


@dataclass(frozen=True)
class Handshake:
    version: str  # TLSv1.3
    certificate: Certificate | None


@dataclass(frozen=True)
class Target:
    """Where a base URL points: scheme, host, port."""

    scheme: str
    host: str
    port: int

    @classmethod
    def of(cls, base_url: str) -> Target:
        parts = urlsplit(base_url)
        default = 443 if parts.scheme == "https" else 80
        return cls(parts.scheme, parts.hostname or "", parts.port or default)

    @property
    def authority(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def resolve(host: str, port: int, timeout: float) -> list[str]:
    """The addresses `host` resolves to (socket.gaierror when it does not; TimeoutError when
    the resolver does not answer within `timeout`: getaddrinfo itself cannot be timed out, so
    it runs in a daemon thread that is left behind)."""
    box: dict[str, object] = {}

    def lookup() -> None:
        try:
            box["infos"] = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller below
            box["error"] = exc

    worker = threading.Thread(target=lookup, name="resolve", daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        raise TimeoutError(f"the resolver did not answer for {host} within {timeout:g} s")
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    infos = box["infos"]
    return list(dict.fromkeys(str(info[4][0]) for info in infos))  # type: ignore[attr-defined]


@contextlib.contextmanager
def connect(target: Target, proxy: ProxyChoice, timeout: float) -> Iterator[socket.socket]:
    """A TCP connection to `target`, or a CONNECT tunnel to it through `proxy`."""
    if proxy.url is None:
        sock = socket.create_connection((target.host, target.port), timeout=timeout)
    else:
        sock = open_tunnel(proxy, target, timeout)
    try:
        yield sock
    finally:
        sock.close()


def open_tunnel(proxy: ProxyChoice, target: Target, timeout: float) -> socket.socket:
    """Connect to the proxy and ask it for a tunnel to `target` (HTTP CONNECT), with basic
    credentials when the proxy URL carries them. ProxyRefused on any non-2xx answer."""
    host, port = proxy.host_port or ("", 0)
    sock = socket.create_connection((host, port), timeout=timeout)
    try:
        if urlsplit(proxy.url or "").scheme == "https":
            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=host)
        sock.sendall(_connect_request(proxy, target))
        status, reason = _read_proxy_reply(sock)
        if not 200 <= status < 300:
            raise ProxyRefused(status, reason)
        return sock
    except BaseException:
        sock.close()
        raise


def handshake(sock: socket.socket, host: str, context: ssl.SSLContext) -> Handshake:
    """A verified TLS handshake over `sock` (ssl.SSLCertVerificationError when the certificate
    does not verify). The socket is left open for the caller to close."""
    tls = context.wrap_socket(sock, server_hostname=host)
    der = tls.getpeercert(binary_form=True)
    return Handshake(tls.version() or "?", parse_certificate(der) if der else None)


def fetch_certificate(base_url: str, proxy: ProxyChoice, timeout: float) -> Certificate | None:
    """The certificate the server at `base_url` presents, read WITHOUT verifying it: only to
    name it in an error (who issued it, for which names, until when). Nothing is sent over this
    connection. None when it cannot be had (the server is gone, the handshake fails anyway)."""
    target = Target.of(base_url)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # never used to send anything: see above
    try:
        with connect(target, proxy, timeout) as sock, \
                context.wrap_socket(sock, server_hostname=target.host) as tls:
            der = tls.getpeercert(binary_form=True)
    except (OSError, ValueError):
        return None
    return parse_certificate(der) if der else None


def parse_certificate(der: bytes) -> Certificate | None:
    """Subject, names, issuer and validity of a DER certificate (None if unreadable)."""
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError:
        return None

    def name_of(name: x509.Name) -> str:
        cn = [str(a.value) for a in name.get_attributes_for_oid(NameOID.COMMON_NAME)]
        org = [str(a.value) for a in name.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)]
        parts = cn + [o for o in org if o not in cn]
        return ", ".join(parts) or name.rfc4514_string()

    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = tuple([*san.get_values_for_type(x509.DNSName),
                       *(str(ip) for ip in san.get_values_for_type(x509.IPAddress))])
    except x509.ExtensionNotFound:
        names = ()
    return Certificate(name_of(cert.subject), names, name_of(cert.issuer),
                       cert.not_valid_before_utc, cert.not_valid_after_utc)


def elapsed_ms(started: float) -> float:
    return (time.monotonic() - started) * 1000.0


def _connect_request(proxy: ProxyChoice, target: Target) -> bytes:
    lines = [f"CONNECT {target.authority} HTTP/1.1", f"Host: {target.authority}"]
    parts = urlsplit(proxy.url or "")
    if parts.username is not None:
        pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        lines.append("Proxy-Authorization: Basic " + base64.b64encode(pair.encode()).decode())
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _read_proxy_reply(sock: socket.socket) -> tuple[int, str]:
    """The status of the proxy's reply to CONNECT; its headers are read and dropped."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
        if len(data) > MAX_PROXY_REPLY:
            break
    head = data.split(b"\r\n", 1)[0].decode("latin-1", "replace")
    parts = head.split(" ", 2)
    if len(parts) < 2 or not parts[1].isdigit():
        raise ProxyRefused(0, f"not an HTTP answer ({head[:60]!r})")
    return int(parts[1]), parts[2].strip() if len(parts) > 2 else ""


__all__ = ["Certificate", "Handshake", "ProxyRefused", "Target", "connect", "fetch_certificate",
           "handshake", "open_tunnel", "parse_certificate", "resolve"]
