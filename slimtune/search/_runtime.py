"""Compile a torch model into what is timed and exported.

``compile_model`` returns a :class:`CompiledModel`: the runnable artifact of one
runtime (an ONNX model in an ONNX Runtime session, or a torch module with its
TorchScript bytes).  Accuracy, latency and the exported file all come from it.

- ``onnxruntime``: ``torch.onnx.export(dynamo=False)``; bits 32/16 run the fp32
  graph (16: the weights are fp16-rounded, no fp16 CPU kernel is used); bits <= 8 run
  ``quantize_static`` QDQ: per-channel symmetric weights, 8-bit activations
  calibrated on training inputs.  The weight scales are those of
  :func:`slimtune.spaces.quantization.quantize_weight` (given to ORT as tensor
  overrides, then every weight's DequantizeLinear integers are checked and rewritten
  to the exact b-bit values), so the int8 kernels compute with exactly the b-bit
  weights.
- The int8 *format* (``int8_format`` argument, else ``$SLIMTUNE_INT8_FORMAT``, else
  ``auto``): ``u8s8`` (uint8 activations, int8 weights: ORT's fastest x86 kernels),
  ``u8u8`` (uint8 weights ``q + 128``, zero point 128: the same integers, ORT's U8U8
  kernels, which never saturate) or ``s8s8`` (int8 activations; ORT on x86 turns
  them back into U8S8).  ``auto`` is ``u8s8`` unless this CPU's U8S8 kernels can
  saturate (x86 AVX2/AVX-512 without VNNI, see :mod:`slimtune.search._cpu`) *and* the
  b-bit grid exceeds +-64 (8 bits), then ``u8u8``; grids of 6 bits and less never
  saturate (the effect of ``reduce_range``, without changing the 8-bit grid).  A
  forced format that can saturate here is flagged; the format used is
  ``CompiledModel.int8_format``.
- Early-exit models (with ``segments()``) become ONE ONNX model: each segment is
  exported (and quantized, calibrated on the previous segment's outputs) separately,
  then composed with nested ``If`` nodes, each taken when
  ``max softmax(exit logits) >= threshold``.  **Batch 1 only**: the input's batch
  dimension is fixed to 1, so ONNX Runtime refuses any other batch with its shape
  error (one ``exit_index`` per call, never one for a whole batch); run a batch
  sample by sample (``CompiledModel.predict_with_exits``).  Outputs: ``logits``
  (``[1, classes]``) and ``exit_index`` (shape ``[1]``, int64; the last index is the
  final classifier).
- ``torch``: eager fp32 (bits 32/16); bits <= 8 through torch.ao FX quantization
  (x86 backend, per-channel weights, 7-bit activations by its ``reduce_range``, so
  its U8S8 kernels cannot saturate) with the exact b-bit weights set into the
  quantized layers, or, if FX fails, the snapped fp32 model (flagged,
  ``kernel_bits=32``).  The artifact is TorchScript (traced; early-exit models are
  scripted around traced segments, and refuse a batch other than 1), and **what is
  timed and scored is that artifact**: the stored bytes loaded back with
  ``torch.jit.load`` (``CompiledModel.module``; saving it again gives the same bytes),
  not the eager/FX module it was traced from.

Example:
    >>> compiled = compile_model(model, runtime="onnxruntime", bits=8, calibration=x_train[:256])
    >>> logits = compiled.predict(x_test)
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import logging
import os
import tempfile
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Iterator, List, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from slimtune.search._cpu import SAFE_U8S8_WEIGHT, u8s8_can_saturate
from slimtune.search._measurement import RUNTIMES
from slimtune.spaces.quantization import FP16_FLAG, fold_batchnorm, low_bit_flag, qmax, quantize_weight, snap_weights

OPSET = 17
INPUT = "input"
CALIBRATION_BATCH = 64
#: ONNX Runtime int8 formats (activations, weights); ``auto`` picks one for this CPU.
INT8_FORMATS = ("auto", "u8s8", "u8u8", "s8s8")
INT8_FORMAT_ENV = "SLIMTUNE_INT8_FORMAT"
#: What torch's FX x86 int8 computes: uint8 activations limited to 7 bits, int8 weights.
TORCH_INT8_FORMAT = "u8s8-reduce-range"

Segment = Tuple[nn.Module, "nn.Module | None", "float | None"]


# -- the compiled model ---------------------------------------------------------
@dataclass
class CompiledModel:
    """A model ready to run on one runtime.

    Attributes:
        runtime: ``onnxruntime`` or ``torch``.
        bits: the weight bits the model represents.
        kernel_bits: bit width of the kernels that actually run (32 or 8).
        artifact, artifact_format: the exported bytes (``onnx`` or ``torchscript``).
        flags: honest notes (no sub-8-bit kernel, no fp16 kernel, ...).
        num_exits: number of early exits (0 for a static model).
        info: details (e.g. the op types ORT actually runs after optimisation).
        module: the torch module that runs (``torch`` runtime only): the TorchScript
            artifact loaded back from ``artifact``.
        int8_format: the int8 format of the kernels (``u8s8``, ``u8u8``, ``s8s8``,
            ``u8s8-reduce-range`` for torch); ``None`` when no int8 kernel runs.
    """

    runtime: str
    bits: int
    kernel_bits: int
    artifact: bytes
    artifact_format: str
    threads: int
    flags: tuple[str, ...]
    num_exits: int
    _run: Callable[[Any], "tuple[np.ndarray, np.ndarray | None]"] = field(repr=False)
    _prepare: Callable[[Any], Any] = field(repr=False)
    info: dict[str, Any] = field(default_factory=dict)
    module: "nn.Module | None" = field(default=None, repr=False)
    int8_format: str | None = None

    @property
    def has_exits(self) -> bool:
        return self.num_exits > 0

    def prepare(self, x: "torch.Tensor | np.ndarray") -> Any:
        """``x`` in the runtime's native input type (do this outside timed loops)."""
        return self._prepare(x)

    def run_one(self, x: Any) -> Any:
        """Run the model once on ``x`` (one batch; the call that is timed)."""
        return self._run(self._prepare(x))

    def predict_with_exits(self, x: "torch.Tensor | np.ndarray") -> tuple[np.ndarray, np.ndarray]:
        """Logits and the exit taken, for every sample, one sample at a time
        (early-exit models; static models report exit 0 for every sample)."""
        logits, exits = [], []
        for i in range(len(x)):
            out, idx = self._run(self._prepare(x[i:i + 1]))
            logits.append(np.asarray(out))
            exits.append(int(np.asarray(idx).reshape(-1)[0]) if idx is not None else 0)
        return np.concatenate(logits), np.asarray(exits, dtype=np.int64)

    def predict(self, x: "torch.Tensor | np.ndarray", batch_size: int = 256) -> np.ndarray:
        """Logits for every sample; early-exit models run sample by sample."""
        if self.has_exits:
            return self.predict_with_exits(x)[0]
        outs = [np.asarray(self._run(self._prepare(x[i:i + batch_size]))[0]) for i in range(0, len(x), batch_size)]
        return np.concatenate(outs)


