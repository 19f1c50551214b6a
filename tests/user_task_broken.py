"""A task module that fails while it is imported: ``--task tests.user_task_broken:make_task``."""

from __future__ import annotations

raise RuntimeError("the data directory is not mounted")
