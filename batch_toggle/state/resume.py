"""The resume rules, in one place: which recorded run a `--resume` continues, and what is left.

A run is known by its inputs (absolute paths and content hashes) and by the options that shape
its plan (`plan_key`); a resume continues the newest unfinished run with both the same, refuses
when an input's content changed, writes to the outputs that run began, keeps every final
outcome it has (a retryable failure too, unless --retry-failed) and sends the rest. Pure
functions over the state store's public methods, so run, audit and status agree.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

from batch_toggle import vocab
from batch_toggle.config import JobConfig
from batch_toggle.errors import InputError
from batch_toggle.events import Hooks, ResumeNewRunEvent
from batch_toggle.outcome import Outcome
from batch_toggle.state.interface import Store
from batch_toggle.state.records import RunRecord


def plan_key(config: JobConfig) -> str:
    """The options that shape the plan; a resume must match them. The .xlsx sheet only when
    one is named (another sheet is other rows with the same file hash; without --sheet the
    key stays what it was, so runs recorded before --sheet existed still resume)."""
    key: dict[str, Any] = {
        "map": sorted(config.load.column_map), "set_state": config.load.set_state,
        "default_target": config.load.default_target, "on_conflict": config.plan.on_conflict}
    if config.load.sheet is not None:
        key["sheet"] = config.load.sheet
    return json.dumps(key, sort_keys=True)


def input_names(config: JobConfig) -> list[str]:
    """The inputs as the store records them: absolute paths; stdin and the tables given in
    memory by the name that stands for them."""
    return [name if name == "-" or name in config.tables else os.path.abspath(name)
            for name in config.inputs]


def find_resumable(config: JobConfig, store: Store, loaded: Any,
                   hooks: Hooks) -> RunRecord | None:
    """The unfinished run a --resume continues (None, said, when there is none); InputError
    when an input's content changed since that run began."""
    record = store.find_unfinished_run(input_names(config), plan_key(config),
                                       retry_failed=config.retry_failed)
    if record is None:
        hooks.notice("resume: no unfinished run with these inputs and plan options; "
                     "starting a new run")
        hooks.event("resume_new_run", ResumeNewRunEvent(
            reason="no unfinished run with these inputs and plan options"))
        return None
    for (_name, digest), source in zip(record.inputs, loaded.sources, strict=True):
        if digest != source.sha256:
            raise InputError(source.name, f"its content changed since run {record.run_id} "
                             "began; resume refused (see `batch-toggle status`)")
    return record


def same_outputs(config: JobConfig, store: Store) -> JobConfig:
    """A resume writes the report (with its summary and HTML page) and the rejects file of
    the run it continues, in place, unless --report / --rejects say otherwise: a cron job that
    runs in slices has one current report, not one per slice (a 100,000-row job in 20 slices
    left 1.25 GB of them). The paths are those the run recorded when it began."""
    if config.report_path is not None and config.rejects_path is not None:
        return config
    record = store.find_unfinished_run(input_names(config), plan_key(config),
                                       retry_failed=config.retry_failed)
    if record is None:
        return config
    outputs = record.options.get("outputs") or {}
    report, rejects = outputs.get("report"), outputs.get("rejects")
    return replace(
        config,
        report_path=config.report_path or (Path(report) if report else None),
        rejects_path=config.rejects_path or (Path(rejects) if rejects else None))


def previous_outcomes(store: Store | None, run_id: str, unit_rows: Iterable[int],
                      resumed: bool) -> dict[int, Outcome]:
    """Earlier outcomes of a resumed run, by unit index of the new plan (`unit_rows`: each
    unit's input row)."""
    if store is None or not resumed:
        return {}
    by_row = store.load_outcomes(run_id)
    unit_of = {int(r): i for i, r in enumerate(unit_rows)}
    return {unit_of[row]: o for row, o in by_row.items() if row in unit_of}


def units_to_do(units: int, previous: dict[int, Outcome], retry_failed: bool) -> list[int]:
    """The units a resume sends: those without a final outcome, and (--retry-failed) those
    that failed in a way worth trying again."""
    def wanted(unit: int) -> bool:
        done = previous.get(unit)
        if done is None or not done.is_final:
            return True
        return retry_failed and done.status == vocab.FAILED and bool(done.retryable)

    return [u for u in range(units) if wanted(u)]
