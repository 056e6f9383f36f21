"""Where a state store is: a SQLite file (a path, or `sqlite:PATH`) or a PostgreSQL database
(`postgresql://USER@HOST:PORT/DB`). Standard library only, so that the CLI can check a
location (and refuse a password in it) without loading a database client."""

from __future__ import annotations

import os
import urllib.parse
from pathlib import Path

from batch_toggle.errors import UsageError

POSTGRES_SCHEMES = ("postgresql", "postgres")
StateLocation = str | os.PathLike[str]  # what --state, BATCH_TOGGLE_STATE and `state =` give


def is_postgres_url(location: StateLocation | None) -> bool:
    """True for a `postgresql://` (or `postgres://`) URL."""
    if location is None or isinstance(location, Path):
        return False
    scheme = str(location).split(":", 1)[0].lower()
    return scheme in POSTGRES_SCHEMES and "://" in str(location)


def normalise(location: StateLocation | None) -> str | Path | None:
    """A URL stays text (a Path would fold its `//`); anything else becomes an expanded Path
    (`sqlite:` prefix removed). A URL with a password in it is refused (UsageError, exit 2):
    a password on the command line is visible to every user of the machine, as the API key
    would be; libpq reads it from PGPASSWORD, ~/.pgpass, PGPASSFILE or a service file."""
    if location is None:
        return None
    if is_postgres_url(location):
        text = str(location)
        check_no_password(text)
        return text
    text = os.fspath(location)
    if text.startswith("sqlite:"):
        text = text[len("sqlite:"):]
        if text.startswith("//"):
            text = text[2:]  # sqlite:///abs/path -> /abs/path
    return Path(text).expanduser()


def check_no_password(url: str) -> None:
    """UsageError when `url` carries a password (in its user part or its query)."""
    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qs(parts.query)
    if parts.password is not None or "password" in query:
        raise UsageError(
            f"state store {redact(url)}: a password in the URL is refused (it would show in the "
            "process list and in shell history); give it to libpq instead: PGPASSWORD, "
            "~/.pgpass, PGPASSFILE or a service file (PGSERVICE)")


def redact(url: str) -> str:
    """`url` fit to show: any password (user part or query) replaced by ***."""
    parts = urllib.parse.urlsplit(url)
    netloc = parts.netloc
    if parts.password is not None:
        user, _, host = netloc.rpartition("@")
        netloc = f"{user.split(':', 1)[0]}:***@{host}"
    query = "&".join(
        f"{name}=***" if name == "password" else f"{name}={urllib.parse.quote(value)}"
        for name, value in urllib.parse.parse_qsl(parts.query, keep_blank_values=True))
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def shown(where: str | Path) -> str:
    """A normalised location as messages show it: the path, or the URL without a password."""
    return str(where) if isinstance(where, Path) else redact(where)
