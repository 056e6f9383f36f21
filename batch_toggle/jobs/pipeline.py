"""The three jobs (validate, run, audit) as library calls: load -> plan -> send -> report.

The CLI and notebooks call these with a frozen JobConfig and receive a JobResult; output to a
person goes through the Hooks the caller passes, so the core never prints.
"""

from __future__ import annotations

import getpass
import os
import platform
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import pyarrow as pa

from batch_toggle import vocab
from batch_toggle.clock import utc_text
from batch_toggle.config import JobConfig, LoadOptions, PlanOptions, SendOptions  # noqa: F401 - re-exported
from batch_toggle.errors import ExitCode, TooManyInvalid, worst_exit
from batch_toggle.events import SILENT, CostRecord, FinishEvent, Hooks, PlanEvent  # noqa: F401 - re-exported
from batch_toggle.input.normalize import normalize
from batch_toggle.input.readers import LoadedInput, load_inputs
from batch_toggle.plan.units import Plan, build_plan
from batch_toggle.report.summary import (
    HtmlRecord,
    JobFacts,
    RejectsRecord,
    ReportRecord,
    Summary,
    SummaryBase,
    attention_facts,
    describe_sources,
    summary_of,
)
from batch_toggle.report.table import (
    UnitResults,
    assemble,
    count_by,
    rejects_table,
    row_refs,
    statuses_present,
)
from batch_toggle.report.writers import (
    check_outputs_distinct,
    check_writable,
    default_report_path,
    html_path,
    release_reservation,
    render_summary_table,
    report_format,
    summary_path,
    unused_report_path,
    write_json,
    write_table,
)
from batch_toggle.send.cost import cost_line, cost_record
from batch_toggle.send.limiter import Budget
from batch_toggle.send.proxies import redact
from batch_toggle.version import __version__


@dataclass(frozen=True)
class Prepared:
    """A loaded, normalised and planned job, before anything is sent."""

    config: JobConfig
    run_id: str
    started: datetime
    loaded: LoadedInput
    norm: pa.Table
    plan: Plan
    report_path: Path
    # `started` on the monotonic clock: durations never come from the wall clock, which a
    # step (NTP, a VM resumed) can move back mid-run.
    started_mono: float = field(default_factory=time.monotonic)
    # The plan's cost as announced (`announce_plan`): the summary states the same figures.
    cost: CostRecord | None = None


@dataclass(frozen=True)
class JobResult:
    exit_code: ExitCode
    run_id: str
    report_path: Path
    summary: Summary
    report: pa.Table


def new_run_id(now: datetime) -> str:
    return f"{now:%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


def load(config: JobConfig, hooks: Hooks = SILENT, *,
         stdin: Any = None) -> tuple[datetime, Path, LoadedInput, pa.Table]:
    """Pre-flight the output paths, then read and normalise; raises InputError/UsageError."""
    started = config.clock.now()  # a timestamp, for the record; never for a duration
    report_path = config.report_path or unused_report_path(
        default_report_path(config.inputs[0], started))
    try:
        check_outputs_distinct({"report": report_path, "summary": summary_path(report_path),
                                "HTML report": html_path(report_path) if config.html else None,
                                "rejects file": config.rejects_path},
                               [i for i in config.inputs if i not in config.tables])
        for path in (report_path, config.rejects_path):
            if path is not None:  # before reading anything: a bad extension or directory: 2
                report_format(path)
                check_writable(path)
        loaded = load_inputs(config.inputs, config.load, stdin=stdin, tables=config.tables)
        for warning in loaded.warnings:
            hooks.notice(f"warning: {warning}")
        norm = normalize(loaded.fields, set_state=config.load.set_state,
                         default_target=config.load.default_target)
    except BaseException:
        release_reservation(report_path)
        raise
    return started, report_path, loaded, norm


def prepare(config: JobConfig, ledger: Any = None, hooks: Hooks = SILENT, *, stdin: Any = None,
            ledger_for: Callable[[LoadedInput], Any] | None = None,
            run_id: str | None = None) -> Prepared:
    """Read, normalise and plan. `ledger_for` picks the ledger once the inputs are known
    (a resume checks their hashes first). Raises InputError/UsageError/TooManyInvalid (exit 2);
    a TooManyInvalid carries the refused file's plan (`prepared`) for its report: a command
    calls `prepare_or_refuse`, which writes it."""
    started_mono = config.clock.mono()
    started, report_path, loaded, norm = load(config, hooks, stdin=stdin)
    if ledger_for is not None:
        ledger = ledger_for(loaded)

    def refs(rows: Any) -> list[str]:
        return row_refs(loaded, rows)

    try:
        plan = build_plan(norm, refs, config.plan, ledger)
    except TooManyInvalid as exc:
        # The refusal is about the files: name them, as every other input error does.
        names = ", ".join(s.name for s in loaded.sources)
        unchecked = replace(config.plan, max_invalid=100.0)
        refused = Prepared(config, run_id or new_run_id(started), started, loaded, norm,
                           build_plan(norm, refs, unchecked, ledger), report_path, started_mono)
        raise TooManyInvalid(f"{names}: {exc}", exc.share, prepared=refused) from exc
    return Prepared(config, run_id or new_run_id(started), started, loaded, norm, plan,
                    report_path, started_mono)


