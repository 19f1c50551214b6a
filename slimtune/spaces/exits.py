"""Early exits (dynamic computation): a sample leaves at the first confident exit.

Exit points are the boundaries after each block of ``model.blocks`` except the last
(a *block classifier*: ``blocks`` is an ``nn.Sequential`` and ``head`` the final
classifier, see :mod:`slimtune.tasks.models`).  A model without that structure has no
exit points and this knob offers no parameters for it.

Example:
    >>> net = EarlyExits().apply(small_cnn(), {"exits.0.enabled": True, "exits.0.threshold": 0.8}, ctx)
    >>> logits, where = net.predict_with_exits(x)   # where[j] == 0: sample j left at exit 0
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from slimtune.spaces.base import Knob, KnobContext, Param, SpaceError
from slimtune.spaces.registry import register_knob

__all__ = ["EarlyExitNet", "EarlyExits", "ExitHead", "exit_points"]


class ExitHead(nn.Sequential):
    """``AdaptiveAvgPool2d(pool) -> Flatten -> Linear(in_channels * pool², num_classes)``.

    A 2×2 pooling grid keeps coarse spatial layout, which early (low-level) features
    need to classify at all: on digits, the exit after the first block reached about
    25% validation accuracy with global pooling and clearly more with 2×2.
    """

    def __init__(self, in_channels: int, num_classes: int, pool: int = 2) -> None:
        super().__init__(nn.AdaptiveAvgPool2d(pool), nn.Flatten(), nn.Linear(in_channels * pool * pool, num_classes))

    @property
    def classifier(self) -> nn.Linear:
        """The Linear layer producing the exit's logits."""
        return self[2]  # type: ignore[return-value]


class EarlyExitNet(nn.Module):
    """A block classifier with exit heads after some of its blocks.

    ``state_dict`` keys are the original model's (``blocks.*``, ``head.*``) plus
    ``exits.<i>.*`` for the exit after ``blocks[i]``.  Thresholds are plain floats
    (not in the ``state_dict``); any value is accepted: ``0`` sends every sample out at
    the first exit, anything above ``1`` sends none out.

    Args:
        blocks: the trunk, an ``nn.Sequential`` of blocks (shared, not copied).
        head: the final classifier (shared, not copied).
        exits: exit heads keyed by block index ``i`` (the exit reads ``blocks[i]``'s
            output); ``0 <= i < len(blocks) - 1``.
        thresholds: the confidence threshold of each exit, same keys as ``exits``.
    """

    def __init__(
        self,
        blocks: nn.Sequential,
        head: nn.Module,
        exits: Mapping[int, nn.Module],
        thresholds: Mapping[int, float],
    ) -> None:
        super().__init__()
        points = sorted(int(k) for k in exits)
        for point in points:
            if not 0 <= point < len(blocks) - 1:
                raise ValueError(
                    f"Exit points must lie in [0, {len(blocks) - 2}] (after a block but the last), but got {point}."
                )
        if sorted(int(k) for k in thresholds) != points:
            raise ValueError(
                f"`thresholds` needs one value per exit {points}, but got keys {sorted(thresholds)!r}."
            )
        self.blocks = blocks
        self.head = head
        self.exits = nn.ModuleDict({str(p): exits[p] if p in exits else exits[str(p)] for p in points})  # type: ignore[index]
        self.thresholds: list[float] = []
        self.set_thresholds({int(k): v for k, v in thresholds.items()})

    @property
    def exit_points(self) -> list[int]:
        """Block indices with an exit after them, in order."""
        return sorted(int(k) for k in self.exits.keys())

    def set_thresholds(self, thresholds: Mapping[int, float] | Sequence[float]) -> None:
        """Replace the thresholds (a mapping by block index, or a list in exit order)."""
        points = self.exit_points
        if isinstance(thresholds, Mapping):
            values = [thresholds[p] for p in points]
        else:
            values = list(thresholds)
            if len(values) != len(points):
                raise ValueError(f"`thresholds` needs {len(points)} values (exits {points}), but got {values!r}.")
        for value in values:
            if not isinstance(value, (int, float)) or math.isnan(float(value)):
                raise ValueError(f"A threshold must be a number, but got {value!r}.")
        self.thresholds = [float(v) for v in values]

    def forward_all(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Logits of every exit in order, then the final head's (for training)."""
        outputs = []
        for index, block in enumerate(self.blocks):
            x = block(x)
            key = str(index)
            if key in self.exits:
                outputs.append(self.exits[key](x))
        outputs.append(self.head(x))
        return outputs

    def predict_with_exits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The dynamic model's logits and where each sample left.

        Samples that leave are dropped from the batch before the next blocks run, so
        at batch size 1 computation really stops at the exit.

        Returns:
            ``(logits, exit_index)``: ``exit_index[j]`` is the position of the exit
            where sample ``j`` left (``0 .. n_exits - 1``), or ``n_exits`` for the
            final head.
        """
        points = self.exit_points
        n = x.shape[0]
        where = torch.full((n,), len(points), dtype=torch.long, device=x.device)
        active = torch.arange(n, device=x.device)
        out: torch.Tensor | None = None
        start = 0
        for position, (point, threshold) in enumerate(zip(points, self.thresholds)):
            for block in self.blocks[start:point + 1]:
                x = block(x)
            start = point + 1
            logits = self.exits[str(point)](x)
            confidence = F.softmax(logits.float(), dim=-1).max(dim=-1).values
            leave = confidence >= threshold
            n_leave = int(leave.sum())
            if n_leave == 0:
                continue
            if out is None:
                out = logits.new_zeros((n, logits.shape[-1]))
            out[active[leave]] = logits[leave]
            where[active[leave]] = position
            if n_leave == len(active):
                return out, where  # everybody left: the rest is never computed
            stay = ~leave
            active, x = active[stay], x[stay]
        for block in self.blocks[start:]:
            x = block(x)
        logits = self.head(x)
        if out is None:
            return logits, where
        out[active] = logits
        return out, where

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The dynamic model: each sample's logits from the exit where it left."""
        return self.predict_with_exits(x)[0]

    def segments(self) -> list[tuple[nn.Module, nn.Module | None, float | None]]:
        """The model cut at its exits, for export and per-exit MAC counting.

        For exits after blocks ``e1 < e2 < ... < en`` the pieces are
        ``blocks[0..e1]``, ``blocks[e1+1..e2]``, ..., and finally
        ``blocks[en+1..] + head``.  Each piece but the last is paired with its exit
        head and threshold (a sample leaves when the head's max softmax probability
        is ``>= threshold``); the last piece ends in the final head and is paired with
        ``(None, None)``.  Pieces are ``nn.Sequential`` views sharing this model's
        modules (no copies), and ``piece_k+1`` takes ``piece_k``'s output.
        """
        pieces: list[tuple[nn.Module, nn.Module | None, float | None]] = []
        start = 0
        for point, threshold in zip(self.exit_points, self.thresholds):
            pieces.append((nn.Sequential(*self.blocks[start:point + 1]), self.exits[str(point)], threshold))
            start = point + 1
        pieces.append((nn.Sequential(*self.blocks[start:], self.head), None, None))
        return pieces

    def extra_repr(self) -> str:
        return f"exit_points={self.exit_points}, thresholds={self.thresholds}"


def exit_points(model: nn.Module) -> list[int]:
    """Candidate exit points of ``model``: after each block but the last.

    Empty unless the model has ``blocks`` (an ``nn.Sequential``) and ``head``.
    """
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, nn.Sequential) or not isinstance(getattr(model, "head", None), nn.Module):
        return []
    return list(range(len(blocks) - 1))


