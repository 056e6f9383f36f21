"""Rows -> a Plan: which rows become requests, which are duplicates, superseded or in conflict.

The unit of work is (job_id, update_target). The planner is vectorised (numpy over dictionary
codes) because a 1M-row file must plan in well under a second; only the few rows that the state
store already knows are looked at one by one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from . import vocab
from .config import PlanOptions
from .errors import BatchToggleError, ExitCode

# Row states inside a plan. SEND rows are decided by the sender (or become dry_run).
SEND, INVALID, DUPLICATE, SUPERSEDED, CONFLICT, UNCHANGED = range(6)
ROW_STATE_NAMES = ("send", vocab.INVALID, vocab.DUPLICATE, vocab.SUPERSEDED, vocab.CONFLICT,
                   vocab.UNCHANGED)

_NO_ROW = -1


class TooManyInvalid(BatchToggleError):
    """More than --max-invalid percent of rows are invalid: likely a wrong file or --map."""

    exit_code = ExitCode.USAGE


@dataclass(frozen=True)
class LedgerView:
    """What an earlier run confirmed, as the planner needs it.

    `confirmed` has columns job_id, update_target, do_notify_sms, review_key_hash, entity_id
    (only units confirmed by a PUT, not merely observed by an audit). `job_clients` maps a job to
    the client Logis said it belongs to.
    """

    confirmed: pa.Table
    job_clients: Mapping[str, str]
    hash_review_key: Callable[[str], str]


@dataclass(frozen=True)
class Units:
    """The requests to send, in send order. Arrays of equal length."""

    row: np.ndarray  # int64: representative input row
    job_id: list[str]
    review_key: list[str]
    do_notify_sms: np.ndarray  # bool
    update_target: list[str]
    after: np.ndarray  # int64: index of the unit that must complete first (client before job), -1

    def __len__(self) -> int:
        return len(self.row)


@dataclass(frozen=True)
class Plan:
    """Per input row: its plan state, and where its outcome comes from."""

    state: np.ndarray  # int8 per row, one of SEND..UNCHANGED
    error_code: pa.Array  # string per row (null when none)
    error_message: pa.Array
    duplicate_of: np.ndarray  # int64 per row: the row that stands for this one, -1
    unit_of_row: np.ndarray  # int64 per row: unit whose outcome this row shares, -1
    units: Units
    known_entity: pa.Array  # string per row: entity id from the ledger (unchanged rows)
    known_state: pa.Array  # bool per row: confirmed state from the ledger (unchanged rows)

    @property
    def requests_needed(self) -> int:
        return len(self.units)

    def count(self, state: int) -> int:
        return int(np.count_nonzero(self.state == state))


@dataclass
class _Rows:
    """Mutable working arrays while a plan is built."""

    state: np.ndarray
    code: list[str | None]
    message: list[str | None]
    dup_of: np.ndarray
    entity: dict[int, str | None]
    known: dict[int, bool]
    _dups: dict[int, list[int]] | None = None

    def dups(self, rep: int) -> list[int]:
        """Rows that currently follow `rep`; the index is built once, on first use."""
        if self._dups is None:
            members = np.flatnonzero(self.dup_of >= 0)
            self._dups = {}
            for r, d in zip(members.tolist(), self.dup_of[members].tolist(), strict=True):
                self._dups.setdefault(d, []).append(r)
        return self._dups.get(rep, [])

    def follow(self, row: int, rep: int, state: int) -> None:
        """Make `row` (and whatever followed it) follow `rep` with `state`."""
        moved = [row, *self.dups(row)]
        for r in moved:
            self.state[r], self.dup_of[r] = state, rep
        assert self._dups is not None
        self._dups.pop(row, None)
        self._dups.setdefault(rep, []).extend(moved)


def build_plan(norm: pa.Table, refs: Callable[[np.ndarray], list[str]], options: PlanOptions,
               ledger: LedgerView | None = None) -> Plan:
    """Decide every row's fate. `norm` comes from normalize(); `refs` names rows as file:row."""
    n = norm.num_rows
    valid = pc.is_null(norm["error_code"]).to_numpy(zero_copy_only=False)
    rows = _Rows(
        state=np.where(valid, SEND, INVALID).astype(np.int8),
        code=[None] * n, message=[None] * n,
        dup_of=np.full(n, _NO_ROW, dtype=np.int64), entity={}, known={},
    )
    _check_invalid_share(n, int(n - valid.sum()), options.max_invalid)
    reps = _dedupe(norm, valid, options, rows)
    if ledger is not None and len(reps):
        reps = _apply_ledger(norm, reps, options, ledger, rows)
        reps = _client_groups(norm, reps, ledger, rows, refs)
    units = _order_units(norm, reps)
    return _finish(norm, rows, units, refs)


