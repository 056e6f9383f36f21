"""A run whose event loop is wedged still answers SIGTERM: exit 130 within seconds, a traceback
of where it was stuck, the stop on record, and a `--resume` that finishes the job.

The wedge is made on purpose by a test hook: the child's sitecustomize (test code on the
child's PYTHONPATH; the product has no such hook) patches the runner so that, after a number
of rows, a worker spins forever on the event loop without yielding, as the timeline's float
loop once did. The test waits for the hook's marker file (no sleep), then signals.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from batch_toggle.send.watchdog import GRACE
from batch_toggle.state.sqlite import StateStore

from . import FAST, cli_command, cli_env, collect, job_rows, puts, wait_until, write_input

pytestmark = pytest.mark.e2e

UNITS = 60
CONCURRENCY = 4
WEDGE_AFTER = 20  # rows finished before the loop wedges

HOOK = """\
import importlib.abc, importlib.machinery, sys


def wedge_the_loop_on_purpose(marker):
    with open(marker, "w") as fh:
        fh.write("wedged")
    while True:  # never yields to the event loop, like a time loop that stopped advancing
        pass


class _Patch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name != "batch_toggle.send.runner":
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        run_module = spec.loader.exec_module

        def exec_module(module):
            run_module(module)
            finish, seen = module.Runner._finish, [0]

            def _finish(self, unit, outcome):
                seen[0] += 1
                if seen[0] > {after}:
                    wedge_the_loop_on_purpose({marker!r})
                return finish(self, unit, outcome)

            module.Runner._finish = _finish

        spec.loader.exec_module = exec_module
        return spec


sys.meta_path.insert(0, _Patch())
"""


def test_sigterm_ends_a_wedged_run_at_once_and_resume_finishes_it(
        make_sandbox_server: Any, tmp_path: Path) -> None:
    server = make_sandbox_server()
    server.set_faults(latency_ms=20)  # requests are in flight when the loop wedges
    src = write_input(tmp_path / "in.csv", job_rows(server.jobs[:UNITS]))
    hook_dir = tmp_path / "hook"
    hook_dir.mkdir()
    marker = tmp_path / "wedged"
    (hook_dir / "sitecustomize.py").write_text(
        HOOK.format(after=WEDGE_AFTER, marker=str(marker)), encoding="utf-8")
    env = cli_env(server.api_key)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(hook_dir),
                                                      env.get("PYTHONPATH", "")]))
    command = cli_command(server, tmp_path, [src], *FAST, "--concurrency", str(CONCURRENCY),
                          "--no-progress")
    proc = subprocess.Popen(command, env=env, cwd=tmp_path, text=True,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        wait_until(marker.exists, 30, "the test hook to wedge the loop")
        os.kill(proc.pid, signal.SIGTERM)
        signalled = time.monotonic()
        _, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    took = time.monotonic() - signalled

    assert proc.returncode == 130, stderr
    assert took < 5.0, f"exit {took:.1f} s after SIGTERM"
    assert took >= GRACE - 0.5  # it gave the loop its chance first
    assert "while the run's event loop was stuck" in stderr
    assert "resume with --resume" in stderr
    # faulthandler's dump: every thread, and where the main one was stuck.
    assert "Current thread" in stderr or "Thread 0x" in stderr
    assert "wedge_the_loop_on_purpose" in stderr
    assert server.api_key not in stderr

    # The stop is on record: interrupted (130), resumable; what was committed is there.
    with StateStore.open(tmp_path / "state.sqlite", readonly=True) as store:
        (record,) = store.list_runs()
        committed = store.load_outcomes(record.run_id)
    assert record.exit_code == 130 and record.unfinished
    assert WEDGE_AFTER - CONCURRENCY <= len(committed) <= WEDGE_AFTER
    sent_before = Counter(r["job_id"] for r in puts(server))

    resumed = subprocess.run([*command, "--resume"], env=cli_env(server.api_key),
                             cwd=tmp_path, capture_output=True, text=True, timeout=60,
                             stdin=subprocess.DEVNULL)
    run = collect(tmp_path, resumed.returncode, resumed.stdout, resumed.stderr, 0.0)
    assert run.code == 0, run.stderr
    assert run.statuses() == ["updated"] * UNITS
    assert {r["run_id"] for r in run.rows} == {record.run_id}
    # Nothing sent twice beyond what was in flight when the loop wedged: a unit committed
    # before the wedge is never sent again.
    sent = Counter(r["job_id"] for r in puts(server))
    assert set(sent) == {j.job_id for j in server.jobs[:UNITS]}
    twice = {job for job, n in sent.items() if n > 1}
    assert all(n <= 2 for n in sent.values())
    assert len(twice) <= CONCURRENCY
    assert all(sent_before[job] == 1 for job in twice)
    committed_jobs = {server.jobs[row].job_id for row in committed}
    assert not twice & committed_jobs
