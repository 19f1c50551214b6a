"""A search session over a study: backend, baseline, evaluator and trial runner.

``Study.optimize`` hands itself to :func:`run_search` as a :class:`SearchedStudy`: the
runner's :class:`~slimtune.search._outcome.Recorder` (where outcomes go) plus what the
session is built from (task, space, settings, objectives, sampler...).  So the study
database only stores and reads; this module decides how trials are run.

Example:
    >>> rows = run_search(study, n_trials=10, backend="optuna")
"""

from __future__ import annotations

import threading
import warnings
from typing import TYPE_CHECKING, Any, Callable, Mapping, Protocol, Sequence

from slimtune._dominance import optuna_latency_unit
from slimtune.search._early_stopping import FrontierEarlyStopping
from slimtune.search._constraints import Constraints
from slimtune.search._outcome import Recorder

if TYPE_CHECKING:  # pragma: no cover
    import optuna

    from slimtune.search._measurement import Measurement
    from slimtune.search._pipeline import EvalSettings
    from slimtune.spaces._space import Space
    from slimtune.tasks._task import Task


class SearchedStudy(Recorder, Protocol):
    """What a search session needs of a study (``slimtune.Study`` implements it)."""

    name: str
    task: "Task"
    space: "Space"
    settings: "EvalSettings"
    objectives: tuple[str, ...]
    constraints: Constraints
    early_stopping: FrontierEarlyStopping | None
    sampler: Any
    seed: int | None
    baseline: "Measurement"
    #: ``False`` once: the next session retrains the baseline (then it is set to ``True``).
    use_cache: bool

    def open_for_search(self) -> "optuna.Study":
        """Make the study ready for trials (SQLite in WAL mode, the Optuna study
        loaded) and return its Optuna study."""


def session_seed(seed: int | None, n_existing: int) -> int | None:
    """The sampler seed for a session that starts after ``n_existing`` trials: the seed
    itself for a new study; mixed with the count on resume, so a resumed search does
    not replay the proposals of its first session, yet stays reproducible."""
    if seed is None or n_existing == 0:
        return seed
    import numpy as np

    return int(np.random.SeedSequence([int(seed), int(n_existing)]).generate_state(1)[0] % (2**31 - 1))


def _backend_options(study: SearchedStudy, backend: str, options: Mapping[str, Any],
                     warm_start: bool = True) -> dict[str, Any]:
    """The backend's options: the study's sampler for Optuna unless one is given (a
    sampler instance cannot be rebuilt by name: the default then, with a warning), and
    no neighbourhood warm start when ``warm_start`` is off."""
    out = dict(options)
    if backend == "optuna":
        if not warm_start:
            out["warm_start"] = False
        from slimtune.search._backends.optuna_backend import DEFAULT_SAMPLER, SAMPLERS

        sampler = study.sampler
        if isinstance(sampler, str) and sampler not in SAMPLERS:  # a custom sampler instance made the study
            warnings.warn(f"Study {study.name!r} was created with the sampler {sampler}, which cannot be rebuilt "
                          f"by name; using {DEFAULT_SAMPLER!r} (pass sampler= to choose).", UserWarning, stacklevel=4)
            sampler = DEFAULT_SAMPLER
        out.setdefault("sampler", sampler)
    return out


