"""Weight clustering, the seventh family (issue 22): one knob file and one registration
line; it acts after the core lowering, so its shared values survive BatchNorm folding,
and it declares a codebook encoding that the packed file and the runtime read."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from slimtune.search._pipeline import EvalSettings, Evaluator
from slimtune.search.packed import describe, pack, unpack
from slimtune.spaces import WeightEncoding, get_knob
from slimtune.spaces.base import KnobContext
from slimtune.spaces.clustering import cluster_weights, kmeans_1d
from slimtune.spaces._lowering import lower, quantizable_layers
from slimtune.tasks._models import small_cnn

FAST = {"epochs": 1, "latency_repeats": 5, "latency_warmup": 2, "calibration_size": 64}


def test_kmeans_assigns_each_value_its_nearest_centroid():
    values = torch.cat([torch.randn(500) * 0.1 + c for c in (-2.0, 0.0, 1.0, 3.0)])
    centroids, codes = kmeans_1d(values, 4)
    assert len(centroids) == 4
    torch.testing.assert_close(centroids, torch.tensor([-2.0, 0.0, 1.0, 3.0]), atol=0.05, rtol=0)
    nearest = (values[:, None] - centroids[None]).abs().argmin(1)
    assert torch.equal(codes, nearest)


def test_the_knob_shares_k_values_per_layer_keeps_zeros_and_trains_the_centroids():
    torch.manual_seed(0)
    model = small_cnn(width=8).eval()
    conv = model.blocks[1][0]
    with torch.no_grad():
        conv.weight[conv.weight.abs() < conv.weight.abs().median()] = 0
    zeros = conv.weight == 0
    lower(model, torch.randn(2, 1, 8, 8))
    steps = []

    def finetune(m, epochs=None, lr=None):
        opt = torch.optim.SGD(m.parameters(), lr=0.1)
        loss = m(torch.randn(8, 1, 8, 8)).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        steps.append(epochs)

    ctx = KnobContext(example_input=torch.randn(1, 1, 8, 8), calibration=torch.randn(4, 1, 8, 8), finetune=finetune,
                      finetune_epochs=2)
    before = {n: m.weight.detach().clone() for n, m in quantizable_layers(model)}
    get_knob("cluster")().apply(model, {"cluster.k": 4}, ctx)
    assert steps == [2] and ctx.info["cluster"] == {"k": 4, "layers": len(before), "finetune_epochs": 2}
    for name, layer in quantizable_layers(model):
        distinct = set(layer.weight.detach().flatten().tolist()) - {0.0}
        assert len(distinct) <= 4, (name, len(distinct))
        assert not any("parametrizations" in k for k in model.state_dict())
    assert torch.all(model.blocks[1][0].weight[zeros] == 0)  # pruned zeros stay pruned
    assert any(not torch.equal(before[n], m.weight) for n, m in quantizable_layers(model))


def test_codebook_encoding_is_lossless_and_smaller():
    torch.manual_seed(0)
    model = small_cnn(width=16).eval()
    cluster_weights(model, 4)
    weight = model.blocks[1][0].weight.detach().numpy().astype("<f4")
    from slimtune.search.packed import encode_tensor, decode_tensor

    plain, _ = encode_tensor(weight.tobytes(), "<f4", weight.shape)
    spec, payload = encode_tensor(weight.tobytes(), "<f4", weight.shape, codebook=True)
    assert spec["kind"] == "codebook" and spec["width"] == 2 and spec["axis"] is None
    assert decode_tensor(spec, payload, "<f4", weight.size, weight.shape) == weight.tobytes()
    assert len(payload) < plain["bytes"] / 10  # 2 bits + 4 values instead of 32 bits (or a grid)


@pytest.fixture(scope="module")
def evaluator(digits_task, digits_baseline):
    from slimtune.search._task_space import build_space

    return Evaluator(digits_task, build_space(digits_task), EvalSettings(**FAST), digits_baseline)


def _onnx_weights(artifact: bytes) -> dict[str, np.ndarray]:
    model = onnx.load_from_string(artifact)
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer if len(t.dims) >= 2}


def test_clustering_survives_batchnorm_folding_and_packs_at_two_bits(evaluator):
    """Before lowering was core, the quantization knob folded BatchNorm after every
    knob: with k=4 the stored convs held 119, 256 and 256 distinct values."""
    plain = evaluator.evaluate({})
    clustered = evaluator.evaluate({"cluster.k": 4})
    assert clustered.recipe["weight_encoding"] == {"kind": "codebook", "entries": 4}
    weights = {k: v for k, v in clustered.state_dict.items() if k.endswith("weight") and v.dim() >= 2}
    assert weights and all(len(torch.unique(w)) <= 4 for w in weights.values()), \
        {k: len(torch.unique(w)) for k, w in weights.items()}
    packed = pack(clustered.artifact, artifact_format="onnx", bits=32, encoding={"kind": "codebook", "entries": 4})
    assert len(packed) == clustered.measurement.size_bytes
    assert unpack(packed).artifact == clustered.artifact and unpack(packed).meta["weight_encoding"]["entries"] == 4
    big = [t for t in describe(packed) if t["shape"] and len(t["shape"]) >= 2]
    assert big and all(t["encoding"]["kind"] == "codebook" and t["encoding"]["width"] <= 2 for t in big)
    assert clustered.measurement.size_bytes < 0.15 * plain.measurement.size_bytes
    assert any("4-entry codebook" in f for f in clustered.measurement.flags)
    # the stored candidate rebuilds (BatchNorm folded by the core lowering) and predicts alike
    rebuilt = evaluator.rebuild(clustered.recipe, clustered.state_dict)
    x = evaluator.task.data.x_val[:16]
    ours = np.asarray(clustered.artifact and _ort_logits(clustered.artifact, x))
    torch.testing.assert_close(rebuilt(x), torch.from_numpy(ours), atol=1e-4, rtol=1e-4)


def _ort_logits(artifact: bytes, x: torch.Tensor) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(artifact, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: x[i:i + 1].numpy()})[0] for i in range(len(x))])


def test_clustering_composes_with_weight_pruning_and_int8(evaluator):
    values = {"quant.bits": 8, "prune.ratio": 0.5, "prune.granularity": "weight"}
    without = evaluator.evaluate(values)
    result = evaluator.evaluate({**values, "cluster.k": 4})
    int8 = {k: v for k, v in _onnx_weights(result.artifact).items() if v.dtype == np.int8}
    assert int8, "the 8-bit artifact runs int8 weights"
    for name, w in int8.items():
        rows = w.reshape(w.shape[0], -1)
        assert all(len(set(row.tolist()) - {0}) <= 4 for row in rows), name  # k values per output channel
    zeros = sum(int((w == 0).sum()) for w in int8.values()) / sum(w.size for w in int8.values())
    assert zeros >= 0.45  # pruning's zeros survive clustering and int8
    packed = pack(result.artifact, artifact_format="onnx", bits=8, encoding=WeightEncoding("codebook", 4).to_dict())
    assert unpack(packed).artifact == result.artifact and len(packed) == result.measurement.size_bytes
    assert result.measurement.size_bytes < without.measurement.size_bytes
    assert result.measurement.accuracy > 0.8
