"""A slimtune study: an Optuna study plus slimtune's record of every candidate.

Example:
    >>> study = Study.create_or_load("digits-demo", task="digits", settings={"epochs": 1})
    >>> study.optimize(n_trials=20)
    >>> for row in study.frontier():
    ...     print(row["trial"], row["accuracy"], row["latency_ms"])
    >>> best = study.select(max_latency_ms=0.03)
    >>> best.export("model.onnx")
"""

from __future__ import annotations

import io
import logging
import math
import os
import re
import threading
import warnings
from datetime import datetime
from dataclasses import fields
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from sqlalchemy.exc import IntegrityError

from slimtune.search._early_stopping import FrontierEarlyStopping, FrontierPoint, resolve_early_stopping
from slimtune.search._measurement import Measurement
from slimtune.search._runner import Constraints, TrialOutcome
from slimtune.studies._database import Database, mask_url, resolve_storage
from slimtune.studies._errors import NoCandidateError, SchemaVersionError, StudyError
from slimtune.studies._frontier import (
    DEFAULT_OBJECTIVES,
    SPLITS,
    Limits,
    baseline_on_front,
    beaten_by_baseline,
    check_objectives,
    directions,
    non_dominated_mask,
    select_rows,
)
from slimtune.studies._schema import CandidateRecord, StudyRecord, utcnow
from slimtune.studies._rows import MEASUREMENT_KEYS, make_row, mark_pareto, merged_state
from slimtune.studies._storage import StudyStorage

if TYPE_CHECKING:  # pragma: no cover
    import optuna

    from slimtune.search._pipeline import EvalSettings
    from slimtune.spaces._space import Space
    from slimtune.studies._candidate import Candidate
    from slimtune.tasks._task import Task

logger = logging.getLogger(__name__)

#: Optuna heartbeats: a RUNNING trial whose worker has not beaten for ``GRACE`` seconds
#: is failed by the next worker that starts a trial.  The environment variables
#: ``SLIMTUNE_HEARTBEAT_INTERVAL`` / ``SLIMTUNE_HEARTBEAT_GRACE`` (whole seconds)
#: override them, e.g. so that a test sees a killed worker's trial failed in seconds.
HEARTBEAT_INTERVAL = 60
HEARTBEAT_GRACE = 180


#: Names of new studies: safe in a shell, a file name, a URL or HTML without quoting.
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def heartbeat_settings() -> tuple[int, int]:
    """``(interval, grace)`` in seconds: the constants above or their environment
    overrides."""
    chosen = []
    for env, default in (("SLIMTUNE_HEARTBEAT_INTERVAL", HEARTBEAT_INTERVAL), ("SLIMTUNE_HEARTBEAT_GRACE", HEARTBEAT_GRACE)):
        raw = os.environ.get(env, "").strip()
        if not raw:
            chosen.append(default)
            continue
        value = int(raw) if raw.isdigit() else 0
        if value < 1:
            raise StudyError(f"`{env}` must be a whole number of seconds >= 1, but got {raw!r}.")
        chosen.append(value)
    interval, grace = chosen
    if grace <= interval:
        raise StudyError(f"The heartbeat grace period ({grace} s) must be longer than its interval ({interval} s).")
    return interval, grace


def _check_name(name: str) -> str:
    """A name to look up (studies made before names were restricted still open)."""
    if not isinstance(name, str) or not name.strip() or len(name) > 512:
        raise StudyError(f"A study name is a non-empty string of at most 512 characters, but got {name!r}.")
    return name


def _check_new_name(name: str) -> str:
    """A name for a new study: letters, digits, '.', '_' and '-' (at most 128,
    starting with a letter or digit)."""
    if not isinstance(name, str) or SAFE_NAME.fullmatch(name) is None:
        raise StudyError(f"A new study name uses letters, digits, '.', '_' and '-' (at most 128, starting with a "
                         f"letter or digit), but got {name!r}.")
    return name


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


def _check_budget(n_trials: int | None, timeout: float | None) -> None:
    """``n_trials`` a positive int, ``timeout`` a finite positive number of seconds."""
    if n_trials is not None and (isinstance(n_trials, bool) or not isinstance(n_trials, int) or n_trials < 1):
        raise StudyError(f"`n_trials` must be a positive integer, but got {n_trials!r}.")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
                                or not math.isfinite(timeout) or timeout <= 0):
        raise StudyError(f"`timeout` must be a finite number of seconds above 0, but got {timeout!r}.")


def _settings_from(settings: "EvalSettings | Mapping[str, Any] | None", base: Mapping[str, Any] | None) -> "EvalSettings":
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


def _constraints_from(constraints: "Constraints | Mapping[str, Any] | None", **limits: float | None) -> Constraints | None:
    given = {k: v for k, v in limits.items() if v is not None}
    if constraints is None and not given:
        return None
    try:
        base = constraints if isinstance(constraints, Constraints) else Constraints.from_dict(constraints)
        return Constraints(**{**base.to_dict(), **given})
    except (TypeError, ValueError) as exc:
        raise StudyError(str(exc)) from None


def _differences(stored: Mapping[str, Any], given: Mapping[str, Any]) -> list[str]:
    keys = sorted(set(stored) | set(given))
    return [f"{k}: {stored.get(k)!r} (study) vs {given.get(k)!r} (given)" for k in keys if stored.get(k) != given.get(k)]


