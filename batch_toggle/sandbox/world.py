"""The sandbox's world: jobs, clients, keys, budgets and the log of requests received.

Nothing here knows about HTTP. The budget is a sliding log per key (and one per user for the
daily limit) measured on an injected monotonic clock, so it is tested exactly without sleeping.
"""

from __future__ import annotations

import csv
import itertools
import math
import re
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, overload

from batch_toggle.sandbox.config import SandboxConfig
from batch_toggle.sandbox.faults import Faults

SEED_COLUMNS = ("job_id", "review_key", "client_id", "do_notify_sms", "client_do_notify_sms")

# Canonical hyphenated UUID, any case. The sandbox is stricter than Python's uuid.UUID on
# purpose: a client that forgets to normalise braces, urn:uuid: or bare hex is caught here.
UUID_RE = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")

Clock = Callable[[], float]

# Fields of SandboxConfig that POST /_sandbox/limits may change.
LIMIT_FIELDS = (
    "hourly_limit", "window", "daily_limit", "daily_window", "count_rejected",
    "retry_after_style",
)


class SeedError(ValueError):
    """The seed file cannot be used: the message names the file and row."""


def is_uuid(value: object) -> bool:
    return isinstance(value, str) and UUID_RE.fullmatch(value) is not None


# --- seed ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class SeedJob:
    job_id: str
    review_key: str
    client_id: str
    do_notify_sms: bool
    client_do_notify_sms: bool


@dataclass(frozen=True)
class Seed:
    """The initial world: jobs (with their review keys) and the clients' defaults."""

    jobs: tuple[SeedJob, ...]
    clients: tuple[tuple[str, bool], ...]  # (client_id, do_notify_sms) in first-seen order


def load_seed(path: Path | str) -> Seed:
    """Read a seed CSV or Parquet file (columns SEED_COLUMNS, booleans as "true"/"false").

    Raises SeedError naming the file (and the 1-based data row) on anything malformed: a missing
    column, a bad UUID or boolean, a duplicate job, or a client given two different defaults.
    """
    path = Path(path)
    try:
        records = _read_records(path)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise SeedError(f"{path}: cannot read seed: {exc}") from exc
    return build_seed(records, name=str(path))


def _read_records(path: Path) -> list[dict[str, Any]]:
    if path.suffix.lower() == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except (pa.ArrowException, OSError) as exc:
            raise SeedError(f"{path}: cannot read Parquet seed: {exc}") from exc
        return [
            {k: (None if v is None else str(v)) for k, v in row.items()}
            for row in table.to_pylist()
        ]
    with path.open(newline="", encoding="utf-8-sig") as fh:
        return list(csv.DictReader(fh))


def build_seed(records: Iterable[dict[str, Any]], name: str = "<seed>") -> Seed:
    """Validate seed records (dicts with SEED_COLUMNS) into a Seed."""
    jobs: list[SeedJob] = []
    clients: dict[str, bool] = {}
    seen: set[str] = set()
    header_checked = False
    for n, rec in enumerate(records, start=1):
        if not header_checked:
            missing = [c for c in SEED_COLUMNS if c not in rec]
            if missing:
                raise SeedError(f"{name}: missing column(s) {', '.join(missing)}")
            header_checked = True
        job = _seed_job(rec, name, n)
        if job.job_id in seen:
            raise SeedError(f"{name}, row {n}: duplicate job_id {job.job_id}")
        seen.add(job.job_id)
        previous = clients.setdefault(job.client_id, job.client_do_notify_sms)
        if previous != job.client_do_notify_sms:
            raise SeedError(f"{name}, row {n}: client {job.client_id} has two different defaults")
        jobs.append(job)
    return Seed(jobs=tuple(jobs), clients=tuple(clients.items()))


def _seed_job(rec: dict[str, Any], name: str, n: int) -> SeedJob:
    values = {c: str(rec.get(c) or "").strip() for c in SEED_COLUMNS}
    for col in ("job_id", "review_key", "client_id"):
        if not is_uuid(values[col]):
            raise SeedError(f"{name}, row {n}: {col} {values[col]!r} is not a UUID")
    flags = {}
    for col in ("do_notify_sms", "client_do_notify_sms"):
        text = values[col].lower()
        if text not in ("true", "false"):
            raise SeedError(f"{name}, row {n}: {col} {values[col]!r} is not true/false")
        flags[col] = text == "true"
    return SeedJob(
        job_id=values["job_id"].lower(),
        review_key=values["review_key"].lower(),
        client_id=values["client_id"].lower(),
        do_notify_sms=flags["do_notify_sms"],
        client_do_notify_sms=flags["client_do_notify_sms"],
    )


# --- entities -----------------------------------------------------------------------------


@dataclass
class Client:
    id: str
    do_notify_sms: bool

    def as_json(self) -> dict[str, Any]:
        return {"id": self.id, "do_notify_sms": self.do_notify_sms, "address_detail": {}}


