"""The sandbox's HTTP behaviour, driven the same way in-process (httpx.ASGITransport) and over a
real loopback socket (uvicorn in a thread): Logis' error table and rule order, the budget, the
daily limit, Retry-After, faults, and the /_sandbox introspection routes."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable, Iterator
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
import pytest

from batch_toggle.sandbox import SandboxConfig, SandboxThread, create_app
from batch_toggle.sandbox.config import DEFAULT_REQUEST_LOG
from batch_toggle.sandbox.world import SeedJob, World

TOGGLE = "/api/apikeys/toggle_sms_notifications"
TRACK = "/api/apikeys/track"
KEY = "sandbox-key"
INACTIVE = "inactive-key"
NO_PERM = "no-permission-key"
UNKNOWN_UUID = "0f0f0f0f-0f0f-4f0f-8f0f-0f0f0f0f0f0f"


class FakeClock:
    """The budget's clock, moved by hand."""

    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


class Api:
    """One sandbox and an httpx.AsyncClient to it, driven synchronously from a test."""

    def __init__(self, mode: str, app: Any, client: httpx.AsyncClient,
                 runner: asyncio.Runner) -> None:
        self.mode, self.app, self.client, self._runner = mode, app, client, runner

    @property
    def world(self) -> World:
        return self.app.state.world

    def job(self, i: int = 0) -> SeedJob:
        return self.world.seed.jobs[i]

    def run(self, coro: Any) -> Any:
        return self._runner.run(coro)

    def put(self, body: Any = None, key: str | None = KEY, *, raw: bytes | None = None,
            timeout: float | None = None) -> httpx.Response:
        headers = {} if key is None else {"LOGIS-API-KEY": key}
        if raw is None:
            raw = json.dumps(body).encode()
        kwargs: dict[str, Any] = {"content": raw, "headers": headers}
        if timeout is not None:
            kwargs["timeout"] = timeout
        return self.run(self.client.put(TOGGLE, **kwargs))

    def toggle(self, i: int = 0, state: str = "false", target: str = "job", key: str | None = KEY,
               **overrides: Any) -> httpx.Response:
        job = self.job(i)
        body = {"job_id": job.job_id, "review_key": job.review_key, "do_notify_sms": state,
                "update_target": target}
        body.update(overrides)
        return self.put(body, key)

    def track(self, job_id: str | None, key: str | None = KEY) -> httpx.Response:
        headers = {} if key is None else {"LOGIS-API-KEY": key}
        params = {} if job_id is None else {"job_id": job_id}
        return self.run(self.client.get(TRACK, params=params, headers=headers))

    def sandbox(self, method: str, path: str, body: Any = None) -> Any:
        response = self.run(self.client.request(method, f"/_sandbox/{path}", json=body))
        return response.status_code, response.json()


@pytest.fixture(scope="module")
def server_pool(sandbox_seed) -> Iterator[Callable[..., tuple[Any, str]]]:
    """Real servers shared by the tests of this module, one per config, reset before each use:
    stopping a uvicorn server costs 0.2 s, which 70 tests would otherwise pay."""
    servers: dict[str, SandboxThread] = {}

    def get(config: SandboxConfig, clock: Callable[[], float] | None) -> tuple[Any, str]:
        key = repr(config)
        if key not in servers:
            servers[key] = SandboxThread(create_app(config, seed=sandbox_seed))
            servers[key].start()
        served = servers[key]
        served.app.state.world.clock = clock or time.monotonic
        served.app.state.world.reset()
        return served.app, served.base_url

    yield get
    for served in servers.values():
        served.request_stop()
    for served in servers.values():
        served.stop()


