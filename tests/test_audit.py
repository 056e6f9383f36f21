"""`audit` as a library call: the in-process sandbox (httpx.ASGITransport) on a small world we
choose, a real SQLite state store, real input and report files.

The world: client C1 (sms on) with jobs J1 (on) and J2 (off); client C2 (sms off) with J3 (off)
and J4 (on). The file below asks for a mix, so that in_sync and would_change both occur for job
and client targets, with a duplicate, an unknown job and an invalid row.
"""

from __future__ import annotations

import json
import math
import random
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pyarrow.csv as pa_csv
import pytest
from starlette.applications import Starlette

from batch_toggle import vocab
from batch_toggle.cli.verbose import VerboseLog
from batch_toggle.config import Rate, SendOptions
from batch_toggle.errors import ExitCode, StoreLocked, UsageError
from batch_toggle.events import fan_out
from batch_toggle.jobs.audit import (
    NOT_SAMPLED,
    REVIEW_KEY_NOTE,
    AuditOptions,
    _no_resume,
    audit,
    choose_sample,
    plan_reads,
    wilson_interval,
)
from batch_toggle.jobs.pipeline import Hooks, JobConfig, request_cost, validate
from batch_toggle.plan.units import Units
from batch_toggle.sandbox import SandboxConfig, create_app
from batch_toggle.sandbox.world import build_seed
from batch_toggle.send.classify import TrackResult, Verdict
from batch_toggle.send.operations import track_verdict
from batch_toggle.state.ledger import read_ledger
from batch_toggle.state.sqlite import StateStore

KEY = "sk-audit-test-3c9d"
C1, C2 = "c1000000-0000-4000-8000-000000000001", "c2000000-0000-4000-8000-000000000002"
J1, J2, J3, J4 = (f"a{i}000000-0000-4000-8000-00000000000{i}" for i in range(1, 5))
J9 = "a9000000-0000-4000-8000-000000000009"  # not in the world
RK = {j: f"b{j[1]}000000-0000-4000-8000-0000000000{j[1]}{j[1]}" for j in (J1, J2, J3, J4, J9)}

WORLD = [  # job, client, job sms, client sms
    (J1, C1, True, True), (J2, C1, False, True), (J3, C2, False, False), (J4, C2, True, False),
]
ROWS = [  # job, state, target  -> expected status, confirmed, entity
    (J1, "false", "job"),      # 1 would_change (job on)        entity J1
    (J1, "true", "client"),    # 2 in_sync (C1 on)              entity C1
    (J2, "false", "job"),      # 3 in_sync (job off)            entity J2
    (J3, "true", "client"),    # 4 would_change (C2 off)        entity C2
    (J2, "false", "job"),      # 5 duplicate of row 3: shares in_sync
    (J9, "true", "job"),       # 6 failed job_not_found
    ("12345", "true", "job"),  # 7 invalid
]
EXPECTED = [
    ("would_change", True, J1), ("in_sync", True, C1), ("in_sync", False, J2),
    ("would_change", False, C2), ("duplicate", False, J2), ("failed", None, None),
    ("invalid", None, None),
]


def _app(**config: Any) -> Starlette:
    seed = build_seed({"job_id": j, "review_key": RK[j], "client_id": c,
                       "do_notify_sms": str(s).lower(), "client_do_notify_sms": str(cs).lower()}
                      for j, c, s, cs in WORLD)
    config.setdefault("api_keys", (KEY,))
    return create_app(SandboxConfig(**config), seed=seed)


