"""The reader side of a study: its trials as rows, the frontier, one trial as a
:class:`~slimtune.studies._candidate.Candidate`, the ``select`` rule, the dashboard.

:class:`Reading` is a part of :class:`~slimtune.studies._study.Study` (its base class,
as :class:`~slimtune.studies._recording.Recording` is): it reads the study's ``name``,
``objectives``, ``constraints``, ``optuna_study`` and ``baseline_row()``, through its
storage.  The frontier, the fingerprints and ``select`` work on every trial's figures
read in bulk (:mod:`~slimtune.studies._overview`) and read in full only the rows they
return; ``trials()`` reads every row in full.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any, Sequence

from slimtune._vocabulary import STATE_PHRASES
from slimtune.search._fidelity import is_final
from slimtune.studies._errors import NoCandidateError, StudyError
from slimtune.studies._frontier import SPLITS, Limits, no_candidate_message, select_rows
from slimtune.studies._rows import MEASUREMENT_KEYS, in_states, make_row, mark_pareto

if TYPE_CHECKING:  # pragma: no cover
    from slimtune.search._targets import Target
    from slimtune.studies._candidate import Candidate
    from slimtune.studies._overview import Overview
    from slimtune.studies._schema import StudyRecord
    from slimtune.studies._storage import StudyStorage


class Reading:
    """Trials, frontier, candidates, ``select`` and the dashboard of a study."""

    _record: "StudyRecord"
    _storage: "StudyStorage"
    _optuna_study_id: int | None

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
        return in_states(rows, states)

    def overview(self) -> "Overview":
        """Every trial's figures read at once, with the counts, fingerprints and front
        that ``slimtune show`` prints (:class:`~slimtune.studies._overview.Overview`):
        full rows are read only for the trials it prints."""
        from slimtune.studies._overview import Overview

        return Overview.read(self)

    def fingerprints(self) -> dict[str, int]:
        """Machine fingerprints of the complete trials, with their counts."""
        return self.overview().fingerprints()

    def frontier(self, *, fingerprint: str | None = None, target: str | None = None) -> list[dict]:
        """The non-dominated complete trials under the study's objectives (feasible ones
        only when the study has constraints, as in Optuna's ``best_trials``), sorted by
        the first cost objective.  Latency is compared as each trial's ratio to the
        baseline timed in its own run (``latency_ms / reference_latency_ms``).  A
        collapsed candidate (below half the baseline's accuracy) stays here, though
        Optuna's ``best_trials`` leaves it out: it is infeasible for the samplers only
        (:data:`slimtune.search._constraints.COLLAPSE_FRACTION`).

        Latencies measured on different machines are not comparable: when the trials
        carry more than one machine fingerprint a ``UserWarning`` says so; pass
        ``fingerprint=`` to keep one machine's trials.  Every trial's figures are read in
        bulk, and only the front's rows in full.  ``target`` (a study timed on several
        targets, e.g. ``"openvino:64"``): the front on that target (default the first).
        """
        if target is not None and (view := self.on_target(target)) is not self:
            return view.frontier(fingerprint=fingerprint)
        overview = self.overview()
        if fingerprint is None:
            ids = {p.get("fingerprint_id") for p in overview.complete}
            if len(ids) > 1:
                warnings.warn(f"Study {self.name!r} mixes latencies from {len(ids)} machine fingerprints "
                              f"({', '.join(sorted(map(str, ids)))}); pass fingerprint= to keep one.", UserWarning,
                              stacklevel=2)
        return overview.front(fingerprint=fingerprint)

    def candidate(self, number: int, *, target: str | None = None) -> "Candidate":
        """Trial ``number`` as a :class:`Candidate` (it must be complete); with ``target``
        as measured there (its measurement and artifact are that target's)."""
        from slimtune.studies._candidate import Candidate

        if target is not None and (view := self.on_target(target)) is not self:
            return view.candidate(number)
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
               split: str = "val", target: str | None = None) -> "Candidate":
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

        ``target`` (a study timed on several targets, e.g. ``"openvino:64"``): select on
        that target's figures (its artifact's accuracy, its latency beside the baseline
        timed there in the same run); the candidate exports the artifact timed there.

        Only results of a final fidelity are chosen: full, or training-free (rung 0:
        the untrained model, exported as measured; its row says ``fidelity`` so), never
        a cheap rung's (:mod:`slimtune.search._fidelity`).

        Raises:
            NoCandidateError: nothing fits, or nothing that fits beats the baseline; the
                message names the closest alternatives.
        """
        from slimtune.studies._candidate import Candidate

        if target is not None and (view := self.on_target(target)) is not self:
            return view.select(max_latency_ms=max_latency_ms, min_accuracy=min_accuracy, max_size_kb=max_size_kb,
                               max_artifact_kb=max_artifact_kb, split=split)
        for arg, value in (("max_latency_ms", max_latency_ms), ("max_size_kb", max_size_kb),
                           ("max_artifact_kb", max_artifact_kb)):
            if value is not None and not (value > 0):
                raise StudyError(f"`{arg}` must be positive, but got {value!r}.")
        if split not in SPLITS:
            raise StudyError(f"`split` must be one of {', '.join(SPLITS)}, but got {split!r}.")
        limits = Limits(max_latency_ms=max_latency_ms, min_accuracy=min_accuracy, max_size_kb=max_size_kb,
                        max_artifact_kb=max_artifact_kb, split=split)
        overview = self.overview()  # figures only: the chosen trial is read in full
        rows = [r for r in overview.complete if r.get(limits.accuracy) is not None and is_final(r)]
        if not rows:
            raise NoCandidateError(f"Study {self.name!r} has no complete trial yet.")
        baseline = self.baseline_row()
        fitting, better = select_rows(rows, limits, baseline=baseline, objectives=self.objectives)
        if better:
            return Candidate(self, overview.full(better[:1])[0])
        raise NoCandidateError(no_candidate_message(self.name, rows, fitting, limits, baseline))

    @property
    def targets(self) -> list["Target"]:
        """What the study's latencies are timed on, the first driving the search
        (:mod:`slimtune.search._targets`); one for a study made with one runtime."""
        from slimtune.search._targets import settings_targets

        return settings_targets(self._record.settings)

    def on_target(self, target: "str | Target | None") -> Any:
        """The study read on ``target`` (:class:`~slimtune.studies._target_views.TargetView`;
        the study itself for its first target or ``None``)."""
        from slimtune.studies._target_views import study_on_target

        return study_on_target(self, target)

    def dashboard(self, **kwargs: Any):
        """A live notebook dashboard of this study (``slimtune.widgets.StudyDashboard``;
        needs the notebook extras), opened through the opener the package root
        installs (:mod:`slimtune._viewers`): studies never import widgets."""
        from slimtune._viewers import open_dashboard

        return open_dashboard(self, **kwargs)
