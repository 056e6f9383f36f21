"""`batch-toggle sandbox`: serve the local Logis simulator (docs/sandbox.md)."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import click

from batch_toggle.hosts import is_loopback
from batch_toggle.sandbox.config import (
    DEFAULT_API_KEY,
    DEFAULT_HOURLY_LIMIT,
    DEFAULT_PORT,
    DEFAULT_REQUEST_LOG,
    DEFAULT_WINDOW,
    RETRY_AFTER_STYLES,
    parse_latency,
)

if TYPE_CHECKING:
    from batch_toggle.sandbox import SandboxConfig
    from batch_toggle.sandbox.tls import TlsFiles


def _latency(ctx: click.Context, param: click.Parameter, value: str | None) -> object:
    if value is None:
        return 0.0
    try:
        latency = parse_latency(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    lo, hi = latency if isinstance(latency, tuple) else (latency, latency)
    if lo < 0 or hi < lo:
        raise click.BadParameter(f"{value!r}: expected milliseconds like 50 or 5-200")
    return latency


_rate = click.FloatRange(0.0, 1.0)

EPILOG_SANDBOX = """\b
Examples:
  # (from the repository root)
  # the shipped world on http://127.0.0.1:8765, key "sandbox-key", until Ctrl-C
  batch-toggle sandbox
  # rehearse a long run quickly: 50 requests a minute, slow replies, a few 5xx
  batch-toggle sandbox --hourly-limit 50 --window 60 --latency-ms 5-200 --error-rate 0.05
  # a world of your own, and a key Logis would refuse (403)
  batch-toggle sandbox --seed sample_data/sandbox_seed.csv --inactive-key old-key

