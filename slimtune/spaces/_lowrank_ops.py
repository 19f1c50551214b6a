"""The low-rank knob's layers (:class:`LowRankConv`, :class:`LowRankLinear`), their SVD
initialisation and the layer groups it offers; :mod:`slimtune.spaces.lowrank` (the knob,
which imports without torch) uses them."""

from __future__ import annotations

import torch
import torch.fx
from torch import nn

from slimtune.spaces._attention import mha_projections


class LowRankConv(nn.Sequential):
    """``Conv2d(cin, r, k, stride, padding, dilation, bias=False) -> Conv2d(r, cout, 1, bias)``.

    ``weight`` and ``bias`` give the equivalent dense conv's (for code that reads a
    layer's weight, e.g. its dtype, instead of calling it)."""

    @property
    def weight(self) -> torch.Tensor:
        if torch.fx._symbolic_trace.is_fx_symbolic_tracing():  # a trace reads its dtype: a parameter it knows
            return self[1].weight
        return (self[1].weight.flatten(1) @ self[0].weight.flatten(1)).reshape(
            self[1].out_channels, *self[0].weight.shape[1:])

    @property
    def bias(self) -> torch.Tensor | None:
        return self[1].bias

    # The replaced conv's geometry, for code that reads it from the layer (e.g. Hugging
    # Face MobileNetV2 computes its "same" padding from the conv it is about to call).
    in_channels = property(lambda self: self[0].in_channels)
    out_channels = property(lambda self: self[1].out_channels)
    kernel_size = property(lambda self: self[0].kernel_size)
    stride = property(lambda self: self[0].stride)
    padding = property(lambda self: self[0].padding)
    dilation = property(lambda self: self[0].dilation)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, rank: int) -> "LowRankConv":
        cout, cin, kh, kw = conv.weight.shape
        where = {"device": conv.weight.device, "dtype": conv.weight.dtype}  # made where the conv is
        first = nn.Conv2d(cin, rank, (kh, kw), stride=conv.stride, padding=conv.padding, dilation=conv.dilation,
                          bias=False, padding_mode=conv.padding_mode, **where)
        second = nn.Conv2d(rank, cout, 1, bias=conv.bias is not None, **where)
        left, right = _svd_factors(conv.weight.detach().reshape(cout, cin * kh * kw), rank)
        with torch.no_grad():
            first.weight.copy_(right.reshape(rank, cin, kh, kw))
            second.weight.copy_(left.reshape(cout, rank, 1, 1))
            if conv.bias is not None:
                second.bias.copy_(conv.bias)
        return cls(first, second)


class LowRankLinear(nn.Sequential):
    """``Linear(cin, r, bias=False) -> Linear(r, cout, bias)``.

    ``weight`` and ``bias`` give the equivalent dense layer's (``nn.TransformerEncoderLayer``
    reads its linears' weights on its inference fast path; the exported model calls
    the two factors)."""

    @property
    def weight(self) -> torch.Tensor:
        if torch.fx._symbolic_trace.is_fx_symbolic_tracing():  # a trace reads its dtype: a parameter it knows
            return self[1].weight
        return self[1].weight @ self[0].weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self[1].bias

    @property
    def in_features(self) -> int:
        return self[0].in_features

    @property
    def out_features(self) -> int:
        return self[1].out_features

    @classmethod
    def from_linear(cls, linear: nn.Linear, rank: int) -> "LowRankLinear":
        where = {"device": linear.weight.device, "dtype": linear.weight.dtype}  # made where the layer is
        first = nn.Linear(linear.in_features, rank, bias=False, **where)
        second = nn.Linear(rank, linear.out_features, bias=linear.bias is not None, **where)
        left, right = _svd_factors(linear.weight.detach(), rank)
        with torch.no_grad():
            first.weight.copy_(right)
            second.weight.copy_(left)
            if linear.bias is not None:
                second.bias.copy_(linear.bias)
        return cls(first, second)