def prepare_or_refuse(config: JobConfig, hooks: Hooks = SILENT, **kwargs: Any) -> Prepared:
    """`prepare` for a command: a file refused by --max-invalid still gets its report (every
    row, whatever happens), then the refusal is raised naming it, with the
    report's JobResult as its `result`. Exit 2 stays one line on stderr: the refusal's."""
    try:
        return prepare(config, hooks=hooks, **kwargs)
    except TooManyInvalid as exc:
        if exc.prepared is None:
            raise
        result = _refuse(exc.prepared, hooks, exc.share)
        raise TooManyInvalid(f"{exc} Why each row is invalid: {result.report_path}", exc.share,
                             result=result) from exc


def _refuse(prepared: Prepared, hooks: Hooks, why: str) -> JobResult:
    """The report of a file refused by --max-invalid (every row, whatever
    happens): the invalid rows say why each is invalid, which is what the operator needs to
    see; every unit is `not_attempted`, nothing was sent. Exit 2."""
    units = UnitResults.uniform(prepared.plan.requests_needed, vocab.NOT_ATTEMPTED, "aborted",
                                f"not sent: the file was refused ({why})")
    quiet = replace(hooks, notice=lambda _line: None)  # the refusal's one line says it all
    return finish(prepared, units, quiet, stop_exit=ExitCode.USAGE, extra={})


def plan_cost(prepared: Prepared) -> CostRecord:
    """What the plan will spend, stated before any request: as announced
    (`announce_plan`), or else from a fresh budget."""
    if prepared.cost is not None:
        return prepared.cost.copy()
    return request_cost(prepared.plan.requests_needed, prepared.config.send)


def request_cost(needed: int, send: SendOptions, *, budget: Budget | None = None) -> CostRecord:
    """`needed` requests and how long until the last reply, by the one cost model (cost.py)
    over `budget` as it stands (slots held, pacing, workers, the latency it measured or
    expects; default: a fresh budget of `send`, whose estimate is a range over latencies)."""
    if budget is None:
        budget = Budget.from_options(send)
    return cost_record(budget.estimate(needed), send.rate)


def client_only(prepared: Prepared) -> bool:
    targets = prepared.plan.units.targets()
    return targets == {"client"}


CLIENT_ONLY_NOTE = ("this file targets only `client`: each request changes the client's default "
                    "for future jobs; jobs that exist keep their own setting")


def announce_plan(prepared: Prepared, hooks: Hooks, *, budget: Budget | None = None) -> Prepared:
    """State the plan's cost before any request (the plan line, the `plan` event), from
    `budget` as it stands (see `request_cost`). Returns `prepared` carrying that cost, which
    its summary then states."""
    cost = request_cost(prepared.plan.requests_needed, prepared.config.send, budget=budget)
    rows = prepared.loaded.raw.num_rows
    hooks.notice(f"plan: {rows:,} row{'' if rows == 1 else 's'} -> {cost_line(cost)}")
    if client_only(prepared):
        hooks.notice(f"note: {CLIENT_ONLY_NOTE}")
    hooks.event("plan", PlanEvent(command=prepared.config.command, run_id=prepared.run_id,
                                  rows=prepared.loaded.raw.num_rows, **cost))
    return replace(prepared, cost=cost)


def exit_code_for(statuses: set[str], stop_exit: ExitCode | None = None) -> ExitCode:
    codes = {stop_exit} if stop_exit is not None else set()
    if statuses & vocab.PROBLEM_STATUSES:
        codes.add(ExitCode.ROW_PROBLEMS)
    return worst_exit(codes)


def finish(prepared: Prepared, units: UnitResults, hooks: Hooks, *, stop_exit: ExitCode | None,
           extra: JobFacts) -> JobResult:
    """Assemble and write the report, the summary and the rejects; decide the exit code."""
    report = assemble(prepared.loaded, prepared.norm, prepared.plan, units, prepared.run_id)
    statuses = statuses_present(report) if report.num_rows else set()
    exit_code = exit_code_for(statuses, stop_exit)
    config = prepared.config
    # A report of requests sent must survive a power cut; one of a plan (validate, --dry-run)
    # can be made again by running it again, so it is not worth the fsyncs.
    durable = config.command != "validate" and not config.dry_run
    digest = write_table(report, prepared.report_path, durable=durable)
    waiting = slice_ended(config, stop_exit)
    summary = summary_of(build_summary(prepared, report, exit_code, digest, extra), extra,
                         attention_facts(report, waiting))
    if config.rejects_path is not None:
        rejects = rejects_table(prepared.loaded, report, waiting=waiting)
        write_table(rejects, config.rejects_path, durable=durable)
        summary["rejects"] = RejectsRecord(path=str(config.rejects_path), rows=rejects.num_rows)
    if config.html:
        _write_html(summary, report, prepared.report_path, hooks, durable=durable)
    write_json(summary, summary_path(prepared.report_path), durable=durable)
    hooks.notice(render_summary_table(summary, color=hooks.color))
    hooks.event("finish", FinishEvent(run_id=prepared.run_id, exit_code=int(exit_code),
                                      verdict=summary["verdict"],
                                      counts=summary["counts_by_status"]))
    return JobResult(exit_code, prepared.run_id, prepared.report_path, summary, report)


