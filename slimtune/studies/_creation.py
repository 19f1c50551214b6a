"""Creating a study: the record written once, when the study is made, from its checked
arguments (:class:`~slimtune.studies._arguments.StudyRequest`): task, space, objectives,
constraints, evaluation settings, sampler, and the baseline measured like a candidate.
"""

from __future__ import annotations

from slimtune.search._constraints import Constraints
from slimtune.search._early_stopping import resolve_early_stopping
from slimtune.studies._arguments import StudyRequest, settings_from
from slimtune._dominance import DEFAULT_OBJECTIVES
from slimtune.studies._schema import StudyRecord


def new_record(request: StudyRequest, *, progress: bool = False, use_cache: bool = True) -> StudyRecord:
    """The record of the new study ``request`` asks for, its baseline measured (trained
    once, or read from the cache; ``progress`` prints while it trains)."""
    from slimtune._version import __version__
    from slimtune.search._backends.optuna_backend import DEFAULT_SAMPLER, sampler_name
    from slimtune.search._optimize import measure_baseline

    task, space = request.task, request.new_space
    assert task is not None and space is not None, "a new study needs a task"
    settings = settings_from(request.settings, None)
    rule = resolve_early_stopping(request.early_stopping)
    if progress:  # what the target rules out (e.g. early exits at a batch size above 1) is said once, here
        where = (f"targets {', '.join(settings.targets)}" if settings.targets
                 else f"runtime {settings.runtime}, batch {settings.batch_size}")
        for family, reason in space.omitted.items():
            print(f"No {family} in this study's space ({where}): {reason}", flush=True)
    baseline_data = measure_baseline(task, space, settings, progress=progress, use_cache=use_cache)
    return StudyRecord(
        study_name=request.name, task_name=task.name, task_spec=str(task.extra.get("spec") or task.name),
        task_fingerprint=task.fingerprint(), task_notes=task.notes,
        space={"families": [k.family for k in space.knobs], **space.to_dict()},
        space_fingerprint=space.fingerprint(), fixed=dict(space.fixed),
        objectives=list(request.objectives or DEFAULT_OBJECTIVES),
        constraints=(request.constraints or Constraints()).to_dict(), settings=settings.identity(),
        early_stopping=rule.to_dict() if rule else None, sampler=sampler_name(request.sampler or DEFAULT_SAMPLER),
        seed=request.seed, baseline=baseline_data, slimtune_version=__version__,
    )
