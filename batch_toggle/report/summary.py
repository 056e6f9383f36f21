"""The summary JSON beside every report: its shape, typed, and the facts the report itself gives.

The summary is compliance evidence that scripts parse (a monitoring job reads `exit_code` and
`counts_by_status`), and several parts of a job add to it: the pipeline builds the common keys
(jobs/pipeline.build_summary), a run adds what it sent (jobs/run.py), an audit what it read
(jobs/audit.py), the report's writers the files written. `Summary` is the one statement of what
they add up to, so that mypy holds every contributor to it: a key every summary has is
required; one that only some jobs or endings have is NotRequired. docs/report.md describes each
key for a reader.

The types load nothing heavy (`from batch_toggle import Summary` must not load pyarrow); the
two builders below, which read the report, import it when called.
"""

# No `from __future__ import annotations` here: Summary's required and NotRequired keys
# (__required_keys__, __optional_keys__) are its schema at run time too, and Python 3.11 sees
# NotRequired only in evaluated annotations.
from typing import TYPE_CHECKING, Any, Final, NotRequired, TypedDict

from batch_toggle import vocab
from batch_toggle.events import CostRecord

if TYPE_CHECKING:
    import pyarrow as pa

    from batch_toggle.input.readers import LoadedInput


class InputRecord(TypedDict):
    """One input as read: which file, its digest, how many rows, how it was decoded."""

    file: str
    sha256: str  # of the bytes as read
    rows: int
    encoding: str  # as decoded; "parquet", "xlsx" for those
    columns: dict[str, str]  # field -> the column it was read from
    sheet: NotRequired[str]  # an .xlsx input's sheet


class ReportRecord(TypedDict):
    path: str
    format: str  # csv, parquet or jsonl
    sha256: str  # of the report file as written


class RejectsRecord(TypedDict):
    path: str
    rows: int


class HtmlRecord(TypedDict):
    path: str


class RowCount(TypedDict):
    rows: int


class WaitingRecord(TypedDict):
    """After a slice that ended (exit 4 or 130): the rows the next slice sends."""

    rows: int
    note: str


class StoppedRecord(TypedDict):
    """Why a run stopped before its queue was empty, and when a resume can start."""

    code: str
    message: str
    resume_after: str | None


class BudgetUsed(TypedDict):
    requests: int
    rate: str


class AuditRecord(TypedDict):
    jobs: int
    reads_planned: int
    units: int
    units_in_sync: int
    units_would_change: int
    review_key_verified: bool


class JobFacts(TypedDict, total=False):
    """What a job adds to the common keys, replacing those it names (an audit's `plan` and
    `notes`): a job that sent requests (a run's toggles, an audit's reads: jobs/run.py) its
    counts, budget, timeline, connection and why it stopped; an audit (jobs/audit.py) what it
    read and what a run would need."""

    requests_sent: int
    responses_429: int
    retries: int  # every request beyond a unit's first
    requests_by_reason: dict[str, int]  # first, retry, after_429, probe
    budget_used: BudgetUsed
    timeline: dict[str, Any]  # requests, 429s, budget waits per time slice (send/runner.py)
    stopped: StoppedRecord
    connection: dict[str, Any]  # base URL, trust and proxy as used (never a password)
    plan: dict[str, Any]  # an audit's reads' cost as announced: a CostRecord and `requests`
    audit: AuditRecord
    run_needs: dict[str, Any]  # a CostRecord and `what`
    sample: dict[str, Any] | None  # an audit's with --sample: the estimate and its interval
    notes: list[str]


class AttentionFacts(TypedDict):
    error_codes_by_status: dict[str, dict[str, int]]
    attention: RowCount
    waiting: NotRequired[WaitingRecord]


class SummaryBase(TypedDict):
    """The keys every job writes first (jobs/pipeline.build_summary), in this order."""

    tool: str
    version: str
    command: str  # run, run --dry-run, validate or audit
    run_id: str
    started_at: str
    finished_at: str
    duration_s: float
    user: str
    host: str
    platform: str
    inputs: list[InputRecord]
    options: dict[str, Any]  # the options that shaped the run (never the key)
    rows: int
    counts_by_status: dict[str, int]
    counts_by_error_code: dict[str, int]
    plan: CostRecord | dict[str, Any]  # an audit's is its reads': a CostRecord and `requests`
    requests_sent: int
    responses_429: int
    retries: int
    budget_used: int | BudgetUsed  # 0 when nothing was sent
    exit_code: int
    verdict: str
    client_only: bool
    notes: list[str]
    report: ReportRecord


class Summary(SummaryBase):
    """`<report>.summary.json`: the common keys, then a job's own (JobFacts), the report's
    facts (AttentionFacts), and the files written beside the report."""

    requests_by_reason: NotRequired[dict[str, int]]
    timeline: NotRequired[dict[str, Any]]
    stopped: NotRequired[StoppedRecord]
    connection: NotRequired[dict[str, Any]]
    audit: NotRequired[AuditRecord]
    run_needs: NotRequired[dict[str, Any]]
    sample: NotRequired[dict[str, Any] | None]
    error_codes_by_status: dict[str, dict[str, int]]
    attention: RowCount
    waiting: NotRequired[WaitingRecord]
    rejects: NotRequired[RejectsRecord]
    html_report: NotRequired[HtmlRecord]


def summary_of(base: SummaryBase, job: JobFacts, facts: AttentionFacts) -> Summary:
    """The summary in the order its keys are written: a job's keys replace the common ones
    they name, in place (as dict.update does), and add the others after them. The files
    written beside the report (`rejects`, `html_report`) are added once written."""
    return {**base, **job, **facts}  # type: ignore[typeddict-item]  # (rejects, html_report)


WAITING_NOTE: Final = ("not sent yet: the run stopped early and resumes; the next slice sends "
                       "them")


def describe_sources(loaded: "LoadedInput") -> list[InputRecord]:
    """The summary's `inputs`: each file as read, the evidence that it is the file filed."""
    records = []
    for s in loaded.sources:
        record = InputRecord(file=s.name, sha256=s.sha256, rows=s.rows, encoding=s.encoding,
                             columns=dict(s.mapping))
        if s.sheet is not None:
            record["sheet"] = s.sheet
        records.append(record)
    return records


def attention_facts(report: "pa.Table", waiting: bool) -> AttentionFacts:
    """The summary's split of the rows: those that need attention, and (a slice that ended)
    those merely waiting for the next slice; and which statuses carry each error code."""
    import pyarrow.compute as pc

    from batch_toggle.report.table import attention_mask, count_by_code_and_status

    facts = AttentionFacts(
        error_codes_by_status=count_by_code_and_status(report) if report.num_rows else {},
        attention=RowCount(rows=int(pc.sum(attention_mask(report, waiting=waiting)).as_py() or 0)
                           if report.num_rows else 0),
    )
    if waiting:
        rows = int(pc.sum(pc.equal(report["status"], vocab.NOT_ATTEMPTED)).as_py() or 0)
        facts["waiting"] = WaitingRecord(rows=rows, note=WAITING_NOTE)
    return facts