def slice_ended(config: JobConfig, stop_exit: ExitCode | None) -> bool:
    """A run that stopped early and that `run --resume` continues (exit 4 or 130): its
    `not_attempted` rows are waiting for the next slice, not rows that need a person. An audit
    is never resumed, and exit 3 stops a run for good."""
    return (config.command == "run" and not config.dry_run
            and stop_exit is not None and vocab.resumable(stop_exit))


def _write_html(summary: Summary, report: pa.Table, report_path: Path,
                hooks: Hooks, *, durable: bool = True) -> None:
    """The HTML page beside the report. It is a view of the evidence, not the evidence: a
    failure to write it is a warning, never a lost run (the report and summary JSON stand)."""
    from batch_toggle.report.html import write_html_report

    path = html_path(report_path)
    summary["html_report"] = HtmlRecord(path=str(path))
    try:
        write_html_report(summary, report, path, durable=durable)
    except Exception as exc:  # noqa: BLE001 - see the docstring
        summary.pop("html_report", None)
        hooks.notice(f"warning: the HTML report was not written: {exc}")


def build_summary(prepared: Prepared, report: pa.Table, exit_code: ExitCode, digest: str,
                  extra: JobFacts) -> SummaryBase:
    """The compliance evidence filed beside the report: the keys every job writes (`extra`,
    the job's own, may replace some: see report/summary.summary_of)."""
    config = prepared.config
    finished = config.clock.now()
    stopped = extra.get("stopped")
    return SummaryBase(
        tool="batch-toggle",
        version=__version__,
        command=config.command + (" --dry-run" if config.dry_run else ""),
        run_id=prepared.run_id,
        started_at=utc_text(prepared.started),
        finished_at=utc_text(finished),
        duration_s=round(config.clock.mono() - prepared.started_mono, 3),
        user=_user(),
        host=socket.gethostname(),
        platform=platform.platform(),
        inputs=describe_sources(prepared.loaded),
        options=options_record(config),
        rows=report.num_rows,
        counts_by_status=count_by(report["status"]),
        counts_by_error_code=count_by(report["error_code"]),
        plan=plan_cost(prepared),
        requests_sent=0,
        responses_429=0,
        retries=0,
        budget_used=0,
        exit_code=int(exit_code),
        verdict=vocab.verdict(config.command, exit_code,
                              stopped["code"] if stopped is not None else None),
        client_only=client_only(prepared),
        notes=[CLIENT_ONLY_NOTE] if client_only(prepared) else [],
        report=ReportRecord(path=str(prepared.report_path),
                            format=prepared.report_path.suffix[1:], sha256=digest),
    )


def options_record(config: JobConfig) -> dict[str, Any]:
    """The options that shaped the run, for the evidence file (never the key)."""
    send = config.send
    return {
        "map": dict(config.load.column_map), "set_state": config.load.set_state,
        "default_target": config.load.default_target, "encoding": config.load.encoding,
        "sheet": config.load.sheet,
        "on_conflict": config.plan.on_conflict, "max_invalid": config.plan.max_invalid,
        "skip_confirmed": config.plan.skip_confirmed,
        "allow_resubscribe": config.plan.allow_resubscribe,
        "base_url": "sandbox" if config.sandbox else send.base_url, "rate": str(send.rate),
        "max_rps": send.max_rps, "concurrency": send.concurrency, "timeout": send.timeout,
        "max_attempts": send.max_attempts, "daily_limit": send.daily_limit,
        "max_requests": send.max_requests, "stop_after": send.stop_after,
        "halt_after": send.halt_after, "canary": send.canary, "resume": config.resume,
        "retry_failed": config.retry_failed, "dry_run": config.dry_run,
        "trust": send.trust, "ca_bundle": send.ca_bundle,
        "proxy": redact(send.proxy) if send.proxy else None,
    }


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())


def validate(config: JobConfig, hooks: Hooks = SILENT, *, ledger: Any = None,
             stdin: Any = None) -> JobResult:
    """Load, normalise, validate, dedupe and report what would happen; sends nothing."""
    prepared = prepare_or_refuse(config, hooks, ledger=ledger, stdin=stdin)
    prepared = announce_plan(prepared, hooks)
    units = UnitResults.uniform(prepared.plan.requests_needed, vocab.DRY_RUN)
    return finish(prepared, units, hooks, stop_exit=None, extra={})

