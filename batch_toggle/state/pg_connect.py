"""How the PostgreSQL store connects: one place for what every one of its sessions needs.

TCP keepalives: a host whose network goes silent (a VPN drop, a NAT that forgot the
connection) would otherwise wait in a read for the kernel's default, 15 minutes or more, while
holding a lock the budget's reservations need. With libpq's keepalives a dead path shows
within about a minute, as an error the store treats as an outage. Settings the URL gives
itself (`?keepalives_idle=...`) win.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

CONNECT_TIMEOUT = 10  # seconds
KEEPALIVES = {"keepalives": "1", "keepalives_idle": "30", "keepalives_interval": "10",
              "keepalives_count": "3"}


def connect(url: str, *, name: str, **settings: Any) -> psycopg.Connection[Any]:
    """A session in autocommit (transactions are explicit) named `name` in pg_stat_activity,
    with keepalives unless the URL sets its own; `settings` are more libpq parameters."""
    given = conninfo_to_dict(url)
    extra = {k: v for k, v in KEEPALIVES.items() if k not in given}
    return psycopg.connect(url, autocommit=True, application_name=name,
                           **{"connect_timeout": CONNECT_TIMEOUT, **extra, **settings})
