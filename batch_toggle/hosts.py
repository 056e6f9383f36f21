"""Which hosts count as this machine, and which base URLs are safe: plain http and an
unauthenticated sandbox only on loopback."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from batch_toggle.errors import UsageError


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses (127.0.0.0/8, ::1, with or without brackets)."""
    host = host.strip().lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_base_url(url: str, insecure: bool) -> None:
    """Refuse plain http to anything but loopback: the key and review keys would travel bare."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"--base-url {url!r}: expected an http(s) URL such as "
                         "https://app.logisapp.ca")
    if parts.scheme == "http" and not insecure and not is_loopback(parts.hostname):
        raise UsageError(f"--base-url {url!r}: plain http sends the API key unencrypted; use "
                         "https, a loopback address, or --insecure")
