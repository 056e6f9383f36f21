"""The central promise, as properties: whatever table of strings comes in, the report has exactly
one row per input row, in input order, the input's own cells carried as they were (the review
key masked), and nothing raises but a clean input error.

Everything goes through the real pipeline (jobs.validate: load, normalise, plan, assemble, write
the report and its summary), from CSV and from Parquet files written by the test.
"""

from __future__ import annotations

import csv
import hashlib
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batch_toggle import vocab
from batch_toggle.config import PlanOptions
from batch_toggle.errors import InputError
from batch_toggle.jobs.pipeline import JobConfig, prepare, validate
from batch_toggle.plan.units import (
    DUPLICATE,
    SEND,
    SUPERSEDED,
    LedgerView,
    TooManyInvalid,
    build_plan,
)
from batch_toggle.report.table import UnitResults, assemble

JOBS = ("0dd6809a-68b1-4b4d-bec4-07c7fdf3ae55", "861e9dcc-6253-4318-8549-06ac78d36f41",
        "da1d515f-451f-4c71-a79a-74b2da87b611")
KEYS = ("baa14f0b-f53a-4f7b-8570-ad153a33b5db", "0274b644-fb7d-4b1f-a4cb-014074a4473a")

PROPERTY = settings(max_examples=100, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _spellings(uuid: str) -> st.SearchStrategy[str]:
    return st.sampled_from([uuid, uuid.upper(), "{" + uuid + "}", "urn:uuid:" + uuid,
                            uuid.replace("-", ""), f"  {uuid} "])


# Few distinct jobs and keys, so duplicates, superseded rows and conflicts are common.
JOB_VALUES = st.one_of(st.sampled_from(JOBS).flatmap(_spellings),
                       st.sampled_from(["", "12345", "not-a-uuid", JOBS[0][:-1]]),
                       st.text(max_size=12))
KEY_VALUES = st.one_of(st.sampled_from(KEYS).flatmap(_spellings),
                       st.sampled_from(["", "none", "zz", KEYS[0][:20]]), st.text(max_size=12))
STATE_VALUES = st.one_of(st.sampled_from(["true", "no", "Opt-Out", "1", "0", " yes ", "maybe", ""]),
                         st.text(max_size=6))
TARGET_VALUES = st.one_of(st.sampled_from(["job", "client", " Client ", "JOB", "all", ""]),
                          st.text(max_size=6))
EXTRA_VALUES = st.one_of(st.text(max_size=15),
                         st.sampled_from(["=1+1", "@x", "-3", "a,b", 'say "hi"', "x\r\ny", "NA"]))

FIELD_COLUMNS = {
    "job_id": (["job_id", "Job ID", "job", "JobID"], JOB_VALUES),
    "review_key": (["review_key", "Review Key", "key", "ReviewKey"], KEY_VALUES),
    "do_notify_sms": (["do_notify_sms", "SMS", "opt_in", "desired-state"], STATE_VALUES),
    "update_target": (["update_target", "Target", "scope"], TARGET_VALUES),
}
# Extra column names: outcome names (carried as input_<name>), their input_ forms, ordinary
# names, and arbitrary text (which may even match a field's alias: then a clean input error).
EXTRA_NAMES = st.one_of(
    st.sampled_from([*vocab.OUTCOME_COLUMNS, "input_status", "input_source_row", "Note", "Phone",
                     "Client Name", ""]),
    st.text(max_size=10),
)


@st.composite
def tables(draw: st.DrawFn, nulls: bool) -> dict[str, Any]:
    """Columns (name, values) in file order; which of them is the review key; the row count."""
    n = draw(st.integers(0, 30))
    columns: list[tuple[str, list[str | None]]] = []
    key_at = None
    for field_name, (names, values) in FIELD_COLUMNS.items():
        if draw(st.integers(0, 9)) == 0:  # now and then a field has no column
            continue
        cells = st.one_of(st.none(), values) if nulls else values
        if field_name == "review_key":
            key_at = len(columns)
        columns.append((draw(st.sampled_from(names)), draw(st.lists(cells, min_size=n,
                                                                     max_size=n))))
    for _ in range(draw(st.integers(0, 4))):
        cells = st.one_of(st.none(), EXTRA_VALUES) if nulls else EXTRA_VALUES
        columns.append((draw(EXTRA_NAMES), draw(st.lists(cells, min_size=n, max_size=n))))
    order = draw(st.permutations(range(len(columns))))
    key_at = order.index(key_at) if key_at is not None else None
    return {"columns": [columns[i] for i in order], "key_at": key_at, "rows": n}


def _write_csv(path: Path, columns: Sequence[tuple[str, list]], quote_all: bool) -> None:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\r\n",
                            quoting=csv.QUOTE_ALL if quote_all else csv.QUOTE_MINIMAL)
        writer.writerow([name for name, _ in columns])
        writer.writerows(zip(*(values for _, values in columns), strict=True))