def _svd_factors(matrix: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(left (out, r), right (r, in))`` with ``left @ right`` the best rank-``r``
    approximation of ``matrix``; the singular values are split evenly between them."""
    u, s, vh = torch.linalg.svd(matrix.float(), full_matrices=False)
    root = s[:rank].sqrt()
    return (u[:, :rank] * root).to(matrix.dtype), (root[:, None] * vh[:rank]).to(matrix.dtype)


def full_rank(layer: nn.Module) -> int:
    """``min(out, in * k * k)``: the rank of the layer's weight matrix at most."""
    weight = layer.weight
    return min(weight.shape[0], weight[0].numel())


def rank_for(layer: nn.Module, ratio: float) -> int:
    return max(1, int(round(float(ratio) * full_rank(layer))))


def saves(layer: nn.Module, rank: int) -> bool:
    """Whether factorizing ``layer`` at ``rank`` costs fewer MACs (and weights)."""
    out, fan_in = layer.weight.shape[0], layer.weight[0].numel()
    return rank * (fan_in + out) < out * fan_in


def _eligible(model: nn.Module) -> list[str]:
    skip = [name for name, m in model.named_modules()
            if isinstance(m, (LowRankConv, LowRankLinear)) or type(m).__name__ == "DepthwiseSeparableConv"]
    read_directly = mha_projections(model)  # the attention reads their weights: not replaceable
    names = []
    for name, module in model.named_modules():
        if name in read_directly:
            continue
        if isinstance(module, nn.Conv2d) and module.groups != 1:
            continue
        if not isinstance(module, (nn.Conv2d, nn.Linear)):
            continue
        if "exits" in name.split(".") or any(name.startswith(prefix + ".") for prefix in skip):
            continue
        if saves(module, 1):  # a layer too small to save anything even at rank 1 is not offered
            names.append(name)
    return names


#: A container of at least this many numbered children (``blocks.0`` ... ``blocks.11``)
#: is a stack of blocks: low-rank groups split it into runs of consecutive blocks.
STACK = 4


def lowrank_groups(model: nn.Module, *, target: int = 4, most: int = 12) -> dict[str, list[str]]:
    """Eligible layers by group, in module order.

    A group is a prefix of the layers' qualified names: the shortest prefix depth that
    makes at least ``min(target, layers)`` groups (stages such as ``blocks.0`` or
    ``encoder.stages.1``), unless that makes more than ``most`` groups, in which case
    the depth before it is used.  Then a group that holds a stack of blocks (at least
    :data:`STACK` numbered children, e.g. a ViT's ``blocks`` or a MobileNetV3's
    ``features``) is split into runs of consecutive blocks, ``features.1-3``, one per
    block while the groups stay at most ``most``."""
    return _split_stacks(_depth_groups(_eligible(model), target, most), most)


def _depth_groups(names: list[str], target: int, most: int) -> dict[str, list[str]]:
    if not names:
        return {}

    def grouped(depth: int) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for name in names:
            out.setdefault(".".join(name.split(".")[:depth]), []).append(name)
        return out

    best = grouped(1)
    for depth in range(2, max(len(n.split(".")) for n in names) + 1):
        if len(best) >= min(target, len(names)):
            break
        candidate = grouped(depth)
        if len(candidate) > most:
            break
        best = candidate
    return best


def _stack(prefix: str, layers: list[str]) -> tuple[str, dict[str, list[str]]] | None:
    """``(container, {child: layers})`` when ``layers`` (all under ``prefix``) sit in at
    least :data:`STACK` numbered children of one container, else None."""
    parts = [name.split(".") for name in layers]
    common = 0
    while all(len(p) > common + 1 for p in parts) and len({p[common] for p in parts}) == 1:
        common += 1
    children: dict[str, list[str]] = {}
    for name, p in zip(layers, parts):
        if len(p) <= common + 1 or not p[common].isdigit():
            return None
        children.setdefault(p[common], []).append(name)
    if len(children) < STACK:
        return None
    container = ".".join(parts[0][:common])
    return (container if container else prefix), children


def _split_stacks(groups: dict[str, list[str]], most: int) -> dict[str, list[str]]:
    """Split each group holding a stack of blocks (see :func:`_stack`) into runs of
    consecutive blocks, as many as ``most`` groups in all allow."""
    for prefix in list(groups):
        found = _stack(prefix, groups[prefix])
        room = most - len(groups) + 1
        if found is None or room < 2:
            continue
        container, children = found
        keys = list(children)
        runs = min(len(keys), room)
        bounds = [round(i * len(keys) / runs) for i in range(runs + 1)]
        split: dict[str, list[str]] = {}
        for lo, hi in zip(bounds, bounds[1:]):
            chunk = keys[lo:hi]
            name = f"{container}.{chunk[0]}" if len(chunk) == 1 else f"{container}.{chunk[0]}-{chunk[-1]}"
            split[name] = [layer for key in chunk for layer in children[key]]
        groups = {k: v for g, layers in groups.items() for k, v in (split.items() if g == prefix else [(g, layers)])}
    return groups
