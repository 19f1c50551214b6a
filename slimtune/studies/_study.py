"""A slimtune study: an Optuna study plus slimtune's record of every candidate.

:class:`Study` is the facade: it checks its arguments
(:mod:`~slimtune.studies._arguments`) and hands opening over to
:mod:`~slimtune.studies._opening`, which creates (:mod:`~slimtune.studies._creation`) or
resumes (:mod:`~slimtune.studies._resume`) the study beside its Optuna study
(:mod:`~slimtune.studies._optuna`).  Every SQL statement is in
:mod:`~slimtune.studies._storage`, the recorder side of the trial runner in
:mod:`~slimtune.studies._recording`, the reader side (trials, frontier, ``select``) in
:mod:`~slimtune.studies._reading`; running trials is :mod:`slimtune.search._optimize`'s.

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
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from slimtune._dominance import directions
from slimtune.search._constraints import Constraints
from slimtune.search._early_stopping import FrontierEarlyStopping, resolve_early_stopping
from slimtune.search._measurement import Measurement
from slimtune.studies._arguments import check_budget, check_device, check_request, settings_from
from slimtune.studies._database import Database, mask_url
from slimtune.studies._errors import StudyError
from slimtune.studies._opening import load_study, open_study
from slimtune.studies._optuna import ensure_optuna_study, optuna_storage
from slimtune.studies._recording import Recording
from slimtune.studies._resume import check_space, rebuild_task
from slimtune.studies._reading import Reading
from slimtune.studies._rows import baseline_row
from slimtune.studies._schema import StudyRecord
from slimtune.studies._storage import StudyStorage

if TYPE_CHECKING:  # pragma: no cover
    import optuna

    from slimtune.search._pipeline import EvalSettings
    from slimtune.spaces._space import Space
    from slimtune.tasks._task import Task


class Study(Recording, Reading):
    """A study in a database: create or resume it, run trials, read its frontier.

    Use :meth:`create_or_load` (or :meth:`load` for an existing one) rather than the
    constructor.
    """

    def __init__(self, record: StudyRecord, db: Database, *, task: "Task | None" = None, space: "Space | None" = None,
                 sampler: Any = None, seed: int | None = None,
                 early_stopping: "FrontierEarlyStopping | None | bool" = None,
                 session: Mapping[str, Any] | None = None) -> None:
        self._record = record
        self._session = dict(session or {})  # where this session trains: device, amp (not stored with the study)
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
                overrides (epochs, runtime, threads, batch_size, latency_repeats, ...);
                ``targets`` (e.g. ``"ort:1,openvino:64"``) times every trial on several
                targets, the first driving the search (:mod:`slimtune.search._targets`).
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
        request = check_request(name, storage=storage, task=task, space=space, fixed=fixed, objectives=objectives,
                                constraints=constraints, max_latency_ms=max_latency_ms, max_size_kb=max_size_kb,
                                max_accuracy_drop=max_accuracy_drop, settings=settings, seed=seed, sampler=sampler,
                                early_stopping=early_stopping)
        return open_study(cls, request, progress=progress, use_cache=use_cache)

    @classmethod
    def load(cls, name: str, *, storage: str | None = None, task: "str | Task | None" = None) -> "Study":
        """An existing study (nothing is created; :class:`StudyError` if it is not there).
        ``storage`` defaults to ``$SLIMTUNE_STORAGE``, else ``sqlite:///slimtune.db``.
        ``task``: the study's task, when it is a user's (a spec stored in the database
        is imported only for a built-in task or with ``$SLIMTUNE_TRUST_STORED_TASKS=1``);
        it must be the task the study was created with."""
        return load_study(cls, name, storage=storage, task=task)

    def _ensure_optuna_study(self, storage) -> "optuna.Study":
        study = ensure_optuna_study(storage, self._record, shown_url=self.storage,
                                    has_candidates=lambda: self._storage.has_candidates(self._record.id))
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
        """The study's evaluation settings, with where this session trains (``device``,
        ``amp``: given to :meth:`create_or_load` or :meth:`optimize`, else ``auto``, ``off``)."""
        return settings_from(self._session, self._record.settings)

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
        """The baseline in the same fields as a trial row (:func:`~slimtune.studies._rows.baseline_row`);
        with ``rows`` (trial rows), ``pareto`` says whether no complete trial beats it."""
        return baseline_row(self._record.baseline["measurement"], rows, self.objectives)

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
            self._task = rebuild_task(self._db, self._record)
        return self._task

    @property
    def space(self) -> "Space":
        """The study's joint space, rebuilt from the task's model (and checked against
        the stored fingerprint)."""
        if self._space is None:
            self._space = check_space(self._storage, self._record, self.task, None, None)
        return self._space

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
        device: str | None = None,
        amp: str | None = None,
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
            device: where candidates train from now on (``auto``, ``cpu``, ``cuda``,
                ``cuda:N``, ``mps``; default: as the study was opened with, else ``auto``);
                latency is timed on the study's runtime whatever it is.
            amp: mixed precision on that device (``off``, ``auto``, ``fp16``, ``bf16``).
            backend_options: passed to the backend (e.g. ``tuner=`` for NNI); ``warm_start=False``
                starts a new study with the sampler's own draws (no warm starts);
                ``fidelity="full"`` trains every trial in full (default ``"multi"``: rung 0,
                training-free candidates first, not counted in ``n_trials``; the sampler's
                candidates a third of the epochs first, the best third promoted:
                :mod:`slimtune.search._fidelity`).

        Returns:
            The rows of the trials run by this call.
        """
        from slimtune.search._optimize import run_search

        check_budget(n_trials, timeout)
        if device is not None or amp is not None:
            session = {**self._session, **{k: v for k, v in (("device", device), ("amp", amp)) if v is not None}}
            check_device(settings_from(session, self._record.settings))  # bad or absent: StudyError, nothing run
            self._session = session
        return run_search(self, n_trials, timeout=timeout, backend=backend, callbacks=callbacks, stop_event=stop_event,
                          progress=progress, catch=catch, **backend_options)

    def open_for_search(self) -> "optuna.Study":
        """Make the study ready for trials: a SQLite file in WAL mode (several workers),
        the Optuna study loaded with heartbeats on.  Returns the Optuna study."""
        self._db.enable_wal()
        self._db.ensure_tables()  # tables a newer slimtune added (the warm-start claims)
        if self._optuna_study is None or self._optuna_storage is None:
            self._ensure_optuna_study(optuna_storage(self._db.url))
        else:  # opened before the file was in WAL mode: reconnect to commit without fsync
            self._optuna_storage.engine.dispose()
        return self._optuna_study

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

