"""compile_model: ONNX Runtime (fp32, QDQ int8, exact b-bit weights, early exits as one
ONNX model with nested If) and torch (eager, FX int8, TorchScript artifacts); the
runtime registry (one module per runtime, chosen by asking the model)."""

from __future__ import annotations

import ast
import copy
import hashlib
import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from slimtune.search import _runtimes
from slimtune.search._measurement import RUNTIMES
from slimtune.search._agreement import fake_quant_reference, runtime_agreement
from slimtune.search._profiling import export_artifact, measure
from slimtune.search._runtimes import (
    CompiledModel,
    Runtime,
    compile_model,
    deployments,
    exit_segments,
    get_runtime,
    optimized_op_types,
    prepare_model,
    register_runtime,
    runtime_for,
    runtime_names,
)
from slimtune.search._runtimes import _registry
from slimtune.spaces.quantization import fake_quantize, fold_batchnorm, quantize_weight
from slimtune.tasks._models import resnet8, small_cnn
from tests._train import split_exit_net, train_plain


def _train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, lr: float = 5e-3) -> nn.Module:
    return train_plain(model, x, y, epochs, lr)


@pytest.fixture(scope="module")
def digits(digits_task):
    return digits_task.data


@pytest.fixture(scope="module")
def trained(digits):
    torch.manual_seed(0)
    return _train(small_cnn(width=8), digits.x_train, digits.y_train, epochs=5)


@pytest.fixture(scope="module")
def exit_net(digits):
    """A trained early-exit net with thresholds that split the test samples."""
    return split_exit_net(digits)


def _accuracy(logits: np.ndarray, y: torch.Tensor) -> float:
    return float((logits.argmax(-1) == y.numpy()).mean())


def _weight_dequantizers(model: onnx.ModelProto, graph=None, zero_points: bool = False):
    """(name, stored integers, scales[, zero points]) of every quantized Conv/Gemm weight:
    a DequantizeLinear feeding a Conv/Gemm (QDQ layout) or a QLinearConv/QGemm's weight
    input (QOperator layout)."""
    graph = graph or model.graph
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    consumers = {i: n for n in graph.node for i in n.input[1:2]}
    found = []
    for node in graph.node:
        at = None
        if node.op_type == "DequantizeLinear" and consumers.get(node.output[0]) is not None \
                and consumers[node.output[0]].op_type in ("Conv", "Gemm"):
            at = 0
        elif node.op_type in ("QLinearConv", "QGemm"):
            at = 3
        if at is not None:
            row = (node.input[at], inits[node.input[at]], inits[node.input[at + 1]])
            found.append(row + (inits[node.input[at + 2]],) if zero_points else row)
    return found


def test_int8_layout_auto_times_both_and_keeps_the_faster_or_the_smaller(trained, digits, monkeypatch):
    monkeypatch.delenv("SLIMTUNE_INT8_LAYOUT", raising=False)
    int8 = compile_model(trained, bits=8, calibration=digits.x_train[:256])
    ms, size = int8.info["int8_layout_ms"], int8.info["int8_layout_bytes"]
    assert set(ms) == set(size) == {"qdq", "qoperator"} and all(v > 0 for v in ms.values())
    chosen, other = int8.info["int8_layout"], ({"qdq", "qoperator"} - {int8.info["int8_layout"]}).pop()
    assert ms[chosen] <= ms[other] * 1.02 and (ms[chosen] < ms[other] or size[chosen] <= size[other])
    assert size["qoperator"] < size["qdq"]  # QLinearConv holds its weight: no DequantizeLinear + Conv pairs
    ops = {n.op_type for n in onnx.load_from_string(int8.artifact).graph.node}
    assert ("QLinearConv" in ops) == (chosen == "qoperator") and ("Conv" in ops) == (chosen == "qdq")
    monkeypatch.setenv("SLIMTUNE_INT8_LAYOUT", "qoperator")
    forced = compile_model(trained, bits=8, calibration=digits.x_train[:256])
    assert forced.info["int8_layout"] == "qoperator" and "int8_layout_ms" not in forced.info
    assert "QLinearConv" in {n.op_type for n in onnx.load_from_string(forced.artifact).graph.node}
    acc = {name: _accuracy(c.predict(digits.x_test), digits.y_test) for name, c in (("auto", int8), ("qop", forced))}
    assert abs(acc["auto"] - acc["qop"]) <= 0.02, acc
    monkeypatch.setenv("SLIMTUNE_INT8_LAYOUT", "qlinear")
    with pytest.raises(ValueError, match="SLIMTUNE_INT8_LAYOUT must be one of auto, qdq, qoperator"):
        compile_model(trained, bits=8, calibration=digits.x_train[:64])


