"""The layout holds: imports among the project's modules only go one way (README "Layout")."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONTROL = ROOT / "control"


def _module_name(path: Path, root: Path = CONTROL) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_of(path: Path, known: set[str], root: Path = CONTROL) -> set[str]:
    """The project modules `path` imports, at any depth (a function's lazy import counts: it
    is a dependency all the same), except under `if TYPE_CHECKING:`."""
    name = _module_name(path, root)
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(), str(path)))
    # `import a.b.c` runs a/__init__ and a/b/__init__ too, but those are the package's own
    # business: the edge that matters is to the module named.
    return {m for m in found if m in known and m != name}


def import_graph() -> dict[str, set[str]]:
    paths = {_module_name(p): p for p in CONTROL.rglob("*.py")}
    known = set(paths)
    return {name: imports_of(path, known) for name, path in paths.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path that ends where it starts, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def walk(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := walk(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := walk(node)):
            return cycle
    return None


def test_find_cycle_sees_a_cycle_and_a_clean_graph() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_the_walk_sees_lazy_imports_and_skips_type_checking(tmp_path: Path) -> None:
    source = (
        "from typing import TYPE_CHECKING\n"
        "from clearip import config\n"
        "if TYPE_CHECKING:\n    from clearip.relay import core\n"
        "def f():\n    from clearip.relay.call import Call\n"
    )
    module = tmp_path / "clearip" / "probe.py"
    module.parent.mkdir()
    module.write_text(source)
    known = {"clearip.config", "clearip.relay.core", "clearip.relay.call", "clearip"}
    found = imports_of(module, known, root=tmp_path)
    assert found == {"clearip", "clearip.config", "clearip.relay.call"}


def test_no_import_cycle_among_the_projects_modules() -> None:
    assert find_cycle(import_graph()) is None


def _top_level_imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and not node.level and node.module:
            found.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
    return found


def test_tools_and_the_lab_never_import_tests_and_the_product_never_imports_either() -> None:
    offenders = [
        f"{path.relative_to(ROOT)} imports {name}"
        for folder, banned in (
            ("tools", {"tests"}),
            ("lab", {"tests"}),
            ("control", {"tests", "lab"}),
        )
        for path in sorted((ROOT / folder).rglob("*.py"))
        for name in sorted(_top_level_imports(path) & banned)
    ]
    assert offenders == []


LONG = 700
REASON = "Longer than 700 lines:"


def test_a_module_over_700_lines_says_why_at_its_top() -> None:
    unexplained = [
        f"{path.relative_to(ROOT)}: {len(lines)} lines"
        for path in sorted(CONTROL.rglob("*.py"))
        if len(lines := path.read_text().splitlines()) > LONG
        and not any(REASON in line for line in lines[:40])
    ]
    assert unexplained == []
