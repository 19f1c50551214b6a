"""The frontier-ceiling benchmark's replay machinery (benchmarks/frontier_ceiling.py):
a tiny synthetic table replayed through the real backends and trial runner, and the
stored ceiling checked against its own rows and this machine's fingerprint schema."""

from __future__ import annotations

import json

import pytest
from tests._bench import load_benchmark

@pytest.fixture(scope="module")
def bench():
    return load_benchmark("frontier_ceiling")


GRID = {"prune.ratio": [0.0, 0.7], "quant.bits": [32, 8]}
#: (prune.ratio, bits) -> (val accuracy, test accuracy, latency ratio, curve)
SYNTHETIC = {
    (0.0, 32): (0.99, 0.98, 1.0, [0.90, 0.95, 0.98, 0.99]),
    (0.0, 8): (0.98, 0.97, 0.6, [0.90, 0.95, 0.97, 0.98]),
    (0.7, 32): (0.90, 0.91, 0.5, [0.30, 0.60, 0.85, 0.90]),
    (0.7, 8): (0.60, 0.62, 0.7, [0.20, 0.30, 0.40, 0.50]),  # dominated by (0.0, 8)
}


def synthetic_doc(bench) -> dict:
    rows = []
    for (ratio, bits), (val, test, lat, curve) in SYNTHETIC.items():
        rows.append({"params": {"prune.ratio": ratio, "quant.bits": bits}, "val_accuracy": val, "test_accuracy": test,
                     "latency_ratio": lat, "macs": 1000, "size_bytes": 100, "val_accuracy_per_epoch": curve,
                     "pre": {"latency_ms": lat, "macs": 1000, "size_bytes": 100, "latency_ratio": lat},
                     "pre_seconds": 0.5, "pre_cpu_seconds": 0.4, "epoch_seconds": [1.5, 2.5, 3.5, 4.5],
                     "epoch_cpu_seconds": [1.0, 2.0, 3.0, 4.0], "train_seconds": 7.0, "total_seconds": 8.0,
                     "total_cpu_seconds": 6.0})
    return {"grid": GRID, "fixed": dict(bench.FIXED), "epochs": 4, "recovery_epochs": 3, "configurations": rows,
            "frontier": bench.frontier_keys(rows), "ceiling_hypervolume": bench.table_hypervolume(rows)}


def test_true_frontier_and_hypervolume_of_a_synthetic_table(bench):
    doc = synthetic_doc(bench)
    assert doc["frontier"] == [json.dumps([0.0, 32]), json.dumps([0.0, 8]), json.dumps([0.7, 32])]
    # by hand: boxes to accuracy 0.5 / latency 1.2, normalised by 0.5 x 1.2
    by_hand = ((0.98 - 0.5) * (1.2 - 1.0) + (0.97 - 0.5) * (1.0 - 0.6) + (0.91 - 0.5) * (0.6 - 0.5)) / 0.6
    assert doc["ceiling_hypervolume"] == pytest.approx(by_hand, rel=1e-12)


def test_snap_to_the_nearest_level(bench):
    assert bench.snap({"prune.ratio": 0.34, "quant.bits": 8}, GRID) == {"prune.ratio": 0.0, "quant.bits": 8}
    assert bench.snap({"prune.ratio": 0.36, "quant.bits": 32}, GRID) == {"prune.ratio": 0.7, "quant.bits": 32}
    assert bench.snap({"prune.ratio": 0.9, "quant.bits": 16}, GRID) == {"prune.ratio": 0.7, "quant.bits": 8}
    with pytest.raises(ValueError, match="prune.granularity"):
        bench.snap({"prune.granularity": "weight"}, {"prune.granularity": ["channel"]})


def test_a_full_budget_replay_reaches_the_ceiling(bench):
    doc = synthetic_doc(bench)
    table = bench.Table(doc)
    space = bench.replay_space(GRID, doc["fixed"])
    assert [p.name for p in space.searched] == list(GRID)
    assert space["prune.ratio"].high == 0.7 and space["quant.bits"].choices == (32, 8)
    make, _ = bench._systems()["optuna random"]
    rows = bench.replay(table, space, make, seed=0, n_trials=24)
    assert len({r["key"] for r in rows}) == 4
    curve = bench.hv_curve(rows, doc["ceiling_hypervolume"])
    assert curve[-1] == pytest.approx(1.0, abs=1e-12)
    assert all(a <= b + 1e-12 for a, b in zip(curve, curve[1:]))  # a front only grows
    summary = bench.summarize_run(rows, doc["ceiling_hypervolume"], 24)
    # without early stopping the runner never pre-measures: each trial costs total - pre
    assert summary["train_s"] == pytest.approx(24 * 7.0) and summary["cpu_s"] == pytest.approx(24 * (6.0 - 0.4))
    assert summary["to95"] == bench.trials_to_reach(curve, 0.95) <= 24


