"""How candidates are trained and measured: :class:`EvalSettings`, checked when made.

Imports nothing heavy (no torch): a study's stored settings are read and checked
without it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from slimtune.search._measurement import RUNTIMES

#: What ``device`` may say.
DEVICE_SPEC = re.compile(r"auto|cpu|mps|cuda(:[0-9]{1,3})?")
#: What ``amp`` may say: ``auto`` is bf16 where the GPU has it, else fp16 (with a gradient scaler).
AMP_MODES = ("off", "auto", "fp16", "bf16")


class DeviceError(ValueError):
    """A device that this machine does not have, or a bad device or amp name."""


def check_device_spec(spec: Any) -> str:
    """``spec`` when it is a device name slimtune knows (not whether this machine has it)."""
    if not isinstance(spec, str) or DEVICE_SPEC.fullmatch(spec) is None:
        raise DeviceError(f"`device` must be auto, cpu, cuda, cuda:N or mps, but got {spec!r}.")
    return spec


def check_amp(amp: Any) -> str:
    if amp not in AMP_MODES:
        raise DeviceError(f"`amp` must be one of {', '.join(AMP_MODES)}, but got {amp!r}.")
    return amp


#: Accepted ranges of the numeric settings (beyond them a typo runs for days or fails late).
SETTING_RANGES: dict[str, tuple[float, float]] = {
    "threads": (1, 1024), "batch_size": (1, 65536), "epochs": (0, 1000), "finetune_epochs": (0, 1000),
    "lr_scale": (1e-6, 1e3), "qat_lr": (1e-9, 10), "seed": (0, 2**32 - 1), "latency_warmup": (0, 100_000),
    "latency_repeats": (1, 1_000_000), "calibration_size": (1, 1_000_000),
}


#: Settings that say where a session trains, not what a trial is: not part of a
#: study's identity (each worker may train on its own device), stored with each trial.
SESSION_SETTINGS = ("device", "amp")


@dataclass
class EvalSettings:
    """How candidates are trained and measured (identical for every trial of a study,
    except :data:`SESSION_SETTINGS`: ``device``, where candidates train, ``auto`` = CUDA
    if present, else the CPU; ``amp``, mixed precision there: off, auto, fp16, bf16,
    never on the CPU).  Latency is timed on ``runtime`` whatever the device."""

    runtime: str = "onnxruntime"
    threads: int = 1
    batch_size: int = 1
    epochs: int | None = None  # distillation epochs; None = the task's finetune_epochs
    finetune_epochs: int | None = None  # after pruning, and for QAT; None = the task's recovery_epochs
    lr_scale: float = 0.5  # candidate lr = task.lr * lr_scale
    qat_lr: float = 1e-4
    seed: int = 0
    latency_warmup: int = 10
    latency_repeats: int = 400  # calibrated samples (slimtune.search._timing)
    calibration_size: int = 256  # PTQ calibration: this many training samples (the first of a stream)
    device: str = "auto"  # where candidates train (a session setting)
    amp: str = "off"  # mixed precision while training (a session setting)
    #: several targets (``runtime[:batch][@threads]`` specs, the first driving the search;
    #: see :mod:`slimtune.search._targets`); ``None``: the one ``runtime``/``batch_size``/``threads``
    targets: list[str] | None = None

    def __post_init__(self) -> None:
        check_device_spec(self.device)
        check_amp(self.amp)
        if self.targets is not None:
            self._set_targets()
        if self.runtime not in RUNTIMES:
            raise ValueError(f"`runtime` must be one of {', '.join(RUNTIMES)}, but got {self.runtime!r}.")
        for name in ("threads", "batch_size", "latency_repeats"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"`{name}` must be at least 1, but got {getattr(self, name)!r}.")
        for name, (low, high) in SETTING_RANGES.items():
            value = getattr(self, name)
            if value is None and name in ("epochs", "finetune_epochs"):
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (low <= value <= high):
                raise ValueError(f"`{name}` must be a number in [{low:g}, {high:g}], but got {value!r}.")

    def _set_targets(self) -> None:
        """``targets`` parsed and stored as keys; the first one is ``runtime``,
        ``batch_size`` and ``threads``.  One target is stored as those alone (``targets``
        ``None``), as every study made before targets."""
        from slimtune.search._targets import TargetError, parse_targets

        try:
            targets = parse_targets(self.targets, threads=int(self.threads))
        except TargetError as exc:
            raise ValueError(str(exc)) from None
        first = targets[0]
        self.runtime, self.batch_size, self.threads = first.runtime, first.batch_size, first.threads
        self.targets = [t.key for t in targets] if len(targets) > 1 else None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def identity(self) -> dict[str, Any]:
        """The settings that make a study what it is (stored with it, compared on
        resume): every one but :data:`SESSION_SETTINGS`, and ``targets`` only when
        there are several (a one-target study stores what studies stored before)."""
        return {k: v for k, v in self.__dict__.items()
                if k not in SESSION_SETTINGS and not (k == "targets" and v is None)}


