"""One builder for the CLI and the library: the same options give the same JobConfig."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import batch_toggle
from batch_toggle.cli.app import build_config, main
from batch_toggle.config import LoadOptions, PlanOptions, Rate, SendOptions, cli_name
from batch_toggle.errors import UsageError
from batch_toggle.jobs.options import column_map, job_config, read_key_file


def cli_config(args: list[str]) -> Any:
    """The JobConfig `batch-toggle run ARGS` would build, parsed by click itself."""
    command = main.get_command(None, "run")  # type: ignore[arg-type]
    assert command is not None
    with command.make_context("run", args) as ctx:
        return build_config("run", ctx.params, dry_run=True)


def test_the_cli_and_the_library_build_the_same_config(tmp_path: Path) -> None:
    report = tmp_path / "r.csv"
    cli = cli_config([
        "in.csv", "--map", "review_key=Tracking Key", "--map", "job_id=Job Ref",
        "--set-state", "true", "--default-target", "client", "--on-conflict", "opt-out-wins",
        "--max-invalid", "12.5", "--no-skip-confirmed", "--allow-resubscribe",
        "--rate", "100/10m", "--max-rps", "3", "--concurrency", "7", "--timeout", "9",
        "--max-attempts", "2", "--daily-limit", "900", "--max-requests", "40",
        "--stop-after", "55m", "--halt-after", "5", "--canary", "20",
        "--base-url", "http://127.0.0.1:1", "--report", str(report), "--no-html",
        "--dry-run"])
    library = batch_toggle._config("run", "in.csv", {
        "map": {"review_key": "Tracking Key", "job_id": "Job Ref"}, "set_state": True,
        "default_target": "client", "on_conflict": "opt-out-wins", "max_invalid": 12.5,
        "skip_confirmed": False, "allow_resubscribe": True, "rate": "100/10m", "max_rps": 3,
        "concurrency": 7, "timeout": 9, "max_attempts": 2, "daily_limit": 900,
        "max_requests": 40, "stop_after": "55m", "halt_after": 5, "canary": 20,
        "base_url": "http://127.0.0.1:1", "report": report, "html": False, "dry_run": True})
    assert library == cli
    assert cli.send.rate == Rate(100, 600.0) and cli.send.stop_after == 55 * 60.0
    assert cli.load.column_map == (("review_key", "Tracking Key"), ("job_id", "Job Ref"))
    assert cli.plan.skip_confirmed is False and cli.html is False and cli.report_path == report


def test_with_no_options_both_take_the_dataclasses_defaults(monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    monkeypatch.delenv("LOGIS_BASE_URL", raising=False)
    library = batch_toggle._config("run", "in.csv", {"dry_run": True})
    assert cli_config(["in.csv", "--dry-run"]) == library
    assert (library.load, library.plan, library.send) == (LoadOptions(), PlanOptions(),
                                                          SendOptions())
    assert library.html is True and library.report_path is None


def test_an_empty_key_file_is_an_error_for_the_library_too(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    """Not a silent fall-back to LOGIS_API_KEY, which may be another account's key."""
    empty = tmp_path / "key.txt"
    empty.write_text("  \n", encoding="utf-8")
    monkeypatch.setenv("LOGIS_API_KEY", "env-key-of-another-account")
    with pytest.raises(UsageError, match="api_key_file .*key.txt: the file is empty"):
        batch_toggle._config("run", "in.csv", {"api_key_file": empty})
    with pytest.raises(UsageError, match="--api-key-file .*key.txt: the file is empty"):
        read_key_file(empty, cli_name)


