"""Training with distillation from the baseline teacher."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from slimtune.spaces.distillation import distillation_loss
from slimtune.tasks._data import Split


@dataclass
class TrainConfig:
    epochs: int
    lr: float
    batch_size: int = 64
    temperature: float = 4.0
    alpha: float = 0.0
    weight_decay: float = 1e-4
    seed: int = 0
    head_lr_scale: float = 10.0  # freshly attached exit heads learn faster than the trained trunk


#: ``callback(epoch, model) -> reason or None``: return a string to stop training.
EpochCallback = Callable[[int, nn.Module], "str | None"]

#: ``teacher(inputs, index) -> logits`` of a training batch: ``index`` the samples'
#: positions in an in-memory split (precomputed logits), ``None`` when it streams.
Teacher = Callable[[torch.Tensor, "torch.Tensor | None"], torch.Tensor]


def model_outputs(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Every output a student is trained on: each early exit, then the final head."""
    forward_all = getattr(model, "forward_all", None)
    return list(forward_all(x)) if callable(forward_all) else [model(x)]


def train(
    model: nn.Module,
    data: Split,
    config: TrainConfig,
    *,
    teacher: Teacher | None = None,
    callback: EpochCallback | None = None,
) -> tuple[int, str | None]:
    """Train ``model`` in place (Adam, cosine schedule) on the batches of ``data``
    with the distillation loss against ``teacher``'s logits of each batch.

    Pruning masks (``torch.nn.utils.prune``) stay in force since they are applied in the
    forward pass.  Returns (epochs run, stop reason or None).
    """
    if config.epochs <= 0:
        return 0, None
    generator = torch.Generator().manual_seed(config.seed)
    heads = [p for n, p in model.named_parameters() if p.requires_grad and n.startswith("exits.")]
    trunk = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("exits.")]
    groups = [{"params": trunk, "lr": config.lr}]
    if heads:
        groups.append({"params": heads, "lr": config.lr * config.head_lr_scale})
    optimizer = torch.optim.Adam(groups, lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = max(1, data.steps(config.batch_size))
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs * steps_per_epoch)
    alpha = config.alpha if teacher is not None else 0.0
    for epoch in range(config.epochs):
        model.train()
        for xb, yb, idx in data.batches(config.batch_size, generator=generator):
            if len(xb) < 2:  # BatchNorm needs two samples
                continue
            tb = teacher(xb, idx) if teacher is not None and alpha > 0 else None
            outputs = model_outputs(model, xb)
            loss = sum(distillation_loss(o, tb, yb, temperature=config.temperature, alpha=alpha) for o in outputs) / len(outputs)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
        if callback is not None:
            reason = callback(epoch, model)
            if reason:
                return epoch + 1, reason
    model.eval()
    return config.epochs, None


@torch.no_grad()
def predict_logits(model: nn.Module, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Logits of the final head for every input (eval mode)."""
    model.eval()
    outs = []
    for start in range(0, len(x), batch_size):
        xb = x[start:start + batch_size]
        outs.append(model_outputs(model, xb)[-1])
    return torch.cat(outs)


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> float:
    """Top-1 accuracy of ``model``'s own forward (dynamic exits applied)."""
    model.eval()
    correct = 0
    for start in range(0, len(x), batch_size):
        out = model(x[start:start + batch_size])
        correct += int((out.argmax(-1) == y[start:start + batch_size]).sum())
    return correct / max(1, len(x))


@torch.no_grad()
def score(model: nn.Module, data: Split, metric: Callable[[torch.Tensor, torch.Tensor], float] | None = None,
          batch_size: int = 512) -> float:
    """``metric(logits, labels)`` of ``model``'s own forward (dynamic exits applied)
    on every sample of ``data``, logits accumulated batch by batch; top-1 accuracy
    when ``metric`` is None."""
    model.eval()
    logits, labels = [], []
    for xb, yb in data.chunks(batch_size):
        logits.append(model(xb))
        labels.append(yb)
    all_logits, all_labels = torch.cat(logits), torch.cat(labels)
    if metric is None:
        return int((all_logits.argmax(-1) == all_labels).sum()) / len(all_labels)
    return float(metric(all_logits, all_labels))

