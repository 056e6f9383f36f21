"""The classification table: every documented Logis answer, and the odd ones networks send."""

from __future__ import annotations

import json
import socket
import ssl

import httpcore
import httpx
import pytest

from batch_toggle import vocab
from batch_toggle.send.classify import (
    MAX_BODY,
    MAX_MESSAGE,
    Verdict,
    classify_error,
    classify_exception,
    classify_response,
    classify_track,
)

JOB = "0b9f6c1e-4a51-4c1e-9d0b-6a1f2e3d4c5b"
CLIENT = "7d3e2f1a-0b9c-4d8e-a7f6-5e4d3c2b1a09"
REVIEW = "a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d"


def body(obj: object) -> bytes:
    return json.dumps(obj).encode()


def job(state: object, **extra: object) -> bytes:
    return body({"job": {"id": JOB, "do_notify_sms": state, "client": CLIENT, **extra}})


def client(state: object) -> bytes:
    return body({"end_client": {"id": CLIENT, "do_notify_sms": state}})


def err(text: str) -> bytes:
    return body({"error": text})


# (status, headers, body, target, desired) -> (kind, status, error_code, retryable)
TABLE = [
    pytest.param(200, {}, job(False), "job", False, ("ok", "updated", None, None), id="200-job-ok"),
    pytest.param(200, {}, client(True), "client", True, ("ok", "updated", None, None),
                 id="200-client-ok"),
    pytest.param(200, {}, job(True), "job", False, ("mismatch", "mismatch", None, False),
                 id="200-job-shows-other-state"),
    pytest.param(200, {}, client(False), "client", True, ("mismatch", "mismatch", None, False),
                 id="200-client-shows-other-state"),
    pytest.param(200, {}, job("false"), "job", False, ("ok", "updated", None, None),
                 id="200-state-as-string"),
    pytest.param(200, {}, client(False), "job", False,
                 ("retry", "failed", "unexpected_response", True), id="200-wrong-object"),
    pytest.param(200, {}, body({"job": {"id": JOB}}), "job", False,
                 ("retry", "failed", "unexpected_response", True), id="200-object-without-state"),
    pytest.param(200, {}, job(None), "job", False,
                 ("retry", "failed", "unexpected_response", True), id="200-state-null"),
    pytest.param(200, {}, body({"job": "x"}), "job", False,
                 ("retry", "failed", "unexpected_response", True), id="200-object-not-a-dict"),
    pytest.param(200, {}, b"<html>Bad gateway</html>", "job", False,
                 ("retry", "failed", "unexpected_response", True), id="200-html"),
    pytest.param(200, {}, b"", "job", False,
                 ("retry", "failed", "unexpected_response", True), id="200-empty"),
    pytest.param(200, {}, b"[1, 2]", "job", False,
                 ("retry", "failed", "unexpected_response", True), id="200-json-array"),
    pytest.param(200, {}, b"\xff\xfe\x00garbage", "job", False,
                 ("retry", "failed", "unexpected_response", True), id="200-undecodable"),
    pytest.param(200, {}, b"[" * 100_000, "job", False,
                 ("retry", "failed", "unexpected_response", True), id="200-deeply-nested"),
    pytest.param(200, {}, job(False, pad="x" * MAX_BODY), "job", False,
                 ("retry", "failed", "unexpected_response", True), id="200-huge"),
    pytest.param(204, {}, b"", "job", False,
                 ("retry", "failed", "unexpected_response", True), id="204-no-content"),
    pytest.param(400, {}, err("Missing required fields"), "job", False,
                 ("permanent", "failed", "bad_request", False), id="400-missing-fields"),
    pytest.param(400, {}, err("Invalid review_key format"), "job", False,
                 ("permanent", "failed", "bad_request", False), id="400-review-key-format"),
    pytest.param(400, {}, err("Invalid update_target"), "client", True,
                 ("permanent", "failed", "bad_request", False), id="400-update-target"),
    pytest.param(401, {}, err("Missing LOGIS-API-KEY header"), "job", False,
                 ("abort", "failed", "api_key_missing", False), id="401-missing-key-header"),
    pytest.param(401, {}, err("Incorrect review_key"), "job", False,
                 ("permanent", "failed", "incorrect_review_key", False),
                 id="401-incorrect-review-key"),
    pytest.param(401, {}, b"", "job", False,
                 ("permanent", "failed", "incorrect_review_key", False), id="401-no-body"),
    pytest.param(403, {}, err("Invalid or inactive LOGIS-API-KEY"), "job", False,
                 ("abort", "failed", "api_key_invalid", False), id="403-invalid-key"),
    pytest.param(403, {}, err("Permission denied (allow_public_track)"), "job", False,
                 ("abort", "failed", "permission_denied", False), id="403-permission"),
    pytest.param(403, {}, b"<html>Forbidden</html>", "job", False,
                 ("abort", "failed", "api_key_invalid", False), id="403-html-firewall"),
    pytest.param(404, {}, err("Job not found"), "job", False,
                 ("permanent", "failed", "job_not_found", False), id="404-job-not-found"),
    pytest.param(404, {}, err("Invalid job_id or review_key"), "job", False,
                 ("permanent", "failed", "incorrect_review_key", False),
                 id="404-says-review-key"),
    pytest.param(404, {}, b"<h1>Not Found</h1>", "job", False,
                 ("permanent", "failed", "job_not_found", False), id="404-html"),
    pytest.param(429, {"Retry-After": "30"}, err("Rate limit exceeded"), "job", False,
                 ("rate_limited", None, "rate_limited", True), id="429-hourly"),
    pytest.param(429, {}, err("Global daily limit exceeded"), "job", False,
                 ("rate_limited", None, "rate_limited", True), id="429-daily"),
    pytest.param(500, {}, err("boom"), "job", False,
                 ("retry", "failed", "server_error", True), id="500"),
    pytest.param(502, {}, b"<html>502 Bad Gateway</html>", "job", False,
                 ("retry", "failed", "server_error", True), id="502-html"),
    pytest.param(503, {}, b"", "client", True,
                 ("retry", "failed", "server_error", True), id="503-empty"),
    pytest.param(301, {"Location": "https://evil.example/x?job_id=1"}, b"", "job", False,
                 ("abort", "failed", "unexpected_response", False), id="301-redirect"),
    pytest.param(307, {}, b"", "job", False,
                 ("abort", "failed", "unexpected_response", False), id="307-no-location"),
    pytest.param(405, {}, err("Method not allowed"), "job", False,
                 ("permanent", "failed", "unexpected_response", False), id="405-other-4xx"),
    pytest.param(418, {}, b"teapot", "job", False,
                 ("permanent", "failed", "unexpected_response", False), id="418-non-json"),
]


