"""load_inputs(): files of every supported format -> one table of text."""

from __future__ import annotations

import csv
import datetime as dt
import decimal
import gzip
import hashlib
import io
import json
import os
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import openpyxl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batch_toggle.config import LoadOptions
from batch_toggle.errors import InputError, UsageError
from batch_toggle.input.readers import (
    ALIASES,
    EXTRA_COLUMN,
    STDIN_NAME,
    LoadedInput,
    load_inputs,
    loose_name,
    sha256_of,
)
from batch_toggle.vocab import FIELDS

JOB_A = "cd613e30-d8f1-4adf-91b7-584a2265b1f5"
KEY_A = "1e2feb89-414c-443c-9027-c4d1c386bbc4"
JOB_B = "0741c7a8-7ce4-4c82-9807-2e8c35bf992d"
KEY_B = "c9e9c616-612e-4696-a6ce-cc1b78e51061"

HEADER = ["job_id", "review_key", "do_notify_sms", "update_target", "note"]
ROWS = [
    [JOB_A, KEY_A, "true", "job", "007"],
    [JOB_B, KEY_B, "no", "client", "NA"],
]
FIELDS_TABLE_COLUMNS = (*FIELDS, "source_file", "source_row")


def load(*paths: str | Path, stdin: io.BytesIO | None = None, **options: Any) -> LoadedInput:
    return load_inputs([str(p) for p in paths], LoadOptions(**options), stdin=stdin)


def write(path: Path, content: bytes | str) -> Path:
    path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
    return path


def delimited(rows: list[list[str]], delimiter: str = ",", newline: str = "\r\n") -> str:
    out = io.StringIO()
    csv.writer(out, delimiter=delimiter, lineterminator=newline).writerows(rows)
    return out.getvalue()


def assert_standard(loaded: LoadedInput, name: str) -> None:
    """The two standard rows, read back exactly, with fields found and sources recorded."""
    assert loaded.raw.column_names == HEADER
    assert [list(r.values()) for r in loaded.raw.to_pylist()] == ROWS
    assert all(t == pa.string() for t in loaded.raw.schema.types)
    fields = loaded.fields
    assert tuple(fields.column_names) == FIELDS_TABLE_COLUMNS
    assert fields.column("job_id").to_pylist() == [JOB_A, JOB_B]
    assert fields.column("do_notify_sms").to_pylist() == ["true", "no"]
    assert fields.column("source_file").to_pylist() == [name, name]
    assert fields.column("source_row").to_pylist() == [1, 2]
    assert fields.schema.field("source_row").type == pa.int64()
    (source,) = loaded.sources
    assert (source.name, source.rows, source.columns) == (name, 2, tuple(HEADER))
    assert source.mapping == {f: f for f in FIELDS}


# --- formats --------------------------------------------------------------------------------


def _csv(path: Path) -> Path:
    return write(path.with_suffix(".csv"), delimited([HEADER, *ROWS]))


def _tsv(path: Path) -> Path:
    return write(path.with_suffix(".tsv"), delimited([HEADER, *ROWS], "\t"))


def _csv_gz(path: Path) -> Path:
    return write(path.with_suffix(".csv.gz"), gzip.compress(delimited([HEADER, *ROWS]).encode()))


def _tsv_gz(path: Path) -> Path:
    data = gzip.compress(delimited([HEADER, *ROWS], "\t").encode())
    return write(path.with_suffix(".TSV.GZ"), data)


def _parquet(path: Path) -> Path:
    target = path.with_suffix(".parquet")
    pq.write_table(pa.table({h: [r[i] for r in ROWS] for i, h in enumerate(HEADER)}), target)
    return target


def _jsonl(path: Path, suffix: str = ".jsonl") -> Path:
    lines = [json.dumps(dict(zip(HEADER, r, strict=True))) for r in ROWS]
    return write(path.with_suffix(suffix), "\n".join(lines) + "\n")


def _xlsx(path: Path) -> Path:
    target = path.with_suffix(".xlsx")
    book = openpyxl.Workbook()
    sheet = book.active
    for r in [HEADER, *ROWS]:
        sheet.append(r)
    book.save(target)
    return target


WRITERS: list[Any] = [
    pytest.param(_csv, id="csv"),
    pytest.param(_tsv, id="tsv"),
    pytest.param(_csv_gz, id="csv.gz"),
    pytest.param(_tsv_gz, id="tsv.gz-uppercase"),
    pytest.param(_parquet, id="parquet"),
    pytest.param(_jsonl, id="jsonl"),
    pytest.param(lambda p: _jsonl(p, ".ndjson"), id="ndjson"),
    pytest.param(_xlsx, id="xlsx"),
]


