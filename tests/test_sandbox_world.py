"""The sandbox's pure parts: seed loading, the sliding-window budget, config and fault parsing."""

from __future__ import annotations

import csv
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from batch_toggle.sandbox import SandboxConfig, SeedError, load_seed, parse_fault, parse_latency
from batch_toggle.sandbox.faults import Faults
from batch_toggle.sandbox.world import EDGE_SLACK, Budgets, SlidingLog, retry_after_seconds

SEED_PATH = Path(__file__).resolve().parents[1] / "sample_data" / "sandbox_seed.csv"
J1 = "11111111-1111-4111-8111-111111111111"
J2 = "22222222-2222-4222-8222-222222222222"
R1 = "aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa"
C1 = "cccccccc-cccc-4ccc-8ccc-cccccccccccc"
COLUMNS = ["job_id", "review_key", "client_id", "do_notify_sms", "client_do_notify_sms"]


def write_seed(path: Path, rows: list[list[str]], columns: list[str] = COLUMNS) -> Path:
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(columns)
        writer.writerows(rows)
    return path


# --- seed ---------------------------------------------------------------------------------


def test_shipped_seed_loads_400_jobs_over_150_clients():
    seed = load_seed(SEED_PATH)
    assert len(seed.jobs) == 400
    assert len(seed.clients) == 150
    assert {j.do_notify_sms for j in seed.jobs} == {True, False}


def test_seed_csv_and_parquet_give_the_same_world(tmp_path):
    rows = [[J1.upper(), R1, C1, "true", "false"], [J2, R1, C1, "FALSE", "false"]]
    csv_seed = load_seed(write_seed(tmp_path / "s.csv", rows))
    table = pa.table({c: pa.array([r[i] for r in rows]) for i, c in enumerate(COLUMNS)})
    pq.write_table(table, tmp_path / "s.parquet")
    assert load_seed(tmp_path / "s.parquet") == csv_seed
    assert csv_seed.jobs[0].job_id == J1  # normalised to lower case
    assert csv_seed.jobs[1].do_notify_sms is False
    assert csv_seed.clients == ((C1, False),)


@pytest.mark.parametrize(
    ("rows", "columns", "message"),
    [
        pytest.param([[J1, R1, C1, "true"]], COLUMNS[:4], "missing column(s) client_do_notify_sms",
                     id="missing-column"),
        pytest.param([[J1, "nope", C1, "true", "true"]], COLUMNS, "row 1: review_key",
                     id="bad-uuid"),
        pytest.param([[J1, R1, C1, "yes", "true"]], COLUMNS, "row 1: do_notify_sms",
                     id="bad-boolean"),
        pytest.param([[J1, R1, C1, "true", "true"], [J1, R1, C1, "true", "true"]], COLUMNS,
                     "row 2: duplicate job_id", id="duplicate-job"),
        pytest.param([[J1, R1, C1, "true", "true"], [J2, R1, C1, "true", "false"]], COLUMNS,
                     "row 2: client", id="client-two-defaults"),
    ],
)
def test_a_malformed_seed_is_refused_naming_file_and_row(tmp_path, rows, columns, message):
    path = write_seed(tmp_path / "bad.csv", rows, columns)
    with pytest.raises(SeedError, match="bad.csv") as info:
        load_seed(path)
    assert message in str(info.value)


def test_an_unreadable_seed_is_a_seed_error(tmp_path):
    with pytest.raises(SeedError, match="cannot read"):
        load_seed(tmp_path / "missing.csv")
    (tmp_path / "x.parquet").write_bytes(b"not parquet")
    with pytest.raises(SeedError, match="Parquet"):
        load_seed(tmp_path / "x.parquet")


# --- the sliding window -------------------------------------------------------------------


def test_sliding_log_accepts_n_then_says_how_long_to_wait():
    log = SlidingLog(limit=3, window=10.0)
    for t in (0.0, 1.0, 2.0):
        assert not log.full(t)
        log.record(t)
    assert log.full(5.0)
    assert log.wait(5.0) == pytest.approx(5.0)
    assert retry_after_seconds(log.wait(5.0)) == 5  # the event at 0.0 leaves at 10.0
    assert log.full(9.999)
    assert not log.full(10.0)  # half-open window: (t - 10, t]


