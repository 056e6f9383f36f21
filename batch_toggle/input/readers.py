"""Input files -> one Arrow table of text, with the columns that supply each field found.

Formats (by extension, case-insensitive): .csv .tsv .txt (delimiter sniffed among , ; TAB |),
any of those .gz, .parquet, .jsonl/.ndjson, .xlsx; `-` reads CSV from stdin; an unknown extension
is read as delimited text when it sniffs as such. Every cell is text: no type inference.

Decisions worth knowing (the product contract is silent on them):
- A 0-byte file (or one with nothing but blank lines) has no header: InputError.
- An empty CSV cell is "", a missing cell (short row), a JSON/Parquet null or an empty XLSX cell
  is null. Normalisation treats both as missing.
- Blank lines are skipped and not counted: `source_row` is the 1-based index of the data row
  (for XLSX, of the non-blank data row).
- Ragged rows never stop a file. A short row gets nulls for its missing cells; a long row keeps
  its extra non-empty cells, joined with the delimiter, in an added column `_extra` (trailing
  empty extras, e.g. from a trailing delimiter, are dropped). Both come with a warning naming rows.
- An unclosed quote swallows the rest of the file, so it is an InputError naming the row.
- Values of other types: bool -> true/false, int -> 123, float -> the shortest text that round-trips
  with no trailing ".0" (1.0 -> "1", so a pandas 0/1 column saved as float still reads as a state),
  timestamps -> ISO 8601 ("2024-01-02T03:04:05", "...Z", "...+01:00"), nested -> JSON text.
- Encodings: UTF-8 with or without BOM, UTF-16 with a BOM (Excel's "Unicode text"), else cp1252
  with a warning; a BOM'd UTF-8 file with invalid bytes is an error, not cp1252. `--encoding`
  applies to the text formats (CSV family, JSONL, stdin); Parquet and XLSX carry their own.
- Speed: the CSV fast path is pyarrow's reader on the file's own bytes (no copy for UTF-8);
  a file it refuses (ragged rows, a last row spanning lines) is re-read with Python's csv module,
  about ten times slower.
"""

from __future__ import annotations

import codecs
import csv
import datetime as dt
import gzip
import hashlib
import io
import json
import os
import struct
import sys
import warnings
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from operator import itemgetter
from pathlib import Path
from typing import Any, BinaryIO, Final

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from batch_toggle.config import LoadOptions, cli_name
from batch_toggle.errors import InputError, UsageError
from batch_toggle.input.columns import loose_name, parse_column_map
from batch_toggle.vocab import FIELDS

STDIN_NAME: Final = "<stdin>"
EXTRA_COLUMN: Final = "_extra"
DELIMITERS: Final = (",", ";", "\t", "|")

# Column names that supply each field, compared after `loose_name`. `opt_out`/`unsubscribed`
# are deliberately absent: their truth is the opposite of do_notify_sms.
ALIASES: Final[dict[str, tuple[str, ...]]] = {
    "job_id": ("job_id", "job", "jobid", "job_uuid", "job_guid", "logis_job_id"),
    "review_key": ("review_key", "reviewkey", "review", "key", "review_uuid", "review_guid"),
    "do_notify_sms": (
        "do_notify_sms", "sms", "desired_state", "desiredstate", "state", "opt_in", "optin",
        "notify", "notify_sms", "do_notify", "sms_enabled", "subscribed", "sms_opt_in",
        "sms_optin", "sms_notifications", "sms_state", "desired_sms_state",
    ),
    "update_target": ("update_target", "target", "scope", "level", "update_scope"),
}

_FAST_BLOCK_SIZE: Final = 4 << 20  # pyarrow's CSV block; 4 MiB measured fastest here
_SAMPLE_BYTES: Final = 64 << 10  # enough text to sniff the delimiter
_SAMPLE_ROWS: Final = 50
_NAMED_ROWS: Final = 5  # rows named in a warning before "and N more"


@dataclass(frozen=True)
class SourceFile:
    """One input as read: evidence for the summary and for resume's change check."""

    name: str  # as the user gave it; "<stdin>" for "-"
    sha256: str  # of the raw bytes as read (compressed bytes for .gz)
    rows: int  # data rows
    encoding: str  # "utf-8", "utf-8-sig", "utf-16", "cp1252", a forced one; "parquet"/"xlsx"
    columns: tuple[str, ...]  # the header as read
    mapping: dict[str, str] = field(default_factory=dict)  # field -> column supplying it
    sheet: str | None = None  # the .xlsx sheet read (its name); None for other formats


