"""What the state store knows about past runs: their progress, and what a resume would send.

`batch-toggle status` is how an operator (or the person reading a cron mail) answers "is the
big import done, and if not, what will the next `run --resume` do?" without sending anything.
It opens the store read-only, never takes the run lock (a run may be sending right now), and
never writes: a store that does not exist is reported as empty, not created.

Progress is counted in units (one request each: a job and target), because that is what the
store records and what a resume sends; input rows that share a unit share its outcome.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from batch_toggle.clock import SYSTEM, Clock, parse_utc, utc_text
from batch_toggle.config import SendOptions, parse_rate
from batch_toggle.errors import BatchToggleError, UsageError
from batch_toggle.events import CostRecord
from batch_toggle.input.readers import is_in_memory_name
from batch_toggle.send.cost import cost_line
from batch_toggle.send.watchdog import HEARTBEAT, STALL_AFTER
from batch_toggle.state import open_store
from batch_toggle.state.interface import Store
from batch_toggle.state.location import normalise, shown
from batch_toggle.state.records import RunRecord, default_state_path
from batch_toggle.state.resume import (
    only_retry_failed_resumes,
    resume_command,
    why_not_resumable,
)
from batch_toggle.vocab import (
    FINISHED,
    KILLED,
    RUN_STATE_OF_EXIT,
    RUNNING,
    STALLED,
)


@dataclass(frozen=True)
class RunStatus:
    """One run: where it stands and what `run --resume` would do with it.

    `resume_sends` counts the units a resume would send: those without a final outcome, less
    the ones another run has confirmed since (a resume finds them `unchanged`, without a
    request), counted by planning the inputs again against the ledger as it stands, as the
    resume will (None when the store does not know the plan's size: a run recorded by an
    older batch-toggle). Where the inputs cannot be planned again (standard input, a file
    that no longer matches), it is the upper bound from the store's counts. `--retry-failed`
    adds `retryable_failed` to it.
    """

    run_id: str
    command: str
    state: str
    exit_code: int | None
    inputs: tuple[str, ...]
    started_at: str
    finished_at: str | None
    resumed_at: str | None
    resumes: int
    rows: int
    units: int | None
    units_done: int
    unit_counts: dict[str, int]
    row_counts: dict[str, int] | None
    retryable_failed: int
    resumable: bool
    resumable_with_retry_failed: bool
    not_resumable_because: str | None
    resume_sends: int | None
    resume_command: str | None
    holder: dict[str, Any] | None
    resume_after: str | None = None  # stopped at a daily limit: a resume sends from then on
    stopped: dict[str, Any] | None = None  # {code, message}: why it ended before its queue
    # How long `resume_sends` take if the resume starts now (jobs.cost_record's keys): the
    # run's last throttling options, the slots the send log holds, its replies' latency.
    resume_cost: CostRecord | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class StoreStatus:
    """The store and its latest runs, newest first."""

    path: Path | str  # a file's path, or a URL without its password
    exists: bool
    lock_holder: dict[str, Any] | None
    runs: tuple[RunStatus, ...]

    def as_dict(self) -> dict[str, Any]:
        return {"state": str(self.path), "exists": self.exists, "lock_holder": self.lock_holder,
                "runs": [r.as_dict() for r in self.runs]}


def store_status(path: str | os.PathLike[str] | None = None, *, limit: int = 20,
                 check_inputs: bool = True, clock: Clock = SYSTEM) -> StoreStatus:
    """Read the store at `path` (default: the user's) and describe its latest `limit` runs.

    With `check_inputs`, every resumable run's input files are hashed again, so that a changed
    or missing file shows here rather than as a refused resume (exit 2) at 3 a.m.
    """
    given = path is not None
    where = normalise(path)
    store_path = where if where is not None else default_state_path()
    if isinstance(store_path, str):
        store_path = shown(store_path)
    with open_store(where, readonly=True) as store:
        if not store.exists:
            return StoreStatus(store_path, False, None, ())
        holder = store.lock_holder()
        holders = {h.get("run_id"): h for h in store.lock_holders()}  # several on PostgreSQL
        now = clock.now()
        runs = tuple(_describe(store, record, holders.get(record.run_id, holder), check_inputs,
                               store_path if given else None, now)
                     for record in store.list_runs(limit))
    return StoreStatus(store_path, True, holder, runs)


def _run_state(record: RunRecord, holder: dict[str, Any] | None, now: datetime) -> str:
    if record.exit_code is None:
        running = holder is not None and holder.get("run_id") == record.run_id
        if running and holder is not None and _stalled(holder, now):
            return STALLED
        return RUNNING if running else KILLED
    return RUN_STATE_OF_EXIT.get(record.exit_code, FINISHED)


# A live run's watchdog refreshes its heartbeat every HEARTBEAT seconds until its loop has been
# silent for STALL_AFTER; allow one missed beat before calling it stalled.
STALLED_AFTER = STALL_AFTER + 2 * HEARTBEAT


def _stalled(holder: dict[str, Any], now: datetime) -> bool:
    alive_at = parse_utc(holder.get("alive_at"))
    return alive_at is not None and (now - alive_at).total_seconds() > STALLED_AFTER


def _describe(store: Store, record: RunRecord, holder: dict[str, Any] | None,
              check_inputs: bool, state_path: Path | str | None, now: datetime) -> RunStatus:
    state = _run_state(record, holder, now)
    left = None if record.units is None else max(0, record.units - record.final_outcomes)
    why = why_not_resumable(store, record, state, check_inputs)
    retry_only = why is not None and only_retry_failed_resumes(store, record, state,
                                                                check_inputs)
    resumable = why is None
    if resumable and check_inputs and left is not None:
        left = _sends_now(store, record, left)
    return RunStatus(
        run_id=record.run_id, command=record.command, state=state,
        exit_code=record.exit_code, inputs=record.input_names,
        started_at=_shown(record.started_at) or record.started_at,
        finished_at=_shown(record.finished_at), resumed_at=_shown(record.resumed_at),
        resumes=record.resumes,
        rows=record.total_rows, units=record.units, units_done=record.final_outcomes,
        unit_counts=dict(record.outcome_counts), row_counts=record.counts,
        retryable_failed=record.retryable_failed,
        resumable=resumable, resumable_with_retry_failed=resumable or retry_only,
        not_resumable_because=why, resume_sends=left if resumable else (0 if retry_only else None),
        resume_command=(resume_command(record, state_path, retry_failed=retry_only)
                        if resumable or retry_only else None),
        holder=holder if state in (RUNNING, STALLED) else None,
        resume_after=_shown(record.sends_from(now)) if resumable else None,
        stopped=record.stopped,
        resume_cost=_resume_cost(store, record, left) if resumable and left else None,
    )


def _resume_cost(store: Store, record: RunRecord, sends: int) -> CostRecord:
    """What `sends` requests cost a resume starting now, by the cost model the run itself
    uses (jobs.request_cost): the budget of the run's last throttling options, seeded with
    the slots the store's send log still holds (read, never pruned: status writes nothing),
    expecting the latency of the run's replies so far."""
    from batch_toggle.jobs.pipeline import request_cost
    from batch_toggle.send.cost import latency_prior
    from batch_toggle.send.limiter import Budget
    from batch_toggle.state.sendlog import Reading

    send = _send_options(record.options)
    budget = Budget.from_options(send)
    now = Reading.now()
    budget.seed(store.recent_sends(now, budget.hold, send.timeout), now=now,
                timeout=send.timeout)
    budget.expect_latency(latency_prior(o.latency_ms
                                        for o in store.load_outcomes(record.run_id).values()))
    return request_cost(sends, send, budget=budget)


def _send_options(options: dict[str, Any]) -> SendOptions:
    """The throttling options a run recorded (its last start or resume); the defaults for
    any it did not record (an older batch-toggle) or that no longer parse."""
    defaults = SendOptions()
    try:
        rate = parse_rate(str(options["rate"])) if options.get("rate") else defaults.rate
    except UsageError:
        rate = defaults.rate

    def number(key: str, default: Any) -> Any:
        value = options.get(key)
        return value if isinstance(value, int | float) and value > 0 else default

    return replace(defaults, rate=rate, max_rps=number("max_rps", defaults.max_rps),
                   concurrency=int(number("concurrency", defaults.concurrency)),
                   timeout=number("timeout", defaults.timeout),
                   daily_limit=number("daily_limit", None))


def _shown(text: str | None) -> str | None:
    """A stored timestamp in the one form every output uses (older stores wrote others)."""
    when = parse_utc(text)
    return utc_text(when) if when is not None else text


def _sends_now(store: Store, record: RunRecord, upper_bound: int) -> int:
    """What `run --resume` would send now: the run's inputs planned again with its plan
    options against the ledger without its own confirmations (exactly as the resume plans
    them), less the units that have a final outcome. A unit another run confirmed since is
    `unchanged` there, without a request. `upper_bound` (the store's count) when the inputs
    cannot be planned again: standard input, or a file whose rows do not match the record."""
    if any(name == "-" or is_in_memory_name(name) for name in record.input_names):
        return upper_bound
    from batch_toggle.config import LoadOptions, PlanOptions
    from batch_toggle.input.normalize import normalize
    from batch_toggle.input.readers import load_inputs
    from batch_toggle.plan.units import build_plan
    from batch_toggle.report.table import row_refs
    from batch_toggle.state.ledger import ledger_view

    opts = record.options
    try:
        loaded = load_inputs(record.input_names, LoadOptions(
            column_map=tuple((opts.get("map") or {}).items()), encoding=opts.get("encoding"),
            set_state=opts.get("set_state"), default_target=opts.get("default_target"),
            sheet=opts.get("sheet")))
    except BatchToggleError:
        return upper_bound
    if loaded.raw.num_rows != record.total_rows:
        return upper_bound
    norm = normalize(loaded.fields, set_state=opts.get("set_state"),
                     default_target=opts.get("default_target"))
    plan = build_plan(norm, lambda rows: row_refs(loaded, rows),
                      PlanOptions(on_conflict=opts.get("on_conflict") or "last",
                                  max_invalid=100.0),
                      ledger_view(store, exclude_run=record.run_id))
    done = store.load_outcomes(record.run_id)
    return sum(1 for row in plan.units.row.tolist()
               if (o := done.get(int(row))) is None or not o.is_final)


# --- text -----------------------------------------------------------------------------------


def render_status(status: StoreStatus) -> str:
    """The text `batch-toggle status` prints: a header, then a block per run."""
    if not status.exists:
        return f"state store {status.path}: does not exist yet (no runs)"
    if not status.runs:
        return f"state store {status.path}: no runs yet"
    noun = "run" if len(status.runs) == 1 else "runs"
    lines = [f"state store {status.path}: {len(status.runs)} {noun}, newest first",
             f"lock: {_holder_text(status.lock_holder)}"]
    for run in status.runs:
        lines.append("")
        lines.extend(_run_lines(run))
    return "\n".join(lines)


def _holder_text(holder: dict[str, Any] | None) -> str:
    if holder is None:
        return "free"
    if not holder.get("run_id"):
        return "held (holder unknown)"
    return (f"held by run {holder['run_id']} (pid {holder.get('pid')} on "
            f"{holder.get('host')}, since {_shown(holder.get('since'))})")


def _run_lines(run: RunStatus) -> list[str]:
    head = f"{run.run_id}  {_state_text(run)}"
    if run.resumable:
        head += ", resumable"
    elif run.resumable_with_retry_failed:
        head += ", resumable with --retry-failed"
    times = f"started {run.started_at}"
    if run.resumes:
        times += f", resumed {run.resumes}x (last {run.resumed_at})"
    if run.finished_at:
        times += f", ended {run.finished_at}"
    lines = [head, f"  inputs:   {', '.join(run.inputs)}", f"  time:     {times}",
             f"  progress: {_progress_text(run)}",
             f"  outcomes: {_counts_text(run.unit_counts, run.retryable_failed)} (units)"]
    if run.row_counts is not None:
        lines.append(f"  report:   {_counts_text(run.row_counts)} (rows)")
    if run.stopped:
        lines.append(f"  stopped:  {run.stopped.get('code')}: {run.stopped.get('message')}")
    lines.extend(_resume_lines(run))
    return lines


def _state_text(run: RunStatus) -> str:
    if run.state == RUNNING:
        pid = run.holder.get("pid") if run.holder else None
        return f"running (pid {pid})" if pid is not None else "running"
    if run.state == STALLED:
        pid = run.holder.get("pid") if run.holder else None
        since = run.holder.get("alive_at") if run.holder else None
        return f"stalled since {since} (pid {pid}: alive, but its event loop stopped answering)"
    if run.state == KILLED:
        return "killed (no exit recorded)"
    return f"{run.state}, exit {run.exit_code}"


def _progress_text(run: RunStatus) -> str:
    rows = f"{run.rows:,} input row{'s' if run.rows != 1 else ''}"
    if run.units is None:
        return f"{run.units_done:,} units have a final outcome; {rows}"
    share = 100.0 if run.units == 0 else 100.0 * run.units_done / run.units
    return (f"{run.units_done:,} of {run.units:,} units have a final outcome "
            f"({share:.0f}%); {rows}")


def _counts_text(counts: dict[str, Any], retryable_failed: int = 0) -> str:
    if not counts:
        return "none yet"
    parts = []
    for status, n in sorted(counts.items(), key=lambda kv: (-int(kv[1]), kv[0])):
        part = f"{status} {int(n):,}"
        if status == "failed" and retryable_failed:
            part += f" ({retryable_failed:,} retryable)"
        parts.append(part)
    return ", ".join(parts)


def _resume_lines(run: RunStatus) -> list[str]:
    if run.resumable:
        if run.resume_sends is None:
            what = "would send the units without a final outcome"
        else:
            what = f"would send {run.resume_sends:,} unit{'s' if run.resume_sends != 1 else ''}"
        if run.retryable_failed:
            extra = (run.resume_sends or 0) + run.retryable_failed
            what += f" ({extra:,} with --retry-failed)"
        if run.resume_after:
            what += f", from {run.resume_after} (the daily limit resets; earlier, it sends none)"
        lines = [f"  resume:   {what}", f"            {run.resume_command}"]
        if run.resume_cost:  # what it costs if it starts now, as its plan line would say
            lines.append(f"  cost:     {cost_line(run.resume_cost)}")
        return lines
    if run.resumable_with_retry_failed:
        return [f"  resume:   --retry-failed would re-send {run.retryable_failed:,} failed "
                f"unit{'s' if run.retryable_failed != 1 else ''} (plain --resume starts a new "
                "run)", f"            {run.resume_command}"]
    return [f"  resume:   no: {run.not_resumable_because}"]


__all__ = ["RunStatus", "StoreStatus", "store_status", "render_status", "resume_command"]
