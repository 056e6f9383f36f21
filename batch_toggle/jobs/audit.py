"""`batch-toggle audit`: which rows does Logis already honour? Read, compare, report; never write.

Same loading, validation and plan as `run` (so invalid, duplicate, superseded and conflict rows
come out exactly as there), then ONE `GET /api/apikeys/track?job_id=` per distinct job among
the plan's units: a job named by a `job` row and a `client` row is read once, since the reply
shows both the job's and its client's do_notify_sms. The reads go through the same runner as a
run (budget shared through the state store, retries, 429 pauses, abort, halt, signals,
progress); only the Operation differs (operations.Track).

Two differences from `run`'s plan, both deliberate:
* every valid unit is read, even one an earlier run confirmed (`--skip-confirmed` does not
  apply): an audit exists to check what Logis shows now, not what the ledger remembers;
* the ledger learns observations only (never confirmations: the track endpoint does not check
  the review key), plus each job's client, which feeds the plan's client-level conflicts.

`--sample N` reads N distinct jobs chosen with a seeded RNG and estimates the share of units in
sync with a 95% Wilson score interval, with a finite population correction.
"""

from __future__ import annotations

import asyncio
import math
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import httpx
import numpy as np

from batch_toggle import vocab
from batch_toggle.config import DEFAULT_SEED, AuditOptions, SendOptions  # noqa: F401 - re-exported
from batch_toggle.errors import StoreError
from batch_toggle.events import CostRecord, PlanEvent
from batch_toggle.jobs import session
from batch_toggle.jobs.pipeline import (
    CLIENT_ONLY_NOTE,
    SILENT,
    Hooks,
    JobConfig,
    JobResult,
    Prepared,
    client_only,
    prepare_or_refuse,
    request_cost,
)
from batch_toggle.outcome import Outcome
from batch_toggle.plan.units import Units
from batch_toggle.report.summary import AuditRecord, JobFacts
from batch_toggle.report.table import UnitResults
from batch_toggle.send.cost import cost_notes
from batch_toggle.send.limiter import Budget
from batch_toggle.send.operations import Track, track_verdict
from batch_toggle.send.signals import Interrupts
from batch_toggle.state.interface import Store
from batch_toggle.state.ledger import ledger_view
from batch_toggle.state.records import LedgerUpdate

Z_95 = 1.959963984540054  # the standard normal quantile of 0.975

NOT_SAMPLED = "not in the audit sample"
REVIEW_KEY_NOTE = ("the review key is not verified by an audit (the track endpoint does not "
                   "check it): a row with a wrong review_key can be in_sync or would_change here "
                   "and still fail with incorrect_review_key in a run")
OBSERVED_NOTE = ("an audit records what it saw as observed, never as confirmed: a later `run` "
                 "still sends every unit that no earlier run confirmed, in_sync ones included")
INTERVAL_METHOD = ("Wilson score interval, 95%, with finite population correction "
                   "(effective n = n(N-1)/(N-n)); units are counted, a sampled job's units "
                   "all audited, reads that failed left out")


@dataclass(frozen=True)
class Reads:
    """One read per distinct job of a plan, in the plan's send order.

    `units` is what the runner works through (one entry per read: its job, and the first plan
    unit of that job, which the read's own outcome speaks for); `of_unit[u]` is the read that
    answers plan unit `u`.
    """

    units: Units
    of_unit: np.ndarray

    def __len__(self) -> int:
        return len(self.units)


def plan_reads(units: Units) -> Reads:
    """Group a plan's units by job: one read each, in the order the jobs first come."""
    read_of_job: dict[str, int] = {}
    first: list[int] = []
    of_unit = np.empty(len(units), dtype=np.int64)
    for u, job in enumerate(units.job_id):
        r = read_of_job.get(job)
        if r is None:
            r = read_of_job[job] = len(first)
            first.append(u)
        of_unit[u] = r
    take = np.asarray(first, dtype=np.int64)
    reads = Units(
        row=units.row[take] if len(take) else np.zeros(0, dtype=np.int64),
        job_id=[units.job_id[u] for u in first],
        review_key=[units.review_key[u] for u in first],
        do_notify_sms=units.do_notify_sms[take] if len(take) else np.zeros(0, dtype=bool),
        update_target=[units.update_target[u] for u in first],
        after=np.full(len(first), -1, dtype=np.int64),  # reads do not depend on each other
    )
    return Reads(reads, of_unit)


