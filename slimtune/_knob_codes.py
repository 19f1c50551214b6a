"""The knobs' compact codes for the CLI's tables, read without importing torch.

Every knob says how its parameters read in a table (:meth:`slimtune.spaces.Knob.compact`,
``compact_legend``, ``compact_index``).  ``slimtune show`` must start without torch,
and the knob modules import it, so when the knob registry is not loaded yet the codes
are read from the knob files themselves: the modules that ``slimtune/spaces/__init__.py``
registers, in its order; in each, the registered class's ``family``, ``compact_legend``
and ``compact_index`` (string literals) and its ``compact`` static method, compiled on
its own with builtins only.  Once the registry is loaded (torch imported anyway), the
registered classes are asked directly, so knobs registered at run time show too.
"""

from __future__ import annotations

import ast
import builtins
import copy
import functools
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

_SPACES = Path(__file__).resolve().parent / "spaces"
_REGISTRY = "slimtune.spaces._registry"


@dataclass(frozen=True)
class KnobCode:
    """How one family reads in the CLI's tables."""

    family: str
    legend: str
    index: str
    compact: Callable[[Mapping[str, Any], Sequence[str]], str]


def knob_codes() -> list[KnobCode]:
    """The compact codes of the knobs that have one, in registration order."""
    if _REGISTRY in sys.modules:
        return _registered_codes()
    return list(_file_codes())


def _registered_codes() -> list[KnobCode]:
    from slimtune.spaces import Knob, get_knob, knob_families

    classes = [get_knob(name) for name in knob_families()]
    return [KnobCode(cls.family, cls.compact_legend, cls.compact_index, cls.compact)
            for cls in classes if cls.compact is not Knob.compact]


@functools.lru_cache(maxsize=1)
def _file_codes() -> tuple[KnobCode, ...]:
    codes = []
    for module in _registered_modules():
        path = _SPACES / f"{module}.py"
        if path.exists():
            codes += _codes_in(ast.parse(path.read_text(encoding="utf-8"), str(path)), str(path))
    return tuple(codes)


def _registered_modules() -> list[str]:
    """The knob modules ``spaces/__init__.py`` imports (``from slimtune.spaces import x``)."""
    tree = ast.parse((_SPACES / "__init__.py").read_text(encoding="utf-8"))
    return [alias.name for node in tree.body if isinstance(node, ast.ImportFrom) and node.module == "slimtune.spaces"
            for alias in node.names]


def _codes_in(tree: ast.Module, filename: str) -> list[KnobCode]:
    """The codes of the ``@register_knob`` classes of one knob file."""
    out = []
    for node in tree.body:
        if not (isinstance(node, ast.ClassDef) and any(_name(d) == "register_knob" for d in node.decorator_list)):
            continue
        literals = {target.id: stmt.value.value for stmt in node.body if isinstance(stmt, ast.Assign)
                    for target in stmt.targets if isinstance(target, ast.Name)
                    and isinstance(stmt.value, ast.Constant) and isinstance(stmt.value.value, str)}
        function = next((stmt for stmt in node.body if isinstance(stmt, ast.FunctionDef) and stmt.name == "compact"),
                        None)
        if function is None or "family" not in literals:
            continue
        out.append(KnobCode(literals["family"], literals.get("compact_legend", ""), literals.get("compact_index", ""),
                            _compile_alone(function, filename)))
    return out


def _name(node: ast.expr) -> str:
    return node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else ""


def _compile_alone(function: ast.FunctionDef, filename: str) -> Callable[..., str]:
    """``function`` compiled by itself (no decorators, no annotations evaluated), with
    builtins only."""
    function = copy.copy(function)
    function.decorator_list = []
    module = ast.Module(body=[ast.ImportFrom(module="__future__", names=[ast.alias("annotations")], level=0),
                              function], type_ignores=[])
    ast.fix_missing_locations(module)
    namespace: dict[str, Any] = {"__builtins__": builtins}
    exec(compile(module, filename, "exec"), namespace)  # noqa: S102 - slimtune's own knob file
    return namespace[function.name]
