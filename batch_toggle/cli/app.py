"""The click command line: parse options, build the config, call the library, map errors to exits.

This package is the only place that imports click. Every message to a person goes to stderr;
stdout stays free for pipes.
"""

from __future__ import annotations

# isort: off
# First of all, before pyarrow loads: importing .secrets drops SSLKEYLOGFILE (see there).
from batch_toggle.cli.state_param import STATE_HELP, STATE_LOCATION, StateLocationType
from batch_toggle.cli import secrets as _secrets  # noqa: F401
# isort: on

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from batch_toggle.cli.config_file import (
    CONFIG_ENV,
    ENV_PREFIX,
    SECRET_KEYS,
    OptionSpec,
    check_environment,
    default_map,
    env_name,
    normalise_key,
)
from batch_toggle.cli.progress import ProgressBar
from batch_toggle.cli.secrets import read_api_key
from batch_toggle.cli.verbose import VerboseLog
from batch_toggle.config import (
    DEFAULT_BASE_URL,
    ON_CONFLICT_CHOICES,
    TRUST_CHOICES,
    JobConfig,
    cli_name,
)
from batch_toggle.errors import BatchToggleError, ExitCode, UsageError
from batch_toggle.events import EventLog, EventSink, Hooks, fan_out
from batch_toggle.jobs.options import OPTION_RANGES, job_config
from batch_toggle.stderr import say
from batch_toggle.version import __version__

EPILOG_VALIDATE = """\b
Examples:
  # (from the repository root, on the samples it ships)
  # this month's opt-out list: what would happen, and which rows to fix
  batch-toggle validate sample_data/optouts_2026_11.csv --rejects reports/fix-me.csv
  # another system's export, a workbook: its sheet and column names, everyone opted in
  batch-toggle validate sample_data/migration_export.xlsx --sheet Export \\
      --map job_id="Job Ref" --map review_key="Tracking Key" --map update_target="Level" \\
      --set-state true
  # with what earlier runs confirmed (predicts `unchanged`): name their state store
  batch-toggle validate sample_data/optouts_2026_11.csv --state reports/state.sqlite
"""


def _fail(message: str, code: ExitCode) -> None:
    say(f"batch-toggle: error: {message}")  # never raises: a closed stderr keeps the exit code
    sys.exit(int(code))


def _ranged(option: str, kind: type) -> click.ParamType:
    """The click type of a numeric option, from the ranges the library checks too (one table,
    job_options.OPTION_RANGES)."""
    low, high = OPTION_RANGES[option]
    top = None if high == float("inf") else high
    if kind is int:
        return click.IntRange(int(low), None if top is None else int(top))
    return click.FloatRange(low, top)


# The product contract lists --events among the common options: validate takes it too.
EVENTS_OPTION = click.option("--events", type=click.Path(dir_okay=False, path_type=Path),
                             help="Append one JSON line per event (plan, rows, pauses, finish).")


