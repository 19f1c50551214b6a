"""The recorder side of a study: what the trial runner hands outcomes to
(:class:`slimtune.search._outcome.Recorder`).

:class:`Recording` is a part of :class:`~slimtune.studies._study.Study` (its base
class): storing each outcome with its weights, the complete trials the early-stopping
rule compares against, and finishing trials that dead workers left RUNNING.  It reads
the study's ``name``, ``objectives``, ``fixed``, ``constraints``, ``optuna_study``,
``trials()`` and ``baseline_row()``, and writes through its storage.
"""

from __future__ import annotations

import io
import logging
from datetime import datetime
from typing import TYPE_CHECKING, Any, Sequence

from slimtune.search._early_stopping import FrontierPoint
from slimtune.search._fidelity import is_final
from slimtune.search._outcome import TrialOutcome, objective_values
from slimtune._dominance import beaten_by_baseline, non_dominated_mask, optuna_latency_unit
from slimtune.studies._rows import make_row
from slimtune.studies._schema import CandidateRecord, utcnow

if TYPE_CHECKING:  # pragma: no cover
    from slimtune.studies._storage import StudyStorage

logger = logging.getLogger(__name__)


class Recording:
    """Store outcomes, list the complete trials, recover dead workers' trials."""

    _storage: "StudyStorage"
    _optuna_storage: Any

    def recover_trials(self) -> dict[str, list[int]]:
        """Finish the trials that stopped workers left RUNNING (called before every trial):

        * recorded by slimtune but never told to Optuna (the worker stopped between the
          two writes): Optuna is told the recorded outcome, so ``studies``, ``show``,
          ``select`` and ``export`` agree and the model is kept.  A live worker tells
          Optuna right after its record, so only a record whose worker is gone
          (:func:`~slimtune.search._heartbeat.worker_gone`) or that is older than the
          grace period is told here;
        * not recorded, and its worker is gone (a process of this machine that
          stopped): failed at once, with the reason;
        * no heartbeat ever written (the worker stopped between ``ask`` and its first
          beat, which Optuna's stale-trial detection skips) and started more than the
          grace period ago: failed, with the reason;
        * heartbeat older than the grace period: failed (Optuna's stale-trial detection).

        Returns the trial numbers ``told`` from records and ``failed``.
        """
        import optuna
        from optuna.trial import TrialState

        from slimtune.search._heartbeat import BEATING_ATTR, fail_stale_trials, worker_gone

        study = self.optuna_study
        done: dict[str, list[int]] = {"told": [], "failed": []}
        running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if running:
            numbers = [t.number for t in running]
            records = self._storage.candidates(self._record.id, numbers)
            grace = getattr(self._optuna_storage, "grace_period", None)
            now, utc_now = datetime.now(), utcnow()  # Optuna writes datetime_start with the local clock
            for t in running:
                try:
                    rec = records.get(t.number)
                    owner = t.system_attrs.get(BEATING_ATTR)
                    gone = worker_gone(owner)
                    if rec is not None:
                        left = gone or (grace and rec.created_at is not None
                                        and (utc_now - rec.created_at).total_seconds() > grace)
                        if not left:
                            continue  # its worker is telling Optuna now
                        values = (objective_values(rec.measurement or {}, self.objectives,
                                                   optuna_latency_unit(study.metric_names))
                                  if rec.state == "COMPLETE" else None)
                        study.tell(t.number, values, state=TrialState[rec.state], skip_if_finished=True)
                        done["told"].append(t.number)
                    elif gone:
                        reason = (f"its worker stopped (process {owner.get('pid')} on {owner.get('host')} is gone) "
                                  "before the trial was recorded")
                        self._fail(study, t, reason)
                        done["failed"].append(t.number)
                    elif (grace and BEATING_ATTR not in t.system_attrs and t.datetime_start is not None
                          and (now - t.datetime_start).total_seconds() > grace):
                        reason = (f"its worker stopped before the trial's first heartbeat (started "
                                  f"{t.datetime_start.isoformat(timespec='seconds')}, grace period {grace} s)")
                        self._fail(study, t, reason)
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

    def _fail(self, study: Any, trial: Any, reason: str) -> None:
        from optuna.trial import TrialState

        self._optuna_storage.set_trial_user_attr(trial._trial_id, "error", reason)  # noqa: SLF001
        study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)

    def check_storage(self) -> None:
        """Raise :class:`~slimtune._storage_faults.StorageLost` unless the database is still
        the one this study was opened in: for a SQLite file, the same file (device and
        inode) holding this study's row."""
        from slimtune._storage_faults import StorageLost

        identity = getattr(self._db, "identity", None)
        if identity is None:
            return
        identity.check()
        row = self._storage.find_study(self.name)
        if row is None or row.id != self._record.id or row.created_at != self._record.created_at:
            raise StorageLost(f"the study database {identity.path} no longer holds this study {self.name!r} as "
                              "it was opened (its file was overwritten); nothing more was written")

    def warm_start_claims(self) -> Any:
        """This study's warm starts and their claims (a
        :class:`~slimtune.search._warm_claims.ClaimStore`: the runner claims each once)."""
        from slimtune.studies._warm_starts import StudyWarmStarts

        optuna_id = self.optuna_study._study_id  # noqa: SLF001 - the id Optuna's tables use

        def states() -> dict[int, str]:
            return self._storage.optuna_states(optuna_id, fallback=lambda: {
                t.number: t.state.name for t in self.optuna_study.get_trials(deepcopy=False)})

        return StudyWarmStarts(self._db, self._record.id, has_trials=lambda: bool(states()),
                               optuna_states=lambda numbers: {n: s for n, s in states().items() if n in set(numbers)})

    def fail_trials_of(self, owner: str, reason: str) -> list[int]:
        """Fail the RUNNING trials whose runner was given ``owner`` (or an owner that
        starts with ``owner + "@"``; :data:`~slimtune.search._heartbeat.OWNER_ATTR`), with
        ``reason``: an executor that lost that worker does not wait for the heartbeat to go
        stale.  A trial the worker recorded before it was lost is told its record instead
        (:meth:`recover_trials`).  Returns the trial numbers failed."""
        from optuna.trial import TrialState

        from slimtune.search._heartbeat import OWNER_ATTR

        study = self.optuna_study
        mine = [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
                if str(t.system_attrs.get(OWNER_ATTR, "")).split("@")[0] == owner]
        if not mine:
            return []
        recorded = self._storage.candidates(self._record.id, [t.number for t in mine])
        failed = []
        for t in mine:
            if t.number in recorded:
                continue  # recover_trials tells Optuna what the worker recorded
            self._fail(study, t, reason)
            failed.append(t.number)
        if len(failed) < len(mine):
            self.recover_trials()
        return failed

    def frontier_points(self, cost_objectives: Sequence[str]) -> list[FrontierPoint]:
        """Validation accuracy, learning curves (distillation epochs, recovery epochs)
        and measured costs of every complete candidate of a final fidelity (all
        workers; a cheap rung's result is not a finished trial's)."""
        from slimtune.search._fidelity import Fidelity

        points = []
        fidelities = self._storage.fidelities(self._record.id)
        for number, val_accuracy, info, reference, *measured in self._storage.complete_costs(self._record.id,
                                                                                             cost_objectives):
            if val_accuracy is None or any(v is None for v in measured):
                continue
            fidelity = Fidelity.from_dict(fidelities.get(number))
            if fidelity is not None and not fidelity.final:
                continue
            # a finished trial's true costs: its final measurement (its pre-training
            # latency can be far lower: the shortest path of an early-exit model)
            costs = {c: float(v) for c, v in zip(cost_objectives, measured)}
            curve = tuple(float(a) for a in (info or {}).get("val_accuracy_per_epoch") or ())
            recovery = tuple(float(a) for a in (info or {}).get("val_accuracy_per_recovery_epoch") or ())
            points.append(FrontierPoint(int(number), float(val_accuracy), costs, curve, recovery,
                                        None if reference is None else float(reference)))
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
        if outcome.fidelity is not None:
            info["fidelity"] = dict(outcome.fidelity)
        rec = CandidateRecord(
            study_id=self._record.id, study_name=self.name, trial_number=outcome.number, state=outcome.state,
            params=params, accuracy=m.accuracy if m else None,
            val_accuracy=result.val_accuracy if result is not None else None,
            test_accuracy=m.test_accuracy if m else None,
            latency_ms=m.latency_ms if m else None, size_bytes=int(m.size_bytes) if m else None,
            artifact_bytes=(len(result.artifact) if m and result.artifact is not None else None),
            macs=int(m.macs) if m else None, measurement=m.to_dict() if m else None,
            pre=({"latency_ms": result.pre.latency_ms, "size_bytes": int(result.pre.size_bytes), "macs": int(result.pre.macs),
                  "reference_latency_ms": result.pre.reference_latency_ms}
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

        extra = []
        if m is not None and result.targets:  # the study's other targets, each with the artifact timed there
            from slimtune.studies._target_views import target_records

            extra = target_records(self._record.id, outcome.number, result.targets)
        self._storage.add_candidate(rec, weights, extra, fidelity=outcome.fidelity)  # one transaction: all or nothing
        row = make_row(rec, None, objectives=self.objectives)
        row["constraints"], row["feasible"] = dict(outcome.constraints), outcome.feasible
        if row["state"] == "COMPLETE" and row["feasible"] and is_final(row):
            others = [r for r in self.trials() if r["trial"] != row["trial"] and is_final(r)]
            baseline = self.baseline_row()
            row["pareto"] = (bool(non_dominated_mask([row] + [r for r in others if r["state"] == "COMPLETE" and
                                                              (r["feasible"] or not self.constraints.active)],
                                                     self.objectives, baseline_latency_ms=baseline.get("latency_ms"))[0])
                             and not beaten_by_baseline(row, baseline, self.objectives))
        return row