class SearchSession:
    """A search session that stays open between calls: the backend, the baseline on its
    training device, the evaluator and the trial runner, built once (a Ray worker runs
    its trials one call at a time on one session).  Close it when done."""

    def __init__(self, study: SearchedStudy, *, backend: str = "optuna", progress: bool = True,
                 warm_start: bool = True, worker: str | None = None, fidelity: str = "multi",
                 **backend_options: Any) -> None:
        from slimtune.search._backends import get_backend
        from slimtune.search._baseline import get_baseline
        from slimtune.search._device import TrainingDevice
        from slimtune.search._pipeline import Evaluator
        from slimtune.search._runner import TrialRunner

        backend_cls = get_backend(backend)
        task, space, settings = study.task, study.space, study.settings
        place = TrainingDevice.resolve(settings.device, settings.amp)  # an absent device fails before any work
        optuna_study = study.open_for_search()
        options = _backend_options(study, backend, backend_options, warm_start)
        self.backend = backend_cls(space, seed=session_seed(study.seed, len(optuna_study.get_trials(deepcopy=False))),
                                   **options)
        try:
            sampler = self.backend.optuna_sampler()
            if sampler is not None:
                optuna_study.sampler = sampler
            baseline = get_baseline(task, seed=settings.seed, progress=progress, use_cache=study.use_cache, place=place)
            study.use_cache = True  # retrained once (--no-cache); later calls read the fresh cache
            evaluator = Evaluator(task, space, settings, baseline, place=place)
            epochs = task.finetune_epochs if settings.epochs is None else settings.epochs
            recovery = (getattr(task, "recovery_epochs", 0) if settings.finetune_epochs is None
                        else settings.finetune_epochs)
            self.runner = TrialRunner(study=optuna_study, backend=self.backend, evaluator=evaluator,
                                      objectives=study.objectives, recorder=study, constraints=study.constraints,
                                      baseline_accuracy=float(study.baseline.accuracy),
                                      early_stopping=study.early_stopping, epochs=epochs,
                                      recovery_epochs=int(recovery or 0), fixed=space.fixed, warm_start=warm_start, fidelity=fidelity,
                                      latency_unit=optuna_latency_unit(optuna_study.metric_names), worker=worker)
        except BaseException:
            self.backend.close()
            raise

    def run(self, n_trials: int | None = None, **options: Any) -> list[dict]:
        """:meth:`TrialRunner.run <slimtune.search._runner.TrialRunner.run>` on this session."""
        return self.runner.run(n_trials=n_trials, **options)

    def close(self) -> None:
        self.backend.close()


def run_search(study: SearchedStudy, n_trials: int | None = None, *, timeout: float | None = None,
               backend: str = "optuna", callbacks: Sequence[Callable[[dict], Any]] = (),
               stop_event: threading.Event | None = None, progress: bool = True,
               catch: tuple[type[BaseException], ...] = (Exception,), warm_start: bool = True,
               fidelity: str = "multi", **backend_options: Any) -> list[dict]:
    """Run trials of ``study`` (see ``Study.optimize`` for the arguments) on the
    study's training device; returns the rows of the trials run by this call."""
    session = SearchSession(study, backend=backend, progress=progress, warm_start=warm_start, fidelity=fidelity,
                            **backend_options)
    try:
        return session.run(n_trials, timeout=timeout, stop_event=stop_event, callbacks=callbacks,
                           progress=progress, catch=catch)
    finally:
        session.close()


def measure_baseline(task: "Task", space: "Space", settings: "EvalSettings", *, progress: bool = False,
                     use_cache: bool = True) -> dict[str, Any]:
    """The baseline of a new study, measured like a candidate (trained once, or read
    from the cache), as the study stores it."""
    from slimtune.search._baseline import get_baseline
    from slimtune.search._pipeline import Evaluator

    from slimtune.search._device import TrainingDevice

    place = TrainingDevice.resolve(settings.device, settings.amp)
    baseline = get_baseline(task, seed=settings.seed, progress=progress, use_cache=use_cache, place=place)
    evaluator = Evaluator(task, space, settings, baseline, place=place)
    measurement = evaluator.baseline_measurement()
    data = {"measurement": measurement.to_dict(), "val_accuracy": baseline.val_accuracy,
            "torch_test_accuracy": baseline.test_accuracy, "metric": task.metric.name,
            "trained_by_slimtune": baseline.trained}
    if len(evaluator.targets) > 1:  # the baseline on each other target (the first is `measurement`)
        data["targets"] = {t.key: evaluator.baseline_measurement(t).to_dict() for t in evaluator.targets[1:]}
    return data
