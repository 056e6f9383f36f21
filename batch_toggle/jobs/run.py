"""The live run: resume (state/resume.py) and the session's store, budget and send (session.py).

Ends in the same `finish` as validate, so a live run's report has the same shape and the same
one-row-per-input-row guarantee whatever stopped it.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import datetime
from typing import Any

import httpx

from batch_toggle.errors import ExitCode, ReportError
from batch_toggle.events import ResumeEvent, estimate_of
from batch_toggle.jobs import session
from batch_toggle.jobs.pipeline import (
    SILENT,
    Hooks,
    JobConfig,
    JobResult,
    Prepared,
    announce_plan,
    prepare_or_refuse,
    request_cost,
)
from batch_toggle.outcome import Outcome
from batch_toggle.report.table import UnitResults
from batch_toggle.send.cost import latency_prior
from batch_toggle.send.limiter import Budget
from batch_toggle.send.runner import Counters, Runner, Stop
from batch_toggle.send.signals import Interrupts
from batch_toggle.state.interface import Store
from batch_toggle.state.ledger import ledger_view
from batch_toggle.state.records import RunRecord
from batch_toggle.state.resume import (
    find_resumable,
    previous_outcomes,
    same_outputs,
    units_to_do,
)


def run(config: JobConfig, hooks: Hooks = SILENT, *, stdin: Any = None,
        transport: httpx.AsyncBaseTransport | None = None) -> JobResult:
    """Plan, send the toggles, write the report."""
    if config.dry_run:
        from batch_toggle.jobs.pipeline import validate
        return validate(config, hooks, stdin=stdin)
    config = session.live_config(config)
    with session.open_store(config) as store:
        return _run_locked(config, hooks, store, stdin, transport)


def _run_locked(config: JobConfig, hooks: Hooks, store: Store | None, stdin: Any,
                transport: httpx.AsyncBaseTransport | None) -> JobResult:
    resumed: list[RunRecord] = []
    if config.resume and store is not None:
        config = same_outputs(config, store)

    def ledger_for(loaded: Any) -> Any:
        if store is None:
            return None
        if config.resume:
            record = find_resumable(config, store, loaded, hooks)
            if record is not None:
                resumed.append(record)
        return ledger_view(store, exclude_run=resumed[0].run_id if resumed else None)

    prepared = prepare_or_refuse(config, hooks, stdin=stdin, ledger_for=ledger_for)
    if resumed:
        prepared = replace(prepared, run_id=resumed[0].run_id)
    if store is not None:
        session.record_start(config, store, prepared, resumed)
    previous = previous_outcomes(store, prepared.run_id, prepared.plan.units.row, bool(resumed))
    todo = units_to_do(prepared.plan.requests_needed, previous, config.retry_failed)
    # One budget from here on: the plan's cost, the resume's and the progress ETA are the
    # cost model's view of it (slots earlier runs hold, and their replies' latency).
    budget = session.seeded_budget(config, store, hooks)
    budget.expect_latency(latency_prior(o.latency_ms for o in previous.values()))
    prepared = announce_plan(prepared, hooks, budget=budget)
    if resumed:
        _announce_resume(config, hooks, prepared.run_id, len(previous), len(todo), budget)
    # From the start of sending until the report is written, SIGINT/SIGTERM stop the run
    # (the report is written, exit 130) and never escape as the process's
    # KeyboardInterrupt: while it sends, through the runner; after, recorded here.
    too_early = _before_reset(resumed[0], config.clock.now()) if resumed and todo else None
    with Interrupts() as interrupts, session.run_watchdog(store, prepared.run_id) as watchdog:
        runner, counters = asyncio.run(session.send_units(
            config, hooks, store, prepared, todo, transport, interrupts=interrupts,
            stop_first=too_early, watchdog=watchdog, budget=budget))
        store_error = runner.committer.error
        if store_error is not None:  # said before the report, which may fail for the same reason
            hooks.notice(f"warning: the state store stopped accepting outcomes: {store_error}")
        try:
            outcomes = {**previous, **runner.unfinished_outcomes(), **runner.committer.outcomes}
            result = _report(config, hooks, prepared, outcomes, runner, counters, interrupts)
        except ReportError as exc:
            raise _report_failed(exc, store, store_error) from exc
        # A signal from here on is too late to change anything: the report is written.
        session.record_finish(store, config, prepared.run_id, result, runner.stop,
                              resume_after=_daily_reset(runner.stop))
        if runner.stop is not None:
            # Last on stderr: why the run ended early and when a resume can start (daily limit).
            hooks.notice(f"stopped: {runner.stop.message}")
    return result


def _report(config: JobConfig, hooks: Hooks, prepared: Prepared, outcomes: dict[int, Outcome],
            runner: Runner, counters: Counters, interrupts: Interrupts) -> JobResult:
    """`finish` for a live run, where a signal caught after the sending part counts as one
    during it (see `finish_interruptible`)."""
    return session.finish_interruptible(
        prepared, hooks, runner, interrupts,
        lambda: (UnitResults.from_outcomes(prepared.plan.requests_needed, outcomes,
                                           runner.unsent_outcome()),
                 session.send_summary(runner, counters, config)))


def _report_failed(exc: ReportError, store: Store | None,
                   store_error: BaseException | None) -> ReportError:
    """The report could not be written (a full disk) after requests were sent. The outcomes
    are in the store and the run stays unfinished, so a resume sends nothing again and writes
    the report: say so, and exit 4 (resumable) rather than 2 (which means nothing was sent).
    When the store failed too, some outcomes exist only in this process: never claim otherwise."""
    if store is None:
        return exc
    if store_error is None:
        saved = f"every outcome is saved in the state store {store.location}"
    else:
        saved = (f"the state store {store.location} also failed ({store_error}), so the rows "
                 "answered after that will be sent again by a resume (PUT is idempotent)")
    return ReportError(f"{exc}; {saved}: make room, then run again with --resume to write the "
                       "report", exit_code=ExitCode.STOPPED)


def _daily_reset(stop: Stop | None) -> str | None:
    """When a resume may send again: only a daily limit's reset binds a resume (a Retry-After
    over an hour ends the run too, but a resume may try again: the server said so once)."""
    return stop.resume_after if stop is not None and stop.code == "daily_limit" else None


def _before_reset(record: RunRecord, now: datetime) -> Stop | None:
    """A run that stopped at the API's daily limit may not send again before the limit resets:
    a resume before then would spend requests on 429s (an hourly cron line would knock every
    hour). It stops at once instead, sending nothing, with the same advice and exit 4."""
    reset = record.sends_from(now)
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
    hooks.event("resume", ResumeEvent(run_id=run_id, units_with_outcome=had,
                                      units_to_send=todo, **estimate_of(cost)))


__all__ = ["run"]
