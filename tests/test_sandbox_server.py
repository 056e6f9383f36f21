"""The sandbox on a real socket: the shared fixtures, the budget on a real clock, concurrency,
and the thread server's start/stop guarantees."""

from __future__ import annotations

import asyncio
import socket
import time

import httpx
import pytest

from batch_toggle.sandbox import SandboxServerError, SandboxThread, create_app, serve_in_thread

TOGGLE = "/api/apikeys/toggle_sms_notifications"


def body(job) -> dict[str, str]:
    return {"job_id": job.job_id, "review_key": job.review_key, "do_notify_sms": "false",
            "update_target": "job"}


def test_the_sandbox_server_fixture_drives_a_real_socket(sandbox_server):
    assert sandbox_server.base_url.startswith("http://127.0.0.1:")
    job = sandbox_server.jobs[0]
    headers = {"LOGIS-API-KEY": sandbox_server.api_key}
    sandbox_server.set_faults(scripted={job.job_id: ["503"]})
    with httpx.Client(base_url=sandbox_server.base_url) as http:
        assert http.put(TOGGLE, json=body(job), headers=headers).status_code == 503
        assert http.put(TOGGLE, json=body(job), headers=headers).status_code == 200
    assert sandbox_server.job_state(job.job_id) is False
    assert sandbox_server.client_state(job.client_id) is job.client_do_notify_sms
    assert [r["status"] for r in sandbox_server.requests()] == [503, 200]
    sandbox_server.set_limits(hourly_limit=1)
    sandbox_server.set_key("other", active=False)
    sandbox_server.reset()
    assert sandbox_server.requests() == []
    assert sandbox_server.job_state(job.job_id) is job.do_notify_sms


def test_a_shrunk_window_on_the_real_clock(make_sandbox_server):
    server = make_sandbox_server(hourly_limit=5, window=1.0)
    headers = {"LOGIS-API-KEY": server.api_key}
    with httpx.Client(base_url=server.base_url) as http:
        statuses = [http.put(TOGGLE, json=body(server.jobs[i]), headers=headers).status_code
                    for i in range(6)]
        assert statuses == [200] * 5 + [429]
        refused = server.requests()[-1]
        wait = int(http.put(TOGGLE, json=body(server.jobs[6]), headers=headers)
                   .headers["Retry-After"])
        assert wait == 1
        time.sleep(wait)  # honouring Retry-After is the behaviour under test
        assert http.put(TOGGLE, json=body(server.jobs[6]), headers=headers).status_code == 200
    times = [r["t"] for r in server.requests() if r["status"] == 200]
    assert times[-1] - times[0] >= 1.0 - 1e-6 and refused["status"] == 429


def test_concurrent_requests_never_exceed_the_budget(make_sandbox_server):
    server = make_sandbox_server(hourly_limit=20)
    headers = {"LOGIS-API-KEY": server.api_key}

    async def hammer() -> list[int]:
        limits = httpx.Limits(max_connections=16)
        async with httpx.AsyncClient(base_url=server.base_url, limits=limits) as http:
            replies = await asyncio.gather(*(
                http.put(TOGGLE, json=body(server.jobs[i]), headers=headers) for i in range(60)
            ))
        return [r.status_code for r in replies]

    statuses = asyncio.run(hammer())
    assert statuses.count(200) == 20 and statuses.count(429) == 40


def test_serve_in_thread_yields_a_loopback_url_and_stops_cleanly(sandbox_seed):
    app = create_app(seed=sandbox_seed)
    with serve_in_thread(app=app) as base_url:
        assert httpx.get(f"{base_url}/_sandbox/health").json()["ok"] is True
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{base_url}/_sandbox/health", timeout=2.0)


def test_a_taken_port_fails_fast_with_a_clear_error(sandbox_seed):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        started = time.monotonic()
        with pytest.raises(SandboxServerError, match=f"could not listen on 127.0.0.1:{port}"):
            SandboxThread(create_app(seed=sandbox_seed), port=port).start(ready_timeout=5.0)
        assert time.monotonic() - started < 5.0


def test_stopping_does_not_wait_for_a_stalled_timeout_reply(sandbox_seed):
    served = SandboxThread(create_app(seed=sandbox_seed))
    base_url = served.start()
    job = sandbox_seed.jobs[0]
    served.app.state.world.faults.update({"scripted": {job.job_id: ["timeout"]},
                                          "timeout_delay_s": 60.0})

    async def stalled() -> None:
        async with httpx.AsyncClient(base_url=base_url, timeout=30.0) as http:
            await http.put(TOGGLE, json=body(job), headers={"LOGIS-API-KEY": "sandbox-key"})

    async def scenario() -> None:
        task = asyncio.create_task(stalled())
        deadline = time.monotonic() + 5.0
        while not served.app.state.world.requests and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        started = time.monotonic()
        await asyncio.to_thread(served.stop, 10.0)
        assert time.monotonic() - started < 5.0
        with pytest.raises(httpx.TransportError):
            await task

    asyncio.run(scenario())