def _check_invalid_share(n: int, invalid: int, max_invalid: float) -> None:
    if n and invalid * 100.0 > max_invalid * n:
        raise TooManyInvalid(
            f"{invalid:,} of {n:,} rows ({invalid * 100.0 / n:.0f}%) are invalid, over "
            f"--max-invalid {max_invalid:g}%: is this the right file and --map? Nothing was sent."
        )


def _codes(col: pa.ChunkedArray) -> np.ndarray:
    """Dense integer codes for a string column (hash-based, C speed); nulls become -1."""
    enc = pc.dictionary_encode(col).combine_chunks()
    return enc.indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)


def _dedupe(norm: pa.Table, valid: np.ndarray, options: PlanOptions,
            rows: _Rows) -> np.ndarray:
    """Group valid rows by unit; mark duplicates, superseded and conflicts. Returns rep rows."""
    idx = np.flatnonzero(valid)
    if not len(idx):
        return idx
    job = _codes(norm["job_id"])[idx]
    rk = _codes(norm["review_key"])[idx]
    state = norm["do_notify_sms"].to_numpy(zero_copy_only=False)[idx].astype(np.int8)
    is_client = (norm["update_target"].to_numpy(zero_copy_only=False)[idx] == "client")
    key = job * 2 + is_client
    order = np.argsort(key, kind="stable")  # stable: file order within a unit
    srt_rows, srt_key = idx[order], key[order]
    starts = np.flatnonzero(np.r_[True, srt_key[1:] != srt_key[:-1]])
    ends = np.r_[starts[1:], len(srt_key)]
    grp = np.repeat(np.arange(len(starts)), ends - starts)
    s_state, s_rk = state[order], rk[order]
    rk_conflict = np.minimum.reduceat(s_rk, starts) != np.maximum.reduceat(s_rk, starts)
    st_conflict = np.minimum.reduceat(s_state, starts) != np.maximum.reduceat(s_state, starts)
    rep_pos = _rep_positions(starts, ends, s_state, st_conflict, options.on_conflict)
    bad = rk_conflict | (st_conflict & (options.on_conflict == "reject"))
    # Every row of a bad unit is a conflict; nothing is sent for it.
    bad_rows = srt_rows[bad[grp]]
    rows.state[bad_rows] = CONFLICT
    for r in bad_rows[rk_conflict[grp[bad[grp]]]]:
        rows.code[r] = "conflicting_review_key"
        rows.message[r] = "rows for this job and target carry different review keys; none sent"
    for r in bad_rows[~rk_conflict[grp[bad[grp]]]]:
        rows.code[r] = "conflicting_state"
        rows.message[r] = ("rows for this job and target ask for different states "
                           "(--on-conflict reject)")
    good = ~bad
    rep_rows = srt_rows[rep_pos]
    member = good[grp] & (np.arange(len(srt_rows)) != rep_pos[grp])
    same_as_rep = s_state == s_state[rep_pos][grp]
    dup_kind = np.where(st_conflict[grp] & ~(same_as_rep & (options.on_conflict == "opt-out-wins")),
                        SUPERSEDED, DUPLICATE)
    rows.state[srt_rows[member]] = dup_kind[member]
    rows.dup_of[srt_rows[member]] = rep_rows[grp][member]
    return np.sort(rep_rows[good])


