"""Raw field text -> canonical job_id / review_key / state / target, or an error code per row.

Everything here is vectorised with pyarrow.compute: a million rows must normalise in a few tenths
of a second, so no function loops over rows in Python. Rows never raise; a bad value becomes
`missing_<field>` or `invalid_<field>` in `error_code` and a short human `error_message`.

A review_key is a secret: messages show at most its last four characters, and
so does any other quoted value that looks like a UUID (a key in the wrong column must not leak).
"""

from __future__ import annotations

import struct
from typing import Final

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from batch_toggle.errors import UsageError
from batch_toggle.vocab import TARGETS

OUTPUT_COLUMNS: Final = (
    "job_id", "review_key", "do_notify_sms", "update_target",
    "error_code", "error_message", "review_key_tail",
)

# Words accepted for do_notify_sms (after trimming and ASCII lower-casing). The contract lists
# the first pairs; the spaced/underscored opt-in forms, subscribed/unsubscribed and
# enabled/disabled are unambiguous extensions (an `sms_enabled` column holds enabled/disabled).
TRUE_WORDS: Final = (
    "true", "t", "yes", "y", "1", "on", "opt-in", "optin", "opt in", "opt_in",
    "subscribe", "subscribed", "enabled",
)
FALSE_WORDS: Final = (
    "false", "f", "no", "n", "0", "off", "opt-out", "optout", "opt out", "opt_out",
    "unsubscribe", "unsubscribed", "disabled",
)

# Trimmed from every value: Unicode white space (including CR, NBSP, ideographic space) and the
# zero-width characters that ride along when a value is copied from a web page or a BOM'd file.
WHITESPACE: Final = (
    " \t\n\v\f\r\x1c\x1d\x1e\x1f\x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006"
    "\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000\u200b\u200c\u200d\u2060\ufeff"
)

_H = "[0-9a-f]"  # ASCII only: RE2 ranges never match full-width digits
_UUID = f"{_H}{{8}}-{_H}{{4}}-{_H}{{4}}-{_H}{{4}}-{_H}{{12}}"
_HEX32 = f"{_H}{{32}}"
_CANONICAL_RE: Final = f"^{_UUID}$"
# Accepted spellings (input already lower-cased): optional urn:uuid:, optional balanced braces,
# hyphenated 8-4-4-4-12 or 32 bare hex digits.
_ACCEPTED_RE: Final = f"^(?:urn:uuid:)?(?:\\{{(?:{_UUID}|{_HEX32})\\}}|{_UUID}|{_HEX32})$"
# Rewrites any accepted spelling into the canonical one (only applied to accepted values).
_REWRITE_RE: Final = (
    f"^(?:urn:uuid:)?\\{{?({_H}{{8}})-?({_H}{{4}})-?({_H}{{4}})-?({_H}{{4}})-?({_H}{{12}})\\}}?$"
)
_REWRITE_TO: Final = r"\1-\2-\3-\4-\5"
# A quoted value matching this looks like (part of) a UUID and is shown only by its tail.
_SECRET_LOOKING_RE: Final = "[0-9A-Fa-f]{4}-?[0-9A-Fa-f]{4}-?[0-9A-Fa-f]{4}"

_PIECE_ROWS: Final = 1 << 16  # UUID columns are checked and rewritten in pieces this long
_MAX_QUOTED: Final = 40  # longer values are cut in messages
_STATE_WORDS_HELP: Final = (
    "true/false, yes/no, 1/0, on/off, opt-in/opt-out or subscribe/unsubscribe"
)

_NULL_STR: Final = pa.scalar(None, pa.string())


class _Field:
    """One field after normalisation: canonical value (null when bad), flags, trimmed text."""

    def __init__(
        self,
        name: str,
        value: pa.ChunkedArray,
        missing: pa.ChunkedArray | None,
        trimmed: pa.ChunkedArray,
    ) -> None:
        self.name = name
        self.value = value  # canonical value or null
        self.missing = missing  # bool, non-null; None when no row can be missing
        self.trimmed = trimmed  # trimmed raw text, for messages and the key tail


