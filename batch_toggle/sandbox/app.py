"""The Starlette app: Logis' two endpoints, the /_sandbox introspection routes, fault delivery.

Rule order of the toggle endpoint (the same order Logis documents, first match wins):
401 missing key header; 403 invalid/inactive key; 403 no allow_public_track; 429 key budget or
user daily limit; 400 body not a JSON object / missing fields / review_key not a UUID /
update_target not job|client / do_notify_sms not "true"|"false"; 404 unknown job; 401 incorrect
review_key; 200. The track endpoint has the same rules minus the body and review_key ones.

Budget: every request that passes the key checks counts against the key's window (and the
user's daily one), whatever its answer afterwards: a 400, a 404, a fault, and (with
`count_rejected`, the default) a 429 itself. Requests refused before that (no key, unknown,
inactive or unpermitted key) cannot be charged to a usable key and do not count.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import socket
import struct
import threading
import time
from collections.abc import Callable
from email.utils import formatdate
from http import HTTPStatus
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from batch_toggle.sandbox.config import Fault, SandboxConfig, default_seed_path
from batch_toggle.sandbox.world import (
    Clock,
    Job,
    Seed,
    World,
    is_uuid,
    key_hint,
    load_seed,
    retry_after_seconds,
)

TOGGLE_PATH = "/api/apikeys/toggle_sms_notifications"
TRACK_PATH = "/api/apikeys/track"
KEY_HEADER = "logis-api-key"
FIELDS = ("job_id", "review_key", "do_notify_sms", "update_target")

# The reasons of Logis' error table, worded as the error body carries them.
MISSING_KEY = "Missing LOGIS-API-KEY header"
INVALID_KEY = "Invalid or inactive LOGIS-API-KEY"
PERMISSION_DENIED = "Permission denied"
RATE_LIMITED = "Rate limit exceeded"
DAILY_LIMITED = "Rate limit exceeded: the user's global daily limit was reached"
INVALID_JSON = "Invalid JSON body"
MISSING_FIELDS = "Missing required fields"
INVALID_REVIEW_KEY = "Invalid review_key format"
INVALID_TARGET = "Invalid update_target"
INVALID_STATE = "Invalid do_notify_sms"
JOB_NOT_FOUND = "Job not found"
INCORRECT_REVIEW_KEY = "Incorrect review_key"

_HTML_ERROR = (
    "<html>\r\n<head><title>{code} {phrase}</title></head>\r\n<body>\r\n"
    "<center><h1>{code} {phrase}</h1></center>\r\n<hr><center>nginx</center>\r\n"
    "</body>\r\n</html>\r\n"
)


class _NoResponse(Response):
    """Sends nothing: the connection is already gone."""

    def __init__(self) -> None:
        super().__init__(status_code=599)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        return None


def _error(status: int, reason: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": reason}, status_code=status, headers=headers)


class Sandbox:
    """The request handlers of one sandbox, bound to its world."""

    def __init__(self, world: World) -> None:
        self.world = world
        # Replies held by a "timeout" fault: a server shutdown must not wait for them.
        self._stalls: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()
        self._stalls_lock = threading.Lock()

    def abort_stalls(self) -> None:
        """Drop every reply a timeout fault is holding (thread-safe; called on shutdown)."""
        with self._stalls_lock:
            stalls = list(self._stalls)
        for loop, event in stalls:
            with contextlib.suppress(RuntimeError):  # that loop is already closed
                loop.call_soon_threadsafe(event.set)

    async def _stall(self, request: Request, response: Response, delay: float) -> Response:
        """Hold the reply `delay` seconds; give up early when the client hangs up, and drop
        the connection when the server shuts down.

        In-process the client cannot time out on its own (ASGITransport has no timeouts), so
        after the delay raise what httpx raises when a read times out.
        """
        if _uvicorn_transport(request) is None:
            await asyncio.sleep(delay)
            import httpx

            raise httpx.ReadTimeout("sandbox fault: the reply did not come in time")
        stall = (asyncio.get_running_loop(), asyncio.Event())
        with self._stalls_lock:
            self._stalls.add(stall)
        hangup = asyncio.ensure_future(_disconnected(request))
        shutdown = asyncio.ensure_future(stall[1].wait())
        try:
            done, _ = await asyncio.wait({hangup, shutdown}, timeout=delay,
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            with self._stalls_lock:
                self._stalls.discard(stall)
            for task in (hangup, shutdown):
                task.cancel()
            await asyncio.gather(hangup, shutdown, return_exceptions=True)
        if shutdown in done:
            return await _drop_connection(request)
        if hangup in done:
            return _NoResponse()
        return response

    # --- Logis endpoints ------------------------------------------------------------------

    async def toggle(self, request: Request) -> Response:
        raw = await request.body()
        try:
            payload: Any = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            payload = None
        fields = payload if isinstance(payload, dict) else {}
        entry = self._begin(request, {k: fields.get(k) for k in FIELDS if k != "review_key"})
        return await self._serve(request, entry, fields.get("job_id"), lambda: self._apply(payload))

    async def track(self, request: Request) -> Response:
        job_id = request.query_params.get("job_id")
        entry = self._begin(request, {"job_id": job_id})
        return await self._serve(request, entry, job_id, lambda: self._track(job_id))

    def _apply(self, payload: Any) -> Response:
        if not isinstance(payload, dict):
            return _error(400, INVALID_JSON)
        if any(payload.get(f) in (None, "") for f in FIELDS):
            return _error(400, MISSING_FIELDS)
        review_key, target = payload["review_key"], payload["update_target"]
        state = payload["do_notify_sms"]
        if not is_uuid(review_key):
            return _error(400, INVALID_REVIEW_KEY)
        if target not in ("job", "client"):
            return _error(400, INVALID_TARGET)
        if state not in ("true", "false"):
            return _error(400, INVALID_STATE)
        job = self._find_job(payload["job_id"])
        if job is None:
            return _error(404, JOB_NOT_FOUND)
        if review_key.lower() != job.review_key:
            return _error(401, INCORRECT_REVIEW_KEY)
        value = state == "true"
        if target == "job":
            job.do_notify_sms = value
            return JSONResponse({"job": job.as_json()})
        # A client update changes the client's default for future jobs only.
        client = self.world.clients[job.client]
        client.do_notify_sms = value
        return JSONResponse({"end_client": client.as_json()})

    def _track(self, job_id: str | None) -> Response:
        if not job_id:
            return _error(400, MISSING_FIELDS)
        job = self._find_job(job_id)
        if job is None:
            return _error(404, JOB_NOT_FOUND)
        client = self.world.clients[job.client]
        return JSONResponse(
            {"job_track": {"job": job.as_json(), "client": client.as_json(),
                           "store": None, "provider": None}}
        )

    def _find_job(self, job_id: object) -> Job | None:
        # A job_id that is not a UUID cannot name a job: Logis documents no 400 for it.
        if not is_uuid(job_id):
            return None
        assert isinstance(job_id, str)
        return self.world.jobs.get(job_id.lower())

    # --- the common path: latency, key checks, budget, faults -----------------------------

    def _begin(self, request: Request, fields: dict[str, Any]) -> dict[str, Any]:
        key = request.headers.get(KEY_HEADER)
        entry: dict[str, Any] = {
            "seq": None,  # its place in the log, given when it joins it (after any latency)
            "t": None,
            "at": None,
            "method": request.method,
            "path": request.url.path,
            "key_hint": key_hint(key),
            # Who connected (the client's address): through a forward proxy, the proxy's.
            "peer": request.client.host if request.client is not None else None,
            "job_id": None, "update_target": None, "do_notify_sms": None,
            "status": None, "error": None, "fault": None, "counted": False,
        }
        entry.update(fields)
        return entry

    async def _serve(self, request: Request, entry: dict[str, Any], job_id: Any,
                     handle: Callable[[], Response]) -> Response:
        world = self.world
        delay = world.faults.latency_s()
        if delay > 0:
            await asyncio.sleep(delay)
        entry["t"], entry["at"] = world.clock(), time.time()
        # The log is in arrival order after latency: seq is the entry's place in it (given by
        # the log), so seq values are unique and `?since=` and seq agree, however the latency
        # interleaves.
        world.requests.append(entry)
        refused = self._gate(request, entry)
        if refused is not None:
            return self._finish(entry, refused)
        fault = world.faults.next_fault(job_id)
        if fault is not None:
            entry["fault"] = fault.token
            early = self._early_fault(fault)
            if early is not None:
                return self._finish(entry, early)
            if fault.kind == "reset":
                entry["status"] = None
                return await _drop_connection(request)
        response = self._finish(entry, handle())
        if fault is not None and fault.kind == "reset-after":
            entry["status"] = None  # applied, but the client gets no answer
            return await _drop_connection(request)
        if fault is not None and fault.kind == "timeout":
            status, entry["status"] = entry["status"], None
            response = await self._stall(request, response, world.faults.config.timeout_delay_s)
            if not isinstance(response, _NoResponse):
                entry["status"] = status  # the late reply did go out
        return response

    def _gate(self, request: Request, entry: dict[str, Any]) -> Response | None:
        """Key checks and the budget, in Logis' order; None when the request may proceed."""
        world = self.world
        raw = request.headers.get(KEY_HEADER)
        if raw is None or not raw.strip():
            return _error(401, MISSING_KEY)
        key = world.keys.get(raw)
        if key is None or not key.active:
            return _error(403, INVALID_KEY)
        if not key.allow_public_track:
            return _error(403, PERMISSION_DENIED)
        decision = world.budgets.admit(raw, entry["t"])
        entry["counted"] = decision.allowed or world.budgets.count_rejected
        if decision.allowed:
            return None
        reason = DAILY_LIMITED if decision.daily else RATE_LIMITED
        return _error(429, reason, self._retry_after(decision.wait))

    def _retry_after(self, wait: float) -> dict[str, str]:
        style = self.world.limits.retry_after_style
        seconds = retry_after_seconds(wait)
        if style == "none":
            return {}
        if style == "http-date":
            # Whole seconds, rounded up: the date is never earlier than the true moment.
            return {"Retry-After": formatdate(math.ceil(time.time()) + seconds, usegmt=True)}
        return {"Retry-After": str(seconds)}

    def _early_fault(self, fault: Fault) -> Response | None:
        """The response of a fault that replaces processing (nothing applied), if it is one."""
        if fault.kind == "html":
            assert fault.status is not None
            phrase = _phrase(fault.status)
            return HTMLResponse(_HTML_ERROR.format(code=fault.status, phrase=phrase),
                                status_code=fault.status)
        if fault.kind == "status":
            assert fault.status is not None
            if fault.status == 429:
                return _error(429, RATE_LIMITED, self._retry_after(fault.retry_after or 1.0))
            return _error(fault.status, _phrase(fault.status))
        return None

    def _finish(self, entry: dict[str, Any], response: Response) -> Response:
        entry["status"] = response.status_code
        if response.status_code >= 400 and isinstance(response, JSONResponse):
            entry["error"] = json.loads(bytes(response.body)).get("error")
        return response

    # --- /_sandbox introspection ----------------------------------------------------------

    async def state(self, request: Request) -> Response:
        return JSONResponse(self.world.state())

    async def requests(self, request: Request) -> Response:
        try:
            since = max(0, int(request.query_params.get("since", "0")))
        except ValueError:
            return _error(400, "since must be an integer")
        log = self.world.requests
        entries, missed = log.since(since)
        return JSONResponse({"requests": entries, "next": log.total, "missed": missed,
                             "dropped": log.dropped, "kept": log.limit,
                             "totals": log.totals()})

    async def reset(self, request: Request) -> Response:
        self.world.reset()
        return JSONResponse({"ok": True})

    async def health(self, request: Request) -> Response:
        return JSONResponse({"ok": True, "jobs": len(self.world.jobs)})

    async def faults(self, request: Request) -> Response:
        if request.method == "POST":
            changes = await _json_object(request)
            if isinstance(changes, Response):
                return changes
            try:
                self.world.faults.update(changes)
            except (ValueError, TypeError) as exc:
                return _error(400, str(exc))
        return JSONResponse(self.world.faults.settings())

    async def limits(self, request: Request) -> Response:
        if request.method == "POST":
            changes = await _json_object(request)
            if isinstance(changes, Response):
                return changes
            try:
                self.world.set_limits(changes)
            except (ValueError, TypeError) as exc:
                return _error(400, str(exc))
        return JSONResponse(self.world.limit_settings())

    async def keys(self, request: Request) -> Response:
        body = await _json_object(request)
        if isinstance(body, Response):
            return body
        key = body.get("key")
        if not isinstance(key, str) or not key:
            return _error(400, "key must be a non-empty string")
        entry = self.world.set_key(
            key, bool(body.get("active", True)), bool(body.get("allow_public_track", True))
        )
        return JSONResponse({"key_hint": key_hint(key), "active": entry.active,
                             "allow_public_track": entry.allow_public_track})