def input_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Options shared by every command that reads input files."""
    decorators = [
        click.argument("inputs", nargs=-1, required=True, metavar="INPUT..."),
        click.option("--report", "report", type=click.Path(dir_okay=False, path_type=Path),
                     help="Report path; .csv, .parquet or .jsonl. Default: "
                          "reports/<first input stem>-<UTC time>.csv; a --resume writes the "
                          "report of the run it continues, in place."),
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
        click.option("--max-invalid", type=_ranged("max_invalid", float), default=50.0,
                     show_default=True, metavar="PERCENT",
                     help="Refuse the file (exit 2) when more rows than this are invalid."),
        click.option("--skip-confirmed/--no-skip-confirmed", default=True, show_default=True,
                     help="Rows an earlier run confirmed in the desired state are `unchanged`, "
                          "without a request."),
        click.option("--allow-resubscribe", is_flag=True,
                     help="Allow turning SMS back on where an earlier run confirmed an opt-out."),
        click.option("--state", "state_path", type=STATE_LOCATION, help=STATE_HELP),
        click.option("--rejects", type=click.Path(dir_okay=False, path_type=Path),
                     help="Also write the rows that need attention, unmasked, in the input's "
                          "own layout, ready to fix and re-run (rows merely waiting for the "
                          "next slice of a resumable run are left out)."),
        click.option("--encoding", metavar="NAME",
                     help="Force the input encoding (default: UTF-8, falling back to cp1252)."),
        click.option("--sheet", metavar="NAME|INDEX",
                     help="The sheet of an .xlsx input to read: its name, or its number from "
                          "1. Default: the first sheet (said when there are several); the "
                          "summary records the sheet read."),
        click.option("--rate", default="2500/h", show_default=True, metavar="N/PERIOD",
                     help="Budget: at most N requests in any sliding window of PERIOD "
                          "(s, m, h, d or seconds like 10s)."),
        click.option("--max-rps", type=_ranged("max_rps", float), default=10.0,
                     show_default=True, help="Smoothing: at most this many requests a second."),
        click.option("-v", "--verbose", count=True,
                     help="-v: the run's notable moments on stderr, one timestamped line each "
                          "(plan, retries with attempt n/N and wait, 429 pauses, budget waits, "
                          "outages, stops, canary, finish). -vv: also one line per request's "
                          "outcome, on the row it was sent for (none for invalid, duplicate, "
                          "superseded or unchanged rows). Never a key; --quiet wins."),
        click.option("--quiet", is_flag=True, help="Only errors on stderr."),
        click.option("--html/--no-html", default=True, show_default=True,
                     help="Also write <report>.html: charts, timeline, the rows that need "
                          "attention (keys masked); self-contained, prints well to PDF."),
    ]
    for decorator in reversed(decorators):
        fn = decorator(fn)
    return fn


def connection_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """How a command reaches Logis: the URL, the key, the CAs it trusts, the proxy (run, audit,
    doctor)."""
    decorators = [
        click.option("--base-url", envvar="LOGIS_BASE_URL", default=DEFAULT_BASE_URL,
                     show_default=True, help="Logis base URL (env LOGIS_BASE_URL)."),
        click.option("--api-key-file", type=click.Path(dir_okay=False, path_type=Path),
                     help="Read the API key from this file (else env LOGIS_API_KEY; never argv, "
                          "a config file or a BATCH_TOGGLE_ variable)."),
        click.option("--trust", type=click.Choice(TRUST_CHOICES), default="system",
                     show_default=True,
                     help="Which CAs verify Logis' certificate: the operating system's trust "
                          "store (where IT installs a company CA) or certifi's bundle. "
                          "SSL_CERT_FILE/SSL_CERT_DIR, when set, are trusted too (with "
                          "certifi: instead). Verification is never switched off."),
        click.option("--ca-bundle", type=click.Path(path_type=Path), metavar="PATH",
                     help="Trust only the CAs in this PEM file (or hashed directory), e.g. your "
                          "organisation's CA behind a TLS-inspecting proxy."),
        click.option("--proxy", metavar="URL",
                     help="HTTP proxy to reach Logis through (default: HTTPS_PROXY/HTTP_PROXY; "
                          "NO_PROXY applies to both). No credentials here: put them in "
                          "HTTPS_PROXY or --proxy-auth-file."),
        click.option("--proxy-auth-file", type=click.Path(dir_okay=False, path_type=Path),
                     help="Read the proxy's credentials from this file (one line "
                          "USER:PASSWORD)."),
        click.option("--timeout", type=_ranged("timeout", float), default=30.0,
                     show_default=True, metavar="SECONDS", help="Per-request timeout."),
        click.option("--insecure", is_flag=True,
                     help="Allow a plain http:// base URL that is not loopback."),
    ]
    for decorator in reversed(decorators):
        fn = decorator(fn)
    return fn


def send_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Options of the commands that talk to Logis (run, audit)."""
    decorators = [
        connection_options,
        click.option("--concurrency", type=_ranged("concurrency", int), default=4,
                     show_default=True,
                     help="Requests in flight at once."),
        click.option("--max-attempts", type=_ranged("max_attempts", int), default=5,
                     show_default=True,
                     help="Attempts per row on 5xx, timeouts and network errors."),
        click.option("--resume", is_flag=True,
                     help="Continue the latest unfinished run with the same inputs and plan "
                          "options (starts a new run when there is none)."),
        click.option("--retry-failed", is_flag=True,
                     help="With --resume: also re-send rows that failed with retryable true."),
        click.option("--max-requests", type=_ranged("max_requests", int), metavar="N",
                     help="Stop cleanly after N requests (exit 4, resumable)."),
        click.option("--stop-after", metavar="DURATION",
                     help="Stop cleanly after this long, e.g. 55m (exit 4, resumable)."),
        click.option("--canary", type=_ranged("canary", int), default=0, metavar="N",
                     help="Send N units first; go on only if none failed permanently."),
        click.option("--halt-after", type=_ranged("halt_after", int), default=50, show_default=True,
                     metavar="N", help="Halt after N consecutive rows fail with the same "
                                       "permanent error (exit 3)."),
        click.option("--daily-limit", type=_ranged("daily_limit", int), metavar="N",
                     help="Also never exceed N requests in any 24 h."),
        click.option("--sandbox", is_flag=True,
                     help="Run against the in-process Logis simulator, seeded with the world "
                          "shipped in the package (no network, no key needed; for your own, "
                          "serve `batch-toggle sandbox --seed FILE`)."),
        EVENTS_OPTION,
        click.option("--progress/--no-progress", default=None,
                     help="Progress bar on stderr (default: on when stderr is a terminal)."),
    ]
    for decorator in reversed(decorators):
        fn = decorator(fn)
    return fn


