"""The package's layout as a contract: the folder tree reads as the data flow.

Read from the source with `ast`, every import counts, at module level or inside a function
(a lazy import is still a dependency), except those under `if TYPE_CHECKING:` (type hints
only: they never run). Three rules:

  * no module imports a private name (`_x`) of another module;
  * the import graph between modules has no cycle;
  * no import goes from a lower stage to a higher one: base modules -> input -> plan ->
    send/state (one tier) -> report -> jobs -> cli; only jobs/ and cli/ may use sandbox/.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "batch_toggle"
STAGES = {"input": 1, "plan": 2, "send": 3, "state": 3, "report": 4, "jobs": 5, "cli": 6}
BASE = 0


def module_name(path: Path) -> str:
    parts = ["batch_toggle", *path.relative_to(PACKAGE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def _type_checking_only(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and _type_checking_only(node):
            for other in node.orelse:
                yield from _imports(other)
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        yield from _imports(node)


def _absolute(module: str, node: ast.ImportFrom, modules: dict[str, Path]) -> str:
    if not node.level:
        return node.module or ""
    is_package = modules[module].name == "__init__.py"
    base = module.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


def imports_of(module: str, modules: dict[str, Path] = MODULES) -> list[tuple[str, str | None]]:
    """(imported module, imported name or None) for each import in `module`'s source."""
    tree = ast.parse(modules[module].read_text(encoding="utf-8"))
    found: list[tuple[str, str | None]] = []
    for node in _imports(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, None) for alias in node.names]
            continue
        target = _absolute(module, node, modules)
        for alias in node.names:
            # `from pkg import sub` names a submodule: the edge goes to it
            sub = f"{target}.{alias.name}"
            found.append((sub, None) if sub in modules else (target, alias.name))
    return [(m, n) for m, n in found if m == "batch_toggle" or m.startswith("batch_toggle.")]


def stage(module: str) -> tuple[str, int]:
    parts = module.split(".")
    if len(parts) > 1 and (parts[1] in STAGES or parts[1] == "sandbox"):
        return parts[1], STAGES.get(parts[1], -1)
    return "base", BASE  # batch_toggle.errors, .vocab, ...


def test_the_tree_is_what_the_checks_assume() -> None:
    """A package added to the tree must be given its stage here, or the checks would skip it."""
    packages = {p.parent.name for p in PACKAGE.glob("*/__init__.py")}
    assert packages == {*STAGES, "sandbox"}
    assert len(MODULES) > 40


def private_imports(modules: dict[str, Path]) -> list[str]:
    return [f"{module} imports {target}.{name}"
            for module in modules for target, name in imports_of(module, modules)
            if name is not None and name.startswith("_") and not name.startswith("__")
            and target != module]


def cycles_in(modules: dict[str, Path]) -> list[str]:
    graph = {m: {t for t, _ in imports_of(m, modules) if t in modules and t != m}
             for m in modules}
    # A package's __init__ runs on the way to any of its modules: a module importing its own
    # package is not an edge of the data flow, and is left out.
    for m, targets in graph.items():
        graph[m] = {t for t in targets if not m.startswith(t + ".")}
    found: list[str] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                found.append(" -> ".join([*path[path.index(nxt):], nxt]))
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    return found


def upward_imports(modules: dict[str, Path]) -> list[str]:
    upward = []
    for module in modules:
        name, rank = stage(module)
        # The public API and `python -m` are doors into every stage, not a stage of their own.
        if name == "sandbox" or module in ("batch_toggle", "batch_toggle.__main__"):
            continue
        for target, _ in imports_of(module, modules):
            if target not in modules:
                continue
            target_name, target_rank = stage(target)
            if target_name == "sandbox":
                if name not in ("jobs", "cli"):
                    upward.append(f"{module} -> {target} (only jobs/ and cli/ use the sandbox)")
            elif target_rank > rank:
                upward.append(f"{module} ({name}) -> {target} ({target_name})")
    return upward


def test_no_module_imports_a_private_name_of_another() -> None:
    assert private_imports(MODULES) == []


def test_the_import_graph_has_no_cycle() -> None:
    assert cycles_in(MODULES) == []


def test_no_import_goes_from_a_lower_stage_to_a_higher_one() -> None:
    assert upward_imports(MODULES) == []


PLANTED = {
    "private": ("batch_toggle.input.planted", "from batch_toggle.send.runner import _x\n",
                private_imports),
    "upward": ("batch_toggle.input.planted", "from batch_toggle.jobs import pipeline\n",
               upward_imports),
    "sandbox": ("batch_toggle.send.planted", "import batch_toggle.sandbox.app\n",
                upward_imports),
    "cycle": ("batch_toggle.planted", "from batch_toggle import planted_too\n", cycles_in),
}


@pytest.mark.parametrize("rule", sorted(PLANTED))
def test_each_check_finds_an_offence_planted_for_it(tmp_path: Path, rule: str) -> None:
    """The checks pass on an empty list: each must find an offence planted beside the real
    modules (in a temporary directory: the package itself is never written)."""
    name, source, check = PLANTED[rule]
    modules = dict(MODULES)
    modules[name] = tmp_path / "planted.py"
    modules[name].write_text(source, encoding="utf-8")
    if rule == "cycle":
        modules["batch_toggle.planted_too"] = tmp_path / "planted_too.py"
        modules["batch_toggle.planted_too"].write_text("from batch_toggle import planted\n",
                                                       encoding="utf-8")
    assert [o for o in check(modules) if "planted" in o] != []