async def _json_object(request: Request) -> dict[str, Any] | Response:
    try:
        body = json.loads(await request.body() or b"{}")
    except ValueError:
        return _error(400, INVALID_JSON)
    if not isinstance(body, dict):
        return _error(400, "expected a JSON object")
    return body


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


# --- dropping and stalling connections ----------------------------------------------------


def _uvicorn_transport(request: Request) -> asyncio.Transport | None:
    """The socket transport under this request when uvicorn serves it, else None.

    ASGI gives an app no way to drop a connection, so a reset reaches through the `receive`
    callable uvicorn hands in (a bound method of its request cycle, which holds the transport).
    Pinned by a test; if a uvicorn upgrade moves it, that test says so.
    """
    cycle = getattr(request.receive, "__self__", None)
    transport = getattr(cycle, "transport", None)
    return transport if isinstance(transport, asyncio.Transport) else None


async def _drop_connection(request: Request) -> Response:
    """Close the connection without a response (TCP RST on a real socket).

    In-process (httpx.ASGITransport) there is no socket: raise the error httpx raises for a
    reset connection, which ASGITransport hands to the client as it is.
    """
    transport = _uvicorn_transport(request)
    if transport is None:
        import httpx

        raise httpx.ReadError("sandbox fault: connection reset by peer")
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            # Linger 0: close() sends RST instead of FIN, as a crashed peer or a proxy would.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()
    await _wait_disconnect(request, 5.0)
    return _NoResponse()