@dataclass
class Job:
    id: str
    review_key: str
    client: str
    do_notify_sms: bool
    status: str = "pending"

    def as_json(self) -> dict[str, Any]:
        """The job as the API shows it: never with its review_key."""
        return {
            "id": self.id,
            "status": self.status,
            "do_notify_sms": self.do_notify_sms,
            "client": self.client,
            "address_detail": {},
        }


@dataclass
class Key:
    key: str
    active: bool = True
    allow_public_track: bool = True


# --- budget -------------------------------------------------------------------------------


EDGE_SLACK = 1e-6  # seconds: far below any real clock's jitter, far above float rounding


def edge_slack(now: float) -> float:
    """How early an entry may leave the window: EDGE_SLACK, or a few ulps of `now` where the
    float keeps fewer bits than that (past 2**32 s): never lost to rounding."""
    return max(EDGE_SLACK, 4 * math.ulp(now))


@dataclass
class SlidingLog:
    """At most `limit` counted events in any half-open window (t - window, t].

    An event at time s leaves the window at s + window, less a slack (`edge_slack`), and
    `wait` names the exact edge: a client that adds the wait to its clock lands within a
    rounding error of the edge, well inside the slack, so it is admitted (the property test
    found clients refused again, told to wait 0, when both named the same edge), and a
    Retry-After derived from the wait is never too short.

    Progress: `prune` pops one entry per turn; a full log's wait is more than the slack, so a
    client that follows it moves on.
    """

    limit: int
    window: float
    times: deque[float] = field(default_factory=deque)

    def prune(self, now: float) -> None:
        edge = now - self.window + edge_slack(now)
        while self.times and self.times[0] <= edge:
            self.times.popleft()

    def full(self, now: float) -> bool:
        self.prune(now)
        return len(self.times) >= self.limit

    def wait(self, now: float) -> float:
        """Seconds from `now` until one more event would be accepted (0 if it would now)."""
        self.prune(now)
        excess = len(self.times) - self.limit
        if excess < 0:
            return 0.0
        # The (excess+1) oldest must leave; the log is sorted because the clock is monotonic.
        return max(0.0, self.times[excess] + self.window - now)

    def record(self, now: float) -> None:
        self.times.append(now)


def retry_after_seconds(wait: float) -> int:
    """Whole seconds a client must wait, rounded up (and at least 1) so it is not refused again."""
    return max(1, math.ceil(wait))


@dataclass
class BudgetDecision:
    allowed: bool
    daily: bool = False  # refused because of the user's daily limit
    wait: float = 0.0  # seconds until a request would be accepted


class Budgets:
    """Per-key sliding windows plus one per-user daily window."""

    def __init__(self, config: SandboxConfig) -> None:
        self.hourly_limit = config.hourly_limit
        self.window = config.window
        self.daily_limit = config.daily_limit
        self.daily_window = config.daily_window
        self.count_rejected = config.count_rejected
        self.keys: dict[str, SlidingLog] = {}
        self.daily = SlidingLog(config.daily_limit or 1, config.daily_window)

    def set_limits(self, hourly_limit: int, window: float, daily_limit: int | None,
                   daily_window: float) -> None:
        """Change limits at runtime (an owner lowering a key's budget); logs are kept."""
        self.hourly_limit, self.window = hourly_limit, window
        self.daily_limit, self.daily_window = daily_limit, daily_window
        for log in self.keys.values():
            log.limit, log.window = hourly_limit, window
        self.daily.limit, self.daily.window = daily_limit or 1, daily_window

    def _log(self, key: str) -> SlidingLog:
        log = self.keys.get(key)
        if log is None:
            log = self.keys[key] = SlidingLog(self.hourly_limit, self.window)
        return log

    def admit(self, key: str, now: float) -> BudgetDecision:
        """Decide on one request by `key` at `now` and count it (a refused one too, if so set)."""
        log = self._log(key)
        key_full = log.full(now)
        daily_full = self.daily_limit is not None and self.daily.full(now)
        if not key_full and not daily_full:
            log.record(now)
            if self.daily_limit is not None:
                self.daily.record(now)
            return BudgetDecision(allowed=True)
        if self.count_rejected:
            log.record(now)
            if self.daily_limit is not None:
                self.daily.record(now)
        wait = log.wait(now)
        if self.daily_limit is not None:
            wait = max(wait, self.daily.wait(now))
        return BudgetDecision(allowed=False, daily=daily_full, wait=wait)

    def used(self, key: str, now: float) -> int:
        log = self._log(key)
        log.prune(now)
        return len(log.times)


# --- the request log ----------------------------------------------------------------------


