"""Hostile input through `batch-toggle validate` and `load_inputs`: never a traceback.

Every file here ends one of two ways:
  * exit 2 with exactly one error line on stderr, naming the file (and the row where there is
    one), and no report written; or
  * a report (exit 0 or 1) with exactly one row per input data row, in input order.

The cases are the traps real compliance files carry (Excel's encodings, a BOM before invalid
bytes, ragged rows, an unclosed quote, a 1 MB cell pasted by mistake, 10,000 columns from an
export gone wrong) and the ones an attacker would try (NUL bytes, lone surrogates in JSON
escapes, Parquet of every Arrow type, gzip that is not gzip). Property-based tests throw
arbitrary bytes and arbitrary well-formed CSV at the same checks.
"""

from __future__ import annotations

import csv
import datetime as dt
import decimal
import gzip
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner, Result
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batch_toggle.cli.app import main
from batch_toggle.config import LoadOptions
from batch_toggle.errors import InputError, UsageError
from batch_toggle.input.readers import load_inputs

JOB = "cd613e30-d8f1-4adf-91b7-584a2265b1f5"
KEY = "1e2feb89-414c-443c-9027-c4d1c386bbc4"
JOB2 = "0741c7a8-7ce4-4c82-9807-2e8c35bf992d"
KEY2 = "c9e9c616-612e-4696-a6ce-cc1b78e51061"
HEADER = "job_id,review_key,do_notify_sms,update_target,note"
ROW1 = f"{JOB},{KEY},false,job,first"
ROW2 = f"{JOB2},{KEY2},true,client,second"
ERROR_PREFIX = "batch-toggle: error: "
_NO_FIXTURE_CHECK = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow]


@dataclass
class Outcome:
    """What one `validate` run left behind."""

    result: Result
    report: Path
    rows: list[dict[str, object]] | None  # the report's rows (JSONL), None when not written

    @property
    def code(self) -> int:
        return self.result.exit_code


def validate(tmp: Path, *inputs: Path, args: tuple[str, ...] = ()) -> Outcome:
    """`batch-toggle validate` in-process, with a JSONL report (raw values, one object a line)."""
    report = tmp / "out" / "report.jsonl"
    if report.exists():
        report.unlink()
    result = CliRunner().invoke(
        main, ["validate", *map(str, inputs), "--report", str(report),
               "--state", str(tmp / "state.sqlite"), *args],
        catch_exceptions=True,
    )
    rows = None
    if report.exists():
        with report.open(encoding="utf-8") as fh:
            rows = [json.loads(line) for line in fh if line.strip()]
    return Outcome(result, report, rows)


def assert_clean(out: Outcome, *, names: tuple[Path, ...]) -> None:
    """Never a traceback; exit 2 is one line naming the file; anything else is a full report."""
    result = out.result
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"uncaught {type(result.exception).__name__}: "
                             f"{result.exception!r}\nstderr: {result.stderr}")
    assert "Traceback" not in result.stderr
    assert result.stdout == "", "stdout stays free for pipes"
    if out.code == 2:
        errors = [ln for ln in result.stderr.splitlines() if ln.startswith(ERROR_PREFIX)]
        others = [ln for ln in result.stderr.splitlines()
                  if ln.strip() and not ln.startswith((ERROR_PREFIX, "warning: "))]
        assert len(errors) == 1, result.stderr
        assert not others, f"exit 2 prints one error line (warnings aside): {result.stderr!r}"
        assert any(str(n) in errors[0] for n in names), f"names no input: {errors[0]!r}"
        if "--max-invalid" in errors[0]:  # refused, with a report of every row
            summary = json.loads(Path(f"{out.report}.summary.json").read_text(encoding="utf-8"))
            assert out.rows is not None and summary["rows"] == len(out.rows)
            assert summary["verdict"] == "refused: nothing was sent"
        else:
            assert out.rows is None, "an unreadable file leaves no report"
        return
    assert out.code in (0, 1), (out.code, result.stderr)
    assert out.rows is not None
    summary = json.loads(Path(f"{out.report}.summary.json").read_text(encoding="utf-8"))
    assert summary["rows"] == len(out.rows)
    by_file: dict[str, list[int]] = {}
    for row in out.rows:
        by_file.setdefault(str(row["source_file"]), []).append(int(str(row["source_row"])))
    for numbers in by_file.values():
        assert numbers == list(range(1, len(numbers) + 1)), "one row per input row, in order"