def normalize(
    fields: pa.Table,
    *,
    set_state: bool | None = None,
    default_target: str | None = None,
) -> pa.Table:
    """Canonicalise the four fields of every row and explain every bad one.

    `fields` holds the raw text of job_id, review_key, do_notify_sms and update_target (a column
    that is absent counts as all-null). `set_state` overrides the state of every row;
    `default_target` fills targets that are null or blank. Returns a table of the same length with
    OUTPUT_COLUMNS: the canonical values (null when missing or invalid), `error_code` (the first
    bad field in FIELDS order; null when the row is valid), `error_message` (every bad field) and
    `review_key_tail` (last four characters of the key, for the masked report column).
    """
    if set_state is not None and not isinstance(set_state, bool):
        raise UsageError(f"set_state must be true, false or None, not {set_state!r}")
    target_fill = _check_default_target(default_target)
    n = fields.num_rows

    job = _uuid_field("job_id", _text_column(fields, "job_id"))
    key = _uuid_field("review_key", _text_column(fields, "review_key"))
    if set_state is None:
        state = _state_field(_text_column(fields, "do_notify_sms"))
    else:
        state = _constant_field("do_notify_sms", pa.scalar(set_state, pa.bool_()), n)
    target = _target_field(_text_column(fields, "update_target"), target_fill)

    error_code, error_message = _errors(n, (job, key, state, target))
    return pa.table(
        {
            "job_id": job.value,
            "review_key": key.value,
            "do_notify_sms": state.value,
            "update_target": target.value,
            "error_code": error_code,
            "error_message": error_message,
            "review_key_tail": _tail(key),
        }
    )


def _check_default_target(default_target: str | None) -> str | None:
    if default_target is None:
        return None
    value = default_target.strip().lower()
    if value not in TARGETS:
        raise UsageError(f"default target {default_target!r}: expected {' or '.join(TARGETS)}")
    return value


def _text_column(table: pa.Table, name: str) -> pa.ChunkedArray:
    """The column as pa.string(); all-null when absent. Native booleans become true/false."""
    if name not in table.column_names:
        return pa.chunked_array([pa.nulls(table.num_rows, pa.string())])
    column = table.column(name)
    if column.type != pa.string():
        column = column.cast(pa.string())
    return column


def _trim(column: pa.ChunkedArray) -> pa.ChunkedArray:
    return pc.utf8_trim(column, characters=WHITESPACE)


def _is_missing(trimmed: pa.ChunkedArray) -> pa.ChunkedArray:
    """True where the trimmed value is null or empty; never null itself."""
    return pc.fill_null(pc.equal(pc.binary_length(trimmed), 0), True)


def _uuid_field(name: str, raw: pa.ChunkedArray) -> _Field:
    """Canonical UUIDs, piece by piece: pieces that are already canonical are kept as they are
    (the common case: a clean export, or a clean file with a few bad rows); only the others pay
    for the regular expressions."""
    pieces = [p for chunk in raw.chunks for p in _pieces(chunk)]
    if all(_is_canonical(p) for p in pieces):
        return _Field(name, raw, None, raw)
    values, missing, trimmed = [], [], []
    for piece in pieces:
        if _is_canonical(piece):
            values.append(piece)
            missing.append(pa.repeat(pa.scalar(False), len(piece)))
            trimmed.append(piece)
        else:
            value, blank, text = _uuid_piece_mixed(piece)
            values.append(value)
            missing.append(blank)
            trimmed.append(text)
    return _Field(
        name,
        pa.chunked_array(values, pa.string()),
        pa.chunked_array(missing, pa.bool_()),
        pa.chunked_array(trimmed, pa.string()),
    )


def _pieces(chunk: pa.Array) -> list[pa.Array]:
    """Zero-copy slices of at most _PIECE_ROWS rows."""
    return [chunk.slice(i, _PIECE_ROWS) for i in range(0, len(chunk), _PIECE_ROWS)]


def _uuid_piece_mixed(raw: pa.Array) -> tuple[pa.Array, pa.Array, pa.Array]:
    """Like _uuid_piece, but only the rows that are not already canonical pay for the regular
    expressions: a file with a few bad or respelled values spread through it (every piece then
    has some) normalises ~5x faster than running them on every row."""
    canonical = _canonical_rows(raw)
    if not canonical.any():
        return _uuid_piece(raw)
    other = pa.array(~canonical)
    value, blank, text = _uuid_piece(raw.filter(other))
    return (
        pc.replace_with_mask(raw, other, value),
        pc.replace_with_mask(pa.repeat(pa.scalar(False), len(raw)), other, blank),
        pc.replace_with_mask(raw, other, text),
    )


_NOT_HEX_BYTE: Final = np.ones(256, dtype=np.uint8)
_NOT_HEX_BYTE[np.frombuffer(b"0123456789abcdef", dtype=np.uint8)] = 0


