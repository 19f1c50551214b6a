"""ONNX Runtime, static models: one ONNX model, any batch.

``torch.onnx.export(dynamo=False)``; bits 32/16 run the fp32 graph (16: the weights
are fp16-rounded, no fp16 CPU kernel is used); bits <= 8 run ``quantize_static`` QDQ:
per-channel symmetric weights, 8-bit activations calibrated on training inputs.  The
weight scales are those of :func:`slimtune.spaces._lowering.quantize_weight` (given
to ORT as tensor overrides, then every weight's DequantizeLinear integers are checked
and rewritten to the exact b-bit values), so the int8 kernels compute with exactly the
b-bit weights.

The int8 *format* (``int8_format`` argument, else ``$SLIMTUNE_INT8_FORMAT``, else
``auto``): ``u8s8`` (uint8 activations, int8 weights: ORT's fastest x86 kernels),
``u8u8`` (uint8 weights ``q + 128``, zero point 128: the same integers, ORT's U8U8
kernels, which never saturate) or ``s8s8`` (int8 activations; ORT on x86 turns them
back into U8S8).  ``auto`` is ``u8s8`` unless this CPU's U8S8 kernels can saturate
(x86 AVX2/AVX-512 without VNNI, see :mod:`slimtune.search._cpu`) *and* the b-bit grid
exceeds +-64 (8 bits), then ``u8u8``; grids of 6 bits and less never saturate (the
effect of ``reduce_range``, without changing the 8-bit grid).  A forced format that
can saturate here is flagged; the format used is ``CompiledModel.int8_format``.

The artifact carries the caller's metadata (and how to feed it) in its
``metadata_props``, written before the session that is timed is built from those
bytes: the stored and exported file is the timed one.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import warnings
from typing import Any, Iterator, Mapping

import numpy as np
import torch
from torch import nn

from slimtune.search._cpu import SAFE_U8S8_WEIGHT, u8s8_can_saturate
from slimtune.search._runtimes._base import CALIBRATION_BATCH, CompiledModel, Runtime, Segment, as_numpy
from slimtune.search._runtimes._onnx import (
    INPUT,
    export_onnx,
    onnx_input_metadata,
    optimized_op_types,
    run_session,
    session,
    set_onnx_metadata,
)
from slimtune.search._runtimes._registry import register_runtime
from slimtune.spaces._lowering import FP16_FLAG, low_bit_flag, qmax, quantize_weight

#: ONNX Runtime int8 formats (activations, weights); ``auto`` picks one for this CPU.
INT8_FORMATS = ("auto", "u8s8", "u8u8", "s8s8")
INT8_FORMAT_ENV = "SLIMTUNE_INT8_FORMAT"


# -- the int8 format ------------------------------------------------------------------
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


# -- quantization ----------------------------------------------------------------------
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


def quantize_onnx(model, calibration: np.ndarray, bits: int, int8_format: str = "u8s8", layout: str = "qdq"):
    """An int8 model (per-channel symmetric weights on the exact b-bit grid, 8-bit
    activations calibrated on ``calibration``) in ``int8_format`` (see
    :data:`_QUANT_TYPES`), as ``layout``: ``qdq`` (QuantizeLinear/DequantizeLinear
    pairs around float ops, fused by ORT at load) or ``qoperator`` (QLinearConv,
    QGemm... stored as such: a smaller file).

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
            model, out_path, _Calibration(calibration),
            quant_format=QuantFormat.QOperator if layout == "qoperator" else QuantFormat.QDQ, per_channel=True,
            activation_type=activation_type, weight_type=weight_type, calibrate_method=CalibrationMethod.MinMax,
            extra_options={"WeightSymmetric": True, "TensorQuantOverrides": overrides},
        )
        quantized = onnx.load(out_path)
    # Post-process: every quantized weight (a DequantizeLinear's input 0, a QLinearConv's
    # input 3...), followed by its scale and zero point, must hold exactly the b-bit values.
    inits = {t.name: t for t in quantized.graph.initializer}
    rewritten = 0
    for node, at in _quantized_weight_inputs(quantized, inits, grid):
        name = node.input[at]
        source = name[: -len("_quantized")]
        q, scale, axis = grid[source]
        stored, zp = _stored_weight(q, int8_format)
        zps = np.full(len(scale), zp, dtype=stored.dtype)
        current = numpy_helper.to_array(inits[name])
        scale_name = node.input[at + 1]
        zp_at = at + 2
        cur_scale = numpy_helper.to_array(inits[scale_name])
        cur_zp = numpy_helper.to_array(inits[node.input[zp_at]]) \
            if len(node.input) > zp_at and node.input[zp_at] in inits else None
        if (current.dtype != stored.dtype or not np.array_equal(current, stored) or not np.array_equal(cur_scale, scale)
                or cur_zp is None or cur_zp.dtype != stored.dtype or not np.array_equal(cur_zp.reshape(-1), zps)):
            inits[name].CopyFrom(numpy_helper.from_array(stored, name))
            inits[scale_name].CopyFrom(numpy_helper.from_array(scale, scale_name))
            if cur_zp is not None:
                inits[node.input[zp_at]].CopyFrom(numpy_helper.from_array(zps.reshape(cur_zp.shape), node.input[zp_at]))
            elif at != 0:
                raise ValueError(f"{node.op_type} {node.name!r} has no zero point for its weight {name!r}")
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