@dataclass(frozen=True)
class LoadedInput:
    """All inputs, unified: the raw columns and the four fields' raw text, row for row."""

    raw: pa.Table  # the inputs' own columns, all pa.string(), in order of first appearance
    fields: pa.Table  # FIELDS (raw text) + source_file + source_row (1-based)
    sources: tuple[SourceFile, ...]
    warnings: tuple[str, ...]


@dataclass
class _Parsed:
    """What a format reader hands back: the header as read and one text column per name."""

    header: list[str]
    columns: list[pa.ChunkedArray]
    rows: int
    encoding: str
    extra: pa.ChunkedArray | None = None  # the `_extra` cells of long rows
    warnings: list[str] = field(default_factory=list)
    sheet: str | None = None  # the .xlsx sheet read


def load_inputs(
    paths: Sequence[str | os.PathLike[str]],
    options: LoadOptions,
    *,
    stdin: BinaryIO | None = None,
    tables: Mapping[str, pa.Table] | None = None,
) -> LoadedInput:
    """Read every input in order and unify them into one table of text.

    `tables` holds the inputs given in memory (a notebook's DataFrame, see `in_memory_table`),
    by the name that stands for them among `paths` ("<DataFrame>"): read like a file of that
    name, their rows numbered from 1.

    Raises InputError (naming the file, and the row where there is one) for a file that cannot
    be read, decoded or parsed, a required field with no column, two columns matching one field,
    or a --map column that is absent; UsageError for a --map naming an unknown field. Every
    foreign exception is translated here; nothing else escapes.
    """
    if not paths:
        raise UsageError("no input files given")
    if sum(os.fspath(p) == "-" for p in paths) > 1:
        # Standard input can be read once: the second `-` would read it empty.
        raise UsageError("standard input (-) is given more than once: give it once")
    column_map = dict(parse_column_map(options.column_map, cli_name))
    loaded = [_load_one(os.fspath(p), options, column_map, stdin, tables or {}) for p in paths]

    order: dict[str, None] = {}
    for _, table, _, _ in loaded:
        order.update(dict.fromkeys(table.column_names))
    names = list(order)
    raws = [_align(table, names) for _, table, _, _ in loaded]
    raw = raws[0] if len(raws) == 1 else pa.concat_tables(raws)
    fields_tables = [f for _, _, f, _ in loaded]
    fields = fields_tables[0] if len(fields_tables) == 1 else pa.concat_tables(fields_tables)
    return LoadedInput(
        raw=raw,
        fields=fields,
        sources=tuple(source for source, _, _, _ in loaded),
        warnings=tuple(w for *_, ws in loaded for w in ws),
    )


def sha256_of(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file's bytes, read in blocks (for resume's "input changed" check)."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            while block := handle.read(1 << 20):
                digest.update(block)
    except OSError as exc:
        raise InputError(os.fspath(path), _os_reason(exc)) from exc
    return digest.hexdigest()


_LOOSE_ALIASES: Final = {f: {loose_name(a) for a in names} for f, names in ALIASES.items()}


# --- inputs held in memory (the library, in a notebook) ---------------------------------------

IN_MEMORY: Final = "in-memory"  # the `encoding` of an input given as a table, not a file


def is_in_memory_name(name: str) -> bool:
    """Whether an input name stands for a table given in memory ("<DataFrame>"), not a path."""
    return name.startswith("<") and name.endswith(">") and name != STDIN_NAME


def in_memory_table(data: Any) -> tuple[str, pa.Table] | None:
    """(kind, table) for an input given in memory, None for anything else (a path).

    A pandas DataFrame ("DataFrame", its index left out), a pyarrow Table ("Table") or a list
    of dicts ("records", keys as columns in order of first appearance). Every value becomes
    text later, as a file's cells do. pandas is never imported here: an object can only be a
    DataFrame when its caller has imported pandas already."""
    if isinstance(data, pa.Table):
        return "Table", data
    pandas = sys.modules.get("pandas")
    if pandas is not None and isinstance(data, pandas.DataFrame):
        return "DataFrame", _from_pandas(data)
    if isinstance(data, list | tuple) and data and all(isinstance(r, Mapping) for r in data):
        return "records", _from_records(data)
    return None


def _from_pandas(frame: Any) -> pa.Table:
    """A DataFrame as an Arrow table; a column Arrow cannot type (mixed Python objects) goes
    through its values one by one, as a list of dicts does."""
    frame = frame.reset_index(drop=True)
    frame.columns = [str(c) for c in frame.columns]
    try:
        return pa.Table.from_pandas(frame, preserve_index=False)
    except (pa.ArrowException, TypeError, ValueError):
        records = frame.astype(object).where(frame.notna(), None).to_dict("records")
        return _from_records(records, list(frame.columns))


