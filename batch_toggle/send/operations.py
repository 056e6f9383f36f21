"""What one unit's request is, and how its reply is read: the toggle PUT, the track GET.

The runner is the same engine for `run` and `audit` (budget, retries, 429s, aborts, progress);
an Operation is the only part that differs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from batch_toggle import vocab
from batch_toggle.outcome import Outcome
from batch_toggle.plan.units import Units
from batch_toggle.send.classify import TrackResult, Verdict, classify_response, classify_track
from batch_toggle.state.records import LedgerUpdate, LedgerUpdates
from batch_toggle.version import __version__

TOGGLE_PATH = "/api/apikeys/toggle_sms_notifications"
TRACK_PATH = "/api/apikeys/track"


def logis_headers(api_key: str) -> dict[str, str]:
    """The headers of every request to Logis: the key (never logged), JSON, and who we are."""
    return {"LOGIS-API-KEY": api_key, "Content-Type": "application/json",
            "User-Agent": f"batch-toggle/{__version__}"}


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    json: dict[str, Any] | None = None
    params: dict[str, str] | None = None


class Operation(Protocol):
    def request(self, unit: int) -> Request: ...

    def classify(self, unit: int, status: int, headers: Mapping[str, str],
                 body: bytes) -> Verdict: ...

    def ledger_update(self, unit: int, outcome: Outcome, verdict_client: str | None,
                      run_id: str) -> LedgerUpdates: ...


@dataclass
class Toggle:
    """PUT toggle_sms_notifications for each unit of a plan."""

    units: Units
    review_key_hash: Callable[[str], str] | None = None

    def request(self, unit: int) -> Request:
        u = self.units
        desired = bool(u.do_notify_sms[unit])
        return Request("PUT", TOGGLE_PATH, json={
            "job_id": u.job_id[unit], "review_key": u.review_key[unit],
            "do_notify_sms": "true" if desired else "false",
            "update_target": u.update_target[unit]})

    def classify(self, unit: int, status: int, headers: Mapping[str, str],
                 body: bytes) -> Verdict:
        return classify_response(status, headers, body, target=self.units.update_target[unit],
                                 desired=bool(self.units.do_notify_sms[unit]))

    def ledger_update(self, unit: int, outcome: Outcome, client_id: str | None,
                      run_id: str) -> LedgerUpdates:
        if outcome.confirmed_do_notify_sms is None or self.review_key_hash is None:
            return None
        # Only an `updated` row confirms a state we asked for. A mismatch is what the server
        # showed instead: an observation, which must not become a "confirmed opt-out" that
        # blocks the next run from asking again (nor skip it as already confirmed).
        confirmed = outcome.status == vocab.UPDATED
        u = self.units
        own = LedgerUpdate(
            job_id=u.job_id[unit], update_target=u.update_target[unit],
            do_notify_sms=outcome.confirmed_do_notify_sms,
            review_key_hash=self.review_key_hash(u.review_key[unit]) if confirmed else None,
            entity_id=outcome.entity_id, client_id=client_id,
            confirmed_at=outcome.sent_at or "", run_id=run_id, observed=not confirmed,
        )
        folded = u.folded.get(unit, ())
        if not folded:
            return own
        # The client units folded into this one (other jobs of the same client) were
        # answered by this request: each is confirmed with its own review key, so that the
        # next run naming one of them alone finds it `unchanged` instead of sending it again.
        hash_key = self.review_key_hash
        return (own, *(replace(own, job_id=job, review_key_hash=hash_key(key) if confirmed
                               else None) for job, key in folded))


def track_verdict(result: TrackResult, target: str, desired: bool) -> Verdict:
    """What one read means for one unit (the product contract, audit): `in_sync` when the target's
    current do_notify_sms equals the desired state, else `would_change`; `confirmed` is the
    current state and `entity_id` the job's id (target job) or the client's (target client).
    A failed read stays as it was."""
    v = result.verdict
    if v.kind != "ok":
        return v
    current = result.state(target)
    if current is None:  # a reply without the client's default cannot answer a client row
        return replace(v, kind="permanent", status=vocab.FAILED, error_code="unexpected_response",
                       message="the track reply did not show the client's do_notify_sms",
                       retryable=False)
    entity = v.entity_id if target == "job" else v.client_id
    status = vocab.IN_SYNC if current == desired else vocab.WOULD_CHANGE
    return replace(v, status=status, confirmed=current, entity_id=entity)


@dataclass
class Track:
    """GET track?job_id= once per distinct job (audit). Keeps what each read showed in `seen`.

    One read answers every unit of its job (target job and target client). The read's own
    outcome speaks for the unit given by `targets[i]`/`desired[i]` (the audit derives any other
    unit of the job from `seen` with `track_verdict`).
    """

    job_ids: Sequence[str]
    targets: Sequence[str]
    desired: Sequence[bool]
    seen: dict[int, TrackResult] = field(default_factory=dict)

    def request(self, unit: int) -> Request:
        return Request("GET", TRACK_PATH, params={"job_id": self.job_ids[unit]})

    def classify(self, unit: int, status: int, headers: Mapping[str, str],
                 body: bytes) -> Verdict:
        result = classify_track(status, headers, body)
        if result.verdict.kind == "ok":
            self.seen[unit] = result
        return track_verdict(result, self.targets[unit], bool(self.desired[unit]))

    def ledger_update(self, unit: int, outcome: Outcome, client_id: str | None,
                      run_id: str) -> LedgerUpdate | None:
        """The job's state as seen, and its client: an observation, never a confirmation (the
        track endpoint checks no review key). The job -> client link feeds the plan's
        client-level conflict detection."""
        result = self.seen.get(unit)
        if result is None or result.verdict.confirmed is None:
            return None
        return LedgerUpdate(
            job_id=self.job_ids[unit], update_target="job",
            do_notify_sms=result.verdict.confirmed, review_key_hash=None,
            entity_id=result.verdict.entity_id, client_id=result.verdict.client_id or client_id,
            confirmed_at=outcome.sent_at or "", run_id=run_id, observed=True,
        )