def _write_parquet(path: Path, columns: Sequence[tuple[str, list]]) -> None:
    arrays = [pa.array(values, pa.string()) for _, values in columns]
    pq.write_table(pa.Table.from_arrays(arrays, names=[name for name, _ in columns]), path)


def _check_report(table: dict[str, Any], out: pa.Table, path: Path,
                  refused: bool = False) -> None:
    n, columns = table["rows"], table["columns"]
    assert out.num_rows == n
    names = out.column_names
    assert names[-len(vocab.OUTCOME_COLUMNS):] == list(vocab.OUTCOME_COLUMNS)
    assert len(set(names)) == len(names)  # input_<name> never collides with another column
    assert len(names) == len(columns) + len(vocab.OUTCOME_COLUMNS)
    assert out["source_row"].to_pylist() == list(range(1, n + 1))
    assert set(out["source_file"].to_pylist()) <= {str(path)}
    sent = vocab.NOT_ATTEMPTED if refused else vocab.DRY_RUN  # what a unit to send shows
    assert set(out["status"].to_pylist()) <= {sent, vocab.DUPLICATE, vocab.SUPERSEDED,
                                              vocab.CONFLICT, vocab.INVALID}
    for i, (_, values) in enumerate(columns):  # the input's own cells, as they were
        carried = out.column(i).to_pylist()
        if i != table["key_at"]:
            assert carried == values
            continue
        for raw, shown in zip(values, carried, strict=True):
            if shown != raw:
                assert shown.startswith(vocab.REVIEW_KEY_MASK_PREFIX)
                assert len(shown) <= len(vocab.REVIEW_KEY_MASK_PREFIX) + 4
    _check_followers(out.select(["status", "do_notify_sms", "duplicate_of"]).to_pylist(), path,
                     sent)


def _check_followers(rows: list[dict[str, Any]], path: Path,
                     sent: str = vocab.DRY_RUN) -> None:
    """A duplicate asks for what its unit sends; a superseded row's unit had rows asking for
    different states; nothing else follows a row."""
    by_ref = {f"{path}:{i + 1}": row for i, row in enumerate(rows)}
    states: dict[str, set[bool]] = {}
    for row in rows:
        if row["duplicate_of"] is not None:
            states.setdefault(row["duplicate_of"], set()).add(row["do_notify_sms"])
    for row in rows:
        if row["status"] in (vocab.DUPLICATE, vocab.SUPERSEDED):
            winner = by_ref[row["duplicate_of"]]
            assert winner["status"] == sent
            if row["status"] == vocab.DUPLICATE:
                assert winner["do_notify_sms"] == row["do_notify_sms"]
            else:
                assert states[row["duplicate_of"]] | {winner["do_notify_sms"]} == {True, False}
        else:
            assert row["duplicate_of"] is None


def _pipeline(table: dict[str, Any], path: Path, max_invalid: float, *, write: bool) -> None:
    """jobs.validate (write=True), or the same steps without writing files: jobs.prepare (load,
    normalise, plan) and results.assemble, which is what validate writes."""
    report = path.with_name("report.csv")
    config = JobConfig(inputs=(str(path),), report_path=report, use_state=False,
                       plan=PlanOptions(max_invalid=max_invalid))
    try:
        if write:
            result = validate(config)
        else:
            prepared = prepare(config)
            units = UnitResults.uniform(prepared.plan.requests_needed, vocab.DRY_RUN)
            out = assemble(prepared.loaded, prepared.norm, prepared.plan, units, "run")
    except (InputError, TooManyInvalid) as exc:  # a clean refusal: one line naming the file
        message = str(exc)
        assert path.name in message
        assert "\n" not in message and "\r" not in message
        refused = getattr(exc, "result", None)
        if write and isinstance(exc, TooManyInvalid):  # a report of every row all the same
            assert refused is not None and report.exists()
            _check_report(table, refused.report, path, refused=True)
        else:
            assert refused is None and not report.exists()
        return
    if not write:
        _check_report(table, out, path)
        return
    _check_report(table, result.report, path)
    with open(report, newline="", encoding="utf-8") as handle:
        written = list(csv.reader(handle))
    assert len(written) == table["rows"] + 1 and written[0][-1] == "run_id"
    status_at = written[0].index("status")
    assert [row[status_at] for row in written[1:]] == result.report["status"].to_pylist()
    assert sum(result.summary["counts_by_status"].values()) == table["rows"]
    assert result.summary["report"]["sha256"] == hashlib.sha256(report.read_bytes()).hexdigest()