def _from_records(records: Sequence[Mapping[str, Any]],
                  header: list[str] | None = None) -> pa.Table:
    keys: dict[str, None] = dict.fromkeys(header or [])
    for record in records:
        keys.update(dict.fromkeys(str(k) for k in record))
    columns = {k: pa.array([_py_text(r.get(k)) for r in records], pa.string()) for k in keys}
    return pa.table(columns) if columns else pa.table({})


def _table_sha256(table: pa.Table) -> str:
    """The evidence hash of an input given in memory: of its values as text, in Arrow's IPC
    stream form (the same table always hashes the same; a resume uses it as a file's)."""
    import pyarrow.ipc as ipc

    text = pa.table([_arrow_text(c).combine_chunks() for c in table.columns],
                    names=table.column_names)
    sink = pa.BufferOutputStream()
    with ipc.new_stream(sink, text.schema) as writer:
        writer.write_table(text)
    return hashlib.sha256(sink.getvalue().to_pybytes()).hexdigest()


# --- one file -------------------------------------------------------------------------------


def _load_one(
    path: str,
    options: LoadOptions,
    column_map: dict[str, str],
    stdin: BinaryIO | None,
    tables: Mapping[str, pa.Table],
) -> tuple[SourceFile, pa.Table, pa.Table, list[str]]:
    if path in tables:
        table = tables[path]
        parsed = _Parsed(list(table.column_names), [_arrow_text(c) for c in table.columns],
                         table.num_rows, IN_MEMORY)
        return _unify(path, _table_sha256(table), parsed, options, column_map)
    name = STDIN_NAME if path == "-" else path
    data = _read_stdin(stdin) if path == "-" else _read_file(path)
    sha = hashlib.sha256(data).hexdigest()
    kind, prefer_tab, gzipped = ("csv", False, False) if path == "-" else _kind(path)
    if gzipped:
        data = _gunzip(name, data)
    if not data:
        raise InputError(name, "file is empty (no header row)")
    parsed = _parse(name, data, kind, prefer_tab, options.encoding, options.sheet)
    return _unify(name, sha, parsed, options, column_map)


def _unify(name: str, sha: str, parsed: _Parsed, options: LoadOptions,
           column_map: dict[str, str]) -> tuple[SourceFile, pa.Table, pa.Table, list[str]]:
    """One input as read -> its source record, its raw table, its fields and its warnings."""
    names, renamed = _unique_names(parsed.header)
    columns = list(parsed.columns)
    if parsed.extra is not None:
        extra_name = _free_name(EXTRA_COLUMN, set(names))
        names.append(extra_name)
        columns.append(parsed.extra)
    table = pa.Table.from_arrays(columns, names=names) if names else pa.table({})

    mapping = _match_columns(name, parsed.header, names, column_map, options)
    messages = parsed.warnings + [
        f"{name}: duplicate column name {old!r} renamed to {new!r}" for old, new in renamed
    ]
    fields = _fields_table(name, table, parsed.rows, mapping)
    source = SourceFile(
        name=name,
        sha256=sha,
        rows=parsed.rows,
        encoding=parsed.encoding,
        columns=tuple(parsed.header),
        mapping=mapping,
        sheet=parsed.sheet,
    )
    return source, table, fields, messages


def _kind(path: str) -> tuple[str, bool, bool]:
    """(format, prefer tab, gzipped) from the file name."""
    lower = path.lower()
    gzipped = lower.endswith(".gz")
    if gzipped:
        lower = lower[:-3]
    ext = os.path.splitext(lower)[1]
    kinds = {
        ".csv": "csv", ".txt": "csv", ".tsv": "csv", ".tab": "csv",
        ".parquet": "parquet", ".pq": "parquet",
        ".jsonl": "jsonl", ".ndjson": "jsonl",
        ".xlsx": "xlsx", ".xlsm": "xlsx",
    }
    return kinds.get(ext, "unknown"), ext in (".tsv", ".tab"), gzipped


def _parse(name: str, data: bytes, kind: str, prefer_tab: bool, encoding: str | None,
           sheet: str | None = None) -> _Parsed:
    if kind == "parquet":
        return _parse_parquet(name, data)
    if kind == "xlsx":
        return _parse_xlsx(name, data, sheet)
    if kind == "jsonl":
        return _parse_jsonl(name, data, encoding)
    return _parse_delimited(name, data, encoding, prefer_tab, sniff_only=kind == "unknown")


