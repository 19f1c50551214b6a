"""The packed model file: lossless encodings, exact round trips (also in a fresh process
with only numpy + onnxruntime), sizes that are file lengths, clear errors on bad files."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from onnx import numpy_helper
from torch import nn

from slimtune.cli import main
from slimtune.search.packed import (
    PackedFileError,
    decode_tensor,
    describe,
    encode_tensor,
    load_packed,
    pack,
    pack_uint,
    unpack,
    unpack_uint,
)
from slimtune.search._runtimes import compile_model
from slimtune.spaces.base import KnobContext
from slimtune.spaces.exits import EarlyExitNet, ExitHead
from slimtune.spaces.pruning import Pruning
from slimtune.spaces.quantization import snap_weights
from slimtune.tasks._models import resnet8, small_cnn
from tests._train import train_plain

ROOT = Path(__file__).resolve().parents[1]


# -- encodings --------------------------------------------------------------------------
@pytest.mark.parametrize("width", [0, 1, 2, 3, 4, 7, 8, 13, 31, 32, 33, 64])
def test_bit_packing_round_trips_at_every_width(width):
    rng = np.random.default_rng(width)
    high = 2 ** width if width < 64 else 2 ** 63
    values = rng.integers(0, max(high, 1), size=1001, dtype=np.uint64)
    if width == 64:
        values[0] = np.uint64(2 ** 64 - 1)
    data = pack_uint(values, width)
    assert len(data) == (1001 * width + 7) // 8
    assert np.array_equal(unpack_uint(data, 1001, width), values)


def _roundtrip(arr: np.ndarray, dtype: str | None = None, shape=None) -> dict:
    spec, payload = encode_tensor(arr.tobytes(), dtype or arr.dtype.str, shape)
    count = arr.nbytes // np.dtype(spec["dtype"]).itemsize
    assert decode_tensor(spec, payload, spec["dtype"], count, shape) == arr.tobytes()
    assert spec["bytes"] == len(payload) <= arr.nbytes
    return spec


def test_each_encoding_is_chosen_when_smallest_and_is_exact():
    rng = np.random.default_rng(0)
    q4 = rng.integers(-7, 8, size=(16, 8, 3, 3)).astype(np.int8)
    spec = _roundtrip(q4, shape=q4.shape)
    assert (spec["kind"], spec["width"], spec["offset"], spec["bytes"]) == ("int", 4, -7, q4.size // 2)

    w = rng.standard_normal((16, 27)).astype(np.float32)
    assert _roundtrip(w, shape=w.shape)["kind"] == "raw"  # nothing exact is smaller
    assert _roundtrip(w.astype(np.float16).astype(np.float32), shape=w.shape)["kind"] == "fp16"

    scales = (np.abs(w).max(axis=1) / 7).astype(np.float16).astype(np.float32)  # quantize_weight's scales
    q = np.clip(np.rint(w / scales[:, None]), -7, 7).astype(np.int8)  # integers: no -0.0 (it would stay raw)
    on_grid = q.astype(np.float32) * scales[:, None]
    spec = _roundtrip(on_grid, shape=on_grid.shape)
    assert (spec["kind"], spec["axis"], spec["width"]) == ("grid", 0, 4)
    assert spec["bytes"] == 16 * 2 + on_grid.size // 2  # fp16 scales + 4-bit integers

    pruned = w.copy()
    pruned[np.abs(pruned) < np.quantile(np.abs(pruned), 0.7)] = 0
    spec = _roundtrip(pruned, shape=pruned.shape)
    nnz = int(np.count_nonzero(pruned))
    assert spec["sparse"] and spec["bytes"] == (pruned.size + 7) // 8 + 4 * nnz  # bitmask + fp32 non-zeros

    signed = pruned * np.where(np.arange(16) % 2, -1, 1).astype(np.float32)[:, None]  # a folded BN's signs
    spec = _roundtrip(signed, shape=signed.shape)  # every other channel's zeros are -0.0: one bit per channel
    assert spec["zero_signs"] == "channel" and spec["bytes"] == (pruned.size + 7) // 8 + 2 + 4 * nnz

    minus_zero = np.array([0.0, -0.0, 1.5, 0.0], dtype=np.float32)  # -0.0 must survive
    assert _roundtrip(minus_zero)["bytes"] < minus_zero.nbytes
    untyped = _roundtrip(q4, dtype=None)  # a TorchScript storage: the reading is found
    assert untyped["dtype"] == "|i1" and untyped["width"] == 4


# -- round trips of compiled candidates ----------------------------------------------------
@pytest.fixture(scope="module")
def digits(digits_task):
    return digits_task.data


@pytest.fixture(scope="module")
def trained(digits):
    torch.manual_seed(0)
    return train_plain(small_cnn(width=16), digits.x_train, digits.y_train, epochs=4)


def _weight_pruned(model: nn.Module, x: torch.Tensor, ratio: float) -> nn.Module:
    ctx = KnobContext(example_input=x[:4], calibration=x[:4], finetune=lambda *a, **k: None, info={"flags": []})
    return Pruning().apply(copy.deepcopy(model), {"prune.ratio": ratio, "prune.granularity": "weight",
                                                  "prune.rewind": False}, ctx).eval()


def _exit_net(digits) -> nn.Module:
    torch.manual_seed(0)
    base = small_cnn(width=8)
    net = EarlyExitNet(base.blocks, base.head, {1: ExitHead(16, 10)}, {1: 2.0})
    train_plain(net, digits.x_train, digits.y_train, epochs=2)
    with torch.no_grad():
        confidence = F.softmax(net.forward_all(digits.x_test)[0], -1).amax(-1)
    net.set_thresholds([float(confidence.quantile(0.5))])
    return net


@pytest.fixture(scope="module")
def compiled(trained, digits):
    """name -> (compiled model, bits) of the candidates the round trips run on."""
    calib = digits.x_train[:128]

    def snapped(bits: int) -> nn.Module:
        model = copy.deepcopy(trained)
        snap_weights(model, bits)
        return model

    out = {
        "int8": (compile_model(snapped(8), bits=8, calibration=calib), 8),
        "int4": (compile_model(snapped(4), bits=4, calibration=calib), 4),
        "pruned70_fp32": (compile_model(_weight_pruned(trained, digits.x_train, 0.7), bits=32, calibration=calib), 32),
        "exits_int8": (compile_model(_exit_net(digits), bits=8, calibration=calib), 8),
        "torch_int4": (compile_model(snapped(4), runtime="torch", bits=4, calibration=calib), 4),
    }
    assert out["exits_int8"][0].has_exits and out["torch_int4"][0].kernel_bits == 8
    return out


def _initializers(model_bytes: bytes) -> dict[str, bytes]:
    """Every initializer's bytes, those inside If subgraphs included."""
    found: dict[str, bytes] = {}

    def walk(graph, prefix: str) -> None:
        for t in graph.initializer:
            found[prefix + t.name] = numpy_helper.to_array(t).tobytes()
        for node in graph.node:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    walk(attr.g, f"{prefix}{node.name}/{attr.name}/")

    walk(onnx.load_from_string(model_bytes).graph, "")
    return found


