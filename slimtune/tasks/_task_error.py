"""The one exception of the tasks layer."""

from __future__ import annotations

__all__ = ["TaskError"]


class TaskError(ValueError):
    """A task cannot be built or does not fit slimtune (one clear line for the user)."""