def _read_file(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise InputError(path, _os_reason(exc)) from exc


def _read_stdin(stdin: BinaryIO | None) -> bytes:
    stream = stdin if stdin is not None else getattr(sys.stdin, "buffer", None)
    if stream is None:
        raise InputError(STDIN_NAME, "no standard input to read")
    try:
        return stream.read()
    except (OSError, ValueError) as exc:
        raise InputError(STDIN_NAME, f"cannot read: {exc}") from exc


def _os_reason(exc: OSError) -> str:
    if isinstance(exc, FileNotFoundError):
        return "no such file"
    if isinstance(exc, IsADirectoryError):
        return "is a directory, not a file"
    if isinstance(exc, PermissionError):
        return "permission denied"
    return f"cannot read: {exc.strerror or exc}"


def _gunzip(name: str, data: bytes) -> bytes:
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as exc:
        raise InputError(name, f"not a valid gzip file ({exc})") from exc


# --- decoding -------------------------------------------------------------------------------


_Decoded = tuple[bytes | memoryview, str, list[str]]  # UTF-8 body, encoding used, warnings


def _decode(name: str, data: bytes, forced: str | None) -> _Decoded:
    """The file as UTF-8 bytes without a BOM, the encoding it was read in, and any warning.

    UTF-8 input is returned without copying (a memoryview past the BOM).
    """
    if forced:
        return _decode_forced(name, data, forced)
    view = memoryview(data)
    if data.startswith(codecs.BOM_UTF8):
        if not _is_utf8(view[3:]):
            raise InputError(
                name, f"starts with a UTF-8 BOM but is not valid UTF-8 ({_bad_utf8(data)}); "
                "name its encoding with --encoding",
            )
        return view[3:], "utf-8-sig", []
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return _transcode(name, data, "utf-16"), "utf-16", []
    if _is_utf8(view):
        return view, "utf-8", []
    try:
        text = data.decode("cp1252")
    except UnicodeDecodeError as exc:
        raise InputError(
            name, f"neither valid UTF-8 ({_bad_utf8(data)}) nor cp1252; "
            "name its encoding with --encoding",
        ) from exc
    return text.encode("utf-8"), "cp1252", [f"{name}: not valid UTF-8, read as cp1252"]


def _decode_forced(name: str, data: bytes, forced: str) -> _Decoded:
    try:
        codec = codecs.lookup(forced).name
    except LookupError as exc:
        raise InputError(name, f"unknown encoding {forced!r}") from exc
    if codec in ("utf-8", "utf-8-sig"):
        view = memoryview(data)
        if data.startswith(codecs.BOM_UTF8):
            view = view[3:]
        if not _is_utf8(view):
            raise InputError(name, f"cannot be decoded as {forced}: {_bad_utf8(data)}")
        return view, codec, []
    return _transcode(name, data, codec), codec, []


def _transcode(name: str, data: bytes, codec: str) -> bytes:
    try:
        text = data.decode(codec)
    except (UnicodeDecodeError, ValueError) as exc:
        raise InputError(name, f"cannot be decoded as {codec}: {exc}") from exc
    return text.removeprefix("\ufeff").encode("utf-8")


def _is_utf8(view: memoryview) -> bool:
    """UTF-8 validity of a whole buffer, without copying it (Arrow's SIMD validator)."""
    offsets = pa.py_buffer(struct.pack("=qq", 0, len(view)))
    blob = pa.Array.from_buffers(pa.large_binary(), 1, [None, offsets, pa.py_buffer(view)])
    try:
        blob.cast(pa.large_string())
    except pa.ArrowInvalid:
        return False
    return True


def _bad_utf8(data: bytes) -> str:
    """Where the first invalid UTF-8 byte is, for a message."""
    try:
        data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        return f"byte {exc.start} on line {line}"
    return "invalid bytes"


# --- delimited text -------------------------------------------------------------------------


def _parse_delimited(
    name: str, data: bytes, encoding: str | None, prefer_tab: bool, *, sniff_only: bool
) -> _Parsed:
    body, used, notes = _decode(name, data, encoding)
    sample = _sample(body)
    if sniff_only and "\x00" in sample:
        raise InputError(name, _UNKNOWN_FORMAT)
    delimiter = _sniff(sample, prefer_tab)
    if delimiter is None:
        if sniff_only:
            raise InputError(name, _UNKNOWN_FORMAT)
        delimiter = "\t" if prefer_tab else ","
    try:
        reader = csv.reader(io.StringIO(sample, newline=""), delimiter=delimiter)
        header = next((r for r in reader if r), None)
    except csv.Error as exc:
        raise InputError(name, f"cannot parse the header: {exc}") from exc
    if header is None:
        raise InputError(name, "file is empty (no header row)")

    parsed = None
    if not sample.startswith(("\r", "\n")) and not any("\n" in h or "\r" in h for h in header):
        parsed = _read_fast(body, delimiter, header)
    if parsed is None:
        text = bytes(body).decode("utf-8")
        parsed = _read_tolerant(name, text, delimiter)
    parsed.encoding = used
    parsed.warnings = notes + parsed.warnings
    return parsed


_UNKNOWN_FORMAT: Final = (
    "not a recognised input: expected .csv, .tsv, .txt (optionally .gz), .parquet, .jsonl, "
    ".ndjson, .xlsx, or delimited text"
)


def _sample(body: bytes | memoryview) -> str:
    """The beginning of the text, cut at a line end, for sniffing."""
    head = bytes(body[:_SAMPLE_BYTES]).decode("utf-8", errors="ignore")
    if len(body) > _SAMPLE_BYTES:
        end = max(head.rfind("\n"), head.rfind("\r"))
        if end > 0:
            head = head[: end + 1]
    return head


def _sniff(sample: str, prefer_tab: bool) -> str | None:
    """The delimiter giving the header at least two columns and the most regular rows.

    A tab wins outright for a .tsv whose header has tabs. Ties go to `,` then `;`, tab, `|`.
    None when no candidate splits the header.
    """
    best: tuple[tuple[float, int], str] | None = None
    for delimiter in DELIMITERS:
        rows = []
        reader = csv.reader(io.StringIO(sample, newline=""), delimiter=delimiter)
        try:
            for row in reader:
                if row:
                    rows.append(row)
                if len(rows) >= _SAMPLE_ROWS:
                    break
        except csv.Error:
            continue
        if not rows or len(rows[0]) < 2:
            continue
        if prefer_tab and delimiter == "\t":
            return delimiter
        width, data = len(rows[0]), rows[1:]
        regular = sum(len(r) == width for r in data) / len(data) if data else 1.0
        score = (regular, width)
        if best is None or score > best[0]:
            best = (score, delimiter)
    return best[1] if best else None


def _read_fast(body: bytes | memoryview, delimiter: str, header: list[str]) -> _Parsed | None:
    """pyarrow's CSV reader, every column text; None when the file needs the tolerant reader
    (ragged rows, a parse error, or a last row whose cells span lines: maybe an unclosed quote).
    """
    names = [f"c{i}" for i in range(len(header))]
    try:
        table = pacsv.read_csv(
            pa.BufferReader(pa.py_buffer(body)),
            read_options=pacsv.ReadOptions(
                use_threads=True, block_size=_FAST_BLOCK_SIZE, column_names=names, skip_rows=1
            ),
            parse_options=pacsv.ParseOptions(
                delimiter=delimiter, quote_char='"', double_quote=True, escape_char=False,
                newlines_in_values=True, ignore_empty_lines=True,
            ),
            convert_options=pacsv.ConvertOptions(
                column_types={n: pa.string() for n in names}, strings_can_be_null=False,
                quoted_strings_can_be_null=False, null_values=[], true_values=[],
                false_values=[], check_utf8=False,
            ),
        )
    except (pa.ArrowException, ValueError, OSError):
        return None
    if table.num_rows:
        last = table.slice(table.num_rows - 1).to_pylist()[0]
        if any("\n" in v or "\r" in v for v in last.values()):
            return None
    return _Parsed(header, list(table.columns), table.num_rows, "")


def _read_tolerant(name: str, text: str, delimiter: str) -> _Parsed:
    """Python's csv module, for files pyarrow refuses: ragged rows, odd quoting.

    About 2 s per million rows; only malformed files come here.
    """
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=False)
    try:
        records = [r for r in reader if r]  # blank lines are skipped, as pyarrow does
    except csv.Error as exc:
        raise InputError(
            name, f"cannot parse as delimited text near line {reader.line_num + 1}: {exc}"
        ) from exc
    if not records:
        raise InputError(name, "file is empty (no header row)")
    if any("\n" in v or "\r" in v for v in records[-1]):
        _check_closed(name, text, delimiter, len(records) - 1)
    return _rows_to_parsed(name, records[0], records[1:], delimiter, warn_short=True)