class RequestLog:
    """The requests received, in arrival order: the last `limit` entries, plus counters over
    every request ever received, so that a sandbox serving a 40-hour run (or `run --sandbox`,
    inside the client's process) stays bounded in memory (an entry costs about 860 bytes).

    An entry's `seq` is its place among all requests received, and stays so when older entries
    are dropped: `since(n)` is absolute, and says how many of the entries asked for are gone.
    The counters of a dropped entry are taken as it leaves (a reply still held by a timeout
    fault then counts with no status).
    """

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("the request log keeps at least 1 entry")
        self.limit = limit
        self._entries: deque[dict[str, Any]] = deque()
        self.total = 0  # requests received, dropped ones included (the next seq)
        self._dropped_statuses: Counter[str] = Counter()
        self._dropped_counted = 0

    def append(self, entry: dict[str, Any]) -> None:
        """Log `entry`, giving it the next seq; the oldest entry leaves when the log is full."""
        entry["seq"] = self.total
        self.total += 1
        if len(self._entries) >= self.limit:
            gone = self._entries.popleft()
            self._dropped_statuses[_status_key(gone["status"])] += 1
            self._dropped_counted += bool(gone["counted"])
        self._entries.append(entry)

    @property
    def dropped(self) -> int:
        """Entries received but no longer kept."""
        return self.total - len(self._entries)

    def since(self, seq: int) -> tuple[list[dict[str, Any]], int]:
        """The kept entries from `seq` on, and how many entries from `seq` were dropped."""
        first = self.dropped  # the seq of the oldest entry kept
        start = max(seq, first)
        return list(itertools.islice(self._entries, start - first, None)), start - seq

    def totals(self) -> dict[str, Any]:
        """Counters over every request received: by status (a string; "none" while no reply
        was sent) and how many counted against a budget."""
        statuses = self._dropped_statuses.copy()
        statuses.update(_status_key(e["status"]) for e in self._entries)
        counted = self._dropped_counted + sum(bool(e["counted"]) for e in self._entries)
        return {"requests": self.total, "counted": counted, "by_status": dict(sorted(
            statuses.items()))}

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self._entries)

    @overload
    def __getitem__(self, index: int) -> dict[str, Any]: ...
    @overload
    def __getitem__(self, index: slice) -> list[dict[str, Any]]: ...

    def __getitem__(self, index: int | slice) -> dict[str, Any] | list[dict[str, Any]]:
        """A kept entry by its place among the kept ones (not its seq), or a list of them."""
        if isinstance(index, slice):
            return list(self._entries)[index]
        return self._entries[index]


def _status_key(status: int | None) -> str:
    return "none" if status is None else str(status)


# --- the world ----------------------------------------------------------------------------


def key_hint(key: str | None) -> str | None:
    """What the request log shows of a key: its last 4 characters, never the key."""
    if key is None:
        return None
    return "..." + key[-4:] if len(key) > 4 else "..."


class World:
    """The mutable state of one sandbox. `reset()` goes back to the seed and the config."""

    def __init__(self, config: SandboxConfig, seed: Seed, clock: Clock) -> None:
        self.config = config
        self.seed = seed
        self.clock = clock
        self.reset()

    def reset(self) -> None:
        cfg = self.config
        self.jobs: dict[str, Job] = {
            j.job_id: Job(j.job_id, j.review_key, j.client_id, j.do_notify_sms)
            for j in self.seed.jobs
        }
        self.clients: dict[str, Client] = {cid: Client(cid, v) for cid, v in self.seed.clients}
        self.keys: dict[str, Key] = {}
        for k in cfg.api_keys:
            self.keys[k] = Key(k)
        for k in cfg.inactive_keys:
            self.keys[k] = Key(k, active=False)
        for k in cfg.no_permission_keys:
            self.keys[k] = Key(k, allow_public_track=False)
        self.budgets = Budgets(cfg)
        self.limits = cfg  # the limits in force (POST /_sandbox/limits changes them)
        self.faults = Faults(cfg)
        self.requests = RequestLog(cfg.request_log_limit)

    def set_limits(self, changes: dict[str, Any]) -> None:
        """Change budgets at runtime (an owner lowering a key's limit); ValueError if invalid."""
        unknown = set(changes) - set(LIMIT_FIELDS)
        if unknown:
            raise ValueError(f"unknown limit setting(s): {', '.join(sorted(unknown))}")
        new = replace(self.limits, **changes)  # validates
        self.limits = new
        self.budgets.count_rejected = new.count_rejected
        self.budgets.set_limits(new.hourly_limit, new.window, new.daily_limit, new.daily_window)

    def limit_settings(self) -> dict[str, Any]:
        return {name: getattr(self.limits, name) for name in LIMIT_FIELDS}

    def set_key(self, key: str, active: bool = True, allow_public_track: bool = True) -> Key:
        """Add a key or change its flags (a key deactivated mid-run)."""
        entry = self.keys[key] = Key(key, active=active, allow_public_track=allow_public_track)
        return entry

    def state(self) -> dict[str, Any]:
        """Jobs and clients as they are now (no review keys)."""
        return {
            "jobs": [
                {"id": j.id, "client": j.client, "do_notify_sms": j.do_notify_sms}
                for j in self.jobs.values()
            ],
            "clients": [
                {"id": c.id, "do_notify_sms": c.do_notify_sms} for c in self.clients.values()
            ],
        }