\b
Then, in another terminal, point a run at it (its own state store: a rehearsal must not
spend the real key's recorded budget):
  LOGIS_BASE_URL=http://127.0.0.1:8765 LOGIS_API_KEY=sandbox-key batch-toggle run \\
      sample_data/optouts_2026_11.csv --state reports/rehearsal.sqlite
"""


@click.command("sandbox", epilog=EPILOG_SANDBOX)
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; a non-loopback one needs --public.")
@click.option("--port", type=click.IntRange(0, 65535), default=DEFAULT_PORT, show_default=True,
              help="Port to listen on (0: any free port).")
@click.option("--public", is_flag=True,
              help="Allow listening on a non-loopback address (the sandbox has no real auth).")
@click.option("--tls", is_flag=True,
              help="Serve HTTPS with a throwaway CA made now; prints the CA file to trust "
                   "(--ca-bundle FILE or SSL_CERT_FILE=FILE). Rehearses the real path: Logis "
                   "is HTTPS.")
@click.option("--tls-dir", type=click.Path(file_okay=False, path_type=Path), metavar="DIR",
              help="With --tls: write the CA, certificate and key here and keep them (default: "
                   "a temporary directory removed on exit).")
@click.option("--seed", "seed", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Seed CSV or Parquet (job_id, review_key, client_id, do_notify_sms, "
                   "client_do_notify_sms). Default: the seed shipped in the package (a copy of "
                   "sample_data/sandbox_seed.csv).")
@click.option("--api-key", "api_keys", multiple=True, metavar="KEY",
              help=f"An active key with Allow Public Track (repeatable; "
                   f"default {DEFAULT_API_KEY}).")
@click.option("--inactive-key", "inactive_keys", multiple=True, metavar="KEY",
              help="A key that exists but is inactive: 403 (repeatable).")
@click.option("--no-permission-key", "no_permission_keys", multiple=True, metavar="KEY",
              help="An active key without Allow Public Track: 403 (repeatable).")
@click.option("--hourly-limit", type=click.IntRange(min=1), default=DEFAULT_HOURLY_LIMIT,
              show_default=True, help="Requests per key in any window.")
@click.option("--window", type=click.FloatRange(min=0.001), default=DEFAULT_WINDOW,
              show_default=True, help="The budget window in seconds (shrink an hour for tests).")
@click.option("--daily-limit", type=click.IntRange(min=1), default=None,
              help="Requests per user (all keys) in any --daily-window. Default: none.")
@click.option("--daily-window", type=click.FloatRange(min=0.001), default=86400.0,
              show_default=True, help="The daily limit's window in seconds.")
@click.option("--retry-after", "retry_after_style", type=click.Choice(RETRY_AFTER_STYLES),
              default="seconds", show_default=True, help="How a 429 says when to come back.")
@click.option("--latency-ms", callback=_latency, metavar="MS|LO-HI",
              help="Added latency per API request: fixed (50) or uniform range (5-200).")
@click.option("--error-rate", type=_rate, default=0.0, show_default=True,
              help="Share of requests answered 500/502/503/504.")
@click.option("--error-html-share", type=_rate, default=0.3, show_default=True,
              help="Share of those errors with an HTML body (a proxy's page) instead of JSON.")
@click.option("--reset-rate", type=_rate, default=0.0, show_default=True,
              help="Share of requests whose connection is dropped without a response.")
@click.option("--timeout-rate", type=_rate, default=0.0, show_default=True,
              help="Share of requests applied but answered only after --timeout-delay.")
@click.option("--timeout-delay", "timeout_delay_s", type=click.FloatRange(min=0.0),
              default=120.0, show_default=True, help="Seconds a 'timeout' reply stalls.")
@click.option("--fault-seed", type=int, default=0, show_default=True,
              help="Seed of the fault generator (same seed and order, same faults).")
@click.option("--request-log", "request_log_limit", type=click.IntRange(min=1),
              default=DEFAULT_REQUEST_LOG, show_default=True, metavar="N",
              help="How many of the latest requests /_sandbox/requests keeps (its counters "
                   "cover them all).")
def sandbox_command(host: str, port: int, public: bool, tls: bool, tls_dir: Path | None,
                    seed: Path | None, api_keys: tuple[str, ...], latency_ms: object,
                    **options: object) -> None:
    """Serve a local simulator of the Logis API to rehearse a run against.

    It answers PUT /api/apikeys/toggle_sms_notifications and GET /api/apikeys/track like Logis
    (keys, permissions, budgets, Retry-After, the documented errors), can inject faults, and
    shows what it received at /_sandbox/requests and its state at /_sandbox/state. Serves until
    Ctrl-C; its state lives in memory only.
    """
    if not is_loopback(host) and not public:
        raise click.UsageError(
            f"--host {host} is not a loopback address: the sandbox accepts any client; "
            "add --public to listen on it anyway."
        )
    from batch_toggle.sandbox import SandboxConfig
    from batch_toggle.sandbox.config import default_seed_path

    seed_path = seed or default_seed_path()
    if not seed_path.is_file():
        raise click.UsageError(f"seed {seed_path} not found: give one with --seed FILE")
    try:
        config = SandboxConfig(seed=seed_path, api_keys=api_keys or (DEFAULT_API_KEY,),
                               latency_ms=latency_ms, **options)  # type: ignore[arg-type]
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    key = config.api_keys[0] if config.api_keys else None
    if tls_dir is not None:
        tls = True
    with _tls_files(tls, tls_dir, host) as files:

        def announce(base_url: str) -> None:
            click.echo(f"Logis sandbox listening on {base_url} (seed {seed_path})", err=True)
            if key:
                click.echo(f"  LOGIS_BASE_URL={base_url} LOGIS_API_KEY={key}", err=True)
            if files is not None:
                click.echo(f"  TLS: trust the throwaway CA {files.ca} (--ca-bundle {files.ca} "
                           f"or SSL_CERT_FILE={files.ca})", err=True)
            click.echo(f"  state: {base_url}/_sandbox/state  requests: "
                       f"{base_url}/_sandbox/requests", err=True)
            click.echo("Ctrl-C to stop.", err=True)

        _serve(config, host, port, announce, files)


@contextlib.contextmanager
def _tls_files(tls: bool, directory: Path | None, host: str) -> Iterator[TlsFiles | None]:
    """The throwaway CA and certificate (--tls) for the loopback names and `host`: in
    `directory` (kept), or in a private temporary directory removed when the sandbox stops."""
    if not tls:
        yield None
        return
    from batch_toggle.sandbox.tls import LOOPBACK_NAMES, throwaway_tls

    names = tuple(dict.fromkeys([*LOOPBACK_NAMES, host.strip("[]")]))
    if directory is not None:
        yield throwaway_tls(directory, names)
        return
    with tempfile.TemporaryDirectory(prefix="batch-toggle-sandbox-tls-") as tmp:
        yield throwaway_tls(Path(tmp), names)


def _serve(config: SandboxConfig, host: str, port: int, announce: Callable[[str], None],
           files: TlsFiles | None) -> None:
    from batch_toggle.sandbox import SandboxServerError, SeedError, run_server

    try:
        run_server(config, host, port, on_ready=announce, tls=files)
    except KeyboardInterrupt:
        click.echo("Sandbox stopped.", err=True)
    except SeedError as exc:
        raise click.UsageError(str(exc)) from None
    except SandboxServerError as exc:
        raise click.ClickException(str(exc)) from None