def compile_model(
    model: nn.Module,
    *,
    runtime: str = "onnxruntime",
    bits: int,
    calibration: torch.Tensor,
    threads: int = 1,
    int8_format: str | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> CompiledModel:
    """Compile ``model`` (a copy; BatchNorm folded) for ``runtime`` at ``bits``.

    Args:
        model: the torch model (possibly already snapped by the quantization knob;
            possibly an early-exit network with ``segments()``).
        runtime: ``onnxruntime`` or ``torch``.
        bits: 32, 16, 8, 6, 4 or 2 (weights; activations 8-bit when bits <= 8).
        calibration: training inputs for activation ranges (never test data).
        threads: intra-op threads (ORT session; ``torch.set_num_threads``).
        int8_format: ``auto``, ``u8s8``, ``u8u8`` or ``s8s8`` for ONNX Runtime at
            bits <= 8 (default ``$SLIMTUNE_INT8_FORMAT``, else ``auto``; see the module
            docstring).  torch's FX int8 has one format (``u8s8-reduce-range``) and
            ignores it.
        metadata: written into an ONNX artifact's ``metadata_props`` (strings; other
            values as JSON) with how to feed it (input name, shape, dtype, outputs,
            batch), before the session that is timed is built from those bytes: the
            stored and exported file is the timed one.  TorchScript artifacts carry none.
    """
    if runtime not in RUNTIMES:
        raise ValueError(f"`runtime` must be one of {', '.join(RUNTIMES)}, but got {runtime!r}.")
    if bits not in (32, 16, 8, 6, 4, 2):
        raise ValueError(f"`bits` must be one of 32, 16, 8, 6, 4, 2, but got {bits!r}.")
    requested = requested_int8_format(int8_format)
    model = fold_batchnorm(copy.deepcopy(model).eval())
    if bits == 16:
        snap_weights(model, 16)  # idempotent when the quantization knob already did it
    calibration = torch.as_tensor(calibration).float()
    segments = exit_segments(model)
    if runtime == "onnxruntime":
        return _compile_ort(model, segments, bits, calibration, threads, requested, metadata)
    return _compile_torch(model, segments, bits, calibration, threads)


def requested_int8_format(int8_format: str | None = None) -> str:
    """``int8_format``, else ``$SLIMTUNE_INT8_FORMAT``, else ``auto``; checked against
    :data:`INT8_FORMATS`."""
    source = "`int8_format`"
    if int8_format is None:
        int8_format, source = os.environ.get(INT8_FORMAT_ENV) or "auto", f"${INT8_FORMAT_ENV}"
    name = str(int8_format).strip().lower()
    if name not in INT8_FORMATS:
        raise ValueError(f"{source} must be one of {', '.join(INT8_FORMATS)}, but got {int8_format!r}.")
    return name


def choose_int8_format(requested: str, bits: int, *, saturates: bool | None = None) -> str:
    """The ONNX Runtime int8 format for a ``bits``-bit weight grid: ``requested`` unless
    it is ``auto``, which is ``u8u8`` where this CPU's U8S8 kernels can saturate
    (``saturates``, default :func:`~slimtune.search._cpu.u8s8_can_saturate`) and the
    grid exceeds +-64, else ``u8s8``."""
    if requested != "auto":
        return requested
    if saturates is None:
        saturates = u8s8_can_saturate()
    return "u8u8" if saturates and qmax(bits) > SAFE_U8S8_WEIGHT else "u8s8"


def saturation_flag(int8_format: str, bits: int, *, saturates: bool | None = None) -> str | None:
    """The note a measurement carries when its int8 kernels can saturate on this CPU
    (a U8S8 path, 8-bit weights, x86 AVX2/AVX-512 without VNNI); ``None`` otherwise."""
    if int8_format not in ("u8s8", "s8s8") or qmax(bits) <= SAFE_U8S8_WEIGHT:
        return None
    if saturates is None:
        saturates = u8s8_can_saturate()
    if not saturates:
        return None
    return (f"int8 format {int8_format} on a CPU whose U8S8 kernels can saturate (x86 AVX2/AVX-512 without VNNI): "
            f"{bits}-bit weights beyond +-{SAFE_U8S8_WEIGHT} may overflow 16-bit sums; "
            f"{INT8_FORMAT_ENV}=auto or u8u8 avoids it")


def exit_segments(model: nn.Module) -> list[Segment] | None:
    """The model's ``segments()`` normalised so that every segment but the last has
    an exit head and a threshold (head-less pieces are merged into the next one);
    ``None`` for a model without exits."""
    if not callable(getattr(model, "segments", None)):
        return None
    pending: list[nn.Module] = []
    out: list[Segment] = []
    raw = list(model.segments())
    for i, (piece, head, threshold) in enumerate(raw):
        pending.append(piece)
        last = i == len(raw) - 1
        if last or (head is not None and threshold is not None):
            trunk = pending[0] if len(pending) == 1 else nn.Sequential(*pending)
            out.append((trunk, None if last else head, None if last else float(threshold)))
            pending = []
    return out if len(out) > 1 else None


class _WithExit(nn.Module):
    """A trunk piece and its exit head: ``x -> (features, exit logits)``."""

    def __init__(self, trunk: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.trunk = trunk
        self.head = head

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        features = self.trunk(x)
        return features, self.head(features)


def _segment_modules(segments: list[Segment]) -> list[nn.Module]:
    return [trunk if head is None else _WithExit(trunk, head) for trunk, head, _ in segments]


def _as_numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.ascontiguousarray(x, dtype=np.float32)


def _as_tensor(x: Any) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.float() if x.dtype != torch.float32 else x
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))


