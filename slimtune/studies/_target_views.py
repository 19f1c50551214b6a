"""A study seen on one of its targets: the same trials with that target's figures,
its baseline, its front, ``select`` on its same-run ratios, and its artifact.

A study timed on several targets (:mod:`slimtune.search._targets`) keeps the first
target's measurement in each candidate record (what the search saw) and the others'
in ``slimtune_target_measurements``.  :class:`TargetView` is the study as read on one
other target: every ``Study`` attribute passes through, but ``trials()``,
``baseline``, ``frontier()``, ``select()`` and ``candidate()`` give that target's
figures (accuracy of the artifact run there, its latency beside the baseline timed
there in the same run, its artifact's length); a complete trial that could not be
measured there is a FAIL on that target, with the reason; a trial stopped early has no
costs there (its costs before training were timed on the first target only).  Constraints and
feasibility are the first target's (the search's).

Example:
    >>> view = study.on_target("openvino:64")
    >>> view.frontier()[0]["latency_ms"]          # timed on OpenVINO at batch 64
    >>> view.select(min_accuracy=0.95).export("model.onnx")   # the OpenVINO artifact
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from slimtune.search._measurement import Measurement, measurement_target, same_run_speedup
from slimtune.search._targets import Target, TargetResult
from slimtune.studies._candidate import Candidate
from slimtune.studies._errors import StudyError
from slimtune.studies._reading import Reading
from slimtune.studies._rows import baseline_row, in_states, mark_pareto
from slimtune.studies._schema import TargetMeasurementRecord

if TYPE_CHECKING:  # pragma: no cover
    from slimtune.studies._overview import Overview
    from slimtune.studies._study import Study

#: The row fields a target's measurement replaces.
TARGET_FIELDS = ("accuracy", "val_accuracy", "test_accuracy", "latency_ms", "reference_latency_ms", "speedup",
                 "size_bytes", "artifact_bytes", "latency_p95_ms", "latency_kind", "kernel_bits", "runtime", "target",
                 "fingerprint_id", "exit_rates", "flags", "timed_on")


# -- the rows of the table ----------------------------------------------------------------------
def target_records(study_id: int, trial_number: int, results: Sequence[TargetResult]) -> list[TargetMeasurementRecord]:
    """The rows of one trial's other targets (written with its candidate record)."""
    out = []
    for r in results:
        m = r.measurement
        out.append(TargetMeasurementRecord(
            study_id=study_id, trial_number=trial_number, target=r.target,
            accuracy=m.accuracy if m else None, test_accuracy=m.test_accuracy if m else None,
            latency_ms=m.latency_ms if m else None, reference_latency_ms=m.reference_latency_ms if m else None,
            size_bytes=int(m.size_bytes) if m else None, artifact_bytes=len(r.artifact) if m and r.artifact else None,
            measurement=m.to_dict() if m else None, error=r.error, artifact=r.artifact if m else None,
            artifact_format=r.artifact_format if m else None,
            artifact_sha256=hashlib.sha256(r.artifact).hexdigest() if m and r.artifact else None))
    return out


def on_target(row: Mapping[str, Any], record: Any, target: Target) -> dict[str, Any]:
    """``row`` (a trial row of the first target) with ``target``'s figures from its
    ``record``; a complete trial without them there is a FAIL there, with the reason."""
    out = dict(row)
    if out.get("state") != "COMPLETE":  # its costs before training were the first target's only
        out.update(pre=None, latency_ms=None, reference_latency_ms=None, speedup=None)
        return out
    m = (record.measurement if record is not None else None) or {}
    if record is None or not m:
        why = getattr(record, "error", None) or "no measurement was stored"
        out.update({k: None for k in TARGET_FIELDS}, state="FAIL", pareto=False,
                   error=f"not measured on {target.key}: {why}", flags=[])
        return out
    out.update(accuracy=record.accuracy, val_accuracy=record.accuracy, test_accuracy=record.test_accuracy,
               latency_ms=record.latency_ms, reference_latency_ms=record.reference_latency_ms,
               speedup=same_run_speedup(record.reference_latency_ms, record.latency_ms),
               size_bytes=record.size_bytes, artifact_bytes=record.artifact_bytes,
               latency_p95_ms=m.get("latency_p95_ms"), latency_kind=m.get("latency_kind"),
               kernel_bits=m.get("kernel_bits"), runtime=m.get("runtime"), target=measurement_target(m),
               fingerprint_id=m.get("fingerprint_id"), exit_rates=m.get("exit_rates"), flags=list(m.get("flags") or []),
               timed_on={**(out.get("timed_on") or {}), "runtime": m.get("runtime"), "precision": m.get("precision"),
                         "threads": m.get("threads"), "batch_size": m.get("batch_size")})
    return out


