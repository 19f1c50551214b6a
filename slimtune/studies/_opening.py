"""Opening a study in its database: the stored one resumed, a new one created (or, when
another worker created it meanwhile, that one joined), or an existing one loaded without
creating anything.

:meth:`Study.create_or_load <slimtune.studies._study.Study.create_or_load>` and
:meth:`Study.load <slimtune.studies._study.Study.load>` hand over here.  The steps are
modules of their own: the arguments checked (:mod:`~slimtune.studies._arguments`), the
new record (:mod:`~slimtune.studies._creation`), the checks on resume
(:mod:`~slimtune.studies._resume`) and the Optuna study beside it
(:mod:`~slimtune.studies._optuna`).  ``study_class`` is the class to build (``Study``).

Example:
    >>> request = check_request("digits-demo", storage=None, task="digits", ...)
    >>> study = open_study(Study, request, progress=False, use_cache=True)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy.exc import IntegrityError

from slimtune._names import quoted
from slimtune.studies._arguments import (
    SAFE_NAME,
    StudyRequest,
    check_name,
    check_new_name,
    session_settings,
    settings_from,
)
from slimtune.studies._creation import new_record
from slimtune.studies._database import Database, mask_url, resolve_storage
from slimtune.studies._errors import SchemaVersionError, StudyError
from slimtune.studies._optuna import optuna_storage
from slimtune.studies._resume import check_resume, check_space
from slimtune.studies._schema import StudyRecord
from slimtune.studies._storage import StudyStorage

if TYPE_CHECKING:  # pragma: no cover
    from slimtune.studies._study import Study
    from slimtune.tasks._task import Task

__all__ = ["load_study", "open_study"]


def open_study(study_class: type["Study"], request: StudyRequest, *, progress: bool, use_cache: bool) -> "Study":
    """Study ``request.name`` resumed if it exists (checked against ``request``), else
    created from ``request`` (which then needs a task).  See ``Study.create_or_load``."""
    storage, name = request.storage, request.name
    if request.task is not None and SAFE_NAME.fullmatch(name) is None and not _study_exists(storage, name):
        check_new_name(name)  # refused before anything is written
    # without a task the study can only be resumed: open without creating anything
    db = Database.open(storage, create=request.task is not None)
    try:
        record = _find(db, name)
        if record is not None:
            return _join(study_class, record, db, request, use_cache=use_cache)
        if request.task is None:
            raise StudyError(f"There is no study {quoted(name)} in {mask_url(storage)!r}; give a task to create it.")
        return _create(study_class, db, request, progress=progress, use_cache=use_cache)
    except BaseException:
        db.dispose()
        raise


def load_study(study_class: type["Study"], name: str, *, storage: str | None,
               task: "str | Task | None") -> "Study":
    """Existing study ``name`` (nothing is created; :class:`StudyError` if it is not
    there), checked against ``task`` when one is given.  See ``Study.load``."""
    check_name(name)
    storage = resolve_storage(storage)
    given = None
    if task is not None:
        from slimtune.tasks._registry import get_task

        given = get_task(task)
    db = Database.open(storage, create=False)
    record = _find(db, name)
    if record is None:
        names = [r.study_name for r, _ in StudyStorage(db).summaries()]
        db.dispose()
        from slimtune._names import close_matches

        hint = close_matches(name, names) if names else " The database holds no slimtune study."
        raise StudyError(f"No study {quoted(name)} in {mask_url(storage)!r}." + hint)
    if given is not None:
        try:
            check_resume(record, db, task=given, objectives=None, constraints=None, settings=None)
        except BaseException:
            db.dispose()
            raise
    return study_class(record, db, task=given)


def _study_exists(storage: str, name: str) -> bool:
    """Whether ``storage`` holds slimtune study ``name`` (opening nothing new)."""
    try:
        db = Database.open(storage, create=False)
    except SchemaVersionError:
        raise
    except StudyError:
        return False
    try:
        return StudyStorage(db).study_exists(name)
    finally:
        db.dispose()


def _find(db: Database, name: str) -> StudyRecord | None:
    return StudyStorage(db).find_study(name)


def _create(study_class: type["Study"], db: Database, request: StudyRequest, *, progress: bool,
            use_cache: bool) -> "Study":
    """A new study; or the one another worker created meanwhile, joined."""
    import optuna

    rdb = optuna_storage(request.storage)
    if request.name in optuna.get_all_study_names(rdb):
        record = _find(db, request.name)  # another worker may have created both since the lookup
        if record is None:
            raise StudyError(f"{mask_url(request.storage)!r} already holds an Optuna study {request.name!r} that "
                             "slimtune did not create; choose another name.")
        return _join(study_class, record, db, request, use_cache=use_cache)
    record = new_record(request, progress=progress, use_cache=use_cache)
    try:
        StudyStorage(db).add_study(record)
    except IntegrityError:  # another worker created it meanwhile: join it
        study = _resume(study_class, _find(db, request.name), db, task=request.task, space=request.new_space,
                        fixed=None, objectives=request.objectives, constraints=request.constraints,
                        settings=settings_from(request.settings, None), sampler=request.sampler,
                        seed=request.seed, early_stopping=request.early_stopping)
        study._session = session_settings(request.settings)
        return study
    study = study_class(record, db, task=request.task, space=request.new_space, sampler=request.sampler,
                        seed=request.seed, early_stopping=request.early_stopping,
                        session=session_settings(request.settings))
    study._ensure_optuna_study(rdb)
    return study


def _join(study_class: type["Study"], record: StudyRecord, db: Database, request: StudyRequest, *,
          use_cache: bool) -> "Study":
    """Study ``record`` resumed with what ``request`` gives (checked against it)."""
    study = _resume(study_class, record, db, task=request.task, space=request.space, fixed=request.fixed,
                    objectives=request.objectives, constraints=request.constraints, settings=request.settings,
                    sampler=request.sampler, seed=request.seed, early_stopping=request.early_stopping)
    study.use_cache = use_cache
    study._session = session_settings(request.settings)
    return study


def _resume(study_class: type["Study"], record: StudyRecord, db: Database, *, task, space, fixed, objectives,
            constraints, settings, sampler, seed, early_stopping) -> "Study":
    """Study ``record`` built after checking what is given against it (its space too,
    when a space or fixed values are given), its Optuna study opened."""
    check_resume(record, db, task=task, objectives=objectives, constraints=constraints, settings=settings)
    study = study_class(record, db, task=task, sampler=sampler, seed=seed, early_stopping=early_stopping)
    if space is not None or fixed:
        study._space = check_space(study._storage, record, study.task, space, fixed)
    study._ensure_optuna_study(optuna_storage(db.url))
    return study
