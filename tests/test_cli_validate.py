"""`batch-toggle validate` and `run --dry-run` through the command line.

Most tests drive the click command in-process (CliRunner) in a temporary working directory, with
real files in and out; a few run the real process to prove what a person sees: exit codes, one
line on stderr, never a traceback.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import socket
import stat
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner, Result

from batch_toggle import __version__
from batch_toggle.cli.app import main
from batch_toggle.outcome import Outcome
from batch_toggle.state.sqlite import LedgerUpdate, StateStore
from batch_toggle.vocab import OUTCOME_COLUMNS, REVIEW_KEY_MASK_PREFIX

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "sample_data" / "optouts_2026_11.csv"
EXPECTED = REPO / "sample_data" / "optouts_2026_11.expected.json"

J1 = "0dd6809a-68b1-4b4d-bec4-07c7fdf3ae55"
J2 = "861e9dcc-6253-4318-8549-06ac78d36f41"
J3 = "da1d515f-451f-4c71-a79a-74b2da87b611"
J4 = "b7888318-b8d4-4208-9fe6-63f403e598c8"
K1 = "baa14f0b-f53a-4f7b-8570-ad153a33b5db"
K2 = "0274b644-fb7d-4b1f-a4cb-014074a4473a"
K3 = "a0d92088-01a8-4d0d-bdf9-57e8e15771ee"
K4 = "71b81f97-4a98-4040-b209-10e42072f556"

HEADER = ["Job ID", "Review Key", "SMS", "Target", "Note"]
COMMANDS = [pytest.param(["validate"], id="validate"),
            pytest.param(["run", "--dry-run"], id="run-dry-run")]


# --- helpers -----------------------------------------------------------------------------------


@pytest.fixture
def cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh working directory (default reports land in ./reports) and state home."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("LOGIS_API_KEY", raising=False)
    yield tmp_path


def write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[str]],
              delimiter: str = ",") -> Path:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, delimiter=delimiter, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
    return path


def invoke(args: Sequence[str], *, stdin: bytes | None = None,
           env: dict[str, str | None] | None = None) -> Result:
    result = CliRunner().invoke(main, list(args), input=stdin, env=env)
    # Our errors end in sys.exit with a message; anything else would be a traceback.
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result


def read_report(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def header_of(path: Path) -> list[str]:
    with open(path, newline="", encoding="utf-8") as handle:
        return next(csv.reader(handle))


def summary_of(report: Path) -> dict[str, Any]:
    return json.loads(report.with_name(report.name + ".summary.json").read_text())


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def stderr_lines(result: Result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.strip()]


def clean_file(path: Path) -> Path:
    return write_csv(path, HEADER, [
        [J1, K1, "no", "job", "asked by phone"],
        [J2, "{" + K2.upper() + "}", "opt-out", " Job ", ""],
        [J3, K3, "yes", "client", "web form"],
    ])


def messy_file(path: Path) -> Path:
    """One row of each plan status: dry_run, duplicate, superseded, conflict, invalid."""
    return write_csv(path, HEADER, [
        [J1, K1, "false", "job", "first"],            # 1 dry_run
        [J1.upper(), K1, "no", "job", "again"],       # 2 duplicate of 1
        [J2, K2, "true", "job", "changed mind"],      # 3 superseded by 4 (--on-conflict last)
        [J2, K2, "false", "job", ""],                 # 4 dry_run
        [J3, K3, "false", "job", ""],                 # 5 conflict: two review keys
        [J3, K4, "false", "job", ""],                 # 6 conflict
        ["12345", K1, "false", "job", "typo"],        # 7 invalid_job_id
    ])


# --- exit codes ---------------------------------------------------------------


@pytest.mark.parametrize("command", COMMANDS)
def test_a_clean_file_exits_0_with_every_row_dry_run(cwd: Path, command: list[str]) -> None:
    report = cwd / "out.csv"
    result = invoke([*command, str(clean_file(cwd / "in.csv")), "--report", str(report)])
    assert result.exit_code == 0, result.stderr
    rows = read_report(report)
    assert [r["status"] for r in rows] == ["dry_run"] * 3
    assert [r["job_id"] for r in rows] == [J1, J2, J3]
    assert [r["update_target"] for r in rows] == ["job", "job", "client"]
    assert [r["do_notify_sms"] for r in rows] == ["false", "false", "true"]
    assert summary_of(report)["command"] == " ".join(command)


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("bad_row", [
    pytest.param([J4, K4, "maybe", "job", ""], id="invalid"),
    pytest.param([J1, K4, "no", "job", ""], id="conflict"),
])
def test_invalid_or_conflicting_rows_exit_1(cwd: Path, command: list[str],
                                            bad_row: list[str]) -> None:
    path = clean_file(cwd / "in.csv")
    with open(path, "a", newline="", encoding="utf-8") as handle:
        csv.writer(handle, lineterminator="\n").writerow(bad_row)
    result = invoke([*command, str(path), "--report", str(cwd / "out.csv")])
    assert result.exit_code == 1
    statuses = [r["status"] for r in read_report(cwd / "out.csv")]
    assert statuses[-1] in ("invalid", "conflict")


def _missing_column(cwd: Path) -> tuple[list[str], str]:
    path = write_csv(cwd / "no_target.csv", HEADER[:3], [[J1, K1, "no"]])
    return [str(path)], "no_target.csv"


def _absent_file(cwd: Path) -> tuple[list[str], str]:
    return [str(cwd / "absent.csv")], "absent.csv"


def _directory(cwd: Path) -> tuple[list[str], str]:
    (cwd / "folder.csv").mkdir()
    return [str(cwd / "folder.csv")], "folder.csv"


def _corrupt_parquet(cwd: Path) -> tuple[list[str], str]:
    (cwd / "broken.parquet").write_bytes(b"PAR1 this is not parquet")
    return [str(cwd / "broken.parquet")], "broken.parquet"


def _undecodable(cwd: Path) -> tuple[list[str], str]:
    (cwd / "latin.csv").write_bytes(",".join(HEADER).encode() + b"\n\xe9,\xff,no,job,\n")
    return [str(cwd / "latin.csv"), "--encoding", "utf-8"], "latin.csv"


def _map_to_absent_column(cwd: Path) -> tuple[list[str], str]:
    path = clean_file(cwd / "mapped.csv")
    return [str(path), "--map", "review_key=Tracking Key"], "mapped.csv"


def _too_many_invalid(cwd: Path) -> tuple[list[str], str]:
    path = write_csv(cwd / "wrong.csv", HEADER, [[J1, K1, "no", "job", ""],
                                                 ["x", K2, "no", "job", ""]])
    return [str(path), "--max-invalid", "10"], "wrong.csv"


def _bad_map_syntax(cwd: Path) -> tuple[list[str], str]:
    return [str(clean_file(cwd / "in.csv")), "--map", "colour=Note"], "--map"


def _bad_report_extension(cwd: Path) -> tuple[list[str], str]:
    return [str(clean_file(cwd / "in.csv")), "--report", "out.txt"], "out.txt"


EXIT_2_CASES = [
    pytest.param(_missing_column, id="missing-column"),
    pytest.param(_absent_file, id="unreadable-file"),
    pytest.param(_directory, id="directory"),
    pytest.param(_corrupt_parquet, id="corrupt-parquet"),
    pytest.param(_undecodable, id="undecodable"),
    pytest.param(_map_to_absent_column, id="map-absent-column"),
    pytest.param(_bad_map_syntax, id="map-syntax"),
    pytest.param(_bad_report_extension, id="report-extension"),
]


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("case", EXIT_2_CASES)
def test_input_and_usage_errors_exit_2_with_one_line_and_no_report(cwd: Path, command: list[str],
                                                                   case: Any) -> None:
    args, named = case(cwd)
    result = invoke([*command, *args])
    assert result.exit_code == 2
    lines = stderr_lines(result)
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("batch-toggle: error: ") and named in lines[0]
    assert "Traceback" not in result.output
    written = [p for p in cwd.rglob("*") if p.is_file() and p.parent.name == "reports"]
    assert written == []


@pytest.mark.parametrize("command", COMMANDS)
def test_a_file_refused_by_max_invalid_exits_2_in_one_line_and_still_reports_every_row(
        cwd: Path, command: list[str]) -> None:
    """the product contract: a report for every command, whatever happens; the operator needs to see
    which rows are invalid. Nothing is sent; stderr is the refusal's one line, naming the
    file and the report."""
    args, named = _too_many_invalid(cwd)
    result = invoke([*command, *args, "--report", "out.csv"])
    assert result.exit_code == 2
    lines = stderr_lines(result)
    assert len(lines) == 1 and named in lines[0] and lines[0].endswith("out.csv"), lines
    rows = read_report(cwd / "out.csv")
    assert [(r["status"], r["error_code"]) for r in rows] == [
        ("not_attempted", "aborted"), ("invalid", "invalid_job_id")]
    assert "the file was refused (1 of 2 rows (50%) are invalid" in rows[0]["error_message"]
    assert summary_of(cwd / "out.csv")["verdict"] == "refused: nothing was sent"


@pytest.mark.parametrize("case", [pytest.param(_missing_column, id="missing-column"),
                                  pytest.param(_too_many_invalid, id="max-invalid")])
def test_a_real_process_prints_one_line_and_exits_2(cwd: Path, case: Any) -> None:
    args, named = case(cwd)
    proc = subprocess.run([sys.executable, "-m", "batch_toggle", "validate", *args],
                          capture_output=True, text=True, cwd=cwd, timeout=60,
                          env={**os.environ, "XDG_STATE_HOME": str(cwd / "xdg")})
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and named in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


# --- the report ----------------------------------------------------------------


def test_report_columns_are_the_input_columns_then_the_outcome_columns(cwd: Path) -> None:
    header = ["Job ID", "Review Key", "SMS", "Target", "status", "error_code", "Note"]
    path = write_csv(cwd / "in.csv", header, [
        [J1, K1, "no", "job", "customer said stop", "E1", "x"],
        [J2, "{" + K2.upper() + "}", "no", "job", "", "", ""],
        [J3, "  " + K3.replace("-", "") + " ", "no", "job", "", "", ""],
        [J4, "", "no", "job", "", "", "missing key"],
        [J4, "not-a-key-9Z9Z", "no", "job", "", "", "bad key"],
    ])
    report = cwd / "out.csv"
    assert invoke(["validate", str(path), "--report", str(report)]).exit_code == 1
    assert header_of(report) == ["Job ID", "Review Key", "SMS", "Target", "input_status",
                                 "input_error_code", "Note", *OUTCOME_COLUMNS]
    rows = read_report(report)
    assert [r["Review Key"] for r in rows] == [
        REVIEW_KEY_MASK_PREFIX + K1[-4:],
        REVIEW_KEY_MASK_PREFIX + K2[-4:],  # the normalised key's tail: lower case, no brace
        REVIEW_KEY_MASK_PREFIX + K3[-4:],
        "",  # an empty key stays empty
        REVIEW_KEY_MASK_PREFIX + "9Z9Z",  # an invalid key: the trimmed raw value's tail
    ]
    assert rows[0]["input_status"] == "customer said stop" and rows[0]["status"] == "dry_run"
    assert [r["error_code"] for r in rows[3:]] == ["missing_review_key", "invalid_review_key"]
    text = report.read_bytes() + report.with_name("out.csv.summary.json").read_bytes()
    for key in (K1, K2, K2.upper(), K3, K3.replace("-", "")):
        assert key.encode() not in text


def test_each_plan_status_and_duplicate_of_names_file_and_row(cwd: Path) -> None:
    path = messy_file(cwd / "in.csv")
    report = cwd / "out.csv"
    result = invoke(["validate", str(path), "--report", str(report)])
    assert result.exit_code == 1
    rows = read_report(report)
    assert [r["status"] for r in rows] == ["dry_run", "duplicate", "superseded", "dry_run",
                                           "conflict", "conflict", "invalid"]
    assert [r["error_code"] for r in rows] == ["", "", "", "", "conflicting_review_key",
                                               "conflicting_review_key", "invalid_job_id"]
    assert [r["duplicate_of"] for r in rows] == ["", f"{path}:1", f"{path}:4", "", "", "", ""]
    assert rows[2]["error_message"] == f"superseded by {path}:4, which asks for a different state"
    assert [r["source_row"] for r in rows] == [str(i) for i in range(1, 8)]
    assert {r["source_file"] for r in rows} == {str(path)}
    assert {r["attempts"] for r in rows} == {"0"}
    assert {r["run_id"] for r in rows} == {summary_of(report)["run_id"]}
    for column in ("retryable", "http_status", "entity_id", "confirmed_do_notify_sms",
                   "sent_at", "latency_ms"):
        assert {r[column] for r in rows} == {""}, column


@pytest.mark.parametrize("policy, statuses", [
    pytest.param("first", ["dry_run", "superseded"], id="first"),
    pytest.param("opt-out-wins", ["superseded", "dry_run"], id="opt-out-wins"),
    pytest.param("reject", ["conflict", "conflict"], id="reject"),
])
def test_on_conflict_reaches_the_plan(cwd: Path, policy: str, statuses: list[str]) -> None:
    path = write_csv(cwd / "in.csv", HEADER, [[J1, K1, "yes", "job", ""],
                                              [J1, K1, "no", "job", ""]])
    invoke(["validate", str(path), "--on-conflict", policy, "--report", "out.csv"])
    assert [r["status"] for r in read_report(cwd / "out.csv")] == statuses


def test_default_report_path_is_under_reports_with_the_utc_time(cwd: Path) -> None:
    path = clean_file(cwd / "optouts_nov.csv")
    before = datetime.now(UTC).replace(microsecond=0)
    assert invoke(["validate", str(path)]).exit_code == 0
    after = datetime.now(UTC)
    (report,) = [p for p in (cwd / "reports").iterdir() if p.suffix == ".csv"]
    match = re.fullmatch(r"optouts_nov-(\d{8}T\d{6})\.csv", report.name)
    assert match, report.name
    stamp = datetime.strptime(match.group(1), "%Y%m%dT%H%M%S").replace(tzinfo=UTC)
    assert before <= stamp <= after
    assert summary_of(report)["report"]["path"] == str(Path("reports") / report.name)
    assert [r["status"] for r in read_report(report)] == ["dry_run"] * 3


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl"])
def test_parquet_and_jsonl_reports_hold_the_same_rows_with_raw_values(cwd: Path,
                                                                      suffix: str) -> None:
    path = messy_file(cwd / "in.csv")
    with open(path, "a", newline="", encoding="utf-8") as handle:
        csv.writer(handle, lineterminator="\n").writerow([J4, K4, "no", "job", "=1+1"])
    invoke(["validate", str(path), "--report", "out.csv"])
    invoke(["validate", str(path), "--report", "out" + suffix])
    if suffix == ".parquet":
        table = pq.read_table(cwd / "out.parquet")
        names, rows = table.column_names, table.to_pylist()
    else:
        rows = [json.loads(line) for line in (cwd / "out.jsonl").read_text().splitlines()]
        names = list(rows[0])
    assert names == header_of(cwd / "out.csv")
    as_csv = read_report(cwd / "out.csv")
    assert [r["status"] for r in rows] == [r["status"] for r in as_csv]
    assert [r["duplicate_of"] or "" for r in rows] == [r["duplicate_of"] for r in as_csv]
    assert [r["Review Key"] for r in rows] == [r["Review Key"] for r in as_csv]
    assert rows[1]["do_notify_sms"] is False and rows[1]["source_row"] == 2
    assert rows[-1]["Note"] == "=1+1" and as_csv[-1]["Note"] == "'=1+1"  # guard in CSV only
    assert summary_of(cwd / ("out" + suffix))["report"]["format"] == suffix[1:]


def test_summary_json_is_the_compliance_evidence(cwd: Path) -> None:
    path = messy_file(cwd / "in.csv")
    report = cwd / "out" / "report.csv"
    invoke(["validate", str(path), "--report", str(report), "--on-conflict", "first",
            "--rate", "100/m"])
    summary = summary_of(report)
    rows = read_report(report)
    assert summary["tool"] == "batch-toggle" and summary["version"] == __version__
    assert summary["run_id"] == rows[0]["run_id"]
    assert summary["user"] and summary["host"] == socket.gethostname()
    assert summary["inputs"] == [{"file": str(path), "sha256": sha256(path), "rows": 7,
                                  "encoding": "utf-8", "columns": {
                                      "job_id": "Job ID", "review_key": "Review Key",
                                      "do_notify_sms": "SMS", "update_target": "Target"}}]
    assert summary["options"]["on_conflict"] == "first"
    assert summary["options"]["rate"] == "100/m"
    assert summary["rows"] == 7
    assert summary["counts_by_status"] == dict(Counter(r["status"] for r in rows))
    assert summary["counts_by_error_code"] == {"conflicting_review_key": 2, "invalid_job_id": 1}
    assert summary["plan"]["requests_needed"] == 2
    assert summary["plan"]["estimated_duration_s"] >= 0
    assert isinstance(summary["plan"]["estimated_duration"], str)
    assert summary["requests_sent"] == 0
    assert summary["exit_code"] == 1
    assert summary["report"] == {"path": str(report), "format": "csv", "sha256": sha256(report)}


def test_stderr_states_the_cost_before_anything_else(cwd: Path) -> None:
    path = write_csv(cwd / "in.csv", HEADER, [[J1, K1, "no", "job", ""],
                                              [J2, K2, "no", "job", ""],
                                              [J3, K3, "no", "job", ""]])
    result = invoke(["validate", str(path), "--report", "a.csv"])
    assert stderr_lines(result)[0] == (
        "plan: 3 rows -> 3 requests: about 0 s at 2500/h (0 s to 1 s as replies take 20 ms to "
        "1 s)")
    slow = invoke(["validate", str(path), "--report", "b.csv", "--rate", "2/h"])
    # Two at once, the third once the first's slot frees: the window's hour, its 2% margin,
    # and the latency assumed before any reply (200 ms; 20 ms to 1 s moves it by seconds).
    assert stderr_lines(slow)[0] == (
        "plan: 3 rows -> 3 requests: about 1 h 1 min at 2/h (the first 2 in a burst)")
    assert summary_of(cwd / "b.csv")["plan"] == {
        "requests_needed": 3, "estimated_duration_s": 3672.4,
        "estimated_duration": "1 h 1 min", "rate": "2/h",
        "estimated_duration_range_s": [3672.0, 3674.0],
        "estimated_duration_range": "1 h 1 min", "latency_s": 0.2, "latency_source": "assumed",
        "burst": 2, "slots_held": 0}
    assert "report" in slow.stderr and "b.csv" in slow.stderr  # the summary table follows


def test_a_file_that_targets_only_client_gets_a_note(cwd: Path) -> None:
    only = write_csv(cwd / "clients.csv", HEADER, [[J1, K1, "no", "client", ""],
                                                   [J2, K2, "no", "Client", ""]])
    result = invoke(["validate", str(only), "--report", "a.csv"])
    assert "note: this file targets only `client`" in result.stderr
    assert summary_of(cwd / "a.csv")["client_only"] is True
    assert summary_of(cwd / "a.csv")["notes"]
    mixed = invoke(["validate", str(clean_file(cwd / "mixed.csv")), "--report", "b.csv"])
    assert "targets only" not in mixed.stderr
    assert summary_of(cwd / "b.csv")["client_only"] is False


def test_csv_report_guards_formula_cells(cwd: Path) -> None:
    notes = ["=HYPERLINK(\"http://x\")", "+1 514", "-2", "@SUM(A1)", "\uff1dx", "\tx", "a=b"]
    path = write_csv(cwd / "in.csv", HEADER, [[J1, K1, "no", "job", n] for n in notes])
    invoke(["validate", str(path), "--report", "out.csv"])
    assert [r["Note"] for r in read_report(cwd / "out.csv")] == [
        "'" + n for n in notes[:-1]] + ["a=b"]


def test_report_summary_and_rejects_are_private(cwd: Path) -> None:
    old = os.umask(0)
    try:
        invoke(["validate", str(messy_file(cwd / "in.csv")), "--report", "out.csv",
                "--rejects", "fix.csv"])
    finally:
        os.umask(old)
    for name in ("out.csv", "out.csv.summary.json", "fix.csv"):
        assert stat.S_IMODE((cwd / name).stat().st_mode) == 0o600, name


def test_rejects_hold_only_attention_rows_unmasked_in_the_input_layout(cwd: Path) -> None:
    path = messy_file(cwd / "in.csv")
    result = invoke(["validate", str(path), "--report", "out.csv", "--rejects", "fix.csv"])
    assert result.exit_code == 1
    assert header_of(cwd / "fix.csv") == HEADER
    rejects = read_report(cwd / "fix.csv")
    originals = read_report(path)
    assert rejects == [originals[4], originals[5], originals[6]]  # the conflicts, the invalid
    assert rejects[0]["Review Key"] == K3  # unmasked: ready to fix and re-run
    assert summary_of(cwd / "out.csv")["rejects"] == {"path": "fix.csv", "rows": 3}
    again = invoke(["validate", str(cwd / "fix.csv"), "--report", "again.csv"])
    assert [r["status"] for r in read_report(cwd / "again.csv")] == [
        "conflict", "conflict", "invalid"]
    assert again.exit_code == 1


def test_no_api_key_is_needed_and_a_present_one_is_never_written(cwd: Path) -> None:
    path = clean_file(cwd / "in.csv")
    assert invoke(["run", "--dry-run", str(path), "--report", "a.csv"]).exit_code == 0
    secret = "sk-live-ThisMustNeverAppear-7f3a"
    result = invoke(["run", "--dry-run", str(path), "--report", "b.csv", "--rejects", "r.csv"],
                    env={"LOGIS_API_KEY": secret})
    assert result.exit_code == 0
    for name in ("b.csv", "b.csv.summary.json", "r.csv"):
        assert secret not in (cwd / name).read_text()
    assert secret not in result.output


# --- the state store, read-only -------------------------------------------------------------------


def _store_with_ledger(path: Path) -> None:
    """An earlier run confirmed J1/job opted out (with K1) and J2/job opted out (with K2)."""
    with StateStore.open(path) as store:
        store.create_run("earlier", command="run", inputs=[("old.csv", "0" * 64)],
                         plan_key="k", options={}, total_rows=2,
                         started_at="2026-10-01T00:00:00+00:00")
        items = []
        for row, (job, key) in enumerate(((J1, K1), (J2, K2))):
            outcome = Outcome("updated", attempts=1, http_status=200, entity_id=f"entity-{row}",
                              confirmed_do_notify_sms=False, sent_at="2026-10-01T00:00:01Z")
            update = LedgerUpdate(job, "job", False, store.review_key_hash(key), f"entity-{row}",
                                  None, "2026-10-01T00:00:01Z", "earlier")
            items.append((row, outcome, update))
        store.record_outcomes("earlier", items)
        store.finish_run("earlier", exit_code=0, finished_at="2026-10-01T00:01:00+00:00",
                         counts={"updated": 2})


def _snapshot(store: Path) -> tuple[bytes, int, int]:
    """The store file's bytes and mtime, and how many bytes wait in its write-ahead log."""
    wal = Path(f"{store}-wal")
    return store.read_bytes(), store.stat().st_mtime_ns, wal.stat().st_size if wal.exists() else 0


