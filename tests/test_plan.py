"""The planner: units, duplicates, conflict policies, ordering, and what the ledger changes."""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from batch_toggle.config import PlanOptions
from batch_toggle.plan.units import (
    CONFLICT,
    DUPLICATE,
    INVALID,
    SEND,
    SUPERSEDED,
    UNCHANGED,
    LedgerView,
    TooManyInvalid,
    build_plan,
)

J1 = "11111111-1111-4111-8111-111111111111"
J2 = "22222222-2222-4222-8222-222222222222"
J3 = "33333333-3333-4333-8333-333333333333"
K1 = "aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa"
K2 = "bbbbbbbb-bbbb-4bbb-8bbb-bbbbbbbbbbbb"


def norm(*rows: tuple) -> pa.Table:
    """Rows of (job_id, review_key, do_notify_sms, update_target[, error_code])."""
    cols: dict[str, list] = {c: [] for c in
                             ("job_id", "review_key", "do_notify_sms", "update_target",
                              "error_code", "error_message")}
    for row in rows:
        job, key, state, target, *err = row
        code = err[0] if err else None
        for c, v in zip(("job_id", "review_key", "do_notify_sms", "update_target"),
                        (job, key, state, target), strict=True):
            cols[c].append(None if code else v)
        cols["error_code"].append(code)
        cols["error_message"].append(code and f"bad: {code}")
    return pa.table({
        "job_id": pa.array(cols["job_id"], pa.string()),
        "review_key": pa.array(cols["review_key"], pa.string()),
        "do_notify_sms": pa.array(cols["do_notify_sms"], pa.bool_()),
        "update_target": pa.array(cols["update_target"], pa.string()),
        "error_code": pa.array(cols["error_code"], pa.string()),
        "error_message": pa.array(cols["error_message"], pa.string()),
    })


def refs(rows: np.ndarray) -> list[str]:
    return [f"f.csv:{int(r) + 1}" for r in rows]


def plan_of(table: pa.Table, ledger: LedgerView | None = None, **opts):
    return build_plan(table, refs, PlanOptions(**opts), ledger)


def test_same_unit_same_state_first_is_sent_others_duplicate():
    p = plan_of(norm((J1, K1, False, "job"), (J1, K1, False, "job"), (J1, K1, False, "job")))
    assert list(p.state) == [SEND, DUPLICATE, DUPLICATE]
    assert list(p.duplicate_of) == [-1, 0, 0]
    assert list(p.unit_of_row) == [0, 0, 0]
    assert p.requests_needed == 1


def test_job_and_client_targets_are_different_units():
    p = plan_of(norm((J1, K1, False, "job"), (J1, K1, False, "client")))
    assert list(p.state) == [SEND, SEND]
    assert p.requests_needed == 2


@pytest.mark.parametrize(("policy", "states", "expected", "sent_row"), [
    pytest.param("last", [False, True, False, True], [SUPERSEDED] * 3 + [SEND], 3, id="last"),
    pytest.param("first", [False, True, True], [SEND, SUPERSEDED, SUPERSEDED], 0, id="first"),
    pytest.param("opt-out-wins", [True, False, True, False],
                 [SUPERSEDED, SEND, SUPERSEDED, SUPERSEDED], 1, id="opt-out-wins"),
    pytest.param("reject", [True, False], [CONFLICT, CONFLICT], None, id="reject"),
])
def test_conflict_policies(policy, states, expected, sent_row):
    p = plan_of(norm(*[(J1, K1, s, "job") for s in states]), on_conflict=policy)
    assert list(p.state) == expected
    if sent_row is None:
        assert p.requests_needed == 0
        assert set(p.error_code.to_pylist()) == {"conflicting_state"}
    else:
        assert list(p.units.row) == [sent_row]
        assert p.units.do_notify_sms[0] == states[sent_row]
        others = [i for i in range(len(states)) if i != sent_row]
        assert all(p.duplicate_of[i] == sent_row for i in others)


def test_superseded_rows_say_which_row_won():
    p = plan_of(norm((J1, K1, True, "job"), (J1, K1, False, "job")))
    assert p.error_message[0].as_py() == "superseded by f.csv:2, which asks for a different state"


@pytest.mark.parametrize("policy", ["last", "first", "opt-out-wins"])
def test_every_policy_calls_the_rows_it_did_not_send_superseded(policy):
    """A unit whose rows disagree: whatever the policy, the rows not sent are `superseded`,
    also those asking for the winner's state (opt-out-wins once called them `duplicate`)."""
    states = [False, True, False, True, False]
    p = plan_of(norm(*[(J1, K1, s, "job") for s in states]), on_conflict=policy)
    sent = int(p.units.row[0])
    assert [int(x) for x in p.state] == [SEND if i == sent else SUPERSEDED
                                         for i in range(len(states))]
    same = [i for i, s in enumerate(states) if i != sent and s == states[sent]]
    assert same  # a row asking for the winner's state is among them
    for i in same:
        assert p.error_message[i].as_py() == (
            f"superseded by f.csv:{sent + 1}, the row --on-conflict chose (rows for this job "
            "and target ask for different states)")


