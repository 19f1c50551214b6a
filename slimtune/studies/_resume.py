"""Resuming a stored study: what a session gives (task, objectives, constraints,
evaluation settings) against what the study was created with, and its task and space
rebuilt from their specs against the stored fingerprints.  A fingerprint that an older
slimtune stored for the same task or space is recognised once and replaced.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

from slimtune.search._settings import SESSION_SETTINGS
from slimtune.studies._arguments import differences, settings_from
from slimtune.studies._errors import StudyError
from slimtune.studies._schema import StudyRecord
from slimtune.studies._storage import StudyStorage

if TYPE_CHECKING:  # pragma: no cover
    from slimtune.search._constraints import Constraints
    from slimtune.search._pipeline import EvalSettings
    from slimtune.spaces._space import Space
    from slimtune.studies._database import Database
    from slimtune.tasks._task import Task


def check_resume(record: StudyRecord, db: "Database", *, task: "Task | None", objectives: Any,
                 constraints: "Constraints | None", settings: "EvalSettings | Mapping[str, Any] | None") -> None:
    """Raise :class:`StudyError` unless what is given (``None``: not given) is what study
    ``record`` was created with."""
    name = record.study_name
    if task is not None:
        if task.name != record.task_name or not same_task(db, record, task):
            raise StudyError(
                f"Study {name!r} searches task {record.task_name!r} (fingerprint {record.task_fingerprint}), "
                f"but the given task is {task.name!r} (fingerprint {task.fingerprint()}): use another study name."
            )
    if objectives is not None and list(objectives) != list(record.objectives):
        raise StudyError(f"Study {name!r} has objectives {', '.join(record.objectives)}, "
                         f"but {', '.join(objectives)} were given.")
    if constraints is not None and constraints.to_dict() != dict(record.constraints):
        raise StudyError(f"Study {name!r} has constraints {dict(record.constraints) or 'none'}, "
                         f"but {constraints.to_dict()} were given.")
    if settings is not None:  # where this session trains (device, amp) is its own choice
        the_settings = settings_from(settings, record.settings)
        stored = {k: v for k, v in record.settings.items() if k not in SESSION_SETTINGS}
        diff = differences(stored, the_settings.identity())
        if diff:
            raise StudyError(f"Study {name!r} was created with other evaluation settings: {'; '.join(diff)}.")


def same_task(db: "Database", record: StudyRecord, task: "Task") -> bool:
    """Whether ``task`` is the study's task: same fingerprint, or the fingerprint that
    slimtune 0.1.0 stored for it (schema 1), which is then replaced by today's."""
    if task.fingerprint() == record.task_fingerprint:
        return True
    if task.legacy_fingerprint() != record.task_fingerprint:
        return False
    StudyStorage(db).set_task_fingerprint(record.id, task.fingerprint())
    record.task_fingerprint = task.fingerprint()
    return True


def rebuild_task(db: "Database", record: StudyRecord) -> "Task":
    """The study's task, rebuilt from its spec and checked against its fingerprint.  The
    spec comes from the database: a user task is imported only when the user trusts
    stored tasks (:func:`~slimtune.tasks._registry.get_task` with ``trusted=False``)."""
    from slimtune.tasks._registry import UntrustedTaskError, get_task
    from slimtune.tasks._task import TaskError

    name = record.study_name
    try:
        task = get_task(record.task_spec, trusted=False)
    except UntrustedTaskError as exc:
        raise StudyError(f"Study {name!r}: {exc}", cli_text=f"Study {name!r}: {exc.cli_text}") from None
    except TaskError as exc:
        raise StudyError(f"Study {name!r}: cannot rebuild its task {record.task_spec!r} ({exc}); "
                         "pass task= to Study.create_or_load or Study.load.",
                         cli_text=f"Study {name!r}: cannot rebuild its task {record.task_spec!r} ({exc}); "
                                  "give the task with --task.") from None
    if not same_task(db, record, task):
        raise StudyError(f"Study {name!r}: task {record.task_spec!r} has changed since the study was "
                         f"created (fingerprint {task.fingerprint()} vs {record.task_fingerprint}).")
    return task


def check_space(storage: StudyStorage, record: StudyRecord, task: "Task", space: "Space | None",
                fixed: Mapping[str, Any] | None) -> "Space":
    """The study's space: ``space`` (with ``fixed`` added), or rebuilt from the task's
    model and the stored families and fixed values; it must have the stored fingerprint."""
    from slimtune.search._task_space import build_space
    from slimtune.spaces._space import Space

    if space is None:
        the_fixed = dict(record.fixed) if fixed is None else dict(fixed)
        space = build_space(task, fixed=the_fixed, families=list(record.space.get("families") or []) or None)
    elif fixed:
        space = Space(space.knobs, task.build_model(), {**space.fixed, **dict(fixed)})
    if space.fingerprint() != record.space_fingerprint:
        from slimtune.spaces._space import space_fingerprint

        if space_fingerprint(record.space.get("params", [])) == space.fingerprint():
            _restamp_space(storage, record, space)  # same parameters, stored by an older slimtune
            return space
        stored = {p["name"]: p for p in record.space.get("params", [])}
        now = {p["name"]: p for p in space.to_dict()["params"]}
        changed = sorted(n for n in set(stored) | set(now) if stored.get(n) != now.get(n))
        raise StudyError(f"Study {record.study_name!r} searches another space (its fingerprint "
                         f"{record.space_fingerprint}, this one {space.fingerprint()}); differing parameters: "
                         f"{', '.join(changed[:8])}.")
    return space


def _restamp_space(storage: StudyStorage, record: StudyRecord, space: "Space") -> None:
    """Store ``space`` (the same parameters, reworded or fingerprinted by an older
    slimtune) and its fingerprint as the study's."""
    stored = {"families": [k.family for k in space.knobs], **space.to_dict()}
    storage.set_space(record.id, stored, space.fingerprint())
    record.space, record.space_fingerprint = stored, space.fingerprint()
