"""Writing the report: the table (CSV, Parquet or JSONL), its summary JSON and the stderr summary.

The caller assembles the report table (the input's own columns with the review key masked, then
`vocab.OUTCOME_COLUMNS`) and the summary dict; this module only writes them, fast and safely:

* every file is written to a temp file in the target's directory, created 0600 from the start
  (O_CREAT|O_EXCL), fsynced, then renamed over the target, so a reader or a crash never sees a
  half-written report and a failed write leaves the previous file untouched. `durable=False`
  (validate, --dry-run: nothing was sent, running it again gives the same report) skips the
  fsyncs, still renaming atomically: on a 1M-row report they are 10-20% of validate's time;
* CSV cells that a spreadsheet would run as a formula get a leading `'`;
  Parquet and JSONL keep values raw;
* everything is vectorised with pyarrow.compute, in batches, so memory stays bounded and a
  million-row report takes about a second (see `write_table`).
"""

from __future__ import annotations

import json
import os
import secrets
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, suppress
from datetime import UTC, date, datetime, time
from functools import partial
from hashlib import sha256
from pathlib import Path
from typing import Any, BinaryIO, Final, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from batch_toggle.config import format_duration
from batch_toggle.errors import ReportError, UsageError
from batch_toggle.vocab import ERROR_CODES, NOT_ATTEMPTED, OK_STATUSES, PROBLEM_STATUSES, STATUSES

FORMATS: Final = {".csv": "csv", ".parquet": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl"}

# A cell starting with one of these is run as a formula (or split into one) by Excel, LibreOffice
# or Google Sheets; the full-width forms are folded to ASCII by some of them.
FORMULA_TRIGGERS: Final = tuple("=+-@\uff1d\uff0b\uff0d\uff20\t\r\n")
_TRIGGER_SET: Final = pa.array(FORMULA_TRIGGERS, pa.string())

# Rows per batch: large enough that pyarrow's per-call overhead vanishes, small enough that a
# batch's converted copy stays a few tens of MB however large the report.
_BATCH_ROWS: Final = 65_536

# The keys of the summary dict that `render_summary_table` shows, all optional. The summary JSON
# may hold many more (inputs, options, hashes...); only these reach the terminal.
SUMMARY_COUNTS_BY_STATUS: Final = "counts_by_status"
SUMMARY_COUNTS_BY_ERROR_CODE: Final = "counts_by_error_code"
SUMMARY_LINES: Final = (
    ("requests_sent", "requests sent"),
    ("responses_429", "429 responses"),
    ("retries", "retries"),
    ("duration_s", "duration"),
    ("report", "report"),
    ("html_report", "html report"),
    ("verdict", "verdict"),
)


_In = TypeVar("_In")
_Out = TypeVar("_Out")


# --- paths -----------------------------------------------------------------------------------


def default_report_path(
    first_input: str, now: datetime, reports_dir: Path = Path("reports")
) -> Path:
    """`reports/<first input stem>-<UTC yyyymmddThhmmss>.csv`.

    The stem drops a `.gz` and then one more extension (`x.csv.gz` -> `x`); stdin (`-`) is
    `stdin`. An aware `now` is converted to UTC; a naive one is taken to be UTC already.
    """
    if first_input == "-":
        stem = "stdin"
    elif first_input.startswith("<") and first_input.endswith(">"):  # given in memory
        stem = first_input[1:-1].strip().lower().replace(" ", "-") or "input"
    else:
        name = Path(first_input).name
        if name.lower().endswith(".gz"):
            name = name[:-3]
        stem = Path(name).stem or "report"
    if now.tzinfo is not None:
        now = now.astimezone(UTC)
    return Path(reports_dir) / f"{stem}-{now.strftime('%Y%m%dT%H%M%S')}.csv"


# Default report paths this process reserved (created empty) and has not written yet.
_RESERVED: set[str] = set()


def unused_report_path(path: Path) -> Path:
    """`path`, or `x-2.csv`, `x-3.csv`... when a report (or its summary) is already there: two
    runs started in the same second with the default path must not write over each other's
    evidence. The name is reserved atomically: the file is created empty (O_EXCL, 0600), so
    that five processes starting in the same second get five names; the report replaces it,
    and `release_reservation` removes it when the job ends before writing one. Where the file
    cannot be created, the name is returned unreserved (check_writable then says why)."""
    path = Path(path)
    with suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
    candidate, n = path, 2
    while True:
        if not summary_path(candidate).exists():
            try:
                os.close(os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL
                                 | getattr(os, "O_CLOEXEC", 0), 0o600))
            except FileExistsError:
                pass
            except OSError:
                return candidate
            else:
                _RESERVED.add(os.path.abspath(candidate))
                return candidate
        candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")
        n += 1