def test_different_review_keys_conflict_and_nothing_is_sent():
    p = plan_of(norm((J1, K1, False, "job"), (J1, K2, False, "job"), (J2, K1, True, "job")))
    assert list(p.state[:2]) == [CONFLICT, CONFLICT]
    assert p.error_code.to_pylist()[:2] == ["conflicting_review_key"] * 2
    assert [p.units.job_id[i] for i in range(len(p.units))] == [J2]


def test_invalid_rows_keep_their_error_code_and_are_never_units():
    p = plan_of(norm((J1, K1, False, "job"), (None, K1, False, "job", "missing_job_id")))
    assert list(p.state) == [SEND, INVALID]
    assert p.error_code.to_pylist() == [None, "missing_job_id"]
    assert list(p.unit_of_row) == [0, -1]


def test_client_update_is_sent_before_job_update_of_the_same_job():
    p = plan_of(norm((J2, K2, True, "job"), (J1, K1, False, "job"), (J1, K1, False, "client")))
    assert [(p.units.job_id[i], p.units.update_target[i]) for i in range(3)] == [
        (J2, "job"), (J1, "client"), (J1, "job")]
    assert list(p.units.after) == [-1, -1, 1]


def test_too_many_invalid_rows_refuse_the_file():
    rows = [(J1, K1, False, "job")] + [(None, None, None, None, "missing_job_id")] * 2
    with pytest.raises(TooManyInvalid, match="2 of 3 rows"):
        plan_of(norm(*rows), max_invalid=50)
    assert plan_of(norm(*rows), max_invalid=70).state[0] == SEND


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def ledger(*entries: tuple, job_clients: dict[str, str] | None = None) -> LedgerView:
    """Entries of (job_id, update_target, do_notify_sms, review_key, entity_id)."""
    cols = list(zip(*entries, strict=True)) if entries else [[]] * 5
    return LedgerView(
        confirmed=pa.table({
            "job_id": pa.array(cols[0], pa.string()),
            "update_target": pa.array(cols[1], pa.string()),
            "do_notify_sms": pa.array(cols[2], pa.bool_()),
            "review_key_hash": pa.array([_hash(k) for k in cols[3]], pa.string()),
            "entity_id": pa.array(cols[4], pa.string()),
        }),
        job_clients=job_clients or {}, hash_review_key=_hash,
    )


def test_confirmed_unit_with_same_key_is_unchanged_without_a_request():
    led = ledger((J1, "job", False, K1, J1))
    p = plan_of(norm((J1, K1, False, "job"), (J1, K1, False, "job")), led)
    assert list(p.state) == [UNCHANGED, DUPLICATE]
    assert p.requests_needed == 0
    assert p.known_entity[0].as_py() == J1 and p.known_state[0].as_py() is False


def test_confirmed_unit_with_another_key_is_sent_again():
    p = plan_of(norm((J1, K2, False, "job")), ledger((J1, "job", False, K1, J1)))
    assert list(p.state) == [SEND]


def test_no_skip_confirmed_forces_the_send():
    p = plan_of(norm((J1, K1, False, "job")), ledger((J1, "job", False, K1, J1)),
                skip_confirmed=False)
    assert list(p.state) == [SEND]


def test_resubscribing_a_confirmed_opt_out_is_blocked_with_its_duplicates():
    led = ledger((J1, "job", False, K1, J1))
    p = plan_of(norm((J1, K1, True, "job"), (J1, K1, True, "job")), led)
    assert list(p.state) == [CONFLICT, CONFLICT]
    assert p.error_code.to_pylist() == ["resubscribe_blocked"] * 2
    assert p.requests_needed == 0
    allowed = plan_of(norm((J1, K1, True, "job")), led, allow_resubscribe=True)
    assert list(allowed.state) == [SEND]