@pytest.mark.parametrize("command", COMMANDS)
def test_validate_predicts_unchanged_and_blocked_from_the_store_without_writing_it(
        cwd: Path, command: list[str]) -> None:
    state = cwd / "state" / "state.sqlite"
    _store_with_ledger(state)
    before = _snapshot(state)
    path = write_csv(cwd / "in.csv", HEADER, [
        [J1, K1, "no", "job", ""],       # confirmed opted out with this key: unchanged
        [J1, K1, "no", "job", ""],       # its duplicate
        [J2, K2, "yes", "job", ""],      # turning a confirmed opt-out back on: blocked
        [J3, K3, "no", "job", ""],       # unknown to the store: would be sent
        [J1, K4, "no", "client", ""],    # another unit of J1: would be sent
    ])
    result = invoke([*command, str(path), "--state", str(state), "--report", "out.csv"])
    assert result.exit_code == 1
    rows = read_report(cwd / "out.csv")
    assert [r["status"] for r in rows] == ["unchanged", "duplicate", "conflict", "dry_run",
                                           "dry_run"]
    assert rows[2]["error_code"] == "resubscribe_blocked"
    assert rows[0]["entity_id"] == "entity-0" and rows[0]["confirmed_do_notify_sms"] == "false"
    assert rows[1]["duplicate_of"] == f"{path}:1"
    assert summary_of(cwd / "out.csv")["plan"]["requests_needed"] == 2
    assert _snapshot(state) == before  # read, never written

    allowed = invoke([*command, str(path), "--state", str(state), "--report", "allowed.csv",
                      "--allow-resubscribe", "--no-skip-confirmed"])
    assert allowed.exit_code == 0
    assert [r["status"] for r in read_report(cwd / "allowed.csv")] == [
        "dry_run", "duplicate", "dry_run", "dry_run", "dry_run"]
    assert _snapshot(state) == before