@pytest.fixture(params=["inproc", "socket"])
def make_api(
    request, make_sandbox_app, sandbox_config, server_pool
) -> Iterator[Callable[..., Api]]:
    """Factory: make_api(clock=None, **config) -> Api, once per mode."""
    runner = asyncio.Runner()
    clients: list[httpx.AsyncClient] = []
    defaults = {"inactive_keys": (INACTIVE,), "no_permission_keys": (NO_PERM,)}

    def make(clock: Callable[[], float] | None = None, **overrides: Any) -> Api:
        config = {**defaults, **overrides}
        if request.param == "inproc":
            app = make_sandbox_app(clock=clock, **config)
            client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                       base_url="http://sandbox.test", timeout=5.0)
        else:
            app, base_url = server_pool(sandbox_config(**config), clock)
            client = httpx.AsyncClient(base_url=base_url, timeout=5.0)
        clients.append(client)
        return Api(request.param, app, client, runner)

    yield make
    for client in clients:
        runner.run(client.aclose())
    runner.close()


@pytest.fixture
def api(make_api) -> Api:
    return make_api()


def error_of(response: httpx.Response) -> str:
    return response.json()["error"]


# --- 200 ----------------------------------------------------------------------------------


def test_a_job_update_answers_the_job_and_changes_only_the_job(api):
    job = next(j for j in api.world.seed.jobs if j.do_notify_sms)
    i = api.world.seed.jobs.index(job)
    client_before = api.world.clients[job.client_id].do_notify_sms
    r = api.toggle(i, "false", "job")
    assert r.status_code == 200
    body = r.json()
    assert set(body) == {"job"}
    assert body["job"]["id"] == job.job_id
    assert body["job"]["do_notify_sms"] is False
    assert body["job"]["client"] == job.client_id
    assert "status" in body["job"]
    assert job.review_key not in r.text
    assert api.world.jobs[job.job_id].do_notify_sms is False
    assert api.world.clients[job.client_id].do_notify_sms is client_before


def test_a_client_update_changes_the_default_but_not_the_job(api):
    job = api.job(3)
    r = api.toggle(3, "false", "client")
    assert r.status_code == 200
    assert r.json() == {"end_client": {"id": job.client_id, "do_notify_sms": False,
                                       "address_detail": {}}}
    assert api.world.clients[job.client_id].do_notify_sms is False
    assert api.world.jobs[job.job_id].do_notify_sms is job.do_notify_sms
    assert api.toggle(3, "true", "client").json()["end_client"]["do_notify_sms"] is True


def test_the_same_toggle_twice_is_idempotent(api):
    first, second = api.toggle(5, "false"), api.toggle(5, "false")
    assert first.status_code == second.status_code == 200
    assert first.json() == second.json()


def test_ids_are_matched_in_any_case(api):
    job = api.job(2)
    r = api.put({"job_id": job.job_id.upper(), "review_key": job.review_key.upper(),
                 "do_notify_sms": "true", "update_target": "job"})
    assert r.status_code == 200 and r.json()["job"]["id"] == job.job_id


# --- the error table ----------------------------------------------------------------------

GOOD = object()  # placeholder: the job's real value


def _body(job: SeedJob, **fields: Any) -> dict[str, Any]:
    body = {"job_id": job.job_id, "review_key": job.review_key, "do_notify_sms": "false",
            "update_target": "job"}
    for k, v in fields.items():
        if v is None:
            body.pop(k)
        else:
            body[k] = v
    return body


