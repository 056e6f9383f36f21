"""The frozen configuration of a sandbox: seed, keys, budgets and faults.

The CLI (`batch-toggle sandbox`), `run --sandbox` and the tests all build one of these; the app
copies what may change at runtime (faults, limits, keys) into its mutable world, so `reset`
always goes back to exactly this.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Literal

RetryAfterStyle = Literal["seconds", "http-date", "none"]
RETRY_AFTER_STYLES: tuple[str, ...] = ("seconds", "http-date", "none")

DEFAULT_API_KEY = "sandbox-key"
DEFAULT_HOURLY_LIMIT = 2500
DEFAULT_WINDOW = 3600.0
DEFAULT_DAILY_WINDOW = 86400.0
DEFAULT_PORT = 8765
DEFAULT_REQUEST_LOG = 10_000  # entries /_sandbox/requests keeps (about 9 MB)

Latency = float | tuple[float, float]


@dataclass(frozen=True)
class SandboxConfig:
    """Everything a sandbox needs. Every field has a default except the seed.

    Budget semantics: per key, at most `hourly_limit` counted requests in any sliding window of
    `window` seconds; per user (all keys together), at most `daily_limit` in any `daily_window`.
    With `count_rejected` (the default) a request answered 429 counts too, as Logis' "every
    request counts" suggests: a client that hammers a full window keeps it full.

    Faults (seeded by `fault_seed`, reproducible for a given arrival order) hit only requests
    the budget admitted: `error_rate` (5xx; `error_html_share` of them with an HTML body),
    `reset_rate` (connection dropped, nothing applied), `timeout_rate` (the change is applied but
    the reply stalls `timeout_delay_s`), `latency_ms` (every /api request; a number or a
    (lo, hi) range). `scripted` maps a job id (or "*" for any request) to the faults its next
    requests get, in order: e.g. {job: ["503", "503"]}; see `faults.parse_fault`.

    `request_log_limit`: how many of the latest requests /_sandbox/requests keeps (the log is a
    ring; its counters cover every request).
    """

    seed: Path | str | None = None
    api_keys: tuple[str, ...] = (DEFAULT_API_KEY,)
    inactive_keys: tuple[str, ...] = ()
    no_permission_keys: tuple[str, ...] = ()
    hourly_limit: int = DEFAULT_HOURLY_LIMIT
    window: float = DEFAULT_WINDOW
    daily_limit: int | None = None
    daily_window: float = DEFAULT_DAILY_WINDOW
    count_rejected: bool = True
    retry_after_style: RetryAfterStyle = "seconds"
    latency_ms: Latency = 0.0
    error_rate: float = 0.0
    error_html_share: float = 0.3
    reset_rate: float = 0.0
    timeout_rate: float = 0.0
    timeout_delay_s: float = 120.0
    fault_seed: int = 0
    scripted: Mapping[str, Sequence[str]] = field(default_factory=dict, hash=False)
    request_log_limit: int = DEFAULT_REQUEST_LOG

    def __post_init__(self) -> None:
        # Accept lists where tuples are meant, and freeze the scripted map, so that a config
        # built by a test with plain lists and dicts is still immutable.
        for name in ("api_keys", "inactive_keys", "no_permission_keys"):
            value = getattr(self, name)
            if isinstance(value, str):
                value = (value,)
            object.__setattr__(self, name, tuple(value))
        if isinstance(self.latency_ms, list):
            object.__setattr__(self, "latency_ms", tuple(self.latency_ms))
        frozen = {
            str(k): (v if isinstance(v, str) else tuple(v))  # a bare string: validate() says so
            for k, v in dict(self.scripted).items()
        }
        object.__setattr__(self, "scripted", MappingProxyType(frozen))
        self.validate()

    def validate(self) -> None:
        """Raise ValueError on a value the sandbox cannot honour."""
        if self.hourly_limit < 1:
            raise ValueError("hourly_limit must be at least 1")
        if self.window <= 0 or self.daily_window <= 0:
            raise ValueError("window and daily_window must be positive")
        if self.daily_limit is not None and self.daily_limit < 1:
            raise ValueError("daily_limit must be at least 1 (or None for no daily limit)")
        if self.retry_after_style not in RETRY_AFTER_STYLES:
            raise ValueError(f"retry_after_style must be one of {', '.join(RETRY_AFTER_STYLES)}")
        rates = (self.error_rate, self.reset_rate, self.timeout_rate)
        if any(r < 0 or r > 1 for r in (*rates, self.error_html_share)) or sum(rates) > 1:
            raise ValueError("fault rates must be within 0..1 and add up to at most 1")
        if self.request_log_limit < 1:
            raise ValueError("request_log_limit must be at least 1")
        if self.timeout_delay_s < 0:
            raise ValueError("timeout_delay_s must not be negative")
        lo, hi = latency_bounds(self.latency_ms)
        if lo < 0 or hi < lo:
            raise ValueError("latency_ms must be a non-negative number or a (lo, hi) range")
        if not self.api_keys and not self.inactive_keys and not self.no_permission_keys:
            raise ValueError("the sandbox needs at least one key")
        validate_scripted(self.scripted)


SEED_FILE_NAME = "sandbox_seed.csv"


def default_seed_path() -> Path:
    """The shipped seed: a copy of `sample_data/sandbox_seed.csv` packaged beside this module.

    Why a packaged copy: `sample_data/` is not part of the wheel, so a user who installed
    batch-toggle (not editable) and runs it from any directory must still get the default seed
    for `batch-toggle sandbox`, `run --sandbox` and `audit --sandbox`. It is always this one file,
    whatever the current directory holds. `sample_data/sandbox_seed.csv` (written by
    `sample_data/make_samples.py`) is the source; tests/test_packaged_seed.py fails when the
    two differ.
    """
    return Path(__file__).resolve().with_name(SEED_FILE_NAME)


def latency_bounds(latency: Latency) -> tuple[float, float]:
    """(lo, hi) milliseconds of a fixed latency or a range."""
    if isinstance(latency, tuple):
        lo, hi = latency
        return float(lo), float(hi)
    return float(latency), float(latency)


def parse_latency(text: str) -> Latency:
    """Parse `50` (fixed) or `5-200` (uniform range) milliseconds."""
    s = text.strip()
    lo, sep, hi = s.partition("-")
    try:
        if sep:
            return (float(lo), float(hi))
        return float(s)
    except ValueError:
        raise ValueError(f"latency {text!r}: expected milliseconds like 50 or 5-200") from None


# The scripted-fault grammar (`scripted` above): parsed here, where the config checks its own
# fields; faults.py applies them.
FaultKind = Literal["ok", "status", "html", "reset", "reset-after", "timeout"]

_STATUS_RE = re.compile(r"(html)?([45]\d\d)(?::(\d+(?:\.\d+)?))?")


@dataclass(frozen=True)
class Fault:
    kind: FaultKind
    status: int | None = None
    retry_after: float | None = None
    token: str = ""


def parse_fault(token: str) -> Fault:
    """Parse one scripted fault token (see the module docstring); ValueError if unknown."""
    t = str(token).strip().lower()
    if t in ("ok", "reset", "reset-after", "timeout"):
        return Fault(kind=t, token=t)  # type: ignore[arg-type]
    m = _STATUS_RE.fullmatch(t)
    if m is None or (m.group(3) is not None and (m.group(1) or m.group(2) != "429")):
        raise ValueError(
            f"unknown fault {token!r}: expected a 4xx/5xx status, 429:N, htmlNNN, "
            "reset, reset-after, timeout or ok"
        )
    status = int(m.group(2))
    if m.group(1):
        return Fault(kind="html", status=status, token=t)
    retry_after = float(m.group(3)) if m.group(3) else (1.0 if status == 429 else None)
    return Fault(kind="status", status=status, retry_after=retry_after, token=t)


def validate_scripted(scripted: Mapping[str, Sequence[str]]) -> None:
    for tokens in scripted.values():
        if isinstance(tokens, str):
            raise ValueError("scripted faults: each job maps to a list of faults, not a string")
        for token in tokens:
            parse_fault(token)
