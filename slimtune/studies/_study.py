"""A slimtune study: an Optuna study plus slimtune's record of every candidate.

:class:`Study` creates, resumes and reads a study; the rest lives beside it: every SQL
statement in :mod:`~slimtune.studies._storage`, the recorder side of the trial runner in
:mod:`~slimtune.studies._recording`, dominance in :mod:`slimtune._dominance` and the select
rule in :mod:`~slimtune.studies._frontier`, running trials in :mod:`slimtune.search._optimize`.

Example:
    >>> study = Study.create_or_load("digits-demo", task="digits", settings={"epochs": 1})
    >>> study.optimize(n_trials=20)
    >>> for row in study.frontier():
    ...     print(row["trial"], row["accuracy"], row["latency_ms"])
    >>> best = study.select(max_latency_ms=0.03)
    >>> best.export("model.onnx")
"""

from __future__ import annotations

import threading
import warnings
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from sqlalchemy.exc import IntegrityError

from slimtune._vocabulary import STATE_PHRASES
from slimtune.search._early_stopping import FrontierEarlyStopping, resolve_early_stopping
from slimtune.search._measurement import Measurement
from slimtune.search._constraints import Constraints
from slimtune.studies._database import Database, mask_url, resolve_storage
from slimtune.studies._errors import NoCandidateError, SchemaVersionError, StudyError
from slimtune._dominance import DEFAULT_OBJECTIVES, baseline_on_front, directions
from slimtune.studies._frontier import SPLITS, Limits, check_objectives, no_candidate_message, select_rows
from slimtune.studies._schema import StudyRecord
from slimtune.studies._rows import MEASUREMENT_KEYS, make_row, mark_pareto
from slimtune.studies._arguments import (
    SAFE_NAME,
    check_budget,
    check_name,
    check_new_name,
    constraints_from,
    differences,
    settings_from,
)
from slimtune.studies._optuna import optuna_storage
from slimtune.studies._recording import Recording
from slimtune.studies._storage import StudyStorage

if TYPE_CHECKING:  # pragma: no cover
    import optuna

    from slimtune.search._pipeline import EvalSettings
    from slimtune.spaces._space import Space
    from slimtune.studies._candidate import Candidate
    from slimtune.tasks._task import Task


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