# --- inputs ---------------------------------------------------------------------------------------


def test_stdin_dash_is_read_as_csv(cwd: Path) -> None:
    data = clean_file(cwd / "in.csv").read_bytes()
    result = invoke(["validate", "-"], stdin=data)
    assert result.exit_code == 0
    (report,) = [p for p in (cwd / "reports").iterdir() if p.suffix == ".csv"]
    assert re.fullmatch(r"stdin-\d{8}T\d{6}\.csv", report.name)
    rows = read_report(report)
    assert [r["source_file"] for r in rows] == ["<stdin>"] * 3
    assert summary_of(report)["inputs"][0]["sha256"] == hashlib.sha256(data).hexdigest()


def test_several_inputs_with_different_layouts_make_one_report(cwd: Path) -> None:
    first = write_csv(cwd / "a.csv", HEADER, [[J1, K1, "no", "job", "from a"],
                                              [J2, K2, "yes", "job", ""]])
    second = write_csv(cwd / "b.tsv", ["job", "key", "opt_in", "scope", "Client"], [
        [J3, "{" + K3 + "}", "optout", "client", "Anaïs"],
        [J1, K1, "0", "JOB", "José"],  # the same unit as a.csv row 1
    ], delimiter="\t")
    report = cwd / "out.csv"
    assert invoke(["validate", str(first), str(second), "--report", str(report)]).exit_code == 0
    assert header_of(report) == [*HEADER, "job", "key", "opt_in", "scope", "Client",
                                 *OUTCOME_COLUMNS]
    rows = read_report(report)
    assert [(r["source_file"], r["source_row"]) for r in rows] == [
        (str(first), "1"), (str(first), "2"), (str(second), "1"), (str(second), "2")]
    assert [r["Review Key"] for r in rows] == [REVIEW_KEY_MASK_PREFIX + K1[-4:],
                                               REVIEW_KEY_MASK_PREFIX + K2[-4:], "", ""]
    assert [r["key"] for r in rows] == ["", "", REVIEW_KEY_MASK_PREFIX + K3[-4:],
                                        REVIEW_KEY_MASK_PREFIX + K1[-4:]]
    assert [r["status"] for r in rows] == ["dry_run", "dry_run", "dry_run", "duplicate"]
    assert rows[3]["duplicate_of"] == f"{first}:1"
    assert [r["Note"] for r in rows] == ["from a", "", "", ""]
    assert [s["file"] for s in summary_of(report)["inputs"]] == [str(first), str(second)]


