"""The live run: state store and lock, resume, the HTTP client, the canary, then the runner.

Ends in the same `finish` as validate, so a live run's report has the same shape and the same
one-row-per-input-row guarantee whatever stopped it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from batch_toggle import vocab
from batch_toggle.clock import utc_text
from batch_toggle.config import format_duration
from batch_toggle.errors import ExitCode, InputError, StoreError, UsageError
from batch_toggle.hosts import is_loopback
from batch_toggle.jobs.pipeline import (
    SILENT,
    Hooks,
    JobConfig,
    JobResult,
    Prepared,
    announce_plan,
    finish,
    prepare_or_refuse,
    request_cost,
)
from batch_toggle.outcome import Outcome
from batch_toggle.plan.units import Units
from batch_toggle.report.table import UnitResults, row_ref_array
from batch_toggle.report.writers import ReportError, release_reservation
from batch_toggle.send.causes import explainer
from batch_toggle.send.client import Route, route_for, worker_connections
from batch_toggle.send.cost import latency_prior
from batch_toggle.send.limiter import SEND_LOG_KEEP, WAIT_BUDGET, WAIT_DAILY, Budget
from batch_toggle.send.operations import Operation
from batch_toggle.send.probe import Target
from batch_toggle.send.proxies import DIRECT
from batch_toggle.send.runner import Counters, Interrupts, RunHooks, Runner, Stop, interrupt_stop
from batch_toggle.send.trust import Trust
from batch_toggle.send.watchdog import Watchdog
from batch_toggle.state.committer import Committer, Finished
from batch_toggle.state.ledger import ledger_view
from batch_toggle.state.sendlog import Reading, wall_clock_moved
from batch_toggle.state.sqlite import RunRecord, StateStore, default_state_path, record_interrupted

SANDBOX_BASE_URL = "http://sandbox.invalid"


def check_base_url(url: str, insecure: bool) -> None:
    """Refuse plain http to anything but loopback: the key and review keys would travel bare."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"--base-url {url!r}: expected an http(s) URL such as "
                         "https://app.logisapp.ca")
    if parts.scheme == "http" and not insecure and not is_loopback(parts.hostname):
        raise UsageError(f"--base-url {url!r}: plain http sends the API key unencrypted; use "
                         "https, a loopback address, or --insecure")


def plan_key(config: JobConfig) -> str:
    """The options that shape the plan; a resume must match them. The .xlsx sheet only when
    one is named (another sheet is other rows with the same file hash; without --sheet the
    key stays what it was, so runs recorded before --sheet existed still resume)."""
    key: dict[str, Any] = {
        "map": sorted(config.load.column_map), "set_state": config.load.set_state,
        "default_target": config.load.default_target, "on_conflict": config.plan.on_conflict}
    if config.load.sheet is not None:
        key["sheet"] = config.load.sheet
    return json.dumps(key, sort_keys=True)


def input_names(config: JobConfig) -> list[str]:
    """The inputs as the store records them: absolute paths; stdin and the tables given in
    memory by the name that stands for them."""
    return [name if name == "-" or name in config.tables else os.path.abspath(name)
            for name in config.inputs]


@contextmanager
def open_store(config: JobConfig) -> Iterator[StateStore | None]:
    """The run's store, locked. --sandbox without --state gets a throwaway one, so rehearsals
    never spend the real key's recorded budget nor teach the real ledger."""
    if not config.use_state:
        yield None
        return
    tmp = None
    path = config.state_path
    if path is None and config.sandbox:
        tmp = tempfile.mkdtemp(prefix="batch-toggle-sandbox-")
        path = Path(tmp) / "state.sqlite"
    store = StateStore.open(path or default_state_path())
    try:
        yield store
    finally:
        store.close()
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def run(config: JobConfig, hooks: Hooks = SILENT, *, stdin: Any = None,
        transport: httpx.AsyncBaseTransport | None = None) -> JobResult:
    """Plan, send the toggles, write the report. See SPEC sections 5 and 6."""
    if config.dry_run:
        from batch_toggle.jobs.pipeline import validate
        return validate(config, hooks, stdin=stdin)
    config = live_config(config)
    with open_store(config) as store:
        return _run_locked(config, hooks, store, stdin, transport)