# -- ONNX Runtime, static models -----------------------------------------------------
def test_fp32_onnx_matches_torch(trained, digits):
    compiled = compile_model(trained, runtime="onnxruntime", bits=32, calibration=digits.x_train[:128])
    assert compiled.artifact_format == "onnx" and compiled.kernel_bits == 32 and not compiled.has_exits
    with torch.no_grad():
        expected = trained(digits.x_test).numpy()
    np.testing.assert_allclose(compiled.predict(digits.x_test, batch_size=100), expected, atol=1e-4, rtol=1e-4)
    assert compiled.run_one(digits.x_test[:1]).__len__() == 2  # (logits, None)


def test_int8_onnx_has_quantized_convs_and_stays_accurate(trained, digits, monkeypatch):
    monkeypatch.setenv("SLIMTUNE_INT8_LAYOUT", "qdq")
    fp32 = compile_model(trained, bits=32, calibration=digits.x_train[:256])
    int8 = compile_model(trained, bits=8, calibration=digits.x_train[:256])
    model = onnx.load_from_string(int8.artifact)
    onnx.checker.check_model(model)
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
    weights = _weight_dequantizers(model)
    stored = np.uint8 if int8.int8_format == "u8u8" else np.int8  # auto: u8u8 where u8s8 can saturate
    assert len(weights) == 4 and all(q.dtype == stored for _, q, _ in weights)
    optimized = optimized_op_types(int8.artifact)  # what ORT really runs
    assert optimized.get("QLinearConv", 0) == 3 and optimized.get("Conv", 0) == 0
    assert int8.kernel_bits == 8 and int8.info["optimized_ops"] == optimized
    acc32 = _accuracy(fp32.predict(digits.x_test), digits.y_test)
    acc8 = _accuracy(int8.predict(digits.x_test), digits.y_test)
    assert acc32 > 0.85
    assert abs(acc8 - acc32) <= 0.03


def test_two_bit_ptq_is_clearly_worse(trained, digits):
    calib = digits.x_train[:256]
    acc = {b: _accuracy(compile_model(trained, bits=b, calibration=calib).predict(digits.x_test), digits.y_test)
           for b in (8, 2)}
    assert acc[2] < acc[8] - 0.15, acc


