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

from typing import Any, Mapping, Sequence

import torch
import torch.fx
from torch import nn

from slimtune.spaces.base import Knob, KnobContext, Param, SpaceError, close_matches, replace_module
from slimtune.spaces._registry import register_knob

__all__ = ["DepthwiseSeparable", "DepthwiseSeparableConv", "eligible_convs"]


class DepthwiseSeparableConv(nn.Sequential):
    """``Conv2d(cin, cin, k, groups=cin, bias=False) -> Conv2d(cin, cout, 1, bias=bias)``.

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation,
        padding_mode: as for the ``nn.Conv2d`` it replaces (the depthwise conv
            takes the spatial settings).
        bias: whether the pointwise conv has a bias.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        *,
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] | str = 0,
        dilation: int | tuple[int, int] = 1,
        bias: bool = False,
        padding_mode: str = "zeros",
    ) -> None:
        super().__init__(
            nn.Conv2d(in_channels, in_channels, kernel_size, stride=stride, padding=padding, dilation=dilation,
                      groups=in_channels, bias=False, padding_mode=padding_mode),
            nn.Conv2d(in_channels, out_channels, 1, bias=bias),
        )

    # The replaced conv's geometry, for code that reads it from the layer (e.g. Hugging
    # Face MobileNetV2 computes its "same" padding from ``stride``, ``kernel_size`` and
    # ``dilation`` of the conv it is about to call).
    @property
    def in_channels(self) -> int:
        return self.depthwise.in_channels

    @property
    def out_channels(self) -> int:
        return self.pointwise.out_channels

    @property
    def kernel_size(self) -> tuple[int, ...]:
        return self.depthwise.kernel_size

    @property
    def stride(self) -> tuple[int, ...]:
        return self.depthwise.stride

    @property
    def padding(self) -> "tuple[int, ...] | str":
        return self.depthwise.padding

    @property
    def dilation(self) -> tuple[int, ...]:
        return self.depthwise.dilation

    @property
    def weight(self) -> torch.Tensor:
        """The equivalent dense kernel (for code that reads a conv's weight, e.g. its
        dtype; while torch.fx traces, the pointwise weight, whose dtype the trace knows)."""
        if torch.fx._symbolic_trace.is_fx_symbolic_tracing():
            return self.pointwise.weight
        return self.composite_kernel()

    @property
    def bias(self) -> torch.Tensor | None:
        return self.pointwise.bias

    @property
    def depthwise(self) -> nn.Conv2d:
        return self[0]  # type: ignore[return-value]

    @property
    def pointwise(self) -> nn.Conv2d:
        return self[1]  # type: ignore[return-value]

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, *, init: str = "svd") -> "DepthwiseSeparableConv":
        """A replacement for ``conv`` (same device and dtype).

        Args:
            conv: a ``groups == 1`` Conv2d.
            init: ``"svd"`` (per-input-channel rank-1 factorisation of ``conv``'s
                kernel; the bias is copied) or ``"random"`` (PyTorch's default init).
        """
        if conv.groups != 1:
            raise ValueError(f"`conv` must have groups == 1, but got groups={conv.groups}.")
        if init not in ("svd", "random"):
            raise ValueError(f"`init` must be 'svd' or 'random', but got {init!r}.")
        ds = cls(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride, padding=conv.padding,
                 dilation=conv.dilation, bias=conv.bias is not None, padding_mode=conv.padding_mode)
        ds.to(device=conv.weight.device, dtype=conv.weight.dtype)
        if init == "svd":
            depthwise, pointwise = rank1_factors(conv.weight.detach())
            with torch.no_grad():
                ds.depthwise.weight.copy_(depthwise)
                ds.pointwise.weight.copy_(pointwise)
                if conv.bias is not None:
                    ds.pointwise.bias.copy_(conv.bias)
        return ds

    def composite_kernel(self) -> torch.Tensor:
        """The equivalent dense ``(out, in, kh, kw)`` kernel (for checks)."""
        return self.pointwise.weight[:, :, 0, 0, None, None] * self.depthwise.weight[:, 0][None]


def rank1_factors(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Depthwise ``(in, 1, kh, kw)`` and pointwise ``(out, in, 1, 1)`` weights whose
    composite kernel is the best (Frobenius) approximation of ``weight`` (out, in, kh, kw)."""
    cout, cin, kh, kw = weight.shape
    per_input = weight.permute(1, 0, 2, 3).reshape(cin, cout, kh * kw).float()
    u, s, vh = torch.linalg.svd(per_input, full_matrices=False)
    depthwise = vh[:, 0, :].reshape(cin, 1, kh, kw)
    pointwise = (u[:, :, 0] * s[:, :1]).T.reshape(cout, cin, 1, 1)
    return depthwise.to(weight.dtype), pointwise.to(weight.dtype)


def eligible_convs(model: nn.Module) -> list[str]:
    """Names of the convs a ``dsconv`` switch may replace, in module order.

    Eligible: ``nn.Conv2d`` with a kernel larger than 1 and ``groups == 1``, not under
    an ``exits`` submodule and not already part of a :class:`DepthwiseSeparableConv`.
    """
    separable = [name for name, m in model.named_modules() if isinstance(m, DepthwiseSeparableConv)]
    names = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Conv2d) or module.groups != 1 or max(module.kernel_size) <= 1:
            continue
        if "exits" in name.split(".") or any(name.startswith(prefix + ".") for prefix in separable):
            continue
        names.append(name)
    return names


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
        return [Param(f"dsconv.{name}", "bool", False, doc=f"make {name} depthwise-separable")
                for name in eligible_convs(model)]

    def unavailable(self, model: nn.Module) -> str | None:
        if eligible_convs(model):
            return None
        return "the model has no eligible conv (a k×k Conv2d with k > 1 and groups = 1)"

    def apply(self, model: nn.Module, values: dict[str, Any], ctx: KnobContext) -> nn.Module:
        """Replace each chosen conv in place; writes ``ctx.info["dsconv"]``
        (``replaced``: names, ``init``, ``approx_error``: relative Frobenius error of
        each initial factorisation, 0 meaning exact)."""
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