# -- ONNX Runtime ----------------------------------------------------------------
def _export_onnx(module: nn.Module, example: torch.Tensor, output_names: list[str]):
    import onnx

    buffer = io.BytesIO()
    axes = {INPUT: {0: "batch"}, **{name: {0: "batch"} for name in output_names}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (example,), buffer, dynamo=False, opset_version=OPSET, input_names=[INPUT],
                          output_names=output_names, dynamic_axes=axes, do_constant_folding=True)
    return _inline_shared_initializers(onnx.load_from_string(buffer.getvalue()))


def _inline_shared_initializers(model):
    """The exporter de-duplicates equal initializers (e.g. two all-zero biases) into
    ``Identity`` nodes; give each layer its own copy again so that every weight and
    bias is an initializer the quantizer can see."""
    inits = {t.name: t for t in model.graph.initializer}
    keep = []
    for node in model.graph.node:
        if node.op_type == "Identity" and node.input[0] in inits:
            copy_ = type(inits[node.input[0]])()
            copy_.CopyFrom(inits[node.input[0]])
            copy_.name = node.output[0]
            model.graph.initializer.append(copy_)
        else:
            keep.append(node)
    del model.graph.node[:]
    model.graph.node.extend(keep)
    return model


def _weight_axes(model) -> dict[str, int]:
    """Initializers that are layer weights (Conv / Gemm / MatMul input 1) and the axis
    of their output channels."""
    inits = {t.name for t in model.graph.initializer}
    axes: dict[str, int] = {}
    for node in model.graph.node:
        if len(node.input) < 2 or node.input[1] not in inits:
            continue
        if node.op_type == "Conv":
            axes[node.input[1]] = 0
        elif node.op_type == "Gemm":
            trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
            axes[node.input[1]] = 0 if trans_b else 1
        elif node.op_type == "MatMul":
            axes[node.input[1]] = 1
    return axes