def _check_closed(name: str, text: str, delimiter: str, row: int) -> None:
    """Raise when the last record (data row `row`; 0 is the header) opens a quote that is never
    closed: a tolerant parser silently swallows every following line into that one cell."""
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=False)
    first_line = consumed = 0
    for record in reader:  # find the line the last record starts on
        if record:
            first_line = consumed
        consumed = reader.line_num
    tail = "".join(io.StringIO(text, newline="").readlines()[first_line:])
    try:
        for _ in csv.reader(io.StringIO(tail, newline=""), delimiter=delimiter, strict=True):
            pass
    except csv.Error as exc:
        if "unexpected end of data" in str(exc):
            where = "this row" if row else "the header"
            raise InputError(
                name, f'a quoted field in {where} (line {first_line + 1}) is never closed: '
                'unbalanced "', row=row or None,
            ) from exc


def _rows_to_parsed(
    name: str,
    header: list[str],
    rows: list[list[Any]],
    delimiter: str,
    *,
    warn_short: bool,
) -> _Parsed:
    """Columns from Python rows; short rows padded with nulls, long rows' extras to `_extra`."""
    width = len(header)
    short: list[int] = []
    long: list[int] = []
    extra: dict[int, str] = {}
    ragged = [i for i, n in enumerate(map(len, rows)) if n != width]
    if ragged:
        rows = list(rows)  # the caller's list stays as it was
    for index in ragged:
        row = rows[index]
        if len(row) < width:
            short.append(index + 1)
            rows[index] = [*row, *([None] * (width - len(row)))]
            continue
        spill = list(row[width:])
        while spill and spill[-1] in (None, ""):
            spill.pop()  # a trailing delimiter, or formatted-but-empty XLSX cells
        if spill:
            long.append(index + 1)
            extra[index] = delimiter.join("" if v is None else str(v) for v in spill)
        rows[index] = row[:width]
    columns = [pa.chunked_array([pa.array(list(map(itemgetter(i), rows)), pa.string())])
               for i in range(width)]
    parsed = _Parsed(header, columns, len(rows), "")
    if long:
        cells = [extra.get(i) for i in range(len(rows))]
        parsed.extra = pa.chunked_array([pa.array(cells, pa.string())])
        parsed.warnings.append(
            f"{name}: {_rows_text(long)} more fields than the header; "
            f"the extra cells are kept in column {EXTRA_COLUMN!r}"
        )
    if short and warn_short:
        parsed.warnings.append(
            f"{name}: {_rows_text(short)} fewer fields than the header; the missing cells are empty"
        )
    return parsed


