"""Measurement: interleaved latency, fingerprint, real file sizes, the Measurement."""

from __future__ import annotations


import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from slimtune.search._fingerprint import machine_fingerprint
from slimtune.search._profiling import export_artifact, measure, measure_latency, params_count
from slimtune.search._measurement import Measurement
from slimtune.search.packed import pack, unpack
from slimtune.search._runtimes import compile_model
from slimtune.spaces.exits import EarlyExitNet, ExitHead
from slimtune.spaces.quantization import fold_batchnorm, snap_weights
from slimtune.tasks._models import small_cnn
from tests._train import train_plain


# -- latency --------------------------------------------------------------------------
def test_measure_latency_counts_and_interleaves():
    calls: list[str] = []
    runners = {name: (lambda name=name: calls.append(name)) for name in ("a", "b", "c")}
    timings = measure_latency(runners, warmup=3, repeats=25, rounds=4)
    assert {k: len(v) for k, v in timings.items()} == {"a": 25, "b": 25, "c": 25}
    assert all(t >= 0 for v in timings.values() for t in v)
    assert calls[:9] == ["a", "b", "c"] * 3  # warm-up, interleaved
    timed = calls[9:]
    assert len(timed) == 75
    # rounds of 7, 6, 6, 6 calls per runner; the order rotates from round to round
    firsts = [timed[0], timed[21], timed[39], timed[57]]
    assert firsts == ["a", "b", "c", "a"]
    assert timed[:7] == ["a"] * 7 and timed[7:14] == ["b"] * 7


def test_measure_latency_reflects_work():
    import time

    timings = measure_latency({"fast": lambda: None, "slow": lambda: time.sleep(0.002)}, warmup=1, repeats=10, rounds=2)
    assert np.median(timings["slow"]) >= 2.0 > np.median(timings["fast"])


def test_measure_latency_rejects_bad_counts():
    with pytest.raises(ValueError, match="repeats"):
        measure_latency({"a": lambda: None}, repeats=0)
    with pytest.raises(ValueError, match="clock"):
        measure_latency({"a": lambda: None}, clock="gpu")


def test_the_cpu_clock_leaves_out_time_off_the_cpu():
    """A call that sleeps (as a call preempted by other processes waits) takes wall time
    but no on-CPU time; a call that computes takes both."""
    import time

    from slimtune.search._timing import time_runners

    def spin(ms: float = 1.0) -> None:  # 1 ms on the CPU, however long the scheduler makes it last
        end = time.thread_time() + ms / 1e3
        while time.thread_time() < end:
            pass

    t = time_runners({"sleeps": lambda: time.sleep(0.002), "computes": spin}, warmup=1, repeats=6, rounds=2,
                     clock="cpu")
    assert min(t.wall["sleeps"]) >= 2.0 > 5 * max(t.cpu["sleeps"])
    assert np.median(t.cpu["computes"]) == pytest.approx(1.0, rel=0.5)
    assert all(w >= c * 0.99 for w, c in zip(t.wall["computes"], t.cpu["computes"]))


def test_calibrated_loops_make_each_sample_long_enough():
    import time

    from slimtune.search._timing import MIN_SAMPLE_MS, calibrate_loops, time_runners

    calls = {"n": 0}

    def tiny() -> None:
        calls["n"] += 1
        end = time.perf_counter() + 2e-5  # 0.02 ms
        while time.perf_counter() < end:
            pass

    loops = calibrate_loops(tiny, clock="wall")
    assert loops >= MIN_SAMPLE_MS / 0.02 * 0.5 and loops > 1
    calls["n"] = 0
    t = time_runners({"tiny": tiny}, warmup=0, repeats=5, rounds=1, loops={"tiny": 4}, clock="wall")
    assert calls["n"] == 20 and len(t.wall["tiny"]) == 5 and t.loops == {"tiny": 4}
    assert 0.015 < np.median(t.wall["tiny"]) < 1.0  # per call, not per sample