def expect_report(out: Outcome, rows: int, *names: Path) -> list[dict[str, object]]:
    assert_clean(out, names=names)
    assert out.code in (0, 1), out.result.stderr
    assert out.rows is not None and len(out.rows) == rows
    return out.rows


def expect_refusal(out: Outcome, name: Path, *, row: int | None = None,
                   says: str | None = None) -> str:
    assert_clean(out, names=(name,))
    assert out.code == 2, (out.code, out.result.stderr)
    line = next(ln for ln in out.result.stderr.splitlines() if ln.startswith(ERROR_PREFIX))
    if row is not None:
        assert f"row {row}" in line or f"line {row}" in line, line
    if says is not None:
        assert says in line, line
    return line


def write(path: Path, content: bytes | str) -> Path:
    path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
    return path


# --- encodings ------------------------------------------------------------------------------


@pytest.mark.parametrize("newline", ["\n", "\r\n", "\r"], ids=["lf", "crlf", "cr"])
def test_line_ends_of_every_kind(tmp_path: Path, newline: str) -> None:
    path = write(tmp_path / "in.csv", newline.join([HEADER, ROW1, ROW2]) + newline)
    rows = expect_report(validate(tmp_path, path), 2, path)
    assert [r["note"] for r in rows] == ["first", "second"], "no CR left on a value"


def test_mixed_line_ends_in_one_file(tmp_path: Path) -> None:
    row3 = f"{JOB2},{KEY2},true,job,third"
    path = write(tmp_path / "in.csv", f"{HEADER}\r\n{ROW1}\r{ROW2}\n{row3}\r\n")
    rows = expect_report(validate(tmp_path, path), 3, path)
    assert [r["note"] for r in rows] == ["first", "second", "third"]


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be"])
def test_utf16_with_a_bom_is_read(tmp_path: Path, encoding: str) -> None:
    text = f"{HEADER}\r\n{ROW1}\r\n{ROW2}\r\n"
    bom = {"utf-16": b"", "utf-16-le": b"\xff\xfe", "utf-16-be": b"\xfe\xff"}[encoding]
    path = write(tmp_path / "in.csv", bom + text.encode(encoding))
    expect_report(validate(tmp_path, path), 2, path)


def test_utf16_without_a_bom_is_refused_or_reported_never_a_traceback(tmp_path: Path) -> None:
    path = write(tmp_path / "in.csv", f"{HEADER}\n{ROW1}\n".encode("utf-16-le"))
    assert_clean(validate(tmp_path, path), names=(path,))


def test_utf8_bom_followed_by_invalid_bytes_is_refused_naming_the_file(tmp_path: Path) -> None:
    path = write(tmp_path / "in.csv", b"\xef\xbb\xbf" + f"{HEADER}\n{ROW1},caf\xe9\n".encode(
        "latin-1"))
    expect_refusal(validate(tmp_path, path), path, says="BOM")


def test_cp1252_is_read_with_a_warning_naming_the_file(tmp_path: Path) -> None:
    path = write(tmp_path / "in.csv", f"{HEADER}\n{JOB},{KEY},false,job,Fran\xe7ois \u20ac\n"
                 .encode("cp1252"))
    out = validate(tmp_path, path)
    rows = expect_report(out, 1, path)
    assert rows[0]["note"] == "François €"
    assert f"warning: {path}: not valid UTF-8, read as cp1252" in out.result.stderr


def test_bytes_undefined_in_cp1252_are_refused(tmp_path: Path) -> None:
    # 0x81 is undefined in cp1252 and invalid as UTF-8: no encoding fits.
    path = write(tmp_path / "in.csv", f"{HEADER}\n".encode() + b"\x81\x8d\x8f\x90\x9d\n")
    expect_refusal(validate(tmp_path, path), path)


def test_bom_alone_and_header_only_with_bom(tmp_path: Path) -> None:
    bom_only = write(tmp_path / "bom.csv", b"\xef\xbb\xbf")
    expect_refusal(validate(tmp_path, bom_only), bom_only, says="empty")
    header_only = write(tmp_path / "header.csv", b"\xef\xbb\xbf" + HEADER.encode() + b"\r\n")
    out = validate(tmp_path, header_only)
    expect_report(out, 0, header_only)
    assert out.code == 0, "a header-only file gives an empty report and exit 0"