@pytest.mark.parametrize("layout", ["qdq", "qoperator"])
@pytest.mark.parametrize("int8_format", ["u8s8", "u8u8", "s8s8"])
@pytest.mark.parametrize("bits", [8, 6, 4, 2])
def test_b_bit_weights_in_the_onnx_graph(trained, digits, bits, int8_format, layout, monkeypatch):
    monkeypatch.setenv("SLIMTUNE_INT8_LAYOUT", layout)
    compiled = compile_model(trained, bits=bits, calibration=digits.x_train[:64], int8_format=int8_format)
    assert compiled.int8_format == int8_format
    folded = fold_batchnorm(copy.deepcopy(trained))
    torch_weights = {n + ".weight": m.weight for n, m in folded.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    limit = 2 ** (bits - 1) - 1
    weights = _weight_dequantizers(onnx.load_from_string(compiled.artifact), zero_points=True)
    assert len(weights) == len(torch_weights)
    for name, stored, scale, zero_point in weights:
        # u8u8 stores q + 128 with zero point 128 (the same products); the others int8 q, zero point 0
        expected_dtype, offset = (np.uint8, 128) if int8_format == "u8u8" else (np.int8, 0)
        assert stored.dtype == expected_dtype and zero_point.dtype == expected_dtype
        assert np.all(zero_point.astype(np.int32) == offset)
        q = (stored.astype(np.int32) - offset).astype(np.int8)
        assert np.abs(q).max() <= limit
        for c in range(q.shape[0]):
            assert len(np.unique(q[c])) <= 2 ** bits - 1
        expected_q, expected_scale = quantize_weight(torch_weights[name.removesuffix("_quantized")], bits)
        np.testing.assert_array_equal(q, expected_q.numpy())  # exactly the knob's grid
        np.testing.assert_array_equal(scale, expected_scale.numpy())
    if bits < 8:
        assert any(f"{bits}-bit" in f and "int8 kernels" in f for f in compiled.flags)


def test_sixteen_bits_runs_fp32_with_fp16_weights(trained, digits):
    compiled = compile_model(trained, bits=16, calibration=digits.x_train[:64])
    assert compiled.kernel_bits == 32 and any("fp16" in f for f in compiled.flags)
    inits = [numpy_helper.to_array(t) for t in onnx.load_from_string(compiled.artifact).graph.initializer]
    conv_weights = [w for w in inits if w.ndim == 4]
    assert conv_weights and all(np.array_equal(w, w.astype(np.float16).astype(np.float32)) for w in conv_weights)


def test_resnet8_int8_onnx(digits):
    torch.manual_seed(0)
    model = resnet8(width=8).eval()
    compiled = compile_model(model, bits=8, calibration=digits.x_train[:64])
    ops = optimized_op_types(compiled.artifact)
    assert ops.get("QLinearConv", 0) == 9 and ops.get("Conv", 0) == 0  # stem, 3x2 block convs, 2 shortcuts
    assert compiled.predict(digits.x_test[:5]).shape == (5, 10)


def test_rejects_bad_arguments(trained, digits):
    with pytest.raises(ValueError, match="runtime"):
        compile_model(trained, runtime="tvm", bits=8, calibration=digits.x_train[:8])
    with pytest.raises(ValueError, match="bits"):
        compile_model(trained, bits=3, calibration=digits.x_train[:8])


# -- torch ----------------------------------------------------------------------------
def test_torch_fp32_and_torchscript_artifact(trained, digits):
    compiled = compile_model(trained, runtime="torch", bits=32, calibration=digits.x_train[:64])
    assert compiled.artifact_format == "torchscript" and compiled.kernel_bits == 32
    with torch.no_grad():
        expected = trained(digits.x_test[:20])
    np.testing.assert_allclose(compiled.predict(digits.x_test[:20]), expected.numpy(), atol=1e-5, rtol=1e-5)
    loaded = torch.jit.load(io.BytesIO(compiled.artifact))
    torch.testing.assert_close(loaded(digits.x_test[:20]), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("bits", [8, 4])
def test_torch_fx_int8_with_exact_b_bit_weights(trained, digits, bits):
    compiled = compile_model(trained, runtime="torch", bits=bits, calibration=digits.x_train[:256])
    assert compiled.kernel_bits == 8 and compiled.info["int8_layers"] == 4
    folded = fold_batchnorm(copy.deepcopy(trained))
    floats = dict(folded.named_modules())
    checked = 0
    for name, layer in compiled.module.named_modules():  # the loaded TorchScript artifact: what runs
        name = name.removesuffix("._packed_params")
        if layer._c._has_method("_weight_bias") and name in floats:
            weight = layer._weight_bias()[0]
            q = weight.int_repr()
            expected_q, expected_scale = quantize_weight(floats[name].weight, bits)
            assert torch.equal(q, expected_q)
            torch.testing.assert_close(weight.q_per_channel_scales().float(), expected_scale)
            assert all(len(torch.unique(q[c])) <= 2 ** bits - 1 for c in range(q.shape[0]))
            checked += 1
    assert checked == 4
    acc = _accuracy(compiled.predict(digits.x_test), digits.y_test)
    with torch.no_grad():
        acc32 = _accuracy(trained(digits.x_test).numpy(), digits.y_test)
    assert abs(acc - acc32) <= 0.05
    loaded = torch.jit.load(io.BytesIO(compiled.artifact))
    np.testing.assert_allclose(loaded(digits.x_test[:10]).numpy(), compiled.predict(digits.x_test[:10]), atol=1e-5)


# -- early exits ---------------------------------------------------------------------
def test_exit_segments_normalised(exit_net):
    segments = exit_segments(exit_net)
    assert len(segments) == 3 and segments[-1][1] is None and segments[0][2] == exit_net.thresholds[0]
    assert exit_segments(small_cnn(width=8)) is None


@pytest.mark.parametrize("runtime", ["onnxruntime", "torch"])
def test_early_exit_fp32_matches_torch_per_sample(exit_net, digits, runtime):
    x = digits.x_test
    with torch.no_grad():
        expected, where = exit_net.predict_with_exits(x)
    assert len(set(where.tolist())) == 3  # the thresholds split the samples over all exits
    compiled = compile_model(exit_net, runtime=runtime, bits=32, calibration=digits.x_train[:64])
    assert compiled.num_exits == 2
    logits, exits = compiled.predict_with_exits(x)
    np.testing.assert_array_equal(exits, where.numpy())
    np.testing.assert_allclose(logits, expected.numpy(), atol=1e-4, rtol=1e-4)


def test_early_exit_is_one_onnx_model_with_nested_if(exit_net, digits, tmp_path):
    compiled = compile_model(exit_net, bits=32, calibration=digits.x_train[:64])
    assert compiled.engine == "onnxruntime-exits" and compiled.runtime == "onnxruntime"  # as measurements record it
    path = export_artifact(compiled, tmp_path / "exits.onnx")
    assert path.read_bytes() == compiled.artifact  # the exported file is the one timed
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    assert [o.name for o in model.graph.output] == ["logits", "exit_index"]
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 1  # batch 1 only
    outer_if = [n for n in model.graph.node if n.op_type == "If"]
    assert len(outer_if) == 1
    else_branch = next(a.g for a in outer_if[0].attribute if a.name == "else_branch")
    assert [n.op_type for n in else_branch.node].count("If") == 1  # nested
    # one sample per call: each sample takes its own exit
    with torch.no_grad():
        expected, where = exit_net.predict_with_exits(digits.x_test[:40])
    for position in range(3):
        i = int(torch.nonzero(where == position)[0])
        logits, index = compiled.run_one(digits.x_test[i:i + 1])
        assert logits.shape == (1, 10) and index.tolist() == [position]
        np.testing.assert_allclose(logits, expected[i:i + 1].numpy(), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("runtime", ["onnxruntime", "torch"])
def test_early_exit_refuses_a_batch_of_four(exit_net, digits, runtime):
    """Issue 12.5: a batch of 4 used to get one exit_index for the whole batch."""
    compiled = compile_model(exit_net, runtime=runtime, bits=32, calibration=digits.x_train[:64])
    with pytest.raises(Exception, match="Expected: 1|batch of exactly 1"):
        compiled.run_one(digits.x_test[:4])
    assert compiled.predict_with_exits(digits.x_test[:4])[1].shape == (4,)  # sample by sample: one exit each


def test_early_exit_int8_runs_quantized_kernels_in_subgraphs(exit_net, digits):
    compiled = compile_model(exit_net, bits=8, calibration=digits.x_train[:256])
    ops = compiled.info["optimized_ops"]
    assert ops.get("QLinearConv", 0) == 3 and ops.get("Conv", 0) == 0 and ops.get("If", 0) == 2
    assert compiled.kernel_bits == 8
    logits, exits = compiled.predict_with_exits(digits.x_test)
    with torch.no_grad():
        expected, where = exit_net.predict_with_exits(digits.x_test)
    acc8, acc32 = _accuracy(logits, digits.y_test), _accuracy(expected.numpy(), digits.y_test)
    assert abs(acc8 - acc32) <= 0.05
    assert (exits == where.numpy()).mean() > 0.8  # near-threshold samples may switch exits


def test_early_exit_torch_artifact_is_scripted(exit_net, digits):
    compiled = compile_model(exit_net, runtime="torch", bits=8, calibration=digits.x_train[:128])
    assert compiled.kernel_bits == 8
    loaded = torch.jit.load(io.BytesIO(compiled.artifact))
    for i in range(5):
        x = digits.x_test[i:i + 1]
        logits, index = loaded(x)
        ref_logits, ref_index = compiled.run_one(x)
        np.testing.assert_allclose(logits.numpy(), ref_logits, atol=1e-5)
        assert int(index[0]) == int(ref_index[0])


# -- torch: what is timed is what is stored (issue 8, part 4) --------------------------
_RELOAD = """
import sys, numpy as np, torch
torch.set_num_threads(1)
module = torch.jit.load(sys.argv[1])
x = torch.from_numpy(np.load(sys.argv[2]))
exits = sys.argv[3] == "exits"
with torch.inference_mode():
    outs = [module(x[i:i + 1]) for i in range(len(x))] if exits else [module(x)]
logits = np.concatenate([(o[0] if exits else o).numpy() for o in outs])
np.save(sys.argv[4], logits)
if exits:
    np.save(sys.argv[5], np.concatenate([o[1].numpy() for o in outs]))
"""


@pytest.mark.parametrize("bits", [32, 8])
@pytest.mark.parametrize("kind", ["static", "exits"])
def test_torch_runtime_times_and_scores_the_stored_torchscript(trained, exit_net, digits, tmp_path, kind, bits):
    model = trained if kind == "static" else exit_net
    compiled = compile_model(model, runtime="torch", bits=bits, calibration=digits.x_train[:128])
    # the module that runs is the artifact: loaded from the stored bytes, it saves back to them
    assert isinstance(compiled.module, torch.jit.ScriptModule)
    buffer = io.BytesIO()
    torch.jit.save(compiled.module, buffer)
    digest = hashlib.sha256(compiled.artifact).hexdigest()
    assert hashlib.sha256(buffer.getvalue()).hexdigest() == digest == compiled.info["artifact_sha256"]
    assert compiled._run.module is compiled.module  # the call measure() times and scores
    # export, reload in a fresh process: the same predictions on the test split
    path = export_artifact(compiled, tmp_path / "model.pt")
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest
    x = digits.x_test
    np.save(tmp_path / "x.npy", x.numpy())
    subprocess.run([sys.executable, "-c", _RELOAD, str(path), str(tmp_path / "x.npy"), kind,
                    str(tmp_path / "logits.npy"), str(tmp_path / "exits.npy")], check=True, timeout=120)
    reloaded = np.load(tmp_path / "logits.npy")
    if kind == "exits":
        logits, exits = compiled.predict_with_exits(x)
        np.testing.assert_array_equal(np.load(tmp_path / "exits.npy"), exits)
    else:
        logits = compiled.predict(x)
    np.testing.assert_array_equal(reloaded.argmax(-1), logits.argmax(-1))
    np.testing.assert_allclose(reloaded, logits, atol=1e-5, rtol=1e-5)
    # the measurement scores that artifact: its accuracy is the reloaded artifact's
    m = measure(model, compiled, x, digits.y_test, bits=bits, example_input=x[:1], repeats=10, warmup=2)
    assert m.accuracy == pytest.approx(float((reloaded.argmax(-1) == digits.y_test.numpy()).mean()))
    assert m.runtime == "torch" and len(m.latency_samples_ms) == 10


# -- the runtime registry --------------------------------------------------------------
ROOT = Path(__file__).resolve().parents[1]


def test_registry_lists_the_runtimes_and_names_close_matches():
    assert runtime_names()[:4] == ["onnxruntime", "onnxruntime-exits", "openvino", "torch"]
    assert get_runtime("onnxruntime-exits").name == "onnxruntime-exits"
    assert deployments() == list(RUNTIMES)  # the torch-free tuple the CLI and settings check against
    from slimtune.search._export import FORMATS

    assert {name: get_runtime(name).artifact_format for name in RUNTIMES} == FORMATS
    with pytest.raises(ValueError, match=r"Unknown runtime 'onnxruntim'\. Did you mean 'onnxruntime'"):
        get_runtime("onnxruntim")
    with pytest.raises(ValueError, match="Known: onnxruntime, onnxruntime-exits, openvino, torch"):
        get_runtime("tvm")
    with pytest.raises(TypeError, match="Runtime subclass"):
        register_runtime("eager", object)  # type: ignore[arg-type]


def test_the_model_chooses_the_exits_runtime(trained, exit_net):
    """No knob is named: a model exposing dynamic exits (``segments()``) gets the
    deployment's runtime for exit models."""
    assert runtime_for("onnxruntime", exits=False).name == "onnxruntime"
    assert runtime_for("onnxruntime", exits=True).name == "onnxruntime-exits"
    assert runtime_for("torch", exits=True).name == runtime_for("torch", exits=False).name == "torch"
    with pytest.raises(ValueError, match="`runtime` must be one of onnxruntime, openvino, torch, but got 'tvm'"):
        runtime_for("tvm", exits=False)

    class Segmented(nn.Module):  # any model with segments(), not only the exits knob's EarlyExitNet
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x):
            return self.net(x)

        def segments(self):
            return self.net.segments()

    assert exit_segments(Segmented(exit_net)) is not None
    with pytest.raises(ValueError, match="compiles static models"):
        get_runtime("onnxruntime").compile(prepare_model(exit_net, 32), exit_segments(exit_net), bits=32,
                                           calibration=torch.zeros(2, 1, 8, 8), threads=1, int8_format="auto",
                                           metadata=None)
    with pytest.raises(ValueError, match="dynamic exits"):
        get_runtime("onnxruntime-exits").compile(prepare_model(trained, 32), None, bits=32,
                                                 calibration=torch.zeros(2, 1, 8, 8), threads=1,
                                                 int8_format="auto", metadata=None)


@pytest.mark.parametrize("name", ["onnxruntime", "onnxruntime-exits", "torch"])
def test_each_runtime_compiles_predicts_and_exports(trained, exit_net, digits, tmp_path, name):
    """Through the registry: compile a prepared model, predict like torch, export the
    timed bytes, and the exported file runs on its own."""
    runtime = get_runtime(name)
    source = exit_net if runtime.exit_models else trained
    prepared = prepare_model(source, 32)
    segments = exit_segments(prepared)
    metadata = {"study": "s"} if runtime.artifact_format == "onnx" else None
    compiled = runtime.compile(prepared, segments, bits=32, calibration=digits.x_train[:64], threads=1,
                               int8_format="auto", metadata=metadata)
    assert isinstance(compiled, CompiledModel) and compiled.engine == name
    assert compiled.runtime == runtime.deployment and compiled.artifact_format == runtime.artifact_format
    x = digits.x_test[:24]
    with torch.no_grad():
        expected = (source.predict_with_exits(x)[0] if segments else source(x)).numpy()
    np.testing.assert_allclose(compiled.predict(x), expected, atol=1e-4, rtol=1e-4)
    path = runtime.export(compiled, tmp_path / "sub" / f"model.{runtime.artifact_format}")
    assert path.read_bytes() == compiled.artifact
    if runtime.artifact_format == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        assert session.get_modelmeta().custom_metadata_map["study"] == "s"
        outs = [session.run(None, {"input": x[i:i + 1].numpy()})[0] for i in range(len(x))]
    else:
        loaded = torch.jit.load(str(path))
        with torch.no_grad():
            outs = [loaded(x[i:i + 1]) for i in range(len(x))]
        outs = [(o[0] if isinstance(o, tuple) else o).numpy() for o in outs]
    np.testing.assert_allclose(np.concatenate(outs), expected, atol=1e-4, rtol=1e-4)


class _EagerRuntime(Runtime):
    """A runtime added by registration alone: the prepared torch module, run eagerly
    (its artifact a TorchScript trace, so that the packed size can be measured)."""

    deployment = "eager"
    artifact_format = "torchscript"

    def compile(self, model, segments, *, bits, calibration, threads, int8_format, metadata):
        buffer = io.BytesIO()
        with torch.no_grad():
            torch.jit.save(torch.jit.trace(model, calibration[:1]), buffer)

        def run(x):
            with torch.no_grad():
                return model(x).numpy(), None

        return CompiledModel(runtime=self.deployment, bits=bits, kernel_bits=32, artifact=buffer.getvalue(),
                             artifact_format=self.artifact_format, threads=threads, flags=(), num_exits=0,
                             _run=run, _prepare=torch.as_tensor, engine=self.name)


def test_a_registered_runtime_is_compiled_and_measured_without_naming_it(trained, digits, monkeypatch):
    monkeypatch.setattr(_registry, "_RUNTIMES", dict(_registry._RUNTIMES))  # undone after the test
    register_runtime("eager", _EagerRuntime)
    assert "eager" in runtime_names() and "eager" in deployments()
    compiled = compile_model(trained, runtime="eager", bits=32, calibration=digits.x_train[:8])
    assert compiled.engine == "eager"
    m = measure(trained, compiled, digits.x_val[:64], digits.y_val[:64], bits=32, example_input=digits.x_val[:1],
                repeats=3, warmup=1)
    assert m.runtime == "eager" and m.runtime_agreement == 1.0  # the same folded model torch computes
    with pytest.warns(UserWarning, match="registered twice"):
        register_runtime("eager", type("Other", (_EagerRuntime,), {}))


@pytest.mark.parametrize("bits", [32, 16, 8, 4])
def test_the_agreement_reference_is_the_compiled_copy_snapped(trained, digits, bits, monkeypatch):
    """The runtime-agreement check folds and rounds the model through the compile path
    (``prepare_model``), then puts its weights on the b-bit grid."""
    calls = []
    real = _runtimes.prepare_model

    def counting(model, b):
        calls.append(b)
        return real(model, b)

    monkeypatch.setattr(_runtimes, "prepare_model", counting)
    reference = fake_quant_reference(trained, bits)
    assert calls == [bits]
    expected = real(trained, bits)
    for (name, got), (_, want) in zip(reference.state_dict().items(), expected.state_dict().items()):
        if bits <= 8 and name.endswith("weight") and got.dim() > 1:
            want = fake_quantize(want, bits)
        torch.testing.assert_close(got, want, rtol=0, atol=0, msg=name)
    compiled = compile_model(trained, bits=bits, calibration=digits.x_train[:64])
    assert runtime_agreement(trained, bits, digits.x_val, compiled.predict(digits.x_val)) >= 0.97


def _calls_named(tree: ast.AST, name: str) -> list[ast.Call]:
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call)
            and (getattr(n.func, "attr", None) == name or getattr(n.func, "id", None) == name)]


def test_if_composition_lives_with_the_exits_runtime_only():
    """``spaces/exits.py`` (the model side) builds no ONNX graph, and the only module
    that makes ``If`` nodes is the exits runtime."""
    exits_source = (ROOT / "slimtune" / "spaces" / "exits.py").read_text()
    tree = ast.parse(exits_source)
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not any(m.split(".")[0] == "onnx" for m in imported), imported
    assert "helper" not in {getattr(n, "attr", None) for n in ast.walk(tree)}
    makers = set()
    for path in (ROOT / "slimtune").rglob("*.py"):
        for call in _calls_named(ast.parse(path.read_text()), "make_node"):
            if call.args and isinstance(call.args[0], ast.Constant) and call.args[0].value == "If":
                makers.add(path.relative_to(ROOT).as_posix())
    assert makers == {"slimtune/search/_runtimes/_ort_exits.py"}
