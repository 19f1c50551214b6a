"""What every runtime shares: the compiled model, the runtime base class, and the
model cut at its exits (``segments()``), which any runtime may compile.

A runtime (:class:`Runtime`) compiles a prepared torch model into a
:class:`CompiledModel`: the artifact bytes that are stored and exported, and the call
that predicts and is timed (``prepare`` once outside the timed loop, then
``run_one``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping, Tuple

import numpy as np
import torch
from torch import nn

from slimtune.tasks._inputs import model_input

#: Calibration inputs per forward pass (ONNX Runtime's calibration reader, torch FX observers).
CALIBRATION_BATCH = 64

Segment = Tuple[nn.Module, "nn.Module | None", "float | None"]


@dataclass
class CompiledModel:
    """A model ready to run on one runtime.

    Attributes:
        runtime: ``onnxruntime`` or ``torch`` (what a measurement records).
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
        engine: the registered runtime that compiled it (``onnxruntime``,
            ``onnxruntime-exits`` or ``torch``; see :func:`get_runtime`).
        weight_encoding: how the weights are stored beyond their bits
            (:class:`~slimtune.spaces.WeightEncoding` as a dict; the packed file
            stores them so), or None.
        batch: the static batch the artifact takes (``predict`` pads the last
            batch to it), ``None`` when it takes any batch.
        precision: what the kernels compute in as the runtime chose it (``fp32``,
            ``bf16``, ``int8``); part of the target a latency was timed on.
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
    engine: str = ""
    weight_encoding: dict[str, Any] | None = None
    batch: int | None = None
    precision: str | None = None

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
        if self.batch is not None:
            return self._predict_static(x)
        outs = [np.asarray(self._run(self._prepare(x[i:i + batch_size]))[0]) for i in range(0, len(x), batch_size)]
        return np.concatenate(outs)

    def _predict_static(self, x: "torch.Tensor | np.ndarray") -> np.ndarray:
        """Logits in batches of exactly :attr:`batch` (the last one padded with copies
        of its first sample; the padding's logits dropped)."""
        outs = []
        for i in range(0, len(x), self.batch):
            chunk = self._prepare(x[i:i + self.batch])
            n = len(chunk)
            if n < self.batch:
                chunk = np.concatenate([chunk, np.repeat(chunk[:1], self.batch - n, axis=0)])
            outs.append(np.array(self._run(chunk)[0][:n]))
        return np.concatenate(outs)


class Runtime:
    """One way to run a candidate: ``compile`` a prepared model, ``export`` its artifact.

    Subclasses live in their own module and register there with
    :func:`~slimtune.search._runtimes.register_runtime`.  Which registered runtime
    compiles a model is decided by what the user chose (``deployment``) and what the
    model is: a model that exposes dynamic exits (``segments()``) goes to a runtime
    with ``exit_models``, any other to one with ``static_models``.

    Attributes:
        name: the name it is registered under (set by ``register_runtime``).
        deployment: the runtime a user chooses and a measurement records.
        artifact_format: the format of the artifact it writes.
        static_models, exit_models: the kinds of model it compiles.
        calls_on_caller_thread: whether a call at one thread computes wholly on the
            calling thread (then its latency is read on that thread's on-CPU time,
            :mod:`slimtune.search._timing`); a runtime with threads of its own says no.
    """

    name: ClassVar[str] = ""
    deployment: ClassVar[str] = ""
    artifact_format: ClassVar[str] = ""
    static_models: ClassVar[bool] = True
    exit_models: ClassVar[bool] = False
    calls_on_caller_thread: ClassVar[bool] = False

    def compile(self, model: nn.Module, segments: "list[Segment] | None", *, bits: int, calibration: torch.Tensor,
                threads: int, int8_format: str, metadata: Mapping[str, Any] | None,
                batch_size: int = 1) -> CompiledModel:
        """Compile ``model`` (already prepared: a copy, eval mode, BatchNorm folded,
        16-bit weights rounded) cut into ``segments`` (``None`` for a static model),
        for timing at ``batch_size`` (a runtime with static shapes fixes it in the
        artifact; one that takes any batch may ignore it)."""
        raise NotImplementedError

    def pin_threads(self, threads: int) -> None:
        """Set process-wide thread counts before timing (a session that carries its own
        thread count needs nothing)."""

    def export(self, compiled: CompiledModel, path: "str | os.PathLike") -> Path:
        """Write the very artifact that was measured."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(compiled.artifact)
        return path


# -- models with dynamic exits ----------------------------------------------------
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


def segment_modules(segments: list[Segment]) -> list[nn.Module]:
    """One module per segment: ``x -> (features, exit logits)``, the last ``x -> logits``."""
    return [trunk if head is None else _WithExit(trunk, head) for trunk, head, _ in segments]


# -- inputs ---------------------------------------------------------------------------
def as_numpy(x: Any) -> np.ndarray:
    """``x`` as a contiguous array (ONNX Runtime's input): float32, or int64 for
    integer inputs such as token ids (see :func:`~slimtune.tasks._inputs.model_input`)."""
    if isinstance(x, torch.Tensor):
        x = model_input(x.detach().cpu()).numpy()
    x = np.asarray(x)
    return np.ascontiguousarray(x, dtype=np.int64 if np.issubdtype(x.dtype, np.integer) else np.float32)


def as_tensor(x: Any) -> torch.Tensor:
    """``x`` as a tensor (TorchScript's input): float32, or int64 for integer inputs."""
    return model_input(x if isinstance(x, torch.Tensor) else torch.from_numpy(as_numpy(x)))
