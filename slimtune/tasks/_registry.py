"""The registry of tasks: built-in tasks by name (``register_task``), and
:func:`get_task`, which also builds a user's task from ``package.module:callable``.

A task spec read from a study database is not trusted (``trusted=False``): importing it
would let whoever wrote the database choose the code this process runs.  Such a spec
is built only when it names a built-in task, or when ``$SLIMTUNE_TRUST_STORED_TASKS``
is ``1``; otherwise the user gives the task again (``--task``, ``task=``), which is
then checked against the stored fingerprint.

Example:
    >>> task = get_task("digits")                     # a built-in task
    >>> task = get_task("my_tasks:resnet_task")       # a user's callable returning a Task
"""

from __future__ import annotations

import os
from typing import Callable

from slimtune._names import close_matches
from slimtune.tasks._task_error import TaskError
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


#: Set to ``1`` to let slimtune import the user tasks that study databases name (only
#: for databases you trust: the spec is code this process runs).
TRUST_ENV = "SLIMTUNE_TRUST_STORED_TASKS"


class UntrustedTaskError(TaskError):
    """A user task named by a study database, not by the user: not imported.  Its
    ``cli_text`` says it with the command's options."""

    def __init__(self, spec: str) -> None:
        why = (f"its task {spec!r} is user code that the study database names; slimtune imports such a task only "
               "when you name it yourself")
        super().__init__(f"{why}: pass task={spec!r}, or set {TRUST_ENV}=1 to trust the databases you open.")
        self.spec = spec
        self.cli_text = f"{why}: add --task {spec}, or set {TRUST_ENV}=1 to trust the databases you open."


def stored_tasks_trusted() -> bool:
    """Whether ``$SLIMTUNE_TRUST_STORED_TASKS`` says to import the user tasks databases name."""
    return os.environ.get(TRUST_ENV, "").strip().lower() in ("1", "true", "yes")


def get_task(spec: "str | Task", *, trusted: bool = True) -> Task:
    """A built-in task by name, or a user task given as ``package.module:callable``
    (the callable returns a :class:`Task`).

    ``trusted=False`` for a spec read from a study database: a user task is then
    refused (:class:`UntrustedTaskError`) unless :func:`stored_tasks_trusted`; a
    built-in name is always built."""
    if isinstance(spec, Task):
        return spec
    if not isinstance(spec, str) or not spec:
        raise TaskError(f"A task is a built-in name or 'package.module:callable', but got {spec!r}.")
    if ":" in spec:
        if not trusted and not stored_tasks_trusted():
            raise UntrustedTaskError(spec)
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
