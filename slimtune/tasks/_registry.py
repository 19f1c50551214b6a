"""The registry of tasks: built-in tasks by name (``register_task``), and
:func:`get_task`, which also builds a user's task from ``package.module:callable``.

Example:
    >>> task = get_task("digits")                     # a built-in task
    >>> task = get_task("my_tasks:resnet_task")       # a user's callable returning a Task
"""

from __future__ import annotations

import os
from typing import Callable

from slimtune._names import close_matches
from slimtune.tasks._data import TaskError
from slimtune.tasks._imports import import_task_module
from slimtune.tasks._task import Task, one_line

_TASKS: dict[str, Callable[[], Task]] = {}
_DOCS: dict[str, str] = {}


def register_task(name: str, doc: str = "") -> Callable[[Callable[[], Task]], Callable[[], Task]]:
    """Register a built-in task factory under ``name``."""

    def decorator(factory: Callable[[], Task]) -> Callable[[], Task]:
        if name in _TASKS:
            import warnings

            warnings.warn(f"Task {name!r} is registered twice; the later one wins.", stacklevel=2)
        _TASKS[name] = factory
        _DOCS[name] = doc or (factory.__doc__ or "").strip().splitlines()[0]
        return factory

    return decorator


def list_tasks() -> dict[str, str]:
    """Built-in task names with a one-line description."""
    return dict(_DOCS)


def get_task(spec: "str | Task") -> Task:
    """A built-in task by name, or a user task given as ``package.module:callable``
    (the callable returns a :class:`Task`)."""
    if isinstance(spec, Task):
        return spec
    if not isinstance(spec, str) or not spec:
        raise TaskError(f"A task is a built-in name or 'package.module:callable', but got {spec!r}.")
    if ":" in spec:
        module_name, _, attr = spec.partition(":")
        if not module_name or not attr:
            raise TaskError(f"A user task is given as 'package.module:callable', but got {spec!r}.")
        try:
            module = import_task_module(module_name)
        except ImportError as exc:
            raise TaskError(f"Cannot import the task module {module_name!r}: {exc} (looked on Python's path and in "
                            f"the current directory {os.getcwd()}).") from None
        except Exception as exc:  # noqa: BLE001 - the user's module failed while importing
            raise TaskError(f"Importing the task module {module_name!r} raised {one_line(exc)}") from None
        factory = getattr(module, attr, None)
        if factory is None:
            raise TaskError(f"Module {module_name!r} has no attribute {attr!r}.")
        try:
            task = factory() if callable(factory) and not isinstance(factory, Task) else factory
        except TaskError:
            raise
        except Exception as exc:  # noqa: BLE001 - the user's callable
            raise TaskError(f"The task callable {spec!r} raised {one_line(exc)}") from None
        if not isinstance(task, Task):
            raise TaskError(f"{spec!r} must return a slimtune.Task, but returned {type(task).__name__}.")
        task.extra.setdefault("spec", spec)
        return task
    if spec not in _TASKS:
        raise TaskError(f"Unknown task {spec!r}." + close_matches(spec, list(_TASKS)) + " Or give 'package.module:callable'.")
    task = _TASKS[spec]()
    task.extra.setdefault("spec", spec)
    return task
