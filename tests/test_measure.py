"""Measurement: interleaved latency, fingerprint, exact packed size, the Measurement."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from slimtune.search.measure import (
    export_artifact,
    layer_sizes,
    machine_fingerprint,
    measure,
    measure_latency,
    model_size_bytes,
    params_count,
)
from slimtune.search.measurement import Measurement
from slimtune.search.runtime import compile_model
from slimtune.spaces.exits import EarlyExitNet, ExitHead
from slimtune.spaces.quantization import fold_batchnorm, snap_weights
from slimtune.tasks.models import resnet8, small_cnn
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


def test_fingerprint_is_stable_and_specific():
    fp, fid = machine_fingerprint("onnxruntime", 1, 1)
    assert machine_fingerprint("onnxruntime", 1, 1) == (fp, fid)
    assert len(fid) == 12 and fp["threads"] == 1 and fp["batch_size"] == 1 and fp["cpu"]
    assert fp["torch"] == torch.__version__ and fp["onnxruntime"]
    others = {machine_fingerprint("onnxruntime", 2, 1)[1], machine_fingerprint("onnxruntime", 1, 8)[1],
              machine_fingerprint("torch", 1, 1)[1]}
    assert fid not in others and len(others) == 3


# -- size -----------------------------------------------------------------------------
def test_four_bit_weights_are_one_eighth_of_fp32():
    model = fold_batchnorm(resnet8().eval())
    fp32, int4 = layer_sizes(model, 32), layer_sizes(model, 4)
    assert sum(s.weight_bytes for s in int4) * 8 == sum(s.weight_bytes for s in fp32)
    for a, b in zip(fp32, int4):
        assert b.weight_bytes * 8 == a.weight_bytes
        assert b.scale_bytes == 2 * b.bias_bytes // 4 and a.scale_bytes == 0  # fp16 scale per channel


def test_size_formula_on_a_tiny_model():
    model = nn.Sequential(nn.Conv2d(1, 3, 3, bias=False), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(),
                          nn.Linear(3 * 4 * 4, 5)).eval()  # 27 + 240 weights, 3 + 5 output channels
    assert model_size_bytes(model, 32) == 4 * 27 + 4 * 3 + 4 * 240 + 4 * 5
    assert model_size_bytes(model, 8) == (27 + 3 * 6) + (240 + 5 * 6)
    assert model_size_bytes(model, 2) == (math.ceil(27 * 2 / 8) + 3 * 6) + (240 * 2 // 8 + 5 * 6)
    assert model_size_bytes(model, 16) == 2 * 27 + 4 * 3 + 2 * 240 + 4 * 5  # fp16 needs no scale
    # an unfolded BatchNorm counts as the bias it folds into
    folded = fold_batchnorm(copy.deepcopy(model))
    for bits in (32, 16, 8, 4):
        assert model_size_bytes(folded, bits) == model_size_bytes(model, bits)


def test_resnet8_sizes_follow_facts_formula():
    model = fold_batchnorm(resnet8().eval())
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    weights = sum(m.weight.numel() for m in layers)
    channels = sum(m.weight.shape[0] for m in layers)
    assert model_size_bytes(model, 32) == 4 * weights + 4 * channels
    for bits in (8, 6, 4, 2):
        expected = sum(math.ceil(m.weight.numel() * bits / 8) for m in layers) + 6 * channels
        assert model_size_bytes(model, bits) == expected
    assert model_size_bytes(model, 2) < model_size_bytes(model, 4) < model_size_bytes(model, 8) < model_size_bytes(model, 32)


def test_weight_pruned_layers_use_the_smaller_sparse_format():
    layer = nn.Linear(100, 10, bias=False)
    with torch.no_grad():
        layer.weight[:, 10:] = 0  # 100 of 1,000 weights left
    model = nn.Sequential(layer)
    assert model_size_bytes(model, 32) == 1000 // 8 + 100 * 4  # bitmask + fp32 non-zeros
    assert model_size_bytes(model, 8) == min(1000, 125 + 100) + 10 * 2
    assert layer_sizes(model, 32)[0].sparse and layer_sizes(model, 32)[0].nonzero == 100
    dense = nn.Sequential(nn.Linear(100, 10, bias=False))
    assert model_size_bytes(dense, 8) == 1000 + 20 and not layer_sizes(dense, 8)[0].sparse
    assert params_count(model) == 100


def test_size_counts_exit_heads_once():
    base = small_cnn(width=8)
    net = EarlyExitNet(base.blocks, base.head, {0: ExitHead(8, 10)}, {0: 0.5})
    assert model_size_bytes(net, 8) == model_size_bytes(base, 8) + (8 * 4 * 10 + 10 * 6)  # 2x2 pooled features


# -- the measurement ------------------------------------------------------------------
@pytest.fixture(scope="module")
def data(digits_task):
    return digits_task.data


def _train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int = 3) -> nn.Module:
    return train_plain(model, x, y, epochs)


@pytest.mark.parametrize("runtime", ["onnxruntime", "torch"])
def test_measure_static_model(data, runtime):
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
    assert len(m.latency_samples_ms) == 30 and m.latency_kind == "median"
    assert m.latency_ms == pytest.approx(float(np.median(m.latency_samples_ms)))
    assert m.latency_p95_ms >= m.latency_ms > 0 and m.reference_latency_ms > 0
    assert m.size_bytes == model_size_bytes(model, 8) and m.macs > 0 and m.params_count > 0
    assert m.kernel_bits == 8 and m.runtime == runtime and m.exit_rates is None
    assert m.fingerprint_id == machine_fingerprint(runtime, 1, 1)[1]
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
    assert m.latency_kind == "mean_over_samples" and m.batch_size == 1
    assert any("one sample at a time" in f for f in m.flags)
    assert m.latency_ms == pytest.approx(float(np.mean(m.latency_samples_ms)))
    assert len(m.exit_rates) == 2 and sum(m.exit_rates) == pytest.approx(1.0)
    assert 0.3 < m.exit_rates[0] < 0.7
    with torch.no_grad():
        expected_acc = float((net(data.x_test).argmax(-1) == data.y_test).double().mean())
    assert m.accuracy == pytest.approx(expected_acc, abs=1e-9)
    path = export_artifact(compiled, tmp_path / "out" / "model.onnx")
    assert path.read_bytes() == compiled.artifact
