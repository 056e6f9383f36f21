"""One HTTP exchange -> one decision: the classification table of the product contract.

Pure: no network, no clock. The sender hands over what came back (status, headers, body bytes, or
the exception httpx raised) and gets a `Verdict`: a final outcome (`ok`, `mismatch`,
`permanent`), a run-level stop (`abort`), a 429 (`rate_limited`) or a transient failure
(`retry`). Logis answers errors as `{"error": "<reason>"}`; the classifier reads that text
because the status code alone can mislead (a sibling endpoint answers a wrong review_key with 404).

Bodies are untrusted: they may be HTML, empty, huge or hostile. We parse at most `MAX_BODY`
bytes, keep messages short, and scrub anything shaped like a UUID or a long token from them so
a review_key or key echoed by a server never reaches a report.
"""

from __future__ import annotations

import json
import re
import socket
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal
from urllib.parse import urlsplit

import httpcore
import httpx

from batch_toggle import vocab

MAX_BODY = 1 << 20  # a job object is a few KB; anything over 1 MiB is not an answer we expect
MAX_MESSAGE = 200  # characters of server text kept in error_message

Kind = Literal["ok", "mismatch", "permanent", "abort", "rate_limited", "retry"]

_UUID_RE = re.compile(r"[0-9a-fA-F]{8}-?(?:[0-9a-fA-F]{4}-?){3}[0-9a-fA-F]{12}")
_TOKEN_RE = re.compile(r"[A-Za-z0-9_\-]{24,}")
_DAILY_RE = re.compile(r"daily|global|\bday\b|per day|24 ?h", re.IGNORECASE)
_PERMISSION_RE = re.compile(r"permission|allow_public_track|public.?track", re.IGNORECASE)
_KEY_HEADER_RE = re.compile(r"logis-api-key|api[ _-]?key|header", re.IGNORECASE)


@dataclass(frozen=True)
class Verdict:
    """What one exchange means for its row and for the run.

    `status` is the report status this verdict would end the row with (`failed` for `retry`:
    what the row becomes once attempts run out, then with `retryable` true).
    """

    kind: Kind
    status: str | None
    error_code: str | None
    message: str | None
    retryable: bool | None
    http_status: int | None
    entity_id: str | None = None  # the returned object's id (job id, or end_client id)
    client_id: str | None = None  # target job: job["client"]; target client: the end_client id
    confirmed: bool | None = None  # the do_notify_sms the server returned
    retry_after: str | None = None  # raw Retry-After header of a 429
    server_date: str | None = None  # the 429's Date header: what an HTTP-date Retry-After is
    # measured against (both on the server's clock)
    daily_limit: bool = False  # a 429 whose text names the user's daily (global) limit

    @property
    def is_final(self) -> bool:
        """The row's outcome is decided: no retry, no re-queue."""
        return self.kind in ("ok", "mismatch", "permanent", "abort")


@dataclass(frozen=True)
class TrackResult:
    """A classified `GET /api/apikeys/track`: the verdict (entity_id = job id, client_id,
    confirmed = the job's do_notify_sms) plus the client's own default."""

    verdict: Verdict
    client_do_notify_sms: bool | None = None

    def state(self, target: str) -> bool | None:
        """The current do_notify_sms of `target` (`job` or `client`), None if not known."""
        if self.verdict.kind != "ok":
            return None
        return self.verdict.confirmed if target == "job" else self.client_do_notify_sms


# --- responses ------------------------------------------------------------------------------


def classify_response(
    status: int, headers: Mapping[str, str], body: bytes, *, target: str, desired: bool
) -> Verdict:
    """Classify a toggle PUT's response for a row whose `update_target` is `target` and whose
    desired state is `desired`."""
    if 200 <= status < 300:
        return _classify_toggle_ok(status, body, target=target, desired=desired)
    return classify_error(status, headers, body)