def live_config(config: JobConfig) -> JobConfig:
    """The config of a job that talks to Logis (run, audit): --sandbox points it at the
    in-process simulator with its key; otherwise the base URL must be safe, a key present,
    and the route usable (a --ca-bundle that loads, a proxy URL that parses): exit 2 before
    anything is read."""
    if config.sandbox:
        config = replace(config, send=replace(config.send, base_url=SANDBOX_BASE_URL),
                         api_key=config.api_key or _sandbox_key())
    check_base_url(config.send.base_url, config.send.insecure or config.sandbox)
    if not config.api_key:
        raise UsageError("no API key: set LOGIS_API_KEY or use --api-key-file")
    if not config.sandbox:
        route_of(config).trust.context()  # loads --ca-bundle: a bad file is a usage error
    return config


def route_of(config: JobConfig) -> Route:
    """How this job reaches its base URL (trust, proxy); see connections.route_for."""
    return route_for(config.send, config.proxy_auth)


def _run_locked(config: JobConfig, hooks: Hooks, store: StateStore | None, stdin: Any,
                transport: httpx.AsyncBaseTransport | None) -> JobResult:
    resumed: list[RunRecord] = []
    if config.resume and store is not None:
        config = same_outputs(config, store)

    def ledger_for(loaded: Any) -> Any:
        if store is None:
            return None
        if config.resume:
            record = _find_resumable(config, store, loaded, hooks)
            if record is not None:
                resumed.append(record)
        return ledger_view(store, exclude_run=resumed[0].run_id if resumed else None)

    prepared = prepare_or_refuse(config, hooks, stdin=stdin, ledger_for=ledger_for)
    if resumed:
        prepared = replace(prepared, run_id=resumed[0].run_id)
    if store is not None:
        lock_store(store, prepared, "run")
        _record_start(config, store, prepared, resumed)
    previous = _previous_outcomes(store, prepared, bool(resumed))
    todo = _todo(prepared, previous, config.retry_failed)
    # One budget from here on: the plan's cost, the resume's and the progress ETA are the
    # cost model's view of it (slots earlier runs hold, and their replies' latency).
    budget = seeded_budget(config, store, hooks)
    budget.expect_latency(latency_prior(o.latency_ms for o in previous.values()))
    prepared = announce_plan(prepared, hooks, budget=budget)
    if resumed:
        _announce_resume(config, hooks, prepared.run_id, len(previous), len(todo), budget)
    # From the start of sending until the report is written, SIGINT/SIGTERM stop the run
    # (SPEC section 5: the report is written, exit 130) and never escape as the process's
    # KeyboardInterrupt: while it sends, through the runner; after, recorded here.
    too_early = _before_reset(resumed[0]) if resumed and todo else None
    with Interrupts() as interrupts, run_watchdog(store, prepared.run_id) as watchdog:
        runner, counters = asyncio.run(_send(config, hooks, store, prepared, todo, transport,
                                             interrupts=interrupts, stop_first=too_early,
                                             watchdog=watchdog, budget=budget))
        store_error = runner.committer.error
        if store_error is not None:  # said before the report, which may fail for the same reason
            hooks.notice(f"warning: the state store stopped accepting outcomes: {store_error}")
        try:
            outcomes = {**previous, **runner.unfinished_outcomes(), **runner.committer.outcomes}
            result = _report(config, hooks, prepared, outcomes, runner, counters, interrupts)
        except ReportError as exc:
            raise _report_failed(exc, store, store_error) from exc
        # A signal from here on is too late to change anything: the report is written.
        if store is not None:
            store.finish_run(prepared.run_id, exit_code=int(result.exit_code),
                             finished_at=utc_text(),
                             counts=result.summary["counts_by_status"],
                             resume_after=_daily_reset(runner.stop),
                             stopped=stop_record(runner.stop))
        if runner.stop is not None:
            # Last on stderr: why the run ended early and when a resume can start (daily limit).
            hooks.notice(f"stopped: {runner.stop.message}")
    return result


