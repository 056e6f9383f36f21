"""The evidence a run leaves has its schema in code: every event kind and its payload
(events.py), the summary JSON (report/summary.py). These tests hold the code to that schema:
every emitter builds its kind's TypedDict, what real jobs emit and write fits it, and
docs/events.md names every kind and field."""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

import batch_toggle
from batch_toggle.events import EVENT_KINDS, EVENT_PAYLOADS
from batch_toggle.report.summary import Summary

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "sample_data" / "optouts_2026_11.csv"
PACKAGE = Path(batch_toggle.__file__).parent


@pytest.fixture(autouse=True)
def _no_key_in_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LOGIS_API_KEY", raising=False)


def _fits(schema: Any, data: Mapping[str, Any]) -> None:
    required, optional = set(schema.__required_keys__), set(schema.__optional_keys__)
    assert required - set(data) == set(), f"{schema.__name__} misses keys"
    assert set(data) - required - optional == set(), f"{schema.__name__} lacks these keys"


def _event_calls() -> list[tuple[str, str, ast.Call]]:
    """Every `<something>.event("kind", payload)` call in the package (the sandbox aside)."""
    calls = []
    for path in PACKAGE.rglob("*.py"):
        if "sandbox" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "event" and node.args
                    and isinstance(node.args[0], ast.Constant)):
                calls.append((str(path.relative_to(PACKAGE)), node.args[0].value, node))
    return calls


def test_every_emitter_names_a_known_kind_and_builds_its_payload() -> None:
    calls = _event_calls()
    assert len(calls) >= len(EVENT_KINDS)
    for where, kind, call in calls:
        assert kind in EVENT_KINDS, f"{where}: unknown event kind {kind!r}"
        payload = call.args[1]
        built = (payload.func.id if isinstance(payload, ast.Call)
                 and isinstance(payload.func, ast.Name) else None)
        assert built == EVENT_PAYLOADS[kind].__name__, f"{where}: {kind!r} built as {built}"
    assert {kind for _w, kind, _c in calls} == set(EVENT_KINDS)  # no kind left unused
    assert set(EVENT_PAYLOADS) == set(EVENT_KINDS)


def test_docs_events_names_every_kind_and_field() -> None:
    text = (REPO / "docs" / "events.md").read_text(encoding="utf-8")
    rows = {m.group(1): m.group(0) for m in re.finditer(r"^\| `(\w+)` \|.*$", text, re.M)}
    assert set(rows) == set(EVENT_KINDS)
    for kind, payload in EVENT_PAYLOADS.items():
        for field in payload.__annotations__:
            assert f"`{field}`" in rows[kind], f"docs/events.md: {kind} does not name {field}"


def _job(call: Any, *args: Any, **options: Any) -> tuple[Any, list[tuple[str, dict[str, Any]]]]:
    seen: list[tuple[str, dict[str, Any]]] = []
    result = call(*args, on_event=lambda kind, data: seen.append((kind, dict(data))),
                  **options)
    return result, seen


def _check(result: Any, seen: list[tuple[str, dict[str, Any]]]) -> set[str]:
    for kind, data in seen:
        _fits(EVENT_PAYLOADS[kind], data)
    _fits(Summary, result.summary)
    written = json.loads(result.summary_path.read_text(encoding="utf-8"))
    assert list(written) == list(result.summary)
    return {kind for kind, _d in seen}


def test_what_jobs_emit_and_write_fits_the_schema(tmp_path: Path) -> None:
    state = tmp_path / "s.sqlite"
    kinds: set[str] = set()
    kinds |= _check(*_job(batch_toggle.validate, SAMPLE, report=tmp_path / "v.csv"))
    kinds |= _check(*_job(batch_toggle.run, SAMPLE, sandbox=True, max_rps=1000, canary=5,
                          max_requests=20, report=tmp_path / "r1.csv", state=state,
                          rejects=tmp_path / "rj.csv"))
    kinds |= _check(*_job(batch_toggle.run, SAMPLE, sandbox=True, max_rps=1000, resume=True,
                          report=tmp_path / "r2.csv", state=state))
    kinds |= _check(*_job(batch_toggle.run, SAMPLE, sandbox=True, max_rps=1000, resume=True,
                          report=tmp_path / "r3.csv", state=state))  # nothing left: a new run
    kinds |= _check(*_job(batch_toggle.audit, SAMPLE, sandbox=True, max_rps=1000, sample=5,
                          report=tmp_path / "a.csv", state=tmp_path / "a.sqlite"))
    assert kinds >= {"plan", "request", "row", "stop", "canary", "resume", "resume_new_run",
                     "finish"}
