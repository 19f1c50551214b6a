"""Checking what a study is created, resumed or run with: names, budgets, evaluation
settings, constraints, and all of ``Study.create_or_load``'s arguments at once
(:func:`check_request`).  Every bad value raises :class:`StudyError` naming it, before
anything is written.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from slimtune._names import quoted
from slimtune.search._constraints import Constraints
from slimtune.search._early_stopping import resolve_early_stopping
from slimtune.studies._database import resolve_storage
from slimtune.studies._errors import StudyError
from slimtune.studies._frontier import check_objectives

if TYPE_CHECKING:  # pragma: no cover
    from slimtune.search._early_stopping import FrontierEarlyStopping
    from slimtune.search._pipeline import EvalSettings
    from slimtune.spaces._space import Space
    from slimtune.tasks._task import Task


#: Names of new studies: safe in a shell, a file name, a URL or HTML without quoting.
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def check_name(name: str) -> str:
    """A name to look up (studies made before names were restricted still open)."""
    if not isinstance(name, str) or not name.strip() or len(name) > 512:
        raise StudyError(f"A study name is a non-empty string of at most 512 characters, but got {quoted(name)}.")
    return name


def check_new_name(name: str) -> str:
    """A name for a new study: letters, digits, '.', '_' and '-' (at most 128,
    starting with a letter or digit)."""
    if not isinstance(name, str) or SAFE_NAME.fullmatch(name) is None:
        raise StudyError(f"A new study name uses letters, digits, '.', '_' and '-' (at most 128, starting with a "
                         f"letter or digit), but got {quoted(name)}.")
    return name


def check_budget(n_trials: int | None, timeout: float | None) -> None:
    """``n_trials`` a positive int, ``timeout`` a finite positive number of seconds."""
    if n_trials is not None and (isinstance(n_trials, bool) or not isinstance(n_trials, int) or n_trials < 1):
        raise StudyError(f"`n_trials` must be a positive integer, but got {n_trials!r}.")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
                                or not math.isfinite(timeout) or timeout <= 0):
        raise StudyError(f"`timeout` must be a finite number of seconds above 0, but got {timeout!r}.")


def session_settings(settings: "EvalSettings | Mapping[str, Any] | None") -> dict[str, Any]:
    """What ``settings`` says about where this session trains (``device``, ``amp``), as given."""
    from slimtune.search._settings import SESSION_SETTINGS, EvalSettings

    if isinstance(settings, EvalSettings):
        return {k: getattr(settings, k) for k in SESSION_SETTINGS}
    return {k: v for k, v in dict(settings or {}).items() if k in SESSION_SETTINGS}


def check_device(settings: "EvalSettings") -> None:
    """Refuse a training device this machine does not have, before anything is trained or written."""
    from slimtune.search._device import DeviceError, TrainingDevice

    try:
        TrainingDevice.resolve(settings.device, settings.amp)
    except DeviceError as exc:
        raise StudyError(str(exc)) from None


def settings_from(settings: "EvalSettings | Mapping[str, Any] | None", base: Mapping[str, Any] | None) -> "EvalSettings":
    from slimtune.search._settings import EvalSettings

    if isinstance(settings, EvalSettings):
        return settings
    known = {f.name for f in fields(EvalSettings)}
    overrides = dict(settings or {})
    unknown = [k for k in overrides if k not in known]
    if unknown:
        raise StudyError(f"Unknown evaluation setting {unknown[0]!r}; the settings are {', '.join(sorted(known))}.")
    try:
        settings = EvalSettings(**{**dict(base or {}), **overrides})
    except (TypeError, ValueError) as exc:
        raise StudyError(str(exc)) from None
    if settings.targets:  # the first target is the runtime, batch size and threads: a different one is refused
        for name in ("runtime", "batch_size", "threads"):
            if name in overrides and overrides[name] != getattr(settings, name):
                raise StudyError(f"`{name}` {overrides[name]!r} is not the first target's ({settings.targets[0]}): "
                                 f"in a study timed on several targets ({', '.join(settings.targets)}) the first "
                                 "target sets the runtime, batch size and threads.")
    return settings


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


@dataclass(frozen=True)
class StudyRequest:
    """``Study.create_or_load``'s arguments, checked: the task built, the objectives and
    constraints parsed, the space of a new study built (``new_space``; ``None`` without a
    task).  ``space``, ``fixed`` and ``settings`` are kept as given, for the comparison
    with a stored study on resume."""

    name: str
    storage: str
    task: "Task | None"
    space: "Space | None"
    fixed: Mapping[str, Any] | None
    new_space: "Space | None"
    objectives: tuple[str, ...] | None
    constraints: Constraints | None
    settings: "EvalSettings | Mapping[str, Any] | None"
    sampler: Any
    seed: int | None
    early_stopping: "bool | FrontierEarlyStopping | None"


def check_request(name: str, *, storage: str | None, task: "str | Task | None", space: "Space | None",
                  fixed: Mapping[str, Any] | None, objectives: Sequence[str] | str | None,
                  constraints: "Constraints | Mapping[str, Any] | None", max_latency_ms: float | None,
                  max_size_kb: float | None, max_accuracy_drop: float | None,
                  settings: "EvalSettings | Mapping[str, Any] | None", seed: int | None, sampler: Any,
                  early_stopping: "bool | FrontierEarlyStopping | None") -> StudyRequest:
    """Every argument of ``Study.create_or_load`` checked, before anything is written:
    bad names or values (in ``fixed`` too, against the task's space) raise
    :class:`StudyError` (or the task's and the space's own errors)."""
    from slimtune.tasks._registry import get_task

    check_name(name)
    storage = resolve_storage(storage)
    task_obj = get_task(task) if task is not None else None
    wanted_objectives = check_objectives(objectives) if objectives is not None else None
    wanted_constraints = constraints_from(constraints, max_latency_ms=max_latency_ms, max_size_kb=max_size_kb,
                                          max_accuracy_drop=max_accuracy_drop)
    if early_stopping is not None:
        try:
            resolve_early_stopping(early_stopping)
        except ValueError as exc:
            raise StudyError(str(exc)) from None
    if sampler is not None:
        from slimtune.search._backends import make_sampler

        make_sampler(sampler)  # bad names fail before anything is written
    if settings is not None:
        check_device(settings_from(settings, None))
    new_space = None
    if task_obj is not None:  # bad names or values in `fixed` fail before anything is written
        if space is not None:
            from slimtune.spaces._space import Space

            new_space = Space(space.knobs, task_obj.build_model(), {**space.fixed, **dict(fixed)}) if fixed else space
        else:
            from slimtune.search._task_space import build_space

            from slimtune.search._targets import settings_targets

            # the families that run on every target the study times
            new_space = build_space(task_obj, fixed=fixed, targets=settings_targets(settings_from(settings, None)))
    return StudyRequest(name=name, storage=storage, task=task_obj, space=space, fixed=fixed, new_space=new_space,
                        objectives=wanted_objectives, constraints=wanted_constraints, settings=settings,
                        sampler=sampler, seed=seed, early_stopping=early_stopping)
