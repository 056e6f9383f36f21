"""results: the report table built from the inputs, the plan and the units' outcomes.

Inputs are real files read by ingest and normalised; plans come from the real planner (with a
LedgerView where a test needs one); outcomes are Outcome records as the sender makes them.
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from batch_toggle import vocab
from batch_toggle.config import LoadOptions, PlanOptions
from batch_toggle.input.normalize import normalize
from batch_toggle.input.readers import LoadedInput, SourceFile, load_inputs
from batch_toggle.outcome import Outcome
from batch_toggle.plan.units import LedgerView, Plan, build_plan
from batch_toggle.report.table import (
    UnitResults,
    assemble,
    count_by,
    masked_input_columns,
    rejects_table,
    report_input_names,
    row_ref_array,
    row_refs,
)

J1 = "0dd6809a-68b1-4b4d-bec4-07c7fdf3ae55"
J2 = "861e9dcc-6253-4318-8549-06ac78d36f41"
J3 = "da1d515f-451f-4c71-a79a-74b2da87b611"
K1 = "baa14f0b-f53a-4f7b-8570-ad153a33b5db"
K2 = "0274b644-fb7d-4b1f-a4cb-014074a4473a"
K3 = "a0d92088-01a8-4d0d-bdf9-57e8e15771ee"
MASK = vocab.REVIEW_KEY_MASK_PREFIX
HEADER = ["Job ID", "Review Key", "SMS", "Target", "Note"]


def write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
    return str(path)


def plan_for(*paths: str, ledger: LedgerView | None = None,
             **options: object) -> tuple[LoadedInput, pa.Table, Plan]:
    loaded = load_inputs(paths, LoadOptions())
    norm = normalize(loaded.fields)
    plan = build_plan(norm, lambda rows: row_refs(loaded, rows),
                      PlanOptions(max_invalid=100, **options), ledger)  # type: ignore[arg-type]
    return loaded, norm, plan


def report_of(loaded: LoadedInput, norm: pa.Table, plan: Plan,
              units: UnitResults | None = None) -> list[dict]:
    units = units or UnitResults.uniform(plan.requests_needed, vocab.DRY_RUN)
    return assemble(loaded, norm, plan, units, "run-1").to_pylist()


# --- masking ------------------------------------------------------------------------------------


def test_keys_are_masked_to_the_tail_of_the_normalised_key(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "a.csv", HEADER, [
        [J1, "{" + K1.upper() + "}", "no", "job", ""],
        [J2, " urn:uuid:" + K2.replace("-", "").upper() + " ", "no", "job", ""],
        [J3, "", "no", "job", "no key"],
        [J3, "   ", "no", "job", "blank key"],
        [J3, "short-KEY1", "no", "job", "not a uuid"],
    ])
    loaded, norm, _ = plan_for(path)
    masked = masked_input_columns(loaded, norm)["Review Key"].to_pylist()
    assert masked == [MASK + K1[-4:], MASK + K2[-4:], "", "   ", MASK + "KEY1"]
    assert masked_input_columns(loaded, norm)["Note"] == loaded.raw["Note"]  # others untouched


def test_several_files_mask_the_column_each_maps_to_review_key(tmp_path: Path) -> None:
    first = write_csv(tmp_path / "a.csv", HEADER, [[J1, K1.upper(), "no", "job", ""]])
    second = write_csv(tmp_path / "b.csv", ["job", "key", "opt_in", "scope"],
                       [[J2, "{" + K2 + "}", "0", "job"], [J3, "", "0", "job"]])
    loaded, norm, _ = plan_for(first, second)
    masked = masked_input_columns(loaded, norm)
    assert masked["Review Key"].to_pylist() == [MASK + K1[-4:], None, None]
    assert masked["key"].to_pylist() == [None, MASK + K2[-4:], ""]
    assert masked["Job ID"] == loaded.raw["Job ID"] and masked["job"] == loaded.raw["job"]


def test_a_key_column_of_one_file_is_masked_in_the_rows_of_another_file_too() -> None:
    """File b maps review_key to `Key 2`, yet also has a cell in file a's key column: a
    non-blank cell there is masked with its own tail, a blank one left as it is."""
    raw = pa.table({"Key 1": [K1, "  {" + K2 + "}  ", "  ", None],
                    "Key 2": [None, K3, K3, ""]})
    fields = pa.table({
        "job_id": [J1, J2, J3, J1], "review_key": [K1, K3, K3, ""],
        "do_notify_sms": ["no"] * 4, "update_target": ["job"] * 4,
        "source_file": ["a.csv", "b.csv", "b.csv", "b.csv"], "source_row": [1, 1, 2, 3]})
    loaded = LoadedInput(raw=raw, fields=fields, warnings=(), sources=(
        SourceFile("a.csv", "0" * 64, 1, "utf-8", ("Key 1",), {"review_key": "Key 1"}),
        SourceFile("b.csv", "1" * 64, 3, "utf-8", ("Key 1", "Key 2"), {"review_key": "Key 2"}),
    ))
    masked = masked_input_columns(loaded, normalize(fields))
    assert masked["Key 1"].to_pylist() == [MASK + K1[-4:], MASK + (K2 + "}")[-4:], "  ", None]
    assert masked["Key 2"].to_pylist() == [None, MASK + K3[-4:], MASK + K3[-4:], ""]


def test_an_input_without_a_review_key_column_is_carried_as_it_is() -> None:
    raw = pa.table({"Job": [J1], "Note": ["x"]})
    fields = pa.table({"job_id": [J1], "review_key": pa.nulls(1, pa.string()),
                       "do_notify_sms": ["no"], "update_target": ["job"],
                       "source_file": ["a.csv"], "source_row": [1]})
    loaded = LoadedInput(raw=raw, fields=fields, warnings=(), sources=(
        SourceFile("a.csv", "0" * 64, 1, "utf-8", ("Job", "Note"), {"job_id": "Job"}),))
    assert masked_input_columns(loaded, normalize(fields)) is raw


# --- outcome columns ----------------------------------------------------------------------------


def test_duplicates_share_their_units_outcome_but_keep_their_own_status(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "a.csv", HEADER, [
        [J1, K1, "no", "job", ""],       # 0 unit 0
        [J1, K1, "false", "JOB", ""],    # 1 duplicate of 0
        [J2, K2, "yes", "job", ""],      # 2 superseded by 3
        [J2, K2, "no", "job", ""],       # 3 unit 1 (never sent)
        ["bad", K2, "no", "job", ""],    # 4 invalid
    ])
    loaded, norm, plan = plan_for(path)
    sent = Outcome("updated", None, None, False, 200, 2, "job-entity-1", False,
                   "2026-11-03T10:00:00Z", 12.5)
    unsent = Outcome("not_attempted", "aborted", "the API refused the key")
    units = UnitResults.from_outcomes(plan.requests_needed, {0: sent}, unsent)
    rows = report_of(loaded, norm, plan, units)
    assert [r["status"] for r in rows] == ["updated", "duplicate", "superseded",
                                           "not_attempted", "invalid"]
    shared = ("retryable", "http_status", "entity_id", "confirmed_do_notify_sms", "sent_at",
              "latency_ms")
    assert [rows[1][f] for f in shared] == [rows[0][f] for f in shared] == [
        False, 200, "job-entity-1", False, "2026-11-03T10:00:00Z", 12.5]
    # The requests are counted once, on the row that was sent: attempts sum to requests.
    assert (rows[0]["attempts"], rows[1]["attempts"]) == (2, 0)
    assert rows[1]["duplicate_of"] == f"{path}:1" and rows[2]["duplicate_of"] == f"{path}:4"
    assert rows[2]["error_message"] == f"superseded by {path}:4, which asks for a different state"
    assert [rows[2][f] for f in shared] == [None] * len(shared) and rows[2]["attempts"] == 0
    assert (rows[3]["error_code"], rows[3]["attempts"]) == ("aborted", 0)
    assert rows[4]["error_code"] == "invalid_job_id" and rows[4]["attempts"] == 0
    assert rows[4]["job_id"] is None and rows[4]["do_notify_sms"] is False
    assert {r["run_id"] for r in rows} == {"run-1"}
    assert [r["source_row"] for r in rows] == [1, 2, 3, 4, 5]


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _ledger(*entries: tuple[str, str, bool, str, str]) -> LedgerView:
    cols = list(zip(*entries, strict=True))
    return LedgerView(confirmed=pa.table({
        "job_id": pa.array(cols[0], pa.string()),
        "update_target": pa.array(cols[1], pa.string()),
        "do_notify_sms": pa.array(cols[2], pa.bool_()),
        "review_key_hash": pa.array([_hash(k) for k in cols[3]], pa.string()),
        "entity_id": pa.array(cols[4], pa.string()),
    }), job_clients={}, hash_review_key=_hash)


def test_unchanged_rows_show_what_the_ledger_confirmed(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "a.csv", HEADER, [
        [J1, K1, "no", "job", ""],        # confirmed false with K1: unchanged
        [J2, K2, "yes", "client", ""],    # confirmed true at client level: unchanged
        [J1, K1, "no", "job", ""],        # duplicate of the unchanged row
        [J3, K3, "yes", "job", ""],       # confirmed false: turning it back on is blocked
        [J2, K2, "yes", "job", ""],       # not in the ledger: dry_run
    ])
    ledger = _ledger((J1, "job", False, K1, "entity-j1"), (J2, "client", True, K2, "client-9"),
                     (J3, "job", False, K3, "entity-j3"))
    loaded, norm, plan = plan_for(path, ledger=ledger)
    rows = report_of(loaded, norm, plan)
    assert [r["status"] for r in rows] == ["unchanged", "unchanged", "duplicate", "conflict",
                                           "dry_run"]
    assert [(r["entity_id"], r["confirmed_do_notify_sms"]) for r in rows] == [
        ("entity-j1", False), ("client-9", True), ("entity-j1", False), (None, None),
        (None, None)]
    assert rows[0]["error_message"] == "already confirmed in this state by an earlier run"
    assert rows[0]["error_code"] is None and rows[0]["attempts"] == 0
    assert rows[3]["error_code"] == "resubscribe_blocked"
    assert plan.requests_needed == 1


def test_input_columns_named_like_outcome_columns_are_renamed_uniquely() -> None:
    assert report_input_names(["Job", "status", "Note", "source_row"]) == [
        "Job", "input_status", "Note", "input_source_row"]
    assert report_input_names(["status", "input_status", "run_id"]) == [
        "input_status_2", "input_status", "input_run_id"]


def test_report_names_every_column_once_even_with_colliding_input_names(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "a.csv", ["job", "key", "sms", "target", "input_status",
                                          "status"], [[J1, K1, "no", "job", "x", "y"]])
    loaded, norm, plan = plan_for(path)
    table = assemble(loaded, norm, plan, UnitResults.uniform(1, vocab.DRY_RUN), "r")
    assert table.column_names == ["job", "key", "sms", "target", "input_status",
                                  "input_status_2", *vocab.OUTCOME_COLUMNS]
    assert table.to_pylist()[0]["input_status_2"] == "y"
    assert table.to_pylist()[0]["status"] == "dry_run"


def test_an_empty_input_gives_an_empty_report_with_every_column(tmp_path: Path) -> None:
    loaded, norm, plan = plan_for(write_csv(tmp_path / "a.csv", HEADER, []))
    table = assemble(loaded, norm, plan, UnitResults.uniform(0, vocab.DRY_RUN), "r")
    assert table.num_rows == 0 and table.column_names == [*HEADER, *vocab.OUTCOME_COLUMNS]


# --- rejects, refs, counts ------------------------------------------------------------------------


def test_rejects_are_the_attention_rows_raw_in_the_input_layout(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "a.csv", [*HEADER, "status"], [
        [J1, K1, "no", "job", "ok", "s0"],
        [J2, "{" + K2.upper() + "}", "maybe", "job", "invalid", "s1"],
        [J3, K3, "no", "job", "sent, then failed", "s2"],
        [J3.upper(), K3, "no", "job", "its duplicate", "s3"],
        [J1, K1, "yes", "client", "not attempted", "s4"],
    ])
    loaded, norm, plan = plan_for(path)
    failed = Outcome("failed", "job_not_found", "job not found", False, 404, 1)
    unsent = Outcome("not_attempted", "interrupted")
    unit = plan.unit_of_row  # J1's client unit goes first: send order is not row order
    units = UnitResults.from_outcomes(
        plan.requests_needed, {int(unit[0]): Outcome("updated"), int(unit[2]): failed}, unsent)
    report = assemble(loaded, norm, plan, units, "r")
    assert report["status"].to_pylist() == ["updated", "invalid", "failed", "duplicate",
                                            "not_attempted"]
    rejects = rejects_table(loaded, report)
    assert rejects.column_names == [*HEADER, "status"]  # the input's own names, not input_*
    assert rejects.to_pylist() == [loaded.raw.to_pylist()[i] for i in (1, 2, 4)]
    assert rejects["Review Key"][0].as_py() == "{" + K2.upper() + "}"  # unmasked, as written


def test_row_refs_name_file_and_row_across_inputs(tmp_path: Path) -> None:
    first = write_csv(tmp_path / "a.csv", HEADER, [[J1, K1, "no", "job", ""]] * 2)
    second = write_csv(tmp_path / "b.csv", HEADER, [[J2, K2, "no", "job", ""]] * 3)
    loaded = load_inputs([first, second], LoadOptions())
    rows = np.array([4, 0, 2, 1])
    assert row_refs(loaded, rows) == [f"{second}:3", f"{first}:1", f"{second}:1", f"{first}:2"]
    assert row_ref_array(loaded, rows).to_pylist() == row_refs(loaded, rows)
    assert row_refs(loaded, np.array([], dtype=np.int64)) == []


def test_count_by_counts_non_null_values_most_common_first() -> None:
    column = pa.array(["dry_run", None, "invalid", "dry_run", "duplicate", "dry_run", "invalid"])
    assert list(count_by(column).items()) == [("dry_run", 3), ("invalid", 2), ("duplicate", 1)]


# --- UnitResults --------------------------------------------------------------------------------


def test_uniform_results_give_every_unit_the_same_outcome() -> None:
    units = UnitResults.uniform(3, "not_attempted", "budget_exhausted", "stopped early")
    cols = {f: c.to_pylist() for f, c in units.columns.items()}
    assert cols["status"] == ["not_attempted"] * 3
    assert cols["error_code"] == ["budget_exhausted"] * 3
    assert cols["error_message"] == ["stopped early"] * 3
    assert cols["attempts"] == [0, 0, 0] and units.columns["attempts"].type == pa.int32()
    assert cols["http_status"] == cols["entity_id"] == cols["latency_ms"] == [None] * 3
    assert UnitResults.uniform(0, vocab.DRY_RUN).statuses() == []


_OUTCOMES = st.builds(
    Outcome,
    status=st.sampled_from(["updated", "failed", "mismatch"]),
    error_code=st.one_of(st.none(), st.sampled_from(vocab.ERROR_CODES)),
    error_message=st.one_of(st.none(), st.text(max_size=10)),
    retryable=st.one_of(st.none(), st.booleans()),
    http_status=st.one_of(st.none(), st.integers(100, 599)),
    attempts=st.integers(0, 9),
    entity_id=st.one_of(st.none(), st.text(max_size=8)),
    confirmed_do_notify_sms=st.one_of(st.none(), st.booleans()),
    sent_at=st.one_of(st.none(), st.just("2026-11-03T10:00:00Z")),
    latency_ms=st.one_of(st.none(), st.floats(0, 1e4)),
)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 12).flatmap(lambda n: st.tuples(
    st.just(n), st.dictionaries(st.integers(0, max(n - 1, 0)), _OUTCOMES, max_size=n))),
    _OUTCOMES)
def test_from_outcomes_puts_each_outcome_at_its_unit(case: tuple[int, dict[int, Outcome]],
                                                     unsent: Outcome) -> None:
    n, outcomes = case
    units = UnitResults.from_outcomes(n, outcomes, unsent)
    for f, column in units.columns.items():
        assert column.to_pylist() == [getattr(outcomes.get(i, unsent), f) for i in range(n)], f
    assert units.statuses() == [outcomes.get(i, unsent).status for i in range(n)]


@pytest.mark.parametrize("n", [0, 1, 5])
def test_from_outcomes_without_outcomes_is_all_unsent(n: int) -> None:
    unsent = Outcome("not_attempted", "aborted", "the API refused the key", attempts=0)
    units = UnitResults.from_outcomes(n, {}, unsent)
    assert units.statuses() == ["not_attempted"] * n
    assert units.columns["error_code"].to_pylist() == ["aborted"] * n
