"""The resume rules, in one place: which recorded run a `--resume` continues, and what is left.

A run is known by its inputs (absolute paths and content hashes) and by the options that shape
its plan (`plan_key`); a resume continues the newest unfinished run with both the same, refuses
when an input's content changed, writes to the outputs that run began, keeps every final
outcome it has (a retryable failure too, unless --retry-failed) and sends the rest. Pure
functions over the state store's public methods, so run, audit and status agree; status's
advice (why a run does not resume, the command line that resumes it) is here too.
"""

from __future__ import annotations

import json
import os
import shlex
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

from batch_toggle import vocab
from batch_toggle.config import JobConfig
from batch_toggle.errors import ExitCode, InputError
from batch_toggle.events import Hooks, ResumeNewRunEvent
from batch_toggle.input.readers import is_in_memory_name, sha256_of
from batch_toggle.outcome import Outcome
from batch_toggle.state.interface import Store
from batch_toggle.state.records import RunRecord
from batch_toggle.vocab import CONNECTION_CODES, FINISHED, RUNNING, STALLED


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


# A run's state as status shows it.


def why_not_resumable(store: Store, record: RunRecord, state: str,
                       check_inputs: bool) -> str | None:
    """None when `run --resume` with the same inputs and plan options would continue it."""
    if record.command != "run":
        return f"a `{record.command}` run; only `run` resumes"
    if state == RUNNING:
        return "it is running now"
    if state == STALLED:
        return ("its process is alive but stuck (its loop stopped answering): stop it with "
                "SIGTERM (it exits at once, recorded as interrupted), then resume")
    cause = record.stopped or {}
    if state == FINISHED and cause.get("code") in CONNECTION_CODES:
        return (f"its connection could not work as configured ({cause['code']}); fix that "
                "(see `stopped` above, or `batch-toggle doctor`), then run again: rows "
                "already confirmed are not re-sent")
    if state == FINISHED and record.exit_code == int(ExitCode.ABORTED):
        # Not resumable, but "finished" alone reads as done at 1% progress.
        return ("it was aborted (exit 3: the API refused the key, or --halt-after stopped "
                "it); fix the cause, then run again: rows already confirmed are not re-sent")
    if state == FINISHED:
        return f"it finished (exit {record.exit_code})"
    return later_run_or_changed_input(store, record, check_inputs)


def only_retry_failed_resumes(store: Store, record: RunRecord, state: str,
                               check_inputs: bool) -> bool:
    """A run that finished with exit 1 and retryable failures: `--resume --retry-failed`
    continues it (re-sending only those), plain `--resume` starts a new run."""
    if state != FINISHED or record.exit_code != int(ExitCode.ROW_PROBLEMS):
        return False
    if record.command != "run" or record.retryable_failed == 0:
        return False
    return later_run_or_changed_input(store, record, check_inputs) is None


def later_run_or_changed_input(store: Store, record: RunRecord,
                                check_inputs: bool) -> str | None:
    latest = store.find_unfinished_run(record.input_names, record.plan_key,
                                       command=record.command, retry_failed=True)
    if latest is None or latest.run_id != record.run_id:
        return "a later run with the same inputs and plan options took its place"
    return input_problem(record) if check_inputs else None


def input_problem(record: RunRecord) -> str | None:
    """Why the inputs no longer match the run (resume would exit 2), or None."""
    for name, digest in record.inputs:
        if name == "-" or is_in_memory_name(name):
            continue  # stdin (or a table) cannot be checked here; the resume itself will
        if not os.path.exists(name):
            return f"input missing: {name}"
        try:
            if sha256_of(name) != digest:
                return f"input changed since the run began: {name}"
        except InputError as exc:
            return f"input unreadable: {exc}"
    return None


def resume_command(record: RunRecord, state_path: Path | str | None = None, *,
                   retry_failed: bool = False) -> str:
    """The command line that continues `record`: same inputs and plan options (they must
    match), `--state` when the store is not the default one."""
    args = ["batch-toggle", "run", *record.input_names, "--resume"]
    if retry_failed:
        args.append("--retry-failed")
    opts = record.options
    for fld, column in sorted((opts.get("map") or {}).items()):
        args += ["--map", f"{fld}={column}"]
    if opts.get("set_state") is not None:
        args += ["--set-state", "true" if opts["set_state"] else "false"]
    if opts.get("default_target"):
        args += ["--default-target", str(opts["default_target"])]
    if opts.get("sheet"):
        args += ["--sheet", str(opts["sheet"])]
    if opts.get("on_conflict") and opts["on_conflict"] != "last":
        args += ["--on-conflict", str(opts["on_conflict"])]
    if state_path is not None:
        args += ["--state", str(state_path)]
    return shlex.join(args)