class Study:
    """A study in a database: create or resume it, run trials, read its frontier.

    Use :meth:`create_or_load` (or :meth:`load` for an existing one) rather than the
    constructor.
    """

    def __init__(self, record: StudyRecord, db: Database, *, task: "Task | None" = None, space: "Space | None" = None,
                 sampler: Any = None, seed: int | None = None,
                 early_stopping: "FrontierEarlyStopping | None | bool" = None) -> None:
        self._record = record
        self._db = db
        self._storage = StudyStorage(db)
        self._optuna_study_id: int | None = None
        self.use_cache = True
        self._task = task
        self._space = space
        self._optuna_storage = None
        self._optuna_study = None
        self.sampler = sampler if sampler is not None else record.sampler
        self.seed = seed if seed is not None else record.seed
        self.early_stopping = (FrontierEarlyStopping.from_dict(record.early_stopping) if early_stopping is None
                               else resolve_early_stopping(early_stopping))

    # -- opening -----------------------------------------------------------------
    @classmethod
    def create_or_load(
        cls,
        name: str,
        *,
        storage: str | None = None,
        task: "str | Task | None" = None,
        space: "Space | None" = None,
        fixed: Mapping[str, Any] | None = None,
        objectives: Sequence[str] | str | None = None,
        constraints: "Constraints | Mapping[str, Any] | None" = None,
        max_latency_ms: float | None = None,
        max_size_kb: float | None = None,
        max_accuracy_drop: float | None = None,
        settings: "EvalSettings | Mapping[str, Any] | None" = None,
        seed: int | None = None,
        sampler: Any = None,
        early_stopping: "bool | FrontierEarlyStopping | None" = None,
        progress: bool = False,
        use_cache: bool = True,
    ) -> "Study":
        """Create the study, or resume it if it exists (trial numbers continue).

        Args:
            name: the study name (also the Optuna study name).
            storage: a SQLAlchemy URL (default ``$SLIMTUNE_STORAGE``, else
                ``sqlite:///slimtune.db`` in the cwd).
            task: a built-in task name, ``package.module:callable`` or a
                :class:`~slimtune.Task`; needed to create, checked on resume.
            space: the joint space (default: every registered knob for the task's model).
            fixed: parameters held at a value (not searched; recorded with each trial).
            objectives: ``accuracy`` plus one or more of ``latency_ms``, ``size_bytes``,
                ``macs`` (default ``("accuracy", "latency_ms")``).
            constraints, max_latency_ms, max_size_kb, max_accuracy_drop: hard limits
                given to the samplers through ``Trial.set_constraint``.
            settings: :class:`~slimtune.search._pipeline.EvalSettings` or a dict of
                overrides (epochs, runtime, threads, batch_size, latency_repeats, ...).
            seed: sampler seed (reproducible proposals; a resumed session mixes in the
                number of earlier trials so it does not replay them).  Training uses
                ``settings.seed``.  Several workers joining one study at the same time
                should each use another seed (or none).  Latency is measured, so once a
                model-based sampler reads it, proposals depend on the machine's timings.
            sampler: ``gp`` (default), ``tpe``, ``nsga2``, ``random`` or an Optuna sampler.
            early_stopping: the frontier rule (default on), ``False`` to turn it off.
            progress: print progress while training the baseline.
            use_cache: ``False`` retrains the baseline instead of reading the cache
                (once, in this session; the cache is refreshed).

        On resume, arguments left at ``None`` take the stored values; a task, space,
        objectives, constraints or settings that differ from the stored ones raise
        :class:`StudyError` (nothing is written).  ``sampler``, ``seed`` and
        ``early_stopping`` apply to this session only.
        """
        from slimtune._api import build_space
        from slimtune.tasks._task import get_task

        _check_name(name)
        storage = resolve_storage(storage)
        task_obj = get_task(task) if task is not None else None
        wanted_objectives = check_objectives(objectives) if objectives is not None else None
        wanted_constraints = _constraints_from(constraints, max_latency_ms=max_latency_ms, max_size_kb=max_size_kb,
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
            _settings_from(settings, None)
        new_space = None
        if task_obj is not None:  # bad names or values in `fixed` fail before anything is written
            if space is not None:
                from slimtune.spaces._space import Space

                new_space = Space(space.knobs, task_obj.build_model(), {**space.fixed, **dict(fixed)}) if fixed else space
            else:
                new_space = build_space(task_obj, fixed=fixed)

        if task_obj is not None and SAFE_NAME.fullmatch(name) is None and not _study_exists(storage, name):
            _check_new_name(name)  # refused before anything is written
        # without a task the study can only be resumed: open without creating anything
        db = Database.open(storage, create=task_obj is not None)
        try:
            record = cls._find(db, name)
            if record is not None:
                study = cls._resume(record, db, task=task_obj, space=space, fixed=fixed, objectives=wanted_objectives,
                                    constraints=wanted_constraints, settings=settings, sampler=sampler, seed=seed,
                                    early_stopping=early_stopping)
                study.use_cache = use_cache
                return study
            if task_obj is None:
                raise StudyError(f"There is no study {name!r} in {mask_url(storage)!r}; give a task to create it.")
            the_settings = _settings_from(settings, None)
            the_space = new_space
            the_objectives = wanted_objectives or DEFAULT_OBJECTIVES
            rule = resolve_early_stopping(early_stopping)
            optuna_storage = _optuna_storage(storage)
            import optuna

            if name in optuna.get_all_study_names(optuna_storage):
                raise StudyError(f"{mask_url(storage)!r} already holds an Optuna study {name!r} that slimtune did not "
                                 "create; choose another name.")
            from slimtune.search._optimize import measure_baseline

            baseline_data = measure_baseline(task_obj, the_space, the_settings, progress=progress, use_cache=use_cache)
            from slimtune._version import __version__
            from slimtune.search._backends.optuna_backend import DEFAULT_SAMPLER, sampler_name

            record = StudyRecord(
                study_name=name, task_name=task_obj.name, task_spec=str(task_obj.extra.get("spec") or task_obj.name),
                task_fingerprint=task_obj.fingerprint(), task_notes=task_obj.notes,
                space={"families": [k.family for k in the_space.knobs], **the_space.to_dict()},
                space_fingerprint=the_space.fingerprint(), fixed=dict(the_space.fixed), objectives=list(the_objectives),
                constraints=(wanted_constraints or Constraints()).to_dict(), settings=the_settings.to_dict(),
                early_stopping=rule.to_dict() if rule else None, sampler=sampler_name(sampler or DEFAULT_SAMPLER),
                seed=seed, baseline=baseline_data, slimtune_version=__version__,
            )
            try:
                StudyStorage(db).add_study(record)
            except IntegrityError:  # another worker created it meanwhile: join it
                record = cls._find(db, name)
                return cls._resume(record, db, task=task_obj, space=the_space, fixed=None, objectives=wanted_objectives,
                                   constraints=wanted_constraints, settings=the_settings, sampler=sampler, seed=seed,
                                   early_stopping=early_stopping)
            study = cls(record, db, task=task_obj, space=the_space, sampler=sampler, seed=seed,
                        early_stopping=early_stopping)
            study._ensure_optuna_study(optuna_storage)
            return study
        except BaseException:
            db.dispose()
            raise

    @classmethod
    def load(cls, name: str, *, storage: str | None = None) -> "Study":
        """An existing study (nothing is created; :class:`StudyError` if it is not there).
        ``storage`` defaults to ``$SLIMTUNE_STORAGE``, else ``sqlite:///slimtune.db``."""
        _check_name(name)
        storage = resolve_storage(storage)
        db = Database.open(storage, create=False)
        record = cls._find(db, name)
        if record is None:
            names = [r.study_name for r, _ in StudyStorage(db).summaries()]
            db.dispose()
            from slimtune.spaces.base import close_matches

            hint = close_matches(name, names) if names else " The database holds no slimtune study."
            raise StudyError(f"No study {name!r} in {mask_url(storage)!r}." + hint)
        return cls(record, db)

    @staticmethod
    def _find(db: Database, name: str) -> StudyRecord | None:
        return StudyStorage(db).find_study(name)

    @classmethod
    def _resume(cls, record: StudyRecord, db: Database, *, task, space, fixed, objectives, constraints, settings,
                sampler, seed, early_stopping) -> "Study":
        name = record.study_name
        if task is not None:
            if task.name != record.task_name or not _same_task(db, record, task):
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
        if settings is not None:
            the_settings = _settings_from(settings, record.settings)
            diff = _differences(record.settings, the_settings.to_dict())
            if diff:
                raise StudyError(f"Study {name!r} was created with other evaluation settings: {'; '.join(diff)}.")
        study = cls(record, db, task=task, sampler=sampler, seed=seed, early_stopping=early_stopping)
        if space is not None or fixed:
            study._space = study._check_space(space, fixed)
        study._ensure_optuna_study(_optuna_storage(db.url))
        return study

    def _ensure_optuna_study(self, storage) -> "optuna.Study":
        import optuna

        wanted = list(directions(self.objectives))
        names = optuna.get_all_study_names(storage)
        if self.name not in names:
            if self._storage.has_candidates(self._record.id):
                raise StudyError(f"The Optuna study {self.name!r} was deleted from {self.storage!r}, but slimtune's "
                                 "records of its trials remain; use another study name.")
        created = False
        if self.name in names:
            study = optuna.load_study(study_name=self.name, storage=storage)
        else:
            try:
                study = optuna.create_study(study_name=self.name, storage=storage, directions=wanted)
                created = True
            except optuna.exceptions.DuplicatedStudyError:  # another worker was quicker
                study = optuna.load_study(study_name=self.name, storage=storage)
        if [d.name.lower() for d in study.directions] != wanted:
            raise StudyError(f"The Optuna study {self.name!r} has directions {[d.name.lower() for d in study.directions]}, "
                             f"not those of its objectives {list(self.objectives)}.")
        if created:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                study.set_metric_names(list(self.objectives))
            study.set_user_attr("slimtune", {"task": self._record.task_name, "objectives": list(self.objectives),
                                             "version": self._record.slimtune_version})
        self._optuna_storage = storage
        self._optuna_study = study
        return study

    # -- what the study is ---------------------------------------------------------
    @property
    def name(self) -> str:
        return self._record.study_name

    @property
    def storage(self) -> str:
        """The storage URL with its password masked."""
        return mask_url(self._db.url)

    @property
    def objectives(self) -> tuple[str, ...]:
        return tuple(self._record.objectives)

    @property
    def directions(self) -> tuple[str, ...]:
        return directions(self.objectives)

    @property
    def constraints(self) -> Constraints:
        return Constraints.from_dict(self._record.constraints)

    @property
    def settings(self) -> "EvalSettings":
        return _settings_from(None, self._record.settings)

    @property
    def task_name(self) -> str:
        return self._record.task_name

    @property
    def metric_name(self) -> str:
        """The name of the task's metric, what ``accuracy`` holds (``accuracy`` unless
        the task chose another)."""
        return str(self._record.baseline.get("metric") or "accuracy")

    @property
    def baseline(self) -> Measurement:
        """The baseline measured like a candidate when the study was created."""
        return Measurement.from_dict(self._record.baseline["measurement"])

    def baseline_row(self, rows: Sequence[Mapping[str, Any]] | None = None) -> dict[str, Any]:
        """The baseline in the same fields as a trial row (``trial`` is ``"baseline"``):
        validation accuracy of its timed artifact (the objective), test accuracy, its
        latency when the study was created, packed and artifact sizes, MACs.  On the
        frontier it stands beside each trial with the latency it had in that trial's
        own run (``reference_latency_ms``).  With ``rows`` (trial rows), ``pareto`` says
        whether no complete trial beats it (in that trial's own run)."""
        m = self._record.baseline["measurement"]
        row = {"trial": "baseline", "state": "COMPLETE", "params": {}, "pareto": None,
               "accuracy": m.get("accuracy"), "val_accuracy": m.get("accuracy"), "test_accuracy": m.get("test_accuracy"),
               "latency_ms": m.get("latency_ms"), "reference_latency_ms": m.get("latency_ms"), "speedup": 1.0,
               "size_bytes": m.get("size_bytes"), "artifact_bytes": m.get("artifact_bytes"), "macs": m.get("macs"),
               "latency_kind": m.get("latency_kind"), "kernel_bits": m.get("kernel_bits"), "runtime": m.get("runtime"),
               "fingerprint_id": m.get("fingerprint_id"), "flags": list(m.get("flags") or [])}
        if rows is not None:
            row["pareto"] = baseline_on_front(row, [r for r in rows if r.get("state") == "COMPLETE"], self.objectives)
        return row

    @property
    def space_dict(self) -> dict[str, Any]:
        return dict(self._record.space)

    @property
    def fixed(self) -> dict[str, Any]:
        return dict(self._record.fixed)

    def info(self) -> dict[str, Any]:
        """The study's metadata as a dict."""
        r = self._record
        return {"name": r.study_name, "storage": self.storage, "task": r.task_name, "task_spec": r.task_spec,
                "task_fingerprint": r.task_fingerprint, "task_notes": r.task_notes, "objectives": list(r.objectives),
                "constraints": dict(r.constraints), "settings": dict(r.settings), "early_stopping": r.early_stopping,
                "sampler": r.sampler, "seed": r.seed, "space_fingerprint": r.space_fingerprint, "fixed": dict(r.fixed),
                "baseline": {k: v for k, v in r.baseline["measurement"].items() if k != "latency_samples_ms"},
                "slimtune_version": r.slimtune_version, "created_at": r.created_at.isoformat(timespec="seconds")}

    @property
    def task(self) -> "Task":
        """The study's task, rebuilt from its spec (and checked against its fingerprint)."""
        if self._task is None:
            from slimtune.tasks._task import TaskError, get_task

            try:
                task = get_task(self._record.task_spec)
            except TaskError as exc:
                raise StudyError(f"Study {self.name!r}: cannot rebuild its task {self._record.task_spec!r} ({exc}); "
                                 "pass task= to Study.create_or_load.") from None
            if not _same_task(self._db, self._record, task):
                raise StudyError(f"Study {self.name!r}: task {self._record.task_spec!r} has changed since the study was "
                                 f"created (fingerprint {task.fingerprint()} vs {self._record.task_fingerprint}).")
            self._task = task
        return self._task

    @property
    def space(self) -> "Space":
        """The study's joint space, rebuilt from the task's model (and checked against
        the stored fingerprint)."""
        if self._space is None:
            self._space = self._check_space(None, None)
        return self._space

    def _check_space(self, space: "Space | None", fixed: Mapping[str, Any] | None) -> "Space":
        from slimtune._api import build_space
        from slimtune.spaces._space import Space

        task = self.task
        if space is None:
            the_fixed = dict(self._record.fixed) if fixed is None else dict(fixed)
            space = build_space(task, fixed=the_fixed, families=list(self._record.space.get("families") or []) or None)
        elif fixed:
            space = Space(space.knobs, task.build_model(), {**space.fixed, **dict(fixed)})
        if space.fingerprint() != self._record.space_fingerprint:
            from slimtune.spaces._space import space_fingerprint

            if space_fingerprint(self._record.space.get("params", [])) == space.fingerprint():
                self._restamp_space(space)  # same parameters, stored by an older slimtune
                return space
            stored = {p["name"]: p for p in self._record.space.get("params", [])}
            now = {p["name"]: p for p in space.to_dict()["params"]}
            changed = sorted(n for n in set(stored) | set(now) if stored.get(n) != now.get(n))
            raise StudyError(f"Study {self.name!r} searches another space (its fingerprint {self._record.space_fingerprint}, "
                             f"this one {space.fingerprint()}); differing parameters: {', '.join(changed[:8])}.")
        return space

    def _restamp_space(self, space: "Space") -> None:
        """Store ``space`` (the same parameters, reworded or fingerprinted by an older
        slimtune) and its fingerprint as the study's."""
        stored = {"families": [k.family for k in space.knobs], **space.to_dict()}
        self._storage.set_space(self._record.id, stored, space.fingerprint())
        self._record.space, self._record.space_fingerprint = stored, space.fingerprint()

    @property
    def optuna_study(self) -> "optuna.Study":
        """The Optuna study holding the trials (``optuna.load_study`` gives the same)."""
        if self._optuna_study is None:
            import optuna

            storage = _optuna_storage(self._db.url, create=False)
            try:
                self._optuna_study = optuna.load_study(study_name=self.name, storage=storage)
            except KeyError:
                raise StudyError(f"The Optuna study {self.name!r} is missing from {self.storage!r}.") from None
            self._optuna_storage = storage
        return self._optuna_study

    # -- running -------------------------------------------------------------------
    def optimize(
        self,
        n_trials: int | None = None,
        *,
        timeout: float | None = None,
        backend: str = "optuna",
        callbacks: Sequence[Callable[[dict], Any]] = (),
        stop_event: threading.Event | None = None,
        progress: bool = True,
        catch: tuple[type[BaseException], ...] = (Exception,),
        **backend_options: Any,
    ) -> list[dict]:
        """Run trials: ``n_trials`` of them, or until ``timeout`` seconds have passed,
        or until ``stop_event`` is set (checked between trials: the current trial is
        finished and stored, nothing is lost).

        Args:
            n_trials: trials to run in this call.
            timeout: no new trial starts after this many seconds.
            backend: ``optuna`` (default) or ``nni``.
            callbacks: called with each finished trial's row (COMPLETE, PRUNED or FAIL).
            stop_event: a ``threading.Event``; set it to stop after the current trial.
            progress: show a tqdm progress bar (with ETA when ``n_trials`` is given).
            catch: exceptions of a candidate that fail its trial instead of the search.
            backend_options: passed to the backend (e.g. ``tuner=`` for NNI).

        Returns:
            The rows of the trials run by this call.
        """
        from slimtune.search._optimize import run_search

        _check_budget(n_trials, timeout)
        return run_search(self, n_trials, timeout=timeout, backend=backend, callbacks=callbacks, stop_event=stop_event,
                          progress=progress, catch=catch, **backend_options)

    def open_for_search(self) -> "optuna.Study":
        """Make the study ready for trials: a SQLite file in WAL mode (several workers),
        the Optuna study loaded with heartbeats on.  Returns the Optuna study."""
        self._db.enable_wal()
        if self._optuna_study is None or self._optuna_storage is None:
            self._ensure_optuna_study(_optuna_storage(self._db.url))
        return self._optuna_study

    # -- the recorder side of the runner --------------------------------------------
    def recover_trials(self) -> dict[str, list[int]]:
        """Finish the trials that dead workers left RUNNING (called before every trial):

        * recorded by slimtune but never told to Optuna (the worker died between the two
          writes): Optuna is told the recorded outcome, so ``studies``, ``show``,
          ``select`` and ``export`` agree and the model is kept;
        * no heartbeat ever written (the worker died between ``ask`` and its first
          beat, which Optuna's stale-trial detection skips) and started more than the
          grace period ago: failed, with the reason;
        * heartbeat older than the grace period: failed (Optuna's stale-trial detection).

        Returns the trial numbers ``told`` from records and ``failed``.
        """
        import optuna
        from optuna.trial import TrialState

        from slimtune.search._runner import BEATING_ATTR, fail_stale_trials

        study = self.optuna_study
        done: dict[str, list[int]] = {"told": [], "failed": []}
        running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if running:
            numbers = [t.number for t in running]
            records = self._storage.candidates(self._record.id, numbers)
            grace = getattr(self._optuna_storage, "grace_period", None)
            now = datetime.now()  # Optuna writes datetime_start with the local clock
            for t in running:
                try:
                    rec = records.get(t.number)
                    if rec is not None:
                        values = ([float((rec.measurement or {})[o]) for o in self.objectives]
                                  if rec.state == "COMPLETE" else None)
                        study.tell(t.number, values, state=TrialState[rec.state], skip_if_finished=True)
                        done["told"].append(t.number)
                    elif (grace and BEATING_ATTR not in t.system_attrs and t.datetime_start is not None
                          and (now - t.datetime_start).total_seconds() > grace):
                        reason = (f"its worker stopped before the trial's first heartbeat (started "
                                  f"{t.datetime_start.isoformat(timespec='seconds')}, grace period {grace} s)")
                        self._optuna_storage.set_trial_user_attr(t._trial_id, "error", reason)  # noqa: SLF001
                        study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
                        done["failed"].append(t.number)
                except optuna.exceptions.UpdateFinishedTrialError:
                    pass  # another worker finished it meanwhile
                except (KeyError, TypeError, ValueError) as exc:  # a record without the objectives: leave it
                    logger.warning("Study %r: cannot finish trial %d from its record: %s", self.name, t.number, exc)
        fail_stale_trials(study)
        for key, numbers in done.items():
            if numbers:
                logger.warning("Study %r: %s trials %s left RUNNING by a stopped worker", self.name,
                               "told from their records" if key == "told" else "failed", numbers)
        return done

    def frontier_points(self, cost_objectives: Sequence[str]) -> list[FrontierPoint]:
        """Validation accuracy, learning curve and measured costs of every complete
        candidate (all workers)."""
        points = []
        for number, val_accuracy, info, *measured in self._storage.complete_costs(self._record.id, cost_objectives):
            if val_accuracy is None or any(v is None for v in measured):
                continue
            # a finished trial's true costs: its final measurement (its pre-training
            # latency can be far lower: the shortest path of an early-exit model)
            costs = {c: float(v) for c, v in zip(cost_objectives, measured)}
            curve = tuple(float(a) for a in (info or {}).get("val_accuracy_per_epoch") or ())
            points.append(FrontierPoint(int(number), float(val_accuracy), costs, curve))
        return points

    def record(self, outcome: TrialOutcome) -> dict:
        """Store one outcome (candidate row + weights and artifact); return its row."""
        import hashlib

        import torch

        result = outcome.result
        m = result.measurement if result is not None else None
        params = dict(result.params) if result is not None else {**self.fixed, **outcome.proposal.values}
        info = dict(result.info) if result is not None else {}
        info["constraints"] = outcome.constraints
        info["early_stopping"] = outcome.early_stopping
        rec = CandidateRecord(
            study_id=self._record.id, study_name=self.name, trial_number=outcome.number, state=outcome.state,
            params=params, accuracy=m.accuracy if m else None,
            val_accuracy=result.val_accuracy if result is not None else None,
            test_accuracy=m.test_accuracy if m else None,
            latency_ms=m.latency_ms if m else None, size_bytes=int(m.size_bytes) if m else None,
            artifact_bytes=(len(result.artifact) if m and result.artifact is not None else None),
            macs=int(m.macs) if m else None, measurement=m.to_dict() if m else None,
            pre=({"latency_ms": result.pre.latency_ms, "size_bytes": int(result.pre.size_bytes), "macs": int(result.pre.macs)}
                 if result is not None and result.pre is not None else None),
            fingerprint_id=m.fingerprint_id if m else None,
            exit_rates=list(m.exit_rates) if m and m.exit_rates is not None else None,
            flags=list(m.flags) if m else [], recipe=result.recipe if result is not None and m else None,
            info=info, backend=outcome.backend, tuner=outcome.proposal.tuner,
            stopped_reason=result.stopped if result is not None else None, error=outcome.error,
            train_seconds=result.train_seconds if result is not None else None,
            total_seconds=result.total_seconds if result is not None else None, worker=outcome.worker,
            created_at=utcnow(),
        )
        weights = None
        if m is not None and result.state_dict is not None:
            buffer = io.BytesIO()
            torch.save(result.state_dict, buffer)
            artifact = result.artifact
            weights = dict(state_dict=buffer.getvalue(), artifact=artifact, artifact_format=result.artifact_format,
                           artifact_sha256=hashlib.sha256(artifact).hexdigest() if artifact else None)

        self._storage.add_candidate(rec, weights)  # one transaction: the row and its weights, or nothing
        row = make_row(rec, None, objectives=self.objectives)
        row["constraints"], row["feasible"] = dict(outcome.constraints), outcome.feasible
        if row["state"] == "COMPLETE" and row["feasible"]:
            others = [r for r in self.trials() if r["trial"] != row["trial"]]
            row["pareto"] = (bool(non_dominated_mask([row] + [r for r in others if r["state"] == "COMPLETE" and
                                                              (r["feasible"] or not self.constraints.active)],
                                                     self.objectives)[0])
                             and not beaten_by_baseline(row, self.baseline_row(), self.objectives))
        return row

    # -- reading -------------------------------------------------------------------
    def _optuna_trials(self) -> Sequence[Any]:
        """Optuna's trials of the study, read in bulk (with what slimtune's records do
        not already carry)."""
        study = self.optuna_study
        if self._optuna_study_id is None:
            self._optuna_study_id = self._optuna_storage.get_study_id_from_name(self.name)
        return self._storage.optuna_trials(self._optuna_study_id, self._record.id,
                                           fallback=lambda: study.get_trials(deepcopy=False))

    def trials(self, *, states: Sequence[str] | None = None) -> list[dict]:
        """Every trial as a row (see :mod:`slimtune.studies._rows`), by trial number;
        ``pareto`` marks the frontier.  ``states`` filters (e.g. ``("COMPLETE",)``)."""
        records = self._storage.candidates(self._record.id, measurement_keys=MEASUREMENT_KEYS)
        frozen = {t.number: t for t in self._optuna_trials()}
        rows = [make_row(records.get(n), frozen.get(n), objectives=self.objectives, fixed=self._record.fixed)
                for n in sorted(set(records) | set(frozen))]
        mark_pareto(rows, self.objectives, feasible_only=self.constraints.active, baseline=self.baseline_row())
        if states is not None:
            wanted = {s.upper() for s in states}
            rows = [r for r in rows if r["state"] in wanted]
        return rows

    def fingerprints(self) -> dict[str, int]:
        """Machine fingerprints of the complete trials, with their counts."""
        counts: dict[str, int] = {}
        for row in self.trials(states=("COMPLETE",)):
            key = row.get("fingerprint_id") or "?"
            counts[key] = counts.get(key, 0) + 1
        return counts

    def frontier(self, *, fingerprint: str | None = None) -> list[dict]:
        """The non-dominated complete trials under the study's objectives (feasible ones
        only when the study has constraints, as in Optuna's ``best_trials``), sorted by
        the first cost objective.

        Latencies measured on different machines are not comparable: when the trials
        carry more than one machine fingerprint a ``UserWarning`` says so; pass
        ``fingerprint=`` to keep one machine's trials.
        """
        rows = self.trials(states=("COMPLETE",))
        if fingerprint is not None:
            rows = [r for r in rows if r.get("fingerprint_id") == fingerprint]
            mark_pareto(rows, self.objectives, feasible_only=self.constraints.active, baseline=self.baseline_row())
        else:
            ids = {r.get("fingerprint_id") for r in rows}
            if len(ids) > 1:
                warnings.warn(f"Study {self.name!r} mixes latencies from {len(ids)} machine fingerprints "
                              f"({', '.join(sorted(map(str, ids)))}); pass fingerprint= to keep one.", UserWarning,
                              stacklevel=2)
        cost = self.objectives[1]
        return sorted((r for r in rows if r["pareto"]), key=lambda r: (r[cost], -r["accuracy"], r["trial"]))

    def candidate(self, number: int) -> "Candidate":
        """Trial ``number`` as a :class:`Candidate` (it must be complete)."""
        from slimtune.studies._candidate import Candidate

        rows = {r["trial"]: r for r in self.trials()}
        if number not in rows:
            raise StudyError(f"Study {self.name!r} has no trial {number}; its trials are 0..{max(rows, default=-1)}.")
        row = rows[number]
        if row["state"] != "COMPLETE":
            reason = row.get("stopped_reason") or row.get("error") or ""
            raise StudyError(f"Trial {number} of study {self.name!r} is {row['state']}, not COMPLETE"
                             + (f" ({reason})" if reason else "") + ": it has no model to load or export.")
        return Candidate(self, row)

    def select(self, *, max_latency_ms: float | None = None, min_accuracy: float | None = None,
               max_size_kb: float | None = None, max_artifact_kb: float | None = None,
               split: str = "val") -> "Candidate":
        """The most accurate complete trial within the limits (ties: lower latency,
        then smaller size, then earlier trial).

        Accuracy is the **validation** accuracy (what the search optimized) unless
        ``split="test"``; ``min_accuracy`` applies to the same split.  A trial that the
        baseline dominates (the baseline timed in the trial's own run) is never chosen:
        the baseline itself is then the better model.

        ``max_size_kb`` limits ``size_bytes`` (the packed model file), ``max_artifact_kb``
        ``artifact_bytes`` (the ONNX/TorchScript file that was timed); both in KiB
        (1024 B).  A trial with no recorded artifact length never meets
        ``max_artifact_kb``.

        Raises:
            NoCandidateError: nothing fits, or nothing that fits beats the baseline; the
                message names the closest alternatives.
        """
        from slimtune.studies._candidate import Candidate

        for arg, value in (("max_latency_ms", max_latency_ms), ("max_size_kb", max_size_kb),
                           ("max_artifact_kb", max_artifact_kb)):
            if value is not None and not (value > 0):
                raise StudyError(f"`{arg}` must be positive, but got {value!r}.")
        if split not in SPLITS:
            raise StudyError(f"`split` must be one of {', '.join(SPLITS)}, but got {split!r}.")
        limits = Limits(max_latency_ms=max_latency_ms, min_accuracy=min_accuracy, max_size_kb=max_size_kb,
                        max_artifact_kb=max_artifact_kb, split=split)
        acc, fits, key = limits.accuracy, limits.fits, limits.key
        rows = [r for r in self.trials(states=("COMPLETE",)) if r.get(acc) is not None]
        if not rows:
            raise NoCandidateError(f"Study {self.name!r} has no complete trial yet.")
        baseline = self.baseline_row()
        fitting, better = select_rows(rows, limits, baseline=baseline, objectives=self.objectives)
        if better:
            return Candidate(self, better[0])
        asked = " and ".join(a for a in (
            f"latency_ms <= {max_latency_ms:g}" if max_latency_ms is not None else "",
            f"{split} accuracy >= {min_accuracy:g}" if min_accuracy is not None else "",
            f"size <= {max_size_kb:g} KiB" if max_size_kb is not None else "",
            f"artifact <= {max_artifact_kb:g} KiB" if max_artifact_kb is not None else "") if a) or "no limits"
        if fitting:
            raise NoCandidateError(
                f"Nothing beats the baseline under {asked}: the baseline ({_describe(baseline, acc)}) dominates every "
                f"one of the {len(fitting)} fitting trials when timed in their own runs (e.g. {_describe(fitting[0], acc)}, "
                f"baseline {fitting[0].get('reference_latency_ms') or baseline['latency_ms']:.4g} ms in that run); "
                "keep the baseline.")
        alternatives: list[str] = []
        if max_latency_ms is not None:
            near = sorted((r for r in rows if fits(r, "latency")), key=lambda r: (r["latency_ms"], -r[acc]))
            if near:
                alternatives.append(f"the fastest meeting the other limits is {_describe(near[0], acc)}")
        if min_accuracy is not None:
            near = sorted((r for r in rows if fits(r, "accuracy")), key=key)
            if near:
                alternatives.append(f"the most accurate meeting the other limits is {_describe(near[0], acc)}")
        if max_size_kb is not None:
            near = sorted((r for r in rows if fits(r, "size")), key=lambda r: (r["size_bytes"], -r[acc]))
            if near:
                alternatives.append(f"the smallest meeting the other limits is {_describe(near[0], acc)}")
        if max_artifact_kb is not None:
            near = sorted((r for r in rows if fits(r, "artifact") and r.get("artifact_bytes")),
                          key=lambda r: (r["artifact_bytes"], -r[acc]))
            if near:
                alternatives.append(f"the smallest artifact meeting the other limits is {_describe(near[0], acc)}, "
                                    f"artifact {near[0]['artifact_bytes'] / 1024:.1f} KiB")
        if not alternatives:
            fastest = min(rows, key=lambda r: (r["latency_ms"], -r[acc]))
            best = min(rows, key=key)
            alternatives.append(f"the fastest is {_describe(fastest, acc)}; the most accurate is {_describe(best, acc)}")
        raise NoCandidateError(f"No complete trial of study {self.name!r} fits {asked}: " + "; ".join(alternatives) + ".")

    def dashboard(self, **kwargs: Any):
        """A live notebook dashboard of this study (``slimtune.widgets.StudyDashboard``;
        needs the notebook extras)."""
        from slimtune.widgets import StudyDashboard  # lazy: studies never import widgets at import time

        return StudyDashboard(self, **kwargs)

    def close(self) -> None:
        """Release database connections."""
        self._db.dispose()
        engine = getattr(self._optuna_storage, "engine", None)
        if engine is not None:
            engine.dispose()

    def __enter__(self) -> "Study":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Study({self.name!r}, task={self.task_name!r}, objectives={self.objectives}, storage={self.storage!r})"


def _same_task(db: Database, record: StudyRecord, task: "Task") -> bool:
    """Whether ``task`` is the study's task: same fingerprint, or the fingerprint that
    slimtune 0.1.0 stored for it (schema 1), which is then replaced by today's."""
    if task.fingerprint() == record.task_fingerprint:
        return True
    if task.legacy_fingerprint() != record.task_fingerprint:
        return False
    StudyStorage(db).set_task_fingerprint(record.id, task.fingerprint())
    record.task_fingerprint = task.fingerprint()
    return True


def _describe(row: dict, acc: str = "accuracy") -> str:
    label = "test accuracy" if acc == "test_accuracy" else "val accuracy"
    trial = "baseline" if row.get("trial") == "baseline" else f"trial {row['trial']}"
    return f"{trial} ({label} {row[acc]:.4f}, latency {row['latency_ms']:.4g} ms, {row['size_bytes'] / 1024:.1f} KiB)"


def _optuna_storage(url: str, *, create: bool = True):
    """Optuna's RDBStorage on the same URL (heartbeats on, so dead workers' trials fail)."""
    import optuna

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeat_interval
            from slimtune.studies._database import creating_concurrently, engine_options

            interval, grace = heartbeat_settings()
            return creating_concurrently(lambda: optuna.storages.RDBStorage(
                url, heartbeat_interval=interval, grace_period=grace, skip_table_creation=not create,
                engine_kwargs=engine_options(url)))
    except StudyError:
        raise
    except Exception as exc:  # noqa: BLE001 - e.g. an Optuna schema needing `optuna storage upgrade`
        from slimtune.studies._database import _scrub

        first = _scrub(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__, url)
        raise StudyError(f"Optuna cannot open {mask_url(url)!r}: {first}") from None


def _summaries(db: Database) -> list[dict[str, Any]]:
    """The studies with trial counts from slimtune's records alone (see
    :func:`list_studies` for counts that include Optuna's view)."""
    return [{"name": r.study_name, "task": r.task_name, "objectives": list(r.objectives),
             **_counts(list(states.values())), "created_at": r.created_at.isoformat(timespec="seconds"),
             "slimtune_version": r.slimtune_version, "_records": states} for r, states in StudyStorage(db).summaries()]


def _counts(states: Sequence[str]) -> dict[str, int]:
    return {"complete": states.count("COMPLETE"), "pruned": states.count("PRUNED"), "failed": states.count("FAIL"),
            "running": states.count("RUNNING")}


def list_studies(storage: str | None = None) -> list[dict[str, Any]]:
    """The slimtune studies in ``storage`` (default ``$SLIMTUNE_STORAGE``, else
    ``sqlite:///slimtune.db``): name, task, objectives, trial counts by state as ``show``
    has them (``trials`` includes running ones), creation time."""
    import optuna

    storage = resolve_storage(storage)
    db = Database.open(storage, create=False)
    try:
        rows = _summaries(db)
        if not rows:  # slimtune's tables without a study yet (Optuna's may be missing)
            return rows
        optuna_storage = _optuna_storage(storage, create=False)
        try:
            names = set(optuna.get_all_study_names(optuna_storage))
            for row in rows:
                records: dict[int, str] = row.pop("_records")
                trials = []
                if row["name"] in names:
                    study_id = optuna_storage.get_study_id_from_name(row["name"])
                    trials = optuna_storage.get_all_trials(study_id, deepcopy=False)
                # the same state per trial as `show` (rows.merged_state): Optuna's once finished,
                # so trials that Optuna failed for a dead worker are counted as failed
                states = {t.number: merged_state(t.state.name, records.get(t.number)) for t in trials}
                states.update({n: st for n, st in records.items() if n not in states})
                row.update(_counts(list(states.values())), trials=len(states))
        finally:
            optuna_storage.engine.dispose()
        return rows
    finally:
        db.dispose()