def _rows_text(rows: list[int]) -> str:
    shown = ", ".join(str(r) for r in rows[:_NAMED_ROWS])
    more = f" and {len(rows) - _NAMED_ROWS} more" if len(rows) > _NAMED_ROWS else ""
    return f"row {shown} has" if len(rows) == 1 else f"rows {shown}{more} have"


# --- JSON lines -----------------------------------------------------------------------------


def _parse_jsonl(name: str, data: bytes, encoding: str | None) -> _Parsed:
    """One JSON object per line; keys are columns in order of first appearance.

    Numbers keep their written digits (parsed as Decimal), nested values become JSON text.
    """
    body, used, notes = _decode(name, data, encoding)
    text = bytes(body).decode("utf-8")
    objects: list[dict[str, Any]] = []
    keys: dict[str, None] = {}
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line, parse_float=Decimal, parse_constant=str)
        except (ValueError, RecursionError) as exc:
            reason = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
            raise InputError(name, f"line {number} is not valid JSON ({reason})", row=number) \
                from exc
        if not isinstance(value, dict):
            raise InputError(name, f"line {number} is not a JSON object", row=number)
        if "\\u" in line and _has_lone_surrogate(value):
            raise InputError(name, f"line {number} has a \\uD800-\\uDFFF escape that is half "
                             "a surrogate pair, not text", row=number)
        objects.append(value)
        keys.update(dict.fromkeys(value))
    header = list(keys)
    columns = [
        pa.chunked_array([pa.array([_py_text(o.get(k)) for o in objects], pa.string())])
        for k in header
    ]
    return _Parsed(header, columns, len(objects), used, warnings=notes)


def _has_lone_surrogate(value: Any) -> bool:
    """JSON escapes can name half a surrogate pair ("\\ud800"): valid JSON, but not text that
    UTF-8 (or Arrow) can hold. Checked only on lines with an escape, so plain files pay nothing."""
    try:
        json.dumps(value, ensure_ascii=False, default=str).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


# --- Parquet --------------------------------------------------------------------------------


def _parse_parquet(name: str, data: bytes) -> _Parsed:
    import pyarrow.parquet as pq  # imported here: only Parquet inputs pay for it

    try:
        table = pq.read_table(pa.BufferReader(data))
        columns = [_arrow_text(column) for column in table.columns]
    except (pa.ArrowException, OSError, ValueError, TypeError) as exc:
        raise InputError(name, f"cannot read as Parquet: {exc}") from exc
    return _Parsed(list(table.column_names), columns, table.num_rows, "parquet")


