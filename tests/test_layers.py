"""The layers of the package are one-way, bottom to top:

    leaf modules (_version, _defaults, _vocabulary, ...) -> tasks -> spaces -> search
    -> studies -> widgets | cli -> the package root (``slimtune/__init__.py``)

Every module under ``slimtune/`` is parsed with ``ast`` and every import it makes is
checked: at module level, inside functions (lazy imports), and inside ``if
TYPE_CHECKING:`` blocks too (a type-only import still makes the lower layer know the
upper one, so it counts like any other); ``importlib.import_module("slimtune...")`` and
``__import__`` with a literal name count as imports.  A module may import its own layer
and the layers below it; widgets and cli, the two tops, never import each other; no
import cycle joins two units (a subpackage, or a module at the package's root).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "slimtune"

#: The layers, bottom first; an import may go to the same rank or a lower one.
RANKS = {"leaf": 0, "tasks": 1, "spaces": 2, "search": 3, "studies": 4, "widgets": 5, "cli": 5, "root": 6}
#: The layer of each module at the package's root (a new one must be given its layer
#: here).  ``_cli_tables`` prints the CLI's tables.
ROOT_MODULES = {
    "_version": "leaf", "_defaults": "leaf", "_vocabulary": "leaf", "_names": "leaf", "_pgserver": "leaf",
    "_dominance": "leaf", "_viewers": "leaf", "_urls": "leaf", "_storage_faults": "leaf",
    "_cli_tables": "cli",
}


@dataclass(frozen=True)
class Import:
    source: str  # the importing module, dotted
    target: str  # the imported module (or the package an imported name lives in)
    line: int
    where: str  # "module", "function f", "TYPE_CHECKING"

    def __str__(self) -> str:
        return f"{self.source}:{self.line} ({self.where}) imports {self.target}"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def unit(module: str) -> str:
    """The unit a module belongs to: its subpackage (``slimtune.search``), a module at
    the package's root (``slimtune._version``), or the root itself (``slimtune``)."""
    parts = module.split(".")
    return ".".join(parts[:2])


def layer(module: str) -> str:
    u = unit(module)
    if u == "slimtune":
        return "root"
    name = u.split(".")[1]
    if name in RANKS:  # a subpackage, or the cli
        return name
    assert name in ROOT_MODULES, f"slimtune/{name}.py has no layer: add it to ROOT_MODULES in {__file__}"
    return ROOT_MODULES[name]


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> list[Import]:
    """Every slimtune import of the module at ``path``, wherever it is written."""
    return imports_in(module, path.read_text(encoding="utf-8"), modules, is_package=path.name == "__init__.py")


def imports_in(module: str, source: str, modules: dict[str, Path], *, is_package: bool = False) -> list[Import]:
    """Every slimtune import in ``source``, the text of ``module``."""
    tree = ast.parse(source, module)
    found: list[Import] = []

    def resolve(node: ast.ImportFrom) -> str:
        if not node.level:
            return node.module or ""
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        return ".".join(base + ([node.module] if node.module else []))

    def add(target: str, node: ast.AST, where: str) -> None:
        if target == "slimtune" or target.startswith("slimtune."):
            found.append(Import(module, target, node.lineno, where))

    def visit(node: ast.AST, where: str) -> None:
        for child in ast.iter_child_nodes(node):
            inner = where
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) and where == "module":
                inner = f"function {child.name}"
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                for sub in child.body:
                    visit(ast.Module(body=[sub], type_ignores=[]), "TYPE_CHECKING")
                for sub in child.orelse:
                    visit(ast.Module(body=[sub], type_ignores=[]), where)
                continue
            if isinstance(child, ast.Import):
                for alias in child.names:
                    add(alias.name, child, where)
            elif isinstance(child, ast.ImportFrom):
                base = resolve(child)
                for alias in child.names:  # `from slimtune.x import y`: module x.y if there is one, else x
                    sub = f"{base}.{alias.name}"
                    add(sub if sub in modules else base, child, where)
            elif isinstance(child, ast.Call):
                func = child.func
                name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
                if name in ("import_module", "__import__") and child.args and isinstance(child.args[0], ast.Constant) \
                        and isinstance(child.args[0].value, str):
                    add(child.args[0].value, child, where)
            visit(child, inner)

    visit(tree, "module")
    return found


def all_imports() -> list[Import]:
    modules = all_modules()
    return [imp for name, path in modules.items() for imp in imports_of(name, path, modules)]


def upward(imports: list[Import]) -> list[str]:
    bad = []
    for imp in imports:
        src, dst = layer(imp.source), layer(imp.target)
        if RANKS[dst] > RANKS[src] or (src != dst and RANKS[dst] == RANKS[src]):
            bad.append(f"{imp} ({src} -> {dst})")
    return bad


def unit_cycles(imports: list[Import]) -> list[list[str]]:
    """The strongly connected groups of more than one unit (Tarjan's algorithm)."""
    graph: dict[str, set[str]] = {}
    for imp in imports:
        a, b = unit(imp.source), unit(imp.target)
        graph.setdefault(a, set())
        graph.setdefault(b, set())
        if a != b:
            graph[a].add(b)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return groups


# -- the tests ---------------------------------------------------------------------------
def test_the_scan_sees_every_kind_of_import():
    """The scanner itself: module level, lazy, TYPE_CHECKING, relative and by-string
    imports are all found (a scan that misses one could never fail)."""
    source = (
        "from typing import TYPE_CHECKING\n"
        "import slimtune.tasks\n"
        "from slimtune.spaces import base\n"
        "from . import _frontier\n"
        "if TYPE_CHECKING:\n"
        "    from slimtune.widgets import StudyDashboard\n"
        "def f():\n"
        "    from slimtune.cli import main\n"
        "    importlib.import_module('slimtune.widgets._magics')\n"
    )
    found = imports_in("slimtune.studies._scan_probe", source, all_modules())
    assert [(i.target, i.where) for i in found] == [
        ("slimtune.tasks", "module"), ("slimtune.spaces.base", "module"), ("slimtune.studies._frontier", "module"),
        ("slimtune.widgets", "TYPE_CHECKING"), ("slimtune.cli", "function f"),
        ("slimtune.widgets._magics", "function f")]
    assert len(upward(found)) == 3  # widgets twice, cli once


def test_every_module_has_a_layer():
    for name in all_modules():
        layer(name)


def test_no_module_imports_a_layer_above_its_own():
    bad = upward(all_imports())
    assert not bad, "imports going up the layers:\n" + "\n".join(bad)


def test_no_import_cycle_between_subpackages():
    cycles = unit_cycles(all_imports())
    assert not cycles, f"import cycles between units: {cycles}"


def test_the_cycle_finder_finds_a_cycle():
    a = Import("slimtune.tasks._task", "slimtune.spaces.base", 1, "module")
    b = Import("slimtune.spaces._graph_cuts", "slimtune.tasks._outputs", 1, "module")
    assert unit_cycles([a, b]) == [["slimtune.spaces", "slimtune.tasks"]]
    assert unit_cycles([b]) == []
