"""How the ``slimtune`` command reports bad input: one line starting ``Error:`` and exit
code 2, never a traceback (bad option values, missing arguments, and the bad-input
errors of the subpackages alike).
"""

from __future__ import annotations

import functools
import sys
from typing import Any, Callable

import click


class UserError(Exception):
    """Bad input: printed as one line, exit code 2."""


USER_ERRORS: tuple[type[BaseException], ...] = (UserError,)

#: Bad-input errors of the other subpackages, as (module, class).  They are looked up
#: only in modules already imported: an error can only come from a module that ran, and
#: importing them up front would import torch for `slimtune --help`.
LAZY_USER_ERRORS = (("slimtune.spaces.base", "SpaceError"), ("slimtune.tasks._task", "TaskError"),
                    ("slimtune.studies._errors", "StudyError"), ("slimtune.search._backends._interface", "BackendError"),
                    ("slimtune.search._export", "ExportError"))


def _user_error_types() -> tuple[type[BaseException], ...]:
    loaded = [getattr(sys.modules[m], name) for m, name in LAZY_USER_ERRORS if m in sys.modules]
    return (*USER_ERRORS, *loaded)


def user_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Turn bad-input exceptions into one clear line and exit code 2 (no traceback)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except Exception as exc:
            if not isinstance(exc, _user_error_types()):
                raise
            click.echo(f"Error: {exc}", err=True)
            sys.exit(2)

    return wrapper


class OneLineUsageError(click.ClickException):
    """A bad option value or a missing argument, printed as one line (exit code 2)."""

    exit_code = 2

    def show(self, file: Any = None) -> None:
        click.echo(f"Error: {self.format_message()}", err=True)


class Group(click.Group):
    """The ``slimtune`` group: click's usage errors become one line (``Error: ...``,
    with where to find help) instead of a usage block."""

    def make_context(self, *args: Any, **kwargs: Any) -> click.Context:
        try:
            return super().make_context(*args, **kwargs)
        except click.UsageError as exc:
            raise _one_line(exc) from None

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:
            raise _one_line(exc) from None


def _one_line(exc: click.UsageError) -> OneLineUsageError:
    where = f" (see '{exc.ctx.command_path} -h')" if exc.ctx is not None else ""
    return OneLineUsageError(" ".join(exc.format_message().split()) + where)
