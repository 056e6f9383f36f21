"""The report writer: formats, formula guard, atomic 0600 files, paths, summary."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import stat
import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.json as pa_json
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batch_toggle.errors import UsageError
from batch_toggle.report.writers import (
    FORMULA_TRIGGERS,
    ReportError,
    _open_temp,
    check_writable,
    default_report_path,
    guard_formulas,
    render_summary_table,
    report_format,
    summary_path,
    write_json,
    write_table,
)

FORMATS = ("csv", "parquet", "jsonl")

NASTY = [
    "plain",
    "comma, inside",
    'a "quoted" word',
    "line\nbreak",
    "crlf\r\ninside",
    "",
    None,
    "accents éü and emoji 😀",
    "back\\slash",
    "ctrl \x01\x1f end",
    "  padded  ",
]


def sample_table() -> pa.Table:
    n = len(NASTY)
    return pa.table(
        {
            "text": pa.array(NASTY, pa.string()),
            "source_row": pa.array(range(-3, n - 3), pa.int64()),
            "retryable": pa.array([True, False, None] * (n // 3) + [True] * (n % 3)),
            "latency_ms": pa.array([1.5, None, -2.25, 1e20, 0.1] * 2 + [3.0]),
            "status": pa.array(["updated"] * (n - 1) + [None], pa.large_string()),
        }
    )


def read_csv_as_text(path: Path) -> pa.Table:
    """Read a CSV back the way a script would: every column text, empty cells as ""."""
    with path.open(encoding="utf-8", newline="") as f:
        header = next(csv.reader(f))
    return pa_csv.read_csv(
        path,
        parse_options=pa_csv.ParseOptions(newlines_in_values=True),
        convert_options=pa_csv.ConvertOptions(
            column_types=dict.fromkeys(header, pa.string()),
            strings_can_be_null=False,
            quoted_strings_can_be_null=False,
        ),
    )


def csv_text(value: object) -> str:
    """How a cell reads back from our CSV (before the formula guard)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return {1e20: "1e+20", 3.0: "3"}.get(value, repr(value))
    return str(value)


def guarded(value: str) -> str:
    return "'" + value if value[:1] in FORMULA_TRIGGERS else value


# --- formats round-trip -----------------------------------------------------------------------


def test_csv_round_trips_every_cell_as_text(tmp_path: Path) -> None:
    table = sample_table()
    path = tmp_path / "r.csv"
    write_table(table, path)
    back = read_csv_as_text(path)
    assert back.column_names == table.column_names
    for name in table.column_names:
        column = table.column(name)
        expected = [csv_text(v) for v in column.to_pylist()]
        if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
            expected = [guarded(v) for v in expected]
        assert back.column(name).to_pylist() == expected, name


def test_parquet_round_trips_values_and_types(tmp_path: Path) -> None:
    table = sample_table()
    path = tmp_path / "r.parquet"
    write_table(table, path)
    assert pq.read_table(path).equals(table)


def test_jsonl_round_trips_values_and_types(tmp_path: Path) -> None:
    table = sample_table()
    path = tmp_path / "r.jsonl"
    write_table(table, path)
    lines = path.read_text(encoding="utf-8").split("\n")
    assert lines[-1] == ""  # every line ends with LF, no blank line in between
    assert [json.loads(line) for line in lines[:-1]] == table.to_pylist()
    back = pa_json.read_json(path, parse_options=pa_json.ParseOptions(explicit_schema=table.schema))
    assert back.equals(table)


def test_jsonl_writes_non_finite_floats_as_null_and_keeps_utf8_unescaped(tmp_path: Path) -> None:
    path = tmp_path / "r.ndjson"
    write_table(
        pa.table({"f": [float("nan"), float("inf"), 2.0], "s": ["é", "\u2028", None]}), path
    )
    text = path.read_text(encoding="utf-8")
    assert [json.loads(line) for line in text.split("\n")[:-1]] == [
        {"f": None, "s": "é"},
        {"f": None, "s": "\u2028"},
        {"f": 2, "s": None},
    ]
    assert "é" in text  # not \u00e9


def test_jsonl_timestamps_are_iso_8601(tmp_path: Path) -> None:
    when = datetime(2026, 11, 28, 4, 5, 6, tzinfo=UTC)
    path = tmp_path / "r.jsonl"
    write_table(pa.table({"sent_at": pa.array([when, None], pa.timestamp("us", tz="UTC"))}), path)
    assert [json.loads(line) for line in path.read_text().splitlines()] == [
        {"sent_at": "2026-11-28T04:05:06+00:00"},
        {"sent_at": None},
    ]