ERROR_TABLE = [
    # (id, key, body fields / raw body, status, error)
    ("missing-key-header", None, {}, 401, "Missing LOGIS-API-KEY header"),
    ("empty-key-header", "", {}, 401, "Missing LOGIS-API-KEY header"),
    ("unknown-key", "not-a-key", {}, 403, "Invalid or inactive LOGIS-API-KEY"),
    ("inactive-key", INACTIVE, {}, 403, "Invalid or inactive LOGIS-API-KEY"),
    ("no-permission", NO_PERM, {}, 403, "Permission denied"),
    ("body-not-json", KEY, b"job_id=1&review_key=2", 400, "Invalid JSON body"),
    ("body-json-array", KEY, b"[1, 2]", 400, "Invalid JSON body"),
    ("body-empty", KEY, b"", 400, "Invalid JSON body"),
    ("missing-job_id", KEY, {"job_id": None}, 400, "Missing required fields"),
    ("missing-review_key", KEY, {"review_key": None}, 400, "Missing required fields"),
    ("missing-do_notify_sms", KEY, {"do_notify_sms": None}, 400, "Missing required fields"),
    ("missing-update_target", KEY, {"update_target": None}, 400, "Missing required fields"),
    ("empty-review_key", KEY, {"review_key": ""}, 400, "Missing required fields"),
    ("review_key-not-uuid", KEY, {"review_key": "abc"}, 400, "Invalid review_key format"),
    ("review_key-braces", KEY, {"review_key": "{%s}"}, 400, "Invalid review_key format"),
    ("review_key-32-hex", KEY, {"review_key": "hex"}, 400, "Invalid review_key format"),
    ("review_key-number", KEY, {"review_key": 12}, 400, "Invalid review_key format"),
    ("update_target-all", KEY, {"update_target": "all"}, 400, "Invalid update_target"),
    ("update_target-Job", KEY, {"update_target": "Job"}, 400, "Invalid update_target"),
    ("do_notify_sms-yes", KEY, {"do_notify_sms": "yes"}, 400, "Invalid do_notify_sms"),
    ("do_notify_sms-bool", KEY, {"do_notify_sms": False}, 400, "Invalid do_notify_sms"),
    ("do_notify_sms-False", KEY, {"do_notify_sms": "False"}, 400, "Invalid do_notify_sms"),
    ("unknown-job", KEY, {"job_id": UNKNOWN_UUID}, 404, "Job not found"),
    ("job_id-not-uuid", KEY, {"job_id": "12345"}, 404, "Job not found"),
    ("incorrect-review_key", KEY, {"review_key": UNKNOWN_UUID}, 401, "Incorrect review_key"),
]


@pytest.mark.parametrize(("key", "fields", "status", "error"),
                         [pytest.param(*row[1:], id=row[0]) for row in ERROR_TABLE])
def test_every_documented_error(api, key, fields, status, error):
    job = api.job(0)
    if isinstance(fields, bytes):
        r = api.put(key=key, raw=fields)
    else:
        fields = dict(fields)
        if fields.get("review_key") == "{%s}":
            fields["review_key"] = "{" + job.review_key + "}"
        elif fields.get("review_key") == "hex":
            fields["review_key"] = uuid.UUID(job.review_key).hex
        r = api.put(_body(job, **fields), key=key)
    assert (r.status_code, r.json()) == (status, {"error": error})
    assert api.world.state() == World(api.world.config, api.world.seed, time.monotonic).state()


@pytest.mark.parametrize(
    ("key", "fields", "status", "error"),
    [
        pytest.param(None, {"review_key": "bad", "update_target": "x"}, 401,
                     "Missing LOGIS-API-KEY header", id="no-key-beats-bad-body"),
        pytest.param(INACTIVE, {"review_key": "bad"}, 403, "Invalid or inactive LOGIS-API-KEY",
                     id="inactive-key-beats-bad-body"),
        pytest.param(NO_PERM, {"job_id": UNKNOWN_UUID}, 403, "Permission denied",
                     id="permission-beats-unknown-job"),
        pytest.param(KEY, {"job_id": None, "update_target": "x"}, 400,
                     "Missing required fields", id="missing-beats-bad-target"),
        pytest.param(KEY, {"review_key": "bad", "update_target": "x"}, 400,
                     "Invalid review_key format", id="review-key-format-beats-target"),
        pytest.param(KEY, {"update_target": "x", "do_notify_sms": "x"}, 400,
                     "Invalid update_target", id="target-beats-state"),
        pytest.param(KEY, {"job_id": UNKNOWN_UUID, "update_target": "x"}, 400,
                     "Invalid update_target", id="bad-body-beats-unknown-job"),
        pytest.param(KEY, {"job_id": UNKNOWN_UUID, "review_key": UNKNOWN_UUID}, 404,
                     "Job not found", id="unknown-job-beats-review-key"),
    ],
)
def test_rule_order(api, key, fields, status, error):
    r = api.put(_body(api.job(0), **fields), key=key)
    assert (r.status_code, error_of(r)) == (status, error)


