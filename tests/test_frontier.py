"""The fast two-objective frontier agrees with the pairwise definition."""

from __future__ import annotations

import math
import random

from slimtune.studies._frontier import dominates, loss_vector, non_dominated_mask


def _pairwise(rows, objectives):
    losses = []
    for r in rows:
        v = loss_vector(r, objectives)
        losses.append(None if any(math.isnan(x) for x in v) else v)
    valid = [v for v in losses if v is not None]
    return [v is not None and not any(dominates(w, v) for w in valid) for v in losses]


def test_two_objective_sweep_matches_pairwise_definition():
    rng = random.Random(0)
    for _ in range(300):
        n = rng.randint(0, 40)
        rows = [{"accuracy": rng.choice([0.5, 0.6, rng.random()]), "latency_ms": rng.choice([1.0, 2.0, 3 * rng.random()])}
                for _ in range(n)]
        if n and rng.random() < 0.2:
            rows[0]["accuracy"] = float("nan")
        if n > 1 and rng.random() < 0.3:
            rows[1] = dict(rows[-1])  # exact ties are all kept
        objectives = ("accuracy", "latency_ms")
        assert non_dominated_mask(rows, objectives) == _pairwise(rows, objectives)


def test_three_objectives_still_exact():
    rows = [{"accuracy": 0.9, "latency_ms": 1.0, "size_bytes": 5}, {"accuracy": 0.9, "latency_ms": 1.0, "size_bytes": 4},
            {"accuracy": 0.8, "latency_ms": 0.5, "size_bytes": 9}]
    assert non_dominated_mask(rows, ("accuracy", "latency_ms", "size_bytes")) == [False, True, True]
