"""The few exceptions a run can raise, and the exit codes they map to.

Rows never raise: a bad row becomes an outcome with an error code. Exceptions are for the run as
a whole (a file that cannot be read, a usage mistake, a key the API rejects). Foreign exceptions
(pyarrow, httpx, sqlite3) are translated into these at exactly one boundary each.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    ROW_PROBLEMS = 1  # some row is invalid, conflict, failed or mismatch
    USAGE = 2  # usage or input error, nothing sent
    ABORTED = 3  # aborted by the API (auth/permission) or halted by --halt-after
    STOPPED = 4  # stopped early (--max-requests, --stop-after, outage, daily limit); resumable
    INTERRUPTED = 130  # SIGINT/SIGTERM; resumable


# When several apply, the first of these wins (SPEC section 9).
EXIT_PRECEDENCE = (
    ExitCode.USAGE,
    ExitCode.INTERRUPTED,
    ExitCode.ABORTED,
    ExitCode.STOPPED,
    ExitCode.ROW_PROBLEMS,
    ExitCode.OK,
)


def worst_exit(codes: set[ExitCode] | list[ExitCode]) -> ExitCode:
    """The exit code that wins among several that apply."""
    for code in EXIT_PRECEDENCE:
        if code in codes:
            return code
    return ExitCode.OK


class BatchToggleError(Exception):
    """Base of every error batch-toggle raises on purpose; carries its exit code."""

    exit_code: ExitCode = ExitCode.USAGE


class UsageError(BatchToggleError):
    """A bad option or combination of options; nothing was read or sent."""


class InputError(BatchToggleError):
    """A file that cannot be used as input: message names the file (and row, where known)."""

    def __init__(self, file: str, message: str, row: int | None = None) -> None:
        self.file = file
        self.row = row
        where = f"{file}, row {row}" if row is not None else file
        super().__init__(f"{where}: {message}")


class StoreError(BatchToggleError):
    """The state store cannot be opened, is locked by another run, or is not ours."""


class StoreLocked(StoreError):
    """Another run holds the state store's lock."""