@contextmanager
def run_watchdog(store: StateStore | None, run_id: str) -> Iterator[Watchdog]:
    """A watchdog for the run `run_id` (see watchdog.py): it keeps the store's heartbeat for
    `status`, and records the run as interrupted if the process must stop while stuck."""
    def record_stop() -> None:
        if store is not None:
            record_interrupted(store.path, run_id, utc_text())

    with Watchdog(heartbeat=store.heartbeat if store is not None else None,
                  record_stop=record_stop) as watchdog:
        yield watchdog


def _report(config: JobConfig, hooks: Hooks, prepared: Prepared, outcomes: dict[int, Outcome],
            runner: Runner, counters: Counters, interrupts: Interrupts) -> JobResult:
    """`finish` for a live run, where a signal caught after the sending part counts as one
    during it (see `finish_interruptible`)."""
    return finish_interruptible(
        prepared, hooks, runner, interrupts,
        lambda: (UnitResults.from_outcomes(prepared.plan.requests_needed, outcomes,
                                           runner.unsent_outcome()),
                 _send_summary(runner, counters, config)))


def finish_interruptible(prepared: Prepared, hooks: Hooks, runner: Runner,
                         interrupts: Interrupts,
                         results: Callable[[], tuple[UnitResults, dict[str, Any]]]
                         ) -> JobResult:
    """`finish` (the report) after a sending part, where a signal caught after that part
    counts as one during it: the job stops as interrupted (its "stop" event, exit 130).
    `results` gives the units' results and the summary's extra fields as they stand (they
    depend on the runner's stop).

    The exit code is decided before the report is written, so a signal that comes while it is
    being written makes the report's exit code, verdict and summary out of date: the report is
    then written once more, as interrupted (at most twice: an interrupt outranks every other
    stop). Only the last write's notices (its summary table) and "finish" event go out, so
    the stderr and the --events stream tell one ending."""
    while True:
        if interrupts.received is not None:
            runner.request_stop(interrupt_stop(interrupts.received))
        decided = runner.stop
        units, extra = results()
        held = _Held(hooks)
        try:
            result = finish(prepared, units, held.hooks, stop_exit=decided.exit_code if decided
                            else None, extra=extra)
        except ReportError:
            held.release()
            raise
        if interrupts.received is None or (
                decided is not None and decided.exit_code == ExitCode.INTERRUPTED):
            held.release()
            return result


class _Held:
    """`hooks` whose notices and events wait for `release` (and are dropped without it)."""

    def __init__(self, hooks: Hooks) -> None:
        self._calls: list[tuple[Callable[..., None], tuple[Any, ...]]] = []
        self.hooks = replace(hooks, notice=self._later(hooks.notice),
                             event=self._later(hooks.event))

    def _later(self, call: Callable[..., None]) -> Callable[..., None]:
        return lambda *args: self._calls.append((call, args))

    def release(self) -> None:
        for call, args in self._calls:
            call(*args)


def _report_failed(exc: ReportError, store: StateStore | None,
                   store_error: BaseException | None) -> ReportError:
    """The report could not be written (a full disk) after requests were sent. The outcomes
    are in the store and the run stays unfinished, so a resume sends nothing again and writes
    the report: say so, and exit 4 (resumable) rather than 2 (which means nothing was sent).
    When the store failed too, some outcomes exist only in this process: never claim otherwise."""
    if store is None:
        return exc
    if store_error is None:
        saved = f"every outcome is saved in the state store {store.path}"
    else:
        saved = (f"the state store {store.path} also failed ({store_error}), so the rows "
                 "answered after that will be sent again by a resume (PUT is idempotent)")
    err = ReportError(f"{exc}; {saved}: make room, then run again with --resume to write the "
                      "report")
    err.exit_code = ExitCode.STOPPED
    return err


