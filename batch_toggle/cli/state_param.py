"""--state's value: a SQLite file's path or a PostgreSQL URL (standard library only: parsing
it loads no database client, so --help stays light)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from batch_toggle.errors import UsageError
from batch_toggle.state.location import normalise

STATE_HELP = ("State store: a SQLite file, or postgresql://USER@HOST:PORT/DB for a store shared "
              "by a team (password from PGPASSWORD, ~/.pgpass or a service file, never the "
              "URL; needs pip install 'batch-toggle[postgres]'). Default: "
              "$XDG_STATE_HOME/batch-toggle/state.sqlite")


class StateLocationType(click.ParamType):
    """A path (kept as a Path) or a postgresql:// URL (kept as text, its `//` intact); a URL
    with a password in it is refused (exit 2)."""

    name = "PATH|URL"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> Path | str | None:
        if value is None or isinstance(value, Path):
            return value
        try:
            return normalise(str(value))
        except UsageError as exc:
            self.fail(str(exc), param, ctx)


STATE_LOCATION = StateLocationType()