def build_config(command: str, opts: dict[str, Any], **extra: Any) -> JobConfig:
    """One frozen JobConfig from parsed options (no I/O here): job_options builds it, as for
    the library; click's names for two options differ from the library's."""
    check_proxy_option(opts.get("proxy"))
    options = {**opts, "map": opts.get("maps"), "state": opts.get("state_path")}
    return job_config(command, opts["inputs"], options, name=_source_name, **extra)


def check_proxy_option(proxy: str | None) -> None:
    """Proxy credentials never come from argv (they would show in `ps` and shell history) nor
    from a config file (it gets copied): only from the environment or --proxy-auth-file. The
    message never repeats them."""
    from batch_toggle.send.proxies import has_credentials, redact

    if not proxy or not has_credentials(proxy):
        return
    ctx = click.get_current_context(silent=True)
    source = ctx.get_parameter_source("proxy") if ctx is not None else None
    if source is click.core.ParameterSource.ENVIRONMENT:
        return
    where = ("a config file" if source is click.core.ParameterSource.DEFAULT_MAP
             else "the command line")
    raise UsageError(f"--proxy {redact(proxy)!r}: proxy credentials are never taken from "
                     f"{where}; put them in HTTPS_PROXY (http://USER:PASSWORD@host:port) or "
                     "in --proxy-auth-file")


def _source_name(option: str) -> str:
    """An option as the user gave it, for an error about its value: the flag, or the
    BATCH_TOGGLE_ variable or config-file key it came from (who typed no --rate should not
    be told about one)."""
    ctx = click.get_current_context(silent=True)
    source = ctx.get_parameter_source(option) if ctx is not None else None
    if source is click.core.ParameterSource.ENVIRONMENT:
        return env_name(option)
    if source is click.core.ParameterSource.DEFAULT_MAP:
        return f"{option.replace('_', '-')} (config file)"
    return cli_name(option)


def make_hooks(opts: dict[str, Any], progress: Callable[[dict[str, Any]], None] | None = None,
               events: EventSink | None = None) -> Hooks:
    quiet = bool(opts.get("quiet"))
    # Notices go through the bar's writer, which prints above a bar and never raises on a
    # closed stderr; without a bar (validate), through a bar that is never drawn.
    above_bar = getattr(progress, "write", None) or ProgressBar(False).write

    def notice(message: str) -> None:
        if not quiet:
            above_bar(message)

    # -v/-vv render the same events as --events, as lines through `notice` (above the bar,
    # silent under --quiet: --quiet wins).
    level = 0 if quiet else int(opts.get("verbose") or 0)
    verbose = VerboseLog(level, notice) if level > 0 else None
    return Hooks(notice=notice, progress=progress or (lambda _s: None),
                 event=fan_out(events, verbose), color=use_color(sys.stderr))