def _expected_for_validate(entry: dict[str, Any]) -> dict[str, str]:
    """What validate shows for a row of the sample: run's status, `dry_run` where run sends."""
    sent = entry["status"] in ("updated", "failed")
    expected = {"status": "dry_run" if sent else entry["status"],
                "error_code": "" if sent else entry.get("error_code", "")}
    if "job_id" in entry:
        expected["job_id"] = entry["job_id"]
        expected["update_target"] = entry["update_target"]
    if "do_notify_sms" in entry:
        expected["do_notify_sms"] = entry["do_notify_sms"]
    return expected


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_the_sample_file_gives_the_expected_statuses(cwd: Path, suffix: str) -> None:
    sample = SAMPLE.with_suffix(suffix)
    expected = json.loads(EXPECTED.read_text())
    report = cwd / "out.csv"
    result = invoke(["validate", str(sample), "--report", str(report)])
    assert result.exit_code == 1
    rows = read_report(report)
    assert len(rows) == len(expected["rows"]) == 300
    for row, entry in zip(rows, expected["rows"], strict=True):
        assert row["source_row"] == str(entry["row"])
        want = _expected_for_validate(entry)
        assert {k: row[k] for k in want} == want, entry
        ref = entry.get("duplicate_of_row")
        if ref is not None:
            assert row["duplicate_of"] == f"{sample}:{ref}"
    assert summary_of(report)["plan"]["requests_needed"] == expected["requests_needed"]
    dry = invoke(["run", "--dry-run", str(sample), "--report", "dry.csv"])
    assert dry.exit_code == 1
    assert [r["status"] for r in read_report(cwd / "dry.csv")] == [r["status"] for r in rows]


