"""Early stopping reads an early-exit candidate's costs at the exit rates it has after
each epoch: before training its cost is the shortest path (a lower bound that no
finished point could undercut, so the rule never stopped one), after an epoch it is
its exit paths, each timed and counted before training, weighted by where the
validation samples leave then."""

from __future__ import annotations

import pytest

from slimtune.search._early_stopping import FrontierEarlyStopping, FrontierPoint
from slimtune.search._pre_measure import PreMeasurement

COSTS = ("latency_ms",)
#: an exit candidate: 0.1 ms when every sample leaves at the exit, 1.0 ms through the final head
PRE = PreMeasurement(latency_ms=0.1, macs=100, size_bytes=1000, path_latency_ms=(0.1, 1.0), path_macs=(100, 1000))


def test_costs_at_exit_rates_weight_the_paths():
    at = PRE.at_exit_rates([0.25, 0.75])
    assert at.latency_ms == pytest.approx(0.775) and at.macs == 775 and at.size_bytes == 1000
    assert at.path_latency_ms == PRE.path_latency_ms  # still the paths, for the next epoch
    # rates of another length, none, and a static model: the costs before training
    assert PRE.at_exit_rates([1.0]) is PRE and PRE.at_exit_rates(None) is PRE
    static = PreMeasurement(latency_ms=0.5, macs=10, size_bytes=10)
    assert static.at_exit_rates([0.5, 0.5]) is static


def test_an_exit_candidate_whose_samples_do_not_leave_is_stopped_after_its_first_epoch():
    """A faster, as accurate point: before training the shortest path (0.1 ms) is cheaper,
    so no stop; after an epoch where 90% of the samples run to the final head (0.91 ms)
    the point (0.5 ms) is no costlier and the candidate is stopped.  Were most samples
    leaving early (0.28 ms), it goes on."""
    rule = FrontierEarlyStopping(accuracy_tolerance=0.01, latency_tolerance=0.2)
    fast = [FrontierPoint(0, 0.99, {"latency_ms": 0.5}, curve=(0.99, 0.99))]
    should_stop = rule.should_stop_fn(fast, COSTS, epochs=2)
    assert should_stop(-1, None, PRE) is None
    reason = should_stop(0, 0.985, PRE.at_exit_rates([0.1, 0.9]))
    assert reason and "after epoch 1/2" in reason and "latency_ms 0.5 <= 0.91" in reason
    assert should_stop(0, 0.985, PRE.at_exit_rates([0.8, 0.2])) is None


def test_real_exit_candidate_reports_its_costs_at_its_exit_rates(digits_task, digits_baseline):
    """Through the real pipeline: the pre-training measurement times and counts each exit
    path (first exit, final head); after each epoch ``should_stop`` sees the MACs and
    latency of the paths weighted by the rates then, between the shortest and the full
    path, and after the last epoch the MACs are the trained model's measured MACs."""
    from slimtune.search._task_space import build_space
    from slimtune.search._pipeline import EvalSettings, Evaluator
    from slimtune.search._trainer import score_and_exit_rates

    space = build_space(digits_task)
    ev = Evaluator(digits_task, space, EvalSettings(latency_repeats=20, latency_warmup=2, epochs=2), digits_baseline)
    exit_name = next(p.name for p in space.params if p.name.endswith(".enabled") and p.name.startswith("exits."))
    values = {exit_name: True, exit_name.replace(".enabled", ".threshold"): 0.9, "quant.bits": 32, "prune.ratio": 0.0}
    seen = []

    def record(epoch, acc, pre):
        seen.append((epoch, pre))
        return None

    result = ev.evaluate(values, should_stop=record)
    pre = result.pre
    assert len(pre.path_latency_ms) == len(pre.path_macs) == 2 and all(t > 0 for t in pre.path_latency_ms)
    assert pre.path_macs[0] == pre.macs < pre.path_macs[1]  # the shortest path is the first exit's
    assert [e for e, _ in seen] == [-1, 0, 1] and seen[0][1] is pre
    for _, later in seen[1:]:
        assert pre.path_macs[0] <= later.macs <= pre.path_macs[1]
        assert min(pre.path_latency_ms) - 1e-9 <= later.latency_ms <= max(pre.path_latency_ms) + 1e-9
    assert seen[-1][1].macs == pytest.approx(result.measurement.macs, rel=0.02)  # torch's rates vs the runtime's
    # the rates come from the same validation pass as the accuracy
    model = ev.build_architecture(space.complete(values))
    acc, rates = score_and_exit_rates(model, digits_task.data.val)
    assert len(rates) == 2 and sum(rates) == pytest.approx(1.0) and 0.0 <= acc <= 1.0
    static_acc, none = score_and_exit_rates(digits_baseline.model, digits_task.data.val)
    assert none is None and static_acc > 0.9


def test_latencies_are_compared_as_same_run_speed_ups_when_both_sides_have_a_reference():
    """A point timed at 0.5 ms when the baseline took 1.0 ms (2x faster) against a
    candidate timed at 0.55 ms while the machine ran at half speed (the baseline at
    2.0 ms beside it: 3.6x faster): in milliseconds the point looks no slower, as
    speed-ups it is slower, and the candidate is not stopped."""
    rule = FrontierEarlyStopping(accuracy_tolerance=0.01, latency_tolerance=0.0)
    point = FrontierPoint(0, 0.99, {"latency_ms": 0.5}, reference_latency_ms=1.0)
    slow_machine = PreMeasurement(latency_ms=0.55, macs=1, size_bytes=1, reference_latency_ms=2.0)
    assert rule.check(-1, None, slow_machine, [point], COSTS, epochs=2) is None
    same_speed = PreMeasurement(latency_ms=0.55, macs=1, size_bytes=1, reference_latency_ms=1.0)
    assert rule.check(-1, None, same_speed, [point], COSTS, epochs=2)
    # without a reference on either side: milliseconds, as before
    unknown = FrontierPoint(0, 0.99, {"latency_ms": 0.5})
    assert rule.check(-1, None, slow_machine, [unknown], COSTS, epochs=2)
