"""The frontier early-stopping rule: constructed cases, then a real candidate."""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass

import pytest

from slimtune.search._early_stopping import (
    FrontierEarlyStopping,
    FrontierPoint,
    frontier_points_only,
    points_from_rows,
    resolve_early_stopping,
)


from tests._pre import Pre


#: the distillation-epoch checks alone (the check before training has tests of its own)
RULE = FrontierEarlyStopping(min_margin=0.02, margin_per_epoch=0.05, accuracy_tolerance=0.0, latency_tolerance=0.2,
                             pre_check=False)


# (tests/conftest.py trains with one torch thread)
FRONT = [FrontierPoint(0, 0.95, {"latency_ms": 1.0}), FrontierPoint(1, 0.80, {"latency_ms": 0.5})]


def test_margin_shrinks_with_epochs_left():
    assert RULE.margin(0, 4) == pytest.approx(0.02 + 3 * 0.05)
    assert RULE.margin(2, 4) == pytest.approx(0.07)
    assert RULE.margin(3, 4) == pytest.approx(0.02)
    assert RULE.margin(9, 4) == pytest.approx(0.02)  # never below min_margin
    assert FrontierEarlyStopping().margin(0, 4, extra_epochs=6) == 0.0  # the default: no prior margin
    assert FrontierEarlyStopping().lowest_bar(4) == pytest.approx(-0.01)  # a 0.01 accuracy tolerance


def test_learned_bound_gives_the_best_outcome_of_trials_no_better_at_that_epoch():
    # a complete trial sat at 0.38 after its first epoch (of 2) and finished at 0.96
    steep = [FrontierPoint(0, 0.96, {"latency_ms": 1.0}, curve=(0.38, 0.95))]
    assert RULE.reachable(0, 2, 0.40, steep) == pytest.approx(0.98)  # 0.38 <= 0.40 + slack
    assert RULE.reachable(0, 2, 0.30, steep) == pytest.approx(0.30 + 0.07)  # 0.38 > 0.35: prior only
    assert RULE.reachable(0, 3, 0.40, steep) == pytest.approx(0.40 + 0.12)  # other epochs: curve ignored
    assert dataclasses.replace(RULE, learn_margin=False).reachable(0, 2, 0.40, steep) == pytest.approx(0.47)
    good = [FrontierPoint(1, 0.97, {"latency_ms": 1.0})]
    assert RULE.check(0, 0.40, Pre(2.0), good, ("latency_ms",), epochs=2, history=steep) is None
    assert dataclasses.replace(RULE, learn_margin=False).check(0, 0.40, Pre(2.0), good, ("latency_ms",), epochs=2)
    # trials that were as bad and stayed bad do not protect the candidate
    flat = [FrontierPoint(2, 0.50, {"latency_ms": 3.0}, curve=(0.15, 0.45))]
    assert RULE.reachable(0, 2, 0.20, flat) == pytest.approx(0.52)
    assert RULE.check(0, 0.20, Pre(2.0), good, ("latency_ms",), epochs=2, history=flat)


def test_learning_never_stops_more_than_the_prior():
    rng = random.Random(1)
    prior = dataclasses.replace(RULE, learn_margin=False)
    for _ in range(300):
        epochs = rng.randint(1, 4)
        points = [FrontierPoint(i, rng.random(), {"latency_ms": rng.uniform(0.1, 2.0)},
                                tuple(sorted(rng.random() for _ in range(epochs)))) for i in range(rng.randint(1, 8))]
        epoch, acc, pre = rng.randrange(epochs), rng.random(), Pre(rng.uniform(0.1, 2.0))
        if RULE.check(epoch, acc, pre, points, ("latency_ms",), epochs):
            assert prior.check(epoch, acc, pre, points, ("latency_ms",), epochs)


def test_latency_tolerance():
    point = [FrontierPoint(0, 0.99, {"latency_ms": 1.0})]
    assert RULE.check(1, 0.5, Pre(1.15), point, ("latency_ms",), epochs=2) is None  # within 20% noise
    assert RULE.check(1, 0.5, Pre(1.25), point, ("latency_ms",), epochs=2)


def test_hopeless_candidate_is_stopped():
    # as slow as trial 0 and far less accurate even with every epoch still to come
    reason = RULE.check(0, 0.40, Pre(1.2), FRONT, ("latency_ms",), epochs=4)
    assert reason and "trial 0" in reason and "epoch 1/4" in reason and "can reach 0.5700" in reason
    # faster than trial 0 but slower than trial 1, and clearly worse than trial 1
    assert "trial 1" in RULE.check(3, 0.60, Pre(0.7), FRONT, ("latency_ms",), epochs=4)