@pytest.mark.parametrize("writer", WRITERS)
def test_each_format_reads_the_same_rows(tmp_path: Path, writer: Callable[[Path], Path]) -> None:
    path = writer(tmp_path / "input")
    assert_standard(load(path), str(path))


@pytest.mark.parametrize("delimiter", [",", ";", "\t", "|"])
def test_txt_delimiter_is_sniffed(tmp_path: Path, delimiter: str) -> None:
    path = write(tmp_path / "in.txt", delimited([HEADER, *ROWS], delimiter))
    assert_standard(load(path), str(path))


def test_sniffing_prefers_the_delimiter_that_keeps_rows_regular(tmp_path: Path) -> None:
    # Commas inside values of a semicolon file must not fool the sniffer.
    rows = [HEADER, [JOB_A, KEY_A, "true", "job", "Smith, John"],
            [JOB_B, KEY_B, "no", "client", "a, b, c"]]
    path = write(tmp_path / "in.csv", delimited(rows, ";"))
    assert load(path).raw.column("note").to_pylist() == ["Smith, John", "a, b, c"]


def test_stdin_dash_reads_csv(tmp_path: Path) -> None:
    data = delimited([HEADER, *ROWS]).encode()
    loaded = load("-", stdin=io.BytesIO(data))
    assert_standard(loaded, STDIN_NAME)
    assert loaded.sources[0].sha256 == hashlib.sha256(data).hexdigest()


def test_stdin_given_twice_is_a_usage_error_not_an_empty_file() -> None:
    """Found by exploratory testing: `- -` read stdin once and called the second one empty."""
    data = delimited([HEADER, *ROWS]).encode()
    with pytest.raises(UsageError, match=r"standard input \(-\) is given more than once"):
        load_inputs(["-", "-"], LoadOptions(), stdin=io.BytesIO(data))


def test_unknown_extension_that_is_delimited_text_is_read(tmp_path: Path) -> None:
    path = write(tmp_path / "export.dat", delimited([HEADER, *ROWS], "|"))
    assert_standard(load(path), str(path))


@pytest.mark.parametrize("content", [
    pytest.param(b"\x00\x01\x02binary\x00", id="binary"),
    pytest.param(b"just one line of prose\n", id="prose"),
])
def test_unknown_extension_that_is_not_delimited_is_an_input_error(
    tmp_path: Path, content: bytes
) -> None:
    path = write(tmp_path / "mystery.bin", content)
    with pytest.raises(InputError, match="not a recognised input") as info:
        load(path)
    assert info.value.file == str(path)


def test_header_only_file_gives_zero_rows(tmp_path: Path) -> None:
    loaded = load(write(tmp_path / "h.csv", "job_id,review_key,sms,target\r\n"))
    assert loaded.raw.num_rows == 0 and loaded.fields.num_rows == 0
    assert tuple(loaded.fields.column_names) == FIELDS_TABLE_COLUMNS
    assert loaded.raw.column_names == ["job_id", "review_key", "sms", "target"]
    assert loaded.sources[0].rows == 0


@pytest.mark.parametrize("content", [b"", b"\r\n\r\n", b"\xef\xbb\xbf"])
def test_file_without_a_header_is_an_input_error(tmp_path: Path, content: bytes) -> None:
    path = write(tmp_path / "empty.csv", content)
    with pytest.raises(InputError, match="empty") as info:
        load(path)
    assert str(path) in str(info.value)


def test_sha256_is_of_the_bytes_as_read(tmp_path: Path) -> None:
    path = _csv_gz(tmp_path / "x")
    loaded = load(path)
    assert loaded.sources[0].sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert sha256_of(path) == loaded.sources[0].sha256


# --- several inputs ---------------------------------------------------------------------------


def test_several_inputs_with_different_layouts_are_unified(tmp_path: Path) -> None:
    first = write(tmp_path / "a.csv", delimited([HEADER, ROWS[0]]))
    second = write(tmp_path / "b.tsv", delimited([
        ["Region", "Job ID", "Review-Key", "state", "scope", "note"],
        ["west", JOB_B, KEY_B, "off", "client", "n2"],
        ["east", JOB_A, KEY_A, "on", "job", "n3"],
    ], "\t"))
    third = write(tmp_path / "c.jsonl", json.dumps(
        {"jobid": JOB_A, "key": KEY_A, "sms": True, "target": "job", "extra": 5}) + "\n")
    loaded = load(first, second, third)
    assert loaded.raw.column_names == [
        *HEADER, "Region", "Job ID", "Review-Key", "state", "scope",
        "jobid", "key", "sms", "target", "extra",
    ]
    raw = loaded.raw.to_pylist()
    assert raw[0]["note"] == "007" and raw[0]["Region"] is None
    assert raw[1]["note"] == "n2" and raw[1]["job_id"] is None and raw[1]["Region"] == "west"
    assert raw[3]["extra"] == "5" and raw[3]["note"] is None
    fields = loaded.fields.to_pylist()
    assert [f["job_id"] for f in fields] == [JOB_A, JOB_B, JOB_A, JOB_A]
    assert [f["do_notify_sms"] for f in fields] == ["true", "off", "on", "true"]
    assert [(f["source_file"], f["source_row"]) for f in fields] == [
        (str(first), 1), (str(second), 1), (str(second), 2), (str(third), 1)]
    assert [s.mapping["job_id"] for s in loaded.sources] == ["job_id", "Job ID", "jobid"]
    assert all(t == pa.string() for t in loaded.raw.schema.types)


