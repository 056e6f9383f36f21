"""The one line a run stops with when its connection cannot work: what failed, the detail, the fix.

A certificate the machine does not trust used to look like a network outage: 15 minutes of
probing, then "stopped early: resumable", and nothing anywhere said TLS. Each connection code
(vocab.CONNECTION_CODES) gets here the detail a person needs (the certificate's issuer and
names; the host that did not resolve; the proxy and its answer) and the fix (`--ca-bundle`,
SSL_CERT_FILE, the system trust store, HTTPS_PROXY, the URL), and every such line points to
`batch-toggle doctor`, which checks the path one step at a time.

The line becomes the stop's message: the unsent rows' error_message, the summary's `stopped`,
the HTML verdict, the `stop` event (-v, --events), the state store (`batch-toggle status`).
"""

from __future__ import annotations

from collections.abc import Callable

from batch_toggle.send.client import Route
from batch_toggle.send.probe import Certificate, Target, fetch_certificate

DOCTOR = "run `batch-toggle doctor` to check each step"

_PROXY_CREDENTIALS = ("give the proxy's credentials in HTTPS_PROXY "
                      "(http://USER:PASSWORD@proxy:port) or in --proxy-auth-file (one line "
                      "USER:PASSWORD)")


def explain(code: str, message: str, route: Route, *,
            certificate: Certificate | None = None, waited: float | None = None) -> str:
    """The stop's message for connection `code`; `message` is the classifier's short cause."""
    text = describe(code, message, route, certificate=certificate, waited=waited)
    prefix = _PREFIX.get(code.split("_")[0], "")
    return f"{prefix}{text}; {DOCTOR}"


def describe(code: str, message: str, route: Route, *,
             certificate: Certificate | None = None, waited: float | None = None) -> str:
    """What failed, the detail and the fix (`explain` without the pointer to doctor: doctor
    itself says this)."""
    where = Target.of(route.base_url).authority
    how = _DESCRIBE.get(code)
    return how(message, route, where, certificate, waited) if how else message


def explainer(route: Route, timeout: float,
              fetch: Callable[..., Certificate | None] = fetch_certificate
              ) -> Callable[[str, str, float | None], str]:
    """`explain` for a run on `route`: for a certificate it refused, the certificate is read
    once more, unverified and sending nothing, to say who issued it and for which names."""
    def run_explain(code: str, message: str, waited: float | None = None) -> str:
        cert = None
        if code in ("tls_untrusted", "tls_hostname_mismatch"):
            cert = fetch(route.base_url, route.proxy, min(timeout, 10.0))
        return explain(code, message, route, certificate=cert, waited=waited)
    return run_explain


def _untrusted(message: str, route: Route, where: str, cert: Certificate | None,
               _waited: float | None) -> str:
    seen = f" ({cert.describe()})" if cert else ""
    if cert is not None and cert.expired():
        return (f"the certificate of {where} has expired{seen}: its operator must renew "
                "it (or this machine's clock is wrong)")
    return (f"the certificate of {where} is not trusted{seen}: {message}; trusted here: "
            f"{route.trust.describe()}. If that issuer is your organisation's CA (a proxy "
            "that inspects TLS), add it to the system trust store, or give its PEM file with "
            "--ca-bundle PATH or SSL_CERT_FILE")


def _mismatch(message: str, route: Route, where: str, cert: Certificate | None,
              _waited: float | None) -> str:
    seen = f" ({cert.describe()})" if cert else ""
    host = Target.of(route.base_url).host
    return (f"the certificate of {where} is not valid for {host}{seen}: {message}. Check "
            "the host in --base-url (LOGIS_BASE_URL): it must be one of the certificate's names")


def _tls_error(message: str, route: Route, where: str, _cert: Certificate | None,
               _waited: float | None) -> str:
    return (f"no secure connection could be agreed with {where} ({message}): if that port "
            "speaks plain http the URL is wrong (https:// for an http port?); batch-toggle "
            "needs TLS 1.2 or newer")


def _dns(message: str, route: Route, where: str, _cert: Certificate | None,
         _waited: float | None) -> str:
    if route.proxy.url is not None:
        host = (route.proxy.host_port or ("?", 0))[0]
        return (f"the proxy's host {host} does not resolve ({message}): check --proxy or "
                f"{route.proxy.source}")
    host = Target.of(route.base_url).host
    return (f"the host {host} does not exist ({message}): check the host name in "
            "--base-url (LOGIS_BASE_URL; the default is https://app.logisapp.ca); a network "
            "that only reaches out through a proxy needs HTTPS_PROXY or --proxy")


def _proxy_auth(message: str, route: Route, where: str, _cert: Certificate | None,
                _waited: float | None) -> str:
    proxy = route.proxy.describe()
    if route.proxy.has_credentials:
        return (f"{proxy} refused the credentials given for the tunnel to {where} "
                f"({message}): check them; {_PROXY_CREDENTIALS}")
    return f"{proxy} wants credentials for the tunnel to {where} ({message}): " \
           f"{_PROXY_CREDENTIALS}"


def _proxy_error(message: str, route: Route, where: str, _cert: Certificate | None,
                 _waited: float | None) -> str:
    return (f"{route.proxy.describe()} does not let a tunnel to {where} through "
            f"({message}): ask its administrators to allow it, or add the host to NO_PROXY "
            "if it is reachable directly")


def _unreachable(message: str, route: Route, where: str, _cert: Certificate | None,
                 waited: float | None) -> str:
    how = f"for {waited:.0f} s " if waited is not None else ""
    via = (f" through the proxy {route.proxy.describe()}" if route.proxy.url is not None
           else "")
    return (f"{route.base_url} has never answered this state store and gave no answer "
            f"{how}since the first try{via} (last: {message}): check the host and port in "
            "--base-url, the network and firewall, and HTTPS_PROXY if it needs a proxy")


# What the one line of a run's stop starts with, by the code's first word (doctor names the
# step itself).
_PREFIX = {"tls": "TLS: ", "dns": "DNS: ", "proxy": "proxy: "}

_DESCRIBE: dict[str, Callable[[str, Route, str, Certificate | None, float | None], str]] = {
    "tls_untrusted": _untrusted, "tls_hostname_mismatch": _mismatch, "tls_error": _tls_error,
    "dns_failure": _dns, "proxy_auth_required": _proxy_auth, "proxy_error": _proxy_error,
    "unreachable": _unreachable,
}

__all__ = ["DOCTOR", "describe", "explain", "explainer"]
