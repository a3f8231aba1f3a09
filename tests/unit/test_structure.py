"""The package's import graph has no cycle (issue 12).

The graph is read from the source with ast, as Python would run it: module-level and
function-level imports, `from PKG import NAME` resolved to the submodule NAME when there
is one, relative imports, `importlib.import_module("...")` / `__import__("...")` with a
literal name, and the package `__init__` that importing a submodule of ANOTHER package
runs first (a module's own packages are already being imported when it loads).
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path

PACKAGE = "docker_hmigrate"
ROOT = Path(__file__).resolve().parents[2] / PACKAGE

# Cycles known and owned by another part of issue 12 (delete the entry once it is gone).
# Only an exact match is tolerated: anything else in or around those modules still fails.
KNOWN_CYCLES: dict[frozenset[str], str] = {}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _literal_import(node: ast.Call) -> str | None:
    """The module named by importlib.import_module("x") / import_module("x") /
    __import__("x"), when it is a literal."""
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
    if name not in ("import_module", "__import__") or not node.args:
        return None
    arg = node.args[0]
    return arg.value if isinstance(arg, ast.Constant) and isinstance(arg.value, str) else None


def imported_names(path: Path, name: str, known: Iterable[str]) -> set[str]:
    """Every dotted name the module `name` (file `path`) may import at run time."""
    known = set(known)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")
                base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in known else base)
        elif isinstance(node, ast.Call) and (literal := _literal_import(node)):
            found.add(literal)
    return found


def graph() -> dict[str, set[str]]:
    """module -> the package's modules it imports (with the other packages' __init__s
    that those imports run)."""
    mods = modules()
    edges: dict[str, set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        own = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 2)}
        for target in imported_names(path, name, mods):
            parts = target.split(".")
            for i in range(1, len(parts) + 1):
                prefix = ".".join(parts[:i])
                if prefix in mods and prefix not in own:
                    edges[name].add(prefix)
    return edges


def tangles(edges: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected components that hold a cycle (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1 or v in edges[v]:
                components.append(comp)

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return components


def cycle_in(comp: set[str], edges: dict[str, set[str]]) -> list[str]:
    """A shortest way from the component's first module back to itself."""
    start = min(comp)
    paths = {w: [start, w] for w in sorted(edges[start]) if w in comp}
    while start not in paths:
        nxt = {}
        for v, path in paths.items():
            for w in sorted(edges[v]):
                if w in comp and w not in paths and w not in nxt:
                    nxt[w] = path + [w]
        paths.update(nxt)
    return paths[start]


def test_the_package_has_no_import_cycle() -> None:
    edges = graph()
    found = [c for c in tangles(edges) if frozenset(c) not in KNOWN_CYCLES]
    assert not found, "import cycles:\n" + "\n".join(
        " -> ".join(cycle_in(c, edges)) + f"\n    (tied in this knot: {', '.join(sorted(c))})"
        for c in found)


def test_only_the_entry_points_import_the_cli() -> None:
    """The command line sits on top: the pipeline, the engine and the recode never import
    it (they report through docker_hmigrate.output)."""
    entry = {"docker_hmigrate.plugin", "docker_hmigrate.__main__"}
    users = {m for m, targets in graph().items()
             if not m.startswith("docker_hmigrate.cli") and m not in entry
             and any(t.startswith("docker_hmigrate.cli") for t in targets)}
    assert not users, f"import the cli package: {sorted(users)}"


def test_the_graph_sees_each_kind_of_import(tmp_path: Path) -> None:
    """The reader finds imports in functions, through importlib, relative, and submodules
    named by `from PKG import NAME`: each would hide a cycle if missed."""
    src = (
        "import importlib\n"
        "from . import sibling\n"
        "from ..other import thing\n"
        "def f():\n"
        "    from docker_hmigrate.cli import app\n"
        "    importlib.import_module('docker_hmigrate.commands')\n"
    )
    path = tmp_path / "mod.py"
    path.write_text(src)
    known = {"docker_hmigrate.cli.sibling", "docker_hmigrate.cli.app", "docker_hmigrate.other"}
    assert imported_names(path, "docker_hmigrate.cli.mod", known) == {
        "importlib", "docker_hmigrate.cli.sibling", "docker_hmigrate.other",
        "docker_hmigrate.cli.app", "docker_hmigrate.commands"}
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert tangles(edges) == [{"a", "b", "c"}]
    assert cycle_in({"a", "b", "c"}, edges) == ["a", "b", "c", "a"]