def test_a_header_only_file_gives_an_empty_report_and_exit_0(cwd: Path) -> None:
    path = write_csv(cwd / "empty.csv", HEADER, [])
    result = invoke(["validate", str(path), "--report", "out.csv"])
    assert result.exit_code == 0
    assert header_of(cwd / "out.csv") == [*HEADER, *OUTCOME_COLUMNS]
    assert read_report(cwd / "out.csv") == []
    assert summary_of(cwd / "out.csv")["plan"]["requests_needed"] == 0


def test_report_rows_survive_quoted_newlines_and_crlf(cwd: Path) -> None:
    text = ",".join(HEADER) + "\r\n" + f'{J1},{K1},no,job,"line one\r\nline two"\r\n'
    (cwd / "in.csv").write_bytes(text.encode())
    invoke(["validate", str(cwd / "in.csv"), "--report", "out.csv"])
    (row,) = read_report(cwd / "out.csv")
    assert row["Note"] == "line one\r\nline two"
    assert (row["update_target"], row["status"]) == ("job", "dry_run")


def test_validate_takes_events_like_every_command(cwd: Path) -> None:
    """the product contract lists --events among the common options: validate appends its plan and
    finish events, opened before anything is read (an unwritable path is exit 2 at once)."""
    src = clean_file(cwd / "in.csv")
    result = invoke(["validate", str(src), "--report", "r.csv", "--events", "e.jsonl"])
    assert result.exit_code == 0, result.stderr
    kinds = [json.loads(line)["event"] for line in (cwd / "e.jsonl").read_text().splitlines()]
    assert kinds[0] == "plan" and kinds[-1] == "finish"
    (cwd / "taken").mkdir()
    bad = invoke(["validate", str(src), "--report", "r2.csv", "--events", "taken"])
    assert bad.exit_code == 2 and "taken" in bad.stderr and not (cwd / "r2.csv").exists()