def use_color(stream: Any) -> bool:
    """ANSI colour only for a person at a terminal: never into a pipe, a file or a cron mail,
    never when NO_COLOR is set to anything (https://no-color.org), never on a dumb terminal."""
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    return _is_tty(stream)


def _is_tty(stream: Any) -> bool:
    """A terminal? Never for a stream that is gone (`2>&-`: Python sets sys.stderr to None)."""
    isatty = getattr(stream, "isatty", None)
    return bool(isatty is not None and isatty())


@contextmanager
def session_hooks(opts: dict[str, Any]) -> Iterator[Hooks]:
    """Hooks for a command that talks to Logis: the progress bar and the --events file, both
    closed however the command ends."""
    bar = ProgressBar(_want_progress(opts))
    # A failed --events write is said above the bar, like every other notice.
    events = EventLog(opts["events"], warn=bar.write) if opts.get("events") else None
    try:
        yield make_hooks(opts, bar, events)
    finally:
        bar.close()
        if events is not None:
            events.close()


def _want_progress(opts: dict[str, Any]) -> bool:
    if opts.get("quiet"):
        return False
    if opts.get("progress") is not None:
        return bool(opts["progress"])
    return _is_tty(sys.stderr)


def guarded(fn: Callable[[], int]) -> None:
    """Run a command body; turn our errors into one line and an exit code, never a traceback."""
    try:
        code = fn()
    except BatchToggleError as exc:
        _fail(str(exc), exc.exit_code)
    except KeyboardInterrupt:
        say("batch-toggle: interrupted")
        sys.exit(int(ExitCode.INTERRUPTED))
    else:
        sys.exit(int(code))


EPILOG_MAIN = """\b
The three jobs, on the samples the repository ships (run from its root; rehearse run and
audit with --sandbox first: no key, no network):
  # 1. the monthly compliance opt-out import
  batch-toggle validate sample_data/optouts_2026_11.csv
  batch-toggle run sample_data/optouts_2026_11.csv --canary 20 --rejects reports/fix-me.csv
  # 2. a migration from another system (its column names; everyone opted in)
  batch-toggle run sample_data/migration_export.csv --map job_id="Job Ref" \\
      --map review_key="Tracking Key" --map update_target="Level" --set-state true --dry-run
  # 3. a dry-run audit: what a run would do, and what Logis already shows
  batch-toggle run sample_data/optouts_2026_11.csv --dry-run
  batch-toggle audit sample_data/optouts_2026_11.csv

\b
Before the first real run (behind a company proxy or CA too): check the path, no budget spent
  batch-toggle doctor

\b
Repeated options in a file, flags still win:
  batch-toggle --config sample_data/batch-toggle.toml run sample_data/optouts_2026_11.csv

\b
Exit codes: 0 ok; 1 some rows need attention; 2 usage or input error, nothing sent;
3 aborted by the API, by a connection that cannot work (TLS, DNS, proxy) or halted;
4 stopped early, resumable; 130 interrupted, resumable.

\b
Guides (docs/ in the repository):
  monthly-optout.md  the monthly compliance opt-out import, canary, config file, cron
  migration.md       a migration from another system: --map, --set-state, resubscribes
  dry-run-audit.md   validate, run --dry-run and audit: what would happen, what Logis shows
  audit.md           the audit command: reads, samples, what it cannot tell
  cron.md            long runs in cron slices: one line, one report, exit codes
  team.md            a team's shared store on PostgreSQL: one budget, one ledger, migrate
  library.md         batch-toggle from Python: Airflow, notebooks, DataFrames
  report.md          reading the report, its summary and HTML page; statuses, error codes
  events.md          --events: every event kind and its fields, for cron and CI
  sandbox.md         rehearsing against the local Logis simulator
  architecture.md    how the code is laid out: one row from the command line to the report
"""

# `sandbox` is a test tool with options of its own (its --daily-limit is the simulated API's):
# neither the config file nor BATCH_TOGGLE_ variables reach it.
NOT_CONFIGURED = frozenset({"sandbox", "state"})