def test_latency_clock_and_percentile():
    from slimtune.search._timing import latency_clock, percentile

    assert latency_clock(1, True) == "cpu"
    assert latency_clock(2, True) == latency_clock(1, False) == "wall"
    assert percentile(list(range(11)), 10) == pytest.approx(1.0) == float(np.percentile(range(11), 10))


def test_fingerprint_is_stable_and_specific():
    fp, fid = machine_fingerprint("onnxruntime", 1, 1)
    assert machine_fingerprint("onnxruntime", 1, 1) == (fp, fid)
    assert len(fid) == 12 and fp["threads"] == 1 and fp["batch_size"] == 1 and fp["cpu"]
    assert fp["torch"] == torch.__version__ and fp["onnxruntime"]
    others = {machine_fingerprint("onnxruntime", 2, 1)[1], machine_fingerprint("onnxruntime", 1, 8)[1],
              machine_fingerprint("torch", 1, 1)[1]}
    assert fid not in others and len(others) == 3


# -- size -----------------------------------------------------------------------------
def test_params_count_counts_non_zero_weights():
    layer = nn.Linear(100, 10, bias=False)
    with torch.no_grad():
        layer.weight[:, 10:] = 0  # 100 of 1,000 weights left
    assert params_count(nn.Sequential(layer)) == 100
    assert params_count(nn.Sequential(nn.Linear(100, 10))) == 1010


# -- the measurement ------------------------------------------------------------------
@pytest.fixture(scope="module")
def data(digits_task):
    return digits_task.data


def _train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int = 3) -> nn.Module:
    return train_plain(model, x, y, epochs)


@pytest.mark.parametrize("runtime", ["onnxruntime", "torch"])
def test_measure_static_model(data, runtime, tmp_path):
    torch.manual_seed(0)
    model = fold_batchnorm(_train(small_cnn(width=8), data.x_train, data.y_train))
    snap_weights(model, 8)
    compiled = compile_model(model, runtime=runtime, bits=8, calibration=data.x_train[:128])
    reference = compile_model(model, runtime=runtime, bits=32, calibration=data.x_train[:128])
    m = measure(model, compiled, data.x_test, data.y_test, bits=8, example_input=data.x_test[:1],
                reference=reference, warmup=3, repeats=30)
    assert isinstance(m, Measurement)
    expected_acc = float((compiled.predict(data.x_test).argmax(-1) == data.y_test.numpy()).mean())
    assert m.accuracy == expected_acc > 0.8
    assert len(m.latency_samples_ms) == 30 and m.latency_kind == "p10"
    assert m.latency_ms == pytest.approx(float(np.percentile(m.latency_samples_ms, 10)))
    assert m.latency_clock == "cpu" and m.latency_wall_ms > 0  # one thread: the calling thread's on-CPU time
    assert m.latency_p95_ms >= m.latency_ms > 0 and m.reference_latency_ms > 0
    assert m.macs > 0 and m.params_count > 0
    packed = tmp_path / "model.slim"
    packed.write_bytes(pack(compiled.artifact, artifact_format=compiled.artifact_format, bits=8))
    assert m.size_bytes == packed.stat().st_size < m.artifact_bytes  # the packed file is smaller than what ran
    assert m.artifact_bytes == export_artifact(compiled, tmp_path / "model.bin").stat().st_size
    assert unpack(packed.read_bytes()).artifact == compiled.artifact
    assert m.kernel_bits == 8 and m.runtime == runtime and m.exit_rates is None
    assert m.fingerprint_id == machine_fingerprint(runtime, 1, 1)[1]
    if runtime == "onnxruntime":  # the layout kept, and both layouts' timings that chose it
        ops = {n.op_type for n in onnx.load_from_string(compiled.artifact).graph.node}
        assert m.int8_layout == ("qoperator" if "QLinearConv" in ops else "qdq")
        assert set(m.int8_layout_ms) == {"qdq", "qoperator"}
    else:
        assert m.int8_layout is None and m.int8_layout_ms is None
    assert Measurement.from_dict(m.to_dict()) == m


