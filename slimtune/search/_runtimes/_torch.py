"""torch: a TorchScript artifact, static or with dynamic exits.

Eager fp32 (bits 32/16); bits <= 8 through torch.ao FX quantization (x86 backend,
per-channel weights, 7-bit activations by its ``reduce_range``, so its U8S8 kernels
cannot saturate) with the exact b-bit weights set into the quantized layers, or, if FX
fails, the snapped fp32 model (flagged, ``kernel_bits=32``).  The artifact is
TorchScript (traced; early-exit models are scripted around traced segments, and refuse
a batch other than 1), and **what is timed and scored is that artifact**: the stored
bytes loaded back with ``torch.jit.load`` (``CompiledModel.module``; saving it again
gives the same bytes), not the eager/FX module it was traced from.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from typing import Any, List, Mapping, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from slimtune.search._runtimes._base import (
    CALIBRATION_BATCH,
    CompiledModel,
    Runtime,
    Segment,
    as_tensor,
    segment_modules,
)
from slimtune.search._runtimes._registry import register_runtime
from slimtune.spaces._lowering import FP16_FLAG, low_bit_flag, quantize_weight, snap_weights

#: What torch's FX x86 int8 computes: uint8 activations limited to 7 bits, int8 weights.
TORCH_INT8_FORMAT = "u8s8-reduce-range"


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


class TorchRuntime(Runtime):
    """torch: TorchScript, FX int8 at bits <= 8; static models and models with exits."""

    deployment = "torch"
    artifact_format = "torchscript"
    calls_on_caller_thread = True  # at one thread: timed on the calling thread's on-CPU clock
    static_models = True
    exit_models = True

    def compile(self, model: nn.Module, segments: list[Segment] | None, *, bits: int, calibration: torch.Tensor,
                threads: int, int8_format: str, metadata: Mapping[str, Any] | None,
                batch_size: int = 1) -> CompiledModel:
        """``int8_format`` is ignored (FX int8 has one format, ``u8s8-reduce-range``), and
        so is ``metadata`` (TorchScript artifacts carry none)."""
        torch.set_num_threads(threads)
        flags: list[str] = []
        info: dict[str, Any] = {}
        pieces = segment_modules(segments) if segments is not None else [model]
        kernel_bits = 32
        if bits <= 8:
            pieces, kernel_bits = _int8_pieces(pieces, calibration, bits, flags, info)
            if kernel_bits == 32:  # FX failed: the snapped fp32 pieces run
                pieces = segment_modules(segments) if segments is not None else [model]
                for piece in pieces:
                    snap_weights(piece, bits)
        elif bits == 16:
            flags.append(FP16_FLAG)
        artifact, loaded = _stored_torchscript(_script(pieces, segments, calibration[:1]))
        info["timed"] = "the TorchScript artifact, loaded back from its stored bytes with torch.jit.load"
        info["artifact_sha256"] = hashlib.sha256(artifact).hexdigest()
        run = _ScriptRunner(loaded, exits=segments is not None)
        return CompiledModel(
            runtime=self.deployment, bits=bits, kernel_bits=kernel_bits, artifact=artifact,
            artifact_format=self.artifact_format, threads=threads, flags=tuple(flags),
            num_exits=0 if segments is None else len(segments) - 1, _run=run, _prepare=as_tensor, info=info,
            module=run.module, int8_format=TORCH_INT8_FORMAT if kernel_bits == 8 else None, engine=self.name,
        )

    def pin_threads(self, threads: int) -> None:
        """torch's intra-op threads are process-wide: set them before timing."""
        torch.set_num_threads(threads)


def _int8_pieces(pieces: list[nn.Module], calibration: torch.Tensor, bits: int, flags: list[str],
                 info: dict[str, Any]) -> tuple[list[nn.Module], int]:
    """The pieces FX-quantized, each calibrated on the previous one's outputs, and the
    kernel bits (8); ``(pieces, 32)`` with a flag when FX fails."""
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
        if bits < 8:
            flags.append(low_bit_flag(bits))
        return quantized, 8
    except Exception as exc:  # noqa: BLE001 - FX cannot handle every model
        flags.append(f"torch FX int8 failed ({type(exc).__name__}: {exc}); ran fp32 kernels on the {bits}-bit weights")
        return pieces, 32


def _script(pieces: list[nn.Module], segments: list[Segment] | None, example: torch.Tensor) -> bytes:
    """TorchScript bytes: the one piece traced, or, with exits, :class:`_TorchExits`
    scripted around the traced pieces."""
    if segments is None:
        return _torchscript(pieces[0].eval(), example, scripted=False)
    with torch.no_grad():
        xs = [example]
        for piece in pieces[:-1]:
            xs.append(piece(xs[-1])[0])
    parts = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for piece, x in zip(pieces, xs):
            parts.append(torch.jit.trace(piece.eval(), x, check_trace=False))
    return _torchscript(_TorchExits(parts, [t for _, _, t in segments[:-1]]), example, scripted=True)


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


register_runtime("torch", TorchRuntime)
