"""Checking what a study is created, resumed or run with: names, budgets, evaluation
settings, constraints.  Every bad value raises :class:`StudyError` naming it, before
anything is written.
"""

from __future__ import annotations

import math
import re
from dataclasses import fields
from typing import TYPE_CHECKING, Any, Mapping

from slimtune.search._constraints import Constraints
from slimtune.studies._errors import StudyError

if TYPE_CHECKING:  # pragma: no cover
    from slimtune.search._pipeline import EvalSettings


#: Names of new studies: safe in a shell, a file name, a URL or HTML without quoting.
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def check_name(name: str) -> str:
    """A name to look up (studies made before names were restricted still open)."""
    if not isinstance(name, str) or not name.strip() or len(name) > 512:
        raise StudyError(f"A study name is a non-empty string of at most 512 characters, but got {name!r}.")
    return name


def check_new_name(name: str) -> str:
    """A name for a new study: letters, digits, '.', '_' and '-' (at most 128,
    starting with a letter or digit)."""
    if not isinstance(name, str) or SAFE_NAME.fullmatch(name) is None:
        raise StudyError(f"A new study name uses letters, digits, '.', '_' and '-' (at most 128, starting with a "
                         f"letter or digit), but got {name!r}.")
    return name


def check_budget(n_trials: int | None, timeout: float | None) -> None:
    """``n_trials`` a positive int, ``timeout`` a finite positive number of seconds."""
    if n_trials is not None and (isinstance(n_trials, bool) or not isinstance(n_trials, int) or n_trials < 1):
        raise StudyError(f"`n_trials` must be a positive integer, but got {n_trials!r}.")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
                                or not math.isfinite(timeout) or timeout <= 0):
        raise StudyError(f"`timeout` must be a finite number of seconds above 0, but got {timeout!r}.")


def settings_from(settings: "EvalSettings | Mapping[str, Any] | None", base: Mapping[str, Any] | None) -> "EvalSettings":
    from slimtune.search._pipeline import EvalSettings

    if isinstance(settings, EvalSettings):
        return settings
    known = {f.name for f in fields(EvalSettings)}
    overrides = dict(settings or {})
    unknown = [k for k in overrides if k not in known]
    if unknown:
        raise StudyError(f"Unknown evaluation setting {unknown[0]!r}; the settings are {', '.join(sorted(known))}.")
    try:
        return EvalSettings(**{**dict(base or {}), **overrides})
    except (TypeError, ValueError) as exc:
        raise StudyError(str(exc)) from None


def constraints_from(constraints: "Constraints | Mapping[str, Any] | None", **limits: float | None) -> Constraints | None:
    given = {k: v for k, v in limits.items() if v is not None}
    if constraints is None and not given:
        return None
    try:
        base = constraints if isinstance(constraints, Constraints) else Constraints.from_dict(constraints)
        return Constraints(**{**base.to_dict(), **given})
    except (TypeError, ValueError) as exc:
        raise StudyError(str(exc)) from None


def differences(stored: Mapping[str, Any], given: Mapping[str, Any]) -> list[str]:
    keys = sorted(set(stored) | set(given))
    return [f"{k}: {stored.get(k)!r} (study) vs {given.get(k)!r} (given)" for k in keys if stored.get(k) != given.get(k)]