def test_measure_early_exit_model(data, tmp_path):
    torch.manual_seed(0)
    base = small_cnn(width=8)
    net = _train(EarlyExitNet(base.blocks, base.head, {1: ExitHead(16, 10)}, {1: 0.9}), data.x_train, data.y_train)
    with torch.no_grad():
        confidence = F.softmax(net.forward_all(data.x_test)[0], -1).amax(-1)
    net.set_thresholds([float(confidence.quantile(0.5))])
    compiled = compile_model(net, bits=32, calibration=data.x_train[:64])
    m = measure(net, compiled, data.x_test, data.y_test, bits=32, example_input=data.x_test[:1],
                reference=compile_model(base, bits=32, calibration=data.x_train[:64]), batch_size=4,
                warmup=2, repeats=40)
    assert m.latency_kind == "mean_of_path_p10" and m.batch_size == 1
    assert any("one sample at a time" in f for f in m.flags)
    # each timed sample counts with the median of its exit path: between the paths' medians,
    # and the sample's own path is the one the runtime takes for it
    ordered = sorted(m.latency_samples_ms)
    assert ordered[0] <= m.latency_ms <= ordered[-1]
    assert m.reference_latency_ms > 0
    assert len(m.exit_rates) == 2 and sum(m.exit_rates) == pytest.approx(1.0)
    assert 0.3 < m.exit_rates[0] < 0.7
    with torch.no_grad():
        expected_acc = float((net(data.x_test).argmax(-1) == data.y_test).double().mean())
    assert m.accuracy == pytest.approx(expected_acc, abs=1e-9)
    path = export_artifact(compiled, tmp_path / "out" / "model.onnx")
    assert path.read_bytes() == compiled.artifact and m.artifact_bytes == path.stat().st_size


def test_mean_of_path_medians_weighs_paths_by_use_and_ignores_spikes():
    from slimtune.search._profiling import mean_of_path_medians

    # 3 samples leave early (1 ms), 1 runs the whole model (4 ms): 0.75 * 1 + 0.25 * 4
    assert mean_of_path_medians([1.0, 1.0, 1.0, 4.0], [0, 0, 0, 1]) == pytest.approx(1.75)
    # one load spike of 50 ms on an early sample: a plain mean jumps to 14, the path medians do not move
    timings, paths = [1.0, 1.0, 50.0, 4.0, 1.0, 4.0], [0, 0, 0, 1, 0, 1]
    assert float(np.mean(timings)) > 10
    assert mean_of_path_medians(timings, paths) == pytest.approx((4 * 1.0 + 2 * 4.0) / 6)
    with pytest.raises(ValueError, match="of one length"):
        mean_of_path_medians([1.0], [0, 1])


def test_the_target_of_a_measurement_and_of_one_stored_before_precision_was():
    from slimtune.search._measurement import measurement_target, target_label

    old = {"runtime": "onnxruntime", "kernel_bits": 8, "batch_size": 1, "threads": 1}  # no `precision` stored
    assert measurement_target(old) == {"runtime": "onnxruntime", "precision": "int8", "batch_size": 1, "threads": 1}
    assert measurement_target({**old, "kernel_bits": 32})["precision"] == "fp32"
    new = {"runtime": "openvino", "precision": "bf16", "kernel_bits": 32, "batch_size": 8, "threads": 1}
    assert target_label(measurement_target(new)) == "openvino bf16, batch 8, 1 thread"
    assert measurement_target(None) is None and measurement_target({}) is None
    m = Measurement(accuracy=0.9, latency_ms=1.0, size_bytes=1, macs=1, runtime="openvino", batch_size=8, threads=2,
                    precision="bf16")
    assert m.target() == {"runtime": "openvino", "precision": "bf16", "batch_size": 8, "threads": 2}
    assert Measurement.from_dict(m.to_dict()).precision == "bf16"
