"""The walk of one parameter: the slimtune modules a ``--fix`` value passes through on its
way from the command line to the stored trial (issue 22's measure of how scattered the
code a value crosses is).

    PYTHONPATH=. python benchmarks/param_walk.py [--fix quant.bits=6] [--verbose]

Runs ``slimtune run --study walk --task digits --trials 1 --fix NAME=VALUE`` in this
process (a temporary SQLite file; the digits baseline comes from the cache, or is
trained once) under ``sys.setprofile``.  Every call of a slimtune function whose
arguments carry the value is recorded with its module: the string ``NAME=VALUE``, a
mapping holding VALUE under NAME, or either inside a list, tuple, mapping or dataclass
up to 3 levels deep.  The walk ends at the call that stores the trial
(``StudyStorage.add_candidate``).  Consecutive calls in one module are one visit; the
report gives the distinct modules, the visits, the returns to a module already left, and
the visits per module.

Pick a value that nothing else carries: digits' warm starts hold ``quant.bits`` 8 and 4,
so ``quant.bits=8`` also follows them (the task's ``extra`` and ``_warm_start``); 6 is the
default.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import io
import os
import sys
import tempfile
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):
    sys.path.insert(0, str(ROOT))


def carries(obj: Any, name: str, value: str, depth: int = 3) -> bool:
    """Whether ``obj`` holds ``name=value`` (a string, a mapping entry, or either inside
    a list, tuple, mapping or dataclass, ``depth`` levels deep)."""
    if isinstance(obj, str):
        return f"{name}={value}" in obj
    if depth == 0:
        return False
    if isinstance(obj, Mapping):
        try:
            if name in obj and str(obj[name]) == value:
                return True
            return any(carries(v, name, value, depth - 1) for v in list(obj.values())[:64])
        except Exception:  # noqa: BLE001 - a mapping that cannot be read is not carrying it
            return False
    if isinstance(obj, (list, tuple)):
        return any(carries(v, name, value, depth - 1) for v in obj[:64])
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return any(carries(getattr(obj, f.name, None), name, value, depth - 1) for f in dataclasses.fields(obj))
    return False


def walk(name: str, value: str) -> list[tuple[str, str]]:
    """``(module, function)`` of every slimtune call that carries ``name=value``, from the
    command line to the call that stores the trial."""
    from slimtune.cli import main as cli

    calls: list[tuple[str, str]] = []

    def profile(frame, event, arg):  # noqa: ARG001 - sys.setprofile's signature
        if event != "call":
            return
        module = frame.f_globals.get("__name__", "")
        if not module.startswith("slimtune"):
            return
        code = frame.f_code
        if code.co_name == "add_candidate":  # the trial is stored: the end of the walk
            calls.append((module, code.co_qualname))
            return
        n_args = code.co_argcount + code.co_kwonlyargcount + bool(code.co_flags & 4) + bool(code.co_flags & 8)
        local = frame.f_locals
        if any(v in local and carries(local[v], name, value) for v in code.co_varnames[:n_args]):
            calls.append((module, code.co_qualname))

    with tempfile.TemporaryDirectory() as tmp:
        here = os.getcwd()
        os.chdir(tmp)
        threading.setprofile(profile)
        sys.setprofile(profile)
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # the command's own JSON output
                cli.main(["run", "--study", "walk", "--task", "digits", "--trials", "1", "--fix", f"{name}={value}",
                          "--json", "--storage", f"sqlite:///{tmp}/walk.db"], standalone_mode=False)
        finally:
            sys.setprofile(None)
            threading.setprofile(None)
            os.chdir(here)
    stored = next((i for i, (_, f) in enumerate(calls) if f.endswith("add_candidate")), None)
    if stored is None:
        raise SystemExit("The trial was never stored.")
    return calls[: stored + 1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fix", default="quant.bits=6", help="NAME=VALUE to follow [default: quant.bits=6]")
    parser.add_argument("--verbose", action="store_true", help="Also list every call on the walk.")
    args = parser.parse_args()
    name, _, value = args.fix.partition("=")
    calls = walk(name, value)
    visits: list[str] = []
    for module, _ in calls:
        if not visits or visits[-1] != module:
            visits.append(module)
    seen: set[str] = set()
    returns = 0
    for module in visits:
        returns += module in seen
        seen.add(module)
    print(f"The walk of --fix {args.fix} (slimtune run, 1 digits trial), from the command line to the stored trial:")
    print(f"- calls carrying it: {len(calls)}")
    print(f"- distinct modules: {len(seen)}; visits: {len(visits)}; returns to a module already left: {returns}")
    for module, count in collections.Counter(visits).most_common():
        print(f"  {count:3d}  {module}")
    print("- path: " + " -> ".join(v.removeprefix("slimtune.") for v in visits))
    if args.verbose:
        for module, function in calls:
            print(f"    {module}  {function}")


if __name__ == "__main__":
    main()
