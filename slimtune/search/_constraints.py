"""The hard limits a search is given (``Constraints``) and the collapse rule, both
handed to Optuna's samplers with ``Trial.set_constraint`` (``<= 0`` is feasible).

Example:
    >>> limits = Constraints(max_latency_ms=2.0, max_accuracy_drop=0.01)
    >>> limits.values(measurement, baseline_accuracy=0.99)   # {"latency_ms": ..., "accuracy_drop": ...}
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Mapping

from slimtune.search._measurement import Measurement


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