@pytest.mark.parametrize(("status", "headers", "raw", "target", "desired", "expected"), TABLE)
def test_classification_table(status, headers, raw, target, desired, expected) -> None:
    v = classify_response(status, headers, raw, target=target, desired=desired)
    assert (v.kind, v.status, v.error_code, v.retryable) == expected
    assert v.http_status == status
    assert v.message is None or len(v.message) <= MAX_MESSAGE + 40


def test_ok_job_carries_the_job_id_the_client_and_the_confirmed_state() -> None:
    v = classify_response(200, {}, job(False), target="job", desired=False)
    assert (v.entity_id, v.client_id, v.confirmed) == (JOB, CLIENT, False)
    assert v.is_final and v.message is None


def test_ok_client_carries_the_end_client_id() -> None:
    v = classify_response(200, {}, client(True), target="client", desired=True)
    assert (v.entity_id, v.client_id, v.confirmed) == (CLIENT, CLIENT, True)


def test_a_nested_client_object_gives_its_id() -> None:
    raw = body({"job": {"id": 42, "do_notify_sms": True, "client": {"id": CLIENT}}})
    v = classify_response(200, {}, raw, target="job", desired=True)
    assert (v.entity_id, v.client_id) == ("42", CLIENT)


def test_mismatch_says_what_the_server_shows() -> None:
    v = classify_response(200, {}, job(True), target="job", desired=False)
    assert v.message == "server shows do_notify_sms=true" and v.confirmed is True
    assert v.entity_id == JOB and v.is_final