def _bbit_weights(model, bits: int) -> dict[str, tuple[np.ndarray, np.ndarray, int]]:
    """``name -> (int8 values, fp32 scales, axis)``: each weight on its b-bit grid."""
    from onnx import numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    out = {}
    for name, axis in _weight_axes(model).items():
        w = torch.from_numpy(numpy_helper.to_array(inits[name]).copy())
        q, scale = quantize_weight(w.movedim(axis, 0), bits)
        out[name] = (q.movedim(0, axis).numpy(), scale.numpy().astype(np.float32), axis)
    return out


@contextlib.contextmanager
def _quiet_logging() -> Iterator[None]:
    """onnxruntime.quantization warns through the root logger (pre-processing advice)."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)


class _Calibration:
    """``onnxruntime.quantization.CalibrationDataReader`` over an array, in batches."""

    def __init__(self, data: np.ndarray, batch: int = CALIBRATION_BATCH) -> None:
        self._batches = [data[i:i + batch] for i in range(0, len(data), batch)]
        self._i = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._i >= len(self._batches):
            return None
        self._i += 1
        return {INPUT: self._batches[self._i - 1]}

    def rewind(self) -> None:
        self._i = 0


#: ``format -> (activation type, weight type)`` names of ``onnxruntime.quantization.QuantType``.
_QUANT_TYPES = {"u8s8": ("QUInt8", "QInt8"), "u8u8": ("QUInt8", "QUInt8"), "s8s8": ("QInt8", "QInt8")}


def _stored_weight(q: np.ndarray, int8_format: str) -> tuple[np.ndarray, np.ndarray]:
    """The b-bit integers ``q`` (int8, symmetric) as the format stores them, and the
    per-channel zero point: int8 with zero point 0, or uint8 ``q + 128`` with zero
    point 128 (the same products: ``(q + 128) - 128 = q``)."""
    if _QUANT_TYPES[int8_format][1] == "QUInt8":
        return (q.astype(np.int16) + 128).astype(np.uint8), np.uint8(128)
    return q.astype(np.int8), np.int8(0)


def _quantize_onnx(model, calibration: np.ndarray, bits: int, int8_format: str = "u8s8"):
    """QDQ int8 model (per-channel symmetric weights on the exact b-bit grid, 8-bit
    activations calibrated on ``calibration``) in ``int8_format`` (see
    :data:`_QUANT_TYPES`).

    Returns ``(model, rewritten, float_weights)``: the number of DequantizeLinear
    weights whose integers had to be fixed, and the weights ORT left in float (their
    values are snapped to the b-bit grid; they run on fp32 kernels)."""
    import onnx
    from onnx import numpy_helper
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    activation_type, weight_type = (getattr(QuantType, t) for t in _QUANT_TYPES[int8_format])
    grid = _bbit_weights(model, bits)
    zero_point = _stored_weight(np.zeros(1, np.int8), int8_format)[1]
    overrides = {
        name: [{"axis": axis, "scale": np.float32(s), "zero_point": zero_point} for s in scale]
        for name, (_, scale, axis) in grid.items()
    }
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings(), _quiet_logging():
        warnings.simplefilter("ignore")
        out_path = os.path.join(tmp, "quantized.onnx")
        quantize_static(
            model, out_path, _Calibration(calibration), quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=activation_type, weight_type=weight_type, calibrate_method=CalibrationMethod.MinMax,
            extra_options={"WeightSymmetric": True, "TensorQuantOverrides": overrides},
        )
        quantized = onnx.load(out_path)
    # Post-process: every weight's DequantizeLinear must hold exactly the b-bit values.
    inits = {t.name: t for t in quantized.graph.initializer}
    rewritten = 0
    for node in quantized.graph.node:
        if node.op_type != "DequantizeLinear":
            continue
        name = node.input[0]
        source = name[: -len("_quantized")] if name.endswith("_quantized") else None
        if source not in grid or name not in inits:
            continue
        q, scale, axis = grid[source]
        stored, zp = _stored_weight(q, int8_format)
        zps = np.full(len(scale), zp, dtype=stored.dtype)
        current = numpy_helper.to_array(inits[name])
        cur_scale = numpy_helper.to_array(inits[node.input[1]])
        cur_zp = numpy_helper.to_array(inits[node.input[2]]) if len(node.input) > 2 and node.input[2] in inits else None
        if (current.dtype != stored.dtype or not np.array_equal(current, stored) or not np.array_equal(cur_scale, scale)
                or cur_zp is None or cur_zp.dtype != stored.dtype or not np.array_equal(cur_zp.reshape(-1), zps)):
            inits[name].CopyFrom(numpy_helper.from_array(stored, name))
            inits[node.input[1]].CopyFrom(numpy_helper.from_array(scale, node.input[1]))
            if cur_zp is not None:
                inits[node.input[2]].CopyFrom(numpy_helper.from_array(zps.reshape(cur_zp.shape), node.input[2]))
            else:
                zp_name = name + "_zero_point"
                quantized.graph.initializer.append(numpy_helper.from_array(zps, zp_name))
                del node.input[2:]
                node.input.append(zp_name)
            rewritten += 1
    # Weights ORT left in float (none on the built-in models) still get b-bit values.
    snapped = []
    for name in sorted(set(grid) & set(inits)):
        q, scale, axis = grid[name]
        shape = [1] * q.ndim
        shape[axis] = -1
        inits[name].CopyFrom(numpy_helper.from_array((q.astype(np.float32) * scale.reshape(shape)), name))
        snapped.append(name)
    return quantized, rewritten, snapped


def _no_telemetry(ort: Any) -> None:
    """Turn ONNX Runtime's telemetry events off, once (``slimtune/__init__`` also sets
    ``ORT_DISABLE_TELEMETRY`` before ORT is first imported: nothing under ~/.cache)."""
    global _TELEMETRY_OFF
    if not _TELEMETRY_OFF and hasattr(ort, "disable_telemetry_events"):
        ort.disable_telemetry_events()
    _TELEMETRY_OFF = True


_TELEMETRY_OFF = False


def _session(model_bytes: bytes, threads: int, optimized_path: str | None = None):
    import onnxruntime as ort

    _no_telemetry(ort)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    if optimized_path:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        options.optimized_model_filepath = optimized_path
    return ort.InferenceSession(model_bytes, sess_options=options, providers=["CPUExecutionProvider"])


def optimized_op_types(model_bytes: bytes) -> dict[str, int]:
    """Op types (with counts, subgraphs included) that ORT runs after its graph
    optimisations (QDQ groups fused into QLinearConv etc.)."""
    import onnx

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "optimized.onnx")
        _session(model_bytes, 1, optimized_path=path)
        optimized = onnx.load(path)
    counts: dict[str, int] = {}

    def walk(graph) -> None:
        for node in graph.node:
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    walk(attr.g)

    walk(optimized.graph)
    return counts


def _run_session(session, n_outputs: int) -> Callable[[np.ndarray], "tuple[np.ndarray, np.ndarray | None]"]:
    names = [o.name for o in session.get_outputs()][:n_outputs]
    run = session.run
    if n_outputs == 1:
        return lambda x: (run(names, {INPUT: x})[0], None)

    def run_exits(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        logits, index = run(names, {INPUT: x})
        return logits, index

    return run_exits


def onnx_input_metadata(model) -> dict[str, Any]:
    """How to feed an ONNX model: its input's name, shape (``"batch"`` for a free
    dimension), dtype, its output names, and the batch it takes."""
    from onnx import helper

    first = model.graph.input[0]
    tensor = first.type.tensor_type
    shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "batch") for d in tensor.shape.dim]
    return {"input_name": first.name, "input_shape": shape,
            "input_dtype": str(helper.tensor_dtype_to_np_dtype(tensor.elem_type)),
            "outputs": [o.name for o in model.graph.output], "batch": "any" if shape and shape[0] == "batch" else
            str(shape[0]) if shape else "any"}


def set_onnx_metadata(model, metadata: Mapping[str, Any]) -> None:
    """Put ``metadata`` into ``model.metadata_props`` (strings as they are, other values
    as JSON), keeping keys already there that ``metadata`` does not name."""
    import json

    import onnx

    props = {p.key: p.value for p in model.metadata_props}
    props.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()})
    onnx.helper.set_model_props(model, props)


def _compile_ort(model: nn.Module, segments: list[Segment] | None, bits: int, calibration: torch.Tensor,
                 threads: int, requested_format: str = "auto", metadata: Mapping[str, Any] | None = None) -> CompiledModel:
    flags: list[str] = []
    calib = _as_numpy(calibration)
    example = calibration[:1]
    info: dict[str, Any] = {}
    float_weights: list[str] = []
    int8_format = choose_int8_format(requested_format, bits) if bits <= 8 else None
    if int8_format is not None:
        info["int8_format_requested"] = requested_format
    if segments is None:
        onnx_model = _export_onnx(model, example, ["logits"])
        if int8_format is not None:
            onnx_model, info["rewritten_weights"], float_weights = _quantize_onnx(onnx_model, calib, bits, int8_format)
        num_exits = 0
    else:
        onnx_model, info["rewritten_weights"], float_weights = _exit_onnx(segments, example, calib, bits,
                                                                          int8_format or "u8s8")
        num_exits = len(segments) - 1
    if bits <= 8 and float_weights:
        flags.append(f"onnxruntime left {len(float_weights)} weight(s) in float: they hold {bits}-bit values "
                     f"but run on fp32 kernels ({', '.join(float_weights[:3])})")
    if metadata is not None:
        set_onnx_metadata(onnx_model, {**onnx_input_metadata(onnx_model), **metadata})
    model_bytes = onnx_model.SerializeToString()
    session = _session(model_bytes, threads)
    kernel_bits = 32
    if bits <= 8:
        ops = optimized_op_types(model_bytes)
        info["optimized_ops"] = ops
        float_convs = ops.get("Conv", 0) + ops.get("FusedConv", 0) + ops.get("NchwcConv", 0)
        kernel_bits = 8 if ops.get("QLinearConv", 0) + ops.get("QGemm", 0) + ops.get("QLinearMatMul", 0) else 32
        if float_convs:
            flags.append(f"{float_convs} conv(s) still run in fp32 in onnxruntime after quantization")
        if kernel_bits == 32:
            flags.append(f"onnxruntime ran no int8 kernel: fp32 kernels on {bits}-bit weights")
        elif bits < 8:
            flags.append(low_bit_flag(bits))
        if kernel_bits == 8:
            note = saturation_flag(int8_format, bits)
            if note:
                flags.append(note)
    elif bits == 16:
        flags.append(FP16_FLAG)
    if segments is not None and bits <= 8 and kernel_bits == 8:
        info["note"] = "segments quantized separately, each calibrated on the previous segment's outputs"
    return CompiledModel(
        runtime="onnxruntime", bits=bits, kernel_bits=kernel_bits, artifact=model_bytes, artifact_format="onnx",
        threads=threads, flags=tuple(flags), num_exits=num_exits, _run=_run_session(session, 2 if segments else 1),
        _prepare=_as_numpy, info=info, int8_format=int8_format if kernel_bits == 8 else None,
    )


# -- early exits as one ONNX model ------------------------------------------------
def _reduce(op: str, x: str, out: str, axes: list[int] | None, opset: int, name: str) -> list:
    """A Reduce* node (axes as attribute before opset 18, as input from 18)."""
    from onnx import helper, numpy_helper

    if axes is None:
        return [helper.make_node(op, [x], [out], keepdims=0, name=name)]
    if opset < 18:
        return [helper.make_node(op, [x], [out], axes=axes, keepdims=0, name=name)]
    const = helper.make_node("Constant", [], [out + "_axes"], value=numpy_helper.from_array(np.asarray(axes, np.int64)),
                             name=name + "_axes")
    return [const, helper.make_node(op, [x, out + "_axes"], [out], keepdims=0, name=name)]


def _exit_onnx(segments: list[Segment], example: torch.Tensor, calib: np.ndarray, bits: int,
               int8_format: str = "u8s8"):
    """Export, (quantize) and compose the segments into one model with nested ``If``;
    its input takes a batch of exactly 1 (one exit decision per sample)."""
    import onnx
    from onnx import TensorProto, compose, helper, numpy_helper

    parts = []
    rewritten, float_weights = 0, []
    x_example, x_calib = example, calib
    for i, module in enumerate(_segment_modules(segments)):
        last = i == len(segments) - 1
        names = ["logits"] if last else ["features", "exit_logits"]
        part = _export_onnx(module, x_example, names)
        if bits <= 8:
            part, n, left = _quantize_onnx(part, x_calib, bits, int8_format)
            rewritten += n
            float_weights += [f"s{i}_{name}" for name in left]
        if not last:  # the next segment sees this one's (quantized) outputs
            sess = _session(part.SerializeToString(), 1)
            x_calib = np.concatenate([sess.run(["features"], {INPUT: x_calib[j:j + 256]})[0]
                                      for j in range(0, len(x_calib), 256)])
            with torch.no_grad():
                x_example = module(x_example)[0]
        parts.append(compose.add_prefix(part, f"s{i}_"))

    opsets: dict[str, int] = {}
    for part in parts:
        for op in part.opset_import:
            opsets[op.domain] = max(opsets.get(op.domain, 0), op.version)
    opset = opsets.get("", OPSET)

    def level(i: int, out_logits: str, out_index: str):
        """Nodes and initializers of segment ``i`` and everything after it."""
        g = parts[i].graph
        nodes = [helper.make_node("Identity", [INPUT if i == 0 else f"s{i - 1}_features"], [f"s{i}_{INPUT}"],
                                  name=f"s{i}_take_input")]
        nodes += list(g.node)
        inits = list(g.initializer)
        if i == len(parts) - 1:
            nodes += [helper.make_node("Identity", [f"s{i}_logits"], [out_logits], name=f"l{i}_logits"),
                      helper.make_node("Constant", [], [out_index], name=f"l{i}_index",
                                       value=numpy_helper.from_array(np.asarray([i], np.int64)))]
            return nodes, inits
        p = f"l{i}_"
        nodes.append(helper.make_node("Softmax", [f"s{i}_exit_logits"], [p + "probs"], axis=-1, name=p + "softmax"))
        nodes += _reduce("ReduceMax", p + "probs", p + "confidence", [-1], opset, p + "max")
        nodes += _reduce("ReduceMin", p + "confidence", p + "batch_confidence", None, opset, p + "min")
        nodes.append(helper.make_node("Constant", [], [p + "threshold"], name=p + "threshold",
                                      value=numpy_helper.from_array(np.asarray(segments[i][2], np.float32))))
        nodes.append(helper.make_node("GreaterOrEqual", [p + "batch_confidence", p + "threshold"], [p + "exit"],
                                      name=p + "exit"))
        then_graph = helper.make_graph(
            [helper.make_node("Identity", [f"s{i}_exit_logits"], [p + "then_logits"], name=p + "then_logits"),
             helper.make_node("Constant", [], [p + "then_index"], name=p + "then_index",
                              value=numpy_helper.from_array(np.asarray([i], np.int64)))],
            p + "then", [], [helper.make_tensor_value_info(p + "then_logits", TensorProto.FLOAT, [None, None]),
                             helper.make_tensor_value_info(p + "then_index", TensorProto.INT64, [1])])
        else_nodes, else_inits = level(i + 1, p + "else_logits", p + "else_index")
        else_graph = helper.make_graph(
            else_nodes, p + "else", [], [helper.make_tensor_value_info(p + "else_logits", TensorProto.FLOAT, [None, None]),
                                         helper.make_tensor_value_info(p + "else_index", TensorProto.INT64, [1])],
            initializer=else_inits)
        nodes.append(helper.make_node("If", [p + "exit"], [out_logits, out_index], then_branch=then_graph,
                                      else_branch=else_graph, name=p + "if"))
        return nodes, inits

    nodes, inits = level(0, "logits", "exit_index")
    x_info = parts[0].graph.input[0]
    x_shape = [1] + [d.dim_param or d.dim_value for d in x_info.type.tensor_type.shape.dim][1:]  # batch 1 only
    graph = helper.make_graph(
        nodes, "slimtune_early_exit",
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, None]),
         helper.make_tensor_value_info("exit_index", TensorProto.INT64, [1])],
        initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets.items()],
                              producer_name="slimtune")
    model.ir_version = max(p.ir_version for p in parts)
    onnx.checker.check_model(model)
    return model, rewritten, float_weights


# -- torch -------------------------------------------------------------------------
def _drop_identities(module: nn.Module) -> torch.fx.GraphModule:
    """FX-trace ``module`` and remove ``nn.Identity`` calls (folded BatchNorms), so
    conv + relu patterns fuse."""
    gm = torch.fx.symbolic_trace(module)
    for node in list(gm.graph.nodes):
        if node.op == "call_module" and isinstance(gm.get_submodule(node.target), nn.Identity):
            node.replace_all_uses_with(node.args[0])
            gm.graph.erase_node(node)
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return gm


@torch.no_grad()
def _fx_int8(module: nn.Module, calibration: torch.Tensor, bits: int) -> tuple[nn.Module, int]:
    """FX int8 (x86, per-channel) with the exact b-bit weights set into every
    quantized layer; returns the module and the number of layers set."""
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    torch.backends.quantized.engine = "x86"
    gm = _drop_identities(module)
    floats = dict(gm.named_modules())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepared = prepare_fx(gm, get_default_qconfig_mapping("x86"), (calibration[:1],))
        for i in range(0, len(calibration), CALIBRATION_BATCH):
            prepared(calibration[i:i + CALIBRATION_BATCH])
        quantized = convert_fx(prepared)
    count = 0
    for name, layer in quantized.named_modules():
        if not hasattr(layer, "set_weight_bias") or not hasattr(floats.get(name), "weight"):
            continue
        q, scale = quantize_weight(floats[name].weight, bits)
        qweight = torch._make_per_channel_quantized_tensor(q, scale.double(), torch.zeros(len(scale), dtype=torch.long), 0)
        layer.set_weight_bias(qweight, layer.bias())
        count += 1
    if count == 0:
        raise RuntimeError("FX quantization produced no quantized layer")
    return quantized, count


class _TorchExits(nn.Module):
    """Torch counterpart of the composed ONNX model: ``x -> (logits, exit_index)``."""

    def __init__(self, segments: Sequence[nn.Module], thresholds: List[float]) -> None:
        super().__init__()
        self.segments = nn.ModuleList(segments[:-1])
        self.final = segments[-1]
        self.thresholds = list(thresholds)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        if x.size(0) != 1:
            raise ValueError("an early-exit model takes a batch of exactly 1 sample (one exit per call), "
                             "but got a batch of " + str(x.size(0)))
        i = 0
        for segment in self.segments:
            features, logits = segment(x)
            confidence = torch.softmax(logits, dim=-1).amax(dim=-1).min()
            if bool(confidence >= self.thresholds[i]):
                return logits, torch.tensor([i], dtype=torch.long)
            x = features
            i += 1
        return self.final(x), torch.tensor([i], dtype=torch.long)


def _torchscript(module: nn.Module, example: torch.Tensor, scripted: bool) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        module = module.eval()
        ts = torch.jit.script(module) if scripted else torch.jit.trace(module, example)
        torch.jit.save(ts, buffer)
    return buffer.getvalue()


def _stored_torchscript(data: bytes) -> tuple[bytes, torch.jit.ScriptModule]:
    """The bytes to store and the module loaded from exactly those bytes.

    A module saved, loaded (in eval mode) and saved again reaches a fixed point (the
    first save carries tracing details that loading drops), so the stored artifact is
    that second save: loading it gives the module that is timed and scored, and saving
    that module gives the stored bytes again (how a test can tell it is the artifact)."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch 2.13 deprecates torch.jit.save/load in favour of torch.export
        torch.jit.save(torch.jit.load(io.BytesIO(data)).eval(), buffer)  # eval first: `training` is saved too
        artifact = buffer.getvalue()
        return artifact, torch.jit.load(io.BytesIO(artifact))


