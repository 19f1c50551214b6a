"""How the ``slimtune`` command reports bad input and storage faults: one line starting
``Error:`` and exit code 2, never a traceback (bad option values, missing arguments, the
bad-input errors of the subpackages, a study database that is full, read-only, gone or
unreachable alike).  An error may carry ``cli_text``: its wording for a command line
(it names options where the Python API's names arguments).
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
                    ("slimtune.search._export", "ExportError"), ("slimtune.search._targets", "TargetError"))


def _user_error_types() -> tuple[type[BaseException], ...]:
    loaded = [getattr(sys.modules[m], name) for m, name in LAZY_USER_ERRORS if m in sys.modules]
    return (*USER_ERRORS, *loaded)


def error_line(exc: BaseException) -> str | None:
    """The one line (without ``Error:``) for a bad-input error or a storage fault of the
    running command; ``None`` for anything else (a bug: its traceback is shown)."""
    if isinstance(exc, _user_error_types()):
        return str(getattr(exc, "cli_text", None) or exc)
    from slimtune._storage_faults import storage_fault

    ctx = click.get_current_context(silent=True)
    storage = ctx.params.get("storage") if ctx is not None else None
    return storage_fault(exc, storage if isinstance(storage, str) else None)


def echo_error(line: str) -> None:
    """``Error: line`` on stderr (nothing when stderr is gone, e.g. a closed terminal)."""
    try:
        click.echo(f"Error: {line}", err=True)
    except OSError:
        pass


def user_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Turn bad-input exceptions and storage faults into one clear line and exit code 2
    (no traceback)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except Exception as exc:
            line = error_line(exc)
            if line is None:
                raise
            echo_error(line)
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
