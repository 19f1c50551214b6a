"""Early stopping's check before any training and its checks after recovery epochs:
constructed cases, then real digits candidates through the real pipeline."""

from __future__ import annotations


import pytest

from slimtune.search._early_stopping import FrontierEarlyStopping, FrontierPoint, points_from_rows


from tests._pre import Pre


COSTS = ("latency_ms",)
RULE = FrontierEarlyStopping(accuracy_tolerance=0.01, latency_tolerance=0.0)
#: a fast point near the best accuracy, and the best (slow) point
POINTS = [FrontierPoint(0, 0.990, {"latency_ms": 0.5}), FrontierPoint(1, 0.995, {"latency_ms": 2.0})]


def test_before_training_a_candidate_a_near_best_point_already_beats_is_stopped():
    """The old rule never looked before the first epoch: a candidate no cheaper than a
    point within the tolerance of the best accuracy so far now trains for nothing."""
    reason = RULE.check(-1, None, Pre(1.0), POINTS, COSTS, epochs=4)
    assert reason and reason.startswith("early stop before training:") and "trial 0" in reason
    assert "\n" not in reason and "0.9950" in reason  # one line; the bound is the best accuracy so far
    assert RULE.reachable_before(POINTS) == pytest.approx(0.995)
    # a cheaper candidate, a check turned off, and a point too far below the best: no stop
    assert RULE.check(-1, None, Pre(0.4), POINTS, COSTS, epochs=4) is None
    assert FrontierEarlyStopping(accuracy_tolerance=0.01, latency_tolerance=0.0, pre_check=False).check(
        -1, None, Pre(1.0), POINTS, COSTS, epochs=4) is None
    far = [FrontierPoint(0, 0.980, {"latency_ms": 0.5}), POINTS[1]]
    assert RULE.check(-1, None, Pre(1.0), far, COSTS, epochs=4) is None


def test_the_bound_before_training_counts_the_baseline_and_the_margin():
    """A baseline better than every trial raises the bar (it may still be reached), so
    does ``min_margin``; with no trial and no baseline nothing can be stopped."""
    assert RULE.check(-1, None, Pre(1.0), POINTS, COSTS, epochs=4, baseline_accuracy=1.0) is None
    assert RULE.check(-1, None, Pre(1.0), POINTS, COSTS, epochs=4, baseline_accuracy=0.9)  # lower: no change
    margin = FrontierEarlyStopping(accuracy_tolerance=0.01, latency_tolerance=0.0, min_margin=0.01)
    assert margin.reachable_before(POINTS, 0.99) == pytest.approx(1.005)
    assert margin.check(-1, None, Pre(1.0), POINTS, COSTS, epochs=4) is None
    assert RULE.reachable_before([]) == float("inf")
    # the runner hands the baseline to the rule's callable
    fn = RULE.should_stop_fn(POINTS, COSTS, 4, baseline_accuracy=1.0)
    assert fn(-1, None, Pre(1.0)) is None
    assert RULE.should_stop_fn(POINTS, COSTS, 4)(-1, None, Pre(1.0))


def test_recovery_epochs_are_checked_with_their_own_prior_and_learned_curves():
    """After recovery epoch r of R the candidate may gain ``recovery_margin_per_epoch``
    per recovery epoch left; the study's recovery curves can only raise that bar."""
    rule = FrontierEarlyStopping(accuracy_tolerance=0.0, latency_tolerance=0.0, recovery_margin_per_epoch=0.02)
    fast = [FrontierPoint(0, 0.95, {"latency_ms": 0.5})]
    # epochs=4 distillation epochs, then 2 recovery epochs: epoch 4 is recovery epoch 1/2
    assert rule.reachable_in_recovery(0, 2, 0.90) == pytest.approx(0.92)
    reason = rule.check(4, 0.90, Pre(1.0), fast, COSTS, epochs=4, extra_epochs=2)
    assert reason and "after recovery epoch 1/2" in reason and "val accuracy 0.9000" in reason
    assert rule.check(4, 0.94, Pre(1.0), fast, COSTS, epochs=4, extra_epochs=2) is None  # 0.96 > 0.95
    assert rule.check(5, 0.94, Pre(1.0), fast, COSTS, epochs=4, extra_epochs=2)  # the last one: no prior left
    # a complete trial that sat at 0.90 after its first recovery epoch and finished at 0.97
    climbed = FrontierPoint(2, 0.97, {"latency_ms": 3.0}, recovery_curve=(0.90, 0.97))
    assert rule.reachable_in_recovery(0, 2, 0.90, [climbed]) == pytest.approx(0.97)
    assert rule.check(4, 0.90, Pre(1.0), fast, COSTS, epochs=4, extra_epochs=2, history=[*fast, climbed]) is None
    # recorded rows carry the recovery curve into the rule
    rows = [{"trial": 2, "state": "COMPLETE", "val_accuracy": 0.97, "latency_ms": 3.0,
             "val_accuracy_per_epoch": [0.8], "val_accuracy_per_recovery_epoch": [0.9, 0.97]}]
    assert points_from_rows(rows, COSTS)[0].recovery_curve == (0.9, 0.97)
    assert FrontierEarlyStopping.from_dict(rule.to_dict()) == rule