def _canonical_rows(chunk: pa.Array) -> np.ndarray:
    """Per row: whether the value is already lowercase 8-4-4-4-12, on the raw bytes (no regex).

    A 36-byte value is canonical when exactly four of its bytes are not lowercase hex digits
    (a per-row sum over one byte per byte: little memory, so few page faults in a fresh
    process) and those are dashes at 8, 13, 18 and 23.
    """
    count = len(chunk)
    if count == 0 or chunk.type != pa.string() or chunk.buffers()[2] is None:
        return np.zeros(count, dtype=bool)
    _, offsets_buffer, data_buffer = chunk.buffers()
    offsets = np.frombuffer(offsets_buffer, dtype=np.int32, count=count + 1,
                            offset=4 * chunk.offset)
    ok = np.diff(offsets) == 36
    if chunk.null_count:
        ok &= chunk.is_valid().to_numpy(zero_copy_only=False)
    rows = np.flatnonzero(ok)
    if not len(rows):
        return ok
    data = np.frombuffer(data_buffer, dtype=np.uint8)[offsets[0]:offsets[-1]]
    marks = np.empty(len(data) + 1, dtype=np.uint8)  # one spare byte: every bound in range
    np.take(_NOT_HEX_BYTE, data, out=marks[:-1])
    marks[-1] = 0
    start = (offsets[rows] - offsets[0]).astype(np.int64)
    bounds = np.empty(2 * len(rows), dtype=np.int64)
    bounds[0::2], bounds[1::2] = start, start + 36
    good = np.add.reduceat(marks, bounds)[0::2] == 4  # the sums over [start, start + 36)
    for dash in (8, 13, 18, 23):
        good &= data[start + dash] == ord("-")
    ok[rows] = good
    return ok


def _uuid_piece(raw: pa.Array) -> tuple[pa.Array, pa.Array, pa.Array]:
    """(canonical value or null, missing flag, trimmed text) for one piece."""
    trimmed = _trim(raw)
    lowered = pc.ascii_lower(trimmed)
    accepted = pc.match_substring_regex(lowered, _ACCEPTED_RE)
    canonical = pc.match_substring_regex(lowered, _CANONICAL_RE)
    if pc.all(pc.equal(canonical, accepted)).as_py() is not False:
        value = pc.if_else(accepted, lowered, _NULL_STR)  # nothing needs rewriting
    else:
        rewritten = pc.replace_substring_regex(lowered, _REWRITE_RE, _REWRITE_TO)
        value = pc.if_else(accepted, rewritten, _NULL_STR)
    return value, _is_missing(trimmed), trimmed


def _is_canonical(chunk: pa.Array) -> bool:
    """Whether every value is already lowercase 8-4-4-4-12, checked on the raw bytes.

    A regex costs ~0.13 s per million values; this byte check costs a few milliseconds, which
    is what keeps a clean million-row file within budget.
    """
    count = len(chunk)
    if count == 0:
        return True
    if chunk.null_count or chunk.type != pa.string():
        return False
    lengths = pc.min_max(pc.binary_length(chunk))
    if lengths["min"].as_py() != 36 or lengths["max"].as_py() != 36:
        return False
    _, offsets, values = chunk.buffers()
    (start,) = struct.unpack_from("=i", offsets, 4 * chunk.offset)
    data = bytes(memoryview(values)[start : start + 36 * count])
    if data.translate(None, b"0123456789abcdef-") or data.count(b"-") != 4 * count:
        return False
    dashes = b"-" * count
    return all(data[pos::36] == dashes for pos in (8, 13, 18, 23))


def _state_field(raw: pa.ChunkedArray) -> _Field:
    trimmed = _trim(raw)
    lowered = pc.ascii_lower(trimmed)
    words = pa.array(TRUE_WORDS + FALSE_WORDS, pa.string())
    index = pc.index_in(lowered, value_set=words)
    value = pc.less(index, len(TRUE_WORDS))  # null where the word is unknown
    return _Field("do_notify_sms", value, _is_missing(trimmed), trimmed)


def _target_field(raw: pa.ChunkedArray, fill: str | None) -> _Field:
    trimmed = _trim(raw)
    missing = _is_missing(trimmed)
    lowered = pc.ascii_lower(trimmed)
    if fill is not None:
        lowered = pc.if_else(missing, pa.scalar(fill, pa.string()), lowered)
        missing = None  # every blank target was filled
    known = pc.is_in(lowered, value_set=pa.array(TARGETS, pa.string()))
    value = pc.if_else(known, lowered, _NULL_STR)
    return _Field("update_target", value, missing, trimmed)