def _classify_toggle_ok(status: int, body: bytes, *, target: str, desired: bool) -> Verdict:
    """A 2xx must carry the updated object (`job` or `end_client`) showing the desired state."""
    key = "job" if target == "job" else "end_client"
    data = _json_object(body)
    obj = data.get(key) if data is not None else None
    state = _bool_field(obj, "do_notify_sms") if isinstance(obj, dict) else None
    if not isinstance(obj, dict) or state is None:
        return _unexpected(status, f"{status} without a {key} object showing do_notify_sms"
                           f" ({_describe_body(body)})")
    entity_id = _id(obj.get("id"))
    client_id = _id(obj.get("client")) if key == "job" else entity_id
    if state != desired:
        return Verdict("mismatch", vocab.MISMATCH, None,
                       f"server shows do_notify_sms={str(state).lower()}", False, status,
                       entity_id, client_id, state)
    return Verdict("ok", vocab.UPDATED, None, None, None, status, entity_id, client_id, state)


def classify_error(status: int, headers: Mapping[str, str], body: bytes) -> Verdict:
    """Classify a non-2xx answer (shared by the toggle PUT and the track GET)."""
    text = _error_text(body)
    message = _scrub(text) if text else f"HTTP {status} ({_describe_body(body)})"
    if status == 429:
        return Verdict("rate_limited", None, "rate_limited", message, True, status,
                       retry_after=_header(headers, "retry-after"),
                       server_date=_header(headers, "date"),
                       daily_limit=bool(text and _DAILY_RE.search(text)))
    if 300 <= status < 400:
        return _redirect(status, headers)
    if status == 407:  # a forwarding proxy (plain http) wants credentials
        return replace(_unusable("proxy_auth_required", f"the proxy answered 407 ({message})"),
                       http_status=407)
    if status >= 500:
        return Verdict("retry", vocab.FAILED, "server_error", message, True, status)
    code, kind = _client_error_code(status, text or "")
    if code == "job_not_found" and text is None:
        message += "; is --base-url right?"  # an HTML 404 is a wrong URL more than a lost job
    return Verdict(kind, vocab.FAILED, code, message, False, status)


def _client_error_code(status: int, text: str) -> tuple[str, Kind]:
    """4xx (not 429): which error code, and whether it stops the run. Reads the error text,
    not just the status, where the two can disagree."""
    lowered = text.lower()
    if status == 400:
        return "bad_request", "permanent"
    if status == 401:
        if "review" not in lowered and _KEY_HEADER_RE.search(text):
            return "api_key_missing", "abort"
        return "incorrect_review_key", "permanent"
    if status == 403:
        if _PERMISSION_RE.search(text):
            return "permission_denied", "abort"
        return "api_key_invalid", "abort"
    if status == 404:
        if "review" in lowered:  # "Invalid job_id or review_key", as get_delivery_code says
            return "incorrect_review_key", "permanent"
        return "job_not_found", "permanent"
    return "unexpected_response", "permanent"


def _redirect(status: int, headers: Mapping[str, str]) -> Verdict:
    """Redirects are never followed: the key header and the body would go with them. A base
    URL that redirects does so for every row, so the run stops (abort) instead of spending one
    request per row on it."""
    host = urlsplit(_header(headers, "location") or "").hostname
    where = f" to {host}" if host else ""
    return Verdict("abort", vocab.FAILED, "unexpected_response",
                   f"redirect (HTTP {status}){where} not followed; check --base-url", False,
                   status)


def _unexpected(status: int, message: str) -> Verdict:
    """A 2xx we cannot read: worth a retry (a proxy's error page, a truncated body)."""
    return Verdict("retry", vocab.FAILED, "unexpected_response", message, True, status)


# --- the track endpoint ---------------------------------------------------------------------


def classify_track(status: int, headers: Mapping[str, str], body: bytes) -> TrackResult:
    """Classify `GET /api/apikeys/track?job_id=`: the job's and its client's do_notify_sms."""
    if not 200 <= status < 300:
        return TrackResult(classify_error(status, headers, body))
    data = _json_object(body)
    track = data.get("job_track") if data is not None else None
    job = track.get("job") if isinstance(track, dict) else None
    job_state = _bool_field(job, "do_notify_sms") if isinstance(job, dict) else None
    if not isinstance(track, dict) or not isinstance(job, dict) or job_state is None:
        return TrackResult(_unexpected(
            status, f"{status} without job_track.job.do_notify_sms ({_describe_body(body)})"))
    client = track.get("client")
    client = client if isinstance(client, dict) else {}
    client_id = _id(client.get("id")) or _id(job.get("client"))
    verdict = Verdict("ok", None, None, None, None, status, _id(job.get("id")), client_id,
                      job_state)
    return TrackResult(verdict, _bool_field(client, "do_notify_sms"))