def test_unpack_restores_the_exact_artifact(compiled):
    for name, (c, bits) in compiled.items():
        data = pack(c.artifact, artifact_format=c.artifact_format, bits=bits)
        artifact, meta = unpack(data)
        assert artifact == c.artifact, name  # byte for byte: graph, subgraphs, every tensor
        assert meta == {"bits": bits, "artifact_format": c.artifact_format, "artifact_bytes": len(c.artifact)}
        assert pack(c.artifact, artifact_format=c.artifact_format, bits=bits) == data  # deterministic
        if c.artifact_format == "onnx":
            originals = _initializers(c.artifact)
            assert _initializers(artifact) == originals and len(originals) > 4
    exits = compiled["exits_int8"][0].artifact
    nested = {k.rsplit("/", 1)[1] for k in _initializers(exits) if "/" in k and k.endswith("weight_quantized")}
    assert len(nested) >= 2  # the exit model keeps weights inside its If subgraphs ...
    packed = {t["name"]: t["encoding"] for t in describe(pack(exits, artifact_format="onnx", bits=8))}
    assert nested <= set(packed) and all(packed[k]["dtype"] == "|i1" for k in nested)  # ... packed too


def test_low_bit_weights_are_stored_at_their_bits(compiled):
    for name, bits in (("int4", 4), ("torch_int4", 4)):
        c = compiled[name][0]
        widths = [t["encoding"].get("width") for t in describe(pack(c.artifact, artifact_format=c.artifact_format,
                                                                     bits=bits))
                  if t["encoding"].get("dtype") == "|i1" and t["length"] >= 64]
        assert widths and all(w <= bits for w in widths), (name, widths)


