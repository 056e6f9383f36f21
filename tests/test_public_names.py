"""Every exception of the package has one home (errors.py) and a public name; the paths the docs
once named keep working (with a DeprecationWarning where the concept moved)."""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
import re
import warnings
from pathlib import Path

import pytest

import batch_toggle
from batch_toggle import errors
from batch_toggle.errors import EXIT_PRECEDENCE, ExitCode, exit_rank, worst_exit


def _package_modules() -> list[str]:
    """Every module of batch_toggle but the sandbox's (whose own exceptions stay there)."""
    names = ["batch_toggle"]
    for info in pkgutil.walk_packages(batch_toggle.__path__, "batch_toggle."):
        if not info.name.startswith("batch_toggle.sandbox"):
            names.append(info.name)
    return names


def test_every_exception_class_lives_in_errors_and_is_public() -> None:
    found: dict[str, type] = {}
    for name in _package_modules():
        module = importlib.import_module(name)
        for _attr, value in inspect.getmembers(module, inspect.isclass):
            if issubclass(value, BaseException) and value.__module__.startswith("batch_toggle"):
                found[f"{value.__module__}.{value.__qualname__}"] = value
    assert found, "no exception class found: the walk is broken"
    homes = {path for path, cls in found.items() if cls.__module__ != "batch_toggle.errors"}
    assert homes == set()
    for cls in found.values():
        assert cls.__name__ in batch_toggle.__all__, cls
        assert getattr(batch_toggle, cls.__name__) is cls


@pytest.mark.parametrize("name", ["BatchToggleError", "UsageError", "InputError", "StoreError",
                                  "StoreLocked", "TooManyInvalid", "ReportError", "ProxyRefused",
                                  "ExitCode", "Rate"])
def test_public_spelling_imports_without_a_warning(name: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        exec(f"from batch_toggle import {name}", {})  # noqa: S102 - the spelling itself is the test


def test_old_path_plan_too_many_invalid_warns_and_is_the_same_class() -> None:
    with pytest.warns(DeprecationWarning, match="from batch_toggle import TooManyInvalid"):
        from batch_toggle.plan import TooManyInvalid
    assert TooManyInvalid is batch_toggle.TooManyInvalid
    with pytest.raises(AttributeError, match="NoSuchThing"):
        batch_toggle.plan.NoSuchThing  # noqa: B018 - the module __getattr__ still says no


@pytest.mark.parametrize("module, name", [("batch_toggle.config", "Rate"),
                                          ("batch_toggle.errors", "StoreLocked")])
def test_old_paths_that_are_still_the_home_need_no_warning(module: str, name: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        value = getattr(importlib.import_module(module), name)
    assert value is getattr(batch_toggle, name)


def test_exit_rank_follows_the_one_precedence() -> None:
    ranked = sorted(ExitCode, key=exit_rank)
    assert tuple(ranked) == EXIT_PRECEDENCE
    assert worst_exit([ExitCode.ROW_PROBLEMS, ExitCode.INTERRUPTED, ExitCode.ABORTED]) \
        == ExitCode.INTERRUPTED
    assert worst_exit(set()) == ExitCode.OK


def test_report_error_takes_its_exit_code_in_its_constructor() -> None:
    assert errors.ReportError("cannot write r.csv").exit_code == ExitCode.USAGE
    late = errors.ReportError("cannot write r.csv", exit_code=ExitCode.STOPPED)
    assert late.exit_code == ExitCode.STOPPED
    assert errors.ReportError.exit_code == ExitCode.USAGE  # the instance's, not the class's


def test_a_refused_file_raises_too_many_invalid_carrying_its_report(tmp_path: Path) -> None:
    rows = [{"job_id": "", "review_key": "x", "do_notify_sms": "maybe", "update_target": "job"}
            for _ in range(3)]
    with pytest.raises(batch_toggle.TooManyInvalid) as info:
        batch_toggle.validate(rows, max_invalid=10, report=tmp_path / "r.csv",
                              state=tmp_path / "s.sqlite")
    refusal = info.value
    assert refusal.exit_code == ExitCode.USAGE
    assert refusal.result is not None and refusal.result.report_path == tmp_path / "r.csv"
    assert refusal.result.report.num_rows == 3
    assert str(tmp_path / "r.csv") in str(refusal)


def _string_literals(path: Path) -> list[str]:
    """The string constants of a module's code (docstrings, which may quote a verdict, aside)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = {id(node.value) for node in ast.walk(tree)
                  if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)}
    return [node.value for node in ast.walk(tree) if isinstance(node, ast.Constant)
            and isinstance(node.value, str) and id(node) not in docstrings]


def test_verdicts_are_spelled_only_in_vocab() -> None:
    """A verdict is evidence a script may match: one home, so run, audit, the summary and the
    HTML report cannot drift apart."""
    from batch_toggle import vocab

    sentences = {*vocab.VERDICTS.values(), *vocab.AUDIT_VERDICTS.values(),
                 vocab.CONNECTION_VERDICT}
    assert set(vocab.VERDICTS) == set(ExitCode)
    root = Path(batch_toggle.__file__).parent
    spelled_elsewhere = [
        str(path.relative_to(root)) for path in root.rglob("*.py")
        if path.name != "vocab.py" and any(s in literal for literal in _string_literals(path)
                                           for s in sentences)]
    assert spelled_elsewhere == []
    assert vocab.verdict("audit", ExitCode.USAGE) == vocab.VERDICTS[ExitCode.USAGE]
    assert "tls_untrusted" in vocab.verdict("run", ExitCode.ABORTED, "tls_untrusted")
    assert vocab.verdict_class(ExitCode.STOPPED) == "stopped"
    assert vocab.verdict_class("4") == "other"  # a summary read back: only ints are exit codes


@pytest.mark.parametrize("exit_code, resumable", [(None, True), (4, True), (130, True),
                                                  (0, False), (1, False), (3, False)])
def test_resumability_has_one_home(exit_code: int | None, resumable: bool) -> None:
    from batch_toggle import vocab
    from batch_toggle.state.sqlite import RESUMABLE_EXIT_CODES

    assert RESUMABLE_EXIT_CODES is vocab.RESUMABLE_EXIT_CODES
    assert vocab.resumable(exit_code) is resumable


OLD_PATHS = {"batch_toggle.errors.StoreLocked", "batch_toggle.config.Rate",
             "batch_toggle.plan.TooManyInvalid"}


def _resolve(dotted: str) -> object:
    parts = dotted.split(".")
    value: object = importlib.import_module(parts[0])
    for i, part in enumerate(parts[1:], start=1):
        try:
            value = getattr(value, part)
        except AttributeError:
            value = importlib.import_module(".".join(parts[:i + 1]))
    return value


def test_every_path_docs_library_names_is_public_and_real() -> None:
    text = (Path(__file__).resolve().parents[1] / "docs" / "library.md").read_text()
    paths = set(re.findall(r"\bbatch_toggle(?:\.[A-Za-z_]\w*)+", text))
    assert "batch_toggle.TooManyInvalid" in paths  # the walk finds what it should
    for dotted in sorted(paths):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            _resolve(dotted)  # real: raises if it is not
        public = dotted.split(".")[1] in batch_toggle.__all__
        assert public or dotted in OLD_PATHS, f"docs/library.md names a private path: {dotted}"
