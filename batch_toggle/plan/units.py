"""Rows -> a Plan: which rows become requests, which are duplicates, superseded or in conflict.

The unit of work is (job_id, update_target). The planner is vectorised (numpy over dictionary
codes) because a 1M-row file must plan in well under a second; only the few rows that the state
store already knows are looked at one by one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from batch_toggle import vocab
from batch_toggle.config import PlanOptions
from batch_toggle.errors import TooManyInvalid

# Row states inside a plan. SEND rows are decided by the sender (or become dry_run).
SEND, INVALID, DUPLICATE, SUPERSEDED, CONFLICT, UNCHANGED = range(6)
ROW_STATE_NAMES = ("send", vocab.INVALID, vocab.DUPLICATE, vocab.SUPERSEDED, vocab.CONFLICT,
                   vocab.UNCHANGED)

_NO_ROW = -1


@dataclass(frozen=True)
class LedgerView:
    """What an earlier run confirmed, as the planner needs it.

    `confirmed` has columns job_id, update_target, do_notify_sms, review_key_hash, entity_id
    and optionally confirmed_seq, the order in which the store wrote them (only units
    confirmed by a PUT, not merely observed by an audit). `job_clients` maps a job to
    the client Logis said it belongs to.
    """

    confirmed: pa.Table
    job_clients: Mapping[str, str]
    hash_review_key: Callable[[str], str]


class _LazyText(Sequence[str]):
    """Rows of a string column handed out as a Python sequence, gathered on first use.

    The sender reads units one by one; validate never does. Gathering and converting three
    1M-row columns up front cost ~0.3 s of a validate that reads none of them.
    """

    __slots__ = ("_column", "_rows", "_items", "distinct")

    def __init__(self, column: pa.ChunkedArray | pa.Array, rows: np.ndarray,
                 distinct: set[str] | None = None) -> None:
        self._column = column
        self._rows = rows
        self._items: list[str] | None = None
        self.distinct = distinct  # the set of values, when the planner already knows it

    def _list(self) -> list[str]:
        if self._items is None:
            self._items = self._column.take(pa.array(self._rows, pa.int64())).to_pylist()
        return self._items

    def __len__(self) -> int:
        return len(self._rows)

    def __getitem__(self, index: Any) -> Any:
        return self._list()[index]

    def __iter__(self) -> Iterator[str]:
        return iter(self._list())

    def __eq__(self, other: object) -> bool:
        return list(self) == list(other) if isinstance(other, Sequence) else NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"_LazyText({len(self)} values)"


@dataclass(frozen=True)
class Units:
    """The requests to send, in send order. Arrays of equal length."""

    row: np.ndarray  # int64: representative input row
    job_id: Sequence[str]
    review_key: Sequence[str]
    do_notify_sms: np.ndarray  # bool
    update_target: Sequence[str]
    after: np.ndarray  # int64: index of the unit that must complete first (client before job), -1
    # Unit index -> (job_id, review_key) of the `client` units folded into it (jobs of the same
    # known client asking for the same state): its confirmation confirms them too, so the
    # ledger learns each of them, and a later file naming one alone finds it `unchanged`.
    folded: Mapping[int, tuple[tuple[str, str], ...]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.row)

    def targets(self) -> set[str]:
        """The distinct update targets among the units (without converting every unit)."""
        column = self.update_target
        if isinstance(column, _LazyText) and column.distinct is not None:
            return set(column.distinct)
        return set(column)


@dataclass(frozen=True)
class Plan:
    """Per input row: its plan state, and where its outcome comes from."""

    state: np.ndarray  # int8 per row, one of SEND..UNCHANGED
    error_code: pa.Array  # string per row (null when none)
    error_message: pa.Array
    duplicate_of: np.ndarray  # int64 per row: the row that stands for this one, -1
    unit_of_row: np.ndarray  # int64 per row: unit whose outcome this row shares, -1
    units: Units
    # From the ledger, for unchanged rows and their duplicates (null elsewhere): what an earlier
    # run confirmed, shown in the report as entity_id and confirmed_do_notify_sms.
    known_entity: pa.Array  # string per row
    known_state: pa.Array  # bool per row

    @property
    def requests_needed(self) -> int:
        return len(self.units)

    def count(self, state: int) -> int:
        return int(np.count_nonzero(self.state == state))


# The plan's own error codes and messages, by small integer (0: none), so rows carry an int8
# and the strings are made once, column-wise, at the end.
_CODES = (None, "conflicting_review_key", "conflicting_state", "resubscribe_blocked")
_RK_CONFLICT, _STATE_CONFLICT, _RESUBSCRIBE = 1, 2, 3
_MESSAGES = (
    None,
    "rows for this job and target carry different review keys; none sent",
    "rows for this job and target ask for different states (--on-conflict reject)",
    "an earlier run confirmed this opt-out; --allow-resubscribe to turn SMS back on",
    "already confirmed in this state by an earlier run",
)
_MSG_UNCHANGED = 4
# The tail of a superseded row's message: whether the row that is sent asks for the other
# state, or for the same one (the unit's rows disagree, and --on-conflict chose that row).
_OTHER_STATE = ", which asks for a different state"
_SAME_STATE_CHOSEN = (", the row --on-conflict chose (rows for this job and target ask for "
                      "different states)")
_NAMED_ROWS = 5  # rows named in a message before "and N more"


@dataclass
class _Rows:
    """Mutable working arrays while a plan is built."""

    state: np.ndarray  # int8 plan state
    code: np.ndarray  # int8 index into _CODES
    message: np.ndarray  # int8 index into _MESSAGES
    dup_of: np.ndarray  # int64: the row this one follows, -1
    ledger_pos: np.ndarray  # int64: the ledger entry an unchanged row shows, -1
    custom: dict[int, str]  # messages that name rows (few)
    known: pa.Table | None = None  # the ledger entries ledger_pos points into
    folded: dict[int, list[int]] = field(default_factory=dict)  # rep row -> folded rep rows

    def mark(self, reps: np.ndarray, state: int, code: int, message: int) -> None:
        """Give units (by representative row) a state; a conflict also reaches every row that
        follows them, which then follows no one (nothing is sent for the unit)."""
        self.state[reps], self.code[reps], self.message[reps] = state, code, message
        if state != CONFLICT or not len(reps):
            return
        followers = np.flatnonzero(np.isin(self.dup_of, reps))
        self.state[followers], self.code[followers] = CONFLICT, code
        self.message[followers] = message
        for r in followers.tolist():
            if int(self.dup_of[r]) in self.custom:
                self.custom[r] = self.custom[int(self.dup_of[r])]
        self.dup_of[followers] = _NO_ROW


def build_plan(norm: pa.Table, refs: Callable[[np.ndarray], list[str]], options: PlanOptions,
               ledger: LedgerView | None = None) -> Plan:
    """Decide every row's fate. `norm` comes from normalize(); `refs` names rows as file:row."""
    n = norm.num_rows
    valid = pc.is_null(norm["error_code"]).to_numpy(zero_copy_only=False)
    _check_invalid_share(n, int(n - valid.sum()), options.max_invalid)
    rows = _Rows(
        state=np.where(valid, SEND, INVALID).astype(np.int8),
        code=np.zeros(n, dtype=np.int8), message=np.zeros(n, dtype=np.int8),
        dup_of=np.full(n, _NO_ROW, dtype=np.int64), ledger_pos=np.full(n, _NO_ROW, np.int64),
        custom={},
    )
    job_code = _codes(norm["job_id"])
    is_client = _is_client(norm)
    reps = _dedupe(norm, valid, job_code, is_client, options, rows)
    if ledger is not None and len(reps):
        reps = _apply_ledger(norm, reps, options, ledger, rows)
        reps = _client_optouts(norm, reps, is_client, options, ledger, rows)
        reps = _client_groups(norm, reps, is_client, ledger, rows, refs)
    units = _order_units(norm, reps, job_code, is_client, rows.folded)
    return _finish(norm, rows, units, refs)