# --- exceptions -----------------------------------------------------------------------------


def classify_exception(exc: BaseException) -> Verdict:
    """Classify what httpx raised instead of a response. Timeouts and transport failures are
    retried (the PUT is idempotent); a connection that cannot work as configured (see
    `connection_failure`) stops the run; anything that is not a transport error is a bug and
    is re-raised rather than hidden in a row's outcome."""
    name = type(exc).__name__
    if isinstance(exc, httpx.TimeoutException | TimeoutError):
        return Verdict("retry", vocab.FAILED, "timeout", f"timed out ({name})", True, None)
    if isinstance(exc, httpx.LocalProtocolError | httpx.TooManyRedirects | httpx.HTTPStatusError):
        return Verdict("permanent", vocab.FAILED, "unexpected_response",
                       f"request not sent as expected ({name})", False, None)
    if isinstance(exc, httpx.DecodingError):
        return Verdict("retry", vocab.FAILED, "unexpected_response",
                       f"response body could not be decoded ({name})", True, None)
    if isinstance(exc, httpx.TransportError | OSError):
        return connection_failure(exc) or Verdict(
            "retry", vocab.FAILED, "network_error", _network_message(exc), True, None)
    raise exc


# Certificate checks that fail on the name rather than the issuer (OpenSSL's X509_V_ERR_*).
_NAME_MISMATCH = frozenset({62, 63, 64})  # HOSTNAME_MISMATCH, EMAIL_MISMATCH, IP_ADDRESS_MISMATCH
# TLS failures that say the two ends cannot agree, not that the network hiccupped (an EOF or a
# reset during the handshake stays a transient network_error).
_TLS_CONFIG_REASONS = frozenset({
    "WRONG_VERSION_NUMBER", "UNSUPPORTED_PROTOCOL", "TLSV1_ALERT_PROTOCOL_VERSION",
    "NO_PROTOCOLS_AVAILABLE", "SSLV3_ALERT_HANDSHAKE_FAILURE", "NO_SHARED_CIPHER",
    "NO_CIPHERS_AVAILABLE", "TLSV1_ALERT_INSUFFICIENT_SECURITY", "TLSV1_UNRECOGNIZED_NAME",
    "TLSV1_ALERT_UNKNOWN_CA", "SSLV3_ALERT_BAD_CERTIFICATE", "TLSV13_ALERT_CERTIFICATE_REQUIRED",
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN", "DH_KEY_TOO_SMALL", "EE_KEY_TOO_SMALL", "CA_MD_TOO_WEAK",
    "CA_KEY_TOO_SMALL", "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG", "HTTP_REQUEST",
})
# getaddrinfo's answers that mean "no such name" (NXDOMAIN), as opposed to a resolver that did
# not answer (EAI_AGAIN, EAI_FAIL: transient).
_NO_SUCH_NAME = frozenset(code for code in (getattr(socket, "EAI_NONAME", None),
                                            getattr(socket, "EAI_NODATA", None)) if code)
_PROXY_STATUS_RE = re.compile(r"^\s*(\d{3})\b\s*(.*)")


def connection_failure(exc: BaseException) -> Verdict | None:
    """A connection that cannot work as configured, or None for a failure that may pass.

    Definitive (the run stops, exit 3, with the code as the cause): a certificate that does not
    verify (`tls_untrusted`; `tls_hostname_mismatch` when it is for other names), TLS the two
    ends cannot agree on (`tls_error`), a name that does not exist (`dns_failure`), a proxy
    that wants credentials (`proxy_auth_required`) or refuses the tunnel (`proxy_error`).
    Ambiguous failures (refused, reset, timeout, a resolver that did not answer, a proxy's
    5xx) return None: they stay transient. Reads the whole chain of causes, since httpx wraps
    the ssl and socket errors."""
    for cause in _causes(exc):
        if isinstance(cause, ssl.SSLCertVerificationError):
            code = ("tls_hostname_mismatch" if cause.verify_code in _NAME_MISMATCH
                    else "tls_untrusted")
            return _unusable(code, f"certificate verify failed: "
                                   f"{cause.verify_message or _scrub(str(cause))}")
        if isinstance(cause, ssl.SSLError) and cause.reason in _TLS_CONFIG_REASONS:
            return _unusable("tls_error", f"TLS handshake failed: {cause.reason}")
        if isinstance(cause, socket.gaierror) and cause.errno in _NO_SUCH_NAME:
            return _unusable("dns_failure", f"name not found: {cause.strerror or cause}")
        if isinstance(cause, httpx.ProxyError | httpcore.ProxyError):
            return proxy_refusal(str(cause))
    return None


