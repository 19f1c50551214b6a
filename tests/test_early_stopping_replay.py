"""``benchmarks/compression.py``'s replay of early stopping on a stored search: the
check before training, the training time saved and the hypervolume loss."""

from __future__ import annotations


import pytest
from tests._bench import load_benchmark

@pytest.fixture(scope="module")
def bench():
    return load_benchmark("compression")


def _row(trial, val, test, latency, train_seconds, curve, pre_latency=None, **params):
    return {"trial": trial, "state": "COMPLETE", "val_accuracy": val, "test_accuracy": test, "latency_ms": latency,
            "size_bytes": 100, "train_seconds": train_seconds, "val_accuracy_per_epoch": curve,
            "pre": None if pre_latency is None else {"latency_ms": pre_latency, "size_bytes": 100},
            "params": {"prune.ratio": 0.0, "quant.bits": 8, "quant.mode": "ptq", **params}}


BASELINE = {"val_accuracy": 0.86, "test_accuracy": 0.86, "latency_ms": 1.0, "size_bytes": 100}
ROWS = [
    _row(0, 0.87, 0.87, 0.5, 100.0, [0.86, 0.87]),
    _row(1, 0.85, 0.85, 0.9, 300.0, [0.86, 0.87], pre_latency=0.9),  # slower, no better: stopped before training
    _row(2, 0.80, 0.80, 0.3, 100.0, [0.86, 0.87], pre_latency=0.3),  # faster: on the front, kept
]


def test_replay_stops_before_training_and_reports_saving_and_loss(bench):
    from slimtune.search._early_stopping import FrontierEarlyStopping

    es = bench.replay_early_stopping(ROWS, ("accuracy", "latency_ms"), 2, 0, baseline=BASELINE)
    assert [(s["trial"], s["epoch"]) for s in es["stopped"]] == [(1, 0)]
    assert es["stopped"][0]["reason"].startswith("early stop before training")
    assert es["epochs_saved"] == 2 and es["epochs_total"] == 6
    assert es["train_saving"] == pytest.approx(300 / 500) and es["hv_loss"] == pytest.approx(0.0)
    # the old rule (no check before training, 0.01 tolerance) stops it one epoch later
    old = FrontierEarlyStopping(pre_check=False, accuracy_tolerance=0.01, latency_tolerance=0.2)
    es = bench.replay_early_stopping(ROWS, ("accuracy", "latency_ms"), 2, 0, old, BASELINE)
    assert [(s["trial"], s["epoch"]) for s in es["stopped"]] == [(1, 1)]
    assert es["train_saving"] == pytest.approx(150 / 500)
    # a stopped front point is a hypervolume loss: trial 1 made the only point above 0.87 test accuracy
    rows = [ROWS[0], {**ROWS[1], "test_accuracy": 0.95}, ROWS[2]]
    es = bench.replay_early_stopping(rows, ("accuracy", "latency_ms"), 2, 0, baseline=BASELINE)
    assert es["hv_loss"] > 0.05
    assert bench.oracle_saving(ROWS, ("accuracy", "latency_ms"), 0.05) == pytest.approx(300 / 500)


def test_real_check_separates_the_rules_decisions_from_measurement_noise():
    """``early_stopping_real.decision_loss``: the configurations the run with the rule
    completed, as the run without it measured them, against all of that run's points."""
    real = load_benchmark("early_stopping_real")
    off = {"points": [("a", 0.90, 0.5), ("b", 0.80, 0.3), ("c", 0.70, 0.9)]}  # c is dominated by a
    assert real.decision_loss({"points": [("a", 0.90, 0.7), ("b", 0.80, 0.4)]}, off) == pytest.approx(0.0)
    assert real.decision_loss({"points": [("a", 0.90, 0.7)]}, off) > 0.05  # b was lost
    assert real.decision_loss({"points": [("d", 0.9, 0.1)]}, off) is None  # never trained without the rule
