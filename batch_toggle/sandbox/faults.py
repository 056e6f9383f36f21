"""Fault injection: seeded random faults and per-job scripted ones.

A fault is decided when a request has passed authentication and the budget (the limiter sits in
front of the application, so a faulted request still counts). Scripted faults win over random
ones; random faults draw from their own seeded generator, so the same arrival order gives the
same faults.

Scripted tokens:
  "503", "500", "429", any 4xx/5xx  -> that status with a JSON {"error": ...} body
  "429:N"                           -> 429 with Retry-After N seconds (plain "429": 1 s)
  "html500", "html502", ...         -> that status with an HTML body (a proxy error page)
  "reset"                           -> connection dropped without a response; nothing applied
  "reset-after"                     -> the change is applied, then the connection is dropped
  "timeout"                         -> the change is applied, the reply stalls timeout_delay_s
  "ok"                              -> no fault (lets a script say "fine, then 503")
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from batch_toggle.sandbox.config import (  # noqa: F401 - Fault, parse_fault re-exported
    Fault,
    FaultKind,
    SandboxConfig,
    latency_bounds,
    parse_fault,
    parse_latency,
    validate_scripted,
)

ANY_JOB = "*"
RANDOM_ERROR_STATUSES = (500, 502, 503, 504)

# Fields of SandboxConfig that POST /_sandbox/faults may change.
FAULT_FIELDS = (
    "latency_ms", "error_rate", "error_html_share", "reset_rate", "timeout_rate",
    "timeout_delay_s", "fault_seed", "scripted",
)



def normalize_job_key(job_id: object) -> str:
    """The key under which scripted faults for a job are kept: trimmed and lowercase."""
    return str(job_id).strip().lower()


class Faults:
    """The runtime fault settings of one sandbox (changeable through POST /_sandbox/faults)."""

    def __init__(self, config: SandboxConfig) -> None:
        self.config = config
        self._reseed(config.fault_seed)
        self._load_scripted(config.scripted)

    def _reseed(self, seed: int) -> None:
        self._rng = random.Random(f"faults:{seed}")
        self._latency_rng = random.Random(f"latency:{seed}")

    def _load_scripted(self, scripted: Mapping[str, Sequence[str]]) -> None:
        validate_scripted(scripted)
        self.scripted: dict[str, deque[Fault]] = {
            normalize_job_key(job): deque(parse_fault(t) for t in tokens)
            for job, tokens in scripted.items()
        }

    def update(self, changes: Mapping[str, Any]) -> None:
        """Apply a partial change of fault settings; ValueError (nothing changed) if invalid.

        `scripted` replaces every pending scripted fault; `fault_seed` restarts the generators.
        """
        unknown = set(changes) - set(FAULT_FIELDS)
        if unknown:
            raise ValueError(f"unknown fault setting(s): {', '.join(sorted(unknown))}")
        values = dict(changes)
        if isinstance(values.get("latency_ms"), str):
            values["latency_ms"] = parse_latency(values["latency_ms"])
        elif isinstance(values.get("latency_ms"), list):
            values["latency_ms"] = tuple(values["latency_ms"])
        if "scripted" in values:
            if not isinstance(values["scripted"], Mapping):
                raise ValueError("scripted must map job ids to lists of faults")
            validate_scripted(values["scripted"])
        new = replace(self.config, **values)  # validates the whole config
        self.config = new
        if "fault_seed" in values:
            self._reseed(new.fault_seed)
        if "scripted" in values:
            self._load_scripted(new.scripted)

    def settings(self) -> dict[str, Any]:
        """The current settings, with what is left of each job's script."""
        cfg = self.config
        lo, hi = latency_bounds(cfg.latency_ms)
        return {
            "latency_ms": lo if lo == hi else [lo, hi],
            "error_rate": cfg.error_rate,
            "error_html_share": cfg.error_html_share,
            "reset_rate": cfg.reset_rate,
            "timeout_rate": cfg.timeout_rate,
            "timeout_delay_s": cfg.timeout_delay_s,
            "fault_seed": cfg.fault_seed,
            "scripted": {job: [f.token for f in q] for job, q in self.scripted.items() if q},
        }

    def latency_s(self) -> float:
        lo, hi = latency_bounds(self.config.latency_ms)
        ms = lo if lo == hi else self._latency_rng.uniform(lo, hi)
        return ms / 1000.0

    def next_fault(self, job_id: object) -> Fault | None:
        """The fault for the next admitted request about `job_id` (None: behave normally)."""
        if job_id is not None:
            queue = self.scripted.get(normalize_job_key(job_id))
            if queue:
                return _none_if_ok(queue.popleft())
        queue = self.scripted.get(ANY_JOB)
        if queue:
            return _none_if_ok(queue.popleft())
        return self._random_fault()

    def _random_fault(self) -> Fault | None:
        cfg = self.config
        if not (cfg.error_rate or cfg.reset_rate or cfg.timeout_rate):
            return None
        u = self._rng.random()
        if u < cfg.error_rate:
            status = self._rng.choice(RANDOM_ERROR_STATUSES)
            if self._rng.random() < cfg.error_html_share:
                return Fault(kind="html", status=status, token=f"html{status}")
            return Fault(kind="status", status=status, token=str(status))
        u -= cfg.error_rate
        if u < cfg.reset_rate:
            return Fault(kind="reset", token="reset")
        u -= cfg.reset_rate
        if u < cfg.timeout_rate:
            return Fault(kind="timeout", token="timeout")
        return None


def _none_if_ok(fault: Fault) -> Fault | None:
    return None if fault.kind == "ok" else fault
