"""Where candidates train: the ``device`` setting (``auto``, ``cpu``, ``cuda``,
``cuda:N``, ``mps``) resolved against what this machine has, mixed precision
(``amp``) on it, and batches moved to it.

Training, the teacher's logits, QAT and the accuracy read after each epoch run on the
device; latency is never timed there: runtimes compile a CPU copy of the trained model
and time it on the deployment target (``runtime``).

Example:
    >>> place = TrainingDevice.resolve("auto", amp="auto")   # CUDA if present, else the CPU
    >>> x, y = place.move(x, y)                              # dtypes kept, non-blocking on CUDA
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Iterator

import torch
from torch import nn

from slimtune.search._settings import AMP_MODES, DEVICE_SPEC, DeviceError, check_amp, check_device_spec  # noqa: F401

def resolve_device(spec: str) -> torch.device:
    """The torch device ``spec`` names on this machine (``auto``: the first CUDA device
    if there is one, else the CPU).

    Raises:
        DeviceError: a bad name, or a device this machine does not have (one line that
            says what it has).
    """
    check_device_spec(spec)
    if spec == "auto":
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise DeviceError(f"`device` mps: this machine has no MPS (Apple GPU) device; {_what_there_is()}.")
        return torch.device("mps")
    if not torch.cuda.is_available():
        why = "this torch is built without CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
        raise DeviceError(f"`device` {spec}: {why} (torch {torch.__version__}); {_what_there_is()}.")
    index = int(spec.split(":")[1]) if ":" in spec else torch.cuda.current_device()
    if index >= torch.cuda.device_count():
        raise DeviceError(f"`device` {spec}: this machine has {torch.cuda.device_count()} CUDA device(s) "
                          f"(cuda:0 .. cuda:{torch.cuda.device_count() - 1}).")
    return torch.device("cuda", index)


def _what_there_is() -> str:
    if torch.cuda.is_available():
        return f"use cuda (cuda:0 .. cuda:{torch.cuda.device_count() - 1}), cpu or auto"
    return "use --device cpu (or auto)"


def amp_dtype(device: torch.device, amp: str) -> torch.dtype | None:
    """The autocast dtype of mixed precision ``amp`` on ``device``; ``None`` = full
    precision: ``off``, and always on the CPU and MPS (no speed-up there worth its
    numerics).  On CUDA ``auto`` is bf16 where the GPU supports it (no gradient scaler
    needed), else fp16."""
    check_amp(amp)
    if amp == "off" or device.type != "cuda":
        return None
    if amp == "fp16":
        return torch.float16
    bf16 = torch.cuda.is_bf16_supported()
    if amp == "bf16" and not bf16:
        raise DeviceError(f"`amp` bf16: {torch.cuda.get_device_name(device)} has no bf16 support; use fp16 or auto.")
    return torch.bfloat16 if bf16 else torch.float16


@dataclass(frozen=True)
class TrainingDevice:
    """A device to train on and the mixed precision there (``amp``: the autocast
    dtype, ``None`` for full precision)."""

    device: torch.device = torch.device("cpu")
    amp: torch.dtype | None = None

    @classmethod
    def resolve(cls, spec: str = "auto", amp: str = "off") -> "TrainingDevice":
        device = resolve_device(spec)
        return cls(device, amp_dtype(device, amp))

    @property
    def non_blocking(self) -> bool:
        """Copies to a CUDA device from pinned memory overlap the computation."""
        return self.device.type == "cuda"

    def move(self, *tensors: "torch.Tensor | None") -> tuple[Any, ...]:
        """``tensors`` on the device, each keeping its dtype (token ids stay integers);
        to CUDA through pinned memory, without waiting for the copy."""
        return tuple(self.to_device(t) for t in tensors)

    def to_device(self, tensor: "torch.Tensor | None") -> Any:
        if tensor is None or tensor.device == self.device:
            return tensor
        if self.non_blocking and tensor.device.type == "cpu" and not tensor.is_pinned():
            tensor = tensor.pin_memory()
        return tensor.to(self.device, non_blocking=self.non_blocking)

    def autocast(self) -> contextlib.AbstractContextManager:
        """Mixed precision for the forward passes and losses (nothing when ``amp`` is None)."""
        if self.amp is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp)

    def grad_scaler(self) -> "torch.amp.GradScaler":
        """A gradient scaler, enabled for fp16 only (bf16 has fp32's range)."""
        return torch.amp.GradScaler(self.device.type, enabled=self.amp == torch.float16)

    def describe(self) -> dict[str, Any]:
        """Where a trial trained, as stored with it: the device, its name, the mixed precision."""
        out: dict[str, Any] = {"device": str(self.device), "amp": _amp_name(self.amp), "torch": torch.__version__}
        if self.device.type == "cuda":
            out["name"] = torch.cuda.get_device_name(self.device)
            out["cuda"] = torch.version.cuda
        elif self.device.type == "cpu":
            from slimtune.search._fingerprint import cpu_model

            out["name"] = cpu_model()
        else:
            out["name"] = self.device.type
        return out


def _amp_name(dtype: torch.dtype | None) -> str | None:
    return {torch.float16: "fp16", torch.bfloat16: "bf16"}.get(dtype) if dtype is not None else None


def device_of(model: nn.Module) -> torch.device:
    """The device of ``model``'s first parameter (or buffer); the CPU for a model without tensors."""
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


def off_device(model: nn.Module, device: torch.device) -> list[str]:
    """Names of ``model``'s parameters and buffers that are not on ``device``."""
    named = [*model.named_parameters(), *model.named_buffers()]
    return [f"{name} ({t.device})" for name, t in named if t.device != device]


@contextlib.contextmanager
def on_device(model: nn.Module, device: torch.device) -> Iterator[nn.Module]:
    """``model`` moved to ``device`` for the block, then back where it was."""
    home = device_of(model)
    model.to(device)
    try:
        yield model
    finally:
        model.to(home)
