"""batch-toggle: bring Logis SMS-notification preferences into agreement with a file.

The library face, for Airflow tasks and notebooks (docs/library.md):

    import batch_toggle

    result = batch_toggle.validate("optouts.csv", on_conflict="opt-out-wins")
    result = batch_toggle.run("optouts.csv", canary=20, api_key=key, state="state.sqlite")
    result = batch_toggle.audit("optouts.csv", sample=400, api_key=key)
    result.exit_code, result.counts, result.report_path, result.report  # a pyarrow.Table

Options are the CLI's long names in snake_case (`--on-conflict` -> `on_conflict`). The three
calls write the same files as the CLI (report, summary JSON, HTML, rejects) and return a
`Result`; they never print (messages go to `notice`, by default the `batch_toggle` logger) and
never exit: a job that cannot start raises a `BatchToggleError` carrying its `exit_code`.
"""

from __future__ import annotations

import logging
import os
import sys
import types
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict, Unpack

# Rate, EventSink and Summary are imported for real (their modules load nothing heavy):
# `typing.get_type_hints(Options)`, which editors, pydantic and typeguard call, resolves every
# name in the annotations.
from batch_toggle.config import Rate
from batch_toggle.errors import (
    BatchToggleError,
    ExitCode,
    InputError,
    ProxyRefused,
    ReportError,
    StoreError,
    StoreLocked,
    StoreLockLost,
    StoreUnavailable,
    TooManyInvalid,
    UsageError,
)
from batch_toggle.events import EventKind, EventSink
from batch_toggle.report.summary import Summary
from batch_toggle.version import __version__

if TYPE_CHECKING:
    import pyarrow as pa

    from batch_toggle.config import JobConfig
    from batch_toggle.events import Hooks
    from batch_toggle.jobs.pipeline import JobResult

PathLike = str | os.PathLike[str]
# What validate(), run() and audit() read: a path, or several; or a table held in memory (a
# pandas DataFrame, a pyarrow Table, a list of dicts), named in the report "<DataFrame>",
# "<Table>", "<records>" and numbered from row 1 as a file's rows are.
Inputs = Any


class Options(TypedDict, total=False):
    """The keyword options of validate(), run() and audit(), as the CLI names them.

    Each is optional; the defaults are the CLI's. A command takes the options its CLI command
    takes (validate sends nothing, so `rate` only shapes its cost estimate); an option of
    another command (`audit(resume=True)`, `validate(sample=2)`) is a UsageError, as the CLI
    refuses it, rather than silently ignored."""

    report: PathLike  # report path; .csv, .parquet or .jsonl (default reports/<stem>-<time>.csv)
    rejects: PathLike  # also write the rows that need attention, unmasked
    html: bool  # write <report>.html (default True)
    state: PathLike  # state store (default $XDG_STATE_HOME/batch-toggle/state.sqlite)
    map: Mapping[str, str] | Sequence[str]  # {"review_key": "Tracking Key"} or ["f=col", ...]
    set_state: bool | str  # desired state for every row
    default_target: str  # "job" or "client" for rows whose target is empty
    on_conflict: str  # last | first | opt-out-wins | reject
    max_invalid: float  # percent
    skip_confirmed: bool
    allow_resubscribe: bool
    encoding: str
    sheet: str | int  # an .xlsx input's sheet: its name, or its number from 1 (default 1)
    rate: str | Rate  # "2500/h"
    max_rps: float
    base_url: str
    api_key: str  # default: env LOGIS_API_KEY (read, not removed from the environment)
    api_key_file: PathLike
    concurrency: int
    timeout: float
    max_attempts: int
    daily_limit: int
    max_requests: int
    stop_after: str | float  # "55m" or seconds
    halt_after: int
    canary: int
    insecure: bool
    trust: str  # "system" (the OS trust store, default) or "certifi"
    ca_bundle: PathLike  # trust only the CAs in this PEM file or hashed directory
    proxy: str  # proxy URL (default: HTTPS_PROXY/HTTP_PROXY; NO_PROXY applies)
    proxy_auth_file: PathLike  # the proxy's credentials, one line USER:PASSWORD
    sandbox: bool  # the in-process simulator, the packaged seed (no network, no key)
    dry_run: bool  # run(): plan and report only
    resume: bool
    retry_failed: bool
    sample: int  # audit(): read only N distinct jobs
    seed: int  # audit(): the sample's seed
    events: PathLike  # append one JSON line per event
    notice: Callable[[str], None]  # one line for a person; default: the batch_toggle logger
    on_event: EventSink  # (kind, data): data is the kind's payload (docs/events.md)
    on_progress: Callable[[dict[str, Any]], None]