@pytest.mark.parametrize("escape", ["\\ud800", "\\udfff", "\\udc80x", "a\\ud83d"],
                         ids=["high", "low", "low-then-text", "text-then-high"])
def test_lone_surrogates_in_jsonl_escapes(tmp_path: Path, escape: str) -> None:
    """A JSON escape can name half a surrogate pair: valid JSON, not encodable text."""
    lines = [
        f'{{"job_id": "{JOB}", "review_key": "{KEY}", "sms": "false", "target": "job", '
        f'"note": "{escape}"}}',
        f'{{"job_id": "{escape}", "review_key": "{KEY2}", "sms": "true", "target": "job"}}',
    ]
    path = write(tmp_path / "in.jsonl", "\n".join(lines) + "\n")
    expect_refusal(validate(tmp_path, path), path, row=1, says="surrogate")


def test_lone_surrogate_in_a_jsonl_key(tmp_path: Path) -> None:
    line = (f'{{"job_id": "{JOB}", "review_key": "{KEY}", "sms": "false", "target": "job", '
            f'"\\udc80": "x"}}')
    path = write(tmp_path / "in.jsonl", line + "\n")
    expect_refusal(validate(tmp_path, path), path, row=1, says="surrogate")


def test_a_valid_surrogate_pair_escape_is_text(tmp_path: Path) -> None:
    line = (f'{{"job_id": "{JOB}", "review_key": "{KEY}", "sms": "false", "target": "job", '
            f'"note": "\\ud83d\\ude00"}}')
    path = write(tmp_path / "in.jsonl", line + "\n")
    rows = expect_report(validate(tmp_path, path), 1, path)
    assert rows[0]["note"] == "\U0001f600"


# --- shape ----------------------------------------------------------------------------------


def test_nul_bytes_in_cells_and_header(tmp_path: Path) -> None:
    path = write(tmp_path / "in.csv",
                 f"{HEADER},x\x00y\n{JOB},{KEY},false,job,a\x00b,\x00\n{ROW2},\x00\x00\n")
    out = validate(tmp_path, path)
    assert_clean(out, names=(path,))
    if out.code != 2:
        assert out.rows is not None and len(out.rows) == 2


def test_nul_bytes_inside_an_id_make_that_row_invalid(tmp_path: Path) -> None:
    path = write(tmp_path / "in.csv", f"{HEADER}\n{JOB[:5]}\x00{JOB[5:]},{KEY},false,job,x\n"
                 f"{ROW2}\n")
    rows = expect_report(validate(tmp_path, path, args=("--max-invalid", "100")), 2, path)
    assert rows[0]["status"] == "invalid" and rows[0]["error_code"] == "invalid_job_id"
    assert rows[1]["status"] == "dry_run"


def test_a_one_megabyte_cell(tmp_path: Path) -> None:
    big = "x" * (1 << 20)
    path = write(tmp_path / "in.csv", f"{HEADER}\n{JOB},{KEY},false,job,{big}\n{ROW2}\n")
    rows = expect_report(validate(tmp_path, path), 2, path)
    assert rows[0]["note"] == big


def test_a_one_megabyte_id_is_an_invalid_row_not_a_crash(tmp_path: Path) -> None:
    big = "f" * (1 << 20)
    path = write(tmp_path / "in.csv", f"{HEADER}\n{big},{KEY},false,job,x\n{ROW2}\n")
    rows = expect_report(validate(tmp_path, path, args=("--max-invalid", "100")), 2, path)
    assert rows[0]["error_code"] == "invalid_job_id"


def test_ten_thousand_columns(tmp_path: Path) -> None:
    extra = [f"c{i}" for i in range(9_996)]
    header = HEADER.split(",")[:4] + extra
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerow([JOB, KEY, "false", "job", *(str(i) for i in range(9_996))])
    writer.writerow([JOB2, KEY2, "true", "client", *([""] * 9_996)])
    path = write(tmp_path / "wide.csv", buf.getvalue())
    rows = expect_report(validate(tmp_path, path), 2, path)
    assert rows[0]["c9995"] == "9995"


def test_ragged_rows_short_and_long(tmp_path: Path) -> None:
    path = write(tmp_path / "in.csv",
                 f"{HEADER}\n{JOB},{KEY}\n{ROW2},extra,more\n{JOB},{KEY},false\n")
    out = validate(tmp_path, path, args=("--max-invalid", "100"))
    rows = expect_report(out, 3, path)
    assert rows[0]["error_code"] == "missing_do_notify_sms"
    assert rows[1]["status"] == "dry_run"
    assert "warning:" in out.result.stderr


