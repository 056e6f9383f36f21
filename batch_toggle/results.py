"""Plan + unit outcomes -> the report table: one row per input row, in input order.

This is where the tool's central promise is kept: the table is built from the input table's own
row count, so no fault, abort or resume can make a row disappear or appear twice. Everything is
column-wise (pyarrow take / if_else) so a 1M-row report costs well under a second.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from . import vocab
from .ingest import LoadedInput
from .outcome import Outcome
from .plan import ROW_STATE_NAMES, SEND, UNCHANGED, Plan

_UNIT_FIELDS = ("status", "error_code", "error_message", "retryable", "http_status", "attempts",
                "entity_id", "confirmed_do_notify_sms", "sent_at", "latency_ms")
_TYPES = {
    "status": pa.string(), "error_code": pa.string(), "error_message": pa.string(),
    "retryable": pa.bool_(), "http_status": pa.int32(), "attempts": pa.int32(),
    "entity_id": pa.string(), "confirmed_do_notify_sms": pa.bool_(), "sent_at": pa.string(),
    "latency_ms": pa.float64(),
}


@dataclass(frozen=True)
class UnitResults:
    """The outcome of every unit of a plan, column-wise; index = unit index."""

    columns: Mapping[str, pa.Array]

    @classmethod
    def uniform(cls, n: int, status: str, error_code: str | None = None,
                message: str | None = None) -> UnitResults:
        """Every unit the same outcome (dry run, or a run stopped before it sent anything)."""
        cols = {f: pa.nulls(n, _TYPES[f]) for f in _UNIT_FIELDS}
        cols["status"] = pa.array(np.full(n, status, dtype=object), pa.string())
        cols["attempts"] = pa.array(np.zeros(n, dtype=np.int32))
        if error_code is not None:
            cols["error_code"] = pa.array(np.full(n, error_code, dtype=object), pa.string())
        if message is not None:
            cols["error_message"] = pa.array(np.full(n, message, dtype=object), pa.string())
        return cls(cols)

    @classmethod
    def from_outcomes(cls, n: int, outcomes: Mapping[int, Outcome], unsent: Outcome) -> UnitResults:
        """Outcomes by unit index; units without one get `unsent` (e.g. not_attempted/aborted)."""
        values: dict[str, list] = {f: [getattr(unsent, f)] * n for f in _UNIT_FIELDS}
        for i, outcome in outcomes.items():
            for f in _UNIT_FIELDS:
                values[f][i] = getattr(outcome, f)
        return cls({f: pa.array(values[f], _TYPES[f]) for f in _UNIT_FIELDS})

    def statuses(self) -> list[str]:
        return self.columns["status"].to_pylist()


def row_refs(loaded: LoadedInput, rows: np.ndarray) -> list[str]:
    """`source_file:source_row` for the given row indices (how a report names a row)."""
    take = pa.array(np.asarray(rows, dtype=np.int64))
    files = loaded.fields["source_file"].take(take).to_pylist()
    nums = loaded.fields["source_row"].take(take).to_pylist()
    return [f"{f}:{r}" for f, r in zip(files, nums, strict=True)]


def assemble(loaded: LoadedInput, norm: pa.Table, plan: Plan, units: UnitResults,
             run_id: str) -> pa.Table:
    """The report table: the input's own columns (review key masked), then OUTCOME_COLUMNS."""
    n = loaded.raw.num_rows
    unit_idx = pa.array(plan.unit_of_row, mask=plan.unit_of_row < 0)
    shared = {f: units.columns[f].take(unit_idx) for f in _UNIT_FIELDS}
    is_send = pa.array(plan.state == SEND)
    is_unchanged = pa.array(plan.state == UNCHANGED)
    plan_status = pa.array(ROW_STATE_NAMES, pa.string()).take(pa.array(plan.state))
    status = pc.if_else(is_send, shared["status"], plan_status)
    code = pc.coalesce(plan.error_code, shared["error_code"])
    message = pc.coalesce(plan.error_message, shared["error_message"])
    entity = pc.if_else(is_unchanged, plan.known_entity, shared["entity_id"])
    confirmed = pc.if_else(is_unchanged, plan.known_state, shared["confirmed_do_notify_sms"])
    attempts = pc.if_else(is_send, shared["attempts"], pa.scalar(0, pa.int32()))
    dup_of = _dup_refs(loaded, plan)
    outcome = {
        "source_file": loaded.fields["source_file"],
        "source_row": loaded.fields["source_row"],
        "job_id": norm["job_id"],
        "update_target": norm["update_target"],
        "do_notify_sms": norm["do_notify_sms"],
        "status": status,
        "error_code": code,
        "error_message": message,
        "retryable": shared["retryable"],
        "http_status": shared["http_status"],
        "attempts": attempts,
        "duplicate_of": dup_of,
        "entity_id": entity,
        "confirmed_do_notify_sms": confirmed,
        "sent_at": shared["sent_at"],
        "latency_ms": shared["latency_ms"],
        "run_id": pa.array(np.full(n, run_id, dtype=object), pa.string()),
    }
    # Duplicates keep their plan status and share the rest of their unit's outcome.
    own = masked_input_columns(loaded, norm)
    names = [f"input_{c}" if c in vocab.OUTCOME_COLUMNS else c for c in own.column_names]
    arrays = [*own.columns, *(outcome[c] for c in vocab.OUTCOME_COLUMNS)]
    return pa.Table.from_arrays(arrays, names=[*names, *vocab.OUTCOME_COLUMNS])