def release_reservation(path: Path | None) -> None:
    """Remove the empty file `unused_report_path` reserved at `path`, when no report was
    written there (the job failed first): a refused input leaves no empty report behind."""
    if path is None:
        return
    key = os.path.abspath(path)
    if key not in _RESERVED:
        return
    _RESERVED.discard(key)
    with suppress(OSError):
        if os.stat(key).st_size == 0:
            os.unlink(key)


def report_format(path: Path) -> str:
    """`csv`, `parquet` or `jsonl`, from the extension (case-insensitive; `.ndjson` is JSONL)."""
    suffix = Path(path).suffix.lower()
    try:
        return FORMATS[suffix]
    except KeyError:
        shown = f"unknown extension {suffix!r}" if suffix else "no extension"
        raise UsageError(
            f"report {path}: {shown}; the format follows the extension: "
            ".csv, .parquet, .jsonl (or .ndjson)"
        ) from None


def summary_path(report: Path) -> Path:
    """Where the summary JSON of a report goes: `out/x.csv` -> `out/x.csv.summary.json`."""
    report = Path(report)
    return report.with_name(report.name + ".summary.json")


def html_path(report: Path) -> Path:
    """Where the HTML report of a report goes: `out/x.csv` -> `out/x.csv.html`."""
    report = Path(report)
    return report.with_name(report.name + ".html")


def check_outputs_distinct(outputs: Mapping[str, Path | None], inputs: Sequence[str]) -> None:
    """Pre-flight: no output file is an input or another output. A report written over the
    opt-out list would destroy the list it reports on (and a resume would then refuse the
    changed input); two outputs on one path would leave one of them, and the summary's sha256
    of the report would not match the file. Raises UsageError naming both."""
    seen: dict[str, str] = {}
    for name in inputs:
        if name != "-":
            seen[_same_file_key(Path(name))] = f"the input {name}"
    for what, path in outputs.items():
        if path is None:
            continue
        key = _same_file_key(Path(path))
        if key in seen:
            raise UsageError(f"{what} {path} is {seen[key]}: writing it would overwrite that; "
                             "choose another path")
        seen[key] = f"the {what}"


def _same_file_key(path: Path) -> str:
    """What two paths that name one file have in common: the (device, inode) of a file that
    exists (hard links, symlinks, `./x` and `x`), else the resolved path."""
    try:
        st = path.stat()
    except OSError:
        return os.path.realpath(path)
    return f"{st.st_dev}:{st.st_ino}"