# -- the study on one target ------------------------------------------------------------------
class TargetView:
    """A study read on one target other than its first (see the module).  Every other
    attribute is the study's own."""

    #: no bulk reader: a live view (``TrialFeed``) reads it through :meth:`trials`
    _storage = None

    def __init__(self, study: "Study", target: Target) -> None:
        self._study = study
        self.target = target

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)

    @property
    def baseline(self) -> Measurement:
        """The baseline measured on this target when the study was created."""
        stored = (self._study._record.baseline.get("targets") or {}).get(self.target.key)  # noqa: SLF001
        if not stored:
            raise StudyError(f"Study {self._study.name!r} has no baseline measured on {self.target.key}.")
        return Measurement.from_dict(stored)

    def baseline_row(self, rows: Sequence[Mapping[str, Any]] | None = None) -> dict[str, Any]:
        return baseline_row(self.baseline.to_dict(), rows, self.objectives)

    def trials(self, *, states: Sequence[str] | None = None) -> list[dict]:
        """Every trial as a row with this target's figures; ``pareto`` marks this target's front."""
        study = self._study
        records = study._storage.target_figures(study._record.id, self.target.key)  # noqa: SLF001
        rows = [on_target(r, records.get(r["trial"]), self.target) for r in study.trials()]
        mark_pareto(rows, self.objectives, feasible_only=self.constraints.active, baseline=self.baseline_row())
        return in_states(rows, states)

    def overview(self) -> "Overview":
        from slimtune.studies._overview import Overview

        return Overview.of_rows(self, self.trials())

    def fingerprints(self) -> dict[str, int]:
        return self.overview().fingerprints()

    def frontier(self, *, fingerprint: str | None = None) -> list[dict]:
        return Reading.frontier(self, fingerprint=fingerprint)  # type: ignore[arg-type]

    def select(self, **limits: Any) -> Candidate:
        """``Study.select`` on this target's figures and same-run ratios."""
        cand = Reading.select(self, **limits)  # type: ignore[arg-type]
        return TargetCandidate(self, cand.row)

    def candidate(self, number: int) -> Candidate:
        cand = Reading.candidate(self, number)  # type: ignore[arg-type]
        return TargetCandidate(self, cand.row)

    def candidate_of(self, row: Mapping[str, Any]) -> Candidate:
        """A complete trial ``row`` of this view as a candidate on this target."""
        return TargetCandidate(self, dict(row))

    def __repr__(self) -> str:
        return f"TargetView({self._study.name!r}, target={self.target.key!r})"


class TargetCandidate(Candidate):
    """A complete trial as measured on one of its study's other targets: its
    measurement and artifact are that target's (``export`` writes the bytes timed there)."""

    study: TargetView

    def _record(self, *, with_weights: bool = False) -> Any:
        real = self.study._study  # noqa: SLF001 - the study's own reader (the view has none)
        return Candidate._record(Candidate(real, self.row), with_weights=with_weights)  # noqa: SLF001

    def _target_record(self) -> Any:
        study = self.study._study  # noqa: SLF001
        records = study._storage.target_figures(study._record.id, self.study.target.key, self.trial)  # noqa: SLF001
        return records.get(self.trial)

    @property
    def measurement(self) -> Measurement:
        rec = self._target_record()
        return Measurement.from_dict((rec.measurement if rec is not None else None) or {})

    @property
    def artifact_format(self) -> str:
        from slimtune.search._export import FORMATS

        return FORMATS.get(self.study.target.runtime, "onnx")

    def artifact(self) -> tuple[bytes, str]:
        """The bytes timed on this target and their format."""
        study = self.study._study  # noqa: SLF001
        found = study._storage.target_artifact(study._record.id, self.trial, self.study.target.key)  # noqa: SLF001
        if found is None:
            raise StudyError(f"Trial {self.trial} of study {study.name!r} has no artifact stored for "
                             f"{self.study.target.key}.")
        return found

    def __repr__(self) -> str:
        return f"{super().__repr__()[:-1]}, target={self.study.target.key!r})"


def study_on_target(study: "Study", spec: "str | Target | None") -> "Study | TargetView":
    """``study`` read on the target ``spec`` names (``None`` or the first target: the
    study itself)."""
    from slimtune.search._targets import TargetError, find_target

    targets = study.targets
    if spec is None:
        return study
    try:
        target = find_target(spec, targets, study=study.name)
    except TargetError as exc:
        raise StudyError(str(exc)) from None
    return study if target == targets[0] else TargetView(study, target)