def test_candidate_within_margin_or_cheaper_is_not_stopped():
    # within the margin of the no-costlier point
    assert RULE.check(3, 0.94, Pre(1.2), FRONT, ("latency_ms",), epochs=4) is None
    assert RULE.check(0, 0.80, Pre(1.2), FRONT, ("latency_ms",), epochs=4) is None  # 0.80 + 0.17 > 0.95
    # cheaper than every frontier point: never stopped, however inaccurate
    assert RULE.check(3, 0.01, Pre(0.1), FRONT, ("latency_ms",), epochs=4) is None
    # no frontier yet
    assert RULE.check(3, 0.01, Pre(5.0), [], ("latency_ms",), epochs=4) is None


def test_every_cost_must_be_no_higher():
    front = [FrontierPoint(0, 0.99, {"latency_ms": 1.0, "size_bytes": 500})]
    assert RULE.check(3, 0.5, Pre(2.0, size_bytes=400), front, ("latency_ms", "size_bytes"), epochs=4) is None
    assert RULE.check(3, 0.5, Pre(2.0, size_bytes=600), front, ("latency_ms", "size_bytes"), epochs=4)


def test_never_stops_a_candidate_that_reaches_the_frontier():
    """Randomised: a candidate whose final validation accuracy puts it on the frontier,
    and which gains at most ``margin_per_epoch`` per remaining epoch, is never stopped."""
    rng = random.Random(0)
    for _ in range(500):
        epochs = rng.randint(1, 6)
        points = [FrontierPoint(i, rng.random(), {"latency_ms": rng.uniform(0.1, 2.0)}) for i in range(rng.randint(1, 12))]
        latency = rng.uniform(0.1, 2.0)
        cheaper = [p.val_accuracy for p in points if p.costs["latency_ms"] <= latency]
        final = max(cheaper, default=0.0) + rng.uniform(0.0, 0.05)  # on the frontier at the end
        curve = [final]
        for _ in range(epochs - 1):  # earlier epochs: lower by at most margin_per_epoch each
            curve.insert(0, curve[0] - rng.uniform(0.0, RULE.margin_per_epoch))
        for epoch, acc in enumerate(curve):
            assert RULE.check(epoch, acc, Pre(latency), points, ("latency_ms",), epochs) is None


def test_should_stop_fn_uses_only_the_front():
    points = [FrontierPoint(0, 0.9, {"latency_ms": 1.0}), FrontierPoint(1, 0.8, {"latency_ms": 2.0})]
    assert [p.trial for p in frontier_points_only(points, ("latency_ms",))] == [0]
    fn = RULE.should_stop_fn(points, ("latency_ms",), epochs=1)
    assert fn(0, 0.5, Pre(3.0)) and fn(0, 0.89, Pre(3.0)) is None
    # learned bounds come from every point's curve, dominated ones included
    curved = points + [FrontierPoint(2, 0.95, {"latency_ms": 3.0}, curve=(0.45,))]
    assert RULE.should_stop_fn(curved, ("latency_ms",), epochs=1)(0, 0.5, Pre(3.0)) is None  # may reach 0.97


def test_points_from_rows_use_validation_accuracy_of_complete_trials():
    rows = [{"trial": 0, "state": "COMPLETE", "accuracy": 0.99, "val_accuracy": 0.9, "latency_ms": 1.0,
             "val_accuracy_per_epoch": [0.8]},
            {"trial": 1, "state": "PRUNED", "accuracy": None, "val_accuracy": 0.5, "latency_ms": None},
            {"trial": 2, "state": "COMPLETE", "accuracy": 0.9, "val_accuracy": None, "latency_ms": 1.0}]
    assert points_from_rows(rows, ("latency_ms",)) == [FrontierPoint(0, 0.9, {"latency_ms": 1.0}, (0.8,))]


def test_resolve_and_serialise():
    assert resolve_early_stopping(None) == FrontierEarlyStopping()
    assert resolve_early_stopping(False) is None
    assert FrontierEarlyStopping.from_dict(RULE.to_dict()) == RULE
    with pytest.raises(ValueError):
        FrontierEarlyStopping(min_margin=-0.1)