def _arrow_text(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """Any Arrow column as pa.string(); see the module docstring for each type's text."""
    kind = column.type
    if kind == pa.string():
        return column
    if pa.types.is_dictionary(kind):
        return _arrow_text(column.cast(kind.value_type))
    if pa.types.is_null(kind):
        return pa.chunked_array([pa.nulls(len(column), pa.string())])
    if pa.types.is_boolean(kind):
        return pc.if_else(column, "true", "false")
    if pa.types.is_timestamp(kind):
        text = pc.replace_substring(column.cast(pa.string()), " ", "T", max_replacements=1)
        return pc.replace_substring_regex(text, r"([+-]\d\d)(\d\d)$", r"\1:\2")
    simple = (
        pa.types.is_string(kind) or pa.types.is_large_string(kind)
        or pa.types.is_integer(kind) or pa.types.is_floating(kind)
        or pa.types.is_decimal(kind) or pa.types.is_date(kind) or pa.types.is_time(kind)
    )
    if simple or pa.types.is_string_view(kind):
        try:
            return column.cast(pa.string())
        except (pa.ArrowException, ValueError):
            pass
    values = [_py_text(v) for v in column.to_pylist()]
    return pa.chunked_array([pa.array(values, pa.string())])


# --- XLSX -----------------------------------------------------------------------------------


def _parse_xlsx(name: str, data: bytes, wanted: str | None = None) -> _Parsed:
    """One sheet: `wanted` (--sheet: a name, else a 1-based index), by default the first. The
    first non-blank row is the header; blank rows are skipped. A workbook of several sheets
    read by default says which one was read, so that nobody assumes all of them were."""
    import openpyxl  # imported here: only XLSX inputs pay for it

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # openpyxl warns about styles it cannot read
            book = openpyxl.load_workbook(io.BytesIO(data), read_only=True, data_only=True)
            try:
                names = list(book.sheetnames)
                chosen = _sheet_index(name, names, wanted)
                sheet = book.worksheets[chosen]
                if hasattr(sheet, "reset_dimensions"):
                    sheet.reset_dimensions()  # the stored dimensions may be wrong
                cells = [list(r) for r in sheet.iter_rows(values_only=True)]
            finally:
                book.close()
    except InputError:
        raise
    except Exception as exc:  # openpyxl raises a zoo of types (zipfile, KeyError, XML...)
        raise InputError(name, f"cannot read as .xlsx: {exc or type(exc).__name__}") from exc
    texts = [[_py_text(v) for v in row] for row in cells]
    rows = [row for row in texts if any(v not in (None, "") for v in row)]
    if not rows:
        raise InputError(name, f"sheet {names[chosen]!r} is empty (no header row)")
    header_cells = rows[0]
    while header_cells and header_cells[-1] in (None, ""):
        header_cells.pop()
    header = ["" if v is None else v for v in header_cells]
    parsed = _rows_to_parsed(name, header, rows[1:], "\t", warn_short=False)
    parsed.encoding = "xlsx"
    parsed.sheet = names[chosen]
    if wanted is None and len(names) > 1:
        parsed.warnings.append(
            f"{name}: read its first sheet {names[0]!r} of {len(names)} "
            f"({_list(names)}); --sheet NAME|INDEX reads another")
    return parsed


def _sheet_index(name: str, names: list[str], wanted: str | None) -> int:
    """The index of the sheet to read: 0 (the first) by default; a sheet named `wanted`; else
    `wanted` as a 1-based index (a sheet named "2" wins over the second sheet)."""
    if wanted is None:
        return 0
    text = str(wanted).strip()
    if text in names:
        return names.index(text)
    if text.isdecimal() and 1 <= int(text) <= len(names):
        return int(text) - 1
    raise InputError(name, f"--sheet {wanted}: no such sheet (sheets: {_list(names)}; give a "
                     f"name or an index from 1 to {len(names)})")


# --- values as text -------------------------------------------------------------------------


def _py_text(value: Any) -> str | None:
    """A Python value (from JSON, openpyxl or Arrow's to_pylist) as cell text; None stays null."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _float_text(value)
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, bytes | bytearray | memoryview):
        raw = bytes(value)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return raw.hex()
    if isinstance(value, dict | list | tuple):
        return json.dumps(value, ensure_ascii=False, default=_json_default)
    return str(value)


def _float_text(value: float) -> str:
    # Same text as Arrow's float->string cast, so Parquet and XLSX agree: 1.0 -> "1".
    if value.is_integer() and abs(value) < 1e16:
        return str(int(value))
    return repr(value)


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return float(value)
    return _py_text(value)


# --- columns --------------------------------------------------------------------------------


def _unique_names(header: list[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """Header names made unique: a repeated name becomes `name_2`, `name_3`, ..."""
    taken = set(header)
    seen: set[str] = set()
    names: list[str] = []
    renamed: list[tuple[str, str]] = []
    for name in header:
        if name in seen:
            new = _free_name(name, taken, start=2)
            taken.add(new)
            renamed.append((name, new))
            name = new
        seen.add(name)
        names.append(name)
    return names, renamed


def _free_name(name: str, taken: set[str], start: int = 1) -> str:
    if start == 1 and name not in taken:
        return name
    number = max(start, 2)
    while f"{name}_{number}" in taken:
        number += 1
    return f"{name}_{number}"


def _match_columns(
    name: str,
    header: list[str],
    names: list[str],
    column_map: dict[str, str],
    options: LoadOptions,
) -> dict[str, str]:
    """field -> (unique) column name. --map wins; otherwise the loose name and the aliases."""
    chosen: dict[str, int] = {}
    for field_name, column in column_map.items():
        chosen[field_name] = _find_mapped(name, header, names, field_name, column)
    optional = {
        "do_notify_sms": options.set_state is not None,
        "update_target": options.default_target is not None,
    }
    claimed = set(chosen.values())
    for field_name in FIELDS:
        if field_name in chosen:
            continue
        found = [i for i, h in enumerate(header)
                 if i not in claimed and loose_name(h) in _LOOSE_ALIASES[field_name]]
        if len(found) > 1:
            if field_name == "do_notify_sms" and options.set_state is not None:
                continue  # --set-state overrides every row: which column it was is moot
            raise InputError(name, _ambiguous(field_name, [header[i] for i in found]))
        if found:
            chosen[field_name] = found[0]
        elif not optional.get(field_name, False):
            raise InputError(name, _missing(field_name, header))
    return {f: names[i] for f, i in sorted(chosen.items(), key=lambda kv: FIELDS.index(kv[0]))}


def _find_mapped(
    name: str, header: list[str], names: list[str], field_name: str, column: str
) -> int:
    """The index of a --map column: exact header name, then a renamed duplicate, then loose."""
    for candidates in (
        [i for i, h in enumerate(header) if h == column],
        [i for i, n in enumerate(names) if n == column],
        [i for i, h in enumerate(header) if loose_name(h) == loose_name(column)],
    ):
        if len(candidates) > 1:
            raise InputError(
                name, f"--map {field_name}={column}: "
                + _ambiguous(field_name, [header[i] for i in candidates])
            )
        if candidates:
            return candidates[0]
    raise InputError(
        name, f"--map {field_name}={column}: no column {column!r} (columns: {_list(header)})"
    )


def _ambiguous(field_name: str, columns: list[str]) -> str:
    if len(set(columns)) == 1:
        return (f"column {columns[0]!r} appears {len(columns)} times and matches {field_name}; "
                f"rename one or use --map {field_name}=COLUMN")
    which = "both" if len(columns) == 2 else "all"
    return (f"columns {_list(columns, ' and ')} {which} match {field_name}; "
            f"choose one with --map {field_name}=COLUMN")


def _missing(field_name: str, header: list[str]) -> str:
    hint = {
        "do_notify_sms": " or --set-state true|false",
        "update_target": " or --default-target job|client",
    }.get(field_name, "")
    return (
        f"no column for {field_name} (looked for {', '.join(ALIASES[field_name])}); "
        f"columns found: {_list(header)}; use --map {field_name}=COLUMN{hint}"
    )


def _list(columns: list[str], sep: str = ", ") -> str:
    return sep.join(repr(c) for c in columns) if columns else "none"


# --- tables ---------------------------------------------------------------------------------


def _fields_table(name: str, table: pa.Table, rows: int, mapping: dict[str, str]) -> pa.Table:
    columns: dict[str, pa.ChunkedArray | pa.Array] = {}
    for field_name in FIELDS:
        column = mapping.get(field_name)
        columns[field_name] = table.column(column) if column else pa.nulls(rows, pa.string())
    columns["source_file"] = pa.repeat(pa.scalar(name, pa.string()), rows)
    columns["source_row"] = pc.cumulative_sum(pa.repeat(pa.scalar(1, pa.int64()), rows))
    return pa.table(columns)


def _align(table: pa.Table, names: list[str]) -> pa.Table:
    """The table with exactly `names`, in order; absent ones all-null."""
    if table.column_names == names:
        return table
    rows = table.num_rows
    columns = [
        table.column(n) if n in table.column_names
        else pa.chunked_array([pa.nulls(rows, pa.string())]) for n in names
    ]
    return pa.Table.from_arrays(columns, names=names)


__all__ = [
    "ALIASES", "DELIMITERS", "EXTRA_COLUMN", "IN_MEMORY", "STDIN_NAME", "LoadedInput",
    "SourceFile", "in_memory_table", "is_in_memory_name", "load_inputs", "loose_name",
    "sha256_of",
]