def _check_invalid_share(n: int, invalid: int, max_invalid: float) -> None:
    if n and invalid * 100.0 > max_invalid * n:
        share = (f"{invalid:,} of {n:,} rows ({invalid * 100.0 / n:.0f}%) are invalid, over "
                 f"--max-invalid {max_invalid:g}%")
        raise TooManyInvalid(f"{share}: is this the right file and --map? Nothing was sent.",
                             share)


def _codes(col: pa.ChunkedArray) -> np.ndarray:
    """Dense integer codes for a string column (hash-based, C speed); nulls become -1.

    Codes follow first appearance, so keys built from them are nearly sorted in file order and
    numpy's stable sort (timsort) orders them in a few milliseconds.
    """
    enc = pc.dictionary_encode(col).combine_chunks()
    return enc.indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)


def _states(norm: pa.Table) -> np.ndarray:
    """do_notify_sms as a numpy bool array (false where null: invalid rows, never used)."""
    return pc.fill_null(norm["do_notify_sms"], False).to_numpy(zero_copy_only=False).astype(bool)


def _is_client(norm: pa.Table) -> np.ndarray:
    flags = pc.fill_null(pc.equal(norm["update_target"], "client"), False)
    return flags.to_numpy(zero_copy_only=False).astype(bool)


