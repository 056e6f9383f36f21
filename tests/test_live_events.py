"""A live run's events and hooks, in process against the in-process sandbox: each row's
event comes before the progress that counts it, names its row by file:line, and a budget wait's
event counts its seconds on the budget's own clock."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from helpers_time import run_virtual, vclock

from batch_toggle.config import Rate, SendOptions
from batch_toggle.jobs import run as live
from batch_toggle.jobs import session
from batch_toggle.jobs.pipeline import Hooks, JobConfig
from batch_toggle.sandbox import Seed
from batch_toggle.send.limiter import WAIT_BUDGET, Budget

UNITS = 12


class Recorder:
    """Hooks that keep every notice, event and progress snapshot, in order."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any, Any]] = []

    def hooks(self) -> Hooks:
        return Hooks(notice=lambda m: self.calls.append(("notice", m, None)),
                     event=lambda k, d: self.calls.append(("event", k, d)),
                     progress=lambda s: self.calls.append(("progress", None, dict(s))))

    def events(self, kind: str | None = None) -> list[tuple[str, dict[str, Any]]]:
        return [(k, d) for c, k, d in self.calls if c == "event" and kind in (None, k)]

    def kinds(self) -> list[str]:
        return [k for k, _ in self.events()]


def write_jobs(path: Path, seed: Seed, n: int) -> Path:
    lines = ["job_id,review_key,do_notify_sms,update_target"]
    lines += [f"{j.job_id},{j.review_key},{str(not j.do_notify_sms).lower()},job"
              for j in seed.jobs[:n]]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def config_for(tmp_path: Path, seed: Seed, **changes: Any) -> JobConfig:
    src = write_jobs(tmp_path / "in.csv", seed, UNITS)
    return JobConfig(inputs=(str(src),), command="run", sandbox=True, html=False,
                     send=SendOptions(max_rps=0), report_path=tmp_path / "report.csv",
                     state_path=tmp_path / "state.sqlite", **changes)


def test_each_row_event_comes_before_the_progress_that_counts_it(
        tmp_path: Path, sandbox_seed: Seed) -> None:
    """The event is the record (--events, -vv); the progress bar is cosmetic and comes after."""
    rec = Recorder()
    live.run(config_for(tmp_path, sandbox_seed), rec.hooks())
    rows = 0
    for call, kind, data in rec.calls:
        if call == "event" and kind == "row":
            rows += 1
        elif call == "progress":
            assert data["done"] <= rows, "a progress snapshot counted a row not yet told"
    assert rows == UNITS


def test_a_row_event_names_its_row_by_file_and_line(tmp_path: Path, sandbox_seed: Seed) -> None:
    rec = Recorder()
    live.run(config_for(tmp_path, sandbox_seed), rec.hooks())
    by_unit = {d["unit"]: d for _, d in rec.events("row")}
    src = tmp_path / "in.csv"
    for data in by_unit.values():
        assert data["source"] == f"{src}:{data['row'] + 1}"
        assert data["job_id"] == sandbox_seed.jobs[data["row"]].job_id
    assert sorted(by_unit) == list(range(UNITS))


def test_a_wait_event_counts_its_seconds_on_the_budgets_clock() -> None:
    """The budget's clock is not always time.monotonic (a test's, a resumed run's seeded
    one): the seconds a "wait" event shows come from the clock the wait is measured on."""
    seen: list[tuple[str, dict[str, Any]]] = []
    hooks = Hooks(event=lambda k, d: seen.append((k, d)))

    async def main() -> None:
        budget = Budget.from_options(SendOptions(rate=Rate(1, 3600.0), max_rps=0),
                                     clock=vclock, on_wait=session.wait_events(hooks))
        async with budget.slot():
            pass
        async with budget.slot():  # the window is full: wait for it
            pass

    run_virtual(main)
    assert [(k, d["reason"]) for k, d in seen] == [("wait", WAIT_BUDGET)]
    assert 3600 <= seen[0][1]["seconds"] <= 3700