class LazyGroup(click.Group):
    """A group whose commands in other modules are imported only when used.

    `validate` must not pay for httpx, starlette and the sandbox: on a 1M-row file every tenth
    of a second counts, and a cron line should start fast.
    """

    lazy: dict[str, str] = {
        "audit": "batch_toggle.cli.audit_cmd:audit_command",
        "doctor": "batch_toggle.cli.doctor_cmd:doctor_command",
        "sandbox": "batch_toggle.cli.sandbox_cmd:sandbox_command",
        "state": "batch_toggle.cli.state_cmd:state_group",
        "status": "batch_toggle.cli.status_cmd:status_command",
    }

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self.lazy and name not in self.commands:
            import importlib

            module, attr = self.lazy[name].split(":")
            self.add_command(getattr(importlib.import_module(module), attr), name)
        return super().get_command(ctx, name)

    def all_commands(self) -> dict[str, click.Command]:
        """Every command, lazy ones loaded (for help tests and docs)."""
        ctx = click.Context(self)
        return {n: c for n in self.list_commands(ctx) if (c := self.get_command(ctx, n))}


@click.group(cls=LazyGroup,
             context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
             epilog=EPILOG_MAIN)
@click.version_option(__version__, prog_name="batch-toggle")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
              envvar=CONFIG_ENV, metavar="FILE",
              help="TOML file of options repeated every run (keys as the long option names, "
                   "a [run]/[validate]/[audit] table per command; env BATCH_TOGGLE_CONFIG). "
                   "Precedence: flags > BATCH_TOGGLE_<OPTION> env > file > defaults. Never "
                   "holds the API key.")
@click.pass_context
def main(ctx: click.Context, config_path: Path | None) -> None:
    """Bring Logis SMS-notification preferences into agreement with a file.

    Reads CSV/TSV/Parquet/JSONL/XLSX files of job_id, review_key, do_notify_sms and
    update_target; validates and dedupes them; sends throttled toggles to Logis (at most
    --rate requests in any sliding window); and writes a report with one row per input row,
    its summary JSON and an HTML page beside it.

    The API key comes from env LOGIS_API_KEY or --api-key-file: never from the command line, a
    config file or a BATCH_TOGGLE_ variable.
    """
    try:
        if config_path is not None or any(n.startswith(ENV_PREFIX) for n in os.environ):
            # What a file or a variable may set is every command's options, so the lazy
            # commands are loaded (only then: a plain `validate` still skips httpx).
            for name in main.list_commands(ctx):
                if name not in NOT_CONFIGURED:
                    main.get_command(ctx, name)
        specs = option_specs(main)
        apply_env_names(main, specs)
        for warning in check_environment(os.environ, specs):
            click.echo(warning, err=True)
        if config_path is not None:
            ctx.default_map = default_map(config_path, specs)
    except BatchToggleError as exc:
        _fail(str(exc), exc.exit_code)


def _long_name(param: click.Option) -> str | None:
    longs = [o for o in param.opts if o.startswith("--")]
    return normalise_key(longs[0][2:]) if longs else None


def option_specs(group: click.Group) -> dict[str, dict[str, OptionSpec]]:
    """What --config and BATCH_TOGGLE_ may set: every option of every command (commands added
    later included), keyed by its long name; never the API key, never `sandbox`."""
    specs: dict[str, dict[str, OptionSpec]] = {}
    for name, command in group.commands.items():
        if name in NOT_CONFIGURED:
            continue
        options = {}
        for param in command.params:
            if not isinstance(param, click.Option):
                continue
            key = _long_name(param)
            if key is None or param.name is None or key in SECRET_KEYS or key == "help":
                continue
            options[key] = OptionSpec(key, param.name, multiple=param.multiple,
                                      is_path=isinstance(param.type,
                                                         click.Path | StateLocationType),
                                      is_flag=param.is_flag and not param.count)
        specs[name] = options
    return specs