def test_over_budget_beats_a_bad_body(make_api):
    api = make_api(hourly_limit=1)
    assert api.toggle(0).status_code == 200
    r = api.put({"nonsense": True})
    assert (r.status_code, error_of(r)) == (429, "Rate limit exceeded")
    assert api.put(key=INACTIVE, raw=b"{}").status_code == 403  # keys are checked first


# --- track --------------------------------------------------------------------------------


def test_track_shows_job_and_client_without_the_review_key(api):
    job = api.job(7)
    api.toggle(7, "false", "client")
    r = api.track(job.job_id.upper())
    assert r.status_code == 200
    track = r.json()["job_track"]
    assert track["job"]["id"] == job.job_id
    assert track["job"]["do_notify_sms"] is job.do_notify_sms
    assert track["job"]["client"] == job.client_id
    assert track["client"] == {"id": job.client_id, "do_notify_sms": False,
                               "address_detail": {}}
    assert job.review_key not in r.text and "review_key" not in r.text


@pytest.mark.parametrize(
    ("key", "job_id", "status", "error"),
    [
        pytest.param(None, "job", 401, "Missing LOGIS-API-KEY header", id="missing-key"),
        pytest.param("nope", "job", 403, "Invalid or inactive LOGIS-API-KEY", id="bad-key"),
        pytest.param(INACTIVE, "job", 403, "Invalid or inactive LOGIS-API-KEY", id="inactive"),
        pytest.param(NO_PERM, "job", 403, "Permission denied", id="no-permission"),
        pytest.param(KEY, None, 400, "Missing required fields", id="no-job_id"),
        pytest.param(KEY, UNKNOWN_UUID, 404, "Job not found", id="unknown-job"),
        pytest.param(KEY, "not-a-uuid", 404, "Job not found", id="malformed-job"),
    ],
)
def test_track_errors(api, key, job_id, status, error):
    r = api.track(api.job(0).job_id if job_id == "job" else job_id, key=key)
    assert (r.status_code, error_of(r)) == (status, error)


# --- budget -------------------------------------------------------------------------------


def test_exactly_n_per_window_then_429_with_a_retry_after_that_works(make_api):
    clock = FakeClock()
    api = make_api(clock=clock, hourly_limit=3, window=60.0)
    for i in range(3):
        assert api.toggle(i).status_code == 200
        clock.advance(1.0)  # sent at 1000, 1001, 1002
    clock.advance(7.5)  # now 1010.5
    refused = api.toggle(3)
    assert (refused.status_code, error_of(refused)) == (429, "Rate limit exceeded")
    # Four counted requests (the 429 too): two must leave; 1001 leaves at 1061 -> 50.5 s.
    assert refused.headers["Retry-After"] == "51"
    clock.advance(50.4)  # 1060.9: too early, refused again, and this 429 counts as well
    early = api.toggle(3)
    assert (early.status_code, early.headers["Retry-After"]) == (429, "2")  # 1002 leaves 1062
    clock.advance(2.0)
    assert api.toggle(3).status_code == 200


def test_retry_after_honoured_exactly_is_accepted(make_api):
    clock = FakeClock(500.25)
    api = make_api(clock=clock, hourly_limit=2, window=30.0)
    assert api.toggle(0).status_code == api.toggle(1).status_code == 200
    clock.advance(12.0)
    refused = api.toggle(2)
    clock.advance(int(refused.headers["Retry-After"]))
    assert api.toggle(2).status_code == 200


def test_429s_do_not_count_when_count_rejected_is_off(make_api):
    clock = FakeClock()
    api = make_api(clock=clock, hourly_limit=2, window=10.0, count_rejected=False)
    api.toggle(0), api.toggle(1)
    clock.advance(4.0)
    assert api.toggle(2).headers["Retry-After"] == "6"
    clock.advance(6.0)  # the first request leaves exactly now
    assert api.toggle(2).status_code == 200