@register_knob
class EarlyExits(Knob):
    """``exits.<i>.enabled`` and ``exits.<i>.threshold`` for each exit point ``i``.

    :meth:`apply` returns an :class:`EarlyExitNet` with freshly initialised exit
    heads (the trainer then trains every exit with the distillation loss), or the
    model unchanged when no exit is enabled.
    """

    family = "exits"
    stage = "architecture"

    def params(self, model: nn.Module) -> list[Param]:
        params: list[Param] = []
        for point in exit_points(model):
            params.append(Param(f"exits.{point}.enabled", "bool", False, doc=f"attach an exit head after blocks[{point}]"))
            params.append(Param(f"exits.{point}.threshold", "float", 0.9, low=0.5, high=1.0,
                                doc=f"leave at exit {point} when the max softmax probability is >= this"))
        return params

    def unavailable(self, model: nn.Module) -> str | None:
        if exit_points(model):
            return None
        return "the model has no exit points (early exits need a model with `blocks` (nn.Sequential) and `head`)"

    def apply(self, model: nn.Module, values: dict[str, Any], ctx: KnobContext) -> nn.Module:
        """Attach exit heads where ``exits.<i>.enabled`` is true.

        Thresholds are taken as given (not clipped to the searched domain), so a
        pipeline may set e.g. ``0.0`` to measure the shortest path.  Writes
        ``ctx.info["exits"] = {"points", "thresholds", "channels"}``.
        """
        points = exit_points(model)
        enabled = [p for p in points if _as_bool(values.get(f"exits.{p}.enabled", False), f"exits.{p}.enabled")]
        for name in values:
            if name.startswith("exits.") and name.split(".")[1].isdigit() and int(name.split(".")[1]) not in points:
                raise SpaceError(f"`{name}`: the model's exit points are {points}, but got exit {name.split('.')[1]}.")
        if not enabled:
            ctx.info["exits"] = {"points": [], "thresholds": [], "channels": []}
            return model
        thresholds = {p: float(values.get(f"exits.{p}.threshold", 0.9)) for p in enabled}
        channels, num_classes = _exit_shapes(model, ctx.example_input, enabled)
        device = next(model.parameters()).device
        heads: dict[int, nn.Module] = {}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(ctx.seed)
            for point in enabled:
                heads[point] = ExitHead(channels[point], num_classes).to(device)
        net = EarlyExitNet(model.blocks, model.head, heads, thresholds)  # type: ignore[arg-type]
        net.train(model.training)
        ctx.info["exits"] = {"points": enabled, "thresholds": [thresholds[p] for p in enabled],
                             "channels": [channels[p] for p in enabled]}
        return net


def _as_bool(value: Any, name: str) -> bool:
    if isinstance(value, str):
        return Param(name, "bool", False).coerce(value)
    return bool(value)


@torch.no_grad()
def _exit_shapes(model: nn.Module, example_input: torch.Tensor, points: list[int]) -> tuple[dict[int, int], int]:
    """Channels of ``blocks[i]``'s output for each point, and the number of classes."""
    was_training = model.training
    model.eval()
    try:
        channels: dict[int, int] = {}
        x = example_input
        for index, block in enumerate(model.blocks):  # type: ignore[arg-type]
            x = block(x)
            if index in points:
                if x.dim() != 4:
                    raise SpaceError(
                        f"`exits.{index}.enabled`: an exit head needs a 4-D feature map (N, C, H, W) after "
                        f"blocks[{index}], but got shape {tuple(x.shape)}."
                    )
                channels[index] = int(x.shape[1])
        num_classes = int(model.head(x).shape[-1])  # type: ignore[operator]
    finally:
        model.train(was_training)
    return channels, num_classes
