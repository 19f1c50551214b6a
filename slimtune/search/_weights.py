"""Reading weights blobs safely: tensors only, never code.

Every weights blob slimtune reads (a candidate's state dict in the study database, a
cached baseline file) goes through :func:`load_weights`, which uses
``torch.load(..., weights_only=True)``: a crafted pickle is refused, never executed.
A refused or damaged blob raises :class:`WeightsError` with one plain sentence (never
torch's advice to retry with ``weights_only=False``).

Example:
    >>> state = load_weights(blob, what="the weights of trial 3")
"""

from __future__ import annotations

import io
from os import PathLike
from typing import Any

import torch


class WeightsError(ValueError):
    """A blob that is not a valid weights blob (tampered, truncated or not tensors)."""


def load_weights(source: "bytes | str | PathLike[str]", *, what: str = "the blob") -> Any:
    """The object stored in ``source`` (bytes or a file path), read with
    ``weights_only=True`` on the CPU.

    Raises:
        WeightsError: ``source`` is not a valid weights blob; ``what`` names it in the
            message.
    """
    stream = io.BytesIO(bytes(source)) if isinstance(source, (bytes, bytearray, memoryview)) else source
    try:
        return torch.load(stream, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many kinds; its message advises weights_only=False
        raise WeightsError(f"{what} is not a valid weights blob ({_reason(exc)}); it was not loaded.") from None


def load_state_dict(source: "bytes | str | PathLike[str]", *, what: str = "the blob") -> dict[str, torch.Tensor]:
    """A state dict (names to tensors) from ``source``; see :func:`load_weights`."""
    state = load_weights(source, what=what)
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise WeightsError(f"{what} is not a valid weights blob (it holds {type(state).__name__}, not a state dict of "
                           "tensors); it was not loaded.")
    return state


def _reason(exc: BaseException) -> str:
    """A short reason for a refused blob, free of torch's retry advice."""
    text = str(exc)
    if "GLOBAL" in text or "Unsupported global" in text:
        return "it refers to Python code, not only tensors"
    return "damaged or not a torch file"
