"""What the ONNX Runtime runtimes share: exporting a torch module to ONNX, the
session that runs an ONNX model, the op types ORT really runs, and the metadata an
ONNX artifact carries (how to feed it)."""

from __future__ import annotations

import io
import os
import tempfile
import warnings
from typing import Any, Callable, Mapping

import numpy as np
import torch
from torch import nn

OPSET = 17
INPUT = "input"


def export_onnx(module: nn.Module, example: torch.Tensor, output_names: list[str]):
    """``module`` exported to ONNX (opset :data:`OPSET`, dynamo off), its batch dimension free."""
    import onnx

    buffer = io.BytesIO()
    axes = {INPUT: {0: "batch"}, **{name: {0: "batch"} for name in output_names}}
    fastpath = torch.backends.mha.get_fastpath_enabled()
    # attention as its ops: nn.TransformerEncoderLayer's fused inference op has no ONNX form
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, (example,), buffer, dynamo=False, opset_version=OPSET, input_names=[INPUT],
                              output_names=output_names, dynamic_axes=axes, do_constant_folding=True)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    return inline_shared_initializers(onnx.load_from_string(buffer.getvalue()))


def inline_shared_initializers(model):
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


def _no_telemetry(ort: Any) -> None:
    """Turn ONNX Runtime's telemetry events off, once (``slimtune/__init__`` also sets
    ``ORT_DISABLE_TELEMETRY`` before ORT is first imported: nothing under ~/.cache)."""
    global _TELEMETRY_OFF
    if not _TELEMETRY_OFF and hasattr(ort, "disable_telemetry_events"):
        ort.disable_telemetry_events()
    _TELEMETRY_OFF = True


_TELEMETRY_OFF = False


def session(model_bytes: bytes, threads: int, optimized_path: str | None = None):
    """An ONNX Runtime CPU session on ``model_bytes`` (``threads`` intra-op, sequential, all
    graph optimisations; ``optimized_path``: save the optimised graph there instead)."""
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
        session(model_bytes, 1, optimized_path=path)
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


def run_session(inference_session, n_outputs: int) -> Callable[[np.ndarray], "tuple[np.ndarray, np.ndarray | None]"]:
    """The call that predicts and is timed: ``x -> (logits, exit index or None)``."""
    names = [o.name for o in inference_session.get_outputs()][:n_outputs]
    run = inference_session.run
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