# --- text, encodings, line ends -----------------------------------------------------------------


def test_cells_stay_text(tmp_path: Path) -> None:
    rows = [["job_id", "review_key", "sms", "target", "zip", "n"],
            ["00123", "NA", "null", "None", "007", ""]]
    raw = load(write(tmp_path / "t.csv", delimited(rows))).raw.to_pylist()[0]
    assert raw == {"job_id": "00123", "review_key": "NA", "sms": "null", "target": "None",
                   "zip": "007", "n": ""}


def test_utf8_bom_is_dropped_from_the_header(tmp_path: Path) -> None:
    path = write(tmp_path / "bom.csv", b"\xef\xbb\xbf" + delimited([HEADER, *ROWS]).encode())
    loaded = load(path)
    assert_standard(loaded, str(path))
    assert loaded.sources[0].encoding == "utf-8-sig"
    assert loaded.warnings == ()


def test_utf16_with_bom_is_read(tmp_path: Path) -> None:
    path = write(tmp_path / "u.txt", delimited([HEADER, *ROWS], "\t").encode("utf-16"))
    loaded = load(path)
    assert_standard(loaded, str(path))
    assert loaded.sources[0].encoding == "utf-16"


@pytest.mark.parametrize("newline", ["\r\n", "\n", "\r"])
def test_line_ends_leave_no_carriage_return(tmp_path: Path, newline: str) -> None:
    path = write(tmp_path / "n.csv", delimited([HEADER, *ROWS], newline=newline))
    assert_standard(load(path), str(path))


def test_quoted_newlines_are_kept_inside_values(tmp_path: Path) -> None:
    rows = [HEADER, [JOB_A, KEY_A, "true", "job", "line 1\r\nline 2"],
            [JOB_B, KEY_B, "no", "client", "last\nrow"]]
    loaded = load(write(tmp_path / "q.csv", delimited(rows)))
    assert loaded.raw.column("note").to_pylist() == ["line 1\r\nline 2", "last\nrow"]
    assert loaded.fields.column("source_row").to_pylist() == [1, 2]


def test_blank_lines_are_skipped(tmp_path: Path) -> None:
    text = delimited([HEADER]) + "\r\n" + delimited([ROWS[0]]) + "\r\n\r\n" + delimited([ROWS[1]])
    path = write(tmp_path / "b.csv", text)
    assert_standard(load(path), str(path))


def test_cp1252_is_the_fallback_with_a_warning(tmp_path: Path) -> None:
    rows = [HEADER, [JOB_A, KEY_A, "true", "job", "Café – “déjà”"]]
    path = write(tmp_path / "optouts.csv", delimited(rows).encode("cp1252"))
    loaded = load(path)
    assert loaded.raw.column("note").to_pylist() == ["Café – “déjà”"]
    assert loaded.sources[0].encoding == "cp1252"
    assert loaded.warnings == (f"{path}: not valid UTF-8, read as cp1252",)


def test_bytes_neither_utf8_nor_cp1252_are_an_input_error(tmp_path: Path) -> None:
    path = write(tmp_path / "bad.csv", b"job_id,review_key\r\n\x81\x8d,x\r\n")
    with pytest.raises(InputError, match="neither valid UTF-8") as info:
        load(path)
    assert info.value.file == str(path)


def test_encoding_option_forces_one(tmp_path: Path) -> None:
    rows = [HEADER, [JOB_A, KEY_A, "true", "job", "Ærø"]]
    path = write(tmp_path / "l1.csv", delimited(rows).encode("latin-1"))
    loaded = load(path, encoding="latin-1")
    assert loaded.raw.column("note").to_pylist() == ["Ærø"]
    assert loaded.sources[0].encoding == "iso8859-1"
    assert loaded.warnings == ()


def test_forced_encoding_that_cannot_decode_is_an_input_error(tmp_path: Path) -> None:
    path = write(tmp_path / "w.csv", delimited([HEADER, [JOB_A, KEY_A, "1", "job", "é"]])
                 .encode("cp1252"))
    with pytest.raises(InputError, match="cannot be decoded as utf-8") as info:
        load(path, encoding="utf-8")
    assert info.value.file == str(path)


