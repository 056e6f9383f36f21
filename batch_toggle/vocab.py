"""The public vocabulary of batch-toggle: statuses, error codes, report columns, verdicts,
resumability and run states.

One place owns each of these names because they are a public interface: reports are
parsed by scripts and filed as compliance evidence, so a renamed status is a breaking change.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from batch_toggle.errors import ExitCode

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

# Rows in these statuses are fine (exit 0).
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

# --- verdicts -------------------------------------------------------------------------------
# The summary's `verdict`: the exit code in a sentence, with what to do next.
VERDICTS: Final[Mapping[ExitCode, str]] = {
    ExitCode.OK: "ok: every row is in its desired state or needs nothing",
    ExitCode.ROW_PROBLEMS: "attention: some rows are invalid, in conflict, failed or mismatched",
    ExitCode.USAGE: "refused: nothing was sent",
    ExitCode.ABORTED: ("aborted: the API refused the key or the run halted; fix the cause, then "
                       "run again (confirmed rows are not re-sent)"),
    ExitCode.STOPPED: "stopped early: resumable",
    ExitCode.INTERRUPTED: "interrupted: resumable",
}
# Exit 3 for a connection that cannot work as configured (CONNECTION_CODES): the cause is the
# stop's code, and nothing is resumable until a person fixes it.
CONNECTION_VERDICT: Final = ("aborted: the connection to Logis cannot work as configured ({code}); "
                             "fix it (see why), then run again (confirmed rows are not re-sent)")
# An audit changes nothing (exit 0 with rows that would change) and does not resume; the exit
# codes not named here read as a run's.
AUDIT_VERDICTS: Final[Mapping[ExitCode, str]] = {
    ExitCode.OK: "ok: every row was read (in_sync or would_change) or needs no read",
    ExitCode.ABORTED: "aborted: the API refused the key or the audit halted; audit again",
    ExitCode.STOPPED: "stopped early: the rest was not read; audit again",
    ExitCode.INTERRUPTED: "interrupted: the rest was not read; audit again",
}
# The HTML report's verdict box: its CSS class by exit code (any other: "other").
VERDICT_CLASSES: Final[Mapping[int, str]] = {
    ExitCode.OK: "ok", ExitCode.ROW_PROBLEMS: "attention", ExitCode.ABORTED: "stopped",
    ExitCode.STOPPED: "stopped", ExitCode.INTERRUPTED: "stopped",
}


def verdict(command: str, exit_code: ExitCode, stop_code: str | None = None) -> str:
    """The verdict of a `command` (run, validate, audit) that ended with `exit_code`; a stop's
    error code names a connection that cannot work."""
    if exit_code == ExitCode.ABORTED and stop_code in CONNECTION_CODES:
        return CONNECTION_VERDICT.format(code=stop_code)
    return (AUDIT_VERDICTS if command == "audit" else VERDICTS).get(exit_code,
                                                                   VERDICTS[exit_code])


def verdict_class(exit_code: object) -> str:
    """The CSS class of a verdict; the exit code as read back from a summary (any JSON value)."""
    return VERDICT_CLASSES.get(exit_code if isinstance(exit_code, int) else -1, "other")


# --- resumability ---------------------------------------------------------------------------
# A run that ended with one of these exit codes (or never recorded one: it was killed) can be
# continued by `run --resume`: a stop (--max-requests, --stop-after, outage, daily limit) and a
# signal. Exit 3 stops a run for good until a person acts; an audit is never resumed.
RESUMABLE_EXIT_CODES: Final = frozenset({int(ExitCode.STOPPED), int(ExitCode.INTERRUPTED)})


def resumable(exit_code: int | None) -> bool:
    """True for a run that `run --resume` continues: no exit recorded, or a resumable one."""
    return exit_code is None or exit_code in RESUMABLE_EXIT_CODES


# --- run states -----------------------------------------------------------------------------
# A run's state as `status` shows it.
RUNNING: Final = "running"  # holds the store's lock right now
STALLED: Final = "stalled"  # holds the lock, but its heartbeat stopped: its event loop is stuck
KILLED: Final = "killed"  # no exit recorded and not running: killed (kill -9, power cut) or crashed
STOPPED: Final = "stopped"  # exit 4: --max-requests, --stop-after, outage, daily limit
INTERRUPTED: Final = "interrupted"  # exit 130: SIGINT/SIGTERM
FINISHED: Final = "finished"  # any other exit code
RUN_STATES: Final = (RUNNING, STALLED, KILLED, STOPPED, INTERRUPTED, FINISHED)
# The state of a run that ended, by its exit code (any other: FINISHED).
RUN_STATE_OF_EXIT: Final[Mapping[int, str]] = {int(ExitCode.STOPPED): STOPPED,
                                               int(ExitCode.INTERRUPTED): INTERRUPTED}
