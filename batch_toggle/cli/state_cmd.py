"""`batch-toggle state ...`: the state store itself. `state migrate` copies one operator's
SQLite store into a team's PostgreSQL store. The work is batch_toggle.state.migrate."""

from __future__ import annotations

from pathlib import Path

import click

from batch_toggle.cli.state_param import STATE_LOCATION

EPILOG_MIGRATE = """\b
Examples:
  # start a team's shared store from one operator's history (password: PGPASSWORD,
  # ~/.pgpass or a service file, never the URL)
  batch-toggle state migrate --from ~/.local/state/batch-toggle/state.sqlite \\
      --to postgresql://batch_toggle@db.internal:5432/batch_toggle

\b
Exit codes: 0 copied and verified (again: nothing added); 2 usage error, a store that cannot
be opened, a target with another store's history, or counts that fall short.
"""


@click.group("state")
def state_group() -> None:
    """The state store itself (see `batch-toggle state migrate --help`)."""


@state_group.command("migrate", epilog=EPILOG_MIGRATE)
@click.option("--from", "source", type=STATE_LOCATION, required=True, metavar="PATH",
              help="The SQLite state store to copy from (only read).")
@click.option("--to", "target", type=STATE_LOCATION, required=True,
              metavar="postgresql://USER@HOST:PORT/DB",
              help="The PostgreSQL store to copy into (created when new; needs "
                   "pip install 'batch-toggle[postgres]').")
def migrate_command(source: Path | str, target: Path | str) -> None:
    """Copy a SQLite store's runs, outcomes, ledger and send log into a PostgreSQL store.

    Idempotent (run it again: nothing is added) and verified by counts: for each kind of
    row, how many of the source's the target holds."""
    from batch_toggle.cli.app import guarded
    from batch_toggle.state.migrate import migrate

    def body() -> int:
        done = migrate(source, target)
        click.echo(f"state migrate: {done.source} -> {done.target}")
        for kind, count in done.source_counts.items():
            click.echo(f"  {kind:<10} {count:>9,} copied, {done.target_counts[kind]:,} of "
                       "them in the target")
        return 0

    guarded(body)
