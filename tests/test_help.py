"""`--help` teaches: every command and option has help, the three jobs have examples; and the
stderr summary is a clean table, coloured only for a person at a terminal (NO_COLOR honoured).

The walk covers every command of the click group, including ones others add later: a command
or option without help text fails here.
"""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from batch_toggle.cli.app import main, use_color

REPO = Path(__file__).resolve().parents[1]
SAMPLE = str(REPO / "sample_data" / "optouts_2026_11.csv")


def _commands() -> list[tuple[str, click.Command]]:
    return sorted(main.all_commands().items())


def test_there_are_commands_to_walk() -> None:
    assert {"validate", "run", "audit", "sandbox", "status"} <= set(main.all_commands())


@pytest.mark.parametrize("name, command", _commands(), ids=[n for n, _ in _commands()])
def test_every_command_and_option_has_help(name: str, command: click.Command) -> None:
    assert (command.help or "").strip(), f"`batch-toggle {name}` has no help text"
    missing = [param.opts[0] for param in command.params
               if isinstance(param, click.Option) and not (param.help or "").strip()]
    assert not missing, f"`batch-toggle {name}`: options without help: {missing}"
    result = CliRunner().invoke(main, [name, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage: main" not in result.output or name in result.output


def test_the_groups_own_options_have_help() -> None:
    missing = [p.opts[0] for p in main.params
               if isinstance(p, click.Option) and not (p.help or "").strip()]
    assert not missing


def _help(*args: str) -> str:
    result = CliRunner().invoke(main, [*args, "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    return result.output


def test_the_main_help_shows_the_three_jobs_and_the_key_rule() -> None:
    text = _help()
    for needle in ("monthly compliance opt-out", "migration from another system",
                   "dry-run audit", "--config", "never from the command line, a config file",
                   "Exit codes"):
        assert needle in text, needle


def test_run_help_has_the_monthly_import_with_canary_and_cron() -> None:
    text = _help("run")
    assert "Examples:" in text
    assert "--canary 20" in text
    cron = [line for line in text.splitlines() if line.strip().startswith("15 * * * *")]
    assert cron and "--resume" in cron[0]  # one crontab line that starts, resumes, finishes


def test_run_help_has_the_migration_with_map_set_state_and_resubscribe() -> None:
    text = _help("run")
    for needle in ("--map job_id=", "--set-state true", "--allow-resubscribe",
                   "resubscribe_blocked", "--dry-run"):
        assert needle in text, needle


def test_validate_and_audit_help_have_examples() -> None:
    assert "Examples:" in _help("validate") and "--map" in _help("validate")
    assert "Examples:" in _help("audit")


def test_the_api_key_option_says_where_the_key_comes_from() -> None:
    text = _help("run")
    assert "LOGIS_API_KEY" in text and "never argv" in text
    assert "--api-key " not in text  # no option takes the key itself


# --- colour in the stderr summary -------------------------------------------------------------


class _Stream:
    def __init__(self, tty: bool) -> None:
        self._tty = tty

    def isatty(self) -> bool:
        return self._tty


@pytest.mark.parametrize("tty, env, expected", [
    pytest.param(True, {}, True, id="terminal"),
    pytest.param(False, {}, False, id="pipe"),
    pytest.param(True, {"NO_COLOR": "1"}, False, id="NO_COLOR"),
    pytest.param(True, {"NO_COLOR": ""}, True, id="empty-NO_COLOR-is-unset"),
    pytest.param(True, {"TERM": "dumb"}, False, id="dumb-terminal"),
])
def test_use_color(monkeypatch: pytest.MonkeyPatch, tty: bool, env: dict[str, str],
                   expected: bool) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm-256color")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert use_color(_Stream(tty)) is expected


def _stderr_on_a_terminal(tmp_path: Path, env: dict[str, str]) -> str:
    """Run `validate` with stderr on a pseudo-terminal, as a person at a shell would."""
    master, slave = pty.openpty()
    full_env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "LOGIS_API_KEY")}
    full_env.update({"TERM": "xterm-256color", **env})
    proc = subprocess.Popen(
        [sys.executable, "-m", "batch_toggle", "validate", SAMPLE, "--report",
         str(tmp_path / "r.csv"), "--state", str(tmp_path / "none.sqlite"), "--no-html"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=slave, env=full_env)
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed its end
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    assert proc.wait(timeout=60) == 1
    return b"".join(chunks).decode("utf-8", "replace")


def test_the_summary_is_coloured_on_a_terminal(tmp_path: Path) -> None:
    text = _stderr_on_a_terminal(tmp_path, {})
    assert "\x1b[32m" in text and "\x1b[31m" in text  # green ok statuses, red problems
    assert "status" in text and "total" in text


def test_no_color_turns_colour_off_on_a_terminal(tmp_path: Path) -> None:
    text = _stderr_on_a_terminal(tmp_path, {"NO_COLOR": "1"})
    assert "\x1b[" not in text
    assert "status" in text and "total" in text


def test_the_summary_is_plain_in_a_pipe(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "batch_toggle", "validate", SAMPLE, "--report",
         str(tmp_path / "r.csv"), "--state", str(tmp_path / "none.sqlite"), "--no-html"],
        capture_output=True, text=True, timeout=60,
        env={k: v for k, v in os.environ.items() if k != "NO_COLOR"})
    assert proc.returncode == 1
    assert "\x1b[" not in proc.stderr
    lines = proc.stderr.splitlines()
    table = lines[lines.index(next(line for line in lines if line.startswith("status"))):]
    # A clean table: labels left, counts right-aligned in one column.
    counts = [line for line in table[:8] if line and line.split()[-1].replace(",", "").isdigit()]
    assert len({len(line) for line in counts}) == 1, counts


def test_the_main_help_lists_every_guide() -> None:
    text = _help()
    guides = sorted(p.name for p in (REPO / "docs").glob("*.md"))
    assert guides and [g for g in guides if g not in text] == []


def test_sandbox_help_has_examples() -> None:
    text = _help("sandbox")
    assert "Examples" in text and "batch-toggle sandbox --hourly-limit" in text
    assert "LOGIS_BASE_URL=http://127.0.0.1:8765" in text
