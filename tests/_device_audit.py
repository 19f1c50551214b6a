"""A wrapper that records every tensor a block of code computes with that is not on
the device it was given (a torch function mode: every torch function, tensor method and
``nn.functional`` call passes through it).

Not counted: moving tensors (``.to``, ``.cpu``, pinning), reading metadata (shape,
device, dtype), the data splits handing out CPU batches (:mod:`slimtune.tasks._data` and
the modules it reads loaders and adapts batches with),
and CPU scalars (0-dim tensors, e.g. Adam's step count), which torch allows in any
device's ops.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

_DATA_MODULES = {str(Path(__file__).resolve().parents[1] / "slimtune" / "tasks" / name) for name in
                 ("_data.py", "_inputs.py", "_digests.py", "_loader_scan.py")}
_MOVES = {torch.Tensor.to, torch.Tensor.cpu, torch.Tensor.pin_memory, torch.Tensor.is_pinned, torch.Tensor.cuda,
          torch.Tensor.__len__}


class DeviceAudit(TorchFunctionMode):
    """``with DeviceAudit("cuda:0") as audit: ...``, then ``audit.strays``: one
    ``(function, device, shape)`` per tensor used off ``device``."""

    def __init__(self, device: "torch.device | str") -> None:
        super().__init__()
        self.device = torch.device(device)
        self.strays: list[tuple[str, str, tuple[int, ...]]] = []
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func not in _MOVES and not getattr(func, "__name__", "") == "__get__" and not _from_data_split():
            self.calls += 1
            for leaf in tree_leaves((args, kwargs)):
                if isinstance(leaf, torch.Tensor) and leaf.device != self.device and not (
                        leaf.dim() == 0 and leaf.device.type == "cpu"):
                    self.strays.append((getattr(func, "__qualname__", str(func)), str(leaf.device),
                                        tuple(leaf.shape)))
        return func(*args, **kwargs)


def _from_data_split() -> bool:
    frame = sys._getframe(2)
    while frame is not None:
        if frame.f_code.co_filename in _DATA_MODULES:
            return True
        frame = frame.f_back
    return False
