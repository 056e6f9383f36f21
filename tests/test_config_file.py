"""--config FILE and BATCH_TOGGLE_* variables: flags > env > file > defaults; never the API key.

Each precedence case runs the real CLI (`validate` on the sample: no network) and reads the
options the summary JSON recorded, which is what compliance sees.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from batch_toggle.cli.app import main, option_specs
from batch_toggle.cli.config_file import OptionSpec, check_environment, default_map
from batch_toggle.errors import UsageError

REPO = Path(__file__).resolve().parents[1]
SAMPLE = str(REPO / "sample_data" / "optouts_2026_11.csv")
SECRET = "5f0c8a52-secret-key-value-9d1e"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No BATCH_TOGGLE_ variable from the machine running the tests leaks into them."""
    import os
    for name in list(os.environ):
        if name.startswith("BATCH_TOGGLE_"):
            monkeypatch.delenv(name)


def _validate(tmp_path: Path, *args: str, env: dict[str, str] | None = None,
              config: str | None = None) -> tuple[Any, dict[str, Any]]:
    """Run `batch-toggle [--config] validate SAMPLE ...`; the summary's options (or {})."""
    report = tmp_path / "out" / "r.csv"
    head: list[str] = []
    if config is not None:
        path = tmp_path / "batch-toggle.toml"
        path.write_text(config, encoding="utf-8")
        head = ["--config", str(path)]
    result = CliRunner().invoke(main, [*head, "validate", SAMPLE, "--report", str(report),
                                       "--state", str(tmp_path / "none.sqlite"), "--no-html",
                                       *args], env=env)
    summary = report.with_name("r.csv.summary.json")
    options = json.loads(summary.read_text())["options"] if summary.exists() else {}
    return result, options


FILE = """
rate = "1000/h"
on-conflict = "opt-out-wins"
max_invalid = 20
"""


def test_defaults_without_file_or_env(tmp_path: Path) -> None:
    result, options = _validate(tmp_path)
    assert result.exit_code == 1, result.output
    assert (options["rate"], options["on_conflict"], options["max_invalid"]) == (
        "2500/h", "last", 50.0)


def test_the_file_sets_what_flags_and_env_leave_alone(tmp_path: Path) -> None:
    _, options = _validate(tmp_path, config=FILE)
    assert (options["rate"], options["on_conflict"], options["max_invalid"]) == (
        "1000/h", "opt-out-wins", 20.0)


def test_env_wins_over_the_file(tmp_path: Path) -> None:
    _, options = _validate(tmp_path, config=FILE, env={"BATCH_TOGGLE_RATE": "500/h",
                                                       "BATCH_TOGGLE_ON_CONFLICT": "first"})
    assert (options["rate"], options["on_conflict"], options["max_invalid"]) == (
        "500/h", "first", 20.0)


def test_flags_win_over_env_and_file(tmp_path: Path) -> None:
    _, options = _validate(tmp_path, "--rate", "100/m", "--on-conflict", "reject", config=FILE,
                           env={"BATCH_TOGGLE_RATE": "500/h", "BATCH_TOGGLE_ON_CONFLICT": "first"})
    assert (options["rate"], options["on_conflict"], options["max_invalid"]) == (
        "100/m", "reject", 20.0)


def test_env_alone_and_boolean_flags_from_env(tmp_path: Path) -> None:
    _, options = _validate(tmp_path, env={"BATCH_TOGGLE_ON_CONFLICT": "opt-out-wins",
                                          "BATCH_TOGGLE_ALLOW_RESUBSCRIBE": "1",
                                          "BATCH_TOGGLE_SKIP_CONFIRMED": "false"})
    assert options["on_conflict"] == "opt-out-wins"
    assert options["allow_resubscribe"] is True and options["skip_confirmed"] is False


def test_a_commands_own_table_wins_over_the_top_level(tmp_path: Path) -> None:
    config = FILE + '\n[validate]\non-conflict = "first"\n\n[run]\ncanary = 20\n'
    _, options = _validate(tmp_path, config=config)
    assert options["on_conflict"] == "first" and options["rate"] == "1000/h"


def test_map_as_a_table_and_relative_paths_against_the_files_folder(tmp_path: Path) -> None:
    config = ('rejects = "fix/me.csv"\n'
              '[map]\nreview_key = "Review Key"\njob_id = "Job ID"\n')
    result, options = _validate(tmp_path, config=config)
    assert result.exit_code == 1, result.output
    assert options["map"] == {"review_key": "Review Key", "job_id": "Job ID"}
    assert (tmp_path / "fix" / "me.csv").exists()  # beside the config file, not the cwd


def test_the_config_file_can_come_from_env(tmp_path: Path) -> None:
    path = tmp_path / "elsewhere.toml"
    path.write_text('on-conflict = "opt-out-wins"\n', encoding="utf-8")
    _, options = _validate(tmp_path, env={"BATCH_TOGGLE_CONFIG": str(path)})
    assert options["on_conflict"] == "opt-out-wins"