def test_429_keeps_the_raw_retry_after_and_spots_the_daily_limit() -> None:
    hourly = classify_response(429, {"retry-after": "120"}, err("Hourly rate limit exceeded"),
                               target="job", desired=False)
    assert hourly.retry_after == "120" and not hourly.daily_limit and not hourly.is_final
    daily = classify_response(429, httpx.Headers({"Retry-After": "3600"}),
                              err("User's daily limit reached"), target="job", desired=False)
    assert daily.retry_after == "3600" and daily.daily_limit


def test_error_message_comes_from_the_servers_error_text() -> None:
    v = classify_response(401, {}, err("Incorrect review_key"), target="job", desired=False)
    assert v.message == "Incorrect review_key"


def test_messages_never_echo_a_review_key_or_a_token() -> None:
    text = f"Incorrect review_key {REVIEW} ({REVIEW.replace('-', '').upper()}) for key sk_live_" \
           "9f8e7d6c5b4a39281706f5e4d3"
    v = classify_response(401, {}, err(text), target="job", desired=False)
    assert REVIEW not in v.message and "9f8e7d6c5b4a" not in v.message
    assert v.message.count("<uuid>") == 2 and "<redacted>" in v.message


def test_long_words_without_digits_are_not_mistaken_for_secrets() -> None:
    v = classify_response(403, {}, err("permission_denied_for_allow_public_track"),
                          target="job", desired=False)
    assert v.message == "permission_denied_for_allow_public_track"


def test_long_error_texts_are_cut_to_one_short_line() -> None:
    v = classify_response(500, {}, err("line\n" * 500), target="job", desired=False)
    assert len(v.message) == MAX_MESSAGE and "\n" not in v.message


def test_non_json_bodies_are_described_not_quoted() -> None:
    v = classify_response(502, {}, f"<html>{REVIEW}</html>".encode(), target="job", desired=False)
    assert v.message == "HTTP 502 (non-JSON body)"
    huge = classify_response(200, {}, b"x" * (MAX_BODY + 1), target="job", desired=False)
    assert "over the" in huge.message


def test_an_html_404_hints_at_the_base_url() -> None:
    v = classify_response(404, {}, b"<h1>Not Found</h1>", target="job", desired=False)
    assert "--base-url" in v.message


def test_a_redirect_names_only_the_host_it_was_not_followed_to() -> None:
    v = classify_response(302, {"Location": "https://other.example/login?next=/api"}, b"",
                          target="job", desired=False)
    assert v.message == "redirect (HTTP 302) to other.example not followed; check --base-url"


# --- the track endpoint ---------------------------------------------------------------------


def track(job_state: object, client_state: object = True) -> bytes:
    return body({"job_track": {
        "job": {"id": JOB, "status": "delivered", "do_notify_sms": job_state, "client": CLIENT},
        "client": {"id": CLIENT, "do_notify_sms": client_state}, "store": {}, "provider": None,
    }})


def test_track_returns_the_job_and_client_states() -> None:
    r = classify_track(200, {}, track(False, True))
    assert r.verdict.kind == "ok" and r.verdict.status is None
    assert (r.verdict.entity_id, r.verdict.client_id) == (JOB, CLIENT)
    assert (r.state("job"), r.state("client")) == (False, True)


def test_track_without_a_client_state_knows_only_the_job() -> None:
    raw = body({"job_track": {"job": {"id": JOB, "do_notify_sms": True, "client": CLIENT}}})
    r = classify_track(200, {}, raw)
    assert (r.state("job"), r.state("client"), r.verdict.client_id) == (True, None, CLIENT)