def test_early_stopping_is_replayed_on_the_stored_curve(bench):
    from slimtune.search._early_stopping import FrontierEarlyStopping, FrontierPoint

    table = bench.Table(synthetic_doc(bench))
    rule = FrontierEarlyStopping(min_margin=0.0, margin_per_epoch=0.05, learn_margin=False, pre_check=False)
    fast = FrontierPoint(0, 0.98, {"latency_ms": 0.4}, (0.9, 0.95, 0.97, 0.98))
    # (0.7, 8): 0.20 after epoch 1, may reach 0.20 + 0.05 * (3 + 6) < 0.98 of a faster trial
    should_stop = rule.should_stop_fn([fast], ("latency_ms",), 4, extra_epochs=6)
    result = bench.ReplayEvaluator(table).evaluate({"prune.ratio": 0.7, "quant.bits": 8}, should_stop=should_stop)
    assert result.stopped and "after epoch 1/4" in result.stopped
    assert result.total_seconds == 1.5 and result.train_seconds == pytest.approx(1.0)
    assert result.info["cpu_seconds"] == 1.0 and result.measurement is None
    # (0.0, 32) may reach more than the faster trial: it runs to the end and pays the pre-measurement too
    result = bench.ReplayEvaluator(table).evaluate({"prune.ratio": 0.0, "quant.bits": 32}, should_stop=should_stop)
    assert not result.stopped and result.total_seconds == 8.0 and result.measurement.test_accuracy == 0.98


def test_the_stored_ceiling_matches_its_rows_and_the_fingerprint_schema(bench):
    doc = json.loads(bench.CEILING_FILE.read_text())
    assert bench.check_ceiling(doc) == []
    assert doc["frontier"] and 0 < doc["ceiling_hypervolume"] <= 1
    table = bench.Table(doc)
    assert len(table.rows) == len(bench.grid_points(doc["grid"])) == len(doc["configurations"])
    families = {name.split(".", 1)[0] for name in doc["grid"]}
    assert families == {"dsconv", "lowrank", "exits", "distill", "prune", "quant"}
    for row in doc["configurations"]:
        assert len(row["val_accuracy_per_epoch"]) == len(row["epoch_seconds"]) == doc["epochs"]
        assert row["pre_seconds"] < row["epoch_seconds"][0] <= row["total_seconds"]
    # a corrupted copy is caught
    bad = json.loads(json.dumps(doc))
    bad["ceiling_hypervolume"] *= 1.01
    bad["fingerprint"]["cpu"] = "another"
    problems = bench.check_ceiling(bad)
    assert any("hypervolume" in p for p in problems) and any("fingerprint_id" in p for p in problems)


def test_a_stop_before_training_is_replayed_at_the_cost_of_the_pre_measurement(bench):
    """The replay asks the rule before the stored curve (epoch -1): a candidate a faster
    point at the best accuracy so far beats is charged its pre-training measurement only
    (the old replay fed the curve from its first epoch)."""
    from slimtune.search._early_stopping import FrontierEarlyStopping, FrontierPoint

    table = bench.Table(synthetic_doc(bench))
    rule = FrontierEarlyStopping(accuracy_tolerance=0.05, latency_tolerance=0.0)
    fast = FrontierPoint(0, 0.98, {"latency_ms": 0.6}, (0.90, 0.95, 0.97, 0.98))
    seen = []
    rule_fn = rule.should_stop_fn([fast], ("latency_ms",), 4, extra_epochs=0)

    def should_stop(epoch, acc, pre):
        seen.append(epoch)
        return rule_fn(epoch, acc, pre)

    result = bench.ReplayEvaluator(table).evaluate({"prune.ratio": 0.0, "quant.bits": 32}, should_stop=should_stop)
    assert seen == [-1] and result.stopped.startswith("early stop before training")
    assert result.train_seconds == 0.0 and result.total_seconds == 0.5 and result.info["cpu_seconds"] == 0.4
    assert result.info["epochs_run"] == 0 and result.val_accuracy is None
    # a cheaper candidate is not stopped before training and runs its stored curve
    seen.clear()
    kept = bench.ReplayEvaluator(table).evaluate({"prune.ratio": 0.7, "quant.bits": 32}, should_stop=should_stop)
    assert not kept.stopped and seen == [-1, 0, 1, 2, 3] and kept.total_seconds == 8.0


def test_the_replay_hands_the_rule_each_epochs_stored_costs(bench):
    """An early-exit row stores the costs the rule saw after each epoch (its exit paths
    weighted by its rates then); the replay hands those, not the pre-training ones."""
    doc = synthetic_doc(bench)
    row = doc["configurations"][2]  # (0.7, 32)
    row["pre_per_epoch"] = [{"latency_ratio": 0.9 - 0.1 * e, "macs": 900 - e} for e in range(4)]
    seen = []

    def record(epoch, acc, pre):
        seen.append((epoch, pre.latency_ms, pre.macs))
        return None

    bench.ReplayEvaluator(bench.Table(doc)).evaluate({"prune.ratio": 0.7, "quant.bits": 32}, should_stop=record)
    assert seen[0] == (-1, 0.5, 1000)  # before training: the stored pre-training costs
    assert [s[1:] for s in seen[1:]] == [(pytest.approx(0.9 - 0.1 * e), 900 - e) for e in range(4)]


def test_frontier_configurations_are_measured_three_times_and_keep_the_median(bench):
    """A frontier configuration is trained and measured again (the seeded training gives
    the same model: the same test accuracy) until it has three latency ratios; its
    ratio is their median.  One real digits configuration."""
    evaluator = bench._digits_evaluator()[3]
    values = {name: bench.GRID[name][0] for name in bench.GRID}
    row = bench.evaluate_config(evaluator, values)
    first = row["latency_ratio"]
    (confirmed,) = bench.confirm_frontier([row], evaluator, progress=False)
    ratios = confirmed["latency_ratios"]
    assert len(ratios) == bench.FRONTIER_MEASUREMENTS and ratios[0] == first
    assert confirmed["latency_ratio"] == sorted(ratios)[1] and all(r > 0 for r in ratios)
    again = bench.evaluate_config(evaluator, values)
    assert again["test_accuracy"] == row["test_accuracy"]  # the same model each time
