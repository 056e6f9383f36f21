"""The public vocabulary of batch-toggle: statuses, error codes, report columns.

One place owns each of these names because SPEC.md makes them a public interface: reports are
parsed by scripts and filed as compliance evidence, so a renamed status is a breaking change.
"""

from __future__ import annotations

from typing import Final

# The four fields every input row must provide (after --map / --set-state / --default-target).
FIELDS: Final = ("job_id", "review_key", "do_notify_sms", "update_target")

TARGETS: Final = ("job", "client")

# --- statuses -------------------------------------------------------------------------------
UPDATED: Final = "updated"
DRY_RUN: Final = "dry_run"
UNCHANGED: Final = "unchanged"
DUPLICATE: Final = "duplicate"
SUPERSEDED: Final = "superseded"
CONFLICT: Final = "conflict"
INVALID: Final = "invalid"
FAILED: Final = "failed"
MISMATCH: Final = "mismatch"
NOT_ATTEMPTED: Final = "not_attempted"
IN_SYNC: Final = "in_sync"
WOULD_CHANGE: Final = "would_change"

STATUSES: Final = (
    UPDATED, DRY_RUN, UNCHANGED, DUPLICATE, SUPERSEDED, CONFLICT, INVALID, FAILED, MISMATCH,
    NOT_ATTEMPTED, IN_SYNC, WOULD_CHANGE,
)

# Rows in these statuses are fine (exit 0); see SPEC section 9.
OK_STATUSES: Final = frozenset(
    {UPDATED, UNCHANGED, DUPLICATE, SUPERSEDED, DRY_RUN, IN_SYNC, WOULD_CHANGE}
)
# Rows in these statuses make the exit code 1.
PROBLEM_STATUSES: Final = frozenset({INVALID, CONFLICT, FAILED, MISMATCH})
# Rows that need an operator's attention go to --rejects.
ATTENTION_STATUSES: Final = frozenset({INVALID, FAILED, CONFLICT, MISMATCH, NOT_ATTEMPTED})

# --- error codes ----------------------------------------------------------------------------
# A connection that cannot work as configured: the certificate does not verify (issuer, name),
# TLS cannot be agreed, the host does not exist, the proxy refuses us, or a first contact never
# got an answer. Retrying cures none of these; each stops the run (exit 3) until a person acts.
CONNECTION_CODES: Final = (
    "tls_untrusted", "tls_hostname_mismatch", "tls_error", "dns_failure",
    "proxy_auth_required", "proxy_error", "unreachable",
)
ERROR_CODES: Final = (
    "missing_job_id", "missing_review_key", "missing_do_notify_sms", "missing_update_target",
    "invalid_job_id", "invalid_review_key", "invalid_do_notify_sms", "invalid_update_target",
    "conflicting_state", "conflicting_review_key", "bad_request", "incorrect_review_key",
    "job_not_found", "api_key_missing", "api_key_invalid", "permission_denied", "rate_limited",
    "server_error", "timeout", "network_error", "unexpected_response", "resubscribe_blocked",
    "aborted", "halted", "interrupted", "budget_exhausted", "daily_limit",
    *CONNECTION_CODES,
)

# --- report columns -------------------------------------------------------------------------
# The outcome columns that follow the input's own columns in every report, in this order.
OUTCOME_COLUMNS: Final = (
    "source_file", "source_row", "job_id", "update_target", "do_notify_sms", "status",
    "error_code", "error_message", "retryable", "http_status", "attempts", "duplicate_of",
    "entity_id", "confirmed_do_notify_sms", "sent_at", "latency_ms", "run_id",
)

# The masked review key: the shape of a UUID with only its last four characters shown.
REVIEW_KEY_MASK_PREFIX: Final = "********-****-****-****-********"
