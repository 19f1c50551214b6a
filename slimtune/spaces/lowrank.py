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

import importlib
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from slimtune.spaces.base import Knob, KnobContext, Param, replace_module
from slimtune.spaces._registry import register_knob

if TYPE_CHECKING:  # pragma: no cover - knob modules import without torch (`slimtune show` reads them)
    from torch import nn

__all__ = ["LowRank", "LowRankConv", "LowRankLinear", "lowrank_groups"]

MIN_RATIO = 0.05


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
        from slimtune.spaces._attention import mha_projections
        from slimtune.spaces._lowrank_ops import lowrank_groups

        left_out = mha_projections(model)
        out = []
        for group, layers in lowrank_groups(model).items():
            whole = [name for name in left_out if name.startswith(group.split("-")[0].rsplit(".", 1)[0] + ".")]
            note = f"; left whole: {', '.join(whole)} ({left_out[whole[0]]})" if whole else ""
            out.append(Param(f"lowrank.{group}", "float", 1.0, low=MIN_RATIO, high=1.0,
                             doc=f"share of the rank kept in {', '.join(layers)} (1 = unchanged){note}"))
        return out

    def unavailable(self, model: nn.Module) -> str | None:
        from slimtune.spaces._attention import mha_projections
        from slimtune.spaces._lowrank_ops import lowrank_groups

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
        import torch
        from torch import nn

        from slimtune.spaces._attention import mha_projections
        from slimtune.spaces._lowrank_ops import LowRankConv, LowRankLinear, full_rank, lowrank_groups, rank_for, saves

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


#: The layers and groups live in :mod:`slimtune.spaces._lowrank_ops`, still importable
#: from this module (loaded on first use, so that importing the knob does not import torch).
_MOVED = {name: "slimtune.spaces._lowrank_ops" for name in (
    "LowRankConv", "LowRankLinear", "STACK", "full_rank", "lowrank_groups", "rank_for", "saves")}


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        return getattr(importlib.import_module(_MOVED[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