def _dup_refs(loaded: LoadedInput, plan: Plan) -> pa.Array:
    """`file:row` of the row that stands for each duplicate or superseded row."""
    mask = plan.duplicate_of < 0
    idx = pa.array(plan.duplicate_of, mask=mask)
    files = loaded.fields["source_file"].take(idx)
    rows = pc.cast(loaded.fields["source_row"].take(idx), pa.string())
    return pc.binary_join_element_wise(files, rows, ":")


def _file_index(loaded: LoadedInput) -> np.ndarray:
    return np.repeat(np.arange(len(loaded.sources)), [s.rows for s in loaded.sources])


def masked_input_columns(loaded: LoadedInput, norm: pa.Table) -> pa.Table:
    """The input's own columns with every review-key column masked to its last 4 characters.

    The full key is a credential for the end client's preferences; only --rejects may hold it.
    """
    key_columns = {s.mapping["review_key"] for s in loaded.sources if "review_key" in s.mapping}
    if not key_columns:
        return loaded.raw
    file_idx = _file_index(loaded)
    table = loaded.raw
    for col in key_columns:
        from_col = np.array([s.mapping.get("review_key") == col for s in loaded.sources],
                            dtype=bool)
        table = table.set_column(table.column_names.index(col), col,
                                 _mask(table[col], norm["review_key_tail"],
                                       pa.array(from_col[file_idx] if len(file_idx) else
                                                np.zeros(0, dtype=bool))))
    return table


def _mask(cells: pa.ChunkedArray, tails: pa.ChunkedArray, from_this_column: pa.Array) -> pa.Array:
    trimmed = pc.utf8_trim_whitespace(cells)
    own_tail = pc.utf8_slice_codeunits(trimmed, start=-4)
    tail = pc.if_else(from_this_column, pc.coalesce(tails, own_tail), own_tail)
    masked = pc.binary_join_element_wise(vocab.REVIEW_KEY_MASK_PREFIX, tail, "")
    empty = pc.or_kleene(pc.is_null(trimmed), pc.equal(trimmed, ""))
    return pc.if_else(empty, cells, masked)


def rejects_table(loaded: LoadedInput, report: pa.Table) -> pa.Table:
    """Rows that need attention, in the input's own layout and unmasked, ready to fix and re-run."""
    attention = pc.is_in(report["status"], pa.array(sorted(vocab.ATTENTION_STATUSES)))
    return loaded.raw.filter(attention)


def count_by(column: pa.ChunkedArray | pa.Array) -> dict[str, int]:
    """Counts of each non-null value, most common first."""
    counts = pc.value_counts(pc.drop_null(column)).to_pylist()
    return dict(sorted(((c["values"], c["counts"]) for c in counts), key=lambda kv: -kv[1]))


def statuses_present(report: pa.Table) -> set[str]:
    return set(pc.unique(report["status"]).to_pylist())


def describe_sources(loaded: LoadedInput) -> Sequence[dict]:
    return [
        {"file": s.name, "sha256": s.sha256, "rows": s.rows, "encoding": s.encoding,
         "columns": dict(s.mapping)}
        for s in loaded.sources
    ]