@pytest.mark.parametrize(
    ("status", "raw", "kind", "code"),
    [
        pytest.param(200, body({"job_track": {}}), "retry", "unexpected_response", id="no-job"),
        pytest.param(200, b"<html/>", "retry", "unexpected_response", id="html"),
        pytest.param(404, err("Job not found"), "permanent", "job_not_found", id="404"),
        pytest.param(403, err("Permission denied"), "abort", "permission_denied", id="403"),
        pytest.param(401, err("Missing LOGIS-API-KEY header"), "abort", "api_key_missing",
                     id="401"),
        pytest.param(429, err("Too many requests"), "rate_limited", "rate_limited", id="429"),
        pytest.param(500, b"", "retry", "server_error", id="500"),
    ],
)
def test_track_errors_follow_the_same_table(status, raw, kind, code) -> None:
    r = classify_track(status, {}, raw)
    assert (r.verdict.kind, r.verdict.error_code) == (kind, code)
    assert r.state("job") is None


# --- exceptions -----------------------------------------------------------------------------

REQUEST = httpx.Request("PUT", "https://app.logisapp.ca/api/apikeys/toggle_sms_notifications")


@pytest.mark.parametrize(
    ("exc", "kind", "code"),
    [
        pytest.param(httpx.ConnectTimeout("t", request=REQUEST), "retry", "timeout",
                     id="connect-timeout"),
        pytest.param(httpx.ReadTimeout("t", request=REQUEST), "retry", "timeout",
                     id="read-timeout"),
        pytest.param(httpx.WriteTimeout("t", request=REQUEST), "retry", "timeout",
                     id="write-timeout"),
        pytest.param(httpx.PoolTimeout("t", request=REQUEST), "retry", "timeout",
                     id="pool-timeout"),
        pytest.param(TimeoutError(), "retry", "timeout", id="builtin-timeout"),
        pytest.param(httpx.ConnectError("refused", request=REQUEST), "retry", "network_error",
                     id="connect-error"),
        pytest.param(httpx.ReadError("reset", request=REQUEST), "retry", "network_error",
                     id="read-error"),
        pytest.param(httpx.WriteError("broken pipe", request=REQUEST), "retry", "network_error",
                     id="write-error"),
        pytest.param(httpx.CloseError("x", request=REQUEST), "retry", "network_error",
                     id="close-error"),
        pytest.param(httpx.RemoteProtocolError("server disconnected", request=REQUEST), "retry",
                     "network_error", id="remote-protocol-error"),
        pytest.param(httpx.ProxyError("proxy", request=REQUEST), "retry", "network_error",
                     id="proxy-error"),
        pytest.param(ConnectionResetError(104, "reset"), "retry", "network_error",
                     id="os-connection-reset"),
        pytest.param(httpx.DecodingError("bad gzip", request=REQUEST), "retry",
                     "unexpected_response", id="decoding-error"),
        pytest.param(httpx.LocalProtocolError("bad header", request=REQUEST), "permanent",
                     "unexpected_response", id="local-protocol-error"),
        pytest.param(httpx.TooManyRedirects("x", request=REQUEST), "permanent",
                     "unexpected_response", id="too-many-redirects"),
    ],
)
def test_classify_exception(exc: BaseException, kind: str, code: str) -> None:
    v = classify_exception(exc)
    assert (v.kind, v.error_code, v.http_status) == (kind, code, None)
    assert v.retryable is (kind == "retry") and v.status == "failed"


def wrapped(cause: BaseException, outer: type[httpx.TransportError] = httpx.ConnectError
            ) -> httpx.TransportError:
    """What httpx raises: its own error, caused by httpcore's, caused by the ssl/socket one."""
    middle = httpcore.ConnectError(str(cause))
    middle.__cause__ = cause
    error = outer(str(cause), request=REQUEST)
    error.__cause__ = middle
    return error