def test_every_request_that_passes_the_key_checks_counts(make_api):
    api = make_api(clock=FakeClock(), hourly_limit=4)
    assert api.put({"job_id": UNKNOWN_UUID}).status_code == 400
    assert api.toggle(0, job_id=UNKNOWN_UUID).status_code == 404
    assert api.toggle(0, review_key=UNKNOWN_UUID).status_code == 401
    assert api.track(api.job(0).job_id).status_code == 200
    assert api.toggle(0).status_code == 429
    counted = [r["counted"] for r in api.world.requests]
    assert counted == [True] * 5


def test_refused_keys_and_sandbox_routes_do_not_count(make_api):
    api = make_api(clock=FakeClock(), hourly_limit=1)
    assert api.toggle(0, key=None).status_code == 401
    assert api.toggle(0, key="nope").status_code == 403
    assert api.toggle(0, key=INACTIVE).status_code == 403
    assert api.toggle(0, key=NO_PERM).status_code == 403
    for _ in range(3):
        api.sandbox("GET", "state")
        api.sandbox("GET", "requests")
    assert api.toggle(0).status_code == 200
    assert api.toggle(0).status_code == 429


def test_each_key_has_its_own_window(make_api):
    api = make_api(clock=FakeClock(), api_keys=("key-a", "key-b"), hourly_limit=1)
    assert api.toggle(0, key="key-a").status_code == 200
    assert api.toggle(0, key="key-a").status_code == 429
    assert api.toggle(0, key="key-b").status_code == 200


def test_the_daily_limit_is_per_user_and_says_daily(make_api):
    clock = FakeClock()
    api = make_api(clock=clock, api_keys=("key-a", "key-b"), hourly_limit=100, daily_limit=3)
    assert api.toggle(0, key="key-a").status_code == 200
    clock.advance(100.0)
    assert api.toggle(1, key="key-b").status_code == 200
    assert api.track(api.job(2).job_id, key="key-a").status_code == 200
    clock.advance(50.0)
    refused = api.toggle(3, key="key-b")
    assert refused.status_code == 429
    assert "daily" in error_of(refused)
    # key-b's request at +100 s must leave the day: 86400 - 50 s from now.
    assert refused.headers["Retry-After"] == str(86400 - 50)
    assert api.world.jobs[api.job(3).job_id].do_notify_sms is api.job(3).do_notify_sms


def test_hourly_429_does_not_say_daily(make_api):
    api = make_api(clock=FakeClock(), hourly_limit=1, daily_limit=100)
    api.toggle(0)
    assert "daily" not in error_of(api.toggle(0))


def test_retry_after_as_http_date_or_none(make_api):
    clock = FakeClock()
    dated = make_api(clock=clock, hourly_limit=1, window=120.0, retry_after_style="http-date")
    dated.toggle(0)
    clock.advance(20.0)
    header = dated.toggle(0).headers["Retry-After"]
    ahead = parsedate_to_datetime(header).timestamp() - time.time()
    assert header.endswith("GMT")
    # limit 1 and the 429 counts: the 429 itself must leave, 120 s from now (whole seconds up)
    assert 119.5 <= ahead <= 122.0
    quiet = make_api(clock=FakeClock(), hourly_limit=1, retry_after_style="none")
    quiet.toggle(0)
    refused = quiet.toggle(0)
    assert refused.status_code == 429 and "Retry-After" not in refused.headers


def test_limits_and_keys_change_at_runtime(make_api):
    api = make_api(clock=FakeClock())
    status, limits = api.sandbox("POST", "limits", {"hourly_limit": 1})
    assert status == 200 and limits["hourly_limit"] == 1
    assert api.toggle(0).status_code == 200
    assert api.toggle(0).status_code == 429
    assert api.sandbox("POST", "limits", {"hourly_limit": 0})[0] == 400
    assert api.sandbox("POST", "limits", {"speed": 1})[0] == 400
    api.sandbox("POST", "keys", {"key": "new-key"})
    assert api.toggle(0, key="new-key").status_code == 200
    api.sandbox("POST", "keys", {"key": "new-key", "active": False})
    assert api.toggle(0, key="new-key").status_code == 403


