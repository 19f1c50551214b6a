"""The trial loop: propose -> evaluate -> record, whatever backend proposes.

For each trial the runner

1. asks the backend for a proposal (a RUNNING Optuna trial holding the values); the
   trial's first heartbeat is written right after Optuna's ``ask`` created it, before
   anything that can fail (:class:`TrialStart`), so a dead worker's trial is always
   found and failed,
2. evaluates the values (:class:`~slimtune.search._pipeline.Evaluator`), with the
   frontier early-stopping rule when it is on,
3. sets the constraints (``Trial.set_constraint``: ``<= 0`` is feasible) and user
   attributes on the Optuna trial; besides the user's limits, a candidate that
   collapsed (:func:`collapse_margin`) is infeasible for the samplers only,
4. hands the outcome to the recorder (the study database), then tells Optuna
   (COMPLETE with the objective values, latency as its same-run ratio in studies whose
   Optuna metric names say so (:func:`~slimtune._dominance.optuna_latency_unit`),
   PRUNED when stopped early, FAIL on error),
5. tells the backend (:meth:`Backend.observe`) and calls the per-trial callbacks.

Whatever raises after ``ask``, the trial ends COMPLETE, PRUNED or FAIL; trials that
dead workers left RUNNING are finished before each new trial (the recorder's
``recover_trials``).

The loop ends after ``n_trials``, when ``timeout`` seconds have passed, or when
``stop_event`` is set; it always ends *between* trials, so stopping loses nothing.
A trial that early stopping rejects before any training (it costs the pre-training
measurement only, a fraction of a second) does not use up the budget, nor does a
training-free one (rung 0): ``n_trials`` counts the trials that trained (complete,
stopped after training, or failed; a cheap one and its promotion count one each), up to
:data:`MAX_PROPOSALS_PER_TRIAL` proposals per trial of the budget, so a sampler stuck
on rejected proposals ends with a warning instead of looping.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import threading
import time
import traceback
import warnings
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from slimtune._storage_faults import StorageLost, retry_disconnects, storage_fault
from slimtune.search._constraints import COLLAPSE_CONSTRAINT, Constraints, collapse_margin
from slimtune.search._early_stopping import FrontierEarlyStopping
from slimtune.search._fidelity import FIDELITIES, Fidelity, counts_toward_budget, planned_rungs, split_planned
from slimtune.search._promotion import cheap_epochs, enqueued, promote
from slimtune.search._heartbeat import TrialStart, fail_stale_trials
from slimtune.search._interrupts import Interrupted, fault
from slimtune.search._outcome import Recorder, TrialOutcome, objective_values, user_attrs
from slimtune.search._progress import progress_bar, progress_summary, update_bar
from slimtune.search._warm_claims import Claim, ClaimStore, MemoryClaims, claim_next

if TYPE_CHECKING:  # pragma: no cover - kept out of the import so that `slimtune show` starts without torch
    import optuna

    from slimtune.search._backends._interface import Backend, Proposal
    from slimtune.search._pipeline import Evaluator

logger = logging.getLogger(__name__)

TrialCallback = Callable[[dict], Any]

#: At most this many proposals per trial of ``n_trials`` (rejections before training
#: do not use up the budget; this bounds them).
MAX_PROPOSALS_PER_TRIAL = 10


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
        latency_unit: how Optuna is told latency: ``"ratio"`` (to the baseline timed in
            the same run) or ``"ms"`` (studies made before ratios).
        warm_start: start a new study with its warm starts (the task's, else the
            backend's: :meth:`planned_warm_starts`), each claimed exactly once across
            workers and proposed once more when its trial did not complete
            (:mod:`~slimtune.search._warm_claims`), when the backend takes given values
            (Optuna's samplers do; NNI's tuners propose every value).
        fidelity: ``"multi"`` (default): a new study's plan starts with its training-free
            candidates (rung 0, :mod:`~slimtune.search._fidelity`), which do not use up
            ``n_trials``, and the sampler's candidates train a third of the epochs first,
            the best third of that rung promoted to full training
            (:mod:`~slimtune.search._promotion`); ``"full"``: every trial trains the full
            epochs.
        worker: who runs the trials, stored with each (default: the host name).

    ``owner``, when set, is written on each trial right after ``ask``
    (:data:`~slimtune.search._heartbeat.OWNER_ATTR`), so an executor that loses this
    worker knows which trial to fail.
    """

    def __init__(self, *, study: "optuna.Study", backend: Backend, evaluator: Evaluator, objectives: Sequence[str],
                 recorder: Recorder, constraints: Constraints | None = None, baseline_accuracy: float = float("nan"),
                 early_stopping: FrontierEarlyStopping | None = None, epochs: int = 1, recovery_epochs: int = 0,
                 fixed: Mapping[str, Any] | None = None, warm_start: bool = True, latency_unit: str = "ratio",
                 worker: str | None = None, fidelity: str = "multi") -> None:
        if fidelity not in FIDELITIES:
            raise ValueError(f"`fidelity` must be one of {', '.join(FIDELITIES)}, but got {fidelity!r}.")
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
        self.worker = worker or socket.gethostname()
        self.owner: str | None = None
        self.warm_start = warm_start
        self.latency_unit = latency_unit
        self.fidelity = fidelity
        # rungs need an evaluator that trains a given number of epochs (a replay of stored results does not)
        self._rungs = fidelity == "multi" and hasattr(evaluator, "full_epochs")
        self._claims: ClaimStore | None = None  # where warm starts are claimed (set by run)
        self._cheap: int | None = None  # epochs of the cheap rung (set by run; None: every trial in full)

    def planned_warm_starts(self) -> list[dict[str, Any]]:
        """The warm starts a new study starts with: the task's that fit the backend's
        space (:mod:`~slimtune.search._warm_start`), else the backend's own (the
        baseline's neighbourhood for Optuna)."""
        from slimtune.search._warm_start import warm_start_trials

        trained = (warm_start_trials(self.backend.space, getattr(self.evaluator, "task", None))
                   or list(self.backend.warm_starts()))
        return planned_rungs(self.backend.space, trained) if self._rungs else trained

    def _claim_store(self) -> ClaimStore | None:
        """Where this session claims warm starts: the recorder's (the study database),
        else this process's memory; ``None`` without warm starts."""
        if not (self.warm_start or self._rungs) or not getattr(self.backend, "takes_enqueued_trials", False):
            return None
        claims = getattr(self.recorder, "warm_start_claims", None)
        return claims() if claims is not None else MemoryClaims(self.study)

    def _claim_warm_start(self) -> Claim | None:
        if self._claims is None:
            return None
        planned = self.planned_warm_starts if self.warm_start else list  # without: promotions only
        return retry_disconnects(lambda: claim_next(self._claims, planned=planned,
                                                    worker=f"{self.worker}:{os.getpid()}"))

    def _bind(self, claim: Claim, proposal: Proposal) -> None:
        """Tie the claimed warm start to its trial, or give the claim back when Optuna
        handed out a waiting trial (enqueued by someone else) instead."""
        if all(proposal.values.get(k) == v for k, v in split_planned(claim.values)[0].items()):
            retry_disconnects(lambda: self._claims.bind(claim.position, proposal.number))
        else:
            retry_disconnects(lambda: self._claims.release(claim.position, claim.attempts))

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
        self._check_storage()
        recover = getattr(self.recorder, "recover_trials", None)
        retry_disconnects(recover if recover is not None else lambda: fail_stale_trials(self.study))

    def _propose(self, start: TrialStart, claim: Claim | None) -> Proposal:
        self.backend.on_ask = start
        try:
            with warnings.catch_warnings():
                # Optuna warns that heartbeats are meant for Study.optimize: this loop beats itself
                warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
                if claim is not None:
                    return self.backend.propose_given(self.study, split_planned(claim.values)[0])
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
        claim = self._claim_warm_start()
        start = TrialStart(self.owner)
        outcome: TrialOutcome | None = None
        interrupted: BaseException | None = None
        try:
            proposal = self._propose(start, claim)
            if claim is not None:
                self._bind(claim, proposal)
            outcome = TrialOutcome(proposal, "FAIL", None, None, backend=self.backend.name,
                                   early_stopping=self.early_stopping is not None, worker=self.worker)
            # a warm start or a promotion says its epochs; the sampler's proposals train the cheap rung first
            _, epochs, promoted_from = split_planned(claim.values) if claim is not None else ({}, self._cheap, None)
            if claim is None and enqueued(proposal):  # values someone gave (Optuna's queue): trained in full
                epochs = None
            full = getattr(self.evaluator, "full_epochs", None)  # None: a replay, no training to count
            if full is not None:
                outcome.fidelity = Fidelity(full if epochs is None else epochs, full, promoted_from).to_dict()
            fault("before_eval")
            # a training-free candidate costs about what its pre-training check would: never stopped; a cheap
            # one only before training (the rule's learned part reads curves of full trainings)
            should_stop = self._should_stop(proposal.values) if epochs != 0 else None
            if should_stop is not None and epochs is not None and full is not None and epochs < full:
                rule = should_stop
                should_stop = lambda epoch, accuracy, pre: rule(epoch, accuracy, pre) if epoch < 0 else None  # noqa: E731
            result = self.evaluator.evaluate({**proposal.values}, should_stop=should_stop,
                                             metadata={"study": self.study.study_name, "trial": proposal.number},
                                             **({} if epochs is None else {"epochs": epochs}))
            outcome.result = result
            if result.stopped:
                outcome.state = "PRUNED"
            else:
                m = result.measurement
                outcome.values = objective_values(m, self.objectives, self.latency_unit)
                if any(math.isnan(v) for v in outcome.values):
                    raise ValueError(f"objective values {outcome.values} contain NaN")
                outcome.constraints = self.constraints.values(m, self.baseline_accuracy)
                outcome.state = "COMPLETE"
        except BaseException as exc:
            if start.trial is None:  # nothing was asked: nothing to finish
                raise
            if outcome is None:  # the backend raised after `ask` created the trial
                from slimtune.search._backends._interface import Proposal

                outcome = TrialOutcome(Proposal(start.trial, self.backend.values_of(start.trial), tuner=self.backend.tuner),
                                       "FAIL", None, None, backend=self.backend.name,
                                       early_stopping=self.early_stopping is not None, worker=self.worker)
            outcome.state, outcome.values, outcome.constraints = "FAIL", None, {}
            if isinstance(exc, catch):
                fault_line = storage_fault(exc, self._storage_url())  # e.g. a server stopped mid-transaction
                outcome.error = fault_line or "".join(traceback.format_exception_only(type(exc), exc)).strip()
                first = fault_line or f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:300]}"
                logger.warning("Trial %d failed: %s", outcome.number, first)  # one line
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
        self._promote(outcome, row)
        return row

    def _promote(self, outcome: TrialOutcome, row: Mapping[str, Any]) -> None:
        """Plan the full training of a cheap candidate that MO-ASHA's rule promotes."""
        if self._claims is not None and promote(outcome, row, self.recorder, self._claims, self.objectives):
            logger.info("Trial %d (%s) promoted to full training", outcome.number, outcome.fidelity["label"])

    def _finish(self, outcome: TrialOutcome) -> dict:
        """Record the outcome (slimtune's row first), then tell Optuna.  If recording
        fails the trial is told FAIL (when the storage still takes that write); if only
        ``tell`` fails the record stands and the next :meth:`_recover` tells Optuna from
        it.  A lost connection is retried (:func:`~slimtune._storage_faults.retry_disconnects`);
        a database that is no longer the one opened (:class:`StorageLost`) gets no write."""
        from optuna.exceptions import UpdateFinishedTrialError
        from optuna.trial import TrialState

        trial = outcome.proposal.trial
        recorded = False
        try:
            self._check_storage()
            retry_disconnects(lambda: self._set_attributes(outcome))
            row = retry_disconnects(lambda: self.recorder.record(outcome))  # details first: a COMPLETE trial has them
            recorded = True
            fault("before_tell")
            state = {"COMPLETE": TrialState.COMPLETE, "PRUNED": TrialState.PRUNED, "FAIL": TrialState.FAIL}[outcome.state]
            # skip_if_finished: another worker may have told it from the record meanwhile
            try:
                told = retry_disconnects(lambda: self.study.tell(
                    trial, outcome.values if outcome.state == "COMPLETE" else None, state=state, skip_if_finished=True))
            except UpdateFinishedTrialError:  # ... even while Optuna's tell ran (between its check and its write)
                told = self.study._storage.get_trial(trial._trial_id)  # noqa: SLF001 - what it was told
            if told.state != state:  # e.g. failed as stale while this machine slept past the grace period
                logger.warning("Trial %d was already %s in Optuna when this worker finished it as %s (recorded "
                               "as such in slimtune's tables).", outcome.number, told.state.name, outcome.state)
        except BaseException as exc:
            if not recorded and not isinstance(exc, StorageLost):
                try:
                    self.study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
                except Exception:  # noqa: BLE001 - the next run fails it (its worker is gone)
                    logger.debug("could not fail trial %d", outcome.number, exc_info=True)
            raise
        return row

    def _set_attributes(self, outcome: TrialOutcome) -> None:
        """The constraints and small user attributes on the Optuna trial."""
        trial = outcome.proposal.trial
        for key, value in outcome.constraints.items():
            trial.set_constraint(key, value)
        if outcome.state == "COMPLETE" and outcome.result is not None and outcome.result.measurement is not None:
            margin = collapse_margin(outcome.result.measurement.accuracy, self.baseline_accuracy)
            if margin is not None:  # the samplers' view only: the row keeps the user's constraints
                trial.set_constraint(COLLAPSE_CONSTRAINT, margin)
        for key, value in user_attrs(outcome, self.fixed).items():
            trial.set_user_attr(key, value)

    def _storage_url(self) -> str | None:
        """The study database's URL, when the recorder has one (to name a storage fault)."""
        url = getattr(self.recorder, "storage", None)
        return url if isinstance(url, str) else None

    def _check_storage(self) -> None:
        """The recorder's check that its database is still the one opened (optional)."""
        check = getattr(self.recorder, "check_storage", None)
        if check is not None:
            check()

    def progress_summary(self) -> dict[str, str]:
        """The study-wide state for the progress bar (:func:`~slimtune.search._progress.progress_summary`)."""
        points = self.recorder.frontier_points(tuple(dict.fromkeys((*self.costs, "latency_ms"))))
        return progress_summary(points, self.costs, self.baseline_accuracy)

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
        self._claims = self._claim_store()
        # a cheap rung needs the plan, where promotions are claimed
        self._cheap = (cheap_epochs(self.evaluator.full_epochs) if self._rungs and self._claims is not None
                       else None)
        bar = progress_bar(n_trials, timeout) if progress else None
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
                counts = counts_toward_budget(row, count_rejected=count_rejected)
                counted += counts
                if bar is not None:
                    update_bar(bar, row, rows, self.progress_summary(), advance=counts)
                for callback in callbacks:
                    callback(row)
        finally:
            if bar is not None:
                bar.close()
        return rows
