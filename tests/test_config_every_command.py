"""--config and BATCH_TOGGLE_ variables know every command's options, also those of commands
that are loaded only when used (audit, status): a fresh process, as a user runs it, since in
this test process those commands may already be loaded."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from batch_toggle.sandbox.config import default_seed_path

CMD = [sys.executable, "-m", "batch_toggle"]


def small_input(tmp_path: Path) -> Path:
    lines = default_seed_path().read_text(encoding="utf-8").splitlines()[1:4]
    rows = [",".join([*line.split(",")[:2], "false", "job"]) for line in lines]
    src = tmp_path / "in.csv"
    src.write_text("job_id,review_key,do_notify_sms,update_target\n" + "\n".join(rows) + "\n",
                   encoding="utf-8")
    return src


def env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items()
            if not k.startswith("BATCH_TOGGLE_") and k != "LOGIS_API_KEY"}


def test_a_config_with_an_audit_table_serves_validate(tmp_path: Path) -> None:
    config = tmp_path / "bt.toml"
    config.write_text("[audit]\nsample = 5\n\n[validate]\nquiet = true\n", encoding="utf-8")
    proc = subprocess.run([*CMD, "--config", str(config), "validate", str(small_input(tmp_path)),
                           "--report", str(tmp_path / "r.csv")], env=env(), cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""  # [validate] quiet = true was applied


def test_a_variable_for_the_audit_does_not_warn_under_validate(tmp_path: Path) -> None:
    proc = subprocess.run([*CMD, "validate", str(small_input(tmp_path)), "--report",
                           str(tmp_path / "r.csv")], env={**env(), "BATCH_TOGGLE_SAMPLE": "5"},
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "names no batch-toggle option" not in proc.stderr