def apply_env_names(group: click.Group, specs: dict[str, dict[str, OptionSpec]]) -> None:
    """Give each configurable option its BATCH_TOGGLE_<NAME> variable (idempotent; an
    option's own variable, such as LOGIS_BASE_URL, comes first). click then resolves flag >
    env > default_map > default by itself."""
    for name, options in specs.items():
        for param in group.commands[name].params:
            key = _long_name(param) if isinstance(param, click.Option) else None
            spec = options.get(key or "")
            if spec is None or spec.multiple:
                continue
            env = env_name(spec.key)
            current = param.envvar
            if current is None:
                param.envvar = env
            elif isinstance(current, str) and current != env:
                param.envvar = [current, env]
            elif isinstance(current, list | tuple) and env not in current:
                param.envvar = [*current, env]


@main.command(epilog=EPILOG_VALIDATE)
@input_options
@EVENTS_OPTION
@click.option("--progress/--no-progress", default=None,
              help="Accepted as by run and audit, so that a script can pass it to every "
                   "command; validate sends nothing and shows no progress bar.")
def validate(**opts: Any) -> None:
    """Load, normalise, validate and dedupe INPUT...; report what would happen. No network."""
    from batch_toggle.jobs.pipeline import validate as run_validate
    from batch_toggle.state.ledger import read_ledger

    def body() -> int:
        config = build_config("validate", opts)
        events = EventLog(opts["events"]) if opts.get("events") else None
        try:
            result = run_validate(config, make_hooks(opts, events=events),
                                  ledger=read_ledger(config))
        finally:
            if events is not None:
                events.close()
        return int(result.exit_code)

    guarded(body)


EPILOG_RUN = """\b
Examples:
  # (from the repository root, on the samples it ships; rehearse with --sandbox first)
  # the monthly compliance opt-out import: 20 units first, the rest only if none of them
  # failed permanently; the opt-out wins where a client asked both ways
  batch-toggle run sample_data/optouts_2026_11.csv --canary 20 --on-conflict opt-out-wins \\
      --rejects reports/optouts-fix-me.csv

\b
  # the same from cron (crontab -e), every hour until done: one line starts, continues and
  # finishes the job (exit 4 = stopped early, resumable: the next hour resumes it); the
  # config file names the state store and --api-key-file; cron's PATH lacks batch-toggle
  15 * * * * cd /srv/optouts && /srv/optouts/.venv/bin/batch-toggle --config batch-toggle.toml run optouts_2026_11.csv --resume --stop-after 55m

\b
  # a migration from another system: its column names, everyone opted in, rehearsed first.
  # A row that would turn SMS back on where an earlier run confirmed an opt-out is
  # `conflict` (resubscribe_blocked): add --allow-resubscribe only if that is intended.
  batch-toggle run sample_data/migration_export.csv --map job_id="Job Ref" \\
      --map review_key="Tracking Key" --map update_target="Level" --set-state true --dry-run

\b
  # a dry-run audit: the plan and report, statuses dry_run, nothing sent
  batch-toggle run sample_data/optouts_2026_11.csv --dry-run
  # rehearse against the built-in simulator (no key, no network)
  batch-toggle run sample_data/optouts_2026_11.csv --sandbox
"""  # noqa: E501 - a crontab line cannot be continued


@main.command(epilog=EPILOG_RUN)
@input_options
@send_options
@click.option("--dry-run", is_flag=True,
              help="Plan and report only (statuses dry_run); no network, no key needed.")
def run(**opts: Any) -> None:
    """Plan, send the toggles to Logis, and write the report (one row per input row)."""
    from batch_toggle.jobs.run import run as run_live
    from batch_toggle.state.ledger import read_ledger

    def body() -> int:
        key = read_api_key(opts.get("api_key_file"), lambda m: click.echo(m, err=True))
        config = build_config("run", opts, dry_run=bool(opts.get("dry_run")),
                              sandbox=bool(opts.get("sandbox")), resume=bool(opts.get("resume")),
                              retry_failed=bool(opts.get("retry_failed")), api_key=key)
        with session_hooks(opts) as hooks:
            if config.dry_run:
                from batch_toggle.jobs.pipeline import validate as run_validate
                result = run_validate(config, hooks, ledger=read_ledger(config))
            else:
                result = run_live(config, hooks)
        return int(result.exit_code)

    guarded(body)


__all__ = ["main", "read_api_key"]