def test_packed_file_predicts_the_same_in_a_fresh_process(compiled, digits, tmp_path):
    """Only numpy, onnxruntime and slimtune.search.packed are imported there (no torch,
    no onnx); the predictions on the test split equal those of the timed model."""
    x = digits.x_test.numpy().astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    names = [n for n, (c, _) in compiled.items() if c.artifact_format == "onnx"]
    for name in names:
        c, bits = compiled[name]
        (tmp_path / f"{name}.slim").write_bytes(pack(c.artifact, artifact_format="onnx", bits=bits))
    script = textwrap.dedent("""
        import json, sys
        import numpy as np, onnxruntime as ort
        from slimtune.search.packed import load_packed
        x = np.load(sys.argv[1] + "/x.npy")
        out = {}
        for name in sys.argv[2:]:
            artifact, meta = load_packed(sys.argv[1] + "/" + name + ".slim")
            session = ort.InferenceSession(artifact, providers=["CPUExecutionProvider"])
            preds = [int(session.run(None, {"input": x[i:i + 1]})[0].argmax(-1)[0]) for i in range(len(x))]
            out[name] = preds
        banned = sorted(m for m in ("torch", "onnx", "slimtune.search._runtimes") if m in sys.modules)
        print(json.dumps({"preds": out, "banned": banned}))
    """)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path), *names], capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["banned"] == []
    for name in names:
        expected = compiled[name][0].predict(digits.x_test).argmax(-1)
        assert result["preds"][name] == expected.tolist(), name
        floor = 0.3 if name.startswith("pruned") else 0.8  # 70% of the weights cut, not fine-tuned
        assert float((expected == digits.y_test.numpy()).mean()) > floor, name


def test_torchscript_packed_file_loads_and_predicts_the_same(compiled, digits, tmp_path):
    c, bits = compiled["torch_int4"]
    path = tmp_path / "model.slim"
    path.write_bytes(pack(c.artifact, artifact_format="torchscript", bits=bits))
    artifact, meta = load_packed(path)
    assert artifact == c.artifact and meta["artifact_format"] == "torchscript"
    import io

    module = torch.jit.load(io.BytesIO(artifact))
    with torch.no_grad():
        assert torch.equal(module(digits.x_test).argmax(-1), torch.from_numpy(c.predict(digits.x_test).argmax(-1)))


# -- sizes ----------------------------------------------------------------------------------
def _sizes(model: nn.Module, calib: torch.Tensor) -> dict[int, tuple[int, int]]:
    out = {}
    for bits in (32, 16, 8, 4, 2):
        m = copy.deepcopy(model)
        snap_weights(m, bits) if bits < 32 else None
        c = compile_model(m, bits=bits, calibration=calib)
        out[bits] = (len(pack(c.artifact, artifact_format="onnx", bits=bits)), len(c.artifact))
    return out


def test_fewer_bits_give_smaller_files_and_pruning_shrinks_fp32(trained, digits):
    sizes = _sizes(trained, digits.x_train[:128])
    ratios = {b: sizes[32][0] / s for b, (s, _) in sizes.items()}
    print("\nsmall_cnn(16) on digits, packed / artifact bytes:",
          {b: s for b, s in sizes.items()}, "fp32/packed ratios:", {b: round(r, 2) for b, r in ratios.items()})
    assert sizes[2][0] < sizes[4][0] < sizes[8][0] < sizes[16][0] < sizes[32][0]
    assert ratios[16] > 1.8 and ratios[8] > 3.0 and ratios[4] > 5.0  # the weights dominate this model
    assert sizes[32][0] <= sizes[32][1]  # fp32: the packed file is never larger than the ONNX file
    pruned = compile_model(_weight_pruned(trained, digits.x_train, 0.7), bits=32, calibration=digits.x_train[:128])
    pruned_size = len(pack(pruned.artifact, artifact_format="onnx", bits=32))
    print(f"70% weight-pruned fp32: {pruned_size:,} B packed vs {sizes[32][0]:,} B dense "
          f"({sizes[32][0] / pruned_size:.2f}x); ONNX files {len(pruned.artifact):,} vs {sizes[32][1]:,} B")
    assert pruned_size < 0.6 * sizes[32][0]  # bitmask + 30% of the fp32 weights
    assert abs(len(pruned.artifact) - sizes[32][1]) < 0.02 * sizes[32][1]  # the ONNX file stays dense