_KNOWN = frozenset(Options.__annotations__)
# Which options each call takes: those of its CLI command (the hooks are the library's own).
_SENDING = frozenset({"base_url", "api_key", "api_key_file", "concurrency", "timeout",
                      "max_attempts", "daily_limit", "max_requests", "stop_after", "halt_after",
                      "insecure", "sandbox"})
_RUN_ONLY = frozenset({"dry_run", "resume", "retry_failed", "canary"})
_AUDIT_ONLY = frozenset({"sample", "seed"})
_TAKES = {
    "validate": _KNOWN - _SENDING - _RUN_ONLY - _AUDIT_ONLY,
    "run": _KNOWN - _AUDIT_ONLY,
    # An audit neither resumes nor retries, has no canary, and reads every unit.
    "audit": _KNOWN - _RUN_ONLY - {"skip_confirmed"},
}


@dataclass(frozen=True)
class Result:
    """What a job returns: the exit code the CLI would give, the report and its summary.

    The fields mirror jobs.JobResult; not a subclass, so that `import batch_toggle` (done by
    every CLI start for its version) does not load pyarrow and the jobs layer."""

    exit_code: ExitCode
    run_id: str
    report_path: Path
    summary: Summary  # the summary JSON beside the report, as written
    report: pa.Table  # one row per input row, the report's columns (review keys masked)

    @property
    def ok(self) -> bool:
        """True when the exit code is 0: every row is fine or needs nothing."""
        return self.exit_code == ExitCode.OK

    @property
    def verdict(self) -> str:
        return str(self.summary.get("verdict", ""))

    @property
    def counts(self) -> dict[str, int]:
        """Rows by status, e.g. {"updated": 272, "invalid": 9}."""
        return dict(self.summary.get("counts_by_status") or {})

    @property
    def error_counts(self) -> dict[str, int]:
        """Rows by error code."""
        return dict(self.summary.get("counts_by_error_code") or {})

    @property
    def summary_path(self) -> Path:
        from batch_toggle.report.writers import summary_path
        return summary_path(self.report_path)

    @property
    def html_path(self) -> Path | None:
        """The HTML report, when one was written."""
        html = self.summary.get("html_report")
        return Path(html["path"]) if html and html["path"] else None

    @property
    def outcomes(self) -> list[dict[str, Any]]:
        """Each row's outcome as a dict of the report's outcome columns (source_file,
        source_row, job_id, ..., status, error_code, ...), in input order. Handy for small
        files; for large ones work on `report` (a pyarrow Table) instead."""
        from batch_toggle.vocab import OUTCOME_COLUMNS
        rows: list[dict[str, Any]] = self.report.select(list(OUTCOME_COLUMNS)).to_pylist()
        return rows

    def attention(self) -> pa.Table:
        """The report rows that need attention (invalid, failed, conflict, mismatch,
        not_attempted); after a run that stopped early and resumes (exit 4 or 130), without
        the not_attempted rows merely waiting for the next slice (`waiting`)."""
        from batch_toggle.report.table import attention_mask
        return self.report.filter(attention_mask(self.report, waiting=self.waiting > 0))

    @property
    def waiting(self) -> int:
        """Rows not sent yet because the run stopped early and resumes (a cron slice ended):
        the next `run(..., resume=True)` sends them. 0 otherwise."""
        waiting = self.summary.get("waiting")
        return waiting["rows"] if waiting else 0

    def to_pandas(self) -> Any:
        """The report as a pandas DataFrame (one row per input row). Needs pandas: `pip
        install 'batch-toggle[pandas]'`."""
        try:
            import pandas  # noqa: F401 - only to say what is missing, in our words
        except ImportError as exc:
            raise ImportError("Result.to_pandas() needs pandas: pip install "
                              "'batch-toggle[pandas]'") from exc
        return self.report.to_pandas()

    @classmethod
    def of(cls, job: JobResult) -> Result:
        return cls(ExitCode(job.exit_code), job.run_id, Path(job.report_path), job.summary,
                   job.report)