#: Where each op keeps its quantized weight (its scale and zero point follow it).
_WEIGHT_INPUT = {"DequantizeLinear": 0, "QLinearConv": 3, "QLinearMatMul": 3, "QGemm": 3}


def _quantized_weight_inputs(model, inits: Mapping[str, Any], grid: Mapping[str, Any]) -> list[tuple[Any, int]]:
    """``(node, input index)`` of every quantized layer weight (``<weight>_quantized``)."""
    found = []
    for node in model.graph.node:
        at = _WEIGHT_INPUT.get(node.op_type)
        if at is None or len(node.input) <= at:
            continue
        name = node.input[at]
        if name.endswith("_quantized") and name in inits and name[: -len("_quantized")] in grid:
            found.append((node, at))
    return found


# -- the runtime ------------------------------------------------------------------------
class OrtRuntime(Runtime):
    """ONNX Runtime on one static ONNX model (QDQ int8 at bits <= 8)."""

    deployment = "onnxruntime"
    artifact_format = "onnx"
    calls_on_caller_thread = True  # at one thread: timed on the calling thread's on-CPU clock
    #: Outputs the call returns: ``logits`` (and ``exit_index`` for early-exit models).
    outputs = 1

    def compile(self, model: nn.Module, segments: list[Segment] | None, *, bits: int, calibration: torch.Tensor,
                threads: int, int8_format: str, metadata: Mapping[str, Any] | None,
                batch_size: int = 1) -> CompiledModel:
        info: dict[str, Any] = {}
        chosen = choose_int8_format(int8_format, bits) if bits <= 8 else None
        if chosen is not None:
            info["int8_format_requested"] = int8_format
        onnx_model, float_weights = self.build(model, segments, bits, calibration, chosen, info, threads=threads,
                                               batch_size=batch_size)
        return self.finish(onnx_model, segments, bits=bits, threads=threads, int8_format=chosen,
                           float_weights=float_weights, info=info, metadata=metadata)

    def build(self, model: nn.Module, segments: list[Segment] | None, bits: int, calibration: torch.Tensor,
              int8_format: str | None, info: dict[str, Any], threads: int = 1,
              batch_size: int = 1) -> tuple[Any, list[str]]:
        """The ONNX model (quantized when ``int8_format`` is set, in the layout
        :func:`~slimtune.search._runtimes._ort_layout.choose_layout` picks at ``threads``
        and ``batch_size``)
        and the weights ORT left in float; details go into ``info``."""
        if segments is not None:
            raise ValueError(f"The {self.name} runtime compiles static models, but got a {type(model).__name__} with "
                             "dynamic exits (`segments()`); `runtime_for(..., exits=True)` names the runtime for it.")
        onnx_model = export_onnx(model, calibration[:1], ["logits"])
        float_weights: list[str] = []
        if int8_format is not None:
            from slimtune.search._runtimes._ort_layout import choose_layout

            float_bytes, data = onnx_model.SerializeToString(), as_numpy(calibration)

            def quantized(layout: str):  # a fresh copy each time: quantize_static moves its input's weights out
                import onnx

                return quantize_onnx(onnx.load_from_string(float_bytes), data, bits, int8_format, layout)

            onnx_model, info["rewritten_weights"], float_weights = choose_layout(
                quantized,
                lambda model_bytes: session(model_bytes, threads), np.resize(data, (batch_size, *data.shape[1:])),
                threads=threads, info=info)
        return onnx_model, float_weights

    def finish(self, onnx_model: Any, segments: list[Segment] | None, *, bits: int, threads: int,
               int8_format: str | None, float_weights: list[str], info: dict[str, Any],
               metadata: Mapping[str, Any] | None) -> CompiledModel:
        """Write the metadata, serialise, open the session that is timed on exactly
        those bytes, and say honestly which kernels run."""
        flags: list[str] = []
        if bits <= 8 and float_weights:
            flags.append(f"onnxruntime left {len(float_weights)} weight(s) in float: they hold {bits}-bit values "
                         f"but run on fp32 kernels ({', '.join(float_weights[:3])})")
        if metadata is not None:
            set_onnx_metadata(onnx_model, {**onnx_input_metadata(onnx_model), **metadata})
        model_bytes = onnx_model.SerializeToString()
        inference_session = session(model_bytes, threads)
        kernel_bits = 32
        if bits <= 8:
            kernel_bits = _int8_kernels(model_bytes, bits, int8_format, flags, info)
        elif bits == 16:
            flags.append(FP16_FLAG)
        return CompiledModel(
            runtime=self.deployment, bits=bits, kernel_bits=kernel_bits, artifact=model_bytes,
            artifact_format=self.artifact_format, threads=threads, flags=tuple(flags),
            num_exits=0 if segments is None else len(segments) - 1,
            _run=run_session(inference_session, self.outputs), _prepare=as_numpy, info=info,
            int8_format=int8_format if kernel_bits == 8 else None, engine=self.name,
        )


def _int8_kernels(model_bytes: bytes, bits: int, int8_format: str | None, flags: list[str],
                  info: dict[str, Any]) -> int:
    """The bit width of the kernels ORT runs after its optimisations (8 when any int8
    conv/gemm/matmul runs, else 32), with the flags that go with it."""
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
    return kernel_bits


register_runtime("onnxruntime", OrtRuntime)
