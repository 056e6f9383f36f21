"""What run and audit share: a store opened and locked, a budget seeded from the send log, a
client, the runner driven over the units (canary, progress, committer, signals, watchdog), and
a report written where a late signal still counts.

run (run.py) sends the plan's toggles; audit (audit.py) sends reads through the same engine. Each
keeps only what is its own: the resume rules and the ledger's confirmations for run, the sample
and the comparison for audit.
"""


from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx

from batch_toggle import vocab
from batch_toggle.clock import utc_text
from batch_toggle.config import cli_name, format_duration
from batch_toggle.errors import ExitCode, ReportError, StoreError
from batch_toggle.events import CanaryEvent, RowEvent, WaitEvent
from batch_toggle.hosts import check_base_url
from batch_toggle.jobs.options import check_rules
from batch_toggle.jobs.pipeline import (
    SILENT,
    Hooks,
    JobConfig,
    JobResult,
    Prepared,
    finish,
)
from batch_toggle.outcome import Outcome
from batch_toggle.plan.units import Units
from batch_toggle.report.summary import BudgetUsed, JobFacts, StoppedRecord
from batch_toggle.report.table import UnitResults, row_ref_array
from batch_toggle.report.writers import release_reservation
from batch_toggle.send.causes import explainer
from batch_toggle.send.client import Route, client_for, route_for, worker_connections
from batch_toggle.send.limiter import SEND_LOG_KEEP, WAIT_BUDGET, WAIT_DAILY, Budget
from batch_toggle.send.operations import Operation
from batch_toggle.send.probe import Target
from batch_toggle.send.proxies import DIRECT
from batch_toggle.send.runner import Counters, RunHooks, Runner, Stop, interrupt_stop
from batch_toggle.send.signals import Interrupts
from batch_toggle.send.trust import Trust
from batch_toggle.send.watchdog import Watchdog
from batch_toggle.state import open_store as open_state_store
from batch_toggle.state.committer import Committer, Finished
from batch_toggle.state.interface import Store
from batch_toggle.state.records import RunRecord
from batch_toggle.state.resume import input_names, plan_key
from batch_toggle.state.sendlog import Reading, wall_clock_moved

SANDBOX_BASE_URL = "http://sandbox.invalid"


@contextmanager
def open_store(config: JobConfig) -> Iterator[Store | None]:
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
    store = open_state_store(path)
    try:
        yield store
    finally:
        store.close()
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def live_config(config: JobConfig) -> JobConfig:
    """The config of a job that talks to Logis (run, audit): --sandbox points it at the
    in-process simulator with its key; otherwise the base URL must be safe, a key present,
    and the route usable (a --ca-bundle that loads, a proxy URL that parses): exit 2 before
    anything is read."""
    if config.sandbox:
        config = replace(config, send=replace(config.send, base_url=SANDBOX_BASE_URL),
                         api_key=config.api_key or _sandbox_key())
    check_base_url(config.send.base_url, config.send.insecure or config.sandbox)
    check_rules(config.command, cli_name, resume=config.resume,
                retry_failed=config.retry_failed, api_key=config.api_key)
    if not config.sandbox:
        route_of(config).trust.context()  # loads --ca-bundle: a bad file is a usage error
    return config


def route_of(config: JobConfig) -> Route:
    """How this job reaches its base URL (trust, proxy); see connections.route_for."""
    return route_for(config.send, config.proxy_auth)


@contextmanager
def run_watchdog(store: Store | None, run_id: str) -> Iterator[Watchdog]:
    """A watchdog for the run `run_id` (see watchdog.py): it keeps the store's heartbeat for
    `status`, and records the run as interrupted if the process must stop while stuck."""
    def record_stop() -> None:
        if store is not None:
            store.record_interrupted(run_id, utc_text())

    with Watchdog(heartbeat=store.heartbeat if store is not None else None,
                  record_stop=record_stop) as watchdog:
        yield watchdog