@PROPERTY
@given(tables(nulls=False), st.booleans(), st.sampled_from([100.0, 100.0, 50.0]))
def test_any_csv_gives_one_report_row_per_input_row_in_order(table: dict[str, Any],
                                                             quote_all: bool,
                                                             max_invalid: float) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "input.csv"
        _write_csv(path, table["columns"], quote_all)
        _pipeline(table, path, max_invalid, write=False)


@PROPERTY
@given(tables(nulls=True), st.sampled_from([100.0, 50.0]))
def test_any_parquet_gives_one_report_row_per_input_row_in_order(table: dict[str, Any],
                                                                 max_invalid: float) -> None:
    names = [name for name, _ in table["columns"]]
    if len(set(names)) != len(names):
        table["columns"] = [(f"{name}#{i}", values)
                            for i, (name, values) in enumerate(table["columns"])]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "input.parquet"
        _write_parquet(path, table["columns"])
        _pipeline(table, path, max_invalid, write=False)


@settings(PROPERTY, max_examples=25)
@given(tables(nulls=False), st.booleans(), st.sampled_from([100.0, 100.0, 50.0]))
def test_validate_writes_one_report_row_per_input_row(table: dict[str, Any],
                                                      quote_all: bool,
                                                      max_invalid: float) -> None:
    """The whole job, files included (fewer examples: each writes its reports), a file
    refused by --max-invalid too."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "input.csv"
        _write_csv(path, table["columns"], quote_all)
        _pipeline(table, path, max_invalid, write=True)


# --- the planner with a ledger: client-level units of one client ----------------------------------

CLIENT_OF = {JOBS[0]: "client-a", JOBS[1]: "client-a", JOBS[2]: "client-b"}


def _norm(rows: Sequence[tuple[str, str, bool, str]]) -> pa.Table:
    cols = list(zip(*rows, strict=True)) if rows else [[], [], [], []]
    n = len(rows)
    return pa.table({
        "job_id": pa.array(cols[0], pa.string()), "review_key": pa.array(cols[1], pa.string()),
        "do_notify_sms": pa.array(cols[2], pa.bool_()),
        "update_target": pa.array(cols[3], pa.string()),
        "error_code": pa.nulls(n, pa.string()), "error_message": pa.nulls(n, pa.string()),
    })


EMPTY_LEDGER = pa.table({"job_id": pa.array([], pa.string()),
                         "update_target": pa.array([], pa.string()),
                         "do_notify_sms": pa.array([], pa.bool_()),
                         "review_key_hash": pa.array([], pa.string()),
                         "entity_id": pa.array([], pa.string())})


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(JOBS), st.just(KEYS[0]), st.booleans(),
                          st.sampled_from(["job", "client"])), max_size=12),
       st.sampled_from(["last", "first", "opt-out-wins", "reject"]))
def test_folding_client_units_keeps_duplicates_and_superseded_honest(rows: list[tuple],
                                                                     policy: str) -> None:
    """Client-level rows for jobs of one client become one request (or a conflict); whatever
    follows a folded unit still asks for the same state (duplicate) or the other (superseded)."""
    ledger = LedgerView(confirmed=EMPTY_LEDGER, job_clients=CLIENT_OF,
                        hash_review_key=lambda key: key)
    plan = build_plan(_norm(rows), lambda r: [f"f:{int(i) + 1}" for i in r],
                      PlanOptions(on_conflict=policy), ledger)
    states = np.array([state for _, _, state, _ in rows], dtype=bool)
    assert len(plan.state) == len(rows)
    for i, fate in enumerate(plan.state.tolist()):
        rep = int(plan.duplicate_of[i])
        if fate == DUPLICATE:
            assert plan.state[rep] == SEND and states[rep] == states[i]
            assert plan.units.row[plan.unit_of_row[i]] == rep
        elif fate == SUPERSEDED:  # its unit (folded or not) had rows asking for both states
            followers = np.flatnonzero(plan.duplicate_of == rep)
            assert plan.state[rep] == SEND and plan.unit_of_row[i] == -1
            assert set(states[followers].tolist()) | {bool(states[rep])} == {True, False}
        else:
            assert rep == -1
    sent_clients = [CLIENT_OF[plan.units.job_id[u]] for u in range(len(plan.units))
                    if plan.units.update_target[u] == "client"]
    assert len(sent_clients) == len(set(sent_clients))  # one client-level request per client


@pytest.mark.parametrize("rows", [0, 1, 7])
def test_one_row_per_input_row_also_for_tiny_files(tmp_path: Path, rows: int) -> None:
    columns = [("job_id", [JOBS[i % 3] for i in range(rows)]),
               ("review_key", [KEYS[0]] * rows), ("sms", ["no"] * rows),
               ("target", ["job"] * rows)]
    path = tmp_path / "tiny.csv"
    _write_csv(path, columns, quote_all=False)
    _pipeline({"columns": columns, "key_at": 1, "rows": rows}, path, 50.0, write=True)
