"""Network pruning: unstructured (weight) or structured (channel), optional rewinding.

* ``weight``: global L1-magnitude masks over every Conv2d/Linear weight
  (``torch.nn.utils.prune.global_unstructured``), fine-tuning with the masks in force,
  then the zeros are made permanent.  Only size shows it (dense kernels run as before).
* ``channel``: whole filters/neurons are physically removed through Torch-Pruning's
  dependency graph (residual additions, BatchNorm, depthwise convs and flatten are
  kept consistent by it), so MACs and latency really drop; then fine-tuning.  Layers
  producing class logits (final classifier, exit heads) are never pruned.
* ``rewind`` (lottery-ticket rewinding, Frankle et al. 2019/2020): after the mask or
  the surviving channels are chosen from the trained weights, the surviving weights
  are reset to their early values ``ctx.info["rewind_state"]`` and fine-tuned again.
  For ``channel`` the early weights of exactly the surviving channels are restored (the
  same pruning is replayed on a copy holding the early weights).  Without
  ``rewind_state`` the weights stay those at pruning time, and a flag says so.

Example:
    >>> model = Pruning().apply(small_cnn(), {"prune.ratio": 0.5, "prune.granularity": "channel"}, ctx)
    >>> ctx.info["channel_widths"]["blocks.0.0"]
    16
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from slimtune.spaces.base import Knob, KnobContext, Param, SpaceError
from slimtune.spaces._registry import register_knob

if TYPE_CHECKING:  # pragma: no cover - knob modules import without torch (`slimtune show` reads them)
    import torch
    from torch import nn

__all__ = [
    "Pruning",
    "build_dependency_graph",
    "channel_widths",
    "logit_layers",
    "prune_channels",
    "prune_weights",
    "rebuild_channel_widths",
]

GRANULARITIES = ("weight", "channel")


@register_knob
class Pruning(Knob):
    """``prune.ratio``, ``prune.granularity`` (``weight``/``channel``), ``prune.rewind``.

    Args:
        importance: channel importance strategy (a Torch-Pruning ``Importance``,
            called with a dependency group); default group L1 magnitude.
    """

    family = "prune"
    title = "Pruning"
    stage = "compression"
    compact_legend = "p<ratio><w|c>[r] pruning (weight/channel, r = rewind)"

    @staticmethod
    def compact(values: Mapping[str, Any], names: Sequence[str]) -> str:
        ratio = values.get("prune.ratio")
        if ratio is None or float(ratio) <= 0:
            return ""
        rewind = "r" if values.get("prune.rewind") in (True, "true", "True") else ""
        return f"p{float(ratio):.2f}{str(values.get('prune.granularity', ''))[:1]}{rewind}"

    def recipe(self, info: Mapping[str, Any]) -> dict[str, Any]:
        """Channel pruning's surviving widths."""
        return {"channel_widths": info.get("channel_widths")}

    def rebuild(self, model: nn.Module, recipe: Mapping[str, Any], example_input: torch.Tensor) -> nn.Module:
        if recipe.get("channel_widths"):
            import torch

            from slimtune.spaces._pruning_ops import rebuild_channel_widths

            with torch.enable_grad():  # Torch-Pruning traces with autograd, even under a caller's no_grad
                return rebuild_channel_widths(model, recipe["channel_widths"], example_input)
        return model

    def recovery_passes(self, values: Mapping[str, Any]) -> int:
        """A pruned model is fine-tuned once."""
        return int(float(values.get("prune.ratio", 0.0) or 0.0) > 0.0)

    def inactive(self, values: Mapping[str, Any]) -> set[str]:
        """Granularity and rewinding mean nothing at ratio 0."""
        if float(values.get("prune.ratio", 0.0) or 0.0) == 0.0:
            return {"prune.granularity", "prune.rewind"} & set(values)
        return set()

    def summary(self, values: Mapping[str, Any]) -> str:
        ratio = float(values.get("prune.ratio", 0.0) or 0.0)
        return f"prune {ratio:.4g} {values.get('prune.granularity', '')}".rstrip() if ratio > 0 else ""

    def __init__(self, *, importance: Callable[..., torch.Tensor] | None = None) -> None:
        self.importance = importance

    def params(self, model: nn.Module) -> list[Param]:
        return [
            Param("prune.ratio", "float", 0.0, low=0.0, high=0.9,
                  doc="fraction of weights (weight) or of channels per group (channel) removed"),
            Param("prune.granularity", "categorical", "channel", choices=GRANULARITIES,
                  doc="weight: unstructured magnitude masks; channel: filters removed physically"),
            Param("prune.rewind", "bool", False,
                  doc="lottery-ticket rewinding: reset survivors to their early weights, then retrain"),
        ]

    def apply(self, model: nn.Module, values: dict[str, Any], ctx: KnobContext) -> nn.Module:
        ratio = float(values.get("prune.ratio", 0.0))
        granularity = str(values.get("prune.granularity", "channel"))
        rewind = values.get("prune.rewind", False)
        rewind = Param("prune.rewind", "bool", False).coerce(rewind) if isinstance(rewind, str) else bool(rewind)
        if not 0.0 <= ratio < 1.0:
            raise SpaceError(f"`prune.ratio` must be in [0, 1), but got {ratio!r}.")
        if granularity not in GRANULARITIES:
            raise SpaceError(f"`prune.granularity` must be one of {', '.join(GRANULARITIES)}, but got {granularity!r}.")
        if ratio == 0.0:
            ctx.info["prune"] = {"granularity": granularity, "ratio": 0.0, "rewind": rewind, "rewound_to": None}
            return model
        if granularity == "weight":
            from slimtune.spaces._weight_pruning import prune_weights

            return prune_weights(model, ratio, ctx, rewind=rewind)
        from slimtune.spaces._pruning_ops import prune_channels

        return prune_channels(model, ratio, ctx, importance=self.importance, rewind=rewind)


#: The operations live in :mod:`slimtune.spaces._pruning_ops` (and the weight masks in
#: :mod:`slimtune.spaces._weight_pruning`), still importable from this module (loaded on
#: first use, so that importing the knob does not import torch).
_MOVED = {name: "slimtune.spaces._pruning_ops" for name in (
    "build_dependency_graph", "channel_widths", "logit_layers", "prune_channels", "rebuild_channel_widths",
    "unwrapped_parameters")}
_MOVED.update({name: "slimtune.spaces._weight_pruning" for name in ("WeightMask", "prune_weights", "weight_targets")})


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        return getattr(importlib.import_module(_MOVED[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
