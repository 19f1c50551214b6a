"""What one trial came to (:class:`TrialOutcome`), where outcomes go (the
:class:`Recorder` the study database implements), and the small attributes written on
the Optuna trial (:func:`user_attrs`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping, Protocol, Sequence

from slimtune.search._early_stopping import FrontierPoint
from slimtune.search._measurement import Measurement

if TYPE_CHECKING:  # pragma: no cover
    from slimtune.search._backends._interface import Proposal
    from slimtune.search._pipeline import CandidateResult


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
    fidelity: dict[str, Any] | None = None  # the training it got (:class:`~slimtune.search._fidelity.Fidelity`)

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


def objective_values(measurement: "Measurement | Mapping[str, Any]", objectives: Sequence[str],
                     latency_unit: str = "ratio") -> list[float]:
    """The values Optuna is told, in the study's objective order: latency as its
    same-run ratio (``latency_ms / reference_latency_ms``) when ``latency_unit`` is
    ``"ratio"`` (:func:`slimtune._dominance.optuna_latency_unit` of the Optuna study),
    in milliseconds for studies made before.  ``measurement``: a Measurement or its dict.

    Raises:
        ValueError: a ratio is asked for and the baseline was not timed beside it.
    """
    get = measurement.get if isinstance(measurement, Mapping) else (lambda k: getattr(measurement, k))
    out = []
    for name in objectives:
        value = float(get(name))
        if name == "latency_ms" and latency_unit == "ratio":
            reference = get("reference_latency_ms")
            if not reference or not float(reference) > 0:
                raise ValueError("the latency cannot be told as a same-run ratio: no baseline was timed beside it")
            value /= float(reference)
        out.append(value)
    return out


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
    if outcome.fidelity is not None:
        attrs["fidelity"] = dict(outcome.fidelity)
    if outcome.error:
        attrs["error"] = outcome.error[-1500:]
    return attrs