def check_writable(path: Path) -> None:
    """Pre-flight, before any request: the file's directory exists (or is created now) and a
    temp file can be created in it, so a 40-hour run does not discover at its end that it cannot
    write its report. Raises UsageError naming the path."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"cannot write {path}: it is a directory")
    for ancestor in (path.parent, *path.parent.parents):
        if ancestor.exists():
            if not ancestor.is_dir():
                raise UsageError(f"cannot write {path}: {ancestor} is not a directory")
            break
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = _open_temp(path)
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror or exc}") from exc
    os.close(fd)
    os.unlink(tmp)


# --- writing ---------------------------------------------------------------------------------


def write_table(table: pa.Table, path: Path, *, durable: bool = True) -> str:
    """Write the report table in the format its extension names, atomically, mode 0600.

    Returns the sha256 (hex) of the bytes of the file as written. CSV: header row, UTF-8 without
    BOM, LF line endings, every string cell quoted (pyarrow's "needed" style: strings, not
    numbers or booleans), nulls as empty cells, booleans as true/false, formula guard on every
    string column and on the header. Parquet (zstd) and JSONL keep values raw. On failure the
    temp file is removed, the target is untouched, and ReportError says why.
    """
    path = Path(path)
    fmt = report_format(path)
    writer = {"csv": _write_csv, "parquet": _write_parquet, "jsonl": _write_jsonl}[fmt]
    try:
        with _atomic_write(path, hashed=True, durable=durable) as sink:
            writer(table, sink)
    except OSError as exc:
        raise ReportError(f"cannot write {path}: {exc.strerror or exc}") from exc
    except (pa.ArrowException, TypeError, ValueError) as exc:
        raise ReportError(f"cannot write {path} as {fmt}: {exc}") from exc
    _RESERVED.discard(os.path.abspath(path))  # the report took the reserved name's place
    return sink.hexdigest()


def write_json(obj: Mapping[str, Any], path: Path, *, durable: bool = True) -> None:
    """Write `obj` as JSON (indent 2, keys in insertion order, UTF-8, trailing newline),
    atomically, mode 0600. Dates and times become ISO 8601 strings, paths plain strings; NaN or
    an unknown type is a ReportError (the summary is evidence: it must be strict JSON)."""
    try:
        text = json.dumps(obj, indent=2, ensure_ascii=False, allow_nan=False, default=_json_default)
    except (TypeError, ValueError) as exc:
        raise ReportError(f"cannot write {path}: {exc}") from exc
    write_text(text + "\n", path, durable=durable)


def write_text(text: str, path: Path, *, durable: bool = True) -> None:
    """Write `text` as UTF-8, atomically, mode 0600 (the HTML report, the summary JSON).
    ReportError on failure."""
    path = Path(path)
    try:
        with _atomic_write(path, durable=durable) as sink:
            sink.write(text.encode("utf-8"))
    except OSError as exc:
        raise ReportError(f"cannot write {path}: {exc.strerror or exc}") from exc


class _HashingSink:
    """A binary file that hashes what goes through it: the sha256 of the file without re-reading.

    The hash runs on a second thread (hashlib releases the GIL) while the writer goes on: on a
    1M-row report it is a tenth of a second off the critical path. Each chunk is copied first,
    so the hash never depends on how long the caller keeps its buffer; one worker keeps order.
    """

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        self._hash = sha256()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bt-sha256")
        self._pending: Future[None] | None = None
        self.closed = False  # pyarrow's PythonFile checks it

    def write(self, data: Any) -> int:
        chunk = bytes(data)
        self._pending = self._pool.submit(self._hash.update, chunk)
        return self._raw.write(chunk)

    def flush(self) -> None:
        self._raw.flush()

    def hexdigest(self) -> str:
        self._pool.shutdown(wait=True)
        if self._pending is not None:
            self._pending.result()  # surface a hashing error, if any
        return self._hash.hexdigest()

    def abandon(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def _open_temp(path: Path) -> tuple[int, Path]:
    """Create a fresh hidden temp file beside `path`, 0600 from its first instant."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
        try:
            fd = os.open(tmp, flags, 0o600)
        except FileExistsError:
            continue
        os.fchmod(fd, 0o600)  # a umask can only remove bits; this makes it exactly 0600
        return fd, tmp
    raise FileExistsError(f"no free temp file name beside {path}")


