"""OpenVINO, static models: the ONNX model OpenVINO compiles, at one static batch.

The artifact is an ONNX model whose input has the target's batch size as a fixed
dimension; OpenVINO reads exactly those bytes (``Core.read_model``) and
compiles them for its CPU plugin with the one-thread latency settings
(``INFERENCE_NUM_THREADS``, ``NUM_STREAMS=1``, ``PERFORMANCE_HINT=LATENCY``).  ONNX, not
OpenVINO's IR (``.xml`` + ``.bin``), is what is stored and exported: one file that
the packed format, ``export`` and ``select --json`` already read, and that OpenVINO
loads as it is (``core.compile_model("model.onnx", "CPU")``); its ``metadata_props``
say how it was compiled (``openvino_config``).

Precision: OpenVINO chooses it (bf16 where the CPU has bf16 kernels, else f32); the
choice is read back from the compiled model (``INFERENCE_PRECISION_HINT``) and
recorded as the measurement's ``precision``.  Bits <= 8: NNCF's post-training int8
(``nncf.quantize`` on the ONNX model, calibrated on the training inputs every runtime
gets), QuantizeLinear/DequantizeLinear pairs that OpenVINO runs on int8 kernels (the
layers it runs in int8 are counted from its runtime model; none -> ``kernel_bits`` 32
and a flag).  NNCF chooses the int8 weight scales itself, so sub-8-bit weights are
their b-bit values up to int8 rounding (flagged).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import threading
from typing import Any, Iterator, Mapping

import numpy as np
import torch
from torch import nn

from slimtune.search._runtimes._base import CompiledModel, Runtime, Segment, as_numpy
from slimtune.search._runtimes._onnx import INPUT, export_onnx, onnx_input_metadata, set_onnx_metadata
from slimtune.search._runtimes._registry import register_runtime
from slimtune.spaces._lowering import FP16_FLAG, low_bit_flag

#: What to install when OpenVINO or NNCF is missing.
INSTALL_HINT = "pip install 'slimtune[openvino]'"
#: Layer types whose runtime precision says whether int8 kernels run.
_COMPUTE_LAYERS = ("Convolution", "FullyConnected", "MatMul", "GroupConvolution", "Deconvolution")


def require_openvino() -> Any:
    """The ``openvino`` module, or an ImportError that says how to install it."""
    try:
        import openvino
    except ImportError as exc:
        raise ImportError(f"The openvino runtime needs OpenVINO and NNCF: {INSTALL_HINT} ({exc}).") from None
    return openvino


_CORE: Any = None
_CORE_LOCK = threading.Lock()


def shared_core() -> Any:
    """The process's one ``openvino.Core``.

    Each Core loads its own CPU plugin, and each plugin swaps the calling thread's
    alternate signal stack for one of its own, restoring the stack it replaced when
    it is destroyed.  Two Cores destroyed in the order they were made (not LIFO) leave
    the main thread on a freed stack: the next signal with a Python handler (Ctrl-C,
    SIGTERM, a DataLoader's SIGCHLD) then kills the process with SIGSEGV or corrupts
    its heap (OpenVINO 2026.4; ``tests/test_openvino.py``).  One Core, never released,
    swaps it once."""
    global _CORE
    with _CORE_LOCK:
        if _CORE is None:
            _CORE = require_openvino().Core()
        return _CORE


def openvino_config(threads: int) -> dict[str, str]:
    """The CPU plugin's settings for latency at ``threads`` threads (one stream, one
    request at a time); precision is left to OpenVINO."""
    return {"INFERENCE_NUM_THREADS": str(int(threads)), "NUM_STREAMS": "1", "PERFORMANCE_HINT": "LATENCY"}


def with_static_batch(model, batch_size: int):
    """``model`` (ONNX) with its input's batch dimension fixed to ``batch_size`` (the
    outputs' batch dimensions too), in place."""
    for value in [model.graph.input[0], *model.graph.output]:
        dims = value.type.tensor_type.shape.dim
        if dims:
            dims[0].Clear()
            dims[0].dim_value = int(batch_size)
    return model


@contextlib.contextmanager
def _quiet_nncf() -> Iterator[None]:
    """NNCF reports advice on its own logger and progress bars through ``rich`` on
    stdout: both silenced while it quantizes."""
    logger = logging.getLogger("nncf")
    previous = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        logger.setLevel(previous)


