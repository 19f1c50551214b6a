"""The fast two-objective frontier agrees with the pairwise definition."""

from __future__ import annotations

import math
import random

from slimtune._dominance import dominates, loss_vector, non_dominated_mask


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


def test_any_number_of_objectives_matches_pairwise_definition():
    rng = random.Random(1)
    objectives = ("accuracy", "latency_ms", "size_bytes", "macs")
    for _ in range(200):
        k = rng.randint(1, 4)
        n = rng.randint(0, 30)
        rows = [{o: rng.choice([1.0, 2.0, rng.random(), float("nan") if rng.random() < 0.05 else 0.5])
                 for o in objectives} for _ in range(n)]
        if n > 1 and rng.random() < 0.3:
            rows[0] = dict(rows[-1])
        chosen = ("accuracy", *objectives[1:k]) if k > 1 else ("latency_ms",)
        assert non_dominated_mask(rows, chosen) == _pairwise(rows, chosen), chosen


def test_baseline_rule_compares_latency_within_each_trials_run():
    from slimtune._dominance import baseline_on_front, beaten_by_baseline_mask

    base = {"accuracy": 0.9, "latency_ms": 10.0, "size_bytes": 100}
    rows = [{"accuracy": 0.85, "latency_ms": 1.2, "reference_latency_ms": 1.0, "size_bytes": 100},  # baseline faster in its run
            {"accuracy": 0.85, "latency_ms": 1.2, "size_bytes": 100},  # no run reference: the stored 10 ms
            {"accuracy": 0.95, "latency_ms": 1.2, "reference_latency_ms": 1.0, "size_bytes": 100},  # more accurate
            {"accuracy": 0.85, "latency_ms": None, "reference_latency_ms": 1.0, "size_bytes": 100}]  # unmeasured
    assert beaten_by_baseline_mask(rows, base, ("accuracy", "latency_ms")).tolist() == [True, False, False, False]
    assert beaten_by_baseline_mask(rows, base, ("accuracy", "size_bytes")).tolist() == [True, True, False, True]
    assert beaten_by_baseline_mask(rows, None, ("accuracy", "latency_ms")).tolist() == [False] * 4
    # the baseline is on the front unless a trial beats it in that trial's own run
    assert baseline_on_front(base, rows[:2], ("accuracy", "latency_ms"))
    assert not baseline_on_front(base, [{"accuracy": 0.9, "latency_ms": 0.5, "reference_latency_ms": 1.0}],
                                 ("accuracy", "latency_ms"))


def test_front_order_follows_each_axis_direction():
    from slimtune._dominance import front_order

    # speed-up is maximized: the fastest (largest speed-up) first
    assert front_order([1.0, 3.0, 2.0], [0.9, 0.7, 0.95], x_objective="speedup").tolist() == [1, 2]
    assert front_order([1.0, 3.0, 2.0], [0.9, 0.7, 0.95], x_objective="latency_ms").tolist() == [0, 2]
