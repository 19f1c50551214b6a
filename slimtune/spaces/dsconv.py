"""Depthwise-separable convolutions (architecture design).

One switch per eligible convolution (``kernel > 1``, ``groups == 1``, not part of an
early-exit head): when on, the ``k x k`` conv is replaced by a depthwise ``k x k`` conv
(``groups = in_channels``) followed by a pointwise ``1 x 1`` conv, which costs
``1/N + 1/k^2`` of the original MACs (``N`` = output channels).

The replacement starts from the best approximation of the original kernel this
structure can express: per input channel ``c``, the ``(out, k*k)`` slice
``W[:, c]`` is replaced by its rank-1 SVD truncation ``s_1 u_1 v_1^T`` (the pointwise
weights take ``s_1 u_1``, the depthwise kernel ``v_1``).  The pipeline then distils
the candidate back.

Example:
    >>> eligible_convs(small_cnn())
    ['blocks.0.0', 'blocks.1.0', 'blocks.2.0']
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from slimtune.spaces.base import Knob, KnobContext, Param, SpaceError, close_matches, replace_module
from slimtune.spaces._registry import register_knob

if TYPE_CHECKING:  # pragma: no cover - knob modules import without torch (`slimtune show` reads them)
    from torch import nn

__all__ = ["DepthwiseSeparable", "DepthwiseSeparableConv", "eligible_convs"]


@register_knob
class DepthwiseSeparable(Knob):
    """``dsconv.<module path>`` (bool) for every eligible conv of the model."""

    family = "dsconv"
    title = "DS-conv"
    stage = "architecture"
    compact_legend = "ds{i,..} depthwise-separable convs"
    compact_index = "ds"

    @staticmethod
    def compact(values: Mapping[str, Any], names: Sequence[str]) -> str:
        on = [str(i) for i, name in enumerate(names) if values.get(name) in (True, "true", "True")]
        return "ds{" + ",".join(on) + "}" if on else ""

    def summary(self, values: Mapping[str, Any]) -> str:
        chosen = [name for name, value in values.items() if value]
        return f"dsconv {len(chosen)}" if chosen else ""

    def __init__(self, *, init: str = "svd") -> None:
        self.init = init

    def params(self, model: nn.Module) -> list[Param]:
        from slimtune.spaces._dsconv_ops import eligible_convs

        return [Param(f"dsconv.{name}", "bool", False, doc=f"make {name} depthwise-separable")
                for name in eligible_convs(model)]

    def unavailable(self, model: nn.Module) -> str | None:
        from slimtune.spaces._dsconv_ops import eligible_convs

        if eligible_convs(model):
            return None
        return "the model has no eligible conv (a k×k Conv2d with k > 1 and groups = 1)"

    def apply(self, model: nn.Module, values: dict[str, Any], ctx: KnobContext) -> nn.Module:
        """Replace each chosen conv in place; writes ``ctx.info["dsconv"]``
        (``replaced``: names, ``init``, ``approx_error``: relative Frobenius error of
        each initial factorisation, 0 meaning exact)."""
        import torch

        from slimtune.spaces._dsconv_ops import DepthwiseSeparableConv, eligible_convs

        eligible = eligible_convs(model)
        chosen = []
        for key, value in values.items():
            if not key.startswith("dsconv."):
                continue
            name = key[len("dsconv."):]
            if name not in eligible:
                raise SpaceError(f"`{key}`: {name!r} is not an eligible conv of the model." + close_matches(name, eligible))
            if bool(value):
                chosen.append(name)
        errors: dict[str, float] = {}
        for name in sorted(chosen, key=eligible.index):
            conv = model.get_submodule(name)
            ds = DepthwiseSeparableConv.from_conv(conv, init=self.init)  # type: ignore[arg-type]
            with torch.no_grad():
                err = (ds.composite_kernel() - conv.weight).norm() / conv.weight.norm().clamp_min(1e-12)
            errors[name] = round(float(err), 6)
            ds.train(conv.training)
            replace_module(model, name, ds)
        ctx.info["dsconv"] = {"replaced": sorted(chosen, key=eligible.index), "init": self.init, "approx_error": errors}
        return model


#: The layer and its helpers live in :mod:`slimtune.spaces._dsconv_ops`, still importable
#: from this module (loaded on first use, so that importing the knob does not import torch).
_MOVED = {name: "slimtune.spaces._dsconv_ops" for name in ("DepthwiseSeparableConv", "eligible_convs", "rank1_factors")}


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        return getattr(importlib.import_module(_MOVED[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