def _constant_field(name: str, value: pa.Scalar, n: int) -> _Field:
    column = pa.chunked_array([pa.repeat(value, n)], value.type)
    text = pa.chunked_array([pa.nulls(n, pa.string())])
    return _Field(name, column, None, text)


def _tail(key: _Field) -> pa.ChunkedArray:
    """Last four characters of the canonical key, else of the trimmed raw text; null if missing."""
    source = pc.coalesce(key.value, key.trimmed)
    tail = pc.utf8_slice_codeunits(source, start=-4)
    if key.missing is None:
        return tail
    return pc.if_else(key.missing, _NULL_STR, tail)


def _errors(n: int, parts: tuple[_Field, ...]) -> tuple[pa.ChunkedArray, pa.ChunkedArray]:
    """error_code and error_message for every row, computed only on the rows that are bad."""
    bad = pc.or_(pc.is_null(parts[0].value), pc.is_null(parts[1].value))
    for part in parts[2:]:
        bad = pc.or_(bad, pc.is_null(part.value))
    empty = pa.chunked_array([pa.nulls(n, pa.string())])
    if not pc.any(bad).as_py():
        return empty, empty
    rows = pc.indices_nonzero(bad)
    codes, messages = [], []
    for part in parts:
        value = _flat(part.value.take(rows))
        missing = (
            pa.repeat(pa.scalar(False), len(rows)) if part.missing is None
            else _flat(part.missing.take(rows))
        )
        invalid = pc.and_(pc.is_null(value), pc.invert(missing))
        codes.append(_code(part.name, missing, invalid))
        messages.append(_message(part.name, missing, invalid, _flat(part.trimmed.take(rows))))
    code = pc.coalesce(*codes)
    message = pc.binary_join_element_wise(*messages, "; ", null_handling="skip")
    mask = _flat(bad)
    return _scatter(n, mask, code), _scatter(n, mask, message)


def _flat(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    if isinstance(values, pa.ChunkedArray):
        return values.combine_chunks()
    return values


def _scatter(n: int, mask: pa.Array, values: pa.Array) -> pa.ChunkedArray:
    """A column of n nulls with `values` placed, in order, where `mask` is true."""
    return pa.chunked_array([pc.replace_with_mask(pa.nulls(n, pa.string()), mask, values)])


def _code(name: str, missing: pa.Array, invalid: pa.Array) -> pa.Array:
    return pc.if_else(
        missing,
        pa.scalar(f"missing_{name}"),
        pc.if_else(invalid, pa.scalar(f"invalid_{name}"), _NULL_STR),
    )


def _message(name: str, missing: pa.Array, invalid: pa.Array, trimmed: pa.Array) -> pa.Array:
    if name == "review_key":
        shown = pc.binary_join_element_wise(
            "review_key is not a UUID (ends '…", pc.utf8_slice_codeunits(trimmed, start=-4),
            "')", "",
        )
    else:
        ending = {
            "job_id": "' is not a UUID",
            "do_notify_sms": f"' is not {_STATE_WORDS_HELP}",
            "update_target": "' is not job or client",
        }[name]
        shown = pc.binary_join_element_wise(f"{name} '", _quoted(trimmed), ending, "")
    return pc.if_else(
        missing,
        pa.scalar(f"{name} is missing"),
        pc.if_else(invalid, shown, _NULL_STR),
    )


def _quoted(values: pa.Array) -> pa.Array:
    """A value fit for a one-line message: control characters blanked, long values cut, and
    anything that looks like a UUID (possibly a review key in the wrong column) reduced to its
    last four characters."""
    one_line = pc.replace_substring_regex(values, r"[\x00-\x1f\x7f]", " ")
    long = pc.greater(pc.utf8_length(one_line), _MAX_QUOTED)
    cut = pc.binary_join_element_wise(
        pc.utf8_slice_codeunits(one_line, start=0, stop=_MAX_QUOTED - 1), "…", ""
    )
    shown = pc.if_else(long, cut, one_line)
    secret = pc.match_substring_regex(values, _SECRET_LOOKING_RE)
    masked = pc.binary_join_element_wise("…", pc.utf8_slice_codeunits(values, start=-4), "")
    return pc.if_else(secret, masked, shown)


__all__ = ["FALSE_WORDS", "OUTPUT_COLUMNS", "TRUE_WORDS", "WHITESPACE", "normalize"]