@contextmanager
def _atomic_write(path: Path, *, hashed: bool = False, durable: bool = True) -> Iterator[Any]:
    """Yield a sink writing to a temp file; on success fsync it (unless not `durable`) and
    rename it onto `path`, on any error (or interrupt) remove it and leave `path` as it was.
    `hashed`: the sink is a `_HashingSink` (the report, whose digest the summary records);
    otherwise the file itself."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _open_temp(path)
    sink: _HashingSink | None = None
    try:
        with open(fd, "wb", buffering=1 << 20) as raw:
            if hashed:
                sink = _HashingSink(raw)
            yield sink if sink is not None else raw
            raw.flush()
            if durable:
                os.fsync(raw.fileno())
        os.replace(tmp, path)
    except BaseException:
        if sink is not None:
            sink.abandon()
        with suppress(OSError):
            os.unlink(tmp)
        raise
    if durable:
        _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable (a power cut must not bring back the old report)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        with suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


def _json_default(value: object) -> object:
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, set | frozenset):
        return sorted(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


# --- CSV -------------------------------------------------------------------------------------


def guard_formulas(values: pa.Array) -> pa.Array:
    """Prefix `'` to the string cells that start with a formula trigger.

    Only the first character counts: `a=b` is left alone. Non-string arrays come back as they
    are; a dictionary array is guarded through its dictionary; string_view becomes string.
    """
    kind = values.type
    if pa.types.is_dictionary(kind):
        if not _is_text(kind.value_type):
            return values
        return pa.DictionaryArray.from_arrays(values.indices, guard_formulas(values.dictionary))
    if not _is_text(kind):
        return values
    if pa.types.is_string_view(kind):
        values, kind = values.cast(pa.string()), pa.string()
    hit = _first_char_hits(values)
    if hit is None:
        hit = pc.is_in(pc.utf8_slice_codeunits(values, 0, 1), value_set=_TRIGGER_SET)
    if not pc.any(hit).as_py():
        return values
    # Prefix only the hits, then put them back: ~3x cheaper than prefixing every cell.
    hits = pc.filter(values, hit)
    prefixed = pc.binary_join_element_wise(pa.scalar("'", kind), hits, pa.scalar("", kind))
    return pc.replace_with_mask(values, hit, prefixed)


# The UTF-8 bytes of the triggers: one ASCII byte, or EF BC xx / EF BD xx for full-width forms.
_ASCII_TRIGGER: Final = np.zeros(256, dtype=bool)
_ASCII_TRIGGER[[ord(t) for t in FORMULA_TRIGGERS if ord(t) < 0x80]] = True
_WIDE_TRIGGERS: Final = np.array(
    [int.from_bytes(t.encode(), "big") for t in FORMULA_TRIGGERS if ord(t) >= 0x80],
    dtype=np.int64)


def _first_char_hits(values: pa.Array) -> pa.Array | None:
    """Which cells start with a trigger, read from the first bytes of each cell (~10x cheaper
    than slicing every string); None for layouts other than pa.string()."""
    if not pa.types.is_string(values.type) or len(values) == 0:
        return None
    _, offsets_buffer, data_buffer = values.buffers()
    count = len(values)
    offsets = np.frombuffer(offsets_buffer, dtype=np.int32, count=count + 1,
                            offset=4 * values.offset)
    hit = np.zeros(count, dtype=bool)
    if data_buffer is None or offsets[-1] == offsets[0]:
        return pa.array(hit)
    data = np.frombuffer(data_buffer, dtype=np.uint8)
    lengths = np.diff(offsets)
    rows = np.flatnonzero(lengths > 0)
    first = data[offsets[rows]]
    hit[rows] = _ASCII_TRIGGER[first]
    wide = rows[(first == 0xEF) & (lengths[rows] >= 3)]
    if len(wide):
        start = offsets[wide].astype(np.int64)
        code = (data[start].astype(np.int64) << 16) | (data[start + 1].astype(np.int64) << 8) \
            | data[start + 2]
        hit[wide] = np.isin(code, _WIDE_TRIGGERS)
    if values.null_count:
        hit &= values.is_valid().to_numpy(zero_copy_only=False)
    return pa.array(hit)


def guard_formula_text(text: str) -> str:
    """The formula guard on one Python string (for header cells)."""
    return "'" + text if text[:1] in FORMULA_TRIGGERS else text


def _is_text(kind: pa.DataType) -> bool:
    return (
        pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind)
    )


def _write_csv(table: pa.Table, sink: _HashingSink) -> None:
    # pyarrow's writer quotes every string cell (and no number or boolean), writes nulls as empty
    # cells and ends lines with LF; it is ~10x faster than csv.writer or pandas, so we only add
    # the formula guard. The guard of batch k+1 runs in a thread while batch k is written, which
    # hides part of its cost on two cores.
    names = [guard_formula_text(name) for name in table.column_names]
    schema = _csv_schema(table.schema, names)
    convert = partial(_csv_batch, schema=schema)
    with pa_csv.CSVWriter(sink, schema) as writer:
        for batch in _pipelined(convert, table.to_batches(max_chunksize=_BATCH_ROWS), workers=1):
            writer.write_batch(batch)


def _pipelined(
    convert: Callable[[_In], _Out], items: Iterable[_In], workers: int
) -> Iterator[_Out]:
    """`convert(item)` for each item, in order, computed in `workers` threads up to `workers`
    items ahead of the consumer (pyarrow releases the GIL, so this uses the other cores while
    memory stays bounded to a few batches)."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending: deque[Future[_Out]] = deque()
        for item in items:
            pending.append(pool.submit(convert, item))
            if len(pending) > workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _csv_schema(schema: pa.Schema, names: list[str]) -> pa.Schema:
    """The written schema: guarded names; string_view as string (the writer lacks it); a lone
    column as string, so that its nulls can be written as `""` (see `_csv_batch`)."""
    alone = len(names) == 1
    types = [pa.string() if alone or pa.types.is_string_view(f.type) else f.type for f in schema]
    return pa.schema([pa.field(name, kind) for name, kind in zip(names, types, strict=True)])


