"""`batch-toggle doctor`: check the whole path to Logis (URL, DNS, TCP, proxy, TLS, the API, the
key's presence, the state store) without spending budget. The work is batch_toggle.jobs.doctor."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import click

from batch_toggle.cli.app import build_config, connection_options, guarded
from batch_toggle.cli.secrets import ENV_KEY, read_api_key
from batch_toggle.cli.state_param import STATE_HELP, STATE_LOCATION
from batch_toggle.errors import ExitCode

EPILOG_DOCTOR = """\b
Examples:
  # before the first real run (or when one stopped with exit 3)
  batch-toggle doctor
  # behind a company proxy that re-signs TLS with its own CA (give the CA's PEM file):
  #   HTTPS_PROXY=http://proxy.corp:3128 batch-toggle doctor --ca-bundle corp-ca.pem
  # for a script: one JSON document on stdout
  batch-toggle doctor --json

\b
Exit codes: 0 every check passed; 3 a check failed (a run would stop the same way);
2 usage error.
"""


@click.command("doctor", epilog=EPILOG_DOCTOR)
@connection_options
@click.option("--state", "state_path", type=STATE_LOCATION,
              help=f"{STATE_HELP}. Looked at read-only.")
@click.option("--rate", default="2500/h", show_default=True, metavar="N/PERIOD",
              help="The budget, to say how much of it the store has used in the last window.")
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout instead.")
def doctor_command(as_json: bool, **opts: Any) -> None:
    """Check everything between this machine and Logis, without spending budget.

    One line per check, ✓ or ✗ with the fix: the base URL; DNS; the TCP connection or the
    proxy's tunnel; the TLS handshake (protocol, the certificate's issuer, names and expiry,
    which trust accepted it); that the host answers like the Logis API (a request without a
    key must get 401, which costs no budget); that an API key is set (never its value); the
    state store's path, lock and budget used. Exit 0 only when every check passes.
    """
    from batch_toggle.jobs.doctor import DoctorInputs, diagnose, render

    def body() -> int:
        key_source = _key_source(opts.get("api_key_file"))
        read_api_key(opts.get("api_key_file"), lambda m: click.echo(m, err=True))
        config = build_config("doctor", {**opts, "inputs": ()})
        report = diagnose(DoctorInputs(config.send, key_source, config.proxy_auth,
                                       config.state_path))
        if as_json:
            click.echo(json.dumps(report.as_dict(), indent=2))
        else:
            click.echo(render(report, ascii_only=not _can_print("✓✗–")))
        return int(ExitCode.OK if report.ok else ExitCode.ABORTED)

    guarded(body)


def _key_source(key_file: Path | None) -> str | None:
    """Where a run would take the key from (read before the key is dropped from the env)."""
    if key_file is not None:
        return f"--api-key-file {key_file}"
    return ENV_KEY if (os.environ.get(ENV_KEY) or "").strip() else None


def _can_print(text: str) -> bool:
    encoding = getattr(sys.stdout, "encoding", None) or "ascii"
    try:
        text.encode(encoding)
    except (UnicodeEncodeError, LookupError):
        return False
    return True
