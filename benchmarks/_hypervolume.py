"""The benchmarks' hypervolume of an (accuracy, relative cost) front.

Reference point: accuracy 0.5 and 1.2x the baseline's cost (latency timed in the same
run, or MACs); the value is normalised by the box (1.0 - 0.5) x 1.2, so 1.0 would be
a perfect, free model.  Dominance and the sweep are :mod:`slimtune.studies._frontier`'s.
"""

from __future__ import annotations

from typing import Iterable

ACCURACY_REF = 0.5
LATENCY_REF = 1.2  # x the baseline's latency (or MACs)


def normalised_hypervolume(points: Iterable[tuple[float, float]]) -> float:
    """Normalised hypervolume of ``(accuracy, cost / baseline cost)`` points."""
    from slimtune.studies._frontier import hypervolume

    losses = [(-float(accuracy), float(cost)) for accuracy, cost in points]
    return hypervolume(losses, (-ACCURACY_REF, LATENCY_REF)) / ((1.0 - ACCURACY_REF) * LATENCY_REF)