def quantize_nncf(onnx_model, calibration: np.ndarray):
    """NNCF post-training int8 of ``onnx_model`` (dynamic batch), calibrated one
    sample at a time on ``calibration`` (NNCF's recommended calibration batch)."""
    require_openvino()
    os.environ.setdefault("NNCF_CI", "1")  # NNCF reads it once, at import: its telemetry stays off
    try:
        import nncf
    except ImportError as exc:
        raise ImportError(f"The openvino runtime quantizes with NNCF: {INSTALL_HINT} ({exc}).") from None
    samples = [calibration[i:i + 1] for i in range(len(calibration))]
    dataset = nncf.Dataset(samples, lambda x: {INPUT: x})
    with _quiet_nncf():
        return nncf.quantize(onnx_model, dataset, subset_size=len(samples), target_device=nncf.TargetDevice.CPU)


def _int8_layers(compiled_model) -> tuple[int, int]:
    """``(int8, other)`` compute layers of OpenVINO's runtime model (what it executes)."""
    int8 = other = 0
    for op in compiled_model.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        if "layerType" not in info or info["layerType"].astype(str) not in _COMPUTE_LAYERS:
            continue
        precision = info["runtimePrecision"].astype(str).lower() if "runtimePrecision" in info else ""
        if precision in ("i8", "u8"):
            int8 += 1
        else:
            other += 1
    return int8, other


class OpenVinoRuntime(Runtime):
    """OpenVINO's CPU plugin on one static-batch ONNX model (NNCF int8 at bits <= 8)."""

    deployment = "openvino"
    artifact_format = "onnx"
    calls_on_caller_thread = True  # at one thread a synchronous infer() computes on the calling thread (all
    # its CPU ticks land there, /proc/self/task): timed on that thread's on-CPU clock

    def compile(self, model: nn.Module, segments: list[Segment] | None, *, bits: int, calibration: torch.Tensor,
                threads: int, int8_format: str, metadata: Mapping[str, Any] | None,
                batch_size: int = 1) -> CompiledModel:
        """``int8_format`` is ONNX Runtime's and is ignored (NNCF chooses OpenVINO's)."""
        if segments is not None:
            raise ValueError(f"The {self.name} runtime compiles static models, but got a {type(model).__name__} with "
                             "dynamic exits (`segments()`): OpenVINO has no runtime for early exits here.")
        ov = require_openvino()
        flags: list[str] = []
        info: dict[str, Any] = {}
        onnx_model = export_onnx(model, calibration[:1], ["logits"])
        if bits <= 8:
            onnx_model = quantize_nncf(onnx_model, as_numpy(calibration))
        with_static_batch(onnx_model, batch_size)
        config = openvino_config(threads)
        set_onnx_metadata(onnx_model, {**onnx_input_metadata(onnx_model), **dict(metadata or {}),
                                       "runtime": self.deployment, "openvino_config": config})
        model_bytes = onnx_model.SerializeToString()
        compiled = shared_core().compile_model(_read(model_bytes), "CPU", config)
        hint = compiled.get_property("INFERENCE_PRECISION_HINT").to_string()  # e.g. bf16, f32
        info.update(openvino=ov.__version__, inference_precision_hint=hint, openvino_config=config,
                    input_shape=[int(d) for d in compiled.input(0).get_shape()])
        kernel_bits = 32
        if bits <= 8:
            int8, other = _int8_layers(compiled)
            info["int8_layers"], info["other_layers"] = int8, other
            kernel_bits = 8 if int8 else 32
            if not int8:
                flags.append(f"openvino ran no int8 kernel: {hint} kernels on {bits}-bit weights")
            elif other:
                flags.append(f"{other} compute layer(s) still run in {hint} in openvino after quantization")
            if bits < 8:
                flags.append(low_bit_flag(bits))
                flags.append(f"NNCF chose its own int8 weight scales: the {bits}-bit weights up to int8 rounding")
        elif bits == 16:
            flags.append(FP16_FLAG)
        return CompiledModel(
            runtime=self.deployment, bits=bits, kernel_bits=kernel_bits, artifact=model_bytes,
            artifact_format=self.artifact_format, threads=threads, flags=tuple(flags), num_exits=0,
            _run=_Request(compiled), _prepare=as_numpy, info=info, engine=self.name, batch=batch_size,
            precision="int8" if kernel_bits == 8 else hint,
        )


def _read(model_bytes: bytes):
    """The ``openvino.Model`` read from exactly ``model_bytes`` (an ONNX model) by
    OpenVINO's ONNX frontend (``Core.read_model``; not ``convert_model``, whose
    converter counts its uses in a telemetry file under ``~/intel``)."""
    return shared_core().read_model(model_bytes)


class _Request:
    """The call that is scored and timed: one synchronous inference request on one
    static batch, ``x -> (logits, None)``."""

    def __init__(self, compiled_model: Any) -> None:
        self.compiled_model = compiled_model
        self.request = compiled_model.create_infer_request()

    def __call__(self, x: np.ndarray) -> "tuple[np.ndarray, None]":
        return self.request.infer({0: x}, share_inputs=True)[0], None


register_runtime("openvino", OpenVinoRuntime)
