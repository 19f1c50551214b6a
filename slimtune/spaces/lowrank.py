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
import torch.fx
from torch import nn

from slimtune.spaces.base import Knob, KnobContext, Param, replace_module
from slimtune.spaces._attention import mha_projections
from slimtune.spaces._registry import register_knob

__all__ = ["LowRank", "LowRankConv", "LowRankLinear", "lowrank_groups"]

MIN_RATIO = 0.05


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
        first = nn.Conv2d(cin, rank, (kh, kw), stride=conv.stride, padding=conv.padding, dilation=conv.dilation,
                          bias=False, padding_mode=conv.padding_mode)
        second = nn.Conv2d(rank, cout, 1, bias=conv.bias is not None)
        left, right = _svd_factors(conv.weight.detach().reshape(cout, cin * kh * kw), rank)
        with torch.no_grad():
            first.weight.copy_(right.reshape(rank, cin, kh, kw))
            second.weight.copy_(left.reshape(cout, rank, 1, 1))
            if conv.bias is not None:
                second.bias.copy_(conv.bias)
        return cls(first, second).to(device=conv.weight.device, dtype=conv.weight.dtype)


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
        first = nn.Linear(linear.in_features, rank, bias=False)
        second = nn.Linear(rank, linear.out_features, bias=linear.bias is not None)
        left, right = _svd_factors(linear.weight.detach(), rank)
        with torch.no_grad():
            first.weight.copy_(right)
            second.weight.copy_(left)
            if linear.bias is not None:
                second.bias.copy_(linear.bias)
        return cls(first, second).to(device=linear.weight.device, dtype=linear.weight.dtype)


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
        left_out = mha_projections(model)
        out = []
        for group, layers in lowrank_groups(model).items():
            whole = [name for name in left_out if name.startswith(group.split("-")[0].rsplit(".", 1)[0] + ".")]
            note = f"; left whole: {', '.join(whole)} ({left_out[whole[0]]})" if whole else ""
            out.append(Param(f"lowrank.{group}", "float", 1.0, low=MIN_RATIO, high=1.0,
                             doc=f"share of the rank kept in {', '.join(layers)} (1 = unchanged){note}"))
        return out

    def unavailable(self, model: nn.Module) -> str | None:
        if lowrank_groups(model):
            return None
        left_out = mha_projections(model)
        return "the model has no Conv2d (groups = 1) or Linear layer that factorizing would make cheaper" + (
            f" ({', '.join(left_out)} left whole: {next(iter(left_out.values()))})" if left_out else "")

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
        ctx.info["lowrank"] = {"ranks": ranks, "kept": kept, "approx_error": errors,
                               **({"left_whole": mha_projections(model)} if mha_projections(model) else {})}
        return model
