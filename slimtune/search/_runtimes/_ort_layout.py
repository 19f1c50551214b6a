"""The ONNX Runtime int8 layout of a model: QDQ or QOperator, chosen by timing both.

Both layouts hold the same b-bit integers and scales.  ``qdq`` keeps float ops between
QuantizeLinear/DequantizeLinear pairs that ORT fuses when it loads the model;
``qoperator`` stores QLinearConv, QGemm... directly: its file is smaller (92 vs 105 KB
on the Fashion-MNIST ResNet-8) and, on some CPUs and models, it runs a few percent
faster (Intel Neural Compressor and Olive write it).  ``auto`` (the default) builds
both, times them interleaved on this machine (:func:`~slimtune.search._timing.static_latencies`,
the clock and percentile every latency is read with), and keeps the faster one; within
:data:`TIE` it keeps the smaller file.  ``$SLIMTUNE_INT8_LAYOUT`` forces one.
"""

from __future__ import annotations

import os
from typing import Any, Callable

import numpy as np

from slimtune.search._runtimes._onnx import INPUT
from slimtune.search._timing import latency_clock, static_latencies

#: ONNX Runtime int8 layouts; ``auto`` times both and keeps the faster.
INT8_LAYOUTS = ("auto", "qdq", "qoperator")
INT8_LAYOUT_ENV = "SLIMTUNE_INT8_LAYOUT"
#: A layout at most this much slower (relative) than the other counts as a tie.
TIE = 0.02
#: Samples each layout is timed with when both are built (calibrated inner loops).
REPEATS = 80


def requested_int8_layout() -> str:
    """``$SLIMTUNE_INT8_LAYOUT`` (default ``auto``), checked against :data:`INT8_LAYOUTS`."""
    value = (os.environ.get(INT8_LAYOUT_ENV) or "auto").strip().lower()
    if value not in INT8_LAYOUTS:
        raise ValueError(f"${INT8_LAYOUT_ENV} must be one of {', '.join(INT8_LAYOUTS)}, but got {value!r}.")
    return value


def choose_layout(build: Callable[[str], Any], session_for: Callable[[bytes], Any], example: np.ndarray, *,
                  threads: int, info: dict[str, Any]) -> Any:
    """The quantized ONNX model ``build(layout)`` in the requested layout, or, for
    ``auto``, in the layout that ran ``example`` faster here (sessions from
    ``session_for(model bytes)``).  ``info`` gets ``int8_layout`` and, when both were
    timed, ``int8_layout_ms`` (each layout's latency)."""
    requested = requested_int8_layout()
    if requested != "auto":
        info["int8_layout"] = requested
        return build(requested)
    built = {layout: build(layout) for layout in ("qdq", "qoperator")}
    runners = {}
    for layout, result in built.items():
        run = session_for(result[0].SerializeToString()).run
        runners[layout] = (lambda run=run: run(None, {INPUT: example}))
    clock = latency_clock(threads, calls_on_caller_thread=True)
    latency, _ = static_latencies(runners, warmup=10, repeats=REPEATS, clock=clock)
    sizes = {layout: result[0].ByteSize() for layout, result in built.items()}
    fast, slow = sorted(latency, key=latency.get)
    chosen = fast
    if latency[slow] <= latency[fast] * (1 + TIE):  # a tie: the smaller file
        chosen = min(latency, key=lambda layout: sizes[layout])
    info["int8_layout"] = chosen
    info["int8_layout_ms"] = {layout: round(float(ms), 6) for layout, ms in latency.items()}
    info["int8_layout_bytes"] = sizes
    return built[chosen]