def test_unknown_encoding_name_is_an_input_error(tmp_path: Path) -> None:
    path = _csv(tmp_path / "x")
    with pytest.raises(InputError, match="unknown encoding 'klingon'"):
        load(path, encoding="klingon")


def test_forced_encoding_applies_to_stdin() -> None:
    data = delimited([HEADER, [JOB_A, KEY_A, "1", "job", "é"]]).encode("cp1252")
    loaded = load("-", stdin=io.BytesIO(data), encoding="cp1252")
    assert loaded.raw.column("note").to_pylist() == ["é"]


# --- ragged rows and quoting --------------------------------------------------------------------


def test_long_rows_keep_extra_cells_and_warn(tmp_path: Path) -> None:
    text = delimited([HEADER, [*ROWS[0], "x", "y"], ROWS[1], [*ROWS[1], ""]])
    path = write(tmp_path / "long.csv", text)
    loaded = load(path)
    assert loaded.raw.column_names == [*HEADER, EXTRA_COLUMN]
    assert loaded.raw.column(EXTRA_COLUMN).to_pylist() == ["x,y", None, None]
    assert loaded.fields.column("job_id").to_pylist() == [JOB_A, JOB_B, JOB_B]
    assert loaded.warnings == (
        f"{path}: row 1 has more fields than the header; "
        f"the extra cells are kept in column '{EXTRA_COLUMN}'",
    )


def test_short_rows_get_null_cells_and_warn(tmp_path: Path) -> None:
    text = delimited([HEADER, ROWS[0], [JOB_B, KEY_B], ROWS[1]])
    path = write(tmp_path / "short.csv", text)
    loaded = load(path)
    assert loaded.raw.num_rows == 3
    assert loaded.raw.to_pylist()[1] == {
        "job_id": JOB_B, "review_key": KEY_B, "do_notify_sms": None, "update_target": None,
        "note": None,
    }
    assert loaded.fields.column("update_target").to_pylist() == ["job", None, "client"]
    assert loaded.warnings == (
        f"{path}: row 2 has fewer fields than the header; the missing cells are empty",)


def test_many_ragged_rows_are_named_briefly(tmp_path: Path) -> None:
    text = delimited([HEADER] + [[JOB_A]] * 8)
    (warning,) = load(write(tmp_path / "r.csv", text)).warnings
    assert "rows 1, 2, 3, 4, 5 and 3 more have fewer fields" in warning


@pytest.mark.parametrize(("text", "row"), [
    pytest.param(f'job_id,review_key,sms,target\n{JOB_A},{KEY_A},yes,"job\n{JOB_B},{KEY_B},no,job\n',
                 1, id="last-column"),
    pytest.param(f'job_id,review_key,sms,target\n{JOB_A},{KEY_A},yes,job\n{JOB_B},"{KEY_B},no,job\n',
                 2, id="middle-column"),
])
def test_unclosed_quote_is_an_input_error_naming_the_row(
    tmp_path: Path, text: str, row: int
) -> None:
    path = write(tmp_path / "q.csv", text)
    with pytest.raises(InputError, match="never closed") as info:
        load(path)
    assert (info.value.file, info.value.row) == (str(path), row)


def test_stray_quotes_inside_values_are_tolerated(tmp_path: Path) -> None:
    text = f'job_id,review_key,sms,target,note\n{JOB_A},{KEY_A},yes,job,5" screen\n'
    assert load(write(tmp_path / "s.csv", text)).raw.column("note").to_pylist() == ['5" screen']


def test_tolerant_reader_agrees_with_the_fast_one(tmp_path: Path) -> None:
    # 3,000 rows (past the sniffing sample) with quoting everywhere; one ragged row at the end
    # sends the second file down the tolerant path: every other row must read the same.
    rows = [[f"{i:05d}", f'k "{i}"', "yes" if i % 2 else "no", "job",
             f"line\r\n{i}" if i % 7 == 0 else f"a,b;{i}"] for i in range(3000)]
    fast = load(write(tmp_path / "fast.csv", delimited([HEADER, *rows])))
    slow = load(write(tmp_path / "slow.csv", delimited([HEADER, *rows, ["x"]])))
    assert fast.warnings == ()
    assert slow.raw.slice(0, 3000).to_pylist() == fast.raw.to_pylist()
    assert [list(r.values()) for r in fast.raw.to_pylist()] == rows


# --- column matching ------------------------------------------------------------------------------

ALIAS_CASES = [
    pytest.param(field, alias, id=f"{field}={alias}")
    for field, aliases in ALIASES.items() for alias in aliases
]


