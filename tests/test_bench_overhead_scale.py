"""The measuring parts of ``benchmarks/overhead.py`` and ``benchmarks/scale.py``: the
steady-state window of a multi-worker run, the exclusive per-phase clock, and a real
digits trial split by phase (the wrapped library functions exist and add up)."""

from __future__ import annotations

import time

import pytest
from tests._bench import load_benchmark

def _bench(name: str):
    return load_benchmark(name)


def test_the_steady_window_leaves_out_start_up_and_the_tail():
    steady_rate = _bench("scale").steady_rate
    # worker A: 10 s trials from t=0 to 30; worker B starts 5 s late (start-up), ends at 25, then idles
    a = [(0.0, 10.0), (10.0, 20.0), (20.0, 30.0)]
    b = [(5.0, 15.0), (15.0, 25.0)]
    rate, window = steady_rate(a + b, 2)
    assert window == pytest.approx(20.0)  # [5, 25]: both workers busy
    # inside the window: A's trials count 0.5 + 1 + 0.5, B's 1 + 1 -> 4 trials in 20 s
    assert rate == pytest.approx(4 / 20 * 3600)
    one, span = steady_rate(a, 1)
    assert span == pytest.approx(30.0) and one == pytest.approx(3 / 30 * 3600)
    assert rate / one == pytest.approx(2.0)  # two busy workers, same trial length: twice the rate
    # over first start to last end (the old reading) the late start and the tail cost 1/6
    assert (5 / 30) / (3 / 30) == pytest.approx(5 / 3)


def test_the_steady_window_needs_workers_running_together():
    steady_rate = _bench("scale").steady_rate
    with pytest.raises(ValueError, match="never ran trials at the same time"):
        steady_rate([(0.0, 1.0), (2.0, 3.0)], 2)
    with pytest.raises(ValueError, match="at least 2 trials"):
        steady_rate([(0.0, 1.0)], 2)


def test_the_phase_clock_counts_each_second_once_in_the_innermost_phase():
    clock = _bench("overhead").PhaseClock()

    def inner() -> None:
        time.sleep(0.05)

    timed_inner = clock.wrap("inner", inner)

    def outer() -> None:
        time.sleep(0.03)
        timed_inner()

    clock.wrap("outer", outer)()
    seconds = clock.take()
    assert seconds["inner"] == pytest.approx(0.05, abs=0.03)
    assert seconds["outer"] == pytest.approx(0.03, abs=0.03)  # not 0.08: the inner call is not counted twice
    assert clock.take() == {}


def test_a_real_trial_splits_into_phases_that_add_up(tmp_path, capsys):
    overhead = _bench("overhead")
    from slimtune.search import _pipeline, _profiling

    originals = (_pipeline.train, _pipeline.Evaluator._compile, _profiling._accuracy)
    shares, phases, walls = overhead.trial_overhead(tmp_path, 2, 1, finetune_epochs=1)
    assert (_pipeline.train, _pipeline.Evaluator._compile, _profiling._accuracy) == originals  # unwrapped after
    assert len(shares) == len(phases) == len(walls) == 2
    for seconds, wall in zip(phases, walls):
        # every phase that each trial passes through was seen, and none ran longer than the trial
        for label in ("training loops", "compile (ONNX export, quantize)",
                      "artifact accuracy val+test, torch agreement",
                      "latency timing", "optuna ask", "record (DB write, pareto re-read)", "optuna attrs + tell"):
            assert 0 < seconds[label] < wall, (label, seconds)
        assert sum(seconds.values()) <= wall * 1.001
    out = capsys.readouterr().out
    assert "| training loops |" in out and "not training: median" in out


def test_an_inclusive_phase_keeps_its_inner_calls():
    clock = _bench("overhead").PhaseClock()
    timed_inner = clock.wrap("inner", lambda: time.sleep(0.03))
    clock.wrap("pre", lambda: timed_inner(), inclusive=True)()
    timed_inner()
    seconds = clock.take()
    assert seconds["pre"] == pytest.approx(0.03, abs=0.02) and seconds["inner"] == pytest.approx(0.03, abs=0.02)