@pytest.mark.parametrize("config", [
    pytest.param(f'api-key = "{SECRET}"\n', id="top-level"),
    pytest.param(f'[run]\nlogis_api_key = "{SECRET}"\n', id="in-a-command-table"),
    pytest.param(f'API_KEY = "{SECRET}"\n', id="any-spelling"),
])
def test_an_api_key_in_the_file_is_refused_and_never_echoed(tmp_path: Path, config: str) -> None:
    result, options = _validate(tmp_path, config=config)
    assert result.exit_code == 2
    assert "refused" in result.output and "LOGIS_API_KEY" in result.output
    assert SECRET not in result.output
    assert options == {}  # nothing was read or written


@pytest.mark.parametrize("name", ["BATCH_TOGGLE_API_KEY", "BATCH_TOGGLE_LOGIS_API_KEY"])
def test_an_api_key_in_batch_toggle_env_is_refused(tmp_path: Path, name: str) -> None:
    result, options = _validate(tmp_path, env={name: SECRET})
    assert result.exit_code == 2
    assert f"{name} is set and refused" in result.output and SECRET not in result.output
    assert options == {}


def test_the_api_key_file_path_is_allowed(tmp_path: Path) -> None:
    specs = option_specs(main)
    assert "api_key_file" in specs["run"] and "api_key" not in specs["run"]
    path = tmp_path / "c.toml"
    path.write_text('[run]\napi-key-file = "key.txt"\n', encoding="utf-8")
    assert default_map(path, specs)["run"]["api_key_file"] == str(tmp_path / "key.txt")


@pytest.mark.parametrize("config, message", [
    pytest.param('on_conflit = "first"\n', "unknown option 'on_conflit'", id="typo"),
    pytest.param('[rnu]\ncanary = 2\n', "unknown option 'rnu'", id="unknown-table"),
    pytest.param('[validate]\ncanary = 2\n', "[validate] has no option 'canary'",
                 id="option-of-another-command"),
    pytest.param('rate = \n', "not valid TOML", id="malformed"),
    pytest.param('allow-resubscribe = "yes"\n', "expected true or false", id="flag-not-bool"),
    pytest.param('rate = ["1/s"]\n', "expected a single value", id="list-for-single"),
    pytest.param('stop-after = 10:00:00\n', "write the value as a string", id="toml-time"),
])
def test_a_bad_file_is_a_usage_error_naming_file_and_key(tmp_path: Path, config: str,
                                                         message: str) -> None:
    result, _ = _validate(tmp_path, config=config)
    assert result.exit_code == 2
    assert "batch-toggle.toml" in result.output and message in result.output
    assert "Traceback" not in result.output


def test_a_missing_config_file_is_a_usage_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["--config", str(tmp_path / "nope.toml"), "validate",
                                       SAMPLE])
    assert result.exit_code == 2 and "no such file" in result.output


def test_unknown_batch_toggle_variables_are_named_in_a_warning(tmp_path: Path) -> None:
    result, options = _validate(tmp_path, env={"BATCH_TOGGLE_RAET": "1/s",
                                               "BATCH_TOGGLE_MAP": "job_id=x"})
    assert result.exit_code == 1
    assert "BATCH_TOGGLE_RAET names no batch-toggle option" in result.output
    assert "--map come only from the config file" in result.output
    assert options["map"] == {}


def test_the_sandbox_command_is_not_configured() -> None:
    specs = option_specs(main)
    assert "sandbox" not in specs
    assert {"validate", "run"} <= set(specs)


# --- the pure layer ---------------------------------------------------------------------------


SPECS = {"run": {"rate": OptionSpec("rate", "rate"),
                 "map": OptionSpec("map", "maps", multiple=True),
                 "state": OptionSpec("state", "state_path", is_path=True)},
         "validate": {"rate": OptionSpec("rate", "rate")}}


def test_default_map_shapes(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('rate = "9/s"\nmap = ["job_id=Job"]\nstate = "/abs/s.sqlite"\n'
                    '[validate]\nrate = "1/s"\n', encoding="utf-8")
    assert default_map(path, SPECS) == {
        "run": {"rate": "9/s", "maps": ["job_id=Job"], "state_path": "/abs/s.sqlite"},
        "validate": {"rate": "1/s"},
    }


def test_check_environment_drops_a_refused_key_from_the_environment() -> None:
    environ = {"BATCH_TOGGLE_API_KEY": SECRET, "PATH": "/bin"}
    with pytest.raises(UsageError) as err:
        check_environment(environ, SPECS)
    assert SECRET not in str(err.value)
    assert "BATCH_TOGGLE_API_KEY" not in environ and environ["PATH"] == "/bin"