def _group_differs(sorted_values: pa.Array | np.ndarray, first: np.ndarray) -> np.ndarray:
    """Per group (sorted rows, groups starting at `first`): whether its values are not all equal.

    Compares neighbours, so strings need no dictionary: ~10x cheaper than encoding them.
    """
    if isinstance(sorted_values, np.ndarray):
        neq = sorted_values[1:] != sorted_values[:-1]
    else:
        neq = pc.not_equal(sorted_values[1:], sorted_values[:-1]).to_numpy(zero_copy_only=False)
    differs = np.r_[False, neq]
    differs[first] = False  # a group's first row has no neighbour inside the group
    return np.logical_or.reduceat(differs, first)


def _keys_differ(keys: pa.ChunkedArray, srt_rows: np.ndarray, starts: np.ndarray,
                 ends: np.ndarray) -> np.ndarray:
    """Per group: whether its rows carry different review keys. Only groups of two or more
    rows are looked at (most units have one row), so only their keys are gathered."""
    differs = np.zeros(len(starts), dtype=bool)
    multi = np.flatnonzero(ends - starts > 1)
    if not len(multi):
        return differs
    sizes = (ends - starts)[multi]
    first = np.r_[0, np.cumsum(sizes)[:-1]]
    pos = np.repeat(starts[multi] - first, sizes) + np.arange(int(sizes.sum()))
    gathered = _flat(keys.take(pa.array(srt_rows[pos], pa.int64())))
    differs[multi] = _group_differs(gathered, first)
    return differs


def _dedupe(norm: pa.Table, valid: np.ndarray, job_code: np.ndarray, is_client: np.ndarray,
            options: PlanOptions, rows: _Rows) -> np.ndarray:
    """Group valid rows by unit; mark duplicates, superseded and conflicts. Returns rep rows."""
    idx = np.flatnonzero(valid)
    if not len(idx):
        return idx
    key = job_code[idx] * 2 + is_client[idx]
    order = np.argsort(key, kind="stable")  # stable: file order within a unit
    srt_rows, srt_key = idx[order], key[order]
    starts = np.flatnonzero(np.r_[True, srt_key[1:] != srt_key[:-1]])
    ends = np.r_[starts[1:], len(srt_key)]
    grp = np.repeat(np.arange(len(starts)), ends - starts)
    s_state = _states(norm)[srt_rows].astype(np.int8)
    rk_conflict = _keys_differ(norm["review_key"], srt_rows, starts, ends)
    st_conflict = _group_differs(s_state, starts)
    rep_pos = _rep_positions(starts, ends, s_state, st_conflict, options.on_conflict)
    bad = rk_conflict | (st_conflict & (options.on_conflict == "reject"))
    # Every row of a bad unit is a conflict; nothing is sent for it.
    bad_row = bad[grp]
    code = np.where(rk_conflict, _RK_CONFLICT, _STATE_CONFLICT).astype(np.int8)[grp[bad_row]]
    rows.state[srt_rows[bad_row]] = CONFLICT
    rows.code[srt_rows[bad_row]] = code
    rows.message[srt_rows[bad_row]] = code  # one message per code, same numbering
    rep_rows = srt_rows[rep_pos]
    member = ~bad_row & (np.arange(len(srt_rows)) != rep_pos[grp])
    # In a unit whose rows disagree, every row but the one sent is `superseded`, whichever
    # policy chose it and whatever state the row asks for: the unit's outcome was decided by a
    # choice, not by rows that merely repeat each other (those are `duplicate`).
    dup_kind = np.where(st_conflict[grp], SUPERSEDED, DUPLICATE)
    rows.state[srt_rows[member]] = dup_kind[member]
    rows.dup_of[srt_rows[member]] = rep_rows[grp][member]
    return np.sort(rep_rows[~bad])


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


def _unit_keys(jobs: pa.Array | pa.ChunkedArray, targets: pa.Array | pa.ChunkedArray) -> pa.Array:
    """One string per unit, `job_id<US>update_target`, for look-ups with pc.index_in."""
    return _flat(pc.binary_join_element_wise(jobs, targets, "\x1f"))


