"""The outcome of one unit of work: a frozen record, never an exception.

The sender produces one per unit it tried; the plan decides the rest. The report turns outcomes
into the report's outcome columns; the state store persists them so a resume can rebuild
the report.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Outcome:
    status: str
    error_code: str | None = None
    error_message: str | None = None
    retryable: bool | None = None
    http_status: int | None = None
    attempts: int = 0
    entity_id: str | None = None
    confirmed_do_notify_sms: bool | None = None
    sent_at: str | None = None  # UTC ISO 8601 of the last request for this unit
    latency_ms: float | None = None

    @property
    def is_final(self) -> bool:
        """A final outcome is never sent again by a resume (unless --retry-failed and retryable)."""
        return self.status != "not_attempted"