def validate(inputs: Inputs, **options: Unpack[Options]) -> Result:
    """Load, normalise, validate and dedupe; write the report of what would happen. No network.

    Reads the state store when one exists (never writes it), so it predicts `unchanged` and
    `resubscribe_blocked` exactly as run() would."""
    from batch_toggle.jobs.pipeline import validate as validate_job
    from batch_toggle.state.ledger import read_ledger

    config = _config("validate", inputs, options)
    with _hooks(options) as hooks:
        return Result.of(validate_job(config, hooks, ledger=read_ledger(config)))


def run(inputs: Inputs, **options: Unpack[Options]) -> Result:
    """Plan, send the toggles to Logis (or, with sandbox=True, to the in-process simulator),
    write the report. dry_run=True plans and reports only."""
    from batch_toggle.jobs.pipeline import validate as validate_job
    from batch_toggle.jobs.run import run as run_job
    from batch_toggle.state.ledger import read_ledger

    config = _config("run", inputs, options)
    with _hooks(options) as hooks:
        if config.dry_run:
            return Result.of(validate_job(config, hooks, ledger=read_ledger(config)))
        return Result.of(run_job(config, hooks))


def audit(inputs: Inputs, **options: Unpack[Options]) -> Result:
    """Read-only: one GET track per distinct job; rows `in_sync` or `would_change`. Never sends
    a toggle. sample=N reads only N distinct jobs (seeded by `seed`)."""
    from batch_toggle.jobs.audit import AuditOptions
    from batch_toggle.jobs.audit import audit as audit_job

    config = _config("audit", inputs, options)
    kwargs: dict[str, Any] = {"sample": options.get("sample")}
    if options.get("seed") is not None:
        kwargs["seed"] = int(options["seed"])
    with _hooks(options) as hooks:
        return Result.of(audit_job(config, hooks, options=AuditOptions(**kwargs)))


# --- building the config ---------------------------------------------------------------------


def _config(command: str, inputs: Inputs, options: Mapping[str, Any]) -> JobConfig:
    """One frozen JobConfig from keyword options, built as the CLI builds it (job_options)."""
    from batch_toggle.jobs.options import job_config

    unknown = sorted(set(options) - _KNOWN)
    if unknown:
        raise TypeError(f"{command}() got unexpected keyword argument(s): {', '.join(unknown)}")
    foreign = sorted(set(options) - _TAKES[command])
    if foreign:
        owners = {name: [c for c in _TAKES if name in _TAKES[c]] for name in foreign}
        said = "; ".join(f"{name}= is an option of {' and '.join(f'{c}()' for c in owners[name])}"
                         for name in foreign)
        raise UsageError(f"{command}() does not take {', '.join(f'{n}=' for n in foreign)} "
                         f"({said})")
    o = dict(options)
    # The CLI reads LOGIS_BASE_URL through click; the library reads it here.
    o["base_url"] = o.get("base_url") or os.environ.get("LOGIS_BASE_URL")
    sandbox, dry_run = bool(o.get("sandbox")), bool(o.get("dry_run")) and command == "run"
    api_key = None
    if command != "validate" and not dry_run:
        api_key = _api_key(o)
    names, tables = _inputs(inputs)
    return job_config(command, names, o, dry_run=dry_run, sandbox=sandbox,
                      resume=bool(o.get("resume")), retry_failed=bool(o.get("retry_failed")),
                      api_key=api_key, tables=tables)


