"""`batch-toggle status`: the runs a state store knows, their progress, what a resume would send."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from batch_toggle.cli.state_param import STATE_HELP, STATE_LOCATION

EPILOG_STATUS = """\b
Examples:
  batch-toggle status
  batch-toggle status --state /var/lib/batch-toggle/state.sqlite --json
"""


@click.command("status", epilog=EPILOG_STATUS)
@click.option("--state", "state_path", type=STATE_LOCATION, help=STATE_HELP)
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True,
              metavar="N", help="Show the latest N runs.")
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout instead.")
@click.option("--no-check-inputs", "check_inputs", flag_value=False, default=True,
              help="Do not re-hash the input files of resumable runs.")
def status_command(state_path: Path | str | None, limit: int, as_json: bool,
                   check_inputs: bool) -> None:
    """List the runs in the state store with their progress and what `run --resume` would
    send. Read-only: never sends, never locks, never creates the store."""
    from batch_toggle.cli.app import guarded
    from batch_toggle.jobs.status import render_status, store_status

    def body() -> int:
        status = store_status(state_path, limit=limit, check_inputs=check_inputs)
        out: Any = status.as_dict() if as_json else render_status(status)
        click.echo(json.dumps(out, indent=2, default=str) if as_json else out)
        return 0

    guarded(body)