def test_resnet8_sizes_by_bits():  # about 5 s
    torch.manual_seed(0)
    model = resnet8().eval()
    sizes = _sizes(model, torch.randn(64, 1, 28, 28))
    print("\nResNet-8 (random weights, 28x28), packed / artifact bytes:", sizes)
    assert sizes[2][0] < sizes[4][0] < sizes[8][0] < sizes[16][0] < sizes[32][0]


# -- bad files -------------------------------------------------------------------------------
def test_bad_files_give_one_clear_error(compiled, tmp_path):
    c, bits = compiled["int4"]
    data = pack(c.artifact, artifact_format="onnx", bits=bits)
    path = tmp_path / "m.slim"
    cases = {
        "truncated": (data[:-10], "truncated packed file"),
        "cut in the header": (data[:20], "truncated packed file"),
        "not one": (c.artifact, "not a slimtune packed file"),
        "newer": (data[:4] + bytes([99]) + data[5:], "format version 99 is not supported"),
        "payload flipped": (data[:-5] + bytes([data[-5] ^ 0xFF]) + data[-4:], "does not match the sha256"),
        "header flipped": (data[:12] + bytes([data[12] ^ 0xFF]) + data[13:], "corrupt packed file"),
    }
    for name, (bad, message) in cases.items():
        path.write_bytes(bad)
        with pytest.raises(PackedFileError, match=message) as info:
            load_packed(path)
        assert str(path) in str(info.value) and "\n" not in str(info.value), name
    with pytest.raises(PackedFileError, match="cannot read packed file"):
        load_packed(tmp_path / "missing.slim")


# -- a study: stored sizes are the lengths of the exported files ------------------------------
TASK = "tests.user_task:make_task"


def invoke(*args: str):
    return CliRunner().invoke(main, list(args))


@pytest.mark.parametrize("runtime", ["onnxruntime", "torch"])
def test_stored_sizes_are_the_lengths_of_the_exported_files(tmp_path, runtime):
    url = f"sqlite:///{tmp_path / 's.db'}"
    run = invoke("run", "--study", "p", "--task", TASK, "--trials", "2", "--seed", "1", "--no-early-stopping", "--no-warm-start",
                 "--epochs", "1", "--latency-repeats", "3", "--runtime", runtime, "--fix", "quant.bits=4",
                 "--storage", url)
    assert run.exit_code == 0, run.output
    rows = [r for r in json.loads(invoke("show", "p", "--json", "--storage", url).stdout)["trials"] if r["state"] == "COMPLETE"]
    assert rows
    for r in rows:
        suffix = {"onnxruntime": ".onnx", "torch": ".pt"}[runtime]  # the timed artifact's format
        packed, artifact = tmp_path / f"t{r['trial']}.slim", tmp_path / f"t{r['trial']}{suffix}"
        out = invoke("export", "p", "--trial", str(r["trial"]), "--out", str(packed), "--storage", url)
        assert out.exit_code == 0 and "(packed," in out.output, out.output
        assert invoke("export", "p", "--trial", str(r["trial"]), "--out", str(artifact), "--storage", url).exit_code == 0
        assert r["size_bytes"] == packed.stat().st_size < r["artifact_bytes"] == artifact.stat().st_size
        assert load_packed(packed).artifact == artifact.read_bytes()
    table = invoke("show", "p", "--storage", url).output
    assert "pack_KiB" in table and "art_KiB" in table and f"{rows[0]['artifact_bytes'] / 1024:.1f}" in table
    # --max-size-kb is on the packed file, --max-artifact-kb on the timed artifact
    small = min(rows, key=lambda r: r["size_bytes"])
    kib = small["size_bytes"] / 1024
    picked = json.loads(invoke("select", "p", "--max-size-kb", f"{kib + 0.001}", "--json", "--task", TASK, "--storage",
                               url).stdout)  # the input of a TorchScript artifact is the user task's: named again
    assert picked["size_bytes"] <= small["size_bytes"]
    tight = invoke("select", "p", "--max-artifact-kb", f"{kib + 0.001}", "--storage", url)
    assert tight.exit_code == 1 and "artifact <=" in tight.output  # every artifact is larger than that packed file
    art = max(r["artifact_bytes"] for r in rows) / 1024
    assert invoke("select", "p", "--max-artifact-kb", f"{art + 0.001}", "--storage", url).exit_code == 0
    assert invoke("select", "p", "--max-artifact-kb", "-1", "--storage", url).exit_code == 2