def proxy_refusal(text: str) -> Verdict | None:
    """The proxy's answer to CONNECT ("407 Proxy Authentication Required"). Its 5xx mean the
    proxy could not reach the host (or is struggling): transient, like a gateway's 502."""
    match = _PROXY_STATUS_RE.match(text)
    if match is None:
        return None
    status, reason = int(match.group(1)), _scrub(match.group(2)) or "no reason"
    if status in (401, 407):
        return _unusable("proxy_auth_required", f"the proxy answered {status} {reason}")
    if 400 <= status < 500:
        return _unusable("proxy_error", f"the proxy refused the tunnel: {status} {reason}")
    return None


def _unusable(code: str, message: str) -> Verdict:
    """A run-level stop for the connection; the row is not at fault (retryable: a new run
    after the fix sends it)."""
    return Verdict("abort", vocab.FAILED, code, message, True, None)


def _causes(exc: BaseException) -> list[BaseException]:
    """`exc` and what caused it, outermost first (bounded: chains can loop)."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and len(chain) < 10 and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def _network_message(exc: BaseException) -> str:
    """A short cause, calling out TLS failures (those that may pass: a reset mid-handshake)."""
    text = str(exc)
    if "SSL" in text:
        return f"TLS failure ({type(exc).__name__}): {_scrub(text)}"
    return f"{type(exc).__name__}: {_scrub(text)}" if text else type(exc).__name__


# --- defensive parsing ----------------------------------------------------------------------


def _json_object(body: bytes) -> dict[str, Any] | None:
    """The body as a JSON object, or None if it is too big, not JSON, or not an object."""
    if not body or len(body) > MAX_BODY:
        return None
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError are ValueError
        return None
    return data if isinstance(data, dict) else None


def _error_text(body: bytes) -> str | None:
    """The server's `{"error": ...}` text (or `detail`/`message`), if the body carries one."""
    data = _json_object(body)
    if data is None:
        return None
    for key in ("error", "detail", "message"):
        value = data.get(key)
        if isinstance(value, str) and value.strip():
            return value.strip()
        if value is not None and not isinstance(value, str):
            return json.dumps(value, ensure_ascii=False)[: MAX_MESSAGE * 2]
    return None


def _describe_body(body: bytes) -> str:
    """Say what a body is without quoting it: it may echo the request or be megabytes long."""
    if not body:
        return "empty body"
    if len(body) > MAX_BODY:
        return f"body of {len(body):,} bytes, over the {MAX_BODY:,}-byte cap"
    return "non-JSON body" if _json_object(body) is None else "unexpected JSON"


def _scrub(text: str) -> str:
    """Short, single-line, with UUIDs and long tokens masked (they may be a review_key or key)."""
    text = " ".join(text.split())
    text = _TOKEN_RE.sub(_redact_token, _UUID_RE.sub("<uuid>", text))
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 1] + "…"


def _redact_token(match: re.Match[str]) -> str:
    """A long run of letters AND digits looks like a secret; a long snake_case word does not."""
    token = match.group()
    looks_random = any(c.isdigit() for c in token) and any(c.isalpha() for c in token)
    return "<redacted>" if looks_random else token


def _bool_field(obj: Mapping[str, Any], key: str) -> bool | None:
    """A boolean field, accepting the strings "true"/"false" too (the request uses strings)."""
    value = obj.get(key)
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    return None


def _id(value: Any) -> str | None:
    """An object id as text; a nested object's `id` when the field is an object."""
    if isinstance(value, dict):
        value = value.get("id")
    if isinstance(value, str) and value:
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


def _header(headers: Mapping[str, str], name: str) -> str | None:
    """Case-insensitive header lookup that also works on a plain dict."""
    value = headers.get(name)
    if value is None:
        value = next((v for k, v in headers.items() if k.lower() == name), None)
    return value