def choose_sample(n_reads: int, sample: int | None, seed: int) -> list[int]:
    """The reads to send, in plan order: all of them, or `sample` distinct ones drawn with
    a seeded RNG (the same file, N and seed always give the same jobs)."""
    if sample is None or sample >= n_reads:
        return list(range(n_reads))
    return sorted(random.Random(seed).sample(range(n_reads), sample))


def wilson_interval(successes: int, n: int, population: int | None = None,
                    z: float = Z_95) -> tuple[float, float]:
    """The Wilson score interval of a proportion `successes`/`n`.

    With `population` (N), the finite population correction shrinks the variance by
    (N-n)/(N-1), i.e. uses an effective n of n(N-1)/(N-n); a sample of the whole population
    gives the exact share. n = 0 knows nothing: (0, 1).
    """
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    n_eff = float(n)
    if population is not None:
        if n >= population:
            return p, p
        n_eff = n * (population - 1) / (population - n)
    z2 = z * z
    denom = 1.0 + z2 / n_eff
    centre = (p + z2 / (2.0 * n_eff)) / denom
    half = z * math.sqrt(p * (1.0 - p) / n_eff + z2 / (4.0 * n_eff * n_eff)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def unit_outcomes(units: Units, reads: Reads, track: Track, done: Mapping[int, Outcome],
                  sampled: Sequence[int]) -> dict[int, Outcome]:
    """Every plan unit's outcome from the reads: in_sync/would_change from what its job's
    read showed; a failed read's outcome shared by the units of its job; `not_attempted`
    (no error code) for units of jobs left out of the sample. Units whose read was never
    completed (a stop) are absent: the runner's unsent outcome covers them."""
    in_sample = set(sampled)
    out: dict[int, Outcome] = {}
    not_sampled = Outcome(vocab.NOT_ATTEMPTED, None, NOT_SAMPLED)
    for u in range(len(units)):
        r = int(reads.of_unit[u])
        if r not in in_sample:
            out[u] = not_sampled
            continue
        read = done.get(r)
        if read is None:
            continue
        result = track.seen.get(r)
        if result is None:
            out[u] = read
            continue
        v = track_verdict(result, units.update_target[u], bool(units.do_notify_sms[u]))
        out[u] = replace(read, status=v.status or vocab.FAILED, error_code=v.error_code,
                         error_message=v.message, retryable=v.retryable,
                         entity_id=v.entity_id, confirmed_do_notify_sms=v.confirmed)
    return out


# --- the job ----------------------------------------------------------------------------------


def audit(config: JobConfig, hooks: Hooks = SILENT, *, options: AuditOptions | None = None,
          stdin: Any = None, transport: httpx.AsyncBaseTransport | None = None) -> JobResult:
    """Plan as `run` does, read each distinct job once, report in_sync/would_change per row.
    Never sends a PUT. Raises UsageError/InputError (exit 2) before any read, StoreLocked when
    another run or audit holds the state store."""
    options = options or AuditOptions()
    config = replace(config, command="audit", dry_run=False, resume=False, retry_failed=False,
                     plan=replace(config.plan, skip_confirmed=False),
                     send=replace(config.send, canary=0))
    config = session.live_config(config)
    with session.open_store(config) as store:
        return _audit_locked(config, hooks, store, options, stdin, transport)


def _audit_locked(config: JobConfig, hooks: Hooks, store: Store | None,
                  options: AuditOptions, stdin: Any,
                  transport: httpx.AsyncBaseTransport | None) -> JobResult:
    prepared = prepare_or_refuse(config, hooks, stdin=stdin,
                                 ledger_for=(lambda _loaded: ledger_view(store)) if store
                                 else None)
    if store is not None:
        session.record_start(config, store, prepared, [], command="audit")
    reads = plan_reads(prepared.plan.units)
    todo = choose_sample(len(reads), options.sample, options.seed)
    budget = session.seeded_budget(config, store, hooks)
    cost = _announce(prepared, reads, todo, options, hooks, budget)
    track = Track(reads.units.job_id, reads.units.update_target,
                  reads.units.do_notify_sms.tolist())
    # As for a run: from the start of the reads until the report is written, SIGINT/SIGTERM
    # stop the audit (the report is written, exit 130), never escape as KeyboardInterrupt.
    with Interrupts() as interrupts, session.run_watchdog(store, prepared.run_id) as watchdog:
        runner, counters = asyncio.run(session.send_units(
            config, hooks, store, prepared, todo, transport, units=reads.units,
            operation=track, interrupts=interrupts, advice=_no_resume, watchdog=watchdog,
            budget=budget))
        outcomes = unit_outcomes(prepared.plan.units, reads, track,
                                 {**runner.unfinished_outcomes(), **runner.committer.outcomes},
                                 todo)
        if store is not None and runner.committer.error is None:
            _record_units(store, prepared, outcomes, reads, track, hooks)
        facts = audit_facts(prepared, reads, todo, outcomes, options, cost, budget)

        def results() -> tuple[UnitResults, JobFacts]:
            units = UnitResults.from_outcomes(prepared.plan.requests_needed, outcomes,
                                              runner.unsent_outcome())
            return units, {**session.send_summary(runner, counters, config), **facts}

        result = session.finish_interruptible(prepared, hooks, runner, interrupts, results)
        for line in audit_lines(facts, stopped=runner.stop is not None):
            hooks.notice(line)
        session.record_finish(store, config, prepared.run_id, result, runner.stop)
    if runner.committer.error is not None:
        hooks.notice(f"warning: the state store stopped accepting outcomes: "
                     f"{runner.committer.error}")
    if runner.stop is not None:
        # Last on stderr, as for `run`: why the audit ended before reading every job.
        hooks.notice(f"stopped: {runner.stop.message}")
    return result


def _announce(prepared: Prepared, reads: Reads, todo: Sequence[int], options: AuditOptions,
              hooks: Hooks, budget: Budget) -> CostRecord:
    """The audit's cost before any read, from the budget the reads will
    meet, and what an audit cannot check. Returns the cost, which the summary states."""
    cost = request_cost(len(todo), prepared.config.send, budget=budget)
    sample = (f" (a sample of {len(todo):,} of {len(reads):,} jobs, seed {options.seed})"
              if len(todo) < len(reads) else "")
    hooks.notice(f"audit plan: {prepared.loaded.raw.num_rows:,} rows, "
                 f"{prepared.plan.requests_needed:,} units, {len(reads):,} distinct jobs -> "
                 f"{_reads(len(todo))}{sample}: about {cost['estimated_duration']} at "
                 f"{cost['rate']}{cost_notes(cost)}")
    if client_only(prepared):
        hooks.notice(f"note: {CLIENT_ONLY_NOTE}")
    hooks.event("plan", PlanEvent(command="audit", run_id=prepared.run_id,
                                  rows=prepared.loaded.raw.num_rows,
                                  units=prepared.plan.requests_needed, jobs=len(reads), **cost))
    return cost


# The runner words its stop messages for `run` ("resume with --resume", "fix it and run again
# with --resume"); an audit rejects --resume and is simply run again. The runner applies this
# to every stop (Runner's `advice`), so the report, the summary and the events agree.
_RESUME_ADVICE = re.compile(r"\b(?:resume|run again) with --resume\b")


def _no_resume(message: str) -> str:
    """The runner's stop messages say how to resume a run; an audit is simply run again."""
    return _RESUME_ADVICE.sub("audit again", message)


def _reads(n: int) -> str:
    return f"{n:,} read" + ("" if n == 1 else "s")


def _record_units(store: Store, prepared: Prepared, outcomes: Mapping[int, Outcome],
                  reads: Reads, track: Track, hooks: Hooks) -> None:
    """Store every audited unit's outcome (the runner stored one per read) and, for `client`
    units, the client's default as observed. A failure here costs no budget: warn, report."""
    units = prepared.plan.units
    items: list[tuple[int, Outcome, LedgerUpdate | None]] = []
    for u, outcome in outcomes.items():
        if not outcome.is_final:
            continue
        result = track.seen.get(int(reads.of_unit[u]))
        ledger = None
        if (units.update_target[u] == "client" and result is not None
                and outcome.confirmed_do_notify_sms is not None):
            ledger = LedgerUpdate(
                job_id=units.job_id[u], update_target="client",
                do_notify_sms=outcome.confirmed_do_notify_sms, review_key_hash=None,
                entity_id=outcome.entity_id, client_id=result.verdict.client_id,
                confirmed_at=outcome.sent_at or "", run_id=prepared.run_id, observed=True)
        items.append((int(units.row[u]), outcome, ledger))
    try:
        store.record_outcomes(prepared.run_id, items)
    except StoreError as exc:
        hooks.notice(f"warning: could not store the audit's unit outcomes: {exc}")


# --- what the summary says --------------------------------------------------------------------


def audit_facts(prepared: Prepared, reads: Reads, todo: Sequence[int],
                outcomes: Mapping[int, Outcome], options: AuditOptions,
                cost: Mapping[str, Any], budget: Budget) -> JobFacts:
    """The summary's audit keys: the reads' cost as announced (as `plan`), the counts, what a
    run needs (from `budget` as the reads left it: their slots held, their latency measured),
    the sample's estimate, and the notes (the review key is not verified)."""
    send = prepared.config.send
    statuses = [o.status for o in outcomes.values()]
    in_sync, would_change = statuses.count(vocab.IN_SYNC), statuses.count(vocab.WOULD_CHANGE)
    n_units = prepared.plan.requests_needed
    sampled = len(todo) < len(reads)
    facts = JobFacts(
        plan={**cost, "requests": "track reads, one per distinct job"},
        audit=AuditRecord(
            jobs=len(reads), reads_planned=len(todo), units=n_units,
            units_in_sync=in_sync, units_would_change=would_change,
            review_key_verified=False,
        ),
        run_needs={**request_cost(would_change, send, budget=budget),
                   "what": "one toggle per would_change unit"
                           + (" of the sample" if sampled else "")},
        sample=None,
        notes=([CLIENT_ONLY_NOTE] if client_only(prepared) else [])
        + [REVIEW_KEY_NOTE, OBSERVED_NOTE],
    )
    if sampled:
        sample = sample_estimate(in_sync, in_sync + would_change, n_units, len(todo), options,
                                 send, budget)
        sample["units_sampled"] = int(np.isin(reads.of_unit, todo).sum())
        facts["sample"] = sample
    return facts


def sample_estimate(in_sync: int, measured: int, population: int, jobs: int,
                    options: AuditOptions, send: SendOptions,
                    budget: Budget | None = None) -> dict[str, Any]:
    """The share of all units in sync, estimated from the sampled units, with its 95% interval;
    and the run that the estimate implies."""
    low, high = wilson_interval(in_sync, measured, population)
    share = in_sync / measured if measured else None
    est: dict[str, Any] = {
        "size": options.sample, "seed": options.seed, "jobs_sampled": jobs,
        "units_measured": measured, "units_in_sync": in_sync, "population_units": population,
        "estimated_share_in_sync": None if share is None else round(share, 4),
        "confidence": 0.95, "interval": [round(low, 4), round(high, 4)],
        "method": INTERVAL_METHOD,
    }
    if share is not None:
        expected = round((1.0 - share) * population)
        est["estimated_run_needs"] = {
            **request_cost(expected, send, budget=budget),
            "interval": [round((1.0 - high) * population), round((1.0 - low) * population)],
        }
    return est


def audit_lines(facts: Mapping[str, Any], *, stopped: bool = False) -> list[str]:
    """The stderr lines after the summary table: what a run needs, the sample's estimate, and
    that the review key was not verified. `stopped`: the audit ended before reading every job
    (its `stopped:` line follows), so the counts cover only what was read."""
    needs = facts["run_needs"]
    of = " of the sample" if facts.get("sample") else ""
    if stopped:
        of += " among the jobs read before it stopped"
    n = needs["requests_needed"]
    lines = [f"audit: {facts['audit']['units_in_sync']:,} units in sync, {n:,} would change{of}; "
             f"a run needs {n:,} request{'' if n == 1 else 's'} for them: about "
             f"{needs['estimated_duration']} at {needs['rate']}"]
    est = facts.get("sample")
    if est:
        if est["estimated_share_in_sync"] is None:
            lines.append(f"sample: {est['jobs_sampled']:,} jobs read, no unit measured: "
                         "no estimate")
        else:
            low, high = est["interval"]
            run = est["estimated_run_needs"]
            lines.append(
                f"sample: {est['units_in_sync']:,} of {est['units_measured']:,} measured units "
                f"in sync: about {est['estimated_share_in_sync']:.1%} of all "
                f"{est['population_units']:,} units (95% CI {low:.1%} to {high:.1%}, Wilson "
                f"score, finite population correction); a run of the whole file would change "
                f"about {run['requests_needed']:,} units ({run['interval'][0]:,} to "
                f"{run['interval'][1]:,}): about {run['estimated_duration']} at {run['rate']}")
    lines += [f"note: {note}" for note in facts["notes"] if note != CLIENT_ONLY_NOTE]
    return lines


__all__ = ["AuditOptions", "audit", "choose_sample", "plan_reads", "unit_outcomes",
           "wilson_interval"]