def _compile_torch(model: nn.Module, segments: list[Segment] | None, bits: int, calibration: torch.Tensor,
                   threads: int) -> CompiledModel:
    torch.set_num_threads(threads)
    flags: list[str] = []
    info: dict[str, Any] = {}
    example = calibration[:1]
    pieces = _segment_modules(segments) if segments is not None else [model]
    kernel_bits = 32
    if bits <= 8:
        try:
            quantized, x = [], calibration
            info["int8_layers"] = 0
            for piece in pieces:
                q, count = _fx_int8(piece, x, bits)
                quantized.append(q)
                info["int8_layers"] += count
                with torch.no_grad():
                    out = piece(x)
                x = out[0] if isinstance(out, tuple) else out
            pieces, kernel_bits = quantized, 8
            if bits < 8:
                flags.append(low_bit_flag(bits))
        except Exception as exc:  # noqa: BLE001 - FX cannot handle every model
            flags.append(f"torch FX int8 failed ({type(exc).__name__}: {exc}); ran fp32 kernels on the {bits}-bit weights")
            pieces = _segment_modules(segments) if segments is not None else [model]
            for piece in pieces:
                snap_weights(piece, bits)
    elif bits == 16:
        flags.append(FP16_FLAG)
    if segments is None:
        traced = _torchscript(pieces[0].eval(), example, scripted=False)
    else:
        with torch.no_grad():
            xs = [example]
            for piece in pieces[:-1]:
                xs.append(piece(xs[-1])[0])
        parts = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for piece, x in zip(pieces, xs):
                parts.append(torch.jit.trace(piece.eval(), x, check_trace=False))
        traced = _torchscript(_TorchExits(parts, [t for _, _, t in segments[:-1]]), example, scripted=True)
    artifact, loaded = _stored_torchscript(traced)
    info["timed"] = "the TorchScript artifact, loaded back from its stored bytes with torch.jit.load"
    info["artifact_sha256"] = hashlib.sha256(artifact).hexdigest()
    run = _ScriptRunner(loaded, exits=segments is not None)
    return CompiledModel(
        runtime="torch", bits=bits, kernel_bits=kernel_bits, artifact=artifact, artifact_format="torchscript",
        threads=threads, flags=tuple(flags), num_exits=0 if segments is None else len(segments) - 1, _run=run,
        _prepare=_as_tensor, info=info, module=run.module, int8_format=TORCH_INT8_FORMAT if kernel_bits == 8 else None,
    )


class _ScriptRunner:
    """The call that is scored and timed on the ``torch`` runtime: the loaded
    TorchScript artifact (``module``) on one batch, ``(logits, exit index or None)``."""

    def __init__(self, module: torch.jit.ScriptModule, *, exits: bool) -> None:
        self.module = module
        self.exits = exits

    def __call__(self, x: torch.Tensor) -> "tuple[np.ndarray, np.ndarray | None]":
        with torch.inference_mode():
            out = self.module(x)
        if self.exits:
            return out[0].numpy(), out[1].numpy()
        return out.numpy(), None