# --- faults -------------------------------------------------------------------------------


def test_scripted_503s_then_normal_service(make_api):
    api = make_api()
    job = api.job(0)
    api.world.faults.update({"scripted": {job.job_id: ["503", "503"]}})
    statuses = [api.toggle(0, "false").status_code for _ in range(3)]
    assert statuses == [503, 503, 200]
    assert api.toggle(1).status_code == 200  # other jobs untouched
    log = api.world.requests
    assert [(r["status"], r["fault"]) for r in log[:3]] == [(503, "503"), (503, "503"),
                                                             (200, None)]
    assert all(r["counted"] for r in log)


def test_a_scripted_fault_is_not_spent_on_a_refused_request(make_api):
    api = make_api()
    api.world.faults.update({"scripted": {api.job(0).job_id: ["500"]}})
    assert api.toggle(0, key=None).status_code == 401
    assert api.toggle(0).status_code == 500
    assert api.toggle(0).status_code == 200


def test_error_faults_change_nothing_and_answer_json_or_html(make_api):
    api = make_api(scripted={"*": ["502", "html500", "429:7"]})
    job = api.job(0)
    json_error = api.toggle(0, "false" if job.do_notify_sms else "true")
    assert (json_error.status_code, json_error.json()) == (502, {"error": "Bad Gateway"})
    html = api.toggle(0)
    assert html.status_code == 500
    assert html.headers["content-type"].startswith("text/html")
    assert "<html>" in html.text
    throttled = api.toggle(0)
    assert (throttled.status_code, throttled.headers["Retry-After"]) == (429, "7")
    assert api.world.jobs[job.job_id].do_notify_sms is job.do_notify_sms


def test_random_errors_follow_the_rate_and_the_html_share(make_api):
    api = make_api(error_rate=1.0, error_html_share=0.0)
    statuses = {api.toggle(i).status_code for i in range(8)}
    assert statuses <= {500, 502, 503, 504}
    assert api.toggle(0).headers["content-type"] == "application/json"
    api.world.faults.update({"error_html_share": 1.0})
    assert api.toggle(0).headers["content-type"].startswith("text/html")


def test_random_faults_are_reproducible(make_api):
    def statuses(api: Api) -> list[int]:
        return [api.toggle(i % 5).status_code for i in range(30)]

    first = statuses(make_api(error_rate=0.5, fault_seed=3))
    assert first == statuses(make_api(error_rate=0.5, fault_seed=3))
    assert {200} < set(first)


@pytest.mark.parametrize("token", ["reset", "reset-after"])
def test_a_reset_drops_the_connection_without_a_response(make_api, token):
    api = make_api()
    job = api.job(0)
    target = not job.do_notify_sms
    api.world.faults.update({"scripted": {job.job_id: [token]}})
    with pytest.raises(httpx.TransportError):
        api.toggle(0, "true" if target else "false")
    applied = token == "reset-after"
    assert api.world.jobs[job.job_id].do_notify_sms is (target if applied else job.do_notify_sms)
    entry = api.world.requests[-1]
    assert (entry["status"], entry["fault"], entry["counted"]) == (None, token, True)
    assert api.toggle(1).status_code == 200  # the sandbox goes on serving


def test_random_resets(make_api):
    api = make_api(reset_rate=1.0)
    for i in range(3):
        with pytest.raises(httpx.TransportError):
            api.toggle(i)


