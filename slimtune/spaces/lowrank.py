"""Low-rank factorization of convolutions and linear layers (architecture design).

One parameter per *layer group* (the model's top-level stages: ``blocks.0``,
``blocks.1``, ``head`` ...): ``lowrank.<group>`` is the share of each layer's full rank
that is kept, ``1.0`` (the default) meaning "leave the group alone".  A chosen layer

- ``Conv2d(cin, cout, k)`` becomes ``Conv2d(cin, r, k) -> Conv2d(r, cout, 1)``,
- ``Linear(cin, cout)`` becomes ``Linear(cin, r) -> Linear(r, cout)``,

initialised from the truncated SVD of its weight reshaped to ``(cout, cin * k * k)``
(the best rank-``r`` approximation in the Frobenius norm; exact at full rank), then
distilled back by the pipeline.  The factorized layer costs ``r * (cin * k * k +
cout)`` multiply-accumulates per output position instead of ``cout * cin * k * k``;
a layer whose rank ``r = max(1, round(ratio * min(cout, cin * k * k)))`` would not
save anything is left as it is (and reported in ``ctx.info["lowrank"]``).

Eligible layers: ``nn.Conv2d`` with ``groups == 1`` and ``nn.Linear``, not inside an
early-exit head or a depthwise-separable / already factorized block.

Example:
    >>> lowrank_groups(small_cnn())
    {'blocks.0': ['blocks.0.0'], 'blocks.1': ['blocks.1.0'], 'blocks.2': ['blocks.2.0'], 'head.2': ['head.2']}
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch import nn

from slimtune.spaces.base import Knob, KnobContext, Param, replace_module
from slimtune.spaces._registry import register_knob

__all__ = ["LowRank", "LowRankConv", "LowRankLinear", "lowrank_groups"]

MIN_RATIO = 0.05


class LowRankConv(nn.Sequential):
    """``Conv2d(cin, r, k, stride, padding, dilation, bias=False) -> Conv2d(r, cout, 1, bias)``."""

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
    """``Linear(cin, r, bias=False) -> Linear(r, cout, bias)``."""

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
    names = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d) and module.groups != 1:
            continue
        if not isinstance(module, (nn.Conv2d, nn.Linear)):
            continue
        if "exits" in name.split(".") or any(name.startswith(prefix + ".") for prefix in skip):
            continue
        if saves(module, 1):  # a layer too small to save anything even at rank 1 is not offered
            names.append(name)
    return names


def lowrank_groups(model: nn.Module, *, target: int = 4, most: int = 12) -> dict[str, list[str]]:
    """Eligible layers by group, in module order.

    A group is a prefix of the layers' qualified names: the shortest prefix depth that
    makes at least ``min(target, layers)`` groups (stages such as ``blocks.0`` or
    ``encoder.stages.1``), unless that makes more than ``most`` groups, in which case
    the depth before it is used."""
    names = _eligible(model)
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


@register_knob
class LowRank(Knob):
    """``lowrank.<group>``: share of each layer's rank kept in that group (1.0 = off)."""

    family = "lowrank"
    title = "Low-rank"
    stage = "architecture"
    compact_legend = "lr{i:rank share,..} low-rank groups"
    compact_index = "lr"

    @staticmethod
    def compact(values: Mapping[str, Any], names: Sequence[str]) -> str:
        factorized = [f"{i}:{float(values[name]):.2f}" for i, name in enumerate(names)
                      if values.get(name) is not None and float(values[name]) < 1.0]
        return "lr{" + ",".join(factorized) + "}" if factorized else ""

    def summary(self, values: Mapping[str, Any]) -> str:
        factored = [float(v) for v in values.values() if float(v) < 1.0]
        return f"low-rank {len(factored)} group(s) (min {min(factored):.2g})" if factored else ""

    def params(self, model: nn.Module) -> list[Param]:
        return [Param(f"lowrank.{group}", "float", 1.0, low=MIN_RATIO, high=1.0,
                      doc=f"share of the rank kept in {', '.join(layers)} (1 = unchanged)")
                for group, layers in lowrank_groups(model).items()]

    def apply(self, model: nn.Module, values: dict[str, Any], ctx: KnobContext) -> nn.Module:
        """Factorize the layers of each group whose ratio is below 1; writes
        ``ctx.info["lowrank"]`` (``ranks``: ``{layer: [rank, full rank]}``, ``kept``:
        layers left whole because factorizing would not save anything, ``approx_error``:
        relative Frobenius error of each initial factorization)."""
        groups = lowrank_groups(model)
        ranks: dict[str, list[int]] = {}
        kept: list[str] = []
        errors: dict[str, float] = {}
        for key, ratio in values.items():
            group = key[len("lowrank."):]
            if float(ratio) >= 1.0 or group not in groups:
                continue  # 1.0 is "off"; a group whose layers another knob replaced is gone
            for name in groups[group]:
                layer = model.get_submodule(name)
                rank = rank_for(layer, ratio)
                if not saves(layer, rank):
                    kept.append(name)
                    continue
                if isinstance(layer, nn.Conv2d):
                    new: nn.Module = LowRankConv.from_conv(layer, rank)
                    approx = new[1].weight.flatten(1) @ new[0].weight.flatten(1)
                else:
                    new = LowRankLinear.from_linear(layer, rank)  # type: ignore[arg-type]
                    approx = new[1].weight @ new[0].weight
                with torch.no_grad():
                    original = layer.weight.flatten(1)
                    errors[name] = round(float((approx - original).norm() / original.norm().clamp_min(1e-12)), 6)
                new.train(layer.training)
                replace_module(model, name, new)
                ranks[name] = [rank, full_rank(layer)]
        ctx.info["lowrank"] = {"ranks": ranks, "kept": kept, "approx_error": errors}
        return model