def test_retry_after_rounds_up_and_is_at_least_one_second():
    assert retry_after_seconds(4.2) == 5
    assert retry_after_seconds(5.0) == 5
    assert retry_after_seconds(5.01) == 6
    assert retry_after_seconds(0.2) == 1


def test_a_refused_request_counts_by_default_so_retry_after_accounts_for_it():
    budgets = Budgets(SandboxConfig(hourly_limit=3, window=10.0))
    assert all(budgets.admit("k", t).allowed for t in (0.0, 1.0, 2.0))
    refused = budgets.admit("k", 5.0)
    assert not refused.allowed and not refused.daily
    # 0.0, 1.0, 2.0 and the refused 5.0 are in the window: two must leave, 1.0 at 11.0.
    assert refused.wait == pytest.approx(6.0)
    assert not budgets.admit("k", 10.5).allowed
    assert budgets.admit("k", 12.0).allowed  # 10.5 counted too: now 2.0 had to leave


def test_without_count_rejected_only_accepted_requests_count():
    budgets = Budgets(SandboxConfig(hourly_limit=3, window=10.0, count_rejected=False))
    assert all(budgets.admit("k", t).allowed for t in (0.0, 1.0, 2.0))
    assert budgets.admit("k", 5.0).wait == pytest.approx(5.0)
    assert not budgets.admit("k", 9.9).allowed
    assert budgets.admit("k", 10.0).allowed


def test_daily_limit_is_shared_by_every_key_of_the_user():
    budgets = Budgets(SandboxConfig(hourly_limit=100, daily_limit=3, daily_window=100.0))
    assert budgets.admit("a", 0.0).allowed
    assert budgets.admit("b", 1.0).allowed
    assert budgets.admit("a", 2.0).allowed
    refused = budgets.admit("b", 3.0)
    assert not refused.allowed and refused.daily
    assert refused.wait == pytest.approx(98.0)  # 1.0 + 100 - 3.0: two of four must leave


@settings(max_examples=200, deadline=None)
@given(
    limit=st.integers(1, 6),
    window=st.sampled_from([1.0, 2.5, 10.0]),
    gaps=st.lists(st.floats(0.0, 3.0, allow_nan=False), min_size=1, max_size=60),
    count_rejected=st.booleans(),
)
def test_no_window_ever_holds_more_than_n_accepted(limit, window, gaps, count_rejected):
    budgets = Budgets(SandboxConfig(hourly_limit=limit, window=window,
                                    count_rejected=count_rejected))
    t, accepted = 0.0, []
    for gap in gaps:
        t += gap
        decision = budgets.admit("k", t)
        if decision.allowed:
            accepted.append(t)
        else:
            assert decision.wait > 0
    for i, start in enumerate(accepted):
        # EDGE_SLACK: an event leaves its window a microsecond early (float rounding).
        in_window = [s for s in accepted[i:] if s < start + window - EDGE_SLACK]
        assert len(in_window) <= limit


@settings(max_examples=200, deadline=None)
@given(
    limit=st.integers(1, 6),
    gaps=st.lists(st.floats(0.0, 2.0, allow_nan=False), min_size=1, max_size=40),
    count_rejected=st.booleans(),
)
def test_a_client_honouring_retry_after_is_not_refused_again(limit, gaps, count_rejected):
    budgets = Budgets(SandboxConfig(hourly_limit=limit, window=5.0,
                                    count_rejected=count_rejected))
    t = 0.0
    for gap in gaps:
        t += gap
        decision = budgets.admit("k", t)
        if not decision.allowed:
            t += retry_after_seconds(decision.wait)
            assert budgets.admit("k", t).allowed