def finish_interruptible(prepared: Prepared, hooks: Hooks, runner: Runner,
                         interrupts: Interrupts,
                         results: Callable[[], tuple[UnitResults, JobFacts]]
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


def record_finish(store: Store | None, config: JobConfig, run_id: str, result: JobResult,
                  stop: Stop | None, resume_after: str | None = None) -> None:
    """The store learns how the job ended (its exit code, counts and stop), once the report
    is written: from then on `status` shows it finished, and a resume knows where it stands."""
    if store is None:
        return
    store.finish_run(run_id, exit_code=int(result.exit_code),
                     finished_at=utc_text(config.clock.wall()),
                     counts=result.summary["counts_by_status"], resume_after=resume_after,
                     stopped=stop_record(stop))


def stop_record(stop: Stop | None) -> dict[str, str] | None:
    """What the store keeps of a run's stop, for `batch-toggle status` to say why it ended."""
    return None if stop is None else {"code": stop.code, "message": stop.message}


def lock_store(store: Store, prepared: Prepared, command: str) -> None:
    """Take the store's one-run lock for `prepared` (StoreLocked when another run holds it:
    its default report name, reserved, is then given back, so that a refused run leaves no
    empty report behind)."""
    try:
        store.acquire_lock(prepared.run_id,
                           owner=f"batch-toggle {command} {' '.join(prepared.config.inputs)}",
                           scope=lock_scope(prepared.config, command))
    except BaseException:
        release_reservation(prepared.report_path)
        raise


def lock_scope(config: JobConfig, command: str) -> str:
    """The work a run lock keeps to one run: the command, its inputs (by name, in order) and
    its plan options, what `--resume` matches a run by."""
    return json.dumps([command, input_names(config), plan_key(config)])


def record_start(config: JobConfig, store: Store, prepared: Prepared,
                 resumed: list[RunRecord], command: str = "run") -> None:
    """Take the store's lock (`lock_store`), then record the job's start, or its resume: its
    inputs, plan key, options and where it writes, for `status` and the resumes after it."""
    from batch_toggle.jobs.pipeline import options_record
    lock_store(store, prepared, command)
    now = utc_text(config.clock.wall())
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


def _sandbox_key() -> str:
    from batch_toggle.sandbox import SandboxConfig
    return SandboxConfig().api_keys[0]


def make_client(config: JobConfig,
                transport: httpx.AsyncBaseTransport | None = None) -> httpx.AsyncClient:
    """The job's client (see send/client.py `client_for`): --sandbox talks to the in-process
    simulator, anything else goes through the route's worker connections."""
    if transport is None and config.sandbox:
        from batch_toggle.sandbox import SandboxConfig, create_app
        transport = httpx.ASGITransport(app=create_app(SandboxConfig()))
    elif transport is None:
        transport = worker_connections(route_of(config))
    return client_for(transport, config.send.timeout)


NOTABLE_WAIT = 1.0  # seconds: a budget wait at least this long is an event ("wait")


def wait_events(hooks: Hooks) -> Callable[..., None]:
    """The budget's `on_wait`: a wait for the hourly or daily window that is long enough to
    notice (a full window after the first burst: up to PERIOD) becomes a "wait" event as it
    begins, so a person watching a 40-hour run sees why nothing moves and until when. The
    --max-rps spacing is routine, a 429 pause has its own event, and a wait for responses to
    free a slot (no known end) is no news.

    `at` and `now` are on the budget's clock, which the budget passes."""
    def on_wait(reason: str, at: float, now: float) -> None:
        seconds = at - now
        if reason in (WAIT_BUDGET, WAIT_DAILY) and NOTABLE_WAIT <= seconds < math.inf:
            hooks.event("wait", WaitEvent(reason=reason, seconds=round(seconds, 1)))
    return on_wait


def seeded_budget(config: JobConfig, store: Store | None, hooks: Hooks = SILENT) -> Budget:
    """The run's budget, seeded with the slots earlier runs sharing the store still hold.

    One rule decides what is held (`sendlog.still_held`), for loading and pruning alike: the
    log is pruned to SEND_LOG_KEEP (a day and its margin) or this budget's longest hold if
    that is longer, whatever this run's own windows, and loaded to this budget's hold."""
    budget = Budget.from_options(config.send, clock=config.clock.mono,
                                 sleep=config.clock.sleep, on_wait=wait_events(hooks))
    if store is not None:
        timeout = config.send.timeout
        now = Reading.now(config.clock)
        store.prune_sends(now, max(SEND_LOG_KEEP, budget.hold), timeout)
        gate = store.slot_gate(config.api_key, timeout=timeout) if config.api_key else None
        if gate is not None:
            # A store shared live (PostgreSQL): every process using the key reserves its
            # slots there. The send log still seeds this process's own windows below: it
            # holds what the gate cannot know (sends migrated from a SQLite store), and what
            # it holds twice only makes the first window more careful.
            budget.share(gate)
        # This key's sends only: another key's requests spend another budget.
        sends = store.recent_sends(now, budget.hold, timeout, key=key_of(store, config))
        moved = wall_clock_moved(sends, now)
        if moved > 0:
            hooks.notice(f"warning: the state store's send log has requests dated up to "
                         f"{format_duration(moved)} ahead of this machine's clock, sent before "
                         "a reboot or on another host (the clock was set back since, or the "
                         "two disagree): they count as sent just now, so the budget may wait "
                         "up to one window longer than it needs")
        budget.seed(sends, now=now, timeout=timeout)
    return budget


def key_of(store: Store | None, config: JobConfig) -> str | None:
    """How the store knows this job's API key (its fingerprint), for the send log."""
    if store is None or not config.api_key:
        return None
    return store.api_key_fingerprint(config.api_key)


async def send_units(config: JobConfig, hooks: Hooks, store: Store | None, prepared: Prepared,
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
        hooks.event("row", RowEvent(unit=u, row=row, source=sources[u].as_py(),
                                    job_id=runner.units.job_id[u],
                                    update_target=runner.units.update_target[u],
                                    status=o.status, error_code=o.error_code,
                                    http_status=o.http_status, attempts=o.attempts,
                                    retryable=o.retryable, latency_ms=o.latency_ms))
        now = config.clock.mono()
        done = runner.counters.units_done >= runner.counters.units_total
        if done or now - shown[0] >= PROGRESS_INTERVAL:
            # The snapshot's budget ETA looks at every held slot: build it at a person's pace,
            # not once per row of a fast run.
            shown[0] = now
            hooks.progress(runner.progress_snapshot())

    committer = Committer(store, prepared.run_id, on_committed=committed,
                          outage_limit=config.send.outage_limit, mono=config.clock.mono,
                          key=key_of(store, config))
    route = _route_or_sandbox(config)
    async with make_client(config, transport) as client:
        runner = Runner(sent, client=client, clock=config.clock,
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


def _answered_before(store: Store | None, route: Route) -> bool:
    """Has this base URL answered a run on this store before? (retry.FirstContact)"""
    if store is None:
        return False
    try:
        return store.has_answered(endpoint_key(route.base_url))
    except StoreError:
        return False


def _remember_answer(store: Store | None, route: Route,
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
    hooks.event("canary", CanaryEvent(units=n, failed_permanently=len(bad),
                                      go_on=not bad and runner.stop is None))
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


def send_summary(runner: Runner, counters: Counters, config: JobConfig) -> JobFacts:
    extra = JobFacts(
        requests_sent=counters.requests,
        responses_429=counters.responses_429,
        retries=counters.retries,  # every request beyond a unit's first
        requests_by_reason=runner.requests_by_reason,
        budget_used=BudgetUsed(requests=counters.requests, rate=str(config.send.rate)),
        timeline=runner.timeline.to_dict(),
    )
    if runner.stop is not None:
        extra["stopped"] = StoppedRecord(code=runner.stop.code, message=runner.stop.message,
                                         resume_after=runner.stop.resume_after)
    extra["connection"] = ({"base_url": "sandbox"} if config.sandbox
                           else route_of(config).as_dict())
    return extra
