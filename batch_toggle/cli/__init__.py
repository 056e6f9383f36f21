"""The click command line: parse options, build the config, call the library, map errors to exits.

This package is the only place that imports click. Every message to a person goes to stderr;
stdout stays free for pipes.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from batch_toggle import __version__
from batch_toggle.config import (
    DEFAULT_BASE_URL, ON_CONFLICT_CHOICES, LoadOptions, PlanOptions, SendOptions,
    parse_duration, parse_rate,
)
from batch_toggle.errors import BatchToggleError, ExitCode, UsageError
from batch_toggle.jobs import Hooks, JobConfig
from batch_toggle.vocab import FIELDS

from .secrets import read_api_key

EPILOG_VALIDATE = """\b
Examples:
  batch-toggle validate optouts.csv
  batch-toggle validate export.xlsx --map review_key="Tracking Key" --set-state false
"""


def _fail(message: str, code: ExitCode) -> None:
    click.echo(f"batch-toggle: error: {message}", err=True)
    sys.exit(int(code))


def _parse_map(values: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    pairs = []
    for value in values:
        fld, sep, column = value.partition("=")
        fld = fld.strip().lower()
        if not sep or not column or fld not in FIELDS:
            raise UsageError(f"--map {value!r}: expected FIELD=COLUMN with FIELD one of "
                             f"{', '.join(FIELDS)}")
        pairs.append((fld, column))
    return tuple(pairs)


def input_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Options shared by every command that reads input files."""
    decorators = [
        click.argument("inputs", nargs=-1, required=True, metavar="INPUT..."),
        click.option("--report", "report", type=click.Path(dir_okay=False, path_type=Path),
                     help="Report path; .csv, .parquet or .jsonl. Default: "
                          "reports/<first input stem>-<UTC time>.csv"),
        click.option("--map", "maps", multiple=True, metavar="FIELD=COLUMN",
                     help="Use COLUMN for FIELD (job_id, review_key, do_notify_sms, "
                          "update_target). Repeatable; wins over name matching."),
        click.option("--set-state", type=click.Choice(["true", "false"], case_sensitive=False),
                     help="Desired state for every row (fills or overrides the file's)."),
        click.option("--default-target", type=click.Choice(["job", "client"],
                     case_sensitive=False), help="Target for rows whose target is empty."),
        click.option("--on-conflict", type=click.Choice(ON_CONFLICT_CHOICES), default="last",
                     show_default=True,
                     help="Rows of one job and target asking for different states: keep the "
                          "last or first in file order, let the opt-out win, or reject all."),
        click.option("--max-invalid", type=click.FloatRange(0, 100), default=50.0,
                     show_default=True, metavar="PERCENT",
                     help="Refuse the file (exit 2) when more rows than this are invalid."),
        click.option("--skip-confirmed/--no-skip-confirmed", default=True, show_default=True,
                     help="Rows an earlier run confirmed in the desired state are `unchanged`, "
                          "without a request."),
        click.option("--allow-resubscribe", is_flag=True,
                     help="Allow turning SMS back on where an earlier run confirmed an opt-out."),
        click.option("--state", "state_path", type=click.Path(dir_okay=False, path_type=Path),
                     help="State store (SQLite). Default: "
                          "$XDG_STATE_HOME/batch-toggle/state.sqlite"),
        click.option("--rejects", type=click.Path(dir_okay=False, path_type=Path),
                     help="Also write the rows that need attention, unmasked, in the input's "
                          "own layout, ready to fix and re-run."),
        click.option("--encoding", metavar="NAME",
                     help="Force the input encoding (default: UTF-8, falling back to cp1252)."),
        click.option("--rate", default="2500/h", show_default=True, metavar="N/PERIOD",
                     help="Budget: at most N requests in any sliding window of PERIOD "
                          "(s, m, h, d or seconds like 10s)."),
        click.option("--max-rps", type=click.FloatRange(min=0.01), default=10.0,
                     show_default=True, help="Smoothing: at most this many requests a second."),
        click.option("-v", "--verbose", count=True, help="More detail on stderr."),
        click.option("--quiet", is_flag=True, help="Only errors on stderr."),
    ]
    for decorator in reversed(decorators):
        fn = decorator(fn)
    return fn


def build_config(command: str, opts: dict[str, Any], **extra: Any) -> JobConfig:
    """One frozen JobConfig from parsed options (no I/O here)."""
    state = opts.get("set_state")
    load = LoadOptions(
        column_map=_parse_map(opts.get("maps") or ()), encoding=opts.get("encoding"),
        set_state=None if state is None else state.lower() == "true",
        default_target=(opts.get("default_target") or None) and opts["default_target"].lower(),
    )
    plan = PlanOptions(
        on_conflict=opts.get("on_conflict") or "last",
        max_invalid=float(opts.get("max_invalid", 50.0)),
        skip_confirmed=opts.get("skip_confirmed", True),
        allow_resubscribe=bool(opts.get("allow_resubscribe")),
    )
    send = SendOptions(
        base_url=opts.get("base_url") or DEFAULT_BASE_URL,
        rate=parse_rate(opts.get("rate") or "2500/h"),
        max_rps=float(opts.get("max_rps") or 10.0),
        concurrency=int(opts.get("concurrency") or 4),
        timeout=float(opts.get("timeout") or 30.0),
        max_attempts=int(opts.get("max_attempts") or 5),
        daily_limit=opts.get("daily_limit"),
        max_requests=opts.get("max_requests"),
        stop_after=parse_duration(opts["stop_after"]) if opts.get("stop_after") else None,
        halt_after=int(opts.get("halt_after") or 50),
        canary=int(opts.get("canary") or 0),
        insecure=bool(opts.get("insecure")),
    )
    return JobConfig(
        inputs=tuple(opts["inputs"]), command=command, load=load, plan=plan, send=send,
        report_path=opts.get("report"), rejects_path=opts.get("rejects"),
        state_path=opts.get("state_path"), **extra,
    )


def make_hooks(opts: dict[str, Any]) -> Hooks:
    quiet = bool(opts.get("quiet"))

    def notice(message: str) -> None:
        if not quiet:
            click.echo(message, err=True)

    return Hooks(notice=notice)


def guarded(fn: Callable[[], int]) -> None:
    """Run a command body; turn our errors into one line and an exit code, never a traceback."""
    try:
        code = fn()
    except BatchToggleError as exc:
        _fail(str(exc), exc.exit_code)
    except KeyboardInterrupt:
        click.echo("batch-toggle: interrupted", err=True)
        sys.exit(int(ExitCode.INTERRUPTED))
    else:
        sys.exit(int(code))


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="batch-toggle")
def main() -> None:
    """Bring Logis SMS-notification preferences into agreement with a file.

    Reads CSV/TSV/Parquet/JSONL/XLSX files of job_id, review_key, do_notify_sms and
    update_target; validates and dedupes them; sends throttled toggles to Logis; and writes a
    report with one row per input row.
    """


@main.command(epilog=EPILOG_VALIDATE)
@input_options
def validate(**opts: Any) -> None:
    """Load, normalise, validate and dedupe INPUT...; report what would happen. No network."""
    from batch_toggle.jobs import validate as run_validate
    from batch_toggle.ledger import read_ledger

    def body() -> int:
        config = build_config("validate", opts)
        result = run_validate(config, make_hooks(opts), ledger=read_ledger(config))
        return int(result.exit_code)

    guarded(body)


__all__ = ["main", "read_api_key"]