def _inputs(inputs: Inputs) -> tuple[tuple[str, ...], dict[str, Any]]:
    """The input names, and the tables given in memory by the name that stands for each."""
    from batch_toggle.input.readers import in_memory_table

    whole = in_memory_table(inputs)
    if whole is not None:
        return (f"<{whole[0]}>",), {f"<{whole[0]}>": whole[1]}
    items = [inputs] if isinstance(inputs, str | os.PathLike) else list(inputs)
    if not items:
        raise UsageError("no input: give at least one file, a DataFrame, a pyarrow Table or "
                         "a list of dicts")
    names: list[str] = []
    tables: dict[str, Any] = {}
    kinds: dict[str, int] = {}
    for item in items:
        found = in_memory_table(item)
        if found is None:
            if not isinstance(item, str | os.PathLike):
                raise UsageError(f"input {type(item).__name__!r}: expected a path, a pandas "
                                 "DataFrame, a pyarrow Table or a list of dicts")
            names.append(os.fspath(item))
            continue
        kind, table = found
        kinds[kind] = kinds.get(kind, 0) + 1
        name = f"<{kind}>" if kinds[kind] == 1 else f"<{kind} {kinds[kind]}>"
        names.append(name)
        tables[name] = table
    return tuple(names), tables


def _api_key(o: Mapping[str, Any]) -> str | None:
    """api_key=, else api_key_file=, else env LOGIS_API_KEY. A library must not change its
    host's environment, so unlike the CLI it reads the variable without removing it. (Whether
    a key is needed is the options model's rule: jobs/options.check_rules.)"""
    from batch_toggle.jobs.options import read_key_file

    key = o.get("api_key")
    if not key and o.get("api_key_file"):
        key = read_key_file(Path(o["api_key_file"]))
    return (key or os.environ.get("LOGIS_API_KEY") or "").strip() or None


class _hooks:
    """The Hooks of one call, with the --events file opened and closed around it."""

    def __init__(self, options: Mapping[str, Any]) -> None:
        self._options = options
        self._events: Any = None

    def __enter__(self) -> Hooks:
        from batch_toggle.events import Hooks

        o = self._options
        logger = logging.getLogger("batch_toggle")
        notice = o.get("notice") or logger.info
        on_event = o.get("on_event")
        from batch_toggle.events import EventLog, fan_out

        if o.get("events") is not None:
            # Its failure warning goes where the library's messages go (never to the host's
            # stderr, whose descriptor the CLI's writer would point at /dev/null).
            self._events = EventLog(Path(o["events"]), warn=notice)
        return Hooks(notice=notice, event=fan_out(self._events, on_event),
                     progress=o.get("on_progress") or (lambda _snapshot: None))

    def __exit__(self, *_exc: object) -> None:
        if self._events is not None:
            self._events.close()


# --- `batch_toggle.audit` is the function, whatever imports the module -----------------------


class _Package(types.ModuleType):
    """Importing the submodule `batch_toggle.audit` (the CLI does) would make Python set the
    package attribute `audit` to that module, hiding the function above. Keep the function;
    the module stays reachable as usual (`from batch_toggle.jobs.audit import ...`)."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _PUBLIC_FUNCTIONS and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


_PUBLIC_FUNCTIONS = frozenset({"validate", "run", "audit"})
sys.modules[__name__].__class__ = _Package

__all__ = ["BatchToggleError", "EventKind", "EventSink", "ExitCode", "InputError", "Options",
           "ProxyRefused", "Rate", "ReportError", "Result", "StoreError", "StoreLocked",
           "StoreLockLost", "StoreUnavailable", "Summary", "TooManyInvalid", "UsageError",
           "__version__", "audit", "run", "validate"]
