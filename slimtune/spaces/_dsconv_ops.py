"""The depthwise-separable knob's layer (:class:`DepthwiseSeparableConv`), its SVD
initialisation and the convs it may replace; :mod:`slimtune.spaces.dsconv` (the knob,
which imports without torch) uses them."""

from __future__ import annotations

import torch
import torch.fx
from torch import nn


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
