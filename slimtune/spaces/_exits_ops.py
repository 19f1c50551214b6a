"""The early-exit knob's model (:class:`EarlyExitNet`) and where exits can go
(:func:`exit_points`, :class:`ExitChain`); :mod:`slimtune.spaces.exits` (the knob,
which imports without torch) uses them."""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from slimtune.spaces.base import SpaceError, close_matches


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
    """Candidate exit points of a *block classifier*: after each block but the last.

    Empty unless the model has ``blocks`` (an ``nn.Sequential``) and ``head`` and its
    forward is ``head(blocks(x))`` (a ViT also has ``blocks`` and ``head``, with a patch
    embedding before and a norm and pooling between); other models get theirs from
    :class:`ExitChain`.
    """
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, nn.Sequential) or not isinstance(getattr(model, "head", None), nn.Module):
        return []
    from slimtune.spaces import _graph_cuts as graph_cuts

    return list(range(len(blocks) - 1)) if graph_cuts.is_head_of_blocks(model) else []


class ExitChain:
    """Where exits can go on any model: a block classifier's blocks, or, for any
    other model, modules after which a single tensor flows, found in its torch.fx
    graph (:mod:`slimtune.spaces._graph_cuts`): chosen automatically, or named by the
    user (``exits_after``).

    Attributes:
        names: the module after which each exit point lies (exit ``i`` after ``names[i]``).
        reason: why there is none (when ``names`` is empty).
    """

    def __init__(self, model: nn.Module, exits_after: Sequence[str] | None = None, max_points: int = 4) -> None:
        self.model = model
        self.graph = None
        self.positions: list[int] = []
        self.reason = ""
        if exits_after is None and exit_points(model):
            self.names = [f"blocks.{i}" for i in exit_points(model)]
            return
        from slimtune.spaces import _graph_cuts as graph_cuts

        self.names = []
        modules = dict(model.named_modules())
        wanted: list[str] = []
        for name in exits_after or ():
            # names of the user's own model are accepted inside an output adapter too
            full = name if name and name in modules else f"model.{name}" if f"model.{name}" in modules else None
            if full is None:
                raise SpaceError(f"`exits_after` names {name!r}, which is not a module of the model."
                                 + close_matches(str(name), [n for n in modules if n]))
            wanted.append(full)
        try:
            self.graph = graph_cuts.trace(model)
        except graph_cuts.TraceFailure as exc:
            if exits_after is not None:
                raise SpaceError(f"`exits_after`: {exc}, so it cannot be cut into pieces.") from None
            self.reason = f"{exc}; early exits need the model cut where a single tensor flows"
            return
        cuts = graph_cuts.find_cuts(self.graph)
        prefix = "model." if getattr(self.graph, "traced_inner", False) else ""  # traced inside the adapter
        if exits_after is not None:
            keys = []
            for full in wanted:
                key = full[len(prefix):] if prefix else full
                if key not in cuts:
                    raise SpaceError(f"`exits_after` names {full!r}, but "
                                     + graph_cuts.why_not_a_cut(self.graph, key, prefix))
                keys.append(key)
            names = sorted(dict.fromkeys(keys), key=lambda n: cuts[n])
        else:
            names = graph_cuts.auto_cut_names(self.graph, cuts, max_points)
        if not names:
            self.reason = "no module of the model is followed by a single tensor with enough computation after it"
            return
        self.names = [prefix + n for n in names]
        self.positions = [cuts[n] for n in names]

    @property
    def is_block_classifier(self) -> bool:
        return self.graph is None and bool(self.names)

    def chain(self) -> tuple[nn.Sequential, nn.Module]:
        """``(blocks, head)``: the model as pieces, exit ``i`` reading ``blocks[i]``."""
        if self.is_block_classifier:
            return self.model.blocks, self.model.head  # type: ignore[return-value]
        from slimtune.spaces import _graph_cuts as graph_cuts

        pieces = graph_cuts.split(self.graph, self.positions)
        return nn.Sequential(*pieces), nn.Identity()


def _check_reproduces(model: nn.Module, blocks: nn.Sequential, head: nn.Module, example_input: torch.Tensor,
                      names: Sequence[str]) -> None:
    """Refuse pieces of a traced model that do not give exactly its output (a trace
    that recorded one path of data-dependent code would)."""
    from slimtune.spaces import _graph_cuts as graph_cuts

    if not graph_cuts.reproduces(model, [*blocks, head], example_input):
        raise SpaceError(f"The model cut after {', '.join(names)} does not reproduce its output on the example "
                         "input, so early exits cannot be attached there (use `exits_after` to name other modules).")


@torch.no_grad()
def _exit_shapes(blocks: nn.Sequential, head: nn.Module, example_input: torch.Tensor,
                 points: list[int]) -> tuple[dict[int, tuple[int, ...]], int]:
    """The feature shape (without the batch) after ``blocks[i]`` for each point, and
    the number of classes (read on a batch of two samples: the batch must stay the
    first dimension, as exits drop the samples that leave along it)."""
    modes = [(m, m.training) for m in (blocks, head)]
    blocks.eval()
    head.eval()
    try:
        shapes: dict[int, tuple[int, ...]] = {}
        x = torch.cat([example_input[:1]] * 2)
        for index, block in enumerate(blocks):
            x = block(x)
            if index in points:
                if not isinstance(x, torch.Tensor):
                    raise SpaceError(f"`exits.{index}.enabled`: the model passes a {type(x).__name__} there, not a tensor.")
                if x.dim() < 2 or x.shape[0] != 2:
                    raise SpaceError(f"`exits.{index}.enabled`: the features there have shape {tuple(x.shape)} for a "
                                     "batch of 2, so the batch is not their first dimension (e.g. a transformer "
                                     "with batch_first=False); exits need it first.")
                shapes[index] = tuple(int(d) for d in x.shape[1:])
        num_classes = int(head(x).shape[-1])
    finally:
        for module, mode in modes:
            module.train(mode)
    return shapes, num_classes