@pytest.mark.parametrize("body, row", [
    (f'{HEADER}\n{ROW1}\n{JOB2},"{KEY2},true,job,x\n{ROW1}\n', 2),
    (f'{HEADER}\n"{JOB},{KEY},false,job,x\n', 1),
], ids=["second-row", "first-row"])
def test_an_unbalanced_quote_is_refused_naming_the_row(tmp_path: Path, body: str,
                                                       row: int) -> None:
    path = write(tmp_path / "in.csv", body)
    expect_refusal(validate(tmp_path, path), path, row=row)


def test_an_unbalanced_quote_in_the_header(tmp_path: Path) -> None:
    path = write(tmp_path / "in.csv", f'"job_id,review_key,sms,target\n{ROW1}\n')
    assert_clean(validate(tmp_path, path), names=(path,))


def test_stray_quotes_inside_unquoted_values_are_kept(tmp_path: Path) -> None:
    path = write(tmp_path / "in.csv", f'{HEADER}\n{JOB},{KEY},false,job,say "hi"\n')
    rows = expect_report(validate(tmp_path, path), 1, path)
    assert rows[0]["note"] == 'say "hi"'


@pytest.mark.parametrize("content", ["", "\n\n\n", "\r\n", "   \n"], ids=repr)
@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".txt", ".jsonl"])
def test_empty_files_are_refused_naming_the_file(tmp_path: Path, content: str,
                                                 suffix: str) -> None:
    path = write(tmp_path / f"empty{suffix}", content)
    out = validate(tmp_path, path)
    if suffix == ".jsonl" or content.strip():
        assert_clean(out, names=(path,))  # blank JSONL is no objects; spaces may be a header
    else:
        expect_refusal(out, path)


def test_header_only_files_give_an_empty_report(tmp_path: Path) -> None:
    for name, content in [("h.csv", HEADER + "\n"), ("h.tsv", HEADER.replace(",", "\t")),
                          ("h2.csv", HEADER + "\r\n\r\n\r\n")]:
        path = write(tmp_path / name, content)
        out = validate(tmp_path, path)
        expect_report(out, 0, path)
        assert out.code == 0


def test_header_only_parquet_gives_an_empty_report(tmp_path: Path) -> None:
    path = tmp_path / "empty.parquet"
    pq.write_table(pa.table({c: pa.array([], pa.string()) for c in HEADER.split(",")}), path)
    out = validate(tmp_path, path)
    expect_report(out, 0, path)
    assert out.code == 0


def test_duplicate_header_names(tmp_path: Path) -> None:
    path = write(tmp_path / "in.csv", f"{HEADER},note,note\n{ROW1},b,c\n")
    out = validate(tmp_path, path)
    rows = expect_report(out, 1, path)
    notes = [v for k, v in rows[0].items() if k.startswith("note")]
    assert notes == ["first", "b", "c"], rows[0]
    assert "duplicate column name" in out.result.stderr


def test_duplicate_header_matching_a_field_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "in.csv", f"{HEADER},job_id\n{ROW1},{JOB2}\n")
    expect_refusal(validate(tmp_path, path), path)


def test_empty_and_blank_header_names(tmp_path: Path) -> None:
    path = write(tmp_path / "in.csv", f"{HEADER},,, ,\n{ROW1},a,b,c,d\n")
    expect_report(validate(tmp_path, path), 1, path)


def test_a_header_that_names_report_columns(tmp_path: Path) -> None:
    """Input columns named like outcome columns are carried as input_<name>."""
    path = write(tmp_path / "in.csv", f"{HEADER},status,run_id,source_row\n{ROW1},s,r,99\n")
    rows = expect_report(validate(tmp_path, path), 1, path)
    assert rows[0]["input_status"] == "s" and rows[0]["status"] == "dry_run"
    assert rows[0]["source_row"] in (1, "1")


# --- JSONL ----------------------------------------------------------------------------------