def _apply_ledger(norm: pa.Table, reps: np.ndarray, options: PlanOptions, ledger: LedgerView,
                  rows: _Rows) -> np.ndarray:
    """Skip units an earlier run confirmed; block re-subscribing a confirmed opt-out.

    Units are matched to the ledger column-wise; only the units that match and ask for the
    confirmed state have their review key hashed, one by one (the hash is keyed, in the store).
    """
    confirmed = ledger.confirmed
    if confirmed.num_rows == 0:
        return reps
    take = pa.array(reps, type=pa.int64())
    jobs, targets = norm["job_id"].take(take), norm["update_target"].take(take)
    # Reversed: index_in finds the first match, and of two entries for a unit the last wins.
    known = confirmed.take(pa.array(np.arange(confirmed.num_rows - 1, -1, -1)))
    pos = pc.index_in(_unit_keys(jobs, targets), value_set=_unit_keys(
        known["job_id"], known["update_target"]))
    pos = pos.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
    found = np.flatnonzero(pos >= 0)
    if not len(found):
        return reps
    pos_found = pos[found]
    was = known["do_notify_sms"].to_numpy(zero_copy_only=False)[pos_found].astype(bool)
    desired = _states(norm)[reps[found]]
    keep = np.ones(len(reps), dtype=bool)
    if not options.allow_resubscribe:
        blocked = found[~was & desired]
        rows.mark(reps[blocked], CONFLICT, _RESUBSCRIBE, _RESUBSCRIBE)
        keep[blocked] = False
    if options.skip_confirmed:
        same = np.flatnonzero(was == desired)
        keys = norm["review_key"].take(pa.array(reps[found[same]])).to_pylist()
        stored = known["review_key_hash"].take(pa.array(pos_found[same])).to_pylist()
        same_key = np.array([ledger.hash_review_key(k) == h for k, h in zip(keys, stored,
                                                                            strict=True)],
                            dtype=bool)
        hit = found[same[same_key]] if len(same) else found[:0]
        rows.mark(reps[hit], UNCHANGED, 0, _MSG_UNCHANGED)
        rows.ledger_pos[reps[hit]] = pos[hit]
        keep[hit] = False
    rows.known = known
    return reps[keep]


def _client_optouts(norm: pa.Table, reps: np.ndarray, is_client: np.ndarray,
                    options: PlanOptions, ledger: LedgerView, rows: _Rows) -> np.ndarray:
    """A client's confirmed opt-out is sticky across its jobs, not only for the unit that
    confirmed it: a `client` row asking for true for another job of that client would turn the
    same client default back on. Blocked (`resubscribe_blocked`) unless --allow-resubscribe.
    A client's state is its latest confirmed client-level update: the highest `confirmed_seq`
    (the store's order of writes) when the ledger gives it, else the last entry. Never by
    confirmation time: a run whose clock was an hour fast would make its older confirmation
    look newer, and undo an opt-out confirmed after it."""
    if options.allow_resubscribe or not ledger.job_clients:
        return reps
    confirmed = ledger.confirmed.filter(pc.equal(ledger.confirmed["update_target"], "client"))
    if confirmed.num_rows == 0:
        return reps
    order = (confirmed["confirmed_seq"].to_pylist() if "confirmed_seq" in confirmed.column_names
             else list(range(confirmed.num_rows)))
    latest: dict[str, tuple[int, bool, str]] = {}
    for job, entity, state, seq in zip(confirmed["job_id"].to_pylist(),
                                       confirmed["entity_id"].to_pylist(),
                                       confirmed["do_notify_sms"].to_pylist(), order, strict=True):
        client = entity or ledger.job_clients.get(job)
        seq = -1 if seq is None else seq
        if client is not None and (client not in latest or seq >= latest[client][0]):
            latest[client] = (seq, bool(state), job)
    opted_out = {client: job for client, (_, state, job) in latest.items() if not state}
    if not opted_out:
        return reps
    asking_on = np.flatnonzero(is_client[reps] & _states(norm)[reps])
    if not len(asking_on):
        return reps
    jobs = norm["job_id"].take(pa.array(reps[asking_on])).to_pylist()
    via = [opted_out.get(ledger.job_clients.get(job, "")) for job in jobs]
    blocked = asking_on[[v is not None for v in via]]
    if not len(blocked):
        return reps
    for rep, job in zip(reps[blocked].tolist(), [v for v in via if v is not None], strict=True):
        rows.custom[rep] = (f"an earlier run confirmed this client's opt-out (through job {job}); "
                            "--allow-resubscribe to turn SMS back on")
    rows.mark(reps[blocked], CONFLICT, _RESUBSCRIBE, _RESUBSCRIBE)
    keep = np.ones(len(reps), dtype=bool)
    keep[blocked] = False
    return reps[keep]