def test_csv_layout_is_pinned(tmp_path: Path) -> None:
    """Header row, LF endings, no BOM, strings quoted, numbers and booleans bare, nulls empty."""
    table = pa.table(
        {"a": ["x", "", None], "n": [1, None, -2], "b": [True, False, None], "f": [0.5, 2.0, None]}
    )
    path = tmp_path / "r.csv"
    write_table(table, path)
    assert path.read_bytes() == b'"a","n","b","f"\n"x",1,true,0.5\n"",,false,2\n,-2,,\n'


def test_csv_quoted_newlines_and_carriage_returns_round_trip(tmp_path: Path) -> None:
    values = ["one\ntwo", "three\r\nfour", "five\rsix", 'quote " and , comma']
    path = tmp_path / "r.csv"
    write_table(pa.table({"id": ["1", "2", "3", "4"], "message": values}), path)
    data = path.read_bytes()
    assert not data.startswith(b"\xef\xbb\xbf")
    assert data.count(b"\r") == 2  # only the two inside values
    assert read_csv_as_text(path).column("message").to_pylist() == values


@pytest.mark.parametrize("fmt", FORMATS)
def test_empty_table_writes_a_valid_empty_report(tmp_path: Path, fmt: str) -> None:
    table = sample_table().slice(0, 0)
    path = tmp_path / f"r.{fmt}"
    write_table(table, path)
    if fmt == "csv":
        assert path.read_text() == '"text","source_row","retryable","latency_ms","status"\n'
    elif fmt == "parquet":
        assert pq.read_table(path).schema.equals(table.schema)
    else:
        assert path.read_bytes() == b""


@pytest.mark.parametrize("fmt", FORMATS)
def test_many_batches_keep_row_order(tmp_path: Path, fmt: str) -> None:
    n = 150_000  # more than two of the writer's batches
    table = pa.table({"row": pa.array(range(n)), "text": pa.array([f"={i}" for i in range(n)])})
    path = tmp_path / f"r.{fmt}"
    write_table(table, path)
    if fmt == "csv":
        back = read_csv_as_text(path)
        assert back.column("row").to_pylist() == [str(i) for i in range(n)]
        assert back.column("text").to_pylist() == [f"'={i}" for i in range(n)]
    elif fmt == "parquet":
        assert pq.read_table(path).equals(table)
    else:
        back = pa_json.read_json(path)
        assert back.column("row").to_pylist() == list(range(n))
        assert back.column("text").to_pylist() == [f"={i}" for i in range(n)]


@pytest.mark.parametrize("fmt", FORMATS)
def test_returns_sha256_of_the_file_as_written(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / f"r.{fmt}"
    digest = write_table(sample_table(), path)
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest()


# --- formula guard ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "trigger", [pytest.param(t, id=f"U+{ord(t):04X}") for t in FORMULA_TRIGGERS]
)
def test_csv_guards_every_trigger_character(tmp_path: Path, trigger: str) -> None:
    cell = f'{trigger}HYPERLINK("http://evil")'
    path = tmp_path / "r.csv"
    write_table(pa.table({"note": [cell, "safe"]}), path)
    assert read_csv_as_text(path).column("note").to_pylist() == ["'" + cell, "safe"]


def test_full_width_forms_are_among_the_triggers() -> None:
    assert {"\uff1d", "\uff0b", "\uff0d", "\uff20"} <= set(FORMULA_TRIGGERS)
    assert {"=", "+", "-", "@", "\t", "\r", "\n"} <= set(FORMULA_TRIGGERS)


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_parquet_and_jsonl_keep_trigger_cells_raw(tmp_path: Path, fmt: str) -> None:
    cells = [f"{t}1+1" for t in FORMULA_TRIGGERS]
    path = tmp_path / f"r.{fmt}"
    write_table(pa.table({"=note": cells}), path)
    back = pq.read_table(path) if fmt == "parquet" else pa_json.read_json(path)
    assert back.column_names == ["=note"]
    assert back.column("=note").to_pylist() == cells


@pytest.mark.parametrize(
    "cell", ["a=b", "x-1", "mail@example.com", " =1", "'=already", "tab\tinside", "1+1", "é="]
)
def test_csv_leaves_cells_that_only_contain_a_trigger_later(tmp_path: Path, cell: str) -> None:
    path = tmp_path / "r.csv"
    write_table(pa.table({"note": [cell]}), path)
    assert read_csv_as_text(path).column("note").to_pylist() == [cell]