def _find_resumable(config: JobConfig, store: StateStore, loaded: Any,
                    hooks: Hooks) -> RunRecord | None:
    record = store.find_unfinished_run(input_names(config), plan_key(config),
                                       retry_failed=config.retry_failed)
    if record is None:
        hooks.notice("resume: no unfinished run with these inputs and plan options; "
                     "starting a new run")
        hooks.event("resume_new_run", {"reason": "no unfinished run with these inputs and "
                                                 "plan options"})
        return None
    for (_name, digest), source in zip(record.inputs, loaded.sources, strict=True):
        if digest != source.sha256:
            raise InputError(source.name, f"its content changed since run {record.run_id} "
                             "began; resume refused (see `batch-toggle status`)")
    return record


def stop_record(stop: Stop | None) -> dict[str, str] | None:
    """What the store keeps of a run's stop, for `batch-toggle status` to say why it ended."""
    return None if stop is None else {"code": stop.code, "message": stop.message}


def _daily_reset(stop: Stop | None) -> str | None:
    """When a resume may send again: only a daily limit's reset binds a resume (a Retry-After
    over an hour ends the run too, but a resume may try again: the server said so once)."""
    return stop.resume_after if stop is not None and stop.code == "daily_limit" else None


def _before_reset(record: RunRecord) -> Stop | None:
    """A run that stopped at the API's daily limit may not send again before the limit resets:
    a resume before then would spend requests on 429s (an hourly cron line would knock every
    hour). It stops at once instead, sending nothing, with the same advice and exit 4."""
    reset = record.sends_from(datetime.now(UTC))
    if reset is None:
        return None
    return Stop("daily_limit", ExitCode.STOPPED,
                f"the daily limit this run stopped at resets at {reset}; nothing was sent; "
                f"resume with --resume after {reset}", resume_after=reset)


def _announce_resume(config: JobConfig, hooks: Hooks, run_id: str, had: int, todo: int,
                     budget: Budget) -> None:
    """A resume states what is left, not only the whole plan: each cron slice's log then says
    how far the job has come and how long the rest takes, from the budget as the earlier
    slices left it (their slots still held) at the latency their replies took."""
    cost = request_cost(todo, config.send, budget=budget)
    hooks.notice(f"resume: run {run_id}: {had:,} units already have an outcome; {todo:,} to "
                 f"send: about {cost['estimated_duration']} at {cost['rate']}")
    hooks.event("resume", {"run_id": run_id, "units_with_outcome": had, "units_to_send": todo,
                           **{k: v for k, v in cost.items() if k != "requests_needed"}})


def lock_store(store: StateStore, prepared: Prepared, command: str) -> None:
    """Take the store's one-run lock for `prepared` (StoreLocked when another run holds it:
    its default report name, reserved, is then given back, so that a refused run leaves no
    empty report behind)."""
    try:
        store.acquire_lock(prepared.run_id,
                           owner=f"batch-toggle {command} {' '.join(prepared.config.inputs)}")
    except BaseException:
        release_reservation(prepared.report_path)
        raise


def same_outputs(config: JobConfig, store: StateStore) -> JobConfig:
    """A resume writes the report (with its summary and HTML page) and the rejects file of
    the run it continues, in place, unless --report / --rejects say otherwise: a cron job that
    runs in slices has one current report, not one per slice (a 100,000-row job in 20 slices
    left 1.25 GB of them). The paths are those the run recorded when it began."""
    if config.report_path is not None and config.rejects_path is not None:
        return config
    record = store.find_unfinished_run(input_names(config), plan_key(config),
                                       retry_failed=config.retry_failed)
    if record is None:
        return config
    outputs = record.options.get("outputs") or {}
    report, rejects = outputs.get("report"), outputs.get("rejects")
    return replace(
        config,
        report_path=config.report_path or (Path(report) if report else None),
        rejects_path=config.rejects_path or (Path(rejects) if rejects else None))