def _csv_batch(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    columns = [guard_formulas(column) for column in batch.columns]
    if len(columns) == 1:
        # A one-column row that is null would be an empty line, which CSV readers skip.
        columns = [pc.fill_null(columns[0].cast(pa.string()), "")]
    return pa.RecordBatch.from_arrays(columns, schema=schema)


# --- Parquet ---------------------------------------------------------------------------------


def _write_parquet(table: pa.Table, sink: _HashingSink) -> None:
    pq.write_table(table, sink, compression="zstd")


# --- JSONL -----------------------------------------------------------------------------------

_TEXT: Final = pa.large_string()  # 64-bit offsets: a batch of long cells cannot overflow
_JSON_SPECIAL: Final = '[\\x00-\\x1f"\\\\]'  # what a JSON string must escape (RE2 syntax)
_JSON_ESCAPES: Final = {
    "\\": "\\\\",
    '"': '\\"',
    "\b": "\\b",
    "\t": "\\t",
    "\n": "\\n",
    "\f": "\\f",
    "\r": "\\r",
} | {chr(c): f"\\u{c:04x}" for c in range(0x20) if chr(c) not in "\b\t\n\f\r"}


def _write_jsonl(table: pa.Table, sink: _HashingSink) -> None:
    """One JSON object per row, keys in column order, values raw (no formula guard), nulls as
    null, UTF-8 unescaped. Built with pyarrow.compute: each column becomes its JSON texts, one
    element-wise join makes the lines, and their bytes go to the file without a Python loop;
    batches are converted on every core while the main thread writes."""
    if table.num_columns == 0:
        sink.write(b"{}\n" * table.num_rows)
        return
    keys = [json.dumps(name, ensure_ascii=False) + ":" for name in table.column_names]
    convert = partial(_jsonl_lines, keys=keys)
    workers = min(4, os.cpu_count() or 1)
    for lines in _pipelined(convert, table.to_batches(max_chunksize=_BATCH_ROWS), workers):
        sink.write(_data_bytes(lines))


def _jsonl_lines(batch: pa.RecordBatch, keys: list[str]) -> pa.Array:
    """The JSON lines of a batch, as one large_string array (each element ends with LF)."""
    parts: list[Any] = []
    text = "{"  # literal text waiting to be joined, between two columns' values
    for i, (key, column) in enumerate(zip(keys, batch.columns, strict=True)):
        text += ("," if i else "") + key
        values, bare_strings = _json_values(column)
        if bare_strings:  # null-free strings: their quotes go into the literal text
            parts += [pa.scalar(text + '"', _TEXT), values]
            text = '"'
        else:
            parts += [pa.scalar(text, _TEXT), values]
            text = ""
    parts += [pa.scalar(text + "}\n", _TEXT), pa.scalar("", _TEXT)]  # the last is the separator
    return pc.binary_join_element_wise(*parts)


def _json_values(column: pa.Array) -> tuple[pa.Array, bool]:
    """The JSON texts of a column's cells, as large_string without nulls; the flag says they are
    escaped strings still to be put between quotes."""
    kind = column.type
    if pa.types.is_dictionary(kind) and _is_text(kind.value_type) or _is_text(kind):
        escaped = _json_escape(column.cast(_TEXT))
        if escaped.null_count == 0:
            return escaped, True
        quote = pa.scalar('"', _TEXT)
        quoted = pc.binary_join_element_wise(quote, escaped, quote, pa.scalar("", _TEXT))
        return pc.fill_null(quoted, "null"), False
    if pa.types.is_null(kind):
        return pc.fill_null(column.cast(_TEXT), "null"), False
    if pa.types.is_boolean(kind) or pa.types.is_integer(kind):
        return pc.fill_null(column.cast(_TEXT), "null"), False
    if pa.types.is_floating(kind):
        # NaN and infinity have no JSON form: null, as a JSON parser would want.
        finite = pc.if_else(pc.is_finite(column), column, pa.scalar(None, kind))
        return pc.fill_null(finite.cast(_TEXT), "null"), False
    # Rare types (timestamps, decimals, nested): Python's encoder, one cell at a time.
    texts = [
        json.dumps(
            value, ensure_ascii=False, separators=(",", ":"), allow_nan=False, default=_json_cell
        )
        for value in column.to_pylist()
    ]
    return pa.array(texts, _TEXT), False


def _json_cell(value: object) -> object:
    """Dates and times as ISO 8601, anything else exotic (Decimal, timedelta, bytes) as str."""
    isoformat = getattr(value, "isoformat", None)
    return isoformat() if callable(isoformat) else str(value)


def _json_escape(values: pa.Array) -> pa.Array:
    """Escape what JSON requires (backslash, quote, U+0000-U+001F) in the few cells that hold
    any: find them in one scan, escape that subset, put it back."""
    special = pc.fill_null(pc.match_substring_regex(values, _JSON_SPECIAL), False)
    if not pc.any(special).as_py():
        return values
    subset = pc.filter(values, special)
    for char, escape in _JSON_ESCAPES.items():  # backslash first: the others add backslashes
        if pc.any(pc.match_substring(subset, char)).as_py():
            subset = pc.replace_substring(subset, char, escape)
    return pc.replace_with_mask(values, special, subset)


def _data_bytes(texts: pa.Array) -> memoryview:
    """The concatenated bytes of a (large_)string array, straight from its data buffer."""
    if len(texts) == 0:
        return memoryview(b"")
    _, offsets_buffer, data_buffer = texts.buffers()
    offsets = memoryview(offsets_buffer).cast("q" if pa.types.is_large_string(texts.type) else "i")
    start, end = offsets[texts.offset], offsets[texts.offset + len(texts)]
    return memoryview(data_buffer)[start:end] if data_buffer is not None else memoryview(b"")


# --- the stderr summary ----------------------------------------------------------------------

_GREEN, _RED, _YELLOW, _BOLD, _RESET = "\x1b[32m", "\x1b[31m", "\x1b[33m", "\x1b[1m", "\x1b[0m"


def render_summary_table(summary: Mapping[str, Any], *, color: bool = False) -> str:
    """The short summary for stderr: rows by status and by error code, then requests, 429s,
    retries, duration and the report path. Plain aligned text; ANSI colour only when asked (the
    caller decides, NO_COLOR and TTY included). Missing keys are left out."""
    statuses = _ordered_counts(summary.get(SUMMARY_COUNTS_BY_STATUS) or {}, STATUSES)
    codes = _ordered_counts(summary.get(SUMMARY_COUNTS_BY_ERROR_CODE) or {}, ERROR_CODES)
    waiting = summary.get("waiting") or {}
    # sections of (label, value, colour, note): the note follows the aligned count
    counts: list[list[tuple[str, str, str, str]]] = []
    if statuses:
        total = sum(n for _, n in statuses)
        counts.append(
            [("status", "rows", _BOLD, "")]
            + [(name, f"{n:,}", _status_colour(name), _status_note(name, waiting))
               for name, n in statuses]
            + [("total", f"{total:,}", _BOLD, "")]
        )
    if codes:
        by_status = summary.get("error_codes_by_status") or {}
        counts.append(
            [("error_code", "rows", _BOLD, "")]
            + [(name, f"{n:,}", _RED, _code_note(by_status.get(name) or {})) for name, n in codes]
        )
    facts = [
        (label, _format_scalar(key, summary[key]), "", "")
        for key, label in SUMMARY_LINES
        if summary.get(key) is not None
    ]
    if waiting:
        # A slice that ended: what waits for the next one, apart from what needs a person.
        attention = int((summary.get("attention") or {}).get("rows") or 0)
        facts[:0] = [("waiting", f"{int(waiting.get('rows') or 0):,} rows: the next slice "
                      "(run --resume) sends them", "", ""),
                     ("attention", f"{attention:,} rows need attention (invalid, conflict, "
                      "failed, mismatch)", "", "")]
    everything = [row for section in counts for row in section] + facts
    width = max((len(label) for label, *_ in everything), default=0)
    count_width = max((len(value) for section in counts for _, value, _, _ in section),
                      default=0)
    sections = [[(label, value.rjust(count_width), c, note) for label, value, c, note in s]
                for s in counts]
    sections += [facts] if facts else []
    lines: list[str] = []
    for section in sections:
        lines += [""] if lines else []
        for label, value, colour, note in section:
            line = f"{label.ljust(width)}  {value}{'  ' + note if note else ''}".rstrip()
            lines.append(f"{colour}{line}{_RESET}" if color and colour else line)
    return "".join(line + "\n" for line in lines)


def _status_note(status: str, waiting: Mapping[str, Any]) -> str:
    """After a slice that ended, its not_attempted rows are waiting, not a problem."""
    return "waiting: the next slice sends them" if status == NOT_ATTEMPTED and waiting else ""


def _code_note(by_status: Mapping[str, int]) -> str:
    """Which statuses carry a code, when several do: a duplicate row shares its unit's code
    (`budget_exhausted` on 174 not_attempted rows and their 5 duplicates counts 179)."""
    if len(by_status) < 2:
        return ""
    return "(" + ", ".join(f"{int(n):,} {status}" for status, n in by_status.items()) + ")"


def _ordered_counts(counts: Mapping[str, int], order: tuple[str, ...]) -> list[tuple[str, int]]:
    """Non-zero counts, vocabulary order first, then any other name alphabetically."""
    known = [(name, int(counts[name])) for name in order if counts.get(name)]
    extra = sorted((str(name), int(n)) for name, n in counts.items() if name not in order and n)
    return known + extra


def _status_colour(status: str) -> str:
    if status in PROBLEM_STATUSES:
        return _RED
    if status == NOT_ATTEMPTED:
        return _YELLOW
    return _GREEN if status in OK_STATUSES else ""


def _format_scalar(key: str, value: Any) -> str:
    if key == "duration_s":
        return format_duration(float(value))
    if isinstance(value, Mapping) and "path" in value:
        return str(value["path"])
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)