def _client_groups(norm: pa.Table, reps: np.ndarray, is_client: np.ndarray, ledger: LedgerView,
                   rows: _Rows, refs: Callable[[np.ndarray], list[str]]) -> np.ndarray:
    """Client updates naming jobs of one known client: one request, or a conflict.

    Two jobs of the same client asking for different client-level states would otherwise let the
    last request silently decide the client's default.
    """
    if not ledger.job_clients:
        return reps
    client_reps = np.flatnonzero(is_client[reps])
    if not len(client_reps):
        return reps
    known_jobs = pa.array(list(ledger.job_clients), pa.string())
    clients = pc.dictionary_encode(pa.array(list(ledger.job_clients.values()), pa.string()))
    at = pc.index_in(norm["job_id"].take(pa.array(reps[client_reps])), value_set=known_jobs)
    at = at.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
    client_reps, at = client_reps[at >= 0], at[at >= 0]
    client = clients.indices.to_numpy(zero_copy_only=False).astype(np.int64)[at]
    # Groups of two or more units naming one client, members in send-row order.
    order = np.argsort(client, kind="stable")
    members, client = client_reps[order], client[order]
    starts = np.flatnonzero(np.r_[True, client[1:] != client[:-1]])
    sizes = np.diff(np.r_[starts, len(client)])
    grp = np.repeat(np.arange(len(starts)), sizes)
    in_group = sizes[grp] >= 2
    if not in_group.any():
        return reps
    m_state = _states(norm)[reps[members]].astype(np.int8)
    differs = _group_differs(m_state, starts)
    keep = np.ones(len(reps), dtype=bool)
    conflict = in_group & differs[grp]
    for g in np.unique(grp[conflict]).tolist():
        group_reps = reps[members[grp == g]]
        message = "client-level rows for jobs of one client disagree (" + _names(
            refs, group_reps) + ")"
        rows.custom.update(dict.fromkeys(group_reps.tolist(), message))
        rows.mark(group_reps, CONFLICT, _STATE_CONFLICT, 0)
    keep[members[conflict]] = False
    fold = in_group & ~differs[grp] & (np.arange(len(members)) != starts[grp])
    _fold(rows, reps[members[fold]], reps[members[starts[grp[fold]]]])
    keep[members[fold]] = False
    return reps[keep]


def _names(refs: Callable[[np.ndarray], list[str]], group_reps: np.ndarray) -> str:
    shown = refs(group_reps[:_NAMED_ROWS])
    more = len(group_reps) - len(shown)
    return ", ".join(shown) + (f" and {more:,} more" if more > 0 else "")


def _fold(rows: _Rows, old: np.ndarray, new: np.ndarray) -> None:
    """Units `old` become duplicates of units `new`; whatever followed `old` now follows `new`
    (a superseded row stays superseded: it still asked for the other state)."""
    if not len(old):
        return
    for o, n in zip(old.tolist(), new.tolist(), strict=True):
        rows.folded.setdefault(n, []).append(o)
    target = np.arange(len(rows.dup_of), dtype=np.int64)
    target[old] = new
    follows = rows.dup_of >= 0
    rows.dup_of[follows] = target[rows.dup_of[follows]]
    rows.state[old], rows.dup_of[old] = DUPLICATE, new