def _rep_positions(starts: np.ndarray, ends: np.ndarray, s_state: np.ndarray,
                   st_conflict: np.ndarray, policy: str) -> np.ndarray:
    """The position (in sorted order) of the row that is sent for each unit."""
    rep = starts.copy()
    if policy == "last":
        rep = np.where(st_conflict, ends - 1, starts)
    elif policy == "opt-out-wins":
        pos = np.arange(len(s_state))
        first_false = np.minimum.reduceat(np.where(s_state == 0, pos, len(pos)), starts)
        rep = np.where(st_conflict, first_false, starts)
    return rep


def _apply_ledger(norm: pa.Table, reps: np.ndarray, options: PlanOptions, ledger: LedgerView,
                  rows: _Rows) -> np.ndarray:
    """Skip units an earlier run confirmed; block re-subscribing a confirmed opt-out."""
    known = _ledger_index(ledger.confirmed)
    if not known:
        return reps
    keep = np.ones(len(reps), dtype=bool)
    take = pa.array(reps)
    jobs = norm["job_id"].take(take).to_pylist()
    targets = norm["update_target"].take(take).to_pylist()
    states = norm["do_notify_sms"].take(take).to_pylist()
    keys = norm["review_key"].take(take).to_pylist()
    for i, (job, target, desired) in enumerate(zip(jobs, targets, states, strict=True)):
        entry = known.get((job, target))
        if entry is None:
            continue
        confirmed, rk_hash, entity = entry
        r = int(reps[i])
        if confirmed is False and desired and not options.allow_resubscribe:
            _mark_unit(rows, r, CONFLICT, "resubscribe_blocked",
                       "an earlier run confirmed this opt-out; "
                       "--allow-resubscribe to turn SMS back on")
            keep[i] = False
        elif (options.skip_confirmed and confirmed == desired
              and rk_hash == ledger.hash_review_key(keys[i])):
            _mark_unit(rows, r, UNCHANGED, None,
                       "already confirmed in this state by an earlier run")
            rows.entity[r], rows.known[r] = entity, bool(confirmed)
            keep[i] = False
    return reps[keep]


def _ledger_index(table: pa.Table) -> dict[tuple[str, str], tuple[bool, str, str | None]]:
    cols = [table[c].to_pylist() for c in
            ("job_id", "update_target", "do_notify_sms", "review_key_hash", "entity_id")]
    return {(j, t): (s, h, e) for j, t, s, h, e in zip(*cols, strict=True)}


def _mark_unit(rows: _Rows, rep: int, state: int, code: str | None, message: str) -> None:
    """Give a unit's representative a state; its conflict also reaches the unit's duplicates."""
    rows.state[rep], rows.code[rep], rows.message[rep] = state, code, message
    if state == CONFLICT:
        for r in rows.dups(rep):
            rows.state[r], rows.code[r], rows.message[r] = CONFLICT, code, message
            rows.dup_of[r] = _NO_ROW


def _client_groups(norm: pa.Table, reps: np.ndarray, ledger: LedgerView, rows: _Rows,
                   refs: Callable[[np.ndarray], list[str]]) -> np.ndarray:
    """Client updates naming jobs of one known client: one request, or a conflict.

    Two jobs of the same client asking for different client-level states would otherwise let the
    last request silently decide the client's default.
    """
    if not ledger.job_clients:
        return reps
    targets = norm["update_target"].take(pa.array(reps)).to_pylist()
    jobs = norm["job_id"].take(pa.array(reps)).to_pylist()
    states = norm["do_notify_sms"].take(pa.array(reps)).to_pylist()
    groups: dict[str, list[int]] = {}
    for i, (job, target) in enumerate(zip(jobs, targets, strict=True)):
        client = ledger.job_clients.get(job) if target == "client" else None
        if client is not None:
            groups.setdefault(client, []).append(i)
    keep = np.ones(len(reps), dtype=bool)
    for members in groups.values():
        if len(members) < 2:
            continue
        first = int(reps[members[0]])
        if len({states[i] for i in members}) > 1:
            names = ", ".join(refs(reps[members]))
            for i in members:
                _mark_unit(rows, int(reps[i]), CONFLICT, "conflicting_state",
                           f"client-level rows for jobs of one client disagree ({names})")
                keep[i] = False
            continue
        for i in members[1:]:
            rows.follow(int(reps[i]), first, DUPLICATE)
            keep[i] = False
    return reps[keep]