def _record_start(config: JobConfig, store: StateStore, prepared: Prepared,
                  resumed: list[RunRecord], command: str = "run") -> None:
    from batch_toggle.jobs.pipeline import options_record
    now = utc_text()
    # Where this run writes, for the resumes that continue it (see same_outputs).
    options = {**options_record(config), "outputs": {
        "report": os.path.abspath(prepared.report_path),
        "rejects": os.path.abspath(config.rejects_path) if config.rejects_path else None}}
    if resumed:
        store.mark_resumed(prepared.run_id, resumed_at=now, options=options,
                           units=prepared.plan.requests_needed)
        return
    inputs = [(name, s.sha256) for name, s in zip(input_names(config), prepared.loaded.sources,
                                                   strict=True)]
    store.create_run(prepared.run_id, command=command, inputs=inputs, plan_key=plan_key(config),
                     options=options, total_rows=prepared.loaded.raw.num_rows,
                     started_at=now, units=prepared.plan.requests_needed)


def _previous_outcomes(store: StateStore | None, prepared: Prepared,
                       resumed: bool) -> dict[int, Outcome]:
    """Earlier outcomes of a resumed run, by unit index of the new plan."""
    if store is None or not resumed:
        return {}
    by_row = store.load_outcomes(prepared.run_id)
    unit_of = {int(r): i for i, r in enumerate(prepared.plan.units.row)}
    return {unit_of[row]: o for row, o in by_row.items() if row in unit_of}


def _todo(prepared: Prepared, previous: dict[int, Outcome], retry_failed: bool) -> list[int]:
    def wanted(unit: int) -> bool:
        done = previous.get(unit)
        if done is None or not done.is_final:
            return True
        return retry_failed and done.status == vocab.FAILED and bool(done.retryable)

    return [u for u in range(prepared.plan.requests_needed) if wanted(u)]


def _sandbox_key() -> str:
    from batch_toggle.sandbox import SandboxConfig
    return SandboxConfig().api_keys[0]


def make_client(config: JobConfig,
                transport: httpx.AsyncBaseTransport | None = None) -> httpx.AsyncClient:
    """One client for the run: a kept-alive connection per worker (see `connections`), through
    the route's proxy when it has one, TLS verified against the route's trust; no redirects
    (the key header and body would follow them). `trust_env=False`: the route already read
    the environment (proxies, CA variables), and a ~/.netrc must not add credentials."""
    if transport is None and config.sandbox:
        from batch_toggle.sandbox import SandboxConfig, create_app
        transport = httpx.ASGITransport(app=create_app(SandboxConfig()))
    elif transport is None:
        transport = worker_connections(route_of(config))
    return httpx.AsyncClient(transport=transport, timeout=httpx.Timeout(config.send.timeout),
                             follow_redirects=False, trust_env=False)


NOTABLE_WAIT = 1.0  # seconds: a budget wait at least this long is an event ("wait")


def _wait_events(hooks: Hooks) -> Callable[..., None]:
    """The budget's `on_wait`: a wait for the hourly or daily window that is long enough to
    notice (a full window after the first burst: up to PERIOD) becomes a "wait" event as it
    begins, so a person watching a 40-hour run sees why nothing moves and until when. The
    --max-rps spacing is routine, a 429 pause has its own event, and a wait for responses to
    free a slot (no known end) is no news.

    `at` and `now` are on the budget's clock, which the budget passes."""
    def on_wait(reason: str, at: float, now: float) -> None:
        seconds = at - now
        if reason in (WAIT_BUDGET, WAIT_DAILY) and NOTABLE_WAIT <= seconds < math.inf:
            hooks.event("wait", {"reason": reason, "seconds": round(seconds, 1)})
    return on_wait


def seeded_budget(config: JobConfig, store: StateStore | None, hooks: Hooks = SILENT) -> Budget:
    """The run's budget, seeded with the slots earlier runs sharing the store still hold.

    One rule decides what is held (`sendlog.still_held`), for loading and pruning alike: the
    log is pruned to SEND_LOG_KEEP (a day and its margin) or this budget's longest hold if
    that is longer, whatever this run's own windows, and loaded to this budget's hold."""
    budget = Budget.from_options(config.send, on_wait=_wait_events(hooks))
    if store is not None:
        timeout = config.send.timeout
        now = Reading.now()
        store.prune_sends(now, max(SEND_LOG_KEEP, budget.hold), timeout)
        sends = store.recent_sends(now, budget.hold, timeout)
        moved = wall_clock_moved(sends, now)
        if moved > 0:
            hooks.notice(f"warning: the state store's send log has requests dated up to "
                         f"{format_duration(moved)} ahead of this machine's clock, sent before "
                         "a reboot or on another host (the clock was set back since, or the "
                         "two disagree): they count as sent just now, so the budget may wait "
                         "up to one window longer than it needs")
        budget.seed(sends, now=now, timeout=timeout)
    return budget


