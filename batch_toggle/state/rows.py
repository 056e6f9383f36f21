"""The rows every backend writes and reads, defined once: the outcome fields and the columns
bulk reads return, the ledger's columns as SQL over its table (`l`), how a run's row becomes a
RunRecord, how a batch of outcomes becomes the rows a backend writes, the numbering of
confirmations, and the merging of send-log records. The backends keep only what differs:
their SQL dialect, their types (SQLite stores booleans as integers), their transactions."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pyarrow as pa

from batch_toggle.outcome import Outcome
from batch_toggle.state.records import LedgerUpdates, RunRecord
from batch_toggle.state.sendlog import SendEntry

# An outcome's stored fields, in Outcome's order (the key, run and row, come before them).
OUTCOME_VALUES = (
    "status", "error_code", "error_message", "retryable", "http_status", "attempts", "entity_id",
    "confirmed_do_notify_sms", "sent_at", "latency_ms",
)
# Bulk reads: (report column, SQL expression, Arrow type) for each column a table can return.
OUTCOME_COLUMNS: tuple[tuple[str, str, pa.DataType], ...] = (
    ("row", "row", pa.int64()),
    ("status", "status", pa.string()),
    ("error_code", "error_code", pa.string()),
    ("error_message", "error_message", pa.string()),
    ("retryable", "retryable", pa.bool_()),
    ("http_status", "http_status", pa.int64()),
    ("attempts", "attempts", pa.int64()),
    ("entity_id", "entity_id", pa.string()),
    ("confirmed_do_notify_sms", "confirmed_do_notify_sms", pa.bool_()),
    ("sent_at", "sent_at", pa.string()),
    ("latency_ms", "latency_ms", pa.float64()),
)
CONFIRMED = "l.conf_at IS NOT NULL"  # a ledger row a PUT confirmed (not only observed)
LEDGER_COLUMNS: tuple[tuple[str, str, pa.DataType], ...] = (
    ("job_id", "l.job_id", pa.string()),
    ("update_target", "l.update_target", pa.string()),
    ("do_notify_sms", f"CASE WHEN {CONFIRMED} THEN l.conf_state ELSE l.obs_state END",
     pa.bool_()),
    ("review_key_hash", "l.conf_hash", pa.string()),
    ("entity_id", f"CASE WHEN {CONFIRMED} THEN l.conf_entity ELSE l.obs_entity END",
     pa.string()),
    ("client_id", "l.client_id", pa.string()),
    ("confirmed_at", "COALESCE(l.conf_at, l.obs_at)", pa.string()),
    ("run_id", f"CASE WHEN {CONFIRMED} THEN l.conf_run ELSE l.obs_run END", pa.string()),
    ("observed", "l.conf_at IS NULL", pa.bool_()),
    ("observed_do_notify_sms", "l.obs_state", pa.bool_()),
    ("observed_at", "l.obs_at", pa.string()),
    # The order of confirmations (higher: written later), from the store's own counter: which
    # of two confirmations is the latest never depends on a clock.
    ("confirmed_seq", f"CASE WHEN {CONFIRMED} THEN l.conf_seq END", pa.int64()),
)
# A run's row as `run_record` takes it (a backend may put NULL for a column its file lacks).
RUN_COLUMNS = ("seq", "run_id", "command", "inputs", "plan_key", "options", "total_rows",
               "started_at", "finished_at", "exit_code", "counts", "pid", "host", "resumes",
               "resumed_at", "units", "resume_after", "stopped")


def ledger_columns(columns: Sequence[str] | None) -> tuple[tuple[str, str, pa.DataType], ...]:
    """The LEDGER_COLUMNS named in `columns` (all when None), in their own order; ValueError
    naming any unknown one."""
    if columns is None:
        return LEDGER_COLUMNS
    known = {name for name, _, _ in LEDGER_COLUMNS}
    unknown = [c for c in columns if c not in known]
    if unknown:
        raise ValueError(f"unknown ledger column(s): {', '.join(unknown)}")
    return tuple(c for c in LEDGER_COLUMNS if c[0] in columns)


def empty_table(columns: Sequence[tuple[str, str, pa.DataType]]) -> pa.Table:
    """A table of these columns and no rows (what a store without the data returns)."""
    return pa.schema([(name, typ) for name, _, typ in columns]).empty_table()


def run_record(row: Sequence[Any], by_status: Sequence[Sequence[Any]]) -> RunRecord:
    """A RunRecord from a run's row (RUN_COLUMNS) and its outcomes counted by status: rows of
    (status, count, count of the retryable)."""
    counts = {str(status): int(n) for status, n, _ in by_status}
    retryable = sum(int(r or 0) for status, _, r in by_status if status == "failed")
    (_, run_id, command, inputs, plan_key, options, total_rows, started_at, finished_at,
     exit_code, finish_counts, pid, host, resumes, resumed_at, units, resume_after,
     stopped) = row
    return RunRecord(
        run_id=run_id, command=command,
        inputs=tuple((str(n), str(h)) for n, h in json.loads(inputs)),
        plan_key=plan_key, options=json.loads(options), total_rows=int(total_rows),
        started_at=started_at, finished_at=finished_at, exit_code=exit_code,
        counts=None if finish_counts is None else json.loads(finish_counts),
        pid=pid, host=host, resumes=resumes, resumed_at=resumed_at,
        outcome_counts=counts,
        final_outcomes=sum(n for s, n in counts.items() if s != "not_attempted"),
        units=None if units is None else int(units), retryable_failed=retryable,
        resume_after=resume_after,
        stopped=None if stopped is None else json.loads(stopped))


def stored_outcome(values: Sequence[Any]) -> Outcome:
    """An Outcome from its OUTCOME_VALUES as a backend stored them (flags as 0/1 or bool)."""
    (status, code, message, retryable, http_status, attempts, entity, confirmed, sent_at,
     latency) = values
    return Outcome(status, code, message, _flag(retryable), http_status, attempts, entity,
                   _flag(confirmed), sent_at, latency)


def _flag(value: Any) -> bool | None:
    return None if value is None else bool(value)


def outcome_rows(items: Sequence[tuple[int, Outcome, LedgerUpdates]],
                 flag: Callable[[bool | None], Any]
                 ) -> tuple[list[tuple[Any, ...]], list[dict[str, Any]]]:
    """What a batch of outcomes writes: one row per outcome (its input row, then
    OUTCOME_VALUES) and one parameter mapping per ledger update, in item order (a later
    update of the same unit wins). `flag` turns a boolean into the backend's type."""
    outcomes: list[tuple[Any, ...]] = []
    ledger: list[dict[str, Any]] = []
    for row, o, learnt in items:
        outcomes.append((
            row, o.status, o.error_code, o.error_message, flag(o.retryable), o.http_status,
            o.attempts, o.entity_id, flag(o.confirmed_do_notify_sms), o.sent_at, o.latency_ms))
        for upd in (() if learnt is None else learnt if isinstance(learnt, tuple)
                    else (learnt,)):
            ledger.append({
                "job_id": upd.job_id, "target": upd.update_target,
                "client_id": upd.client_id or None, "state": flag(upd.do_notify_sms),
                "hash": upd.review_key_hash, "entity": upd.entity_id,
                "at": upd.confirmed_at, "run": upd.run_id, "observed": flag(upd.observed)})
    return outcomes, ledger