async def _disconnected(request: Request) -> None:
    """Return once the client has hung up (uvicorn's receive() says http.disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _wait_disconnect(request: Request, timeout: float) -> bool:
    """True once the client has disconnected, False if `timeout` passes first."""
    try:
        await asyncio.wait_for(_disconnected(request), timeout)
    except TimeoutError:
        return False
    return True


# --- the factory --------------------------------------------------------------------------


def create_app(
    config: SandboxConfig | None = None, *, seed: Seed | None = None, clock: Clock | None = None
) -> Starlette:
    """A fresh sandbox app; its world is `app.state.world`.

    `seed` overrides `config.seed` (handy when many apps share one parsed seed); with neither,
    the seed shipped in the package (a copy of `sample_data/sandbox_seed.csv`) is used.
    `clock` (default time.monotonic) is what the budget measures windows on; tests inject a
    fake one.
    """
    config = config or SandboxConfig()
    if seed is None:
        seed = load_seed(config.seed if config.seed is not None else default_seed_path())
    world = World(config, seed, clock or time.monotonic)
    sandbox = Sandbox(world)
    routes = [
        Route(TOGGLE_PATH, sandbox.toggle, methods=["PUT"]),
        Route(TRACK_PATH, sandbox.track, methods=["GET"]),
        Route("/_sandbox/state", sandbox.state, methods=["GET"]),
        Route("/_sandbox/requests", sandbox.requests, methods=["GET"]),
        Route("/_sandbox/reset", sandbox.reset, methods=["POST"]),
        Route("/_sandbox/health", sandbox.health, methods=["GET"]),
        Route("/_sandbox/faults", sandbox.faults, methods=["GET", "POST"]),
        Route("/_sandbox/limits", sandbox.limits, methods=["GET", "POST"]),
        Route("/_sandbox/keys", sandbox.keys, methods=["POST"]),
    ]
    app = Starlette(routes=routes)
    app.state.world = world
    app.state.config = config
    app.state.sandbox = sandbox
    return app
