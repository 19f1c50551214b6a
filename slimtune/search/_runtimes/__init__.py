"""Runtimes: compile a torch model into what is predicted with, timed and exported.

Runtimes are a registry, like knobs: each lives in its own module and registers
itself there (:func:`register_runtime`); :func:`get_runtime` finds one by name (an
unknown name lists the close matches).  Registered here:

- ``onnxruntime`` (:mod:`._ort`): one static ONNX model, QDQ int8 at bits <= 8 in
  the int8 format ``u8s8``, ``u8u8`` or ``s8s8`` (``$SLIMTUNE_INT8_FORMAT``).
- ``onnxruntime-exits`` (:mod:`._ort_exits`): a model with dynamic exits as ONE
  ONNX model with nested ``If`` nodes, batch 1, run one sample at a time.
- ``torch`` (:mod:`._torch`): TorchScript (FX int8 at bits <= 8), static or with exits.
- ``openvino`` (:mod:`._openvino`): OpenVINO's CPU plugin on a static-batch ONNX model
  (precision chosen by OpenVINO, NNCF int8 at bits <= 8); static models only.

:func:`compile_model` is the front door: the user chooses ``onnxruntime``,
``openvino`` or ``torch`` and a batch size; the model says whether it has dynamic exits (a ``segments()`` method,
:func:`exit_segments`), and :func:`runtime_for` picks the registered runtime for
that kind of model.  Accuracy, latency and the exported file all come from the
returned :class:`CompiledModel`.

Example:
    >>> compiled = compile_model(model, runtime="onnxruntime", bits=8, calibration=x_train[:256])
    >>> logits = compiled.predict(x_test)
"""

from __future__ import annotations

import copy
import inspect
from typing import TYPE_CHECKING, Any, Mapping

import torch
from torch import nn

from slimtune.search._runtimes._base import CompiledModel, Runtime, Segment, exit_segments
from slimtune.search._runtimes._registry import (
    deployments,
    get_runtime,
    register_runtime,
    runtime_for,
    runtime_names,
)
from slimtune.search._runtimes import _ort, _ort_exits, _openvino, _torch  # noqa: F401,E402,I001 - each registers its runtime (in this order)
from slimtune.search._runtimes._ort import (
    INT8_FORMAT_ENV,
    INT8_FORMATS,
    choose_int8_format,
    requested_int8_format,
    saturation_flag,
)
from slimtune.search._runtimes._onnx import onnx_input_metadata, optimized_op_types, set_onnx_metadata
from slimtune.spaces._lowering import fold_batchnorm, snap_weights
from slimtune.tasks._inputs import model_input

if TYPE_CHECKING:  # pragma: no cover
    from slimtune.spaces.base import WeightEncoding

BITS = (32, 16, 8, 6, 4, 2)

__all__ = [
    "BITS", "CompiledModel", "INT8_FORMATS", "INT8_FORMAT_ENV", "Runtime", "Segment", "choose_int8_format",
    "compile_model", "deployments", "exit_segments", "get_runtime", "onnx_input_metadata", "optimized_op_types",
    "prepare_model", "register_runtime", "requested_int8_format", "runtime_for", "runtime_names",
    "saturation_flag", "set_onnx_metadata",
]


def prepare_model(model: nn.Module, bits: int) -> nn.Module:
    """The copy of ``model`` that every runtime compiles: eval mode, BatchNorm folded,
    and at 16 bits the weights fp16-rounded (idempotent when the quantization knob
    already did it); lower bit widths are quantized by the runtime itself."""
    prepared = fold_batchnorm(copy.deepcopy(model).eval())
    if bits == 16:
        snap_weights(prepared, 16)
    return prepared


def compile_model(
    model: nn.Module,
    *,
    runtime: str = "onnxruntime",
    bits: int,
    calibration: torch.Tensor,
    threads: int = 1,
    int8_format: str | None = None,
    metadata: Mapping[str, Any] | None = None,
    encoding: "WeightEncoding | None" = None,
    batch_size: int = 1,
) -> CompiledModel:
    """Compile ``model`` (a copy, see :func:`prepare_model`) for ``runtime`` at ``bits``.

    Args:
        model: the torch model (possibly already snapped by the quantization knob;
            possibly a model with dynamic exits, i.e. with ``segments()``).
        runtime: ``onnxruntime``, ``openvino`` or ``torch``.
        bits: 32, 16, 8, 6, 4 or 2 (weights; activations 8-bit when bits <= 8).
        calibration: training inputs for activation ranges (never test data).
        threads: intra-op threads (ORT session; ``torch.set_num_threads``).
        int8_format: ``auto``, ``u8s8``, ``u8u8`` or ``s8s8`` for ONNX Runtime at
            bits <= 8 (default ``$SLIMTUNE_INT8_FORMAT``, else ``auto``; see
            :mod:`._ort`); checked whatever the runtime.  torch's FX int8 has one
            format (``u8s8-reduce-range``) and ignores it.
        metadata: written into an ONNX artifact's ``metadata_props`` (strings; other
            values as JSON) with how to feed it (input name, shape, dtype, outputs,
            batch), before the session that is timed is built from those bytes: the
            stored and exported file is the timed one.  TorchScript artifacts carry none.
        encoding: how a knob stores the weights beyond their bits (e.g. a codebook of
            shared values per layer): recorded on the compiled model (the packed file
            stores the weights so), in the metadata, and in a flag saying which kernels
            run them.
        batch_size: the batch latency is timed at: a runtime with static shapes
            (``openvino``) fixes it in the artifact; a model with dynamic exits runs
            one sample at a time and refuses any other.

    Raises:
        ValueError: an unknown runtime or bit width, or a model with dynamic exits
            asked for a batch other than 1.
    """
    if runtime not in deployments():
        raise ValueError(f"`runtime` must be one of {', '.join(deployments())}, but got {runtime!r}.")
    if bits not in BITS:
        raise ValueError(f"`bits` must be one of 32, 16, 8, 6, 4, 2, but got {bits!r}.")
    requested = requested_int8_format(int8_format)
    prepared = prepare_model(model, bits)
    segments = exit_segments(prepared)
    if segments is not None and batch_size != 1:
        raise ValueError(f"A model with early exits runs one sample at a time (batch 1), but the batch size is "
                         f"{batch_size}: time it at --batch-size 1, or leave the exits family out.")
    engine = runtime_for(runtime, exits=segments is not None)
    if encoding is not None:
        metadata = {**dict(metadata or {}), "weight_encoding": encoding.to_dict()}
    # a runtime registered before batch sizes were passed takes any batch: it is timed at batch_size all the same
    batch = {"batch_size": batch_size} if "batch_size" in inspect.signature(engine.compile).parameters else {}
    compiled = engine.compile(prepared, segments, bits=bits, calibration=model_input(calibration),
                              threads=threads, int8_format=requested, metadata=metadata, **batch)
    if compiled.precision is None:
        compiled.precision = "int8" if compiled.kernel_bits == 8 else "fp32"
    if encoding is not None:
        compiled.weight_encoding = encoding.to_dict()
        kernels = "int8" if compiled.kernel_bits == 8 else "fp32"
        compiled.flags = (*compiled.flags, f"weights share a {encoding.entries}-entry {encoding.kind} per layer: "
                          f"stored as indices in the packed file, run on {kernels} kernels (no {encoding.kind} kernel)")
    return compiled