def _order_units(norm: pa.Table, reps: np.ndarray) -> Units:
    """Send order: file order of each job's first unit; a job's client update before its job update.

    The client update changes the default for future jobs only, but Logis may apply it to the
    job too; sending it first lets the job-level choice land last.
    """
    take = pa.array(reps, type=pa.int64())
    jobs = norm["job_id"].take(take)
    is_client = pc.equal(norm["update_target"].take(take), "client").to_numpy(
        zero_copy_only=False)
    job_code = _codes(jobs) if len(reps) else np.zeros(0, dtype=np.int64)
    first_of_job = np.full(job_code.max() + 1 if len(job_code) else 0, np.iinfo(np.int64).max)
    np.minimum.at(first_of_job, job_code, reps)
    order = np.lexsort((~is_client, first_of_job[job_code]))
    reps, job_code, is_client = reps[order], job_code[order], is_client[order]
    after = np.full(len(reps), _NO_ROW, dtype=np.int64)
    client_unit = {int(c): i for i, c in enumerate(job_code) if is_client[i]}
    for i in np.flatnonzero(~is_client):
        after[i] = client_unit.get(int(job_code[i]), _NO_ROW)
    take = pa.array(reps, type=pa.int64())
    return Units(
        row=reps,
        job_id=norm["job_id"].take(take).to_pylist(),
        review_key=norm["review_key"].take(take).to_pylist(),
        do_notify_sms=norm["do_notify_sms"].take(take).to_numpy(zero_copy_only=False).astype(bool),
        update_target=norm["update_target"].take(take).to_pylist(),
        after=after,
    )


def _finish(norm: pa.Table, rows: _Rows, units: Units,
            refs: Callable[[np.ndarray], list[str]]) -> Plan:
    n = len(rows.state)
    unit_of_row = np.full(n, _NO_ROW, dtype=np.int64)
    unit_of_row[units.row] = np.arange(len(units))
    dups = np.flatnonzero(rows.state == DUPLICATE)
    unit_of_row[dups] = unit_of_row[rows.dup_of[dups]]
    superseded = np.flatnonzero(rows.state == SUPERSEDED)
    for r, ref in zip(superseded.tolist(), refs(rows.dup_of[superseded]), strict=True):
        rows.message[r] = f"superseded by {ref}, which asks for a different state"
    code = pa.array(rows.code, type=pa.string())
    message = pa.array(rows.message, type=pa.string())
    code = pc.if_else(pc.is_null(norm["error_code"]), code, norm["error_code"])
    message = pc.if_else(pc.is_null(norm["error_message"]), message, norm["error_message"])
    entity: list[str | None] = [None] * n
    known: list[bool | None] = [None] * n
    for r, e in rows.entity.items():
        entity[r], known[r] = e, rows.known[r]
    return Plan(
        state=rows.state, error_code=_flat(code), error_message=_flat(message),
        duplicate_of=rows.dup_of, unit_of_row=unit_of_row, units=units,
        known_entity=pa.array(entity, type=pa.string()), known_state=pa.array(known, pa.bool_()),
    )


def _flat(arr: pa.Array | pa.ChunkedArray) -> pa.Array:
    return arr.combine_chunks() if isinstance(arr, pa.ChunkedArray) else arr
