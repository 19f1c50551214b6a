"""ONNX Runtime, models with dynamic exits: ONE ONNX model with nested ``If`` nodes.

Each segment of the model (its ``segments()``, see
:func:`~slimtune.search._runtimes._base.exit_segments`) is exported (and quantized,
calibrated on the previous segment's outputs) separately, then composed with nested
``If`` nodes, each taken when ``max softmax(exit logits) >= threshold``.  **Batch 1
only**: the input's batch dimension is fixed to 1, so ONNX Runtime refuses any other
batch with its shape error (one ``exit_index`` per call, never one for a whole batch);
a batch runs sample by sample (``CompiledModel.predict_with_exits``), and is timed one
sample at a time.  Outputs: ``logits`` (``[1, classes]``) and ``exit_index`` (shape
``[1]``, int64; the last index is the final classifier).

Example:
    >>> compiled = get_runtime("onnxruntime-exits").compile(net, exit_segments(net), bits=32, ...)
    >>> logits, exit_index = compiled.run_one(x[:1])
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from slimtune.search._runtimes._base import CompiledModel, Segment, as_numpy, segment_modules
from slimtune.search._runtimes._onnx import INPUT, OPSET, export_onnx, session
from slimtune.search._runtimes._ort import OrtRuntime, quantize_onnx
from slimtune.search._runtimes._registry import register_runtime


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


def exit_onnx(segments: list[Segment], example: torch.Tensor, calib: np.ndarray, bits: int,
              int8_format: str = "u8s8"):
    """Export, (quantize) and compose the segments into one model with nested ``If``;
    its input takes a batch of exactly 1 (one exit decision per sample)."""
    import onnx
    from onnx import TensorProto, compose, helper, numpy_helper

    parts = []
    rewritten, float_weights = 0, []
    x_example, x_calib = example, calib
    for i, module in enumerate(segment_modules(segments)):
        module.eval()  # segments are new containers (training by default): BatchNorm must use its statistics
        last = i == len(segments) - 1
        names = ["logits"] if last else ["features", "exit_logits"]
        part = export_onnx(module, x_example, names)
        if bits <= 8:
            part, n, left = quantize_onnx(part, x_calib, bits, int8_format)
            rewritten += n
            float_weights += [f"s{i}_{name}" for name in left]
        if not last:  # the next segment sees this one's (quantized) outputs
            sess = session(part.SerializeToString(), 1)
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
        [helper.make_tensor_value_info(INPUT, x_info.type.tensor_type.elem_type, x_shape)],  # float32, or int64 ids
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, None]),
         helper.make_tensor_value_info("exit_index", TensorProto.INT64, [1])],
        initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets.items()],
                              producer_name="slimtune")
    model.ir_version = max(p.ir_version for p in parts)
    onnx.checker.check_model(model)
    return model, rewritten, float_weights


class OrtExitsRuntime(OrtRuntime):
    """ONNX Runtime on one early-exit ONNX model (nested ``If``; batch 1)."""

    static_models = False
    exit_models = True
    outputs = 2

    def build(self, model: nn.Module, segments: list[Segment] | None, bits: int, calibration: torch.Tensor,
              int8_format: str | None, info: dict[str, Any], threads: int = 1,
              batch_size: int = 1) -> tuple[Any, list[str]]:
        if segments is None:
            raise ValueError("The onnxruntime-exits runtime compiles a model with dynamic exits (`segments()`), "
                             f"but got a {type(model).__name__} without them.")
        onnx_model, info["rewritten_weights"], float_weights = exit_onnx(
            segments, calibration[:1], as_numpy(calibration), bits, int8_format or "u8s8")
        return onnx_model, float_weights

    def finish(self, onnx_model: Any, segments: list[Segment] | None, **kwargs: Any) -> CompiledModel:
        compiled = super().finish(onnx_model, segments, **kwargs)
        if compiled.bits <= 8 and compiled.kernel_bits == 8:
            compiled.info["note"] = "segments quantized separately, each calibrated on the previous segment's outputs"
        return compiled


register_runtime("onnxruntime-exits", OrtExitsRuntime)