def number_confirmations(ledger: list[dict[str, Any]], last: int) -> int:
    """Number the confirmations among `ledger` (in order) after `last`, the store's counter;
    observations get none. The counter's new value. The backend reads and advances the
    counter inside the writing transaction, so the numbers' order is the commits' order."""
    for row in ledger:
        if row["observed"]:
            row["seq"] = None
        else:
            last += 1
            row["seq"] = last
    return last


def confirmations(ledger: Sequence[dict[str, Any]]) -> int:
    """How many numbers `number_confirmations` will hand out for `ledger`."""
    return sum(1 for row in ledger if not row["observed"])


def merged_sends(entries: Sequence[SendEntry | tuple[Any, ...]]) -> list[SendEntry]:
    """One record per request: a request that left and was answered since the last write is
    logged once, with its reply time (a row written twice costs twice). The same result as
    upserting them in order: a later record adds its reply time (and monotonic readings),
    never removes them."""
    merged: dict[str, SendEntry] = {}
    for entry in map(lambda e: SendEntry(*e), entries):
        earlier = merged.get(entry.send_id)
        if earlier is not None:
            entry = entry._replace(**{
                name: getattr(earlier, name) for name in ("done", "boot", "sent_mono",
                                                          "done_mono", "key")
                if getattr(entry, name) is None})
        merged[entry.send_id] = entry
    return list(merged.values())


# A run's row as written: the values of the INSERT and UPDATEs, in the order of their columns
# (the SQL around them is each backend's; the encoding, JSON with sorted keys, is one).

NEW_RUN_COLUMNS = ("run_id", "command", "inputs", "input_names", "plan_key", "options",
                   "total_rows", "started_at", "pid", "host", "units")


def new_run_values(run_id: str, command: str, inputs: Sequence[tuple[str, str]], plan_key: str,
                   options: Mapping[str, Any], total_rows: int, started_at: str,
                   units: int | None) -> tuple[Any, ...]:
    """A new run's NEW_RUN_COLUMNS, as this process (its pid and host) starts it."""
    return (run_id, command, json.dumps([list(i) for i in inputs]),
            json.dumps([name for name, _ in inputs]), plan_key, _json(options), total_rows,
            started_at, os.getpid(), socket.gethostname(), units)


def resumed_values(run_id: str, resumed_at: str, options: Mapping[str, Any] | None,
                   units: int | None) -> tuple[Any, ...]:
    """(pid, host, resumed_at, options, units, run_id) for a resume's UPDATE."""
    return (os.getpid(), socket.gethostname(), resumed_at,
            None if options is None else _json(options), units, run_id)


def finished_values(run_id: str, exit_code: int, finished_at: str, counts: Mapping[str, Any],
                    resume_after: str | None, stopped: Mapping[str, Any] | None
                    ) -> tuple[Any, ...]:
    """(exit_code, finished_at, counts, resume_after, stopped, run_id) for a finish's UPDATE."""
    return (int(exit_code), finished_at, _json(counts), resume_after,
            None if stopped is None else _json(stopped), run_id)


def _json(mapping: Mapping[str, Any]) -> str:
    return json.dumps(dict(mapping), sort_keys=True, default=str)