def test_real_candidate_stopped_or_kept(digits_task, digits_baseline):
    """A real candidate whose architecture must be retrained (every conv made
    depthwise-separable) against a no-costlier point it cannot reach is stopped after
    its first epoch; the same candidate is kept when every frontier point is costlier.

    (The rule sees the validation accuracy of the architecture being distilled, before
    pruning and quantization, which only ever come after training.)"""
    from slimtune.search._task_space import build_space
    from slimtune.search._pipeline import EvalSettings, Evaluator

    space = build_space(digits_task)
    ev = Evaluator(digits_task, space, EvalSettings(epochs=2, latency_repeats=5, latency_warmup=2), digits_baseline)
    values = {name: True for name in space.to_dict() and [p.name for p in space.params] if name.startswith("dsconv.")}
    assert values, "digits' model has eligible convs"
    seen = []

    def spy(rule_fn):
        def should_stop(epoch, acc, pre):
            if epoch >= 0:  # -1: the check before training
                seen.append((epoch, acc))
            return rule_fn(epoch, acc, pre)
        return should_stop

    unreachable = [FrontierPoint(7, 1.0, {"latency_ms": 0.0})]
    result = ev.evaluate(values, should_stop=spy(RULE.should_stop_fn(unreachable, ("latency_ms",), epochs=2)))
    assert RULE.reachable(0, 2, seen[0][1]) < 1.0, "the first epoch leaves the candidate short of the point"
    assert result.stopped and "trial 7" in result.stopped and "epoch 1/2" in result.stopped
    assert result.measurement is None and result.pre is not None and result.pre.latency_ms > 0
    seen.clear()
    costly = [FrontierPoint(7, 1.0, {"latency_ms": 1e9})]
    kept = ev.evaluate(values, should_stop=spy(RULE.should_stop_fn(costly, ("latency_ms",), epochs=2)))
    assert kept.stopped is None and kept.measurement is not None and len(seen) == 2


def test_recovery_epochs_after_distillation_widen_the_prior():
    from slimtune.search._runner import TrialRunner

    assert RULE.margin(1, 2, extra_epochs=3) == pytest.approx(0.02 + 3 * 0.05)
    # 0.56 after the last distillation epoch, 3 recovery epochs to come: not stopped
    good = [FrontierPoint(1, 0.70, {"latency_ms": 1.0})]
    assert RULE.check(1, 0.56, Pre(2.0), good, ("latency_ms",), epochs=2, extra_epochs=3) is None
    assert RULE.check(1, 0.56, Pre(2.0), good, ("latency_ms",), epochs=2)
    runner = TrialRunner(study=None, backend=None, evaluator=None, objectives=("accuracy", "latency_ms"),
                         recorder=None, recovery_epochs=3, fixed={"quant.bits": 8})
    assert runner.recovery_after_distillation({"prune.ratio": 0.0, "quant.mode": "ptq"}) == 0
    assert runner.recovery_after_distillation({"prune.ratio": 0.3, "quant.mode": "ptq"}) == 3
    assert runner.recovery_after_distillation({"prune.ratio": 0.3, "quant.mode": "qat"}) == 6
    # QAT runs below 16 bits only: a 16-bit "qat" candidate has nothing to recover
    assert runner.recovery_after_distillation({"prune.ratio": 0.0, "quant.mode": "qat", "quant.bits": 16}) == 0


def test_accuracy_tolerance_stops_a_costlier_candidate_that_could_only_tie():
    """Accuracy saturates (digits: 0.99 after one epoch, 0.994-0.997 at the end): a
    candidate that can at most tie a faster point is stopped only with a tolerance."""
    strict = FrontierEarlyStopping(min_margin=0.0, margin_per_epoch=0.0, learn_margin=False, accuracy_tolerance=0.0,
                                   latency_tolerance=0.2, pre_check=False)
    tolerant = dataclasses.replace(strict, accuracy_tolerance=0.01)
    fast = [FrontierPoint(0, 0.994, {"latency_ms": 0.6})]
    assert strict.check(0, 0.994, Pre(1.0), fast, ("latency_ms",), epochs=4) is None
    reason = tolerant.check(0, 0.994, Pre(1.0), fast, ("latency_ms",), epochs=4)
    assert reason and "0.01 tolerance" in reason and "trial 0" in reason
    # never a cheaper candidate, and never one that can still pass the point by more than the tolerance
    assert tolerant.check(0, 0.994, Pre(0.7), fast, ("latency_ms",), epochs=4) is None
    wider = dataclasses.replace(tolerant, margin_per_epoch=0.01)
    assert wider.check(0, 0.980, Pre(1.0), fast, ("latency_ms",), epochs=4, extra_epochs=3) is None  # may reach 0.98 + 0.06
    # the runner skips the pre-measurement only when no point can pass the lowest bar
    assert tolerant.lowest_bar(4) == pytest.approx(-0.01)
    # ... after the last recovery epoch too (the prior per distillation epoch is spent by then)
    assert FrontierEarlyStopping(min_margin=0.02, margin_per_epoch=0.2, accuracy_tolerance=0.0).lowest_bar(
        4, extra_epochs=3) == pytest.approx(0.02)
    assert FrontierEarlyStopping.from_dict(tolerant.to_dict()) == tolerant
    with pytest.raises(ValueError, match="accuracy_tolerance"):
        FrontierEarlyStopping(accuracy_tolerance=-0.01)
