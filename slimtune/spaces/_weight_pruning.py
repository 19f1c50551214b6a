"""Weight (unstructured) pruning: global L1-magnitude masks over every weight a layer
holds, applied as parametrizations (recomputed at every access, so layers that read
their weights directly, such as ``nn.MultiheadAttention``, see them and each forward
builds its own autograd graph), fine-tuned, then made permanent.  The ``prune`` knob
(:mod:`slimtune.spaces.pruning`) calls :func:`prune_weights`."""

from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

from slimtune.spaces.base import KnobContext

__all__ = ["WeightMask", "prune_weights", "weight_targets"]

_PRUNABLE = (nn.Conv2d, nn.Linear)


def _flag(ctx: KnobContext, message: str) -> None:
    flags = ctx.info.setdefault("flags", [])
    if message not in flags:
        flags.append(message)


class WeightMask(nn.Module):
    """A parametrization: ``weight * mask``, recomputed at every access, so that a
    layer whose weight is read directly (``nn.MultiheadAttention``'s ``out_proj``,
    ``nn.TransformerEncoderLayer``'s fast path) sees the masked weight and each
    forward builds its own autograd graph."""

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask, persistent=False)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * self.mask


def weight_targets(model: nn.Module) -> list[tuple[str, nn.Module, str]]:
    """``(module name, module, parameter name)`` of every weight that weight pruning
    masks: each Conv2d/Linear ``weight`` and ``nn.MultiheadAttention``'s packed
    ``in_proj_weight`` (or its separate query/key/value weights)."""
    out = []
    for name, module in model.named_modules():
        if isinstance(module, _PRUNABLE):
            out.append((name, module, "weight"))
        elif isinstance(module, nn.MultiheadAttention):
            for pname in ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight"):
                if isinstance(getattr(module, pname, None), nn.Parameter):
                    out.append((name, module, pname))
    return out


def _load_rewind_state(model: nn.Module, state: Mapping[str, torch.Tensor]) -> int:
    """Copy ``state`` (a plain state_dict) into ``model``, whose pruned weights live in
    ``<module>.parametrizations.<name>.original`` under masks.  Returns the number of
    tensors copied."""
    own = model.state_dict()
    problems = []
    copied = 0
    with torch.no_grad():
        for key, value in state.items():
            module, _, leaf = key.rpartition(".")
            masked = f"{module + '.' if module else ''}parametrizations.{leaf}.original"
            target = key if key in own else masked if masked in own else None
            if target is None or own[target].shape != value.shape:
                problems.append(key)
                continue
            own[target].copy_(value)
            copied += 1
    if problems:
        shown = ", ".join(problems[:5]) + (f", ... ({len(problems)} in all)" if len(problems) > 5 else "")
        raise ValueError(f"ctx.info['rewind_state'] does not match the model: {shown} missing or of another shape.")
    return copied


def prune_weights(model: nn.Module, ratio: float, ctx: KnobContext, *, rewind: bool = False) -> nn.Module:
    """Global L1 unstructured pruning of every weight of :func:`weight_targets`, in place.

    The ``round(ratio * total)`` smallest weights (over all layers together) are
    masked (:class:`WeightMask` parametrizations); the model is fine-tuned with the
    masks in force (``ctx.finetune``, after rewinding the survivors to
    ``ctx.info["rewind_state"]`` if ``rewind``), then the zeros are made permanent
    (plain weights, no parametrization left).

    Writes ``ctx.info["prune"]``: ``sparsity`` (zeros / weights over the pruned
    layers), ``layer_sparsity``, ``zeros``, ``weights``, ``rewound_to``.
    """
    from torch.nn.utils import parametrize

    targets = weight_targets(model)
    weights = [getattr(m, p).detach() for _, m, p in targets]
    scores = torch.cat([w.abs().reshape(-1) for w in weights])
    n_pruned = int(round(float(ratio) * len(scores)))
    keep = torch.ones_like(scores, dtype=torch.bool)
    if n_pruned:
        keep[torch.topk(scores, n_pruned, largest=False).indices] = False
    start = 0
    for (_, module, pname), w in zip(targets, weights):
        mask = keep[start:start + w.numel()].reshape(w.shape).to(w.dtype)
        start += w.numel()
        parametrize.register_parametrization(module, pname, WeightMask(mask), unsafe=True)
    rewound_to = None
    if rewind:
        state = ctx.info.get("rewind_state")
        if state is None:
            rewound_to = "pruning_time"
            _flag(ctx, "prune.rewind: no early weights (ctx.info['rewind_state']); "
                       "kept the weights at pruning time (plain masked fine-tuning)")
        else:
            _load_rewind_state(model, state)
            rewound_to = "rewind_state"
    try:
        if ctx.finetune_epochs > 0:
            ctx.finetune(model, epochs=ctx.finetune_epochs)
    finally:
        for _, module, pname in targets:
            parametrize.remove_parametrizations(module, pname, leave_parametrized=True)
    label = {id(m): n for n, m in model.named_modules()}
    per_layer = {(label[id(m)] if p == "weight" else f"{label[id(m)]}.{p}"): float((getattr(m, p) == 0).sum())
                 / getattr(m, p).numel() for _, m, p in targets}
    zeros = sum(int((getattr(m, p) == 0).sum()) for _, m, p in targets)
    total = sum(getattr(m, p).numel() for _, m, p in targets)
    ctx.info["prune"] = {"granularity": "weight", "ratio": float(ratio), "rewind": rewind, "rewound_to": rewound_to,
                         "sparsity": zeros / total, "zeros": zeros, "weights": total,
                         "layer_sparsity": {k: round(v, 6) for k, v in per_layer.items()}}
    return model
