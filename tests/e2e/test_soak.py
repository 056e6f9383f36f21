"""The soak, reduced to fit `make test`: 1,000 rows against the sandbox on a real socket with
5-200 ms latency, 5% 5xx (JSON and HTML bodies), 1% resets, 1% replies slower than --timeout,
and a server budget the client outruns (429s all along). `make soak` runs the same code at
20,000 rows (benchmarks/soak.py); `check` there is the audit of every claim:

  * one report row per input row, zero rows lost;
  * server state equals the file for every valid unit, and nothing else changed;
  * requests = needed units + retries of injected faults + resends after 429s, exactly, unit
    by unit (a timed-out request was applied by the server and is still re-sent: the client
    cannot know, and the PUT is idempotent);
  * an outage mid-run (every connection dropped for 3 s): the run pauses and probes;
  * each unit's `attempts` equals the requests the server received for it, and `retries` is
    every request beyond a unit's first.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
ROWS = 1_000


def _soak_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("soak_benchmark", REPO / "benchmarks" / "soak.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def test_reduced_soak_keeps_every_promise(tmp_path: Path) -> None:
    soak = _soak_module()
    result = soak.run_soak(tmp_path, soak.SoakConfig(rows=ROWS, cli_timeout_s=240.0))
    figures = result.figures
    print(figures)
    assert result.problems == [], "\n".join(result.problems) + f"\n{result.stderr[-2000:]}"
    # The run met every kind of trouble it was meant to meet.
    kinds = figures["faults_by_kind"]
    assert {"5xx_json", "5xx_html", "reset", "timeout"} <= set(kinds), kinds
    assert figures["timeouts_applied_then_resent"] == kinds["timeout"] > 0
    assert figures["responses_429"] > 0
    reasons = figures["requests_by_reason"]  # an outage paused the run, and it probed
    assert reasons["probe"] > 0 and reasons["after_429"] > 0 and reasons["retry"] > 0
    assert figures["rows"] == ROWS and figures["exit_code"] == 1
    assert figures["statuses"]["updated"] >= 0.95 * ROWS
