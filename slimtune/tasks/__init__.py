"""Built-in tasks (model + data) and the Task type for user tasks."""

from slimtune.tasks._imports import import_task_module
from slimtune.tasks._registry import get_task, list_tasks, register_task
from slimtune.tasks._task import Task, TaskData, TaskError
from slimtune.tasks import _builtin  # noqa: F401  (registers the built-in tasks)

__all__ = ["Task", "TaskData", "TaskError", "get_task", "import_task_module", "list_tasks", "register_task"]
