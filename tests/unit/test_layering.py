"""The import picture: every arrow in foreman runs one way.

The graph is read from the source with `ast`, not by importing, so an import made only
for the type checker (under `TYPE_CHECKING`) or inside a function counts like any other:
a circle drawn only for mypy is still a circle a reader has to untangle.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Container, Iterable, Mapping
from pathlib import Path

import foreman

PACKAGE = Path(foreman.__file__).parent

ImportGraph = dict[str, set[str]]


def module_name(root: Path, path: Path) -> str:
    """`foreman/api/app.py` -> `foreman.api.app`; a package's `__init__.py` is the package."""
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imported(
    node: ast.Import | ast.ImportFrom, importer: str, is_package: bool, known: Container[str]
) -> set[str]:
    """The modules of the package that one import statement names: `from a import b` names
    the submodule `a.b` when there is one, else the module `a` (whose name `b` is)."""
    if isinstance(node, ast.Import):
        return {alias.name for alias in node.names if alias.name in known}
    if node.level:
        base = importer.split(".")
        # `from . import x` in a package's __init__ is relative to the package itself
        base = base[: len(base) - node.level + (1 if is_package else 0)]
        source = ".".join(base + ([node.module] if node.module else []))
    else:
        source = node.module or ""
    named: set[str] = set()
    for alias in node.names:
        submodule = f"{source}.{alias.name}"
        named.add(submodule if submodule in known else source)
    return {module for module in named if module in known}


def import_graph(root: Path = PACKAGE) -> ImportGraph:
    """Every module of the package at `root` -> the modules of that package it imports,
    wherever the import stands (module level, a function, an `if TYPE_CHECKING:` block).

    Importing a module is not counted as an arrow to its parent package's `__init__`,
    which Python runs first: else every package that re-exports a submodule would be a
    circle."""
    files = {module_name(root, p): p for p in sorted(root.rglob("*.py"))}
    graph: ImportGraph = {}
    for name, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        targets: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                targets |= _imported(node, name, path.name == "__init__.py", files)
        graph[name] = targets - {name}
    return graph


def cycles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """The import circles in `graph`: each strongly connected group of more than one module
    (a module importing itself is not counted), sorted, largest first (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found, key=lambda group: (-len(group), group))


def modules_importing(graph: Mapping[str, Iterable[str]], target: str, *, under: str) -> list[str]:
    """The modules in package `under` that import `target` (or one of its submodules)
    themselves: e.g. which route modules reach the store without going through the queue,
    `modules_importing(import_graph(), "foreman.store", under="foreman.api")`."""
    return sorted(
        name
        for name, targets in graph.items()
        if name.startswith(under + ".")
        and any(t == target or t.startswith(target + ".") for t in targets)
    )


def test_foreman_has_no_import_circle() -> None:
    circles = cycles(import_graph())
    assert circles == [], "import circles: " + "; ".join(" <-> ".join(c) for c in circles)


def test_the_graph_sees_imports_made_only_for_the_type_checker(tmp_path: Path) -> None:
    # the two circles foreman once had were both drawn under TYPE_CHECKING: a package whose
    # only circle is of that kind, with relative and package-level imports, is caught
    root = tmp_path / "pkg"
    (root / "sub").mkdir(parents=True)
    (root / "__init__.py").write_text("from pkg.app import App\n")
    (root / "app.py").write_text("from pkg.sub import routes\nclass App: ...\n")
    (root / "sub" / "__init__.py").write_text("")
    (root / "sub" / "routes.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..app import App\n"
    )
    (root / "leaf.py").write_text("def f() -> None:\n    from . import app\n")

    graph = import_graph(root)

    assert graph["pkg.sub.routes"] == {"pkg.app"}
    assert graph["pkg.app"] == {"pkg.sub.routes"}
    assert graph["pkg.leaf"] == {"pkg.app"}
    assert cycles(graph) == [["pkg.app", "pkg.sub.routes"]]


def test_cycles_finds_every_circle_and_nothing_else() -> None:
    graph = {
        "a": {"b"},
        "b": {"c"},
        "c": {"a", "d"},
        "d": set(),
        "e": {"f", "e"},
        "f": {"e"},
    }
    assert cycles(graph) == [["a", "b", "c"], ["e", "f"]]
    assert cycles({"a": {"b"}, "b": set(), "c": {"a", "b"}}) == []


def test_modules_importing_names_the_modules_under_a_package_that_import_a_module() -> None:
    graph = {
        "foreman.api.services": {"foreman.store", "foreman.queue"},
        "foreman.api.jobs": {"foreman.queue"},
        "foreman.api.ops": {"foreman.store.trio"},
        "foreman.worker": {"foreman.store"},
    }
    assert modules_importing(graph, "foreman.store", under="foreman.api") == [
        "foreman.api.ops",
        "foreman.api.services",
    ]
    # the real graph: the daemon wires the store in, so the check reads real arrows
    assert "foreman.store" in import_graph()["foreman.daemon"]


STORE_BANDS = (
    "foreman.store.errors",
    "foreman.store.schema",
    "foreman.store.sql",
    "foreman.store.face",
)


def test_the_store_bands_import_only_the_bands_above_them() -> None:
    graph = import_graph()
    for floor, band in enumerate(STORE_BANDS):
        assert graph[band] & set(STORE_BANDS) <= set(STORE_BANDS[:floor]), band
        # a band never goes through the package's front, which imports every band
        assert "foreman.store" not in graph[band], band


def test_the_store_is_imported_through_its_front_only() -> None:
    graph = import_graph()
    reaching_in = sorted(
        name
        for name, targets in graph.items()
        if not name.startswith("foreman.store")
        and any(t.startswith("foreman.store.") for t in targets)
    )
    assert reaching_in == []
    assert set(STORE_BANDS) <= graph["foreman.store"]


def test_only_the_store_speaks_sqlite() -> None:
    speaking = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            names = (
                [alias.name for alias in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            if any(name.split(".")[0] == "sqlite3" for name in names):
                speaking.append(module_name(PACKAGE, path))
    assert speaking
    assert all(name.startswith("foreman.store.") for name in speaking), speaking


def test_no_route_reaches_past_the_queue_to_the_store_or_the_tickets() -> None:
    # the routes' one door is `JobQueue`: a route that imports the store or the tickets
    # itself can change a job, or let go of a ticket, past the queue's rules
    graph = import_graph()
    assert modules_importing(graph, "foreman.store", under="foreman.api") == []
    assert modules_importing(graph, "foreman.tickets", under="foreman.api") == []


def test_a_foreman_on_sqlite_never_loads_postgresqls_driver() -> None:
    # a fresh interpreter: this test run has loaded psycopg for the PostgreSQL tests
    check = (
        "import sys, foreman.cli, foreman.daemon, foreman.store, foreman.leases;"
        " sys.exit('psycopg' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", check], check=False)
    assert done.returncode == 0