def _csv(path: Path, rows: list[tuple[str, str, str]]) -> Path:
    lines = ["job_id,review_key,do_notify_sms,update_target"]
    lines += [f"{j},{RK.get(j, RK[J1])},{s},{t}" for j, s, t in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _config(tmp_path: Path, rows: list[tuple[str, str, str]] | None = None,
            name: str = "in", **send: Any) -> JobConfig:
    send.setdefault("base_url", "http://127.0.0.1:9")
    send.setdefault("rate", Rate(10_000, 3600.0))
    send.setdefault("max_rps", 1000.0)
    path = _csv(tmp_path / f"{name}.csv", ROWS if rows is None else rows)
    return JobConfig(inputs=(str(path),), send=SendOptions(**send),
                     report_path=tmp_path / f"{name}-report.csv",
                     state_path=tmp_path / "state.sqlite", api_key=KEY)


class Notices:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def hooks(self) -> Hooks:
        return Hooks(notice=self.lines.append)

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


def _audit(app: Starlette, config: JobConfig, options: AuditOptions | None = None,
           notices: Notices | None = None) -> Any:
    hooks = notices.hooks() if notices else Hooks()
    return audit(config, hooks, options=options, transport=httpx.ASGITransport(app=app))


def _api_requests(app: Starlette) -> list[dict[str, Any]]:
    return [r for r in app.state.world.requests if r["path"].startswith("/api/")]


def _report(path: Path) -> list[dict[str, Any]]:
    """The report as written (CSV: empty cells are nulls, as the writer wrote them)."""
    options = pa_csv.ConvertOptions(strings_can_be_null=True)
    return pa_csv.read_csv(path, convert_options=options).to_pylist()


# --- the reads ------------------------------------------------------------------------------


def test_one_get_per_distinct_job_and_no_put(tmp_path: Path) -> None:
    app = _app()
    _audit(app, _config(tmp_path))
    sent = _api_requests(app)
    assert {r["method"] for r in sent} == {"GET"}
    # J1 has a job row and a client row, J2 a row and its duplicate: still one read each.
    assert sorted(r["job_id"] for r in sent) == sorted([J1, J2, J3, J9])


def test_statuses_confirmed_state_and_entity_follow_the_live_state(tmp_path: Path) -> None:
    result = _audit(_app(), _config(tmp_path))
    rows = _report(tmp_path / "in-report.csv")
    got = [(r["status"], r["confirmed_do_notify_sms"], r["entity_id"]) for r in rows]
    assert got == EXPECTED
    assert rows[5]["error_code"] == "job_not_found"
    assert rows[4]["duplicate_of"].endswith(":3")
    assert result.exit_code == ExitCode.ROW_PROBLEMS  # the failed and the invalid row


def test_all_in_sync_or_would_change_is_exit_0(tmp_path: Path) -> None:
    result = _audit(_app(), _config(tmp_path, ROWS[:4]))
    assert result.exit_code == ExitCode.OK
    assert result.summary["counts_by_status"] == {"would_change": 2, "in_sync": 2}


def test_summary_says_what_a_run_needs_and_that_review_keys_are_not_verified(
        tmp_path: Path) -> None:
    notices = Notices()
    config = _config(tmp_path, max_rps=0.5, rate=Rate(10_000, 3600.0))
    result = _audit(_app(), replace(config, send=replace(config.send, max_rps=1000.0)),
                    notices=notices)
    s = result.summary
    assert s["command"] == "audit"
    assert s["run_needs"] == {**request_cost(2, config.send), **s["run_needs"]}
    assert s["run_needs"]["requests_needed"] == 2  # rows 1 and 4
    assert s["plan"]["requests_needed"] == 4
    assert s["requests_sent"] == 4
    assert REVIEW_KEY_NOTE in s["notes"]
    assert s["audit"]["review_key_verified"] is False
    assert "a run needs 2 requests for them" in notices.text
    assert "review key is not verified by an audit" in notices.text
    assert "4 distinct jobs -> 4 reads" in notices.text


def test_wrong_review_key_is_not_noticed(tmp_path: Path) -> None:
    """The track endpoint does not check review keys: that is why the notes say so."""
    path = tmp_path / "in.csv"
    path.write_text(f"job_id,review_key,do_notify_sms,update_target\n{J2},{RK[J4]},false,job\n")
    config = JobConfig(inputs=(str(path),), send=SendOptions(base_url="http://127.0.0.1:9"),
                       report_path=tmp_path / "in-report.csv", use_state=False, api_key=KEY)
    result = _audit(_app(), config)
    assert result.summary["counts_by_status"] == {"in_sync": 1}


# --- the state store ------------------------------------------------------------------------


def test_ledger_holds_observations_never_confirmations(tmp_path: Path) -> None:
    _audit(_app(), _config(tmp_path))
    with StateStore.open(tmp_path / "state.sqlite", readonly=True) as store:
        assert store.ledger_table(confirmed_only=True).num_rows == 0
        ledger = {(r["job_id"], r["update_target"]): r for r in store.ledger_table().to_pylist()}
        assert store.job_clients() == {J1: C1, J2: C1, J3: C2}
    assert all(r["observed"] and r["review_key_hash"] is None for r in ledger.values())
    assert ledger[(J1, "job")]["do_notify_sms"] is True
    assert ledger[(J1, "client")]["do_notify_sms"] is True
    assert ledger[(J1, "client")]["entity_id"] == C1
    assert ledger[(J3, "client")]["do_notify_sms"] is False
    assert (J9, "job") not in ledger


def test_learnt_clients_make_a_later_plan_see_a_client_level_conflict(tmp_path: Path) -> None:
    """J1 and J2 share client C1: two client rows asking different states must conflict,
    which the plan can only know once something (here the audit) learnt the link."""
    rows = [(J1, "true", "client"), (J2, "false", "client")]
    later = _config(tmp_path, rows, name="later")
    before = validate(later, ledger=read_ledger(later))
    assert before.summary["counts_by_status"] == {"dry_run": 2}
    _audit(_app(), _config(tmp_path, [(J1, "true", "job"), (J2, "true", "job")]))
    after = validate(later, ledger=read_ledger(later))
    assert after.summary["counts_by_status"] == {"conflict": 2}
    assert set(after.report["error_code"].to_pylist()) == {"conflicting_state"}


def test_audit_is_recorded_as_a_run_with_its_reads_in_the_send_log(tmp_path: Path) -> None:
    result = _audit(_app(), _config(tmp_path))
    with StateStore.open(tmp_path / "state.sqlite", readonly=True) as store:
        (record,) = store.list_runs()
        assert record.run_id == result.run_id
        assert (record.command, record.exit_code) == ("audit", 1)
        assert record.counts == result.summary["counts_by_status"]
        # one outcome per unit, the client unit of J1 included
        assert record.outcome_counts == {"would_change": 2, "in_sync": 2, "failed": 1}
        assert len(store.send_log()) == 4  # the reads count against the budget


def test_a_held_lock_refuses_the_audit_before_any_read(tmp_path: Path) -> None:
    app = _app()
    config = _config(tmp_path)
    with StateStore.open(tmp_path / "state.sqlite") as other:
        other.acquire_lock("someone-else", owner="batch-toggle run x.csv")
        with pytest.raises(StoreLocked, match="someone-else"):
            _audit(app, config)
    assert _api_requests(app) == []


def test_missing_key_is_a_usage_error(tmp_path: Path) -> None:
    config = _config(tmp_path)
    app = _app()
    with pytest.raises(UsageError, match="no API key"):
        audit(JobConfig(inputs=config.inputs, report_path=config.report_path,
                        send=config.send), transport=httpx.ASGITransport(app=app))
    assert _api_requests(app) == []


# --- stops ----------------------------------------------------------------------------------


def test_max_requests_stops_with_the_rest_not_attempted(tmp_path: Path) -> None:
    result = _audit(_app(), _config(tmp_path, max_requests=2, concurrency=1))
    rows = _report(tmp_path / "in-report.csv")
    assert result.exit_code == ExitCode.STOPPED
    # J1's read answers rows 1 and 2, J2's rows 3 and 5; J3 and J9 were never read.
    assert [r["status"] for r in rows[:6]] == ["would_change", "in_sync", "in_sync",
                                               "not_attempted", "duplicate", "not_attempted"]
    assert rows[3]["error_code"] == "budget_exhausted"
    # (the CSV's formula guard prefixes the leading "-")
    assert rows[3]["error_message"] == "'--max-requests 2 reached; audit again"
    assert result.summary["verdict"] == "stopped early: the rest was not read; audit again"


def test_a_stopped_audits_events_and_v_lines_advise_auditing_again_not_resume(
        tmp_path: Path) -> None:
    """Audit rejects --resume: the runner's stop advice reaches --events and -v reworded, as
    the report and the summary are (and the -v lines name an audit, not a run)."""
    seen: list[tuple[str, dict[str, Any]]] = []
    lines: list[str] = []
    hooks = Hooks(event=fan_out(lambda k, d: seen.append((k, d)), VerboseLog(2, lines.append)))
    result = audit(_config(tmp_path, max_requests=2, concurrency=1), hooks,
                   transport=httpx.ASGITransport(app=_app()))

    assert result.exit_code == ExitCode.STOPPED
    assert [d for k, d in seen if k == "stop"] == [
        {"code": "budget_exhausted", "exit_code": 4,
         "message": "--max-requests 2 reached; audit again", "resume_after": None}]
    assert [d["command"] for k, d in seen if k == "plan"] == ["audit"]
    (finish,) = [d for k, d in seen if k == "finish"]
    assert finish["verdict"] == "stopped early: the rest was not read; audit again"
    assert "--resume" not in json.dumps(seen)
    assert lines and not [line for line in lines if "--resume" in line]
    assert any(" start: audit " in line for line in lines)
    assert any(" stop (exit 4): --max-requests 2 reached; audit again; " in line
               for line in lines)


@pytest.mark.parametrize(("message", "reworded"), [
    ("--max-requests 5 reached; resume with --resume", "--max-requests 5 reached; audit again"),
    ("interrupted by SIGTERM; resume with --resume", "interrupted by SIGTERM; audit again"),
    ("daily_limit; resume with --resume after 2026-11-04T00:00:00+00:00",
     "daily_limit; audit again after 2026-11-04T00:00:00+00:00"),
    ("the state store failed (disk full); nothing more was sent; fix it and run again with "
     "--resume", "the state store failed (disk full); nothing more was sent; fix it and audit "
     "again"),
    ("halted: 50 rows in a row failed", "halted: 50 rows in a row failed"),
])
def test_no_resume_rewords_each_way_the_runner_advises_a_resume(
        message: str, reworded: str) -> None:
    assert _no_resume(message) == reworded


def test_no_stop_message_of_the_runner_keeps_its_resume_advice_in_an_audit() -> None:
    """A stop message worded a new way in runner.py must not slip past the audit's rewording."""
    runner = Path(__file__).resolve().parents[1] / "batch_toggle" / "send" / "runner.py"
    source = runner.read_text(encoding="utf-8")
    advice = re.findall(r'"([^"\n]*--resume[^"\n]*)"', source)
    assert advice  # the runner does advise --resume (else this test checks nothing)
    for text in advice:
        assert "--resume" not in (_no_resume(text) or ""), text


def test_an_inactive_key_aborts_the_audit(tmp_path: Path) -> None:
    app = _app(inactive_keys=("sk-inactive-0000",))
    config = _config(tmp_path, concurrency=1)
    result = _audit(app, replace(config, api_key="sk-inactive-0000"))
    assert result.exit_code == ExitCode.ABORTED
    rows = _report(tmp_path / "in-report.csv")
    assert (rows[0]["status"], rows[0]["error_code"]) == ("failed", "api_key_invalid")
    assert (rows[1]["status"], rows[1]["error_code"]) == ("failed", "api_key_invalid")
    assert {r["error_code"] for r in rows[2:6] if r["status"] != "duplicate"} == {"aborted"}
    assert len(_api_requests(app)) == 1


# --- --sample ---------------------------------------------------------------------------------


def test_sample_reads_exactly_n_jobs_and_gives_an_interval(tmp_path: Path) -> None:
    app = _app()
    result = _audit(app, _config(tmp_path), AuditOptions(sample=2, seed=3))
    assert len(_api_requests(app)) == 2
    rows = _report(tmp_path / "in-report.csv")
    skipped = [r for r in rows if r["status"] == "not_attempted"]
    assert skipped and all(r["error_message"] == NOT_SAMPLED and r["error_code"] is None
                           for r in skipped)
    audited = [r for r in rows if r["status"] in ("in_sync", "would_change")]
    est = result.summary["sample"]
    assert est["jobs_sampled"] == 2 and est["population_units"] == 5
    assert est["units_in_sync"] == sum(r["status"] == "in_sync" for r in audited)
    low, high = est["interval"]
    assert 0.0 <= low <= (est["estimated_share_in_sync"] or 0.0) <= high <= 1.0
    assert "Wilson" in est["method"]
    again, again_dir = _app(), tmp_path / "again"
    again_dir.mkdir()
    _audit(again, _config(again_dir), AuditOptions(sample=2, seed=3))
    assert ({r["job_id"] for r in _api_requests(again)}
            == {r["job_id"] for r in _api_requests(app)})


def test_a_sample_as_large_as_the_file_is_the_full_audit(tmp_path: Path) -> None:
    app = _app()
    result = _audit(app, _config(tmp_path), AuditOptions(sample=99))
    assert len(_api_requests(app)) == 4
    assert result.summary["sample"] is None


def test_choose_sample_is_seeded_exact_and_in_plan_order() -> None:
    a = choose_sample(1000, 37, seed=5)
    assert a == choose_sample(1000, 37, seed=5) == sorted(set(a))
    assert len(a) == 37 and a != choose_sample(1000, 37, seed=6)
    assert choose_sample(5, None, 1) == choose_sample(5, 5, 1) == [0, 1, 2, 3, 4]


def test_plan_reads_groups_units_by_job_in_first_seen_order() -> None:
    units = Units(row=np.array([0, 3, 1, 5]), job_id=[J1, J1, J2, J3],
                  review_key=["k"] * 4, do_notify_sms=np.array([True, False, True, True]),
                  update_target=["client", "job", "job", "client"],
                  after=np.array([-1, 0, -1, -1]))
    reads = plan_reads(units)
    assert reads.units.job_id == [J1, J2, J3]
    assert reads.of_unit.tolist() == [0, 0, 1, 2]
    assert reads.units.row.tolist() == [0, 1, 5]
    assert reads.units.update_target == ["client", "job", "client"]
    assert reads.units.after.tolist() == [-1, -1, -1]


# --- the interval -----------------------------------------------------------------------------


def test_wilson_interval_matches_its_closed_forms() -> None:
    z2 = 1.959963984540054 ** 2
    assert wilson_interval(0, 10) == pytest.approx((0.0, z2 / (10 + z2)))
    assert wilson_interval(10, 10) == pytest.approx((10 / (10 + z2), 1.0))
    assert wilson_interval(0, 0) == (0.0, 1.0)



@pytest.mark.parametrize(("x", "n"), [(81, 263), (1, 3), (50, 50), (7, 400), (0, 1)])
def test_wilson_interval_agrees_with_epitools_binom_wilson(x: int, n: int) -> None:
    """The same interval in another algebraic form (R epitools::binom.wilson)."""
    z = 1.959963984540054
    inner = z * math.sqrt(x * (n - x) / n**3 + z * z / (4 * n * n))
    scale = n / (n + z * z)
    expected = (scale * (x / n + z * z / (2 * n) - inner),
                scale * (x / n + z * z / (2 * n) + inner))
    assert wilson_interval(x, n) == pytest.approx(expected, abs=1e-12)


def test_finite_population_correction_narrows_and_a_census_is_exact() -> None:
    plain = wilson_interval(30, 50)
    corrected = wilson_interval(30, 50, population=60)
    assert plain[0] < corrected[0] < 0.6 < corrected[1] < plain[1]
    assert wilson_interval(30, 50, population=50) == (0.6, 0.6)
    huge = wilson_interval(30, 50, population=10**9)
    assert huge == pytest.approx(plain, abs=1e-6)


def test_wilson_interval_covers_the_true_share_about_95_percent_of_the_time() -> None:
    rng = random.Random(11)
    population = [True] * 700 + [False] * 300
    covered = 0
    for _ in range(400):
        draw = rng.sample(population, 100)
        low, high = wilson_interval(sum(draw), 100, population=len(population))
        covered += low <= 0.7 <= high
    assert 0.91 <= covered / 400 <= 0.99


# --- one read, several units ----------------------------------------------------------------


def _seen(job: bool, client: bool | None) -> TrackResult:
    v = Verdict("ok", None, None, None, None, 200, J1, C1, job)
    return TrackResult(v, client)


@pytest.mark.parametrize(("target", "desired", "status", "entity", "current"), [
    pytest.param("job", False, vocab.WOULD_CHANGE, J1, True, id="job-would-change"),
    pytest.param("job", True, vocab.IN_SYNC, J1, True, id="job-in-sync"),
    pytest.param("client", False, vocab.IN_SYNC, C1, False, id="client-in-sync"),
    pytest.param("client", True, vocab.WOULD_CHANGE, C1, False, id="client-would-change"),
])
def test_track_verdict(target: str, desired: bool, status: str, entity: str,
                       current: bool) -> None:
    v = track_verdict(_seen(True, False), target, desired)
    assert (v.kind, v.status, v.entity_id, v.confirmed) == ("ok", status, entity, current)


def test_track_verdict_without_the_clients_state_fails_only_the_client_row() -> None:
    seen = _seen(True, None)
    assert track_verdict(seen, "job", True).status == vocab.IN_SYNC
    v = track_verdict(seen, "client", True)
    assert (v.status, v.error_code, v.retryable) == ("failed", "unexpected_response", False)


@pytest.mark.parametrize(("x", "n", "population"), [(3, 20, None), (12, 40, 90), (0, 5, 6)])
def test_wilson_interval_is_symmetric_in_successes_and_failures(
        x: int, n: int, population: int | None) -> None:
    low, high = wilson_interval(x, n, population)
    flipped_low, flipped_high = wilson_interval(n - x, n, population)
    assert (low, high) == pytest.approx((1 - flipped_high, 1 - flipped_low))