def verify_error(code: int, message: str) -> ssl.SSLCertVerificationError:
    error = ssl.SSLCertVerificationError(1, f"certificate verify failed: {message}")
    error.verify_code, error.verify_message = code, message
    return error


def ssl_error(reason: str, cls: type[ssl.SSLError] = ssl.SSLError) -> ssl.SSLError:
    error = cls(1, f"[SSL: {reason}] {reason.lower()}")
    error.reason = reason
    return error


@pytest.mark.parametrize(("cause", "code"), [
    pytest.param(verify_error(20, "unable to get local issuer certificate"), "tls_untrusted",
                 id="unknown-ca"),
    pytest.param(verify_error(19, "self-signed certificate in certificate chain"),
                 "tls_untrusted", id="self-signed"),
    pytest.param(verify_error(10, "certificate has expired"), "tls_untrusted", id="expired"),
    pytest.param(verify_error(62, "Hostname mismatch"), "tls_hostname_mismatch", id="name"),
    pytest.param(verify_error(64, "IP address mismatch"), "tls_hostname_mismatch", id="ip"),
    pytest.param(ssl_error("WRONG_VERSION_NUMBER"), "tls_error", id="not-tls"),
    pytest.param(ssl_error("TLSV1_ALERT_PROTOCOL_VERSION"), "tls_error", id="protocol"),
    pytest.param(socket.gaierror(socket.EAI_NONAME, "Name or service not known"),
                 "dns_failure", id="nxdomain"),
])
def test_a_connection_that_cannot_work_stops_the_run_with_its_code(cause: BaseException,
                                                                   code: str) -> None:
    v = classify_exception(wrapped(cause))
    assert (v.kind, v.status, v.error_code, v.retryable, v.http_status) == (
        "abort", "failed", code, True, None)
    assert v.is_final and code in vocab.CONNECTION_CODES


@pytest.mark.parametrize("cause", [
    pytest.param(ssl_error("UNEXPECTED_EOF_WHILE_READING", ssl.SSLEOFError), id="tls-eof"),
    pytest.param(ssl_error("SOME_ALERT"), id="unknown-tls-reason"),
    pytest.param(socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution"),
                 id="resolver-silent"),
    pytest.param(ConnectionRefusedError(111, "refused"), id="refused"),
    pytest.param(ConnectionResetError(104, "reset"), id="reset"),
])
def test_an_ambiguous_failure_stays_a_transient_network_error(cause: BaseException) -> None:
    v = classify_exception(wrapped(cause))
    assert (v.kind, v.error_code, v.retryable) == ("retry", "network_error", True)


@pytest.mark.parametrize(("text", "kind", "code"), [
    ("407 Proxy Authentication Required", "abort", "proxy_auth_required"),
    ("401 Unauthorized", "abort", "proxy_auth_required"),
    ("403 Forbidden", "abort", "proxy_error"),
    ("405 Method Not Allowed", "abort", "proxy_error"),
    ("502 Bad Gateway", "retry", "network_error"),
    ("500 Unable to connect", "retry", "network_error"),
    ("garbled", "retry", "network_error"),
])
def test_a_proxys_answer_to_connect(text: str, kind: str, code: str) -> None:
    cause = httpcore.ProxyError(text)
    error = httpx.ProxyError(text, request=REQUEST)
    error.__cause__ = cause
    v = classify_exception(error)
    assert (v.kind, v.error_code) == (kind, code)


def test_a_forwarding_proxys_407_response_stops_the_run() -> None:
    v = classify_error(407, {}, b"<html>auth</html>")
    assert (v.kind, v.error_code, v.http_status) == ("abort", "proxy_auth_required", 407)


def test_programming_errors_are_not_hidden_as_row_outcomes() -> None:
    with pytest.raises(KeyError):
        classify_exception(KeyError("bug"))


def test_verdict_is_frozen() -> None:
    v = Verdict("ok", "updated", None, None, None, 200)
    with pytest.raises(AttributeError):
        v.kind = "retry"  # type: ignore[misc]