@pytest.mark.parametrize("line", ["[1, 2]", '"text"', "42", "null", "true", "{", "{}{}", "\x00"])
def test_jsonl_lines_that_are_not_objects_are_refused_naming_the_line(
        tmp_path: Path, line: str) -> None:
    good = json.dumps({"job_id": JOB, "review_key": KEY, "sms": "false", "target": "job"})
    path = write(tmp_path / "in.jsonl", f"{good}\n{line}\n")
    expect_refusal(validate(tmp_path, path), path, row=2)


def test_jsonl_with_nested_and_odd_values(tmp_path: Path) -> None:
    objects = [
        {"job_id": JOB, "review_key": KEY, "sms": False, "target": "job",
         "nested": {"a": [1, {"b": None}]}, "big": 10**40, "f": 1e-300},
        {"job_id": JOB2, "review_key": KEY2, "sms": 1, "target": "client", "nested": None},
        {"job_id": None, "review_key": [], "sms": {}, "target": 3.5},
    ]
    path = write(tmp_path / "in.jsonl", "\n".join(json.dumps(o) for o in objects))
    rows = expect_report(validate(tmp_path, path, args=("--max-invalid", "100")), 3, path)
    assert rows[0]["do_notify_sms"] is False and rows[1]["do_notify_sms"] is True
    assert rows[2]["status"] == "invalid"


def test_jsonl_nan_and_infinity_stay_text(tmp_path: Path) -> None:
    path = write(tmp_path / "in.jsonl",
                 f'{{"job_id": "{JOB}", "review_key": "{KEY}", "sms": NaN, "target": Infinity}}\n')
    rows = expect_report(validate(tmp_path, path, args=("--max-invalid", "100")), 1, path)
    assert rows[0]["status"] == "invalid"


# --- Parquet --------------------------------------------------------------------------------


def _parquet(path: Path, table: pa.Table) -> Path:
    pq.write_table(table, path)
    return path


def _odd_columns(n: int) -> dict[str, pa.Array]:
    """One column of every awkward Arrow type, n rows, nulls sprinkled in."""
    nulls = [None] * (n - 1)
    return {
        "ints": pa.array([7, *nulls], pa.int64()),
        "uints": pa.array([2**64 - 1, *nulls], pa.uint64()),
        "floats": pa.array([float("nan"), *nulls], pa.float64()),
        "halfish": pa.array([1.5, *nulls], pa.float32()),
        "ts": pa.array([dt.datetime(2026, 11, 1, 12, 0), *nulls], pa.timestamp("us")),
        "ts_tz": pa.array([dt.datetime(2026, 11, 1, tzinfo=dt.UTC), *nulls],
                          pa.timestamp("ms", tz="America/Toronto")),
        "date": pa.array([dt.date(2026, 11, 1), *nulls], pa.date32()),
        "time": pa.array([dt.time(1, 2, 3), *nulls], pa.time64("us")),
        "dur": pa.array([dt.timedelta(seconds=5), *nulls], pa.duration("s")),
        "dec": pa.array([decimal.Decimal("1.50"), *nulls], pa.decimal128(10, 2)),
        "dec256": pa.array([decimal.Decimal("-0.001"), *nulls], pa.decimal256(40, 3)),
        "bin": pa.array([b"\xff\x00\xfe", *nulls], pa.binary()),
        "fixed": pa.array([b"\x00" * 4, *nulls], pa.binary(4)),
        "large": pa.array(["x", *nulls], pa.large_string()),
        "list": pa.array([[1, 2], *nulls], pa.list_(pa.int32())),
        "struct": pa.array([{"a": 1, "b": "c"}, *nulls],
                           pa.struct([("a", pa.int8()), ("b", pa.string())])),
        "map": pa.array([[("k", 1)], *nulls], pa.map_(pa.string(), pa.int16())),
        "nested": pa.array([[{"x": [1]}], *nulls], pa.list_(pa.struct([("x", pa.list_(
            pa.int64()))]))),
        "allnull": pa.nulls(n),
        "dict": pa.array(["a", *(["b"] * (n - 1))]).dictionary_encode(),
        "bools": pa.array([True, *nulls], pa.bool_()),
    }


def test_parquet_with_every_awkward_type_is_reported(tmp_path: Path) -> None:
    n = 3
    table = pa.table({
        "job_id": pa.array([JOB, JOB2, None]),
        "review_key": pa.array([KEY, KEY2, KEY]).dictionary_encode(),
        "do_notify_sms": pa.array([False, True, None], pa.bool_()),
        "update_target": pa.array(["job", "client", "job"]),
        **_odd_columns(n),
    })
    path = _parquet(tmp_path / "odd.parquet", table)
    rows = expect_report(validate(tmp_path, path, args=("--max-invalid", "100")), n, path)
    assert rows[0]["do_notify_sms"] is False and rows[1]["do_notify_sms"] is True
    assert rows[2]["error_code"] == "missing_job_id"
    assert rows[0]["ints"] == "7"


