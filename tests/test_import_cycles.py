"""No import cycles between the package's parts (its subpackages and top-level modules).

A cycle hides easily behind an import inside a function or under ``TYPE_CHECKING``; this
test reads every ``import`` statement with :mod:`ast` (wherever it is in the file), maps
each module to its part (``client``, ``engine``, ``projections``, ``store``, ... or a
top-level module such as ``crypto``) and fails if the parts' graph has a cycle, naming
the imports that close it. The layers it keeps: ``engine`` and ``projections`` (the
write and read sides) know nothing of each other; ``client`` may use the read side's
protocol and history readers, never the other way round.
"""

from __future__ import annotations

import ast
import tomllib
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "colonies_es"


def modules() -> dict[str, Path]:
    """Every module of the installed package, by dotted name, from pyproject's layout."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    directories: dict[str, str] = config["package-dir"]
    found: dict[str, Path] = {}
    for package, directory in directories.items():
        nested = {p for p in directories if p != package and p.startswith(package + ".")}
        for path in (ROOT / directory).rglob("*.py"):
            parts = [p for p in path.relative_to(ROOT / directory).with_suffix("").parts]
            name = ".".join([package, *(p for p in parts if p != "__init__")])
            if not any(name == n or name.startswith(n + ".") for n in nested):
                found[name] = path
    return found


def part(module: str) -> str:
    """The part a module belongs to: its subpackage or top-level module under PACKAGE."""
    pieces = module.split(".")
    return pieces[1] if len(pieces) > 1 else PACKAGE


def imports(module: str, path: Path, known: dict[str, Path]) -> Iterator[tuple[str, int]]:
    """The package modules ``module`` imports (anywhere in the file), with line numbers."""
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's package upwards
                anchor = module.split(".") if is_package else module.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                yield (submodule if submodule in known else base), node.lineno


def part_graph() -> dict[tuple[str, str], set[str]]:
    """(importing part, imported part) -> where, for imports between different parts."""
    known = modules()
    edges: dict[tuple[str, str], set[str]] = {}
    for module, path in known.items():
        for imported, line in imports(module, path, known):
            if imported.split(".")[0] != PACKAGE:
                continue
            edge = (part(module), part(imported))
            if edge[0] != edge[1]:
                edges.setdefault(edge, set()).add(f"{module}:{line} imports {imported}")
    return edges


def cycles(edges: dict[tuple[str, str], set[str]]) -> list[set[str]]:
    """The strongly connected components of more than one part (Tarjan's algorithm)."""
    graph: dict[str, set[str]] = {}
    for source, target in edges:
        graph.setdefault(source, set()).add(target)
        graph.setdefault(target, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    components: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def test_the_package_parts_import_each_other_without_cycles() -> None:
    edges = part_graph()
    assert ("engine", "service") not in edges  # sanity: parts, not modules
    assert ("engine", "store") in edges  # sanity: the graph sees real imports
    unexpected = cycles(edges)
    report = [
        f"cycle {sorted(component)}: "
        + "; ".join(
            where
            for (source, target), places in sorted(edges.items())
            if source in component and target in component
            for where in sorted(places)[:2]
        )
        for component in unexpected
    ]
    assert not unexpected, "\n".join(report)


def test_the_write_and_read_sides_do_not_import_each_other() -> None:
    edges = part_graph()
    assert ("engine", "projections") not in edges, edges.get(("engine", "projections"))
    assert ("projections", "engine") not in edges, edges.get(("projections", "engine"))
    assert ("projections", "client") not in edges, edges.get(("projections", "client"))
