"""Which certificate authorities a run trusts, and the one SSL context it verifies servers with.

Why the operating system's store by default: on company machines IT installs the CA that
re-signs outgoing TLS into the system store. certifi's bundle (httpx's default, Mozilla's list)
knows nothing of it, so a first run failed every request with "unable to get local issuer
certificate". `truststore` verifies against the system store instead: what pip does since 24.2
and what uv's `--native-tls` is for.

The sources, the first that applies:

* `--ca-bundle PATH` (config file `ca-bundle`, env BATCH_TOGGLE_CA_BUNDLE): only the CAs in
  that PEM file (or OpenSSL hashed directory), as curl's `--cacert` and pip's `--cert`.
* `--trust system` (the default): the operating system's trust store. On Linux that is
  OpenSSL's default verify paths, which SSL_CERT_FILE and SSL_CERT_DIR point elsewhere; on
  every system those two, when set, are trusted as well.
* `--trust certifi`: certifi's bundle; SSL_CERT_FILE or SSL_CERT_DIR, when set, replace it (as
  httpx has always done, so a setup that worked before keeps working).

Verification is never switched off: nothing here builds a context that does not verify the
certificate and the host name (`--insecure` only allows plain http, never unverified https).
"""

from __future__ import annotations

import contextlib
import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from batch_toggle.config import TRUST_CHOICES
from batch_toggle.errors import UsageError

SYSTEM, CERTIFI, CA_BUNDLE = "system", "certifi", "ca_bundle"
CERT_ENV = ("SSL_CERT_FILE", "SSL_CERT_DIR")


@dataclass(frozen=True)
class Trust:
    """Where the run's trusted CAs come from: `source` is system, certifi or ca_bundle;
    `ca_bundle` the --ca-bundle path; `env` the SSL_CERT_FILE/SSL_CERT_DIR values in force."""

    source: str = SYSTEM
    ca_bundle: str | None = None
    env: tuple[tuple[str, str], ...] = ()

    def describe(self) -> str:
        """One phrase for messages, the summary and doctor: which CAs were trusted."""
        if self.source == CA_BUNDLE:
            return f"--ca-bundle {self.ca_bundle}"
        env = ", ".join(f"{name}={value}" for name, value in self.env)
        if self.source == CERTIFI:
            if env:
                return f"{env} (in place of certifi's bundle)"
            return f"certifi's CA bundle ({_certifi_version()})"
        return "the system trust store" + (f" and {env}" if env else "")

    def as_dict(self) -> dict[str, Any]:
        return {"source": self.source, "ca_bundle": self.ca_bundle, "env": dict(self.env),
                "described": self.describe()}

    def context(self) -> ssl.SSLContext:
        """A verifying client context (certificate and host name checked, TLS 1.2 or newer).

        Raises UsageError when a --ca-bundle cannot be loaded (exit 2, before anything is sent).
        """
        if self.source == CA_BUNDLE:
            return _bundle_context(self.ca_bundle or "")
        env = dict(self.env)
        if self.source == CERTIFI:
            if env:
                return _env_context(env)
            import certifi
            return _hardened(ssl.create_default_context(cafile=certifi.where()))
        import truststore
        context = truststore.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        if env:  # OpenSSL reads these on Linux already; elsewhere truststore would not
            _load_env(context, env)
        return _hardened(context)


def resolve_trust(trust: str | None = None, ca_bundle: str | os.PathLike[str] | None = None,
                  environ: Mapping[str, str] | None = None) -> Trust:
    """The Trust of a run from its options and the environment (SSL_CERT_FILE/SSL_CERT_DIR).
    A --ca-bundle that does not exist is a UsageError naming it."""
    environ = os.environ if environ is None else environ
    choice = (trust or SYSTEM).strip().lower()
    if choice not in TRUST_CHOICES:
        raise UsageError(f"--trust {trust!r}: expected one of {', '.join(TRUST_CHOICES)}")
    if ca_bundle:
        path = Path(ca_bundle).expanduser()
        if not path.exists():
            raise UsageError(f"--ca-bundle {path}: no such file or directory")
        return Trust(CA_BUNDLE, str(path.resolve()))
    env = tuple((name, environ[name]) for name in CERT_ENV
                if environ.get(name) and os.path.exists(environ[name]))
    return Trust(choice, None, env)


def _bundle_context(path: str) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        if os.path.isdir(path):
            context.load_verify_locations(capath=path)
        else:
            context.load_verify_locations(cafile=path)
    except (ssl.SSLError, OSError, ValueError) as exc:
        raise UsageError(f"--ca-bundle {path}: not a readable PEM file of CA certificates "
                         f"({exc})") from exc
    return _hardened(context)


def _env_context(env: Mapping[str, str]) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    _load_env(context, env)
    return _hardened(context)


def _load_env(context: ssl.SSLContext, env: Mapping[str, str]) -> None:
    """Trust SSL_CERT_FILE / SSL_CERT_DIR. A file OpenSSL cannot read is ignored, as OpenSSL
    itself ignores it (doctor names the variables in force)."""
    with contextlib.suppress(ssl.SSLError, OSError):
        context.load_verify_locations(cafile=env.get("SSL_CERT_FILE"),
                                      capath=env.get("SSL_CERT_DIR"))


def _hardened(context: ssl.SSLContext) -> ssl.SSLContext:
    """What every context here promises, whoever built it."""
    context.verify_mode = ssl.CERT_REQUIRED
    context.check_hostname = True
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def _certifi_version() -> str:
    try:
        import certifi
        return f"certifi {certifi.__version__}"
    except (ImportError, AttributeError):
        return "certifi"


__all__ = ["CA_BUNDLE", "CERTIFI", "SYSTEM", "TRUST_CHOICES", "Trust", "resolve_trust"]