# --- config and faults --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("token", "kind", "status", "retry_after"),
    [
        ("503", "status", 503, None),
        ("429", "status", 429, 1.0),
        ("429:7", "status", 429, 7.0),
        ("html500", "html", 500, None),
        (" HTML502 ", "html", 502, None),
        ("reset", "reset", None, None),
        ("reset-after", "reset-after", None, None),
        ("timeout", "timeout", None, None),
        ("ok", "ok", None, None),
    ],
)
def test_scripted_fault_tokens(token, kind, status, retry_after):
    fault = parse_fault(token)
    assert (fault.kind, fault.status, fault.retry_after) == (kind, status, retry_after)


@pytest.mark.parametrize("token", ["200", "boom", "503:5", "html429:2", "600", ""])
def test_unknown_fault_tokens_are_refused(token):
    with pytest.raises(ValueError, match="unknown fault"):
        parse_fault(token)


def test_config_validates_what_it_is_given():
    with pytest.raises(ValueError, match="fault rates"):
        SandboxConfig(error_rate=0.7, reset_rate=0.5)
    with pytest.raises(ValueError, match="unknown fault"):
        SandboxConfig(scripted={J1: ["explode"]})
    with pytest.raises(ValueError, match="list of faults"):
        SandboxConfig(scripted={J1: "503"})
    with pytest.raises(ValueError, match="retry_after_style"):
        SandboxConfig(retry_after_style="minutes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="hourly_limit"):
        SandboxConfig(hourly_limit=0)
    with pytest.raises(ValueError, match="latency"):
        SandboxConfig(latency_ms=(50.0, 5.0))


def test_config_freezes_lists_and_dicts_it_is_given():
    cfg = SandboxConfig(api_keys=["a", "b"], scripted={J1: ["503"]})  # type: ignore[arg-type]
    assert cfg.api_keys == ("a", "b")
    assert cfg.scripted[J1] == ("503",)
    with pytest.raises(TypeError):
        cfg.scripted[J1] = ("500",)  # type: ignore[index]


def test_parse_latency():
    assert parse_latency("50") == 50.0
    assert parse_latency(" 5-200 ") == (5.0, 200.0)
    with pytest.raises(ValueError, match="milliseconds"):
        parse_latency("fast")


def test_random_faults_are_reproducible_from_their_seed():
    cfg = SandboxConfig(error_rate=0.3, reset_rate=0.2, timeout_rate=0.1, fault_seed=7)
    first = [Faults(cfg).next_fault(J1) for _ in range(1)]
    a, b = Faults(cfg), Faults(cfg)
    seq_a = [a.next_fault(J1) for _ in range(200)]
    seq_b = [b.next_fault(J1) for _ in range(200)]
    assert seq_a == seq_b and first[0] == seq_a[0]
    kinds = {f.kind for f in seq_a if f is not None}
    assert kinds == {"status", "html", "reset", "timeout"}
    share = sum(f is not None for f in seq_a) / 200
    assert 0.45 < share < 0.75


def test_scripted_faults_come_first_then_random_ones_then_none():
    faults = Faults(SandboxConfig(scripted={J1.upper(): ["503", "ok", "reset"], "*": ["500"]}))
    assert faults.next_fault(J1).status == 503  # type: ignore[union-attr]
    assert faults.next_fault(J1) is None  # "ok"
    assert faults.next_fault(J1).kind == "reset"  # type: ignore[union-attr]
    assert faults.next_fault(J2).status == 500  # type: ignore[union-attr]  # "*"
    assert faults.next_fault(J1) is None
    assert faults.settings()["scripted"] == {}


def test_fault_updates_are_all_or_nothing():
    faults = Faults(SandboxConfig())
    with pytest.raises(ValueError, match="unknown fault setting"):
        faults.update({"error_rate": 0.5, "colour": "red"})
    with pytest.raises(ValueError):
        faults.update({"error_rate": 2.0})
    assert faults.settings()["error_rate"] == 0.0
    faults.update({"latency_ms": "5-10", "scripted": {J1: ["503"]}})
    assert faults.settings()["latency_ms"] == [5.0, 10.0]
    assert faults.settings()["scripted"] == {J1: ["503"]}
