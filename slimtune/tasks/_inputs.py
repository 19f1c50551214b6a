"""What a batch of the user's data becomes before the model sees it: inputs in the dtype
the model is fed (:func:`model_input`), labels as int64, one batch checked to be
``(inputs, labels)`` (:func:`as_batch`).

Example:
    >>> model_input(torch.zeros(2, 3, dtype=torch.float64)).dtype
    torch.float32
    >>> x, y = as_batch((images, labels), "train")
"""

from __future__ import annotations

from typing import Any

import torch

from slimtune.tasks._task_error import TaskError

__all__ = ["as_batch", "model_input"]


def model_input(x: Any) -> torch.Tensor:
    """Inputs as the model is fed them everywhere (training, calibration, timing,
    export): floating point as float32, integers (e.g. token ids) as int64, booleans
    as they are.  Integer inputs are never cast to float: an ``nn.Embedding`` needs
    its ids."""
    x = torch.as_tensor(x)
    if x.is_floating_point():
        return x if x.dtype == torch.float32 else x.float()
    if x.dtype == torch.bool or x.is_complex():
        return x
    return x if x.dtype == torch.int64 else x.long()


def as_batch(batch: Any, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(inputs, labels as int64)`` from one batch the ``name`` loader yielded (inputs
    as :func:`model_input` makes them: float32, or int64 for integer ids).

    Raises:
        TaskError: the batch is not an ``(inputs, labels)`` pair of equal length.
    """
    if not isinstance(batch, (tuple, list)) or len(batch) < 2:
        raise TaskError(f"The {name} loader must yield (inputs, labels) batches, but yielded {type(batch).__name__}.")
    try:
        x, y = model_input(batch[0]), torch.as_tensor(batch[1]).long()
    except (TypeError, ValueError, RuntimeError) as exc:
        raise TaskError(f"The {name} loader must yield (inputs, labels) tensors, but yielded "
                        f"({type(batch[0]).__name__}, {type(batch[1]).__name__}): {exc}") from None
    if x.dim() == 0 or y.dim() == 0 or len(x) != len(y):
        raise TaskError(f"The {name} loader yielded a batch of {tuple(x.shape)} inputs and {tuple(y.shape)} labels; "
                        "they must have the same first dimension.")
    return x, y
