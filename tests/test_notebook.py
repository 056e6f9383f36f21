"""The library in a notebook: validate/run/audit take a pandas DataFrame, a pyarrow Table or a
list of dicts as well as files; the report names the input (`<DataFrame>`) and numbers its rows
from 1 as a file's; `Result.to_pandas()` gives the report. pandas stays optional: `import
batch_toggle` loads neither pandas nor pyarrow nor httpx.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pytest

import batch_toggle
from batch_toggle import ExitCode, UsageError

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "sample_data" / "optouts_2026_11.csv"
EXPECTED = json.loads((REPO / "sample_data" / "optouts_2026_11.expected.json").read_text())


@pytest.fixture(autouse=True)
def _here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # default reports land in tmp_path/reports
    monkeypatch.delenv("LOGIS_API_KEY", raising=False)
    monkeypatch.delenv("LOGIS_BASE_URL", raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))


def _sample_records() -> list[dict[str, str]]:
    with SAMPLE.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _as(kind: str) -> Any:
    records = _sample_records()
    if kind == "DataFrame":
        return pd.DataFrame(records)
    if kind == "Table":
        return pa.Table.from_pylist(records)
    return records


@pytest.mark.parametrize("kind", ["DataFrame", "Table", "records"])
def test_validate_takes_a_table_in_memory_and_reports_it_as_a_file(kind: str) -> None:
    result = batch_toggle.validate(_as(kind), html=False)
    assert result.counts["dry_run"] == EXPECTED["requests_needed"]
    file_result = batch_toggle.validate(SAMPLE, html=False)
    assert result.counts == file_result.counts
    assert result.report["source_file"].to_pylist() == [f"<{kind}>"] * 300
    assert result.report["source_row"].to_pylist() == list(range(1, 301))
    assert result.report["status"] == file_result.report["status"]
    assert result.report_path.name.startswith(f"{kind.lower()}-")
    (source,) = result.summary["inputs"]
    assert source["file"] == f"<{kind}>" and source["rows"] == 300
    assert source["encoding"] == "in-memory" and len(source["sha256"]) == 64


def test_run_and_audit_take_tables_too_and_to_pandas_gives_the_report(tmp_path: Path) -> None:
    frame = pd.DataFrame(_sample_records())
    run = batch_toggle.run(frame, sandbox=True, max_rps=1000, state=tmp_path / "s.sqlite",
                           report=tmp_path / "run.csv")
    assert run.exit_code == ExitCode.ROW_PROBLEMS and run.counts == EXPECTED["status_counts"]
    report = run.to_pandas()
    assert isinstance(report, pd.DataFrame) and len(report) == 300
    assert list(report["status"]) == [r["status"] for r in EXPECTED["rows"]]
    audit = batch_toggle.audit(pa.Table.from_pandas(frame), sandbox=True, max_rps=1000,
                               state=tmp_path / "a.sqlite", report=tmp_path / "audit.csv")
    assert audit.report["source_file"].to_pylist()[0] == "<Table>"
    assert audit.counts.get("in_sync", 0) + audit.counts.get("would_change", 0) > 0


def test_a_resume_of_a_dataframe_continues_and_a_changed_one_is_refused(tmp_path: Path) -> None:
    frame = pd.DataFrame(_sample_records())
    common = {"sandbox": True, "max_rps": 1000, "state": tmp_path / "s.sqlite", "html": False}
    first = batch_toggle.run(frame, max_requests=50, report=tmp_path / "r.csv", **common)
    assert first.exit_code == ExitCode.STOPPED
    changed = frame.copy()
    changed.loc[0, "SMS"] = "no"
    with pytest.raises(batch_toggle.InputError, match="<DataFrame>: its content changed"):
        batch_toggle.run(changed, resume=True, **common)
    resumed = batch_toggle.run(frame.copy(), resume=True, **common)
    assert resumed.run_id == first.run_id and resumed.report_path == tmp_path / "r.csv"
    assert resumed.summary["requests_sent"] == EXPECTED["requests_needed"] - 50


def test_several_inputs_mix_files_and_tables_each_named() -> None:
    records = _sample_records()[:5]
    result = batch_toggle.validate([SAMPLE, records, pd.DataFrame(records), records],
                                   html=False, max_invalid=100)
    files = result.report["source_file"].to_pylist()
    assert files[299:] == [str(SAMPLE)] + ["<records>"] * 5 + ["<DataFrame>"] * 5 + \
        ["<records 2>"] * 5
    assert result.report["source_row"].to_pylist()[300:305] == [1, 2, 3, 4, 5]


def test_values_of_other_types_read_as_a_files_cells_would() -> None:
    frame = pd.DataFrame({"job_id": ["0dd6809a-68b1-4b4d-bec4-07c7fdf3ae55"] * 2,
                          "review_key": ["9d0ff6a5-2d0b-4c7c-a4a6-c1b1c5b6b5db"] * 2,
                          "do_notify_sms": [True, False], "update_target": ["job", None],
                          "n": [1.0, float("nan")]})
    result = batch_toggle.validate(frame, html=False, max_invalid=100)
    rows = result.report.to_pylist()
    assert rows[0]["do_notify_sms"] is True and rows[0]["n"] == "1"
    assert rows[1]["status"] == "invalid" and rows[1]["error_code"] == "missing_update_target"
    assert rows[1]["n"] is None


def test_an_input_that_is_neither_a_path_nor_a_table_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="expected a path, a pandas DataFrame"):
        batch_toggle.validate([SAMPLE, 42])
    with pytest.raises(UsageError, match="no input"):
        batch_toggle.validate([])


def test_import_batch_toggle_loads_neither_pandas_nor_pyarrow_nor_httpx() -> None:
    code = ("import sys, batch_toggle; "
            "print(sorted(m for m in ('pandas', 'pyarrow', 'httpx', 'numpy') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    assert out.strip() == "[]"