@pytest.mark.parametrize(("field", "alias"), ALIAS_CASES)
def test_every_alias_finds_its_field(tmp_path: Path, field: str, alias: str) -> None:
    header = [alias if f == field else f for f in FIELDS]
    path = write(tmp_path / "a.csv", delimited([header, [JOB_A, KEY_A, "yes", "job"]]))
    loaded = load(path)
    assert loaded.sources[0].mapping[field] == alias
    values = {"job_id": JOB_A, "review_key": KEY_A, "do_notify_sms": "yes", "update_target": "job"}
    assert loaded.fields.column(field).to_pylist() == [values[field]]


def test_no_alias_serves_two_fields() -> None:
    seen: dict[str, str] = {}
    for field, aliases in ALIASES.items():
        for alias in aliases:
            assert seen.setdefault(loose_name(alias), field) == field, alias


@pytest.mark.parametrize("header", ["Job ID", "job-id", "JOB_ID", "jobId", " job id ", "Job_Id"])
def test_loose_matching_ignores_case_spaces_hyphens_and_underscores(
    tmp_path: Path, header: str
) -> None:
    path = write(tmp_path / "l.csv", delimited([[header, "Review Key", "SMS", "Target"],
                                                 [JOB_A, KEY_A, "1", "job"]]))
    loaded = load(path)
    assert loaded.sources[0].mapping["job_id"] == header
    assert loaded.fields.column("job_id").to_pylist() == [JOB_A]


def test_map_wins_over_a_matching_column(tmp_path: Path) -> None:
    rows = [["job_id", "Job Reference", "review_key", "sms", "target"],
            ["wrong", JOB_A, KEY_A, "1", "job"]]
    path = write(tmp_path / "m.csv", delimited(rows))
    loaded = load(path, column_map=(("job_id", "Job Reference"),))
    assert loaded.fields.column("job_id").to_pylist() == [JOB_A]
    assert loaded.sources[0].mapping["job_id"] == "Job Reference"


def test_map_settles_an_ambiguity_and_matches_loosely(tmp_path: Path) -> None:
    rows = [["job_id", "job", "review_key", "Opt In", "target"], ["x", JOB_A, KEY_A, "1", "job"]]
    path = write(tmp_path / "m.csv", delimited(rows))
    loaded = load(path, column_map=(("job-id", "JOB"), ("do_notify_sms", "opt_in")))
    assert loaded.fields.column("job_id").to_pylist() == [JOB_A]
    assert loaded.sources[0].mapping["do_notify_sms"] == "Opt In"


def test_map_can_name_a_renamed_duplicate(tmp_path: Path) -> None:
    rows = [["id", "id", "review_key", "sms", "target"], ["x", JOB_A, KEY_A, "1", "job"]]
    loaded = load(write(tmp_path / "d.csv", delimited(rows)), column_map=(("job_id", "id_2"),))
    assert loaded.fields.column("job_id").to_pylist() == [JOB_A]


def test_map_to_an_absent_column_is_an_input_error(tmp_path: Path) -> None:
    path = _csv(tmp_path / "x")
    with pytest.raises(InputError, match=r"--map job_id=Ticket: no column 'Ticket'") as info:
        load(path, column_map=(("job_id", "Ticket"),))
    assert info.value.file == str(path)


def test_map_of_an_unknown_field_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="unknown field 'colour'"):
        load(_csv(tmp_path / "x"), column_map=(("colour", "note"),))


@pytest.mark.parametrize("missing", FIELDS)
def test_a_missing_required_column_is_an_input_error(tmp_path: Path, missing: str) -> None:
    header = [f for f in FIELDS if f != missing] + ["note"]
    path = write(tmp_path / "m.csv", delimited([header, ["a"] * len(header)]))
    with pytest.raises(InputError) as info:
        load(path)
    message = str(info.value)
    assert info.value.file == str(path)
    assert message.startswith(f"{path}: no column for {missing}")
    assert "columns found: " + ", ".join(repr(h) for h in header) in message


def test_set_state_makes_the_state_column_optional(tmp_path: Path) -> None:
    path = write(tmp_path / "s.csv", delimited([["job_id", "review_key", "target"],
                                                 [JOB_A, KEY_A, "job"]]))
    loaded = load(path, set_state=False)
    assert loaded.fields.column("do_notify_sms").to_pylist() == [None]
    assert "do_notify_sms" not in loaded.sources[0].mapping


def test_default_target_makes_the_target_column_optional(tmp_path: Path) -> None:
    path = write(tmp_path / "t.csv", delimited([["job_id", "review_key", "sms"],
                                                 [JOB_A, KEY_A, "1"]]))
    loaded = load(path, default_target="client")
    assert loaded.fields.column("update_target").to_pylist() == [None]


