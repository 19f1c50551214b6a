"""Olive's user script for ``benchmarks/peers.py``: the task's arrays as an Olive dataset.

Olive reads data through registered components named in its workflow config; this
module registers one, ``slimtune_arrays``, that loads ``x`` and ``y`` from an ``.npz``
file the benchmark writes (the calibration split for quantization, the validation split
for Olive's own accuracy metric: Olive never sees the test split).
"""

from __future__ import annotations

import numpy as np
from olive.data.registry import Registry


class _Arrays:
    """``({input_name: input}, label)`` pairs of two arrays, as Olive's dataloaders take
    them (its calibration reader takes only named inputs)."""

    def __init__(self, x: np.ndarray, y: np.ndarray, input_name: str) -> None:
        self.x, self.y, self.input_name = x, y, input_name

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int):
        import torch

        return {self.input_name: torch.from_numpy(self.x[index])}, int(self.y[index])


@Registry.register_dataset()
def slimtune_arrays(data_file: str, input_name: str = "input", **kwargs):
    """The arrays ``x`` (float32 inputs, fed as ``input_name``) and ``y`` (labels) saved in ``data_file``."""
    with np.load(data_file) as arrays:
        return _Arrays(np.ascontiguousarray(arrays["x"], dtype=np.float32), arrays["y"].astype(np.int64), input_name)


@Registry.register_post_process()
def slimtune_argmax(output, **kwargs):
    """The predicted class of each sample (Olive's accuracy metric takes class ids)."""
    import torch

    logits = output if isinstance(output, torch.Tensor) else torch.as_tensor(np.asarray(output))
    return logits.argmax(-1)
