"""Finding a user's task module (``package.module`` of ``--task package.module:callable``)
the same way in the ``slimtune`` process and in the worker processes it starts."""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any, Mapping

__all__ = ["import_task_module", "worker_environment"]

#: Directories :func:`import_task_module` added to ``sys.path`` (the workers get them too).
_TASK_PATHS: list[str] = []


def import_task_module(name: str) -> Any:
    """The module of a user task (``name`` of ``name:callable``), as Python's path finds
    it, else from the current directory (a task file next to where ``slimtune`` runs,
    which the ``slimtune`` script does not put on the path); a directory added is
    remembered for the worker processes (:func:`worker_environment`)."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        top = name.split(".")[0]
        cwd = os.getcwd()
        if exc.name != top or any(os.path.abspath(p or ".") == cwd for p in sys.path):
            raise  # a module the task file imports is missing, or the current directory was looked in
        if not (os.path.isfile(os.path.join(cwd, top + ".py")) or os.path.isdir(os.path.join(cwd, top))):
            raise
        sys.path.insert(0, cwd)
        _TASK_PATHS.append(cwd)
        importlib.invalidate_caches()
        return importlib.import_module(name)


def worker_environment(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` for a worker process started to run the same task: ``PYTHONPATH`` leads
    with the directories the task modules were imported from here, and the worker does
    not put its own current directory first (``PYTHONSAFEPATH``, Python 3.11+), so that
    ``package.module:callable`` resolves to the same file in both."""
    out = dict(env)
    if _TASK_PATHS:
        out["PYTHONPATH"] = os.pathsep.join([*dict.fromkeys(_TASK_PATHS), *filter(None, [out.get("PYTHONPATH")])])
        out["PYTHONSAFEPATH"] = "1"
    return out