def test_two_columns_matching_one_field_is_an_input_error(tmp_path: Path) -> None:
    rows = [["job_id", "review_key", "SMS", "opt-in", "target"], [JOB_A, KEY_A, "1", "1", "job"]]
    path = write(tmp_path / "a.csv", delimited(rows))
    with pytest.raises(InputError, match="'SMS' and 'opt-in' both match do_notify_sms") as info:
        load(path)
    assert info.value.file == str(path)


def test_duplicate_header_matching_a_field_is_an_input_error(tmp_path: Path) -> None:
    rows = [["job_id", "review_key", "sms", "target", "target"], [JOB_A, KEY_A, "1", "job", "x"]]
    with pytest.raises(InputError, match="column 'target' appears 2 times"):
        load(write(tmp_path / "d.csv", delimited(rows)))


def test_duplicate_header_elsewhere_is_renamed_with_a_warning(tmp_path: Path) -> None:
    rows = [["job_id", "review_key", "sms", "target", "note", "note", "note_2"],
            [JOB_A, KEY_A, "1", "job", "a", "b", "c"]]
    path = write(tmp_path / "d.csv", delimited(rows))
    loaded = load(path)
    assert loaded.raw.column_names == [
        "job_id", "review_key", "sms", "target", "note", "note_3", "note_2"]
    assert loaded.raw.to_pylist()[0]["note_3"] == "b"
    assert loaded.sources[0].columns == tuple(rows[0])
    assert loaded.warnings == (f"{path}: duplicate column name 'note' renamed to 'note_3'",)


# --- unreadable inputs ----------------------------------------------------------------------------


def test_missing_file_is_an_input_error(tmp_path: Path) -> None:
    path = tmp_path / "nope.csv"
    with pytest.raises(InputError, match="no such file") as info:
        load(path)
    assert info.value.file == str(path)


