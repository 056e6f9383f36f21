"""One injected clock: a job's timestamps come from its JobConfig's wall clock and its
durations from the same Clock's monotonic one, so a test moves time without patching a
module's `datetime`."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from pathlib import Path

from batch_toggle.clock import SYSTEM, Clock, system_clock
from batch_toggle.config import JobConfig
from batch_toggle.jobs.pipeline import validate

WALL = datetime(2031, 5, 4, 3, 2, 1, tzinfo=UTC).timestamp()


def test_a_jobs_timestamps_and_duration_come_from_its_clock(tmp_path: Path) -> None:
    source = tmp_path / "in.csv"
    source.write_text("job_id,review_key,do_notify_sms,update_target\n", encoding="utf-8")
    ticks = itertools.count(start=100.0, step=2.5)  # each reading 2.5 s after the last
    clock = Clock(wall=lambda: WALL, mono=lambda: next(ticks))
    config = JobConfig(inputs=(str(source),), report_path=tmp_path / "r.csv", clock=clock)
    summary = validate(config).summary
    assert summary["started_at"] == summary["finished_at"] == "2031-05-04T03:02:01.000Z"
    assert summary["run_id"].startswith("20310504T030201Z-")
    assert summary["duration_s"] > 0 and summary["duration_s"] % 2.5 == 0


def test_the_default_clock_is_the_machines_and_looked_up_when_a_config_is_built() -> None:
    assert JobConfig(inputs=("in.csv",)).clock is SYSTEM is system_clock()
    assert abs(SYSTEM.now().timestamp() - datetime.now(UTC).timestamp()) < 5
