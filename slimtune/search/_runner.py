"""The trial loop: propose -> evaluate -> record, whatever backend proposes.

For each trial the runner

1. asks the backend for a proposal (a RUNNING Optuna trial holding the values); the
   trial's first heartbeat is written right after Optuna's ``ask`` created it, before
   anything that can fail (:class:`_TrialStart`), so a dead worker's trial is always
   found and failed,
2. evaluates the values (:class:`~slimtune.search._pipeline.Evaluator`), with the
   frontier early-stopping rule when it is on,
3. sets the constraints (``Trial.set_constraint``: ``<= 0`` is feasible) and user
   attributes on the Optuna trial; besides the user's limits, a candidate that
   collapsed (:func:`collapse_margin`) is infeasible for the samplers only,
4. hands the outcome to the recorder (the study database), then tells Optuna
   (COMPLETE with the objective values, PRUNED when stopped early, FAIL on error),
5. tells the backend (:meth:`Backend.observe`) and calls the per-trial callbacks.

Whatever raises after ``ask``, the trial ends COMPLETE, PRUNED or FAIL; trials that
dead workers left RUNNING are finished before each new trial (the recorder's
``recover_trials``).

The loop ends after ``n_trials``, when ``timeout`` seconds have passed, or when
``stop_event`` is set; it always ends *between* trials, so stopping loses nothing.
A trial that early stopping rejects before any training (it costs the pre-training
measurement only, a fraction of a second) does not use up the budget: ``n_trials``
counts the trials that trained (complete, stopped after training, or failed), up to
:data:`MAX_PROPOSALS_PER_TRIAL` proposals per trial of the budget, so a sampler stuck
on rejected proposals ends with a warning instead of looping.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import sys
import threading
import time
import traceback
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Protocol, Sequence

from slimtune.search._early_stopping import FrontierEarlyStopping, FrontierPoint, rejected_before_training
from slimtune.search._measurement import Measurement

if TYPE_CHECKING:  # pragma: no cover - kept out of the import so that `slimtune show` starts without torch
    import optuna

    from slimtune.search._backends._interface import Backend, Proposal
    from slimtune.search._pipeline import CandidateResult, Evaluator

logger = logging.getLogger(__name__)

TrialCallback = Callable[[dict], Any]

#: At most this many proposals per trial of ``n_trials`` (rejections before training
#: do not use up the budget; this bounds them).
MAX_PROPOSALS_PER_TRIAL = 10

@dataclass(frozen=True)
class Constraints:
    """Hard limits, passed to Optuna's samplers with ``Trial.set_constraint``.

    Args:
        max_latency_ms: measured latency at most this.
        max_size_kb: size at most this many KiB (1 KiB = 1024 bytes).
        max_accuracy_drop: accuracy at least the baseline's minus this (absolute,
            e.g. ``0.01`` = one point).
    """

    max_latency_ms: float | None = None
    max_size_kb: float | None = None
    max_accuracy_drop: float | None = None

    def __post_init__(self) -> None:
        for name in ("max_latency_ms", "max_size_kb"):
            value = getattr(self, name)
            if value is not None and not (float(value) > 0):
                raise ValueError(f"`{name}` must be positive, but got {value!r}.")
        if self.max_accuracy_drop is not None and not (0 <= float(self.max_accuracy_drop) <= 1):
            raise ValueError(f"`max_accuracy_drop` must be in [0, 1], but got {self.max_accuracy_drop!r}.")

    @property
    def active(self) -> bool:
        return any(v is not None for v in asdict(self).values())

    def values(self, measurement: Measurement, baseline_accuracy: float) -> dict[str, float]:
        """Constraint values (feasible when ``<= 0``) by name."""
        out: dict[str, float] = {}
        if self.max_latency_ms is not None:
            out["latency_ms"] = measurement.latency_ms - float(self.max_latency_ms)
        if self.max_size_kb is not None:
            out["size_kb"] = measurement.size_bytes / 1024.0 - float(self.max_size_kb)
        if self.max_accuracy_drop is not None:
            out["accuracy_drop"] = (baseline_accuracy - measurement.accuracy) - float(self.max_accuracy_drop)
        return out

    def to_dict(self) -> dict[str, float]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> "Constraints":
        return cls(**{k: (None if v is None else float(v)) for k, v in (data or {}).items()})


#: A complete candidate whose validation accuracy is below this fraction of the
#: baseline's has collapsed (90% of the channels pruned: 0.15-0.19 on digits, whose
#: baseline reaches 0.99).  It stays in the study, on its front and in every row as it
#: is (``min_accuracy`` and ``max_accuracy_drop`` are the user's floors), but Optuna's
#: samplers see it as infeasible, ranked after every working candidate.  Without it,
#: such a candidate is the front's fastest point, so multi-objective TPE counts its
#: neighbourhood among the best and proposes it again: on digits' ceiling
#: (``benchmarks/frontier_ceiling.py``, 30 paired seeds, 58 trials, replayed) the
#: default search trained 8.4 collapsed candidates per search (up to 24), 2 with it
#: (at most 5), and its median hypervolume above 0.95 test accuracy rose from 88.6% to
#: 93.8% of the ceiling's after 29 trials (random search: 91.0%), from 91.4% to 94.7%
#: after 58 (random: 94.0%).  Floors from 5 to 50 points below the baseline measured
#: alike; half the baseline's accuracy leaves every candidate a user could want in
#: the samplers' view.  The grid is harsher than the real space (a third of its
#: pruning levels is 90%): real 30-trial searches of digits' full space (seeds 0-3)
#: trained 0-1 collapsed candidates with the rule or without it.
COLLAPSE_FRACTION = 0.5
#: The name of that constraint on the Optuna trial.
COLLAPSE_CONSTRAINT = "collapsed"


def collapse_margin(accuracy: float, baseline_accuracy: float) -> float | None:
    """How far ``accuracy`` lies below :data:`COLLAPSE_FRACTION` of the baseline's
    (``> 0``: collapsed; Optuna's constraint convention), or ``None`` when either is
    unknown (NaN)."""
    if math.isnan(float(accuracy)) or math.isnan(float(baseline_accuracy)):
        return None
    return COLLAPSE_FRACTION * float(baseline_accuracy) - float(accuracy)


@dataclass
class TrialOutcome:
    """What happened to one proposal (handed to the recorder)."""

    proposal: Proposal
    state: str  # COMPLETE, PRUNED or FAIL
    values: list[float] | None
    result: CandidateResult | None
    constraints: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    backend: str = ""
    early_stopping: bool = False
    worker: str = ""

    @property
    def number(self) -> int:
        return self.proposal.number

    @property
    def feasible(self) -> bool:
        return all(v <= 0 for v in self.constraints.values())


class Recorder(Protocol):
    """Where outcomes go (the study database implements it)."""

    def frontier_points(self, cost_objectives: Sequence[str]) -> list[FrontierPoint]:
        """Validation accuracy, curve and measured costs of the complete trials so far
        (all workers)."""

    def record(self, outcome: TrialOutcome) -> dict:
        """Store the outcome; return its trial row."""

    # optional: ``recover_trials()`` finishes trials that dead workers left RUNNING
    # (called before each trial instead of Optuna's plain stale-trial failing)


def objective_values(measurement: Measurement, objectives: Sequence[str]) -> list[float]:
    return [float(getattr(measurement, name)) for name in objectives]


def user_attrs(outcome: TrialOutcome, fixed: Mapping[str, Any]) -> dict[str, Any]:
    """Small JSON attributes on the Optuna trial, so plain Optuna users and
    optuna-dashboard see what slimtune saw (the full record lives in slimtune's tables)."""
    attrs: dict[str, Any] = {"backend": outcome.backend, "tuner": outcome.proposal.tuner,
                             "fixed_params": dict(fixed), "early_stopping": outcome.early_stopping}
    result = outcome.result
    if result is not None:
        if result.val_accuracy is not None:
            attrs["val_accuracy"] = float(result.val_accuracy)
        if result.pre is not None:
            attrs["pre_latency_ms"] = float(result.pre.latency_ms)
        if result.stopped:
            attrs["stopped_reason"] = result.stopped
        m = result.measurement
        if m is not None:
            attrs.update(accuracy=m.accuracy, test_accuracy=m.test_accuracy, latency_ms=m.latency_ms,
                         reference_latency_ms=m.reference_latency_ms, latency_p95_ms=m.latency_p95_ms,
                         size_bytes=int(m.size_bytes), macs=int(m.macs), kernel_bits=m.kernel_bits, runtime=m.runtime,
                         fingerprint_id=m.fingerprint_id, flags=list(m.flags),
                         exit_rates=list(m.exit_rates) if m.exit_rates is not None else None)
        attrs["train_seconds"] = round(result.train_seconds, 4)
    if outcome.error:
        attrs["error"] = outcome.error[-1500:]
    return attrs


#: Environment variable of the fault-injection hook (tests only; inert when unset).
FAULT_ENV = "SLIMTUNE_FAULT"
#: The points of a trial where :func:`fault` can act.
FAULT_POINTS = ("after_ask", "before_eval", "before_tell")
#: Optuna system attribute set right after a trial's first heartbeat: a RUNNING trial
#: older than the grace period without it never beat, so Optuna's stale-trial detection
#: (which skips trials without a heartbeat row) would never fail it; slimtune does.
BEATING_ATTR = "slimtune:heartbeat"


class InjectedFault(RuntimeError):
    """Raised by :func:`fault` with ``POINT:raise``."""


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM in the CLI: the running trial is marked failed with this reason."""

    def __init__(self, signal_name: str) -> None:
        super().__init__(signal_name)
        self.signal_name = signal_name


def fault(point: str) -> None:
    """Fault injection for tests, inert unless ``SLIMTUNE_FAULT`` names ``point``.

    ``SLIMTUNE_FAULT=POINT:ACTION[,POINT:ACTION]``, POINT one of :data:`FAULT_POINTS`:
    ``after_ask`` (the trial exists, before its first heartbeat), ``before_eval``
    (heartbeat running, before training), ``before_tell`` (slimtune's record
    committed, Optuna not told yet).  ACTION ``sleep`` prints ``slimtune-fault: POINT``
    on stderr and sleeps an hour (a test then kills or interrupts the process);
    ``raise`` raises :class:`InjectedFault`.
    """
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    for item in spec.split(","):
        name, _, action = item.strip().partition(":")
        if name != point:
            continue
        if action == "sleep":
            print(f"slimtune-fault: {point}", file=sys.stderr, flush=True)
            time.sleep(3600)
        elif action == "raise":
            raise InjectedFault(f"injected fault at {point}")


class Heartbeat:
    """Optuna heartbeats for one RUNNING trial (RDBStorage with a ``heartbeat_interval``).

    The first beat is written at once, in the caller's thread, then
    :data:`BEATING_ATTR` is set; a thread beats every interval until :meth:`stop`.
    A trial of a crashed worker is then failed by the others after the grace period.
    """

    def __init__(self, trial: "optuna.trial.Trial") -> None:
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        storage = trial.storage
        interval = getattr(storage, "get_heartbeat_interval", lambda: None)()
        if not interval:
            return
        trial_id = trial._trial_id  # noqa: SLF001 - Optuna's own heartbeat thread uses the same id
        storage.record_heartbeat(trial_id)
        storage.set_trial_system_attr(trial_id, BEATING_ATTR, True)

        def beat() -> None:
            while not self._stop.wait(interval):
                try:
                    storage.record_heartbeat(trial_id)
                except Exception:  # noqa: BLE001 - a missed beat is not fatal
                    logger.debug("heartbeat failed", exc_info=True)

        self._thread = threading.Thread(target=beat, name=f"slimtune-heartbeat-{trial.number}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


@contextmanager
def heartbeat(trial: "optuna.trial.Trial") -> Iterator[None]:
    """Heartbeats for ``trial`` while the block runs (see :class:`Heartbeat`)."""
    beat = Heartbeat(trial)
    try:
        yield
    finally:
        beat.stop()


class _TrialStart:
    """Handed to the backend as ``on_ask``: called with the trial right after Optuna's
    ``ask`` created it, before anything else can fail; starts its heartbeat."""

    def __init__(self) -> None:
        self.trial: "optuna.trial.Trial | None" = None
        self.heartbeat: Heartbeat | None = None

    def __call__(self, trial: "optuna.trial.Trial") -> None:
        self.trial = trial
        fault("after_ask")
        self.heartbeat = Heartbeat(trial)

    def stop(self) -> None:
        if self.heartbeat is not None:
            self.heartbeat.stop()


def fail_stale_trials(study: "optuna.Study") -> None:
    """Mark RUNNING trials of dead workers (no heartbeat) as FAIL."""
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


class TrialRunner:
    """Runs trials of one study with one backend and one evaluator.

    Args:
        study: the Optuna study (loaded with ``backend.optuna_sampler()``).
        backend: proposes values.
        evaluator: builds, trains and measures candidates.
        objectives: objective names in the Optuna study's order.
        recorder: stores outcomes (the study database).
        constraints: hard limits for the samplers.
        baseline_accuracy: for ``max_accuracy_drop``.
        early_stopping: the rule, or ``None`` for none.
        epochs: distillation epochs per candidate (the rule's horizon).
        recovery_epochs: epochs of pruning fine-tuning / QAT after distillation.
        fixed: fixed parameter values (recorded with each trial).
        warm_start: start a study that has no trial yet with the task's warm starts
            (:mod:`~slimtune.search._warm_start`), one enqueued right before each of
            this session's first trials (so none is left waiting when the session
            stops), when the backend takes enqueued trials (Optuna's samplers do; NNI's
            tuners propose every value).
    """

    def __init__(self, *, study: "optuna.Study", backend: Backend, evaluator: Evaluator, objectives: Sequence[str],
                 recorder: Recorder, constraints: Constraints | None = None, baseline_accuracy: float = float("nan"),
                 early_stopping: FrontierEarlyStopping | None = None, epochs: int = 1, recovery_epochs: int = 0,
                 fixed: Mapping[str, Any] | None = None, warm_start: bool = True) -> None:
        self.study = study
        self.backend = backend
        self.evaluator = evaluator
        self.objectives = tuple(objectives)
        self.costs = tuple(o for o in self.objectives if o != "accuracy")
        self.recorder = recorder
        self.constraints = constraints or Constraints()
        self.baseline_accuracy = baseline_accuracy
        self.early_stopping = early_stopping
        self.epochs = epochs
        self.recovery_epochs = recovery_epochs
        self.fixed = dict(fixed or {})
        self.worker = socket.gethostname()
        self.warm_start = warm_start
        self._warm_starts: list[dict[str, Any]] = []  # still to enqueue, one before each trial

    def plan_warm_starts(self) -> int:
        """The warm starts of the evaluator's task that fit the backend's space, to be
        enqueued one before each of the next trials, if the study has no trial yet and the
        backend takes enqueued trials; how many."""
        if not self.warm_start or not getattr(self.backend, "takes_enqueued_trials", False):
            return 0
        if self.study.get_trials(deepcopy=False):
            return 0  # resumed, or joining a running study: its trials are under way
        from slimtune.search._warm_start import warm_start_trials

        self._warm_starts = warm_start_trials(self.backend.space, getattr(self.evaluator, "task", None))
        if self._warm_starts and hasattr(self.backend, "warm_start"):
            self.backend.warm_start = False  # the task's own list replaces the backend's neighbourhood
        return len(self._warm_starts)

    def recovery_after_distillation(self, values: Mapping[str, Any]) -> int:
        """Recovery epochs that follow distillation for a candidate: the task's recovery
        epochs for each recovery fine-tune its knobs run (pruning's, QAT's)."""
        from slimtune.spaces._space import recovery_passes

        return self.recovery_epochs * recovery_passes({**self.fixed, **values})

    def _should_stop(self, values: Mapping[str, Any]):
        if self.early_stopping is None:
            return None
        points = self.recorder.frontier_points(self.costs)
        extra = self.recovery_after_distillation(values)
        # no point is more accurate than the smallest margin this candidate gets: the rule
        # cannot stop it, so do not spend time pre-measuring it
        if not points or max(p.val_accuracy for p in points) <= self.early_stopping.lowest_bar(
                self.epochs, extra_epochs=extra):
            return None
        return self.early_stopping.should_stop_fn(points, self.costs, self.epochs, extra_epochs=extra,
                                                  baseline_accuracy=self.baseline_accuracy)

    def _recover(self) -> None:
        """Finish trials that dead workers left RUNNING (the recorder knows how; a plain
        Optuna study only fails the stale ones)."""
        recover = getattr(self.recorder, "recover_trials", None)
        if recover is not None:
            recover()
        else:
            fail_stale_trials(self.study)

    def _propose(self, start: _TrialStart) -> Proposal:
        self.backend.on_ask = start
        try:
            with warnings.catch_warnings():
                # Optuna warns that heartbeats are meant for Study.optimize: this loop beats itself
                warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
                return self.backend.propose(self.study)
        finally:
            self.backend.on_ask = None

    def run_one(self, *, catch: tuple[type[BaseException], ...] = (Exception,)) -> dict:
        """Propose, evaluate and record one trial; return its row.

        Every trial this asks for ends COMPLETE, PRUNED or FAIL, whatever raises after
        ``ask`` (an exception of ``catch`` fails the trial and the search goes on;
        anything else, e.g. ``KeyboardInterrupt``, fails the trial and is re-raised).
        """
        self._recover()
        if self._warm_starts:  # popped by this trial's ask (or, rarely, by another worker's)
            self.study.enqueue_trial(self._warm_starts.pop(0), skip_if_exists=True)
        start = _TrialStart()
        outcome: TrialOutcome | None = None
        interrupted: BaseException | None = None
        try:
            proposal = self._propose(start)
            outcome = TrialOutcome(proposal, "FAIL", None, None, backend=self.backend.name,
                                   early_stopping=self.early_stopping is not None, worker=self.worker)
            fault("before_eval")
            should_stop = self._should_stop(proposal.values)
            result = self.evaluator.evaluate({**proposal.values}, should_stop=should_stop,
                                             metadata={"study": self.study.study_name, "trial": proposal.number})
            outcome.result = result
            if result.stopped:
                outcome.state = "PRUNED"
            else:
                m = result.measurement
                outcome.values = objective_values(m, self.objectives)
                if any(math.isnan(v) for v in outcome.values):
                    raise ValueError(f"objective values {outcome.values} contain NaN")
                outcome.constraints = self.constraints.values(m, self.baseline_accuracy)
                outcome.state = "COMPLETE"
        except BaseException as exc:
            if start.trial is None:  # nothing was asked: nothing to finish
                raise
            if outcome is None:  # the backend raised after `ask` created the trial
                from slimtune.search._backends._interface import Proposal

                outcome = TrialOutcome(Proposal(start.trial, dict(start.trial.params), tuner=self.backend.tuner),
                                       "FAIL", None, None, backend=self.backend.name,
                                       early_stopping=self.early_stopping is not None, worker=self.worker)
            outcome.state, outcome.values, outcome.constraints = "FAIL", None, {}
            if isinstance(exc, catch):
                outcome.error = "".join(traceback.format_exception_only(type(exc), exc)).strip()
                first = (str(exc).strip().splitlines() or [""])[0][:300]
                logger.warning("Trial %d failed: %s: %s", outcome.number, type(exc).__name__, first)  # one line
                logger.debug("Trial %d failed:\n%s", outcome.number, traceback.format_exc())
            else:  # KeyboardInterrupt, SIGTERM: record, then re-raise
                name = exc.signal_name if isinstance(exc, Interrupted) else type(exc).__name__
                outcome.error = f"interrupted ({name})"
                interrupted = exc
        try:
            row = self._finish(outcome)
        finally:
            start.stop()
        if interrupted is not None:
            raise interrupted
        self.backend.observe(outcome.proposal, outcome.state, outcome.values)
        return row

    def _finish(self, outcome: TrialOutcome) -> dict:
        """Record the outcome (slimtune's row first), then tell Optuna.  If recording
        fails the trial is told FAIL; if only ``tell`` fails the record stands and the
        next :meth:`_recover` tells Optuna from it."""
        from optuna.exceptions import UpdateFinishedTrialError
        from optuna.trial import TrialState

        trial = outcome.proposal.trial
        recorded = False
        try:
            for key, value in outcome.constraints.items():
                trial.set_constraint(key, value)
            if outcome.state == "COMPLETE" and outcome.result is not None and outcome.result.measurement is not None:
                margin = collapse_margin(outcome.result.measurement.accuracy, self.baseline_accuracy)
                if margin is not None:  # the samplers' view only: the row keeps the user's constraints
                    trial.set_constraint(COLLAPSE_CONSTRAINT, margin)
            for key, value in user_attrs(outcome, self.fixed).items():
                trial.set_user_attr(key, value)
            row = self.recorder.record(outcome)  # details first: a COMPLETE Optuna trial always has them
            recorded = True
            fault("before_tell")
            state = {"COMPLETE": TrialState.COMPLETE, "PRUNED": TrialState.PRUNED, "FAIL": TrialState.FAIL}[outcome.state]
            # skip_if_finished: another worker may have told it from the record meanwhile
            try:
                told = self.study.tell(trial, outcome.values if outcome.state == "COMPLETE" else None, state=state,
                                       skip_if_finished=True)
            except UpdateFinishedTrialError:  # ... even while Optuna's tell ran (between its check and its write)
                told = self.study._storage.get_trial(trial._trial_id)  # noqa: SLF001 - what it was told
            if told.state != state:  # e.g. failed as stale while this machine slept past the grace period
                logger.warning("Trial %d was already %s in Optuna when this worker finished it as %s (recorded "
                               "as such in slimtune's tables).", outcome.number, told.state.name, outcome.state)
        except BaseException:
            if not recorded:
                try:
                    self.study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
                except Exception:  # noqa: BLE001 - the heartbeat lets the next worker fail it
                    logger.debug("could not fail trial %d", outcome.number, exc_info=True)
            raise
        return row

    def progress_summary(self) -> dict[str, str]:
        """The study-wide state for the progress bar, over every complete trial (earlier
        sessions and other workers too): the size of the front, the best validation
        accuracy, and the fastest trial within 1 point of the baseline's accuracy."""
        from slimtune.studies._frontier import non_dominated_mask

        points = self.recorder.frontier_points(tuple(dict.fromkeys((*self.costs, "latency_ms"))))
        if not points:
            return {}
        rows = [{"accuracy": p.val_accuracy, **p.costs} for p in points]
        out = {"front": str(sum(non_dominated_mask(rows, ("accuracy", *self.costs)))),
               "best_val": f"{max(p.val_accuracy for p in points):.4f}"}
        close = [p for p in points if p.val_accuracy >= self.baseline_accuracy - 0.01]
        if close:
            fast = min(close, key=lambda p: p.costs["latency_ms"])
            out["fastest_within_1pt"] = f"{fast.costs['latency_ms']:.3g}ms(#{fast.trial})"
        return out

    def run(self, *, n_trials: int | None = None, timeout: float | None = None,
            stop_event: threading.Event | None = None, callbacks: Sequence[TrialCallback] = (),
            progress: bool = False, catch: tuple[type[BaseException], ...] = (Exception,),
            count_rejected: bool = False) -> list[dict]:
        """Run trials until ``n_trials`` have trained, ``timeout`` seconds have passed, or
        ``stop_event`` is set (checked between trials).  Returns the new trial rows
        (rejections before training among them).

        Trials early stopping rejects before any training do not count towards
        ``n_trials`` (``count_rejected=True``: they do, every proposal counts), up to
        ``MAX_PROPOSALS_PER_TRIAL * n_trials`` proposals in all (then a warning)."""
        if n_trials is not None and n_trials < 0:
            raise ValueError(f"`n_trials` must be >= 0, but got {n_trials!r}.")
        if timeout is not None and timeout <= 0:
            raise ValueError(f"`timeout` must be positive, but got {timeout!r}.")
        if n_trials is None and timeout is None and stop_event is None:
            raise ValueError("Give `n_trials`, `timeout` or `stop_event`, or the search never ends.")
        started = time.monotonic()
        rows: list[dict] = []
        self.plan_warm_starts()
        bar = _progress_bar(n_trials, timeout) if progress else None
        if bar is not None:
            bar.set_postfix(self.progress_summary())  # a resumed study starts from its own front
        counted = 0  # trials that use up the budget
        try:
            while True:
                if n_trials is not None and counted >= n_trials:
                    break
                if n_trials is not None and len(rows) >= MAX_PROPOSALS_PER_TRIAL * n_trials:
                    logger.warning(
                        "Stopped after %d proposals: %d trained, %d rejected before training by early stopping "
                        "(at most %d proposals per trial of n_trials=%d); the sampler keeps proposing candidates a "
                        "finished trial already beats. Run without early stopping to train them.", len(rows),
                        counted, len(rows) - counted, MAX_PROPOSALS_PER_TRIAL, n_trials)
                    break
                if timeout is not None and time.monotonic() - started >= timeout:
                    break
                if stop_event is not None and stop_event.is_set():
                    break
                row = self.run_one(catch=catch)
                rows.append(row)
                counts = count_rejected or not rejected_before_training(row)
                counted += counts
                if bar is not None:
                    _update_bar(bar, row, rows, self.progress_summary(), advance=counts)
                for callback in callbacks:
                    callback(row)
        finally:
            if bar is not None:
                bar.close()
        return rows


def _progress_bar(n_trials: int | None, timeout: float | None):
    from tqdm.auto import tqdm

    return tqdm(total=n_trials, unit="trial", desc="slimtune", dynamic_ncols=True,
                bar_format=None if n_trials else "{desc}: {n_fmt} trials [{elapsed}, {rate_fmt}]{postfix}")


def _update_bar(bar, row: dict, rows: list[dict], summary: dict[str, str], *, advance: bool = True) -> None:
    """Advance the bar (not for a rejection before training: it does not use up the
    budget); its postfix shows the study-wide ``summary`` (not only this session's
    trials, so a resumed study keeps its best), then this session's counts of trials
    rejected before training, stopped during training and failed, and the last trial."""
    postfix: dict[str, str] = dict(summary)
    rejected = sum(1 for r in rows if rejected_before_training(r))
    pruned = sum(1 for r in rows if r.get("state") == "PRUNED") - rejected
    failed = sum(1 for r in rows if r.get("state") == "FAIL")
    if rejected:
        postfix["rejected"] = str(rejected)
    if pruned:
        postfix["stopped"] = str(pruned)
    if failed:
        postfix["failed"] = str(failed)
    if row.get("state") == "COMPLETE":
        postfix["last"] = f"{row.get('val_accuracy', row.get('accuracy')) or float('nan'):.3f}@{row['latency_ms']:.3g}ms"
    bar.set_postfix(postfix, refresh=not advance)
    if advance:
        bar.update(1)