def test_errors_name_the_option_as_its_caller_knows_it() -> None:
    with pytest.raises(UsageError, match=r"^--map 'colour': expected FIELD=COLUMN"):
        column_map(("colour",), cli_name)
    with pytest.raises(UsageError, match=r"^map 'colour=Colour': expected FIELD=COLUMN"):
        column_map({"colour": "Colour"})
    with pytest.raises(UsageError, match=r"^set_state 'maybe': expected true or false"):
        job_config("validate", ["in.csv"], {"set_state": "maybe"})
    with pytest.raises(UsageError, match=r"^--default-target 'both': expected one of job"):
        job_config("validate", ["in.csv"], {"default_target": "both"}, name=cli_name)
    with pytest.raises(UsageError, match=r"^--stop-after 'abc': expected e.g. 90s"):
        job_config("run", ["in.csv"], {"stop_after": "abc"}, name=cli_name)
    with pytest.raises(UsageError, match=r"^rate 'fast': expected N/PERIOD"):
        job_config("run", ["in.csv"], {"rate": "fast"})


@pytest.mark.parametrize("key", ["clé-ünicode", "bad key\nsecond line", "Zq7-tab\there",
                                 "nul9\x00"])
def test_a_key_no_http_header_can_carry_is_a_usage_error_that_does_not_show_it(key: str) -> None:
    with pytest.raises(UsageError, match="an HTTP header cannot carry at position") as err:
        job_config("run", ["in.csv"], {}, api_key=key)
    assert key not in str(err.value) and key.split()[0] not in str(err.value)
    job_config("run", ["in.csv"], {}, api_key=key, dry_run=True)  # not sent: not checked
    job_config("run", ["in.csv"], {}, api_key="LK-live-7f3e 9a1b~!")  # printable ASCII is fine