def test_csv_guards_header_cells_too(tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    write_table(pa.table({"=cmd": ["x"], "-opt": ["y"], "ok": ["z"]}), path)
    assert path.read_text().splitlines()[0] == '"\'=cmd","\'-opt","ok"'


def test_csv_does_not_guard_numbers(tmp_path: Path) -> None:
    """A negative number is not a formula; only string-typed columns are guarded."""
    path = tmp_path / "r.csv"
    write_table(pa.table({"http_status": [-1], "latency_ms": [-2.5], "text": ["-3"]}), path)
    assert path.read_text().splitlines()[1] == '-1,-2.5,"\'-3"'


@pytest.mark.parametrize(
    "values",
    [
        pytest.param(pa.array(["=a", "b", None], pa.string()), id="string"),
        pytest.param(pa.array(["=a", "b", None], pa.large_string()), id="large_string"),
        pytest.param(pa.array(["=a", "b", None], pa.string_view()), id="string_view"),
        pytest.param(pa.array(["=a", "b", None, "=a"]).dictionary_encode(), id="dictionary"),
    ],
)
def test_guard_formulas_handles_every_string_layout(values: pa.Array) -> None:
    out = guard_formulas(values)
    assert out.to_pylist()[:3] == ["'=a", "b", None]


def test_guard_formulas_leaves_other_types_alone() -> None:
    ints = pa.array([-1, 2])
    assert guard_formulas(ints) is ints


# --- atomic, 0600 -----------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_new_report_is_mode_0600(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / "out" / f"r.{fmt}"  # the directory is created too
    write_table(sample_table(), path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


@pytest.mark.parametrize("fmt", FORMATS)
def test_existing_report_is_replaced_and_becomes_0600(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / f"r.{fmt}"
    path.write_text("old")
    path.chmod(0o644)
    write_table(sample_table(), path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes() != b"old"
    assert os.listdir(tmp_path) == [path.name]


def test_temp_file_is_0600_from_its_first_instant(tmp_path: Path) -> None:
    """Created with O_EXCL and mode 0600, not chmod-ed after: even a umask of 0 cannot widen it."""
    old_umask = os.umask(0)
    try:
        fd, tmp = _open_temp(tmp_path / "r.csv")
    finally:
        os.umask(old_umask)
    try:
        assert stat.S_IMODE(os.fstat(fd).st_mode) == 0o600
        assert tmp.parent == tmp_path and tmp.name.startswith(".r.csv.")
    finally:
        os.close(fd)
        tmp.unlink()


FAILING_TABLES = {
    # the CSV writer has already written the header when the struct column fails
    "csv": pa.table({"ok": ["a"], "nested": pa.array([{"a": 1}])}),
    "parquet": pa.table(
        {"x": pa.array([pa.MonthDayNano([1, 2, 3])], pa.month_day_nano_interval())}
    ),
    # the second batch fails, after the first was written: NaN has no JSON form
    "jsonl": pa.table({"x": pa.array([[1.0]] * 70_000 + [[float("nan")]])}),
}


@pytest.mark.parametrize("fmt", FORMATS)
def test_failed_write_leaves_existing_report_and_no_temp_file(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / f"r.{fmt}"
    path.write_bytes(b"previous report")
    with pytest.raises(ReportError, match=f"cannot write .*r.{fmt}"):
        write_table(FAILING_TABLES[fmt], path)
    assert path.read_bytes() == b"previous report"
    assert os.listdir(tmp_path) == [path.name]


@pytest.mark.parametrize("fmt", FORMATS)
def test_disk_full_mid_write_leaves_existing_report_and_no_temp_file(
    tmp_path: Path, fmt: str
) -> None:
    """A real write error half-way (the file-size limit stands in for a full disk)."""
    path = tmp_path / f"r.{fmt}"
    path.write_bytes(b"previous report")
    script = textwrap.dedent(
        f"""
        import os, resource, sys
        import pyarrow as pa
        from batch_toggle.report.writers import ReportError, write_table
        # 3 MB of incompressible text against a 1 MB limit: the write fails part-way.
        table = pa.table({{"x": [os.urandom(32).hex() for _ in range(50_000)]}})
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, resource.RLIM_INFINITY))
        try:
            write_table(table, {str(path)!r})
        except ReportError as exc:
            print(exc)
            sys.exit(0)
        sys.exit("no error")
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "cannot write" in done.stdout and "File too large" in done.stdout
    assert path.read_bytes() == b"previous report"
    assert os.listdir(tmp_path) == [path.name]


def test_write_to_a_directory_path_fails_cleanly(tmp_path: Path) -> None:
    target = tmp_path / "taken.csv"
    target.mkdir()
    with pytest.raises(ReportError, match="taken.csv"):
        write_table(sample_table(), target)
    assert sorted(os.listdir(tmp_path)) == ["taken.csv"]


# --- write_json -------------------------------------------------------------------------------


def test_write_json_keeps_order_indents_and_is_0600(tmp_path: Path) -> None:
    path = tmp_path / "r.csv.summary.json"
    path.write_text("{}")
    path.chmod(0o644)
    summary = {"run_id": "abc", "counts_by_status": {"updated": 2}, "started": datetime(2026, 1, 2)}
    write_json(summary, path)
    text = path.read_text(encoding="utf-8")
    assert text.endswith("}\n")
    assert text.startswith('{\n  "run_id": "abc",\n  "counts_by_status": {\n    "updated": 2\n')
    assert list(json.loads(text)) == ["run_id", "counts_by_status", "started"]
    assert json.loads(text)["started"] == "2026-01-02T00:00:00"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_write_json_refuses_nan_and_leaves_previous_file(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    path.write_text('{"old": true}\n')
    with pytest.raises(ReportError, match="s.json"):
        write_json({"duration_seconds": float("nan")}, path)
    assert path.read_text() == '{"old": true}\n'
    assert os.listdir(tmp_path) == ["s.json"]


# --- paths ------------------------------------------------------------------------------------

NOW = datetime(2026, 11, 28, 4, 5, 6, tzinfo=UTC)


@pytest.mark.parametrize(
    ("first_input", "expected"),
    [
        pytest.param("sample_data/optouts_2026_11.csv", "optouts_2026_11", id="csv"),
        pytest.param("/data/x.csv.gz", "x", id="csv.gz"),
        pytest.param("EXPORT.TSV.GZ", "EXPORT", id="upper-case gz"),
        pytest.param("a.b.parquet", "a.b", id="dots"),
        pytest.param("noext", "noext", id="no extension"),
        pytest.param("-", "stdin", id="stdin"),
    ],
)
def test_default_report_path(first_input: str, expected: str) -> None:
    assert default_report_path(first_input, NOW) == Path(f"reports/{expected}-20261128T040506.csv")


def test_default_report_path_is_in_utc() -> None:
    local = NOW.astimezone(timezone(timedelta(hours=-5)))
    assert default_report_path("x.csv", local, Path("out")) == Path("out/x-20261128T040506.csv")
    naive_utc = NOW.replace(tzinfo=None)
    assert default_report_path("x.csv", naive_utc).name == "x-20261128T040506.csv"


@pytest.mark.parametrize(
    ("name", "fmt"),
    [
        ("r.csv", "csv"),
        ("R.CSV", "csv"),
        ("r.parquet", "parquet"),
        ("r.jsonl", "jsonl"),
        ("r.ndjson", "jsonl"),
    ],
)
def test_report_format_follows_the_extension(name: str, fmt: str) -> None:
    assert report_format(Path("out") / name) == fmt


@pytest.mark.parametrize("name", ["r.xlsx", "r.csv.gz", "report", "r.json"])
def test_report_format_refuses_unknown_extensions(name: str) -> None:
    with pytest.raises(UsageError, match=r"report .*: .*\.csv, \.parquet, \.jsonl"):
        report_format(Path(name))


def test_write_table_refuses_unknown_extension_before_touching_disk(tmp_path: Path) -> None:
    with pytest.raises(UsageError):
        write_table(sample_table(), tmp_path / "r.xlsx")
    assert os.listdir(tmp_path) == []


def test_summary_path_sits_beside_the_report() -> None:
    assert summary_path(Path("out/x.csv")) == Path("out/x.csv.summary.json")
    assert summary_path(Path("r.parquet")) == Path("r.parquet.summary.json")


# --- check_writable ---------------------------------------------------------------------------


def test_check_writable_creates_missing_directories_and_leaves_nothing(tmp_path: Path) -> None:
    path = tmp_path / "new" / "deeper" / "r.csv"
    check_writable(path)
    assert path.parent.is_dir()
    assert os.listdir(path.parent) == []


def test_check_writable_refuses_a_parent_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("")
    path = tmp_path / "afile" / "sub" / "x.csv"
    with pytest.raises(UsageError, match=r"cannot write .*afile/sub/x\.csv: .*afile is not a dir"):
        check_writable(path)


def test_check_writable_refuses_a_directory(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="is a directory"):
        check_writable(tmp_path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through chmod 0500")
def test_check_writable_refuses_a_read_only_directory(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(UsageError, match=r"cannot write .*locked/x\.csv"):
            check_writable(locked / "x.csv")
    finally:
        locked.chmod(0o700)


# --- the stderr summary -----------------------------------------------------------------------

SUMMARY = {
    "run_id": "r1",
    "counts_by_status": {"failed": 3, "updated": 1204, "duplicate": 0},
    "counts_by_error_code": {"job_not_found": 3},
    "requests_sent": 1210,
    "responses_429": 2,
    "retries": 4,
    "duration_s": 250.4,
    "report": {"path": "reports/x-20261128T040506.csv", "format": "csv", "sha256": "ab"},
}


def test_summary_table_shows_counts_requests_duration_and_report() -> None:
    text = render_summary_table(SUMMARY)
    lines = text.splitlines()
    assert "\x1b" not in text
    assert lines[:4] == [
        "status          rows",
        "updated        1,204",
        "failed             3",
        "total          1,207",
    ]
    assert "job_not_found      3" in lines
    assert "duplicate" not in text  # zero counts are left out
    assert "requests sent  1,210" in lines
    assert "429 responses  2" in lines
    assert "retries        4" in lines
    assert "duration       4 min 10 s" in lines
    assert "report         reports/x-20261128T040506.csv" in lines


def test_summary_table_colours_only_when_asked() -> None:
    coloured = render_summary_table(SUMMARY, color=True)
    assert "\x1b[31m" in coloured and "\x1b[32m" in coloured
    plain = coloured
    for code in ("\x1b[31m", "\x1b[32m", "\x1b[33m", "\x1b[1m", "\x1b[0m"):
        plain = plain.replace(code, "")
    assert plain == render_summary_table(SUMMARY)


def test_summary_table_says_which_rows_carry_a_code_that_several_statuses_share() -> None:
    """Duplicates of unsent rows share their unit's budget_exhausted: 179 rows carry it next to
    174 not_attempted. The table says so instead of leaving the two counts to disagree."""
    summary = {"counts_by_status": {"updated": 100, "not_attempted": 174, "duplicate": 12},
               "counts_by_error_code": {"budget_exhausted": 179, "job_not_found": 1},
               "error_codes_by_status": {"budget_exhausted": {"not_attempted": 174,
                                                              "duplicate": 5},
                                         "job_not_found": {"failed": 1}}}
    lines = render_summary_table(summary).splitlines()
    assert "budget_exhausted   179  (174 not_attempted, 5 duplicate)" in lines
    assert "job_not_found        1" in lines  # one status: nothing to explain


def test_summary_table_sets_waiting_rows_apart_from_those_that_need_attention() -> None:
    summary = {"counts_by_status": {"updated": 30, "not_attempted": 244, "invalid": 9},
               "waiting": {"rows": 244, "note": "..."}, "attention": {"rows": 9},
               "verdict": "stopped early: resumable"}
    lines = render_summary_table(summary).splitlines()
    assert "not_attempted   244  waiting: the next slice sends them" in lines
    assert "waiting        244 rows: the next slice (run --resume) sends them" in lines
    assert "attention      9 rows need attention (invalid, conflict, failed, mismatch)" in lines


def test_summary_table_of_an_empty_summary_is_empty() -> None:
    assert render_summary_table({}) == ""


# --- properties -------------------------------------------------------------------------------

cells = st.one_of(st.none(), st.text(max_size=12))


@st.composite
def text_tables(draw: st.DrawFn) -> pa.Table:
    width = draw(st.integers(1, 4))
    height = draw(st.integers(0, 8))
    columns = {
        f"c{i}": draw(st.lists(cells, min_size=height, max_size=height)) for i in range(width)
    }
    return pa.table({name: pa.array(values, pa.string()) for name, values in columns.items()})


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(table=text_tables())
def test_any_text_table_survives_csv_except_guarded_cells_gain_one_quote(
    tmp_path: Path, table: pa.Table
) -> None:
    path = tmp_path / "p.csv"
    write_table(table, path)
    back = read_csv_as_text(path)
    assert back.num_rows == table.num_rows
    for name in table.column_names:
        expected = [guarded(v or "") for v in table.column(name).to_pylist()]
        assert back.column(name).to_pylist() == expected


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(table=text_tables())
def test_any_text_table_survives_jsonl_unchanged(tmp_path: Path, table: pa.Table) -> None:
    path = tmp_path / "p.jsonl"
    write_table(table, path)
    lines = path.read_text(encoding="utf-8").split("\n")
    assert lines.pop() == ""  # every line ends with LF
    assert [json.loads(line) for line in lines] == table.to_pylist()


def test_an_output_on_an_input_or_on_another_output_is_refused_before_anything_is_read(
        tmp_path: Path) -> None:
    """`--report in.csv` would replace the opt-out list with its masked report; `--rejects`
    on the report's path would leave a report whose summary sha256 does not match it."""
    import batch_toggle

    source = tmp_path / "in.csv"
    source.write_text("job_id,review_key,do_notify_sms,update_target\n", encoding="utf-8")
    (tmp_path / "link.csv").symlink_to(source)
    cases = [({"report": source}, "report .*in.csv is the input"),
             ({"report": tmp_path / "r.csv", "rejects": tmp_path / "link.csv"},
              "rejects file .*link.csv is the input"),
             ({"report": tmp_path / "r.csv", "rejects": tmp_path / "r.csv"},
              "rejects file .*r.csv is the report"),
             ({"report": tmp_path / "r.csv", "rejects": tmp_path / "sub" / ".." / "r.csv.html"},
              "rejects file .* is the HTML report")]
    for options, message in cases:
        with pytest.raises(UsageError, match=message):
            batch_toggle.validate(source, **options)
    assert source.read_text(encoding="utf-8") == "job_id,review_key,do_notify_sms,update_target\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv", "link.csv"]
    batch_toggle.validate(source, report=tmp_path / "r.csv", rejects=tmp_path / "fix.csv")
    assert (tmp_path / "r.csv").exists() and (tmp_path / "fix.csv").exists()


def test_a_default_report_path_already_taken_gets_a_number(tmp_path: Path) -> None:
    from batch_toggle.report.writers import unused_report_path

    first = tmp_path / "in-20261128T103000.csv"
    assert unused_report_path(first) == first
    first.write_text("x", encoding="utf-8")
    second = tmp_path / "in-20261128T103000-2.csv"
    assert unused_report_path(first) == second
    (tmp_path / "in-20261128T103000-2.csv.summary.json").write_text("{}", encoding="utf-8")
    assert unused_report_path(first) == tmp_path / "in-20261128T103000-3.csv"


def test_a_default_report_name_is_reserved_as_it_is_chosen(tmp_path: Path) -> None:
    """Five processes started in the same second each choose before any of them writes: the
    name must be taken the moment it is chosen (an empty 0600 file), not when the report is
    written, or they all choose the same one and one report survives."""
    from batch_toggle.report.writers import release_reservation, unused_report_path

    base = tmp_path / "reports" / "in-20261128T103000.csv"
    chosen = [unused_report_path(base) for _ in range(5)]
    assert [p.name for p in chosen] == ["in-20261128T103000.csv"] + [
        f"in-20261128T103000-{n}.csv" for n in range(2, 6)]
    assert all(p.exists() and p.stat().st_mode & 0o777 == 0o600 for p in chosen)
    release_reservation(chosen[1])  # a job that failed before writing leaves nothing
    assert not chosen[1].exists()


def test_a_refused_input_leaves_no_empty_report_behind(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import batch_toggle
    from batch_toggle.errors import InputError

    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n", encoding="utf-8")
    with pytest.raises(InputError):
        batch_toggle.validate(tmp_path / "bad.csv")
    assert list((tmp_path / "reports").iterdir()) == []


def test_two_runs_in_the_same_second_keep_both_reports(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Found by exploratory testing: the default path has one-second resolution, and the
    second run's report replaced the first's (compliance evidence) without a word."""
    import batch_toggle
    from batch_toggle import clock

    frozen = datetime(2026, 11, 28, 10, 30, 0, tzinfo=UTC).timestamp()
    monkeypatch.setattr(clock, "SYSTEM", clock.Clock(wall=lambda: frozen))  # the jobs' clock
    monkeypatch.chdir(tmp_path)
    source = tmp_path / "in.csv"
    source.write_text("job_id,review_key,do_notify_sms,update_target\n", encoding="utf-8")
    first = batch_toggle.validate(source)
    second = batch_toggle.validate(source, on_conflict="reject")
    assert first.report_path.name == "in-20261128T103000.csv"
    assert second.report_path.name == "in-20261128T103000-2.csv"
    assert first.report_path.exists() and second.report_path.exists()