def _order_units(norm: pa.Table, reps: np.ndarray, job_code: np.ndarray,
                 is_client: np.ndarray, folded: Mapping[int, list[int]] | None = None) -> Units:
    """Send order: file order of each job's first unit; a job's client update before its job update.

    The client update changes the default for future jobs only, but Logis may apply it to the
    job too; sending it first lets the job-level choice land last.
    """
    codes, client = job_code[reps], is_client[reps]
    first_of_job = np.full(int(codes.max()) + 1 if len(codes) else 0, np.iinfo(np.int64).max)
    np.minimum.at(first_of_job, codes, reps)
    order = np.argsort(first_of_job[codes] * 2 + ~client, kind="stable")
    reps, codes, client = reps[order], codes[order], client[order]
    # A job unit waits for the client unit of the same job (at most one of each per job).
    client_unit = np.full(len(first_of_job), _NO_ROW, dtype=np.int64)
    client_unit[codes[client]] = np.flatnonzero(client)
    after = np.where(client, _NO_ROW, client_unit[codes])
    targets = {t for t, present in (("client", client.any()), ("job", (~client).any())) if present}
    return Units(
        row=reps,
        job_id=_LazyText(norm["job_id"], reps),
        review_key=_LazyText(norm["review_key"], reps),
        do_notify_sms=_states(norm)[reps],
        update_target=_LazyText(norm["update_target"], reps, targets),
        after=after,
        folded=_folded_units(norm, reps, folded or {}),
    )


def _folded_units(norm: pa.Table, reps: np.ndarray, folded: Mapping[int, list[int]]
                  ) -> dict[int, tuple[tuple[str, str], ...]]:
    """Unit index -> (job_id, review_key) of each unit folded into it (few: client rows of
    jobs whose client the ledger knows)."""
    if not folded:
        return {}
    unit_of = {int(r): u for u, r in enumerate(reps.tolist()) if int(r) in folded}
    out = {}
    for rep, old in folded.items():
        take = pa.array(old, pa.int64())
        pairs = zip(norm["job_id"].take(take).to_pylist(),
                    norm["review_key"].take(take).to_pylist(), strict=True)
        out[unit_of[rep]] = tuple(pairs)
    return out


def _finish(norm: pa.Table, rows: _Rows, units: Units,
            refs: Callable[[np.ndarray], list[str]]) -> Plan:
    n = len(rows.state)
    unit_of_row = np.full(n, _NO_ROW, dtype=np.int64)
    unit_of_row[units.row] = np.arange(len(units))
    dups = np.flatnonzero(rows.state == DUPLICATE)
    unit_of_row[dups] = unit_of_row[rows.dup_of[dups]]
    code = pa.array(_CODES, pa.string()).take(pa.array(rows.code))
    message = pa.array(_MESSAGES, pa.string()).take(pa.array(rows.message))
    superseded = np.flatnonzero(rows.state == SUPERSEDED)
    if len(superseded):
        states = _states(norm)
        same = states[superseded] == states[rows.dup_of[superseded]]
        why = pa.array(np.where(same, _SAME_STATE_CHOSEN, _OTHER_STATE), pa.string())
        texts = pc.binary_join_element_wise(
            "superseded by ", pa.array(refs(rows.dup_of[superseded]), pa.string()), why, "")
        message = _put(message, superseded, texts)
    if rows.custom:
        at = np.array(sorted(rows.custom), dtype=np.int64)
        message = _put(message, at, pa.array([rows.custom[int(r)] for r in at], pa.string()))
    code = pc.coalesce(norm["error_code"], code)
    message = pc.coalesce(norm["error_message"], message)
    entity, known = _known(rows)
    return Plan(
        state=rows.state, error_code=_flat(code), error_message=_flat(message),
        duplicate_of=rows.dup_of, unit_of_row=unit_of_row, units=units,
        known_entity=entity, known_state=known,
    )


def _put(values: pa.Array, at: np.ndarray, texts: pa.Array) -> pa.Array:
    """`values` with the rows `at` (ascending) replaced by `texts`, in order."""
    mask = np.zeros(len(values), dtype=bool)
    mask[at] = True
    return pc.replace_with_mask(values, pa.array(mask), texts)


def _known(rows: _Rows) -> tuple[pa.Array, pa.Array]:
    """Entity and confirmed state from the ledger for unchanged rows and their duplicates."""
    n = len(rows.state)
    known = rows.known
    if known is None or not (rows.ledger_pos >= 0).any():
        return pa.nulls(n, pa.string()), pa.nulls(n, pa.bool_())
    pos = rows.ledger_pos.copy()
    dups = np.flatnonzero((rows.state == DUPLICATE) & (rows.dup_of >= 0))
    pos[dups] = pos[rows.dup_of[dups]]
    take = pa.array(pos, mask=pos < 0)
    return (_flat(known["entity_id"].take(take)).cast(pa.string()),
            _flat(known["do_notify_sms"].take(take)).cast(pa.bool_()))


def _flat(arr: pa.Array | pa.ChunkedArray) -> pa.Array:
    return arr.combine_chunks() if isinstance(arr, pa.ChunkedArray) else arr