class Study(Recording):
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
        from slimtune.search._task_space import build_space
        from slimtune.tasks._task import get_task

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
            settings_from(settings, None)
        new_space = None
        if task_obj is not None:  # bad names or values in `fixed` fail before anything is written
            if space is not None:
                from slimtune.spaces._space import Space

                new_space = Space(space.knobs, task_obj.build_model(), {**space.fixed, **dict(fixed)}) if fixed else space
            else:
                new_space = build_space(task_obj, fixed=fixed)

        if task_obj is not None and SAFE_NAME.fullmatch(name) is None and not _study_exists(storage, name):
            check_new_name(name)  # refused before anything is written
        # without a task the study can only be resumed: open without creating anything
        db = Database.open(storage, create=task_obj is not None)

        def join(record: StudyRecord) -> "Study":
            study = cls._resume(record, db, task=task_obj, space=space, fixed=fixed, objectives=wanted_objectives,
                                constraints=wanted_constraints, settings=settings, sampler=sampler, seed=seed,
                                early_stopping=early_stopping)
            study.use_cache = use_cache
            return study

        try:
            record = cls._find(db, name)
            if record is not None:
                return join(record)
            if task_obj is None:
                raise StudyError(f"There is no study {name!r} in {mask_url(storage)!r}; give a task to create it.")
            the_settings = settings_from(settings, None)
            the_space = new_space
            the_objectives = wanted_objectives or DEFAULT_OBJECTIVES
            rule = resolve_early_stopping(early_stopping)
            rdb = optuna_storage(storage)
            import optuna

            if name in optuna.get_all_study_names(rdb):
                record = cls._find(db, name)  # another worker may have created both since the lookup above
                if record is None:
                    raise StudyError(f"{mask_url(storage)!r} already holds an Optuna study {name!r} that slimtune did "
                                     "not create; choose another name.")
                return join(record)
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
            study._ensure_optuna_study(rdb)
            return study
        except BaseException:
            db.dispose()
            raise

    @classmethod
    def load(cls, name: str, *, storage: str | None = None) -> "Study":
        """An existing study (nothing is created; :class:`StudyError` if it is not there).
        ``storage`` defaults to ``$SLIMTUNE_STORAGE``, else ``sqlite:///slimtune.db``."""
        check_name(name)
        storage = resolve_storage(storage)
        db = Database.open(storage, create=False)
        record = cls._find(db, name)
        if record is None:
            names = [r.study_name for r, _ in StudyStorage(db).summaries()]
            db.dispose()
            from slimtune._names import close_matches

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
            the_settings = settings_from(settings, record.settings)
            diff = differences(record.settings, the_settings.to_dict())
            if diff:
                raise StudyError(f"Study {name!r} was created with other evaluation settings: {'; '.join(diff)}.")
        study = cls(record, db, task=task, sampler=sampler, seed=seed, early_stopping=early_stopping)
        if space is not None or fixed:
            study._space = study._check_space(space, fixed)
        study._ensure_optuna_study(optuna_storage(db.url))
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
        return settings_from(None, self._record.settings)

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
        from slimtune.search._task_space import build_space
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

            storage = optuna_storage(self._db.url, create=False)
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
            n_trials: trials to train in this call; a trial early stopping rejects before
                any training (its pre-training measurement only) does not count, up to 10
                proposals per trial (then a warning).
            timeout: no new trial starts after this many seconds.
            backend: ``optuna`` (default) or ``nni``.
            callbacks: called with each finished trial's row (COMPLETE, PRUNED or FAIL).
            stop_event: a ``threading.Event``; set it to stop after the current trial.
            progress: show a tqdm progress bar (with ETA when ``n_trials`` is given).
            catch: exceptions of a candidate that fail its trial instead of the search.
            backend_options: passed to the backend (e.g. ``tuner=`` for NNI); ``warm_start=False``
                starts a new study with the sampler's own draws (no warm starts).

        Returns:
            The rows of the trials run by this call.
        """
        from slimtune.search._optimize import run_search

        check_budget(n_trials, timeout)
        return run_search(self, n_trials, timeout=timeout, backend=backend, callbacks=callbacks, stop_event=stop_event,
                          progress=progress, catch=catch, **backend_options)

    def open_for_search(self) -> "optuna.Study":
        """Make the study ready for trials: a SQLite file in WAL mode (several workers),
        the Optuna study loaded with heartbeats on.  Returns the Optuna study."""
        self._db.enable_wal()
        if self._optuna_study is None or self._optuna_storage is None:
            self._ensure_optuna_study(optuna_storage(self._db.url))
        else:  # opened before the file was in WAL mode: reconnect to commit without fsync
            self._optuna_storage.engine.dispose()
        return self._optuna_study

    # -- reading -------------------------------------------------------------------
    def _optuna_trials(self) -> Sequence[Any]:
        """Optuna's trials of the study, read in bulk (with what slimtune's records do
        not already carry), without building Optuna's storage (its schema check loads
        every migration script) unless the bulk read cannot answer."""
        if self._optuna_study_id is None:
            self._optuna_study_id = self._storage.optuna_study_id(self.name)
            if self._optuna_study_id is None:  # missing or unreadable: Optuna's API says why
                self._optuna_study_id = self.optuna_study._study_id  # noqa: SLF001
        return self._storage.optuna_trials(self._optuna_study_id, self._record.id,
                                           fallback=lambda: self.optuna_study.get_trials(deepcopy=False))

    def trials(self, *, states: Sequence[str] | None = None) -> list[dict]:
        """Every trial as a row (see :mod:`slimtune.studies._rows`), by trial number;
        ``pareto`` marks the frontier.  ``states`` filters (e.g. ``("COMPLETE",)``)."""
        # Optuna's side first: it leaves out what the records then present carry, and
        # records are written once and never removed, so the records read next carry it
        frozen = {t.number: t for t in self._optuna_trials()}
        records = self._storage.candidates(self._record.id, measurement_keys=MEASUREMENT_KEYS)
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
        the first cost objective.  A collapsed candidate (below half the baseline's
        accuracy) stays here, though Optuna's ``best_trials`` leaves it out: it is
        infeasible for the samplers only (:data:`slimtune.search._constraints.COLLAPSE_FRACTION`).

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
            state = STATE_PHRASES["PRUNED"] if row["state"] == "PRUNED" else row["state"]  # users never read "pruned"
            raise StudyError(f"Trial {number} of study {self.name!r} is {state}, not COMPLETE"
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
        rows = [r for r in self.trials(states=("COMPLETE",)) if r.get(limits.accuracy) is not None]
        if not rows:
            raise NoCandidateError(f"Study {self.name!r} has no complete trial yet.")
        baseline = self.baseline_row()
        fitting, better = select_rows(rows, limits, baseline=baseline, objectives=self.objectives)
        if better:
            return Candidate(self, better[0])
        raise NoCandidateError(no_candidate_message(self.name, rows, fitting, limits, baseline))

    def dashboard(self, **kwargs: Any):
        """A live notebook dashboard of this study (``slimtune.widgets.StudyDashboard``;
        needs the notebook extras), opened through the opener the package root
        installs (:mod:`slimtune._viewers`): studies never import widgets."""
        from slimtune._viewers import open_dashboard

        return open_dashboard(self, **kwargs)

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
