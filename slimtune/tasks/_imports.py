"""Finding a user's task module (``package.module`` of ``--task package.module:callable``):
on Python's path, else in the current directory.  The worker processes of ``--workers``
get the parent's ``sys.path`` (:func:`slimtune.cli._workers.worker_environment`), so
they find it in the same file."""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

__all__ = ["import_task_module"]

#: Whether :func:`import_task_module` falls back to the current directory (not in the
#: worker processes of ``--workers``, which get their parent's path).
LOOK_IN_CURRENT_DIRECTORY = True


def import_task_module(name: str) -> Any:
    """The module of a user task (``name`` of ``name:callable``), as Python's path finds
    it, else from the current directory (a task file next to where ``slimtune`` runs,
    which the ``slimtune`` script does not put on the path)."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        top = name.split(".")[0]
        cwd = os.getcwd()
        if not LOOK_IN_CURRENT_DIRECTORY or exc.name != top or any(os.path.abspath(p or ".") == cwd for p in sys.path):
            raise  # a module the task file imports is missing, or the current directory was looked in
        if not (os.path.isfile(os.path.join(cwd, top + ".py")) or os.path.isdir(os.path.join(cwd, top))):
            raise
        sys.path.insert(0, cwd)
        importlib.invalidate_caches()
        return importlib.import_module(name)
