"""The benchmarks' hypervolume of an (accuracy, relative cost) front.

Reference point: accuracy 0.5 and 1.2x the baseline's cost (latency timed in the same
run, or MACs); the value is normalised by the box (1.0 - 0.5) x 1.2, so 1.0 would be
a perfect, free model.  Dominance and the sweep are :mod:`slimtune._dominance`'s.
"""

from __future__ import annotations

from typing import Iterable, Sequence

ACCURACY_REF = 0.5
LATENCY_REF = 1.2  # x the baseline's latency (or MACs, or size)


def normalised_hypervolume(points: Iterable[Sequence[float]], accuracy_ref: float = ACCURACY_REF) -> float:
    """Normalised hypervolume of ``(accuracy, cost / baseline cost, ...)`` points (one
    or more relative costs, each with the reference 1.2); 0 without points.
    ``accuracy_ref`` moves the accuracy reference (and the normalising box with it)."""
    from slimtune._dominance import hypervolume

    losses = [(-float(accuracy), *(float(c) for c in costs)) for accuracy, *costs in points]
    if not losses:
        return 0.0
    n = len(losses[0]) - 1
    return hypervolume(losses, (-accuracy_ref, *(LATENCY_REF,) * n)) / ((1.0 - accuracy_ref) * LATENCY_REF ** n)
