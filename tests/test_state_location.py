"""Where a state store is: `open_store` picks the backend from the location, and a PostgreSQL
URL's rules (no password in it; the client as an extra) hold before anything is opened."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from batch_toggle.cli.app import main
from batch_toggle.errors import StoreError, UsageError
from batch_toggle.state import open_store
from batch_toggle.state.location import is_postgres_url, normalise, redact

SECRET = "hunter2-not-for-logs"


def test_a_path_or_sqlite_prefix_opens_the_sqlite_file(tmp_path: Path) -> None:
    for location in (tmp_path / "a.sqlite", str(tmp_path / "b.sqlite"),
                     f"sqlite:{tmp_path / 'c.sqlite'}", f"sqlite://{tmp_path / 'd.sqlite'}"):
        with open_store(location) as store:
            store.create_run("r1", command="run", inputs=[("in.csv", "0" * 64)],
                             plan_key="k", options={}, total_rows=1, started_at="t")
            assert store.exists and not store.readonly
    assert sorted(p.name for p in tmp_path.glob("*.sqlite")) == [
        "a.sqlite", "b.sqlite", "c.sqlite", "d.sqlite"]


def test_a_missing_file_read_only_is_an_empty_view_and_creates_nothing(tmp_path: Path) -> None:
    with open_store(tmp_path / "none.sqlite", readonly=True) as store:
        assert not store.exists
        assert store.list_runs() == []
    assert list(tmp_path.iterdir()) == []


def test_urls_are_told_from_paths() -> None:
    assert is_postgres_url("postgresql://u@127.0.0.1:5432/db")
    assert is_postgres_url("postgres://u@h/db")
    assert not is_postgres_url("postgresql.sqlite")
    assert not is_postgres_url(Path("postgresql://u@h/db"))  # a Path: the user chose a file
    assert normalise("postgresql://u@h:1/db") == "postgresql://u@h:1/db"  # `//` kept
    assert normalise("~/s.sqlite") == Path("~/s.sqlite").expanduser()


@pytest.mark.parametrize("url", [f"postgresql://u:{SECRET}@127.0.0.1:5432/db",
                                 f"postgresql://u@127.0.0.1/db?password={SECRET}"])
def test_a_password_in_the_url_is_refused_without_showing_it(url: str) -> None:
    with pytest.raises(UsageError) as caught:
        open_store(url)
    assert SECRET not in str(caught.value)
    assert "PGPASSWORD" in str(caught.value)
    assert SECRET not in redact(url)


@pytest.mark.parametrize("command", [["status"], ["doctor"], ["run", "in.csv", "--sandbox"]])
def test_the_cli_refuses_a_password_in_the_url_with_exit_2(command: list[str]) -> None:
    url = f"postgresql://u:{SECRET}@127.0.0.1:1/db"
    result = CliRunner().invoke(main, [*command, "--state", url])
    assert result.exit_code == 2, result.output
    assert SECRET not in result.output
    assert "password in the URL is refused" in result.output


def _given(how: str, url: str, tmp_path: Path) -> tuple[list[str], dict[str, str]]:
    """`status` with the store at `url`, given the way `how` says: (argv, environment)."""
    if how == "flag":
        return ["status", "--state", url], {}
    if how == "env":
        return ["status"], {"BATCH_TOGGLE_STATE": url}
    config = tmp_path / "batch-toggle.toml"
    config.write_text(f'state = "{url}"\n', encoding="utf-8")
    return ["--config", str(config), "status"], {}


@pytest.mark.parametrize("how", ["flag", "env", "config"])
def test_a_password_in_the_url_is_refused_however_the_url_is_given(
        how: str, tmp_path: Path) -> None:
    argv, env = _given(how, f"postgresql://u:{SECRET}@127.0.0.1:1/db", tmp_path)
    result = CliRunner().invoke(main, argv, env=env)
    assert result.exit_code == 2, result.output
    assert SECRET not in result.output
    assert "password in the URL is refused" in result.output


@pytest.mark.parametrize("how", ["flag", "env", "config"])
def test_a_postgres_url_is_the_store_however_it_is_given(
        how: str, tmp_path: Path, pg_database: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGPASSWORD", pg_database.password)
    with open_store(pg_database.dsn) as store:
        store.create_run("r-team", command="run", inputs=[("in.csv", "0" * 64)],
                         plan_key="k", options={}, total_rows=1, started_at="t")
    argv, env = _given(how, pg_database.dsn, tmp_path)
    result = CliRunner().invoke(main, [*argv, "--json"], env=env)
    assert result.exit_code == 0, result.output
    runs = json.loads(result.output)["runs"]
    assert [run["run_id"] for run in runs] == ["r-team"]
    assert pg_database.password not in result.output


def test_without_the_extra_a_postgres_url_says_what_to_install(tmp_path: Path) -> None:
    # A fresh interpreter where psycopg cannot be imported (as on a machine without the extra).
    code = ("import sys; sys.modules['psycopg'] = None\n"
            "from batch_toggle.cli.entry import main\n"
            "main()")
    done = subprocess.run([sys.executable, "-c", code, "status", "--state",
                           "postgresql://u@127.0.0.1:1/db"], capture_output=True, text=True,
                          timeout=60, cwd=tmp_path, check=False)
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines == ["batch-toggle: error: a PostgreSQL state store needs its client: "
                     "pip install 'batch-toggle[postgres]'"], done.stderr
    assert "Traceback" not in done.stderr


def test_open_store_raises_store_error_for_a_postgres_url_without_the_client(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "psycopg", None)
    # As on a machine without the extra: the backend module not loaded yet (an earlier test in
    # this process may have loaded it; it is put back afterwards).
    monkeypatch.delitem(sys.modules, "batch_toggle.state.postgres", raising=False)
    monkeypatch.delitem(sys.modules, "batch_toggle.state.postgres_budget", raising=False)
    with pytest.raises(StoreError, match=r"pip install 'batch-toggle\[postgres\]'"):
        open_store("postgresql://u@127.0.0.1:1/db")