def test_the_cli_refuses_such_a_key_in_one_line_before_reading_anything(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    env = {**os.environ, "LOGIS_API_KEY": "clé-ünicode-secret"}
    proc = subprocess.run(
        [sys.executable, "-m", "batch_toggle", "run", str(tmp_path / "absent.csv"),
         "--report", str(tmp_path / "r.csv"), "--state", str(tmp_path / "s.sqlite")],
        capture_output=True, text=True, env=env, timeout=60, check=False)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert "secret" not in proc.stderr and "absent.csv" not in proc.stderr  # before reading
    assert not list(tmp_path.iterdir())


def test_a_bad_value_is_named_where_it_came_from(tmp_path: Path) -> None:
    """Who set BATCH_TOGGLE_RATE, or a key in the config file, typed no --rate."""
    from click.testing import CliRunner

    src = tmp_path / "in.csv"
    src.write_text("job_id,review_key,do_notify_sms\n", encoding="utf-8")
    config = tmp_path / "bt.toml"
    config.write_text('[validate]\nrate = "soon"\n', encoding="utf-8")
    runner = CliRunner()
    cases = [(["validate", str(src), "--rate", "fast"], {}, "--rate 'fast'"),
             (["validate", str(src)], {"BATCH_TOGGLE_RATE": "fast"}, "BATCH_TOGGLE_RATE 'fast'"),
             (["--config", str(config), "validate", str(src)], {}, "rate (config file) 'soon'")]
    for args, env, named in cases:
        result = runner.invoke(main, [*args, "--report", str(tmp_path / "r.csv")], env=env)
        assert result.exit_code == 2, result.output
        assert f"batch-toggle: error: {named}: expected N/PERIOD" in result.stderr


@pytest.mark.parametrize(("option", "value"), [
    ("concurrency", 0), ("concurrency", -3), ("concurrency", 65), ("max_rps", 0),
    ("timeout", 0), ("max_attempts", 0), ("daily_limit", 0), ("max_requests", 0),
    ("halt_after", 0), ("canary", -1), ("max_invalid", 101)])
def test_the_library_checks_the_ranges_the_cli_checks(option: str, value: float) -> None:
    """Found by exploratory testing: run(concurrency=0) sent nothing and returned exit 0."""
    with pytest.raises(UsageError, match=rf"^{option} {value!r}: must be"):
        batch_toggle._config("run", "in.csv", {option: value, "dry_run": True})


def test_the_sheet_is_part_of_the_plan_key_only_when_named() -> None:
    """Another sheet is other rows under the same file hash: a resume must not continue a run
    of another sheet. Without --sheet the key is what it always was (older runs resume)."""
    import json

    from batch_toggle.state.resume import plan_key

    plain = job_config("run", ["x.xlsx"], {})
    november = job_config("run", ["x.xlsx"], {"sheet": "November"})
    assert json.loads(plan_key(plain)) == {"default_target": None, "map": [],
                                           "on_conflict": "last", "set_state": None}
    assert json.loads(plan_key(november))["sheet"] == "November"
    assert job_config("run", ["x.xlsx"], {"sheet": 2}).load.sheet == "2"
    with pytest.raises(UsageError, match="sheet 0: a sheet name, or an index from 1"):
        job_config("run", ["x.xlsx"], {"sheet": 0})


# --- the rules between options: one statement, met by every way in ----------------------------


def refused_by_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Exit 2 and the one line, as `batch-toggle ARGV` says it (the part after "error: ")."""
    from batch_toggle.cli.app import main as cli

    with pytest.raises(SystemExit) as exited:
        cli.main(argv, standalone_mode=False)
    assert exited.value.code == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    return line.removeprefix("batch-toggle: error: ").split(" (it re-sends")[0]


@pytest.mark.parametrize(("way", "said"), [
    ("cli", "--retry-failed goes with --resume"),
    ("library", "retry_failed=True goes with resume=True"),
    ("jobconfig", "--retry-failed goes with --resume"),
])
def test_retry_failed_without_resume_is_refused_whichever_way_the_job_is_built(
        way: str, said: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Was checked by the CLI and by `batch_toggle.run`, each in its own words, but not for a
    caller that built a JobConfig itself: that run began and resumed nothing."""
    from batch_toggle.config import JobConfig
    from batch_toggle.jobs.run import run as run_job

    monkeypatch.setenv("LOGIS_API_KEY", "k" * 32)
    if way == "cli":
        assert refused_by_cli(["run", "in.csv", "--retry-failed", "--sandbox"], capsys) == said
        return
    with pytest.raises(UsageError, match=said):
        if way == "library":
            batch_toggle.run("in.csv", retry_failed=True, sandbox=True)
        else:
            run_job(JobConfig(inputs=("in.csv",), command="run", retry_failed=True,
                              sandbox=True, state_path=tmp_path / "s.sqlite"))


@pytest.mark.parametrize(("command", "way", "said"), [
    ("run", "cli", "no API key: set LOGIS_API_KEY or use --api-key-file (or try --sandbox / "
                   "--dry-run)"),
    ("audit", "cli", "no API key: set LOGIS_API_KEY or use --api-key-file (or try --sandbox)"),
    ("run", "library", "no API key: pass api_key=..., api_key_file=... or set LOGIS_API_KEY "
                       "(or use sandbox=True / dry_run=True)"),
    ("audit", "library", "no API key: pass api_key=..., api_key_file=... or set "
                         "LOGIS_API_KEY (or use sandbox=True)"),
    ("run", "jobconfig", "no API key: set LOGIS_API_KEY or use --api-key-file"),
])
def test_no_api_key_is_refused_the_same_way_everywhere(
        command: str, way: str, said: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    from batch_toggle.config import JobConfig
    from batch_toggle.jobs.run import run as run_job

    monkeypatch.delenv("LOGIS_API_KEY", raising=False)
    if way == "cli":
        assert refused_by_cli([command, "in.csv"], capsys).startswith(said)
        return
    with pytest.raises(UsageError) as err:
        if way == "library":
            getattr(batch_toggle, command)("in.csv")
        else:
            run_job(JobConfig(inputs=("in.csv",), command=command,
                              state_path=tmp_path / "s.sqlite"))
    assert str(err.value).startswith(said)