@pytest.mark.parametrize("kind", ["int", "timestamp", "list", "struct", "binary", "decimal",
                                  "null", "float"])
def test_parquet_fields_of_unexpected_types(tmp_path: Path, kind: str) -> None:
    """The four fields themselves in types no opt-out list should have: rows go invalid (or
    read, where the text happens to be valid), never a crash."""
    values: dict[str, pa.Array] = {
        "int": pa.array([1, 0], pa.int64()),
        "timestamp": pa.array([dt.datetime(2026, 1, 1), None], pa.timestamp("s")),
        "list": pa.array([["job"], []], pa.list_(pa.string())),
        "struct": pa.array([{"v": True}, None], pa.struct([("v", pa.bool_())])),
        "binary": pa.array([b"\x80job", b"client"], pa.binary()),
        "decimal": pa.array([decimal.Decimal("1"), decimal.Decimal("0")], pa.decimal128(3, 0)),
        "null": pa.nulls(2),
        "float": pa.array([1.0, 0.0], pa.float64()),
    }
    base = {"job_id": pa.array([JOB, JOB2]), "review_key": pa.array([KEY, KEY2]),
            "do_notify_sms": pa.array(["false", "true"]), "update_target": pa.array(["job"] * 2)}
    for field in base:
        table = pa.table({**base, field: values[kind]})
        path = _parquet(tmp_path / f"{field}-{kind}.parquet", table)
        out = validate(tmp_path, path, args=("--max-invalid", "100"))
        expect_report(out, 2, path)


def test_parquet_with_no_columns_or_no_rows(tmp_path: Path) -> None:
    no_columns = _parquet(tmp_path / "nocols.parquet", pa.table({}))
    expect_refusal(validate(tmp_path, no_columns), no_columns)


