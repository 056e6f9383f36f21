"""The frozen configuration of a run, and the parsers for its compact option syntaxes.

Everything the core needs arrives in these records, so the library never reads argv, env or
click: the CLI builds them, tests and notebooks build them directly.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from batch_toggle.clock import Clock, system_clock
from batch_toggle.errors import UsageError

if TYPE_CHECKING:
    import pyarrow as pa

OnConflict = Literal["last", "first", "opt-out-wins", "reject"]
ON_CONFLICT_CHOICES: tuple[str, ...] = ("last", "first", "opt-out-wins", "reject")

DEFAULT_BASE_URL = "https://app.logisapp.ca"
# --trust: which CAs verify the server when no --ca-bundle is given (trust.py).
TRUST_CHOICES: tuple[str, ...] = ("system", "certifi")

_UNIT_SECONDS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


@dataclass(frozen=True)
class Rate:
    """A budget: at most `limit` requests in any sliding window of `period` seconds."""

    limit: int
    period: float

    def __str__(self) -> str:
        for unit, secs in (("d", 86400.0), ("h", 3600.0), ("m", 60.0)):
            if self.period == secs:
                return f"{self.limit}/{unit}"
        return f"{self.limit}/{self.period:g}s"


def parse_rate(text: str, what: str = "--rate") -> Rate:
    """Parse `N/PERIOD`, PERIOD being s, m, h, d, or a number of seconds like `10s` or `90`.
    `what` names the option in an error, as its caller knows it."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d*\.?\d*)\s*([smhd]?)\s*", text or "")
    if not m or int(m.group(1)) <= 0:
        raise UsageError(f"{what} {text!r}: expected N/PERIOD such as 2500/h, 100/m or 50/10s")
    count, number, unit = int(m.group(1)), m.group(2), m.group(3) or "s"
    if not number and not m.group(3):
        raise UsageError(f"{what} {text!r}: missing PERIOD (s, m, h, d or seconds)")
    period = (float(number) if number else 1.0) * _UNIT_SECONDS[unit]
    if period <= 0:
        raise UsageError(f"{what} {text!r}: PERIOD must be positive")
    return Rate(count, period)


def parse_duration(text: str, what: str = "duration") -> float:
    """Parse a duration such as `90`, `45s`, `30m`, `2h`, `1h30m` or `1d` into seconds.
    `what` names the option in an error."""
    s = (text or "").strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", s):
        return float(s)
    parts = re.findall(r"(\d+(?:\.\d+)?)([smhd])", s)
    if not parts or "".join(n + u for n, u in parts) != s.replace(" ", ""):
        raise UsageError(f"{what} {text!r}: expected e.g. 90s, 30m, 2h, 1h30m or 1d")
    return sum(float(n) * _UNIT_SECONDS[u] for n, u in parts)


def format_duration(seconds: float) -> str:
    """A human duration: `11 h 29 min`, `4 min 10 s`, `12 s`, `0 s`."""
    seconds = max(0, int(round(seconds)))
    days, rem = divmod(seconds, 86400)
    hours, rem = divmod(rem, 3600)
    minutes, secs = divmod(rem, 60)
    if days:
        return f"{days} d {hours} h {minutes} min"
    if hours:
        return f"{hours} h {minutes} min"
    if minutes:
        return f"{minutes} min {secs} s"
    return f"{secs} s"


@dataclass(frozen=True)
class LoadOptions:
    """How input files are read and their columns found."""

    column_map: tuple[tuple[str, str], ...] = ()  # (field, column) pairs from --map
    encoding: str | None = None
    set_state: bool | None = None  # --set-state: override the desired state on every row
    default_target: str | None = None  # --default-target: fill empty targets
    sheet: str | None = None  # --sheet: an .xlsx input's sheet, by name or 1-based index


@dataclass(frozen=True)
class PlanOptions:
    """What decides which rows become requests. A resume must use the same values."""

    on_conflict: OnConflict = "last"
    max_invalid: float = 50.0  # percent
    skip_confirmed: bool = True
    allow_resubscribe: bool = False


@dataclass(frozen=True)
class SendOptions:
    """How requests are sent: budget, pacing, retries, breakers. May change on resume."""

    base_url: str = DEFAULT_BASE_URL
    rate: Rate = field(default_factory=lambda: Rate(2500, 3600.0))
    max_rps: float = 10.0
    concurrency: int = 4
    timeout: float = 30.0
    max_attempts: int = 5
    daily_limit: int | None = None
    max_requests: int | None = None
    stop_after: float | None = None
    halt_after: int = 50
    canary: int = 0
    insecure: bool = False
    outage_limit: float = 15 * 60.0  # give up after this long with every request failing
    # A base URL that never answered (this run or an earlier one on the store) gets this long
    # of ambiguous failures before the run stops (exit 3, `unreachable`); see retry.FirstContact.
    first_contact_grace: float = 60.0
    trust: str = "system"  # system | certifi (trust.py)
    ca_bundle: str | None = None  # --ca-bundle: trust only these CAs
    # --proxy: the proxy URL (the CLI refuses credentials in it; a library caller may pass
    # them, so it is never shown as is: proxies.redact)
    proxy: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class JobConfig:
    """Everything one job needs; built by the CLI or by a caller of the library."""

    inputs: tuple[str, ...]
    command: str = "validate"  # validate | run | audit
    load: LoadOptions = field(default_factory=LoadOptions)
    plan: PlanOptions = field(default_factory=PlanOptions)
    send: SendOptions = field(default_factory=SendOptions)
    dry_run: bool = False
    report_path: Path | None = None
    rejects_path: Path | None = None
    state_path: Path | str | None = None  # a SQLite file, or a postgresql:// URL
    use_state: bool = True  # False: no state store at all (tests, one-off rehearsals)
    resume: bool = False
    retry_failed: bool = False
    sandbox: bool = False
    html: bool = True  # also write <report>.html, the page people read and print
    api_key: str | None = field(default=None, repr=False)  # never printed, logged or stored
    # Inputs given in memory (the library: a DataFrame, a pyarrow Table, a list of dicts), by
    # the name that stands for each in `inputs` ("<DataFrame>"); see ingest.in_memory_table.
    tables: Mapping[str, pa.Table] = field(default_factory=dict, repr=False, compare=False)
    # (user, password) for the proxy, from --proxy-auth-file; never printed, logged or stored
    proxy_auth: tuple[str, str] | None = field(default=None, repr=False)
    # The time the job sees (clock.py): timestamps, durations, waits. Not an option.
    clock: Clock = field(default_factory=system_clock, repr=False, compare=False)


DEFAULT_SEED = 20261101  # audit --seed's default: the same file and N give the same sample


@dataclass(frozen=True)
class AuditOptions:
    """What only an audit has: the sample size (None: every job) and the sample's RNG seed."""

    sample: int | None = None
    seed: int = DEFAULT_SEED


def cli_name(option: str) -> str:
    """"on_conflict" -> "--on-conflict": how the CLI's errors name an option (and the loader's,
    for options built by hand, which have no caller of their own to be named after)."""
    return "--" + option.replace("_", "-")