async def _send(config: JobConfig, hooks: Hooks, store: StateStore | None, prepared: Prepared,
                todo: list[int], transport: httpx.AsyncBaseTransport | None, *,
                units: Units | None = None, operation: Operation | None = None,
                interrupts: Interrupts | None = None,
                advice: Callable[[str], str] | None = None,
                stop_first: Stop | None = None,
                watchdog: Watchdog | None = None,
                budget: Budget | None = None) -> tuple[Runner, Counters]:
    """Drive a Runner over `todo`: the plan's units and toggles, or (audit) other `units` with
    another `operation`, through the same budget, client, committer, signals and progress.
    `interrupts`: the caller's, when it keeps catching signals after the sending part;
    `advice`: rewords the runner's stop messages (see Runner); `stop_first`: a stop decided
    before any request (the runner then sends nothing, and the report says why);
    `watchdog`: watches the loop while it sends (see watchdog.py); `budget`: the one whose
    cost the caller announced (default: `seeded_budget`)."""
    if budget is None:
        budget = seeded_budget(config, store, hooks)
    sent = prepared.plan.units if units is None else units
    sources = row_ref_array(prepared.loaded, sent.row)  # file:row of each unit, once per run

    shown = [0.0]

    def committed(finished: Finished) -> None:
        runner.counters.units_done += 1
        o, u, row = finished.outcome, finished.unit, finished.row
        # The event first: it is the record (--events, -vv); the progress bar is cosmetic.
        hooks.event("row", {"unit": u, "row": row, "source": sources[u].as_py(),
                            "job_id": runner.units.job_id[u],
                            "update_target": runner.units.update_target[u],
                            "status": o.status, "error_code": o.error_code,
                            "http_status": o.http_status, "attempts": o.attempts,
                            "retryable": o.retryable, "latency_ms": o.latency_ms})
        now = time.monotonic()
        done = runner.counters.units_done >= runner.counters.units_total
        if done or now - shown[0] >= PROGRESS_INTERVAL:
            # The snapshot's budget ETA looks at every held slot: build it at a person's pace,
            # not once per row of a fast run.
            shown[0] = now
            hooks.progress(runner.progress_snapshot())

    committer = Committer(store, prepared.run_id, on_committed=committed)
    route = _route_or_sandbox(config)
    async with make_client(config, transport) as client:
        runner = Runner(sent, client=client,
                        api_key=config.api_key or "",
                        options=config.send, budget=budget, committer=committer,
                        hooks=RunHooks(notice=hooks.notice, event=hooks.event,
                                       explain=explainer(route, config.send.timeout),
                                       answered=_remember_answer(store, route, hooks)),
                        review_key_hash=store.review_key_hash if store is not None else None,
                        run_id=prepared.run_id, operation=operation, advice=advice,
                        answered_before=_answered_before(store, route))
        committer.start()
        if stop_first is not None:
            runner.request_stop(stop_first)
        ticker = asyncio.get_running_loop().create_task(_tick(runner, hooks))
        try:
            with runner.signals(interrupts), _watched(watchdog):
                await _drive(runner, todo, config, hooks)
        finally:
            ticker.cancel()
            runner.close()
            await committer.close()
    return runner, runner.counters


def _watched(watchdog: Watchdog | None) -> contextlib.AbstractContextManager[None]:
    if watchdog is None:
        return contextlib.nullcontext()
    return watchdog.watching(asyncio.get_running_loop())