def test_a_timeout_applies_the_change_but_the_reply_does_not_come_in_time(make_api):
    api = make_api()
    job = api.job(0)
    # On a socket the client gives up first (a generous stall keeps a loaded machine honest);
    # in-process the sandbox itself raises after the stall, so keep that one short.
    delay = 2.0 if api.mode == "socket" else 0.3
    api.world.faults.update({"scripted": {job.job_id: ["timeout"]}, "timeout_delay_s": delay})
    target = not job.do_notify_sms
    started = time.monotonic()
    with pytest.raises(httpx.TimeoutException):
        api.put(_body(job, do_notify_sms="true" if target else "false"), timeout=0.1)
    elapsed = time.monotonic() - started
    assert api.world.jobs[job.job_id].do_notify_sms is target
    if api.mode == "socket":
        assert 0.1 <= elapsed < delay  # the client's own timeout fired
    else:
        assert elapsed >= delay  # in-process the sandbox raises after the delay
    assert api.world.requests[-1]["fault"] == "timeout"


def test_a_patient_client_gets_the_late_reply(sandbox_server):
    """On a socket only: in-process a timeout always ends in ReadTimeout."""
    sandbox_server.set_faults(timeout_rate=1.0, timeout_delay_s=0.2)
    job = sandbox_server.jobs[0]
    started = time.monotonic()
    reply = httpx.put(f"{sandbox_server.base_url}{TOGGLE}", json=_body(job),
                      headers={"LOGIS-API-KEY": KEY}, timeout=5.0)
    assert reply.status_code == 200
    assert time.monotonic() - started >= 0.2
    assert sandbox_server.requests()[-1]["status"] == 200


def test_latency_fixed_and_range(make_api):
    api = make_api(latency_ms=120)
    started = time.monotonic()
    api.toggle(0)
    assert time.monotonic() - started >= 0.12
    api.world.faults.update({"latency_ms": [30, 40]})
    started = time.monotonic()
    api.track(api.job(0).job_id)
    assert time.monotonic() - started >= 0.03


def test_requests_in_flight_together_get_distinct_seqs_matching_the_log(make_api):
    """Found by exploratory testing: seq was taken when a request arrived, before its latency,
    so four requests in flight at once all read seq 0. It is its place in the log now."""
    api = make_api(latency_ms=[20, 40])

    async def four() -> list[httpx.Response]:
        return list(await asyncio.gather(*(api.client.get(
            TRACK, params={"job_id": api.job(i).job_id}, headers={"LOGIS-API-KEY": KEY})
            for i in range(4))))

    assert [r.status_code for r in api.run(four())] == [200] * 4
    log = api.sandbox("GET", "requests")[1]["requests"]
    assert [r["seq"] for r in log] == [0, 1, 2, 3]
    assert [r["seq"] for r in api.sandbox("GET", "requests?since=2")[1]["requests"]] == [2, 3]


def test_faults_change_at_runtime_through_the_api(make_api):
    api = make_api()
    job = api.job(0)
    status, settings = api.sandbox("POST", "faults", {"scripted": {job.job_id: ["503", "ok"]}})
    assert status == 200 and settings["scripted"] == {job.job_id: ["503", "ok"]}
    assert api.toggle(0).status_code == 503
    assert api.sandbox("GET", "faults")[1]["scripted"] == {job.job_id: ["ok"]}
    status, body = api.sandbox("POST", "faults", {"scripted": {job.job_id: ["explode"]}})
    assert status == 400 and "unknown fault" in body["error"]
    assert api.sandbox("POST", "faults", {"error_rate": 3})[0] == 400
    assert api.sandbox("POST", "faults", [1])[0] == 400
    assert api.toggle(0).status_code == 200


# --- introspection and reset --------------------------------------------------------------


def test_state_lists_jobs_and_clients_without_review_keys(api):
    api.toggle(0, "false", "job")
    status, state = api.sandbox("GET", "state")
    assert status == 200
    assert len(state["jobs"]) == 400 and len(state["clients"]) == 150
    assert set(state["jobs"][0]) == {"id", "client", "do_notify_sms"}
    assert set(state["clients"][0]) == {"id", "do_notify_sms"}
    text = json.dumps(state)
    assert not any(j.review_key in text for j in api.world.seed.jobs[:50])
    first = next(j for j in state["jobs"] if j["id"] == api.job(0).job_id)
    assert first["do_notify_sms"] is False


