"""The library face: batch_toggle.validate / run / audit with plain keywords, returning a Result.

What an Airflow task or a notebook does: call, read .exit_code/.counts/.report, never see a
print or a sys.exit. Runs against the in-process sandbox (sandbox=True) and, for the key from the
environment, the sandbox on a real loopback socket; every state store is a tmp file.
"""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

import batch_toggle
from batch_toggle import ExitCode, Result, UsageError

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "sample_data" / "optouts_2026_11.csv"
MIGRATION = REPO / "sample_data" / "optins_migration.csv"
EXPECTED = json.loads((REPO / "sample_data" / "optouts_2026_11.expected.json").read_text())


@pytest.fixture(autouse=True)
def _no_key_in_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LOGIS_API_KEY", raising=False)
    monkeypatch.delenv("LOGIS_BASE_URL", raising=False)


def test_run_against_the_sandbox_returns_the_outcomes_and_writes_the_files(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    notices: list[str] = []
    result = batch_toggle.run(SAMPLE, sandbox=True, max_rps=1000, report=tmp_path / "r.csv",
                              state=tmp_path / "state.sqlite", notice=notices.append)
    assert isinstance(result, Result)
    assert result.exit_code == ExitCode.ROW_PROBLEMS and not result.ok
    assert result.counts == EXPECTED["status_counts"]
    assert result.error_counts == EXPECTED["error_code_counts"]
    assert isinstance(result.report, pa.Table) and result.report.num_rows == 300
    assert [o["status"] for o in result.outcomes] == [r["status"] for r in EXPECTED["rows"]]
    assert result.outcomes[0]["source_row"] == 1
    assert result.attention().num_rows == sum(
        1 for r in EXPECTED["rows"]
        if r["status"] in {"invalid", "failed", "conflict", "mismatch", "not_attempted"})
    assert result.report_path == tmp_path / "r.csv" and result.report_path.exists()
    assert json.loads(result.summary_path.read_text())["run_id"] == result.run_id
    assert result.html_path is not None and result.html_path.exists()
    assert result.summary["requests_sent"] == EXPECTED["requests_needed"]
    assert result.verdict.startswith("attention")
    # The library never prints; the messages went to `notice`.
    assert capsys.readouterr() == ("", "")
    assert any(line.startswith("plan: 300 rows") for line in notices)


def test_validate_takes_cli_names_in_snake_case(tmp_path: Path) -> None:
    result = batch_toggle.validate(
        [str(MIGRATION)], report=tmp_path / "m.parquet", state=tmp_path / "none.sqlite",
        map={"job_id": "job", "do_notify_sms": "opt_in"}, set_state=False,
        on_conflict="opt-out-wins", html=False, rate="100/m")
    assert result.exit_code == ExitCode.OK, result.counts
    assert set(result.counts) <= {"dry_run", "duplicate", "superseded"}
    assert set(result.report["do_notify_sms"].to_pylist()) == {False}  # --set-state false
    options = result.summary["options"]
    assert options["map"] == {"job_id": "job", "do_notify_sms": "opt_in"}
    assert (options["on_conflict"], options["rate"]) == ("opt-out-wins", "100/m")
    assert result.html_path is None and result.report_path.suffix == ".parquet"


def test_a_dry_run_needs_no_key_and_sends_nothing(tmp_path: Path) -> None:
    result = batch_toggle.run(SAMPLE, dry_run=True, report=tmp_path / "d.csv",
                              state=tmp_path / "none.sqlite")
    assert result.counts["dry_run"] == EXPECTED["requests_needed"]
    assert result.summary["requests_sent"] == 0
    assert not (tmp_path / "none.sqlite").exists()  # a dry run never creates a store


def test_run_reads_the_key_from_the_environment_and_leaves_it_there(
        sandbox_server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOGIS_API_KEY", sandbox_server.api_key)
    job = sandbox_server.jobs[0]
    path = tmp_path / "one.csv"
    path.write_text(f"job_id,review_key,do_notify_sms,update_target\n"
                    f"{job.job_id},{job.review_key},false,job\n", encoding="utf-8")
    result = batch_toggle.run(path, base_url=sandbox_server.base_url, report=tmp_path / "o.csv",
                              state=tmp_path / "state.sqlite")
    assert result.ok and result.counts == {"updated": 1}
    assert sandbox_server.job_state(job.job_id) is False
    import os
    assert os.environ["LOGIS_API_KEY"] == sandbox_server.api_key  # a library leaves env alone


def test_without_a_key_run_raises_a_usage_error_with_exit_code_2(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no API key") as err:
        batch_toggle.run(SAMPLE, report=tmp_path / "x.csv", state=tmp_path / "s.sqlite")
    assert err.value.exit_code == ExitCode.USAGE
    assert not (tmp_path / "x.csv").exists()


def test_a_bad_option_raises_before_anything_is_read(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="unexpected keyword argument.*on_conflit"):
        batch_toggle.validate(SAMPLE, on_conflit="first")  # type: ignore[call-arg]
    with pytest.raises(UsageError, match="on_conflict"):
        batch_toggle.validate(SAMPLE, on_conflict="newest", report=tmp_path / "x.csv")
    with pytest.raises(UsageError, match="^rate 'fast'"):
        batch_toggle.validate(SAMPLE, rate="fast", report=tmp_path / "x.csv")
    assert not (tmp_path / "x.csv").exists()


@pytest.mark.parametrize("call, options, foreign", [
    pytest.param("audit", {"resume": True}, "resume", id="audit-resume"),
    pytest.param("audit", {"canary": 5}, "canary", id="audit-canary"),
    pytest.param("audit", {"skip_confirmed": False}, "skip_confirmed", id="audit-skip"),
    pytest.param("validate", {"sample": 2}, "sample", id="validate-sample"),
    pytest.param("validate", {"concurrency": 2}, "concurrency", id="validate-concurrency"),
    pytest.param("validate", {"dry_run": True}, "dry_run", id="validate-dry-run"),
    pytest.param("run", {"seed": 3}, "seed", id="run-seed"),
])
def test_an_option_of_another_command_is_refused_as_the_cli_refuses_it(
        tmp_path: Path, call: str, options: dict[str, Any], foreign: str) -> None:
    with pytest.raises(UsageError, match=f"{call}\\(\\) does not take {foreign}=") as err:
        extra = {} if call == "validate" else {"sandbox": True}
        getattr(batch_toggle, call)(SAMPLE, report=tmp_path / "x.csv", **extra, **options)
    assert err.value.exit_code == ExitCode.USAGE
    assert not (tmp_path / "x.csv").exists()


def test_retry_failed_without_resume_is_refused_as_the_cli_refuses_it(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="retry_failed=True goes with resume=True"):
        batch_toggle.run(SAMPLE, sandbox=True, retry_failed=True, report=tmp_path / "x.csv")


def test_the_options_type_hints_resolve() -> None:
    """typing.get_type_hints (editors, pydantic, typeguard) resolves every annotation."""
    import typing

    from batch_toggle.config import Rate

    hints = typing.get_type_hints(batch_toggle.Options)
    assert hints["rate"] == str | Rate and hints["max_rps"] is float
    assert set(hints) == set(batch_toggle.Options.__annotations__)


def test_events_go_to_the_file_and_the_callback(tmp_path: Path) -> None:
    seen: list[str] = []
    events = tmp_path / "events.jsonl"
    batch_toggle.run(SAMPLE, sandbox=True, max_rps=1000, report=tmp_path / "r.csv",
                     state=tmp_path / "s.sqlite", events=events,
                     on_event=lambda kind, _data: seen.append(kind))
    kinds = [json.loads(line)["event"] for line in events.read_text().splitlines()]
    assert kinds == seen and kinds[0] == "plan" and kinds[-1] == "finish"


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_an_events_file_that_fails_is_said_through_notice_not_on_the_hosts_stderr(
        tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """A library never writes to its host's stderr (the CLI's writer would also point the
    host's descriptor 2 at /dev/null): the events log's failure goes to `notice`."""
    notices: list[str] = []
    result = batch_toggle.validate(SAMPLE, report=tmp_path / "r.csv", events="/dev/full",
                                   notice=notices.append)
    assert result.exit_code in (ExitCode.OK, ExitCode.ROW_PROBLEMS)
    assert [n for n in notices if n.startswith("warning: --events /dev/full: cannot write")]
    assert "cannot write" not in capfd.readouterr().err


def _has_audit() -> bool:
    try:
        importlib.import_module("batch_toggle.jobs.audit")
    except ImportError:
        return False
    return True


@pytest.mark.skipif(not _has_audit(), reason="batch_toggle/jobs/audit.py is not there yet")
def test_audit_reads_and_reports_in_sync_or_would_change(tmp_path: Path) -> None:
    result = batch_toggle.audit(SAMPLE, sandbox=True, max_rps=1000, report=tmp_path / "a.csv",
                                state=tmp_path / "s.sqlite")
    statuses = [o["status"] for o in result.outcomes]
    for row, status in zip(EXPECTED["rows"], statuses, strict=True):
        if "in_sync_at_seed" in row:
            assert status == ("in_sync" if row["in_sync_at_seed"] else "would_change"), row
    assert statuses[127] == "failed" and result.outcomes[127]["error_code"] == "job_not_found"
    assert result.summary["requests_sent"] < EXPECTED["requests_needed"]  # one read per job
    assert result.html_path is not None and result.html_path.exists()


@pytest.mark.skipif(not _has_audit(), reason="batch_toggle/jobs/audit.py is not there yet")
def test_audit_with_a_sample_reads_only_n_jobs(tmp_path: Path) -> None:
    result = batch_toggle.audit(SAMPLE, sandbox=True, max_rps=1000, sample=10, seed=3,
                                report=tmp_path / "a.csv", state=tmp_path / "s.sqlite")
    assert result.summary["requests_sent"] == 10


def test_batch_toggle_audit_stays_the_function_when_the_module_is_imported() -> None:
    importlib.import_module("batch_toggle.cli.app")  # imports batch_toggle.audit, the module
    if _has_audit():
        importlib.import_module("batch_toggle.jobs.audit")
    assert callable(batch_toggle.audit) and batch_toggle.audit.__module__ == "batch_toggle"
    assert callable(batch_toggle.run) and callable(batch_toggle.validate)


def test_the_package_is_typed() -> None:
    assert (Path(batch_toggle.__file__).parent / "py.typed").exists()
    assert set(batch_toggle.__all__) >= {"validate", "run", "audit", "Result", "Options"}


def _fsynced_paths(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every path os.fsync is called on from the report writer (by its descriptor)."""
    from batch_toggle.report import writers as report

    seen: list[str] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        seen.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(report.os, "fsync", fsync)
    return seen


@pytest.mark.skipif(not Path("/proc/self/fd").exists(), reason="needs /proc")
def test_a_plan_report_is_not_fsynced_a_report_of_requests_sent_is(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """validate and --dry-run send nothing and can be run again: their files skip the fsyncs
    (10-20% of validate's time on a 1M-row file); a run's report is evidence of what was sent
    and survives a power cut. Both are renamed into place whole."""
    seen = _fsynced_paths(monkeypatch)
    batch_toggle.validate(SAMPLE, report=tmp_path / "v.csv", rejects=tmp_path / "v.rejects.csv")
    batch_toggle.run(SAMPLE, dry_run=True, report=tmp_path / "d.csv", state=tmp_path / "s.sqlite")
    assert seen == []
    for name in ("v.csv", "v.rejects.csv", "v.csv.summary.json", "v.csv.html", "d.csv",
                 "d.csv.summary.json"):
        assert (tmp_path / name).stat().st_size > 0, name
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]
    batch_toggle.run(SAMPLE, sandbox=True, max_rps=1000, report=tmp_path / "r.csv",
                     state=tmp_path / "s.sqlite")
    # Temp files are ".<name>.<hex>.tmp", fsynced before the rename; then the directory.
    synced = {Path(p).name[1:].rsplit(".", 2)[0] for p in seen if p.endswith(".tmp")}
    assert {"r.csv", "r.csv.summary.json", "r.csv.html"} <= synced, seen
    assert str(tmp_path) in seen


def test_a_client_row_folded_into_another_of_its_client_is_confirmed_for_the_next_run(
        tmp_path: Path) -> None:
    """Two `client` rows for two jobs of one known client, same state: one request. Its
    confirmation confirms both units, so a later file with the second job's row alone finds
    it `unchanged` (no request) instead of sending it again."""
    from batch_toggle.sandbox import load_seed

    seed = load_seed(REPO / "sample_data" / "sandbox_seed.csv")
    by_client: dict[str, list[Any]] = {}
    for job in seed.jobs:
        by_client.setdefault(job.client_id, []).append(job)
    a, b = next(jobs for jobs in by_client.values() if len(jobs) >= 2)[:2]
    header = "job_id,review_key,do_notify_sms,update_target\n"
    state = tmp_path / "state.sqlite"

    def run(name: str, *rows: str) -> Result:
        path = tmp_path / f"{name}.csv"
        path.write_text(header + "".join(r + "\n" for r in rows), encoding="utf-8")
        return batch_toggle.run(path, sandbox=True, max_rps=1000, state=state, html=False,
                                report=tmp_path / f"{name}.report.csv")

    # The ledger learns both jobs' client from their job-level answers.
    learnt = run("jobs", f"{a.job_id},{a.review_key},false,job",
                 f"{b.job_id},{b.review_key},false,job")
    assert learnt.counts == {"updated": 2}
    both = run("clients", f"{a.job_id},{a.review_key},false,client",
               f"{b.job_id},{b.review_key},false,client")
    assert both.counts == {"updated": 1, "duplicate": 1} and both.summary["requests_sent"] == 1
    alone = run("alone", f"{b.job_id},{b.review_key},false,client")
    assert alone.counts == {"unchanged": 1}
    assert alone.summary["requests_sent"] == 0


def test_a_run_refused_by_a_held_lock_leaves_no_empty_report(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The default report name is reserved (an empty file) before the lock is taken: a run
    that another run's lock refuses gives it back."""
    from batch_toggle.errors import StoreLocked
    from batch_toggle.state.sqlite import StateStore

    monkeypatch.chdir(tmp_path)
    state = tmp_path / "state.sqlite"
    with StateStore.open(state) as holder:
        holder.acquire_lock("someone-else", owner="another run")
        with pytest.raises(StoreLocked):
            batch_toggle.run(SAMPLE, sandbox=True, state=state)
    assert list((tmp_path / "reports").iterdir()) == []