@pytest.mark.parametrize("flag", ["--no-progress", "--progress"])
def test_validate_accepts_the_progress_flags_run_and_audit_take(cwd: Path, flag: str) -> None:
    """A script that passes --no-progress to every command must not get exit 2 from validate."""
    path = clean_file(cwd / "in.csv")
    result = invoke(["validate", str(path), flag, "--report", "out.csv"])
    assert result.exit_code == 0, result.output
    assert (cwd / "out.csv").exists()


def test_sheet_reads_the_named_xlsx_sheet_and_the_summary_records_it(cwd: Path) -> None:
    import openpyxl

    book = openpyxl.Workbook()
    book.active.title = "Archive"
    book.active.append(HEADER)
    november = book.create_sheet("November")
    november.append(HEADER)
    november.append([J1, K1, "no", "job", ""])
    november.append([J2, K2, "no", "job", ""])
    book.save(cwd / "lists.xlsx")
    first = invoke(["validate", "lists.xlsx", "--report", "first.csv"])
    assert first.exit_code == 0
    assert "read its first sheet 'Archive' of 2" in first.output
    assert summary_of(cwd / "first.csv")["inputs"][0]["sheet"] == "Archive"
    chosen = invoke(["validate", "lists.xlsx", "--sheet", "November", "--report", "nov.csv"])
    assert chosen.exit_code == 0, chosen.output
    summary = summary_of(cwd / "nov.csv")
    assert summary["inputs"][0]["sheet"] == "November" and summary["rows"] == 2
    assert summary["options"]["sheet"] == "November"
    import batch_toggle
    by_index = batch_toggle.validate(cwd / "lists.xlsx", sheet=2, report=cwd / "lib.csv")
    assert by_index.summary["inputs"][0]["sheet"] == "November"
    wrong = invoke(["validate", "lists.xlsx", "--sheet", "December"])
    assert wrong.exit_code == 2 and "no such sheet" in wrong.output