def test_the_request_log_records_every_request_but_no_secret(make_api):
    api = make_api(api_keys=("a-long-secret-key-1234",))
    api.toggle(0, "false", "client", key="a-long-secret-key-1234")
    api.toggle(1, key=None)
    api.track(api.job(2).job_id, key="a-long-secret-key-1234")
    status, body = api.sandbox("GET", "requests")
    log = body["requests"]
    assert [(r["method"], r["path"], r["status"]) for r in log] == [
        ("PUT", TOGGLE, 200), ("PUT", TOGGLE, 401), ("GET", TRACK, 200)]
    first = log[0]
    assert first["job_id"] == api.job(0).job_id
    assert (first["update_target"], first["do_notify_sms"]) == ("client", "false")
    assert first["key_hint"] == "...1234" and log[1]["key_hint"] is None
    assert log[1]["error"] == "Missing LOGIS-API-KEY header"
    assert isinstance(first["t"], float) and log[0]["t"] <= log[2]["t"]
    text = json.dumps(body)
    assert "a-long-secret-key" not in text and api.job(0).review_key not in text
    assert api.sandbox("GET", "requests?since=2")[1]["requests"] == log[2:]
    assert api.sandbox("GET", "requests?since=x")[0] == 400


def test_the_request_log_keeps_the_last_n_entries_and_counts_them_all(make_api):
    """A ring: a long rehearsal (or `run --sandbox`, in the client's own process) must not grow
    without bound. seq and ?since= stay absolute; the reply says how many entries asked for
    are gone, and the totals cover every request received."""
    api = make_api(request_log_limit=3, hourly_limit=4, clock=FakeClock())
    statuses = [api.toggle(i % 3).status_code for i in range(6)]
    assert statuses == [200, 200, 200, 200, 429, 429]
    assert [r["seq"] for r in api.world.requests] == [3, 4, 5]
    status, body = api.sandbox("GET", "requests")
    assert status == 200
    assert [r["seq"] for r in body["requests"]] == [3, 4, 5]
    assert (body["next"], body["missed"], body["dropped"], body["kept"]) == (6, 3, 3, 3)
    assert body["totals"] == {"requests": 6, "counted": 6,
                              "by_status": {"200": 4, "429": 2}}
    since = api.sandbox("GET", "requests?since=4")[1]
    assert ([r["seq"] for r in since["requests"]], since["missed"]) == ([4, 5], 0)
    since = api.sandbox("GET", "requests?since=1")[1]
    assert ([r["seq"] for r in since["requests"]], since["missed"]) == ([3, 4, 5], 2)
    assert api.sandbox("GET", "requests?since=9")[1]["requests"] == []


def test_reset_restores_the_seed_and_clears_logs_budgets_and_faults(make_api):
    api = make_api(clock=FakeClock(), hourly_limit=2)
    pristine = api.sandbox("GET", "state")[1]
    api.sandbox("POST", "faults", {"error_rate": 1.0})
    api.world.faults.update({"error_rate": 0.0})
    api.toggle(0, "false" if api.job(0).do_notify_sms else "true")
    api.toggle(1, "false", "client")
    assert api.toggle(2).status_code == 429
    assert api.sandbox("POST", "reset")[0] == 200
    assert api.sandbox("GET", "state")[1] == pristine
    assert api.sandbox("GET", "requests")[1] == {
        "requests": [], "next": 0, "missed": 0, "dropped": 0, "kept": DEFAULT_REQUEST_LOG,
        "totals": {"requests": 0, "counted": 0, "by_status": {}}}
    assert api.toggle(2).status_code == 200
    assert api.sandbox("GET", "faults")[1]["error_rate"] == 0.0


def test_health(api):
    assert api.sandbox("GET", "health") == (200, {"ok": True, "jobs": 400})