def test_directory_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="directory"):
        load(tmp_path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file_is_an_input_error(tmp_path: Path) -> None:
    path = _csv(tmp_path / "x")
    path.chmod(0)
    with pytest.raises(InputError, match="permission denied"):
        load(path)


@pytest.mark.parametrize(("name", "content", "match"), [
    pytest.param("x.parquet", b"PAR1 this is not parquet", "cannot read as Parquet",
                 id="corrupt-parquet"),
    pytest.param("x.xlsx", b"PK\x03\x04 not a zip", "cannot read as .xlsx", id="corrupt-xlsx"),
    pytest.param("x.csv.gz", b"\x1f\x8b\x08 truncated", "not a valid gzip file",
                 id="corrupt-gz"),
    pytest.param("x.csv.gz", b"plain text, not gzip", "not a valid gzip file", id="not-gz"),
    pytest.param("x.xlsx", b"job_id,review_key\n", "cannot read as .xlsx", id="csv-as-xlsx"),
])
def test_corrupt_binary_inputs_are_input_errors(
    tmp_path: Path, name: str, content: bytes, match: str
) -> None:
    path = write(tmp_path / name, content)
    with pytest.raises(InputError, match=match) as info:
        load(path)
    assert info.value.file == str(path)
    assert info.value.__cause__ is not None


def test_xlsx_that_is_a_zip_but_not_a_workbook(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("hello.txt", "hi")
    with pytest.raises(InputError, match="cannot read as .xlsx"):
        load(write(tmp_path / "z.xlsx", buffer.getvalue()))


@pytest.mark.parametrize(("lines", "row", "match"), [
    pytest.param(['{"job_id": "a"}', "{not json"], 2, "not valid JSON", id="bad-json"),
    pytest.param(['{"job_id": "a"}', "", "[1, 2]"], 3, "not a JSON object", id="array"),
    pytest.param(['"text"'], 1, "not a JSON object", id="string"),
])
def test_bad_json_line_is_an_input_error_naming_the_line(
    tmp_path: Path, lines: list[str], row: int, match: str
) -> None:
    path = write(tmp_path / "x.jsonl", "\n".join(lines) + "\n")
    with pytest.raises(InputError, match=match) as info:
        load(path)
    assert (info.value.file, info.value.row) == (str(path), row)
    assert str(info.value).startswith(f"{path}, row {row}: ")


def test_a_bad_file_among_good_ones_names_the_bad_one(tmp_path: Path) -> None:
    good = _csv(tmp_path / "good")
    bad = write(tmp_path / "bad.csv", "job_id,review_key\n1,2\n")
    with pytest.raises(InputError) as info:
        load(good, bad)
    assert info.value.file == str(bad)


def test_no_inputs_is_a_usage_error() -> None:
    with pytest.raises(UsageError):
        load_inputs([], LoadOptions())


# --- typed formats as text ------------------------------------------------------------------------


def test_parquet_values_of_other_types_become_text(tmp_path: Path) -> None:
    paris = dt.timezone(dt.timedelta(hours=1))
    table = pa.table({
        "job_id": pa.array([JOB_A, None], pa.string()),
        "review_key": pa.array([KEY_A, KEY_B], pa.large_string()),
        "do_notify_sms": pa.array([True, None], pa.bool_()),
        "update_target": pa.array(["job", "client"]).dictionary_encode(),
        "count": pa.array([7, None], pa.int64()),
        "ratio": pa.array([1.0, 0.25], pa.float64()),
        "price": pa.array([decimal.Decimal("1.50"), None], pa.decimal128(5, 2)),
        "at": pa.array([dt.datetime(2024, 1, 2, 3, 4, 5), None], pa.timestamp("s")),  # as ms
        "at_tz": pa.array([dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=paris), None],
                          pa.timestamp("ms", tz="+01:00")),
        "at_utc": pa.array([dt.datetime(2024, 1, 2, 3, 4, 5), None], pa.timestamp("us", "UTC")),
        "day": pa.array([dt.date(2024, 1, 2), None], pa.date32()),
        "tags": pa.array([["a", "b"], None], pa.list_(pa.string())),
        "meta": pa.array([{"x": 1, "y": "z"}, None]),
        "blob": pa.array([b"hi", b"\xff"], pa.binary()),
        "nothing": pa.nulls(2),
    })
    path = tmp_path / "typed.parquet"
    pq.write_table(table, path)
    loaded = load(path)
    assert all(t == pa.string() for t in loaded.raw.schema.types)
    first, second = loaded.raw.to_pylist()
    assert first == {
        "job_id": JOB_A, "review_key": KEY_A, "do_notify_sms": "true", "update_target": "job",
        "count": "7", "ratio": "1", "price": "1.50", "at": "2024-01-02T03:04:05.000",
        "at_tz": "2024-01-02T03:04:05.000+01:00", "at_utc": "2024-01-02T03:04:05.000000Z",
        "day": "2024-01-02", "tags": '["a", "b"]', "meta": '{"x": 1, "y": "z"}',
        "blob": "hi", "nothing": None,
    }
    assert second["ratio"] == "0.25" and second["blob"] == "ff"
    assert [second[k] for k in ("job_id", "do_notify_sms", "count", "at", "tags", "meta")] == [
        None] * 6
    assert loaded.sources[0].encoding == "parquet"


def test_jsonl_values_become_text(tmp_path: Path) -> None:
    lines = [
        '{"job_id": "007", "review_key": null, "sms": true, "target": "job", "n": 1.50}',
        '{"sms": false, "job_id": 12, "nested": {"a": [1, 2.5]}, "target": "client"}',
    ]
    loaded = load(write(tmp_path / "v.jsonl", "\r\n".join(lines)))
    assert loaded.raw.column_names == ["job_id", "review_key", "sms", "target", "n", "nested"]
    first, second = loaded.raw.to_pylist()
    assert first == {"job_id": "007", "review_key": None, "sms": "true", "target": "job",
                     "n": "1.50", "nested": None}
    assert second["job_id"] == "12" and second["sms"] == "false"
    assert json.loads(second["nested"]) == {"a": [1, 2.5]}


def test_xlsx_values_become_text(tmp_path: Path) -> None:
    book = openpyxl.Workbook()
    sheet = book.active
    sheet.append(["Job ID", "Review Key", "SMS", "Target", "n", "f", "when", "empty"])
    sheet.append([JOB_A, KEY_A, True, "job", 12, 1.5, dt.datetime(2024, 1, 2, 3, 4, 5), None])
    sheet.append([None] * 8)  # blank rows are skipped
    sheet.append(["007", KEY_B, False, "client", 3.0, None, None, None, "beyond"])
    book.save(tmp_path / "v.xlsx")
    loaded = load(tmp_path / "v.xlsx")
    first, second = loaded.raw.to_pylist()
    assert first == {"Job ID": JOB_A, "Review Key": KEY_A, "SMS": "true", "Target": "job",
                     "n": "12", "f": "1.5", "when": "2024-01-02T03:04:05", "empty": None,
                     EXTRA_COLUMN: None}
    assert second["Job ID"] == "007" and second["n"] == "3"
    assert second[EXTRA_COLUMN] == "beyond"
    assert loaded.fields.column("source_row").to_pylist() == [1, 2]
    assert loaded.sources[0].encoding == "xlsx"


# --- properties -----------------------------------------------------------------------------------

_cells = st.text(st.characters(codec="utf-8"), max_size=12)
# Each example overwrites the same file in tmp_path, so sharing the fixture is harmless.
_TMP_PATH_IS_FINE = [HealthCheck.function_scoped_fixture]


@settings(max_examples=60, deadline=None, suppress_health_check=_TMP_PATH_IS_FINE)
@given(
    rows=st.lists(st.lists(_cells, min_size=5, max_size=5), max_size=12),
    delimiter=st.sampled_from([",", ";", "\t", "|"]),
    newline=st.sampled_from(["\r\n", "\n"]),
    bom=st.booleans(),
)
def test_csv_text_round_trips_cell_for_cell(
    tmp_path: Path, rows: list[list[str]], delimiter: str, newline: str, bom: bool
) -> None:
    # Rows the csv module writes as an empty line (a single empty cell) cannot occur: 5 cells.
    if newline == "\n":
        # With "\n" line ends the csv module leaves a lone "\r" unquoted: the file is ambiguous.
        rows = [[cell.replace("\r", "") for cell in row] for row in rows]
    data = ("\ufeff" if bom else "") + delimited([HEADER, *rows], delimiter, newline)
    path = write(tmp_path / "p.csv", data)
    loaded = load(path)
    assert loaded.raw.column_names == HEADER
    assert [list(r.values()) for r in loaded.raw.to_pylist()] == rows
    assert loaded.fields.column("source_row").to_pylist() == list(range(1, len(rows) + 1))
    assert loaded.fields.column("update_target").to_pylist() == [r[3] for r in rows]
    assert loaded.warnings == ()


@settings(max_examples=80, deadline=None, suppress_health_check=_TMP_PATH_IS_FINE)
@given(
    content=st.one_of(
        st.binary(max_size=200),
        st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass")),
        st.lists(st.sampled_from(["job_id,review_key,sms,target\n", '"', ",", "\r", "\n",
                                  "a", "\xe9", "{", "}", "[1]", "\ufeff"]), max_size=30)
        .map(lambda parts: "".join(parts).encode("utf-8")),
    ),
    suffix=st.sampled_from([".csv", ".tsv", ".jsonl", ".parquet", ".xlsx", ".csv.gz", ".weird"]),
)
def test_no_foreign_exception_escapes(tmp_path: Path, content: bytes, suffix: str) -> None:
    path = write(tmp_path / f"fuzz{suffix}", content)
    try:
        loaded = load(path)
    except InputError as exc:
        assert exc.file == str(path)
    else:
        assert loaded.raw.num_rows == loaded.fields.num_rows


# --- .xlsx sheets -------------------------------------------------------------------------------


def _two_sheets(path: Path) -> Path:
    """A workbook whose first sheet is an old list and whose second, "November", is the one
    wanted; a third is named "2", so that a name is told from an index."""
    book = openpyxl.Workbook()
    book.active.title = "October"
    book.active.append(list(HEADER))
    book.active.append([JOB_A, KEY_A, "yes", "job"])
    november = book.create_sheet("November")
    november.append(list(HEADER))
    november.append([JOB_B, KEY_B, "no", "client"])
    november.append([JOB_A, KEY_A, "no", "job"])
    named_two = book.create_sheet("2")
    named_two.append(list(HEADER))
    book.save(path)
    return path


@pytest.mark.parametrize("sheet, title, rows", [
    pytest.param(None, "October", 1, id="default-first"),
    pytest.param("November", "November", 2, id="by-name"),
    pytest.param("1", "October", 1, id="by-index"),
    pytest.param("2", "2", 0, id="a-name-wins-over-an-index"),
    pytest.param("3", "2", 0, id="index-3"),
])
def test_sheet_chooses_the_xlsx_sheet_and_the_source_records_it(
        tmp_path: Path, sheet: str | None, title: str, rows: int) -> None:
    loaded = load(_two_sheets(tmp_path / "lists.xlsx"), sheet=sheet)
    assert loaded.sources[0].sheet == title
    assert loaded.raw.num_rows == rows
    said = [w for w in loaded.warnings if "first sheet" in w]
    if sheet is None:  # read by default from a workbook of several: said
        assert said == [f"{tmp_path / 'lists.xlsx'}: read its first sheet 'October' of 3 "
                        "('October', 'November', '2'); --sheet NAME|INDEX reads another"]
    else:
        assert said == []


def test_an_unknown_sheet_is_an_input_error_listing_the_sheets(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"--sheet Dec: no such sheet \(sheets: 'October', "
                                         r"'November', '2'; give a name or an index from 1 to 3"):
        load(_two_sheets(tmp_path / "lists.xlsx"), sheet="Dec")


def test_sheet_leaves_other_formats_alone(tmp_path: Path) -> None:
    loaded = load(_csv(tmp_path / "x"), sheet="November")
    assert loaded.sources[0].sheet is None and loaded.raw.num_rows == len(ROWS)
