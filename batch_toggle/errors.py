"""The few exceptions a run can raise, and the exit codes they map to.

Every exception class of the package lives here (the sandbox's own aside), and each is public
as `batch_toggle.<Name>`: a caller catches what the docs name, from one place.

Rows never raise: a bad row becomes an outcome with an error code. Exceptions are for the run as
a whole (a file that cannot be read, a usage mistake, a key the API rejects). Foreign exceptions
(pyarrow, httpx, sqlite3) are translated into these at exactly one boundary each.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import IntEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: the refused file's plan and report (see TooManyInvalid)
    from batch_toggle.jobs.pipeline import JobResult, Prepared


class ExitCode(IntEnum):
    OK = 0
    ROW_PROBLEMS = 1  # some row is invalid, conflict, failed or mismatch
    USAGE = 2  # usage or input error, nothing sent
    ABORTED = 3  # aborted by the API (auth/permission) or halted by --halt-after
    STOPPED = 4  # stopped early (--max-requests, --stop-after, outage, daily limit); resumable
    INTERRUPTED = 130  # SIGINT/SIGTERM; resumable


# When several apply, the first of these wins: a usage error before anything else, then a
# signal, an abort, a stop, and row problems. Both the job's final exit code (worst_exit) and
# the runner's choice among several stops (exit_rank) read this one order.
EXIT_PRECEDENCE: tuple[ExitCode, ...] = (
    ExitCode.USAGE,
    ExitCode.INTERRUPTED,
    ExitCode.ABORTED,
    ExitCode.STOPPED,
    ExitCode.ROW_PROBLEMS,
    ExitCode.OK,
)


_RANK = {code: rank for rank, code in enumerate(EXIT_PRECEDENCE)}


def exit_rank(code: ExitCode) -> int:
    """Where `code` stands in EXIT_PRECEDENCE: the lower, the stronger its claim to be the exit
    code when several apply (0 for a usage error)."""
    return _RANK[code]


def worst_exit(codes: Iterable[ExitCode]) -> ExitCode:
    """The exit code that wins among several that apply (OK when none does)."""
    return min(codes, key=exit_rank, default=ExitCode.OK)


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


class StoreLockLost(StoreError):
    """A run's lock on its work ended with its database session (a server restart, a cut
    connection) and another run took that work meanwhile. This run must send nothing more, or
    the two would send the same rows; the other run goes on with them (a stop, exit 4)."""


class StoreUnavailable(StoreError):
    """The store's database cannot be reached now (a PostgreSQL server down or out of reach):
    the same write may succeed later, so a run pauses rather than stops (up to its outage
    limit)."""


class TooManyInvalid(BatchToggleError):
    """More than --max-invalid percent of rows are invalid: likely a wrong file or --map.

    `share` says that fact in a few words (for the refused report's rows). The job layer
    raises it again with what it made of the refused file: `prepared`, the file read and
    planned without the limit (so its report can still give every row its outcome), and then
    `result`, that report once written (its `report_path` says why each row is invalid)."""

    exit_code = ExitCode.USAGE

    def __init__(self, message: str, share: str = "", *, prepared: Prepared | None = None,
                 result: JobResult | None = None) -> None:
        super().__init__(message)
        self.share: str = share or message
        self.prepared: Prepared | None = prepared
        self.result: JobResult | None = result


class ReportError(BatchToggleError):
    """A report, summary or rejects file could not be written; the previous file is untouched.

    Exit 2 (nothing was sent) unless the job says otherwise: after requests went out, a report
    that cannot be written leaves a resumable run (exit 4)."""

    def __init__(self, message: str, exit_code: ExitCode = ExitCode.USAGE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class ProxyRefused(OSError):
    """The proxy answered CONNECT with something other than 2xx.

    An OSError, not a BatchToggleError: it is one of the failures on the way to a server
    (beside socket.gaierror and ssl.SSLError) that a run classifies into an error code."""

    def __init__(self, status: int, reason: str) -> None:
        self.status = status
        self.reason = reason
        super().__init__(f"{status} {reason}".strip())
