"""A store's whole history as plain rows: what `batch-toggle state migrate` carries from one
backend to another (state/migrate.py). Rows are tuples in the columns named here, the same for
every backend, so neither backend needs to know the other."""

from __future__ import annotations

from dataclasses import dataclass

RUN_FIELDS = ("run_id", "command", "inputs", "input_names", "plan_key", "options", "total_rows",
              "started_at", "finished_at", "exit_code", "counts", "pid", "host", "resumes",
              "resumed_at", "units", "resume_after", "stopped")
OUTCOME_FIELDS = ("run_id", "row", "status", "error_code", "error_message", "retryable",
                  "http_status", "attempts", "entity_id", "confirmed_do_notify_sms", "sent_at",
                  "latency_ms")
LEDGER_FIELDS = ("job_id", "update_target", "client_id", "conf_state", "conf_hash",
                 "conf_entity", "conf_at", "conf_run", "conf_seq", "obs_state", "obs_entity",
                 "obs_at", "obs_run")
SEND_FIELDS = ("send_id", "sent", "done", "boot", "sent_mono", "done_mono", "key_fp")
ENDPOINT_FIELDS = ("endpoint", "first_answered_at", "last_answered_at")


@dataclass(frozen=True)
class StoreDump:
    """Everything a store holds. `secret` is the review keys' HMAC secret: the ledger's hashes
    mean something only under it, so a migration carries it along. Runs are in the order they
    were created; booleans are bool (or None), whatever the backend stores."""

    secret: bytes
    ledger_seq: int
    runs: list[tuple[object, ...]]
    outcomes: list[tuple[object, ...]]
    ledger: list[tuple[object, ...]]
    sends: list[tuple[object, ...]]
    endpoints: list[tuple[object, ...]]

    def counts(self) -> dict[str, int]:
        return {"runs": len(self.runs), "outcomes": len(self.outcomes),
                "ledger": len(self.ledger), "sends": len(self.sends),
                "endpoints": len(self.endpoints)}
