"""Which forward proxy (if any) a run goes through to its base URL, and its credentials.

Where the proxy comes from, the first that applies: `--proxy URL` (config file `proxy`, env
BATCH_TOGGLE_PROXY), then the usual variables for the base URL's scheme (`https_proxy` /
`HTTPS_PROXY` for https, `http_proxy` / `HTTP_PROXY` for http, then `all_proxy` /
`ALL_PROXY`). `no_proxy` / `NO_PROXY` (host names, domain suffixes, `*`) sends the base URL
direct whichever way the proxy was named, as curl does.

Credentials: in the proxy URL of an environment variable (`http://user:pass@proxy:3128`) or in
a file (`--proxy-auth-file`, one line `user:password`), never on the command line or in a config
file (the CLI refuses them there: argv shows in `ps` and shell history, config files get copied).
Wherever a proxy is shown (messages, summary, events, doctor) its credentials are masked.

The choice is made once per run, for its one base URL: `connections` then gives every worker
its own kept-alive tunnel through that proxy.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from batch_toggle.errors import UsageError

PROXY_SCHEMES = ("http", "https")


@dataclass(frozen=True)
class ProxyChoice:
    """The proxy for one base URL. `url` may hold credentials (never print it: `shown`);
    `source` names where it came from; `bypassed_by` is set when a proxy was named but NO_PROXY
    sends this host direct."""

    url: str | None = field(default=None, repr=False)
    source: str | None = None
    bypassed_by: str | None = None

    @property
    def shown(self) -> str | None:
        """The proxy URL with its password masked, for anything a person or a file sees."""
        return None if self.url is None else redact(self.url)

    @property
    def host_port(self) -> tuple[str, int] | None:
        if self.url is None:
            return None
        parts = urlsplit(self.url)
        default = 443 if parts.scheme == "https" else 80
        return parts.hostname or "", parts.port or default

    @property
    def has_credentials(self) -> bool:
        return self.url is not None and urlsplit(self.url).username is not None

    def describe(self) -> str:
        if self.url is None:
            if self.bypassed_by:
                return f"none (the host is in {self.bypassed_by})"
            return "none (direct)"
        return f"{self.shown} (from {self.source})"

    def as_dict(self) -> dict[str, Any]:
        return {"url": self.shown, "source": self.source, "bypassed_by": self.bypassed_by,
                "credentials": self.has_credentials}


DIRECT = ProxyChoice()


def choose_proxy(base_url: str, explicit: str | None = None,
                 environ: Mapping[str, str] | None = None,
                 credentials: tuple[str, str] | None = None) -> ProxyChoice:
    """The proxy `base_url` goes through: `explicit` (--proxy) or the environment's, unless
    NO_PROXY names the host. `credentials` (from --proxy-auth-file) replace any in the URL."""
    environ = os.environ if environ is None else environ
    parts = urlsplit(base_url)
    url, source = (explicit, "--proxy") if explicit else _from_environment(parts.scheme, environ)
    if not url:
        return DIRECT
    url = normalise_proxy_url(url, source or "--proxy")
    no_proxy_name, no_proxy = _lookup(environ, "no_proxy")
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    if no_proxy and _bypassed(host, port, no_proxy):
        return ProxyChoice(None, None, no_proxy_name)
    if credentials is not None:
        url = with_credentials(url, *credentials)
    return ProxyChoice(url, source)


def normalise_proxy_url(url: str, source: str) -> str:
    """`proxy:3128` -> `http://proxy:3128`; anything but an http(s) proxy with a host is a
    UsageError naming where it came from (credentials masked)."""
    text = url.strip()
    if "://" not in text:
        text = "http://" + text
    parts = urlsplit(text)
    if parts.scheme.lower() not in PROXY_SCHEMES or not parts.hostname:
        raise UsageError(f"{source} {redact(text)!r}: expected an http proxy URL such as "
                         "http://proxy.example.com:3128 (https:// proxies work too; socks "
                         "proxies are not supported)")
    try:
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        raise UsageError(f"{source} {redact(text)!r}: {exc}") from None
    return text


def redact(url: str) -> str:
    """The URL with any password replaced by `***` (the user name is kept: it helps, and is
    no secret on its own)."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{parts.username or ''}:***@{host}"
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def has_credentials(url: str) -> bool:
    """Does this URL carry a user name or password?"""
    text = url if "://" in url else "http://" + url
    parts = urlsplit(text)
    return parts.username is not None or parts.password is not None


def with_credentials(url: str, user: str, password: str) -> str:
    """`url` with `user:password` as its userinfo (percent-encoded), replacing any it had."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{host}"
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def read_proxy_auth_file(path: Path, option: str = "--proxy-auth-file") -> tuple[str, str]:
    """`user:password` from the first non-empty line of `path` (the password may hold `:`).
    An unreadable, empty or malformed file is a UsageError that never quotes the file."""
    try:
        text = path.expanduser().read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"{option} {path}: {exc.strerror or exc}") from exc
    line = next((raw.strip() for raw in text.splitlines() if raw.strip()), "")
    user, sep, password = line.partition(":")
    if not sep or not user:
        raise UsageError(f"{option} {path}: expected one line USER:PASSWORD")
    return unquote(user), password


def _from_environment(scheme: str, environ: Mapping[str, str]) -> tuple[str | None, str | None]:
    for name in (f"{scheme}_proxy", "all_proxy"):
        found, value = _lookup(environ, name)
        if value:
            return value, found
    return None, None


def _lookup(environ: Mapping[str, str], name: str) -> tuple[str | None, str | None]:
    """The lower-case variable first, then the upper-case one (curl's and urllib's order)."""
    for candidate in (name, name.upper()):
        value = environ.get(candidate)
        if value and value.strip():
            return candidate, value.strip()
    return None, None


def _bypassed(host: str, port: int | None, no_proxy: str) -> bool:
    """NO_PROXY as curl reads it: `*`, host names and domain suffixes (`example.com` and
    `.example.com` both cover `api.example.com`), `host:port`, IP addresses and CIDR ranges."""
    host = host.lower().strip("[]")
    for raw in no_proxy.split(","):
        entry = raw.strip().lower()
        if entry == "*":
            return True
        name, want_port = _entry_port(entry)
        if not name or (want_port is not None and want_port != port):
            continue
        if _in_network(host, name):
            return True
        name = name.lstrip("*").lstrip(".")
        if host == name or host.endswith("." + name):
            return True
    return False


def _entry_port(entry: str) -> tuple[str, int | None]:
    """`host:port` -> (host, port); an IPv6 address or a plain name keeps no port."""
    name, sep, port = entry.rpartition(":")
    if sep and port.isdigit() and ":" not in name.strip("[]"):
        return name.strip("[]"), int(port)
    return entry.strip("[]"), None


def _in_network(host: str, entry: str) -> bool:
    import ipaddress

    try:
        return ipaddress.ip_address(host) in ipaddress.ip_network(entry, strict=False)
    except ValueError:
        return False


__all__ = ["DIRECT", "ProxyChoice", "choose_proxy", "has_credentials", "normalise_proxy_url",
           "read_proxy_auth_file", "redact", "with_credentials"]
