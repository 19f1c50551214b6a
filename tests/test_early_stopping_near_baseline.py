"""Early stopping's near-baseline protection, the trial budget that rejections before
training do not use up, and the recovery curves the study hands the rule."""

from __future__ import annotations


import pytest

from slimtune.search._early_stopping import (
    BEFORE_TRAINING,
    FrontierEarlyStopping,
    FrontierPoint,
    rejected_before_training,
)


from tests._pre import Pre
from tests._bench import load_benchmark


COSTS = ("latency_ms",)
BASELINE = 0.99
#: a cheap point 4 points below the baseline
CHEAP = FrontierPoint(0, 0.95, {"latency_ms": 0.5})


def test_a_candidate_that_can_land_near_the_baseline_is_not_given_up_for_a_cheaper_worse_point():
    rule = FrontierEarlyStopping(accuracy_tolerance=0.05, latency_tolerance=0.0, near_baseline=0.01)
    old = FrontierEarlyStopping(accuracy_tolerance=0.05, latency_tolerance=0.0, near_baseline=None)
    # before training it may reach the baseline (0.99): CHEAP is within the 0.05 tolerance
    assert old.check(-1, None, Pre(1.0), [CHEAP], COSTS, 4, baseline_accuracy=BASELINE) is not None
    # ... but it could become the cheapest candidate within a point of the baseline: kept
    assert rule.check(-1, None, Pre(1.0), [CHEAP], COSTS, 4, baseline_accuracy=BASELINE) is None
    # once a point within a point of the baseline is no costlier, the tolerance applies again
    near = FrontierPoint(1, 0.982, {"latency_ms": 0.9})
    reason = rule.check(-1, None, Pre(1.0), [CHEAP, near], COSTS, 4, baseline_accuracy=BASELINE)
    assert reason is not None and reason.startswith(BEFORE_TRAINING) and "trial 1" in reason
    # a near point that is costlier than the candidate protects nothing: kept
    slow_near = FrontierPoint(2, 0.985, {"latency_ms": 1.5})
    assert rule.check(-1, None, Pre(1.0), [CHEAP, slow_near], COSTS, 4, baseline_accuracy=BASELINE) is None
    # a candidate that cannot reach the zone any more (0.90 after its last epoch) is stopped by CHEAP
    assert rule.check(3, 0.90, Pre(1.0), [CHEAP], COSTS, 4, baseline_accuracy=BASELINE) is not None
    # no baseline known: no zone
    assert rule.check(-1, None, Pre(1.0), [CHEAP], COSTS, 4) is not None


def test_near_baseline_round_trips_and_is_checked():
    rule = FrontierEarlyStopping(near_baseline=None)
    assert FrontierEarlyStopping.from_dict(rule.to_dict()) == rule
    assert FrontierEarlyStopping.from_dict({"accuracy_tolerance": 0.05}).near_baseline is None  # off by default
    assert FrontierEarlyStopping.from_dict({"near_baseline": 0.01}).near_baseline == 0.01
    with pytest.raises(ValueError, match="near_baseline"):
        FrontierEarlyStopping(near_baseline=-0.1)


def test_rejected_before_training_reads_study_and_replay_rows():
    assert rejected_before_training({"state": "PRUNED", "stopped_reason": f"{BEFORE_TRAINING}: x"})
    assert rejected_before_training({"state": "PRUNED", "stopped": f"{BEFORE_TRAINING}: x"})
    assert not rejected_before_training({"state": "PRUNED", "stopped_reason": "early stop after epoch 1/4: x"})
    assert not rejected_before_training({"state": "COMPLETE"})


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("frontier_ceiling")


def test_rejections_before_training_do_not_use_up_the_budget(bench):
    """slimtune's default search (real backend, real runner, real rule) answered from the
    stored digits table: 12 trials train, however many the rule rejects before training;
    counting every proposal (the replays' per-proposal budget) stops at 12 proposals."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    doc = bench.load_or_compute_ceiling()
    table, space = bench.Table(doc), bench.replay_space(doc["grid"], doc["fixed"])
    make_backend = bench._systems()["slimtune default"][0]
    rule = FrontierEarlyStopping()
    runner, recorder = _replay_runner(bench, table, space, make_backend, rule)
    rows = runner.run(n_trials=12)
    rejected = [r for r in rows if rejected_before_training(r)]
    assert rejected, "the default rule rejects some of these proposals before training"
    assert len(rows) - len(rejected) == 12 and len(rows) == 12 + len(rejected)
    runner, _ = _replay_runner(bench, table, space, make_backend, rule)
    assert len(runner.run(n_trials=12, count_rejected=True)) == 12


def test_a_sampler_stuck_on_rejections_stops_at_the_cap(bench):
    """Every proposal is beaten before training: the runner stops after 10 per trial."""
    from slimtune.search import _runner

    doc = bench.load_or_compute_ceiling()
    table, space = bench.Table(doc), bench.replay_space(doc["grid"], doc["fixed"])
    runner, recorder = _replay_runner(bench, table, space, bench._systems()["slimtune default"][0],
                                      FrontierEarlyStopping())
    unbeatable = FrontierPoint(-1, 1.0, {"latency_ms": 0.0})
    recorder.frontier_points = lambda costs: [unbeatable]
    rows = runner.run(n_trials=2)
    assert len(rows) == 2 * _runner.MAX_PROPOSALS_PER_TRIAL and all(rejected_before_training(r) for r in rows)


def _replay_runner(bench, table, space, make_backend, rule):
    import optuna

    from slimtune.search._runner import TrialRunner

    backend = make_backend(space, 0)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=backend.optuna_sampler())
    recorder = bench.ReplayRecorder()
    runner = TrialRunner(study=study, backend=backend, evaluator=bench.ReplayEvaluator(table),
                         objectives=("accuracy", "latency_ms"), recorder=recorder, early_stopping=rule,
                         epochs=int(table.doc["epochs"]), recovery_epochs=int(table.doc["recovery_epochs"]),
                         fixed=space.fixed, baseline_accuracy=float(table.doc["baseline_val_accuracy"]))
    return runner, recorder


def test_the_study_hands_the_rule_each_trials_recovery_curve(tmp_path):
    """A complete channel-pruned candidate's validation accuracy after each recovery
    epoch reaches the rule through the study (it was dropped before)."""
    from slimtune import Study

    fixed = {"prune.ratio": 0.5, "prune.granularity": "channel", "quant.bits": 8, "quant.mode": "ptq"}
    study = Study.create_or_load("rec", storage=f"sqlite:///{tmp_path / 'rec.db'}", task="digits", seed=0,
                                 settings={"epochs": 1, "latency_repeats": 5, "latency_warmup": 2,
                                           "calibration_size": 64, "finetune_epochs": 2},
                                 fixed=fixed, early_stopping=True)
    try:
        # a costly point: the rule runs its checks (which read the recovery epochs) and keeps it
        study.frontier_points = lambda costs: [FrontierPoint(-1, 0.5, {c: 1e12 for c in costs})]
        (row,) = study.optimize(n_trials=1, progress=False, warm_start=False)
        assert row["state"] == "COMPLETE", row.get("error")
        del study.frontier_points
        (point,) = study.frontier_points(COSTS)
        assert len(point.recovery_curve) == 2 and all(0.0 <= a <= 1.0 for a in point.recovery_curve)
        assert point.curve == tuple(row["val_accuracy_per_epoch"])
    finally:
        study.close()
