"""Early exits (dynamic computation): a sample leaves at the first confident exit.

Exit points are the boundaries after each block of ``model.blocks`` except the last
(a *block classifier*: ``blocks`` is an ``nn.Sequential``, ``head`` the final
classifier and the forward exactly ``head(blocks(x))``, see
:mod:`slimtune.tasks._models`).  Any other model, a ViT with ``blocks`` and ``head``
included, is traced with torch.fx (submodules it cannot trace, attention blocks and
torch.nn layers kept whole; an ``nn.TransformerEncoder`` as its layers one by one;
``transformers`` models by their own tracer where it works) and cut after modules where
a single tensor flows (e.g. after each stage of a ``transformers`` ResNet or ConvNeXt,
each layer of its ViT, BERT or DistilBERT), chosen automatically or named with
``exits_after`` (:class:`ExitChain`); where none exists (or the model cannot be traced)
this knob offers no parameters, and says why.  The pieces are checked to reproduce the
model's output exactly before exit heads are attached (pooled feature maps, the mean of
token features, or feature vectors feed the heads).

Example:
    >>> net = EarlyExits().apply(small_cnn(), {"exits.0.enabled": True, "exits.0.threshold": 0.8}, ctx)
    >>> logits, where = net.predict_with_exits(x)   # where[j] == 0: sample j left at exit 0
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from slimtune.spaces.base import Knob, KnobContext, Param, SpaceError, TrainingHooks
from slimtune.spaces._registry import register_knob

if TYPE_CHECKING:  # pragma: no cover - knob modules import without torch (`slimtune show` reads them)
    import torch
    from torch import nn

    from slimtune.spaces._exits_ops import ExitChain

__all__ = ["EarlyExitNet", "EarlyExits", "ExitHead", "TokenExitHead", "exit_points", "grid_pool"]

#: Freshly attached exit heads learn this much faster than the trained trunk.
HEAD_LR_SCALE = 10.0


@register_knob
class EarlyExits(Knob):
    """``exits.<i>.enabled`` and ``exits.<i>.threshold`` for each exit point ``i``.

    :meth:`apply` returns an :class:`EarlyExitNet` with freshly initialised exit
    heads (the trainer then trains every exit with the distillation loss), or the
    model unchanged when no exit is enabled.

    Args:
        exits_after: module names to put the exit points after (default: found
            automatically, see :class:`ExitChain`).
        max_points: at most this many automatic exit points.
    """

    family = "exits"
    title = "Early exits"
    stage = "architecture"
    compact_legend = "ex{i@threshold,..} early exits"

    @staticmethod
    def compact(values: Mapping[str, Any], names: Sequence[str]) -> str:
        exits = sorted({n.split(".")[1] for n in values}, key=lambda k: (len(k), k))
        enabled = [f"{k}@{float(values.get(f'exits.{k}.threshold', float('nan'))):.2f}" for k in exits
                   if values.get(f"exits.{k}.enabled") in (True, "true", "True")]
        return "ex{" + ",".join(enabled) + "}" if enabled else ""

    @classmethod
    def task_options(cls, extra: Mapping[str, Any]) -> dict[str, Any]:
        """A task's ``exits_after`` (module names) places the exit points."""
        return {"exits_after": list(extra["exits_after"])} if extra.get("exits_after") else {}

    def training(self, values: Mapping[str, Any]) -> TrainingHooks | None:
        """With an exit enabled, every exit is trained beside the final head (each
        output with the candidate's loss), the fresh heads at :data:`HEAD_LR_SCALE`
        times the learning rate."""
        if not any(name.endswith(".enabled") and _as_bool(value, name) for name, value in values.items()):
            return None
        return TrainingHooks(lr_scale=_head_lr_scale, outputs=_all_outputs)

    def cost_bound_values(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """Every threshold at 0: all samples leave at the first enabled exit (the
        shortest path bounds the dynamic model's cost from below)."""
        return {name: 0.0 if name.endswith(".threshold") else value for name, value in values.items()}

    def inactive(self, values: Mapping[str, Any]) -> set[str]:
        """The threshold of a disabled exit means nothing."""
        return {name for name in values if name.endswith(".threshold")
                and not values.get(name[: -len("threshold")] + "enabled", False)}

    def summary(self, values: Mapping[str, Any]) -> str:
        enabled = [name for name, value in values.items() if name.endswith(".enabled") and value]
        return f"exits {len(enabled)}" if enabled else ""

    def __init__(self, *, exits_after: Sequence[str] | None = None, max_points: int = 4) -> None:
        self.exits_after = tuple(exits_after) if exits_after is not None else None
        self.max_points = max_points
        self._found: list[str] | None = None  # the points params() found on the baseline (traced models)

    def _chain(self, model: nn.Module) -> ExitChain:
        from slimtune.spaces._exits_ops import ExitChain

        return ExitChain(model, self.exits_after, self.max_points)

    def _apply_chain(self, model: nn.Module) -> ExitChain:
        """The chain of the model being built: cut at the points found on the baseline
        when params() traced it (architecture knobs applied before, e.g. DS-conv, must
        not move them), else found again."""
        if not self._found:
            return self._chain(model)
        from slimtune.spaces._exits_ops import ExitChain

        try:
            return ExitChain(model, self._found, self.max_points)
        except SpaceError as exc:
            raise SpaceError(f"The exit points found on the baseline ({', '.join(self._found)}) are no longer "
                             f"places to stop after the earlier architecture knobs: {exc}") from None

    def params(self, model: nn.Module) -> list[Param]:
        params: list[Param] = []
        chain = self._chain(model)
        self._found = None if chain.is_block_classifier else list(chain.names)
        for point, name in enumerate(chain.names):
            params.append(Param(f"exits.{point}.enabled", "bool", False, doc=f"attach an exit head after {name}"))
            params.append(Param(f"exits.{point}.threshold", "float", 0.9, low=0.5, high=1.0,
                                doc=f"leave at exit {point} when the max softmax probability is >= this"))
        return params

    def unavailable(self, model: nn.Module) -> str | None:
        chain = self._chain(model)
        return None if chain.names else f"the model has no exit points ({chain.reason})"

    def apply(self, model: nn.Module, values: dict[str, Any], ctx: KnobContext) -> nn.Module:
        """Attach exit heads where ``exits.<i>.enabled`` is true.

        Thresholds are taken as given (not clipped to the searched domain), so a
        pipeline may set e.g. ``0.0`` to measure the shortest path.  Writes
        ``ctx.info["exits"] = {"points", "thresholds", "channels", "after"}``.
        """
        enabled = sorted(int(name.split(".")[1]) for name, value in values.items()
                         if name.endswith(".enabled") and name.split(".")[1].isdigit() and _as_bool(value, name))
        if not enabled:  # nothing to cut: the model is not traced
            ctx.info["exits"] = {"points": [], "thresholds": [], "channels": [], "after": []}
            return model
        import torch

        from slimtune.spaces._exit_heads import exit_head
        from slimtune.spaces._exits_ops import EarlyExitNet, _check_reproduces, _exit_shapes

        chain = self._apply_chain(model)
        points = list(range(len(chain.names)))
        for name in values:
            if name.startswith("exits.") and name.split(".")[1].isdigit() and int(name.split(".")[1]) not in points:
                raise SpaceError(f"`{name}`: the model's exit points are {points}, but got exit {name.split('.')[1]}.")
        thresholds = {p: float(values.get(f"exits.{p}.threshold", 0.9)) for p in enabled}
        blocks, head = chain.chain()
        if not chain.is_block_classifier:
            _check_reproduces(model, blocks, head, ctx.example_input, chain.names)
        shapes, num_classes = _exit_shapes(blocks, head, ctx.example_input, enabled)
        device = next(model.parameters()).device
        heads: dict[int, nn.Module] = {}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(ctx.seed)
            for point in enabled:
                heads[point] = exit_head(shapes[point], num_classes, f"exits.{point}.enabled").to(device)
        net = EarlyExitNet(blocks, head, heads, thresholds)
        net.train(model.training)
        ctx.info["exits"] = {"points": enabled, "thresholds": [thresholds[p] for p in enabled],
                             "channels": [shapes[p][0] for p in enabled], "after": [chain.names[p] for p in enabled]}
        return net


def _head_lr_scale(name: str) -> float | None:
    """:data:`HEAD_LR_SCALE` for the parameters of an :class:`EarlyExitNet`'s heads."""
    return HEAD_LR_SCALE if name.startswith("exits.") else None


def _all_outputs(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor] | None:
    """Every exit's logits, then the final head's (:meth:`EarlyExitNet.forward_all`)."""
    forward_all = getattr(model, "forward_all", None)  # also through wrappers that pass it on
    return list(forward_all(x)) if callable(forward_all) else None


def _as_bool(value: Any, name: str) -> bool:
    if isinstance(value, str):
        return Param(name, "bool", False).coerce(value)
    return bool(value)


#: The model and the exit points live in :mod:`slimtune.spaces._exits_ops` (the heads in
#: :mod:`slimtune.spaces._exit_heads`), still importable from this module (loaded on
#: first use, so that importing the knob does not import torch).
_MOVED = {name: "slimtune.spaces._exits_ops" for name in ("EarlyExitNet", "ExitChain", "exit_points")}
_MOVED.update({name: "slimtune.spaces._exit_heads" for name in ("ExitHead", "TokenExitHead", "exit_head", "grid_pool")})


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        return getattr(importlib.import_module(_MOVED[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