def test_a_clients_confirmed_opt_out_blocks_a_client_row_for_its_other_jobs():
    """Sticky opt-out at the client's level: J2 is another job of client c1, whose default
    an earlier run confirmed false through J1."""
    led = ledger((J1, "client", False, K1, "c1"), job_clients={J1: "c1", J2: "c1", J3: "c2"})
    p = plan_of(norm((J2, K2, True, "client"), (J2, K2, True, "job"), (J3, K1, True, "client")),
                led)
    assert list(p.state) == [CONFLICT, SEND, SEND]  # a job-level row is its job's own setting
    assert p.error_code.to_pylist()[0] == "resubscribe_blocked"
    assert f"through job {J1}" in p.error_message.to_pylist()[0]
    assert list(plan_of(norm((J2, K2, True, "client")), led, allow_resubscribe=True).state) \
        == [SEND]


def test_a_clients_latest_confirmation_decides_its_state():
    """Opted out through J1, then opted back in through J2 (written later): not blocked."""
    led = ledger((J1, "client", False, K1, "c1"), (J2, "client", True, K2, "c1"),
                 job_clients={J1: "c1", J2: "c1", J3: "c1"})
    led = LedgerView(led.confirmed.append_column("confirmed_seq", pa.array([1, 2], pa.int64())),
                     led.job_clients, led.hash_review_key)
    assert list(plan_of(norm((J3, K1, True, "client")), led).state) == [SEND]
    led = LedgerView(led.confirmed.set_column(5, "confirmed_seq", pa.array([2, 1], pa.int64())),
                     led.job_clients, led.hash_review_key)
    assert list(plan_of(norm((J3, K1, True, "client")), led).state) == [CONFLICT]


def test_a_clients_latest_confirmation_is_the_latest_written_not_the_latest_timed():
    """The opt-out through J2 was written after the opt-in through J1, whose run had a clock an
    hour fast: its time says later, the store's order says earlier. The opt-out holds."""
    led = ledger((J1, "client", True, K1, "c1"), (J2, "client", False, K2, "c1"),
                 job_clients={J1: "c1", J2: "c1", J3: "c1"})
    confirmed = led.confirmed.append_column(
        "confirmed_at", pa.array(["2026-11-01T01:00:00Z", "2026-11-01T00:00:05Z"]))
    confirmed = confirmed.append_column("confirmed_seq", pa.array([1, 2], pa.int64()))
    led = LedgerView(confirmed, led.job_clients, led.hash_review_key)
    p = plan_of(norm((J3, K1, True, "client")), led)
    assert list(p.state) == [CONFLICT]
    assert f"through job {J2}" in p.error_message.to_pylist()[0]


def test_client_rows_for_jobs_of_one_client_conflict_when_states_differ():
    led = ledger(job_clients={J1: "c1", J2: "c1"})
    p = plan_of(norm((J1, K1, False, "client"), (J2, K2, True, "client"),
                     (J3, K1, True, "client")), led)
    assert list(p.state) == [CONFLICT, CONFLICT, SEND]
    assert p.error_code.to_pylist()[:2] == ["conflicting_state"] * 2


def test_client_rows_for_jobs_of_one_client_send_once_when_states_agree():
    led = ledger(job_clients={J1: "c1", J2: "c1"})
    p = plan_of(norm((J1, K1, False, "client"), (J2, K2, False, "client"),
                     (J2, K2, False, "client")), led)
    assert list(p.state) == [SEND, DUPLICATE, DUPLICATE]
    assert list(p.duplicate_of) == [-1, 0, 0]
    assert list(p.unit_of_row) == [0, 0, 0]
    # The unit sent answers for J2's client unit too: the ledger must learn it (its job and
    # its own review key), or the next run naming J2 alone sends it again.
    assert dict(p.units.folded) == {0: ((J2, K2),)}


_row = st.tuples(
    st.sampled_from([J1, J2, J3, None]), st.sampled_from([K1, K2]), st.booleans(),
    st.sampled_from(["job", "client"]),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(_row, max_size=40), st.sampled_from(["last", "first", "opt-out-wins", "reject"]))
def test_every_row_gets_exactly_one_fate_and_one_request_per_unit(rows, policy):
    table = norm(*[(j, k, s, t) if j else (j, k, s, t, "missing_job_id") for j, k, s, t in rows])
    p = plan_of(table, on_conflict=policy, max_invalid=100)
    assert len(p.state) == len(rows)
    units = {(p.units.job_id[i], p.units.update_target[i]) for i in range(len(p.units))}
    assert len(units) == len(p.units)  # never two requests for one unit
    for i, (job, key, state, target) in enumerate(rows):
        if job is None:
            assert p.state[i] == INVALID
        elif p.state[i] in (SEND, DUPLICATE, SUPERSEDED):
            assert (job, target) in units
        else:
            assert p.state[i] == CONFLICT and (job, target) not in units
        if p.state[i] == DUPLICATE:  # a duplicate asks for what its unit sends
            u = p.unit_of_row[i]
            assert p.units.do_notify_sms[u] == state and p.units.review_key[u] == key