def _route_or_sandbox(config: JobConfig) -> Route:
    """The run's route; the in-process sandbox has no network (and no proxy to read)."""
    if config.sandbox:
        return Route(config.send.base_url, Trust(), DIRECT)
    return route_of(config)


def endpoint_key(base_url: str) -> str:
    """How the store knows a base URL (scheme, host, port): `https://App.Example.com/` and
    `https://app.example.com:443` are one endpoint."""
    target = Target.of(base_url)
    return f"{target.scheme.lower()}://{target.authority.lower()}"


def _answered_before(store: StateStore | None, route: Route) -> bool:
    """Has this base URL answered a run on this store before? (retry.FirstContact)"""
    if store is None:
        return False
    try:
        return store.has_answered(endpoint_key(route.base_url))
    except StoreError:
        return False


def _remember_answer(store: StateStore | None, route: Route,
                     hooks: Hooks) -> Callable[[], None]:
    """The runner's `answered` hook: the store remembers the base URL's first answer of this
    run, so a later run (a resumed cron slice) rides out a blip instead of stopping at once."""
    def answered() -> None:
        if store is None:
            return
        try:
            store.record_answer(endpoint_key(route.base_url),
                                utc_text())
        except StoreError as exc:  # worth a warning, not a stopped run
            hooks.notice(f"warning: the state store did not record that the API answered: "
                         f"{exc}")
    return answered


PROGRESS_TICK = 1.0  # seconds between refreshes while nothing commits
PROGRESS_INTERVAL = 0.1  # at most this often while rows commit


async def _tick(runner: Runner, hooks: Hooks) -> None:
    """Refresh progress while nothing commits: a run waiting an hour for its budget still
    shows that it waits, and its ETA counts down."""
    while True:
        await asyncio.sleep(PROGRESS_TICK)
        hooks.progress(runner.progress_snapshot())


async def _drive(runner: Runner, todo: list[int], config: JobConfig, hooks: Hooks) -> None:
    """The canary first (when asked), then the rest."""
    n = config.send.canary
    if n <= 0 or len(todo) <= n:
        await runner.run(todo)
        return
    await runner.run(todo[:n])
    await runner.committer.flush()
    bad = [u for u in todo[:n] if _permanent_failure(runner.committer.outcomes.get(u))]
    for u in todo[:n]:
        o = runner.committer.outcomes.get(u)
        hooks.notice(f"canary: {runner.units.job_id[u]} {runner.units.update_target[u]}: "
                     f"{o.status if o else 'not sent'}"
                     f"{' (' + o.error_code + ')' if o and o.error_code else ''}")
    hooks.event("canary", {"units": n, "failed_permanently": len(bad),
                           "go_on": not bad and runner.stop is None})
    if bad:
        runner.request_stop(Stop("halted", ExitCode.ROW_PROBLEMS,
                                 f"canary: {len(bad)} of {n} units failed permanently; "
                                 "nothing more was sent"))
        return
    if runner.stop is None:
        await runner.run(todo[n:])


def _permanent_failure(outcome: Outcome | None) -> bool:
    return outcome is not None and (
        outcome.status == vocab.MISMATCH
        or (outcome.status == vocab.FAILED and not outcome.retryable))


def _send_summary(runner: Runner, counters: Counters, config: JobConfig) -> dict[str, Any]:
    extra: dict[str, Any] = {
        "requests_sent": counters.requests,
        "responses_429": counters.responses_429,
        "retries": counters.retries,  # every request beyond a unit's first
        "requests_by_reason": runner.requests_by_reason,
        "budget_used": {"requests": counters.requests, "rate": str(config.send.rate)},
        "timeline": runner.timeline.to_dict(),
    }
    if runner.stop is not None:
        extra["stopped"] = {"code": runner.stop.code, "message": runner.stop.message,
                            "resume_after": runner.stop.resume_after}
    extra["connection"] = ({"base_url": "sandbox"} if config.sandbox
                           else route_of(config).as_dict())
    return extra


__all__ = ["run", "check_base_url", "live_config", "lock_store", "make_client", "open_store",
           "plan_key", "same_outputs", "seeded_budget"]