def test_truncated_parquet_is_refused(tmp_path: Path) -> None:
    good = _parquet(tmp_path / "good.parquet", pa.table({"job_id": [JOB], "review_key": [KEY],
                                                         "sms": ["false"], "target": ["job"]}))
    data = good.read_bytes()
    for cut in (4, len(data) // 2, len(data) - 1):
        path = write(tmp_path / f"cut{cut}.parquet", data[:cut])
        expect_refusal(validate(tmp_path, path), path)


# --- gzip and other containers --------------------------------------------------------------


def test_truncated_gzip_is_refused_naming_the_file(tmp_path: Path) -> None:
    data = gzip.compress(f"{HEADER}\n{ROW1}\n{ROW2}\n".encode() * 50)
    path = write(tmp_path / "in.csv.gz", data[: len(data) // 2])
    expect_refusal(validate(tmp_path, path), path, says="gzip")


def test_gz_that_is_not_gzip_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "in.csv.gz", f"{HEADER}\n{ROW1}\n")
    expect_refusal(validate(tmp_path, path), path, says="gzip")


def test_gzip_of_garbage_is_refused_or_reported(tmp_path: Path) -> None:
    path = write(tmp_path / "in.tsv.gz", gzip.compress(os.urandom(4096)))
    assert_clean(validate(tmp_path, path), names=(path,))


def test_gzip_of_a_good_file_with_crlf(tmp_path: Path) -> None:
    path = write(tmp_path / "in.csv.gz", gzip.compress(f"{HEADER}\r\n{ROW1}\r\n".encode()))
    expect_report(validate(tmp_path, path), 1, path)


@pytest.mark.parametrize("suffix", [".xlsx", ".parquet", ".jsonl", ".csv.gz"])
def test_a_text_file_under_a_binary_name(tmp_path: Path, suffix: str) -> None:
    path = write(tmp_path / f"in{suffix}", f"{HEADER}\n{ROW1}\n")
    expect_refusal(validate(tmp_path, path), path)


def test_a_bad_file_among_good_ones_is_named(tmp_path: Path) -> None:
    good = write(tmp_path / "good.csv", f"{HEADER}\n{ROW1}\n")
    bad = write(tmp_path / "bad.csv.gz", b"\x1f\x8b\x08garbage")
    line = expect_refusal(validate(tmp_path, good, bad), bad)
    assert str(good) not in line


def test_many_invalid_rows_refusal_is_one_clean_line(tmp_path: Path) -> None:
    path = write(tmp_path / "in.csv", HEADER + "\n" + "\n".join(
        f"nope{i},{KEY},false,job,x" for i in range(10)) + "\n")
    out = validate(tmp_path, path)
    assert_clean(out, names=(path,))
    assert out.code == 2


# --- properties -----------------------------------------------------------------------------

SUFFIXES = [".csv", ".tsv", ".txt", ".jsonl", ".ndjson", ".parquet", ".xlsx", ".csv.gz",
            ".jsonl.gz", ".dat"]

_TOKENS = [HEADER + "\n", ROW1, ROW2, "\n", "\r\n", "\r", ",", ";", "\t", "|", '"', "'", "\x00",
           "\ufeff", "\xe9", "\u2028", "{", "}", "[", "]", ":", "null", "\\ud800", "\\", " "]


@settings(max_examples=60, deadline=None, suppress_health_check=_NO_FIXTURE_CHECK)
@given(
    content=st.one_of(
        st.binary(max_size=300),
        st.lists(st.sampled_from(_TOKENS), max_size=40).map(
            lambda parts: "".join(parts).encode("utf-8", "surrogatepass")),
        st.lists(st.sampled_from(_TOKENS), max_size=40).map(
            lambda parts: gzip.compress("".join(parts).encode("utf-8", "surrogatepass"))),
        st.lists(st.sampled_from(_TOKENS), max_size=40).map(
            lambda parts: "".join(parts).encode("utf-16")),
    ),
    suffix=st.sampled_from(SUFFIXES),
)
def test_arbitrary_bytes_never_crash_validate(tmp_path_factory: pytest.TempPathFactory,
                                               content: bytes, suffix: str) -> None:
    tmp = tmp_path_factory.mktemp("fuzz")
    path = write(tmp / f"fuzz{suffix}", content)
    assert_clean(validate(tmp, path), names=(path,))


@settings(max_examples=100, deadline=None)
@given(content=st.binary(max_size=400),
       suffix=st.sampled_from(SUFFIXES + [".gz", ".xlsm", ".tab"]))
def test_arbitrary_bytes_never_escape_load_inputs(tmp_path_factory: pytest.TempPathFactory,
                                                  content: bytes, suffix: str) -> None:
    """The loader's promise: InputError (naming the file) or a table, row for row."""
    path = write(tmp_path_factory.mktemp("load") / f"x{suffix}", content)
    try:
        loaded = load_inputs([str(path)], LoadOptions())
    except InputError as exc:
        assert exc.file == str(path)
    except UsageError:
        pass
    else:
        assert loaded.raw.num_rows == loaded.fields.num_rows


_cell = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12,
) | st.sampled_from(["", '"', ",", "\r\n", "\n", "\r", "\x00", "=1+1", "  ", JOB, KEY, "NA"])


@settings(max_examples=60, deadline=None, suppress_health_check=_NO_FIXTURE_CHECK)
@given(
    rows=st.lists(st.tuples(_cell, _cell, _cell, _cell, _cell), min_size=1, max_size=12),
    delimiter=st.sampled_from([",", ";", "\t", "|"]),
    newline=st.sampled_from(["\n", "\r\n", "\r"]),
    bom=st.booleans(),
)
def test_any_well_formed_csv_gives_one_report_row_per_row(
        tmp_path_factory: pytest.TempPathFactory, rows: list[tuple[str, ...]], delimiter: str,
        newline: str, bom: bool) -> None:
    """Quoted newlines, quotes, delimiters, NULs, formulas: every data row is a report row."""
    buf = io.StringIO()
    writer = csv.writer(buf, delimiter=delimiter, lineterminator=newline,
                        quoting=csv.QUOTE_NONNUMERIC)
    writer.writerow(HEADER.split(","))
    writer.writerows(rows)
    tmp = tmp_path_factory.mktemp("wellformed")
    path = write(tmp / "in.csv", ("\ufeff" if bom else "") + buf.getvalue())
    out = validate(tmp, path, args=("--max-invalid", "100"))
    got = expect_report(out, len(rows), path)
    assert [r["note"] for r in got] == [r[4] for r in rows]


