"""Output adapters: make a model whose forward returns an object with ``.logits``
(Hugging Face ``transformers``), a tuple or a dict return a tensor of logits.

The model is wrapped once (:class:`LogitsOutput`), so every knob, the trainer, the
MAC counter and the runtimes (ONNX export included) see a plain tensor.

Example:
    >>> model = LogitsOutput(ResNetForImageClassification(config), "logits")
    >>> model(torch.zeros(1, 1, 32, 32)).shape
    torch.Size([1, 10])
"""

from __future__ import annotations

from typing import Any, Callable, Union

import torch
from torch import nn

__all__ = ["LogitsOutput", "OutputSpec", "describe_output", "select_logits"]

#: ``"logits"`` (an attribute or a key), an int (a tuple position) or a callable.
OutputSpec = Union[str, int, Callable[[Any], torch.Tensor]]


def select_logits(output: Any, spec: OutputSpec) -> torch.Tensor:
    """The logits inside ``output`` according to ``spec``.

    Raises:
        ValueError: ``spec`` does not fit ``output`` (names what was found).
    """
    if callable(spec) and not isinstance(spec, (str, int)):
        return spec(output)
    if isinstance(spec, str):
        if isinstance(output, dict) or hasattr(output, "keys"):
            try:
                return output[spec]
            except (KeyError, TypeError):
                pass
        if hasattr(output, spec):
            return getattr(output, spec)
        keys = list(output.keys()) if hasattr(output, "keys") else []
        raise ValueError(f"`output={spec!r}` does not fit the model: its output is a {type(output).__name__}"
                         + (f" with keys {keys}" if keys else " without that attribute") + ".")
    if isinstance(spec, int) and not isinstance(spec, bool):
        if isinstance(output, (tuple, list)) and -len(output) <= spec < len(output):
            return output[spec]
        size = f" of length {len(output)}" if isinstance(output, (tuple, list)) else ""
        raise ValueError(f"`output={spec!r}` does not fit the model: its output is a {type(output).__name__}{size}.")
    raise ValueError(f"`output` must be an attribute/key name, a tuple position or a callable, but got {spec!r}.")


def describe_output(spec: OutputSpec | None) -> str:
    """A stable text for fingerprints and reprs."""
    if spec is None or isinstance(spec, (str, int)):
        return repr(spec)
    return getattr(spec, "__qualname__", None) or type(spec).__name__


class LogitsOutput(nn.Module):
    """``model`` whose forward returns ``select_logits(model(x), spec)``.

    Args:
        model: the user's model (kept as the ``model`` submodule, not copied).
        spec: where the logits are (see :func:`select_logits`).
    """

    def __init__(self, model: nn.Module, spec: OutputSpec) -> None:
        super().__init__()
        self.model = model
        self.spec = spec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return select_logits(self.model(x), self.spec)

    def extra_repr(self) -> str:
        return f"output={describe_output(self.spec)}"