def _evaluator(task, baseline, **settings):
    from slimtune.search._task_space import build_space
    from slimtune.search._pipeline import EvalSettings, Evaluator

    space = build_space(task)
    return Evaluator(task, space, EvalSettings(latency_repeats=5, latency_warmup=2, **settings), baseline)


def test_real_candidate_dominated_before_training_trains_no_epoch(digits_task, digits_baseline, monkeypatch):
    """A real int8 candidate against a faster complete point at the best accuracy so far:
    stopped before any training (the trainer is never called), PRUNED-ready (no
    measurement, a one-line reason), with its pre-training costs."""
    import slimtune.search._pipeline as pipeline

    ev = _evaluator(digits_task, digits_baseline, epochs=2, finetune_epochs=1)
    calls = []
    real_train = pipeline.train
    monkeypatch.setattr(pipeline, "train", lambda *a, **k: calls.append(1) or real_train(*a, **k))
    seen = []
    rule_fn = RULE.should_stop_fn([FrontierPoint(3, 0.999, {"latency_ms": 0.0})], COSTS, 2)

    def should_stop(epoch, acc, pre):
        seen.append(epoch)
        return rule_fn(epoch, acc, pre)

    result = ev.evaluate({"quant.bits": 8}, should_stop=should_stop)
    assert seen == [-1] and calls == []
    assert result.stopped and result.stopped.startswith("early stop before training") and "trial 3" in result.stopped
    assert result.measurement is None and result.train_seconds == 0.0 and result.pre.latency_ms > 0
    assert result.info["epochs_trained"] == 0 and result.info["val_accuracy_per_epoch"] == []


@pytest.mark.parametrize("values", [{"prune.ratio": 0.5, "prune.granularity": "channel", "quant.bits": 32},
                                    {"quant.bits": 4, "quant.mode": "qat"}])
def test_real_candidate_stopped_during_recovery(digits_task, digits_baseline, values):
    """Pruning's fine-tuning and QAT report each recovery epoch (numbered after the
    distillation epochs) to ``should_stop``; a stop there ends the candidate with its
    recovery accuracies recorded.  The old pipeline never asked after a recovery epoch."""
    ev = _evaluator(digits_task, digits_baseline, epochs=1, finetune_epochs=2)
    seen = []

    def stop_at_first_recovery_epoch(epoch, acc, pre):
        seen.append((epoch, acc))
        return "early stop after recovery epoch 1/2: test" if epoch == 1 else None

    result = ev.evaluate(values, should_stop=stop_at_first_recovery_epoch)
    assert [e for e, _ in seen] == [-1, 0, 1]
    assert result.stopped == "early stop after recovery epoch 1/2: test" and result.measurement is None
    recovery = result.info["val_accuracy_per_recovery_epoch"]
    assert len(recovery) == 1 and recovery[0] == seen[-1][1] == result.val_accuracy and 0.0 < recovery[0] <= 1.0
    assert result.info["epochs_trained"] == 2 and result.train_seconds > 0

    # not stopped: every recovery epoch is checked and recorded with the complete trial
    seen.clear()
    kept = ev.evaluate(values, should_stop=lambda epoch, acc, pre: seen.append(epoch))
    assert seen == [-1, 0, 1, 2] and kept.measurement is not None
    assert len(kept.info["val_accuracy_per_recovery_epoch"]) == 2
