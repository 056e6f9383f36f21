"""Which input column holds which field: the one parser of `--map` (map= in the library).

The CLI, the library and the loader all read a column map through `parse_column_map`, so a
map means the same wherever it is given: the field may be spelled loosely (job-id, JobId), a
field mapped twice to different columns is refused, and the error names the option as its
caller knows it (`--map`, `map`, `BATCH_TOGGLE_MAP`). Free of pyarrow, so that building a
job's options loads nothing heavy.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from typing import TypeAlias

from batch_toggle.errors import UsageError
from batch_toggle.vocab import FIELDS

ColumnMap: TypeAlias = tuple[tuple[str, str], ...]
MapGiven: TypeAlias = (Mapping[str, str] | Iterable[str] | Iterable[tuple[str, str]] | str
                       | None)


def loose_name(name: str) -> str:
    """The form column names are compared in: case-folded, no white space, `-` or `_`."""
    return re.sub(r"[\s\-_]+", "", name.replace("\ufeff", "")).casefold()


FIELD_BY_LOOSE_NAME = {loose_name(f): f for f in FIELDS}


def parse_column_map(value: MapGiven, name: Callable[[str], str] = str) -> ColumnMap:
    """(field, column) pairs, fields by their exact names, from {"review_key": "Tracking
    Key"}, ["review_key=Tracking Key"] or [("review_key", "Tracking Key")]; UsageError for
    an entry without FIELD=COLUMN, an unknown field, or a field given two columns."""
    if not value:
        return ()
    if isinstance(value, str):
        value = [value]
    items = list(value.items()) if isinstance(value, Mapping) else list(value)
    result: dict[str, str] = {}
    for item in items:
        if isinstance(item, str):
            given, sep, column = item.partition("=")
        else:
            (given, column), sep = item, "="
        text = item if isinstance(item, str) else f"{given}={column}"
        field = FIELD_BY_LOOSE_NAME.get(loose_name(given))
        if field is None or not sep or not column:
            unknown = f" (unknown field {given.strip()!r})" if sep and column else ""
            raise UsageError(f"{name('map')} {text!r}: expected FIELD=COLUMN with FIELD one of "
                             f"{', '.join(FIELDS)}{unknown}")
        if field in result and result[field] != column:
            raise UsageError(f"{name('map')} {field} given twice ({result[field]!r}, "
                             f"{column!r})")
        result[field] = column
    return tuple(result.items())
