"""`batch-toggle audit`: the read-only check of which rows Logis already honours.

Thin: the options of `run` (minus the run-only ones), plus --sample/--seed; the work is
batch_toggle.jobs.audit.audit().
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from batch_toggle.cli.app import build_config, guarded, input_options, send_options, session_hooks
from batch_toggle.cli.secrets import read_api_key
from batch_toggle.config import DEFAULT_SEED, AuditOptions

# Options of `run` that mean nothing to a read-only audit: it neither resumes nor retries a
# run's failures, has no canary, and reads every unit (a confirmation in the ledger is not what
# Logis shows now).
RUN_ONLY = frozenset({"resume", "retry_failed", "canary", "skip_confirmed"})

EPILOG_AUDIT = """\b
Examples:
  # (from the repository root, on the samples it ships)
  # before an import: which rows does Logis already honour? (one read per distinct job)
  batch-toggle audit sample_data/optouts_2026_11.csv --report reports/before.csv
  # a big file on a tight budget: read 40 jobs drawn at random, estimate the share in sync
  batch-toggle audit sample_data/optouts_2026_11.csv --sample 40 --seed 7
  # rehearse against the built-in simulator (no key, no network)
  batch-toggle audit sample_data/optouts_2026_11.csv --sandbox
"""


def _without_run_only(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Drop the run-only options that the shared decorators attached."""
    params = getattr(fn, "__click_params__", [])
    fn.__click_params__ = [p for p in params if p.name not in RUN_ONLY]  # type: ignore[attr-defined]
    return fn


@click.command("audit", epilog=EPILOG_AUDIT)
@_without_run_only
@input_options
@send_options
@click.option("--sample", type=click.IntRange(min=1), metavar="N",
              help="Read only N distinct jobs, chosen at random (seeded), and estimate the share "
                   "of units in sync with a 95% confidence interval.")
@click.option("--seed", type=int, default=DEFAULT_SEED, show_default=True,
              help="Seed of the --sample draw: the same file, N and seed read the same jobs.")
def audit_command(**opts: Any) -> None:
    """Read-only: one GET track per distinct job; report which rows Logis already honours.

    Rows are `in_sync` (the job's or client's current do_notify_sms is the desired one) or
    `would_change`; invalid, duplicate, superseded and conflict rows as in `validate`. Never
    sends a toggle. The track endpoint does not check review keys: an audit cannot verify them.
    """
    from batch_toggle.jobs.audit import audit

    def body() -> int:
        key = read_api_key(opts.get("api_key_file"), lambda m: click.echo(m, err=True))
        config = build_config("audit", opts, sandbox=bool(opts.get("sandbox")), api_key=key)
        options = AuditOptions(sample=opts.get("sample"), seed=int(opts["seed"]))
        with session_hooks(opts) as hooks:
            result = audit(config, hooks, options=options)
        return int(result.exit_code)

    guarded(body)
